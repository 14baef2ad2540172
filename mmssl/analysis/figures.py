"""Figures of runs and sweeps: scores per model, mode effects, every run, the evidence of the
claims, curves, t-SNE.

Each function takes plain data (tables, arrays), draws with matplotlib on the Agg backend and
writes a PNG atomically (:func:`mmssl.io.save_figure`); it returns the path, or ``None`` when
there is nothing to draw.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmssl.evaluation.stats import Comparison
from mmssl.io import save_figure

__all__ = ["comparisons_figure", "fold_scores", "plot_mode_effects", "plot_scores",
           "training_curves", "tsne_figure"]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_scores(summary: pd.DataFrame, columns: Sequence[str], metric: str,
                path: Path) -> Path | None:
    """Grouped bars of the headline test metric per model (error bars: std over runs)."""
    test = summary[(summary["split"] == "test") & (summary["metric"] == metric)]
    if test.empty:
        return None
    plt = _plt()
    models = list(dict.fromkeys(test["model"]))
    width = 0.8 / len(columns)
    x = np.arange(len(models))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(models) + 2), 4.2), dpi=120)
    for k, column in enumerate(columns):
        means, errors = [], []
        for model in models:
            hit = test[(test["model"] == model) & (test["modality"] == column)]
            means.append(float(hit["mean"].iloc[0]) if len(hit) else np.nan)
            errors.append(float(hit["std"].iloc[0]) if len(hit) and int(hit["n"].iloc[0]) > 1
                          else 0.0)
        bars = ax.bar(x + (k - (len(columns) - 1) / 2) * width, means, width, label=column,
                      yerr=errors if any(errors) else None, capsize=2)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=1)
    ax.set_xticks(x, models, rotation=20, ha="right")
    ax.set_ylabel(f"test {metric.replace('_', ' ')}")
    low = float(np.nanmin(test["mean"])) if len(test) else 0.0
    ax.set_ylim(max(0.0, low - 0.1), 1.0)
    ax.set_title("Linear probe on frozen encoders, per modality")
    ax.legend(title="representation", fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_mode_effects(effects: Mapping[str, Any], columns: Sequence[str],
                      path: Path) -> Path | None:
    """Heat map: modes × representations, colour = mean change of the test score."""
    if not effects:
        return None
    plt = _plt()
    modes = list(effects)
    grid = np.array([[effects[m].get(c, {}).get("mean", np.nan) for c in columns]
                     for m in modes])
    limit = float(np.nanmax(np.abs(grid))) or 1.0
    fig, ax = plt.subplots(figsize=(1.4 * len(columns) + 2.2, 0.6 * len(modes) + 1.6), dpi=120)
    image = ax.imshow(grid, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    for i, mode in enumerate(modes):
        for j, column in enumerate(columns):
            entry = effects[mode].get(column)
            if entry:
                ax.text(j, i, f"{entry['mean']:+.3f}\n({entry['pairs']})", ha="center",
                        va="center", fontsize=7)
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(modes)), [f"+{m}" for m in modes])
    ax.set_title("Change of the test score when a mode is added\n(mean over model pairs)",
                 fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    return save_figure(fig, path)


def fold_scores(scores: pd.DataFrame, metric: str, path: Path) -> Path | None:
    """Each run's test headline metric per model and representation (points = folds × seeds)."""
    test = scores[(scores["split"] == "test") & (scores["metric"] == metric)]
    if test.empty:
        return None
    plt = _plt()
    models = list(dict.fromkeys(test["model"]))
    modalities = list(dict.fromkeys(test["modality"]))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(models) + 2), 3.8), dpi=110)
    width = 0.8 / max(1, len(modalities))
    for k, modality in enumerate(modalities):
        for i, model in enumerate(models):
            values = test[(test["model"] == model) & (test["modality"] == modality)]["value"]
            x = i + (k - (len(modalities) - 1) / 2) * width
            ax.scatter(np.full(len(values), x), values, s=14, color=f"C{k}",
                       label=modality if i == 0 else None)
    ax.set_xticks(range(len(models)), models, rotation=20, ha="right")
    ax.set_ylabel(f"test {metric.replace('_', ' ')}")
    ax.set_title("Probe score of every fold and seed")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return save_figure(fig, path)


