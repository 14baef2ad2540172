"""The `mmssl` command end to end on tiny IDX files in the real MNIST format."""

from __future__ import annotations

import json

import pytest

from mmssl.cli import main

TINY = ["--epochs", "1", "--batch-size", "16", "--accelerator", "cpu",
        "--set", "model.width=8", "--set", "model.latent_dim=16", "--set", "model.head_dim=16",
        "--set", "probe.Cs=[0.1, 1.0]", "--set", "trainer.progress_bar=false"]


def test_run_end_to_end(tiny_mnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "--preset", "quick", "--objective", "rr-xx", "--data-dir",
                 str(tiny_mnist_dir), "--out", str(out), *TINY])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"val", "test", "checkpoint"}
    assert metrics["checkpoint"] == {"choice": "last", "file": "checkpoints/last.ckpt",
                                     "epoch": 1}
    assert set(metrics["test"]) == {"rotated", "noisy", "joint"}
    for name in ("config.yaml", "metrics.csv", "pretrain.json", "probe.json", "log.txt",
                 "checkpoints/last.ckpt"):
        assert (out / name).exists(), name
    assert "objective:\n  name: XX-RR" in (out / "config.yaml").read_text()
    printed = capsys.readouterr().out
    assert "Linear probe" in printed and "joint" in printed
    # The two halves: evaluate again from the run directory alone.
    assert main(["evaluate", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text()) == metrics
    # Links through a shared subspace work on any evaluated run, from its saved features.
    assert main(["links", str(out), "--permutations", "20", "--components", "2"]) == 0
    links = json.loads((out / "links.json").read_text())
    assert links["modalities"] == ["rotated", "noisy"]
    assert len(links["test_correlations"]) == 2 and len(links["null_correlations"]) == 20
    assert all(1 / 21 <= p <= 1 for p in links["p_values"])
    assert links["maps"] == {}  # brain maps only for neuroimaging runs
    assert (out / "links" / "component0_scatter.png").read_bytes()[:4] == b"\x89PNG"
    assert "Multimodal links" in capsys.readouterr().out


def test_pretrain_then_resume_and_evaluate(tiny_mnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--objective", "CR", "--data-dir", str(tiny_mnist_dir), "--out", str(out), *TINY]
    assert main(["pretrain", *args]) == 0
    assert not (out / "metrics.json").exists()
    assert main(["pretrain", *args]) == 2  # refuses to overwrite
    assert "--resume" in capsys.readouterr().out
    assert main(["pretrain", "--resume", "--epochs", "3", "--out", str(out)]) == 2
    assert "drop --epochs" in capsys.readouterr().out
    assert main(["run", "--resume", "--out", str(out)]) == 0  # finished: straight to evaluation
    assert (out / "metrics.json").exists()


def test_sweep_table_and_figure(tiny_mnist_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(["sweep", "--objectives", "CR,RR", "--data-dir", str(tiny_mnist_dir),
                 "--out", str(out), *TINY])
    assert code == 0
    table = (out / "results.md").read_text()
    assert "| CR |" in table and "| RR |" in table and "joint" in table
    csv_text = (out / "results.csv").read_text()
    assert csv_text.splitlines()[0] == "model,split,modality,metric,mean,std,n"
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "results.md" in printed and "accuracy.png" in printed
    # Re-running skips finished runs (their metrics files are untouched).
    stamp = (out / "CR" / "fold0-seed343" / "metrics.json").stat().st_mtime_ns
    assert main(["sweep", "--objectives", "CR,RR", "--data-dir", str(tiny_mnist_dir),
                 "--out", str(out), *TINY]) == 0
    assert (out / "CR" / "fold0-seed343" / "metrics.json").stat().st_mtime_ns == stamp
    # The claims are checked on the real runs' metrics and features.
    assert main(["claims", str(out), "--permutations", "10"]) == 0
    claims = {c["claim_id"]: c for c in json.loads((out / "claims.json").read_text())["claims"]}
    assert claims[1]["status"] != "not tested"
    joint = next(c for c in claims[1]["comparisons"] if c["column"] == "joint")
    assert joint["label"].startswith("RR") and joint["n"] == 1
    assert claims[4]["status"] == "not tested"
    assert (out / "scores.csv").read_text().startswith("model,method,fold,seed,split")
    assert (out / "links.csv").read_text().startswith("model,fold,seed,first")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--objective", "CR-QQ"], "Valid objectives: CR, XX, CC, RR"),
        (["run", "--preset", "nope"], "valid presets: ae, cr_cca"),
        (["run", "--set", "optim.lrr=1"], "unknown key 'optim.lrr'"),
        (["run", "--fold", "9"], "data.fold: must be in 0..4"),
        (["run", "--modalities", "rotated,blurry"], "blurry"),
        (["run", "--bogus", "1"], "valid flags of `mmssl run`: --accelerator, --batch-size"),
        (["sweep", "--objectives", "CR,CR", "--out", "x"], "listed twice"),
        (["evaluate", "/nonexistent/run"], "/nonexistent/run does not exist"),
    ],
)
def test_bad_input_gives_a_clear_error(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in " ".join(capsys.readouterr().out.split())


def test_list_shows_everything(capsys):
    assert main(["list"]) == 0
    printed = capsys.readouterr().out
    for word in ("CR-XX-CC-RR", "taxonomy", "two_view_mnist", "quick"):
        assert word in printed


def test_sweep_over_folds_and_seeds_aggregates_mean_and_std(tiny_mnist_dir, tmp_path):
    out = tmp_path / "sweep"
    assert main(["sweep", "--objectives", "RR", "--folds", "0,1", "--seeds", "1,2",
                 "--data-dir", str(tiny_mnist_dir), "--out", str(out), *TINY]) == 0
    runs = sorted(p.name for p in (out / "RR").iterdir())
    assert runs == ["fold0-seed1", "fold0-seed2", "fold1-seed1", "fold1-seed2"]
    values = [json.loads((out / "RR" / r / "metrics.json").read_text())["test"]["joint"]
              ["accuracy"] for r in runs]
    import numpy as np
    table = (out / "results.md").read_text()
    assert f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}" in table
    assert "over 4 run(s)" in table
    assert len((out / "scores.csv").read_text().splitlines()) > 4 * 3


def test_sweep_objectives_all_means_the_fifteen(monkeypatch, tmp_path):
    import mmssl.runs.sweep

    seen = {}

    def fake_run_sweep(entries, out, launcher=None):
        seen["models"] = [e.model for e in entries]
        raise SystemExit(0)

    monkeypatch.setattr(mmssl.runs.sweep, "run_sweep", fake_run_sweep)
    with pytest.raises(SystemExit):
        main(["sweep", "--objectives", "all", "--out", str(tmp_path)])
    from mmssl.objectives.taxonomy import all_objectives
    assert seen["models"] == all_objectives()


def test_aggregate_mean_std():
    import pandas as pd

    from mmssl.analysis.aggregate import summarise

    scores = pd.DataFrame({"model": "X", "split": "test", "modality": "a",
                           "metric": "accuracy", "value": [0.5, 0.7, 0.9]})
    row = summarise(scores).iloc[0]
    assert row["mean"] == pytest.approx(0.7) and row["std"] == pytest.approx(0.2)
    assert row["n"] == 3


def test_mode_effects_are_differences_of_paired_models():
    import pandas as pd

    from mmssl.analysis.aggregate import mode_effects
    from mmssl.analysis.claim_rules import ModelInfo

    values = {"CR": 0.5, "CR-XX": 0.8, "XX": 0.7, "XX-RR": 0.6, "RR": 0.65, "supervised": 0.99}
    summary = pd.DataFrame([{"model": m, "split": "test", "modality": "a", "metric": "accuracy",
                             "mean": v, "std": 0.0, "n": 1} for m, v in values.items()])
    models = {m: ModelInfo("taxonomy", frozenset(m.split("-"))) for m in values
              if m != "supervised"}
    models["supervised"] = ModelInfo("baseline")
    effects = mode_effects(summary, models, ["a"], "accuracy")
    # XX added to CR (+0.3) and to RR (0.6 − 0.65): two pairs.
    assert effects["XX"]["a"] == {"mean": pytest.approx(0.125), "pairs": 2}
    assert effects["CR"]["a"] == {"mean": pytest.approx(0.1), "pairs": 1}  # XX → CR-XX
    assert effects["RR"]["a"] == {"mean": pytest.approx(-0.1), "pairs": 1}  # XX → XX-RR
    assert "CC" not in effects


def test_sweep_runs_in_parallel_subprocesses_through_submitit(tiny_mnist_dir, tmp_path):
    out = tmp_path / "sweep"
    assert main(["sweep", "--objectives", "CR,RR", "--launcher", "local", "--jobs", "2",
                 "--data-dir", str(tiny_mnist_dir), "--out", str(out), *TINY]) == 0
    assert (out / "CR" / "fold0-seed343" / "metrics.json").exists()
    assert (out / "RR" / "fold0-seed343" / "metrics.json").exists()
    assert list((out / ".submitit").iterdir())  # the jobs really went through submitit
    assert "| RR |" in (out / "results.md").read_text()


def test_sweep_resumes_an_interrupted_run(tiny_mnist_dir, tmp_path):
    from mmssl import config as cfg
    from mmssl.runs.rundir import RunDir

    out = tmp_path / "sweep"
    args = ["sweep", "--objectives", "RR", "--data-dir", str(tiny_mnist_dir), "--out", str(out),
            *TINY]
    assert main(args) == 0
    run_dir = RunDir(out / "RR" / "fold0-seed343")
    # Simulate a crash after pretraining: drop the completion markers of the evaluation.
    run_dir.metrics.unlink()
    assert main(args) == 0  # resumed from the run directory, evaluated again
    assert run_dir.metrics.exists()
    assert cfg.load(run_dir.config).objective.name == "RR"


@pytest.mark.slow  # a 2 × 2 sweep killed and rerun (≈ 2 minutes on 2 cores)
def test_a_killed_sweep_resumes_and_aggregates(tiny_mnist_dir, tmp_path):
    """2 objectives × 2 seeds: SIGKILL the sweep mid-run, run it again, check the table."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import numpy as np

    out = tmp_path / "sweep"
    args = ["sweep", "--objectives", "CR,RR", "--seeds", "1,2", "--data-dir",
            str(tiny_mnist_dir), "--out", str(out), *TINY, "--epochs", "6"]
    script = Path(sys.executable).parent / "mmssl"
    process = subprocess.Popen([str(script), *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    in_flight = out / "CR" / "fold0-seed2" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not in_flight.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "the sweep ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = out / "CR" / "fold0-seed1" / "metrics.json"
    assert finished.exists() and not (out / "CR" / "fold0-seed2" / "metrics.json").exists()
    assert not (out / "results.md").exists()
    stamp = finished.stat().st_mtime_ns

    assert main(args) == 0
    assert finished.stat().st_mtime_ns == stamp  # finished runs are skipped, not redone
    table = (out / "results.md").read_text()
    for model in ("CR", "RR"):
        values = [json.loads((out / model / f"fold0-seed{s}" / "metrics.json").read_text())
                  ["test"]["joint"]["accuracy"] for s in (1, 2)]
        row = next(line for line in table.splitlines() if line.startswith(f"| {model} |"))
        assert f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}" in row
    assert "over 2 run(s)" in table
