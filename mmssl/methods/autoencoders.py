"""The autoencoder family: AE, DCCAE and RR-AE (decoder-based baselines of the taxonomy)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.methods.base import MultimodalMethod, register_method
from mmssl.methods.cca_terms import dcca_terms
from mmssl.nn import DCGANDecoder, GlobalHead
from mmssl.objectives.taxonomy import EstimatorSettings, Objective, taxonomy_loss

if TYPE_CHECKING:
    from mmssl.config import RunConfig


@register_method("ae")
class AEMethod(MultimodalMethod):
    r"""One DCGAN autoencoder per modality, trained to reconstruct its input.

    .. math:: \mathcal{L}_{AE} = \sum_i \frac{1}{|x_i|}\lVert D_i(E_i(x_i)) - x_i\rVert^2

    (or binary cross-entropy with ``ae.loss: bce``). The decoder mirrors the encoder and ends
    in a sigmoid (fusion-spec §3.3). The modalities do not interact. z = E_i(x_i) is probed.
    """

    def __init__(
        self,
        modalities: Sequence[str],
        input_shapes: Mapping[str, Sequence[int]],
        model: Mapping[str, Any],
        optim: Mapping[str, Any],
        ae: Mapping[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(modalities, input_shapes, model, optim, seed)
        self.ae = dict(ae or {})
        if self.ae.get("loss", "mse") not in ("mse", "bce"):
            raise ValueError(f"ae.loss must be 'mse' or 'bce'; got {self.ae.get('loss')!r}")
        self.decoders = nn.ModuleDict()
        for modality in self.modalities:
            encoder = self.encoder(modality)
            self.decoders[modality] = DCGANDecoder(
                out_channels=encoder.in_channels, output_size=encoder.input_size,
                spatial_dims=encoder.spatial_dims, width=model.get("width", 32),
                latent_dim=encoder.latent_dim, output="sigmoid",
            )

    @classmethod
    def config_kwargs(
        cls, config: RunConfig, input_shapes: Mapping[str, Sequence[int]], num_classes: int
    ) -> dict[str, Any]:
        return {**super().config_kwargs(config, input_shapes, num_classes),
                "ae": asdict(config.ae)}

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
            if self.ae.get("loss", "mse") == "bce":
                terms[f"AE/{modality}"] = F.binary_cross_entropy(reconstruction, x)
            else:
                terms[f"AE/{modality}"] = F.mse_loss(reconstruction, x)
            zs[modality] = z
        return terms, zs

    def reconstruction_loss(self, terms: Mapping[str, Tensor]) -> Tensor:
        """Weighted sum of the reconstruction terms."""
        weight = float(self.ae.get("weight", 1.0))
        return weight * sum(terms.values(), start=torch.zeros((), device=self.device))

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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        head_dim = self.hparams["model"].get("head_dim", 64)
        self.global_heads = nn.ModuleDict({
            m: GlobalHead(self.encoder(m).latent_dim, head_dim, head_dim) for m in self.modalities
        })

    def heads(self, zs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {m: cast(Tensor, self.global_heads[m](z)) for m, z in zs.items()}


@register_method("dccae")
class DCCAEMethod(_AEWithHeads):
    r"""Deep canonically correlated autoencoders (Wang et al., ICML 2015).

    .. math:: \mathcal{L} = \mathcal{L}_{AE} - \lambda \sum_{a<b}\sum_k \rho_k(h_a, h_b)

    with :math:`\rho_k` the canonical correlations (trace-norm DCCA; the reference's Frobenius
    variant with ``cca.variant: frobenius``) between the projected representations
    (``cca.on: head``, as the reference) or z itself (``cca.on: z``).
    """

    def __init__(self, *args: Any, cca: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
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
        terms, zs = self.reconstruction_terms(batch)
        correlated = self.heads(zs) if self.cca.get("on", "head") == "head" else zs
        cca = dcca_terms(correlated, self.cca)
        weight = float(self.cca.get("weight", 1.0))
        total = self.reconstruction_loss(terms) + weight * sum(
            cca.values(), start=torch.zeros((), device=self.device))
        return total, {**terms, **cca}


@register_method("rr_ae")
class RRAEMethod(_AEWithHeads):
    r"""Autoencoders whose projected representations are tied by the RR InfoNCE term.

    .. math:: \mathcal{L} = \mathcal{L}_{AE} + \sum_{i \ne j} \mathrm{InfoNCE}(R_j; R_i)

    (Fedorov et al., arXiv 2012.13623: the decoder-based counterpart of RR.)
    """

    def __init__(self, *args: Any, objective: Mapping[str, Any] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        objective = dict(objective or {})
        self.estimator = EstimatorSettings(
            critic=objective.get("critic", "scaled_dot"), clip=objective.get("clip", 20.0),
            penalty_weight=objective.get("penalty_weight", 0.04),
            temperature=objective.get("temperature", 1.0),
        )

    @classmethod
    def config_kwargs(
        cls, config: RunConfig, input_shapes: Mapping[str, Sequence[int]], num_classes: int
    ) -> dict[str, Any]:
        return {**super().config_kwargs(config, input_shapes, num_classes),
                "objective": asdict(config.objective)}

    def compute_loss(
        self, batch: Mapping[str, Tensor], generator: torch.Generator | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        terms, zs = self.reconstruction_terms(batch)
        estimator = replace(self.estimator, gather=self.distributed)
        rr = taxonomy_loss({}, self.heads(zs), Objective(("RR",)), estimator=estimator)
        return self.reconstruction_loss(terms) + rr.total, {**terms, **rr.terms}
