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
(:func:`~mmssl.analysis.stats.sign_flip_test`, exact for n ≤ 16), and the minimum detectable
effect :math:`\mathrm{MDE}` — the mean difference the paired t test detects with 80 % power given
the observed sd of :math:`d_r` and n (:func:`~mmssl.analysis.stats.minimum_detectable_effect`)
at level α/m, m the number of comparisons of the claim (Holm's first, strictest threshold, so
the power statement holds for the whole procedure), lowered to the largest level the
sign-flip test can attain with n runs
(:func:`~mmssl.analysis.stats.sign_flip_attainable_level`; MDE = ∞ when it cannot reject at
all, e.g. n ≤ 4 at α = 0.05). In simulation the sign-flip test then has 73–80 % power at the
MDE for n ≥ 5. The p-values of one claim are adjusted together by Holm
(:func:`~mmssl.analysis.stats.holm`).

1. **Multimodal beats unimodal.** Per column c: M_c = the multimodal taxonomy model (modes
   ⊄ {CR}) chosen on validation; comparison M_c − CR.
2. **Composition matters.** Among the multimodal taxonomy models with ≥ 2 test runs in c (at
   least 3 such models), restricted to the B runs all of them have (B ≥ 2): the B × K table
   :math:`y_{bk}` is tested by the within-block permutation test of
   :math:`S = \mathrm{Var}_k(\bar y_{\cdot k})`
   (:func:`~mmssl.analysis.stats.within_block_permutation_test`; H₀: the models are
   exchangeable within every run). The effect reported is the spread
   :math:`\Delta = \max_k \bar y_{\cdot k} - \min_k \bar y_{\cdot k}`; its MDE is the
   smallest spread the block-design F test detects with 80 % power at α/m (lowered to the
   permutation test's attainable level) whatever the other means, with σ the residual sd of the
   additive model (:func:`~mmssl.analysis.stats.minimum_detectable_spread`). Friedman's p is
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
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats as sps

from mmssl.analysis.stats import (
    Alternative,
    Comparison,
    adjust_holm,
    block_permutation_attainable_level,
    bootstrap_ci,
    format_p,
    friedman_test,
    minimum_detectable_effect,
    minimum_detectable_spread,
    sign_flip_attainable_level,
    sign_flip_test,
    within_block_permutation_test,
)
from mmssl.objectives.taxonomy import MODES

Status = Literal["supported", "not supported", "inconclusive", "not tested"]
Run = tuple[int, int]

#: The taxonomy's modes (mirrors :data:`mmssl.objectives.taxonomy.MODES`, kept here so this pure
#: module does not import torch).
TAXONOMY_MODES: frozenset[str] = frozenset(MODES)
SCORE_COLUMNS: tuple[str, ...] = ("model", "fold", "seed", "split", "modality", "metric", "value")
LINK_COLUMNS: tuple[str, ...] = ("model", "fold", "seed", "first", "strength", "p_first")
SPLITS: frozenset[str] = frozenset({"val", "test"})
HEADLINE_METRICS: tuple[str, ...] = ("roc_auc", "accuracy")
TITLES: dict[int, str] = {
    1: "multimodal beats unimodal",
    2: "composition matters",
    3: "RR regularises yet reveals relations",
    4: "decoder-free beats DCCAE and MMVAE",
    5: "a shared subspace links the modalities",
}
#: Power at which the minimum detectable effect is stated.
MDE_POWER = 0.8


@dataclass(frozen=True)
class ModelInfo:
    """What the claims need to know about a model.

    ``kind`` is ``"taxonomy"`` (then ``modes`` is a non-empty subset of CR, XX, CC, RR) or
    ``"baseline"`` (``modes`` empty); ``decoder``: it reconstructs its input (AE, DCCAE, MMVAE);
    ``multimodal``: it learns from more than one modality.
    """

    kind: Literal["taxonomy", "baseline"]
    modes: frozenset[str] = frozenset()
    decoder: bool = False
    multimodal: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("taxonomy", "baseline"):
            raise ValueError(f"ModelInfo.kind must be 'taxonomy' or 'baseline'; got {self.kind!r}")
        object.__setattr__(self, "modes", frozenset(self.modes))
        if self.kind == "taxonomy" and not (self.modes and self.modes <= TAXONOMY_MODES):
            raise ValueError("ModelInfo.modes of a taxonomy model must be a non-empty subset of "
                             f"{sorted(TAXONOMY_MODES)}; got {sorted(self.modes)}")
        if self.kind == "baseline" and self.modes:
            raise ValueError(f"ModelInfo.modes must be empty for a baseline; got "
                             f"{sorted(self.modes)}")

    @property
    def multimodal_taxonomy(self) -> bool:
        """A taxonomy model with a cross-modal mode (modes ⊄ {CR})."""
        return self.kind == "taxonomy" and bool(self.modes - {"CR"})

    @property
    def decoder_baseline(self) -> bool:
        """A multimodal baseline with a decoder (DCCAE, MMVAE): claim 4's opponents."""
        return self.kind == "baseline" and self.decoder and self.multimodal


@dataclass
class Verdict:
    """One claim decided: its status, a one-line summary and the comparisons behind it."""

    claim_id: int
    title: str
    status: Status
    summary: str
    comparisons: list[Comparison] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Settings:
    alpha: float
    min_effect: float
    seed: int
    n_resamples: int

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1); got {self.alpha}")
        if not self.min_effect >= 0:
            raise ValueError(f"min_effect must be non-negative; got {self.min_effect}")
        if self.n_resamples < 1:
            raise ValueError(f"n_resamples must be at least 1; got {self.n_resamples}")


