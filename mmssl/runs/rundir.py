"""Run directories and sweep directories as typed objects that own every file name.

A **run directory** holds one pretraining and its evaluation::

    config.yaml        the resolved configuration (the run is reproducible from it alone)
    metrics.csv        training curves (Lightning's CSV logger)
    checkpoints/       last.ckpt (every epoch, for --resume) and best.ckpt (lowest val loss)
    pretrain.json      written when pretraining finished: steps, seconds, device, checkpoints
    metrics.json       {split: {modality or "joint": {metric: value}}} of the linear probe
    probe.json         the regularisation chosen per probe, its validation curve, the checkpoint
    features.npz       frozen features of every split ("<split>/<modality>", "<split>/label")
    splits.csv         neuroimaging: the subject-level split of every manifest row
    skipped_rows.csv   neuroimaging: rows left out with --on-bad-row skip
    log.txt            the log
    saliency/, links/, regions/ and their .json summaries; report.html, report.md

Completion markers (``pretrain.json``, ``metrics.json``) are written atomically, last. Paths
recorded inside a run directory are relative to it, so it can be moved or copied.

A **sweep directory** holds one run directory per model × fold × seed at
``<model>/fold<k>-seed<s>`` (:meth:`SweepDir.run`), plus ``sweep.json`` (what was asked), the
long results ``runs.csv``, the aggregated tables and figures, and the claims.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmssl import io
from mmssl.errors import RunDirError

__all__ = ["RunDir", "SweepDir"]


@dataclass(frozen=True)
class _Folder:
    """A folder of mmssl results, ``root`` as the user typed it (relative or absolute)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).expanduser())

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def report_markdown(self) -> Path:
        return self.root / "report.md"

    @property
    def report_figures(self) -> Path:
        return self.root / "report_figures"


@dataclass(frozen=True)
class RunDir(_Folder):
    """The files of one run."""

    # -- files -------------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.ckpt"

    @property
    def pretrain_record(self) -> Path:
        return self.root / "pretrain.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def curves(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def probe(self) -> Path:
        return self.root / "probe.json"

    @property
    def features(self) -> Path:
        return self.root / "features.npz"

    def variant_features(self, variant: str) -> Path:
        """``features.npz`` of the default representation, ``features_<variant>.npz`` else."""
        return self.root / (f"features_{variant}.npz" if variant else "features.npz")

    def variant_metrics(self, variant: str) -> Path:
        return self.root / (f"metrics_{variant}.json" if variant else "metrics.json")

    @property
    def log(self) -> Path:
        return self.root / "log.txt"

    @property
    def splits(self) -> Path:
        return self.root / "splits.csv"

    @property
    def skipped_rows(self) -> Path:
        return self.root / "skipped_rows.csv"

    @property
    def generations(self) -> Path:
        return self.root / "generations.png"

    @property
    def saliency(self) -> Path:
        return self.root / "saliency"

    @property
    def saliency_summary(self) -> Path:
        return self.root / "saliency.json"

    @property
    def links(self) -> Path:
        return self.root / "links"

    @property
    def links_summary(self) -> Path:
        return self.root / "links.json"

    @property
    def regions_summary(self) -> Path:
        return self.root / "regions.json"

    @property
    def audit_summary(self) -> Path:
        return self.root / "audit.json"

    # -- state -------------------------------------------------------------------------------
    def is_run(self) -> bool:
        """Whether a run was started here (its configuration was written)."""
        return self.config.is_file()

    def has_checkpoint(self) -> bool:
        return self.last_checkpoint.is_file()

    def pretrained(self) -> bool:
        return self.pretrain_record.is_file()

    def evaluated(self) -> bool:
        return self.metrics.is_file()

    def require_run(self) -> None:
        """Raise unless a run was started here."""
        if not self.root.exists():
            raise RunDirError(f"{self.root} does not exist")
        if not self.is_run():
            raise RunDirError(f"{self.root} is not a run directory (no config.yaml)")

    def require_pretrained(self, command: str = "pretrain") -> None:
        self.require_run()
        if not self.pretrained():
            raise RunDirError(
                f"{self.root} has not finished pretraining (no pretrain.json); continue it with "
                f"`mmssl {command} --resume --out {self.root}`"
            )

    def require_evaluated(self) -> None:
        self.require_pretrained()
        if not self.evaluated() or not self.features.is_file():
            raise RunDirError(f"{self.root} has not been evaluated; run "
                              f"`mmssl evaluate {self.root}`")

    # -- records -----------------------------------------------------------------------------
    def read_json(self, path: Path) -> Any:
        """A JSON file of this run; a clear error if it is missing or damaged."""
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise RunDirError(f"{path} is missing") from None
        except (OSError, ValueError) as error:
            raise RunDirError(f"{path} cannot be read as JSON: {error}") from None

    def read_pretrain_record(self) -> dict[str, Any]:
        self.require_pretrained()
        record = self.read_json(self.pretrain_record)
        if not isinstance(record, dict) or "last_checkpoint" not in record:
            raise RunDirError(f"{self.pretrain_record} is not a pretraining record")
        return record

    def read_metrics(self, variant: str = "") -> dict[str, Any]:
        values = self.read_json(self.variant_metrics(variant))
        if not isinstance(values, dict):
            raise RunDirError(f"{self.variant_metrics(variant)} is not a metrics mapping")
        return values

    def checkpoint(self, which: str) -> Path:
        """The checkpoint evaluation uses: ``best`` (lowest validation loss) or ``last``.

        Paths recorded in ``pretrain.json`` are relative to the run directory (older runs that
        recorded a missing best checkpoint fall back to the last one).
        """
        record = self.read_pretrain_record()
        chosen = record.get("best_checkpoint") if which == "best" else None
        path = self.inside(chosen or record["last_checkpoint"], "pretrain.json checkpoint")
        if not path.is_file():
            raise RunDirError(f"the {which} checkpoint {path} of {self.root} is missing")
        return path

    def inside(self, recorded: str | Path, what: str) -> Path:
        """A path recorded in the run directory, resolved; refused if it leaves the folder."""
        path = io.contained(self.root, recorded)
        if path is None:
            raise RunDirError(f"{what} {recorded!s} points outside {self.root}")
        return path

    def relative(self, path: Path) -> str:
        """How a file of this run is recorded: relative to the run directory."""
        return io.relative_path(path, self.root)


