"""The Domino taxonomy: CR, XX, CC and RR terms and their composition by name.

Fedorov et al., "Self-Supervised Multimodal Domino: in Search of Biomarkers for Alzheimer's
Disease" (arXiv 2012.13623, §2–3; NeuroImage 285:120485, 2024). For modality i let
:math:`C_i` be the projected local features of an encoder layer (all L locations) and
:math:`R_i` the projected global representation. With :math:`I(\\cdot;\\cdot)` the InfoNCE
bound of :func:`mmssl.objectives.infonce.infonce` (anchor first, candidates second):

=====  ===========================================  =====================================
mode   terms                                        scope
=====  ===========================================  =====================================
CR     :math:`I(R_i; C_i)` for every i               within a modality, global–local (DIM)
XX     :math:`I(R_i; C_j)` for every i ≠ j           across, global–local
CC     :math:`I(C_i[\\ell]; C_j)`, ℓ random, i ≠ j   across, local–local
RR     :math:`I(R_j; R_i)` for every i ≠ j           across, global–global (CMC-like)
=====  ===========================================  =====================================

A model is any non-empty subset of the modes, written in the canonical order ``CR-XX-CC-RR``.
The total loss is :math:`\\sum_m w_m \\sum_{t \\in m} \\mathrm{nce}_t + \\sum_t \\mathrm{pen}_t`
(each mode weight applied exactly once — the reference squared the XX weight — and penalties
unweighted as in the reference unless ``weight_penalty`` is set). Cross-modal modes loop over
all ordered pairs of modalities, so any number of modalities works.

**Missing modalities.** With ``present`` (modality → (B,) bool) a term uses only the samples
where every modality it involves is present — CR its modality, XX, CC and RR both — as anchors
*and* as candidates (masking inside the batch: negatives come only from valid samples), so the
loss of a batch in which sample k lacks modality j equals the loss with sample k's terms that
involve j removed. A term with fewer than two valid samples has no negatives and is skipped: it
is absent from :attr:`TaxonomyLoss.terms` (not NaN) and adds nothing to the total. Under
data-parallel gathering the masks are gathered with the candidates
(:func:`~mmssl.objectives.infonce.masked_infonce`).

This module is pure: it knows nothing about encoders, files or training loops.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mmssl.objectives.infonce import (
    CRITICS,
    ESTIMATORS,
    Critic,
    Estimator,
    InfoNCEResult,
    infonce,
    infonce_shared,
    masked_infonce,
)

Terms = Iterator[tuple[str, InfoNCEResult]]
Specs = Iterator["TermSpec"]


class ObjectiveError(ValueError):
    """An objective name or weight that does not describe a taxonomy model."""


@dataclass(frozen=True)
class Objective:
    """A taxonomy model: a non-empty set of modes kept in canonical ``CR-XX-CC-RR`` order."""

    modes: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.modes:
            raise ObjectiveError("an objective needs at least one mode of " + ", ".join(MODES))
        unknown = [m for m in self.modes if m not in MODES]
        if unknown:
            raise ObjectiveError(
                f"unknown mode(s) {', '.join(unknown)}; valid modes: {', '.join(MODES)}"
            )
        if len(set(self.modes)) != len(self.modes):
            raise ObjectiveError(f"repeated mode in {'-'.join(self.modes)}")
        canonical = tuple(m for m in MODES if m in self.modes)
        object.__setattr__(self, "modes", canonical)

    @classmethod
    def parse(cls, name: str) -> Objective:
        """Parse ``"XX-CR"``, ``"cr-xx"``, ``"CR+XX"`` … into the canonical objective."""
        parts = [p.strip().upper() for p in name.replace("+", "-").split("-") if p.strip()]
        try:
            return cls(tuple(parts))
        except ObjectiveError as error:
            raise ObjectiveError(
                f"bad objective {name!r}: {error}. Valid objectives: {', '.join(all_objectives())}"
            ) from None

    @property
    def name(self) -> str:
        """Canonical hyphenated name, e.g. ``CR-XX-CC-RR``."""
        return "-".join(self.modes)

    @property
    def is_cross_modal(self) -> bool:
        """Whether any mode relates two modalities."""
        return any(MODES[m].cross_modal for m in self.modes)

    @property
    def cross_modal_modes(self) -> tuple[str, ...]:
        """The enabled modes that relate two modalities."""
        return tuple(m for m in self.modes if MODES[m].cross_modal)

    @property
    def needs_local(self) -> bool:
        """Whether any mode uses the local features C (so encoders need local heads)."""
        return any(MODES[m].needs_local for m in self.modes)

    def __str__(self) -> str:
        return self.name


def all_objectives() -> list[str]:
    """All 15 non-empty subsets of the modes, canonical names, by size then canonical order."""
    return [
        "-".join(combo)
        for size in range(1, len(MODES) + 1)
        for combo in itertools.combinations(MODES, size)
    ]


@dataclass(frozen=True)
class EstimatorSettings:
    """Settings of the InfoNCE estimator shared by all terms (paper defaults, §2).

    ``estimator`` chooses how :func:`~mmssl.objectives.infonce.infonce` computes the same
    loss, penalty and gradients: ``lean`` (chunked, recomputing its backward: a fraction of
    the memory, and faster on CPU) or ``dense`` (the whole score tensor kept for backward: the
    earlier implementation, kept selectable as the baseline). ``share_candidates`` (lean only)
    computes the terms that read the same candidates — CR, XX and CC all take a modality's
    local map C_i — in one pass (:func:`~mmssl.objectives.infonce.infonce_shared`); the
    results are those of the terms one by one, to float rounding.
    """

    critic: Critic = "scaled_dot"
    clip: float | None = 20.0
    penalty_weight: float = 0.04
    temperature: float = 1.0
    #: take the candidates of every process (data-parallel training; no-op otherwise)
    gather: bool = False
    #: ``lean`` or ``dense`` (:data:`~mmssl.objectives.infonce.ESTIMATORS`)
    estimator: Estimator = "lean"
    #: compute terms with the same candidates (and no presence mask) together (lean only)
    share_candidates: bool = True

    def __post_init__(self) -> None:
        if self.critic not in CRITICS:
            raise ObjectiveError(f"unknown critic {self.critic!r}; valid: {', '.join(CRITICS)}")
        if self.estimator not in ESTIMATORS:
            raise ObjectiveError(f"unknown estimator {self.estimator!r}; valid: "
                                 f"{', '.join(ESTIMATORS)}")
        if self.clip is not None and self.clip <= 0:
            raise ObjectiveError(f"clip must be positive or null; got {self.clip}")
        if self.penalty_weight < 0:
            raise ObjectiveError(f"penalty_weight must be ≥ 0; got {self.penalty_weight}")
        if self.temperature <= 0:
            raise ObjectiveError(f"temperature must be positive; got {self.temperature}")

    def _estimator_settings(self) -> dict[str, Any]:
        """The keyword arguments of :func:`infonce` and :func:`masked_infonce` these settings
        fix (one list, so a new setting reaches both)."""
        return {"critic": self.critic, "clip": self.clip, "penalty_weight": self.penalty_weight,
                "temperature": self.temperature, "gather": self.gather,
                "estimator": self.estimator}

    def __call__(self, anchors: Tensor, candidates: Tensor) -> InfoNCEResult:
        return infonce(anchors, candidates, **self._estimator_settings())

    def term(self, anchors: Tensor, candidates: Tensor,
             valid: Tensor | None) -> InfoNCEResult | None:
        """One term on the ``valid`` samples only (all when ``None``); ``None`` when fewer than
        two samples are valid (:func:`~mmssl.objectives.infonce.masked_infonce`)."""
        if valid is None:
            return self(anchors, candidates)
        return masked_infonce(anchors, candidates, valid, **self._estimator_settings())

    def evaluate(self, specs: Sequence[TermSpec]) -> Terms:
        """Every term of ``specs``, in order, as ``(name, result)``; skipped terms left out.

        With ``share_candidates`` and the lean estimator, unmasked terms that read the same
        candidates tensor with anchors of one shape are computed together
        (:func:`~mmssl.objectives.infonce.infonce_shared`). The grouping depends only on which
        tensors the terms read, never on their values, so under data-parallel training every
        process makes the same collectives. Masked terms (``valid`` given) run one by one.
        """
        results: list[InfoNCEResult | None] = [None] * len(specs)
        shared: dict[tuple[int, tuple[int, ...]], list[int]] = {}
        for index, spec in enumerate(specs):
            if spec.valid is None and self.share_candidates and self.estimator == "lean":
                key = (id(spec.candidates), tuple(spec.anchors.shape))
                shared.setdefault(key, []).append(index)
            else:
                results[index] = self.term(spec.anchors, spec.candidates, spec.valid)
        for indices in shared.values():
            if len(indices) == 1:
                results[indices[0]] = self(specs[indices[0]].anchors,
                                           specs[indices[0]].candidates)
                continue
            together = infonce_shared([specs[i].anchors for i in indices],
                                      specs[indices[0]].candidates,
                                      **self._estimator_settings())
            for i, result in zip(indices, together, strict=True):
                results[i] = result
        for spec, maybe in zip(specs, results, strict=True):
            yield from _kept(spec.name, maybe)


@dataclass(frozen=True)
class TermSpec:
    """One InfoNCE term to compute: its name, anchors (B, C, L_y), candidates (B, C, L_x) and
    the samples it may use (``valid``, (B,) bool; ``None``: all)."""

    name: str
    anchors: Tensor
    candidates: Tensor
    valid: Tensor | None = None


@dataclass
class TaxonomyLoss:
    """The total loss and every term, for logging.

    ``terms`` maps ``MODE/layer/anchor:candidates`` (``RR/anchor:candidates`` for RR) to the
    InfoNCE loss and the same name plus ``/penalty`` to the term's score penalty. A term
    skipped for lack of valid samples (missing modalities) has no entry.
    """

    total: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)


def sample_locations(features: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One uniformly random location per sample of (B, C, L) features → (B, C, 1).

    Indices are drawn on the generator's device (or the features' device without a generator)
    and gathered: no one-hot masks, nothing tied to a particular device.
    """
    batch, channels, n_locations = features.shape
    draw_device = generator.device if generator is not None else features.device
    index = torch.randint(n_locations, (batch,), generator=generator, device=draw_device)
    index = index.to(features.device).view(batch, 1, 1).expand(batch, channels, 1)
    return features.gather(2, index)


