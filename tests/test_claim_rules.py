"""The five claims decided on simulated sweeps: null calibration, power, verdict logic, input.

Simulated sweeps: every score is ``level + run offset + planted effect + noise``; the run
offset (per run, split and column) is shared by all models, the noise is independent for every
model, run, split and column — so without a planted effect every claim's null hypothesis holds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from mmssl.analysis.claim_rules import (
    ModelInfo,
    Verdict,
    composition_matters,
    decide_status,
    decoder_free_beats_decoders,
    evaluate_claims,
    multimodal_beats_unimodal,
    rr_regularises_and_relates,
    shared_subspace_links,
)
from mmssl.evaluation.stats import Comparison, anova_f_power, paired_t_power


def taxonomy(*modes: str) -> ModelInfo:
    return ModelInfo("taxonomy", frozenset(modes), decoder=False,
                     multimodal=bool(set(modes) - {"CR"}))


DECODER = ModelInfo("baseline", decoder=True, multimodal=True)

#: Several taxonomy models (two (O, O+RR) pairs), unimodal CR and the two decoder baselines.
MODELS: dict[str, ModelInfo] = {
    "CR": taxonomy("CR"), "XX": taxonomy("XX"), "CC": taxonomy("CC"), "RR": taxonomy("RR"),
    "XX-RR": taxonomy("XX", "RR"), "CR-XX": taxonomy("CR", "XX"),
    "CR-XX-RR": taxonomy("CR", "XX", "RR"), "dccae": DECODER, "mmvae": DECODER,
}
COLUMNS: tuple[str, ...] = ("rotated", "noisy", "joint")


def simulate_scores(rng: np.random.Generator, models: Sequence[str] = tuple(MODELS), *,
                    folds: int = 5, seeds: int = 3, columns: Sequence[str] = COLUMNS,
                    level: float = 0.85, offset_sd: float = 0.01, noise_sd: float = 0.01,
                    effects: Mapping[tuple[str, str], float] | None = None,
                    metric: str = "roc_auc") -> pd.DataFrame:
    """A long score table; ``effects[(model, column)]`` is added to val and test scores."""
    effects = effects or {}
    runs = [(f, s) for f in range(folds) for s in range(seeds)]
    splits = ("val", "test")
    offsets = rng.normal(0, offset_sd, size=(len(runs), len(splits), len(columns)))
    noise = rng.normal(0, noise_sd, size=(len(models), len(runs), len(splits), len(columns)))
    index = pd.MultiIndex.from_product(
        [list(models), runs, list(splits), list(columns)],
        names=["model", "run", "split", "modality"]).to_frame(index=False)
    effect = np.array([[effects.get((m, c), 0.0) for c in columns] for m in models])
    values = level + offsets[None] + noise + effect[:, None, None, :]
    return pd.DataFrame({
        "model": index["model"], "fold": [r[0] for r in index["run"]],
        "seed": [r[1] for r in index["run"]], "split": index["split"],
        "modality": index["modality"], "metric": metric, "value": values.ravel()})


def simulate_links(rng: np.random.Generator, models: Sequence[str] = tuple(MODELS), *,
                   folds: int = 5, seeds: int = 3, linked: bool = False, sd: float = 0.03,
                   gains: Mapping[str, float] | None = None) -> pd.DataFrame:
    """A link table: r1 and strength are level + run offset + ``gains[model]`` + noise.

    ``linked``: every run's r1 is significant (p_first ~ U(0, 0.01)); otherwise p_first ~ U(0, 1)
    as under no link at all.
    """
    gains = gains or {}
    runs = [(f, s) for f in range(folds) for s in range(seeds)]
    offsets = rng.normal(0, sd, size=(len(runs), 2))
    rows = []
    for model in models:
        noise = rng.normal(0, sd, size=(len(runs), 2))
        p = rng.uniform(0, 0.01 if linked else 1.0, size=len(runs))
        for i, (fold, seed) in enumerate(runs):
            gain = gains.get(model, 0.0)
            rows.append({"model": model, "fold": fold, "seed": seed,
                         "first": 0.5 + offsets[i, 0] + noise[i, 0] + gain,
                         "strength": 0.4 + offsets[i, 1] + noise[i, 1] + gain,
                         "p_first": p[i]})
    return pd.DataFrame(rows)


def by_id(verdicts: list[Verdict]) -> dict[int, Verdict]:
    return {v.claim_id: v for v in verdicts}


def false_positive_bound(trials: int, alpha: float = 0.05) -> int:
    """The 99.9 % quantile of Binomial(trials, alpha): a valid test rarely exceeds it."""
    return int(sps.binom.ppf(0.999, trials, alpha))


# ----------------------------------------------------------------------------- null calibration


def null_supported_counts(sweeps: int, seed: int, n_resamples: int) -> np.ndarray:
    """How often each claim is 'supported' on sweeps with no effect at all.

    Alternate sweeps use three columns or only ``joint`` (one comparison for claims 1 and 2,
    the tightest case), and link tables with or without real links (with links, claim 5 rests
    on its r1 comparison alone).
    """
    rng = np.random.default_rng(seed)
    supported = np.zeros(5, dtype=int)
    for i in range(sweeps):
        columns = COLUMNS if i % 2 else ("joint",)
        verdicts = evaluate_claims(simulate_scores(rng, columns=columns), MODELS,
                                   simulate_links(rng, linked=i % 4 < 2),
                                   seed=i, n_resamples=n_resamples)
        supported += [v.status == "supported" for v in verdicts]
        assert all(v.status != "not tested" for v in verdicts)
    return supported


def test_null_sweeps_rarely_support_any_claim() -> None:
    sweeps = 200
    supported = null_supported_counts(sweeps, seed=20240, n_resamples=400)
    assert supported.max() <= false_positive_bound(sweeps), supported


@pytest.mark.slow
def test_null_sweeps_rarely_support_any_claim_many() -> None:
    sweeps = 1500
    supported = null_supported_counts(sweeps, seed=7, n_resamples=2000)
    assert supported.max() <= false_positive_bound(sweeps), supported


# ----------------------------------------------------------------------------- power


def test_power_of_claim_one_matches_paired_t_power() -> None:
    """One comparison (XX − CR, one column, n = 15): rejection rate ≈ the t test's power."""
    rng = np.random.default_rng(99)
    sigma, delta, trials = 0.01, 0.0055, 300           # sd of the paired differences
    models = {"CR": MODELS["CR"], "XX": MODELS["XX"]}
    supported = 0
    for i in range(trials):
        scores = simulate_scores(rng, list(models), columns=("joint",), offset_sd=0.01,
                                 noise_sd=sigma / math.sqrt(2), effects={("XX", "joint"): delta})
        verdict = multimodal_beats_unimodal(scores, models, seed=i, n_resamples=200)
        supported += verdict.status == "supported"
    power = paired_t_power(delta, sigma, 15, 0.05)
    assert 0.4 < power < 0.8                           # where the rate says most
    low, high = sps.binom.interval(0.999, trials, power)
    assert low <= supported <= high, (supported / trials, power)


