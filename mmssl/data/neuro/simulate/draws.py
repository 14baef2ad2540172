"""Random draws: subjects (diagnosis, severity, age, sex, site, coupling) and scans."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mmssl.data.neuro.simulate.settings import (
    AGE_RANGE,
    CONTROL_AGE,
    MOTION_SESSION_SD,
    MOTION_SUBJECT_SD,
    PATIENT_AGE,
    PATIENT_SEVERITY_RANGE,
    PROGRESSION_PER_YEAR,
    SESSION_INTERVAL_YEARS,
    SEXES,
    STREAM_COHORT,
    STREAM_SESSIONS,
    SimulationSettings,
)


def rng_for(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


def split_count(fraction: float, total: int) -> int:
    return int(np.floor(fraction * total + 0.5))


@dataclass(frozen=True)
class SubjectDraw:
    """The subject-level variables of a simulated subject.

    Attributes:
        subject: identifier, ``sub-001`` etc. (at least three digits).
        patient: whether the subject is a patient.
        labelled: whether the manifest shows its label.
        age: age in years at the first session (one decimal).
        sex: ``"F"`` or ``"M"`` (no effect on the images).
        site: index into :data:`SITES`.
        severity: disease severity at the first session, 0 for controls, in ``[0.3, 1]`` for
            patients (four decimals).
        coupling: the coupling factor :math:`c_i \\sim N(0, 1)` (four decimals).
        motion: the subject's motion tendency :math:`u_i \\sim N(0, 1)`.
    """

    subject: str
    patient: bool
    labelled: bool
    age: float
    sex: str
    site: int
    severity: float
    coupling: float
    motion: float


def draw_subjects(settings: SimulationSettings) -> list[SubjectDraw]:
    """Group, label, age, sex, site, severity, coupling and motion of every subject.

    Exactly ``round(patient_fraction * subjects)`` patients and
    ``round(unlabelled_fraction * subjects)`` unlabelled subjects, the latter split between the
    groups in proportion to their sizes. Ages are normal (controls 71 ± 6, patients 74 ± 6
    years), clipped to [60, 90]; values are rounded before they are used, so the files are exact.

    Args:
        settings: the cohort parameters (only the seed, counts, fractions and sites matter).

    Returns:
        One :class:`SubjectDraw` per subject, in subject order.
    """
    n = settings.subjects
    rng = rng_for(settings.seed, STREAM_COHORT)
    n_patients = split_count(settings.patient_fraction, n)
    patient = np.zeros(n, dtype=bool)
    patient[rng.permutation(n)[:n_patients]] = True
    n_unlabelled = split_count(settings.unlabelled_fraction, n)
    # Stratified: patients get their share of the unlabelled subjects, controls the rest.
    n_unl_pat = min(n_patients, split_count(n_patients / n, n_unlabelled))
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
    sites = rng.integers(0, settings.sites, size=n)
    coupling = np.round(rng.standard_normal(n), 4)
    motion = rng.standard_normal(n)
    width = max(3, len(str(n)))
    return [
        SubjectDraw(
            subject=f"sub-{i + 1:0{width}d}", patient=bool(patient[i]),
            labelled=not bool(unlabelled[i]), age=float(ages[i]), sex=SEXES[int(sexes[i])],
            site=int(sites[i]), severity=float(severities[i]), coupling=float(coupling[i]),
            motion=float(motion[i]),
        )
        for i in range(n)
    ]


@dataclass(frozen=True)
class ScanDraw:
    """The session-level variables of one session of a subject.

    Attributes:
        index: the subject's index in :func:`draw_subjects`.
        session: ``ses-1``, ``ses-2``, ...
        years: years since the subject's first session.
        age: age at this session (one decimal).
        severity: severity at this session (four decimals; 0 for controls).
        motion_level: :math:`\\eta_{ik}`, the multiplier of the fALFF noise from motion.
        has_falff: whether the session has a fALFF scan.
    """

    index: int
    session: str
    years: float
    age: float
    severity: float
    motion_level: float
    has_falff: bool


def draw_scans(settings: SimulationSettings, subjects: Sequence[SubjectDraw]) -> list[ScanDraw]:
    """Every session of every subject, in (subject, session) order (module docstring).

    Args:
        settings: the cohort parameters.
        subjects: :func:`draw_subjects` of the same settings.

    Returns:
        ``len(subjects) * settings.sessions`` draws; exactly
        ``round(missing_falff_fraction * total)`` of them have ``has_falff == False``.
    """
    rng = rng_for(settings.seed, STREAM_SESSIONS)
    n, k = len(subjects), settings.sessions
    steps = rng.uniform(*SESSION_INTERVAL_YEARS, size=(n, k))
    steps[:, 0] = 0.0
    years = np.round(np.cumsum(steps, axis=1), 2)
    jitter = rng.standard_normal((n, k))
    total = n * k
    missing = np.zeros(total, dtype=bool)
    missing[rng.permutation(total)[:split_count(settings.missing_falff_fraction, total)]] = True
    draws = []
    for i, subj in enumerate(subjects):
        for s in range(k):
            severity = min(1.0, subj.severity + PROGRESSION_PER_YEAR * years[i, s]) \
                if subj.patient else 0.0
            draws.append(ScanDraw(
                index=i, session=f"ses-{s + 1}", years=float(years[i, s]),
                age=float(np.round(subj.age + years[i, s], 1)),
                severity=float(np.round(severity, 4)),
                motion_level=float(np.exp(MOTION_SUBJECT_SD * subj.motion
                                          + MOTION_SESSION_SD * jitter[i, s])),
                has_falff=not bool(missing[i * k + s]),
            ))
    return draws


# ----------------------------------------------------------------------------- model