def resolve_weights(objective: Objective, weights: Mapping[str, float] | None) -> dict[str, float]:
    """Weight per enabled mode (1 by default); rejects weights for modes not in the objective."""
    weights = dict(weights or {})
    unknown = [m for m in weights if m not in objective.modes]
    if unknown:
        raise ObjectiveError(
            f"weights given for mode(s) {', '.join(unknown)} not in objective {objective.name}; "
            f"its modes: {', '.join(objective.modes)}"
        )
    for mode, value in weights.items():
        if value < 0:
            raise ObjectiveError(f"weight of {mode} must be ≥ 0; got {value}")
    return {m: float(weights.get(m, 1.0)) for m in objective.modes}


def taxonomy_loss(
    local: Mapping[str, Mapping[str, Tensor]],
    global_: Mapping[str, Tensor],
    objective: Objective,
    *,
    estimator: EstimatorSettings | None = None,
    weights: Mapping[str, float] | None = None,
    weight_penalty: bool = False,
    generator: torch.Generator | None = None,
    present: Mapping[str, Tensor] | None = None,
) -> TaxonomyLoss:
    """Compose the enabled modes into one loss.

    With ``present``, each term is restricted to the samples where all the modalities it
    involves are present (module docstring); a term with fewer than two such samples is left
    out of the total and of :attr:`TaxonomyLoss.terms`. Features of absent samples may hold
    anything (zeros): they are never read.

    Args:
        local: modality → layer name → projected local features (B, C, L).
        global_: modality → projected global representation (B, C).
        objective: the enabled modes.
        estimator: InfoNCE settings (paper defaults when ``None``).
        weights: mode → weight (1 for modes not given); applied once per term.
        weight_penalty: also multiply each term's penalty by its mode weight.
        generator: random source for the CC anchor locations (reproducible, any device).
            CC draws a location for the valid samples of each pair only, in pair order.
        present: modality → (B,) bool, whether each sample has that modality; a modality not
            in it is present in every sample. ``None``: every modality of every sample.

    Returns:
        :class:`TaxonomyLoss` with the total and each term.

    Raises:
        ObjectiveError: inconsistent features, or ``present`` naming an unknown modality or
            not holding one bool flag per sample.
    """
    estimator = estimator or EstimatorSettings()
    mode_weights = resolve_weights(objective, weights)
    modalities = list(global_)
    if set(local) - set(modalities):
        raise ObjectiveError(
            f"local features for {sorted(set(local) - set(modalities))} have no global features"
        )
    if objective.is_cross_modal and len(modalities) < 2:
        cross = list(objective.cross_modal_modes)
        raise ObjectiveError(
            f"objective {objective.name} has cross-modal mode(s) {', '.join(cross)}, which need "
            f"at least two modalities; got {modalities or 'none'}. Use CR for one modality."
        )
    if objective.needs_local and not any(local.values()):
        raise ObjectiveError(f"objective {objective.name} needs local features; none were given")

    masks = _check_present(present, global_)
    total = next(iter(global_.values())).new_zeros(())
    terms: dict[str, Tensor] = {}
    features = Features(local=local, global_=global_, generator=generator, present=masks)
    specs = [(mode, spec) for mode in objective.modes for spec in MODES[mode].terms(features)]
    mode_of = {spec.name: mode for mode, spec in specs}
    for name, result in estimator.evaluate([spec for _, spec in specs]):
        weight = mode_weights[mode_of[name]]
        terms[name] = result.loss
        terms[f"{name}/penalty"] = result.penalty
        penalty_weight = weight if weight_penalty else 1.0
        total = total + weight * result.loss + penalty_weight * result.penalty
    return TaxonomyLoss(total=total, terms=terms)


