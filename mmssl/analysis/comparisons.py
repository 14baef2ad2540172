r"""Paired comparisons of named models, beside the claims: "is DCCAE ahead of AE here?".

The five claims (:mod:`mmssl.analysis.claim_rules`) fix which models they compare. A reader
often wants one more comparison with the same statistics — Wang et al. report DCCAE well ahead
of a plain autoencoder; does that hold in this sweep? :func:`compare_models` answers it for any
pair of models of a scores table.

For a pair (A, B) and a representation column c, over the runs r = (fold, seed) both models have
test scores for,

.. math::

    d_r = s^{test}_A(r, c) - s^{test}_B(r, c), \qquad \bar d = \frac{1}{n}\sum_r d_r .

Each comparison reports :math:`\bar d`, its 95 % BCa bootstrap interval, the **two-sided**
sign-flip permutation p-value of :math:`H_0`: the :math:`d_r` are symmetric about 0
(:func:`~mmssl.evaluation.stats.sign_flip_test`, exact for n ≤ 16; no direction is claimed in
advance, unlike the claims' one-sided tests), the Holm-adjusted p-value over **every** pair ×
column requested together, and the minimum detectable effect — the :math:`|\bar d|` the paired t
test finds with 80 % power at level α/m given the observed sd of :math:`d_r`
(:func:`~mmssl.evaluation.stats.minimum_detectable_effect`), lowered to the level the sign-flip
test can attain with n runs. The reading of a row: *A ahead* or *B ahead* when the Holm p is
≤ α, otherwise *not distinguished* with the MDE, so "no difference" is never read into a test
that could not have seen one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mmssl.analysis.tables import Table
from mmssl.analysis.verdicts import (
    SCORE_COLUMNS,
    ModelInfo,
    _paired,
    _paired_comparisons,
    _Settings,
    _Sweep,
)
from mmssl.errors import ConfigError
from mmssl.evaluation.stats import Comparison, format_p

__all__ = ["ModelPair", "compare_models", "comparisons_table", "parse_pairs", "reading"]

#: Separates the two models of a pair on the command line (model names contain ``-``).
PAIR_SEPARATOR = ":"


@dataclass(frozen=True)
class ModelPair:
    """Two models to compare, ``first`` − ``second`` (``"dccae:ae"`` on the command line)."""

    first: str
    second: str

    @classmethod
    def parse(cls, text: str) -> ModelPair:
        """``"A:B"`` → ``ModelPair("A", "B")``.

        Raises:
            ConfigError: not two non-empty names around one ``:``, or the same model twice.
        """
        parts = [p.strip() for p in str(text).split(PAIR_SEPARATOR)]
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"--compare expects two models as A{PAIR_SEPARATOR}B "
                              f"(e.g. dccae{PAIR_SEPARATOR}ae: DCCAE − AE); got {text!r}")
        if parts[0] == parts[1]:
            raise ConfigError(f"--compare {text!r} compares {parts[0]!r} with itself")
        return cls(parts[0], parts[1])

    def __str__(self) -> str:
        return f"{self.first} − {self.second}"


def parse_pairs(values: Sequence[str] | str | None) -> tuple[ModelPair, ...]:
    """Pairs from ``--compare`` values, each one pair or several separated by commas."""
    if values is None:
        return ()
    items = [values] if isinstance(values, str) else list(values)
    pairs = [ModelPair.parse(p) for item in items for p in str(item).split(",") if p.strip()]
    duplicates = sorted({str(p) for p in pairs if pairs.count(p) > 1})
    if duplicates:
        raise ConfigError(f"--compare names {duplicates} more than once")
    return tuple(pairs)


def compare_models(scores: pd.DataFrame, pairs: Sequence[ModelPair], *, alpha: float = 0.05,
                   seed: int = 0, n_resamples: int = 10000) -> list[Comparison]:
    r"""Paired two-sided comparisons of each pair in every column of ``scores`` (test split,
    headline metric), Holm-adjusted together; the module docstring has the statistics.

    Raises:
        ValueError: ``scores`` is not a scores table (``_Sweep`` names the problem).
        ConfigError: a pair names a model the table does not have, or its two models share no
            run with test scores in any column.
    """
    if not pairs:
        return []
    if not isinstance(scores, pd.DataFrame) or "model" not in scores.columns:
        raise ValueError(f"scores must be a table with columns {list(SCORE_COLUMNS)}")
    models = list(dict.fromkeys(scores["model"].astype(str)))
    sweep = _Sweep(scores, {m: ModelInfo("baseline") for m in models}, None)
    raw: list[tuple[str, str, np.ndarray]] = []
    for pair in pairs:
        absent = [m for m in (pair.first, pair.second) if m not in sweep.models]
        if absent:
            raise ConfigError(f"--compare {pair.first}{PAIR_SEPARATOR}{pair.second}: no "
                              f"{sweep.metric} scores for {absent}; the table has "
                              f"{sorted(sweep.models)}")
        found = False
        for column in sweep.columns:
            d = _paired(sweep.runs(pair.first, column), sweep.runs(pair.second, column))
            if len(d):
                raw.append((str(pair), column, d))
                found = True
        if not found:
            raise ConfigError(f"--compare {pair.first}{PAIR_SEPARATOR}{pair.second}: the two "
                              "models share no run (fold and seed) with test scores")
    settings = _Settings(alpha=alpha, min_effect=0.0, seed=seed, n_resamples=n_resamples)
    return _paired_comparisons(raw, settings, "two-sided")


def reading(comparison: Comparison, alpha: float) -> str:
    """*A ahead*, *B ahead* (Holm p ≤ α) or *not distinguished* with the detectable effect."""
    first, _, second = comparison.label.partition(" − ")
    if comparison.significant(alpha) and comparison.mean != 0:
        return f"{first if comparison.mean > 0 else second} ahead"
    if math.isinf(comparison.mde):
        return f"not distinguished (too few runs, n={comparison.n})"
    return f"not distinguished (80 % power at ±{comparison.mde:.3f})"


def comparisons_table(comparisons: Sequence[Comparison], alpha: float, metric: str,
                      title: str = "Paired comparisons") -> Table:
    """One row per pair × column: difference, interval, p, Holm p, n and the reading."""
    rows = [[c.label, c.column, f"{c.mean:+.3f}",
             "—" if math.isnan(c.ci_low) else f"[{c.ci_low:+.3f}, {c.ci_high:+.3f}]",
             format_p(c.p), format_p(c.p_adjusted), str(c.n), reading(c, alpha)]
            for c in comparisons]
    note = (f"Test {metric}, A − B paired over the folds × seeds both models ran; two-sided "
            f"sign-flip permutation tests, Holm-adjusted over the {len(comparisons)} rows, "
            f"α = {alpha}; 95 % BCa intervals.")
    return Table(title, ["models", "column", "A − B", "95 % CI", "p", "Holm p", "n", "reading"],
                 rows, note=note, text_columns=("models", "column", "95 % CI", "reading"))
