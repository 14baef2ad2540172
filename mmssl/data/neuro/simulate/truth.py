r"""Reading the ground truth of a simulated cohort, and the oracle region-of-interest probe.

A cohort written by :func:`mmssl.data.simulate.simulate_cohort` keeps everything that was planted
in ``ground_truth/`` beside its manifest (file names in :data:`GROUND_TRUTH_FILES`).
:func:`load_ground_truth` reads it into a :class:`GroundTruth`, so that analyses ask for
"the fALFF coupling mask" instead of rebuilding file names by hand, and can look up the latent
values (severity, coupling factor) that the manifest deliberately does not show.

:func:`oracle_roi_auc` measures how hard the diagnosis is in each modality for a reader who is
told where the effect is: every scan is preprocessed as for training
(:func:`mmssl.data.neuro.preprocess_volume`: resampling onto the training grid, brain mask,
z-score), its mean inside the planted region is taken (:func:`roi_means`),

.. math::

    x_{i,m} = \frac{1}{|R_m|} \sum_{v \in R_m} \tilde V_{i,m}(v),

and a logistic regression on this single number is scored by stratified, subject-grouped k-fold
cross-validated ROC AUC (mean over folds). It is an upper bound of what a linear read-out of the
region could do and the calibration target of the simulator (T1 the easier modality, fALFF the
harder one, as in Fedorov et al., NeuroImage 285:120485, 2024).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmssl.data.neuro.grid import resample_kwargs
from mmssl.data.neuro.preprocessing import Preprocessing, load_mask, preprocess_volume

__all__ = [
    "GROUND_TRUTH_DIR",
    "GROUND_TRUTH_FILES",
    "KINDS",
    "MANIFEST_COLUMNS",
    "MANIFEST_NAME",
    "MODALITIES",
    "SUBJECTS_COLUMNS",
    "GroundTruth",
    "cohort_folder",
    "ground_truth_dir",
    "load_ground_truth",
    "oracle_roi_auc",
    "roi_means",
]

#: Columns of the manifest, in order (no latent values: a real manifest would not have them).
MANIFEST_COLUMNS: tuple[str, ...] = (
    "subject", "session", "label", "t1", "falff", "age", "sex", "site",
)
#: File name of the manifest inside the cohort folder.
MANIFEST_NAME = "manifest.csv"
#: Folder (relative to the cohort folder) with the ground truth.
GROUND_TRUTH_DIR = "ground_truth"
#: The simulated modalities and the kinds of planted signal.
MODALITIES: tuple[str, ...] = ("t1", "falff")
KINDS: tuple[str, ...] = ("effect", "coupling")
#: Ground-truth files inside :data:`GROUND_TRUTH_DIR`, by key. ``"<modality>"`` and
#: ``"<modality>_map"`` are the diagnosis effect (names kept from earlier versions),
#: ``"<modality>_coupling"`` and ``"<modality>_coupling_map"`` the structure–function coupling.
GROUND_TRUTH_FILES: dict[str, str] = {
    "t1": "t1_effect.nii.gz",
    "falff": "falff_effect.nii.gz",
    "t1_map": "t1_effect_map.nii.gz",
    "falff_map": "falff_effect_map.nii.gz",
    "t1_coupling": "t1_coupling.nii.gz",
    "falff_coupling": "falff_coupling.nii.gz",
    "t1_coupling_map": "t1_coupling_map.nii.gz",
    "falff_coupling_map": "falff_coupling_map.nii.gz",
    "brain_mask": "brain_mask.nii.gz",
    "subjects": "subjects.csv",
    "simulation": "simulation.json",
}
#: Columns of ``ground_truth/subjects.csv`` (one row per subject and session).
SUBJECTS_COLUMNS: tuple[str, ...] = (
    "subject", "session", "diagnosis", "label", "severity", "coupling", "age", "sex", "site",
    "t1_noise", "falff_noise", "has_falff",
)


def _file_key(modality: str, kind: str, continuous: bool) -> str:
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    key = modality if kind == "effect" else f"{modality}_coupling"
    return f"{key}_map" if continuous else key


def cohort_folder(cohort: Path | str) -> Path:
    """The cohort folder, given the folder itself or its manifest file."""
    path = Path(cohort)
    return path.parent if path.is_file() else path


def ground_truth_dir(cohort: Path | str) -> Path:
    """``<cohort folder>/ground_truth`` (``cohort`` may be the folder or the manifest)."""
    return cohort_folder(cohort) / GROUND_TRUTH_DIR


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """Everything planted in a simulated cohort.

    Attributes:
        folder: the ``ground_truth`` folder.
        affine: 4x4 affine of the simulation grid (all volumes below are on it).
        brain_mask: ``bool`` brain mask.
        masks: ``(modality, kind) -> bool`` mask, ``kind`` in :data:`KINDS`.
        maps: ``(modality, kind) -> float`` continuous map (peak 1).
        regions: ``(modality, kind) -> atlas region names`` where it is planted.
        atlas: name of the atlas the regions come from.
        subjects: ``ground_truth/subjects.csv`` as a :class:`pandas.DataFrame`
            (:data:`SUBJECTS_COLUMNS`; one row per subject and session).
        description: the parsed ``simulation.json``.
    """

    folder: Path
    affine: np.ndarray
    brain_mask: np.ndarray
    masks: dict[tuple[str, str], np.ndarray]
    maps: dict[tuple[str, str], np.ndarray]
    regions: dict[tuple[str, str], tuple[str, ...]]
    atlas: str
    subjects: Any
    description: dict[str, Any]

    def path(self, modality: str, kind: str = "effect", *, continuous: bool = False) -> Path:
        """The NIfTI file of a mask (or, with ``continuous``, of a map)."""
        return self.folder / GROUND_TRUTH_FILES[_file_key(modality, kind, continuous)]

    def mask(self, modality: str, kind: str = "effect") -> np.ndarray:
        """The ``bool`` mask of where ``kind`` is planted in ``modality``."""
        _file_key(modality, kind, False)  # validates both names
        return self.masks[(modality, kind)]

    def map(self, modality: str, kind: str = "effect") -> np.ndarray:
        """The continuous map (peak 1) of ``kind`` in ``modality``."""
        _file_key(modality, kind, True)
        return self.maps[(modality, kind)]

    def values(self, column: str, subjects: Sequence[str],
               sessions: Sequence[str] | None = None) -> np.ndarray:
        """A column of :attr:`subjects` aligned with given (subject, session) pairs.

        Args:
            column: e.g. ``"severity"`` or ``"coupling"``.
            subjects: subject identifiers, e.g. the manifest rows' ``subject``.
            sessions: their sessions; ``None`` takes each subject's first session.

        Returns:
            One value per pair, as ``float`` when the column is numeric.

        Raises:
            ValueError: unknown column, or a pair that is not in the table.
        """
        table = self.subjects
        if column not in table.columns:
            raise ValueError(f"no column {column!r} in subjects.csv; columns: "
                             f"{', '.join(table.columns)}")
        if sessions is None:
            first = table.drop_duplicates("subject")
            lookup = dict(zip(first["subject"], first[column], strict=True))
            keys: list[Any] = list(subjects)
        else:
            if len(sessions) != len(subjects):
                raise ValueError("subjects and sessions must have the same length")
            lookup = dict(zip(zip(table["subject"], table["session"], strict=True),
                              table[column], strict=True))
            keys = list(zip(subjects, sessions, strict=True))
        missing = [k for k in keys if k not in lookup]
        if missing:
            raise ValueError(f"not in {self.folder / GROUND_TRUTH_FILES['subjects']}: "
                             f"{missing[:5]}")
        return np.asarray([lookup[k] for k in keys])


def _load_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    image: Any = nib.load(str(path))
    return np.asarray(image.dataobj), np.asarray(image.affine, dtype=np.float64)


def load_ground_truth(cohort: Path | str) -> GroundTruth:
    """Read the ground truth of a simulated cohort.

    Args:
        cohort: the cohort folder or its manifest.

    Returns:
        The :class:`GroundTruth`.

    Raises:
        FileNotFoundError: not a cohort of this simulator version (the message lists the
            missing files).
    """
    import pandas as pd

    folder = ground_truth_dir(cohort)
    missing = [name for name in GROUND_TRUTH_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not the ground truth of a simulated cohort (or "
                                f"of an older simulator): missing {', '.join(missing)}")
    description = json.loads((folder / GROUND_TRUTH_FILES["simulation"]).read_text())
    brain, affine = _load_volume(folder / GROUND_TRUTH_FILES["brain_mask"])
    masks: dict[tuple[str, str], np.ndarray] = {}
    maps: dict[tuple[str, str], np.ndarray] = {}
    regions: dict[tuple[str, str], tuple[str, ...]] = {}
    for modality in MODALITIES:
        for kind in KINDS:
            mask, _ = _load_volume(folder / GROUND_TRUTH_FILES[_file_key(modality, kind, False)])
            value, _ = _load_volume(folder / GROUND_TRUTH_FILES[_file_key(modality, kind, True)])
            masks[(modality, kind)] = mask > 0
            maps[(modality, kind)] = value.astype(np.float64)
            regions[(modality, kind)] = tuple(description["regions"][modality][kind]["names"])
    subjects = pd.read_csv(folder / GROUND_TRUTH_FILES["subjects"], dtype={
        "subject": str, "session": str, "diagnosis": str, "label": str, "sex": str,
        "site": str}, keep_default_na=False)
    return GroundTruth(folder=folder, affine=affine, brain_mask=brain > 0, masks=masks,
                       maps=maps, regions=regions, atlas=str(description["atlas"]["name"]),
                       subjects=subjects, description=description)


def _read_manifest_rows(cohort: Path) -> list[dict[str, str]]:
    path = cohort / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST_NAME} in {cohort}")
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def roi_means(cohort: Path | str, modality: str, kind: str = "effect", *,
              preprocessing: Any = None, region: np.ndarray | None = None,
              ) -> tuple[list[dict[str, str]], np.ndarray]:
    """Per scan of a modality: the mean preprocessed intensity inside a planted region.

    Args:
        cohort: the cohort folder or its manifest.
        modality: ``"t1"`` or ``"falff"``.
        kind: which planted mask is the region (``"effect"`` or ``"coupling"``).
        preprocessing: a :class:`mmssl.data.neuro.Preprocessing` (default: its defaults, the
            training grid of 64³ voxels of 3 mm, MNI brain mask, z-score).
        region: a ``bool`` mask on the *simulation* grid to use instead of the planted one.

    Returns:
        ``(rows, values)``: the manifest rows that have a file for ``modality`` (in manifest
        order) and the region mean of each.

    Raises:
        ValueError: the region does not overlap the preprocessing grid's brain mask.
    """
    import nibabel as nib
    from nilearn.image import resample_img


    folder = cohort_folder(cohort)
    truth = load_ground_truth(folder)
    settings = Preprocessing() if preprocessing is None else preprocessing
    grid = settings.grid()
    brain = load_mask(settings, grid)
    source = truth.mask(modality, kind) if region is None else np.asarray(region, dtype=bool)
    image = nib.Nifti1Image(source.astype(np.uint8), truth.affine)
    on_grid = np.asarray(resample_img(image, target_affine=grid.affine, target_shape=grid.shape,
                                      interpolation="nearest", **resample_kwargs()).dataobj) > 0
    if brain is not None:
        on_grid &= brain
    if not on_grid.any():
        raise ValueError(f"the {modality} {kind} region has no voxel in the preprocessing "
                         f"grid's brain mask")
    rows = [r for r in _read_manifest_rows(folder) if r.get(modality, "").strip()]
    values = np.array([
        float(preprocess_volume(folder / r[modality], grid, brain, settings)[on_grid].mean())
        for r in rows
    ])
    return rows, values


def oracle_roi_auc(cohort: Path | str, *, modalities: Sequence[str] = MODALITIES,
                   kind: str = "effect", preprocessing: Any = None, folds: int = 5,
                   seed: int = 0,
                   label_names: Mapping[str, int] | None = None) -> dict[str, float]:
    """Cross-validated ROC AUC of a logistic regression on each modality's planted-region mean.

    See the module docstring. Unlabelled rows are left out; folds are stratified by label and
    grouped by subject (sessions of a subject stay in one fold).

    Args:
        cohort: the cohort folder or its manifest.
        modalities: which modalities to score.
        kind: which planted region (``"effect"``: the diagnosis effect).
        preprocessing: as in :func:`roi_means`.
        folds: number of folds (at least 2).
        seed: seed of the fold assignment.
        label_names: label -> class (0 or 1); default: the cohort's ``label_names`` setting
            (controls 0, patients 1).

    Returns:
        ``{modality: mean fold AUC}``.

    Raises:
        ValueError: fewer than ``folds`` subjects of either class.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold

    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    folder = cohort_folder(cohort)
    truth = load_ground_truth(folder)
    if label_names is None:
        names = truth.description["settings"]["label_names"]
        label_names = {str(names[0]): 0, str(names[1]): 1}
    result: dict[str, float] = {}
    for modality in modalities:
        rows, values = roi_means(folder, modality, kind, preprocessing=preprocessing)
        keep = [i for i, r in enumerate(rows) if r["label"] in label_names]
        y = np.array([label_names[rows[i]["label"]] for i in keep])
        x = values[keep].reshape(-1, 1)
        groups = np.array([rows[i]["subject"] for i in keep])
        counts = [len(set(groups[y == c])) for c in (0, 1)]
        if min(counts) < folds:
            raise ValueError(f"{modality}: {counts[0]} control and {counts[1]} patient subjects "
                             f"with a label; need at least folds={folds} of each")
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        scores = []
        for train, test in splitter.split(x, y, groups):
            model = LogisticRegression().fit(x[train], y[train])
            scores.append(roc_auc_score(y[test], model.decision_function(x[test])))
        result[modality] = float(np.mean(scores))
    return result


