"""Figures of analysis results: brain maps (nilearn glass brains and slices) and the scatter of
subjects in a shared subspace. Arrays or NIfTI files in, a PNG out (written atomically)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from mmssl.io import save_figure, write_bytes

__all__ = ["canonical_scatter", "paired_maps", "plot_map"]


def plot_map(
    nifti_path: Path,
    png_path: Path,
    *,
    title: str,
    background: Path | None = None,
    display_mode: str = "ortho",
    cuts: int = 5,
    threshold: float | str | None = None,
    cmap: str | None = None,
    dpi: int = 100,
) -> Path:
    """Render a NIfTI map to a PNG with nilearn, atomically.

    With a ``background`` image the map is overlaid with ``nilearn.plotting.plot_stat_map``;
    without one it is drawn as a glass brain (``plot_glass_brain``, signed values). The figure
    is drawn on its own Agg canvas, outside pyplot (no display needed, the global matplotlib
    backend is left alone, no figure stays open), has a colour bar, and is cleared afterwards.

    Args:
        nifti_path: the map (e.g. from :func:`mmssl.io.save_nifti`).
        png_path: destination PNG; parent directories are created.
        title: figure title.
        background: anatomical image for ``plot_stat_map``, or ``None`` for a glass brain.
        display_mode: ``"ortho"`` (three orthogonal cuts) or ``"z"`` (axial; ``cuts`` slices
            on a background, one projection for the glass brain).
        cuts: number of axial slices in ``"z"`` mode on a background.
        threshold: values below it in magnitude are not drawn; ``None`` keeps nilearn's
            default (1e-6 on a background, ``"auto"`` for the glass brain).
        cmap: matplotlib colour map; ``None`` keeps nilearn's (diverging, symmetric about 0
            for signed maps such as group differences).
        dpi: resolution of the PNG.

    Returns:
        ``png_path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from nilearn import plotting

    if display_mode not in ("ortho", "z"):
        raise ValueError(f"display_mode must be 'ortho' or 'z', got {display_mode!r}")
    if cuts < 1:
        raise ValueError(f"cuts must be ≥ 1, got {cuts}")
    figure = Figure(figsize=(10, 4) if display_mode == "z" else (8, 3.2))
    FigureCanvasAgg(figure)
    options: dict[str, Any] = {
        "display_mode": display_mode,
        "colorbar": True,
        "title": title,
        "figure": figure,
    }
    if threshold is not None:
        options["threshold"] = threshold
    if cmap is not None:
        options["cmap"] = cmap
    if background is not None:
        if display_mode == "z":
            options["cut_coords"] = cuts
        display = plotting.plot_stat_map(str(nifti_path), bg_img=str(background), **options)
    else:
        display = plotting.plot_glass_brain(str(nifti_path), plot_abs=False, **options)

    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=dpi, facecolor=figure.get_facecolor())
        return write_bytes(Path(png_path), buffer.getvalue())
    finally:
        # The figure was never registered with pyplot (so no plt.close, which nilearn's
        # display.close() would call); dropping its artists frees it.
        del display
        figure.clear()


def canonical_scatter(variates: dict[str, np.ndarray], labels: np.ndarray, pair: list[str],
                      path: Path) -> Path:
    """Subjects in the first canonical pair (x: first modality, y: second), coloured by label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.0), dpi=110)
    for label in np.unique(labels):
        keep = labels == label
        ax.scatter(variates[pair[0]][keep, 0], variates[pair[1]][keep, 0], s=14,
                   label=f"label {label}", alpha=0.8)
    ax.set_xlabel(f"{pair[0]} canonical variate 1")
    ax.set_ylabel(f"{pair[1]} canonical variate 1")
    ax.set_title("Test subjects in the shared subspace")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def paired_maps(maps: dict[str, Path], path: Path, *, title: str, dpi: int = 100) -> Path:
    """Two (or more) brain maps side by side as glass brains (one row), atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from nilearn import plotting

    figure = Figure(figsize=(6.5 * len(maps), 3.0))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(maps), squeeze=False)[0]
    for ax, (name, nifti) in zip(axes, maps.items(), strict=True):
        plotting.plot_glass_brain(str(nifti), axes=ax, figure=figure, title=name,
                                  colorbar=True, plot_abs=True)
    figure.suptitle(title)
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=dpi)
        return write_bytes(Path(path), buffer.getvalue())
    finally:
        figure.clear()


def decoding_bars(table: Any, path: Path, *, title: str) -> Path:
    """Grouped bars: one group per variable, one bar per feature source, each variable's
    chance level drawn as a tick (``table``: columns variable, source, score, chance)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    variables = list(dict.fromkeys(table["variable"]))
    sources = list(dict.fromkeys(table["source"]))
    figure = Figure(figsize=(min(12.0, 2.0 + 0.4 * len(variables) * max(1, len(sources))), 3.6))
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    width = 0.8 / max(1, len(sources))
    for k, source in enumerate(sources):
        rows = table[table["source"] == source].set_index("variable")
        heights = [float(rows.loc[v, "score"]) if v in rows.index else np.nan for v in variables]
        ax.bar(np.arange(len(variables)) + (k - (len(sources) - 1) / 2) * width, heights,
               width, label=source)
    chance = table.drop_duplicates("variable").set_index("variable")["chance"]
    for i, variable in enumerate(variables):
        ax.hlines(float(chance[variable]), i - 0.45, i + 0.45, colors="black",
                  linestyles="dotted")
    metrics = table.drop_duplicates("variable").set_index("variable")["metric"]
    ax.set_xticks(np.arange(len(variables)),
                  [f"{v}\n({metrics[v]})" for v in variables], fontsize=8)
    ax.set_ylabel("cross-validated score (dotted: chance)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=110)
        return write_bytes(Path(path), buffer.getvalue())
    finally:
        figure.clear()
