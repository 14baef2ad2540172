"""Cost of the neuroimaging path: preprocessing, loading from the cache and 3-D training.

Run ``.venv/bin/python benchmarks/neuro.py`` (or ``make bench``); ``--help`` lists the options
and ``benchmarks/README.md`` explains every column. The script simulates a paired T1/fALFF
cohort (:func:`~mmssl.data.simulate.simulate_cohort`, ``--subjects`` subjects at 3 mm) in a
temporary folder and measures, in one run:

1. **Preprocessing** (:func:`~mmssl.data.neuro.load_cohort`): a cold load (empty cache folder)
   at the paper grid (64³ at 3 mm), at a 96³ grid (2 mm) and at every training grid, in
   volumes/s, split into hashing, validation, preprocessing and the rest with per-volume
   timings of the same work on a few files (:func:`~mmssl.data.neuro.preprocess_volume`
   directly); and a warm load (every cache entry hit).
2. **Loading from the cache**: batches of the memory-mapped cohort through ``CohortDataset``, a
   ``DataLoader`` with the data module's collate and sampler (``num_workers=0``) and the
   data module's device-side shared pad-crop (``NeuroDataModule.on_after_batch_transfer``), in
   volumes/s and batches/s, against the training step of the same grid and batch: is the
   training loop fed?
3. **Training** of the taxonomy model (CR-XX-CC-RR and the cheaper RR; the ``neuro`` preset's
   configuration, the default local tap of each size) at 32³, 64³ (and 128³ with ``--large``
   or on CUDA) and several batch sizes: ms/step, volumes/s, pairs/s and peak memory.
4. A **figure** (``--figure``, PNG): step time and peak memory against batch size per volume
   size, with the loading time per batch.

Every timing except the cold loads (one pass over all volumes, which fills the cache) is the
median over ``--repeats`` rounds after ``--warmup`` rounds, the rounds of the compared things
interleaved, so background load hits them alike. On CUDA every timed call is synchronised.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import hashlib
import itertools
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor
from torch.utils.data import DataLoader

from mmssl.config import resolve
from mmssl.data.neuro import Cohort, Preprocessing, load_cohort, load_mask, preprocess_volume
from mmssl.data.neuro_module import CohortDataset, NeuroDataModule
from mmssl.data.simulate import SimulationSettings, simulate_cohort
from mmssl.data.two_view_mnist import EpochShuffleSampler
from mmssl.methods import METHODS, MultimodalMethod
from mmssl.nn import default_local_tap

MODALITIES: tuple[str, ...] = ("t1", "falff")
FIELD_OF_VIEW_MM = 192.0  # every grid is the paper's 64³ × 3 mm cube: voxel = 192 mm / side
PAPER_SIZE, FINE_SIZE = 64, 96  # part 1's fixed grids (3 mm and 2 mm)
SIMULATION_VOXEL_MM = 3.0
SIMULATION_SEED = 0
LOADER_SEED = 343  # the neuro preset's seed: the sampler's and the augmentation's
TRAIN_OBJECTIVES: tuple[str, ...] = ("CR-XX-CC-RR", "RR")
NUM_CLASSES = 2
BATCH_POOL = 2  # distinct batches cycled through by the timed training steps
LARGE_SIZE = 128

DEFAULT_SUBJECTS, QUICK_SUBJECTS = 64, 8
DEFAULT_REPEATS, DEFAULT_WARMUP = 7, 1
QUICK_REPEATS, QUICK_WARMUP = 2, 1
DEFAULT_SIZES: tuple[int, ...] = (32, 64)
QUICK_SIZES: tuple[int, ...] = (32,)
DEFAULT_BATCH_SIZES: tuple[int, ...] = (4, 8, 16)
QUICK_BATCH_SIZES: tuple[int, ...] = (2, 4)
DEFAULT_LOAD_BATCH_SIZES: tuple[int, ...] = (8, 32)
QUICK_LOAD_BATCH_SIZES: tuple[int, ...] = (2, 4)
DEFAULT_SPLIT_FILES, QUICK_SPLIT_FILES = 4, 2
DEFAULT_FIGURE = Path("runs/bench/neuro_cost.png")

MEMORY_METHODS = {
    "cpu": (
        "profiler peak: the largest sum of bytes allocated (minus bytes freed) through PyTorch's "
        "CPU allocator during one training step, from the memory events of torch.profiler "
        "(profile_memory=True), the events ordered by time. Counts activations, gradients and "
        "transients; parameters, optimizer state and the input batch existed before and are "
        "excluded; so are allocations outside PyTorch's allocator (oneDNN scratch pads, Python "
        "objects)"
    ),
    "cuda": (
        "allocator peak: torch.cuda.max_memory_allocated during one training step minus the "
        "bytes allocated before it (parameters, optimizer state and the input batch excluded; "
        "activations, gradients and transients included)"
    ),
}

FOOTER = (
    "How to read: a volume is one modality of one session; a pair is one session in both "
    "modalities (2 volumes). Preprocessing: cold = load_cohort with an empty cache folder (one "
    "pass over all volumes: hash, validate, preprocess, write, assemble); hash, validate and "
    "preprocess ms/vol are the same work timed directly on a few files (SHA-256 of the bytes; "
    "nibabel decode with finiteness and range checks; preprocess_volume), other = cold per "
    "volume minus those three (cache writes, cohort assembly, manifest parsing); warm = "
    "load_cohort again (hashes every file, every entry a cache hit). Loading: fetch = next "
    "batch from the DataLoader (memmap read, collate, transfer to the device), augment = the "
    "data module's device-side shared pad-crop; load/step = (fetch + augment) / training step "
    "at the same grid and batch; < 1 means loading keeps up. With num_workers=0 loading is not "
    "overlapped with the step and adds to it; with num_workers >= 1 the fetch can run beside "
    "the step, the augmentation cannot. Training: vol/s = 2 x batch / step, pairs/s = batch / "
    "step. Times are medians of interleaved rounds; IQR% = interquartile range / median (noise)."
)


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels on CUDA; nothing on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    """Summary of repeated timings in milliseconds."""

    median_ms: float
    min_ms: float
    iqr_ms: float
    samples_ms: tuple[float, ...]

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Timing:
        """Summarise durations given in seconds."""
        ms = [1000.0 * s for s in seconds]
        if len(ms) >= 2:
            q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive")
        else:
            q1 = q3 = ms[0]
        return cls(statistics.median(ms), min(ms), q3 - q1, tuple(ms))

    @property
    def iqr_percent(self) -> float:
        """Interquartile range as a percentage of the median."""
        return 100.0 * self.iqr_ms / self.median_ms if self.median_ms > 0 else 0.0


def time_interleaved(
    functions: Mapping[str, Callable[[], object]],
    device: torch.device,
    *,
    warmup: int,
    repeats: int,
) -> dict[str, Timing]:
    """Time each function once per round, rounds interleaved; medians over ``repeats`` rounds.

    The garbage collector is paused while timing; on CUDA each call is synchronised.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats ≥ 1 and warmup ≥ 0; got {repeats} and {warmup}")
    for _ in range(warmup):
        for function in functions.values():
            function()
    synchronize(device)
    samples: dict[str, list[float]] = {name: [] for name in functions}
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            for name, function in functions.items():
                synchronize(device)
                start = time.perf_counter()
                function()
                synchronize(device)
                samples[name].append(time.perf_counter() - start)
    finally:
        gc.enable()
    return {name: Timing.of(values) for name, values in samples.items()}