@dataclass(frozen=True)
class _Link:
    first: float
    strength: float
    p_first: float


class _Sweep:
    """A validated score table (headline metric only) and link table, indexed for the claims."""

    def __init__(self, scores: pd.DataFrame, models: Mapping[str, ModelInfo],
                 links: pd.DataFrame | None) -> None:
        for name, info in models.items():
            if not isinstance(info, ModelInfo):
                raise ValueError(f"models[{name!r}] must be a ModelInfo; got {type(info).__name__}")
        table = _columns(scores, SCORE_COLUMNS, "scores", numeric=("value",))
        bad_splits = sorted(set(table["split"].tolist()) - SPLITS)
        if bad_splits:
            raise ValueError(f"scores.split must be 'val' or 'test'; got {bad_splits}")
        metrics = set(table["metric"].tolist())
        metric = next((m for m in HEADLINE_METRICS if m in metrics), None)
        if metric is None:
            raise ValueError(f"scores.metric needs one of {list(HEADLINE_METRICS)}; "
                             f"got {sorted(metrics)}")
        self.metric = metric
        keep = table["metric"] == metric
        rows = zip(*(table[c][keep].tolist() for c in ("model", "fold", "seed", "split",
                                                        "modality", "value")), strict=True)
        self.scores: dict[tuple[str, str, str], dict[Run, float]] = {}
        for model, fold, seed, split, column, value in rows:
            runs = self.scores.setdefault((model, split, column), {})
            if (fold, seed) in runs:
                raise ValueError(f"scores has more than one {metric} row for model={model!r}, "
                                 f"fold={fold}, seed={seed}, split={split!r}, modality={column!r}")
            runs[(fold, seed)] = value
        present = list(dict.fromkeys(table["model"][keep].tolist()))
        unknown = [m for m in present if m not in models]
        if unknown:
            raise ValueError(f"models lacks ModelInfo for {unknown} (models of the scores table)")
        self.models: dict[str, ModelInfo] = {m: models[m] for m in present}
        by_modes: dict[frozenset[str], str] = {}
        for name, info in self.models.items():
            if info.kind == "taxonomy":
                if info.modes in by_modes:
                    raise ValueError(f"models {by_modes[info.modes]!r} and {name!r} both have "
                                     f"taxonomy modes {sorted(info.modes)}; keep one per mode set")
                by_modes[info.modes] = name
        self.by_modes = by_modes
        modalities = list(dict.fromkeys(c for (_, split, c) in self.scores if split == "test"))
        self.columns = tuple([c for c in modalities if c != "joint"]
                             + (["joint"] if "joint" in modalities else []))
        self._val_means: dict[tuple[str, str], float] = {}
        self.links: dict[str, dict[Run, _Link]] | None = None
        if links is not None:
            self.links = _link_index(links, models)

    def runs(self, model: str, column: str, split: str = "test") -> dict[Run, float]:
        """(fold, seed) → score of ``model`` in ``column`` on ``split``."""
        return self.scores.get((model, split, column), {})

    def val_mean(self, model: str, column: str) -> float:
        """Mean validation score of ``model`` in ``column`` (``nan`` without any)."""
        key = (model, column)
        if key not in self._val_means:
            values = list(self.runs(model, column, "val").values())
            self._val_means[key] = float(np.mean(values)) if values else float("nan")
        return self._val_means[key]

    def choose_on_validation(self, candidates: Sequence[str], column: str | None) -> str | None:
        """The candidate with the highest mean validation score in ``column`` (``None``: the
        mean over all columns of those means); ties go to the first, ``None`` if all are nan."""
        best, best_value = None, -math.inf
        for model in candidates:
            value = (self.val_mean(model, column) if column is not None else
                     float(np.mean([self.val_mean(model, c) for c in self.columns])))
            if not math.isnan(value) and value > best_value:
                best, best_value = model, value
        return best

    def taxonomy(self) -> list[str]:
        return [m for m, info in self.models.items() if info.kind == "taxonomy"]

    def multimodal_taxonomy(self) -> list[str]:
        return [m for m, info in self.models.items() if info.multimodal_taxonomy]

    def unimodal_cr(self) -> str | None:
        return self.by_modes.get(frozenset({"CR"}))


