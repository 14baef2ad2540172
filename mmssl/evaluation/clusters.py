r"""Clusters of significant voxels and atlas regions: what a group map found, and where.

:func:`cluster_table` takes the connected components of the significant voxels (6-, 18- or
26-connectivity) and reports, per cluster, its size in voxels and mm³
(:math:`|\det A_{3\times 3}|` per voxel), its peak statistic (by absolute value, signed) with
the peak's voxel index and MNI coordinates (:math:`A\,ijk + a`), its centre of mass, and the
atlas region at the peak — looked up in a labelled atlas given as a label volume with its own
affine, nearest voxel; on background, the nearest labelled voxel within a few mm and its
distance — plus the share of the cluster's voxels in its three largest regions.
:func:`region_summary` averages a statistic over every atlas region instead, to rank regions
whether or not anything passed the threshold.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

__all__ = ["UNLABELLED", "cluster_table", "region_summary"]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

#: ``scipy.ndimage`` connectivity rank for 6-, 18- and 26-connected neighbourhoods.
_CONNECTIVITY_RANK = {6: 1, 18: 2, 26: 3}

#: The name of the atlas background.
UNLABELLED = "unlabelled"


# --------------------------------------------------------------------------------------------
# Atlas look-up and cluster tables
# --------------------------------------------------------------------------------------------


def _check_affine(affine: ArrayLike, name: str) -> FloatArray:
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be a finite 4x4 matrix, got shape {a.shape}")
    if abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise ValueError(f"{name} is singular (zero voxel volume)")
    return a


def _to_mm(affine: FloatArray, ijk: ArrayLike) -> FloatArray:
    """World (MNI, mm) coordinates :math:`A_{3\\times3}\\,ijk + a` of voxel indices (k, 3)."""
    idx = np.atleast_2d(np.asarray(ijk, dtype=np.float64))
    return np.asarray(idx @ affine[:3, :3].T + affine[:3, 3], dtype=np.float64)


class _Atlas:
    """A label volume with its affine: nearest-voxel look-up of world coordinates."""

    def __init__(
        self,
        labels: ArrayLike,
        names: Mapping[int, str] | None,
        affine: ArrayLike | None,
    ) -> None:
        lab = np.asarray(labels)
        if lab.ndim != 3:
            raise ValueError(f"atlas_labels must be a 3-D label volume, got shape {lab.shape}")
        if affine is None:
            raise ValueError("atlas_affine is required with atlas_labels (the atlas's own grid)")
        if not np.issubdtype(lab.dtype, np.integer):
            if not np.all(np.isfinite(lab)) or not np.all(lab == np.round(lab)):
                raise ValueError("atlas_labels must hold integer labels (0 = background)")
            lab = lab.astype(np.int64)
        self.labels = lab
        self.affine = _check_affine(affine, "atlas_affine")
        self.inverse = np.linalg.inv(self.affine)
        self.names = dict(names) if names is not None else {}

    def name(self, label: int) -> str:
        if label == 0:
            return UNLABELLED
        return str(self.names.get(int(label), f"label {int(label)}"))

    def label_at(self, mm: FloatArray) -> NDArray[np.int64]:
        """Label of the atlas voxel nearest each world point (0 outside the atlas grid)."""
        ijk = np.rint(mm @ self.inverse[:3, :3].T + self.inverse[:3, 3]).astype(np.int64)
        inside = np.all((ijk >= 0) & (ijk < np.array(self.labels.shape)), axis=1)
        out = np.zeros(len(mm), dtype=np.int64)
        i, j, k = ijk[inside].T
        out[inside] = self.labels[i, j, k]
        return out

    def nearest_named(self, mm: FloatArray, radius_mm: float) -> tuple[str, float]:
        """(name, distance in mm) of the labelled atlas voxel nearest the point ``mm``.

        Distance 0 if the point's nearest voxel is labelled; ``("unlabelled", nan)`` if no
        labelled voxel centre lies within ``radius_mm``. Ties go to the first voxel in index
        order.
        """
        point = np.asarray(mm, dtype=np.float64).reshape(1, 3)
        label = int(self.label_at(point)[0])
        if label != 0:
            return self.name(label), 0.0
        centre = point[0] @ self.inverse[:3, :3].T + self.inverse[:3, 3]
        # A ball of radius r in mm fits in a box of r / (smallest singular value) voxels.
        smallest = float(np.linalg.svd(self.affine[:3, :3], compute_uv=False).min())
        reach = radius_mm / smallest
        lo = np.maximum(np.floor(centre - reach).astype(np.int64), 0)
        hi = np.minimum(np.ceil(centre + reach).astype(np.int64) + 1, self.labels.shape)
        if np.any(hi <= lo):
            return UNLABELLED, float("nan")
        box = self.labels[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        found = np.argwhere(box != 0)
        if found.size == 0:
            return UNLABELLED, float("nan")
        world = _to_mm(self.affine, found + lo)
        distance = np.linalg.norm(world - point, axis=1)
        best = int(np.argmin(distance))
        if distance[best] > radius_mm:
            return UNLABELLED, float("nan")
        i, j, k = found[best] + lo
        return self.name(int(self.labels[i, j, k])), float(distance[best])


def _region_fractions(atlas: _Atlas, mm: FloatArray, top: int = 3) -> dict[str, float]:
    """Fraction of points per atlas region (background as "unlabelled"), largest ``top``."""
    labels = atlas.label_at(mm)
    values, counts = np.unique(labels, return_counts=True)
    order = np.lexsort((values, -counts))[:top]
    return {atlas.name(int(values[i])): float(counts[i] / labels.size) for i in order}


CLUSTER_COLUMNS = (
    "cluster",
    "n_voxels",
    "volume_mm3",
    "peak_stat",
    "peak_i",
    "peak_j",
    "peak_k",
    "peak_x",
    "peak_y",
    "peak_z",
    "com_x",
    "com_y",
    "com_z",
    "peak_region",
    "peak_region_distance_mm",
    "top_regions",
    "region_fractions",
)


def cluster_table(
    stat_volume: ArrayLike,
    affine: ArrayLike,
    significant_mask: ArrayLike,
    *,
    atlas_labels: ArrayLike | None = None,
    atlas_names: Mapping[int, str] | None = None,
    atlas_affine: ArrayLike | None = None,
    min_cluster_voxels: int = 1,
    connectivity: Literal[6, 18, 26] = 26,
    label_search_mm: float = 5.0,
) -> pd.DataFrame:
    """Connected clusters of significant voxels, with peaks, centres and atlas regions.

    Clusters are the connected components (:func:`scipy.ndimage.label`) of
    ``significant_mask`` with 6- (faces), 18- (faces, edges) or 26-connectivity (faces, edges,
    corners). For each cluster :math:`C` with voxel indices :math:`u \\in C` and world
    coordinates :math:`A u + a` (``affine`` :math:`=[A, a; 0, 1]`):

    * ``n_voxels`` :math:`=|C|`, ``volume_mm3`` :math:`=|C|\\,|\\det A|`;
    * the peak :math:`u^\\star = \\arg\\max_{u\\in C} |s_u|` (first in index order on ties),
      ``peak_stat`` :math:`= s_{u^\\star}` (signed), its indices ``peak_i/j/k`` and world
      coordinates ``peak_x/y/z``;
    * ``com_x/y/z``: centre of mass of the cluster's voxels (uniform weights),
      :math:`A\\,\\bar u + a`;
    * with an atlas (a label volume on its own grid ``atlas_affine``, 0 = background): the
      region at the peak, looked up at the atlas voxel nearest the peak's world coordinate;
      if that is background, the nearest labelled atlas voxel within ``label_search_mm``
      (``peak_region_distance_mm`` its centre's distance; 0 when the peak is inside a region;
      NaN and "unlabelled" when none is near); ``region_fractions``: the fraction of the
      cluster's voxels in each region (background as "unlabelled"), largest three, also
      written as text in ``top_regions``. Without an atlas these columns are None.

    Rows are sorted by the absolute peak statistic (largest first) and numbered 1.. in that
    order; clusters smaller than ``min_cluster_voxels`` are left out.

    Raises:
        ValueError: shapes differ or are not 3-D, a bad affine, non-finite statistics inside
            the significant voxels, an unknown connectivity, or an atlas without its affine.
    """
    stat = np.asarray(stat_volume, dtype=np.float64)
    if stat.ndim != 3:
        raise ValueError(f"stat_volume must be 3-D, got shape {stat.shape}")
    sig = np.asarray(significant_mask) != 0
    if sig.shape != stat.shape:
        raise ValueError(
            f"significant_mask has shape {sig.shape}, stat_volume has shape {stat.shape}"
        )
    aff = _check_affine(affine, "affine")
    if connectivity not in _CONNECTIVITY_RANK:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity!r}")
    if min_cluster_voxels < 1:
        raise ValueError(f"min_cluster_voxels must be >= 1, got {min_cluster_voxels}")
    if not label_search_mm >= 0:
        raise ValueError(f"label_search_mm must be >= 0, got {label_search_mm}")
    if not np.all(np.isfinite(stat[sig])):
        raise ValueError("stat_volume has NaN or infinite values inside significant_mask")
    atlas = None if atlas_labels is None else _Atlas(atlas_labels, atlas_names, atlas_affine)

    structure = ndimage.generate_binary_structure(3, _CONNECTIVITY_RANK[connectivity])
    components, n_components = ndimage.label(sig, structure=structure)
    voxel_volume = abs(float(np.linalg.det(aff[:3, :3])))
    rows: list[dict[str, Any]] = []
    coords = np.argwhere(components > 0)
    ids = components[tuple(coords.T)]
    order = np.argsort(ids, kind="stable")
    coords, ids = coords[order], ids[order]
    starts = np.searchsorted(ids, np.arange(1, n_components + 2))
    for c in range(n_components):
        voxels = coords[starts[c] : starts[c + 1]]
        if len(voxels) < min_cluster_voxels:
            continue
        values = stat[tuple(voxels.T)]
        best = int(np.argmax(np.abs(values)))
        peak = voxels[best]
        peak_mm = _to_mm(aff, peak)[0]
        com_mm = _to_mm(aff, voxels.mean(axis=0))[0]
        row: dict[str, Any] = {
            "n_voxels": len(voxels),
            "volume_mm3": len(voxels) * voxel_volume,
            "peak_stat": float(values[best]),
            "peak_i": int(peak[0]),
            "peak_j": int(peak[1]),
            "peak_k": int(peak[2]),
            "peak_x": float(peak_mm[0]),
            "peak_y": float(peak_mm[1]),
            "peak_z": float(peak_mm[2]),
            "com_x": float(com_mm[0]),
            "com_y": float(com_mm[1]),
            "com_z": float(com_mm[2]),
            "peak_region": None,
            "peak_region_distance_mm": None,
            "top_regions": None,
            "region_fractions": None,
        }
        if atlas is not None:
            name, distance = atlas.nearest_named(peak_mm, label_search_mm)
            fractions = _region_fractions(atlas, _to_mm(aff, voxels))
            row["peak_region"] = name
            row["peak_region_distance_mm"] = distance
            row["region_fractions"] = fractions
            row["top_regions"] = "; ".join(f"{k} ({100 * v:.1f}%)" for k, v in fractions.items())
        rows.append(row)
    rows.sort(key=lambda r: -abs(r["peak_stat"]))
    for number, row in enumerate(rows, start=1):
        row["cluster"] = number
    return pd.DataFrame(rows, columns=list(CLUSTER_COLUMNS))


def region_summary(
    stat_volume: ArrayLike,
    affine: ArrayLike,
    atlas_labels: ArrayLike,
    atlas_names: Mapping[int, str] | None,
    atlas_affine: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    sort_by: Literal["mean", "mean_abs"] = "mean",
) -> pd.DataFrame:
    """Mean statistic per atlas region over the voxels of ``mask``, sorted (largest first).

    Each in-mask voxel :math:`u` of the statistic's grid is assigned the label of the atlas
    voxel nearest its world coordinate :math:`A u + a`; voxels on background (or outside the
    atlas grid) are ignored. Per region :math:`R`: ``n_voxels``, ``volume_mm3``, ``mean``
    :math:`=\\frac1{|R|}\\sum_{u\\in R} s_u`, ``mean_abs`` (mean of :math:`|s_u|`) and
    ``peak`` (the signed value of largest magnitude). Sorted by ``sort_by``, descending.

    Raises:
        ValueError: shapes differ, bad affines, non-finite statistics inside the mask, an
            empty mask or an unknown ``sort_by``.
    """
    stat = np.asarray(stat_volume, dtype=np.float64)
    if stat.ndim != 3:
        raise ValueError(f"stat_volume must be 3-D, got shape {stat.shape}")
    m = np.ones(stat.shape, dtype=bool) if mask is None else np.asarray(mask) != 0
    if m.shape != stat.shape:
        raise ValueError(f"mask has shape {m.shape}, stat_volume has shape {stat.shape}")
    if not m.any():
        raise ValueError("mask is empty")
    if sort_by not in ("mean", "mean_abs"):
        raise ValueError(f"sort_by must be 'mean' or 'mean_abs', got {sort_by!r}")
    aff = _check_affine(affine, "affine")
    atlas = _Atlas(atlas_labels, atlas_names, atlas_affine)
    voxels = np.argwhere(m)
    values = stat[m]
    if not np.all(np.isfinite(values)):
        raise ValueError("stat_volume has NaN or infinite values inside the mask")
    labels = atlas.label_at(_to_mm(aff, voxels))
    voxel_volume = abs(float(np.linalg.det(aff[:3, :3])))
    records = []
    for label in np.unique(labels[labels != 0]):
        v = values[labels == label]
        records.append(
            {
                "region": atlas.name(int(label)),
                "label": int(label),
                "n_voxels": v.size,
                "volume_mm3": v.size * voxel_volume,
                "mean": float(v.mean()),
                "mean_abs": float(np.abs(v).mean()),
                "peak": float(v[np.argmax(np.abs(v))]),
            }
        )
    columns = ["region", "label", "n_voxels", "volume_mm3", "mean", "mean_abs", "peak"]
    table = pd.DataFrame(records, columns=columns)
    return table.sort_values(sort_by, ascending=False, kind="stable").reset_index(drop=True)
