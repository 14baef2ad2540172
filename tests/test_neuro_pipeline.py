"""The neuroimaging path end to end: subject-level splits, augmentation, training, probes,
saliency maps in brain space and multimodal links, on a simulated cohort."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from mmssl import config as cfg
from mmssl.cli import main
from mmssl.data.neuro.augment import independent_crop_flip, shared_crop_flip
from mmssl.data.neuro.datamodule import NeuroDataModule
from mmssl.data.splits import subject_splits
from mmssl.runs.build import build_datamodule as make_datamodule
from mmssl.runs.evaluation import evaluate
from mmssl.runs.rundir import RunDir
from mmssl.runs.training import pretrain


def test_subject_splits_never_leak_and_keep_unlabelled_for_pretraining():
    rng = np.random.default_rng(0)
    subjects = np.repeat([f"s{i:02d}" for i in range(30)], 2)  # two sessions each
    labels = np.repeat(rng.permutation([0] * 13 + [1] * 13 + [-1] * 4), 2)
    labels[1] = labels[0]  # sessions of a subject share its label
    seen = {}
    for fold in range(3):
        sets = subject_splits(subjects, labels, num_folds=3, fold=fold, seed=1)
        groups = [set(v) for v in sets.values()]
        assert sum(len(g) for g in groups) == len(set(groups[0].union(*groups[1:])))  # disjoint
        assert set(sets["unlabelled"]) == set(subjects[labels < 0])
        seen[fold] = set(sets["test"])
    assert set().union(*seen.values()) == set(subjects[labels >= 0])  # folds cover the cohort
    with pytest.raises(ValueError, match="at least 20 per class"):
        subject_splits(subjects, labels, num_folds=20, fold=0, seed=1)


def test_shared_crop_flip_keeps_modalities_aligned_and_reaches_every_offset():
    ones = torch.ones(4, 1, 6, 6, 6)
    patterns = set()
    for seed in range(40):
        out = shared_crop_flip({"a": ones, "b": 3 * ones}, torch.Generator().manual_seed(seed),
                               pad=1)
        assert torch.equal(out["b"], 3 * out["a"]) and out["a"].shape == ones.shape
        for b in range(4):
            first_zero = bool((out["a"][b, 0, 0] == 0).all())  # crop offset 0 on axis D
            last_zero = bool((out["a"][b, 0, -1] == 0).all())  # crop offset 2 = 2·pad
            patterns.add((first_zero, last_zero))
    assert patterns == {(True, False), (False, True), (False, False)}  # offsets 0, 2 and 1
    x = torch.rand(8, 1, 4, 4, 4)
    flipped = shared_crop_flip({"a": x, "b": x.clone()}, torch.Generator().manual_seed(0),
                               pad=0, flip=True)
    assert torch.equal(flipped["a"], flipped["b"])
    for b in range(8):  # each sample is x flipped along some subset of the axes
        candidates = [x[b].flip([d + 1 for d in range(3) if mask >> d & 1]) for mask in range(8)]
        assert any(torch.equal(flipped["a"][b], c) for c in candidates)
    assert not torch.equal(flipped["a"], x)


def test_independent_crop_flip_draws_each_modality_apart():
    x = torch.rand(16, 1, 6, 6, 6)
    out = independent_crop_flip({"a": x, "b": x.clone()}, torch.Generator().manual_seed(3),
                                pad=2, flip=True)
    padded = torch.nn.functional.pad(x, (2,) * 6)
    differing = 0
    for b in range(16):
        # Each modality's view is some crop of the padded sample, flipped along some axes.
        for name in ("a", "b"):
            candidates = [padded[b, :, i:i + 6, j:j + 6, k:k + 6].flip(
                [d + 1 for d in range(3) if mask >> d & 1])
                for i in range(5) for j in range(5) for k in range(5) for mask in range(8)]
            assert any(torch.equal(out[name][b], c) for c in candidates)
        differing += not torch.equal(out["a"][b], out["b"][b])
    assert differing >= 14  # 125 offsets × 8 flips: two equal draws are rare
    again = independent_crop_flip({"a": x, "b": x.clone()}, torch.Generator().manual_seed(3),
                                  pad=2, flip=True)
    assert all(torch.equal(out[k], again[k]) for k in out)  # seeded: reproducible
    shared = shared_crop_flip({"a": x, "b": x.clone()}, torch.Generator().manual_seed(3),
                              pad=2, flip=True)
    assert torch.equal(shared["a"], shared["b"])


def test_datamodule_draws_the_configured_augmentation(tmp_path):
    x = torch.rand(8, 1, 6, 6, 6)
    views = {}
    for shared in (True, False):
        module = NeuroDataModule(tmp_path / "manifest.csv", ("t1", "falff"), pad=2,
                                 shared_augmentation=shared)
        batch = {"t1": x.clone(), "falff": x.clone(), "index": torch.arange(8)}
        views[shared] = module.on_after_batch_transfer(batch, 0)
    assert torch.equal(views[True]["t1"], views[True]["falff"])
    assert not torch.equal(views[False]["t1"], views[False]["falff"])
    assert neuro_config(tmp_path / "manifest.csv").data.settings.augmentation.shared is False
    resolved = neuro_config(tmp_path / "manifest.csv", **{"data.neuro.augmentation.shared": True})
    assert resolved.data.settings.augmentation.shared is True


def neuro_config(manifest, **overrides):
    values = {
        "data.manifest": str(manifest), "data.batch_size": 8, "data.eval_batch_size": 16,
        "data.num_folds": 4, "model.width": 8, "trainer.epochs": 3,
        "trainer.progress_bar": False, "trainer.accelerator": "cpu",
        "probe.Cs": [0.01, 0.1, 1.0], "probe.max_iter": 500,
    }
    values.update(overrides)
    return cfg.resolve("neuro-quick", None, values)


@pytest.fixture(scope="module")
def neuro_run(simulated_cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("neuro") / "run"
    pretrain(neuro_config(simulated_cohort, **{"trainer.log_every_n_steps": 1}), out)
    evaluate(out)
    return out


def test_splits_are_saved_and_subject_level(neuro_run):
    table = pd.read_csv(neuro_run / "splits.csv")
    assert table.groupby("subject")["subject_set"].nunique().max() == 1
    probe = table[table["probe_split"].notna() & (table["probe_split"] != "")]
    assert probe.groupby("probe_split")["subject"].apply(lambda s: s.is_unique).all()
    assert not table.loc[table["subject_set"].isin(["val", "test"]), "pretrain"].any()


def test_probe_is_clearly_above_chance(neuro_run):
    metrics = json.loads((neuro_run / "metrics.json").read_text())
    assert set(metrics["test"]) == {"t1", "falff", "joint"}
    for values in metrics["test"].values():
        assert {"roc_auc", "balanced_accuracy", "accuracy", "brier"} <= set(values)
    assert metrics["test"]["joint"]["roc_auc"] >= 0.75, metrics["test"]


def test_saliency_maps_of_every_method_are_nifti_in_the_input_space(neuro_run):
    assert main(["saliency", str(neuro_run), "--samples", "2", "--ig-steps", "4",
                 "--eg-samples", "2", "--methods", "latent,smoothgrad,ig,eg",
                 "--units", "4", "--split", "test"]) == 0
    report = json.loads((neuro_run / "saliency.json").read_text())
    config = cfg.load(RunDir(neuro_run).config)
    datamodule = make_datamodule(config)
    datamodule.setup("fit")
    grid = datamodule.cohort.grid
    for modality in ("t1", "falff"):
        entry = report["modalities"][modality]
        for method in ("latent", "smoothgrad", "ig", "eg"):
            assert {f"{method}_{g}" for g in ("patients", "controls", "difference", "all")} <= set(
                entry["maps"])
            image = nib.load(neuro_run / entry["maps"][f"{method}_all"])
            assert image.shape == tuple(grid.shape)
            assert np.allclose(image.affine, grid.affine)
            assert np.isfinite(np.asarray(image.dataobj)).all()
            assert 0.0 <= entry["localisation_auc"][f"{method}_difference"] <= 1.0
        maps = neuro_run / "saliency" / "maps" / "test"
        per_subject = np.load(maps / f"{modality}-latent-u4-p95.npy")
        assert per_subject.shape == (report["subjects"], *grid.shape)
        assert per_subject.min() >= 0 and per_subject.max() <= 1  # thresholded, scaled units
    for figure in report["figures"]:
        assert not Path(figure).is_absolute()  # recorded relative to the run directory
        with open(neuro_run / figure, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_cached_maps_keep_attributions_too_small_for_float16(neuro_run):
    """A probe's gradient per voxel shrinks with the grid (and with a strongly regularised
    probe); the cache must return what was computed, not float16's rounding of it to zero."""
    from mmssl.runs.brainrun import MapSettings, open_brain_run

    settings = MapSettings(ig_steps=3, batch_size=8)
    brain_run = open_brain_run(neuro_run)
    brain_run.probe("falff").model[-1].coef_ *= 1e-6  # attributions around 1e-9 and below
    path = neuro_run / "saliency" / "maps" / "test" / f"falff-{settings.key('ig')}.npy"
    try:
        computed = brain_run.maps("falff", "ig", "test", settings)
        assert 0 < np.abs(computed).max() < 1e-5  # below float16's smallest normal number
        again = open_brain_run(neuro_run).maps("falff", "ig", "test", settings)  # the cache
        np.testing.assert_array_equal(again, computed)
        assert np.load(path).dtype == np.float32
    finally:
        path.unlink(missing_ok=True)


