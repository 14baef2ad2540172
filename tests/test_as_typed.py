"""The command line the way users type it: from their own working directory, relative paths
only — run, evaluate, resume, sweep, claims, report — and run directories that still work after
being moved."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TINY = ["--preset", "quick", "--set", "model.width=8", "--set", "model.latent_dim=16",
        "--set", "model.head_dim=16", "--set", "probe.Cs=[1.0]", "--set",
        "trainer.progress_bar=false", "--batch-size", "16", "--epochs", "1"]


def mmssl(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed ``mmssl`` script, run in ``cwd`` like a user would."""
    script = Path(sys.executable).parent / "mmssl"
    return subprocess.run([str(script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                                            "HOME": str(cwd)})


def ok(done: subprocess.CompletedProcess[str]) -> str:
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Traceback" not in output
    return output


@pytest.fixture
def project(tmp_path: Path, tiny_mnist_dir: Path) -> Path:
    """A user's project folder: data and a config file inside, referred to relatively."""
    shutil.copytree(tiny_mnist_dir, tmp_path / "data" / "mnist")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "small.yaml").write_text(
        "data:\n  data_dir: ../data/mnist\nobjective:\n  name: XX-RR\n")
    return tmp_path


def test_run_evaluate_resume_report_with_relative_paths(project: Path) -> None:
    ok(mmssl(project, "run", *TINY, "--config", "configs/small.yaml", "--out", "runs/a"))
    run = project / "runs" / "a"
    record = json.loads((run / "pretrain.json").read_text())
    assert record["last_checkpoint"] == "checkpoints/last.ckpt"
    assert record["best_checkpoint"] == "checkpoints/best.ckpt"
    assert "data_dir: " + str(project / "data" / "mnist") in (run / "config.yaml").read_text()
    metrics = json.loads((run / "metrics.json").read_text())

    # From another working directory, by a relative path to the same run.
    elsewhere = project / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    ok(mmssl(elsewhere, "evaluate", "../../runs/a"))
    assert json.loads((run / "metrics.json").read_text()) == metrics
    ok(mmssl(elsewhere, "run", "--resume", "--out", "../../runs/a"))  # finished: evaluates
    ok(mmssl(project, "links", "runs/a", "--permutations", "10"))
    links = json.loads((run / "links.json").read_text())
    assert links["figures"] == ["links/component0_scatter.png"]
    ok(mmssl(project, "report", "runs/a"))
    assert (run / "report.html").stat().st_size > 10_000

    # Moved (or copied) elsewhere, the run directory is still evaluated, resumed and reported.
    moved = project / "archive" / "a-moved"
    moved.parent.mkdir()
    shutil.move(str(run), str(moved))
    ok(mmssl(project, "evaluate", "archive/a-moved"))
    assert json.loads((moved / "metrics.json").read_text()) == metrics
    ok(mmssl(project, "report", "archive/a-moved"))
    html = (moved / "report.html").read_text()
    assert html.count("data:image/png;base64") >= 3


def test_resume_of_a_moved_interrupted_run(project: Path) -> None:
    ok(mmssl(project, "pretrain", *TINY, "--set", "optim.scheduler=none", "--data-dir",
             "data/mnist", "--objective", "CR",
             "--out", "runs/b"))
    run = project / "runs" / "b"
    # Make it an unfinished two-epoch run: drop the marker, ask for more epochs in its config.
    (run / "pretrain.json").unlink()
    config = (run / "config.yaml").read_text().replace("epochs: 1", "epochs: 2")
    (run / "config.yaml").write_text(config)
    copy = project / "copy-of-b"
    shutil.copytree(run, copy)
    ok(mmssl(project, "run", "--resume", "--out", "copy-of-b"))
    assert json.loads((copy / "pretrain.json").read_text())["epochs"] == 2
    assert not (run / "pretrain.json").exists()  # the original was not touched
    assert (run / "checkpoints" / "best.ckpt").exists()


def test_sweep_claims_report_with_relative_paths(project: Path) -> None:
    out = ok(mmssl(project, "sweep", *TINY, "--data-dir", "data/mnist", "--objectives",
                   "CR,RR", "--out", "runs/sweep"))
    assert "runs/sweep/results.md" in out
    sweep = project / "runs" / "sweep"
    plan = json.loads((sweep / "sweep.json").read_text())
    assert {e["run"] for e in plan["entries"]} == {"CR/fold0-seed343", "RR/fold0-seed343"}
    ok(mmssl(project, "claims", "runs/sweep", "--permutations", "10"))
    ok(mmssl(project, "report", "runs/sweep"))
    assert (sweep / "report.html").exists() and (sweep / "claims.md").exists()
    # The sweep is read from its files, not its folder names: renaming a model's folder and
    # updating the plan changes nothing in the table.
    (sweep / "results.md").unlink()
    ok(mmssl(project, "sweep", *TINY, "--data-dir", "data/mnist", "--objectives", "CR,RR",
             "--out", "runs/sweep"))
    assert "| RR |" in (sweep / "results.md").read_text()


