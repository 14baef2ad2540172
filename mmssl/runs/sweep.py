"""Sweeps: several models × folds × seeds, one run directory each, resumable.

:func:`plan_sweep` expands a request into :class:`SweepEntry` items. Taxonomy objectives share
the configuration the user gave; every other method is composed, by default, from the user's
presets *then its own method preset* (optimiser, schedule, batch size, epochs, K… as its paper
ran it), then the user's file and flags — so a sweep compares each method as it was meant to be
run, and the resolved ``config.yaml`` of each run says exactly how. :func:`run_sweep` writes the
plan (``sweep.json``), skips finished runs, resumes interrupted ones and runs the rest with a
:class:`~mmssl.runs.launch.Launcher`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmssl import config as cfg
from mmssl import io
from mmssl.config import RunConfig
from mmssl.errors import ConfigError, RunDirError
from mmssl.methods import METHODS
from mmssl.objectives.taxonomy import Objective, ObjectiveError, all_objectives
from mmssl.runs.build import preflight
from mmssl.runs.launch import Launcher, Work
from mmssl.runs.rundir import RunDir, SweepDir

__all__ = ["SweepEntry", "SweepRequest", "plan_sweep", "run_sweep"]

log = logging.getLogger("mmssl")


@dataclass(frozen=True)
class SweepRequest:
    """What the user asked for: the configuration sources and the grid."""

    presets: tuple[str, ...] = ()
    config_file: Path | None = None
    overrides: Mapping[str, Any] | None = None
    objectives: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    folds: tuple[int, ...] = ()
    seeds: tuple[int, ...] = ()
    #: compose each baseline method with its own preset (its paper's protocol)
    method_presets: bool = True


@dataclass(frozen=True)
class SweepEntry:
    """One run of a sweep."""

    model: str
    fold: int
    seed: int
    config: RunConfig

    def run_dir(self, sweep: SweepDir) -> RunDir:
        return sweep.run(self.model, self.fold, self.seed)


def _objectives(names: Sequence[str]) -> list[str]:
    if list(names) == ["all"]:
        return all_objectives()
    try:
        return [Objective.parse(name).name for name in names]
    except ObjectiveError as error:
        raise ConfigError(f"--objectives: {error}") from None


def plan_sweep(request: SweepRequest) -> list[SweepEntry]:
    """Every (model, fold, seed) entry of ``request``, each configuration resolved and checked.

    Raises:
        ConfigError: an unknown objective or method, a model listed twice, nothing to run, or
            any entry's configuration that does not validate.
    """
    overrides = dict(request.overrides or {})
    models: list[tuple[str, list[str], dict[str, Any]]] = []
    for objective in _objectives(request.objectives):
        models.append((objective, list(request.presets),
                       {"method": "taxonomy", "objective.name": objective,
                        "objective.weights": {}}))
    for method in request.methods:
        if method == "taxonomy":
            raise ConfigError("--methods: list taxonomy models with --objectives instead")
        if method not in METHODS:
            raise ConfigError(f"--methods: unknown method {method!r}; valid: "
                              + ", ".join(sorted(m for m in METHODS if m != "taxonomy")))
        presets = list(request.presets)
        if request.method_presets and method in cfg.preset_names():
            presets.append(method)
        models.append((method, presets, {"method": method}))
    if not models:
        raise ConfigError("give at least one of --objectives or --methods")
    names = [name for name, _, _ in models]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"{', '.join(repeated)} listed twice")
    entries = []
    for name, presets, model_overrides in models:
        base = cfg.resolve(presets, request.config_file, {**overrides, **model_overrides})
        folds = list(request.folds) or [base.data.fold]
        seeds = list(request.seeds) or [base.seed]
        for fold in folds:
            for seed in seeds:
                config = cfg.resolve(presets, request.config_file,
                                     {**overrides, **model_overrides, "data.fold": fold,
                                      "seed": seed})
                entries.append(SweepEntry(name, fold, seed, config))
    return entries


def _check_sweep_dir(sweep: SweepDir) -> None:
    root = sweep.root
    if root.exists() and not root.is_dir():
        raise RunDirError(f"--out {root} is a file, not a folder; choose a folder for the sweep")
    if root.is_dir() and any(root.iterdir()) and not sweep.is_sweep():
        raise RunDirError(
            f"--out {root} exists and is not an mmssl sweep directory (it has files but no "
            "sweep.json); choose a new or empty folder so nothing there is overwritten"
        )


def run_sweep(entries: Sequence[SweepEntry], out: Path,
              launcher: Launcher | None = None) -> SweepDir:
    """Run (or resume, or skip) every entry under ``out``; returns the sweep directory.

    The plan is written first (``sweep.json``, merged with an earlier plan of the same folder),
    so the sweep can be aggregated, reported and checked from its folder alone.
    """
    sweep = SweepDir(Path(out))
    _check_sweep_dir(sweep)
    for entry in entries:
        preflight(entry.config, entry.run_dir(sweep).root)
    io.ensure_writable_folder(sweep.root, what="sweep directory", hint="choose another --out")
    earlier = RunDir(sweep.root).read_json(sweep.plan) if sweep.plan.is_file() else {}
    planned = {(e["model"], e["fold"], e["seed"]): e for e in earlier.get("entries", [])}
    for entry in entries:
        planned[(entry.model, entry.fold, entry.seed)] = {
            "model": entry.model, "method": entry.config.method, "fold": entry.fold,
            "seed": entry.seed,
            "run": entry.run_dir(sweep).root.relative_to(sweep.root).as_posix(),
        }
    io.write_json(sweep.plan, {"entries": list(planned.values()),
                               "requested": [[e.model, e.fold, e.seed] for e in entries]})
    work: list[Work] = []
    for index, entry in enumerate(entries, 1):
        run = entry.run_dir(sweep)
        label = f"[{index}/{len(entries)}] {entry.model} fold {entry.fold} seed {entry.seed}"
        if run.evaluated():
            log.info("%s: finished earlier, skipping", label)
            continue
        resume = run.is_run()
        log.info("%s: %s", label, "resuming" if resume else "queued")
        work.append((None if resume else entry.config, run.root, resume))
    (launcher or Launcher()).run_all(work, sweep.launcher_logs)
    return sweep
