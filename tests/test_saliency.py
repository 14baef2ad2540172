"""Tests for saliency heads, SmoothGrad (Captum) and map helpers (mmssl.evaluation.saliency)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from torch import Tensor, nn

from mmssl.evaluation.group import voxelwise_group_test
from mmssl.evaluation.plots import plot_map
from mmssl.evaluation.probe import fit_probe
from mmssl.evaluation.saliency import (
    LatentUnit,
    LinearReadout,
    ProbeLogit,
    expected_gradients,
    group_maps,
    integrated_gradients,
    localisation_auc,
    smoothgrad,
)
from mmssl.io import save_nifti as _save_nifti
from mmssl.nn.encoders import DCGANEncoder


def save_nifti(volume, affine, path):
    """The maps are written by mmssl.io.save_nifti (path first)."""
    return _save_nifti(path, volume, affine)

SIDE = 16
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_encoder(seed: int = 0) -> DCGANEncoder:
    torch.manual_seed(seed)
    return DCGANEncoder(1, SIDE, spatial_dims=3, width=2, latent_dim=6)


def volumes(n: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, SIDE, SIDE, SIDE, generator=g)


def features(encoder: nn.Module, x: Tensor) -> np.ndarray:
    encoder.eval()
    with torch.no_grad():
        return encoder(x).z.double().numpy()


def mni_affine() -> np.ndarray:
    affine = np.diag([10.0, 10.0, 10.0, 1.0])
    affine[:3, 3] = [-80.0, -110.0, -70.0]
    return affine


class Quadratic(nn.Module):
    """f(x) = ½‖x‖² per volume, so ∇f(x) = x."""

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * x.pow(2).flatten(1).sum(1)


# --------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------


def test_probe_logit_equals_decision_function() -> None:
    encoder = tiny_encoder()
    x = volumes(24)
    z = features(encoder, x)
    y = (z[:, 0] > np.median(z[:, 0])).astype(int)
    y[:2] = [0, 1]
    probe = fit_probe((z[:16], y[:16]), (z[16:], y[16:]))
    head = ProbeLogit(encoder, probe.model).eval()
    with torch.no_grad():
        logits = head(x)
    assert logits.shape == (24,)
    expected = probe.model.decision_function(z)
    np.testing.assert_allclose(logits.double().numpy(), expected, rtol=1e-4, atol=1e-5)

    scaler, logreg = probe.model[0], probe.model[-1]
    explicit = ProbeLogit(
        encoder,
        coef=logreg.coef_[0],
        intercept=logreg.intercept_[0],
        mean=scaler.mean_,
        scale=scaler.scale_,
    ).eval()
    with torch.no_grad():
        torch.testing.assert_close(explicit(x), logits)
        torch.testing.assert_close(ProbeLogit(encoder, probe).eval()(x), logits)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_heads_follow_their_encoder_to_the_gpu() -> None:
    """Heads built around a CPU encoder that is moved to the GPU afterwards (as the brain
    analyses do) evaluate there: their buffers follow the latent's device."""
    encoder = tiny_encoder()
    x = volumes(8)
    z = features(encoder, x)
    y = (z[:, 0] > np.median(z[:, 0])).astype(int)
    probe = fit_probe((z, y), (z, y))
    head = ProbeLogit(encoder, probe.model).eval()
    readout = LinearReadout(encoder, z.mean(0), z.std(0) + 1e-3, np.ones((z.shape[1], 2)))
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # TF32 convolutions differ from the CPU by ~1e-3
    try:
        with torch.no_grad():
            expected = head(x), readout(x)
            encoder.cuda()
            got = head(x.cuda()), readout(x.cuda())
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    for g, e in zip(got, expected, strict=True):
        assert g.device.type == "cuda"
        torch.testing.assert_close(g.cpu(), e, rtol=1e-3, atol=1e-4)


