"""Part 4 of :mod:`benchmarks.throughput`: today's training step against the new one.

* **today**: ``objective.estimator: dense`` (the whole score tensor kept for backward, one
  term at a time), ``trainer.memory_format: contiguous``, eager, RAdam's per-parameter loop
  (PyTorch's default on the CPU);
* **new**: ``objective.estimator: lean`` with the terms that share candidates computed together
  (:func:`mmssl.objectives.infonce.infonce_shared`), RAdam's multi-tensor update (as
  :func:`mmssl.methods.base.make_optimizer` builds it) and the memory format a run would train
  in (``--speedup-memory-format``; ``auto`` asks
  :func:`mmssl.runs.performance.decide_memory_format` exactly as ``mmssl train`` does — the
  per-machine cache, else a short measurement).

Both models start from the same weights and train on the same batches (the new one's inputs in
its layout), each in a process of its own — the allocator setting is process-wide — and their
full training steps are timed in the same interleaved rounds
(:func:`~benchmarks.harness.time_interleaved_in_processes`); the first step's losses are
compared (the same computation up to float rounding). Then the memory of the InfoNCE
estimator alone, dense vs lean, on CR-like shapes (anchors (B, 64, 1), candidates (B, 64, L);
L = 512 is an 8³ map): forward+backward allocator peak (CUDA allocator, or the CPU profiler's
memory events) and the bytes the graph saves for backward
(:func:`benchmarks.throughput_estimator.measure_memory`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from benchmarks.harness import (
    autograd_saved_bytes,
    format_bytes,
    peak_memory_bytes,
    time_interleaved,
    time_interleaved_in_processes,
)
from benchmarks.throughput_estimator import HEAD_DIM, forward_backward
from benchmarks.throughput_objectives import BATCH_POOL, PAPER_DATASET, PAPER_TAP, paper_inputs
from benchmarks.workloads import TrainingStep, formatted_batches, radam, random_batches
from mmssl.analysis.tables import Table
from mmssl.data.registry import dataset_spec
from mmssl.errors import ConfigError
from mmssl.methods import TaxonomyMethod
from mmssl.objectives.infonce import InfoNCEResult, infonce
from mmssl.objectives.taxonomy import Objective
from mmssl.runs.allocator import apply_cpu_allocator
from mmssl.runs.performance import (
    apply_memory_format,
    check_compile,
    compile_in_place,
    decide_memory_format,
)

__all__ = ["MEMORY_FORMAT_CHOICES", "SPEEDUP_OBJECTIVES", "CompileRow", "EstimatorMemoryRow",
           "SpeedupRow", "build_step", "compile_table", "estimator_memory", "measure_compile",
           "measure_speedup", "memory_table", "speedup_table"]

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


@dataclass
class _StepCandidate:
    """A training step of one variant, built in its own process (see :func:`build_step`)."""

    step: TrainingStep
    info: dict[str, Any]

    def __call__(self) -> object:
        return self.step()


def build_step(variant: str, objective: str, batch_size: int, device: str,
               memory_format: str) -> _StepCandidate:
    """Today's or the new training step of the paper-default model, as its process runs it.

    ``today``: dense estimator, contiguous, RAdam's per-parameter loop, the C library's
    allocator defaults. ``new``: ``trainer.cpu_allocator: retain`` applied first (as ``mmssl
    train`` does), the lean estimator with shared candidates, RAdam's multi-tensor update and
    ``memory_format`` resolved as a run resolves it. Both start from the weights of seed 0 and
    train on the same batches; ``info`` holds the first step's loss (generator seeded 7, no
    update) and the memory-format decision.
    """
    where = torch.device(device)
    new = variant == "new"
    allocator = apply_cpu_allocator("retain" if new else "system")
    torch.manual_seed(0)
    method = _method(objective, "lean" if new else "dense", where)
    choice, source = "contiguous", "configured"
    if new:
        decision = decide_memory_format(memory_format, method, batch_size, where)
        apply_memory_format(method, decision.choice)
        choice, source = decision.choice, decision.source
    batches = formatted_batches(random_batches(
        paper_inputs(), batch_size, BATCH_POOL, where,
        num_classes=dataset_spec(PAPER_DATASET).num_classes or 1), choice)
    with torch.no_grad():
        first, _ = method.compute_loss(batches[0], torch.Generator().manual_seed(7))
    step = TrainingStep(method, radam(method, method.optim_settings, foreach=new), batches)
    return _StepCandidate(step, {"first_loss": float(first), "memory_format": choice,
                                 "memory_format_source": source,
                                 "allocator": allocator.detail})


def measure_speedup(
    objective: str, batch_size: int, device: torch.device, *, memory_format: str = "auto",
    warmup: int, repeats: int,
) -> SpeedupRow:
    """Today's against the new training step of the paper-default model for ``objective``
    (:func:`build_step`), each in its own process (the allocator setting is process-wide),
    timed in interleaved rounds (:func:`~benchmarks.harness.time_interleaved_in_processes`)
    with this process's thread count; ``auto`` resolves the layout as a training run would."""
    settings = (objective, batch_size, str(device), memory_format)
    timings, infos = time_interleaved_in_processes(
        {"today": functools.partial(build_step, "today", *settings),
         "new": functools.partial(build_step, "new", *settings)},
        warmup=warmup, repeats=repeats, threads=torch.get_num_threads(), device=device)
    old_t, new_t = timings["today"], timings["new"]
    return SpeedupRow(
        objective=Objective.parse(objective).name,
        batch_size=batch_size,
        memory_format=infos["new"]["memory_format"],
        memory_format_source=infos["new"]["memory_format_source"],
        today_pairs_per_s=old_t.rate(batch_size),
        new_pairs_per_s=new_t.rate(batch_size),
        today_ms=old_t.median_ms,
        new_ms=new_t.median_ms,
        today_iqr_percent=old_t.iqr_percent,
        new_iqr_percent=new_t.iqr_percent,
        ratio=old_t.median_ms / new_t.median_ms,
        loss_abs_diff=abs(infos["today"]["first_loss"] - infos["new"]["first_loss"]),
    )


