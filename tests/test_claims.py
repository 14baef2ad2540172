"""``mmssl claims`` on sweep directories whose answer is known, and on committed files.

The decision rules themselves are tested in ``test_claim_rules.py`` (oracles, null calibration,
power); here: that a sweep's run directories are read from their own files, that the links
are computed from the saved features, that the verdicts written beside the sweep equal those
recomputed from the committed ``scores.csv`` / ``links.csv`` alone, and the command line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mmssl import config as cfg
from mmssl import io
from mmssl.analysis.claims import check_sweep, claims_from_files, write_claims
from mmssl.cli import main
from mmssl.runs.rundir import SweepDir

COLUMNS = ("rotated", "noisy", "joint")


def write_run(sweep: Path, model: str, fold: int, seed: int, score: float, *,
              link: float | None = None) -> None:
    """An evaluated run: config.yaml saying what it is, metrics.json, optional features.npz
    whose two modalities share one latent with weight ``link``."""
    if model in ("dccae", "mmvae"):
        config = cfg.resolve(["two_view_mnist", model], None, {"data.fold": fold,
                                                               "seed": seed})
    else:
        config = cfg.resolve("quick", None, {"objective.name": model, "data.fold": fold,
                                             "seed": seed})
    run = SweepDir(sweep).run(config.model_name, fold, seed)
    cfg.save(config, run.config)
    io.write_json(run.pretrain_record, {"last_checkpoint": "checkpoints/last.ckpt"})
    metrics = {split: {c: {"accuracy": score + (0.001 if split == "val" else 0.0)}
                       for c in COLUMNS} for split in ("val", "test")}
    io.write_json(run.metrics, metrics)
    if link is not None:
        rng = np.random.default_rng(fold * 100 + seed * 7 + sum(map(ord, model)))
        arrays = {}
        for split, n in (("train", 300), ("val", 50), ("test", 200)):
            shared = rng.standard_normal((n, 1))
            for modality in ("rotated", "noisy"):
                private = rng.standard_normal((n, 6))
                arrays[f"{split}/{modality}"] = link * shared + np.sqrt(1 - link**2) * private
            arrays[f"{split}/label"] = rng.integers(0, 2, n)
        io.save_npz(run.features, arrays)


def supportive_sweep(root: Path) -> None:
    """5 folds × 2 seeds in which every claim holds by construction."""
    rng = np.random.default_rng(0)
    entries = []
    for fold in range(5):
        for seed in (1, 2):
            run_offset = rng.normal(0, 0.01)
            jitter = {m: rng.normal(0, 0.003) for m in ("CR", "XX", "RR", "XX-RR", "CC",
                                                         "dccae", "mmvae")}
            write_run(root, "CR", fold, seed, 0.80 + run_offset + jitter["CR"], link=0.2)
            write_run(root, "XX", fold, seed, 0.90 + run_offset + jitter["XX"], link=0.6)
            write_run(root, "RR", fold, seed, 0.86 + run_offset + jitter["RR"], link=0.8)
            write_run(root, "XX-RR", fold, seed, 0.88 + run_offset + jitter["XX-RR"], link=0.9)
            write_run(root, "CC", fold, seed, 0.84 + run_offset + jitter["CC"], link=0.5)
            write_run(root, "dccae", fold, seed, 0.82 + run_offset + jitter["dccae"])
            write_run(root, "mmvae", fold, seed, 0.70 + run_offset + jitter["mmvae"])
            entries += [{"model": m, "method": "x", "fold": fold, "seed": seed,
                         "run": f"{m}/fold{fold}-seed{seed}"}
                        for m in ("CR", "XX", "RR", "XX-RR", "CC", "dccae", "mmvae")]
    io.write_json(SweepDir(root).plan, {"entries": entries, "requested": [
        [e["model"], e["fold"], e["seed"]] for e in entries]})


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    supportive_sweep(root)
    return root


def test_every_claim_is_supported_on_a_sweep_built_to_support_it(sweep: Path) -> None:
    report = check_sweep(SweepDir(sweep), permutations=30)
    assert [v.status for v in report.verdicts] == ["supported"] * 5, [
        (v.claim_id, v.summary) for v in report.verdicts]
    assert report.runs == 70 and report.metric == "accuracy"
    one = next(c for c in report.verdicts[0].comparisons if c.column == "joint")
    assert one.label.startswith("XX") and one.n == 10
    assert one.mean == pytest.approx(0.10, abs=0.01) and one.p_adjusted < 0.01
    four = {c.label for c in report.verdicts[3].comparisons}
    assert any("dccae" in label for label in four) and any("mmvae" in label for label in four)


def test_a_new_sweep_table_removes_the_links_of_an_earlier_claims_call(sweep: Path) -> None:
    """scores.csv and links.csv are committed as a pair; after the sweep rewrites scores.csv,
    the links.csv of an earlier `mmssl claims` (other runs) must not stay beside it."""
    from mmssl.analysis.sweeps import write_sweep_results

    directory = SweepDir(sweep)
    check_sweep(directory, permutations=10)
    assert directory.links_table.is_file()
    write_sweep_results(directory)
    assert directory.scores.is_file() and not directory.links_table.exists()
    check_sweep(directory, permutations=10)  # `mmssl claims` writes it again
    assert directory.links_table.read_text().startswith("model,fold,seed,first")


def test_committed_files_give_the_same_verdicts(sweep: Path, tmp_path: Path) -> None:
    """What `mmssl claims` writes beside the sweep is enough to decide the claims again."""
    directory = SweepDir(sweep)
    report = check_sweep(directory, permutations=30)
    write_claims(directory, report)
    committed = tmp_path / "committed"
    committed.mkdir()
    for source in (directory.scores, directory.links_table):
        (committed / source.name).write_bytes(source.read_bytes())
    again = claims_from_files([committed / "scores.csv"], [committed / "links.csv"])
    assert [(v.status, v.summary) for v in again.verdicts] == [
        (v.status, v.summary) for v in report.verdicts]
    scores = (committed / "scores.csv").read_text().splitlines()
    assert scores[0] == ("model,method,fold,seed,split,modality,metric,value,config_hash,"
                         "mmssl_version")
    assert len(scores) == 1 + 70 * 2 * 3  # runs × splits × columns (one metric)


def test_contradicted_claims_are_not_supported(tmp_path: Path) -> None:
    for fold in range(5):
        for seed in (1, 2):
            write_run(tmp_path, "CR", fold, seed, 0.90 + 0.001 * fold, link=0.7)
            write_run(tmp_path, "XX", fold, seed, 0.80 + 0.001 * fold, link=0.3)
            write_run(tmp_path, "RR", fold, seed, 0.80 + 0.001 * fold, link=0.3)
            write_run(tmp_path, "dccae", fold, seed, 0.95 + 0.001 * fold)
    report = check_sweep(SweepDir(tmp_path), permutations=30)
    status = {v.claim_id: v.status for v in report.verdicts}
    assert status[1] == "not supported" and status[4] == "not supported"
    assert status[3] == "not tested"  # no (O, O+RR) pair


def test_command_line_on_a_sweep_and_on_committed_files(sweep: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(sweep.parent)
    assert main(["claims", sweep.name, "--permutations", "20"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "supported" in printed and "claims.md" in printed
    payload = json.loads((sweep / "claims.json").read_text())
    assert [c["claim_id"] for c in payload["claims"]] == [1, 2, 3, 4, 5]
    figure = sweep / "claims.png"               # the forest plot, shown by claims.md
    assert figure.read_bytes().startswith(b"\x89PNG") and figure.stat().st_size > 10_000
    assert "![The evidence" in (sweep / "claims.md").read_text()
    markdown = tmp_path / "claims.md"
    assert main(["claims", "--scores", str(sweep / "scores.csv"), "--links",
                 str(sweep / "links.csv"), "--markdown", str(markdown)]) == 0
    text = markdown.read_text()
    assert text.startswith("# The paper's claims on scores.csv")
    assert "| 1. multimodal beats unimodal | supported |" in text
    assert "Holm" in text


def test_all_runs_decides_on_every_planned_run_not_only_the_last_request(
        tmp_path: Path) -> None:
    """A folder swept in steps: the last command asked for two models; --all-runs sees all."""
    root = tmp_path / "steps"
    supportive_sweep(root)
    plan = json.loads(SweepDir(root).plan.read_text())
    plan["requested"] = [r for r in plan["requested"] if r[0] in ("CR", "XX")]
    io.write_json(SweepDir(root).plan, plan)
    last = check_sweep(SweepDir(root), permutations=10)
    assert sorted(last.models) == ["CR", "XX"] and last.runs == 2 * 10
    every = check_sweep(SweepDir(root), permutations=10, all_runs=True)
    assert sorted(every.models) == sorted(["CR", "XX", "RR", "XX-RR", "CC", "dccae", "mmvae"])
    assert every.runs == 7 * 10
    written = (root / "scores.csv").read_text()
    assert "mmvae" in written  # the files follow the runs decided on
    assert main(["claims", str(root), "--permutations", "10"]) == 0
    assert "mmvae" not in (root / "scores.csv").read_text()
    assert main(["claims", str(root), "--permutations", "10", "--all-runs"]) == 0
    assert "mmvae" in (root / "scores.csv").read_text()
