r"""Gaussian smoothing of subject maps inside the brain, before a voxel-wise group test.

Mass-univariate analyses of brain maps smooth each subject's map first (SPM's VBM: 8 mm FWHM):
the planted, real or learned effects span regions, while noise and misregistration vary from
voxel to voxel, so averaging over a neighbourhood of about the effect's size raises the
group statistic where the effect is (the matched-filter argument) and makes the maps of
different subjects overlap despite small misregistration.

Smoothing stays **inside the mask**: with the Gaussian kernel :math:`K_\sigma` (zero outside
the volume) and the brain mask :math:`B`,

.. math::

    \tilde m(v) = \frac{(K_\sigma * (B\,m))(v)}{(K_\sigma * B)(v)}\quad (v \in B),\qquad
    \tilde m(v) = 0 \quad (v \notin B),
    \qquad \sigma = \frac{\mathrm{FWHM}}{\sqrt{8 \ln 2}\;\text{voxel size}},

a kernel-weighted mean of the brain voxels around :math:`v` (AFNI's "blur in mask"), so the
map does not fade towards the edge of the brain and nothing outside the brain leaks in; a map
constant inside the brain stays constant. The kernel is scipy's separable Gaussian, truncated
at 4 σ.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.ndimage import gaussian_filter

__all__ = ["FWHM_PER_SIGMA", "fwhm_to_sigma_voxels", "smooth_within_mask"]

#: FWHM of a Gaussian in units of its standard deviation, :math:`\sqrt{8 \ln 2}`.
FWHM_PER_SIGMA = float(np.sqrt(8.0 * np.log(2.0)))


def fwhm_to_sigma_voxels(fwhm_mm: float, voxel_size: Sequence[float]) -> tuple[float, ...]:
    """Per-axis standard deviation, in voxels, of a Gaussian of ``fwhm_mm`` FWHM."""
    if not np.isfinite(fwhm_mm) or fwhm_mm < 0:
        raise ValueError(f"smoothing FWHM must be a non-negative number of mm, got {fwhm_mm}")
    sizes = [float(s) for s in voxel_size]
    if not sizes or any(not np.isfinite(s) or s <= 0 for s in sizes):
        raise ValueError(f"voxel sizes must be positive mm, got {list(voxel_size)}")
    return tuple(fwhm_mm / FWHM_PER_SIGMA / s for s in sizes)


def smooth_within_mask(maps: ArrayLike, mask: ArrayLike, fwhm_mm: float,
                       voxel_size: Sequence[float]) -> NDArray[np.float32]:
    """Smooth each of ``maps`` (N, X, Y, Z) with a Gaussian of ``fwhm_mm`` inside ``mask``.

    Args:
        maps: one volume per subject, on the grid of ``mask``.
        mask: (X, Y, Z) brain mask (non-zero = brain).
        fwhm_mm: full width at half maximum in mm; 0 returns the maps (masked) unchanged.
        voxel_size: the grid's voxel edge lengths in mm, per axis.

    Raises:
        ValueError: shapes that differ from the mask, an empty mask, a negative FWHM.
    """
    volumes = np.asarray(maps, dtype=np.float32)
    brain = np.asarray(mask).astype(bool)
    if volumes.ndim != brain.ndim + 1 or volumes.shape[1:] != brain.shape:
        raise ValueError(f"maps of shape {volumes.shape} do not match the mask's grid "
                         f"{brain.shape}; expected (subjects, {', '.join(map(str, brain.shape))})")
    if not brain.any():
        raise ValueError("the mask is empty: nothing to smooth")
    sigma = fwhm_to_sigma_voxels(fwhm_mm, voxel_size)
    if len(sigma) != brain.ndim:
        raise ValueError(f"{len(sigma)} voxel sizes for a {brain.ndim}-D grid")
    if fwhm_mm == 0:
        return (volumes * brain).astype(np.float32)
    weight = gaussian_filter(brain.astype(np.float64), sigma, mode="constant")
    out = np.zeros_like(volumes)
    for index, volume in enumerate(volumes):
        blurred = gaussian_filter(np.where(brain, volume, 0.0).astype(np.float64), sigma,
                                  mode="constant")
        out[index][brain] = (blurred[brain] / weight[brain]).astype(np.float32)
    return out
