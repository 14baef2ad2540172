"""Reconstructions and cross-modal generations of decoder-based models, as a PNG grid."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmssl.io import save_figure


def _as_rgb(images: Tensor) -> np.ndarray:
    """(N, C, H, W) in [0, 1] → (N, H, W, 3) for display."""
    array = images.detach().float().clamp(0, 1).cpu().numpy()
    if array.shape[1] == 1:
        array = np.repeat(array, 3, axis=1)
    return np.transpose(array[:, :3], (0, 2, 3, 1))


def generation_rows(model: Any, batch: Mapping[str, Tensor]) -> list[tuple[str, Tensor]]:
    """Labelled image rows: each input, then every (source → target) generation.

    Models with ``cross_generate`` (MMVAE) give every source → target pair; autoencoders give
    each modality's reconstruction from itself.
    """
    rows: list[tuple[str, Tensor]] = [(f"{m} (input)", batch[m]) for m in model.modalities]
    if hasattr(model, "cross_generate"):
        generated = model.cross_generate(batch)
        rows += [(f"{target} from {source}", images)
                 for (source, target), images in generated.items()]
    elif hasattr(model, "reconstruct"):
        rows += [(f"{m} from {m}", images) for m, images in model.reconstruct(batch).items()]
    else:
        raise ValueError(
            f"method {model.method_name!r} has no decoder: generation works for mmvae "
            "(cross-modal) and the autoencoders ae, dccae, rr_ae (reconstructions)"
        )
    return rows


def save_grid(rows: list[tuple[str, Tensor]], path: Path, title: str) -> None:
    """One row of images per entry, labelled on the left; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = rows[0][1].shape[0]
    fig, axes = plt.subplots(len(rows), 1, figsize=(1.0 * n + 1.8, 1.1 * len(rows) + 0.6),
                             dpi=110, squeeze=False)
    for ax, (label, images) in zip(axes[:, 0], rows, strict=True):
        ax.imshow(np.concatenate(list(_as_rgb(images)), axis=1), interpolation="nearest")
        ax.set_yticks([])
        ax.set_xticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


@torch.no_grad()
def generate(model: Any, batch: Mapping[str, Tensor], path: Path, title: str) -> Path:
    """Write the grid for ``batch`` (eval mode) to ``path``."""
    was_training = model.training
    model.eval()
    try:
        save_grid(generation_rows(model, batch), path, title)
    finally:
        model.train(was_training)
    return path
