r"""A small BIDS layout of a simulated cohort, optionally with resting-state series.

:func:`write_bids_layout` lays a cohort written by :func:`mmssl.data.simulate.simulate_cohort`
out as a BIDS dataset (raw T1w images plus derivatives), so the BIDS reader and the fALFF
calculator can be tested against a dataset with a known answer::

    bids/dataset_description.json                 DatasetType raw
    bids/participants.tsv (+ .json)               participant_id, diagnosis (AD/CN or n/a),
                                                  age (first session), sex, site
    bids/sub-001/sub-001_sessions.tsv             session_id, age
    bids/sub-001/ses-1/anat/sub-001_ses-1_T1w.nii.gz
    bids/derivatives/falff/dataset_description.json   DatasetType derivative, GeneratedBy mmssl
    bids/derivatives/falff/sub-001/ses-1/func/
        sub-001_ses-1_task-rest_space-MNI152NLin2009cAsym_desc-falff_boldmap.nii.gz
    bids/derivatives/fmriprep/...                 only with bold_timepoints > 0:
        sub-001/ses-1/func/sub-001_ses-1_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold
        .nii.gz and .json (RepetitionTime, TaskName)

The images are the cohort's own files (hard links when the file system allows, else copies);
sessions without fALFF have no ``func`` files. The diagnosis shown is the manifest's label
(``n/a`` for unlabelled subjects); the labels are the cohort's ``label_names`` (CN/AD default).

Resting-state series with a known fALFF
---------------------------------------
fALFF (Zou et al., J Neurosci Methods 172:137, 2008) is the amplitude in the low-frequency band
over the amplitude of the whole spectrum,

.. math::

    \mathrm{fALFF}(v) = \frac{\sum_{j:\,0.01 \le f_j \le 0.08} |X_j(v)|}
                             {\sum_{j \ge 1} |X_j(v)|}, \qquad
    f_j = \frac{j}{T\,\mathrm{TR}},

with :math:`X` the discrete Fourier transform of the voxel's series of :math:`T` volumes. For
a voxel with simulated value :math:`\phi` the series is built in the frequency domain
(:func:`bold_series`): bins :math:`j \in \mathcal B` strictly inside the band get amplitudes
:math:`a_j = \phi\,S\,u_j / \sum_{\mathcal B} u`, the other bins :math:`j \in \mathcal O`
get :math:`a_j = (1 - \phi)\,S\,u_j / \sum_{\mathcal O} u` (:math:`u_j \sim \mathcal U(0.5,
1.5)`, random phases), and bins exactly on a band edge, the DC term and the Nyquist bin get
0, so the result does not depend on whether an implementation includes the edges or the
Nyquist bin. The series is :math:`x(t) = 1000 + \sum_j a_j \cos(2\pi f_j t\,\mathrm{TR} +
\varphi_j)`, and its fALFF equals :math:`\phi` up to float32 rounding.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from mmssl import __version__, io
from mmssl.data.neuro.simulate.truth import (
    GROUND_TRUTH_FILES,
    cohort_folder,
    ground_truth_dir,
    scan_paths,
)

__all__ = [
    "BIDS_DIR",
    "BIDS_SPACE",
    "BIDS_VERSION",
    "BOLD_BASELINE",
    "FALFF_BAND_HZ",
    "MAX_BOLD_BYTES",
    "bids_paths",
    "bold_series",
    "falff_band_bins",
    "write_bids_layout",
]

#: Folder (relative to the cohort folder) of the BIDS layout written by ``bids=True``.
BIDS_DIR = "bids"
#: BIDS version declared in ``dataset_description.json``.
BIDS_VERSION = "1.9.0"
#: The ``space-`` entity of the derivatives (the MNI template family of fMRIPrep outputs).
BIDS_SPACE = "MNI152NLin2009cAsym"
#: The low-frequency band of fALFF (Hz).
FALFF_BAND_HZ = (0.01, 0.08)
#: Mean of the simulated BOLD series in the brain.
BOLD_BASELINE = 1000.0
#: Sum of the spectral amplitudes of a voxel's series (its size relative to the baseline).
_BOLD_AMPLITUDE = 30.0
#: Uncompressed size limit of all BOLD series of a cohort ("small cohorts only").
MAX_BOLD_BYTES = 4 * 1024**3
STREAM_BOLD = 4


def falff_band_bins(timepoints: int, repetition_time: float) -> tuple[np.ndarray, np.ndarray]:
    """Which Fourier bins of a series are in the fALFF band and which are outside it.

    Bins are ``j = 0 .. timepoints // 2`` at ``f_j = j / (timepoints * repetition_time)``.
    ``band`` holds the bins strictly inside :data:`FALFF_BAND_HZ`; ``outside`` the other bins
    except the DC term, the Nyquist bin (even lengths) and bins on a band edge (within 1e-9 Hz).

    Args:
        timepoints: series length :math:`T`.
        repetition_time: TR in seconds.

    Returns:
        ``(band, outside)``, two boolean arrays of length ``timepoints // 2 + 1``.

    Raises:
        ValueError: either set is empty (series too short or TR too long for the band).
    """
    if timepoints < 4:
        raise ValueError(f"bold_timepoints must be at least 4, got {timepoints}")
    freqs = np.arange(timepoints // 2 + 1) / (timepoints * repetition_time)
    low, high = FALFF_BAND_HZ
    edge = np.isclose(freqs, low, rtol=0, atol=1e-9) | np.isclose(freqs, high, rtol=0, atol=1e-9)
    usable = (np.arange(len(freqs)) > 0) & ~edge
    if timepoints % 2 == 0:
        usable[-1] = False
    band = usable & (freqs > low) & (freqs < high)
    outside = usable & ~band
    if not band.any() or not outside.any():
        raise ValueError(
            f"bold_timepoints={timepoints} at repetition_time={repetition_time} s gives "
            f"{int(band.sum())} Fourier bins inside the fALFF band {FALFF_BAND_HZ} Hz and "
            f"{int(outside.sum())} outside; need at least one of each (use more timepoints)")
    return band, outside


def bold_series(falff: np.ndarray, timepoints: int, repetition_time: float,
                rng: np.random.Generator) -> np.ndarray:
    """A 4-D series whose fALFF is ``falff`` in every voxel where it is positive (module doc).

    Args:
        falff: 3-D map with values in ``[0, 1)``; voxels ``<= 0`` get a zero series.
        timepoints: number of volumes.
        repetition_time: TR in seconds.
        rng: the random generator (amplitude weights and phases).

    Returns:
        ``float32`` array of shape ``falff.shape + (timepoints,)``.

    Raises:
        ValueError: values outside ``[0, 1)`` or an unusable length/TR.
    """
    values = np.asarray(falff, dtype=np.float64)
    if values.ndim != 3 or np.any(values >= 1.0) or not np.all(np.isfinite(values)):
        raise ValueError("falff must be a finite 3-D map with values below 1")
    band, outside = falff_band_bins(timepoints, repetition_time)
    inside = values > 0
    phi = values[inside]
    n_bins = band.size
    weights = rng.uniform(0.5, 1.5, size=(phi.size, n_bins))
    weights[:, ~(band | outside)] = 0.0
    amplitude = np.zeros_like(weights)
    for mask, share in ((band, phi), (outside, 1.0 - phi)):
        part = weights[:, mask]
        amplitude[:, mask] = part / part.sum(axis=1, keepdims=True) * (share * _BOLD_AMPLITUDE
                                                                       )[:, None]
    phases = rng.uniform(0.0, 2.0 * np.pi, size=(phi.size, n_bins))
    spectrum = 0.5 * timepoints * amplitude * np.exp(1j * phases)
    series = np.fft.irfft(spectrum, n=timepoints, axis=1) + BOLD_BASELINE
    out = np.zeros(values.shape + (timepoints,), dtype=np.float32)
    out[inside] = series.astype(np.float32)
    return out


def bids_paths(subject: str, session: str) -> dict[str, str]:
    """Paths (relative to the BIDS root) of a session's files, by key.

    Keys: ``t1w``, ``falff`` (derivative map), ``bold`` (fMRIPrep-like series) and
    ``bold_json`` (its sidecar); ``subject`` is ``sub-<label>`` and ``session``
    ``ses-<label>``.
    """
    if not subject.startswith("sub-") or not session.startswith("ses-"):
        raise ValueError(f"need sub-<label> and ses-<label>, got {subject!r}, {session!r}")
    stem = f"{subject}_{session}"
    func = f"{subject}/{session}/func/{stem}_task-rest_space-{BIDS_SPACE}"
    return {
        "t1w": f"{subject}/{session}/anat/{stem}_T1w.nii.gz",
        "falff": f"derivatives/falff/{func}_desc-falff_boldmap.nii.gz",
        "bold": f"derivatives/fmriprep/{func}_desc-preproc_bold.nii.gz",
        "bold_json": f"derivatives/fmriprep/{func}_desc-preproc_bold.json",
    }


def _write_bytes(path: Path, payload: bytes) -> None:
    io.write_bytes(path, payload)


def _write_json(path: Path, data: Any) -> None:
    io.write_json(path, data)


def _write_tsv(path: Path, columns: list[str], rows: Iterable[dict[str, str]]) -> None:
    io.write_csv(path, columns, rows, delimiter="\t")


def _place(source: Path, target: Path) -> None:
    """Put ``source`` at ``target`` atomically: a hard link if possible, else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}{io.TEMPORARY_SUFFIX}")
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _description(name: str, dataset_type: str) -> dict[str, Any]:
    description: dict[str, Any] = {"Name": name, "BIDSVersion": BIDS_VERSION,
                                   "DatasetType": dataset_type}
    description["GeneratedBy"] = [{"Name": "mmssl", "Version": __version__,
                                   "Description": "mmssl.data.simulate (synthetic cohort)"}]
    return description


