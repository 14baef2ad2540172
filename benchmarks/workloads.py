"""What the benchmarks time: full training steps of mmssl methods on batches made in advance.

A *training step* is what ``MultimodalMethod.training_step`` and Lightning do per batch:
``zero_grad``, ``compute_loss(batch, generator)`` with a fresh per-step
:class:`torch.Generator`, ``backward`` and the optimizer step. The batches are prepared before
timing (random views here, or augmented cohort batches in :mod:`benchmarks.neuro_training`),
so loading and view generation are not part of a step.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from mmssl.data.base import to_memory_format
from mmssl.methods import OptimSettings

__all__ = ["LossModel", "TrainingStep", "formatted_batches", "radam", "random_batches",
           "trainable_parameters"]


class LossModel(Protocol):
    """Anything with a method's ``compute_loss`` (a method, or one behind DDP)."""

    def compute_loss(self, batch: Mapping[str, Tensor], generator: torch.Generator | None
                     ) -> tuple[Tensor, Any]:
        """Total loss and named terms for a batch of views."""
        ...


def radam(model: torch.nn.Module, optim: OptimSettings, *, foreach: bool = True
          ) -> torch.optim.Optimizer:
    """RAdam (the paper's optimizer) over the trainable parameters, at ``optim``'s learning rate
    and weight decay; no scheduler (a benchmark has no epochs). ``foreach``: the multi-tensor
    update training uses (:func:`mmssl.methods.base.make_optimizer`); ``False`` gives the
    per-parameter loop, PyTorch's CPU default and mmssl's before."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.RAdam(params, lr=optim.lr, weight_decay=optim.weight_decay,
                             foreach=foreach)


def trainable_parameters(model: torch.nn.Module) -> int:
    """Number of trainable parameters (elements of the tensors that require grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def random_batches(
    input_shapes: Mapping[str, Sequence[int]], batch_size: int, count: int,
    device: torch.device, *, num_classes: int, seed: int = 1234,
) -> list[dict[str, Tensor]]:
    """``count`` batches in the training format: uniform views in [0, 1) plus labels.

    Each batch is ``{modality: (batch_size, *shape), "label": (batch_size,)}`` with labels
    uniform in ``0..num_classes-1`` (read by the supervised baseline only), drawn from one CPU
    generator seeded with ``seed``, then moved to ``device``.
    """
    if batch_size < 1 or count < 1 or num_classes < 1:
        raise ValueError(f"need batch_size, count and num_classes ≥ 1; got {batch_size}, "
                         f"{count} and {num_classes}")
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        batch = {m: torch.rand(batch_size, *shape, generator=generator)
                 for m, shape in input_shapes.items()}
        batch["label"] = torch.randint(num_classes, (batch_size,), generator=generator)
        batches.append({k: v.to(device) for k, v in batch.items()})
    return batches


def formatted_batches(batches: Sequence[Mapping[str, Tensor]], memory_format: str
                      ) -> list[dict[str, Tensor]]:
    """``batches`` with every 4-D/5-D tensor in ``memory_format``
    (:func:`mmssl.data.base.to_memory_format`; labels and other ranks unchanged)."""
    return [{k: to_memory_format(v, memory_format) for k, v in batch.items()}
            for batch in batches]


@dataclass
class TrainingStep:
    """A full training step per call, cycling through ``batches``; returns the detached loss.

    Call ``k`` (from 0) uses ``batches[k % len(batches)]`` and the generator seeded with ``k``.
    With ``autocast`` (a dtype such as ``torch.bfloat16``) the forward and the loss run under
    :func:`torch.autocast` on the batch's device, backward and optimiser outside it, as
    Lightning's mixed precision runs them.
    """

    model: LossModel
    optimizer: torch.optim.Optimizer
    batches: Sequence[Mapping[str, Tensor]]
    counter: Iterator[int] = field(default_factory=itertools.count)
    autocast: torch.dtype | None = None

    def __post_init__(self) -> None:
        if not self.batches:
            raise ValueError("TrainingStep needs at least one batch")

    def __call__(self) -> Tensor:
        """One step on the next batch."""
        step = next(self.counter)
        self.optimizer.zero_grad(set_to_none=True)
        generator = torch.Generator().manual_seed(step)
        batch = self.batches[step % len(self.batches)]
        device_type = next(iter(batch.values())).device.type
        with torch.autocast(device_type, dtype=self.autocast or torch.float32,
                            enabled=self.autocast is not None):
            loss, _ = self.model.compute_loss(batch, generator)
        loss.backward()
        self.optimizer.step()
        return loss.detach()