# --------------------------------------------------------------------------------------------
# Grids
# --------------------------------------------------------------------------------------------


def voxel_size_for(size: int) -> float:
    """The voxel size (mm) of a ``size``³ grid over the paper's 192 mm field of view."""
    return FIELD_OF_VIEW_MM / size


@dataclass(frozen=True)
class GridSpec:
    """A preprocessing grid of part 1 and what it is used for."""

    size: int
    roles: tuple[str, ...]  # "paper", "96³", "train"

    @property
    def voxel_size(self) -> float:
        """Voxel edge in mm."""
        return voxel_size_for(self.size)

    @property
    def label(self) -> str:
        """E.g. ``64³ @ 3 mm``."""
        return f"{self.size}³ @ {self.voxel_size:g} mm"

    def settings(self) -> Preprocessing:
        """The preprocessing settings of the grid (MNI152 mask, z-score: the defaults)."""
        return Preprocessing(voxel_size=self.voxel_size, shape=(self.size,) * 3)


def grid_specs(train_sizes: Sequence[int]) -> list[GridSpec]:
    """The paper grid, the 96³ grid and every training grid, by size."""
    roles: dict[int, list[str]] = {PAPER_SIZE: ["paper"], FINE_SIZE: ["2 mm"]}
    for size in train_sizes:
        roles.setdefault(size, []).append("train")
    return [GridSpec(size, tuple(roles[size])) for size in sorted(roles)]


# --------------------------------------------------------------------------------------------
# Part 1: preprocessing
# --------------------------------------------------------------------------------------------


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


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, read in chunks (as the cache keys its entries)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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
    return [row.paths[m] for row in cohort.manifest.rows for m in MODALITIES]


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
    split = time_interleaved(split_functions, torch.device("cpu"), warmup=warmup,
                             repeats=repeats)
    hash_ms = split["hash"].median_ms / len(files)
    validate_ms = split["validate"].median_ms / len(files)

    warm = time_interleaved({str(size): functools.partial(load, size) for size in settings},
                            torch.device("cpu"), warmup=warmup, repeats=repeats)

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
            warm_s=warm_t.median_ms / 1000.0, warm_iqr_percent=warm_t.iqr_percent,
            warm_volumes_per_s=n / (warm_t.median_ms / 1000.0),
            warm_speedup=cold / (warm_t.median_ms / 1000.0),
            cache_bytes=folder_bytes(caches[g.size]),
        ))
    return rows, cohorts


# --------------------------------------------------------------------------------------------
# Part 2: loading from the cache
# --------------------------------------------------------------------------------------------