def write_bids_layout(cohort: Path | str, bids_root: Path | str | None = None, *,
                      bold_timepoints: int = 0, repetition_time: float = 2.0, seed: int = 0,
                      progress: bool = False) -> Path:
    """Write the BIDS layout of a simulated cohort (module docstring).

    Reads ``ground_truth/subjects.csv`` and ``simulation.json`` and the scans at their fixed
    paths (:func:`mmssl.data.simulate.scan_paths`), not the manifest, so
    :func:`~mmssl.data.simulate.simulate_cohort` can call it before writing the manifest.

    Args:
        cohort: the cohort folder (or its manifest).
        bids_root: where to write (default ``<cohort>/bids``).
        bold_timepoints: if positive, also write a preprocessed resting-state series of this
            many volumes for every session with fALFF, whose fALFF is the session's map.
        repetition_time: TR (s) of those series.
        seed: seed of the series' random amplitudes and phases.
        progress: show a progress bar on stderr.

    Returns:
        The BIDS root.

    Raises:
        FileNotFoundError: not a simulated cohort, or a scan is missing.
        ValueError: unusable ``bold_timepoints``/``repetition_time``, or series that would
            exceed :data:`MAX_BOLD_BYTES`.
    """
    import nibabel as nib

    folder = cohort_folder(cohort)
    truth = ground_truth_dir(folder)
    table_path = truth / GROUND_TRUTH_FILES["subjects"]
    description_path = truth / GROUND_TRUTH_FILES["simulation"]
    for path in (table_path, description_path):
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not a simulated cohort: no {path}")
    with table_path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    description = json.loads(description_path.read_text())
    settings = description["settings"]
    root = folder / BIDS_DIR if bids_root is None else Path(bids_root)
    if bold_timepoints:
        falff_band_bins(bold_timepoints, repetition_time)
        shape = description["grid"]["shape"]
        total = sum(r["has_falff"] == "1" for r in rows) * int(np.prod(shape)) \
            * bold_timepoints * 4
        if total > MAX_BOLD_BYTES:
            raise ValueError(f"bold_timepoints={bold_timepoints} would write {total / 1024**3:.1f}"
                             f" GiB of series (limit {MAX_BOLD_BYTES / 1024**3:.0f} GiB); use "
                             "fewer subjects, a coarser voxel_size or fewer timepoints")
    root.mkdir(parents=True, exist_ok=True)
    _write_json(root / "dataset_description.json", _description(
        "mmssl simulated cohort (raw)", "raw"))
    _write_json(root / "derivatives" / "falff" / "dataset_description.json", _description(
        "mmssl simulated cohort: fALFF maps", "derivative"))
    if bold_timepoints:
        _write_json(root / "derivatives" / "fmriprep" / "dataset_description.json",
                    _description("mmssl simulated cohort: preprocessed BOLD", "derivative"))

    subjects: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        subjects.setdefault(row["subject"], []).append(row)
    participants = [{
        "participant_id": subject, "diagnosis": sessions[0]["label"] or "n/a",
        "age": sessions[0]["age"], "sex": sessions[0]["sex"], "site": sessions[0]["site"],
    } for subject, sessions in subjects.items()]
    _write_tsv(root / "participants.tsv", ["participant_id", "diagnosis", "age", "sex", "site"],
               participants)
    names = settings["label_names"]
    _write_json(root / "participants.json", {
        "diagnosis": {"Description": "clinical group", "Levels": {
            names[1]: "patient (Alzheimer's disease)", names[0]: "control",
            "n/a": "not disclosed (unlabelled)"}},
        "age": {"Description": "age at the first session", "Units": "year"},
        "sex": {"Description": "sex", "Levels": {"F": "female", "M": "male"}},
        "site": {"Description": "scanner site"},
    })
    for subject, sessions in subjects.items():
        _write_tsv(root / subject / f"{subject}_sessions.tsv", ["session_id", "age"],
                   [{"session_id": s["session"], "age": s["age"]} for s in sessions])

    jobs = list(enumerate(rows))
    if progress:
        from rich.console import Console
        from rich.progress import track

        jobs = list(track(jobs, description="Writing BIDS layout",
                          console=Console(stderr=True), transient=True))
    subject_index = {subject: i for i, subject in enumerate(subjects)}
    for _, row in jobs:
        source = scan_paths(row["subject"], row["session"])
        target = bids_paths(row["subject"], row["session"])
        _place(folder / source["t1"], root / target["t1w"])
        stale = [root / target[k] for k in ("falff", "bold", "bold_json")]
        if row["has_falff"] != "1":
            for path in stale:
                path.unlink(missing_ok=True)
            continue
        _place(folder / source["falff"], root / target["falff"])
        if not bold_timepoints:
            continue
        image: Any = nib.load(str(folder / source["falff"]))
        session_index = [s["session"] for s in subjects[row["subject"]]].index(row["session"])
        rng = np.random.default_rng(np.random.SeedSequence(
            [seed, STREAM_BOLD, subject_index[row["subject"]], session_index]))
        series = bold_series(np.asarray(image.dataobj), bold_timepoints, repetition_time, rng)
        affine = np.asarray(image.affine, dtype=np.float64)
        zooms = [float(z) for z in image.header.get_zooms()[:3]] + [float(repetition_time)]
        (root / target["bold"]).parent.mkdir(parents=True, exist_ok=True)
        io.save_nifti(root / target["bold"], series, affine, zooms=zooms)
        _write_json(root / target["bold_json"], {"RepetitionTime": float(repetition_time),
                                                 "TaskName": "rest",
                                                 "SkullStripped": True})
    return root
