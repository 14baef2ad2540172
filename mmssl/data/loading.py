"""Batching shared by every data module: batch-fetching datasets, resume-exact shuffling.

:class:`TensorDictDataset` serves whole batches with one indexing operation per tensor
(``__getitems__``), :class:`EpochShuffleSampler` shuffles with a permutation that depends only
on (seed, epoch) so a resumed run sees the same order, and :func:`tensor_dict_loader` puts them
together in a :class:`~torch.utils.data.DataLoader`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from mmssl.data.views import derive_seed

__all__ = [
    "EVAL_SPLITS",
    "EpochShuffleSampler",
    "TensorDictDataset",
    "check_split",
    "collate_tensor_dict",
    "tensor_dict_loader",
]

#: The splits a data module serves for evaluation (feature extraction and probes).
EVAL_SPLITS: tuple[str, ...] = ("train", "val", "test")


def check_split(split: str, valid: Sequence[str] = EVAL_SPLITS) -> str:
    """``split`` if it is one of ``valid``, else a ``ValueError`` naming the valid ones."""
    if split not in valid:
        raise ValueError(f"unknown split {split!r}; valid ones are {list(valid)}")
    return split


class TensorDictDataset(Dataset[dict[str, Tensor]]):
    """A dataset over a dict of equally long tensors; item ``i`` is ``{k: v[i]}``.

    It implements ``__getitems__``, so a :class:`~torch.utils.data.DataLoader` using
    :func:`collate_tensor_dict` as ``collate_fn`` gathers a whole batch with one indexing
    operation per tensor instead of one Python call per item.
    """

    def __init__(self, tensors: dict[str, Tensor]) -> None:
        """Store ``tensors``; all must have the same first dimension."""
        lengths = {k: len(v) for k, v in tensors.items()}
        if not tensors or len(set(lengths.values())) != 1:
            raise ValueError(f"expected a non-empty dict of equally long tensors, got {lengths}")
        self.tensors = tensors

    def __len__(self) -> int:
        """Number of items."""
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        """Item ``index`` as ``{key: tensor[index]}``."""
        return {k: v[index] for k, v in self.tensors.items()}

    def __getitems__(self, indices: list[int]) -> dict[str, Tensor]:
        """An already collated batch ``{key: tensor[indices]}``."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {k: v[idx] for k, v in self.tensors.items()}


def collate_tensor_dict(batch: Any) -> Any:
    """Collate function for batch-fetching datasets: the batch is already collated.

    Typed ``Any`` because :class:`~torch.utils.data.DataLoader` declares ``collate_fn`` as taking
    a list; with a dataset that has ``__getitems__`` it receives that method's return value.
    """
    return batch


def tensor_dict_loader(dataset: Dataset[dict[str, Tensor]], batch_size: int, *,
                       num_workers: int = 0, sampler: Sampler[int] | None = None,
                       drop_last: bool = False, pin_memory: bool = False) -> DataLoader:
    """A loader over a batch-fetching dataset (``__getitems__``) in dataset or sampler order."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        drop_last=drop_last,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        collate_fn=collate_tensor_dict,
        pin_memory=pin_memory,
    )


class EpochShuffleSampler(Sampler[int]):
    """Shuffles ``range(num_samples)`` with a permutation that depends only on (seed, epoch).

    The permutation of epoch ``e`` is ``torch.randperm`` under a CPU generator seeded with
    ``derive_seed(seed, "shuffle", e)``. Lightning calls :meth:`set_epoch` at the start of every
    training epoch, so an interrupted-then-resumed run sees the same order as an uninterrupted
    one.
    """

    def __init__(self, num_samples: int, *, seed: int) -> None:
        """Create the sampler at epoch 0."""
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch``."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        """Yield the indices of the current epoch's permutation."""
        gen = torch.Generator()
        gen.manual_seed(derive_seed(self.seed, "shuffle", self.epoch))
        yield from torch.randperm(self.num_samples, generator=gen).tolist()

    def __len__(self) -> int:
        """Number of indices per epoch."""
        return self.num_samples