def augmentation_pad(size: int) -> int:
    """The shared pad-crop's padding at a side: side / 8 (8 at 64³ and 4 at 32³, the presets)."""
    return max(1, size // 8)


@dataclass(frozen=True)
class LoadTiming:
    """Per-batch loading times of one (grid, batch size), before the step times are known."""

    size: int
    grid: str
    batch_size: int
    pad: int
    rows: int
    batches_per_epoch: int
    fetch_ms: float
    augment_ms: float
    load_ms: float
    load_iqr_percent: float


@dataclass(frozen=True)
class LoadRow:
    """Loading from the cache against the training step of the same grid and batch size."""

    size: int
    grid: str
    batch_size: int
    pad: int
    rows: int
    batches_per_epoch: int
    fetch_ms: float
    augment_ms: float
    load_ms: float
    load_iqr_percent: float
    volumes_per_s: float
    batches_per_s: float
    step_ms: float  # CR-XX-CC-RR
    step_rr_ms: float  # RR
    step_source: str  # "measured" or "scaled from batch B" (step time ∝ batch)
    ratio: float  # load_ms / step_ms
    ratio_rr: float  # load_ms / step_rr_ms
    fed: str  # "yes" (both ratios < 1), "only CR-XX-CC-RR", "no"


def data_module(cohort: Cohort, batch_size: int, pad: int) -> NeuroDataModule:
    """A data module for ``cohort``'s grid that is never set up: its loader and augmentation.

    ``num_workers=0`` (the default); without a trainer the augmentation uses epoch 0.
    """
    return NeuroDataModule(cohort.manifest.path, MODALITIES, batch_size=batch_size,
                           seed=LOADER_SEED, preprocessing=cohort.settings,
                           cache_dir=cohort.cache_dir, pad=pad, flip=False, num_workers=0)


class EpochLoader:
    """One epoch of training batches per call: DataLoader fetch, then the device-side crop.

    The loader is the one ``NeuroDataModule.train_dataloader`` builds (the module's
    ``_loader``: ``CohortDataset`` with row indices, the module's collate, an
    ``EpochShuffleSampler``, ``drop_last``, ``num_workers=0``), over every row of the cohort
    instead of the pretraining rows of one fold; the augmentation is the module's own
    ``on_after_batch_transfer``.
    """

    def __init__(self, cohort: Cohort, batch_size: int, pad: int, device: torch.device) -> None:
        """Build the loader and the augmenting data module."""
        rows = len(cohort)
        self.module = data_module(cohort, batch_size, pad)
        self.sampler = EpochShuffleSampler(rows, seed=LOADER_SEED)
        dataset = CohortDataset(cohort.volumes, np.arange(rows), cohort.labels, with_index=True)
        self.loader: DataLoader = self.module._loader(dataset, batch_size, sampler=self.sampler,
                                                      drop_last=True)
        self.device = device
        self.epochs = itertools.count()
        self.batches = rows // batch_size
        self.fetch_s: list[float] = []  # per batch, one entry per epoch
        self.augment_s: list[float] = []

    def __call__(self) -> None:
        """Iterate one epoch, recording the mean fetch and augmentation time per batch."""
        self.sampler.set_epoch(next(self.epochs))
        fetch = augment = 0.0
        batches = iter(self.loader)
        while True:
            synchronize(self.device)
            start = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            batch = {k: v.to(self.device) for k, v in batch.items()}
            synchronize(self.device)
            fetched = time.perf_counter()
            self.module.on_after_batch_transfer(batch, 0)
            synchronize(self.device)
            fetch += fetched - start
            augment += time.perf_counter() - fetched
        self.fetch_s.append(fetch / self.batches)
        self.augment_s.append(augment / self.batches)


def measure_loading(
    cohorts: Mapping[int, Cohort], grids: Mapping[int, GridSpec], sizes: Sequence[int],
    batch_sizes: Sequence[int], device: torch.device, *, warmup: int, repeats: int,
) -> tuple[list[LoadTiming], list[str]]:
    """Per-batch loading times of every (training grid, loading batch), epochs interleaved.

    Returns the timings and notes on combinations left out (a batch larger than the cohort).
    """
    loaders: dict[tuple[int, int], EpochLoader] = {}
    notes: list[str] = []
    for size in sizes:
        for batch_size in batch_sizes:
            if len(cohorts[size]) < batch_size:
                notes.append(f"loading at {size}³, batch {batch_size}: left out, the cohort has "
                             f"only {len(cohorts[size])} sessions")
                continue
            loaders[(size, batch_size)] = EpochLoader(cohorts[size], batch_size,
                                                      augmentation_pad(size), device)
    # The loaders record their own fetch and augmentation times; the epoch totals are not used.
    time_interleaved({f"{s}/{b}": loader for (s, b), loader in loaders.items()}, device,
                     warmup=warmup, repeats=repeats)
    out = []
    for (size, batch_size), loader in loaders.items():
        fetch = Timing.of(loader.fetch_s[-repeats:])
        augment = Timing.of(loader.augment_s[-repeats:])
        total = Timing.of([f + a for f, a in zip(loader.fetch_s[-repeats:],
                                                 loader.augment_s[-repeats:], strict=True)])
        out.append(LoadTiming(
            size=size, grid=grids[size].label, batch_size=batch_size,
            pad=augmentation_pad(size), rows=len(cohorts[size]),
            batches_per_epoch=loader.batches, fetch_ms=fetch.median_ms,
            augment_ms=augment.median_ms, load_ms=total.median_ms,
            load_iqr_percent=total.iqr_percent,
        ))
    return out, notes


def step_for(
    rows: Sequence[TrainRow], size: int, batch_size: int, objective: str
) -> tuple[float, int | None]:
    """The step time at (size, batch, objective) and the batch it was measured at.

    When that batch was not trained, the step of the nearest trained batch (in ratio) is scaled
    by batch / that batch: the step's work is proportional to the batch. NaN when the size or
    the objective was not trained.
    """
    candidates = [r for r in rows if r.size == size and r.objective == objective]
    if not candidates:
        return math.nan, None
    best = min(candidates, key=lambda r: (abs(math.log(r.batch_size / batch_size)),
                                          -r.batch_size))
    return best.step_ms * batch_size / best.batch_size, best.batch_size


def fed_verdict(ratio: float, ratio_rr: float) -> str:
    """Whether loading keeps up with the slower (CR-XX-CC-RR) and the faster (RR) step."""
    if not (math.isfinite(ratio) and math.isfinite(ratio_rr)):
        return "n/a"
    if max(ratio, ratio_rr) < 1:
        return "yes"
    if min(ratio, ratio_rr) < 1:
        return "only " + (TRAIN_OBJECTIVES[0] if ratio < ratio_rr else TRAIN_OBJECTIVES[1])
    return "no"


def load_rows(timings: Sequence[LoadTiming], train_rows: Sequence[TrainRow]) -> list[LoadRow]:
    """Join the loading times with the training steps of the same grid and batch."""
    out = []
    for t in timings:
        step, measured_at = step_for(train_rows, t.size, t.batch_size, TRAIN_OBJECTIVES[0])
        step_rr, _ = step_for(train_rows, t.size, t.batch_size, TRAIN_OBJECTIVES[1])
        source = ("not measured" if measured_at is None else "measured"
                  if measured_at == t.batch_size else f"scaled from batch {measured_at}")
        ratio, ratio_rr = t.load_ms / step, t.load_ms / step_rr
        out.append(LoadRow(
            **asdict(t), volumes_per_s=len(MODALITIES) * t.batch_size / (t.load_ms / 1000.0),
            batches_per_s=1000.0 / t.load_ms, step_ms=step, step_rr_ms=step_rr,
            step_source=source, ratio=ratio, ratio_rr=ratio_rr,
            fed=fed_verdict(ratio, ratio_rr),
        ))
    return out


# --------------------------------------------------------------------------------------------
# Part 3: training throughput
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainRow:
    """One taxonomy model's training step at one volume size and batch size."""

    size: int
    grid: str
    tap: str
    objective: str
    batch_size: int
    parameters: int  # trainable
    loss: float  # of the untimed first step: finite unless something is broken
    step_ms: float
    step_iqr_percent: float
    volumes_per_s: float  # 2 modalities × batch / step
    pairs_per_s: float  # batch / step
    peak_bytes: int  # -1 when it could not be measured


@dataclass
class TrainingStep:
    """A full training step per call (``zero_grad``, ``compute_loss``, backward, RAdam step)."""

    model: MultimodalMethod
    optimizer: torch.optim.Optimizer
    batches: Sequence[Mapping[str, Tensor]]
    counter: Iterator[int] = field(default_factory=itertools.count)

    def __call__(self) -> Tensor:
        """One step on the next batch, with a per-step generator as ``training_step``; loss."""
        step = next(self.counter)
        self.optimizer.zero_grad(set_to_none=True)
        generator = torch.Generator().manual_seed(step)
        loss, _ = self.model.compute_loss(self.batches[step % len(self.batches)], generator)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null: the profiler's C++ start/stop lines go there."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def cpu_peak_bytes(step: Callable[[], object]) -> int:
    """Peak bytes allocated through PyTorch's CPU allocator during ``step`` (profiler events).

    -1 when this torch's profiler does not expose its memory events.
    """
    from torch.profiler import ProfilerActivity, profile

    with native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU],
                                           profile_memory=True) as prof:
        step()
    results: Any = getattr(prof.profiler, "kineto_results", None)
    if results is None:
        return -1
    memory = sorted(
        ((e.start_ns(), int(e.nbytes())) for e in results.events()
         if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")),
        key=lambda event: event[0],
    )
    live = peak = 0
    for _, nbytes in memory:
        live += nbytes
        peak = max(peak, live)
    return peak


def cuda_peak_bytes(step: Callable[[], object], device: torch.device) -> int:
    """``max_memory_allocated`` during ``step`` minus the bytes allocated before it."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - before)


def peak_bytes(step: TrainingStep, device: torch.device) -> int:
    """Peak memory of one training step (method in :data:`MEMORY_METHODS`), gradients unset."""
    step.optimizer.zero_grad(set_to_none=True)  # the step allocates its gradients afresh
    gc.collect()
    if device.type == "cuda":
        return cuda_peak_bytes(step, device)
    return cpu_peak_bytes(step)


def training_batches(cohort: Cohort, batch_size: int, pad: int, device: torch.device
                     ) -> list[dict[str, Tensor]]:
    """:data:`BATCH_POOL` augmented training batches of the cohort (rows cycled), on device."""
    module = data_module(cohort, batch_size, pad)
    rows = np.resize(np.arange(len(cohort)), BATCH_POOL * batch_size)  # cycled when too few
    dataset = CohortDataset(cohort.volumes, rows, cohort.labels, with_index=True)
    return [module.on_after_batch_transfer({k: v.to(device) for k, v in batch.items()}, 0)
            for batch in module._loader(dataset, batch_size)]


def build_model(manifest: Path, size: int, objective: str, device: torch.device
                ) -> tuple[MultimodalMethod, torch.optim.Optimizer]:
    """The ``neuro`` preset's taxonomy model at ``size``³ (default tap), and its RAdam."""
    config = resolve("neuro", None, {
        "data.manifest": str(manifest), "objective.name": objective, "model.local_taps": None,
        "data.preprocessing.voxel_size": voxel_size_for(size),
        "data.preprocessing.shape": [size] * 3,
    })
    torch.manual_seed(0)
    shapes = {m: (1, size, size, size) for m in config.modalities}
    model = METHODS[config.method].from_config(config, shapes, NUM_CLASSES).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.RAdam(params, lr=config.optim.lr,
                                  weight_decay=config.optim.weight_decay)
    return model, optimizer


def measure_training(
    manifest: Path, cohorts: Mapping[int, Cohort], grids: Mapping[int, GridSpec],
    sizes: Sequence[int], batch_sizes: Sequence[int], device: torch.device, *, warmup: int,
    repeats: int,
) -> list[TrainRow]:
    """Time every (size, batch, objective) step in the same interleaved rounds; peak memory.

    One model per (size, objective), shared by its batch sizes; the inputs are augmented
    batches of the cohort preprocessed at that size.
    """
    steps: dict[tuple[int, int, str], TrainingStep] = {}
    first_loss: dict[tuple[int, int, str], float] = {}
    info: dict[tuple[int, str], tuple[str, int]] = {}
    for size in sizes:
        models = {o: build_model(manifest, size, o, device) for o in TRAIN_OBJECTIVES}
        for objective, (model, _) in models.items():
            tap = ",".join(model.encoder(MODALITIES[0]).taps)
            assert tap == default_local_tap(size)
            info[(size, objective)] = (tap, sum(p.numel() for p in model.parameters()
                                                if p.requires_grad))
        for batch_size in batch_sizes:
            batches = training_batches(cohorts[size], batch_size, augmentation_pad(size), device)
            for objective, (model, optimizer) in models.items():
                key = (size, batch_size, objective)
                steps[key] = TrainingStep(model, optimizer, batches)
                first_loss[key] = float(steps[key]())  # untimed: lazy state, checks the loss
    timings = time_interleaved({"/".join(map(str, k)): s for k, s in steps.items()}, device,
                               warmup=warmup, repeats=repeats)
    rows = []
    for key, step in steps.items():
        size, batch_size, objective = key
        t = timings["/".join(map(str, key))]
        seconds = t.median_ms / 1000.0
        rows.append(TrainRow(
            size=size, grid=grids[size].label, tap=info[(size, objective)][0],
            objective=objective, batch_size=batch_size, parameters=info[(size, objective)][1],
            loss=first_loss[key], step_ms=t.median_ms, step_iqr_percent=t.iqr_percent,
            volumes_per_s=len(MODALITIES) * batch_size / seconds,
            pairs_per_s=batch_size / seconds, peak_bytes=peak_bytes(step, device),
        ))
    return rows


# --------------------------------------------------------------------------------------------
# Figure
# --------------------------------------------------------------------------------------------


def write_figure(path: Path, train: Sequence[TrainRow], loading: Sequence[LoadRow],
                 title: str) -> None:
    """Step time (with loading time per batch) and peak memory against batch size, per size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

    fig, (ax_time, ax_memory) = plt.subplots(1, 2, figsize=(12, 4.6), constrained_layout=True)
    sizes = sorted({r.size for r in train} | {r.size for r in loading})
    colours = [f"C{i}" for i in range(len(sizes))]
    styles = dict(zip(TRAIN_OBJECTIVES, ("-", "--"), strict=True))
    batches: set[int] = set()
    for colour, size in zip(colours, sizes, strict=False):
        for objective, style in styles.items():
            rows = sorted((r for r in train if r.size == size and r.objective == objective),
                          key=lambda r: r.batch_size)
            if not rows:
                continue
            x = [r.batch_size for r in rows]
            batches.update(x)
            ax_time.plot(x, [r.step_ms for r in rows], style, marker="o", color=colour,
                         label=f"{size}³ step {objective}")
            memory = [(r.batch_size, r.peak_bytes / 2**20) for r in rows if r.peak_bytes > 0]
            if memory:
                ax_memory.plot(*zip(*memory, strict=True), style, marker="o", color=colour,
                               label=f"{size}³ {objective}")
        load = sorted((r for r in loading if r.size == size), key=lambda r: r.batch_size)
        if load:
            batches.update(r.batch_size for r in load)
            ax_time.plot([r.batch_size for r in load], [r.load_ms for r in load], ":",
                         marker="^", color=colour, label=f"{size}³ loading (fetch + augment)")
    for ax, ylabel in ((ax_time, "ms per batch (median)"),
                       (ax_memory, "peak memory per step (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sorted(batches))
        ax.set_xticklabels([str(b) for b in sorted(batches)])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("batch size (pairs)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    ax_time.set_title("training step and loading time")
    ax_memory.set_title("peak memory of a training step")
    fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Command line and report
# --------------------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    """Comma-separated integers ≥ 2, in order, without repeats."""
    try:
        values = list(dict.fromkeys(int(v) for v in text.split(",") if v.strip()))
    except ValueError:
        message = f"expected comma-separated integers; got {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if not values or any(v < 2 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers ≥ 2; got {text!r}")
    return values


def size_list(text: str) -> list[int]:
    """Comma-separated volume sides: powers of two ≥ 16 (the 3-D DCGAN encoder's)."""
    values = int_list(text)
    bad = [v for v in values if v < 16 or v & (v - 1)]
    if bad:
        raise argparse.ArgumentTypeError(
            f"the 3-D DCGAN encoder needs power-of-two sides ≥ 16 (e.g. 32,64,128); got {bad}")
    return sorted(values)


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser = argparse.ArgumentParser(
        prog="neuro.py",
        description="Cost of the neuroimaging path on a simulated cohort: preprocessing "
        "throughput (cold and warm cache), loading from the cache against the training step, "
        "training throughput and peak memory of the 3-D taxonomy model, and a figure.",
    )
    parser.add_argument("--subjects", type=int, default=None,
                        help=f"subjects of the simulated cohort, one session each (default: "
                        f"{DEFAULT_SUBJECTS}; --quick: {QUICK_SUBJECTS})")
    parser.add_argument("--sizes", type=size_list, default=None,
                        help="volume sides of the training part, powers of two (default: "
                        f"{','.join(map(str, DEFAULT_SIZES))}, plus {LARGE_SIZE} with --large "
                        f"or on CUDA; --quick: {','.join(map(str, QUICK_SIZES))})")
    parser.add_argument("--large", action="store_true",
                        help=f"add {LARGE_SIZE}³ to the default sizes (slow on a CPU)")
    parser.add_argument("--batch-sizes", type=int_list, default=None,
                        help="training batch sizes (default: "
                        f"{','.join(map(str, DEFAULT_BATCH_SIZES))}; --quick: "
                        f"{','.join(map(str, QUICK_BATCH_SIZES))})")
    parser.add_argument("--load-batch-sizes", type=int_list, default=None,
                        help="batch sizes of the loading part (default: "
                        f"{','.join(map(str, DEFAULT_LOAD_BATCH_SIZES))}; --quick: "
                        f"{','.join(map(str, QUICK_LOAD_BATCH_SIZES))})")
    parser.add_argument("--split-files", type=int, default=None,
                        help="files timed directly for the per-volume split of preprocessing "
                        f"(default: {DEFAULT_SPLIT_FILES}; --quick: {QUICK_SPLIT_FILES})")
    parser.add_argument("--device", default=default_device,
                        help=f"torch device of parts 2 and 3 (default here: {default_device}); "
                        "preprocessing always runs on the CPU")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed rounds per measurement (default: {DEFAULT_REPEATS}; "
                        f"--quick: {QUICK_REPEATS})")
    parser.add_argument("--warmup", type=int, default=None,
                        help=f"untimed rounds first (default: {DEFAULT_WARMUP}; "
                        f"--quick: {QUICK_WARMUP})")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK_SUBJECTS} subjects, 32³ only, batches 2 and 4, "
                        "few repeats")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for this run (default: torch's default)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the temporary cohort and caches go (default: the system's "
                        "temporary folder); removed at the end")
    parser.add_argument("--figure", type=Path, default=DEFAULT_FIGURE,
                        help=f"PNG to write (default: {DEFAULT_FIGURE})")
    parser.add_argument("--no-figure", action="store_true", help="write no figure")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser


