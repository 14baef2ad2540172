"""MMVAE objective: explicit-loop oracle, IWAE properties, the DReG estimator, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Laplace

from mmssl.objectives.vae import (
    LaplacePrior,
    MMVAEOutput,
    laplace_posterior,
    mmvae_objective,
)

B, D, K = 3, 2, 4
NAMES = ("a", "b")


def tiny_problem(dtype: torch.dtype = torch.float64, seed: int = 0):
    """Two modalities: "a" is a 3-vector, "b" a 2×2 image; linear decoders; learnable leaves."""
    gen = torch.Generator().manual_seed(seed)

    def leaf(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen, dtype=dtype) * scale).requires_grad_(True)

    params = {
        "loc_a": leaf(B, D), "raw_a": leaf(B, D, scale=0.5),
        "loc_b": leaf(B, D), "raw_b": leaf(B, D, scale=0.5),
        "w_a": leaf(D, 3), "c_a": leaf(3), "w_b": leaf(D, 4), "c_b": leaf(4),
        "prior_log_scale": leaf(1, D, scale=0.1),
    }
    targets = {
        "a": torch.randn(B, 3, generator=gen, dtype=dtype),
        "b": torch.randn(B, 2, 2, generator=gen, dtype=dtype),
    }

    def posteriors() -> dict[str, Laplace]:
        return {
            "a": Laplace(params["loc_a"], nn.functional.softplus(params["raw_a"]) + 1e-6),
            "b": Laplace(params["loc_b"], nn.functional.softplus(params["raw_b"]) + 1e-6),
        }

    def prior() -> Laplace:
        scale = params["prior_log_scale"].exp()
        return Laplace(torch.zeros_like(scale), scale)

    def decode(z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "a": z @ params["w_a"] + params["c_a"],
            "b": (z @ params["w_b"] + params["c_b"]).reshape(-1, 2, 2),
        }

    return params, targets, posteriors, prior, decode


def draw(posteriors: dict[str, Laplace], k: int, seed: int) -> dict[str, torch.Tensor]:
    """Reparameterised samples z = μ + b·ε with ε from a fixed seed, (K, B, D) per modality."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, q in posteriors.items():
        u = torch.rand((k, *q.batch_shape), generator=gen, dtype=q.loc.dtype) - 0.5
        noise = -torch.sign(u) * torch.log1p(-2 * u.abs())  # standard Laplace
        out[name] = q.loc + q.scale * noise
    return out


def loop_log_weights(posteriors, prior, decode, targets, samples, weights, sigma):
    """log w[m][k][b] by explicit loops over m, k, b, with the mixture as log mean exp."""
    names = list(posteriors)
    k_total = samples[names[0]].shape[0]
    log_w = torch.zeros(len(names), k_total, B, dtype=torch.float64)
    log_lik = {n: [] for n in names}
    for m, name in enumerate(names):
        for k in range(k_total):
            for b in range(B):
                z = samples[name][k, b]
                lp = Laplace(prior.loc[0], prior.scale[0]).log_prob(z).sum()
                experts = [
                    Laplace(posteriors[j].loc[b], posteriors[j].scale[b]).log_prob(z).sum()
                    for j in names
                ]
                lq = torch.log(sum(torch.exp(e) for e in experts) / len(names))
                ll_total = 0.0
                reconstructions = decode(z[None])
                for n in names:
                    mean = reconstructions[n][0]
                    ll = Laplace(mean, torch.full_like(mean, sigma)).log_prob(targets[n][b]).sum()
                    ll = weights.get(n, 1.0) * ll
                    log_lik[n].append(ll)
                    ll_total = ll_total + ll
                log_w[m, k, b] = lp + ll_total - lq
    return log_w, {n: torch.stack(v).mean() for n, v in log_lik.items()}


def loop_bound(log_w: torch.Tensor) -> float:
    """mean over m and b of log (1/K) Σ_k exp(log w), by plain Python."""
    values = []
    for m in range(log_w.shape[0]):
        for b in range(log_w.shape[2]):
            column = [log_w[m, k, b].item() for k in range(log_w.shape[1])]
            top = max(column)
            values.append(top + math.log(sum(math.exp(c - top) for c in column) / len(column)))
    return sum(values) / len(values)