def test_probe_logit_multiclass_and_errors() -> None:
    encoder = tiny_encoder()
    x = volumes(12)
    z = features(encoder, x)
    y = np.arange(12) % 3
    pipe = Pipeline([("scale", StandardScaler()), ("logreg", LogisticRegression())]).fit(z, y)
    head = ProbeLogit(encoder, pipe).eval()
    with torch.no_grad():
        out = head(x).double().numpy()
    np.testing.assert_allclose(out, pipe.decision_function(z), rtol=1e-4, atol=1e-5)

    with pytest.raises(ValueError, match="either a pipeline"):
        ProbeLogit(encoder, pipe, coef=np.ones(6))
    with pytest.raises(ValueError, match="coef and intercept are required"):
        ProbeLogit(encoder, coef=np.ones(6))
    with pytest.raises(TypeError, match="StandardScaler"):
        ProbeLogit(encoder, Pipeline([("s", MinMaxScaler()), ("l", LogisticRegression())]))
    with pytest.raises(ValueError, match="scale must be positive"):
        ProbeLogit(encoder, coef=np.ones(6), intercept=0.0, scale=np.zeros(6))
    with pytest.raises(ValueError, match="latent has 6"):
        ProbeLogit(encoder, coef=np.ones(5), intercept=0.0)(x)


def test_latent_unit_and_linear_readout() -> None:
    encoder = tiny_encoder().eval()
    x = volumes(4)
    with torch.no_grad():
        z = encoder(x).z
        torch.testing.assert_close(LatentUnit(encoder, 3)(x), z[:, 3])
        torch.testing.assert_close(LatentUnit(encoder, [1, 4])(x), z[:, [1, 4]])
        torch.testing.assert_close(LatentUnit(encoder)(x), z)
        with pytest.raises(IndexError, match="out of range"):
            LatentUnit(encoder, 6)(x)

        rng = np.random.default_rng(0)
        mean, scale = rng.standard_normal(6), rng.uniform(0.5, 2.0, 6)
        weights = rng.standard_normal((6, 2))
        readout = LinearReadout(encoder, mean, scale, weights)(x)
        expected = ((z.double().numpy() - mean) / scale) @ weights
        assert readout.shape == (4, 2)
        np.testing.assert_allclose(readout.double().numpy(), expected, rtol=1e-5, atol=1e-5)
        assert LinearReadout(encoder, mean, scale, weights[:, 0])(x).shape == (4, 1)


# --------------------------------------------------------------------------------------------
# SmoothGrad
# --------------------------------------------------------------------------------------------


def test_plain_gradient_equals_autograd_and_state_is_restored() -> None:
    encoder = tiny_encoder()
    head = LatentUnit(encoder, 2)
    head.train()
    x = volumes(5)
    rng_before = torch.get_rng_state()

    grads = smoothgrad(head, x, noise=0.0, samples=1, absolute=False, batch_size=2)

    assert torch.equal(torch.get_rng_state(), rng_before)
    assert all(m.training for m in head.modules())
    assert grads.shape == x.shape and grads.dtype == x.dtype and grads.device == x.device
    assert not grads.requires_grad

    head.eval()
    xx = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(head(xx).sum(), xx)
    torch.testing.assert_close(grads, expected)
    assert grads.abs().sum() > 0
    # Eval mode makes each map independent of its batch-mates (BatchNorm running stats).
    single = smoothgrad(head.train(), x[3:4], noise=0.0, samples=1, absolute=False)
    torch.testing.assert_close(single[0], grads[3])
    absolute = smoothgrad(head, x, noise=0.0, samples=3, absolute=True)
    torch.testing.assert_close(absolute, expected.abs())