def load_average() -> float | None:
    """1-minute load average, where the platform has one."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def busy_cpu_warning(threads: int, load: float | None) -> str | None:
    """A warning when other processes already occupy the cores this run needs.

    Preprocessing always runs on the CPU, so the warning applies whatever the device.
    """
    cores = os.cpu_count() or 1
    # One busy core's worth of slack: the 1-minute average lags behind a load that just ended.
    if load is None or load + threads <= cores + 1.0:
        return None
    return (f"the 1-minute load average is {load:.1f} on {cores} cores before the run: other "
            f"processes compete with its {threads} thread(s), so timings can be far too slow "
            "(oversubscribed OpenMP threads). Rerun on a quiet machine"
            + (" or with --threads 1." if threads > 1 else "."))


def format_load(load: float | None) -> str:
    """A load average for the output (``n/a`` where the platform has none)."""
    return "n/a" if load is None else f"{load:.2f}"


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo on Linux, else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_console() -> Console:
    """A console 170 columns wide when not on a terminal (pipes, CI logs default to 80)."""
    return Console() if sys.stdout.isatty() else Console(width=170)


def format_bytes(n: int) -> str:
    """Human-readable bytes (``n/a`` for a negative count)."""
    if n < 0:
        return "n/a"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def preprocessing_table(rows: Sequence[PreprocessRow], subjects: int) -> Table:
    """Part 1's table."""
    table = Table(title=f"Preprocessing throughput (load_cohort, {subjects} sessions × 2 "
                  "modalities; hash, validate, preproc, other: ms per volume; warm: median)")
    headers = ("grid", "role", "vols", "mask s", "cold s", "cold vol/s", "hash", "validate",
               "preproc", "other", "warm s", "IQR%", "warm vol/s", "cold/warm", "cache")
    for header in headers:
        table.add_column(header, justify="left" if header in ("grid", "role") else "right",
                         no_wrap=header in ("grid", "role", "cache"))
    for r in rows:
        table.add_row(r.grid, r.roles, str(r.volumes), f"{r.mask_s:.2f}", f"{r.cold_s:.2f}",
                      f"{r.cold_volumes_per_s:.1f}", f"{r.hash_ms:.1f}", f"{r.validate_ms:.1f}",
                      f"{r.preprocess_ms:.1f}", f"{r.other_ms:.1f}", f"{r.warm_s:.3f}",
                      f"{r.warm_iqr_percent:.0f}", f"{r.warm_volumes_per_s:,.0f}",
                      f"{r.warm_speedup:.0f}×", format_bytes(r.cache_bytes))
    return table


