"""A cohort: the validated, preprocessed (cached) and stacked volumes of a manifest.

A session may lack a modality (an empty manifest cell): its row of that modality's array is
all zeros and :attr:`Cohort.present` says which rows are real. Consumers must use the masks;
the zeros are only there so every modality keeps one memory-mapped ``(N, *grid)`` array.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmssl import io
from mmssl.data.neuro.cache import (
    CACHE_DIR_NAME,
    CACHE_HINT,
    MISSING_ENTRY,
    Cache,
    cohort_array,
    inspect_cached,
    load_npy,
)
from mmssl.data.neuro.grid import TargetGrid
from mmssl.data.neuro.manifest import (
    Manifest,
    ManifestError,
    ManifestRow,
    OnBadRow,
    Problem,
    check_on_bad_row,
    parse_manifest,
    write_problem_report,
)
from mmssl.data.neuro.preprocessing import (
    PREPROCESSING_VERSION,
    Preprocessing,
    load_mask,
    preprocess_volume,
)
from mmssl.data.neuro.validation import MAX_VOLUME_BYTES, row_volume_problems

__all__ = ["Cohort", "Steps", "load_cohort", "progress_steps"]

log = logging.getLogger(__name__)


class Steps:
    """Optional rich progress bars."""

    def __init__(self, progress: Any | None) -> None:
        self.progress = progress

    @contextlib.contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[[], None]]:
        if self.progress is None:
            yield lambda: None
            return
        bar = self.progress
        task_id = bar.add_task(description, total=total)
        yield lambda: bar.advance(task_id)
        bar.update(task_id, completed=total)


@contextlib.contextmanager
def progress_steps(enabled: bool) -> Iterator[Steps]:
    if not enabled:
        yield Steps(None)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn()) as bar:
        yield Steps(bar)


@dataclass
class Cohort:
    """Preprocessed, validated volumes of a manifest's usable rows.

    Attributes:
        manifest: the manifest restricted to the kept rows (row ``i`` is item ``i``).
        volumes: modality -> read-only memory-mapped ``float32`` array ``(N, *grid.shape)``;
            the rows of sessions that lack the modality are all zeros.
        present: modality -> ``bool`` ``(N,)``, whether the session has that modality.
        labels: ``int64`` ``(N,)``, -1 when unlabelled.
        subjects: ``str`` ``(N,)``.
        sessions: ``str`` ``(N,)`` ("" when the manifest has no session).
        grid: the target grid.
        mask: the brain mask on the grid (``bool``), or ``None``.
        skipped: the problems of the rows left out (with ``on_bad_row="skip"``).
        label_mapping: class name -> integer, or ``None`` for integer labels.
        covariates: the covariate columns of the kept rows (index ``0..N-1``).
        settings: the preprocessing settings.
        cache_dir: where the cache lives.
    """

    manifest: Manifest
    volumes: dict[str, np.ndarray]
    present: dict[str, np.ndarray]
    labels: np.ndarray
    subjects: np.ndarray
    sessions: np.ndarray
    grid: TargetGrid
    mask: np.ndarray | None
    skipped: list[Problem]
    label_mapping: dict[str, int] | None
    covariates: pd.DataFrame
    settings: Preprocessing
    cache_dir: Path

    def __len__(self) -> int:
        """Number of rows (subjects × sessions)."""
        return len(self.labels)

    @property
    def complete(self) -> np.ndarray:
        """``bool`` ``(N,)``: whether a session has every modality."""
        out = np.ones(len(self), dtype=bool)
        for mask in self.present.values():
            out &= mask
        return out

    @property
    def has_missing(self) -> bool:
        """Whether any session lacks a modality."""
        return not bool(self.complete.all())


def load_cohort(manifest_path: Path, modalities: Sequence[str], *,
                settings: Preprocessing | None = None, cache_dir: Path | None = None,
                on_bad_row: OnBadRow = "error", report_path: Path | None = None,
                label_mapping: Mapping[str, int] | None = None, progress: bool = True,
                strict_grid: bool = True, max_volume_bytes: int = MAX_VOLUME_BYTES) -> Cohort:
    """Read, validate, preprocess (with a cache) and stack a cohort's paired volumes.

    Everything is checked before anything is preprocessed: the manifest, then every volume of
    every row (rows with manifest problems included, so one run lists every problem).

    Args:
        manifest_path: the manifest CSV (format in the module docstring).
        modalities: the path columns, e.g. ``("t1", "falff")``.
        settings: preprocessing settings (default :class:`Preprocessing()`).
        cache_dir: the cache folder (default ``<manifest folder>/.mmssl_cache``).
        on_bad_row: ``"error"`` raises :class:`ManifestError` listing every problem;
            ``"skip"`` drops rows with any problem, logs a warning and goes on.
        report_path: where to write the row problems as CSV (``line,subject,column,file,
            message``), in either mode; written (header only) even when there is none.
        label_mapping: class name -> integer (see :func:`read_manifest`).
        progress: show rich progress bars.
        strict_grid: require a row's modalities to share a voxel grid (:func:`validate_volumes`).
        max_volume_bytes: the most voxel data a file may declare (checked before reading).

    Returns:
        The cohort; its volumes are memory-mapped arrays in the cache. An empty path cell is a
        missing modality: the row stays, its volume of that modality is zeros and
        :attr:`Cohort.present` marks it absent.

    Raises:
        ManifestError: problems with ``on_bad_row="error"``, or no usable row left, or a
            modality that no usable row has, or a problem with the manifest as a whole.
        ValueError: invalid arguments or mask.
        OSError: the cache folder cannot be written.
    """
    check_on_bad_row(on_bad_row)
    settings = Preprocessing() if settings is None else settings
    grid = settings.grid()
    mask = load_mask(settings, grid)
    parsed = parse_manifest(Path(manifest_path), modalities, label_mapping)
    manifest = parsed.manifest
    root = (Path(cache_dir).expanduser() if cache_dir is not None
            else manifest.path.parent / CACHE_DIR_NAME)
    settings_key = settings.key()
    cache = Cache(Path(os.path.abspath(root)), settings_key)
    name, base = manifest.path.name, manifest.path.parent

    with progress_steps(progress) as steps:
        paths = list(dict.fromkeys(p for c in parsed.candidates for p in c.paths.values()))
        inspections, shas = inspect_cached(paths, cache, steps, max_volume_bytes)
        for c in parsed.candidates:
            c.problems += row_volume_problems(c.line, c.subject, c.paths, manifest.modalities,
                                               inspections, grid, strict_grid, base, name)
        problems = [p for c in parsed.candidates for p in c.problems]
        kept = [c for c in parsed.candidates if not c.problems]
        if report_path is not None:
            write_problem_report(Path(report_path), problems)
        if problems and on_bad_row == "error":
            raise ManifestError(problems, manifest.path,
                                note=f"(also written to {report_path})" if report_path else "")
        if on_bad_row == "skip" and problems:
            log.warning("skipping %d of %d rows of %s with %d problem(s)%s",
                        len(parsed.candidates) - len(kept), len(parsed.candidates),
                        manifest.path, len(problems),
                        f"; see {report_path}" if report_path is not None else "")
        if not kept:
            raise ManifestError(problems, manifest.path, skippable=False,
                                note="No usable row is left." if problems
                                else "The manifest has no data rows.")
        absent = [m for m in manifest.modalities if not any(m in c.paths for c in kept)]
        if absent:
            raise ManifestError(
                [Problem(0, "", m, "", f"no usable row has a volume for modality {m} (every "
                         f"cell of column {m} is empty or its row is bad)", name)
                 for m in absent], manifest.path, skippable=False,
                note="Drop the modality from --modalities, or fill in its paths.")

        todo = list(dict.fromkeys(shas[p] for c in kept for p in c.paths.values()))
        source = {shas[p]: p for p in reversed(paths) if p in shas}
        missing = [s for s in todo if load_npy(cache.entry_path(s), grid.shape) is None]
        if missing and not cache.settings_path().is_file():
            io.write_json(cache.settings_path(), {
                **settings.to_dict(), "key": settings_key, "grid": grid.to_dict(),
                "preprocessing_version": PREPROCESSING_VERSION}, hint=CACHE_HINT)
        with steps.task("Preprocessing volumes", len(missing)) as advance:
            for sha in missing:
                volume = preprocess_volume(source[sha], grid, mask, settings)
                io.save_npy(cache.entry_path(sha), volume, hint=CACHE_HINT)
                advance()

        volumes: dict[str, np.ndarray] = {}
        with steps.task("Assembling cohort arrays", len(manifest.modalities)) as advance:
            for m in manifest.modalities:
                keys = [shas[c.paths[m]] if m in c.paths else MISSING_ENTRY for c in kept]
                volumes[m] = cohort_array(cache, m, keys, grid.shape)
                advance()

    rows = [ManifestRow(c.line, c.subject, c.session, c.label, c.paths, c.covariates)
            for c in kept]
    kept_manifest = Manifest(path=manifest.path, modalities=manifest.modalities, rows=rows,
                             label_mapping=manifest.label_mapping,
                             covariate_columns=list(manifest.covariate_columns), problems=[])
    return Cohort(
        manifest=kept_manifest,
        volumes=volumes,
        present={m: np.array([m in r.paths for r in rows], dtype=bool)
                 for m in manifest.modalities},
        labels=np.array([r.label for r in rows], dtype=np.int64),
        subjects=np.array([r.subject for r in rows], dtype=str),
        sessions=np.array([r.session for r in rows], dtype=str),
        grid=grid,
        mask=mask,
        skipped=problems if on_bad_row == "skip" else [],
        label_mapping=manifest.label_mapping,
        covariates=kept_manifest.covariate_frame(),
        settings=settings,
        cache_dir=cache.root,
    )