@dataclass(frozen=True)
class SweepDir(_Folder):
    """The files of a sweep: one run directory per model × fold × seed."""

    def run(self, model: str, fold: int, seed: int) -> RunDir:
        """The run directory of one entry: ``<model>/fold<fold>-seed<seed>``."""
        io.check_name(model, "model name")
        return RunDir(self.root / model / f"fold{int(fold)}-seed{int(seed)}")

    @property
    def plan(self) -> Path:
        """``sweep.json``: the entries of the sweep (model, fold, seed, run directory)."""
        return self.root / "sweep.json"

    @property
    def runs_table(self) -> Path:
        return self.root / "runs.csv"

    @property
    def results_csv(self) -> Path:
        return self.root / "results.csv"

    @property
    def results_markdown(self) -> Path:
        return self.root / "results.md"

    @property
    def scores(self) -> Path:
        """The compact, committable results file of every run (see ``analysis``)."""
        return self.root / "scores.csv"

    @property
    def links_table(self) -> Path:
        """Held-out links of every multimodal-capable run (written by ``mmssl claims``)."""
        return self.root / "links.csv"

    @property
    def figure(self) -> Path:
        return self.root / "accuracy.png"

    @property
    def fold_figure(self) -> Path:
        return self.report_figures / "fold_scores.png"

    @property
    def mode_effects(self) -> Path:
        return self.root / "mode_effects.json"

    @property
    def mode_effects_figure(self) -> Path:
        return self.root / "mode_effects.png"

    @property
    def claims_json(self) -> Path:
        return self.root / "claims.json"

    @property
    def claims_markdown(self) -> Path:
        return self.root / "claims.md"

    @property
    def launcher_logs(self) -> Path:
        return self.root / ".submitit"

    def is_sweep(self) -> bool:
        return self.plan.is_file() or self.runs_table.is_file()

    def finished_runs(self) -> Iterator[RunDir]:
        """Every evaluated run directory below the sweep (whatever its folder names)."""
        for metrics in sorted(self.root.glob("*/*/metrics.json")):
            run = RunDir(metrics.parent)
            if run.is_run():
                yield run