def test_default_out_is_relative_to_the_working_directory(project: Path) -> None:
    ok(mmssl(project, "run", *TINY, "--data-dir", "data/mnist", "--objective", "RR"))
    assert (project / "runs" / "RR-seed343-fold0" / "metrics.json").exists()


def test_from_bids_to_a_trained_run_with_relative_paths(tmp_path: Path) -> None:
    """The fMRIPrep user's route, typed from the project folder: a BIDS layout, fALFF computed
    from its preprocessed series, a manifest paired from it, and a run on that manifest."""
    import nibabel as nib
    import numpy as np

    ok(mmssl(tmp_path, "simulate", "--out", "cohort", "--subjects", "12", "--voxel-size", "8",
             "--bids", "true", "--bold-timepoints", "40"))
    derivatives = tmp_path / "cohort" / "bids" / "derivatives" / "falff"
    simulated = {p.relative_to(derivatives): np.asarray(nib.load(p).dataobj)
                 for p in sorted(derivatives.rglob("*.nii.gz"))}
    assert len(simulated) == 12
    shutil.rmtree(derivatives)

    # The simulator's series are exactly periodic, so without detrending the computed maps are
    # its ground truth; the default linear detrend (what real, drifting series need) moves them.
    output = ok(mmssl(tmp_path, "falff", "cohort/bids", "--detrend", "mean"))
    assert "12 written" in output
    for relative, expected in simulated.items():
        computed = np.asarray(nib.load(derivatives / relative).dataobj)
        np.testing.assert_allclose(computed, expected, rtol=0, atol=1e-4)
    ok(mmssl(tmp_path, "falff", "cohort/bids", "--overwrite"))
    for relative, expected in simulated.items():
        computed = np.asarray(nib.load(derivatives / relative).dataobj)
        inside = expected > 0
        assert not np.allclose(computed[inside], expected[inside], atol=1e-4)
        assert np.corrcoef(computed[inside], expected[inside])[0, 1] > 0.8

    ok(mmssl(tmp_path, "manifest", "cohort/bids", "--out", "manifest.csv"))
    lines = (tmp_path / "manifest.csv").read_text().splitlines()
    assert lines[0].split(",")[:5] == ["subject", "session", "label", "t1", "falff"]
    assert len(lines) == 13
    assert all(not line.split(",")[3].startswith("/") for line in lines[1:])  # relative paths

    ok(mmssl(tmp_path, "run", "--preset", "neuro-quick", "--manifest", "manifest.csv",
             "--epochs", "1", "--batch-size", "4", "--set", "model.width=4",
             "--set", "trainer.progress_bar=false", "--out", "runs/bids"))
    metrics = json.loads((tmp_path / "runs" / "bids" / "metrics.json").read_text())
    assert {"t1", "falff"} <= set(metrics["test"])


@pytest.mark.slow
def test_the_readme_brain_commands_typed_from_a_project_folder(tmp_path: Path) -> None:
    """README "Regions and links", as typed (relative paths, the project folder as working
    directory), on a small cohort: simulate, run, regions three ways, audit, links, saliency,
    report; every output lands in the run directory and names nothing outside it."""
    ok(mmssl(tmp_path, "simulate", "--out", "cohort40", "--subjects", "40", "--seed", "3",
             "--voxel-size", "8"))
    ok(mmssl(tmp_path, "run", "--preset", "neuro-quick", "--manifest", "cohort40/manifest.csv",
             "--objective", "CR-XX", "--epochs", "1", "--set", "trainer.checkpoint=last",
             "--set", "trainer.progress_bar=false", "--out", "runs/e1"))
    ok(mmssl(tmp_path, "regions", "runs/e1", "--method", "ig", "--ig-steps", "4",
             "--permutations", "20"))
    ok(mmssl(tmp_path, "regions", "runs/e1", "--method", "latent", "--units", "4",
             "--permutations", "20"))
    output = ok(mmssl(tmp_path, "regions", "runs/e1", "--method", "input", "--smooth", "12",
                      "--permutations", "20"))
    assert "localisation AUC of the t map" in output
    ok(mmssl(tmp_path, "audit", "runs/e1", "--folds", "3", "--components", "8"))
    ok(mmssl(tmp_path, "links", "runs/e1", "--permutations", "60"))
    ok(mmssl(tmp_path, "saliency", "runs/e1", "--methods", "latent,ig", "--units", "4",
             "--ig-steps", "4"))
    ok(mmssl(tmp_path, "report", "runs/e1"))
    run = tmp_path / "runs" / "e1"
    for name in ("regions.json", "audit.json", "links.json", "saliency.json", "report.html"):
        assert (run / name).is_file(), name
    for name in ("regions_ig", "regions_latent", "regions_input_s12"):
        report = json.loads((run / "regions" / f"{name}.json").read_text())
        assert all(not Path(p).is_absolute() for p in report["figures"])
    audit = json.loads((run / "audit.json").read_text())
    assert audit["figures"] == ["audit.png"]


