r"""The paper's five claims, decided by tests on a sweep's score table.

Fedorov et al., "Self-Supervised Multimodal Domino: in Search of Biomarkers for Alzheimer's
Disease" (arXiv 2012.13623; NeuroImage 285:120485, 2024) claim that (1) multimodal contrastive
objectives beat the unimodal one, (2) the composition of objectives matters, (3) maximising the
similarity of global representations (RR) regularises yet reveals multimodal relations,
(4) decoder-free models beat DCCAE and MMVAE under linear evaluation, and (5) a jointly learned
shared subspace links the modalities.

Inputs
------
* ``scores``: a long table with columns ``model, fold, seed, split, modality, metric, value``;
  ``split`` is ``val`` or ``test``, ``modality`` a representation column (``rotated``,
  ``noisy``, ``joint``, ``t1``, ``falff`` …). Only the headline metric is used: ``roc_auc`` if
  the table has it, else ``accuracy``.
* ``models``: :class:`ModelInfo` for every model of the table (taxonomy modes, decoder,
  multimodal).
* ``links`` (optional): one row per run, ``model, fold, seed, first, strength, p_first`` — the
  held-out canonical correlations of the two modalities' representations of that run: ``first``
  = :math:`r_1`, ``strength`` = mean of :math:`r_1..r_3`, ``p_first`` the permutation p-value
  of :math:`r_1`.

A run is r = (fold, seed); models are compared **paired over the runs both have**. "Chosen on
validation" is the model with the highest mean *validation* score in the column (ties: the
first in table order); test scores never choose anything.

Tests
-----
For models A, B and column c, :math:`d_r = s^{test}_A(r, c) - s^{test}_B(r, c)` over their common
runs (n of them). Each comparison reports the mean :math:`\bar d` (oriented so that positive
favours the claim), its 95 % BCa bootstrap interval, the one-sided sign-flip permutation p-value
for :math:`H_0`: the :math:`d_r` are symmetric about 0 against :math:`\bar d > 0`
(:func:`~mmssl.evaluation.stats.sign_flip_test`, exact for n ≤ 16), and the minimum detectable
effect :math:`\mathrm{MDE}` — the mean difference the paired t test detects with 80 % power given
the observed sd of :math:`d_r` and n (:func:`~mmssl.evaluation.stats.minimum_detectable_effect`)
at level α/m, m the number of comparisons of the claim (Holm's first, strictest threshold, so
the power statement holds for the whole procedure), lowered to the largest level the
sign-flip test can attain with n runs
(:func:`~mmssl.evaluation.stats.sign_flip_attainable_level`; MDE = ∞ when it cannot reject at
all, e.g. n ≤ 4 at α = 0.05). In simulation the sign-flip test then has 73–80 % power at the
MDE for n ≥ 5. The p-values of one claim are adjusted together by Holm
(:func:`~mmssl.evaluation.stats.holm`).

1. **Multimodal beats unimodal.** Per column c: M_c = the multimodal taxonomy model (modes
   ⊄ {CR}) chosen on validation; comparison M_c − CR.
2. **Composition matters.** Among the multimodal taxonomy models with ≥ 2 test runs in c (at
   least 3 such models), restricted to the B runs all of them have (B ≥ 2): the B × K table
   :math:`y_{bk}` is tested by the within-block permutation test of
   :math:`S = \mathrm{Var}_k(\bar y_{\cdot k})`
   (:func:`~mmssl.evaluation.stats.within_block_permutation_test`; H₀: the models are
   exchangeable within every run). The effect reported is the spread
   :math:`\Delta = \max_k \bar y_{\cdot k} - \min_k \bar y_{\cdot k}`; its MDE is the
   smallest spread the block-design F test detects with 80 % power at α/m (lowered to the
   permutation test's attainable level) whatever the other means, with σ the residual sd of the
   additive model (:func:`~mmssl.evaluation.stats.minimum_detectable_spread`). Friedman's p is
   reported beside it (``details``). No bootstrap interval (a range is never ≤ 0).
3. **RR regularises yet reveals relations.** For every pair (O, O+RR) of taxonomy models and
   every run r with link rows for both, :math:`g_{O,r} = \mathrm{strength}_{O+RR}(r) -
   \mathrm{strength}_O(r)`; the runs are kept as the unit of pairing by averaging over the
   pairs available in each run, :math:`g_r = \operatorname{mean}_O g_{O,r}`, and one comparison
   tests :math:`\bar g > 0`. The probe effect of adding RR, the same per-run average of test
   score gains per column, is reported with two-sided p-values (Holm over columns) in
   ``details["probe_effect"]`` but does not enter the verdict.
4. **Decoder-free beats DCCAE and MMVAE.** Per column c and decoder baseline D (a baseline with
   ``decoder`` and ``multimodal``): T_c = the taxonomy model chosen on validation; comparison
   T_c − D.
5. **A shared subspace links the modalities.** M = the multimodal taxonomy model with link rows
   chosen on validation in the ``joint`` column (when the table has none: on the mean of its
   columns' validation means). Extra condition: a strict majority of M's runs have
   ``p_first`` < α, i.e. :math:`k > n/2` with :math:`k = \#\{r : p_1(r) < \alpha\}` (the
   binomial p-value of k against rate α is reported). If CR has link rows, one comparison:
   :math:`r_1` of M − :math:`r_1` of CR, paired over common runs (two views of one subject are
   correlated even when each encoder is trained alone, so "linked" must mean "more than
   unimodal"); without them the claim rests on the majority condition alone.

Verdict
-------
* ``supported``: every comparison has Holm-adjusted p ≤ α and the claim's extra condition holds;
* ``not supported``: otherwise, if the extra condition fails, or some comparison's interval lies
  at or below 0 (``ci_high`` ≤ 0), or some comparison is not significant although its MDE ≤
  ``min_effect`` (the runs had the power to see a relevant effect, and did not);
* ``inconclusive``: otherwise — the summary says which effect the runs were too few to detect;
* ``not tested``: the table lacks the models or runs the claim needs (named in the summary).

Caveat: choosing on validation is unbiased only if a model's validation and test scores share
no run-specific luck; when they do, the chosen model's test mean is optimistic and claims 1, 4
and 5 are somewhat liberal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from mmssl.analysis.verdicts import (
    LINK_COLUMNS,
    MDE_POWER,
    SCORE_COLUMNS,
    TITLES,
    ModelInfo,
    Run,
    Status,
    Verdict,
    _not_tested,
    _paired,
    _paired_comparisons,
    _Settings,
    _Sweep,
    _verdict,
    decide_status,
)
from mmssl.evaluation.stats import (
    Comparison,
    adjust_holm,
    block_permutation_attainable_level,
    format_p,
    friedman_test,
    minimum_detectable_spread,
    within_block_permutation_test,
)

__all__ = [
    "LINK_COLUMNS", "SCORE_COLUMNS", "TITLES", "ModelInfo", "Status", "Verdict",
    "composition_matters", "decide_status", "decoder_free_beats_decoders", "evaluate_claims",
    "multimodal_beats_unimodal", "rr_regularises_and_relates", "shared_subspace_links",
]


def _claim_multimodal_beats_unimodal(sweep: _Sweep, settings: _Settings) -> Verdict:
    cr, multimodal = sweep.unimodal_cr(), sweep.multimodal_taxonomy()
    missing = ([] if cr else ["CR (the unimodal taxonomy model)"]) + (
        [] if multimodal else ["a multimodal taxonomy model (modes beyond CR)"])
    if cr is None or not multimodal:
        return _not_tested(1, " and ".join(missing))
    raw, details = [], {}
    for column in sweep.columns:
        chosen = sweep.choose_on_validation(multimodal, column)
        if chosen is None:
            continue
        d = _paired(sweep.runs(chosen, column), sweep.runs(cr, column))
        cr_mean = np.mean(list(sweep.runs(cr, column).values()) or [np.nan])
        above = [m for m in multimodal
                 if np.mean(list(sweep.runs(m, column).values()) or [np.nan]) > cr_mean]
        details[column] = {"chosen": chosen, "multimodal_above_CR": f"{len(above)}/"
                                                                   f"{len(multimodal)}"}
        if len(d):
            raw.append((f"{chosen} − {cr}", column, d))
    if not raw:
        return _not_tested(1, "runs shared by CR and the chosen multimodal model (or "
                              "validation scores to choose it)", details)
    return _verdict(1, _paired_comparisons(raw, settings), settings, [], details)


def _residual_sd(table: np.ndarray) -> float:
    """sd of the residuals of the additive block model, on (B−1)(K−1) degrees of freedom."""
    residual = (table - table.mean(axis=1, keepdims=True) - table.mean(axis=0, keepdims=True)
                + table.mean())
    blocks, treatments = table.shape
    return float(np.sqrt(np.sum(residual**2) / ((blocks - 1) * (treatments - 1))))


def _claim_composition_matters(sweep: _Sweep, settings: _Settings) -> Verdict:
    multimodal = sweep.multimodal_taxonomy()
    tables, details, skipped = [], {}, []
    for column in sweep.columns:
        eligible = [m for m in multimodal if len(sweep.runs(m, column)) >= 2]
        common = sorted(set.intersection(*[set(sweep.runs(m, column)) for m in eligible])
                        if eligible else set())
        if len(eligible) < 3 or len(common) < 2:
            skipped.append(f"{column}: {len(eligible)} multimodal taxonomy models with ≥ 2 runs "
                           f"sharing {len(common)} runs")
            continue
        table = np.array([[sweep.runs(m, column)[r] for m in eligible] for r in common])
        tables.append((column, eligible, table))
    if not tables:
        found = "; ".join(skipped) if skipped else "no test column"
        return _not_tested(2, f"≥ 3 multimodal taxonomy models with ≥ 2 common runs ({found})")
    comparisons = []
    for column, eligible, table in tables:
        means = table.mean(axis=0)
        best, worst = eligible[int(np.argmax(means))], eligible[int(np.argmin(means))]
        blocks, treatments = table.shape
        sd = _residual_sd(table)
        level = block_permutation_attainable_level(blocks, treatments,
                                                   settings.alpha / len(tables),
                                                   settings.n_resamples)
        comparisons.append(Comparison(
            label=f"spread of {treatments} multimodal models ({best} − {worst})", column=column,
            n=blocks, mean=float(means.max() - means.min()), ci_low=float("nan"),
            ci_high=float("nan"),
            p=within_block_permutation_test(table, n_resamples=settings.n_resamples,
                                            seed=settings.seed),
            mde=(minimum_detectable_spread(sd, blocks, treatments, level, MDE_POWER)
                 if level > 0 else math.inf)))
        details[column] = {"models": eligible, "runs": blocks, "residual_sd": sd,
                           "friedman_p": friedman_test(table),
                           "means": dict(zip(eligible, map(float, means), strict=True))}
    comparisons = adjust_holm(comparisons)
    return _verdict(2, comparisons, settings, [f"skipped {s}" for s in skipped], details)


def _rr_pairs(sweep: _Sweep) -> list[tuple[str, str]]:
    """(O, O+RR) for every taxonomy model O without RR whose O+RR was also run."""
    return [(base, sweep.by_modes[sweep.models[base].modes | {"RR"}])
            for base in sweep.taxonomy()
            if "RR" not in sweep.models[base].modes
            and sweep.models[base].modes | {"RR"} in sweep.by_modes]


def _per_run_mean_gain(pairs: Sequence[tuple[str, str]],
                       values: Mapping[str, Mapping[Run, float]]) -> np.ndarray:
    """g_r = mean over the pairs (O, O+RR) present in run r of values[O+RR] − values[O]."""
    gains: dict[Run, list[float]] = {}
    for base, with_rr in pairs:
        a, b = values.get(with_rr, {}), values.get(base, {})
        for run in set(a) & set(b):
            gains.setdefault(run, []).append(a[run] - b[run])
    return np.array([np.mean(gains[r]) for r in sorted(gains)], dtype=float)


def _claim_rr_regularises_and_relates(sweep: _Sweep, settings: _Settings) -> Verdict:
    if sweep.links is None:
        return _not_tested(3, "a link table (model, fold, seed, first, strength, p_first)")
    links = sweep.links
    pairs = _rr_pairs(sweep)
    if not pairs:
        return _not_tested(3, "taxonomy models with and without RR (e.g. XX and XX-RR)")
    gains = _per_run_mean_gain(pairs, {m: {r: v.strength for r, v in rows.items()}
                                       for m, rows in links.items()})
    pair_names = [f"{b} → {w}" for b, w in pairs]
    if not len(gains):
        return _not_tested(3, "link rows for both models of a pair in a run (pairs: "
                              + ", ".join(pair_names) + ")")
    comparisons = _paired_comparisons(
        [(f"link strength gain of +RR over {len(pairs)} pairs", "links", gains)], settings)
    probe_raw = [(f"probe gain of +RR over {len(pairs)} pairs", column,
                  _per_run_mean_gain(pairs, {m: sweep.runs(m, column) for m in sweep.models}))
                 for column in sweep.columns]
    probe = _paired_comparisons([r for r in probe_raw if len(r[2])], settings, "two-sided")
    details = {"pairs": pair_names, "probe_effect": {c.column: asdict(c) for c in probe}}
    probe_text = ("probe effect of +RR (two-sided, reported only): "
                  + ", ".join(f"{c.column} {c.mean:+.3f} (p={format_p(c.p_adjusted)})"
                              for c in probe)) if probe else "no probe scores for the pairs"
    return _verdict(3, comparisons, settings, [probe_text], details)


def _claim_decoder_free_beats_decoders(sweep: _Sweep, settings: _Settings) -> Verdict:
    taxonomy = sweep.taxonomy()
    baselines = [m for m, info in sweep.models.items() if info.decoder_baseline]
    missing = ([] if taxonomy else ["a taxonomy model"]) + (
        [] if baselines else ["a multimodal decoder baseline (e.g. dccae, mmvae)"])
    if missing:
        return _not_tested(4, " and ".join(missing))
    raw: list[tuple[str, str, np.ndarray]] = []
    details: dict[str, Any] = {}
    for column in sweep.columns:
        chosen = sweep.choose_on_validation(taxonomy, column)
        if chosen is None:
            continue
        details[column] = {"chosen": chosen}
        for baseline in baselines:
            d = _paired(sweep.runs(chosen, column), sweep.runs(baseline, column))
            if len(d):
                raw.append((f"{chosen} − {baseline}", column, d))
    if not raw:
        return _not_tested(4, "runs shared by the chosen taxonomy model and "
                              + ", ".join(baselines), details)
    details["baselines"] = baselines
    return _verdict(4, _paired_comparisons(raw, settings), settings, [], details)


def _claim_shared_subspace_links(sweep: _Sweep, settings: _Settings) -> Verdict:
    if sweep.links is None:
        return _not_tested(5, "a link table (model, fold, seed, first, strength, p_first)")
    links = sweep.links
    candidates = [m for m in sweep.multimodal_taxonomy() if links.get(m)]
    if not candidates:
        return _not_tested(5, "link rows of a multimodal taxonomy model")
    chosen = sweep.choose_on_validation(candidates, "joint" if "joint" in sweep.columns else None)
    if chosen is None:
        return _not_tested(5, "validation scores to choose among " + ", ".join(candidates))
    own = links[chosen]
    n = len(own)
    significant = sum(v.p_first < settings.alpha for v in own.values())
    majority = significant > n / 2
    details: dict[str, Any] = {
        "chosen": chosen, "runs": n, "significant_runs": significant, "majority": majority,
        "binomial_p": float(sps.binomtest(significant, n, settings.alpha,
                                          alternative="greater").pvalue),
        "first_mean": float(np.mean([v.first for v in own.values()]))}
    parts = [f"{chosen}: r1 {details['first_mean']:.3f}, p_first < {settings.alpha:g} in "
             f"{significant}/{n} runs ({'a' if majority else 'no'} majority)"]
    cr = sweep.unimodal_cr()
    raw = []
    if cr is not None and links.get(cr):
        d = _paired({r: v.first for r, v in own.items()},
                    {r: v.first for r, v in links[cr].items()})
        if len(d):
            raw.append((f"r1 {chosen} − {cr}", "links", d))
        else:
            parts.append(f"{cr} shares no runs with {chosen}: r1 not compared")
    else:
        parts.append("CR has no link rows: r1 not compared with unimodal")
    comparisons = _paired_comparisons(raw, settings) if raw else []
    return _verdict(5, comparisons, settings, parts, details, condition=majority)


def _settings(alpha: float, min_effect: float, seed: int, n_resamples: int) -> _Settings:
    return _Settings(alpha=alpha, min_effect=min_effect, seed=seed, n_resamples=n_resamples)


def multimodal_beats_unimodal(scores: pd.DataFrame, models: Mapping[str, ModelInfo], *,
                              alpha: float = 0.05, min_effect: float = 0.01, seed: int = 0,
                              n_resamples: int = 10000) -> Verdict:
    """Claim 1: per column, the multimodal model chosen on validation − CR, paired over runs."""
    return _claim_multimodal_beats_unimodal(
        _Sweep(scores, models, None), _settings(alpha, min_effect, seed, n_resamples))


def composition_matters(scores: pd.DataFrame, models: Mapping[str, ModelInfo], *,
                        alpha: float = 0.05, min_effect: float = 0.01, seed: int = 0,
                        n_resamples: int = 10000) -> Verdict:
    """Claim 2: multimodal taxonomy models' means differ beyond run-to-run variance, per column."""
    return _claim_composition_matters(
        _Sweep(scores, models, None), _settings(alpha, min_effect, seed, n_resamples))