def test_cached_maps_are_made_again_after_another_evaluation(neuro_run):
    """Maps depend on the evaluation's probe: once ``probe.json`` changes (``mmssl evaluate``
    again), the maps cached from the earlier one must not be reused."""
    from mmssl.runs.brainrun import MapSettings, open_brain_run

    settings = MapSettings(ig_steps=3, batch_size=8)
    probe_json = neuro_run / "probe.json"
    original = probe_json.read_bytes()
    path = neuro_run / "saliency" / "maps" / "test" / f"falff-{settings.key('ig')}.npy"
    try:
        first = open_brain_run(neuro_run).maps("falff", "ig", "test", settings)
        info = json.loads(original)
        info["default"]["chosen_C"]["falff"] *= 1e-3  # another regularisation, another probe
        probe_json.write_text(json.dumps(info))
        again = open_brain_run(neuro_run).maps("falff", "ig", "test", settings)
        assert np.abs(again).max() < 0.5 * np.abs(first).max()
        assert (neuro_run / "saliency" / "maps" / "test" / "evaluation.txt").is_file()
    finally:
        probe_json.write_bytes(original)
        path.unlink(missing_ok=True)


def test_regions_tests_groups_and_names_clusters(neuro_run):
    assert main(["regions", str(neuro_run), "--method", "latent", "--units", "4",
                 "--permutations", "50", "--split", "all"]) == 0
    report = json.loads((neuro_run / "regions.json").read_text())
    assert report["covariates"] == ["age", "sex", "site"]
    assert report["subjects"] == report["patients"] + (report["subjects"] - report["patients"])
    clusters = pd.read_csv(neuro_run / "regions.csv")
    assert list(clusters.columns[:3]) == ["modality", "cluster", "n_voxels"]
    summary = pd.read_csv(neuro_run / "regions" / "regions_summary.csv")
    assert {"t1", "falff"} == set(summary["modality"])
    # the method's own copies survive a later run of another method
    assert json.loads((neuro_run / "regions" / "regions_latent.json").read_text()) == report
    assert (neuro_run / "regions" / "regions_latent.csv").read_text() == \
        (neuro_run / "regions.csv").read_text()
    assert (neuro_run / "regions" / "regions_summary_latent.csv").is_file()
    for entry in report["modalities"].values():
        t_map = nib.load(neuro_run / entry["maps"]["t"])
        assert np.isfinite(np.asarray(t_map.dataobj)).all()
        assert entry["planted_regions"]  # the simulated cohort names its planted regions
        assert 0.0 <= entry["localisation_auc"]["t"] <= 1.0
        assert 0.0 <= entry["input_localisation_auc"] <= 1.0  # the model-free reference
        assert -1.0 <= entry["input_abs_t_correlation"] <= 1.0