def _infonce_of(estimator: str) -> Callable[[Tensor, Tensor], InfoNCEResult]:
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
        peak[name] = peak_memory_bytes(
            functools.partial(forward_backward, fn, anchors, candidates), device)

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


@dataclass(frozen=True)
class CompileRow:
    """``trainer.compile`` on the new step: what compiling costs and what it gains."""

    objective: str
    batch_size: int
    available: bool
    detail: str  # why not, when torch.compile cannot run here
    compile_seconds: float  # first compiled step − first eager step
    eager_ms: float
    compiled_ms: float
    ratio: float  # eager ms / compiled ms (> 1: compiled is faster)
    break_even_steps: float | None  # steps to earn the compile time back; None: never


def measure_compile(objective: str, batch_size: int, device: torch.device, *,
                    warmup: int, repeats: int) -> CompileRow:
    """The new step eager against the same step with ``trainer.compile: true`` (the encoders
    and heads compiled in place, :func:`mmssl.runs.performance.compile_in_place`), in this
    process, interleaved. The compile time is the first compiled step's seconds minus the first
    eager step's; the break-even is that time over the per-step gain."""
    name = Objective.parse(objective).name
    try:
        check_compile(device)
    except ConfigError as error:
        return CompileRow(name, batch_size, False, str(error), float("nan"), float("nan"),
                          float("nan"), float("nan"), None)
    settings = (objective, batch_size, str(device), "contiguous")
    eager, compiled = build_step("new", *settings), build_step("new", *settings)
    start = time.perf_counter()
    eager()
    first_eager = time.perf_counter() - start
    # A cold compile, as a user's first run pays it: inductor's on-disk caches in a fresh folder.
    with tempfile.TemporaryDirectory(prefix="mmssl-inductor-") as folder, \
            _environment(TORCHINDUCTOR_CACHE_DIR=folder):
        start = time.perf_counter()
        compile_in_place(compiled.step.model)  # type: ignore[arg-type]
        compiled()
        first_compiled = time.perf_counter() - start
    timings = time_interleaved({"eager": eager, "compiled": compiled}, device, warmup=warmup,
                               repeats=repeats)
    eager_ms, compiled_ms = timings["eager"].median_ms, timings["compiled"].median_ms
    compile_seconds = first_compiled - first_eager
    gain_s = (eager_ms - compiled_ms) / 1000
    return CompileRow(name, batch_size, True, "", compile_seconds, eager_ms, compiled_ms,
                      eager_ms / compiled_ms, compile_seconds / gain_s if gain_s > 0 else None)


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Environment variables set for the block, restored after it."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def compile_table(rows: Sequence[CompileRow]) -> Table:
    """Part 5's table: compile time against steady-state gain."""
    def steps(row: CompileRow) -> str:
        if not row.available:
            return "—"
        return "never" if row.break_even_steps is None else f"{row.break_even_steps:,.0f}"
    return Table(
        "trainer.compile on the new step: compile time against steady-state gain "
        "(interleaved rounds, median)",
        ["objective", "batch", "compile s", "eager ms", "compiled ms", "eager / compiled",
         "break-even steps"],
        [[r.objective, str(r.batch_size), f"{r.compile_seconds:.1f}" if r.available else
          "unavailable", f"{r.eager_ms:.1f}", f"{r.compiled_ms:.1f}", f"{r.ratio:.2f}×",
          steps(r)] for r in rows],
    )


def speedup_table(rows: Sequence[SpeedupRow]) -> Table:
    """Part 4's throughput table."""
    return Table(
        "Today (dense estimator, contiguous, eager, per-parameter RAdam, glibc's allocator "
        "defaults; own process) vs new (lean estimator with shared candidates, chosen memory "
        "format, multi-tensor RAdam, cpu_allocator retain; own process): full training steps, "
        "interleaved rounds, median",
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

