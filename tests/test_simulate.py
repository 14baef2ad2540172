"""Tests of the synthetic paired T1/fALFF cohort simulator (:mod:`mmssl.data.simulate`).

The statistical tests analyse a small cohort on a coarse 6 mm grid the way a user would analyse
real data (per-scan global normalisation, voxel-wise two-sample t-tests, region means) and check
that they recover exactly the structure the ground truth files claim was planted.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")
pytest.importorskip("nilearn")

from scipy import ndimage, stats  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

import mmssl.data.simulate as simulate  # noqa: E402
from mmssl.data.simulate import (  # noqa: E402
    FALFF_REGIONS,
    MANIFEST_COLUMNS,
    T1_REGIONS,
    SimulationSettings,
    draw_subjects,
    load_anatomy,
    mni_grid,
    planted_effect_maps,
    planted_effect_masks,
    region_weights,
    save_nifti,
    simulate_cohort,
)

VOXEL = 6.0
MAIN = SimulationSettings(subjects=24, seed=0, voxel_size=VOXEL)
MULTI = SimulationSettings(
    subjects=10, seed=3, voxel_size=VOXEL, sessions=2, patient_fraction=0.4,
    unlabelled_fraction=0.3, label_names=("HC", "PT"),
)


def read_manifest(path: Path) -> list[dict[str, str]]:
    """The manifest rows, after checking the header."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == MANIFEST_COLUMNS
        return list(reader)


def load(path: Path) -> np.ndarray:
    """The stored array of a NIfTI file, without scaling or casting."""
    return np.asarray(nib.load(path).dataobj)