def test_regions_of_the_inputs_is_the_glm_of_the_smoothed_volumes(neuro_run):
    """``--method input --smooth F`` tests the preprocessed volumes themselves after smoothing
    inside the brain: its t map equals a numpy OLS of those volumes, the reference a learned
    map's report quotes is the same number, and the planted T1 atrophy is found."""
    from mmssl.evaluation.group import design_matrix
    from mmssl.evaluation.smoothing import smooth_within_mask
    from mmssl.runs.brainrun import open_brain_run

    assert main(["regions", str(neuro_run), "--method", "input", "--smooth", "8",
                 "--permutations", "20"]) == 0
    report = json.loads((neuro_run / "regions" / "regions_input_s8.json").read_text())
    assert report["smooth_fwhm_mm"] == 8.0
    assert report["modalities"]["t1"]["maps"]["t"] == "regions/t1_input_s8_t.nii.gz"
    brain_run = open_brain_run(neuro_run)
    subjects = brain_run.subjects("all", ["t1"])
    volumes = brain_run.volumes(brain_run.rows("all", ["t1"]), "t1")[:, 0].numpy()
    smoothed = smooth_within_mask(volumes, brain_run.brain, 8.0, brain_run.grid.voxel_size)
    design = design_matrix(subjects["label"].to_numpy(), subjects[["age", "sex", "site"]])
    matrix = design.matrix
    y = smoothed[:, brain_run.brain].astype(np.float64)
    beta, *_ = np.linalg.lstsq(matrix, y, rcond=None)
    residual = y - matrix @ beta
    sigma2 = (residual ** 2).sum(0) / (len(y) - matrix.shape[1])
    t = beta[0] / np.sqrt(sigma2 * np.linalg.inv(matrix.T @ matrix)[0, 0])
    t_map = np.asarray(nib.load(neuro_run / report["modalities"]["t1"]["maps"]["t"]).dataobj)
    np.testing.assert_allclose(t_map[brain_run.brain], t, rtol=1e-3, atol=1e-3)
    entry = report["modalities"]["t1"]
    assert "input_localisation_auc" not in entry  # it is the reference
    assert entry["localisation_auc"]["t"] > 0.7
    assert main(["regions", str(neuro_run), "--method", "latent", "--units", "4", "--smooth",
                 "8", "--permutations", "20"]) == 0
    latent = json.loads((neuro_run / "regions" / "regions_latent_s8.json").read_text())
    assert json.loads((neuro_run / "regions.json").read_text()) == latent  # the latest
    assert latent["modalities"]["t1"]["input_localisation_auc"] == pytest.approx(
        entry["localisation_auc"]["t"], abs=1e-9)
    # how closely the learned map's |t| follows the inputs': Pearson's r of the two written maps
    assert "input_abs_t_correlation" not in entry
    latent_t = np.asarray(nib.load(neuro_run / latent["modalities"]["t1"]["maps"]["t"]).dataobj)
    expected = np.corrcoef(np.abs(latent_t[brain_run.brain]), np.abs(t_map[brain_run.brain]))
    assert latent["modalities"]["t1"]["input_abs_t_correlation"] == pytest.approx(
        expected[0, 1], abs=1e-4)


