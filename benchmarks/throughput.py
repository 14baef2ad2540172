"""Training throughput of every taxonomy objective and every method; InfoNCE estimator vs masks.

Run ``.venv/bin/python benchmarks/throughput.py`` (or ``make bench``); ``--help`` lists the
options and ``benchmarks/README.md`` explains every column. Three parts, in the same run:

1. **Per objective** (Fedorov et al., arXiv 2012.13623, paper defaults: DCGAN width 32, latent
   64, heads 64, ``block1`` 8×8 local tap, two 1×32×32 modalities): full training steps
   (forward, loss, backward, RAdam step) on random views prepared in advance, and, interleaved
   with them, the encoder+heads forward alone and the objective alone (``taxonomy_loss`` forward
   and backward on detached copies of the head outputs), so that the objective's share of a
   step is measured rather than inferred.
2. **Estimator vs masks**: :func:`~mmssl.objectives.infonce.infonce` against
   :func:`~mmssl.objectives.infonce.infonce_with_masks` on CR-like shapes — same loss, penalty
   and gradients, forward+backward time and memory of each.
3. **Per method**: a full training step of every registered method (``mmssl.methods.METHODS``,
   built from the resolved default configuration, as ``mmssl train`` does), the taxonomy as
   CR-XX-CC-RR and RR: pairs/s, ms/step, trainable parameters and the slowdown against the
   fastest decoder-free row, so the cost of decoders (AE, DCCAE, RR-AE, MMVAE) is visible next
   to the decoder-free models.

Every timing is the median over ``--repeats`` rounds after ``--warmup`` rounds; the quantities
compared with each other are measured in interleaved rounds, so background load hits them alike.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor

from mmssl.config import RunConfig, resolve
from mmssl.methods import METHODS, MultimodalMethod, TaxonomyMethod
from mmssl.objectives.infonce import InfoNCEResult, infonce, infonce_with_masks
from mmssl.objectives.taxonomy import Objective, all_objectives, taxonomy_loss

MODALITIES: tuple[str, ...] = ("rotated", "noisy")
INPUT_SHAPE: tuple[int, int, int] = (1, 32, 32)
HEAD_DIM = 64  # the paper's projection size: the channel count of every InfoNCE input
QUICK_OBJECTIVES: tuple[str, ...] = ("CR", "RR", "CR-XX-CC-RR")
BATCH_POOL = 4  # distinct random batches cycled through by the timed steps
DEFAULT_REPEATS, DEFAULT_WARMUP = 15, 3
QUICK_REPEATS, QUICK_WARMUP = 3, 1

# Part 3: the methods' input shapes per dataset (both datasets are 32×32; SVHN is in colour).
DATASET_SHAPES: dict[str, dict[str, tuple[int, int, int]]] = {
    "two_view_mnist": {"rotated": (1, 32, 32), "noisy": (1, 32, 32)},
    "mnist_svhn": {"mnist": (1, 32, 32), "svhn": (3, 32, 32)},
}
NUM_CLASSES = 10
METHOD_ORDER: tuple[str, ...] = ("taxonomy", "supervised", "ae", "dccae", "cr_cca", "rr_ae",
                                 "mmvae")
QUICK_METHODS: tuple[str, ...] = ("taxonomy", "ae", "cr_cca")  # MMVAE (K = 30) is the slow one
TAXONOMY_ROWS: tuple[str, ...] = ("CR-XX-CC-RR", "RR")  # the taxonomy's objectives in part 3
# The start of mmssl.objectives.cca's warning for a batch too small for the representation.
CCA_WARNING = "CCA on a batch of"

MEMORY_METHODS = {
    "cpu": (
        "autograd-saved: bytes of the distinct storages saved for backward (via "
        "torch.autograd.graph.saved_tensors_hooks) plus the outputs, inputs excluded; the memory "
        "the graph holds between forward and backward, not allocator peak (no transients, no "
        "gradients)"
    ),
    "cuda": (
        "allocator peak: torch.cuda.max_memory_allocated during forward+backward minus the bytes "
        "allocated before (inputs excluded; transients and gradients included)"
    ),
}

FOOTER = (
    "How to read: pairs/s = batch size / median step time (a pair = one sample of both "
    "modalities). obj share = objective ms / step ms, both measured directly; fwd ms is the "
    "encoder+heads forward alone; rest ms = step − fwd − objective (encoder and head backward, "
    "optimizer step). Estimator table: ratios are mask-based / estimator, so > 1 means the "
    "estimator is faster or smaller; max |Δ| compares loss, penalty and input gradients of the "
    "two. Methods table: a full training step of each method with its default configuration "
    "(params = trainable parameters); × slower = ms/step / ms/step of the fastest decoder-free "
    "row. All times are medians of interleaved rounds; IQR% = interquartile range / median "
    "(noise)."
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
        ms = [1000.0 * s for s in seconds]
        if len(ms) >= 2:
            q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive")
        else:
            q1 = q3 = ms[0]
        return cls(statistics.median(ms), min(ms), q3 - q1, tuple(ms))

    @property
    def iqr_percent(self) -> float:
        return 100.0 * self.iqr_ms / self.median_ms if self.median_ms > 0 else 0.0


def time_interleaved(
    functions: Mapping[str, Callable[[], object]],
    device: torch.device,
    *,
    warmup: int,
    repeats: int,
) -> dict[str, Timing]:
    """Time each function once per round, rounds interleaved; medians over ``repeats`` rounds.

    Interleaving means slow phases of a noisy machine slow every function alike, so ratios of
    the medians stay meaningful. The garbage collector is paused while timing.
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
# Part 1: per-objective training throughput
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectiveRow:
    """Throughput of one objective's training step and the objective's share of it."""

    objective: str
    terms: int  # InfoNCE terms in the loss (each also has a penalty)
    batch_size: int
    pairs_per_s: float
    step_ms: float
    step_iqr_percent: float
    forward_ms: float
    objective_ms: float
    objective_share: float
    rest_ms: float
    split_check_abs_diff: float  # |compute_loss − taxonomy_loss(encode_all)|, same generator


