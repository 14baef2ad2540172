"""The machinery under the claims: a sweep's scores paired over runs, comparisons, verdicts.

:class:`ModelInfo` says what a model is; a sweep's long score table (and links table) is
checked and indexed by model, split, column and run (``_Sweep``); paired comparisons get their
sign-flip p-value, bootstrap interval and minimum detectable effect; :func:`decide_status`
turns the comparisons of one claim into its verdict (rules in
:mod:`mmssl.analysis.claim_rules`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from mmssl.evaluation.stats import (
    Alternative,
    Comparison,
    adjust_holm,
    bootstrap_ci,
    minimum_detectable_effect,
    sign_flip_attainable_level,
    sign_flip_test,
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
#: Fewest paired runs given a bootstrap interval: resampling 2–4 differences only restates them
#: (two runs have three distinct resampled means), and the interval would look precise.
MIN_INTERVAL_RUNS = 5


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
    """Comparisons of paired differences: sign-flip p, bootstrap CI (none below
    :data:`MIN_INTERVAL_RUNS` runs), MDE at α/m, Holm."""
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
        low, high = (bootstrap_ci(d, n_resamples=settings.n_resamples, seed=settings.seed)
                     if n >= MIN_INTERVAL_RUNS else (math.nan, math.nan))
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