def grey_matter_mask(cohort: Path | str, *, grey_matter: float = 0.5,
                     max_shift: int = 0) -> np.ndarray:
    """The voxels :func:`grey_matter_profiles` reads, on the cohort's simulation grid: template
    grey-matter fraction > ``grey_matter`` inside the brain mask eroded by ``1 + max_shift``."""
    from scipy import ndimage

    from mmssl.data.neuro.simulate.anatomy import load_anatomy

    if max_shift < 0:
        raise ValueError(f"max_shift must be a non-negative number of voxels; got {max_shift}")
    truth = load_ground_truth(cohort_folder(cohort))
    voxel_size = float(truth.description["settings"]["voxel_size"])
    eroded = ndimage.binary_erosion(truth.brain_mask, iterations=1 + max_shift)
    return np.asarray(eroded & (load_anatomy(voxel_size).gm > grey_matter))


def grey_matter_profiles(cohort: Path | str, *, grey_matter: float = 0.5,
                         modalities: tuple[str, str] = ("t1", "falff"), max_shift: int = 0,
                         seed: int = 0) -> tuple[list[dict[str, str]], list[np.ndarray]]:
    r"""Each scan's log intensity inside the template grey matter, standardised over its voxels.

    The rows of the manifest with every one of ``modalities``, and per modality a (scans,
    voxels) matrix whose row :math:`i` is :math:`(\log x_i - \mu_i) / \sigma_i` over the voxels
    with template grey-matter fraction > ``grey_matter`` inside the brain mask eroded by
    ``1 + max_shift`` voxels. With ``max_shift`` > 0 every volume is first translated by its own
    integer offset, uniform in :math:`[-s, s]^3` (zero fill, like a pad-crop of padding
    :math:`s`), drawn from ``seed`` modality by modality, row by row.
    """
    folder = cohort_folder(cohort)
    inside = grey_matter_mask(folder, grey_matter=grey_matter, max_shift=max_shift)
    rows = [r for r in _read_manifest_rows(folder) if all(r[m] for m in modalities)]
    if len(rows) < 2:
        raise ValueError(f"{folder}: {len(rows)} scans with both {modalities}; need at least 2")
    rng = np.random.default_rng(seed)
    profiles = []
    for modality in modalities:
        logs = []
        for row in rows:
            volume = _load_volume(folder / row[modality])[0]
            if max_shift:
                offset = rng.integers(-max_shift, max_shift + 1, size=3)
                volume = shift_volume(volume, [int(o) for o in offset])
            values = np.log(np.clip(volume[inside].astype(np.float64), 1e-3, None))
            logs.append((values - values.mean()) / values.std())
        profiles.append(np.asarray(logs))
    return rows, profiles