# --- the bound -----------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["iwae", "dreg"])
def test_bound_matches_explicit_loops(estimator):
    params, targets, posteriors, prior, decode = tiny_problem()
    q, p = posteriors(), prior()
    samples = draw(q, K, seed=1)
    weights = {"a": 2.5}
    out = mmvae_objective(q, p, decode, targets, K=K, likelihood_scale=0.75,
                          likelihood_weights=weights, estimator=estimator, samples=samples)
    assert isinstance(out, MMVAEOutput)
    with torch.no_grad():
        log_w, log_lik = loop_log_weights(q, p, decode, targets, samples, weights, 0.75)
    assert out.bound.item() == pytest.approx(loop_bound(log_w), abs=1e-10)
    assert not out.bound.requires_grad
    for name in NAMES:
        assert out.terms[f"log_likelihood/{name}"].item() == pytest.approx(
            log_lik[name].item(), abs=1e-10
        )
    assert all(not t.requires_grad for t in out.terms.values())
    assert out.terms["kl_proxy"].item() == pytest.approx(
        (out.terms["log_posterior"] - out.terms["log_prior"]).item(), abs=1e-12
    )
    if estimator == "iwae":
        assert out.loss.item() == pytest.approx(-out.bound.item(), abs=1e-12)


def test_single_sample_is_the_elbo_estimate():
    params, targets, posteriors, prior, decode = tiny_problem(seed=2)
    q, p = posteriors(), prior()
    samples = draw(q, 1, seed=3)
    out = mmvae_objective(q, p, decode, targets, K=1, estimator="iwae", samples=samples)
    with torch.no_grad():
        terms = []
        for name in NAMES:
            z = samples[name][0]  # (B, D)
            log_q = torch.logsumexp(
                torch.stack([q[n].log_prob(z).sum(-1) for n in NAMES]), dim=0
            ) - math.log(2)
            recon = decode(z)
            log_lik = sum(
                Laplace(recon[n], 0.75).log_prob(targets[n]).flatten(1).sum(-1) for n in NAMES
            )
            terms.append(p.log_prob(z).sum(-1) + log_lik - log_q)
        expected = torch.stack(terms).mean()
    assert out.bound.item() == pytest.approx(expected.item(), abs=1e-10)
    assert out.loss.item() == pytest.approx(-expected.item(), abs=1e-10)


def test_bound_increases_with_K_on_average():
    # The same data point repeated: the batch mean then averages independent draws.
    torch.manual_seed(0)
    rows, latent = 256, 2
    loc = torch.tensor([[0.5, -0.3]]).expand(rows, latent)
    posteriors = {
        "a": Laplace(loc, torch.full((rows, latent), 0.3)),
        "b": Laplace(-loc, torch.full((rows, latent), 0.8)),
    }
    prior = Laplace(torch.zeros(latent), torch.ones(latent))
    weight = torch.tensor([[1.0, -2.0, 0.5], [0.3, 1.0, -1.0]])
    targets = {"a": torch.tensor([[0.7, -0.2, 0.1]]).expand(rows, 3),
               "b": torch.tensor([[-0.4, 0.6, 0.0]]).expand(rows, 3)}

    def decode(z):
        return {"a": z @ weight, "b": -z @ weight}

    ks = (1, 2, 4, 8, 16)
    seeds = range(12)
    bounds = torch.zeros(len(seeds), len(ks))
    for i, seed in enumerate(seeds):
        for j, k in enumerate(ks):
            torch.manual_seed(seed * 100 + j)
            out = mmvae_objective(posteriors, prior, decode, targets, K=k, estimator="iwae")
            bounds[i, j] = out.bound
    means = bounds.mean(0)
    for j in range(len(ks) - 1):
        diff = bounds[:, j + 1] - bounds[:, j]
        standard_error = diff.std() / math.sqrt(len(seeds))
        assert means[j + 1] > means[j] - 3 * standard_error, (ks, means)
    assert means[-1] - means[0] > 10 * (bounds[:, -1] - bounds[:, 0]).std() / math.sqrt(12)


# --- estimators ----------------------------------------------------------------------------


def gradients(estimator: str, seed: int = 0):
    params, targets, posteriors, prior, decode = tiny_problem(seed=seed)
    q = posteriors()
    out = mmvae_objective(q, prior(), decode, targets, K=K, estimator=estimator,
                          samples=draw(q, K, seed=seed + 10))
    names = list(params)
    grads = torch.autograd.grad(out.loss, [params[n] for n in names])
    return out, dict(zip(names, grads, strict=True))


