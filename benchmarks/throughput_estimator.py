"""Part 2 of :mod:`benchmarks.throughput`: the InfoNCE estimator against its mask-based twin.

:func:`~mmssl.objectives.infonce.infonce` and :func:`~mmssl.objectives.infonce.infonce_with_masks`
compute the same loss and penalty; on CR-like shapes (anchors ``(B, C, 1)``, candidates
``(B, C, L)``) this checks that they agree (loss, penalty, input gradients) and measures the
forward+backward time (interleaved) and the memory of each.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from benchmarks.harness import autograd_saved_bytes, cuda_peak_bytes, format_bytes, time_interleaved
from mmssl.analysis.tables import Table
from mmssl.objectives.infonce import InfoNCEResult, infonce, infonce_with_masks

__all__ = ["HEAD_DIM", "MEMORY_METHODS", "EstimatorRow", "compare_estimators",
           "estimator_table", "measure_memory"]

HEAD_DIM = 64  # the paper's projection size: the channel count of every InfoNCE input

#: How part 2 measures memory on each device (also in the JSON's ``meta.memory_method``).
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


def measure_memory(fn: Estimator, anchors: Tensor, candidates: Tensor) -> int:
    """Memory of ``fn`` as :data:`MEMORY_METHODS` says for the inputs' device."""
    if anchors.device.type == "cuda":
        anchors.grad = None
        candidates.grad = None
        return cuda_peak_bytes(lambda: forward_backward(fn, anchors, candidates),
                               anchors.device)

    def forward() -> tuple[Tensor, Tensor]:
        result = fn(anchors, candidates)
        return result.loss, result.penalty

    return autograd_saved_bytes(forward, exclude=(anchors, candidates))


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


def estimator_table(rows: Sequence[EstimatorRow], memory_label: str) -> Table:
    """Part 2's table; ``memory_label`` names the memory measure (``saved`` or ``peak``)."""
    return Table(
        "InfoNCE estimator vs mask-based implementation "
        "(anchors (B,C,1), candidates (B,C,L); forward+backward, median)",
        ["B", "L", "loss", "max |Δloss|", "max |Δpen|", "max |Δgrad|", "est ms", "mask ms",
         "time ratio", f"est {memory_label}", f"mask {memory_label}", "mem ratio"],
        [[str(r.batch), str(r.locations), f"{r.loss:.4f}", f"{r.loss_abs_diff:.2e}",
          f"{r.penalty_abs_diff:.2e}", f"{r.grad_abs_diff:.2e}", f"{r.estimator_ms:.2f}",
          f"{r.masks_ms:.2f}", f"{r.time_ratio:.2f}×", format_bytes(r.estimator_bytes),
          format_bytes(r.masks_bytes), f"{r.memory_ratio:.2f}×"] for r in rows],
    )
