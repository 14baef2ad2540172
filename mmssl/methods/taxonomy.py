"""Taxonomy models: any composition of CR, XX, CC and RR (Fedorov et al., arXiv 2012.13623)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from mmssl.methods.base import MultimodalMethod, register_method
from mmssl.nn import GlobalHead, LocalHead
from mmssl.objectives.taxonomy import EstimatorSettings, Objective, taxonomy_loss

if TYPE_CHECKING:
    from mmssl.config import RunConfig


@register_method("taxonomy")
class TaxonomyMethod(MultimodalMethod):
    r"""Decoder-free multimodal model trained with a taxonomy objective.

    Per modality i the encoder gives z_i and the raw maps of the tapped blocks; a
    :class:`~mmssl.nn.LocalHead` per (modality, tap) projects every location
    (:math:`C_i`), a :class:`~mmssl.nn.GlobalHead` projects z_i (:math:`R_i`), and
    :func:`~mmssl.objectives.taxonomy.taxonomy_loss` combines the enabled modes:

    .. math:: \mathcal{L} = \sum_{m \in \text{modes}} w_m \sum_{t \in m} \mathrm{InfoNCE}_t
              + \sum_t \mathrm{pen}_t .

    The heads serve the objective only; evaluation uses z.
    """

    def __init__(
        self,
        modalities: Sequence[str],
        input_shapes: Mapping[str, Sequence[int]],
        model: Mapping[str, Any],
        optim: Mapping[str, Any],
        objective: Mapping[str, Any],
        seed: int = 0,
    ) -> None:
        super().__init__(modalities, input_shapes, model, optim, seed)
        self.objective = Objective.parse(objective.get("name", "CR-XX-CC-RR"))
        self.weights = dict(objective.get("weights") or {})
        self.weight_penalty = bool(objective.get("weight_penalty", False))
        self.estimator = EstimatorSettings(
            critic=objective.get("critic", "scaled_dot"),
            clip=objective.get("clip", 20.0),
            penalty_weight=objective.get("penalty_weight", 0.04),
            temperature=objective.get("temperature", 1.0),
        )
        head_dim = model.get("head_dim", 64)
        needs_local = any(m in self.objective.modes for m in ("CR", "XX", "CC"))
        self.local_heads = nn.ModuleDict()
        self.global_heads = nn.ModuleDict()
        for modality in self.modalities:
            encoder = self.encoder(modality)
            heads = nn.ModuleDict()
            if needs_local:
                for tap in encoder.taps:
                    heads[tap] = LocalHead(encoder.channels[tap], head_dim, head_dim,
                                           encoder.spatial_dims)
            self.local_heads[modality] = heads
            self.global_heads[modality] = GlobalHead(encoder.latent_dim, head_dim, head_dim)

    @classmethod
    def config_kwargs(
        cls, config: RunConfig, input_shapes: Mapping[str, Sequence[int]], num_classes: int
    ) -> dict[str, Any]:
        return {**super().config_kwargs(config, input_shapes, num_classes),
                "objective": asdict(config.objective)}

    def gathering_estimator(self) -> EstimatorSettings:
        """The estimator, taking negatives from every process under data-parallel training."""
        return replace(self.estimator, gather=self.distributed)

    def global_features(self, modality: str, z: Tensor) -> Tensor:
        """R: the projected global representation."""
        return cast(Tensor, self.global_heads[modality](z))

    def encode_all(
        self, batch: Mapping[str, Tensor]
    ) -> tuple[dict[str, dict[str, Tensor]], dict[str, Tensor], dict[str, Tensor]]:
        """Projected local maps C, projected globals R and raw z, per modality."""
        local: dict[str, dict[str, Tensor]] = {}
        global_: dict[str, Tensor] = {}
        zs: dict[str, Tensor] = {}
        for modality in self.modalities:
            out = self.encoder(modality)(batch[modality])
            heads = cast(nn.ModuleDict, self.local_heads[modality])
            local[modality] = {tap: heads[tap](out.local[tap]) for tap in heads}
            global_[modality] = self.global_features(modality, out.z)
            zs[modality] = out.z
        return local, global_, zs

    def compute_loss(
        self, batch: Mapping[str, Tensor], generator: torch.Generator | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        local, global_, _ = self.encode_all(batch)
        result = taxonomy_loss(
            local, global_, self.objective, estimator=self.gathering_estimator(),
            weights=self.weights,
            weight_penalty=self.weight_penalty, generator=generator,
        )
        return result.total, result.terms
