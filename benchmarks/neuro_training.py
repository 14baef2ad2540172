"""Part 3 of :mod:`benchmarks.neuro`: 3-D training throughput, FLOPs and peak memory.

One taxonomy model per (volume size, objective), built from the ``neuro`` preset with the
default local tap of the size (``mmssl.methods.METHODS[...].from_config``, input shapes from the
dataset registry), trained on augmented batches of the cohort preprocessed at that size. Every
(size, batch, objective, variant) step is timed in the same interleaved rounds; then each row's
FLOPs and peak memory are measured on one more step.

A *variant* is how the step runs (:data:`VARIANTS`): ``fp32`` (contiguous float32, the
default), ``fp32-cl`` (channels-last-3d model and inputs), ``bf16`` (bfloat16 autocast) and
``bf16-cl`` (both). Each variant has its own copy of the model from the same initial weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from benchmarks.harness import count_flops, format_bytes, peak_memory_bytes, time_interleaved
from benchmarks.neuro_cohort import (
    MODALITIES,
    GridSpec,
    augmentation_pad,
    data_module,
    voxel_size_for,
)
from benchmarks.workloads import TrainingStep, radam, trainable_parameters
from mmssl.analysis.tables import Table
from mmssl.config import resolve
from mmssl.data.base import to_memory_format
from mmssl.data.neuro import Cohort, CohortDataset, NeuroSettings
from mmssl.data.registry import dataset_spec
from mmssl.methods import METHODS, MultimodalMethod
from mmssl.nn import default_local_tap
from mmssl.runs.allocator import apply_cpu_allocator
from mmssl.runs.performance import apply_memory_format

__all__ = ["TRAIN_OBJECTIVES", "VARIANTS", "TrainRow", "build_model", "measure_training",
           "training_batches", "training_table"]

TRAIN_OBJECTIVES: tuple[str, ...] = ("CR-XX-CC-RR", "RR")
#: name → (memory format, autocast dtype or None)
VARIANTS: dict[str, tuple[str, torch.dtype | None]] = {
    "fp32": ("contiguous", None),
    "fp32-cl": ("channels_last", None),
    "bf16": ("contiguous", torch.bfloat16),
    "bf16-cl": ("channels_last", torch.bfloat16),
}
BATCH_POOL = 2  # distinct batches cycled through by the timed training steps


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
    gflop_per_step: float  # convolutions and matrix products of one step, forward + backward
    gflop_per_s: float  # gflop_per_step / median step time: achieved, a lower bound
    variant: str = "fp32"  # how the step ran (VARIANTS)


def training_batches(cohort: Cohort, batch_size: int, pad: int, device: torch.device
                     ) -> list[dict[str, Tensor]]:
    """:data:`BATCH_POOL` augmented training batches of the cohort (rows cycled), on device."""
    module = data_module(cohort, batch_size, pad)
    rows = np.resize(np.arange(len(cohort)), BATCH_POOL * batch_size)  # cycled when too few
    dataset = CohortDataset(cohort.volumes, rows, cohort.labels, with_index=True)
    return [module.on_after_batch_transfer({k: v.to(device) for k, v in batch.items()}, 0)
            for batch in module.loader(dataset, batch_size)]


def build_model(manifest: Path, size: int, objective: str, device: torch.device
                ) -> tuple[MultimodalMethod, torch.optim.Optimizer]:
    """The ``neuro`` preset's taxonomy model at ``size``³ (default tap), and its RAdam."""
    config = resolve("neuro", None, {
        "data.neuro.manifest": str(manifest), "objective.name": objective,
        "model.local_taps": None, "data.neuro.preprocessing.voxel_size": voxel_size_for(size),
        "data.neuro.preprocessing.shape": [size] * 3,
    })
    settings = config.data.settings
    assert isinstance(settings, NeuroSettings)
    shapes = dataset_spec(config.data.dataset).input_shapes(settings, config.modalities)
    classes = max((settings.label_mapping or {"": 1}).values()) + 1
    torch.manual_seed(0)
    model = METHODS[config.method].from_config(config, shapes, classes).to(device).train()
    return model, radam(model, config.optim)


