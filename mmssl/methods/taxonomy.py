"""Taxonomy models: any composition of CR, XX, CC and RR (Fedorov et al., arXiv 2012.13623)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
from torch import Tensor, nn

from mmssl.methods.base import (
    MethodInputs,
    MethodTraits,
    ModelSettings,
    MultimodalMethod,
    OptimSettings,
    register_method,
)
from mmssl.nn import GlobalHead, LocalHead
from mmssl.objectives.infonce import CRITICS
from mmssl.objectives.taxonomy import (
    EstimatorSettings,
    Objective,
    ObjectiveError,
    resolve_weights,
    taxonomy_loss,
)
from mmssl.settings import SettingError, require

if TYPE_CHECKING:
    from mmssl.config import RunConfig


@dataclass
class ObjectiveSettings:
    r"""The taxonomy objective and its InfoNCE estimator (paper: scaled dot, clip 20, 0.04).

    ``name`` is any non-empty combination of CR, XX, CC and RR (``CR-XX-CC-RR``); ``weights``
    maps a mode to its weight :math:`w_m` (1 when absent); the estimator's ``critic``,
    ``clip`` (tanh soft clip c), ``penalty_weight`` (L2 on raw scores) and ``temperature``
    (cosine critic only); ``weight_penalty`` also multiplies each term's penalty by its weight.
    ``estimator`` is how the InfoNCE terms are computed — ``lean`` (default: chunked, recomputed
    in backward, less memory) or ``dense`` (the earlier implementation) — with the same loss and
    gradients within float rounding (:mod:`mmssl.objectives.infonce`).
    """

    name: str = "CR-XX-CC-RR"
    weights: dict[str, float] = field(default_factory=dict)
    critic: Literal["scaled_dot", "dot", "cosine"] = "scaled_dot"
    clip: float | None = 20.0
    penalty_weight: float = 0.04
    temperature: float = 1.0
    weight_penalty: bool = False
    estimator: Literal["lean", "dense"] = "lean"

    def validate(self) -> None:
        try:
            objective = Objective.parse(self.name)
            resolve_weights(objective, self.weights)
        except ObjectiveError as error:
            raise SettingError("name", str(error)) from None
        self.name = objective.name
        require(self.critic in CRITICS, "critic", f"expected one of {', '.join(CRITICS)}")
        require(self.clip is None or self.clip > 0, "clip",
                f"must be positive or null; got {self.clip}")
        require(self.penalty_weight >= 0, "penalty_weight",
                f"must be ≥ 0; got {self.penalty_weight}")
        require(self.temperature > 0, "temperature", f"must be positive; got {self.temperature}")

    @property
    def objective(self) -> Objective:
        return Objective.parse(self.name)

    def estimator_settings(self) -> EstimatorSettings:
        """The InfoNCE estimator these settings describe."""
        return EstimatorSettings(critic=self.critic, clip=self.clip,
                                 penalty_weight=self.penalty_weight,
                                 temperature=self.temperature, estimator=self.estimator)


@register_method
class TaxonomyMethod(MultimodalMethod):
    r"""Decoder-free multimodal model trained with a taxonomy objective.

    Per modality i the encoder gives z_i and the raw maps of the tapped blocks; a
    :class:`~mmssl.nn.LocalHead` per (modality, tap) projects every location
    (:math:`C_i`), a :class:`~mmssl.nn.GlobalHead` projects z_i (:math:`R_i`), and
    :func:`~mmssl.objectives.taxonomy.taxonomy_loss` combines the enabled modes:

    .. math:: \mathcal{L} = \sum_{m \in \text{modes}} w_m \sum_{t \in m} \mathrm{InfoNCE}_t
              + \sum_t \mathrm{pen}_t .

    The heads serve the objective only; evaluation uses z.

    Sessions without a modality (``batch["present"]``, see :mod:`mmssl.data.neuro.datamodule`):
    each encoder and its heads see only the samples that have their modality (so BatchNorm
    never normalises zero-filled volumes), the features are scattered back into batch-sized
    float32 tensors (zeros for the absent samples) and the masks go to
    :func:`~mmssl.objectives.taxonomy.taxonomy_loss`, which masks every term inside the batch.
    In training, a modality present in fewer than two samples of a batch is left out of that
    step (BatchNorm needs two samples; every term involving it would need two anyway, unless
    negatives are gathered across processes). Every parameter is kept in the graph with weight
    zero, so a step whose terms are all skipped still backpropagates and data-parallel training
    sees every parameter used.
    """

    name = "taxonomy"
    traits = MethodTraits(relates_modalities=False,  # CR alone is unimodal; see model_name
                          handles_missing_modalities=True)
    sections = {"objective": ObjectiveSettings}
    summary = "any of the 15 taxonomy objectives (--objective)"
    paper = "Fedorov et al. 2020/2024"

    def __init__(self, inputs: MethodInputs, model: ModelSettings, optim: OptimSettings,
                 **sections: object) -> None:
        super().__init__(inputs, model, optim, **sections)
        settings = cast(ObjectiveSettings, sections["objective"])
        self.objective_settings = settings
        self.objective = Objective.parse(settings.name)
        self.estimator = settings.estimator_settings()
        self.local_heads = nn.ModuleDict()
        self.global_heads = nn.ModuleDict()
        for modality in self.modalities:
            encoder = self.encoder(modality)
            heads = nn.ModuleDict()
            if self.objective.needs_local:
                for tap in encoder.taps:
                    heads[tap] = LocalHead(encoder.channels[tap], model.head_dim, model.head_dim,
                                           encoder.spatial_dims)
            self.local_heads[modality] = heads
            self.global_heads[modality] = (
                nn.Identity() if model.global_head == "none"
                else GlobalHead(encoder.latent_dim, model.head_dim, model.head_dim))

    @classmethod
    def model_name(cls, config: RunConfig) -> str:
        return str(config.section("objective").name)

    @classmethod
    def needs_local_features(cls, config: RunConfig) -> bool:
        return Objective.parse(config.section("objective").name).needs_local

    def gathering_estimator(self) -> EstimatorSettings:
        """The estimator, taking negatives from every process under data-parallel training."""
        return replace(self.estimator, gather=self.distributed)

    def global_features(self, modality: str, z: Tensor) -> Tensor:
        """R: the projected global representation."""
        return cast(Tensor, self.global_heads[modality](z))

    def presence(self, batch: Mapping[str, Any]) -> dict[str, Tensor] | None:
        """The batch's presence masks (modality → (B,) bool), ``None`` when it has none.

        In training a modality present in fewer than two samples is marked absent in all of
        them (BatchNorm in training mode cannot normalise a single sample).
        """
        present = batch.get("present")
        if present is None:
            return None
        masks: dict[str, Tensor] = {}
        for modality in self.modalities:
            if modality not in present:
                continue
            mask = torch.as_tensor(present[modality]).to(device=batch[modality].device,
                                                         dtype=torch.bool)
            if self.training and int(mask.sum()) < 2:
                mask = torch.zeros_like(mask)
            masks[modality] = mask
        return masks

    def encode_all(
        self, batch: Mapping[str, Any], present: Mapping[str, Tensor] | None = None
    ) -> tuple[dict[str, dict[str, Tensor]], dict[str, Tensor], dict[str, Tensor]]:
        """Projected local maps C, projected globals R and raw z, per modality.

        With ``present``, each modality is encoded on its present samples only and its
        features are scattered back into (B, ...) float32 tensors, zeros where absent.
        """
        local: dict[str, dict[str, Tensor]] = {}
        global_: dict[str, Tensor] = {}
        zs: dict[str, Tensor] = {}
        for modality in self.modalities:
            x = batch[modality]
            heads = cast(nn.ModuleDict, self.local_heads[modality])
            rows = None if present is None else present.get(modality)
            if rows is None or bool(rows.all()):
                out = self.encoder(modality)(x)
                local[modality] = {tap: heads[tap](out.local[tap]) for tap in heads}
                global_[modality] = self.global_features(modality, out.z)
                zs[modality] = out.z
                if present is not None:  # one dtype whichever branch each process takes
                    local[modality] = {k: v.float() for k, v in local[modality].items()}
                    global_[modality], zs[modality] = global_[modality].float(), out.z.float()
                continue
            size = x.shape[0]
            index = rows.nonzero().squeeze(1)
            if index.numel() == 0:
                local[modality], global_[modality], zs[modality] = self._absent(modality, x)
                continue
            out = self.encoder(modality)(x.index_select(0, index))
            local[modality] = {tap: _scatter(heads[tap](out.local[tap]), index, size)
                               for tap in heads}
            global_[modality] = _scatter(self.global_features(modality, out.z), index, size)
            zs[modality] = _scatter(out.z, index, size)
        return local, global_, zs

    def _absent(self, modality: str,
                x: Tensor) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """Zero features of the right shapes for a modality absent from the whole batch."""
        encoder = self.encoder(modality)
        size, head = x.shape[0], self.model_settings.head_dim
        heads = cast(nn.ModuleDict, self.local_heads[modality])
        local = {tap: x.new_zeros(size, head, encoder.sides[tap] ** encoder.spatial_dims,
                                  dtype=torch.float32) for tap in heads}
        global_size = encoder.latent_dim if self.model_settings.global_head == "none" else head
        return (local, x.new_zeros(size, global_size, dtype=torch.float32),
                x.new_zeros(size, encoder.latent_dim, dtype=torch.float32))

    def tie_parameters(self) -> Tensor:
        """0 × the sum of every trainable parameter: keeps them all in the graph (see class)."""
        params = [p.sum() for p in self.parameters() if p.requires_grad]
        return torch.stack(params).sum() * 0.0

    def compute_loss(
        self, batch: Mapping[str, Tensor], generator: torch.Generator | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        present = self.presence(batch)
        local, global_, _ = self.encode_all(batch, present)
        result = taxonomy_loss(
            local, global_, self.objective, estimator=self.gathering_estimator(),
            weights=self.objective_settings.weights,
            weight_penalty=self.objective_settings.weight_penalty, generator=generator,
            present=present,
        )
        total = result.total
        if present is not None and self.training:
            total = total + self.tie_parameters()
        return total, result.terms


def _scatter(part: Tensor, index: Tensor, size: int) -> Tensor:
    """(n, ...) rows of the samples ``index`` → (size, ...) float32, zeros elsewhere."""
    part = part.float()
    return part.new_zeros((size, *part.shape[1:])).index_copy(0, index, part)
