"""Clean and finished volumes: the T1 and fALFF models, motion, noise, planted maps."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from mmssl.data.neuro.simulate.anatomy import (
    Anatomy,
    RegionWeights,
)
from mmssl.data.neuro.simulate.settings import (
    AGE_FALFF_LOSS_PER_YEAR,
    AGE_GM_LOSS_PER_YEAR,
    AGE_REFERENCE,
    AGE_WM_LOSS_PER_YEAR,
    FALFF_CSF,
    FALFF_GM_BASE,
    FALFF_GM_TOPOGRAPHY,
    FALFF_WM,
    FWHM_TO_SIGMA,
    REFERENCE_GM_FRACTION,
    ROTATION_CENTRE_MM,
    SITES,
    T1_FIELD_SD,
    T1_INTENSITY,
    SimulationSettings,
    Site,
)


@dataclass(frozen=True)
class Latent:
    """What drives one clean scan (``None`` fields: the reference subject has none)."""

    age: float
    severity: float
    coupling: float
    field: np.ndarray | None
    scale: float
    site: Site


def t1_clean(anatomy: Anatomy, latent: Latent, settings: SimulationSettings,
              weights: dict[tuple[str, str], RegionWeights]) -> np.ndarray:
    """The noiseless, unmoved T1-like scan (module docstring)."""
    delta_age = latent.age - AGE_REFERENCE
    wm = anatomy.wm * (1.0 - AGE_WM_LOSS_PER_YEAR * delta_age)
    gm = REFERENCE_GM_FRACTION * anatomy.gm
    if latent.field is not None:
        gm = gm * np.exp(T1_FIELD_SD * latent.field)
    gm = gm * (1.0 - AGE_GM_LOSS_PER_YEAR * delta_age)
    gm = gm * (1.0 - settings.t1_effect * latent.severity * weights["t1", "effect"].weights)
    if settings.coupling > 0 and latent.coupling != 0:
        gm = gm * np.exp(settings.coupling * latent.coupling * weights["t1", "coupling"].weights)
    brain = anatomy.brain.astype(np.float64)
    gm = np.clip(gm, 0.0, brain - wm)
    csf = brain - wm - gm
    intensity = T1_INTENSITY["wm"] * wm + T1_INTENSITY["gm"] * gm + T1_INTENSITY["csf"] * csf
    site = latent.site
    if site.t1_gamma != 1.0:
        intensity = np.power(intensity, site.t1_gamma)
    return latent.scale * site.t1_scale * intensity


def falff_clean(anatomy: Anatomy, latent: Latent, settings: SimulationSettings,
                 weights: dict[tuple[str, str], RegionWeights]) -> np.ndarray:
    """The noiseless, unmoved fALFF-like map (module docstring)."""
    amplitude = (
        (FALFF_GM_BASE + FALFF_GM_TOPOGRAPHY * anatomy.topography) * anatomy.gm
        + FALFF_WM * anatomy.wm + FALFF_CSF * anatomy.csf
    )
    if latent.field is not None:
        amplitude = amplitude * np.exp(settings.falff_field_sd * latent.field)
    amplitude = amplitude * (1.0 - AGE_FALFF_LOSS_PER_YEAR * (latent.age - AGE_REFERENCE))
    amplitude = amplitude * (
        1.0 - settings.falff_effect * latent.severity * weights["falff", "effect"].weights)
    if settings.coupling > 0 and latent.coupling != 0:
        amplitude = amplitude * np.exp(
            settings.coupling * latent.coupling * weights["falff", "coupling"].weights)
    return latent.scale * latent.site.falff_scale * np.where(anatomy.brain, amplitude, 0.0)


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], fwhm_mm: float,
                  voxel_size: float) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to zero mean and unit standard deviation."""
    white = rng.standard_normal(shape)
    return standardise(
        ndimage.gaussian_filter(white, fwhm_mm * FWHM_TO_SIGMA / voxel_size, mode="wrap"))


def standardise(field: np.ndarray) -> np.ndarray:
    """``field`` shifted and scaled to zero mean and unit standard deviation."""
    centred = field - field.mean()
    return centred / centred.std()


def mix_fields(anatomical: np.ndarray, own: np.ndarray, correlation: float) -> np.ndarray:
    r"""The functional field :math:`\rho\,z + \sqrt{1-\rho^2}\,e`, rescaled to unit variance.

    ``anatomical`` (:math:`z`) and ``own`` (:math:`e`) are independent unit-variance fields, so
    the result correlates with :math:`z` at about :math:`\rho` voxel-wise (exactly, up to the
    sample correlation of the two draws).
    """
    return standardise(correlation * anatomical + np.sqrt(1.0 - correlation**2) * own)


