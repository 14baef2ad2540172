"""Part 1 of :mod:`benchmarks.neuro`: preprocessing throughput of ``load_cohort``, cold and warm.

Per grid: the MNI152 mask resampled onto it, one cold :func:`~mmssl.data.neuro.load_cohort`
(empty cache folder: hash, validate, preprocess, write, assemble), the same work timed directly
per volume on a few files (SHA-256, decode with value checks,
:func:`~mmssl.data.neuro.preprocess_volume`), and warm loads (every cache entry hit), the
grids interleaved.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.harness import format_bytes, time_interleaved
from benchmarks.neuro_cohort import MODALITIES, GridSpec
from mmssl.analysis.tables import Table
from mmssl.data.neuro import Cohort, load_cohort, load_mask, preprocess_volume
from mmssl.data.neuro.preprocessing import sha256_file

__all__ = ["PreprocessRow", "decode_and_check", "measure_preprocessing", "preprocessing_table"]


@dataclass(frozen=True)
class PreprocessRow:
    """Cold and warm ``load_cohort`` on one grid, with the per-volume split of the cold load."""

    grid: str
    size: int
    voxel_size: float
    roles: str
    volumes: int  # distinct source files preprocessed (sessions × modalities)
    mask_s: float  # the MNI152 mask resampled onto the grid (first use in this process)
    cold_s: float
    cold_volumes_per_s: float
    hash_ms: float  # per volume, timed directly
    validate_ms: float  # per volume, timed directly
    preprocess_ms: float  # per volume, preprocess_volume timed directly
    other_ms: float  # cold per volume − hash − validate − preprocess
    warm_s: float
    warm_iqr_percent: float
    warm_volumes_per_s: float
    warm_speedup: float  # cold / warm
    cache_bytes: int  # bytes under the grid's cache folder after the cold load


def decode_and_check(path: Path) -> None:
    """The work of validating a volume: decode it in full, count non-finite voxels, range."""
    import nibabel

    image: Any = nibabel.load(str(path), mmap=False)
    data = np.asanyarray(image.dataobj)
    finite = np.isfinite(data)
    int(finite.size - finite.sum())
    values = data[finite]
    if values.size:
        float(values.min())
        float(values.max())


def folder_bytes(folder: Path) -> int:
    """Total size of the files below ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def manifest_paths(cohort: Cohort) -> list[Path]:
    """The cohort's source files, row by row, modality by modality."""
    return [Path(row.paths[m]) for row in cohort.manifest.rows for m in MODALITIES]


def measure_preprocessing(
    manifest: Path, grids: Sequence[GridSpec], workdir: Path, *, split_files: int,
    warmup: int, repeats: int,
) -> tuple[list[PreprocessRow], dict[int, Cohort]]:
    """Cold loads (one pass each), per-volume split timings and warm loads, per grid.

    Returns the rows and the cohort of every grid (memory-mapped, for parts 2 and 3).
    """
    settings = {g.size: g.settings() for g in grids}
    caches = {g.size: workdir / f"cache-{g.size}" for g in grids}
    mask_s: dict[int, float] = {}
    cold_s: dict[int, float] = {}
    cohorts: dict[int, Cohort] = {}

    def load(size: int) -> Cohort:
        return load_cohort(manifest, MODALITIES, settings=settings[size],
                           cache_dir=caches[size], progress=False)

    for g in grids:
        s = settings[g.size]
        start = time.perf_counter()
        load_mask(s, s.grid())  # cached per grid in the process: the cold load reuses it
        mask_s[g.size] = time.perf_counter() - start
        start = time.perf_counter()
        cohorts[g.size] = load(g.size)
        cold_s[g.size] = time.perf_counter() - start

    paths = manifest_paths(next(iter(cohorts.values())))
    files = paths[:max(1, min(split_files, len(paths)))]
    masks = {size: load_mask(s, s.grid()) for size, s in settings.items()}

    def per_file(work: Callable[[Path], object]) -> Callable[[], None]:
        def run() -> None:
            for path in files:
                work(path)
        return run

    def preprocess_at(size: int) -> Callable[[Path], object]:
        grid, mask, s = settings[size].grid(), masks[size], settings[size]
        return lambda path: preprocess_volume(path, grid, mask, s)

    split_functions: dict[str, Callable[[], object]] = {
        "hash": per_file(sha256_file), "validate": per_file(decode_and_check)}
    for size in settings:
        split_functions[f"preprocess-{size}"] = per_file(preprocess_at(size))
    cpu = torch.device("cpu")
    split = time_interleaved(split_functions, cpu, warmup=warmup, repeats=repeats)
    hash_ms = split["hash"].median_ms / len(files)
    validate_ms = split["validate"].median_ms / len(files)

    warm = time_interleaved({str(size): functools.partial(load, size) for size in settings},
                            cpu, warmup=warmup, repeats=repeats)

    rows = []
    for g in grids:
        n = len(paths)
        preprocess_ms = split[f"preprocess-{g.size}"].median_ms / len(files)
        cold = cold_s[g.size]
        warm_t = warm[str(g.size)]
        rows.append(PreprocessRow(
            grid=g.label, size=g.size, voxel_size=g.voxel_size, roles=", ".join(g.roles),
            volumes=n, mask_s=mask_s[g.size], cold_s=cold, cold_volumes_per_s=n / cold,
            hash_ms=hash_ms, validate_ms=validate_ms, preprocess_ms=preprocess_ms,
            other_ms=1000.0 * cold / n - hash_ms - validate_ms - preprocess_ms,
            warm_s=warm_t.seconds, warm_iqr_percent=warm_t.iqr_percent,
            warm_volumes_per_s=warm_t.rate(n), warm_speedup=cold / warm_t.seconds,
            cache_bytes=folder_bytes(caches[g.size]),
        ))
    return rows, cohorts


def preprocessing_table(rows: Sequence[PreprocessRow], subjects: int) -> Table:
    """Part 1's table."""
    return Table(
        f"Preprocessing throughput (load_cohort, {subjects} sessions × 2 modalities; hash, "
        "validate, preproc, other: ms per volume; warm: median)",
        ["grid", "role", "vols", "mask s", "cold s", "cold vol/s", "hash", "validate",
         "preproc", "other", "warm s", "IQR%", "warm vol/s", "cold/warm", "cache"],
        [[r.grid, r.roles, str(r.volumes), f"{r.mask_s:.2f}", f"{r.cold_s:.2f}",
          f"{r.cold_volumes_per_s:.1f}", f"{r.hash_ms:.1f}", f"{r.validate_ms:.1f}",
          f"{r.preprocess_ms:.1f}", f"{r.other_ms:.1f}", f"{r.warm_s:.3f}",
          f"{r.warm_iqr_percent:.0f}", f"{r.warm_volumes_per_s:,.0f}", f"{r.warm_speedup:.0f}×",
          format_bytes(r.cache_bytes)] for r in rows],
        text_columns=("grid", "role"),
    )
