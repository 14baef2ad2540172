"""The common base of every multimodal data module.

A data module serves batches ``{modality: tensor, "label": tensor, ...}``: shuffled training
batches (:meth:`MultimodalDataModule.train_dataloader`, resume-exact order, last incomplete batch
dropped) and fixed, unshuffled evaluation batches of the ``train``, ``val`` and ``test`` splits
(:meth:`MultimodalDataModule.eval_dataloader`), and tells the methods the ``input_shapes`` of
its modalities and its ``num_classes``. Subclasses implement :meth:`setup`, :meth:`is_setup`,
:meth:`train_dataset`, :meth:`eval_dataset` and the two properties; the argument checks, the
loaders and the sampler live here once.

Every batch leaves :meth:`MultimodalDataModule.on_after_batch_transfer` (on the training
device, after any device-side views or crops) with its inputs in the module's
:attr:`~MultimodalDataModule.memory_format` — ``contiguous`` or ``channels_last``
(``torch.channels_last`` for 4-D image batches, ``torch.channels_last_3d`` for 5-D volume
batches), the layout the run chose for its model (:mod:`mmssl.runs.performance`). Subclasses
that override the hook end it with :meth:`~MultimodalDataModule.format_inputs`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from mmssl.data.loading import EVAL_SPLITS, EpochShuffleSampler, check_split, tensor_dict_loader
from mmssl.data.splits import check_fold

__all__ = ["MEMORY_FORMATS", "MemoryFormat", "MultimodalDataModule", "to_memory_format"]

#: How a batch of inputs (and the model) is laid out in memory.
MemoryFormat = Literal["contiguous", "channels_last"]
MEMORY_FORMATS: tuple[str, ...] = ("contiguous", "channels_last")


def to_memory_format(tensor: Tensor, memory_format: str) -> Tensor:
    """``tensor`` in ``memory_format``: for ``channels_last`` a 4-D (N, C, H, W) tensor in
    ``torch.channels_last`` (strides of N, H, W, C order) and a 5-D (N, C, D, H, W) tensor in
    ``torch.channels_last_3d``; for ``contiguous`` the usual row-major layout. Other ranks are
    returned as they are; no copy is made when the layout is already right. The values are the
    same, only the strides differ.
    """
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"unknown memory format {memory_format!r}; valid: "
                         f"{', '.join(MEMORY_FORMATS)}")
    if tensor.dim() not in (4, 5):
        return tensor
    if memory_format == "contiguous":
        return tensor.contiguous()
    layout = torch.channels_last if tensor.dim() == 4 else torch.channels_last_3d
    return tensor.contiguous(memory_format=layout)


class MultimodalDataModule(L.LightningDataModule):
    """Shared arguments, checks and loaders of the mmssl data modules.

    Args:
        modalities: the modalities to serve, non-empty and without repeats; when
            ``available`` is given, a subset of it.
        available: the modalities the dataset has (``()``: any names, e.g. a manifest's
            columns).
        num_folds, fold: the cross-validation fold (``0 <= fold < num_folds``).
        batch_size: training and validation batch size.
        eval_batch_size: batch size of :meth:`eval_dataloader` (feature extraction).
        seed: seeds splits, shuffling and augmentation.
        num_workers: data-loader worker processes, or ``"auto"`` (0 until
            :meth:`configure_loading` sets the measured choice).
        pin_memory: page-locked host batches (faster copies to a GPU), or ``"auto"``: pinned
            when the attached trainer trains on CUDA.
    """

    def __init__(
        self,
        modalities: Sequence[str],
        *,
        available: Sequence[str] = (),
        num_folds: int = 5,
        fold: int = 0,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        seed: int = 343,
        num_workers: int | str = 0,
        pin_memory: bool | str = False,
    ) -> None:
        super().__init__()
        mods = (modalities,) if isinstance(modalities, str) else tuple(modalities)
        if not mods:
            raise ValueError("modalities must not be empty"
                             + (f"; valid ones are {list(available)}" if available else ""))
        unknown = [m for m in mods if available and m not in available]
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; valid ones are {list(available)}")
        if len(set(mods)) != len(mods):
            raise ValueError(f"duplicate modalities in {list(mods)}")
        check_fold(num_folds, fold)
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        if num_workers != "auto" and (isinstance(num_workers, bool)
                                      or not isinstance(num_workers, int) or num_workers < 0):
            raise ValueError(f"num_workers must be a non-negative integer or 'auto', got "
                             f"{num_workers!r}")
        if pin_memory != "auto" and not isinstance(pin_memory, bool):
            raise ValueError(f"pin_memory must be true, false or 'auto', got {pin_memory!r}")
        self.modalities: tuple[str, ...] = mods
        self.num_folds = num_folds
        self.fold = fold
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        #: as requested (an int, or "auto"); :attr:`num_workers` is what the loaders use
        self.requested_num_workers: int | str = num_workers
        self.num_workers: int = 0 if num_workers == "auto" else int(num_workers)
        self.requested_pin_memory: bool | str = pin_memory
        self.memory_format: str = "contiguous"
        self._train_sampler: EpochShuffleSampler | None = None

    # -- what subclasses provide ----------------------------------------------------------------
    def is_setup(self) -> bool:
        """Whether :meth:`setup` has loaded the data."""
        raise NotImplementedError

    def train_dataset(self) -> Dataset[dict[str, Tensor]]:
        """The training items (before any on-device augmentation)."""
        raise NotImplementedError

    def eval_dataset(self, split: str) -> Dataset[dict[str, Tensor]]:
        """The fixed items of ``split`` (``train``, ``val`` or ``test``) for evaluation."""
        raise NotImplementedError

    def stem_dataset(self) -> Dataset[dict[str, Tensor]]:
        """Unaugmented training items with one tensor per modality, to fit an encoder's stem
        from (``model.encoder: pca``): by default the training split's fixed evaluation items;
        a module whose training items already hold the modalities unaugmented may give more."""
        return self.eval_dataset("train")

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Channel-first shape of one item of each served modality."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        """Number of label classes."""
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------
    def require_setup(self) -> None:
        if not self.is_setup():
            raise RuntimeError(f"{type(self).__name__}.setup() must be called first")

    @property
    def pin_memory(self) -> bool:
        """Whether the loaders pin their batches: as requested, or for ``"auto"`` whether the
        attached trainer trains on CUDA (pinning only speeds up host-to-GPU copies)."""
        if isinstance(self.requested_pin_memory, bool):
            return self.requested_pin_memory
        trainer = getattr(self, "trainer", None)
        return bool(trainer is not None and trainer.strategy.root_device.type == "cuda")

    def configure_loading(self, *, num_workers: int | None = None,
                          memory_format: str | None = None) -> None:
        """Set the worker processes of the loaders built from now on and/or the memory format
        of the inputs :meth:`on_after_batch_transfer` emits (:data:`MEMORY_FORMATS`)."""
        if num_workers is not None:
            if num_workers < 0:
                raise ValueError(f"num_workers must be non-negative, got {num_workers}")
            self.num_workers = int(num_workers)
        if memory_format is not None:
            if memory_format not in MEMORY_FORMATS:
                raise ValueError(f"unknown memory format {memory_format!r}; valid: "
                                 f"{', '.join(MEMORY_FORMATS)}")
            self.memory_format = memory_format

    def loader(self, dataset: Dataset[dict[str, Tensor]], batch_size: int, *,
               sampler: Sampler[int] | None = None, drop_last: bool = False) -> DataLoader:
        """A batch-fetching loader with this module's workers and pinning."""
        return tensor_dict_loader(dataset, batch_size, num_workers=self.num_workers,
                                  sampler=sampler, drop_last=drop_last,
                                  pin_memory=self.pin_memory)

    def format_inputs(self, batch: Any) -> Any:
        """``batch`` with its modality tensors in :attr:`memory_format`
        (:func:`to_memory_format`). With ``contiguous`` (the default) the batch is returned as
        it is: the generators already emit row-major tensors, and nothing is copied; anything
        that is not a dict is returned unchanged."""
        if self.memory_format == "contiguous" or not isinstance(batch, Mapping):
            return batch
        out = dict(batch)
        for modality in self.modalities:
            value = out.get(modality)
            if isinstance(value, Tensor):
                out[modality] = to_memory_format(value, self.memory_format)
        return out

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Lay the inputs out in :attr:`memory_format` on the device (:meth:`format_inputs`)."""
        return self.format_inputs(batch)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches; the order is a function of (seed, epoch), last dropped."""
        self.require_setup()
        dataset = self.train_dataset()
        n = len(dataset)  # type: ignore[arg-type]
        if n < self.batch_size:
            raise ValueError(
                f"the training split holds {n} items, fewer than batch_size={self.batch_size}; "
                "with drop_last there would be no training batch"
            )
        self._train_sampler = EpochShuffleSampler(n, seed=self.seed)
        return self.loader(dataset, self.batch_size, sampler=self._train_sampler,
                           drop_last=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches (fixed views), in order, batch size ``batch_size``."""
        self.require_setup()
        return self.loader(self.eval_dataset("val"), self.batch_size)

    def test_dataloader(self) -> DataLoader:
        """Test batches (fixed views), in order, batch size ``batch_size``."""
        self.require_setup()
        return self.loader(self.eval_dataset("test"), self.batch_size)

    def eval_dataloader(self, split: str) -> DataLoader:
        """Fixed, unshuffled, complete batches of ``split`` for feature extraction."""
        check_split(split, EVAL_SPLITS)
        self.require_setup()
        return self.loader(self.eval_dataset(split), self.eval_batch_size)

    def current_epoch(self) -> int:
        """The epoch seeding training augmentations (the trainer's, else the sampler's)."""
        if self.trainer is not None:
            return int(self.trainer.current_epoch)
        return 0 if self._train_sampler is None else self._train_sampler.epoch

    def describe(self) -> dict[str, Any]:
        """A few facts for logs and records."""
        return {"modalities": list(self.modalities), "fold": self.fold,
                "num_folds": self.num_folds, "seed": self.seed}
