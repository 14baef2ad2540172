"""Part 2 of :mod:`benchmarks.neuro`: loading from the cache against the training step.

Epochs over every row of the memory-mapped cohort through the data module's own loader
(``NeuroDataModule.loader`` over a ``CohortDataset``, an ``EpochShuffleSampler``,
``drop_last``, ``num_workers=0``), each batch moved to the device and cropped by the module's
``on_after_batch_transfer`` (the pad-crop); per batch: fetch, augment and their sum,
then the ratio to the training step of part 3 at the same grid and batch — is the loop fed?
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from benchmarks.harness import Timing, synchronize, time_interleaved
from benchmarks.neuro_cohort import (
    LOADER_SEED,
    MODALITIES,
    GridSpec,
    augmentation_pad,
    data_module,
)
from benchmarks.neuro_training import TRAIN_OBJECTIVES, TrainRow
from mmssl.analysis.tables import Table
from mmssl.data.loading import EpochShuffleSampler
from mmssl.data.neuro import Cohort, CohortDataset

__all__ = ["EpochLoader", "LoadRow", "LoadTiming", "fed_summary", "fed_verdict", "load_rows",
           "loading_table", "measure_loading", "step_for"]


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
class LoadRow(LoadTiming):
    """Loading from the cache against the training step of the same grid and batch size."""

    volumes_per_s: float
    batches_per_s: float
    step_ms: float  # CR-XX-CC-RR
    step_rr_ms: float  # RR
    step_source: str  # "measured" or "scaled from batch B" (step time ∝ batch)
    ratio: float  # load_ms / step_ms
    ratio_rr: float  # load_ms / step_rr_ms
    fed: str  # "yes" (both ratios < 1), "only CR-XX-CC-RR", "no"


class EpochLoader:
    """One epoch of training batches per call: DataLoader fetch, then the device-side crop.

    The loader is the one ``NeuroDataModule.train_dataloader`` builds (``loader`` over a
    ``CohortDataset`` with row indices, an ``EpochShuffleSampler``, ``drop_last``,
    ``num_workers=0``), over every row of the cohort instead of the pretraining rows of one
    fold; the augmentation is the module's own ``on_after_batch_transfer``.
    """

    def __init__(self, cohort: Cohort, batch_size: int, pad: int, device: torch.device) -> None:
        """Build the loader and the augmenting data module."""
        rows = len(cohort)
        self.module = data_module(cohort, batch_size, pad)
        self.sampler = EpochShuffleSampler(rows, seed=LOADER_SEED)
        dataset = CohortDataset(cohort.volumes, np.arange(rows), cohort.labels, with_index=True)
        self.loader: DataLoader = self.module.loader(dataset, batch_size, sampler=self.sampler,
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
    if not loaders:
        return [], notes
    # The loaders record their own fetch and augmentation times; the epoch totals are not used.
    time_interleaved({f"{s}/{b}": loader for (s, b), loader in loaders.items()}, device,
                     warmup=warmup, repeats=repeats)
    out = []
    for (size, batch_size), loader in loaders.items():
        fetch_s, augment_s = loader.fetch_s[-repeats:], loader.augment_s[-repeats:]
        fetch, augment = Timing.of(fetch_s), Timing.of(augment_s)
        total = Timing.of([f + a for f, a in zip(fetch_s, augment_s, strict=True)])
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


def loading_table(rows: Sequence[LoadRow]) -> Table:
    """Part 2's table."""
    first, second = TRAIN_OBJECTIVES
    cells = []
    for r in rows:
        mark = "" if r.step_source == "measured" else "*"
        cells.append([r.grid, str(r.batch_size), str(r.batches_per_epoch), f"{r.fetch_ms:.2f}",
                      f"{r.augment_ms:.2f}", f"{r.load_ms:.2f}", f"{r.load_iqr_percent:.0f}",
                      f"{r.volumes_per_s:,.0f}", f"{r.batches_per_s:,.1f}",
                      f"{r.step_ms:.1f}{mark}", f"{r.step_rr_ms:.1f}{mark}",
                      f"{r.ratio:.3f}", f"{r.ratio_rr:.3f}", r.fed])
    return Table(
        "Loading from the cache vs the training step: is the loop fed? "
        "(num_workers=0, per batch, median)",
        ["grid", "batch", "batches/epoch", "fetch ms", "augment ms", "load ms", "IQR%",
         "vol/s", "batches/s", f"step ms {first}", f"step ms {second}", f"load/step {first}",
         f"load/step {second}", "fed?"],
        cells,
        text_columns=("grid", "fed?"),
    )


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
