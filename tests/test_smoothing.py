"""Smoothing inside the brain (mmssl.evaluation.smoothing) against brute-force oracles."""

from __future__ import annotations

import numpy as np
import pytest

from mmssl.evaluation.smoothing import FWHM_PER_SIGMA, fwhm_to_sigma_voxels, smooth_within_mask


def _ball(shape: tuple[int, int, int], radius: float) -> np.ndarray:
    centre = (np.array(shape) - 1) / 2
    grid = np.indices(shape).transpose(1, 2, 3, 0)
    return np.linalg.norm(grid - centre, axis=-1) <= radius


def _brute_force(volume: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """Kernel-weighted mean of the mask's voxels around each mask voxel, with the separable
    Gaussian truncated where scipy truncates it (radius int(4 σ + 0.5) per axis)."""
    radius = int(4.0 * sigma + 0.5)
    out = np.zeros_like(volume, dtype=np.float64)
    positions = np.argwhere(mask)
    for v in positions:
        offsets = positions - v
        near = (np.abs(offsets) <= radius).all(axis=1)
        weights = np.exp(-(offsets[near] ** 2).sum(axis=1) / (2 * sigma ** 2))
        values = volume[tuple(positions[near].T)]
        out[tuple(v)] = (weights * values).sum() / weights.sum()
    return out


def test_equals_the_kernel_weighted_mean_over_brain_voxels() -> None:
    rng = np.random.default_rng(0)
    mask = _ball((9, 10, 11), 4.2)
    maps = rng.normal(size=(2, 9, 10, 11)).astype(np.float32)
    smoothed = smooth_within_mask(maps, mask, fwhm_mm=2.0 * FWHM_PER_SIGMA * 1.1,
                                  voxel_size=(2.0, 2.0, 2.0))  # sigma = 1.1 voxels
    for volume, result in zip(maps, smoothed, strict=True):
        np.testing.assert_allclose(result[mask], _brute_force(volume, mask, 1.1)[mask],
                                   rtol=1e-5, atol=1e-6)
        assert (result[~mask] == 0).all()  # nothing outside the brain


def test_a_constant_stays_constant_up_to_the_edge_and_outside_values_do_not_leak() -> None:
    mask = _ball((12, 12, 12), 5.0)
    maps = np.where(mask, 3.0, 1000.0)[None].astype(np.float32)  # huge values outside
    smoothed = smooth_within_mask(maps, mask, 10.0, (2.0, 2.0, 2.0))
    np.testing.assert_allclose(smoothed[0][mask], 3.0, rtol=1e-6)


def test_the_width_of_a_smoothed_point_is_the_fwhm() -> None:
    shape = (1, 81, 1)
    mask = np.ones(shape[:0] + (1, 81, 1), dtype=bool)
    point = np.zeros((1, 1, 81, 1), dtype=np.float32)
    point[0, 0, 40, 0] = 1.0
    profile = smooth_within_mask(point, mask, fwhm_mm=12.0, voxel_size=(1.0, 1.0, 1.0))[0, 0, :, 0]
    above = np.flatnonzero(profile >= profile.max() / 2)
    # the half-maximum crossings, interpolated linearly on each side
    left, right = above[0], above[-1]
    half = profile.max() / 2
    x_left = left - (profile[left] - half) / (profile[left] - profile[left - 1])
    x_right = right + (profile[right] - half) / (profile[right] - profile[right + 1])
    assert x_right - x_left == pytest.approx(12.0, rel=0.02)
    assert profile.sum() == pytest.approx(1.0, rel=1e-4)  # far from the edge: mass preserved


def test_anisotropic_voxels_give_per_axis_sigmas_and_zero_is_identity() -> None:
    assert fwhm_to_sigma_voxels(FWHM_PER_SIGMA * 6.0, (2.0, 3.0, 6.0)) == pytest.approx(
        (3.0, 2.0, 1.0))
    mask = _ball((7, 7, 7), 3.0)
    maps = np.random.default_rng(1).normal(size=(3, 7, 7, 7)).astype(np.float32)
    np.testing.assert_array_equal(smooth_within_mask(maps, mask, 0.0, (3, 3, 3)), maps * mask)


@pytest.mark.parametrize(("maps", "mask", "fwhm", "voxel", "message"), [
    (np.zeros((2, 4, 4, 4)), np.ones((4, 4, 5), bool), 4.0, (2, 2, 2), "do not match"),
    (np.zeros((2, 4, 4, 4)), np.zeros((4, 4, 4), bool), 4.0, (2, 2, 2), "mask is empty"),
    (np.zeros((2, 4, 4, 4)), np.ones((4, 4, 4), bool), -1.0, (2, 2, 2), "non-negative"),
    (np.zeros((2, 4, 4, 4)), np.ones((4, 4, 4), bool), 4.0, (2, 0, 2), "positive mm"),
    (np.zeros((2, 4, 4, 4)), np.ones((4, 4, 4), bool), 4.0, (2, 2), "voxel sizes for a 3-D"),
])
def test_bad_arguments_are_named(maps, mask, fwhm, voxel, message) -> None:
    with pytest.raises(ValueError, match=message):
        smooth_within_mask(maps, mask, fwhm, voxel)