def test_the_pca_encoder_link_commands_typed_from_a_project_folder(tmp_path: Path) -> None:
    """README "What the brain analyses found, in short" (the `pca_rr` link commands), as typed:
    RR on the PCA-stem encoder, then links; the stem is fitted once, recorded, and refused where
    its maps mean nothing."""
    ok(mmssl(tmp_path, "simulate", "--out", "cohort60", "--subjects", "60", "--seed", "3",
             "--voxel-size", "8", "--coupling", "0.3"))
    too_many = mmssl(tmp_path, "run", "--preset", "neuro-quick", "--preset", "pca_rr",
                     "--manifest", "cohort60/manifest.csv", "--epochs", "1",
                     "--set", "model.pca_components=500", "--set", "trainer.progress_bar=false",
                     "--out", "runs/too-many")
    assert too_many.returncode != 0
    message = too_many.stdout + too_many.stderr
    assert "model.pca_components = 500 needs at least 501 training volumes" in message
    assert "Traceback" not in message
    ok(mmssl(tmp_path, "run", "--preset", "neuro-quick", "--preset", "pca_rr",
             "--manifest", "cohort60/manifest.csv", "--epochs", "3",
             "--set", "model.pca_components=8", "--set", "trainer.progress_bar=false",
             "--out", "runs/pca"))
    run = tmp_path / "runs" / "pca"
    stems = json.loads((run / "encoder_stems.json").read_text())
    assert set(stems) == {"t1", "falff"} and stems["t1"]["components"] == 8
    assert 0 < stems["falff"]["explained_variance"] < 1
    ok(mmssl(tmp_path, "links", "runs/pca", "--permutations", "60"))
    links = json.loads((run / "links.json").read_text())
    assert links["pca_components"] == {"t1": 8, "falff": 8}  # z is 8-d: nothing to reduce
    assert links["harmonize_requested"] == "auto"
    if links["harmonize"] == "site":  # every site had enough training subjects
        assert sum(links["site_training_subjects"].values()) == links["n_train"]
    else:
        assert "too few training subjects" in links["harmonize_notes"][0]
    ok(mmssl(tmp_path, "links", "runs/pca", "--permutations", "60", "--harmonize", "none"))
    linear = json.loads((run / "links.json").read_text())
    assert linear["harmonize"] == "none" and "site" in linear["confounds"]
    assert linear["test_correlations"] != links["test_correlations"]
    wrong = mmssl(tmp_path, "links", "runs/pca", "--harmonize", "combat")
    assert wrong.returncode != 0 and "--harmonize 'combat'" in wrong.stdout + wrong.stderr
    latent = mmssl(tmp_path, "regions", "runs/pca", "--method", "latent", "--permutations", "20")
    assert latent.returncode != 0 and "same for every subject" in latent.stdout + latent.stderr
    ok(mmssl(tmp_path, "regions", "runs/pca", "--method", "ig", "--ig-steps", "4",
             "--permutations", "20"))
    # Resumed, the stem comes back from the checkpoint: not refitted, not needed unfitted.
    (run / "pretrain.json").unlink()
    config = (run / "config.yaml").read_text().replace("epochs: 3", "epochs: 4")
    (run / "config.yaml").write_text(config)
    stamp = (run / "encoder_stems.json").stat().st_mtime_ns
    ok(mmssl(tmp_path, "run", "--resume", "--out", "runs/pca"))
    assert json.loads((run / "pretrain.json").read_text())["epochs"] == 4
    assert (run / "encoder_stems.json").stat().st_mtime_ns == stamp