def test_power_of_claim_two_matches_block_f_power() -> None:
    """Three multimodal models at −Δ/2, 0, +Δ/2 (the least favourable layout): rate ≈ F power."""
    rng = np.random.default_rng(5)
    sigma, spread, trials = 0.01, 0.011, 300
    models = {m: MODELS[m] for m in ("XX", "CC", "RR")}
    effects = {("XX", "joint"): -spread / 2, ("RR", "joint"): spread / 2}
    supported = 0
    for i in range(trials):
        scores = simulate_scores(rng, list(models), columns=("joint",), noise_sd=sigma,
                                 effects=effects)
        verdict = composition_matters(scores, models, seed=i, n_resamples=400)
        supported += verdict.status == "supported"
    power = anova_f_power(spread, sigma, 15, 3, 0.05)
    assert 0.3 < power < 0.8
    low, high = sps.binom.interval(0.999, trials, power)
    assert low <= supported <= high, (supported / trials, power)


# ----------------------------------------------------------------------------- verdict logic


def test_large_planted_effects_are_supported() -> None:
    rng = np.random.default_rng(1)
    scores = simulate_scores(rng, effects={("XX-RR", c): 0.05 for c in COLUMNS})
    links = simulate_links(rng, linked=True, gains={"XX-RR": 0.15, "CR-XX-RR": 0.15})
    verdicts = by_id(evaluate_claims(scores, MODELS, links))
    assert {i: v.status for i, v in verdicts.items()} == dict.fromkeys(range(1, 6), "supported")
    one = verdicts[1]
    assert [c.column for c in one.comparisons] == list(COLUMNS)
    assert all(c.label == "XX-RR − CR" and c.n == 15 and c.ci_low > 0 for c in one.comparisons)
    assert all(0.04 < c.mean < 0.06 for c in one.comparisons)
    assert len(verdicts[4].comparisons) == 6                       # 3 columns × dccae, mmvae
    assert verdicts[5].details["chosen"] == "XX-RR"
    assert verdicts[5].details["significant_runs"] == 15
    assert "\n" not in "".join(v.summary for v in verdicts.values())


