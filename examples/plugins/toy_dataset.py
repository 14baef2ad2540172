"""A toy dataset in one module: two noisy views of class-specific stripes, generated in memory.

The worked example of CONTRIBUTING.md: a settings dataclass (the section ``data.stripes``),
a data module on :class:`~mmssl.data.base.MultimodalDataModule`, and its registry entry. Then
``mmssl run --dataset stripes --set data.stripes.noise=0.5``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mmssl.data.base import MultimodalDataModule
from mmssl.data.loading import TensorDictDataset
from mmssl.data.registry import DatasetSpec, DataSettings, register_dataset
from mmssl.settings import require

MODALITIES = ("left", "right")
CLASSES = 4
SIDE = 32


@dataclass
class StripesSettings:
    """The section ``data.stripes``: images per class and split, and the noise level."""

    per_class: int = 64
    noise: float = 0.3

    def validate(self) -> None:
        require(self.per_class >= 8, "per_class", f"must be ≥ 8; got {self.per_class}")
        require(self.noise >= 0, "noise", f"must be ≥ 0; got {self.noise}")


class StripesDataModule(MultimodalDataModule):
    """Class k is a horizontal (left view) and a vertical (right view) stripe at row/column
    4 + 6k, each view with its own Gaussian noise; splits are drawn from the seed."""

    def __init__(self, modalities: Sequence[str], settings: StripesSettings, **common: int
                 ) -> None:
        super().__init__(modalities, available=MODALITIES, **common)
        self.settings = settings
        self.splits: dict[str, TensorDictDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        generator = torch.Generator().manual_seed(self.seed * 1000 + self.fold)
        for split in ("train", "val", "test"):
            labels = torch.arange(CLASSES).repeat_interleave(self.settings.per_class)
            clean = torch.zeros(len(labels), 1, SIDE, SIDE)
            for k in range(CLASSES):
                clean[labels == k, :, 4 + 6 * k: 7 + 6 * k, :] = 1.0
            views = {"left": clean, "right": clean.transpose(2, 3)}
            tensors = {m: views[m] + self.settings.noise * torch.randn(
                clean.shape, generator=generator) for m in self.modalities}
            self.splits[split] = TensorDictDataset({**tensors, "label": labels})

    def is_setup(self) -> bool:
        return bool(self.splits)

    def train_dataset(self) -> TensorDictDataset:
        return self.splits["train"]

    def eval_dataset(self, split: str) -> TensorDictDataset:
        return self.splits[split]

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return {m: (1, SIDE, SIDE) for m in self.modalities}

    @property
    def num_classes(self) -> int:
        return CLASSES


def _build(data: DataSettings, settings: StripesSettings, seed: int,
           skipped_rows: Path | None) -> StripesDataModule:
    return StripesDataModule(tuple(data.modalities or MODALITIES), settings,
                             num_folds=data.num_folds, fold=data.fold,
                             batch_size=data.batch_size, eval_batch_size=data.eval_batch_size,
                             seed=seed, num_workers=data.num_workers)


STRIPES = register_dataset(DatasetSpec(
    name="stripes",
    modalities=MODALITIES,
    settings=StripesSettings,
    build=_build,
    input_shapes=lambda settings, modalities: {m: (1, SIDE, SIDE) for m in modalities},
    summary="toy example: two noisy views of class-specific stripes, made in memory",
    num_classes=CLASSES,
))
