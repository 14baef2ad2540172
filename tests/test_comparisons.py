"""Paired comparisons of named models (``mmssl claims --compare A:B``).

The statistics are checked against a brute-force oracle written here (every sign pattern
enumerated, Holm by hand), the reading against planted effects, the family-wise error rate on
simulated tables with no effect, and the command line and generated blocks as a user calls them.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmssl.analysis.aggregate import columns_of, summarise
from mmssl.analysis.comparisons import (
    ModelPair,
    compare_models,
    comparisons_table,
    parse_pairs,
    reading,
)
from mmssl.analysis.reproduction import parse_block_arguments
from mmssl.analysis.tables import results_table
from mmssl.cli import main
from mmssl.errors import ConfigError

COLUMNS = ("rotated", "noisy", "joint")


def score_table(means: dict[str, float], *, folds: int = 5, seeds: int = 3, sd: float = 0.01,
                run_sd: float = 0.02, seed: int = 0,
                columns: tuple[str, ...] = COLUMNS) -> pd.DataFrame:
    """A long scores table: per run a shared offset (run-to-run luck) plus model noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for fold, run_seed in itertools.product(range(folds), range(1, seeds + 1)):
        for column in columns:
            shared = rng.normal(0, run_sd)
            for model, mean in means.items():
                for split in ("val", "test"):
                    rows.append({"model": model, "method": "taxonomy" if model[0].isupper()
                                 else model, "fold": fold, "seed": run_seed, "split": split,
                                 "modality": column, "metric": "accuracy",
                                 "value": mean + shared + rng.normal(0, sd)})
    return pd.DataFrame(rows)


def brute_force_two_sided(d: np.ndarray) -> float:
    """Share of the 2^n sign patterns whose |sum| reaches the observed |sum|."""
    observed = abs(d.sum())
    sums = [abs(np.dot(signs, d)) for signs in itertools.product((1, -1), repeat=len(d))]
    return float(np.mean([s >= observed - 1e-12 for s in sums]))


def test_statistics_equal_a_brute_force_oracle() -> None:
    table = score_table({"dccae": 0.86, "ae": 0.85}, folds=3, seeds=2, sd=0.01)
    comparisons = compare_models(table, [ModelPair("dccae", "ae")], n_resamples=2000)
    assert [c.column for c in comparisons] == list(COLUMNS)
    raw = []
    for comparison in comparisons:
        test = table[(table.split == "test") & (table.modality == comparison.column)]
        a = test[test.model == "dccae"].set_index(["fold", "seed"])["value"]
        b = test[test.model == "ae"].set_index(["fold", "seed"])["value"]
        d = (a - b.loc[a.index]).to_numpy()
        assert comparison.n == 6
        assert comparison.mean == pytest.approx(d.mean())
        assert comparison.p == pytest.approx(brute_force_two_sided(d))
        assert comparison.ci_low <= comparison.mean <= comparison.ci_high
        raw.append(comparison.p)
    order = np.argsort(raw)                      # Holm by hand: m − rank, running maximum
    running, holm = 0.0, {}
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(raw) - rank) * raw[index]))
        holm[index] = running
    for index, comparison in enumerate(comparisons):
        assert comparison.p_adjusted == pytest.approx(holm[index])


def test_orientation_and_reading_follow_the_planted_effect() -> None:
    table = score_table({"dccae": 0.90, "ae": 0.85, "rr_ae": 0.85})
    ahead = compare_models(table, parse_pairs("dccae:ae"), n_resamples=2000)
    behind = compare_models(table, parse_pairs("ae:dccae"), n_resamples=2000)
    for a, b in zip(ahead, behind, strict=True):
        assert a.mean == pytest.approx(-b.mean) and a.mean > 0.04
        assert a.p == pytest.approx(b.p)
        assert reading(a, 0.05) == "dccae ahead" and reading(b, 0.05) == "dccae ahead"
    tied = compare_models(table, parse_pairs("rr_ae:ae"), n_resamples=2000)
    for comparison in tied:
        assert not comparison.significant(0.05)
        assert reading(comparison, 0.05).startswith("not distinguished (80 % power at ±0.0")
    few = compare_models(score_table({"dccae": 0.90, "ae": 0.85}, folds=2, seeds=1),
                         parse_pairs("dccae:ae"), n_resamples=2000)
    assert reading(few[0], 0.05) == "not distinguished (too few runs, n=2)"
    assert np.isnan(few[0].ci_low) and np.isnan(few[0].ci_high)  # no interval from 2 runs
    five = compare_models(score_table({"dccae": 0.90, "ae": 0.85}, folds=5, seeds=1),
                          parse_pairs("dccae:ae"), n_resamples=2000)
    assert all(c.ci_low <= c.mean <= c.ci_high for c in five)


def test_no_effect_rarely_reads_as_a_difference() -> None:
    """Family-wise: with no true difference, a table of 2 pairs × 3 columns says some model is
    ahead in at most 5 % of simulated sweeps, up to sampling error (Holm over the six rows, the
    sign-flip test exact at n = 15; measured 5.05 % over 2,000 sweeps, where six nearly
    independent tests make Holm's bound almost tight). Without Holm it would be far above."""
    sweeps, false_positive, unadjusted = 300, 0, 0
    for seed in range(sweeps):
        table = score_table({"a": 0.85, "b": 0.85, "c": 0.85}, seed=seed, columns=COLUMNS)
        rows = compare_models(table, parse_pairs("a:b,c:b"), n_resamples=50, seed=seed)
        false_positive += any(r.significant(0.05) for r in rows)
        unadjusted += any(r.p <= 0.05 for r in rows)
    margin = 2.5 * np.sqrt(0.05 * 0.95 / sweeps)
    assert false_positive / sweeps <= 0.05 + margin
    assert unadjusted / sweeps > 0.15


