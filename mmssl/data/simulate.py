r"""Synthetic paired T1/fALFF brain cohorts with an exactly known multimodal ground truth.

No real neuroimaging data can ship with :mod:`mmssl`, so this simulator is the embedded default
of the neuroimaging path and the basis of its tests. It builds every volume from the MNI152
templates bundled with ``nilearn`` (offline): the 2 mm T1 template fixes the grid, the grey- and
white-matter probability maps and the brain mask give the anatomy. Everything is written on the
grid that nilearn gives when the 2 mm template is resampled to ``voxel_size`` (same origin,
``(-98, -134, -72)`` mm, and bounding box; 67 x 79 x 64 voxels at 3 mm, 34 x 40 x 33 at 6 mm).
It deliberately differs from the 64³ training grid, so that the preprocessing has to resample.

Model
-----
Let :math:`G, W` be the template grey/white-matter probabilities on the grid (scaled so that
:math:`G + W \le 1`), :math:`C = 1 - G - W` the CSF fraction, all zero outside the brain mask.
Every subject :math:`i` has an age :math:`a_i`, a sex (no effect on the images), and a disease
*severity* :math:`s_i` (0 for controls, :math:`\mathcal U(0.3, 1)` for patients). Its T1-like
scan is

.. math::

    g_i &= \min\!\big(G\,e^{0.05 z_i},\; 1 - W\big)\,\big(1 - r_{\text{age}}(a_i - 60)\big)
           \big(1 - \texttt{t1\_effect}\; s_i\, w_{T1}\big) \\
    T1_i &= k_i\,\big(1.0\,W + 0.6\,g_i + 0.15\,(1 - W - g_i)\big)

(grey matter lost to age or disease becomes CSF; :math:`r_{\text{age}} = 0.004`/year, ages
between 60 and 85, patients three years older on average;
:math:`z_i` is a smooth, unit-variance, subject-specific anatomical field; :math:`k_i \sim
\mathcal U(0.8, 1.2)` a per-scan intensity scale), and its fALFF-like map is

.. math::

    A_i = k'_i\,\big((0.45 + 0.3\,h)\,G + 0.15\,W + 0.25\,C\big)\, e^{0.05 z'_i}\,
          \big(1 - \texttt{falff\_effect}\; s_i\, w_{fALFF}\big)

with a fixed smooth "functional topography" :math:`h \in [0, 1]` (higher amplitude in the
default-mode and visual cortices), a subject field :math:`z'_i` and a per-scan scale
:math:`k'_i \sim \mathcal U(0.85, 1.15)`. The spatial weights :math:`w_{T1}` and
:math:`w_{fALFF}` are smooth plateaus (:class:`EffectRegion`) around the :data:`T1_REGIONS`
(grey-matter loss: bilateral hippocampus, bilateral angular gyrus) and the :data:`FALFF_REGIONS`
(amplitude decrease: posterior cingulate/precuneus, medial prefrontal cortex). Each scan is then
moved by a random translation of at most ``misregistration_mm`` (linear interpolation), gets
spatially smooth Gaussian noise (FWHM 6 mm, standard deviation ``noise`` times the scan's mean
clean in-brain intensity) and is masked by the equally moved brain mask. Sessions of a subject
share its fields, age, sex and severity; scale, translation and noise are new in every scan.

The planted multimodal link
---------------------------
The *same* severity :math:`s_i` drives the grey-matter loss in the T1 regions and the fALFF
decrease in the (disjoint) fALFF regions, so across patients the T1 intensity in the T1 effect
region and the fALFF amplitude in the fALFF effect region both fall with severity and are
positively correlated; in controls (:math:`s_i = 0`) they are unrelated. Nothing else links
the two modalities of a subject (age acts on the T1 only, scales/noise/shifts are drawn
independently per scan).

Output layout (all paths relative to ``out``)::

    manifest.csv                       subject,session,label,t1,falff,age,sex,severity
    sub-001/ses-1/t1.nii.gz            float32 3-D NIfTI, MNI grid (sform/qform code 4)
    sub-001/ses-1/falff.nii.gz
    ground_truth/t1_effect.nii.gz      uint8 mask: where the T1 patient effect is planted
    ground_truth/falff_effect.nii.gz   uint8 mask: where the fALFF patient effect is planted
    ground_truth/t1_effect_map.nii.gz  float32 continuous effect weight (peak 1)
    ground_truth/falff_effect_map.nii.gz
    ground_truth/brain_mask.nii.gz     uint8 template brain mask on the grid
    ground_truth/simulation.json       settings, grid, regions, per-scan nuisances, the link

The continuous effect map of a modality is the absolute change per unit severity of a reference
subject (age 60, scale 1, no individual field, shift or noise), divided by its maximum; the mask
holds, in every region, the voxels where this change reaches half of the region's own maximum
(:data:`EFFECT_MASK_THRESHOLD`), so weaker regions are marked too. ``severity`` in the manifest
is ground truth that a real manifest would not have. The manifest is written last (temporary file
+ rename) and every NIfTI is written the same way, so an interrupted run never leaves a manifest
that points to missing or half-written files.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import gzip
import io
import json
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = [
    "EFFECT_MASK_THRESHOLD",
    "FALFF_REGIONS",
    "GROUND_TRUTH_DIR",
    "GROUND_TRUTH_FILES",
    "MANIFEST_COLUMNS",
    "MANIFEST_NAME",
    "T1_REGIONS",
    "Anatomy",
    "EffectRegion",
    "SimulationSettings",
    "SubjectDraw",
    "draw_subjects",
    "load_anatomy",
    "mni_grid",
    "planted_effect_maps",
    "planted_effect_masks",
    "region_weights",
    "save_nifti",
    "simulate_cohort",
]

#: Columns of the manifest, in order.
MANIFEST_COLUMNS: tuple[str, ...] = (
    "subject", "session", "label", "t1", "falff", "age", "sex", "severity",
)
#: File name of the manifest inside the output folder.
MANIFEST_NAME = "manifest.csv"
#: Folder (relative to the output folder) with the ground truth.
GROUND_TRUTH_DIR = "ground_truth"
#: Ground-truth files inside :data:`GROUND_TRUTH_DIR`, by key.
GROUND_TRUTH_FILES: dict[str, str] = {
    "t1": "t1_effect.nii.gz",
    "falff": "falff_effect.nii.gz",
    "t1_map": "t1_effect_map.nii.gz",
    "falff_map": "falff_effect_map.nii.gz",
    "brain_mask": "brain_mask.nii.gz",
    "simulation": "simulation.json",
}
#: A voxel is in a modality's effect mask when its planted change is at least this fraction of the
#: maximal change within the same region (the region's half-maximum zone).
EFFECT_MASK_THRESHOLD = 0.5

#: T1-like tissue intensities (white matter, grey matter, CSF).
T1_INTENSITY: dict[str, float] = {"wm": 1.0, "gm": 0.6, "csf": 0.15}
#: Relative grey-matter loss per year above 60.
AGE_GM_LOSS_PER_YEAR = 0.004
#: Age at which the age effect is zero.
AGE_REFERENCE = 60.0
#: Standard deviations of the subject-specific (log) anatomical (T1) and functional (fALFF) fields.
T1_FIELD_SD = 0.05
FALFF_FIELD_SD = 0.05
#: FWHM (mm) of the subject-specific fields.
INDIVIDUAL_FIELD_FWHM_MM = 12.0
#: FWHM (mm) of the scan noise.
NOISE_FWHM_MM = 6.0
#: Range of the per-scan intensity scales.
T1_SCALE_RANGE = (0.8, 1.2)
FALFF_SCALE_RANGE = (0.85, 1.15)
#: Severity range of patients (controls have severity 0).
PATIENT_SEVERITY_RANGE = (0.3, 1.0)
#: Age distribution: (mean, sd) per group, clipped to AGE_RANGE.
CONTROL_AGE = (71.0, 6.0)
PATIENT_AGE = (74.0, 6.0)
AGE_RANGE = (60.0, 85.0)
#: fALFF baseline: GM amplitude 0.45 + 0.3 * topography, WM and CSF amplitudes.
FALFF_GM_BASE, FALFF_GM_TOPOGRAPHY, FALFF_WM, FALFF_CSF = 0.45, 0.3, 0.15, 0.25

_SEX = ("F", "M")
_STREAM_COHORT, _STREAM_SUBJECT, _STREAM_SCAN = 0, 1, 2
_FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


@dataclass(frozen=True)
class SimulationSettings:
    """Parameters of a simulated cohort; every field is recorded in ``simulation.json``.

    Attributes:
        subjects: number of subjects (at least 1).
        seed: non-negative seed; identical settings give byte-identical image arrays.
        patient_fraction: fraction of patients; exactly ``round(patient_fraction * subjects)``.
        sessions: scans per subject (at least 1); later sessions are the same subject (anatomy,
            age, sex, severity) with a new intensity scale, misregistration and noise.
        unlabelled_fraction: fraction of subjects whose label is left empty (stratified by
            group, ``round(unlabelled_fraction * subjects)`` in all).
        voxel_size: isotropic voxel size in mm (3 = the usual MNI 3 mm grid; at least 2, the
            resolution of the templates; larger values give fast, coarse cohorts for tests).
        t1_effect: relative grey-matter loss at full severity where the T1 weight is 1.
        falff_effect: relative fALFF amplitude decrease at full severity where the fALFF weight
            is 1 (a negative value plants an increase).
        noise: standard deviation of the smooth scan noise relative to the scan's mean clean
            in-brain intensity.
        misregistration_mm: maximal length of the random translation of every scan.
        label_names: the labels of controls and patients, in that order.
    """

    subjects: int = 100
    seed: int = 0
    patient_fraction: float = 0.5
    sessions: int = 1
    unlabelled_fraction: float = 0.0
    voxel_size: float = 3.0
    t1_effect: float = 0.6
    falff_effect: float = 0.3
    noise: float = 0.05
    misregistration_mm: float = 1.5
    label_names: tuple[str, str] = ("CN", "AD")

    def __post_init__(self) -> None:
        """Validate the fields.

        Raises:
            ValueError: naming the first invalid field.
        """
        if self.subjects < 1:
            raise ValueError(f"subjects must be at least 1, got {self.subjects}")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")
        if not 0.0 <= self.patient_fraction <= 1.0:
            raise ValueError(f"patient_fraction must lie in [0, 1], got {self.patient_fraction}")
        if self.sessions < 1:
            raise ValueError(f"sessions must be at least 1, got {self.sessions}")
        if not 0.0 <= self.unlabelled_fraction <= 1.0:
            raise ValueError(
                f"unlabelled_fraction must lie in [0, 1], got {self.unlabelled_fraction}"
            )
        if not 2.0 <= self.voxel_size <= 12.0:
            raise ValueError(f"voxel_size must lie in [2, 12] mm, got {self.voxel_size}")
        if not 0.0 <= self.t1_effect < 1.0:
            raise ValueError(f"t1_effect must lie in [0, 1), got {self.t1_effect}")
        if not -1.0 <= self.falff_effect < 1.0:
            raise ValueError(f"falff_effect must lie in [-1, 1), got {self.falff_effect}")
        if self.noise < 0.0:
            raise ValueError(f"noise must be non-negative, got {self.noise}")
        if self.misregistration_mm < 0.0:
            raise ValueError(
                f"misregistration_mm must be non-negative, got {self.misregistration_mm}"
            )
        names = tuple(self.label_names)
        if len(names) != 2 or names[0] == names[1] or "" in names:
            raise ValueError(
                f"label_names must be two distinct non-empty names, got {self.label_names!r}"
            )


@dataclass(frozen=True)
class EffectRegion:
    """A spherical region where a patient effect is planted.

    The weight at distance ``d`` mm from the centre is ``peak`` for ``d <= radius_mm``, falls
    off as a raised cosine, ``peak * (1 + cos(pi * (d - radius_mm) / taper_mm)) / 2``, up to
    ``d = radius_mm + taper_mm`` and is 0 beyond (half the peak at ``radius_mm + taper_mm / 2``).

    Attributes:
        name: a descriptive name.
        centre_mm: MNI coordinates (x, y, z) of the centre in mm.
        radius_mm: radius of the plateau in mm.
        peak: weight on the plateau.
        taper_mm: width of the smooth fall-off in mm.
    """

    name: str
    centre_mm: tuple[float, float, float]
    radius_mm: float
    peak: float = 1.0
    taper_mm: float = 6.0

    def weight(self, coords_mm: np.ndarray) -> np.ndarray:
        """The region's weight at MNI coordinates of shape ``(..., 3)``."""
        d = np.linalg.norm(coords_mm - np.asarray(self.centre_mm), axis=-1)
        u = np.clip((d - self.radius_mm) / self.taper_mm, 0.0, 1.0)
        return self.peak * 0.5 * (1.0 + np.cos(np.pi * u))


