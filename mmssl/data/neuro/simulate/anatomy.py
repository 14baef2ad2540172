"""The template anatomy on the simulation grid and the atlas region weights."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from mmssl.data.neuro.atlas import load_atlas
from mmssl.data.neuro.simulate.settings import (
    ATLAS_NAME,
    EFFECT_MASK_THRESHOLD,
    FWHM_TO_SIGMA,
    PLANTED_REGIONS,
    REGION_FWHM_MM,
)


@dataclass(frozen=True, eq=False)
class Anatomy:
    """The template anatomy on one grid (all arrays read-only, float64 unless noted).

    Attributes:
        affine: 4x4 voxel-to-MNI-mm affine.
        gm: grey-matter fraction :math:`G` of the template.
        wm: white-matter fraction :math:`W`.
        csf: CSF fraction :math:`C = 1 - G - W` inside the brain.
        brain: boolean brain mask.
        topography: the fixed fALFF topography :math:`h \\in [0, 1]`.
        coords_mm: MNI coordinates of every voxel, shape ``grid + (3,)``.
    """

    affine: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    topography: np.ndarray
    coords_mm: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """The grid shape."""
        s = self.gm.shape
        return (int(s[0]), int(s[1]), int(s[2]))

    @property
    def voxel_size(self) -> float:
        """The isotropic voxel size in mm."""
        return float(self.affine[0, 0])


#: Centres (mm) and FWHM of the Gaussian blobs of the fixed fALFF topography ``h``.
TOPOGRAPHY_BLOBS: tuple[tuple[tuple[float, float, float], float], ...] = (
    ((0.0, -55.0, 28.0), 30.0),   # posterior cingulate / precuneus
    ((0.0, 50.0, 0.0), 30.0),     # medial prefrontal
    ((0.0, -85.0, 5.0), 30.0),    # visual cortex
    ((-45.0, -65.0, 30.0), 25.0),  # left inferior parietal
    ((45.0, -65.0, 30.0), 25.0),   # right inferior parietal
)


def template_grid(voxel_size: float = 3.0) -> tuple[tuple[int, int, int], np.ndarray]:
    """The MNI grid that nilearn gives when its 2 mm MNI152 template is resampled to a voxel size.

    The origin (the corner voxel) stays at the template's ``(-98, -134, -72)`` mm and the grid
    covers the template's bounding box: 67 x 79 x 64 voxels at 3 mm, 34 x 40 x 33 at 6 mm.

    Args:
        voxel_size: isotropic voxel size in mm.

    Returns:
        ``(shape, affine)`` with a diagonal 4x4 affine.
    """
    from nilearn import datasets

    template = datasets.load_mni152_template(resolution=2)
    src = np.asarray(template.affine, dtype=np.float64)
    corners = np.array(list(np.ndindex(2, 2, 2)), dtype=np.float64)
    corners *= np.asarray(template.shape[:3], dtype=np.float64) - 1.0
    mm = corners @ src[:3, :3].T + src[:3, 3]
    low, high = mm.min(axis=0), mm.max(axis=0)
    shape = tuple(int(n) for n in np.ceil((high - low) / voxel_size - 1e-9).astype(int) + 1)
    affine = np.diag([voxel_size, voxel_size, voxel_size, 1.0])
    affine[:3, 3] = low
    return (shape[0], shape[1], shape[2]), affine


def readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


@functools.lru_cache(maxsize=4)
def load_anatomy(voxel_size: float = 3.0) -> Anatomy:
    """Template tissue fractions, brain mask and fALFF topography on the MNI grid of a voxel size.

    The 2 mm nilearn templates are smoothed to the target resolution (FWHM
    ``sqrt(voxel_size**2 - 4)`` mm, against aliasing) and linearly resampled; the brain mask is
    the resampled mask thresholded at 1/2. Cached per voxel size.

    Args:
        voxel_size: isotropic voxel size in mm (at least 2).

    Returns:
        The :class:`Anatomy`.
    """
    from nilearn import datasets, image

    shape, affine = template_grid(voxel_size)
    fwhm = float(np.sqrt(max(voxel_size**2 - 4.0, 0.0)))

    def resample(img: Any) -> np.ndarray:
        if fwhm > 0:
            img = image.smooth_img(img, fwhm)
        out = image.resample_img(
            img, target_affine=affine, target_shape=shape, interpolation="continuous",
            force_resample=True, copy_header=True,
        )
        return np.asarray(out.get_fdata(), dtype=np.float64)

    brain = resample(datasets.load_mni152_brain_mask(resolution=2)) >= 0.5
    gm = np.clip(resample(datasets.load_mni152_gm_template(resolution=2)), 0.0, 1.0)
    wm = np.clip(resample(datasets.load_mni152_wm_template(resolution=2)), 0.0, 1.0)
    total = gm + wm
    over = total > 1.0
    gm[over] /= total[over]
    wm[over] /= total[over]
    gm[~brain] = 0.0
    wm[~brain] = 0.0
    csf = np.where(brain, np.clip(1.0 - gm - wm, 0.0, 1.0), 0.0)

    ijk = np.indices(shape, dtype=np.float64)
    coords = np.moveaxis(ijk, 0, -1) @ affine[:3, :3].T + affine[:3, 3]
    topography = np.zeros(shape)
    for centre, blob_fwhm in TOPOGRAPHY_BLOBS:
        d2 = np.sum((coords - np.asarray(centre)) ** 2, axis=-1)
        sigma = blob_fwhm * FWHM_TO_SIGMA
        topography = np.maximum(topography, np.exp(-d2 / (2.0 * sigma**2)))
    return Anatomy(
        affine=readonly(affine), gm=readonly(gm), wm=readonly(wm), csf=readonly(csf),
        brain=readonly(brain), topography=readonly(topography), coords_mm=readonly(coords),
    )


@dataclass(frozen=True, eq=False)
class RegionWeights:
    """Smooth weights of a set of atlas regions on a simulation grid.

    Attributes:
        weights: float64 array in ``[0, 1]`` (:math:`w_R` of the module docstring), 0 off-brain.
        names: the atlas names of the regions, in label order.
        atlas: the atlas' name.
    """

    weights: np.ndarray
    names: tuple[str, ...]
    atlas: str

    @property
    def mask(self) -> np.ndarray:
        """Where the weight is at least :data:`EFFECT_MASK_THRESHOLD`."""
        return self.weights >= EFFECT_MASK_THRESHOLD


@functools.lru_cache(maxsize=32)
def region_weights(patterns: tuple[str, ...], voxel_size: float = 3.0,
                   atlas_name: str = ATLAS_NAME) -> RegionWeights:
    """The smooth region weight :math:`w_R` of the atlas regions matching ``patterns``.

    Each matching structure's indicator is smoothed at the atlas resolution with a Gaussian of
    FWHM ``max(REGION_FWHM_MM, voxel_size)``, sampled on the grid of :func:`load_anatomy`
    (linear interpolation), divided by its maximum, and the structures are combined by maximum;
    the result is 0 outside the brain mask. Cached.

    Args:
        patterns: region names or fragments (:meth:`mmssl.data.neuro.atlas.Atlas.matching_labels`).
        voxel_size: the simulation grid's voxel size.
        atlas_name: the atlas.

    Returns:
        The :class:`RegionWeights`.

    Raises:
        ValueError: a pattern matches no region, or a region has no voxel in the brain.
    """

    atlas = load_atlas(atlas_name)
    anatomy = load_anatomy(float(voxel_size))
    labels = atlas.matching_labels(patterns)
    atlas_voxel = float(abs(np.linalg.det(atlas.affine[:3, :3])) ** (1.0 / 3.0))
    sigma = max(REGION_FWHM_MM, float(voxel_size)) * FWHM_TO_SIGMA / atlas_voxel
    pad = int(np.ceil(4.0 * sigma)) + 1
    world = np.concatenate([anatomy.coords_mm.reshape(-1, 3),
                            np.ones((int(np.prod(anatomy.shape)), 1))], axis=1)
    in_atlas = (np.linalg.inv(atlas.affine) @ world.T)[:3]
    total = np.zeros(anatomy.shape)
    for label, name in labels.items():
        inside = np.argwhere(atlas.labels == label)
        if inside.size == 0:
            raise ValueError(f"atlas region {name} has no voxel")
        lo = np.maximum(inside.min(axis=0) - pad, 0)
        hi = np.minimum(inside.max(axis=0) + pad + 1, atlas.labels.shape)
        crop = atlas.labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] == label
        smooth = ndimage.gaussian_filter(crop.astype(np.float64), sigma, mode="constant")
        sampled = ndimage.map_coordinates(smooth, in_atlas - lo[:, None], order=1,
                                          mode="constant", cval=0.0).reshape(anatomy.shape)
        sampled = np.where(anatomy.brain, sampled, 0.0)
        peak = float(sampled.max())
        if peak <= 0:
            raise ValueError(f"atlas region {name} does not reach the brain mask on the "
                             f"{voxel_size:g} mm grid")
        total = np.maximum(total, sampled / peak)
    return RegionWeights(weights=readonly(np.clip(total, 0.0, 1.0)),
                         names=tuple(labels.values()), atlas=atlas_name)


def planted_region_weights(voxel_size: float) -> dict[tuple[str, str], RegionWeights]:
    """:func:`region_weights` of every entry of :data:`PLANTED_REGIONS` on a grid."""
    return {key: region_weights(patterns, float(voxel_size))
            for key, patterns in PLANTED_REGIONS.items()}


# ----------------------------------------------------------------------------- draws