def test_clearly_opposite_effects_are_not_supported() -> None:
    rng = np.random.default_rng(2)
    effects = {(m, c): 0.05 * (1 + (m != "CR")) for m in ("CR", "dccae", "mmvae")
               for c in COLUMNS}                 # CR 0.05 above the rest, decoders 0.10
    scores = simulate_scores(rng, noise_sd=0.002, effects=effects)
    links = simulate_links(rng, linked=False, gains={"XX-RR": -0.15, "CR-XX-RR": -0.15})
    verdicts = by_id(evaluate_claims(scores, MODELS, links))
    assert {i: v.status for i, v in verdicts.items()} == dict.fromkeys(range(1, 6),
                                                                       "not supported")
    assert all(c.ci_high < 0 for c in verdicts[1].comparisons + verdicts[4].comparisons)
    assert all(c.ci_high < 0 for c in verdicts[3].comparisons)
    # claim 2: equal models, little noise: the runs could have seen a spread of 0.01
    assert all(c.mde <= 0.01 and c.p_adjusted > 0.05 for c in verdicts[2].comparisons)
    assert verdicts[5].details["majority"] is False


def test_tiny_sweep_is_inconclusive_and_says_the_detectable_effect() -> None:
    rng = np.random.default_rng(3)
    models = {m: MODELS[m] for m in ("CR", "XX")}
    scores = simulate_scores(rng, list(models), folds=2, seeds=3, columns=("joint",),
                             noise_sd=0.001)
    differences = [0.03, -0.02, 0.01, 0.04, -0.01, 0.02]           # sign-flip p = 11/64
    scores.loc[(scores["model"] == "XX") & (scores["split"] == "test"), "value"] = (
        scores.loc[(scores["model"] == "CR") & (scores["split"] == "test"), "value"].to_numpy()
        + differences)
    verdict = multimodal_beats_unimodal(scores, models)
    assert verdict.status == "inconclusive"
    (comparison,) = verdict.comparisons
    assert comparison.n == 6 and comparison.ci_high > 0 and comparison.mde > 0.01
    assert comparison.p == pytest.approx(11 / 64)
    assert comparison.mean == pytest.approx(np.mean(differences))
    assert f"too few runs to detect an effect of {comparison.mde:.3f}" in verdict.summary
    three = simulate_scores(rng, list(models), folds=1, seeds=3, columns=("joint",),
                            effects={("XX", "joint"): 0.05})
    verdict = multimodal_beats_unimodal(three, models)       # 3 runs: 2^-3 > 0.05
    assert verdict.status == "inconclusive"
    assert verdict.comparisons[0].mde == math.inf
    assert "too few runs to detect an effect of any size" in verdict.summary