def test_regions_of_a_cohort_without_ground_truth_still_quotes_the_inputs(neuro_run, monkeypatch,
                                                                         capsys):
    """On a real cohort (no planted truth) nothing can be localised, but a learned map is still
    read against the inputs' own test: the report gives how closely its |t| follows theirs."""
    import dataclasses

    import mmssl.runs.regions as regions
    from mmssl.runs.brainrun import open_brain_run

    def real_cohort(out, device=None):
        return dataclasses.replace(open_brain_run(out, device=device), truth=None)

    monkeypatch.setattr(regions, "open_brain_run", real_cohort)
    assert main(["regions", str(neuro_run), "--method", "latent", "--units", "4",
                 "--permutations", "10"]) == 0
    assert "its |t| follows the inputs' own test at r = " in capsys.readouterr().out
    report = json.loads((neuro_run / "regions.json").read_text())
    for entry in report["modalities"].values():
        assert "localisation_auc" not in entry and "input_localisation_auc" not in entry
        assert -1.0 <= entry["input_abs_t_correlation"] <= 1.0


def test_audit_decodes_diagnosis_covariates_and_planted_latents(neuro_run, capsys):
    assert main(["audit", str(neuro_run), "--folds", "3", "--components", "8"]) == 0
    assert "What the representation encodes" in capsys.readouterr().out
    report = json.loads((neuro_run / "audit.json").read_text())
    table = pd.read_csv(neuro_run / "audit.csv")
    assert set(table["source"]) == {"t1 z", "t1 inputs", "falff z", "falff inputs"}
    assert {"diagnosis", "age", "site", "severity (patients)", "coupling"} <= set(
        table["variable"])
    site = table[table["variable"] == "site"].iloc[0]
    assert site["metric"] == "balanced_accuracy" and site["chance"] == pytest.approx(1 / 3,
                                                                                     abs=1e-4)
    t1_site = table[(table["variable"] == "site") & (table["source"] == "t1 inputs")]
    assert t1_site["score"].item() > 0.7  # the simulated sites differ in T1 contrast
    # the representation's row is decode() of the run's features and labels, train+val+test
    from mmssl.evaluation.audit import decode
    from mmssl.runs.evaluation import read_features

    features, labels = read_features(neuro_run / "features.npz")
    splits = ("train", "val", "test")
    expected = decode(np.concatenate([features[s]["t1"] for s in splits]),
                      np.concatenate([labels[s] for s in splits]), kind="categorical",
                      folds=3, seed=0)
    diagnosis = table[(table["variable"] == "diagnosis") & (table["source"] == "t1 z")]
    assert diagnosis["metric"].item() == "roc_auc"
    assert diagnosis["score"].item() == pytest.approx(expected.score, abs=1e-4)
    for entry in report["modalities"].values():
        assert entry["subjects"] == len(pd.read_csv(neuro_run / "splits.csv").query(
            "probe_split == probe_split"))  # every labelled evaluation subject
    assert (neuro_run / report["figures"][0]).read_bytes()[:4] == b"\x89PNG"
    assert main(["audit", str(neuro_run), "--folds", "1"]) == 2