def build_method(objective: str, device: torch.device) -> TaxonomyMethod:
    """The paper-default two-modality model for ``objective`` on ``device``, in training mode."""
    torch.manual_seed(0)
    method = TaxonomyMethod(
        modalities=list(MODALITIES),
        input_shapes={m: INPUT_SHAPE for m in MODALITIES},
        model={"local_taps": ["block1"]},
        optim={},
        objective={"name": objective},
        seed=0,
    )
    return method.to(device).train()


def random_batches(
    batch_size: int, device: torch.device, count: int,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> list[dict[str, Tensor]]:
    """``count`` random batches of views in [0, 1] plus labels 0..9, prepared once.

    In the training batch format; ``input_shapes`` defaults to part 1's two 1×32×32 modalities.
    """
    shapes = input_shapes if input_shapes is not None else {m: INPUT_SHAPE for m in MODALITIES}
    generator = torch.Generator().manual_seed(1234)
    batches = []
    for _ in range(count):
        batch = {m: torch.rand(batch_size, *shape, generator=generator)
                 for m, shape in shapes.items()}
        batch["label"] = torch.randint(NUM_CLASSES, (batch_size,), generator=generator)
        batches.append({k: v.to(device) for k, v in batch.items()})
    return batches


def objective_loss(
    method: TaxonomyMethod,
    local: Mapping[str, Mapping[str, Tensor]],
    global_: Mapping[str, Tensor],
    generator: torch.Generator,
) -> Tensor:
    """The method's objective on given head outputs (the loss part of ``compute_loss``)."""
    return taxonomy_loss(
        local, global_, method.objective, estimator=method.estimator, weights=method.weights,
        weight_penalty=method.weight_penalty, generator=generator,
    ).total


def measure_objective(
    objective: str, batch_size: int, device: torch.device, *, warmup: int, repeats: int
) -> ObjectiveRow:
    """Time full training steps, the forward alone and the objective alone, interleaved."""
    method = build_method(objective, device)
    optimizer = torch.optim.RAdam(method.parameters(), lr=4e-4)
    batches = random_batches(batch_size, device, BATCH_POOL)
    step_batches: Iterator[dict[str, Tensor]] = itertools.cycle(batches)
    forward_batches: Iterator[dict[str, Tensor]] = itertools.cycle(batches)
    step_counter = itertools.count()

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        generator = torch.Generator().manual_seed(next(step_counter))  # as training_step does
        loss, _ = method.compute_loss(next(step_batches), generator)
        loss.backward()
        optimizer.step()

    def forward_only() -> None:
        # Encoders + heads (TaxonomyMethod.encode_all, the forward part of compute_loss), with
        # autograd recording as in a training step; the graph is freed on return.
        method.encode_all(next(forward_batches))

    # Detached leaf copies of the head outputs: the objective's backward stops at them.
    with torch.no_grad():
        local_out, global_out, _ = method.encode_all(batches[0])
    local_leaves = {m: {k: v.detach().clone().requires_grad_() for k, v in layers.items()}
                    for m, layers in local_out.items()}
    global_leaves = {m: v.detach().clone().requires_grad_() for m, v in global_out.items()}
    leaves = [*global_leaves.values(), *(t for d in local_leaves.values() for t in d.values())]

    def objective_only() -> None:
        for leaf in leaves:
            leaf.grad = None
        generator = torch.Generator().manual_seed(0)
        objective_loss(method, local_leaves, global_leaves, generator).backward()

    # The split must measure the computation of the real step: taxonomy_loss on encode_all's
    # outputs, with the same generator, must give compute_loss's loss (split_check_abs_diff).
    loss, terms = method.compute_loss(batches[0], torch.Generator().manual_seed(7))
    local_check, global_check, _ = method.encode_all(batches[0])
    split = objective_loss(method, local_check, global_check, torch.Generator().manual_seed(7))
    split_diff = float((loss - split).abs().detach())
    n_terms = sum(1 for name in terms if not name.endswith("/penalty"))
    del loss, terms, local_check, global_check, split

    timings = time_interleaved(
        {"step": train_step, "forward": forward_only, "objective": objective_only},
        device, warmup=warmup, repeats=repeats,
    )
    step, forward, objective_t = timings["step"], timings["forward"], timings["objective"]
    return ObjectiveRow(
        objective=Objective.parse(objective).name,
        terms=n_terms,
        batch_size=batch_size,
        pairs_per_s=batch_size / (step.median_ms / 1000.0),
        step_ms=step.median_ms,
        step_iqr_percent=step.iqr_percent,
        forward_ms=forward.median_ms,
        objective_ms=objective_t.median_ms,
        objective_share=objective_t.median_ms / step.median_ms,
        rest_ms=step.median_ms - forward.median_ms - objective_t.median_ms,
        split_check_abs_diff=split_diff,
    )


# --------------------------------------------------------------------------------------------
# Part 2: estimator vs mask-based implementation
# --------------------------------------------------------------------------------------------

Estimator = Callable[[Tensor, Tensor], InfoNCEResult]


@dataclass(frozen=True)
class EstimatorRow:
    """The fast estimator against the mask-based implementation on one CR-like shape."""

    batch: int
    locations: int
    channels: int
    loss: float
    loss_abs_diff: float
    penalty_abs_diff: float
    grad_abs_diff: float
    estimator_ms: float
    masks_ms: float
    time_ratio: float  # masks / estimator
    estimator_bytes: int
    masks_bytes: int
    memory_ratio: float  # masks / estimator


def forward_backward(fn: Estimator, anchors: Tensor, candidates: Tensor) -> InfoNCEResult:
    """One forward and backward of ``loss + penalty``; gradients land in the inputs."""
    anchors.grad = None
    candidates.grad = None
    result = fn(anchors, candidates)
    (result.loss + result.penalty).backward()
    return result


def storage_key(tensor: Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def autograd_saved_bytes(fn: Estimator, anchors: Tensor, candidates: Tensor) -> int:
    """Bytes of the distinct storages the graph saves for backward, plus the outputs.

    The inputs' storages are excluded (they are the caller's and the same for every
    implementation). The result is kept alive while counting, so no storage is reused.
    """
    storages: dict[int, int] = {}

    def pack(tensor: Tensor) -> Tensor:
        storages[storage_key(tensor)] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = fn(anchors, candidates)
    for output in (result.loss, result.penalty):
        storages[storage_key(output)] = output.untyped_storage().nbytes()
    for tensor in (anchors, candidates):
        storages.pop(storage_key(tensor), None)
    total = sum(storages.values())
    del result
    return total


def cuda_peak_bytes(fn: Estimator, anchors: Tensor, candidates: Tensor) -> int:
    """Allocator peak of one forward+backward above what was allocated before it."""
    anchors.grad = None
    candidates.grad = None
    gc.collect()
    torch.cuda.synchronize(anchors.device)
    torch.cuda.reset_peak_memory_stats(anchors.device)
    before = torch.cuda.memory_allocated(anchors.device)
    forward_backward(fn, anchors, candidates)
    torch.cuda.synchronize(anchors.device)
    return torch.cuda.max_memory_allocated(anchors.device) - before


def measure_memory(fn: Estimator, anchors: Tensor, candidates: Tensor) -> int:
    if anchors.device.type == "cuda":
        return cuda_peak_bytes(fn, anchors, candidates)
    return autograd_saved_bytes(fn, anchors, candidates)


def compare_estimators(
    batch: int, locations: int, device: torch.device, *, channels: int = HEAD_DIM,
    warmup: int, repeats: int,
) -> EstimatorRow:
    """Check that both implementations agree, then time and size each (CR shapes, L_y = 1)."""
    generator = torch.Generator().manual_seed(batch * 100_003 + locations)
    anchors = torch.randn(batch, channels, 1, generator=generator).to(device).requires_grad_()
    candidates = torch.randn(batch, channels, locations, generator=generator).to(device)
    candidates.requires_grad_()

    fast = forward_backward(infonce, anchors, candidates)
    fast_grads = (anchors.grad.clone(), candidates.grad.clone())  # type: ignore[union-attr]
    slow = forward_backward(infonce_with_masks, anchors, candidates)
    slow_grads = (anchors.grad.clone(), candidates.grad.clone())  # type: ignore[union-attr]
    loss_diff = float((fast.loss - slow.loss).abs().detach())
    penalty_diff = float((fast.penalty - slow.penalty).abs().detach())
    grad_diff = max(float((a - b).abs().max()) for a, b in zip(fast_grads, slow_grads,
                                                                   strict=True))
    loss_value = float(fast.loss.detach())
    del fast, slow, fast_grads, slow_grads

    timings = time_interleaved(
        {
            "estimator": lambda: forward_backward(infonce, anchors, candidates),
            "masks": lambda: forward_backward(infonce_with_masks, anchors, candidates),
        },
        device, warmup=warmup, repeats=repeats,
    )
    fast_bytes = measure_memory(infonce, anchors, candidates)
    slow_bytes = measure_memory(infonce_with_masks, anchors, candidates)
    fast_ms, slow_ms = timings["estimator"].median_ms, timings["masks"].median_ms
    return EstimatorRow(
        batch=batch,
        locations=locations,
        channels=channels,
        loss=loss_value,
        loss_abs_diff=loss_diff,
        penalty_abs_diff=penalty_diff,
        grad_abs_diff=grad_diff,
        estimator_ms=fast_ms,
        masks_ms=slow_ms,
        time_ratio=slow_ms / fast_ms,
        estimator_bytes=fast_bytes,
        masks_bytes=slow_bytes,
        memory_ratio=slow_bytes / fast_bytes if fast_bytes else float("nan"),
    )


# --------------------------------------------------------------------------------------------
# Part 3: every method's training throughput
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodRow:
    """Throughput of one method's full training step, against the fastest decoder-free row."""

    label: str  # the table's name: "taxonomy CR-XX-CC-RR", "mmvae K=30", "ae", …
    method: str  # the registry name (mmssl.methods.METHODS)
    variant: str  # the taxonomy objective or MMVAE's K; "" for the other methods
    decoders: bool  # whether the method decodes its inputs (the AE family, MMVAE)
    batch_size: int
    parameters: int  # trainable parameters
    loss: float  # loss of the untimed first step: finite unless the method is broken
    pairs_per_s: float
    step_ms: float
    step_iqr_percent: float
    slowdown: float  # step_ms / step_ms of the reference row
    reference: str  # label of the fastest decoder-free row (the fastest row if none is)


@dataclass(frozen=True)
class BuiltMethod:
    """What part 3 keeps of a built method besides its training step."""

    label: str
    variant: str
    method: str
    decoders: bool
    cca: bool  # has a DCCA term (DCCAE, CR-CCA)
    parameters: int
    loss: float


def method_configs(
    names: Sequence[str], dataset: str, mmvae_k: int | None
) -> list[tuple[str, str, RunConfig]]:
    """(label, variant, resolved configuration) per row: the defaults ``mmssl train`` uses.

    The taxonomy gives one row per objective of :data:`TAXONOMY_ROWS`.
    """
    rows: list[tuple[str, str, RunConfig]] = []
    for name in names:
        overrides: dict[str, Any] = {"method": name, "data.dataset": dataset}
        if name == "mmvae" and mmvae_k is not None:
            overrides["mmvae.K"] = mmvae_k
        objectives: Sequence[str | None] = TAXONOMY_ROWS if name == "taxonomy" else (None,)
        for objective in objectives:
            if objective is not None:
                overrides = {**overrides, "objective.name": objective}
            config = resolve(None, None, overrides)
            variant = (config.objective.name if name == "taxonomy"
                       else f"K={config.mmvae.K}" if name == "mmvae" else "")
            rows.append((f"{name} {variant}".strip(), variant, config))
    return rows


def cca_note(message: str, cca_labels: Sequence[str]) -> str:
    """What the output says instead of DCCA's (expected) degenerate-batch warning."""
    what = message.split(":", 1)[0]  # "CCA on a batch of B samples with … dimensions (o1, o2)"
    return (f"{what}: DCCA warns that the batch is not larger than the representation "
            f"dimension + 1, so its correlations are near-degenerate. Expected at this batch "
            f"size; the warning is suppressed here. It concerns the CCA method(s)"
            f"{' (' + ', '.join(cca_labels) + ')' if cca_labels else ''} and what their loss "
            "means, not what a step costs.")


def training_step(
    model: MultimodalMethod, optimizer: torch.optim.Optimizer,
    batches: Sequence[Mapping[str, Tensor]],
) -> Callable[[], Tensor]:
    """One full training step per call, cycling through ``batches``; returns the loss.

    As ``training_step`` computes it (``compute_loss`` with a per-step generator), then
    ``backward`` and the optimizer step.
    """
    step_batches = itertools.cycle(batches)
    step_counter = itertools.count()

    def step() -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        generator = torch.Generator().manual_seed(next(step_counter))
        loss, _ = model.compute_loss(next(step_batches), generator)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def measure_methods(
    names: Sequence[str], batch_size: int, device: torch.device, *, dataset: str,
    mmvae_k: int | None, warmup: int, repeats: int,
) -> tuple[list[MethodRow], list[str]]:
    """Build every method, check one step each, then time all their steps, interleaved.

    Returns the rows and notes on suppressed warnings (DCCA's, for a batch ≤ its dimension + 1);
    any other warning is passed on.
    """
    input_shapes = DATASET_SHAPES[dataset]
    batches = random_batches(batch_size, device, BATCH_POOL, input_shapes)
    built: list[BuiltMethod] = []
    steps: dict[str, Callable[[], Tensor]] = {}
    with warnings.catch_warnings(record=True) as caught:
        for label, variant, config in method_configs(names, dataset, mmvae_k):
            torch.manual_seed(0)
            shapes = {m: input_shapes[m] for m in config.modalities}
            model = METHODS[config.method].from_config(config, shapes, NUM_CLASSES)
            model = model.to(device).train()
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.RAdam(params, lr=config.optim.lr,
                                          weight_decay=config.optim.weight_decay)
            steps[label] = training_step(model, optimizer, batches)
            first_loss = float(steps[label]())  # untimed: builds lazy state, checks the loss
            built.append(BuiltMethod(label, variant, config.method, hasattr(model, "decoders"),
                                     hasattr(model, "cca"), sum(p.numel() for p in params),
                                     first_loss))
        timings = time_interleaved(steps, device, warmup=warmup, repeats=repeats)
    notes: list[str] = []
    cca_labels = [b.label for b in built if b.cca]
    for warning in caught:
        message = str(warning.message)
        if issubclass(warning.category, UserWarning) and message.startswith(CCA_WARNING):
            note = cca_note(message, cca_labels)
            if note not in notes:
                notes.append(note)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno, source=warning.source)

    # The reference: the fastest decoder-free row (the fastest row when none is decoder-free).
    reference = min([b for b in built if not b.decoders] or built,
                    key=lambda b: timings[b.label].median_ms).label
    reference_ms = timings[reference].median_ms
    rows = [
        MethodRow(
            label=b.label, method=b.method, variant=b.variant, decoders=b.decoders,
            batch_size=batch_size, parameters=b.parameters, loss=b.loss,
            pairs_per_s=batch_size / (timings[b.label].median_ms / 1000.0),
            step_ms=timings[b.label].median_ms, step_iqr_percent=timings[b.label].iqr_percent,
            slowdown=timings[b.label].median_ms / reference_ms, reference=reference,
        )
        for b in built
    ]
    return rows, notes


# --------------------------------------------------------------------------------------------
# Command line and report
# --------------------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        message = f"expected comma-separated integers; got {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if not values or any(v < 2 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers ≥ 2; got {text!r}")
    return values


def objective_list(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected at least one objective")
    try:
        return [Objective.parse(name).name for name in names]
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def method_list(text: str) -> list[str]:
    names = list(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    if not names:
        raise argparse.ArgumentTypeError("expected at least one method")
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {', '.join(unknown)}; valid: {', '.join(all_methods())}")
    return names


def all_methods() -> list[str]:
    """Every registered method, in the report's order (unlisted registrations last)."""
    return ([name for name in METHOD_ORDER if name in METHODS]
            + [name for name in METHODS if name not in METHOD_ORDER])


def build_parser() -> argparse.ArgumentParser:
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser = argparse.ArgumentParser(
        prog="throughput.py",
        description="Training throughput per taxonomy objective, the InfoNCE estimator "
        "against its mask-based implementation (time, memory, agreement), and training "
        "throughput per method (decoder-free and decoder-based).",
    )
    parser.add_argument("--objectives", type=objective_list, default=None,
                        help="comma-separated objectives, e.g. CR,XX,CR-XX-CC-RR (default: all "
                        f"15; with --quick: {','.join(QUICK_OBJECTIVES)})")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="training batch size of parts 1 and 3 (default: 64)")
    parser.add_argument("--device", default=default_device,
                        help=f"torch device (default here: {default_device})")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed rounds per measurement (default: {DEFAULT_REPEATS}; "
                        f"--quick: {QUICK_REPEATS})")
    parser.add_argument("--warmup", type=int, default=None,
                        help=f"untimed rounds first (default: {DEFAULT_WARMUP}; "
                        f"--quick: {QUICK_WARMUP})")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 3 objectives, 3 methods, few repeats")
    parser.add_argument("--est-batch-sizes", type=int_list, default=[64, 128],
                        help="batch sizes B of the estimator comparison (default: 64,128)")
    parser.add_argument("--est-locations", type=int_list, default=[64, 512],
                        help="candidate locations L of the estimator comparison "
                        "(default: 64,512 = an 8×8 and an 8³ map)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: leave torch's default)")
    parser.add_argument("--methods", type=method_list, default=None,
                        help="comma-separated methods of part 3, e.g. taxonomy,ae,mmvae "
                        f"(default: all: {','.join(all_methods())}; with --quick: "
                        f"{','.join(QUICK_METHODS)}); taxonomy gives the rows "
                        f"{' and '.join(TAXONOMY_ROWS)}")
    parser.add_argument("--dataset", choices=list(DATASET_SHAPES), default="two_view_mnist",
                        help="input shapes of part 3: two_view_mnist (2×1×32×32, default) or "
                        "mnist_svhn (1×32×32 and 3×32×32)")
    parser.add_argument("--mmvae-k", type=int, default=None,
                        help="MMVAE's importance samples K in part 3 (default: the "
                        "configuration's, 30)")
    parser.add_argument("--skip-objectives", action="store_true", help="skip part 1")
    parser.add_argument("--skip-estimator", action="store_true", help="skip part 2")
    parser.add_argument("--skip-methods", action="store_true", help="skip part 3")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser


def load_average() -> float | None:
    """1-minute load average, where the platform has one."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def busy_cpu_warning(device: torch.device, threads: int, load: float | None) -> str | None:
    """A warning when other processes already occupy the cores the CPU run needs.

    With every core busy, torch's OpenMP threads are oversubscribed and wait on each other:
    on the 2-core development machine a step ran ~40× slower with 2 threads than with 1.
    """
    cores = os.cpu_count() or 1
    # One busy core's worth of slack: the 1-minute average lags behind a load that just ended.
    if device.type != "cpu" or load is None or load + threads <= cores + 1.0:
        return None
    return (f"the 1-minute load average is {load:.1f} on {cores} cores before the run: other "
            f"processes compete with its {threads} thread(s), so timings can be far too slow "
            "(oversubscribed OpenMP threads). Rerun on a quiet machine or with --threads 1.")


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
    # Pipes and CI logs default to 80 columns, which would squash the tables.
    return Console() if sys.stdout.isatty() else Console(width=150)


def format_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def objectives_table(rows: Sequence[ObjectiveRow], batch_size: int) -> Table:
    table = Table(title=f"Training throughput per objective (batch {batch_size}, median)")
    for header in ("objective", "terms", "pairs/s", "ms/step", "IQR%", "fwd ms", "obj ms",
                   "obj share", "rest ms"):
        table.add_column(header, justify="left" if header == "objective" else "right")
    for r in rows:
        table.add_row(r.objective, str(r.terms), f"{r.pairs_per_s:,.0f}", f"{r.step_ms:.2f}",
                      f"{r.step_iqr_percent:.0f}", f"{r.forward_ms:.2f}", f"{r.objective_ms:.2f}",
                      f"{100 * r.objective_share:.1f}%", f"{r.rest_ms:.2f}")
    return table


def estimator_table(rows: Sequence[EstimatorRow], memory_label: str) -> Table:
    table = Table(title="InfoNCE estimator vs mask-based implementation "
                  "(anchors (B,C,1), candidates (B,C,L); forward+backward, median)")
    for header in ("B", "L", "loss", "max |Δloss|", "max |Δpen|", "max |Δgrad|", "est ms",
                   "mask ms", "time ratio", f"est {memory_label}", f"mask {memory_label}",
                   "mem ratio"):
        table.add_column(header, justify="right")
    for r in rows:
        table.add_row(str(r.batch), str(r.locations), f"{r.loss:.4f}", f"{r.loss_abs_diff:.2e}",
                      f"{r.penalty_abs_diff:.2e}", f"{r.grad_abs_diff:.2e}",
                      f"{r.estimator_ms:.2f}", f"{r.masks_ms:.2f}", f"{r.time_ratio:.2f}×",
                      format_bytes(r.estimator_bytes), format_bytes(r.masks_bytes),
                      f"{r.memory_ratio:.2f}×")
    return table


def methods_table(rows: Sequence[MethodRow], batch_size: int, dataset: str) -> Table:
    reference = rows[0].reference if rows else "?"
    table = Table(title=f"Training throughput per method ({dataset}, batch {batch_size}, "
                  "median)")
    headers = ("method", "decoders", "params", "pairs/s", "ms/step", "IQR%",
               f"× slower than {reference}")
    for header in headers:
        table.add_column(header, justify="left" if header in ("method", "decoders") else "right")
    for r in rows:
        table.add_row(r.label, "yes" if r.decoders else "no", f"{r.parameters:,}",
                      f"{r.pairs_per_s:,.0f}", f"{r.step_ms:.2f}", f"{r.step_iqr_percent:.0f}",
                      f"{r.slowdown:.2f}×")
    return table


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the tables and return (and optionally write) the results.

    ``--threads`` applies to this run only: torch's thread count is restored afterwards, so the
    function can be called from tests or notebooks.
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
    if args.batch_size < 2:
        parser.error("--batch-size must be ≥ 2 (InfoNCE needs negatives)")
    repeats = args.repeats if args.repeats is not None else (
        QUICK_REPEATS if args.quick else DEFAULT_REPEATS)
    warmup = args.warmup if args.warmup is not None else (
        QUICK_WARMUP if args.quick else DEFAULT_WARMUP)
    if repeats < 1 or warmup < 0:
        parser.error("--repeats must be ≥ 1 and --warmup ≥ 0")
    if args.mmvae_k is not None and args.mmvae_k < 1:
        parser.error("--mmvae-k must be ≥ 1")
    objectives = args.objectives or (list(QUICK_OBJECTIVES) if args.quick else all_objectives())
    methods = args.methods or (list(QUICK_METHODS) if args.quick else all_methods())

    console = make_console()
    meta: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else cpu_name()),
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "repeats": repeats,
        "warmup": warmup,
        "quick": args.quick,
        "memory_method": MEMORY_METHODS[device.type],
        "time_ratio": "mask-based / estimator",
        "methods_dataset": args.dataset,
        "methods_input_shapes": {m: list(s) for m, s in DATASET_SHAPES[args.dataset].items()},
        "cpu_count": os.cpu_count(),
        "load_average_before": load_average(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    console.print(
        f"[bold]mmssl throughput[/bold]  torch {meta['torch']}  device {meta['device']} "
        f"({meta['device_name']})  threads {meta['threads']}  batch {args.batch_size}  "
        f"repeats {repeats} (+{warmup} warm-up)"
    )
    warning = busy_cpu_warning(device, meta["threads"], meta["load_average_before"])
    if warning:
        console.print(f"[red]warning[/red]: {warning}")

    objective_rows: list[ObjectiveRow] = []
    if not args.skip_objectives:
        for name in objectives:
            row = measure_objective(name, args.batch_size, device, warmup=warmup,
                                    repeats=repeats)
            objective_rows.append(row)
            if row.split_check_abs_diff > 1e-3:
                console.print(f"[red]warning[/red]: {name}: the forward/objective split differs "
                              f"from compute_loss by {row.split_check_abs_diff:.3g}")
        console.print(objectives_table(objective_rows, args.batch_size))

    estimator_rows: list[EstimatorRow] = []
    if not args.skip_estimator:
        for batch, locations in itertools.product(args.est_batch_sizes, args.est_locations):
            estimator_rows.append(compare_estimators(batch, locations, device, warmup=warmup,
                                                     repeats=repeats))
        label = "peak" if device.type == "cuda" else "saved"
        console.print(estimator_table(estimator_rows, label))
        console.print(f"Memory ({label}) = {MEMORY_METHODS[device.type]}.")

    method_rows: list[MethodRow] = []
    if not args.skip_methods:
        method_rows, notes = measure_methods(
            methods, args.batch_size, device, dataset=args.dataset, mmvae_k=args.mmvae_k,
            warmup=warmup, repeats=repeats,
        )
        meta["methods_notes"] = notes
        console.print(methods_table(method_rows, args.batch_size, args.dataset))
        for note in notes:
            console.print(f"[yellow]note[/yellow]: {note}")
        broken = [r.label for r in method_rows if not math.isfinite(r.loss)]
        if broken:
            console.print(f"[red]warning[/red]: non-finite loss at the first step: "
                          f"{', '.join(broken)}")

    meta["load_average_after"] = load_average()
    console.print(FOOTER, style="dim")
    results: dict[str, Any] = {
        "meta": meta,
        "objectives": [asdict(r) for r in objective_rows],
        "estimator": [asdict(r) for r in estimator_rows],
        "methods": [asdict(r) for r in method_rows],
        "notes": FOOTER,
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        console.print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