def test_missing_models_are_not_tested_and_named() -> None:
    rng = np.random.default_rng(4)
    models = {m: MODELS[m] for m in ("XX", "CC")}
    verdicts = by_id(evaluate_claims(simulate_scores(rng, list(models)), models))
    assert all(v.status == "not tested" for v in verdicts.values())
    assert "CR" in verdicts[1].summary
    assert "3 multimodal" in verdicts[2].summary and "2 multimodal" in verdicts[2].summary
    assert "link table" in verdicts[3].summary and "link table" in verdicts[5].summary
    assert "decoder baseline" in verdicts[4].summary
    no_pairs = {m: MODELS[m] for m in ("CR", "XX", "CC", "dccae")}
    verdict = rr_regularises_and_relates(simulate_scores(rng, list(no_pairs)), no_pairs,
                                         simulate_links(rng, list(no_pairs)))
    assert verdict.status == "not tested" and "XX-RR" in verdict.summary
    only_cr = {"CR": MODELS["CR"], "dccae": DECODER}
    verdict = shared_subspace_links(simulate_scores(rng, list(only_cr)), only_cr,
                                    simulate_links(rng, list(only_cr)))
    assert verdict.status == "not tested" and "multimodal" in verdict.summary


def test_decide_status_rules() -> None:
    def comparison(p: float, ci_high: float = 0.02, mde: float = 0.02) -> Comparison:
        return Comparison("a − b", "joint", 15, 0.01, -0.01, ci_high, p, p, mde)

    def status(comparisons: list[Comparison], condition: bool | None = None) -> str:
        return decide_status(comparisons, alpha=0.05, min_effect=0.01, condition=condition)

    assert status([comparison(0.01), comparison(0.04)]) == "supported"
    assert status([comparison(0.01)], condition=False) == "not supported"
    assert status([], condition=True) == "supported"
    assert status([comparison(0.01), comparison(0.3, ci_high=0.0)]) == \
        "not supported"
    assert status([comparison(0.3, mde=0.009)]) == "not supported"
    assert status([comparison(0.3, mde=0.011)]) == "inconclusive"
    assert status([comparison(0.3, mde=math.inf)]) == "inconclusive"
    with pytest.raises(ValueError, match="comparison"):
        status([])


# ----------------------------------------------------------------------------- rule details


def test_choice_is_made_on_validation_not_test() -> None:
    rng = np.random.default_rng(6)
    models = {m: MODELS[m] for m in ("CR", "XX", "CC")}
    scores = simulate_scores(rng, list(models), columns=("joint",), noise_sd=0.001)
    is_val = scores["split"] == "val"
    scores.loc[is_val & (scores["model"] == "CC"), "value"] += 0.05     # best on validation
    scores.loc[~is_val & (scores["model"] == "XX"), "value"] += 0.05    # best on test
    verdict = multimodal_beats_unimodal(scores, models)
    assert verdict.details["joint"]["chosen"] == "CC"
    assert verdict.comparisons[0].label == "CC − CR"
    assert verdict.status == "not supported"                # CC is no better than CR on test


def test_headline_metric_is_roc_auc_when_present() -> None:
    rng = np.random.default_rng(8)
    models = {m: MODELS[m] for m in ("CR", "XX")}
    auc = simulate_scores(rng, list(models), columns=("joint",), effects={("XX", "joint"): 0.05})
    accuracy = simulate_scores(rng, list(models), columns=("joint",), metric="accuracy",
                               effects={("CR", "joint"): 0.05})
    both = pd.concat([accuracy, auc], ignore_index=True)
    assert multimodal_beats_unimodal(both, models).status == "supported"
    assert multimodal_beats_unimodal(accuracy, models).status == "not supported"


def test_rr_gain_is_paired_per_run_over_pairs() -> None:
    rng = np.random.default_rng(9)
    scores = simulate_scores(rng)
    links = simulate_links(rng)
    verdict = rr_regularises_and_relates(scores, MODELS, links)
    assert verdict.details["pairs"] == ["XX → XX-RR", "CR-XX → CR-XX-RR"]
    strength = links.set_index(["model", "fold", "seed"])["strength"]
    gains = ((strength["XX-RR"] - strength["XX"]) + (strength["CR-XX-RR"] - strength["CR-XX"])) / 2
    (comparison,) = verdict.comparisons
    assert comparison.n == 15                              # runs, not runs × pairs
    assert comparison.mean == pytest.approx(gains.mean())
    assert set(verdict.details["probe_effect"]) == set(COLUMNS)
    assert "probe effect of +RR" in verdict.summary