def _check_present(present: Mapping[str, Tensor] | None,
                   global_: Mapping[str, Tensor]) -> dict[str, Tensor] | None:
    """The presence masks as (B,) bool tensors on the features' device, checked."""
    if present is None:
        return None
    reference = next(iter(global_.values()))
    batch = reference.shape[0]
    unknown = sorted(set(present) - set(global_))
    if unknown:
        raise ObjectiveError(f"present names modalities without features: {unknown}; "
                             f"modalities: {sorted(global_)}")
    masks: dict[str, Tensor] = {}
    for modality, mask in present.items():
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool \
                or tuple(mask.shape) != (batch,):
            what = (f"{mask.dtype} of shape {tuple(mask.shape)}" if isinstance(mask, Tensor)
                    else type(mask).__name__)
            raise ObjectiveError(f"present[{modality!r}] must be a ({batch},) bool tensor, one "
                                 f"flag per sample; got {what}")
        masks[modality] = mask.to(reference.device)
    return masks


@dataclass(frozen=True)
class Features:
    """What the mode terms read: projected local maps C, globals R, a random source, and the
    presence masks (``None``: every modality of every sample is present)."""

    local: Mapping[str, Mapping[str, Tensor]]
    global_: Mapping[str, Tensor]
    generator: torch.Generator | None = None
    present: Mapping[str, Tensor] | None = None

    @property
    def modalities(self) -> list[str]:
        return list(self.global_)

    def pairs(self) -> list[tuple[str, str]]:
        """Every ordered pair of different modalities."""
        return list(itertools.permutations(self.modalities, 2))

    def valid(self, *modalities: str) -> Tensor | None:
        """(B,) bool: the samples where every one of ``modalities`` is present (``None``: all)."""
        if self.present is None:
            return None
        batch = next(iter(self.global_.values())).shape[0]
        out = torch.ones(batch, dtype=torch.bool,
                         device=next(iter(self.global_.values())).device)
        for modality in modalities:
            if modality in self.present:
                out = out & self.present[modality]
        return out