def test_noise_is_relative_to_each_volume_range() -> None:
    # With f = ½‖x‖², the signed SmoothGrad map is x + mean of the noise draws, so its
    # deviation from x has standard deviation noise·range(x)/√samples, per volume.
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 1, SIDE, SIDE, SIDE, generator=g) * torch.tensor([1.0, 10.0, 100.0]).view(
        3, 1, 1, 1, 1
    )
    samples, noise = 4, 0.2
    attr = smoothgrad(Quadratic(), x, samples=samples, noise=noise, absolute=False, batch_size=2)
    ranges = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).numpy()
    spread = (attr - x).flatten(1).std(1).numpy()
    np.testing.assert_allclose(spread, noise * ranges / np.sqrt(samples), rtol=0.1)

    again = smoothgrad(Quadratic(), x, samples=samples, noise=noise, absolute=False, batch_size=2)
    torch.testing.assert_close(again, attr)
    other = smoothgrad(Quadratic(), x, samples=samples, noise=noise, absolute=False, seed=1)
    assert not torch.allclose(other, attr)


def test_smoothgrad_targets_and_validation() -> None:
    encoder = tiny_encoder()
    x = volumes(3)
    whole = smoothgrad(LatentUnit(encoder), x, target=4, samples=2, noise=0.1)
    unit = smoothgrad(LatentUnit(encoder, 4), x, samples=2, noise=0.1)
    torch.testing.assert_close(whole, unit)
    assert bool((unit >= 0).all())

    probe = ProbeLogit(encoder, coef=np.ones(6), intercept=0.5)
    assert smoothgrad(probe, x, samples=2, noise=0.1).shape == x.shape

    with pytest.raises(ValueError, match="samples"):
        smoothgrad(probe, x, samples=0)
    with pytest.raises(ValueError, match="noise"):
        smoothgrad(probe, x, noise=-0.1)
    with pytest.raises(ValueError, match="batch_size"):
        smoothgrad(probe, x, batch_size=0)
    with pytest.raises(ValueError, match="floating-point"):
        smoothgrad(probe, x.long())


# --------------------------------------------------------------------------------------------
# Maps on disk, group maps, localisation
# --------------------------------------------------------------------------------------------


def test_save_nifti_round_trip(tmp_path: Path) -> None:
    import nibabel as nib

    rng = np.random.default_rng(0)
    volume = rng.standard_normal((SIDE, SIDE, SIDE))
    affine = mni_affine()
    for name in ("map.nii.gz", "sub/map.nii"):
        path = save_nifti(volume, affine, tmp_path / name)
        image = nib.load(path)
        assert isinstance(image, nib.Nifti1Image)
        assert image.get_data_dtype() == np.float32
        np.testing.assert_array_equal(image.get_fdata(dtype=np.float32), volume.astype(np.float32))
        assert np.allclose(image.affine, affine)
        assert np.allclose(image.header.get_qform(), affine)
        assert np.allclose(image.header.get_sform(), affine)
        assert int(image.header["qform_code"]) == int(image.header["sform_code"]) == 4
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["map.nii", "map.nii.gz"]
    with pytest.raises(ValueError, match=".nii"):
        save_nifti(volume, affine, tmp_path / "map.png")
    with pytest.raises(ValueError, match="4×4"):
        save_nifti(volume, affine[:3], tmp_path / "bad.nii")


def test_group_maps() -> None:
    maps = np.stack([np.full((2, 2, 2), v) for v in (1.0, 3.0, 10.0, 20.0, 100.0)])
    labels = np.array([1, 1, 0, 0, -1])
    groups = group_maps(maps, labels)
    np.testing.assert_allclose(groups["patients"], 2.0)
    np.testing.assert_allclose(groups["controls"], 15.0)
    np.testing.assert_allclose(groups["difference"], -13.0)
    np.testing.assert_allclose(groups["all"], 134.0 / 5)
    flipped = group_maps(maps, labels, positive=0)
    np.testing.assert_allclose(flipped["patients"], 15.0)
    with pytest.raises(ValueError, match="no patients"):
        group_maps(maps, np.zeros(5, dtype=int))
    with pytest.raises(ValueError, match="no controls"):
        group_maps(maps, np.array([1, 1, 1, -1, -1]))
    with pytest.raises(ValueError, match="labels"):
        group_maps(maps, labels[:4])


