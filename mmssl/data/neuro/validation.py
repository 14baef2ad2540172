"""Checks on every volume of a manifest before anything is preprocessed.

Per row and modality present (an empty manifest cell is a missing modality: nothing to check)
(:func:`validate_volumes`): the file exists; it is ``.nii``/``.nii.gz``;
its header declares a size the file can hold (checked against the file's size, or the gzip
stream's, and a limit, *before* a voxel is read: a 70-byte file claiming 1024³ voxels never
allocates them); it loads, data included (a corrupt gzip stream or a truncated file is reported,
not raised); it is 3-D, or 4-D with one volume; its affine is finite and invertible; every voxel
is finite; it is not constant; its field of view overlaps the target grid. With
``strict_grid`` the modalities present in one row must share a voxel grid (shape equal, affines
within 1e-3), since the paired volumes of a session are expected to be co-registered.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmssl import io
from mmssl.data.neuro.grid import TargetGrid, world_bounds
from mmssl.data.neuro.manifest import (
    NIFTI_SUFFIXES,
    Manifest,
    Problem,
    display_path,
    one_line,
)

__all__ = [
    "MAX_VOLUME_BYTES",
    "Inspection",
    "VolumeInfo",
    "VolumeUnreadable",
    "check_declared_size",
    "content_problems",
    "extra_volumes",
    "inspect_path",
    "inspect_volume",
    "is_nifti_name",
    "require_nibabel",
    "row_volume_problems",
    "validate_volumes",
]

#: Largest voxel payload a volume may declare (2 GiB; a 64³ float32 map is 1 MiB).
MAX_VOLUME_BYTES = 2 << 30

_AFFINE_TOL = 1e-3
_INFO_VERSION = 1


def require_nibabel() -> Any:
    """Import and return ``nibabel``, with an installation hint when it is missing."""
    try:
        import nibabel
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("neuroimaging support needs nibabel and nilearn: pip install "
                          "'nibabel>=5' 'nilearn>=0.10'") from err
    return nibabel


@dataclass(frozen=True)
class VolumeInfo:
    """What validation needs to know about one volume file (JSON-cacheable)."""

    shape: tuple[int, ...]
    affine: tuple[float, ...]
    dtype: str
    n_nan: int | None = None
    n_inf: int | None = None
    minimum: float | None = None
    maximum: float | None = None

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.shape[:3]

    @property
    def affine_matrix(self) -> np.ndarray:
        return np.asarray(self.affine, dtype=np.float64).reshape(4, 4)

    def to_json(self) -> dict[str, Any]:
        return {"version": _INFO_VERSION, "shape": list(self.shape), "affine": list(self.affine),
                "dtype": self.dtype, "n_nan": self.n_nan, "n_inf": self.n_inf,
                "minimum": self.minimum, "maximum": self.maximum}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VolumeInfo:
        if data.get("version") != _INFO_VERSION:
            raise ValueError(f"info version {data.get('version')!r} != {_INFO_VERSION}")
        affine = tuple(float(v) for v in data["affine"])
        if len(affine) != 16:
            raise ValueError("affine must have 16 entries")
        return cls(shape=tuple(int(s) for s in data["shape"]), affine=affine,
                   dtype=str(data["dtype"]),
                   n_nan=None if data["n_nan"] is None else int(data["n_nan"]),
                   n_inf=None if data["n_inf"] is None else int(data["n_inf"]),
                   minimum=None if data["minimum"] is None else float(data["minimum"]),
                   maximum=None if data["maximum"] is None else float(data["maximum"]))


class VolumeUnreadable(Exception):
    """A volume could not be read; the message is the problem's text."""