#: Regions of grey-matter loss (T1): medial temporal lobe and temporo-parietal cortex. With equal
#: weights the hippocampal change is the larger one, as the grey-matter fraction is higher there.
T1_REGIONS: tuple[EffectRegion, ...] = (
    EffectRegion("left hippocampus", (-26.0, -20.0, -14.0), 8.0, 1.0),
    EffectRegion("right hippocampus", (26.0, -20.0, -14.0), 8.0, 1.0),
    EffectRegion("left angular gyrus", (-44.0, -64.0, 30.0), 6.0, 1.0),
    EffectRegion("right angular gyrus", (44.0, -64.0, 30.0), 6.0, 1.0),
)
#: Regions of fALFF amplitude decrease: default-mode hubs.
FALFF_REGIONS: tuple[EffectRegion, ...] = (
    EffectRegion("posterior cingulate / precuneus", (0.0, -55.0, 28.0), 10.0, 1.0),
    EffectRegion("medial prefrontal cortex", (0.0, 50.0, 0.0), 8.0, 0.7),
)
#: Centres (mm) and FWHM of the Gaussian blobs of the fixed fALFF topography ``h``.
_TOPOGRAPHY_BLOBS: tuple[tuple[tuple[float, float, float], float], ...] = (
    ((0.0, -55.0, 28.0), 30.0),   # posterior cingulate / precuneus
    ((0.0, 50.0, 0.0), 30.0),     # medial prefrontal
    ((0.0, -85.0, 5.0), 30.0),    # visual cortex
    ((-45.0, -65.0, 30.0), 25.0),  # left inferior parietal
    ((45.0, -65.0, 30.0), 25.0),   # right inferior parietal
)