def test_audit_checks_the_objective_on_unaugmented_subjects(neuro_run):
    """The objective check: the logged values are metrics.csv's, the unaugmented losses are
    the mean of compute_loss over the stated batches, and the model's mode is left alone."""
    from mmssl.runs.audit import objective_check
    from mmssl.runs.brainrun import open_brain_run

    curves = pd.read_csv(neuro_run / "metrics.csv")
    brain_run = open_brain_run(neuro_run)
    model = brain_run.loaded.model
    model.train()
    check = objective_check(brain_run, repeats=2, seed=5)
    assert model.training  # restored
    assert check["train_logged_final"] == pytest.approx(
        curves["train/loss"].dropna().iloc[-3:].mean())
    assert check["val_logged_first"] == pytest.approx(curves["val/loss"].dropna().iloc[0])
    # Oracle: the same partitions, computed here in eval mode.
    model.eval()
    rng = np.random.default_rng(5)
    size = brain_run.loaded.config.data.batch_size
    for split in ("train", "val"):
        rows = brain_run.rows(split, brain_run.modalities)
        labels = torch.as_tensor(brain_run.subjects(split, brain_run.modalities)["label"]
                                 .to_numpy(copy=True))
        size_here = min(size, len(rows))
        losses = []
        for repeat in range(2):
            order = torch.from_numpy(rng.permutation(len(rows)))
            for start in range(0, len(rows) - size_here + 1, size_here):
                index = order[start:start + size_here]
                batch = {m: brain_run.volumes(rows[index.numpy()], m)
                         for m in brain_run.modalities}
                batch["label"] = labels[index]
                with torch.no_grad():
                    loss, _ = model.compute_loss(
                        batch, torch.Generator().manual_seed(5 + 7919 * repeat + start))
                losses.append(float(loss))
        assert check[f"{split}_unaugmented"] == pytest.approx(np.mean(losses), rel=1e-5)
        assert check[f"{split}_subjects"] == len(rows)
    assert check["generalisation_gap"] == pytest.approx(
        check["val_unaugmented"] - check["train_unaugmented"])
    assert check["shortcut_gap"] == pytest.approx(
        check["train_unaugmented"] - check["train_logged_final"])