def training_table(rows: Sequence[TrainRow], memory_label: str) -> Table:
    """Part 3's table."""
    table = Table(title="Training throughput of the taxonomy model (2 modalities, neuro preset, "
                  "default tap per size, median)")
    headers = ("size", "tap", "objective", "batch", "params", "ms/step", "IQR%", "vol/s",
               "pairs/s", f"peak mem ({memory_label})")
    for header in headers:
        table.add_column(header, justify="left" if header in ("size", "tap", "objective")
                         else "right")
    for r in sorted(rows, key=lambda r: (r.size, TRAIN_OBJECTIVES.index(r.objective),
                                         r.batch_size)):
        table.add_row(f"{r.size}³", r.tap, r.objective, str(r.batch_size), f"{r.parameters:,}",
                      f"{r.step_ms:.1f}", f"{r.step_iqr_percent:.0f}", f"{r.volumes_per_s:.2f}",
                      f"{r.pairs_per_s:.2f}", format_bytes(r.peak_bytes))
    return table


def loading_table(rows: Sequence[LoadRow]) -> Table:
    """Part 2's table."""
    first, second = TRAIN_OBJECTIVES
    table = Table(title="Loading from the cache vs the training step: is the loop fed? "
                  "(num_workers=0, per batch, median)")
    headers = ("grid", "batch", "batches/epoch", "fetch ms", "augment ms", "load ms", "IQR%",
               "vol/s", "batches/s", f"step ms {first}", f"step ms {second}",
               f"load/step {first}", f"load/step {second}", "fed?")
    for header in headers:
        table.add_column(header, justify="left" if header in ("grid", "fed?") else "right",
                         no_wrap=header in ("grid", "fed?"))
    for r in rows:
        mark = "" if r.step_source == "measured" else "*"
        table.add_row(r.grid, str(r.batch_size), str(r.batches_per_epoch), f"{r.fetch_ms:.2f}",
                      f"{r.augment_ms:.2f}", f"{r.load_ms:.2f}", f"{r.load_iqr_percent:.0f}",
                      f"{r.volumes_per_s:,.0f}", f"{r.batches_per_s:,.1f}",
                      f"{r.step_ms:.1f}{mark}", f"{r.step_rr_ms:.1f}{mark}",
                      f"{r.ratio:.3f}", f"{r.ratio_rr:.3f}", r.fed)
    return table