@dataclass(frozen=True, eq=False)
class Anatomy:
    """The template anatomy on one grid (all arrays read-only, float64 unless noted).

    Attributes:
        affine: 4x4 voxel-to-MNI-mm affine.
        gm: grey-matter fraction :math:`G`.
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


def mni_grid(voxel_size: float = 3.0) -> tuple[tuple[int, int, int], np.ndarray]:
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


def _readonly(array: np.ndarray) -> np.ndarray:
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

    shape, affine = mni_grid(voxel_size)
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
    for centre, blob_fwhm in _TOPOGRAPHY_BLOBS:
        d2 = np.sum((coords - np.asarray(centre)) ** 2, axis=-1)
        sigma = blob_fwhm * _FWHM_TO_SIGMA
        topography = np.maximum(topography, np.exp(-d2 / (2.0 * sigma**2)))
    return Anatomy(
        affine=_readonly(affine), gm=_readonly(gm), wm=_readonly(wm), csf=_readonly(csf),
        brain=_readonly(brain), topography=_readonly(topography), coords_mm=_readonly(coords),
    )


def region_weights(regions: Sequence[EffectRegion], anatomy: Anatomy) -> np.ndarray:
    """The spatial effect weight of a set of regions: the maximum of their bumps, 0 off-brain.

    Args:
        regions: the regions.
        anatomy: the grid.

    Returns:
        A float64 array of the grid's shape with values in ``[0, max peak]``.
    """
    weights = np.zeros(anatomy.shape)
    for region in regions:
        weights = np.maximum(weights, region.weight(anatomy.coords_mm))
    return np.where(anatomy.brain, weights, 0.0)


def _t1_clean(
    anatomy: Anatomy, *, field: np.ndarray | None, age: float, severity: float,
    t1_effect: float, weights: np.ndarray, scale: float,
) -> np.ndarray:
    """The noiseless, unmoved T1-like scan (see the module docstring)."""
    gm = anatomy.gm if field is None else np.minimum(
        anatomy.gm * np.exp(T1_FIELD_SD * field), 1.0 - anatomy.wm
    )
    gm = gm * (1.0 - AGE_GM_LOSS_PER_YEAR * (age - AGE_REFERENCE))
    gm = gm * (1.0 - t1_effect * severity * weights)
    csf = np.where(anatomy.brain, 1.0 - anatomy.wm - gm, 0.0)
    t1 = (
        T1_INTENSITY["wm"] * anatomy.wm + T1_INTENSITY["gm"] * gm + T1_INTENSITY["csf"] * csf
    )
    return scale * t1


def _falff_clean(
    anatomy: Anatomy, *, field: np.ndarray | None, severity: float, falff_effect: float,
    weights: np.ndarray, scale: float,
) -> np.ndarray:
    """The noiseless, unmoved fALFF-like map (see the module docstring)."""
    amplitude = (
        (FALFF_GM_BASE + FALFF_GM_TOPOGRAPHY * anatomy.topography) * anatomy.gm
        + FALFF_WM * anatomy.wm + FALFF_CSF * anatomy.csf
    )
    if field is not None:
        amplitude = amplitude * np.exp(FALFF_FIELD_SD * field)
    amplitude = amplitude * (1.0 - falff_effect * severity * weights)
    return scale * np.where(anatomy.brain, amplitude, 0.0)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], fwhm_mm: float,
                  voxel_size: float) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to zero mean and unit standard deviation."""
    white = rng.standard_normal(shape)
    field = ndimage.gaussian_filter(white, fwhm_mm * _FWHM_TO_SIGMA / voxel_size, mode="wrap")
    field -= field.mean()
    return field / field.std()