def measure_training(
    manifest: Path, cohorts: Mapping[int, Cohort], grids: Mapping[int, GridSpec],
    sizes: Sequence[int], batch_sizes: Sequence[int], device: torch.device, *, warmup: int,
    repeats: int, variants: Sequence[str] = ("fp32",), cpu_allocator: str = "retain",
) -> list[TrainRow]:
    """Time every (size, batch, objective, variant) step in the same interleaved rounds; FLOPs,
    memory.

    One model per (size, objective, variant), shared by its batch sizes; the inputs are
    augmented batches of the cohort preprocessed at that size, in the variant's layout. The
    process's allocator is set as ``mmssl train`` sets it for ``trainer.cpu_allocator``
    (``retain`` by default; ``system``: glibc's defaults, for a before/after in a fresh process).
    """
    apply_cpu_allocator(cpu_allocator)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    steps: dict[tuple[int, int, str, str], TrainingStep] = {}
    first_loss: dict[tuple[int, int, str, str], float] = {}
    info: dict[tuple[int, str], tuple[str, int]] = {}
    for size in sizes:
        models = {(o, v): build_model(manifest, size, o, device)
                  for o in TRAIN_OBJECTIVES for v in variants}
        for (objective, variant), (model, _) in models.items():
            apply_memory_format(model, VARIANTS[variant][0])
            tap = ",".join(model.encoder(MODALITIES[0]).taps)
            assert tap == default_local_tap(size)
            info[(size, objective)] = (tap, trainable_parameters(model))
        for batch_size in batch_sizes:
            batches = training_batches(cohorts[size], batch_size, augmentation_pad(size), device)
            for (objective, variant), (model, optimizer) in models.items():
                memory_format, dtype = VARIANTS[variant]
                laid_out = [{k: to_memory_format(v, memory_format) for k, v in b.items()}
                            for b in batches]
                key = (size, batch_size, objective, variant)
                steps[key] = TrainingStep(model, optimizer, laid_out, autocast=dtype)
                first_loss[key] = float(steps[key]())  # untimed: lazy state, checks the loss
    timings = time_interleaved({"/".join(map(str, k)): s for k, s in steps.items()}, device,
                               warmup=warmup, repeats=repeats)
    rows = []
    for key, step in steps.items():
        size, batch_size, objective, variant = key
        t = timings["/".join(map(str, key))]
        gflop = count_flops(step) / 1e9
        step.optimizer.zero_grad(set_to_none=True)
        rows.append(TrainRow(
            size=size, grid=grids[size].label, tap=info[(size, objective)][0],
            objective=objective, batch_size=batch_size, parameters=info[(size, objective)][1],
            loss=first_loss[key], step_ms=t.median_ms, step_iqr_percent=t.iqr_percent,
            volumes_per_s=t.rate(len(MODALITIES) * batch_size), pairs_per_s=t.rate(batch_size),
            peak_bytes=peak_memory_bytes(step, device), gflop_per_step=gflop,
            gflop_per_s=t.rate(gflop), variant=variant,
        ))
    return rows


def training_table(rows: Sequence[TrainRow], memory_label: str) -> Table:
    """Part 3's table; ``memory_label`` names the memory measure (profiler or allocator)."""
    ordered = sorted(rows, key=lambda r: (r.size, TRAIN_OBJECTIVES.index(r.objective),
                                          r.batch_size, list(VARIANTS).index(r.variant)))
    return Table(
        "Training throughput of the taxonomy model (2 modalities, neuro preset, default tap "
        "per size, median)",
        ["size", "tap", "objective", "variant", "batch", "params", "ms/step", "IQR%", "vol/s",
         "pairs/s", "GFLOP/step", "GFLOP/s", f"peak mem ({memory_label})"],
        [[f"{r.size}³", r.tap, r.objective, r.variant, str(r.batch_size), f"{r.parameters:,}",
          f"{r.step_ms:.1f}", f"{r.step_iqr_percent:.0f}", f"{r.volumes_per_s:.2f}",
          f"{r.pairs_per_s:.2f}", f"{r.gflop_per_step:.3g}", f"{r.gflop_per_s:.3g}",
          format_bytes(r.peak_bytes)] for r in ordered],
        text_columns=("size", "tap", "objective", "variant"),
    )