def test_dreg_and_iwae_agree_on_the_bound_and_on_decoder_and_prior_gradients():
    out_dreg, g_dreg = gradients("dreg")
    out_iwae, g_iwae = gradients("iwae")
    assert out_dreg.bound.item() == pytest.approx(out_iwae.bound.item(), abs=1e-12)
    for name, grad in [*g_dreg.items(), *g_iwae.items()]:
        assert torch.isfinite(grad).all(), name
        assert grad.abs().sum() > 0, name
    # DReG changes only the encoder's estimator: decoder and prior get the IWAE gradient.
    for name in ("w_a", "c_a", "w_b", "c_b", "prior_log_scale"):
        torch.testing.assert_close(g_dreg[name], g_iwae[name], atol=1e-10, rtol=1e-8)
    assert not torch.allclose(g_dreg["loc_a"], g_iwae["loc_a"], atol=1e-6)
    assert not torch.allclose(g_dreg["raw_b"], g_iwae["raw_b"], atol=1e-6)


def test_dreg_encoder_gradient_is_squared_weights_times_path_derivative():
    params, targets, posteriors, prior, decode = tiny_problem(seed=4)
    q, p = posteriors(), prior()
    samples = draw(q, K, seed=5)
    out = mmvae_objective(q, p, decode, targets, K=K, estimator="dreg", samples=samples)
    (grad_loc_a,) = torch.autograd.grad(out.loss, params["loc_a"])

    # Oracle: g = ∂ log w / ∂z with every posterior parameter held fixed, then
    # ∂loss/∂μ_a[b] = -(1/(M B)) Σ_k w̃²_{a,k,b} g_{a,k,b} since ∂z/∂μ = 1.
    fixed = {n: Laplace(q[n].loc.detach(), q[n].scale.detach()) for n in NAMES}
    z = {n: samples[n].detach().clone().requires_grad_(True) for n in NAMES}
    with torch.no_grad():
        frozen = {k: v.detach() for k, v in params.items()}

    def frozen_decode(x):
        return {"a": x @ frozen["w_a"] + frozen["c_a"],
                "b": (x @ frozen["w_b"] + frozen["c_b"]).reshape(-1, 2, 2)}

    frozen_prior = Laplace(p.loc.detach(), p.scale.detach())
    log_w, _ = loop_log_weights(fixed, frozen_prior, frozen_decode, targets, z, {}, 0.75)
    (g_a,) = torch.autograd.grad(log_w[0].sum(), z["a"])
    w_tilde = torch.softmax(log_w[0].detach(), dim=0)  # (K, B)
    expected = -(w_tilde.pow(2).unsqueeze(-1) * g_a).sum(0) / (2 * B)
    torch.testing.assert_close(grad_loc_a, expected, atol=1e-10, rtol=1e-8)


def test_dreg_leaves_caller_samples_without_hooks():
    params, targets, posteriors, prior, decode = tiny_problem(seed=6)
    q = posteriors()
    samples = {n: z.detach().clone().requires_grad_(True) for n, z in draw(q, K, 7).items()}
    out = mmvae_objective(q, prior(), decode, targets, K=K, estimator="dreg", samples=samples)
    out.loss.backward()
    assert all(torch.isfinite(z.grad).all() for z in samples.values())
    (plain,) = torch.autograd.grad(samples["a"].sum(), samples["a"])
    torch.testing.assert_close(plain, torch.ones_like(plain))


