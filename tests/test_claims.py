"""The paper's claims checked on sweeps whose answer is known (mmssl.evaluation.claims)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mmssl.cli import main
from mmssl.evaluation.claims import ClaimsError, SweepScores, check_claims, load_sweep

COLUMNS = ("a", "b", "joint")


def write_run(root: Path, model: str, seed: int, test: float, *, val: float | None = None,
              link: float | None = None) -> None:
    """A finished run: metrics.json with ``test`` (and ``val``) accuracy in every column, and
    if ``link`` is given, features.npz whose two modalities share one latent with that weight.
    """
    run = root / model / f"fold0-seed{seed}"
    run.mkdir(parents=True)
    val = test if val is None else val
    metrics = {split: {c: {"accuracy": score} for c in COLUMNS}
               for split, score in (("val", val), ("test", test))}
    (run / "metrics.json").write_text(json.dumps(metrics))
    if link is not None:
        rng = np.random.default_rng(seed * 1000 + sum(map(ord, model)))
        arrays = {}
        for split, n in (("train", 300), ("val", 50), ("test", 200)):
            shared = rng.standard_normal((n, 1))
            for modality in ("a", "b"):
                private = rng.standard_normal((n, 6))
                arrays[f"{split}/{modality}"] = link * shared + np.sqrt(1 - link**2) * private
            arrays[f"{split}/label"] = rng.integers(0, 2, n)
        np.savez(run / "features.npz", **arrays)


def supportive_sweep(root: Path) -> None:
    """Two seeds of a sweep in which every claim holds by construction."""
    for seed, jitter in ((1, 0.0), (2, 0.004)):
        write_run(root, "CR", seed, 0.80 + jitter, link=0.2)
        write_run(root, "XX", seed, 0.90 + jitter, link=0.6)
        write_run(root, "RR", seed, 0.86 + jitter, link=0.8)
        write_run(root, "XX-RR", seed, 0.88 + jitter, link=0.9)  # RR lowers the probe a little
        write_run(root, "dccae", seed, 0.84 + jitter)
        write_run(root, "mmvae", seed, 0.70 + jitter)


def by_claim(verdicts):
    return {v.claim.split(".")[0]: v for v in verdicts}


def test_every_claim_holds_on_a_sweep_built_to_support_it(tmp_path):
    supportive_sweep(tmp_path)
    verdicts = by_claim(check_claims(load_sweep(tmp_path), permutations=50))
    assert {k: v.status for k, v in verdicts.items()} == {str(i): "holds" for i in range(1, 6)}
    one = verdicts["1"].details["joint"]
    assert one["chosen"] == "XX"
    assert one["difference"]["mean"] == pytest.approx(0.10)
    assert one["difference"]["n"] == 2
    assert one["multimodal_models_above_CR"] == "3/3"
    two = verdicts["2"].details["a"]
    assert (two["best"], two["worst"]) == ("XX", "CR")
    assert two["spread"] == pytest.approx(0.10)
    three = verdicts["3"].details
    assert set(three["link_gain_per_pair"]) == {"XX → XX-RR"}
    assert three["link_gain"]["mean"] > 0.03
    assert three["probe_effect"]["a"] == pytest.approx(-0.02)
    assert "lowered: a, b, joint" in verdicts["3"].summary
    four = verdicts["4"].details
    assert four["joint/dccae"]["difference"]["mean"] == pytest.approx(0.06)
    assert four["joint/mmvae"]["difference"]["mean"] == pytest.approx(0.20)
    five = verdicts["5"].details
    assert five["XX-RR"]["first_correlation_mean"] > five["CR"]["first_correlation_mean"]
    assert five["XX"]["significant"] == five["XX"]["runs"] == 2


def test_claims_that_the_data_contradict_do_not_hold(tmp_path):
    for seed, jitter in ((1, 0.0), (2, 0.03)):
        write_run(tmp_path, "CR", seed, 0.90 + jitter, link=0.5)  # unimodal is best
        write_run(tmp_path, "XX", seed, 0.89 + 2 * jitter, link=0.8)
        write_run(tmp_path, "XX-RR", seed, 0.88 + jitter, link=0.0)  # RR kills the link
        write_run(tmp_path, "dccae", seed, 0.95 + jitter)
        write_run(tmp_path, "mmvae", seed, 0.96 + jitter)
    verdicts = by_claim(check_claims(load_sweep(tmp_path), permutations=50))
    assert verdicts["1"].status == "mixed"  # XX is ahead on average but not consistently
    assert verdicts["1"].details["a"]["difference"]["mean"] == pytest.approx(0.005)
    assert verdicts["2"].status == "does not hold"  # 0.025 spread against 0.028 run std
    assert verdicts["3"].status == "does not hold"
    assert verdicts["4"].status == "does not hold"
    assert verdicts["5"].status == "mixed"  # XX links the modalities, XX-RR does not


def test_models_are_chosen_on_validation_never_on_test(tmp_path):
    for seed in (1, 2):
        write_run(tmp_path, "CR", seed, 0.80)
        write_run(tmp_path, "XX", seed, 0.82, val=0.95)  # best on validation
        write_run(tmp_path, "RR", seed, 0.90, val=0.85)  # best on test
    scores = SweepScores(load_sweep(tmp_path))
    assert scores.chosen_on_validation(["XX", "RR"], "joint") == "XX"
    verdicts = by_claim(check_claims(load_sweep(tmp_path)))
    assert verdicts["1"].details["joint"]["difference"]["mean"] == pytest.approx(0.02)


def test_missing_models_mean_not_tested(tmp_path):
    write_run(tmp_path, "XX", 1, 0.9)
    verdicts = by_claim(check_claims(load_sweep(tmp_path)))
    assert verdicts["1"].status == "not tested" and "CR" in verdicts["1"].summary
    assert verdicts["2"].status == "not tested"
    assert verdicts["3"].status == "not tested"
    assert verdicts["4"].status == "not tested" and "dccae" in verdicts["4"].summary
    assert verdicts["5"].status == "not tested"


def test_a_directory_without_runs_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ClaimsError, match="no finished runs"):
        load_sweep(tmp_path)
    assert main(["claims", str(tmp_path)]) == 2
    assert "no finished runs" in capsys.readouterr().out


def test_claims_command_writes_markdown_and_json(tmp_path, capsys):
    supportive_sweep(tmp_path)
    assert main(["claims", str(tmp_path), "--permutations", "20"]) == 0
    printed = capsys.readouterr().out
    assert "multimodal beats unimodal" in printed and "holds" in printed
    payload = json.loads((tmp_path / "claims.json").read_text())
    assert payload["metric"] == "accuracy" and len(payload["claims"]) == 5
    table = (tmp_path / "claims.md").read_text()
    assert table.count("| holds |") == 5
