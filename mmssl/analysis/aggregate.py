"""Aggregation of a long scores table: means over folds and seeds, and what each mode adds.

Everything here takes the long table of :func:`mmssl.analysis.records.scores_frame` (or a
committed scores file) and returns plain data; rendering is :mod:`mmssl.analysis.tables` and
:mod:`mmssl.analysis.figures`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mmssl.analysis.claim_rules import ModelInfo
from mmssl.objectives.taxonomy import MODES

__all__ = ["columns_of", "headline_metric", "mode_effects", "summarise"]


def headline_metric(scores: pd.DataFrame) -> str:
    """ROC AUC for binary tasks (when the table has it), accuracy otherwise."""
    return "roc_auc" if (scores["metric"] == "roc_auc").any() else "accuracy"


def columns_of(scores: pd.DataFrame) -> list[str]:
    """The representation columns: the modalities in table order, then ``joint``."""
    seen = list(dict.fromkeys(scores["modality"]))
    return [c for c in seen if c != "joint"] + (["joint"] if "joint" in seen else [])


def summarise(scores: pd.DataFrame) -> pd.DataFrame:
    """Per model, split, modality and metric: mean, sample std (0 for one run) and n runs.

    Models keep their order of first appearance.
    """
    order = {m: i for i, m in enumerate(dict.fromkeys(scores["model"]))}
    grouped = scores.groupby(["model", "split", "modality", "metric"], sort=False)["value"]
    summary = grouped.agg(mean="mean", std=lambda v: float(np.std(v, ddof=1)) if len(v) > 1
                          else 0.0, n="count").reset_index()
    return summary.sort_values("model", key=lambda s: s.map(order), kind="stable",
                               ignore_index=True)


def mode_effects(summary: pd.DataFrame, models: Mapping[str, ModelInfo],
                 columns: Sequence[str], metric: str) -> dict[str, Any]:
    """How adding each mode shifts the test score: the paper's "composition matters".

    For every mode M and every taxonomy model O without M such that O+M was also run, the
    effect is score(O+M) − score(O) (means over folds and seeds); per mode and column it is
    averaged over those pairs. Returns ``{mode: {column: {"mean", "pairs"}}}`` for the modes
    with at least one pair.
    """
    test = summary[(summary["split"] == "test") & (summary["metric"] == metric)]
    scores: dict[frozenset[str], dict[str, float]] = {}
    for model, info in models.items():
        if info.kind != "taxonomy":
            continue
        rows = test[test["model"] == model]
        scores[info.modes] = {r.modality: float(r.mean) for r in rows.itertuples()
                              if r.modality in columns}
    effects: dict[str, Any] = {}
    for mode in MODES:
        per_column: dict[str, list[float]] = {}
        for modes, values in scores.items():
            with_mode = modes | {mode}
            if mode in modes or with_mode not in scores:
                continue
            for column, value in values.items():
                if column in scores[with_mode]:
                    per_column.setdefault(column, []).append(scores[with_mode][column] - value)
        if per_column:
            effects[mode] = {c: {"mean": float(np.mean(v)), "pairs": len(v)}
                             for c, v in per_column.items()}
    return effects