def comparisons_figure(groups: Sequence[tuple[str, Sequence[Comparison]]], alpha: float,
                       path: Path, *, title: str = "", stamp: str | None = None) -> Path | None:
    """Forest plot of tested comparisons: one row per comparison (its label and column), the
    mean paired difference as a point and its 95 % interval as a bar, filled where the
    Holm-adjusted p ≤ α and hollow where not; rows grouped under their heading (a claim and its
    verdict, or the paired comparisons asked for), a line at 0. ``None`` without any row.
    ``stamp``, when given, is stored in the PNG's ``Description`` text chunk, so a document
    can tell which text the figure was drawn for (:func:`png_description`)."""
    groups = [(heading, list(rows)) for heading, rows in groups if rows]
    if not groups:
        return None
    plt = _plt()
    count = sum(len(rows) + 1 for _, rows in groups)
    fig, ax = plt.subplots(figsize=(8.0, 0.26 * count + 1.3), dpi=120)
    y, ticks, labels, headings = count, [], [], []
    for k, (heading, rows) in enumerate(groups):
        ticks.append(y)
        labels.append(heading)
        headings.append(len(labels) - 1)
        ax.axhline(y, color="0.85", lw=0.6)
        y -= 1
        for row in rows:
            significant = row.significant(alpha)
            if not (np.isnan(row.ci_low) or np.isnan(row.ci_high)):
                ax.plot([row.ci_low, row.ci_high], [y, y], color=f"C{k}", lw=1.6)
            ax.plot([row.mean], [y], "o", color=f"C{k}", ms=5,
                    markerfacecolor=f"C{k}" if significant else "white")
            ticks.append(y)
            labels.append(f"{row.label} ({row.column}), n={row.n}")
            y -= 1
    ax.axvline(0.0, color="0.3", lw=0.8)
    ax.set_yticks(ticks, labels, fontsize=7)
    for index in headings:
        ax.get_yticklabels()[index].set_fontweight("bold")
    ax.set_ylim(0.3, count + 0.7)
    ax.set_xlabel(f"mean paired difference, 95 % interval (filled: Holm p ≤ {alpha:g})",
                  fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    if title:
        fig.suptitle("\n".join(textwrap.wrap(title, 90)), fontsize=9)
    fig.tight_layout()
    metadata: dict[str, str | None] = {"Software": None}
    if stamp is not None:
        metadata["Description"] = stamp
    return save_figure(fig, path, metadata=metadata)


def png_description(path: Path) -> str | None:
    """The ``Description`` text chunk of a PNG file (``None`` when it has none or the file is
    not a readable PNG): the stamp :func:`comparisons_figure` wrote."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            text = getattr(image, "text", {})
            value = text.get("Description")
    except (OSError, UnidentifiedImageError):
        return None
    return value if isinstance(value, str) else None


def training_curves(curves: pd.DataFrame, path: Path) -> Path | None:
    """Training loss per step and validation loss per epoch (Lightning's CSV log)."""
    if "train/loss" not in curves:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.0, 3.4), dpi=110)
    train = curves.dropna(subset=["train/loss"])
    ax.plot(train["step"], train["train/loss"], lw=1, label="train loss")
    if "val/loss" in curves:
        val = curves.dropna(subset=["val/loss"])
        ax.plot(val["step"], val["val/loss"], marker="o", ms=3, lw=1.5, label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Training curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def tsne_figure(features: Mapping[str, np.ndarray], labels: np.ndarray, path: Path, *,
                seed: int = 0, max_points: int = 2000) -> Path | None:
    """t-SNE of test representations per modality (and jointly), coloured by label."""
    from sklearn.manifold import TSNE
    from sklearn.preprocessing import StandardScaler

    modalities = list(features)
    if not modalities or not len(labels):
        return None
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.permutation(len(labels))[:max_points])
    panels = {m: features[m][keep] for m in modalities}
    if len(modalities) > 1:
        panels["joint"] = np.concatenate([panels[m] for m in modalities], axis=1)
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.5), dpi=110,
                             squeeze=False)
    perplexity = float(max(2, min(30, (len(keep) - 1) // 3)))
    scatter = None
    for ax, (name, values) in zip(axes[0], panels.items(), strict=True):
        embedded = TSNE(n_components=2, perplexity=perplexity, random_state=seed,
                        init="pca").fit_transform(StandardScaler().fit_transform(values))
        scatter = ax.scatter(embedded[:, 0], embedded[:, 1], c=labels[keep], s=6,
                             cmap="tab10" if labels.max() > 1 else "coolwarm")
        ax.set_title(f"{name} (test)", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(scatter, ax=axes[0].tolist(), shrink=0.8, label="label")
    return save_figure(fig, path)
