"""Settings, constants and calibration of the simulator (model in the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmssl.data.neuro.simulate.bids import falff_band_bins

#: A voxel is in a planted mask when its region weight is at least this.
EFFECT_MASK_THRESHOLD = 0.5
#: Atlas region patterns (Harvard–Oxford names) of each planted signal, by (modality, kind).
PLANTED_REGIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("t1", "effect"): ("Left_Hippocampus", "Right_Hippocampus", "Left_Amygdala",
                       "Right_Amygdala"),
    ("falff", "effect"): ("Left_Cingulate_Gyrus_posterior_division",
                          "Right_Cingulate_Gyrus_posterior_division",
                          "Left_Precuneous_Cortex", "Right_Precuneous_Cortex"),
    ("t1", "coupling"): ("Left_Caudate", "Right_Caudate"),
    ("falff", "coupling"): ("Left_Insular_Cortex", "Right_Insular_Cortex"),
}
#: The atlas the regions come from (:func:`mmssl.data.neuro.atlas.load_atlas`).
ATLAS_NAME = "harvard_oxford"
#: Smoothing (FWHM, mm) of the region indicator functions (at least the voxel size is used).
REGION_FWHM_MM = 4.0

#: Grey-matter fraction of the elderly reference brain relative to the template.
REFERENCE_GM_FRACTION = 0.9
#: T1-like tissue intensities (white matter, grey matter, CSF).
T1_INTENSITY: dict[str, float] = {"wm": 1.0, "gm": 0.6, "csf": 0.15}
#: Relative loss per year above :data:`AGE_REFERENCE`: grey matter, white matter, fALFF amplitude.
AGE_GM_LOSS_PER_YEAR = 0.004
AGE_WM_LOSS_PER_YEAR = 0.002
AGE_FALFF_LOSS_PER_YEAR = 0.003
#: Age at which the age effects are zero.
AGE_REFERENCE = 60.0
#: Standard deviations of the subject fields (log scale): anatomy (T1 grey matter), fALFF (the
#: default of ``falff_field_sd``).
T1_FIELD_SD = 0.12
FALFF_FIELD_SD = 0.12
#: FWHM (mm) of the subject fields.
INDIVIDUAL_FIELD_FWHM_MM = 12.0
#: FWHM (mm) of the scan noise of each modality (fALFF: the default of ``falff_noise_fwhm``).
T1_NOISE_FWHM_MM = 3.0
FALFF_NOISE_FWHM_MM = 8.0
#: Range of the per-scan intensity scales.
T1_SCALE_RANGE = (0.9, 1.1)
FALFF_SCALE_RANGE = (0.9, 1.1)
#: Upper bound of fALFF values (a fraction of the spectrum's amplitude).
FALFF_MAX = 0.95
#: Severity range of patients at their first session (controls have severity 0) and its
#: increase per year.
PATIENT_SEVERITY_RANGE = (0.3, 1.0)
PROGRESSION_PER_YEAR = 0.05
#: Age distribution at the first session: (mean, sd) per group, clipped to AGE_RANGE.
CONTROL_AGE = (71.0, 6.0)
PATIENT_AGE = (74.0, 6.0)
AGE_RANGE = (60.0, 90.0)
#: Years between consecutive sessions (uniform).
SESSION_INTERVAL_YEARS = (1.0, 2.5)
#: Motion level: log eta = MOTION_SUBJECT_SD * u_subject + MOTION_SESSION_SD * v_session.
MOTION_SUBJECT_SD = 0.35
MOTION_SESSION_SD = 0.2
#: Centre of the misregistration rotations (mm).
ROTATION_CENTRE_MM = (0.0, -17.0, 5.0)
#: fALFF baseline: GM amplitude base + topography * h, WM and CSF amplitudes.
FALFF_GM_BASE, FALFF_GM_TOPOGRAPHY, FALFF_WM, FALFF_CSF = 0.34, 0.12, 0.22, 0.26


@dataclass(frozen=True)
class Site:
    """A scanner site: how its scans differ from the reference.

    Attributes:
        name: site label (``site`` column of the manifest).
        t1_scale: T1 intensity scale :math:`m_\\sigma`.
        t1_gamma: T1 contrast exponent :math:`\\gamma_\\sigma` (applied to intensities <= 1).
        t1_noise: multiplier :math:`\\nu_\\sigma` of the T1 noise.
        falff_scale: fALFF scale :math:`m'_\\sigma`.
        falff_noise: multiplier :math:`\\nu'_\\sigma` of the fALFF noise.
    """

    name: str
    t1_scale: float
    t1_gamma: float
    t1_noise: float
    falff_scale: float
    falff_noise: float


#: The sites, in order; a cohort with ``sites = n`` uses the first ``n``.
SITES: tuple[Site, ...] = (
    Site("S1", t1_scale=1.00, t1_gamma=1.00, t1_noise=1.00, falff_scale=1.00, falff_noise=1.00),
    Site("S2", t1_scale=1.25, t1_gamma=0.85, t1_noise=1.30, falff_scale=0.92, falff_noise=1.25),
    Site("S3", t1_scale=0.85, t1_gamma=1.15, t1_noise=0.80, falff_scale=1.08, falff_noise=0.85),
)

#: Oracle ROI AUCs (:func:`~mmssl.data.neuro.simulate.truth.oracle_roi_auc`, default preprocessing)
#: measured with the default settings, 200 subjects at 3 mm, seeds 0, 1 and 2.
CALIBRATION: dict[str, tuple[float, ...]] = {"t1": (0.929, 0.922, 0.920),
                                             "falff": (0.777, 0.748, 0.685)}

#: Large-scale fALFF variation (module docstring, "Difficulty"):
#: ``SimulationSettings(**SMOOTH_FALFF)`` or
#: ``mmssl simulate --falff-noise 0.08 --falff-noise-fwhm 24 --falff-field-sd 0.06``.
SMOOTH_FALFF: dict[str, float] = {"falff_noise": 0.08, "falff_noise_fwhm": 24.0,
                                  "falff_field_sd": 0.06}
#: :data:`CALIBRATION` of those settings (same protocol; the T1 scans are unchanged).
SMOOTH_FALFF_CALIBRATION: dict[str, tuple[float, ...]] = {"t1": CALIBRATION["t1"],
                                                          "falff": (0.817, 0.790, 0.788)}

SEXES = ("F", "M")
STREAM_COHORT, STREAM_SUBJECT, STREAM_SCAN, STREAM_SESSIONS = 0, 1, 2, 3
FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


@dataclass(frozen=True)
class SimulationSettings:
    """Parameters of a simulated cohort; every field is recorded in ``simulation.json``.

    Attributes:
        subjects: number of subjects (at least 1).
        seed: non-negative seed; identical settings give byte-identical files.
        patient_fraction: fraction of patients; exactly ``round(patient_fraction * subjects)``.
        sessions: scans per subject (at least 1); later sessions are the same subject some
            years later (older, patients more severe), with new scan nuisances.
        unlabelled_fraction: fraction of subjects whose label is left empty in the manifest
            (stratified by group, ``round(unlabelled_fraction * subjects)`` in all).
        voxel_size: isotropic voxel size in mm (3 = the usual MNI 3 mm grid; at least 2, the
            resolution of the templates; larger values give fast, coarse cohorts for tests).
        t1_effect: relative grey-matter loss at full severity in the T1 diagnosis regions.
        falff_effect: relative fALFF amplitude decrease at full severity in the fALFF diagnosis
            regions (a negative value plants an increase).
        coupling: strength :math:`\\kappa` of the structure–function coupling: a subject with
            coupling factor ``c`` has grey matter (caudate) and fALFF amplitude (insula)
            multiplied by ``exp(coupling * c)`` at the region centres; 0 plants no link.
        noise: T1 noise standard deviation relative to the scan's mean clean in-brain intensity.
        falff_noise: the same for fALFF, before the motion and site multipliers.
        falff_noise_fwhm: FWHM (mm) of the fALFF noise field. Real fALFF maps are computed from
            BOLD series smoothed in preprocessing, so their between-scan variation is smooth
            over centimetres; a larger FWHM at a smaller ``falff_noise`` keeps the diagnosis hard
            to read from a region's mean while each voxel carries more of it (BRAIN.md, "The
            fALFF effect, localised").
        falff_field_sd: standard deviation (log scale) of each subject's functional field
            :math:`z'_i` in the fALFF map: individual variation of the functional topography
            on the scale of its FWHM (12 mm).
        sites: number of scanner sites (1 to ``len(SITES)``).
        missing_falff_fraction: fraction of sessions without a fALFF scan (their manifest cell
            is empty and no file is written).
        shared_anatomy: correlation :math:`\\rho` between a subject's functional field and its
            anatomical one, :math:`z'_i = \\rho\\,z_i + \\sqrt{1-\\rho^2}\\,e_i`: how much the
            fALFF map follows the subject's own anatomy (in real data fALFF is sampled on the
            subject's grey matter, so the modalities share individual anatomy). 0 (default):
            the modalities share only diagnosis, coupling, age and site.
        misregistration_mm: maximal length of the random translation of every scan.
        misregistration_deg: maximal angle of the random rotation of every scan.
        label_names: the labels of controls and patients, in that order.
        bids: also write a BIDS layout under ``out/bids`` (:mod:`mmssl.data.neuro.simulate.bids`).
        bold_timepoints: with ``bids``, also write a preprocessed resting-state series of this
            many volumes per fALFF session whose fALFF is the simulated map (0: none).
        repetition_time: repetition time (s) of those series.
    """

    subjects: int = 100
    seed: int = 0
    patient_fraction: float = 0.5
    sessions: int = 1
    unlabelled_fraction: float = 0.0
    voxel_size: float = 3.0
    t1_effect: float = 0.22
    falff_effect: float = 0.08
    coupling: float = 0.1
    noise: float = 0.05
    falff_noise: float = 0.25
    falff_noise_fwhm: float = FALFF_NOISE_FWHM_MM
    falff_field_sd: float = FALFF_FIELD_SD
    sites: int = 3
    missing_falff_fraction: float = 0.0
    shared_anatomy: float = 0.0
    misregistration_mm: float = 1.5
    misregistration_deg: float = 1.5
    label_names: tuple[str, str] = ("CN", "AD")
    bids: bool = False
    bold_timepoints: int = 0
    repetition_time: float = 2.0

    def __post_init__(self) -> None:
        """Validate the fields.

        Raises:
            ValueError: naming the first invalid field.
        """
        checks: list[tuple[bool, str]] = [
            (self.subjects >= 1, f"subjects must be at least 1, got {self.subjects}"),
            (self.seed >= 0, f"seed must be non-negative, got {self.seed}"),
            (0.0 <= self.patient_fraction <= 1.0,
             f"patient_fraction must lie in [0, 1], got {self.patient_fraction}"),
            (self.sessions >= 1, f"sessions must be at least 1, got {self.sessions}"),
            (0.0 <= self.unlabelled_fraction <= 1.0,
             f"unlabelled_fraction must lie in [0, 1], got {self.unlabelled_fraction}"),
            (2.0 <= self.voxel_size <= 12.0,
             f"voxel_size must lie in [2, 12] mm, got {self.voxel_size}"),
            (0.0 <= self.t1_effect < 1.0, f"t1_effect must lie in [0, 1), got {self.t1_effect}"),
            (-1.0 <= self.falff_effect < 1.0,
             f"falff_effect must lie in [-1, 1), got {self.falff_effect}"),
            (0.0 <= self.coupling <= 1.0, f"coupling must lie in [0, 1], got {self.coupling}"),
            (self.noise >= 0.0, f"noise must be non-negative, got {self.noise}"),
            (self.falff_noise >= 0.0, f"falff_noise must be non-negative, got {self.falff_noise}"),
            (0.0 <= self.falff_field_sd <= 1.0,
             f"falff_field_sd must lie in [0, 1], got {self.falff_field_sd}"),
            (0.0 < self.falff_noise_fwhm <= 60.0,
             f"falff_noise_fwhm must lie in (0, 60] mm, got {self.falff_noise_fwhm}"),
            (1 <= self.sites <= len(SITES),
             f"sites must lie in [1, {len(SITES)}], got {self.sites}"),
            (0.0 <= self.missing_falff_fraction < 1.0,
             f"missing_falff_fraction must lie in [0, 1), got {self.missing_falff_fraction}"),
            (0.0 <= self.shared_anatomy <= 1.0,
             f"shared_anatomy must lie in [0, 1], got {self.shared_anatomy}"),
            (self.misregistration_mm >= 0.0,
             f"misregistration_mm must be non-negative, got {self.misregistration_mm}"),
            (0.0 <= self.misregistration_deg <= 10.0,
             f"misregistration_deg must lie in [0, 10], got {self.misregistration_deg}"),
            (self.bold_timepoints >= 0,
             f"bold_timepoints must be non-negative, got {self.bold_timepoints}"),
            (self.bold_timepoints == 0 or self.bids,
             "bold_timepoints > 0 needs bids=True (the series live in the BIDS derivatives)"),
            (0.0 < self.repetition_time <= 10.0,
             f"repetition_time must lie in (0, 10] s, got {self.repetition_time}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        names = tuple(self.label_names)
        if len(names) != 2 or names[0] == names[1] or "" in names:
            raise ValueError(
                f"label_names must be two distinct non-empty names, got {self.label_names!r}"
            )
        if self.bold_timepoints > 0:
            falff_band_bins(self.bold_timepoints, self.repetition_time)  # raises if unusable


# ----------------------------------------------------------------------------- anatomy