def _anchor(vector: Tensor) -> Tensor:
    return vector.unsqueeze(-1)


def _kept(name: str, result: InfoNCEResult | None) -> Terms:
    """Yield ``(name, result)`` unless the term was skipped (``None``)."""
    if result is not None:
        yield name, result


def cr_terms(features: Features) -> Specs:
    """CR: :math:`I(R_i; C_i)` for every modality i and tapped layer (``CR/layer/i``), on the
    samples that have modality i."""
    for modality in features.modalities:
        valid = features.valid(modality)
        for layer, local in features.local.get(modality, {}).items():
            yield TermSpec(f"CR/{layer}/{modality}", _anchor(features.global_[modality]),
                           local, valid)


def xx_terms(features: Features) -> Specs:
    """XX: :math:`I(R_i; C_j)` for every i ≠ j and layer of j (``XX/layer/i:j``), on the
    samples that have both."""
    for anchor, other in features.pairs():
        valid = features.valid(anchor, other)
        for layer, local in features.local.get(other, {}).items():
            yield TermSpec(f"XX/{layer}/{anchor}:{other}", _anchor(features.global_[anchor]),
                           local, valid)


def _draw_anchors(local: Tensor, valid: Tensor | None,
                  generator: torch.Generator | None) -> Tensor:
    """CC anchors: one random location of every valid sample (zeros for the others), drawn
    for the valid samples only, so a masked batch draws what the batch of its valid samples
    would."""
    if valid is None:
        return sample_locations(local, generator)
    drawn = sample_locations(local[valid], generator)
    return local.new_zeros(local.shape[0], local.shape[1], 1).index_put((valid,), drawn)