def _random_shift_mm(rng: np.random.Generator, max_mm: float) -> np.ndarray:
    """A translation drawn uniformly from the ball of radius ``max_mm``."""
    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    return direction * max_mm * float(rng.random()) ** (1.0 / 3.0)


def _finish_scan(
    clean: np.ndarray, anatomy: Anatomy, *, shift_mm: np.ndarray, noise: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Move a clean scan, add smooth noise and mask it with the moved brain mask (float32)."""
    reference = float(clean[anatomy.brain].mean())
    shift_vox = shift_mm / anatomy.voxel_size
    moved = ndimage.shift(clean, shift_vox, order=1, mode="constant", cval=0.0)
    mask = ndimage.shift(anatomy.brain.astype(np.float64), shift_vox, order=1,
                         mode="constant", cval=0.0) >= 0.5
    noisy = moved + noise * reference * _smooth_field(
        rng, anatomy.shape, NOISE_FWHM_MM, anatomy.voxel_size
    )
    return np.where(mask, np.maximum(noisy, 0.0), 0.0).astype(np.float32)


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Write a 3-D array as a gzipped NIfTI-1 file, atomically (temporary file + rename).

    The header declares mm units and MNI space (qform/sform code 4); the gzip stream has no
    time stamp, so equal arrays give byte-identical files.

    Args:
        path: destination (``.nii.gz``); its folder must exist.
        array: the volume; float arrays are stored as float32, booleans as uint8.
        affine: 4x4 voxel-to-mm affine.
    """
    import nibabel as nib

    data = array.astype(np.uint8) if array.dtype == np.bool_ else array
    if np.issubdtype(data.dtype, np.floating):
        data = data.astype(np.float32)
    img = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=4)
    img.set_sform(affine, code=4)
    payload = gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)
    _atomic_write_bytes(path, payload)


