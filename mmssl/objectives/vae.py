r"""The MMVAE objective: a stratified IWAE bound over a mixture-of-experts joint posterior.

Shi, Siddharth, Paige and Torr, "Variational Mixture-of-Experts Autoencoders for Multi-Modal
Deep Generative Models" (NeurIPS 2019), the generative baseline of Fedorov et al.,
"Self-Supervised Multimodal Domino" (arXiv 2012.13623). The reference Domino code ships no
MMVAE (its ``criterion/misc/mmvae`` package is empty); this is written from the paper.

Model, for modalities :math:`m = 1..M` and a D-dimensional latent z:

.. math::
    q_m(z \mid x_m) = \mathrm{Laplace}(\mu_m, b_m), \qquad
    q(z \mid X) = \frac{1}{M}\sum_{m=1}^M q_m(z \mid x_m), \qquad
    p(z) = \mathrm{Laplace}(0, b_0), \qquad
    p(x_n \mid z) = \mathrm{Laplace}(\mathrm{dec}_n(z), \sigma),

all factorised over dimensions, with a learnable prior scale :math:`b_0` and a fixed likelihood
scale σ (0.75 in MMVAE). Stratified over the experts, with K reparameterised samples
:math:`z_{m,k} \sim q_m(z \mid x_m)` and optional likelihood weights :math:`\lambda_n`,

.. math::
    \log w_{m,k} = \log p(z_{m,k}) + \sum_n \lambda_n \log p(x_n \mid z_{m,k})
                   - \log q(z_{m,k} \mid X),

.. math::
    \mathcal{L} = \frac{1}{M}\sum_m \mathbb{E}_{\text{batch}}
        \Bigl[\log \frac{1}{K}\sum_{k=1}^K w_{m,k}\Bigr]
    \;\le\; \log p_\lambda(X)

(MMVAE's Eq. 4 with the IWAE estimator; with :math:`\lambda_n = 1` it lower-bounds the
marginal likelihood, and for each m it is an IWAE bound, non-decreasing in K in expectation).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Laplace

Estimator = Literal["dreg", "iwae"]
ESTIMATORS: tuple[str, ...] = ("dreg", "iwae")


@dataclass(frozen=True)
class MMVAEOutput:
    """What :func:`mmvae_objective` returns.

    Attributes:
        loss: the scalar to minimise: :math:`-\\mathcal{L}` for ``"iwae"``, the DReG surrogate
            for ``"dreg"`` (its value is not the bound; only its gradient is meaningful).
        bound: :math:`\\mathcal{L}` itself, detached (nats per sample, higher is better),
            whatever the estimator.
        terms: detached diagnostics, each a mean over modalities m, samples k and the batch:
            ``"log_likelihood/<name>"`` of :math:`\\lambda_n \\log p(x_n \\mid z)`,
            ``"log_prior"`` of :math:`\\log p(z)`, ``"log_posterior"`` of
            :math:`\\log q(z \\mid X)`, and ``"kl_proxy"`` of
            :math:`\\log q(z \\mid X) - \\log p(z)` (a single-sample KL estimate).
    """

    loss: Tensor
    bound: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)


def laplace_posterior(params: Tensor, *, eps: float = 1e-6) -> Laplace:
    r"""A diagonal Laplace from an encoder output ``(..., 2D)``: first half loc, second half scale.

    :math:`\mu = p_{:D}`, :math:`b = \operatorname{softplus}(p_{D:}) + \epsilon`. MMVAE used
    :math:`b = D \cdot \operatorname{softmax}(p_{D:}) + \epsilon` (scales summing to D); the
    softplus keeps each scale independent and its gradient bounded, which is more stable.

    Raises:
        ValueError: if the last dimension is not even and positive.
    """
    if params.dim() < 1 or params.shape[-1] == 0 or params.shape[-1] % 2:
        raise ValueError(
            f"encoder output must end in an even, non-empty dimension (loc, raw scale); got "
            f"shape {tuple(params.shape)}"
        )
    loc, raw = params.chunk(2, dim=-1)
    return Laplace(loc, F.softplus(raw) + eps)


class LaplacePrior(nn.Module):
    r"""The MMVAE prior :math:`p(z) = \mathrm{Laplace}(0, b_0)` with a learnable scale.

    The scale is :math:`b_0 = \exp(\beta)` with one parameter β per latent dimension (shape
    (1, D)), initialised to :math:`\log b_{\text{init}}`; ``learn_scale=False`` stores it as a
    buffer instead. The location is fixed at 0. MMVAE (Shi et al., 2019) learns the prior scale.
    """

    def __init__(self, latent_dim: int, *, init_scale: float = 1.0,
                 learn_scale: bool = True) -> None:
        """Create the (1, D) log-scale; see the class docstring."""
        super().__init__()
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be positive; got {latent_dim}")
        if not init_scale > 0:
            raise ValueError(f"init_scale must be positive; got {init_scale}")
        log_scale = torch.full((1, latent_dim), math.log(init_scale))
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def distribution(self) -> Laplace:
        """:math:`\\mathrm{Laplace}(0, e^{\\beta})`, batch shape (1, D)."""
        scale = self.log_scale.exp()
        return Laplace(torch.zeros_like(scale), scale)


def _validate(posteriors: Mapping[str, Laplace], prior: Laplace, targets: Mapping[str, Tensor],
              K: int, likelihood_scale: float, weights: Mapping[str, float],
              estimator: str, samples: Mapping[str, Tensor] | None) -> tuple[int, int]:
    """Check names and shapes; return (batch, latent_dim)."""
    if not posteriors:
        raise ValueError("mmvae_objective needs at least one modality")
    if set(posteriors) != set(targets):
        raise ValueError(
            f"posteriors and targets must name the same modalities; got posteriors "
            f"{sorted(posteriors)} and targets {sorted(targets)}"
        )
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise ValueError(f"K (importance samples) must be an integer >= 1; got {K!r}")
    if not likelihood_scale > 0:
        raise ValueError(f"likelihood_scale must be positive; got {likelihood_scale}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; valid: {', '.join(ESTIMATORS)}")
    unknown = sorted(set(weights) - set(targets))
    if unknown:
        raise ValueError(
            f"likelihood_weights name unknown modalities {unknown}; modalities: {sorted(targets)}"
        )
    shapes = {name: tuple(q.batch_shape) for name, q in posteriors.items()}
    first = next(iter(shapes.values()))
    if len(first) != 2 or any(shape != first for shape in shapes.values()):
        raise ValueError(f"every posterior must have the same batch shape (B, D); got {shapes}")
    batch, latent = first
    sizes = {name: x.shape[0] if x.dim() else None for name, x in targets.items()}
    if any(size != batch for size in sizes.values()):
        raise ValueError(f"targets must have batch size B = {batch} (posteriors); got {sizes}")
    try:
        shape = torch.broadcast_shapes(tuple(prior.batch_shape), (batch, latent))
    except RuntimeError:
        shape = None
    if shape != (batch, latent):
        raise ValueError(
            f"prior batch shape {tuple(prior.batch_shape)} must broadcast to (B, D) = "
            f"{(batch, latent)}, e.g. (D,) or (1, D)"
        )
    if samples is not None:
        if set(samples) != set(posteriors):
            raise ValueError(
                f"samples must name the posteriors' modalities {sorted(posteriors)}; got "
                f"{sorted(samples)}"
            )
        for name, z in samples.items():
            if tuple(z.shape) != (K, batch, latent):
                raise ValueError(
                    f"samples[{name!r}] must have shape (K, B, D) = {(K, batch, latent)}; got "
                    f"{tuple(z.shape)}"
                )
    return batch, latent


def mmvae_objective(
    posteriors: Mapping[str, Laplace],
    prior: Laplace,
    decode: Callable[[Tensor], Mapping[str, Tensor]],
    targets: Mapping[str, Tensor],
    *,
    K: int = 30,
    likelihood_scale: float = 0.75,
    likelihood_weights: Mapping[str, float] | None = None,
    estimator: Estimator = "dreg",
    samples: Mapping[str, Tensor] | None = None,
) -> MMVAEOutput:
    r"""The MMVAE stratified IWAE bound and a loss to minimise (Shi et al., NeurIPS 2019).

    Computes :math:`\log w_{m,k}` and :math:`\mathcal{L}` as in the module docstring, with the
    mixture density evaluated stably as
    :math:`\log q(z \mid X) = \operatorname{logsumexp}_{m'} \log q_{m'}(z \mid x_{m'}) - \log M`
    and :math:`\log\frac{1}{K}\sum_k w_k = \operatorname{logsumexp}_k \log w_k - \log K`.
    Log-likelihoods sum over every element of a modality (pixels, channels).

    Estimators of :math:`\nabla\mathcal{L}`:

    * ``"iwae"``: ``loss`` :math:`= -\mathcal{L}`, differentiated as is (reparameterisation plus
      the score-function term through the posterior parameters in :math:`\log q`).
    * ``"dreg"``: the doubly reparameterised estimator (Tucker, Lawson, Gu and Maddison, "Doubly
      Reparameterized Gradient Estimators for Monte Carlo Objectives", ICLR 2019), as MMVAE
      uses it. :math:`\log q(z \mid X)` is evaluated with the posterior parameters detached,
      so only the path through z remains; with normalised weights
      :math:`\tilde w_{m,k} = \operatorname{softmax}_k \log w_{m,k}` (detached) the surrogate is

      .. math:: \text{loss} = -\frac{1}{M}\sum_m \operatorname{mean}_{\text{batch}}
                \sum_k \tilde w_{m,k} \log w_{m,k},

      and a hook multiplies the gradient arriving at each sample :math:`z_{m,k}` by
      :math:`\tilde w_{m,k}`. The decoder and prior thus get the IWAE gradient
      :math:`\sum_k \tilde w_k \nabla_\theta \log w_k`, and the encoder gets
      :math:`\sum_k \tilde w_k^2\, \partial_z \log w_k\, \partial_\phi z_k`, the DReG estimator
      (:math:`\tilde w^2` rather than :math:`\tilde w` on the path term, no score term).
      The hook is attached to a copy of the samples made inside this call, so samples passed
      in stay untouched.

    Args:
        posteriors: per modality :math:`q_m(z \mid x_m)`, batch shape (B, D).
        prior: :math:`p(z)`, batch shape (D,) or (1, D) (see :class:`LaplacePrior`).
        decode: maps z of shape (N, D) to the reconstruction means of every modality, each
            (N, \*x_shape). It is called once per modality m on the K·B samples of
            :math:`q_m`, flattened to (K·B, D) so decoders see an ordinary batch.
        targets: per modality :math:`x_n`, shape (B, \*x_shape).
        K: importance samples per expert and data point.
        likelihood_scale: σ of the Laplace likelihoods.
        likelihood_weights: :math:`\lambda_n` per modality, 1 if absent (MMVAE used
            :math:`\lambda_{\text{MNIST}} = 3 \cdot 32^2 / 28^2` for MNIST–SVHN).
        estimator: ``"dreg"`` (default, as MMVAE) or ``"iwae"``.
        samples: optional pre-drawn reparameterised samples per modality, shape (K, B, D), e.g.
            ``posteriors[m].rsample((K,))``; drawn here when ``None``. For tests and for
            comparing estimators on the same draws.

    Returns:
        :class:`MMVAEOutput` (loss, detached bound :math:`\mathcal{L}`, detached terms).

    Raises:
        ValueError: different modality names in posteriors, targets, samples or weights,
            mismatched batch sizes or shapes, K < 1, a bad scale or an unknown estimator.
    """
    weights = dict(likelihood_weights or {})
    batch, latent = _validate(posteriors, prior, targets, K, likelihood_scale, weights,
                              estimator, samples)
    names = list(posteriors)
    n_modalities = len(names)
    if estimator == "dreg":
        mixture_parts = [Laplace(posteriors[n].loc.detach(), posteriors[n].scale.detach())
                         for n in names]
    else:
        mixture_parts = [posteriors[n] for n in names]

    log_weights: list[Tensor] = []  # M × (K, B)
    draws: list[Tensor] = []
    log_likelihoods: dict[str, list[Tensor]] = {n: [] for n in names}
    log_priors: list[Tensor] = []
    log_posteriors: list[Tensor] = []
    for name in names:
        z = samples[name] if samples is not None else posteriors[name].rsample((K,))
        z = z.clone() if estimator == "dreg" and z.requires_grad else z  # our own hook target
        draws.append(z)
        log_prior = prior.log_prob(z).sum(-1)
        experts = torch.stack([q.log_prob(z).sum(-1) for q in mixture_parts])  # (M, K, B)
        log_posterior = torch.logsumexp(experts, dim=0) - math.log(n_modalities)
        reconstructions = decode(z.reshape(K * batch, latent))
        missing = sorted(set(targets) - set(reconstructions))
        if missing:
            raise ValueError(
                f"decode returned modalities {sorted(reconstructions)}; missing {missing}"
            )
        total = log_prior - log_posterior
        for target_name, x in targets.items():
            mean = reconstructions[target_name]
            if mean.shape[0] != K * batch or mean.shape[1:] != x.shape[1:]:
                raise ValueError(
                    f"decode output for {target_name!r} has shape {tuple(mean.shape)}; expected "
                    f"{(K * batch, *x.shape[1:])}"
                )
            mean = mean.reshape(K, batch, *x.shape[1:])
            log_lik = Laplace(mean, torch.full_like(mean, likelihood_scale)).log_prob(x)
            log_lik = weights.get(target_name, 1.0) * log_lik.reshape(K, batch, -1).sum(-1)
            log_likelihoods[target_name].append(log_lik.detach())
            total = total + log_lik
        log_weights.append(total)
        log_priors.append(log_prior.detach())
        log_posteriors.append(log_posterior.detach())

    stacked = torch.stack(log_weights)  # (M, K, B)
    per_point = torch.logsumexp(stacked, dim=1) - math.log(K)  # (M, B)
    bound = per_point.mean()
    if estimator == "iwae":
        loss = -bound
    else:
        normalised = torch.softmax(stacked.detach(), dim=1)  # w̃, (M, K, B)
        for m, z in enumerate(draws):
            if z.requires_grad:
                scale = normalised[m].unsqueeze(-1)  # (K, B, 1)
                z.register_hook(lambda grad, s=scale: grad * s)
        loss = -(normalised * stacked).sum(dim=1).mean()

    prior_term = torch.stack(log_priors).mean()
    posterior_term = torch.stack(log_posteriors).mean()
    terms = {f"log_likelihood/{n}": torch.stack(v).mean() for n, v in log_likelihoods.items()}
    terms["log_prior"] = prior_term
    terms["log_posterior"] = posterior_term
    terms["kl_proxy"] = posterior_term - prior_term
    return MMVAEOutput(loss=loss, bound=bound.detach(), terms=terms)
