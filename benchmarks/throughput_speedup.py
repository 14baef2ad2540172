"""Part 4 of :mod:`benchmarks.throughput`: today's training step against the new one.

* **today**: ``objective.estimator: dense`` (the whole score tensor kept for backward),
  ``trainer.memory_format: contiguous``, eager;
* **new**: ``objective.estimator: lean`` and the memory format a run would train in
  (``--speedup-memory-format``; ``auto`` asks :func:`mmssl.runs.performance.decide_memory_format`
  exactly as ``mmssl train`` does — the per-machine cache, else a short measurement).

Both models start from the same weights and train on the same batches (the new one's inputs in
its layout), their full training steps timed in the same interleaved rounds
(:func:`~benchmarks.harness.time_interleaved`); the first step's losses are compared (the same
computation up to float rounding). Then the memory of the InfoNCE estimator alone, dense vs
lean, on CR-like shapes (anchors (B, 64, 1), candidates (B, 64, L); L = 512 is an 8³ map):
forward+backward allocator peak (CUDA allocator, or the CPU profiler's memory events) and
the bytes the graph saves for backward (:func:`benchmarks.throughput_estimator.measure_memory`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from benchmarks.harness import (
    autograd_saved_bytes,
    format_bytes,
    peak_memory_bytes,
    time_interleaved,
)
from benchmarks.throughput_estimator import HEAD_DIM, forward_backward
from benchmarks.throughput_objectives import BATCH_POOL, PAPER_DATASET, PAPER_TAP, paper_inputs
from benchmarks.workloads import TrainingStep, radam, random_batches
from mmssl.analysis.tables import Table
from mmssl.data.base import to_memory_format
from mmssl.data.registry import dataset_spec
from mmssl.methods import TaxonomyMethod
from mmssl.objectives.infonce import InfoNCEResult, infonce
from mmssl.objectives.taxonomy import Objective
from mmssl.runs.performance import apply_memory_format, decide_memory_format

__all__ = ["MEMORY_FORMAT_CHOICES", "SPEEDUP_OBJECTIVES", "EstimatorMemoryRow", "SpeedupRow",
           "estimator_memory", "measure_speedup", "memory_table", "speedup_table"]

#: The objectives of part 4 (the cheapest, the global-only and the full taxonomy).
SPEEDUP_OBJECTIVES: tuple[str, ...] = ("CR", "RR", "CR-XX-CC-RR")
MEMORY_FORMAT_CHOICES: tuple[str, ...] = ("auto", "channels_last", "contiguous")


@dataclass(frozen=True)
class SpeedupRow:
    """Today's and the new training step of one objective, timed in the same rounds."""

    objective: str
    batch_size: int
    memory_format: str  # of the new step
    memory_format_source: str  # configured, measured or cached
    today_pairs_per_s: float
    new_pairs_per_s: float
    today_ms: float
    new_ms: float
    today_iqr_percent: float
    new_iqr_percent: float
    ratio: float  # new pairs/s ÷ today pairs/s (> 1: the new step is faster)
    loss_abs_diff: float  # |first-step loss today − new|, same weights, batch and generator


@dataclass(frozen=True)
class EstimatorMemoryRow:
    """Memory of the dense and the lean InfoNCE estimator on one CR-like shape."""

    batch: int
    locations: int
    channels: int
    dense_peak_bytes: int  # -1: the profiler gave no memory events
    lean_peak_bytes: int
    dense_saved_bytes: int
    lean_saved_bytes: int
    peak_ratio: float  # dense / lean
    saved_ratio: float  # dense / lean


def _method(objective: str, estimator: str, device: torch.device) -> TaxonomyMethod:
    shapes = paper_inputs()
    method = TaxonomyMethod.create(list(shapes), shapes, model={"local_taps": [PAPER_TAP]},
                                   objective={"name": objective, "estimator": estimator},
                                   seed=0)
    assert isinstance(method, TaxonomyMethod)
    return method.to(device).train()


def _formatted(batches: Sequence[Mapping[str, Tensor]], memory_format: str
               ) -> list[dict[str, Tensor]]:
    return [{k: to_memory_format(v, memory_format) for k, v in batch.items()}
            for batch in batches]


