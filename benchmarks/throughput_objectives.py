"""Part 1 of :mod:`benchmarks.throughput`: training throughput per taxonomy objective.

The paper-default model (Fedorov et al., arXiv 2012.13623: DCGAN width 32, latent 64, 64-d
heads, the ``block1`` 8×8 local tap) on Two-View MNIST's two 1×32×32 modalities (shapes from
the dataset registry). Three things are timed in the same interleaved rounds: the full training
step, the encoder+heads forward alone (``TaxonomyMethod.encode_all``) and the objective alone
(:func:`~mmssl.objectives.taxonomy.taxonomy_loss` forward and backward on detached copies of
the head outputs), so the objective's share of a step is measured, not inferred.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from benchmarks.harness import time_interleaved
from benchmarks.workloads import TrainingStep, radam, random_batches
from mmssl.analysis.tables import Table
from mmssl.data.registry import dataset_spec
from mmssl.methods import TaxonomyMethod
from mmssl.objectives.taxonomy import Objective, taxonomy_loss

__all__ = ["PAPER_DATASET", "ObjectiveRow", "build_method", "measure_objective",
           "objectives_table", "paper_inputs"]

#: The dataset whose input shapes part 1 uses (two 1×32×32 views).
PAPER_DATASET = "two_view_mnist"
PAPER_TAP = "block1"  # the 8×8 map of a 32×32 input
BATCH_POOL = 4  # distinct random batches cycled through by the timed steps
#: Above this |compute_loss − forward/objective split| the split is reported as wrong.
SPLIT_TOLERANCE = 1e-3


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


def paper_inputs() -> dict[str, tuple[int, ...]]:
    """Modality → input shape of :data:`PAPER_DATASET` with its default settings."""
    spec = dataset_spec(PAPER_DATASET)
    return spec.input_shapes(spec.settings(), spec.modalities)


def build_method(objective: str, device: torch.device) -> TaxonomyMethod:
    """The paper-default two-modality model for ``objective`` on ``device``, in training mode."""
    torch.manual_seed(0)
    shapes = paper_inputs()
    method = TaxonomyMethod.create(list(shapes), shapes, model={"local_taps": [PAPER_TAP]},
                                   objective={"name": objective}, seed=0)
    assert isinstance(method, TaxonomyMethod)
    return method.to(device).train()


def objective_loss(
    method: TaxonomyMethod,
    local: Mapping[str, Mapping[str, Tensor]],
    global_: Mapping[str, Tensor],
    generator: torch.Generator,
) -> Tensor:
    """The method's objective on given head outputs: the loss part of ``compute_loss``."""
    settings = method.objective_settings
    return taxonomy_loss(
        local, global_, method.objective, estimator=method.gathering_estimator(),
        weights=settings.weights, weight_penalty=settings.weight_penalty, generator=generator,
    ).total


def measure_objective(
    objective: str, batch_size: int, device: torch.device, *, warmup: int, repeats: int
) -> ObjectiveRow:
    """Time full training steps, the forward alone and the objective alone, interleaved."""
    method = build_method(objective, device)
    batches = random_batches(paper_inputs(), batch_size, BATCH_POOL, device,
                             num_classes=dataset_spec(PAPER_DATASET).num_classes or 1)
    train_step = TrainingStep(method, radam(method, method.optim_settings), batches)
    forward_batches: Iterator[dict[str, Tensor]] = itertools.cycle(batches)

    def forward_only() -> None:
        # Encoders + heads (the forward part of compute_loss), with autograd recording as in
        # a training step; the graph is freed on return.
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
        pairs_per_s=step.rate(batch_size),
        step_ms=step.median_ms,
        step_iqr_percent=step.iqr_percent,
        forward_ms=forward.median_ms,
        objective_ms=objective_t.median_ms,
        objective_share=objective_t.median_ms / step.median_ms,
        rest_ms=step.median_ms - forward.median_ms - objective_t.median_ms,
        split_check_abs_diff=split_diff,
    )


def objectives_table(rows: Sequence[ObjectiveRow], batch_size: int) -> Table:
    """Part 1's table."""
    return Table(
        f"Training throughput per objective (batch {batch_size}, median)",
        ["objective", "terms", "pairs/s", "ms/step", "IQR%", "fwd ms", "obj ms", "obj share",
         "rest ms"],
        [[r.objective, str(r.terms), f"{r.pairs_per_s:,.0f}", f"{r.step_ms:.2f}",
          f"{r.step_iqr_percent:.0f}", f"{r.forward_ms:.2f}", f"{r.objective_ms:.2f}",
          f"{100 * r.objective_share:.1f}%", f"{r.rest_ms:.2f}"] for r in rows],
    )