def random_in_ball(rng: np.random.Generator, radius: float) -> np.ndarray:
    """A 3-vector drawn uniformly from the ball of the given radius."""
    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    return direction * radius * float(rng.random()) ** (1.0 / 3.0)


def rigid_motion(rotation_deg: ArrayLike, translation_mm: ArrayLike,
                 affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``(matrix, offset)`` for :func:`scipy.ndimage.affine_transform` that moves a head.

    The head is rotated by the rotation vector ``rotation_deg`` (axis times angle, degrees)
    about :data:`ROTATION_CENTRE_MM` and then translated by ``translation_mm``: the moved image
    is :math:`I'(x) = I(R^{-1}(x - c - t) + c)` in world coordinates. For a voxel ``v`` of the
    output, the sampled source voxel is ``matrix @ v + offset``.

    Args:
        rotation_deg: rotation vector in degrees.
        translation_mm: translation in mm.
        affine: the grid's voxel-to-mm affine.

    Returns:
        ``(matrix, offset)``.
    """
    from scipy.spatial.transform import Rotation

    rotation = Rotation.from_rotvec(np.deg2rad(np.asarray(rotation_deg, dtype=np.float64)))
    inverse = rotation.as_matrix().T
    centre = np.asarray(ROTATION_CENTRE_MM)
    linear, origin = affine[:3, :3], affine[:3, 3]
    to_voxel = np.linalg.inv(linear)
    # v_src = A^-1 (R^-1 (A v - c - t) + c), with A v = L v + o.
    matrix = to_voxel @ inverse @ linear
    offset = to_voxel @ (inverse @ (origin - centre - np.asarray(translation_mm)) + centre
                         - origin)
    return matrix, offset


def finish_scan(clean: np.ndarray, anatomy: Anatomy, *, motion: tuple[np.ndarray, np.ndarray],
                 noise_sd: float, noise_fwhm_mm: float, rng: np.random.Generator,
                 upper: float | None = None) -> np.ndarray:
    """Move a clean scan, add smooth noise, mask it with the moved brain mask (float32)."""
    reference = float(clean[anatomy.brain].mean())
    matrix, offset = motion
    moved = ndimage.affine_transform(clean, matrix, offset, order=1, mode="constant", cval=0.0)
    mask = ndimage.affine_transform(anatomy.brain.astype(np.float64), matrix, offset, order=1,
                                    mode="constant", cval=0.0) >= 0.5
    if noise_sd > 0:
        moved = moved + noise_sd * reference * smooth_field(
            rng, anatomy.shape, noise_fwhm_mm, anatomy.voxel_size)
    out = np.clip(moved, 0.0, upper)
    return np.where(mask, out, 0.0).astype(np.float32)


# ----------------------------------------------------------------------------- files



def reference_latent(**changes: Any) -> Latent:
    """The reference scan's latent values (age 60, site S1, scale 1, no field), changed."""
    values: dict[str, Any] = {"age": AGE_REFERENCE, "severity": 0.0, "coupling": 0.0,
                              "field": None, "scale": 1.0, "site": SITES[0]}
    values.update(changes)
    return Latent(**values)


def planted_maps(anatomy: Anatomy, settings: SimulationSettings,
                  weights: dict[tuple[str, str], RegionWeights]) -> dict[tuple[str, str],
                                                                          np.ndarray]:
    """Continuous maps: |change per unit latent| of the reference scan, divided by the max."""
    clean = {"t1": t1_clean, "falff": falff_clean}
    latent_of = {"effect": "severity", "coupling": "coupling"}
    # The coupling map is the change for c = +1 at unit strength when coupling is 0.
    unit = dataclasses.replace(settings, coupling=settings.coupling or 1.0)
    maps: dict[tuple[str, str], np.ndarray] = {}
    for (modality, kind), region in weights.items():
        base = clean[modality](anatomy, reference_latent(), unit, weights)
        changes: dict[str, Any] = {latent_of[kind]: 1.0}
        moved = clean[modality](anatomy, reference_latent(**changes), unit, weights)
        change = np.abs(moved - base)
        peak = float(change.max())
        maps[modality, kind] = change / peak if peak > 0 else region.weights.copy()
    return maps