def pairing_oracle(cohort: Path | str, *, grey_matter: float = 0.5,
                   modalities: tuple[str, str] = ("t1", "falff"), max_shift: int = 0,
                   seed: int = 0) -> dict[str, float]:
    r"""How well a model-free linear matcher pairs each fALFF map with its own subject's T1.

    Per scan and modality, the log intensity inside the template grey matter (fraction >
    ``grey_matter``, eroded brain) is standardised over the voxels, and the cohort's mean map is
    subtracted: what is left is the individual pattern (:func:`grey_matter_profiles`). With
    :math:`t_i, f_j` those residuals (unit norm), :math:`S_{ij} = t_i^\top f_j`; a scan is
    *paired* when its own fALFF scores highest, :math:`\arg\max_j S_{ij} = i`. This bounds from
    below what a cross-modal objective could learn that holds for new subjects: on a cohort with
    ``shared_anatomy`` 0 the modalities share no individual pattern and the accuracy is at
    chance, ``1 / scans``.

    ``max_shift`` > 0 asks what is left of that correspondence after a pad-crop drawn per
    modality (``data.neuro.augmentation.shared: false`` with ``pad = max_shift``): every volume
    is first translated by its own integer offset, uniform in :math:`[-s, s]^3` (zero fill, as
    the crop's padding; drawn from ``seed``), and the grey-matter mask is eroded by :math:`s`
    more voxels so that no shifted voxel comes from outside the brain.

    Returns:
        ``top1`` (fraction paired), ``chance``, ``diagonal`` (mean :math:`S_{ii}`) and
        ``off_diagonal_sd`` (standard deviation of :math:`S_{ij}, i \ne j`), ``scans``.
    """
    rows, profiles = grey_matter_profiles(cohort, grey_matter=grey_matter, modalities=modalities,
                                          max_shift=max_shift, seed=seed)
    residuals = []
    for matrix in profiles:
        matrix = matrix - matrix.mean(axis=0)
        residuals.append(matrix / np.linalg.norm(matrix, axis=1, keepdims=True))
    similarity = residuals[0] @ residuals[1].T
    off = similarity[~np.eye(len(rows), dtype=bool)]
    return {"top1": float(np.mean(similarity.argmax(axis=1) == np.arange(len(rows)))),
            "chance": 1.0 / len(rows), "diagonal": float(np.diag(similarity).mean()),
            "off_diagonal_sd": float(off.std()), "scans": float(len(rows))}


def shift_volume(volume: np.ndarray, offset: Sequence[int]) -> np.ndarray:
    """``volume`` translated by an integer ``offset`` per axis, zero-filled (a pad-crop's view):
    ``out[i + o] = volume[i]`` where both indices lie inside the grid."""
    out = np.zeros_like(volume)
    source, target = [], []
    for size, o in zip(volume.shape, offset, strict=True):
        o = int(o)
        source.append(slice(max(0, -o), size - max(0, o)))
        target.append(slice(max(0, o), size - max(0, -o)))
    out[tuple(target)] = volume[tuple(source)]
    return out


def scan_paths(subject: str, session: str) -> dict[str, str]:
    """The manifest paths (relative to the cohort folder) of a session's scans, by modality."""
    folder = f"{subject}/{session}"
    return {"t1": f"{folder}/t1.nii.gz", "falff": f"{folder}/falff.nii.gz"}
