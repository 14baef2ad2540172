"""Image preparation, rotation and the random views of Two-View MNIST."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

from mmssl.data.views import (
    TWO_VIEW_MODALITIES,
    derive_seed,
    make_views,
    prepare_images,
    rotate,
    sample_angles,
)


def _gen(seed: int) -> torch.Generator:
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def _bar_images(n: int) -> Tensor:
    """``n`` copies of a 2-pixel-thick horizontal bar through the centre of a 32x32 image."""
    images = torch.zeros(n, 1, 32, 32)
    images[:, :, 15:17, 4:28] = 1.0
    return images


def _orientation_deg(images: Tensor) -> Tensor:
    """Principal-axis angle (degrees, counter-clockwise, y up) of each image's mass."""
    h, w = images.shape[-2:]
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                                torch.arange(w, dtype=torch.float64), indexing="ij")
    x, y = cols, -rows  # y up, so counter-clockwise is positive
    m = images[:, 0].to(torch.float64)
    mass = m.sum(dim=(-2, -1))
    mx, my = (m * x).sum(dim=(-2, -1)) / mass, (m * y).sum(dim=(-2, -1)) / mass
    dx, dy = x - mx[:, None, None], y - my[:, None, None]
    mu20 = (m * dx * dx).sum(dim=(-2, -1))
    mu02 = (m * dy * dy).sum(dim=(-2, -1))
    mu11 = (m * dx * dy).sum(dim=(-2, -1))
    return torch.rad2deg(0.5 * torch.atan2(2 * mu11, mu20 - mu02))


# ------------------------------------------------------------------------ prepare_images


def test_prepare_images_shape_scale_and_guard() -> None:
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    images[0, :, :14], images[0, :, 14:] = 10, 20  # narrow range: stretched to [0, 1]
    images[1] = 7  # constant: must not divide by zero
    images[2] = np.arange(28 * 28).reshape(28, 28) % 129  # max 128, scaled per image
    out = prepare_images(images)
    assert out.shape == (3, 1, 32, 32) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out[0].min() == 0.0 and out[0].max() == 1.0
    assert (out[0, 0, :, :8] == 0).all() and (out[0, 0, :, -8:] == 1).all()  # left dark
    assert (out[1] == 0).all()
    assert out[2].max() > 0.95
    assert torch.equal(prepare_images(torch.from_numpy(images)), out)


def test_prepare_images_matches_bilinear_resize_of_scaled() -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    x = torch.from_numpy(images).float().unsqueeze(1)
    low = x.amin(dim=(-2, -1), keepdim=True)
    high = x.amax(dim=(-2, -1), keepdim=True)
    expected = torch.nn.functional.interpolate(
        (x - low) / (high - low), size=(32, 32), mode="bilinear", align_corners=False
    ).clamp(0, 1)
    torch.testing.assert_close(prepare_images(images), expected)


# ------------------------------------------------------------------------------- rotate


@pytest.mark.parametrize("size", [32, 7])
def test_rotate_right_angles_match_rot90(size: int) -> None:
    images = torch.rand(4, 2, size, size)
    angles = torch.tensor([90.0, 0.0, -90.0, 180.0])
    out = rotate(images, angles)
    assert torch.equal(out[0], torch.rot90(images[0], k=1, dims=(-2, -1)))
    assert torch.equal(out[1], images[1])
    assert torch.equal(out[2], torch.rot90(images[2], k=-1, dims=(-2, -1)))
    assert torch.equal(out[3], torch.rot90(images[3], k=2, dims=(-2, -1)))


def test_rotate_positive_is_counter_clockwise_as_displayed() -> None:
    image = torch.zeros(1, 1, 5, 5)
    image[0, 0, 0, 2] = 1.0  # top centre
    out = rotate(image, torch.tensor([90.0]))
    assert out[0, 0, 2, 0] == 1.0 and out.sum() == 1.0  # moved to the left centre


@pytest.mark.parametrize("angle", [-40.0, -12.5, 7.0, 33.0])
def test_rotate_arbitrary_angle_turns_the_mass(angle: float) -> None:
    out = rotate(_bar_images(1), torch.tensor([angle]))
    assert abs(_orientation_deg(out).item() - angle) < 2.5
    assert set(out.unique().tolist()) <= {0.0, 1.0}  # nearest neighbour: no new values


def test_rotate_zero_pads_outside() -> None:
    images = torch.ones(1, 1, 32, 32)
    out = rotate(images, torch.tensor([45.0]))
    assert out[0, 0, 0, 0] == 0.0 and out[0, 0, 16, 16] == 1.0


def test_rotate_validates_angle_count() -> None:
    with pytest.raises(ValueError, match="angles"):
        rotate(torch.zeros(2, 1, 4, 4), torch.zeros(3))


# --------------------------------------------------------------------------- make_views


def test_views_keys_shapes_and_range() -> None:
    images = prepare_images(np.random.default_rng(0).integers(0, 256, (6, 28, 28), np.uint8))
    views = make_views(images, _gen(0))
    assert tuple(views) == TWO_VIEW_MODALITIES
    for v in views.values():
        assert v.shape == images.shape and v.dtype == images.dtype
        assert v.min() >= 0.0 and v.max() <= 1.0


