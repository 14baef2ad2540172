"""The autoencoder family: AE, DCCAE and RR-AE (decoder-based baselines of the taxonomy)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.methods.base import (
    MethodInputs,
    MethodTraits,
    ModelSettings,
    MultimodalMethod,
    OptimSettings,
    register_method,
)
from mmssl.methods.taxonomy import ObjectiveSettings
from mmssl.nn import DCGANDecoder, GlobalHead
from mmssl.objectives.cca import CCASettings, check_cca_batch, pairwise_dcca
from mmssl.objectives.taxonomy import Objective, taxonomy_loss
from mmssl.settings import require


@dataclass
class AESettings:
    """Reconstruction term of the autoencoder family: ``mse`` or ``bce``, weighted."""

    loss: Literal["mse", "bce"] = "mse"
    weight: float = 1.0

    def validate(self) -> None:
        require(self.weight >= 0, "weight", f"must be ≥ 0; got {self.weight}")


@register_method
class AEMethod(MultimodalMethod):
    r"""One DCGAN autoencoder per modality, trained to reconstruct its input.

    .. math:: \mathcal{L}_{AE} = \sum_i \frac{1}{|x_i|}\lVert D_i(E_i(x_i)) - x_i\rVert^2

    (or binary cross-entropy with ``ae.loss: bce``). The decoder mirrors the encoder and ends
    in a sigmoid (fusion-spec §3.3). The modalities do not interact. z = E_i(x_i) is probed.
    """

    name = "ae"
    traits = MethodTraits(relates_modalities=False, has_decoders=True)
    sections = {"ae": AESettings}
    summary = "DCGAN autoencoder per modality (sigmoid output, MSE or BCE)"
    paper = "—"

    def __init__(self, inputs: MethodInputs, model: ModelSettings, optim: OptimSettings,
                 **sections: object) -> None:
        super().__init__(inputs, model, optim, **sections)
        self.ae_settings = cast(AESettings, sections["ae"])
        self.decoders = nn.ModuleDict()
        for modality in self.modalities:
            encoder = self.encoder(modality)
            self.decoders[modality] = DCGANDecoder(
                out_channels=encoder.in_channels, output_size=encoder.input_size,
                spatial_dims=encoder.spatial_dims, width=model.width,
                latent_dim=encoder.latent_dim, output="sigmoid",
            )

    def reconstruction_terms(
        self, batch: Mapping[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``AE/<modality>`` reconstruction losses and the representations z."""
        terms: dict[str, Tensor] = {}
        zs: dict[str, Tensor] = {}
        for modality in self.modalities:
            x = batch[modality]
            z = self.encoder(modality)(x).z
            reconstruction = self.decoders[modality](z)
            if self.ae_settings.loss == "bce":
                terms[f"AE/{modality}"] = F.binary_cross_entropy(reconstruction, x)
            else:
                terms[f"AE/{modality}"] = F.mse_loss(reconstruction, x)
            zs[modality] = z
        return terms, zs

    def reconstruction_loss(self, terms: Mapping[str, Tensor]) -> Tensor:
        """Weighted sum of the reconstruction terms."""
        total = sum(terms.values(), start=torch.zeros((), device=self.device))
        return self.ae_settings.weight * total

    def compute_loss(
        self, batch: Mapping[str, Tensor], generator: torch.Generator | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        terms, _ = self.reconstruction_terms(batch)
        return self.reconstruction_loss(terms), terms

    @torch.no_grad()
    def reconstruct(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Each modality decoded from its own representation."""
        return {m: self.decoders[m](self.encoder(m)(batch[m]).z) for m in self.modalities}


class _AEWithHeads(AEMethod):
    """An AE whose representations also pass through a global projection head each."""

    def __init__(self, inputs: MethodInputs, model: ModelSettings, optim: OptimSettings,
                 **sections: object) -> None:
        super().__init__(inputs, model, optim, **sections)
        out = self.head_output(model, sections)
        self.global_heads = nn.ModuleDict({
            m: GlobalHead(self.encoder(m).latent_dim, out, model.head_dim)
            for m in self.modalities
        })

    def head_output(self, model: ModelSettings, sections: Mapping[str, object]) -> int:
        """Output size of the projection heads."""
        return model.head_dim

    def heads(self, zs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {m: cast(Tensor, self.global_heads[m](z)) for m, z in zs.items()}


@register_method
class DCCAEMethod(_AEWithHeads):
    r"""Deep canonically correlated autoencoders (Wang et al., ICML 2015).

    .. math:: \mathcal{L} = \mathcal{L}_{AE} - \lambda \sum_{a<b}\sum_k \rho_k(h_a, h_b)

    with :math:`\rho_k` the canonical correlations (trace-norm DCCA; the reference's Frobenius
    variant with ``cca.variant: frobenius``) between the projected representations
    (``cca.on: head``, as the reference) or z itself (``cca.on: z``).
    """

    name = "dccae"
    traits = MethodTraits(relates_modalities=True, has_decoders=True)
    sections = {"ae": AESettings, "cca": CCASettings}
    summary = "AE + Deep CCA (sum of canonical correlations, ridge) between modalities"
    paper = "Wang et al., ICML 2015"

    def __init__(self, inputs: MethodInputs, model: ModelSettings, optim: OptimSettings,
                 **sections: object) -> None:
        super().__init__(inputs, model, optim, **sections)
        self.cca_settings = cast(CCASettings, sections["cca"])

    def head_output(self, model: ModelSettings, sections: Mapping[str, object]) -> int:
        """The heads project to the CCA dimension (``cca.dim``)."""
        return cast(CCASettings, sections["cca"]).dim

    @classmethod
    def check_config(cls, config: Any) -> str | None:
        cca = config.section("cca", CCASettings)
        dim = cca.dim if cca.on == "head" else config.model.latent_dim
        return check_cca_batch(config.data.batch_size, dim, cca)

    def compute_loss(
        self, batch: Mapping[str, Tensor], generator: torch.Generator | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        terms, zs = self.reconstruction_terms(batch)
        cca = pairwise_dcca(self.heads(zs) if self.cca_settings.on == "head" else zs,
                            self.cca_settings)
        total = self.reconstruction_loss(terms) + self.cca_settings.weight * sum(
            cca.values(), start=torch.zeros((), device=self.device))
        return total, {**terms, **cca}


@register_method
class RRAEMethod(_AEWithHeads):
    r"""Autoencoders whose projected representations are tied by the RR InfoNCE term.

    .. math:: \mathcal{L} = \mathcal{L}_{AE} + \sum_{i \ne j} \mathrm{InfoNCE}(R_j; R_i)

    (Fedorov et al., arXiv 2012.13623: the decoder-based counterpart of RR; the estimator
    settings come from the ``objective`` section, its ``name`` is ignored.)
    """

    name = "rr_ae"
    traits = MethodTraits(relates_modalities=True, has_decoders=True)
    sections = {"ae": AESettings, "objective": ObjectiveSettings}
    summary = "AE + the RR InfoNCE term"
    paper = "Fedorov et al."

    def __init__(self, inputs: MethodInputs, model: ModelSettings, optim: OptimSettings,
                 **sections: object) -> None:
        super().__init__(inputs, model, optim, **sections)
        self.estimator = cast(ObjectiveSettings, sections["objective"]).estimator_settings()

    def compute_loss(
        self, batch: Mapping[str, Tensor], generator: torch.Generator | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        terms, zs = self.reconstruction_terms(batch)
        estimator = replace(self.estimator, gather=self.distributed)
        rr = taxonomy_loss({}, self.heads(zs), Objective(("RR",)), estimator=estimator)
        return self.reconstruction_loss(terms) + rr.total, {**terms, **rr.terms}