def measure_speedup(
    objective: str, batch_size: int, device: torch.device, *, memory_format: str = "auto",
    warmup: int, repeats: int,
) -> SpeedupRow:
    """Today's (dense, contiguous, eager) against the new (lean, ``memory_format``) training
    step of the paper-default model for ``objective``: interleaved rounds, same weights and
    batches; ``auto`` resolves the layout as a training run would."""
    torch.manual_seed(0)
    today = _method(objective, "dense", device)
    new = _method(objective, "lean", device)
    new.load_state_dict(today.state_dict())
    decision = decide_memory_format(memory_format, new, batch_size, device)
    apply_memory_format(new, decision.choice)

    batches = random_batches(paper_inputs(), batch_size, BATCH_POOL, device,
                             num_classes=dataset_spec(PAPER_DATASET).num_classes or 1)
    new_batches = _formatted(batches, decision.choice)
    with torch.no_grad():
        first_today, _ = today.compute_loss(batches[0], torch.Generator().manual_seed(7))
        first_new, _ = new.compute_loss(new_batches[0], torch.Generator().manual_seed(7))
    loss_diff = float((first_today - first_new).abs())

    timings = time_interleaved(
        {"today": TrainingStep(today, radam(today, today.optim_settings), batches),
         "new": TrainingStep(new, radam(new, new.optim_settings), new_batches)},
        device, warmup=warmup, repeats=repeats,
    )
    old_t, new_t = timings["today"], timings["new"]
    return SpeedupRow(
        objective=Objective.parse(objective).name,
        batch_size=batch_size,
        memory_format=decision.choice,
        memory_format_source=decision.source,
        today_pairs_per_s=old_t.rate(batch_size),
        new_pairs_per_s=new_t.rate(batch_size),
        today_ms=old_t.median_ms,
        new_ms=new_t.median_ms,
        today_iqr_percent=old_t.iqr_percent,
        new_iqr_percent=new_t.iqr_percent,
        ratio=old_t.median_ms / new_t.median_ms,
        loss_abs_diff=loss_diff,
    )


def _infonce_of(estimator: str):  # noqa: ANN202 - a small closure
    def run(anchors: Tensor, candidates: Tensor) -> InfoNCEResult:
        return infonce(anchors, candidates, estimator=estimator)  # type: ignore[arg-type]
    return run


def estimator_memory(batch: int, locations: int, device: torch.device, *,
                     channels: int = HEAD_DIM) -> EstimatorMemoryRow:
    """Peak and saved-for-backward bytes of the dense and the lean estimator (CR shapes)."""
    generator = torch.Generator().manual_seed(batch * 100_003 + locations)
    anchors = torch.randn(batch, channels, 1, generator=generator).to(device).requires_grad_()
    candidates = torch.randn(batch, channels, locations, generator=generator).to(device)
    candidates.requires_grad_()
    peak: dict[str, int] = {}
    saved: dict[str, int] = {}
    for name in ("dense", "lean"):
        fn = _infonce_of(name)
        forward_backward(fn, anchors, candidates)  # warm-up: lazy allocations, kernels
        peak[name] = peak_memory_bytes(lambda fn=fn: forward_backward(fn, anchors, candidates),
                                       device)

        def forward(fn=fn) -> tuple[Tensor, Tensor]:
            result = fn(anchors, candidates)
            return result.loss, result.penalty

        saved[name] = autograd_saved_bytes(forward, exclude=(anchors, candidates))
    return EstimatorMemoryRow(
        batch=batch, locations=locations, channels=channels,
        dense_peak_bytes=peak["dense"], lean_peak_bytes=peak["lean"],
        dense_saved_bytes=saved["dense"], lean_saved_bytes=saved["lean"],
        peak_ratio=(peak["dense"] / peak["lean"] if peak["lean"] > 0 else float("nan")),
        saved_ratio=(saved["dense"] / saved["lean"] if saved["lean"] > 0 else float("nan")),
    )


def speedup_table(rows: Sequence[SpeedupRow]) -> Table:
    """Part 4's throughput table."""
    return Table(
        "Today (dense estimator, contiguous, eager) vs new (lean estimator, chosen memory "
        "format): full training steps, interleaved rounds, median",
        ["objective", "batch", "new format", "how", "today pairs/s", "new pairs/s", "ratio",
         "today IQR%", "new IQR%", "|Δ first loss|"],
        [[r.objective, str(r.batch_size), r.memory_format, r.memory_format_source,
          f"{r.today_pairs_per_s:,.0f}", f"{r.new_pairs_per_s:,.0f}", f"{r.ratio:.2f}×",
          f"{r.today_iqr_percent:.0f}", f"{r.new_iqr_percent:.0f}", f"{r.loss_abs_diff:.1e}"]
         for r in rows],
    )


def memory_table(rows: Sequence[EstimatorMemoryRow], peak_label: str) -> Table:
    """Part 4's estimator memory table; ``peak_label`` says how the peak is measured."""
    def size(n: int) -> str:
        return "n/a" if n < 0 else format_bytes(n)

    return Table(
        "InfoNCE estimator memory, dense vs lean (anchors (B,64,1), candidates (B,64,L); "
        "forward+backward)",
        ["B", "L", f"dense {peak_label}", f"lean {peak_label}", "peak ratio", "dense saved",
         "lean saved", "saved ratio"],
        [[str(r.batch), str(r.locations), size(r.dense_peak_bytes), size(r.lean_peak_bytes),
          f"{r.peak_ratio:.2f}×", size(r.dense_saved_bytes), size(r.lean_saved_bytes),
          f"{r.saved_ratio:.2f}×"] for r in rows],
    )