def test_report_shows_regions_and_audit_with_their_figures(neuro_run):
    """`mmssl report` of a brain run has the group inference (with the model-free reference
    beside the map's localisation) and the audit, each with its figures embedded."""
    assert main(["regions", str(neuro_run), "--method", "latent", "--units", "4",
                 "--permutations", "20"]) == 0
    assert main(["audit", str(neuro_run), "--folds", "3", "--components", "0"]) == 0
    assert main(["report", str(neuro_run)]) == 0
    page = (neuro_run / "report.html").read_text()
    assert "Brain regions: patients vs controls" in page
    assert "inputs&#x27; localisation AUC" in page or "inputs' localisation AUC" in page
    assert "What the representation encodes" in page and "balanced_accuracy" in page
    markdown = (neuro_run / "report.md").read_text()
    assert "audit.png" in markdown and "t1_latent_glass.png" in markdown
    assert "shortcut gap" in markdown and "generalisation gap" in page


def test_links_report_test_correlations_against_a_permutation_null(neuro_run):
    assert main(["links", str(neuro_run), "--permutations", "20", "--components", "2"]) == 0
    report = json.loads((neuro_run / "links.json").read_text())
    assert report["confounds"] == ["label", "age", "sex", "site"]
    assert len(report["test_correlations"]) == 2 and len(report["p_holm"]) == 2
    assert np.asarray(report["null_correlations"]).shape == (20, 2)
    table = pd.read_csv(neuro_run / "links" / "links.csv")
    assert {"test_r", "p_holm", "t1_regions", "falff_regions", "t1_r_severity",
            "falff_r_coupling", "t1_coupling_auc"} <= set(table.columns)
    assert nib.load(neuro_run / report["maps"]["component0_t1"]).shape == (32, 32, 32)
    assert (neuro_run / "links" / "pair1.png").read_bytes()[:4] == b"\x89PNG"


def test_neuro_needs_a_manifest_and_modalities(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--dataset", "neuro"]) == 2
    assert "--modalities t1,falff" in " ".join(capsys.readouterr().out.split())
    assert main(["run", "--dataset", "neuro", "--modalities", "t1,falff"]) == 2
    assert "needs a manifest CSV (--manifest FILE)" in " ".join(capsys.readouterr().out.split())
    assert main(["saliency", str(tmp_path)]) == 2


def test_constant_learning_rate_runs_evaluate_the_best_checkpoint(neuro_run):
    """The neuro presets keep the learning rate constant and evaluate the checkpoint of the
    lowest validation loss (the authors' choice), and metrics.json says which one."""
    metrics = json.loads((neuro_run / "metrics.json").read_text())
    record = json.loads((neuro_run / "pretrain.json").read_text())
    assert metrics["checkpoint"]["choice"] == "best"
    assert metrics["checkpoint"]["file"] == "checkpoints/best.ckpt"
    assert metrics["checkpoint"]["epoch"] == record["best_epoch"]
    assert 1 <= record["best_epoch"] <= record["epochs"]