def _temporary_sibling(path: Path) -> Path:
    """A fresh hidden name next to ``path`` (same file system, so ``os.replace`` is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")


def _atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to a temporary sibling (mode from the umask), then rename it."""
    tmp = _temporary_sibling(path)
    try:
        with open(tmp, "xb") as handle:
            handle.write(payload)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


def _split_count(fraction: float, total: int) -> int:
    return int(np.floor(fraction * total + 0.5))


@dataclass(frozen=True)
class SubjectDraw:
    """The subject-level variables of a simulated subject (as written to the manifest).

    Attributes:
        subject: identifier, ``sub-001`` etc. (at least three digits).
        patient: whether the subject is a patient (severity > 0).
        labelled: whether the manifest shows its label.
        age: age in years (one decimal).
        sex: ``"F"`` or ``"M"`` (no effect on the images).
        severity: disease severity, 0 for controls, in ``[0.3, 1]`` for patients (four decimals).
    """

    subject: str
    patient: bool
    labelled: bool
    age: float
    sex: str
    severity: float


def draw_subjects(settings: SimulationSettings) -> list[SubjectDraw]:
    """Group, label, age, sex and severity of every subject (no images are made).

    Exactly ``round(patient_fraction * subjects)`` patients and
    ``round(unlabelled_fraction * subjects)`` unlabelled subjects, the latter split between the
    groups in proportion to their sizes. Ages are normal (controls 71 ± 6, patients 74 ± 6 years),
    clipped to [60, 85]; the values are rounded before they are used, so the manifest is exact.

    Args:
        settings: the cohort parameters (only the seed, counts and fractions matter).

    Returns:
        One :class:`SubjectDraw` per subject, in subject order.
    """
    n = settings.subjects
    rng = _rng(settings.seed, _STREAM_COHORT)
    n_patients = _split_count(settings.patient_fraction, n)
    patient = np.zeros(n, dtype=bool)
    patient[rng.permutation(n)[:n_patients]] = True
    n_unlabelled = _split_count(settings.unlabelled_fraction, n)
    # Stratified: patients get their share of the unlabelled subjects, controls the rest.
    n_unl_pat = min(n_patients, _split_count(n_patients / n, n_unlabelled))
    n_unl_con = min(n - n_patients, n_unlabelled - n_unl_pat)
    n_unl_pat = n_unlabelled - n_unl_con
    unlabelled = np.zeros(n, dtype=bool)
    unlabelled[rng.permutation(np.flatnonzero(patient))[:n_unl_pat]] = True
    unlabelled[rng.permutation(np.flatnonzero(~patient))[:n_unl_con]] = True
    mean = np.where(patient, PATIENT_AGE[0], CONTROL_AGE[0])
    sd = np.where(patient, PATIENT_AGE[1], CONTROL_AGE[1])
    ages = np.round(np.clip(rng.normal(mean, sd), *AGE_RANGE), 1)
    sexes = rng.integers(0, 2, size=n)
    severities = np.where(patient, np.round(rng.uniform(*PATIENT_SEVERITY_RANGE, size=n), 4), 0.0)
    width = max(3, len(str(n)))
    return [
        SubjectDraw(
            subject=f"sub-{i + 1:0{width}d}", patient=bool(patient[i]),
            labelled=not bool(unlabelled[i]), age=float(ages[i]), sex=_SEX[int(sexes[i])],
            severity=float(severities[i]),
        )
        for i in range(n)
    ]