def region_means(folder: Path, rows: list[dict[str, str]], modality: str,
                 region: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Per scan: mean in ``region`` divided by the mean in the brain (global normalisation)."""
    values = []
    for row in rows:
        volume = load(folder / row[modality]).astype(np.float64)
        values.append(volume[region].mean() / volume[brain].mean())
    return np.asarray(values)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 subjects (12 patients) at 6 mm with the default effects and noise."""
    out = tmp_path_factory.mktemp("cohort")
    manifest = simulate_cohort(out, MAIN, progress=False)
    assert manifest == out / "manifest.csv"
    return out


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 subjects, 2 sessions each, 40 % patients, 30 % unlabelled, custom label names."""
    out = tmp_path_factory.mktemp("multi")
    simulate_cohort(out, MULTI, progress=True)
    return out


@pytest.fixture(scope="module")
def brain(cohort: Path) -> np.ndarray:
    """The brain mask of the 6 mm grid, as written with the cohort."""
    return load(cohort / "ground_truth" / "brain_mask.nii.gz") > 0


# --------------------------------------------------------------------------- grid, settings


@pytest.mark.parametrize("voxel_size", [3.0, 6.0])
def test_grid_is_nilearns_resampled_template_grid(voxel_size: float) -> None:
    from nilearn import datasets, image

    template = datasets.load_mni152_template(resolution=2)
    resampled = image.resample_img(
        template, target_affine=np.diag([voxel_size] * 3), interpolation="nearest",
        force_resample=True, copy_header=True,
    )
    shape, affine = mni_grid(voxel_size)
    assert shape == resampled.shape
    np.testing.assert_allclose(affine, resampled.affine)
    if voxel_size == 3.0:
        assert shape == (67, 79, 64)
        assert shape != (64, 64, 64)  # the preprocessing must resample to its training grid


@pytest.mark.parametrize(
    "changes",
    [
        {"subjects": 0}, {"seed": -1}, {"patient_fraction": 1.5}, {"sessions": 0},
        {"unlabelled_fraction": -0.1}, {"voxel_size": 1.0}, {"t1_effect": 1.0},
        {"noise": -0.01}, {"misregistration_mm": -1.0}, {"label_names": ("AD", "AD")},
    ],
)
def test_invalid_settings_are_rejected(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SimulationSettings(**changes)  # type: ignore[arg-type]


def test_subject_draws_follow_the_settings() -> None:
    for fraction, unlabelled in ((0.5, 0.0), (0.3, 0.25), (1.0, 0.5), (0.0, 1.0)):
        draws = draw_subjects(SimulationSettings(
            subjects=40, seed=1, patient_fraction=fraction, unlabelled_fraction=unlabelled,
        ))
        assert sum(d.patient for d in draws) == round(fraction * 40)
        assert sum(not d.labelled for d in draws) == round(unlabelled * 40)
    draws = draw_subjects(SimulationSettings(subjects=2000, seed=2))
    patient = np.array([d.patient for d in draws])
    age = np.array([d.age for d in draws])
    severity = np.array([d.severity for d in draws])
    assert [d.subject for d in draws[:2]] == ["sub-0001", "sub-0002"]
    assert age.min() >= 60 and age.max() <= 85
    np.testing.assert_array_equal(age, np.round(age, 1))
    # Patients are older on average, but age is far from separating the groups.
    assert 2.0 < age[patient].mean() - age[~patient].mean() < 4.0
    assert 0.55 < roc_auc_score(patient, age) < 0.75
    assert np.all(severity[~patient] == 0.0)
    assert severity[patient].min() >= 0.3 and severity[patient].max() <= 1.0
    assert severity[patient].std() > 0.15
    assert 0.45 < np.mean([d.sex == "F" for d in draws]) < 0.55


# --------------------------------------------------------------------------- files, manifest


def test_manifest_and_volumes(cohort: Path, brain: np.ndarray) -> None:
    rows = read_manifest(cohort / "manifest.csv")
    assert len(rows) == MAIN.subjects
    assert len({r["subject"] for r in rows}) == MAIN.subjects
    assert {r["session"] for r in rows} == {"ses-1"}
    labels = [r["label"] for r in rows]
    assert labels.count("AD") == labels.count("CN") == 12
    for row in rows:
        severity = float(row["severity"])
        assert (severity > 0) == (row["label"] == "AD")
        assert severity == 0.0 or 0.3 <= severity <= 1.0
        assert 60.0 <= float(row["age"]) <= 85.0 and row["sex"] in {"F", "M"}
        assert row["t1"] == f"{row['subject']}/ses-1/t1.nii.gz"
        assert row["falff"] == f"{row['subject']}/ses-1/falff.nii.gz"
    shape, affine = mni_grid(VOXEL)
    near_brain = ndimage.binary_dilation(brain)
    for row in rows[:6]:
        for modality in ("t1", "falff"):
            assert not Path(row[modality]).is_absolute()
            img = nib.load(cohort / row[modality])
            assert img.shape == shape
            np.testing.assert_allclose(img.affine, affine)
            assert int(img.header["sform_code"]) == int(img.header["qform_code"]) == 4
            data = np.asarray(img.dataobj)
            assert data.dtype == np.float32
            assert np.all(np.isfinite(data)) and data.min() >= 0.0
            assert not np.any(data[~near_brain])  # masked (up to the misregistration)
            assert data[brain].mean() > 0.1
    for row in rows:  # every referenced file exists
        assert (cohort / row["t1"]).is_file() and (cohort / row["falff"]).is_file()
    assert not list(cohort.rglob("*.tmp"))


def test_sessions_and_unlabelled_subjects(multi: Path) -> None:
    rows = read_manifest(multi / "manifest.csv")
    assert len(rows) == MULTI.subjects * MULTI.sessions
    by_subject: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_subject.setdefault(row["subject"], []).append(row)
    assert len(by_subject) == MULTI.subjects
    for scans in by_subject.values():
        assert [s["session"] for s in scans] == ["ses-1", "ses-2"]
        for key in ("label", "age", "sex", "severity"):
            assert scans[0][key] == scans[1][key]
        assert scans[0]["t1"] != scans[1]["t1"]
        assert not np.array_equal(load(multi / scans[0]["t1"]), load(multi / scans[1]["t1"]))
    first = [scans[0] for scans in by_subject.values()]
    patients = [r for r in first if float(r["severity"]) > 0]
    assert len(patients) == 4  # round(0.4 * 10)
    labels = [r["label"] for r in first]
    assert labels.count("") == 3  # round(0.3 * 10), stratified: 1 patient, 2 controls
    assert sum(r["label"] == "" for r in patients) == 1
    for row in first:
        if row["label"]:
            assert row["label"] == ("PT" if float(row["severity"]) > 0 else "HC")

    # Sessions are the same subject: after removing the cohort mean, two fALFF maps of one
    # subject resemble each other more than maps of different subjects (its individual field).
    # (In the T1 the 5 % individual grey-matter field is weaker than the 5 % scan noise.)
    brain = load(multi / "ground_truth" / "brain_mask.nii.gz") > 0
    falff = np.stack([load(multi / r["falff"])[brain].astype(np.float64) for r in rows])
    falff /= falff.mean(axis=1, keepdims=True)
    corr = np.corrcoef(falff - falff.mean(axis=0))
    subject = np.array([r["subject"] for r in rows])
    same = (subject[:, None] == subject[None, :]) & ~np.eye(len(rows), dtype=bool)
    different = subject[:, None] != subject[None, :]
    assert corr[same].mean() > corr[different].mean() + 0.2


def test_reproducible_and_seed_dependent(tmp_path: Path) -> None:
    settings = SimulationSettings(subjects=3, seed=5, voxel_size=VOXEL)
    a = simulate_cohort(tmp_path / "a", settings, progress=False).parent
    b = simulate_cohort(tmp_path / "b", settings, progress=False).parent
    c = simulate_cohort(tmp_path / "c", dataclasses.replace(settings, seed=6),
                        progress=False).parent
    assert (a / "manifest.csv").read_bytes() == (b / "manifest.csv").read_bytes()
    assert (a / "manifest.csv").read_bytes() != (c / "manifest.csv").read_bytes()
    for row in read_manifest(a / "manifest.csv"):
        for modality in ("t1", "falff"):
            first, second = load(a / row[modality]), load(b / row[modality])
            assert first.tobytes() == second.tobytes()
            assert (a / row[modality]).read_bytes() == (b / row[modality]).read_bytes()
            assert not np.array_equal(first, load(c / row[modality]))
    assert (a / "ground_truth" / "simulation.json").read_bytes() == (
        b / "ground_truth" / "simulation.json").read_bytes()


# --------------------------------------------------------------------------- ground truth


def test_ground_truth_files(cohort: Path, brain: np.ndarray) -> None:
    masks_paths = planted_effect_masks(cohort)
    assert masks_paths == planted_effect_masks(cohort / "manifest.csv")
    assert set(masks_paths) == {"t1", "falff"}
    masks = {k: load(p) for k, p in masks_paths.items()}
    maps = {k: load(p) for k, p in planted_effect_maps(cohort).items()}
    anatomy = load_anatomy(VOXEL)
    for key, regions in (("t1", T1_REGIONS), ("falff", FALFF_REGIONS)):
        assert masks[key].dtype == np.uint8 and set(np.unique(masks[key])) == {0, 1}
        mask = masks[key] > 0
        assert mask.sum() >= 20 and not np.any(mask & ~brain)
        assert maps[key].dtype == np.float32
        assert maps[key].min() >= 0.0 and maps[key].max() == pytest.approx(1.0)
        assert np.all(maps[key][mask] > 0)
        support = region_weights(regions, anatomy) > 0
        assert not np.any(maps[key][~support])  # no effect outside the declared regions
        for region in regions:  # every region is marked, around its centre
            voxel = np.round(np.linalg.solve(anatomy.affine, [*region.centre_mm, 1.0])[:3])
            i, j, k = voxel.astype(int)
            assert mask[i - 1:i + 2, j - 1:j + 2, k - 1:k + 2].any(), region.name
    assert not np.any((masks["t1"] > 0) & (maps["falff"] > 0))  # T1 effect is not fALFF's
    assert not np.any((masks["falff"] > 0) & (maps["t1"] > 0))

    info = json.loads((cohort / "ground_truth" / "simulation.json").read_text())
    expected = dataclasses.asdict(MAIN)
    expected["label_names"] = list(MAIN.label_names)
    assert info["settings"] == expected
    assert [r["centre_mm"] for r in info["regions"]["t1"]] == [list(r.centre_mm)
                                                             for r in T1_REGIONS]
    assert [r["centre_mm"] for r in info["regions"]["falff"]] == [list(r.centre_mm)
                                                                for r in FALFF_REGIONS]
    assert "severity" in info["link"]
    assert len(info["scans"]) == MAIN.subjects

    with pytest.raises(FileNotFoundError):
        planted_effect_masks(cohort / "sub-001")


def test_planted_effects_are_exactly_where_the_ground_truth_says(tmp_path: Path) -> None:
    """Noise-free cohorts with and without effects differ only in patients, only in the maps."""
    base = SimulationSettings(subjects=6, seed=9, voxel_size=VOXEL, noise=0.0,
                              misregistration_mm=0.0)
    with_effect = simulate_cohort(tmp_path / "with", base, progress=False).parent
    without = simulate_cohort(
        tmp_path / "without", dataclasses.replace(base, t1_effect=0.0, falff_effect=0.0),
        progress=False,
    ).parent
    maps = {k: load(p) for k, p in planted_effect_maps(with_effect).items()}
    anatomy = load_anatomy(VOXEL)
    falff_weight = region_weights(FALFF_REGIONS, anatomy)
    rows = read_manifest(with_effect / "manifest.csv")
    assert rows == read_manifest(without / "manifest.csv")
    assert 0 < sum(float(r["severity"]) > 0 for r in rows) < len(rows)
    for row in rows:
        severity = float(row["severity"])
        t1, t1_0 = (load(d / row["t1"]).astype(np.float64) for d in (with_effect, without))
        falff, falff_0 = (load(d / row["falff"]).astype(np.float64)
                          for d in (with_effect, without))
        if severity == 0.0:
            np.testing.assert_array_equal(t1, t1_0)
            np.testing.assert_array_equal(falff, falff_0)
            continue
        assert not np.any((t1 != t1_0) & (maps["t1"] == 0))
        assert np.all(t1 <= t1_0 + 1e-6)  # grey-matter loss darkens the T1
        assert np.all(falff == falff_0) or not np.any((falff != falff_0) & (maps["falff"] == 0))
        # fALFF: multiplicative decrease by exactly 1 - falff_effect * severity * weight.
        inside = falff_0 > 0.05
        ratio = falff[inside] / falff_0[inside]
        np.testing.assert_allclose(
            ratio, 1.0 - base.falff_effect * severity * falff_weight[inside], atol=1e-5
        )


# --------------------------------------------------------------------------- statistics


def test_voxelwise_t_test_finds_the_planted_effects(cohort: Path, brain: np.ndarray) -> None:
    rows = read_manifest(cohort / "manifest.csv")
    patient = np.array([r["label"] == "AD" for r in rows])
    masks = {k: load(p)[brain] > 0 for k, p in planted_effect_masks(cohort).items()}
    auc = {}
    for modality in ("t1", "falff"):
        scans = np.stack([load(cohort / r[modality])[brain].astype(np.float64) for r in rows])
        scans /= scans.mean(axis=1, keepdims=True)  # global (proportional) scaling
        t = stats.ttest_ind(scans[patient], scans[~patient], axis=0).statistic
        for key, mask in masks.items():
            auc[modality, key] = roc_auc_score(mask, np.abs(t))
        assert np.median(t[masks[modality]]) < -2.0  # both effects are decreases
    assert auc["t1", "t1"] > 0.85
    assert auc["falff", "falff"] > 0.85
    # The T1 effect is not where the fALFF effect is, and vice versa.
    assert auc["t1", "falff"] < 0.7 and auc["t1", "t1"] - auc["t1", "falff"] > 0.25
    assert auc["falff", "t1"] < 0.7 and auc["falff", "falff"] - auc["falff", "t1"] > 0.25


def test_severity_links_the_two_modalities(cohort: Path, brain: np.ndarray) -> None:
    rows = read_manifest(cohort / "manifest.csv")
    severity = np.array([float(r["severity"]) for r in rows])
    patient = severity > 0
    masks = {k: load(p) > 0 for k, p in planted_effect_masks(cohort).items()}
    t1 = region_means(cohort, rows, "t1", masks["t1"], brain)
    falff = region_means(cohort, rows, "falff", masks["falff"], brain)
    # Each region tracks the latent severity across patients...
    assert stats.pearsonr(t1[patient], severity[patient]).statistic < -0.5
    assert stats.pearsonr(falff[patient], severity[patient]).statistic < -0.5
    # ...so the two modalities co-vary across patients (both decrease with severity)...
    linked = stats.pearsonr(t1[patient], falff[patient])
    assert linked.statistic > 0.5 and linked.pvalue < 0.05
    # ...but not across controls, whose severity is 0.
    unlinked = stats.pearsonr(t1[~patient], falff[~patient])
    assert unlinked.pvalue > 0.01 and abs(unlinked.statistic) < linked.statistic
    # The link is specific to the planted regions: the T1 values in the fALFF region carry none.
    t1_elsewhere = region_means(cohort, rows, "t1", masks["falff"], brain)
    assert stats.pearsonr(t1_elsewhere[patient], severity[patient]).pvalue > 0.01


def test_noise_free_sessions_differ_by_the_recorded_scale(tmp_path: Path) -> None:
    settings = SimulationSettings(subjects=2, seed=4, voxel_size=VOXEL, sessions=2, noise=0.0,
                                  misregistration_mm=0.0)
    out = simulate_cohort(tmp_path, settings, progress=False).parent
    scans = json.loads((out / "ground_truth" / "simulation.json").read_text())["scans"]
    rows = read_manifest(out / "manifest.csv")
    for first, second in ((0, 1), (2, 3)):
        assert rows[first]["subject"] == rows[second]["subject"]
        for modality in ("t1", "falff"):
            a = load(out / rows[first][modality]).astype(np.float64)
            b = load(out / rows[second][modality]).astype(np.float64)
            factor = scans[second][f"{modality}_scale"] / scans[first][f"{modality}_scale"]
            np.testing.assert_allclose(b, a * factor, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- atomicity


def test_failure_leaves_no_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = SimulationSettings(subjects=4, seed=1, voxel_size=VOXEL)
    simulate_cohort(tmp_path, settings, progress=False)
    assert (tmp_path / "manifest.csv").is_file()  # an earlier, complete cohort

    real_save = simulate.save_nifti
    scans_written: list[Path] = []

    def failing_save(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
        if path.parent.name.startswith("ses-"):
            if len(scans_written) == 4:
                raise RuntimeError("disk full")
            scans_written.append(path)
        real_save(path, array, affine)

    monkeypatch.setattr(simulate, "save_nifti", failing_save)
    with pytest.raises(RuntimeError, match="disk full"):
        simulate_cohort(tmp_path, dataclasses.replace(settings, seed=2), progress=False)
    assert len(scans_written) == 4
    assert not (tmp_path / "manifest.csv").exists()
    assert not list(tmp_path.rglob("*.tmp"))


def test_save_nifti_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "volume.nii.gz"
    volume = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    save_nifti(target, volume, np.eye(4))
    np.testing.assert_array_equal(load(target), volume.astype(np.float32))

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("rename failed")

    monkeypatch.setattr(simulate.os, "replace", broken_replace)
    with pytest.raises(OSError, match="rename failed"):
        save_nifti(target, volume + 1, np.eye(4))
    np.testing.assert_array_equal(load(target), volume.astype(np.float32))  # old file intact
    assert [p.name for p in tmp_path.iterdir()] == ["volume.nii.gz"]