def test_max_angle_zero_leaves_rotated_unchanged() -> None:
    images = torch.rand(8, 1, 32, 32)
    assert torch.equal(make_views(images, _gen(3), max_angle=0.0)["rotated"], images)
    assert not torch.equal(make_views(images, _gen(3), max_angle=10.0)["rotated"], images)


def test_rotation_angles_are_uniform_within_max_angle() -> None:
    views = make_views(_bar_images(256), _gen(11), max_angle=30.0)
    est = _orientation_deg(views["rotated"])
    assert est.abs().max() < 30.0 + 2.5
    assert est.max() > 25.0 and est.min() < -25.0
    assert abs(est.mean().item()) < 4.0
    assert (est.abs() > 2.5).float().mean() > 0.8  # rarely (almost) unrotated


def test_sample_angles_range() -> None:
    angles = sample_angles(10_000, _gen(0), max_angle=45.0)
    assert angles.min() >= -45.0 and angles.max() < 45.0
    assert angles.min() < -44.0 and angles.max() > 44.0
    assert abs(angles.mean().item()) < 1.0
    assert abs(angles.std().item() - 90.0 / math.sqrt(12)) < 0.5


def test_noisy_view_is_unrotated_image_plus_uniform_noise() -> None:
    images = torch.zeros(16, 1, 32, 32)
    images[:, :, :16] = 1.0  # top half white
    noisy = make_views(images, _gen(5), max_angle=45.0)["noisy"]
    assert (noisy[:, :, :16] == 1.0).all()  # white stays white: no rotation, clamped
    noise = noisy[:, :, 16:]  # image 0 here: the noise itself
    assert noise.min() >= 0.0 and noise.max() < 1.0
    assert abs(noise.mean().item() - 0.5) < 0.02
    assert abs(noise.std().item() - 1 / math.sqrt(12)) < 0.01
    assert not torch.equal(noise[0], noise[1])  # independent per image
    grey = torch.full((4, 1, 32, 32), 0.3)
    out = make_views(grey, _gen(6))["noisy"]
    assert (out >= grey).all() and (out > grey).float().mean() > 0.99
    assert ((out == 1.0).float().mean() - 0.3).abs() < 0.05  # P(0.3 + U >= 1) = 0.3


def test_same_generator_state_same_views() -> None:
    images = torch.rand(5, 1, 32, 32)
    a, b = make_views(images, _gen(42)), make_views(images, _gen(42))
    for m in TWO_VIEW_MODALITIES:
        assert torch.equal(a[m], b[m])
    c = make_views(images, _gen(43))
    assert not torch.equal(a["noisy"], c["noisy"]) and not torch.equal(a["rotated"], c["rotated"])
    gen = _gen(42)
    first, second = make_views(images, gen), make_views(images, gen)
    assert torch.equal(first["noisy"], a["noisy"])
    assert not torch.equal(second["noisy"], first["noisy"])  # the state advances


def test_requested_subset_does_not_change_the_stream() -> None:
    images = torch.rand(5, 1, 32, 32)
    both = make_views(images, _gen(1))
    assert torch.equal(make_views(images, _gen(1), modalities=("noisy",))["noisy"], both["noisy"])
    only = make_views(images, _gen(1), modalities=("rotated",))
    assert tuple(only) == ("rotated",) and torch.equal(only["rotated"], both["rotated"])
    with pytest.raises(ValueError, match="noisy"):
        make_views(images, _gen(1), modalities=("blurred",))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_views_on_cuda() -> None:
    images = torch.rand(64, 1, 32, 32)
    cpu = make_views(images, _gen(9))
    moved = make_views(images.cuda(), _gen(9))  # CPU generator: drawn on CPU, then moved
    assert moved["noisy"].device.type == "cuda"
    torch.testing.assert_close(moved["noisy"].cpu(), cpu["noisy"])
    assert (moved["rotated"].cpu() != cpu["rotated"]).float().mean() < 1e-3
    gen = torch.Generator(device="cuda")
    gen.manual_seed(9)
    on_device = make_views(images.cuda(), gen)
    gen.manual_seed(9)
    assert torch.equal(make_views(images.cuda(), gen)["rotated"], on_device["rotated"])


# -------------------------------------------------------------------------- derive_seed

PINNED_SEED = 361836187691537223


def test_derive_seed_is_stable_and_separates_parts() -> None:
    seeds = {derive_seed(343, "train-views", e, i) for e in range(4) for i in range(50)}
    assert len(seeds) == 200 and all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(1, "val") == derive_seed(1, "val")
    assert derive_seed(1) != derive_seed("1") != derive_seed(-1)
    assert derive_seed(1, 23) != derive_seed(12, 3)
    assert derive_seed("ab", "c") != derive_seed("a", "bc")
    # pinned: a change here silently changes every stored evaluation view
    assert derive_seed(343, "eval-views", "test") == PINNED_SEED