def rr_regularises_and_relates(scores: pd.DataFrame, models: Mapping[str, ModelInfo],
                               links: pd.DataFrame | None, *, alpha: float = 0.05,
                               min_effect: float = 0.01, seed: int = 0,
                               n_resamples: int = 10000) -> Verdict:
    """Claim 3: adding RR raises the held-out link strength (per-run mean gain over pairs)."""
    return _claim_rr_regularises_and_relates(
        _Sweep(scores, models, links), _settings(alpha, min_effect, seed, n_resamples))


def decoder_free_beats_decoders(scores: pd.DataFrame, models: Mapping[str, ModelInfo], *,
                                alpha: float = 0.05, min_effect: float = 0.01, seed: int = 0,
                                n_resamples: int = 10000) -> Verdict:
    """Claim 4: per column × decoder baseline, the chosen taxonomy model − the baseline."""
    return _claim_decoder_free_beats_decoders(
        _Sweep(scores, models, None), _settings(alpha, min_effect, seed, n_resamples))


def shared_subspace_links(scores: pd.DataFrame, models: Mapping[str, ModelInfo],
                          links: pd.DataFrame | None, *, alpha: float = 0.05,
                          min_effect: float = 0.01, seed: int = 0,
                          n_resamples: int = 10000) -> Verdict:
    """Claim 5: the chosen multimodal model's runs link the modalities, more than CR's."""
    return _claim_shared_subspace_links(
        _Sweep(scores, models, links), _settings(alpha, min_effect, seed, n_resamples))


def evaluate_claims(scores: pd.DataFrame, models: Mapping[str, ModelInfo],
                    links: pd.DataFrame | None = None, *, alpha: float = 0.05,
                    min_effect: float = 0.01, seed: int = 0,
                    n_resamples: int = 10000) -> list[Verdict]:
    """All five claims on one sweep (tables validated once), in the paper's order.

    ``alpha``: level of every claim (family-wise within a claim, by Holm); ``min_effect``: the
    smallest effect (in score units, or link-correlation units for claims 3 and 5) that
    matters; ``n_resamples``: bootstrap and Monte Carlo permutation resamples.
    """
    sweep = _Sweep(scores, models, links)
    settings = _settings(alpha, min_effect, seed, n_resamples)
    return [
        _claim_multimodal_beats_unimodal(sweep, settings),
        _claim_composition_matters(sweep, settings),
        _claim_rr_regularises_and_relates(sweep, settings),
        _claim_decoder_free_beats_decoders(sweep, settings),
        _claim_shared_subspace_links(sweep, settings),
    ]
