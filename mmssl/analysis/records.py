"""Finished runs as records, and their scores as one long, committable table.

A :class:`RunRecord` is read from a run directory's own files — ``config.yaml`` says which
model, method, fold and seed it is (never its folder name) and ``metrics.json`` what it
scored. :func:`scores_frame` turns records into the long table every analysis uses::

    model, method, fold, seed, split, modality, metric, value, config_hash, mmssl_version

``config_hash`` is the SHA-256 (first 16 hex digits) of the run's resolved configuration, so
a number in a committed results file can be traced to the exact setting that produced it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mmssl import __version__
from mmssl import config as cfg
from mmssl.analysis.claim_rules import ModelInfo
from mmssl.config import RunConfig
from mmssl.errors import ConfigError, RunDirError
from mmssl.methods import method_class
from mmssl.objectives.taxonomy import Objective
from mmssl.runs.rundir import RunDir, SweepDir

__all__ = ["SCORE_COLUMNS", "RunRecord", "config_hash", "load_records", "model_info",
           "read_scores", "scores_frame"]

#: The columns of the long scores table, in order.
SCORE_COLUMNS: tuple[str, ...] = ("model", "method", "fold", "seed", "split", "modality",
                                  "metric", "value", "config_hash", "mmssl_version")


def config_hash(config: RunConfig) -> str:
    """First 16 hex digits of the SHA-256 of the resolved configuration (canonical JSON)."""
    text = json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunRecord:
    """One evaluated run: where it is, how it was configured, what it scored."""

    run: RunDir
    config: RunConfig
    metrics: dict[str, Any]

    @property
    def model(self) -> str:
        return self.config.model_name

    @property
    def fold(self) -> int:
        return self.config.data.fold

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def key(self) -> tuple[int, int]:
        return self.fold, self.seed


def model_info(config: RunConfig) -> ModelInfo:
    """What the claims need to know about the model of ``config`` (from the registries)."""
    if config.method == "taxonomy":
        modes = frozenset(Objective.parse(config.section("objective").name).modes)
        return ModelInfo(kind="taxonomy", modes=modes, multimodal=bool(modes - {"CR"}))
    traits = method_class(config.method).traits
    return ModelInfo(kind="baseline", decoder=traits.has_decoders,
                     multimodal=traits.relates_modalities)


def load_records(sweep: SweepDir, *, requested_only: bool = True) -> list[RunRecord]:
    """Every evaluated run of a sweep (the entries last requested, when the plan says).

    Raises:
        RunDirError: the folder is not a sweep, or holds no evaluated run.
    """
    root = sweep.root
    if not root.is_dir():
        raise RunDirError(f"{root} is not a directory")
    runs: Iterable[RunDir]
    if sweep.plan.is_file():
        plan = RunDir(root).read_json(sweep.plan)
        wanted = {tuple(r) for r in plan.get("requested", [])} if requested_only else None
        runs = [RunDir(root / e["run"]) for e in plan.get("entries", [])
                if wanted is None or (e["model"], e["fold"], e["seed"]) in wanted]
    else:  # a sweep of mmssl ≤ 0.1: every evaluated run below it
        runs = list(sweep.finished_runs())
    records = []
    for run in runs:
        if not (run.is_run() and run.evaluated()):
            continue
        try:
            config = cfg.load(run.config)
        except ConfigError as error:
            raise RunDirError(f"{run.config} cannot be read: {error}") from None
        records.append(RunRecord(run, config, run.read_metrics()))
    if not records:
        raise RunDirError(f"{root} holds no evaluated runs; run `mmssl sweep --out {root}` "
                          "first")
    return records


def scores_frame(records: Sequence[RunRecord]) -> pd.DataFrame:
    """The long scores table of ``records`` (columns :data:`SCORE_COLUMNS`)."""
    rows = []
    for record in records:
        digest = config_hash(record.config)
        for split, per_modality in record.metrics.items():
            if split not in ("val", "test"):
                continue  # e.g. the "checkpoint" record
            for modality, values in per_modality.items():
                for metric, value in values.items():
                    rows.append((record.model, record.config.method, record.fold, record.seed,
                                 split, modality, metric, float(value), digest, __version__))
    return pd.DataFrame(rows, columns=list(SCORE_COLUMNS))


def read_scores(path: Path) -> pd.DataFrame:
    """A scores file written from :func:`scores_frame` (columns checked)."""
    try:
        frame = pd.read_csv(path, dtype={"config_hash": str, "mmssl_version": str})
    except (OSError, ValueError) as error:
        raise RunDirError(f"{path} cannot be read as a scores table: {error}") from None
    missing = [c for c in SCORE_COLUMNS if c not in frame.columns]
    if missing:
        raise RunDirError(f"{path} is not a scores table: columns {missing} are missing")
    return frame
