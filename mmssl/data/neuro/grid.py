"""Voxel grids in MNI space, and the MNI152 brain mask on such a grid.

Every volume of a neuroimaging cohort is resampled onto one fixed :class:`TargetGrid`, an
affine (voxel index -> world millimetres) plus a shape, so that the networks see arrays of one
shape whose voxels mean the same place in every subject.

:func:`mni_grid` builds the default grids: isotropic, axes along +x (right), +y (anterior) and
+z (superior), i.e. RAS with a positive diagonal, and centred on the centre of the bounding box
of nilearn's bundled MNI152 brain mask (``load_mni152_brain_mask(resolution=2)``, threshold
0.2). That box spans x -72..72, y -106..72 and z -72..82 mm (voxel centres; it includes the
cerebellum and brain stem), i.e. 144 x 178 x 154 mm, centred on (0, -17, +5) mm. The default
64³ grid at 3 mm is a 192 mm cube around that centre (voxel centres from x -94.5..94.5,
y -111.5..77.5, z -89.5..99.5 mm), which holds the whole brain with 22.5 mm to spare on either
side in x, 5.5 mm in y and 17.5 mm in z.

:func:`mni_brain_mask` resamples the bundled mask onto any grid (nearest neighbour).
Both need ``nilearn``, which is imported on first use.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "MNI_BRAIN_BBOX_CENTRE",
    "TargetGrid",
    "mni_brain_bbox_centre",
    "mni_brain_mask",
    "mni_grid",
    "require_nilearn",
    "resample_kwargs",
    "world_bounds",
]

#: The centre of the MNI152 brain mask's bounding box in mm, as computed by
#: :func:`mni_brain_bbox_centre` with nilearn 0.14 (documentation only; the code computes it).
MNI_BRAIN_BBOX_CENTRE: tuple[float, float, float] = (0.0, -17.0, 5.0)

#: Affines of two grids are treated as equal when no entry differs by more than this.
_AFFINE_DECIMALS = 6


def require_nilearn() -> Any:
    """Import and return ``nilearn``, with an installation hint when it is missing."""
    try:
        import nilearn
        import nilearn.datasets
        import nilearn.image
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "neuroimaging support needs nibabel and nilearn: pip install 'nibabel>=5' "
            "'nilearn>=0.10'"
        ) from err
    return nilearn


@functools.cache
def resample_kwargs() -> dict[str, bool]:
    """Extra keyword arguments for ``nilearn.image.resample_img`` on the installed nilearn.

    nilearn 0.11-0.12 warn (``FutureWarning``) unless ``force_resample`` and ``copy_header`` are
    given; older versions do not know them. Returns ``{"force_resample": True,
    "copy_header": True}`` restricted to the parameters the installed version accepts.
    """
    nilearn = require_nilearn()
    params = inspect.signature(nilearn.image.resample_img).parameters
    return {k: True for k in ("force_resample", "copy_header") if k in params}


@dataclass(frozen=True, eq=False)
class TargetGrid:
    """A voxel grid: a 4×4 affine (voxel index -> world mm) and a 3-D shape.

    The affine is stored as a read-only ``float64`` copy. Two grids are equal (and hash alike)
    when their shapes are equal and their affines agree to 6 decimals.
    """

    affine: np.ndarray
    shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        """Validate and freeze the affine and the shape."""
        affine = np.array(self.affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise ValueError(f"a grid affine must be a finite 4x4 matrix, got {self.affine!r}")
        if not np.allclose(affine[3], [0.0, 0.0, 0.0, 1.0]):
            raise ValueError(f"the last row of a grid affine must be (0, 0, 0, 1), got "
                             f"{affine[3].tolist()}")
        if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise ValueError(f"a grid affine must be invertible, got {affine.tolist()}")
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"a grid shape must be three positive integers, got {self.shape!r}")
        affine.setflags(write=False)
        object.__setattr__(self, "affine", affine)
        object.__setattr__(self, "shape", shape)

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        """Voxel edge lengths in mm along the three array axes (norms of the affine's columns)."""
        sizes = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(sizes[0]), float(sizes[1]), float(sizes[2]))

    def key(self) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """A hashable identity: the shape and the affine rounded to 6 decimals."""
        rounded = np.round(self.affine, _AFFINE_DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0
        return self.shape, tuple(float(v) for v in rounded.ravel())

    def __eq__(self, other: object) -> bool:
        """Same shape and affines equal to 6 decimals."""
        if not isinstance(other, TargetGrid):
            return NotImplemented
        return self.key() == other.key()

    def __hash__(self) -> int:
        """Hash of :meth:`key`."""
        return hash(self.key())

    def world_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The world bounding box ``(low, high)`` in mm of the grid's voxels, edges included."""
        return world_bounds(self.affine, self.shape)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form: ``{"affine": 4x4 nested list, "shape": [i, j, k]}``."""
        return {"affine": self.affine.tolist(), "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TargetGrid:
        """The inverse of :meth:`to_dict`.

        Raises:
            ValueError: ``data`` lacks ``affine`` or ``shape`` or holds invalid values.
        """
        missing = [k for k in ("affine", "shape") if k not in data]
        if missing:
            raise ValueError(f"a grid dict needs 'affine' and 'shape'; missing "
                             f"{', '.join(missing)} in {dict(data)!r}")
        return cls(affine=np.asarray(data["affine"], dtype=np.float64),
                   shape=tuple(data["shape"]))  # type: ignore[arg-type]


def world_bounds(affine: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """World-space axis-aligned bounding box of a voxel grid, voxel edges included."""
    corners = np.array([[i, j, k] for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5)
                        for k in (-0.5, shape[2] - 0.5)])
    world = corners @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
    return world.min(axis=0), world.max(axis=0)


@functools.cache
def mni_brain_bbox_centre() -> tuple[float, float, float]:
    """Centre (mm) of the bounding box of nilearn's MNI152 brain mask at 2 mm.

    The box runs over the centres of the mask's voxels; with nilearn 0.14 this is
    x -72..72, y -106..72, z -72..82, centre (0, -17, 5) (:data:`MNI_BRAIN_BBOX_CENTRE`).
    Computed once per process.
    """
    nilearn = require_nilearn()
    mask = nilearn.datasets.load_mni152_brain_mask(resolution=2)
    inside = np.argwhere(np.asanyarray(mask.dataobj) > 0)
    lo, hi = inside.min(axis=0), inside.max(axis=0)
    affine = np.asarray(mask.affine, dtype=np.float64)
    centre = affine[:3, :3] @ ((lo + hi) / 2.0) + affine[:3, 3]
    return (float(centre[0]), float(centre[1]), float(centre[2]))


def mni_grid(voxel_size: float = 3.0, shape: Sequence[int] = (64, 64, 64)) -> TargetGrid:
    """An isotropic RAS grid centred on the MNI152 brain (see the module docstring).

    The affine is ``diag(v, v, v, 1)`` with the translation chosen so that the grid's centre,
    voxel index ``(shape - 1) / 2``, lies at :func:`mni_brain_bbox_centre`, about
    (0, -17, 5) mm. The default 64³ × 3 mm cube (192 mm) contains the whole brain (144 × 178 ×
    154 mm); smaller grids crop it symmetrically about that centre.

    Args:
        voxel_size: the edge length of a voxel in mm, positive.
        shape: three positive integers.

    Returns:
        The grid.
    """
    v = float(voxel_size)
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"voxel_size must be a positive number of mm, got {voxel_size!r}")
    dims = tuple(int(s) for s in shape)
    if len(dims) != 3 or min(dims) < 1:
        raise ValueError(f"shape must be three positive integers, got {tuple(shape)!r}")
    centre = np.asarray(mni_brain_bbox_centre())
    affine = np.diag([v, v, v, 1.0])
    affine[:3, 3] = centre - v * (np.asarray(dims, dtype=np.float64) - 1.0) / 2.0
    return TargetGrid(affine=affine, shape=(dims[0], dims[1], dims[2]))


def mni_brain_mask(grid: TargetGrid) -> np.ndarray:
    """nilearn's bundled MNI152 brain mask resampled onto ``grid`` (nearest neighbour).

    The 1 mm mask is used when the grid's smallest voxel edge is below 1.5 mm, else the 2 mm
    one. The result is cached per grid in this process and returned read-only: copy it before
    modifying it.

    Args:
        grid: the target grid (assumed to be in MNI space).

    Returns:
        ``bool`` array of shape ``grid.shape``, ``True`` inside the brain.
    """
    return _mni_brain_mask(grid.key())


@functools.lru_cache(maxsize=16)
def _mni_brain_mask(key: tuple[tuple[int, ...], tuple[float, ...]]) -> np.ndarray:
    """Mask computation behind :func:`mni_brain_mask`, cached on the grid's key."""
    nilearn = require_nilearn()
    shape, flat = key
    affine = np.asarray(flat, dtype=np.float64).reshape(4, 4)
    resolution = 1 if min(np.linalg.norm(affine[:3, :3], axis=0)) < 1.5 else 2
    mask = nilearn.datasets.load_mni152_brain_mask(resolution=resolution)
    resampled = nilearn.image.resample_img(mask, target_affine=affine, target_shape=shape,
                                           interpolation="nearest", **resample_kwargs())
    out = np.asanyarray(resampled.dataobj) > 0
    out.setflags(write=False)
    return out
