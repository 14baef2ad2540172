"""The dataset registry: each dataset declares its name, modalities, shapes and settings.

A dataset is a :class:`DatasetSpec` given to :func:`register_dataset`:

* ``name`` — ``data.dataset`` in a configuration,
* ``modalities`` — the modalities it provides, in order (``()``: named by the user, e.g. the
  path columns of a neuroimaging manifest),
* ``settings`` — its settings dataclass, the configuration section ``data.<name>``,
* ``build(data, settings, seed, skipped_rows)`` — its data module,
* ``input_shapes(settings, modalities)`` — the channel-first shape of each modality's items,
  known without loading anything (benchmarks and checks use it),
* ``preflight(data, settings)`` — cheap checks of its input files before a run starts,
* ``path_fields`` — the settings fields that hold file paths (made absolute when a
  configuration is resolved, so a run directory works from any working directory).

The configuration, ``mmssl list``, the sweep and the benchmarks read this registry; a new
dataset is one module (plus a preset and a test). The common data settings —
:class:`DataSettings` — are the same for every dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mmssl.settings import require

if TYPE_CHECKING:
    from mmssl.data.base import MultimodalDataModule

__all__ = ["DATASETS", "DataSettings", "DatasetSpec", "dataset_spec", "register_dataset"]


@dataclass
class DataSettings:
    """Which data, which modalities, which fold, how it is batched (every dataset).

    ``data_dir`` is the dataset's folder where it has one (MNIST-layout IDX files…);
    ``modalities`` defaults to the dataset's own. The dataset's own settings are the section
    ``data.<dataset>`` (:attr:`sections`).

    Loading: ``num_workers`` data-loader worker processes, or ``auto`` — at the start of
    training the in-process loader is timed against a training step and worker processes are
    added only when it would not keep up (:mod:`mmssl.runs.performance`); ``pin_memory``
    (page-locked host batches, faster copies to a GPU) ``true``/``false``, or ``auto``: pinned
    exactly when training on CUDA.
    """

    dataset: str = "two_view_mnist"
    data_dir: str | None = None
    modalities: list[str] | None = None
    num_folds: int = 5
    fold: int = 0
    batch_size: int = 64
    eval_batch_size: int = 256
    num_workers: int | Literal["auto"] = 0
    pin_memory: bool | Literal["auto"] = "auto"
    #: dataset name → its settings (filled from the registry by the configuration)
    sections: dict[str, Any] = field(default_factory=dict, metadata={"internal": True})

    def validate(self) -> None:
        require(self.dataset in DATASETS, "dataset",
                f"unknown dataset {self.dataset!r}; valid: {', '.join(DATASETS)}")
        require(self.num_folds >= 2, "num_folds", f"must be ≥ 2; got {self.num_folds}")
        require(0 <= self.fold < self.num_folds, "fold",
                f"must be in 0..{self.num_folds - 1} (--fold); got {self.fold}")
        for key in ("batch_size", "eval_batch_size"):
            value = getattr(self, key)
            require(value >= 2, key, f"must be ≥ 2 (InfoNCE needs negatives); got {value}")
        require(self.num_workers == "auto" or self.num_workers >= 0, "num_workers",
                f"must be ≥ 0 or auto; got {self.num_workers}")

    @property
    def settings(self) -> Any:
        """The settings of the selected dataset."""
        return self.sections[self.dataset]


def _no_preflight(data: DataSettings, settings: Any) -> None:
    return None


@dataclass(frozen=True)
class DatasetSpec:
    """What mmssl needs to know about one dataset (see the module docstring)."""

    name: str
    modalities: tuple[str, ...]
    settings: type
    build: Callable[[DataSettings, Any, int, Path | None], MultimodalDataModule]
    input_shapes: Callable[[Any, Sequence[str]], dict[str, tuple[int, ...]]]
    summary: str
    preflight: Callable[[DataSettings, Any], None] = _no_preflight
    path_fields: tuple[str, ...] = ()
    num_classes: int | None = None

    @property
    def names_modalities(self) -> bool:
        """Whether the user names the modalities (no fixed list)."""
        return not self.modalities


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Make a dataset available to configurations, the CLI, sweeps and benchmarks."""
    if spec.name in DATASETS and DATASETS[spec.name] is not spec:
        raise ValueError(f"dataset {spec.name!r} is registered twice")
    DATASETS[spec.name] = spec
    return spec


def dataset_spec(name: str) -> DatasetSpec:
    """The registered dataset ``name``; the error lists the registered datasets."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    return DATASETS[name]
