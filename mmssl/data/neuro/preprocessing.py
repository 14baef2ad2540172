"""Bringing every volume onto one grid: resample, mask, normalise.

:func:`preprocess_volume` (settings in :class:`Preprocessing`): read the volume as ``float32``
(scale factors applied), resample it with ``nilearn.image.resample_img`` onto the target grid
(:func:`~mmssl.data.neuro.grid.mni_grid`, by default 64³ voxels of 3 mm around the MNI152 brain,
which crops or pads as needed; voxels outside the source's field of view become 0), set every
voxel outside the brain mask to 0 and normalise the voxels inside the mask (z-score: mean 0,
standard deviation 1; or min-max to [0, 1]; or nothing). Volumes are assumed to be registered to
MNI space already; nothing here registers them.

"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mmssl.data.neuro.grid import (
    TargetGrid,
    mni_brain_mask,
    mni_grid,
    require_nilearn,
    resample_kwargs,
)
from mmssl.data.neuro.manifest import one_line
from mmssl.data.neuro.validation import extra_volumes, require_nibabel
from mmssl.settings import SettingError

__all__ = [
    "PREPROCESSING_VERSION", "Preprocessing", "load_mask", "preprocess_volume", "sha256_file",
]

log = logging.getLogger(__name__)

#: Version of the preprocessing code; part of :meth:`Preprocessing.key`, bump it when the
#: output of :func:`preprocess_volume` changes for the same settings.
PREPROCESSING_VERSION = 1
_NORMALIZATIONS = ("zscore", "minmax", "none")
_INTERPOLATIONS = ("continuous", "linear", "nearest")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """The SHA-256 (hex) of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Preprocessing:
    """How volumes are brought onto a common grid.

    Attributes:
        voxel_size: edge of the isotropic target voxels in mm
            (:func:`~mmssl.data.neuro.grid.mni_grid`).
        shape: the target grid's shape.
        mask: ``"mni152"`` (nilearn's MNI152 brain mask on the grid), ``"none"``, or the path of
            a NIfTI mask in MNI space (resampled nearest-neighbour; voxels > 0.5 are inside; a
            relative path is taken relative to the current directory and stored absolute).
        normalization: ``"zscore"`` (mean 0, std 1 over the mask's voxels), ``"minmax"`` (to
            [0, 1] over the mask) or ``"none"``; with no mask, over the whole grid.
        interpolation: ``"continuous"`` (cubic spline), ``"linear"`` or ``"nearest"``, as in
            ``nilearn.image.resample_img``.
    """

    voxel_size: float = 3.0
    shape: tuple[int, int, int] = (64, 64, 64)
    mask: str = "mni152"
    normalization: Literal["zscore", "minmax", "none"] = "zscore"
    interpolation: Literal["continuous", "linear", "nearest"] = "continuous"

    def __post_init__(self) -> None:
        """Validate the settings and normalise their types."""
        v = float(self.voxel_size)
        if not math.isfinite(v) or v <= 0:
            raise SettingError("voxel_size", f"must be a positive number of mm, got "
                                             f"{self.voxel_size!r}")
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != 3 or min(shape) < 1:
            raise SettingError("shape", f"must be three positive integers, got {self.shape!r}")
        if self.normalization not in _NORMALIZATIONS:
            raise SettingError("normalization", f"must be one of {', '.join(_NORMALIZATIONS)}, "
                                                f"got {self.normalization!r}")
        if self.interpolation not in _INTERPOLATIONS:
            raise SettingError("interpolation", f"must be one of {', '.join(_INTERPOLATIONS)}, "
                                                f"got {self.interpolation!r}")
        mask = str(self.mask)
        if mask not in ("mni152", "none"):
            if not mask.strip():
                raise SettingError("mask", "must be 'mni152', 'none' or the path of a NIfTI mask")
            mask = os.path.abspath(Path(mask).expanduser())
        object.__setattr__(self, "voxel_size", v)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "mask", mask)

    def grid(self) -> TargetGrid:
        """The target grid: ``mni_grid(voxel_size, shape)``."""
        return mni_grid(self.voxel_size, self.shape)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-serialisable dict."""
        return {"voxel_size": self.voxel_size, "shape": list(self.shape), "mask": self.mask,
                "normalization": self.normalization, "interpolation": self.interpolation}

    def key(self) -> str:
        """A stable SHA-256 (hex) of everything that determines a preprocessed volume.

        Covers :data:`PREPROCESSING_VERSION`, the settings, the target grid's affine and shape,
        and, for a mask file, the SHA-256 of its bytes instead of its path.

        Raises:
            FileNotFoundError: the mask file does not exist.
        """
        mask = self.mask
        if mask not in ("mni152", "none"):
            mask_path = Path(mask)
            if not mask_path.is_file():
                raise FileNotFoundError(f"mask file {mask_path} does not exist (settings.mask "
                                        f"must be 'mni152', 'none' or a NIfTI mask)")
            mask = "sha256:" + sha256_file(mask_path)
        payload = {"preprocessing_version": PREPROCESSING_VERSION, **self.to_dict(),
                   "mask": mask, "grid": self.grid().to_dict()}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def load_mask(settings: Preprocessing, grid: TargetGrid) -> np.ndarray | None:
    """The brain mask that ``settings`` asks for, on ``grid`` (``None`` for ``"none"``).

    Raises:
        ValueError: a mask file cannot be read, is not 3-D, or has no voxel inside the grid.
    """
    if settings.mask == "none":
        return None
    if settings.mask == "mni152":
        return mni_brain_mask(grid)
    nib, nilearn = require_nibabel(), require_nilearn()
    path = Path(settings.mask)
    try:
        img = nib.load(str(path), mmap=False)
        data = np.asanyarray(img.dataobj)
    except Exception as err:
        raise ValueError(f"mask {path}: cannot read it ({one_line(err)})") from err
    if data.ndim < 3 or extra_volumes(data.shape) != 1:
        raise ValueError(f"mask {path}: shape {data.shape}; expected a 3-D volume")
    img3 = nib.Nifti1Image(data.reshape(data.shape[:3]).astype(np.float32), img.affine)
    resampled = nilearn.image.resample_img(img3, target_affine=grid.affine,
                                           target_shape=grid.shape, interpolation="nearest",
                                           **resample_kwargs())
    mask = np.asanyarray(resampled.dataobj) > 0.5
    if not mask.any():
        raise ValueError(f"mask {path} has no voxel inside the target grid; is it in MNI space?")
    mask.setflags(write=False)
    return mask


def preprocess_volume(path: Path, grid: TargetGrid, mask: np.ndarray | None,
                      settings: Preprocessing) -> np.ndarray:
    """Load a volume, resample it onto ``grid``, mask it and normalise it (module docstring).

    Args:
        path: a NIfTI file with one 3-D volume (4-D with a single volume is accepted).
        grid: the target grid.
        mask: ``bool`` of shape ``grid.shape`` or ``None``; voxels outside it become 0 and the
            normalisation statistics come from the voxels inside it (all voxels when ``None``).
        settings: ``interpolation`` and ``normalization`` are used here.

    Returns:
        ``float32`` array of shape ``grid.shape``. When the masked voxels are constant, z-score
        gives 0 there and min-max 0 (with a warning).

    Raises:
        ValueError: the file cannot be read, holds several volumes or non-finite voxels, or the
            mask has the wrong shape. The message names the file.
    """
    nib, nilearn = require_nibabel(), require_nilearn()
    path = Path(path)
    if mask is not None and tuple(mask.shape) != grid.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from the grid's {grid.shape}")
    try:
        img = nib.load(str(path), mmap=False)
        data = img.get_fdata(dtype=np.float32)
    except Exception as err:
        raise ValueError(f"{path}: cannot read the volume ({one_line(err)})") from err
    if data.ndim < 3 or extra_volumes(data.shape) != 1:
        raise ValueError(f"{path}: shape {data.shape}; expected one 3-D volume")
    data = data.reshape(data.shape[:3])
    if not np.all(np.isfinite(data)):
        raise ValueError(f"{path}: {int(np.sum(~np.isfinite(data)))} non-finite voxels")
    # A fresh float32 image: resampling keeps the input dtype, which would round integer T1s.
    source = nib.Nifti1Image(data, np.asarray(img.affine, dtype=np.float64))
    resampled = nilearn.image.resample_img(source, target_affine=grid.affine,
                                           target_shape=grid.shape,
                                           interpolation=settings.interpolation,
                                           **resample_kwargs())
    out = np.array(resampled.dataobj, dtype=np.float32)
    inside = np.ones(grid.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    out[~inside] = 0.0
    values = out[inside].astype(np.float64)
    if settings.normalization == "none" or values.size == 0:
        return out
    if settings.normalization == "zscore":
        mean, std = float(values.mean()), float(values.std())
        if std > 1e-12 * max(1.0, abs(mean)):
            out[inside] = ((values - mean) / std).astype(np.float32)
        else:
            log.warning("%s is constant inside the mask after resampling; z-scored to 0", path)
            out[inside] = 0.0
    else:  # minmax
        lo, hi = float(values.min()), float(values.max())
        if hi > lo:
            out[inside] = ((values - lo) / (hi - lo)).astype(np.float32)
        else:
            log.warning("%s is constant inside the mask after resampling; scaled to 0", path)
            out[inside] = 0.0
    return out


