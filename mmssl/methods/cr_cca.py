"""CR-CCA: within-modality Deep InfoMax plus Deep CCA between modalities."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, cast

import torch
from torch import Tensor, nn

from mmssl.methods.base import (
    MethodInputs,
    MethodTraits,
    ModelSettings,
    OptimSettings,
    register_method,
)
from mmssl.methods.taxonomy import ObjectiveSettings, TaxonomyMethod
from mmssl.objectives.cca import CCASettings, check_cca_batch, dcca_loss, pairwise_dcca
from mmssl.objectives.taxonomy import taxonomy_loss


@register_method
class CRCCAMethod(TaxonomyMethod):
    r"""CR within each modality, and DCCA between the modalities' global representations.

    .. math:: \mathcal{L} = \sum_i \mathrm{CR}_i \;-\; \lambda \sum_{a<b} \sum_k \rho_k(R_a, R_b)

    with :math:`\rho_k` the canonical correlations (Andrew et al., ICML 2013) of the projected
    globals R (``cca.on: head``, the reference) or of z (``cca.on: z``). Fedorov et al.,
    arXiv 2012.13623, use it as the CCA-regularised counterpart of the cross-modal modes. The
    objective is always CR (``objective.name`` is ignored); the estimator settings apply.

    Sessions without a modality: CR is masked as in :class:`TaxonomyMethod`, and the DCCA of a
    pair uses only the samples that have both (skipped when fewer than two do).
    """

    name = "cr_cca"
    traits = MethodTraits(relates_modalities=True, handles_missing_modalities=True)
    sections = {"objective": ObjectiveSettings, "cca": CCASettings}
    summary = "CR within each modality + Deep CCA between them"
    paper = "Fedorov et al."

    def __init__(self, inputs: MethodInputs, model: ModelSettings, optim: OptimSettings,
                 **sections: object) -> None:
        objective = replace(cast(ObjectiveSettings, sections["objective"]), name="CR",
                            weights={})
        super().__init__(inputs, model, optim, **{**sections, "objective": objective})
        self.cca_settings = cast(CCASettings, sections["cca"])
        # The CCA is estimated on a linear projection of R to cca.dim (a small CCA relative
        # to the batch, as Wang et al. ran DCCA), not on the 64-d R itself.
        self.cca_projections = nn.ModuleDict({
            m: nn.Linear(model.head_dim, self.cca_settings.dim) for m in self.modalities})

    @classmethod
    def model_name(cls, config: object) -> str:
        return cls.name

    @classmethod
    def check_config(cls, config: Any) -> str | None:
        cca = config.section("cca", CCASettings)
        dim = cca.dim if cca.on == "head" else config.model.latent_dim
        return check_cca_batch(config.data.batch_size, dim, cca)

    def compute_loss(
        self, batch: Mapping[str, Tensor], generator: torch.Generator | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        present = self.presence(batch)
        local, global_, zs = self.encode_all(batch, present)
        result = taxonomy_loss(local, global_, self.objective,
                               estimator=self.gathering_estimator(), generator=generator,
                               present=present)
        representations = ({m: self.cca_projections[m](r) for m, r in global_.items()}
                           if self.cca_settings.on == "head" else zs)
        if not present:
            terms = pairwise_dcca(representations, self.cca_settings)
        else:
            terms = self._masked_dcca(representations, present)
        total = result.total + self.cca_settings.weight * sum(terms.values(),
                                                     start=result.total.new_zeros(()))
        if present is not None and self.training:
            total = total + self.tie_parameters()
        return total, {**result.terms, **terms}

    def _masked_dcca(self, representations: Mapping[str, Tensor],
                     present: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``CCA/a:b`` of every pair on the samples that have both (absent below two)."""
        terms: dict[str, Tensor] = {}
        settings = self.cca_settings
        for a, b in itertools.combinations(list(representations), 2):
            both = torch.ones_like(next(iter(present.values())))
            for modality in (a, b):
                if modality in present:
                    both = both & present[modality]
            if int(both.sum()) < 2:
                continue
            terms[f"CCA/{a}:{b}"] = dcca_loss(representations[a][both], representations[b][both],
                                             r1=settings.r1, r2=settings.r2,
                                             top_k=settings.top_k, variant=settings.variant)
        return terms