def _link_index(links: pd.DataFrame, models: Mapping[str, ModelInfo],
                ) -> dict[str, dict[Run, _Link]]:
    """model → (fold, seed) → link statistics, validated."""
    table = _columns(links, LINK_COLUMNS, "links", numeric=("first", "strength", "p_first"))
    unknown = sorted(set(table["model"].tolist()) - set(models))
    if unknown:
        raise ValueError(f"links has models without ModelInfo: {unknown}")
    p = table["p_first"]
    if np.any((p < 0) | (p > 1)):
        raise ValueError(f"links.p_first must lie in [0, 1]; got {p[(p < 0) | (p > 1)][0]}")
    index: dict[str, dict[Run, _Link]] = {}
    for model, fold, seed, first, strength, p_first in zip(
            *(table[c].tolist() for c in LINK_COLUMNS), strict=True):
        runs = index.setdefault(model, {})
        if (fold, seed) in runs:
            raise ValueError(f"links has more than one row for model={model!r}, fold={fold}, "
                             f"seed={seed}")
        runs[(fold, seed)] = _Link(first, strength, p_first)
    return index


def _columns(frame: pd.DataFrame, columns: Sequence[str], name: str,
             numeric: Sequence[str]) -> dict[str, np.ndarray]:
    """The required columns of ``frame`` as arrays: text as str, fold/seed as int, ``numeric``
    as finite floats."""
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"{name} must be a pandas DataFrame; got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} lacks column(s) {missing}; expected {list(columns)}")
    if frame.empty:
        raise ValueError(f"{name} has no rows")
    arrays: dict[str, np.ndarray] = {}
    for column in columns:
        raw = frame[column].to_numpy()
        if column in ("fold", "seed") or column in numeric:
            try:
                values = np.asarray(raw, dtype=float)
            except (TypeError, ValueError):
                raise ValueError(f"{name}.{column} must be numbers; got {raw[:3].tolist()}"
                                 ) from None
            bad = ~np.isfinite(values)
            if column in ("fold", "seed"):
                bad |= values != np.round(values)
            if np.any(bad):
                raise ValueError(f"{name}.{column} must be finite "
                                 f"{'integers' if column in ('fold', 'seed') else 'numbers'}; "
                                 f"got {raw[bad][0]!r} in row {int(np.flatnonzero(bad)[0])}")
            arrays[column] = values.astype(int) if column in ("fold", "seed") else values
        else:
            arrays[column] = raw.astype(str)
    return arrays


