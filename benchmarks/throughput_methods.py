"""Part 3 of :mod:`benchmarks.throughput`: a full training step of every registered method.

Each method of :data:`mmssl.methods.METHODS` is built as ``mmssl train`` builds it, from the
resolved default configuration (``METHODS[name].from_config(config, shapes, classes)``; the
shapes and classes from the dataset registry), the taxonomy twice (CR-XX-CC-RR and RR). All
steps are timed in the same interleaved rounds: pairs/s, ms/step, trainable parameters, the
FLOPs of a step and the slowdown against the fastest decoder-free row, so the cost of decoders
(AE, DCCAE, RR-AE, MMVAE) is visible next to the decoder-free models.

Each method trains in the memory layout a run of it would use: ``memory_format="auto"`` (the
default) decides per method exactly as ``trainer.memory_format: auto`` does
(:func:`mmssl.runs.performance.decide_memory_format`, the machine's cache included), and the
row records the layout its model was laid out in and where the decision came from. The layout
matters most where the work is convolutions on large batches: MMVAE decodes K·B samples per
modality. ``contiguous`` gives every method PyTorch's default layout (the table of earlier
versions).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.harness import count_flops, time_interleaved
from benchmarks.workloads import (
    TrainingStep,
    formatted_batches,
    radam,
    random_batches,
    trainable_parameters,
)
from mmssl.analysis.tables import Table
from mmssl.config import RunConfig, resolve
from mmssl.data.registry import DATASETS, dataset_spec
from mmssl.methods import METHODS, MMVAESettings, ObjectiveSettings
from mmssl.runs.performance import apply_memory_format, decide_memory_format, model_memory_format

__all__ = ["METHOD_ORDER", "QUICK_METHODS", "TAXONOMY_ROWS", "MethodRow", "all_methods",
           "benchmark_datasets", "dataset_inputs", "measure_methods", "method_configs",
           "methods_table"]

METHOD_ORDER: tuple[str, ...] = ("taxonomy", "supervised", "ae", "dccae", "cr_cca", "rr_ae",
                                 "mmvae")
QUICK_METHODS: tuple[str, ...] = ("taxonomy", "ae", "cr_cca")  # MMVAE (K = 30) is the slow one
TAXONOMY_ROWS: tuple[str, ...] = ("CR-XX-CC-RR", "RR")  # the taxonomy's objectives in part 3
BATCH_POOL = 4  # distinct random batches cycled through by the timed steps
# The start of mmssl.objectives.cca's warning for a batch too small for the representation.
CCA_WARNING = "CCA on a batch of"


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
    gflop_per_step: float  # matrix products and convolutions of one step, forward + backward
    gflop_per_s: float  # gflop_per_step / median step time: achieved, a lower bound
    memory_format: str  # the layout the model's weights were in while timed
    memory_format_source: str  # configured, measured or cached (decide_memory_format)


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
    flops: int
    memory_format: str
    memory_format_source: str


def all_methods() -> list[str]:
    """Every registered method, in the report's order (unlisted registrations last)."""
    return ([name for name in METHOD_ORDER if name in METHODS]
            + [name for name in METHODS if name not in METHOD_ORDER])


def benchmark_datasets() -> list[str]:
    """Registered datasets whose shapes are known without files: fixed modalities, classes."""
    return [name for name, spec in DATASETS.items() if spec.modalities and spec.num_classes]


def dataset_inputs(dataset: str) -> dict[str, tuple[int, ...]]:
    """Modality → input shape of ``dataset`` with its default settings (the registry's)."""
    spec = dataset_spec(dataset)
    return spec.input_shapes(spec.settings(), spec.modalities)


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
            variant = (config.section("objective", ObjectiveSettings).name
                       if name == "taxonomy" else
                       f"K={config.section('mmvae', MMVAESettings).K}" if name == "mmvae"
                       else "")
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


def measure_methods(
    names: Sequence[str], batch_size: int, device: torch.device, *, dataset: str,
    mmvae_k: int | None, warmup: int, repeats: int, memory_format: str = "auto",
) -> tuple[list[MethodRow], list[str]]:
    """Build every method, check one step and count its FLOPs, then time all steps, interleaved.

    ``memory_format`` (``auto``, ``channels_last`` or ``contiguous``) is resolved per method as
    a run resolves ``trainer.memory_format``; the model and its batches are laid out in the
    choice before anything is timed.

    Returns the rows and notes on suppressed warnings (DCCA's, for a batch ≤ its dimension + 1);
    any other warning is passed on.
    """
    spec = dataset_spec(dataset)
    input_shapes = dataset_inputs(dataset)
    num_classes = spec.num_classes or 1
    batches = random_batches(input_shapes, batch_size, BATCH_POOL, device,
                             num_classes=num_classes)
    laid_out = {"contiguous": batches}
    built: list[BuiltMethod] = []
    steps: dict[str, TrainingStep] = {}
    with warnings.catch_warnings(record=True) as caught:
        for label, variant, config in method_configs(names, dataset, mmvae_k):
            torch.manual_seed(0)
            shapes = spec.input_shapes(config.data.settings, config.modalities)
            cls = METHODS[config.method]
            model = cls.from_config(config, shapes, num_classes).to(device).train()
            decision = decide_memory_format(memory_format, model, batch_size, device)
            apply_memory_format(model, decision.choice)
            if decision.choice not in laid_out:
                laid_out[decision.choice] = formatted_batches(batches, decision.choice)
            steps[label] = TrainingStep(model, radam(model, config.optim),
                                        laid_out[decision.choice])
            first_loss = float(steps[label]())  # untimed: builds lazy state, checks the loss
            flops = count_flops(steps[label])
            built.append(BuiltMethod(label, variant, config.method, cls.traits.has_decoders,
                                     "cca" in cls.sections, trainable_parameters(model),
                                     first_loss, flops, model_memory_format(model),
                                     decision.source))
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
    return [
        MethodRow(
            label=b.label, method=b.method, variant=b.variant, decoders=b.decoders,
            batch_size=batch_size, parameters=b.parameters, loss=b.loss,
            pairs_per_s=timings[b.label].rate(batch_size),
            step_ms=timings[b.label].median_ms, step_iqr_percent=timings[b.label].iqr_percent,
            slowdown=timings[b.label].median_ms / reference_ms, reference=reference,
            gflop_per_step=b.flops / 1e9, gflop_per_s=timings[b.label].rate(b.flops / 1e9),
            memory_format=b.memory_format, memory_format_source=b.memory_format_source,
        )
        for b in built
    ], notes


def methods_table(rows: Sequence[MethodRow], batch_size: int, dataset: str) -> Table:
    """Part 3's table."""
    reference = rows[0].reference if rows else "?"
    return Table(
        f"Training throughput per method ({dataset}, batch {batch_size}, median)",
        ["method", "decoders", "layout", "params", "pairs/s", "ms/step", "IQR%", "GFLOP/step",
         "GFLOP/s", f"× slower than {reference}"],
        [[r.label, "yes" if r.decoders else "no",
          f"{r.memory_format} ({r.memory_format_source})", f"{r.parameters:,}",
          f"{r.pairs_per_s:,.0f}", f"{r.step_ms:.2f}", f"{r.step_iqr_percent:.0f}",
          f"{r.gflop_per_step:.3g}", f"{r.gflop_per_s:.3g}", f"{r.slowdown:.2f}×"]
         for r in rows],
        text_columns=("method", "decoders", "layout"),
    )