def is_nifti_name(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def extra_volumes(shape: Sequence[int]) -> int:
    """How many 3-D volumes a data shape holds (1 for 3-D, product of the extra dims else)."""
    return int(np.prod(shape[3:], dtype=np.int64)) if len(shape) > 3 else 1


def _gzip_payload_size(path: Path, wanted: int) -> int:
    """Bytes in a gzip stream: the trailer's ISIZE when it matches ``wanted`` (mod 2³²), else
    counted by streaming decompression, stopping once past ``wanted`` (bounded memory)."""
    size = path.stat().st_size
    if size >= 18:
        with path.open("rb") as handle:
            handle.seek(-4, 2)
            (isize,) = struct.unpack("<I", handle.read(4))
        if isize == wanted % (1 << 32):
            return wanted
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while total <= wanted:
                block = stream.read(1 << 20)
                if not block:
                    break
                total += len(block)
    except (OSError, EOFError, zlib.error):
        pass  # a corrupt stream: what was read so far counts
    return total


def check_declared_size(path: Path, header: Any, limit: int = MAX_VOLUME_BYTES) -> None:
    """Refuse a file whose header declares more voxel data than the file holds or ``limit``.

    Runs before any voxel is read: ``prod(shape) × bytes per voxel`` must not exceed
    ``limit``, and the file (for ``.nii``) or its decompressed stream (``.nii.gz``) must hold
    ``vox_offset`` plus that many bytes.

    Raises:
        VolumeUnreadable: with the declared and available sizes.
    """
    shape = tuple(int(s) for s in header.get_data_shape())
    itemsize = int(np.dtype(header.get_data_dtype()).itemsize)
    declared = int(np.prod(shape, dtype=np.float64)) * itemsize
    if declared > limit:
        raise VolumeUnreadable(
            f"its header declares {'×'.join(map(str, shape))} voxels of "
            f"{header.get_data_dtype()} ({io.format_bytes(declared)}), more than the limit of "
            f"{io.format_bytes(limit)} (data.neuro.max_volume_bytes); not reading it"
        )
    try:
        offset = int(header["vox_offset"])
    except (KeyError, TypeError, ValueError):
        offset = 0
    needed = offset + declared
    if path.name.lower().endswith(".gz"):
        available = _gzip_payload_size(path, needed)
        where = "its decompressed stream"
    else:
        available = path.stat().st_size
        where = "the file"
    if available < needed:
        raise VolumeUnreadable(
            f"corrupt or truncated: its header declares {io.format_bytes(declared)} of voxel "
            f"data ({'×'.join(map(str, shape))} {header.get_data_dtype()}) after "
            f"{offset} header bytes, but {where} holds only {io.format_bytes(available)}"
        )


def inspect_volume(path: Path, limit: int = MAX_VOLUME_BYTES) -> VolumeInfo:
    """Load a NIfTI file and read all of its data; raises :class:`VolumeUnreadable`.

    The declared size is checked against the file and ``limit`` first
    (:func:`check_declared_size`), so a hostile header cannot make it allocate.
    """
    nib = require_nibabel()
    try:
        img = nib.load(str(path), mmap=False)
        shape = tuple(int(s) for s in img.shape)
        affine = tuple(float(v) for v in np.asarray(img.affine, dtype=np.float64).ravel())
        dtype = str(img.get_data_dtype())
    except Exception as err:  # nibabel raises ImageFileError, EOFError, OSError, zlib.error...
        raise VolumeUnreadable(f"cannot read the volume ({one_line(err)}): a corrupt or "
                               f"truncated file, or not a NIfTI file?") from err
    if len(shape) < 3 or extra_volumes(shape) != 1:
        # The shape alone is a problem: do not read (possibly very large) 4-D data.
        return VolumeInfo(shape=shape, affine=affine, dtype=dtype)
    check_declared_size(path, img.header, limit)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as err:
        raise VolumeUnreadable(f"cannot read the volume ({one_line(err)}): a corrupt or "
                               f"truncated file, or not a NIfTI file?") from err
    if data.dtype.kind not in "biuf":
        raise VolumeUnreadable(f"unsupported voxel type {data.dtype} (expected real numbers)")
    if data.dtype.kind == "f":
        nan_mask = np.isnan(data)
        inf_mask = np.isinf(data)
        n_nan, n_inf = int(nan_mask.sum()), int(inf_mask.sum())
        finite = data[~(nan_mask | inf_mask)] if n_nan or n_inf else data
    else:
        n_nan = n_inf = 0
        finite = data
    lo = float(finite.min()) if finite.size else None
    hi = float(finite.max()) if finite.size else None
    return VolumeInfo(shape=shape, affine=affine, dtype=dtype, n_nan=n_nan, n_inf=n_inf,
                       minimum=lo, maximum=hi)


def content_problems(info: VolumeInfo, grid: TargetGrid) -> list[str]:
    """The problems of one volume by itself (shape, affine, values, field of view)."""
    out: list[str] = []
    shape = info.shape
    if len(shape) < 3:
        out.append(f"{len(shape)}-D image of shape {shape}; expected a 3-D volume")
        return out
    n = extra_volumes(shape)
    if n != 1:
        if len(shape) == 4:
            out.append(f"4-D image with {shape[3]} volumes (shape {shape}); expected one 3-D "
                       f"volume (a 4-D file must hold exactly one volume)")
        else:
            out.append(f"{len(shape)}-D image of shape {shape} ({n} volumes); expected one 3-D "
                       f"volume")
        return out
    affine = info.affine_matrix
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        out.append(f"invalid affine (not finite or not invertible): {affine.tolist()}")
        return out
    total = int(np.prod(shape, dtype=np.int64))
    if info.n_nan or info.n_inf:
        if info.n_nan and info.n_inf:
            out.append(f"non-finite voxels: {info.n_nan} NaN and {info.n_inf} infinite "
                       f"(of {total})")
        elif info.n_nan:
            out.append(f"NaN voxels ({info.n_nan} of {total})")
        else:
            out.append(f"infinite voxels ({info.n_inf} of {total})")
    if info.minimum is None:
        pass  # no finite voxel at all: already reported as non-finite voxels
    elif info.minimum == info.maximum:
        out.append(f"constant volume (every voxel is {info.minimum:g}): an empty or failed map?")
    lo, hi = world_bounds(affine, shape[:3])
    glo, ghi = grid.world_bounds()
    if np.any(hi <= glo) or np.any(ghi <= lo):
        out.append(f"its field of view ({_fmt_box(lo, hi)}) does not overlap the target grid "
                   f"({_fmt_box(glo, ghi)}); is the volume registered to MNI space (check its "
                   f"affine: sform/qform)?")
    return out


def _fmt_box(lo: np.ndarray, hi: np.ndarray) -> str:
    return ", ".join(f"{axis} {a:.0f}..{b:.0f}" for axis, a, b in zip("xyz", lo, hi, strict=True)
                     ) + " mm"


def _grid_mismatch(info: VolumeInfo, ref: VolumeInfo, ref_modality: str) -> str | None:
    """Why ``info``'s voxel grid differs from ``ref``'s, or ``None`` when it does not."""
    if info.spatial_shape != ref.spatial_shape:
        what = f"shape {info.spatial_shape} differs from {ref_modality}'s {ref.spatial_shape}"
    else:
        diff = float(np.max(np.abs(info.affine_matrix - ref.affine_matrix)))
        if diff <= _AFFINE_TOL:
            return None
        what = (f"affine differs from {ref_modality}'s (by up to {diff:.4g}; tolerance "
                f"{_AFFINE_TOL:g})")
    return (f"voxel grid mismatch: {what}. The modalities of a row are expected to be "
            f"co-registered on one voxel grid (data.neuro.strict_grid: true); pass "
            f"--strict-grid false (--set data.neuro.strict_grid=false) to resample each of them "
            f"to the target grid on its own")


#: The outcome of inspecting one path: its facts, or the text of its problem.
Inspection = VolumeInfo | str


def row_volume_problems(line: int, subject: str, paths: Mapping[str, Path],
                         modalities: Sequence[str], inspections: Mapping[Path, Inspection],
                         grid: TargetGrid, strict_grid: bool, base: Path,
                         name: str) -> list[Problem]:
    """The volume problems of one row, in modality order.

    Only the modalities in ``paths`` (those present) are checked; with ``strict_grid`` the
    present ones are compared with the first present one.
    """
    problems: list[Problem] = []
    usable: list[tuple[str, VolumeInfo]] = []
    for m in modalities:
        if m not in paths:
            continue
        shown = display_path(paths[m], base)
        result = inspections[paths[m]]
        messages = [result] if isinstance(result, str) else content_problems(result, grid)
        problems += [Problem(line, subject, m, shown, msg, name) for msg in messages]
        if isinstance(result, VolumeInfo) and len(result.shape) >= 3 \
                and extra_volumes(result.shape) == 1:
            usable.append((m, result))
    if strict_grid and len(usable) > 1:
        ref_m, ref = usable[0]
        for m, info in usable[1:]:
            msg = _grid_mismatch(info, ref, ref_m)
            if msg:
                problems.append(Problem(line, subject, m, display_path(paths[m], base), msg,
                                        name))
    return problems


def inspect_path(path: Path, limit: int = MAX_VOLUME_BYTES) -> Inspection:
    """Inspect one volume without any cache."""
    if not path.exists():
        return f"file not found: {path}"
    if not path.is_file():
        return f"not a file: {path}"
    if not is_nifti_name(path):
        return f"unsupported file type {path.name!r}; expected a NIfTI file (.nii or .nii.gz)"
    try:
        return inspect_volume(path, limit)
    except VolumeUnreadable as err:
        return str(err)


def validate_volumes(manifest: Manifest, grid: TargetGrid, *, strict_grid: bool = True,
                     limit: int = MAX_VOLUME_BYTES) -> list[Problem]:
    """Open every volume of ``manifest.rows`` and list every problem (none: an empty list).

    Per row and modality present (``row.paths``; a missing modality has nothing to check): the
    file exists; it is ``.nii``/``.nii.gz`` and loads, data included (a corrupt gzip stream or
    a truncated file is a problem, not an exception); it is 3-D or 4-D with one volume; its
    affine is valid; all voxels are finite (NaN/inf counted); it is not constant; its field of
    view overlaps ``grid``. With ``strict_grid`` the modalities present in a row must share one
    voxel grid (shape equal, affine entries within 1e-3): paired volumes of one session are
    expected to be co-registered. Every volume is resampled onto ``grid``
    anyway, so ``strict_grid=False`` is sound when each affine maps to MNI space.

    Args:
        manifest: a manifest from :func:`read_manifest`.
        grid: the target grid (for the field-of-view check).
        strict_grid: whether a row's modalities must share a voxel grid.

    Returns:
        The problems, in row then modality order.
    """
    inspections: dict[Path, Inspection] = {}
    for row in manifest.rows:
        for p in row.paths.values():
            if p not in inspections:
                inspections[p] = inspect_path(p, limit)
    problems: list[Problem] = []
    for row in manifest.rows:
        problems += row_volume_problems(row.line, row.subject, row.paths, manifest.modalities,
                                         inspections, grid, strict_grid, manifest.path.parent,
                                         manifest.path.name)
    return problems


