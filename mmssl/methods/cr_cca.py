"""CR-CCA: within-modality Deep InfoMax plus Deep CCA between modalities."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mmssl.methods.base import register_method
from mmssl.methods.cca_terms import dcca_terms
from mmssl.methods.taxonomy import TaxonomyMethod
from mmssl.objectives.taxonomy import taxonomy_loss

if TYPE_CHECKING:
    from mmssl.config import RunConfig


@register_method("cr_cca")
class CRCCAMethod(TaxonomyMethod):
    r"""CR within each modality, and DCCA between the modalities' global representations.

    .. math:: \mathcal{L} = \sum_i \mathrm{CR}_i \;-\; \lambda \sum_{a<b} \sum_k \rho_k(R_a, R_b)

    with :math:`\rho_k` the canonical correlations (Andrew et al., ICML 2013) of the projected
    globals R (``cca.on: head``, the reference) or of z (``cca.on: z``). Fedorov et al.,
    arXiv 2012.13623, use it as the CCA-regularised counterpart of the cross-modal modes.
    """

    def __init__(
        self,
        modalities: Sequence[str],
        input_shapes: Mapping[str, Sequence[int]],
        model: Mapping[str, Any],
        optim: Mapping[str, Any],
        objective: Mapping[str, Any],
        cca: Mapping[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        objective = {**objective, "name": "CR", "weights": {}}
        super().__init__(modalities, input_shapes, model, optim, objective, seed)
        self.cca = dict(cca or {})

    @classmethod
    def config_kwargs(
        cls, config: RunConfig, input_shapes: Mapping[str, Sequence[int]], num_classes: int
    ) -> dict[str, Any]:
        return {**super().config_kwargs(config, input_shapes, num_classes),
                "cca": asdict(config.cca)}

    def compute_loss(
        self, batch: Mapping[str, Tensor], generator: torch.Generator | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        local, global_, zs = self.encode_all(batch)
        result = taxonomy_loss(local, global_, self.objective,
                               estimator=self.gathering_estimator(), generator=generator)
        correlated = global_ if self.cca.get("on", "head") == "head" else zs
        terms = dcca_terms(correlated, self.cca)
        weight = float(self.cca.get("weight", 1.0))
        total = result.total + weight * sum(terms.values(), start=result.total.new_zeros(()))
        return total, {**result.terms, **terms}