@pytest.mark.parametrize(("text", "message"), [
    ("dccae", "two models as A:B"),
    ("dccae:", "two models as A:B"),
    ("a:b:c", "two models as A:B"),
    ("ae:ae", "with itself"),
    ("a:b,a:b", "more than once"),
])
def test_bad_pairs_are_named(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_pairs(text)


def test_unknown_models_and_disjoint_runs_are_named() -> None:
    table = score_table({"dccae": 0.86, "ae": 0.85})
    with pytest.raises(ConfigError, match=r"no accuracy scores for \['mmvae'\].*'ae', 'dccae'"):
        compare_models(table, parse_pairs("mmvae:ae"))
    other = score_table({"mmvae": 0.8}, folds=1, seeds=1)
    other["fold"] = 9
    with pytest.raises(ConfigError, match="share no run"):
        compare_models(pd.concat([table, other]), parse_pairs("mmvae:ae"))
    assert compare_models(table, ()) == []


def test_command_line_and_generated_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """As a user runs it: relative paths from the working directory, the table on the console
    and in the Markdown, and a REPRODUCTION-style block that names the pair."""
    monkeypatch.chdir(tmp_path)
    table = score_table({"CR": 0.80, "XX": 0.90, "dccae": 0.88, "ae": 0.84})
    Path("results").mkdir()
    table.assign(config_hash="0" * 12, mmssl_version="0.1.0").to_csv("results/scores.csv",
                                                                      index=False)
    assert main(["claims", "--scores", "results/scores.csv", "--compare", "dccae:ae",
                 "--markdown", "claims.md"]) == 0
    out = capsys.readouterr().out
    assert "Paired comparisons" in out and "A − B" in out   # cells wrap at the terminal's width
    markdown = Path("claims.md").read_text()
    assert "**Paired comparisons**" in markdown
    assert markdown.count("| dccae − ae |") == 3 and markdown.count("| dccae ahead |") == 3
    assert main(["claims", "--scores", "results/scores.csv", "--compare", "dccae"]) == 2
    assert "two models as A:B" in " ".join(capsys.readouterr().out.split())
    spec = parse_block_arguments("--scores results/scores.csv --compare dccae:ae "
                                 "--compare XX:dccae", "DOC.md, generated block 1")
    assert spec.compare == (ModelPair("dccae", "ae"), ModelPair("XX", "dccae"))
    with pytest.raises(ConfigError, match="--figure names a PNG file"):
        parse_block_arguments("--scores a.csv --figure a.svg", "DOC.md, generated block 1")
    with pytest.raises(ConfigError, match="generated block 1: --compare expects .* got 'x'"):
        parse_block_arguments("--scores a.csv --compare x", "DOC.md, generated block 1")
    document = Path("R.md")
    document.write_text("<!-- BEGIN mmssl claims --scores results/scores.csv --compare dccae:ae "
                        "--figure results/evidence.png -->\n<!-- END mmssl claims -->\n")
    assert main(["claims", "--refresh", "R.md"]) == 0
    assert "| dccae − ae | joint |" in document.read_text()
    assert "](results/evidence.png)" in document.read_text()
    figure = Path("results/evidence.png")
    assert figure.read_bytes().startswith(b"\x89PNG")
    assert main(["claims", "--check", "R.md"]) == 0
    drawn = figure.stat().st_mtime_ns
    assert main(["claims", "--refresh", "R.md"]) == 0   # text unchanged: figure left alone
    assert figure.stat().st_mtime_ns == drawn
    figure.unlink()                                      # a block without its figure is stale
    assert main(["claims", "--check", "R.md"]) == 1
    assert main(["claims", "--refresh", "R.md"]) == 0 and figure.is_file()
    assert main(["claims", "--scores", "results/scores.csv", "--compare", "dccae:ae",
                 "--figure", "mine.png"]) == 0
    assert Path("mine.png").read_bytes().startswith(b"\x89PNG")
    document.write_text("<!-- BEGIN mmssl claims --scores results/scores.csv --compare mmvae:ae "
                        "-->\n<!-- END mmssl claims -->\n")
    assert main(["claims", "--refresh", "R.md"]) == 2
    said = " ".join(capsys.readouterr().out.split())
    assert "R.md, generated block 1" in said and "no accuracy scores for ['mmvae']" in said


def test_table_cells() -> None:
    table = score_table({"dccae": 0.90, "ae": 0.85})
    rows = comparisons_table(compare_models(table, parse_pairs("dccae:ae"), n_resamples=500),
                             0.05, "accuracy").rows
    assert [r[1] for r in rows] == list(COLUMNS)
    assert all(r[2].startswith("+0.0") and r[6] == "15" and r[7] == "dccae ahead" for r in rows)


def test_the_results_table_says_how_many_runs_each_model_had_when_they_differ() -> None:
    """A model with 2 runs beside models with 15 (MMVAE at 46 minutes a run) must not pass for
    one measured as often: a ``runs`` column appears, and only then."""
    full = score_table({"XX": 0.9, "dccae": 0.88})
    few = score_table({"mmvae": 0.8}, folds=2, seeds=1)
    for frame, expected in ((full, None), (pd.concat([full, few]), {"XX": "15", "mmvae": "2"})):
        table = results_table(summarise(frame), columns_of(frame), "accuracy", "t")
        if expected is None:
            assert table.columns == ["model", *COLUMNS]
        else:
            assert table.columns == ["model", "runs", *COLUMNS]
            assert {row[0]: row[1] for row in table.rows if row[0] in expected} == expected
            assert "over 2 to 15 run(s)" in table.note