def _effect_maps(anatomy: Anatomy, settings: SimulationSettings,
                 t1_weights: np.ndarray, falff_weights: np.ndarray) -> dict[str, np.ndarray]:
    """Continuous maps: |change per unit severity| of a reference subject, divided by the max."""
    t1 = {
        sev: _t1_clean(anatomy, field=None, age=AGE_REFERENCE, severity=sev,
                       t1_effect=settings.t1_effect, weights=t1_weights, scale=1.0)
        for sev in (0.0, 1.0)
    }
    falff = {
        sev: _falff_clean(anatomy, field=None, severity=sev, falff_effect=settings.falff_effect,
                          weights=falff_weights, scale=1.0)
        for sev in (0.0, 1.0)
    }
    maps: dict[str, np.ndarray] = {}
    for key, pair, weights in (("t1", t1, t1_weights), ("falff", falff, falff_weights)):
        change = np.abs(pair[1.0] - pair[0.0])
        peak = float(change.max())
        # A zero effect size still gets a map: the spatial weights themselves.
        maps[key] = change / peak if peak > 0 else weights / max(float(weights.max()), 1e-12)
    return maps


def _half_maximum_mask(effect_map: np.ndarray, regions: Sequence[EffectRegion],
                       anatomy: Anatomy) -> np.ndarray:
    """Voxels where the effect reaches ``EFFECT_MASK_THRESHOLD`` of its own region's maximum."""
    mask = np.zeros(anatomy.shape, dtype=bool)
    for region in regions:
        support = (region.weight(anatomy.coords_mm) > 0) & anatomy.brain
        local = np.where(support, effect_map, 0.0)
        peak = float(local.max())
        if peak > 0:
            mask |= support & (local >= EFFECT_MASK_THRESHOLD * peak)
    return mask


def _regions_json(regions: Iterable[EffectRegion]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(r) for r in regions]


def _write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(path, text.encode("utf-8"))


