"""The setting of :mod:`benchmarks.neuro`: modalities, grids and the cohort's data module.

Every grid spans the paper's 192 mm cube around the MNI152 brain (64³ voxels of 3 mm), so a
``side``³ grid has voxels of 192 / side mm. The data module is the library's own
:class:`~mmssl.data.neuro.NeuroDataModule`, used for its loader and its device-side shared
pad-crop without ever being set up (no trainer: augmentation epoch 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mmssl.data.neuro import Cohort, NeuroDataModule, Preprocessing

__all__ = ["FIELD_OF_VIEW_MM", "LOADER_SEED", "MODALITIES", "GridSpec", "augmentation_pad",
           "data_module", "grid_specs", "voxel_size_for"]

MODALITIES: tuple[str, ...] = ("t1", "falff")
FIELD_OF_VIEW_MM = 192.0  # every grid is the paper's 64³ × 3 mm cube: voxel = 192 mm / side
PAPER_SIZE, FINE_SIZE = 64, 96  # part 1's fixed grids (3 mm and 2 mm)
LOADER_SEED = 343  # the neuro preset's seed: the sampler's and the augmentation's


def voxel_size_for(size: int) -> float:
    """The voxel size (mm) of a ``size``³ grid over the paper's 192 mm field of view."""
    return FIELD_OF_VIEW_MM / size


def augmentation_pad(size: int) -> int:
    """The pad-crop's padding at a side: side / 8 (8 at 64³ and 4 at 32³, the presets)."""
    return max(1, size // 8)


@dataclass(frozen=True)
class GridSpec:
    """A preprocessing grid of part 1 and what it is used for."""

    size: int
    roles: tuple[str, ...]  # "paper", "2 mm", "train"

    @property
    def voxel_size(self) -> float:
        """Voxel edge in mm."""
        return voxel_size_for(self.size)

    @property
    def label(self) -> str:
        """E.g. ``64³ @ 3 mm``."""
        return f"{self.size}³ @ {self.voxel_size:g} mm"

    def settings(self) -> Preprocessing:
        """The preprocessing settings of the grid (MNI152 mask, z-score: the defaults)."""
        return Preprocessing(voxel_size=self.voxel_size, shape=(self.size,) * 3)


def grid_specs(train_sizes: Sequence[int]) -> list[GridSpec]:
    """The paper grid, the 96³ grid and every training grid, by size."""
    roles: dict[int, list[str]] = {PAPER_SIZE: ["paper"], FINE_SIZE: ["2 mm"]}
    for size in train_sizes:
        roles.setdefault(size, []).append("train")
    return [GridSpec(size, tuple(roles[size])) for size in sorted(roles)]


def data_module(cohort: Cohort, batch_size: int, pad: int) -> NeuroDataModule:
    """A data module for ``cohort``'s grid that is never set up: its loader and augmentation.

    ``num_workers=0``; without a trainer the augmentation uses epoch 0.
    """
    return NeuroDataModule(cohort.manifest.path, MODALITIES, batch_size=batch_size,
                           seed=LOADER_SEED, preprocessing=cohort.settings,
                           cache_dir=cohort.cache_dir, pad=pad, flip=False, num_workers=0)