def test_localisation_auc() -> None:
    truth = np.zeros((4, 4, 4), dtype=bool)
    truth[1:3, 1:3, 1:3] = True
    assert localisation_auc(truth.astype(float), truth) == pytest.approx(1.0)
    assert localisation_auc(-truth.astype(float), truth) == pytest.approx(0.0)
    assert localisation_auc(np.ones((4, 4, 4)), truth) == pytest.approx(0.5)

    brain = np.zeros_like(truth)
    brain[:, :, :2] = True
    saliency = truth.astype(float)
    saliency[:, :, 2:] = 5.0  # outside the brain mask: must not count
    assert localisation_auc(saliency, truth, brain) == pytest.approx(1.0)
    assert localisation_auc(saliency, truth) < 1.0

    with pytest.raises(ValueError, match="brain mask is empty"):
        localisation_auc(saliency, truth, np.zeros_like(truth))
    with pytest.raises(ValueError, match="no voxel"):
        localisation_auc(saliency, np.zeros_like(truth))
    with pytest.raises(ValueError, match="whole brain"):
        localisation_auc(saliency, truth, truth)
    with pytest.raises(ValueError, match="shapes differ"):
        localisation_auc(saliency[:3], truth)


def test_plot_map_writes_png(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    figures_before = plt.get_fignums()
    rng = np.random.default_rng(0)
    affine = mni_affine()
    stat = save_nifti(rng.standard_normal((SIDE, SIDE, SIDE)), affine, tmp_path / "stat.nii.gz")
    anat = save_nifti(rng.random((SIDE, SIDE, SIDE)), affine, tmp_path / "anat.nii.gz")

    glass = plot_map(stat, tmp_path / "glass.png", title="glass brain")
    overlay = plot_map(
        stat, tmp_path / "out" / "overlay.png", title="overlay", background=anat, display_mode="z"
    )
    for png in (glass, overlay):
        assert png.read_bytes()[:8] == PNG_MAGIC
    assert not list(tmp_path.rglob(".*"))  # no temporary files left behind
    assert plt.get_fignums() == figures_before
    with pytest.raises(ValueError, match="display_mode"):
        plot_map(stat, tmp_path / "x.png", title="x", display_mode="x")


# --------------------------------------------------------------------------------------------
# Latent-unit gradient maps and Integrated Gradients
# --------------------------------------------------------------------------------------------


class _LinearEncoder(nn.Module):
    """z = W · vec(x): every unit's gradient is a row of W (a closed-form oracle)."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self.weight.T


def test_latent_unit_maps_match_the_thresholded_rows_of_a_linear_encoder() -> None:
    from mmssl.evaluation.saliency import latent_unit_maps

    torch.manual_seed(0)
    side, units = 6, 5
    weight = torch.randn(units, side**3, dtype=torch.float64)
    encoder = _LinearEncoder(weight)
    x = torch.randn(3, 1, side, side, side, dtype=torch.float64)
    brain = torch.zeros(side, side, side, dtype=torch.bool)
    brain[1:5, 1:5, 1:5] = True
    chosen = [0, 2, 4]
    maps = latent_unit_maps(encoder, x, units=chosen, percentile=90.0, brain=brain)
    expected = np.zeros(side**3)
    inside = brain.flatten().numpy()
    for d in chosen:
        g = np.maximum(weight[d].numpy(), 0.0)
        q = np.quantile(g[inside], 0.90)
        expected += np.where(g >= q, g, 0.0) / g.max()
    expected = (expected / len(chosen)) * inside
    assert maps.shape == (3, side, side, side)
    for subject in maps:  # a linear encoder has the same gradient for every input
        np.testing.assert_allclose(subject.flatten().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_select_units_takes_the_most_variable() -> None:
    from mmssl.evaluation.saliency import select_units

    z = np.stack([np.zeros(10), np.arange(10.0), 3 * np.arange(10.0), np.ones(10)], axis=1)
    assert select_units(z, 2) == [1, 2]
    assert select_units(z, None) == [0, 1, 2, 3]


def test_integrated_gradients_are_complete_and_exact_for_a_linear_probe() -> None:
    from mmssl.evaluation.saliency import integrated_gradients

    torch.manual_seed(1)
    encoder = DCGANEncoder(in_channels=1, input_size=16, spatial_dims=3, width=4,
                           latent_dim=6).double()
    head = LatentUnit(encoder, 2)
    x = torch.randn(2, 1, 16, 16, 16, dtype=torch.float64)
    baseline = torch.randn(1, 16, 16, 16, dtype=torch.float64) * 0.1
    attributions = integrated_gradients(head, x, baseline=baseline, steps=256)
    with torch.no_grad():
        encoder.eval()
        gap = head(x) - head(baseline.unsqueeze(0).expand_as(x))
    # completeness: the attributions add up to f(x) − f(baseline)
    np.testing.assert_allclose(attributions.flatten(1).sum(1).numpy(), gap.numpy(),
                               rtol=0.02, atol=2e-3)
    linear = _LinearEncoder(torch.randn(1, 8 * 8 * 8))
    x = torch.randn(2, 1, 8, 8, 8)
    exact = integrated_gradients(LatentUnit(linear, 0), x, steps=4)
    np.testing.assert_allclose(exact.flatten(1).numpy(),
                               (x.flatten(1) * linear.weight[0]).detach().numpy(), rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Expected gradients
# --------------------------------------------------------------------------------------------


def test_expected_gradients_are_exact_for_a_linear_function_and_one_reference() -> None:
    """With one reference b, (x − b) ⊙ ∇f is the same at every path point of a linear f."""
    linear = _LinearEncoder(torch.randn(1, 4 * 4 * 4, generator=torch.Generator().manual_seed(3)))
    x = torch.randn(3, 1, 4, 4, 4)
    reference = torch.randn(1, 1, 4, 4, 4)
    attributions = expected_gradients(LatentUnit(linear, 0), x, baselines=reference, samples=5,
                                      samples_batch_size=2)
    exact = ((x - reference).flatten(1) * linear.weight[0]).detach()
    np.testing.assert_allclose(attributions.flatten(1).numpy(), exact.numpy(), rtol=1e-5,
                               atol=1e-6)


def test_expected_gradients_match_the_closed_form_of_a_quadratic() -> None:
    """f = ½‖x‖²: E over references b and α ~ U(0, 1) of (x − b)(b + α(x − b)) is ½(x² − E b²).

    The tolerance is five standard errors of the Monte-Carlo mean, from the exact variance of one
    draw; Integrated Gradients from zero (½x²) lies far outside it, so the test can fail.
    """
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(2, 1, 2, 2, 1, generator=generator, dtype=torch.float64)
    references = torch.randn(5, 1, 2, 2, 1, generator=generator, dtype=torch.float64) + 1.0
    samples = 20_000
    attributions = expected_gradients(Quadratic(), x, baselines=references, samples=samples,
                                      samples_batch_size=5_000, seed=7)
    expected = 0.5 * (x.pow(2) - references.pow(2).mean(0, keepdim=True))
    # one draw V = d (b + α d), d = x − b: E_α V² = d² (b² + b d + d²/3), averaged over b
    d = x.unsqueeze(1) - references.unsqueeze(0)
    b = references.unsqueeze(0)
    second_moment = (d.pow(2) * (b.pow(2) + b * d + d.pow(2) / 3)).mean(1)
    standard_error = ((second_moment - expected.pow(2)).clamp_min(0) / samples).sqrt()
    error = (attributions - expected).abs()
    assert (error <= 5 * standard_error + 1e-12).all(), (error / standard_error).max()
    assert ((0.5 * x.pow(2) - expected).abs() > 10 * 5 * standard_error).any()


def test_expected_gradients_are_seeded_and_leave_the_global_generators_alone() -> None:
    encoder = tiny_encoder()
    head = LatentUnit(encoder, 1)
    x, references = volumes(2, seed=1), volumes(6, seed=2)
    numpy_state, torch_state = np.random.get_state(), torch.random.get_rng_state()
    encoder.train()
    first = expected_gradients(head, x, baselines=references, samples=4, seed=3)
    assert encoder.training  # eval mode during the attribution, restored afterwards
    again = expected_gradients(head, x, baselines=references, samples=4, seed=3)
    other = expected_gradients(head, x, baselines=references, samples=4, seed=4)
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, other)
    assert np.array_equal(np.random.get_state()[1], numpy_state[1])
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    # BatchNorm uses its running statistics: the same maps as from a model put in eval mode
    torch.testing.assert_close(
        expected_gradients(head.eval(), x, baselines=references, samples=4, seed=3), first)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"baselines": torch.zeros(2, 1, 8, 8, 8)}, "do not fit"),
    ({"baselines": torch.zeros(0, 1, SIDE, SIDE, SIDE)}, "no reference"),
    ({"samples": 0}, "samples must be"),
    ({"batch_size": 0}, "batch_size"),
    ({"samples_batch_size": 0}, "samples_batch_size"),
])
def test_expected_gradients_reject_bad_arguments(kwargs: dict, message: str) -> None:
    arguments: dict = {"baselines": volumes(2), **kwargs}
    with pytest.raises(ValueError, match=message):
        expected_gradients(LatentUnit(tiny_encoder(), 0), volumes(1), **arguments)


def test_cached_maps_of_seeded_methods_are_keyed_by_their_chunking() -> None:
    """SmoothGrad and expected gradients seed their draws per chunk of volumes: maps made with
    another batch size are other draws and must not be reused; deterministic maps may be."""
    from mmssl.runs.brainrun import MapSettings

    one, two = MapSettings(batch_size=1), MapSettings(batch_size=2)
    for method in ("smoothgrad", "eg"):
        assert one.key(method) != two.key(method)
    for method in ("latent", "ig"):
        assert one.key(method) == two.key(method)
    assert MapSettings(eg_samples=8).key("eg") != MapSettings(eg_samples=16).key("eg")


def test_group_t_of_integrated_gradients_is_the_inputs_t_when_the_gradient_is_constant() -> None:
    """IG of a linear model from the mean volume gives (x − x̄)·g: at each voxel its group t is
    the inputs' t times sign(g), so its localisation is the inputs' exactly (BRAIN.md, "What sets
    a learned map's score"); a gradient that varies between subjects breaks the equality."""
    side, n = 4, 24
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, side, side, side, generator=generator, dtype=torch.float64)
    groups = np.repeat([0, 1], n // 2)
    x[groups == 1, 0, :2] += 0.8  # a group difference in half of the volume
    age = pd.DataFrame({"age": np.random.default_rng(1).normal(70, 5, n)})
    linear = nn.Sequential(nn.Flatten(), nn.Linear(side**3, 3)).double()
    head = ProbeLogit(linear, coef=[1.0, -2.0, 0.5], intercept=0.3)
    head.double()
    gradient = (torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
                @ linear[1].weight.detach()).reshape(side, side, side).numpy()
    attributions = integrated_gradients(head, x, baseline=x.mean(0), steps=3)[:, 0]

    def t_map(maps: np.ndarray) -> np.ndarray:
        return voxelwise_group_test(maps, groups, age, n_permutations=0).t_volume

    t_inputs = t_map(x[:, 0].numpy())
    np.testing.assert_allclose(t_map(attributions.detach().numpy()),
                               np.sign(gradient) * t_inputs, rtol=1e-6, atol=1e-9)
    varying = attributions.detach().numpy() * np.random.default_rng(2).uniform(0.2, 1.8, n)[
        :, None, None, None]  # one gradient scale per subject
    assert not np.allclose(np.abs(t_map(varying)), np.abs(t_inputs), rtol=1e-3)