def test_shared_subspace_counts_significant_runs() -> None:
    rng = np.random.default_rng(10)
    scores = simulate_scores(rng, effects={("CC", c): 0.05 for c in COLUMNS})
    links = simulate_links(rng, linked=False)
    links.loc[links["model"] == "CC", "p_first"] = [0.001] * 8 + [0.5] * 7
    verdict = shared_subspace_links(scores, MODELS, links)
    assert verdict.details["chosen"] == "CC"
    assert (verdict.details["significant_runs"], verdict.details["runs"]) == (8, 15)
    assert verdict.details["majority"] is True
    assert verdict.comparisons[0].label == "r1 CC − CR"
    without_cr = links[links["model"] != "CR"]
    verdict = shared_subspace_links(scores, MODELS, without_cr)
    assert verdict.comparisons == [] and verdict.status == "supported"
    assert "CR has no link rows" in verdict.summary


def test_evaluate_claims_equals_the_single_claims() -> None:
    rng = np.random.default_rng(12)
    scores, links = simulate_scores(rng), simulate_links(rng)
    together = evaluate_claims(scores, MODELS, links, n_resamples=500)
    alone = [multimodal_beats_unimodal(scores, MODELS, n_resamples=500),
             composition_matters(scores, MODELS, n_resamples=500),
             rr_regularises_and_relates(scores, MODELS, links, n_resamples=500),
             decoder_free_beats_decoders(scores, MODELS, n_resamples=500),
             shared_subspace_links(scores, MODELS, links, n_resamples=500)]
    assert repr(together) == repr(alone)                       # repr: nan fields compare equal
    assert [v.claim_id for v in together] == [1, 2, 3, 4, 5]


# ----------------------------------------------------------------------------- bad input


def test_bad_tables_are_rejected_early() -> None:
    rng = np.random.default_rng(13)
    scores = simulate_scores(rng, ["CR", "XX"])
    models = {m: MODELS[m] for m in ("CR", "XX")}
    with pytest.raises(ValueError, match="lacks column"):
        evaluate_claims(scores.drop(columns="split"), models)
    with pytest.raises(ValueError, match="ModelInfo for \\['XX'\\]"):
        evaluate_claims(scores, {"CR": MODELS["CR"]})
    with pytest.raises(ValueError, match="more than one"):
        evaluate_claims(pd.concat([scores, scores.iloc[:1]]), models)
    with pytest.raises(ValueError, match="split"):
        evaluate_claims(scores.assign(split="train"), models)
    with pytest.raises(ValueError, match="roc_auc"):
        evaluate_claims(scores.assign(metric="f1"), models)
    with pytest.raises(ValueError, match="value must be finite"):
        evaluate_claims(scores.assign(value=np.nan), models)
    with pytest.raises(ValueError, match="fold must be finite integers"):
        evaluate_claims(scores.assign(fold=0.5), models)
    with pytest.raises(ValueError, match="both have taxonomy modes"):
        evaluate_claims(scores, {"CR": MODELS["CR"], "XX": MODELS["CR"]})
    links = simulate_links(rng, ["CR", "XX"])
    with pytest.raises(ValueError, match="p_first"):
        evaluate_claims(scores, models, links.assign(p_first=2.0))
    with pytest.raises(ValueError, match="alpha"):
        evaluate_claims(scores, models, alpha=5)
    with pytest.raises(ValueError, match="DataFrame"):
        evaluate_claims(scores.to_dict(), models)  # type: ignore[arg-type]


def test_model_info_is_validated() -> None:
    with pytest.raises(ValueError, match="subset"):
        ModelInfo("taxonomy", frozenset({"XY"}))
    with pytest.raises(ValueError, match="subset"):
        ModelInfo("taxonomy")
    with pytest.raises(ValueError, match="empty for a baseline"):
        ModelInfo("baseline", frozenset({"CR"}))
    with pytest.raises(ValueError, match="kind"):
        ModelInfo("other")  # type: ignore[arg-type]
    assert ModelInfo("taxonomy", frozenset({"CR", "XX"})).multimodal_taxonomy
    assert not ModelInfo("taxonomy", frozenset({"CR"})).multimodal_taxonomy
    assert DECODER.decoder_baseline and not ModelInfo("baseline", decoder=True).decoder_baseline