def simulate_cohort(
    out: Path, settings: SimulationSettings = SimulationSettings(), *, progress: bool = True,
) -> Path:
    """Simulate a paired T1/fALFF cohort with planted, linked patient effects into ``out``.

    See the module docstring for the model and the layout. An existing ``manifest.csv`` in
    ``out`` is removed first; the new one is written last, so after a failure ``out`` has no
    manifest. Identical settings give identical image arrays (and files).

    Args:
        out: output folder (created if missing).
        settings: the cohort parameters.
        progress: show a progress bar on stderr.

    Returns:
        The path of the manifest, ``out / "manifest.csv"``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / MANIFEST_NAME
    manifest.unlink(missing_ok=True)

    anatomy = load_anatomy(float(settings.voxel_size))
    affine = anatomy.affine
    t1_weights = region_weights(T1_REGIONS, anatomy)
    falff_weights = region_weights(FALFF_REGIONS, anatomy)
    maps = _effect_maps(anatomy, settings, t1_weights, falff_weights)
    masks = {
        "t1": _half_maximum_mask(maps["t1"], T1_REGIONS, anatomy),
        "falff": _half_maximum_mask(maps["falff"], FALFF_REGIONS, anatomy),
    }
    if np.any(masks["t1"] & masks["falff"]):  # pragma: no cover - guards the region constants
        raise AssertionError("the T1 and fALFF effect masks overlap")

    truth = out / GROUND_TRUTH_DIR
    truth.mkdir(exist_ok=True)
    save_nifti(truth / GROUND_TRUTH_FILES["brain_mask"], anatomy.brain, affine)
    for key in ("t1", "falff"):
        save_nifti(truth / GROUND_TRUTH_FILES[key], masks[key], affine)
        save_nifti(truth / GROUND_TRUTH_FILES[f"{key}_map"], maps[key], affine)

    subjects = draw_subjects(settings)
    rows: list[dict[str, str]] = []
    scans: list[dict[str, Any]] = []
    jobs = [(i, s) for i in range(len(subjects)) for s in range(settings.sessions)]
    t1_field = falff_field = np.zeros(anatomy.shape)
    for i, session in _track(jobs, progress, "Simulating cohort"):
        subj = subjects[i]
        if session == 0:  # the subject's own anatomy, shared by all of its sessions
            sub_rng = _rng(settings.seed, _STREAM_SUBJECT, i)
            t1_field, falff_field = (
                _smooth_field(sub_rng, anatomy.shape, INDIVIDUAL_FIELD_FWHM_MM,
                              anatomy.voxel_size)
                for _ in range(2)
            )
        rng = _rng(settings.seed, _STREAM_SCAN, i, session)
        t1_scale = float(rng.uniform(*T1_SCALE_RANGE))
        falff_scale = float(rng.uniform(*FALFF_SCALE_RANGE))
        t1_shift = _random_shift_mm(rng, settings.misregistration_mm)
        falff_shift = _random_shift_mm(rng, settings.misregistration_mm)
        t1 = _finish_scan(
            _t1_clean(anatomy, field=t1_field, age=subj.age, severity=subj.severity,
                      t1_effect=settings.t1_effect, weights=t1_weights, scale=t1_scale),
            anatomy, shift_mm=t1_shift, noise=settings.noise, rng=rng,
        )
        falff = _finish_scan(
            _falff_clean(anatomy, field=falff_field, severity=subj.severity,
                         falff_effect=settings.falff_effect, weights=falff_weights,
                         scale=falff_scale),
            anatomy, shift_mm=falff_shift, noise=settings.noise, rng=rng,
        )
        folder = Path(subj.subject) / f"ses-{session + 1}"
        (out / folder).mkdir(parents=True, exist_ok=True)
        save_nifti(out / folder / "t1.nii.gz", t1, affine)
        save_nifti(out / folder / "falff.nii.gz", falff, affine)
        label = settings.label_names[int(subj.patient)] if subj.labelled else ""
        rows.append({
            "subject": subj.subject, "session": f"ses-{session + 1}", "label": label,
            "t1": (folder / "t1.nii.gz").as_posix(), "falff": (folder / "falff.nii.gz").as_posix(),
            "age": f"{subj.age:.1f}", "sex": subj.sex, "severity": f"{subj.severity:.4f}",
        })
        scans.append({
            "subject": subj.subject, "session": f"ses-{session + 1}",
            "t1_scale": t1_scale, "falff_scale": falff_scale,
            "t1_shift_mm": [float(v) for v in t1_shift],
            "falff_shift_mm": [float(v) for v in falff_shift],
        })

    description = _description(settings, anatomy, scans)
    _write_text(truth / GROUND_TRUTH_FILES["simulation"], json.dumps(description, indent=2) + "\n")
    _write_manifest(manifest, rows)
    return manifest


def _description(settings: SimulationSettings, anatomy: Anatomy,
                 scans: list[dict[str, Any]]) -> dict[str, Any]:
    """The content of ``simulation.json``."""
    return {
        "generator": "mmssl.data.simulate.simulate_cohort",
        "settings": dataclasses.asdict(settings),
        "grid": {
            "shape": list(anatomy.shape), "affine": anatomy.affine.tolist(),
            "voxel_size_mm": anatomy.voxel_size, "space": "MNI152 (nilearn templates)",
        },
        "link": (
            "One latent severity per subject (0 for controls, U(0.3, 1) for patients, column "
            "'severity' of the manifest) drives both patient effects: grey-matter loss "
            "t1_effect * severity * w_T1 in the T1 regions (T1 intensity decreases) and an "
            "fALFF amplitude decrease falff_effect * severity * w_fALFF in the disjoint fALFF "
            "regions. Across patients, T1 intensity in the T1 effect region and fALFF amplitude "
            "in the fALFF effect region therefore co-vary (positively for the default, positive "
            "effects); in controls they are independent. Nothing else links the modalities."
        ),
        "regions": {"t1": _regions_json(T1_REGIONS), "falff": _regions_json(FALFF_REGIONS)},
        "effect_sign": {
            "t1": "decrease (grey-matter loss)",
            "falff": "decrease" if settings.falff_effect >= 0 else "increase",
        },
        "effect_maps": (
            "|image(severity=1) - image(severity=0)| of a reference subject (age 60, scale 1, "
            "no individual field, shift or noise), divided by its maximum"
        ),
        "effect_masks": (
            "per region, the voxels where the effect map reaches effect_mask_threshold times "
            "the region's own maximum"
        ),
        "effect_mask_threshold": EFFECT_MASK_THRESHOLD,
        "files": {key: f"{GROUND_TRUTH_DIR}/{name}" for key, name in GROUND_TRUTH_FILES.items()},
        "model": {
            "t1": (
                f"k*({T1_INTENSITY['wm']}*W + {T1_INTENSITY['gm']}*g"
                f" + {T1_INTENSITY['csf']}*(1-W-g)), g = min(G*exp({T1_FIELD_SD}*z), 1-W)"
                f"*(1-{AGE_GM_LOSS_PER_YEAR}*(age-{AGE_REFERENCE}))*(1-t1_effect*severity*w_T1)"
            ),
            "falff": (
                f"k'*(({FALFF_GM_BASE}+{FALFF_GM_TOPOGRAPHY}*h)*G + {FALFF_WM}*W"
                f" + {FALFF_CSF}*C)*exp({FALFF_FIELD_SD}*z')*(1-falff_effect*severity*w_fALFF)"
            ),
            "symbols": (
                "G, W, C: template grey matter, white matter, CSF fractions; z, z': smooth "
                "unit-variance subject fields; k, k': per-scan scales; h: fixed fALFF "
                "topography; w_T1, w_fALFF: region weights (see regions)"
            ),
            "t1_scale_range": list(T1_SCALE_RANGE),
            "falff_scale_range": list(FALFF_SCALE_RANGE),
            "individual_field": {"t1_sd": T1_FIELD_SD, "falff_sd": FALFF_FIELD_SD,
                                 "fwhm_mm": INDIVIDUAL_FIELD_FWHM_MM},
            "noise": {"fwhm_mm": NOISE_FWHM_MM,
                      "sd": "noise * mean clean in-brain intensity of the scan"},
            "misregistration": "translation uniform in the ball of radius misregistration_mm",
            "age": {"control_mean_sd": list(CONTROL_AGE), "patient_mean_sd": list(PATIENT_AGE),
                    "range": list(AGE_RANGE), "gm_loss_per_year": AGE_GM_LOSS_PER_YEAR},
            "sex": "uniform M/F, no effect on the images",
            "severity": {"controls": 0.0, "patients_uniform": list(PATIENT_SEVERITY_RANGE)},
        },
        "scans": scans,
    }


def _write_manifest(path: Path, rows: list[dict[str, str]]) -> None:
    """Write the manifest CSV atomically."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write_bytes(path, buffer.getvalue().encode("utf-8"))