def _paired(a: Mapping[Run, float], b: Mapping[Run, float]) -> np.ndarray:
    """a(r) − b(r) over the runs both have, in run order."""
    return np.array([a[r] - b[r] for r in sorted(set(a) & set(b))], dtype=float)


def _paired_comparisons(raw: Sequence[tuple[str, str, np.ndarray]], settings: _Settings,
                        alternative: Alternative = "greater") -> list[Comparison]:
    """Comparisons of paired differences: sign-flip p, bootstrap CI, MDE at α/m, Holm."""
    m = len(raw)
    comparisons = []
    for label, column, d in raw:
        n = len(d)
        level = sign_flip_attainable_level(n, settings.alpha / m, settings.n_resamples)
        if alternative == "two-sided":
            level = 2 * sign_flip_attainable_level(n, settings.alpha / m / 2,
                                                   settings.n_resamples)
        mde = (minimum_detectable_effect(float(np.std(d, ddof=1)), n, level, MDE_POWER,
                                         alternative) if n > 1 and level > 0 else math.inf)
        low, high = bootstrap_ci(d, n_resamples=settings.n_resamples, seed=settings.seed)
        comparisons.append(Comparison(
            label=label, column=column, n=n, mean=float(np.mean(d)) if n else float("nan"),
            ci_low=low, ci_high=high, mde=mde,
            p=sign_flip_test(d, alternative=alternative, n_resamples=settings.n_resamples,
                             seed=settings.seed)))
    return adjust_holm(comparisons)


def decide_status(comparisons: Sequence[Comparison], *, alpha: float, min_effect: float,
                  condition: bool | None = None) -> Status:
    """The verdict rule of the module docstring (``condition``: the claim's extra condition).

    ``supported`` if every comparison is significant after Holm at α and ``condition`` is not
    False; ``not supported`` if ``condition`` is False, or a comparison's ``ci_high`` ≤ 0, or a
    non-significant comparison has ``mde`` ≤ ``min_effect``; ``inconclusive`` otherwise.
    """
    if not comparisons and condition is None:
        raise ValueError("decide_status needs at least one comparison or a condition")
    if all(c.significant(alpha) for c in comparisons) and condition is not False:
        return "supported"
    if condition is False:
        return "not supported"
    for c in comparisons:
        if c.ci_high <= 0 or (not c.significant(alpha) and c.mde <= min_effect):
            return "not supported"
    return "inconclusive"


def _not_tested(claim_id: int, missing: str, details: dict[str, Any] | None = None) -> Verdict:
    return Verdict(claim_id, TITLES[claim_id], "not tested", f"not tested: missing {missing}",
                   [], details or {})


def _describe(comparisons: Sequence[Comparison]) -> list[str]:
    return [f"{c.column}: {c.label} {c}" for c in comparisons]


def _verdict(claim_id: int, comparisons: list[Comparison], settings: _Settings,
             parts: list[str], details: dict[str, Any], condition: bool | None = None,
             ) -> Verdict:
    """Decide the status and write the one-line summary (with the MDE when inconclusive)."""
    status = decide_status(comparisons, alpha=settings.alpha, min_effect=settings.min_effect,
                           condition=condition)
    parts = _describe(comparisons) + parts
    if status == "inconclusive":
        weak = [c for c in comparisons if not c.significant(settings.alpha)]
        worst = max(weak, key=lambda c: c.mde)
        size = "any size" if math.isinf(worst.mde) else f"{worst.mde:.3f}"
        parts.append(f"too few runs to detect an effect of {size} "
                     f"({MDE_POWER:.0%} power, n={worst.n}, {worst.column}: {worst.label})")
    details = {"alpha": settings.alpha, "min_effect": settings.min_effect, **details}
    return Verdict(claim_id, TITLES[claim_id], status, "; ".join(parts), comparisons, details)


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