def fed_summary(rows: Sequence[LoadRow]) -> str:
    """One sentence on whether loading keeps up, for the output."""
    if not rows:
        return "no loading row was measured."
    starved = [f"{r.size}³ batch {r.batch_size}" for r in rows if r.fed != "yes"]
    worst = max(rows, key=lambda r: max(r.ratio, r.ratio_rr))
    worst_ratio = max(worst.ratio, worst.ratio_rr)
    if not starved:
        return (f"loading keeps up everywhere: load/step < 1 in every row (at most "
                f"{worst_ratio:.3f}, {worst.size}³ batch {worst.batch_size}), so the training "
                "loop is fed even with num_workers=0; loading adds at most "
                f"{100 * worst_ratio / (1 + worst_ratio):.1f}% to a step there.")
    return (f"loading does NOT keep up (load/step ≥ 1 for at least one objective) at "
            f"{', '.join(starved)}: the step waits for data; raise num_workers (the fetch) or "
            "move the crop off the critical path.")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the tables and return (and optionally write) the results.

    ``--threads`` applies to this run only: torch's thread count is restored afterwards.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    threads_before = torch.get_num_threads()
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be ≥ 1")
        torch.set_num_threads(args.threads)
    try:
        return run(args, parser)
    finally:
        torch.set_num_threads(threads_before)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The body of :func:`main` once the arguments are parsed."""
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        parser.error(f"bad --device {args.device!r}: {error}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    if device.type not in MEMORY_METHODS:
        parser.error(f"--device must be cpu or cuda; got {args.device!r}")
    quick = args.quick
    repeats = args.repeats if args.repeats is not None else (
        QUICK_REPEATS if quick else DEFAULT_REPEATS)
    warmup = args.warmup if args.warmup is not None else (QUICK_WARMUP if quick else DEFAULT_WARMUP)
    if repeats < 1 or warmup < 0:
        parser.error("--repeats must be ≥ 1 and --warmup ≥ 0")
    subjects = args.subjects if args.subjects is not None else (
        QUICK_SUBJECTS if quick else DEFAULT_SUBJECTS)
    if subjects < 2:
        parser.error("--subjects must be ≥ 2")
    if args.sizes is not None:
        sizes = list(args.sizes)
    elif quick:
        sizes = list(QUICK_SIZES)
    else:
        sizes = list(DEFAULT_SIZES) + ([LARGE_SIZE] if args.large or device.type == "cuda"
                                       else [])
    batch_sizes = args.batch_sizes or list(QUICK_BATCH_SIZES if quick else DEFAULT_BATCH_SIZES)
    load_batch_sizes = args.load_batch_sizes or list(
        QUICK_LOAD_BATCH_SIZES if quick else DEFAULT_LOAD_BATCH_SIZES)
    split_files = args.split_files if args.split_files is not None else (
        QUICK_SPLIT_FILES if quick else DEFAULT_SPLIT_FILES)
    if split_files < 1:
        parser.error("--split-files must be ≥ 1")
    figure = None if args.no_figure else args.figure

    console = make_console()
    meta: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else cpu_name()),
        "threads": torch.get_num_threads(),
        "subjects": subjects,
        "volumes": len(MODALITIES) * subjects,
        "simulation_voxel_size": SIMULATION_VOXEL_MM,
        "sizes": sizes,
        "batch_sizes": batch_sizes,
        "load_batch_sizes": load_batch_sizes,
        "objectives": list(TRAIN_OBJECTIVES),
        "split_files": split_files,
        "repeats": repeats,
        "warmup": warmup,
        "quick": quick,
        "memory_method": MEMORY_METHODS[device.type],
        "cpu_count": os.cpu_count(),
        "load_average_before": load_average(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    console.print(
        f"[bold]mmssl neuro benchmark[/bold]  torch {meta['torch']}  device {meta['device']} "
        f"({meta['device_name']})  threads {meta['threads']}  {subjects} subjects  sizes "
        f"{','.join(map(str, sizes))}  batches {','.join(map(str, batch_sizes))}  repeats "
        f"{repeats} (+{warmup} warm-up)  1-min load average "
        f"{format_load(meta['load_average_before'])}"
    )
    warning = busy_cpu_warning(meta["threads"], meta["load_average_before"])
    if warning:
        console.print(f"[red]warning[/red]: {warning}")

    grids = grid_specs(sizes)
    grid_of = {g.size: g for g in grids}
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mmssl-neuro-bench-", dir=args.workdir) as tmp:
        workdir = Path(tmp)
        start = time.perf_counter()
        manifest = simulate_cohort(workdir / "cohort", SimulationSettings(
            subjects=subjects, seed=SIMULATION_SEED, voxel_size=SIMULATION_VOXEL_MM),
            progress=False)
        meta["simulation_s"] = time.perf_counter() - start
        console.print(f"simulated {subjects} subjects ({meta['volumes']} volumes at "
                      f"{SIMULATION_VOXEL_MM:g} mm) in {meta['simulation_s']:.1f} s")

        prep_rows, cohorts = measure_preprocessing(
            manifest, grids, workdir, split_files=split_files, warmup=warmup, repeats=repeats)
        console.print(preprocessing_table(prep_rows, subjects))

        load_timings, load_notes = measure_loading(
            cohorts, grid_of, sizes, load_batch_sizes, device, warmup=warmup, repeats=repeats)
        train_rows = measure_training(manifest, cohorts, grid_of, sizes, batch_sizes, device,
                                      warmup=warmup, repeats=repeats)
        memory_label = "allocator" if device.type == "cuda" else "profiler"
        console.print(training_table(train_rows, memory_label))
        console.print(f"Peak memory ({memory_label}) = {MEMORY_METHODS[device.type]}.")
        broken = [f"{r.size}³ {r.objective} batch {r.batch_size}" for r in train_rows
                  if not math.isfinite(r.loss)]
        if broken:
            console.print(f"[red]warning[/red]: non-finite loss at the first step: "
                          f"{', '.join(broken)}")

        loading = load_rows(load_timings, train_rows)
        console.print(loading_table(loading))
        if any(r.step_source != "measured" for r in loading):
            console.print("* step not trained at this batch: the step time of the nearest "
                          "trained batch B', scaled by batch / B' (see step_source in the JSON).")
        for note in load_notes:
            console.print(f"[yellow]note[/yellow]: {note}")
        summary = fed_summary(loading)
        console.print(f"[bold]Is the loop fed?[/bold] {summary}")
        del cohorts  # drop the memory maps before the folder goes

    meta["load_average_after"] = load_average()
    meta["loading_notes"] = load_notes
    if figure is not None:
        title = (f"mmssl neuro benchmark: {meta['device']} ({meta['device_name']}), "
                 f"{meta['threads']} thread(s), torch {meta['torch']}, {subjects} subjects, "
                 f"medians of {repeats} rounds")
        write_figure(figure, train_rows, loading, title)
        console.print(f"figure: {figure}")
    console.print(FOOTER, style="dim")
    results: dict[str, Any] = {
        "meta": meta,
        "preprocessing": [asdict(r) for r in prep_rows],
        "loading": [asdict(r) for r in loading],
        "training": [asdict(r) for r in train_rows],
        "fed": summary,
        "figure": str(figure) if figure is not None else None,
        "notes": FOOTER,
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        console.print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