@pytest.mark.parametrize("estimator", ["dreg", "iwae"])
def test_a_few_adam_steps_increase_the_bound(estimator):
    torch.manual_seed(0)
    n, latent = 64, 2
    shared = torch.randn(n, latent)
    data = {"a": shared @ torch.randn(latent, 6) + 0.05 * torch.randn(n, 6),
            "b": shared @ torch.randn(latent, 4) + 0.05 * torch.randn(n, 4)}
    encoders = nn.ModuleDict({m: nn.Linear(x.shape[1], 2 * latent) for m, x in data.items()})
    decoders = nn.ModuleDict({m: nn.Linear(latent, x.shape[1]) for m, x in data.items()})
    prior = LaplacePrior(latent)
    modules = nn.ModuleList([encoders, decoders, prior])
    optimiser = torch.optim.Adam(modules.parameters(), lr=0.03)

    def step(k: int) -> MMVAEOutput:
        posteriors = {m: laplace_posterior(encoders[m](x)) for m, x in data.items()}
        return mmvae_objective(posteriors, prior.distribution(),
                               lambda z: {m: dec(z) for m, dec in decoders.items()},
                               data, K=k, estimator=estimator)

    def evaluate() -> float:
        torch.manual_seed(123)
        with torch.no_grad():
            return step(32).bound.item()

    before = evaluate()
    for _ in range(40):
        optimiser.zero_grad()
        step(8).loss.backward()
        optimiser.step()
    after = evaluate()
    assert math.isfinite(after) and after > before + 5.0, (before, after)


# --- helpers -------------------------------------------------------------------------------


def test_laplace_posterior_splits_loc_and_positive_scale():
    raw = torch.tensor([[0.5, -1.0, -50.0, 2.0]])
    q = laplace_posterior(raw, eps=1e-6)
    torch.testing.assert_close(q.loc, torch.tensor([[0.5, -1.0]]))
    expected = nn.functional.softplus(torch.tensor([[-50.0, 2.0]])) + 1e-6
    torch.testing.assert_close(q.scale, expected)
    assert (q.scale > 0).all()
    with pytest.raises(ValueError, match="even"):
        laplace_posterior(torch.zeros(2, 3))


def test_laplace_prior():
    prior = LaplacePrior(3, init_scale=2.0)
    dist = prior.distribution()
    assert dist.batch_shape == (1, 3)
    torch.testing.assert_close(dist.scale, torch.full((1, 3), 2.0))
    torch.testing.assert_close(dist.loc, torch.zeros(1, 3))
    dist.log_prob(torch.ones(5, 3)).sum().backward()
    assert prior.log_scale.grad is not None and torch.isfinite(prior.log_scale.grad).all()
    fixed = LaplacePrior(3, learn_scale=False)
    assert list(fixed.parameters()) == [] and "log_scale" in dict(fixed.named_buffers())
    with pytest.raises(ValueError):
        LaplacePrior(0)


# --- errors --------------------------------------------------------------------------------


def test_errors():
    params, targets, posteriors, prior, decode = tiny_problem()
    q, p = posteriors(), prior()
    with pytest.raises(ValueError, match=r"same modalities.*\['a', 'b'\].*\['a', 'c'\]"):
        mmvae_objective(q, p, decode, {"a": targets["a"], "c": targets["b"]}, K=2)
    with pytest.raises(ValueError, match="batch size"):
        mmvae_objective(q, p, decode, {"a": targets["a"][:2], "b": targets["b"]}, K=2)
    with pytest.raises(ValueError, match="same batch shape"):
        short = {"a": q["a"], "b": Laplace(q["b"].loc[:2], q["b"].scale[:2])}
        mmvae_objective(short, p, decode, targets, K=2)
    for bad_k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="K"):
            mmvae_objective(q, p, decode, targets, K=bad_k)
    with pytest.raises(ValueError, match="estimator"):
        mmvae_objective(q, p, decode, targets, K=2, estimator="vimco")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown modalities"):
        mmvae_objective(q, p, decode, targets, K=2, likelihood_weights={"svhn": 2.0})
    with pytest.raises(ValueError, match="likelihood_scale"):
        mmvae_objective(q, p, decode, targets, K=2, likelihood_scale=0.0)
    with pytest.raises(ValueError, match="prior batch shape"):
        mmvae_objective(q, Laplace(torch.zeros(3), torch.ones(3)), decode, targets, K=2)
    with pytest.raises(ValueError, match="missing"):
        mmvae_objective(q, p, lambda z: {"a": decode(z)["a"]}, targets, K=2)
    with pytest.raises(ValueError, match="decode output"):
        mmvae_objective(q, p, lambda z: {"a": decode(z)["a"][:, :2], "b": decode(z)["b"]},
                        targets, K=2)
    with pytest.raises(ValueError, match=r"samples\['a'\]"):
        mmvae_objective(q, p, decode, targets, K=2, samples=draw(q, 3, 0))
    with pytest.raises(ValueError, match="at least one modality"):
        mmvae_objective({}, p, decode, {}, K=2)
