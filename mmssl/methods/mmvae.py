"""MMVAE: the mixture-of-experts multimodal VAE baseline (Shi et al., NeurIPS 2019)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from math import prod
from typing import Literal, cast

import torch
from torch import Tensor, nn
from torch.distributions import Laplace

from mmssl.methods.base import (
    Encoder,
    MethodInputs,
    MethodTraits,
    ModelSettings,
    MultimodalMethod,
    OptimSettings,
    register_method,
)
from mmssl.nn import DCGANDecoder
from mmssl.objectives.vae import LaplacePrior, laplace_posterior, mmvae_objective
from mmssl.settings import require


@dataclass
class MMVAESettings:
    """MMVAE (Shi et al., NeurIPS 2019): latent size, K importance samples, the estimator.

    ``likelihood_scale`` is the Laplace scale of every likelihood; ``likelihood_weights: auto``
    rescales each modality's log-likelihood by (largest input size / its size).
    """

    latent_dim: int = 20
    K: int = 30
    estimator: Literal["dreg", "iwae"] = "dreg"
    likelihood_scale: float = 0.75
    likelihood_weights: Literal["auto", "none"] = "auto"

    def validate(self) -> None:
        require(self.K >= 1, "K", f"must be ≥ 1; got {self.K}")
        require(self.latent_dim >= 1, "latent_dim", f"must be ≥ 1; got {self.latent_dim}")
        require(self.likelihood_scale > 0, "likelihood_scale",
                f"must be positive; got {self.likelihood_scale}")


class PosteriorMean(nn.Module):
    """The posterior location μ of an MMVAE encoder: the representation probed by default."""

    def __init__(self, encoder: Encoder, latent_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.latent_dim = latent_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x).z[:, : self.latent_dim]


class PosteriorSample(nn.Module):
    """One sample z ~ q(z|x), from a generator reseeded at every call (deterministic probes)."""

    def __init__(self, encoder: Encoder, latent_dim: int, seed: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.latent_dim = latent_dim
        self.seed = seed
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        posterior = laplace_posterior(self.encoder(x).z)
        generator = torch.Generator(device="cpu").manual_seed(self.seed + self.calls)
        self.calls += 1
        uniform = torch.rand(posterior.loc.shape, generator=generator).to(x.device) - 0.5
        # Inverse-CDF sampling of the Laplace: μ − b·sign(u)·log(1 − 2|u|).
        return posterior.loc - posterior.scale * uniform.sign() * torch.log1p(-2 * uniform.abs())


@register_method
class MMVAEMethod(MultimodalMethod):
    r"""Mixture-of-experts multimodal VAE trained with the stratified IWAE/DReG bound.

    Per modality m a DCGAN encoder gives a Laplace posterior :math:`q_m(z|x_m)`; the joint
    posterior is the mixture :math:`\frac1M\sum_m q_m`; a DCGAN decoder per modality gives a
    Laplace likelihood with fixed scale; the prior is a Laplace with a learnable scale. The
    objective is :func:`mmssl.objectives.vae.mmvae_objective` with K importance samples
    (defaults of the MMVAE MNIST-SVHN protocol: latent 20, K = 30, DReG). The probe uses the
    posterior mean (``metrics.json``) and a sampled z (``metrics_sampled.json``), as MMVAE did.
    """

    name = "mmvae"
    traits = MethodTraits(relates_modalities=True, has_decoders=True)
    sections = {"mmvae": MMVAESettings}
    summary = ("mixture-of-experts VAE: Laplace posteriors and likelihoods, learnable prior, "
               "DReG/IWAE with K samples")
    paper = "Shi et al., NeurIPS 2019"

    def __init__(self, inputs: MethodInputs, model: ModelSettings, optim: OptimSettings,
                 **sections: object) -> None:
        super().__init__(inputs, model, optim, **sections)
        settings = cast(MMVAESettings, sections["mmvae"])
        self.settings = settings
        self.latent_dim = settings.latent_dim
        self.decoders = nn.ModuleDict()
        for modality in self.modalities:
            # The encoder outputs the posterior's location and raw scale: 2 × latent values.
            encoder = self.build_encoder(modality, latent_dim=2 * settings.latent_dim)
            self.encoders[modality] = encoder
            self.decoders[modality] = DCGANDecoder(
                out_channels=encoder.in_channels, output_size=encoder.input_size,
                spatial_dims=encoder.spatial_dims, width=model.width,
                latent_dim=settings.latent_dim, output="sigmoid",
            )
        self.prior_module = LaplacePrior(settings.latent_dim)
        sizes = {m: prod(inputs.input_shapes[m]) for m in self.modalities}
        if settings.likelihood_weights == "auto":
            largest = max(sizes.values())
            self.likelihood_weights = {m: largest / size for m, size in sizes.items()}
        else:
            self.likelihood_weights = {m: 1.0 for m in self.modalities}

    def prior(self) -> Laplace:
        """p(z) = Laplace(0, exp(s)) with learnable s."""
        return self.prior_module.distribution()

    def posteriors(self, batch: Mapping[str, Tensor]) -> dict[str, Laplace]:
        """q_m(z | x_m) for every modality."""
        return {m: laplace_posterior(self.encoder(m)(batch[m]).z) for m in self.modalities}

    def decode(self, z: Tensor) -> dict[str, Tensor]:
        """Likelihood locations of every modality for latent samples z (N, D)."""
        return {m: self.decoders[m](z) for m in self.modalities}

    def compute_loss(
        self, batch: Mapping[str, Tensor], generator: torch.Generator | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        output = mmvae_objective(
            self.posteriors(batch), self.prior(), self.decode,
            {m: batch[m] for m in self.modalities},
            K=self.settings.K,
            likelihood_scale=self.settings.likelihood_scale,
            likelihood_weights=self.likelihood_weights,
            estimator=self.settings.estimator,
        )
        return output.loss, {"bound": output.bound, **output.terms}

    def probe_encoders(self) -> dict[str, dict[str, nn.Module]]:
        return {
            "": {m: PosteriorMean(self.encoder(m), self.latent_dim) for m in self.modalities},
            "sampled": {m: PosteriorSample(self.encoder(m), self.latent_dim, self.seed)
                        for m in self.modalities},
        }

    @torch.no_grad()
    def cross_generate(self, batch: Mapping[str, Tensor]) -> dict[tuple[str, str], Tensor]:
        """(source, target) → target modality decoded from the source's posterior mean."""
        means = {m: q.loc for m, q in self.posteriors(batch).items()}
        return {(source, target): self.decoders[target](means[source])
                for source in self.modalities for target in self.modalities}