def _track(jobs: list[tuple[int, int]], progress: bool,
           description: str) -> Iterable[tuple[int, int]]:
    if not progress:
        return jobs
    from rich.console import Console
    from rich.progress import track

    return track(jobs, description=description, console=Console(stderr=True), transient=True)


def _ground_truth_dir(out: Path) -> Path:
    out = Path(out)
    if out.is_file():
        out = out.parent
    return out / GROUND_TRUTH_DIR


def planted_effect_masks(out: Path) -> dict[str, Path]:
    """The binary ground-truth masks of a simulated cohort, by modality.

    Args:
        out: the cohort folder (the one holding ``manifest.csv``) or the manifest itself.

    Returns:
        ``{"t1": .../ground_truth/t1_effect.nii.gz, "falff": .../ground_truth/falff_effect.nii.gz}``
        (uint8 volumes, 1 where the modality's patient effect is planted).

    Raises:
        FileNotFoundError: when the folder is not a simulated cohort.
    """
    return _ground_truth_files(out, {"t1": "t1", "falff": "falff"})


def planted_effect_maps(out: Path) -> dict[str, Path]:
    """The continuous ground-truth effect maps of a simulated cohort, by modality (peak 1).

    Args:
        out: the cohort folder (the one holding ``manifest.csv``) or the manifest itself.

    Returns:
        ``{"t1": .../t1_effect_map.nii.gz, "falff": .../falff_effect_map.nii.gz}``.

    Raises:
        FileNotFoundError: when the folder is not a simulated cohort.
    """
    return _ground_truth_files(out, {"t1": "t1_map", "falff": "falff_map"})


def _ground_truth_files(out: Path, keys: dict[str, str]) -> dict[str, Path]:
    folder = _ground_truth_dir(out)
    found = {name: folder / GROUND_TRUTH_FILES[key] for name, key in keys.items()}
    missing = [str(p) for p in found.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"not a simulated cohort (no ground truth): missing {', '.join(missing)}"
        )
    return found
