"""A low-capacity encoder for cohorts of a few hundred subjects: a fixed PCA stem, a linear map.

Why it exists (BRAIN.md, "A learner that fits the sample size"): with one DCGAN encoder per
modality (3.8 M parameters at 64³) and 10²–10³ training subjects, the cross-modal InfoNCE terms
fit a lookup table of the training pairs long before any shared structure, and on the project's
simulator no trained DCGAN representation kept the planted structure–function coupling that a
linear whole-brain reading of the same volumes finds. This encoder restricts the learner to
what that reading can express.

For a modality with training volumes :math:`x_1, …, x_N \\in \\mathbb{R}^V` (flattened), the
stem is the whitened principal-component projection fitted once on them,

.. math::
    s(x) = \\Lambda_k^{-1/2} U_k^\\top (x - \\bar x), \\qquad
    \\frac{1}{N-1}\\sum_i (x_i - \\bar x)(x_i - \\bar x)^\\top = U \\Lambda U^\\top,

(:math:`k` leading components, each of unit variance on the training volumes), and the learned
part is a linear map :math:`z = W s(x) + b \\in \\mathbb{R}^d`. The stem is a buffer, not a
parameter: fitted by :meth:`PCAEncoder.fit` before training (``mmssl pretrain`` does it from the
unaugmented training split), saved in every checkpoint. For jointly Gaussian data the mutual
information between linear projections of two views is maximised by their canonical directions
(Bach & Jordan, 2005, a probabilistic interpretation of CCA), and InfoNCE is a lower bound on
that mutual information (van den Oord et al., 2018): on whitened stems the objective is drawn
to the directions the modalities share, with :math:`k \\cdot d` parameters per modality
instead of millions.

It has no local features (no convolutional map), so only objectives on the global
representation run with it (RR; and methods without local terms); a configuration asking for CR,
XX or CC with it is refused before anything runs. The encoder is linear in its input, so the
gradient of a latent unit is the same map for every subject (the label-free latent-unit route
gives one map per unit, not per subject); Integrated Gradients of a readout is
:math:`(x - x_0) \\odot \\nabla`, which does vary by subject.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mmssl.nn.encoders import EncoderOutput

__all__ = ["PCAEncoder", "StemNotFitted"]


class StemNotFitted(RuntimeError):
    """A PCA encoder was used before its stem was fitted on training volumes."""


class PCAEncoder(nn.Module):
    """Whitened PCA stem (fitted, frozen) followed by a learned linear map to z.

    Args:
        in_channels: input channels (1 for T1 and fALFF).
        input_size: spatial side of the (square/cubic) input.
        spatial_dims: 2 or 3.
        components: k, the number of principal components kept (≤ training subjects − 1).
        latent_dim: d, the size of z.

    The attributes the taxonomy reads from an encoder are present and empty (``taps``,
    ``channels``, ``sides``): this encoder has no local features.
    """

    mean: Tensor
    basis: Tensor
    scale: Tensor
    fitted: Tensor

    def __init__(self, in_channels: int = 1, input_size: int = 32, spatial_dims: int = 3,
                 components: int = 32, latent_dim: int = 8) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3; got {spatial_dims}")
        if components < 1 or latent_dim < 1:
            raise ValueError(f"components and latent_dim must be ≥ 1; got {components}, "
                             f"{latent_dim}")
        self.in_channels = in_channels
        self.input_size = input_size
        self.spatial_dims = spatial_dims
        self.latent_dim = latent_dim
        self.components = components
        self.taps: tuple[str, ...] = ()
        self.channels: dict[str, int] = {}
        self.sides: dict[str, int] = {}
        features = in_channels * input_size**spatial_dims
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("basis", torch.zeros(components, features))
        self.register_buffer("scale", torch.ones(components))
        self.register_buffer("fitted", torch.tensor(False))
        self.linear = nn.Linear(components, latent_dim)

    @property
    def is_fitted(self) -> bool:
        """Whether the stem holds components fitted on training volumes."""
        return bool(self.fitted)

    @torch.no_grad()
    def fit(self, volumes: Tensor) -> dict[str, float]:
        """Fit the stem on (N, C, *spatial) training volumes; returns what it kept.

        The components come from the eigen-decomposition of the N × N Gram matrix of the
        centred volumes (float64), the economical route when V ≫ N; each component's sign is
        fixed so that its largest-magnitude voxel weight is positive (deterministic).

        Raises:
            ValueError: wrong shape, non-finite values, fewer than ``components + 1``
                volumes, or fewer than ``components`` directions of non-zero variance.
        """
        expected = (self.in_channels,) + (self.input_size,) * self.spatial_dims
        if volumes.dim() != len(expected) + 1 or tuple(volumes.shape[1:]) != expected:
            raise ValueError(f"PCA stem: volumes must have shape (N, {expected}); got "
                             f"{tuple(volumes.shape)}")
        n = volumes.shape[0]
        if n < self.components + 1:
            raise ValueError(
                f"PCA stem: model.pca_components = {self.components} needs at least "
                f"{self.components + 1} training volumes; got {n}. Lower model.pca_components.")
        x = volumes.reshape(n, -1).to(torch.float64)
        if not bool(torch.isfinite(x).all()):
            raise ValueError("PCA stem: the training volumes hold non-finite values")
        mean = x.mean(dim=0)
        x -= mean
        eigenvalues, vectors = torch.linalg.eigh(x @ x.T)
        order = torch.argsort(eigenvalues, descending=True)[: self.components]
        top = eigenvalues[order]
        tolerance = float(eigenvalues.max()) * n * torch.finfo(torch.float64).eps
        if float(top[-1]) <= tolerance:
            kept = int((eigenvalues > tolerance).sum())
            raise ValueError(
                f"PCA stem: the training volumes span only {kept} directions of non-zero "
                f"variance; model.pca_components = {self.components} is too many")
        basis = (vectors[:, order].T @ x) / top.sqrt().unsqueeze(1)  # unit-norm rows
        signs = torch.sign(basis.gather(1, basis.abs().argmax(dim=1, keepdim=True)))
        basis *= signs
        variance = top / (n - 1)
        self.mean.copy_(mean.to(self.mean.dtype))
        self.basis.copy_(basis.to(self.basis.dtype))
        self.scale.copy_(variance.sqrt().to(self.scale.dtype))
        self.fitted.fill_(True)
        total = float((x * x).sum()) / (n - 1)
        return {"volumes": float(n), "components": float(self.components),
                "explained_variance": float(variance.sum()) / total if total > 0 else math.nan}

    def stem(self, x: Tensor) -> Tensor:
        """The whitened principal-component scores s(x), (B, k)."""
        if not self.is_fitted:
            raise StemNotFitted(
                "the PCA encoder's stem is not fitted: fit it on the training volumes first "
                "(mmssl pretrain does this before the first epoch)")
        flat = x.reshape(x.shape[0], -1)
        return ((flat - self.mean.to(flat.dtype)) @ self.basis.to(flat.dtype).T
                / self.scale.to(flat.dtype))

    def forward(self, x: Tensor) -> EncoderOutput:
        """Encode (B, C, *spatial) into z (B, latent); no local features."""
        expected = (self.in_channels,) + (self.input_size,) * self.spatial_dims
        if tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"encoder expects inputs of shape (B, {expected}); got {tuple(x.shape)}")
        return EncoderOutput(z=self.linear(self.stem(x)))