def cc_terms(features: Features) -> Specs:
    """CC: :math:`I(C_i[\\ell]; C_j)`, ℓ one random location per sample, layers tapped in both,
    on the samples that have both."""
    for anchor, other in features.pairs():
        mine, theirs = features.local.get(anchor, {}), features.local.get(other, {})
        shared = [k for k in mine if k in theirs]
        if not shared:
            raise ObjectiveError(
                f"CC needs a layer tapped in both {anchor} and {other}; got {sorted(mine)} and "
                f"{sorted(theirs)}"
            )
        valid = features.valid(anchor, other)
        for layer in shared:
            anchors = _draw_anchors(mine[layer], valid, features.generator)
            yield TermSpec(f"CC/{layer}/{anchor}:{other}", anchors, theirs[layer], valid)


def rr_terms(features: Features) -> Specs:
    """RR: :math:`I(R_j; R_i)` for every i ≠ j (``RR/j:i``: anchors from j), on the samples
    that have both."""
    for candidates, anchor in features.pairs():
        yield TermSpec(f"RR/{anchor}:{candidates}", _anchor(features.global_[anchor]),
                       _anchor(features.global_[candidates]), features.valid(anchor, candidates))


@dataclass(frozen=True)
class Mode:
    """One row of the taxonomy: its name, scope, what it reads, and its terms (what each
    InfoNCE term reads; :meth:`EstimatorSettings.evaluate` computes them)."""

    name: str
    cross_modal: bool
    needs_local: bool
    description: str
    terms: Callable[[Features], Specs]


#: The taxonomy, in canonical order. Adding a mode is one entry here (and one test).
MODES: dict[str, Mode] = {
    mode.name: mode for mode in (
        Mode("CR", False, True, "within a modality, global-local (Deep InfoMax)", cr_terms),
        Mode("XX", True, True, "across modalities, global-local", xx_terms),
        Mode("CC", True, True, "across modalities, local-local", cc_terms),
        Mode("RR", True, False, "across modalities, global-global (CMC-like)", rr_terms),
    )
}
#: The modes that relate two modalities.
CROSS_MODAL_MODES: frozenset[str] = frozenset(m.name for m in MODES.values() if m.cross_modal)
