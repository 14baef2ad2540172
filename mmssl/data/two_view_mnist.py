"""The Two-View MNIST data module: ``rotated`` and ``noisy`` views of the same digit.

Splits:

* **test** — the official MNIST test files, or the held-out stratified part of the embedded 5k
  subset (see :func:`~mmssl.data.mnist.load_mnist`; its split seed is ``split_seed``, fixed by
  default so the test set does not move with the training seed);
* **train / val** — fold ``fold`` of a ``num_folds``-fold stratified split of the rest
  (:func:`~mmssl.data.splits.stratified_fold`, seeded by ``seed``).

Training views are random and generated on the accelerator after the batch is transferred
(:meth:`TwoViewMnistDataModule.on_after_batch_transfer`); validation, test and ``train_eval``
views are drawn once, on the CPU, and stored, so evaluation is identical across runs, processes
and devices.

Training-view seeding (resume-exact). Each training item carries its dataset ``"index"``. The
shuffling sampler draws its permutation from ``derive_seed(seed, "shuffle", epoch)``, and the
views of a batch are drawn from a fresh generator seeded with
``derive_seed(seed, "train-views", epoch, index[0])``, where ``index[0]`` is the index of the
batch's first item. Within an epoch the sampler yields each index at most once, so every batch
gets its own stream; and since the seed is a pure function of ``(seed, epoch, batch contents)``
(no counter that a restart could reset or skip), a resumed run reproduces the views of an
uninterrupted one exactly (on the same kind of device: the CPU and CUDA generators give different
streams for the same seed).

Pairing (``pairing=``):

* ``"same_image"`` (default; the reference implementation): both views come from the same image.
* ``"same_class"`` (the "noisy MNIST" protocol of Wang et al., ICML 2015, DCCAE): the ``rotated``
  view comes from the image itself and the ``noisy`` view from its *partner*, another image of the
  same class in the same split, drawn uniformly among the other members of that class
  (:func:`same_class_partners`; an image alone in its class is its own partner). Training
  partners are redrawn every epoch from ``derive_seed(seed, "train-partners", epoch)``, so the
  partner of an item is a pure function of ``(seed, epoch, index)`` and resumes exactly; the
  partners of the fixed-view splits come from ``derive_seed(seed, "eval-partners", split)``. The
  random angles and noise are the same as in ``"same_image"`` mode for the same seed; only the
  image under the noise changes. The label is the shared class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import Tensor

from mmssl.data.base import MultimodalDataModule
from mmssl.data.loading import EVAL_SPLITS, TensorDictDataset, check_split
from mmssl.data.mnist import find_mnist_files, load_mnist
from mmssl.data.registry import DatasetSpec, DataSettings, register_dataset
from mmssl.data.splits import stratified_fold
from mmssl.data.views import (
    IMAGE_SIZE,
    TWO_VIEW_MODALITIES,
    derive_seed,
    make_views,
    prepare_images,
)
from mmssl.settings import require

__all__ = [
    "PAIRINGS",
    "Pairing",
    "TwoViewMnistDataModule",
    "same_class_partners",
]

#: How the two views of an item are paired (see the module docstring).
Pairing = Literal["same_image", "same_class"]
#: The valid values of :data:`Pairing`.
PAIRINGS: tuple[str, ...] = get_args(Pairing)

_NUM_CLASSES = 10
_VIEW_CHUNK = 4096


def same_class_partners(labels: np.ndarray | Tensor, rng: np.random.Generator) -> np.ndarray:
    r"""For every item, a different random item of the same class.

    For each class :math:`c` with members :math:`m_0 < \dots < m_{n-1}` (positions in ``labels``),
    member :math:`m_i` gets partner :math:`m_j` with :math:`j` uniform on
    :math:`\{0..n-1\} \setminus \{i\}`, drawn independently per item (so a partner may be shared
    and some members are nobody's partner). Classes are visited in ascending order, each drawing
    ``rng.integers(0, n - 1, size=n)``. A class with a single member pairs it with itself.

    Args:
        labels: ``(N,)`` integer class labels.
        rng: the random source.

    Returns:
        ``int64`` array ``(N,)`` of partner positions; ``labels[partners] == labels``.
    """
    labels_np = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels)
    if labels_np.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels_np.shape}")
    partners = np.arange(len(labels_np), dtype=np.int64)
    for c in np.unique(labels_np):
        members = np.flatnonzero(labels_np == c)
        n = len(members)
        if n < 2:
            continue
        j = rng.integers(0, n - 1, size=n)
        j += j >= np.arange(n)
        partners[members] = members[j]
    return partners


class TwoViewMnistDataModule(MultimodalDataModule):
    """Two-View MNIST: each digit seen as a randomly ``rotated`` and a ``noisy`` 32×32 image.

    Training batches are ``{modality: (B, 1, 32, 32) float32, "label": (B,) int64}`` once
    :meth:`on_after_batch_transfer` has run (Lightning runs it for the datamodule passed to
    ``Trainer.fit``; a LightningModule's own override of that hook is ignored in its favour).
    Before it, they hold ``"image"`` and ``"index"`` instead of the views. Evaluation batches
    (:meth:`val_dataloader`, :meth:`test_dataloader`, :meth:`eval_dataloader`) have fixed views.

    Args:
        data_dir: directory with the MNIST IDX files, or ``None`` for the embedded 5k subset.
        modalities: the views to serve, a non-empty, duplicate-free subset of
            :data:`~mmssl.data.views.TWO_VIEW_MODALITIES`, in the order given.
        num_folds: number of stratified folds of the training part.
        fold: the fold used for validation, ``0 <= fold < num_folds``.
        batch_size: training (and validation/test) batch size; training drops the last
            incomplete batch.
        seed: seeds the fold split, the shuffling, the training views and the fixed eval views.
        num_workers: data-loader worker processes (or ``"auto"``, see
            :class:`~mmssl.data.base.MultimodalDataModule`).
        pin_memory: pin the loaders' batches (``"auto"``: when training on CUDA).
        eval_batch_size: batch size of :meth:`eval_dataloader` (feature extraction).
        max_angle: largest absolute rotation of the ``rotated`` view, in degrees.
        split_seed: random state of the train/test split of the embedded subset (ignored with
            ``data_dir``); kept apart from ``seed`` so the test set is the same for every run.
        pairing: ``"same_image"`` (both views of one image, the reference) or ``"same_class"``
            (the ``noisy`` view from another image of the same class, Wang et al.'s protocol);
            see the module docstring.
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        modalities: Sequence[str] = TWO_VIEW_MODALITIES,
        num_folds: int = 5,
        fold: int = 0,
        batch_size: int = 64,
        seed: int = 343,
        num_workers: int | str = 0,
        eval_batch_size: int = 256,
        max_angle: float = 45.0,
        split_seed: int = 343,
        pairing: Pairing = "same_image",
        pin_memory: bool | str = False,
    ) -> None:
        """Validate the arguments; nothing is loaded until :meth:`setup`."""
        super().__init__(modalities, available=TWO_VIEW_MODALITIES, num_folds=num_folds,
                         fold=fold, batch_size=batch_size, eval_batch_size=eval_batch_size,
                         seed=seed, num_workers=num_workers, pin_memory=pin_memory)
        if pairing not in PAIRINGS:
            raise ValueError(f"unknown pairing {pairing!r}; valid values are {list(PAIRINGS)}")
        self.data_dir = None if data_dir is None else Path(data_dir)
        self.max_angle = float(max_angle)
        self.split_seed = split_seed
        self.pairing: Pairing = pairing
        self.data_source: str | None = None
        self._split_indices: dict[str, np.ndarray] = {}
        self._images: dict[str, Tensor] = {}
        self._labels: dict[str, Tensor] = {}
        self._eval_sets: dict[str, TensorDictDataset] = {}
        self._eval_partners: dict[str, Tensor] = {}
        self._train_partners: tuple[int, Tensor] | None = None

    @property
    def num_classes(self) -> int:
        """Number of digit classes (10)."""
        return _NUM_CLASSES

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one view, ``(1, 32, 32)``."""
        return (1, IMAGE_SIZE, IMAGE_SIZE)

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of one item of each served modality: ``(1, 32, 32)`` for every view."""
        return {m: self.input_shape for m in self.modalities}

    # ------------------------------------------------------------------ setup

    def setup(self, stage: str | None = None) -> None:
        """Load the data, split train/val by fold, prepare images and draw the eval views.

        Idempotent: later calls (Lightning calls it once per stage) do nothing.
        """
        if self._images:
            return
        arrays = load_mnist(self.data_dir, seed=self.split_seed)
        train_idx, val_idx = stratified_fold(
            arrays.train_labels, num_folds=self.num_folds, fold=self.fold, seed=self.seed
        )
        train_part = prepare_images(arrays.train_images)
        train_labels = torch.as_tensor(arrays.train_labels, dtype=torch.long)
        t_idx, v_idx = torch.as_tensor(train_idx), torch.as_tensor(val_idx)
        self._images = {
            "train": train_part[t_idx].contiguous(),
            "val": train_part[v_idx].contiguous(),
            "test": prepare_images(arrays.test_images),
        }
        self._labels = {
            "train": train_labels[t_idx].contiguous(),
            "val": train_labels[v_idx].contiguous(),
            "test": torch.as_tensor(arrays.test_labels, dtype=torch.long),
        }
        self._split_indices = {"train": train_idx, "val": val_idx}
        self.data_source = arrays.source
        self._eval_sets = {}
        self._eval_partners = {}
        self._train_partners = None
        for split in ("val", "test"):
            self._eval_set(split)

    @property
    def train_indices(self) -> np.ndarray:
        """Sorted positions of this fold's training images in the loaded training part."""
        self.require_setup()
        return self._split_indices["train"]

    @property
    def val_indices(self) -> np.ndarray:
        """Sorted positions of this fold's validation images in the loaded training part."""
        self.require_setup()
        return self._split_indices["val"]

    def is_setup(self) -> bool:
        return bool(self._images)

    def split_size(self, split: str) -> int:
        """Number of images in ``split`` (one of ``train``, ``val``, ``test``)."""
        self.require_setup()
        check_split(split, EVAL_SPLITS)
        return len(self._labels[split])


    def _eval_set(self, split: str) -> TensorDictDataset:
        """The fixed-view dataset of ``split``, drawn on first use and cached.

        Views come from a CPU generator seeded with ``derive_seed(seed, "eval-views", split)``,
        applied in consecutive chunks of a fixed size, so they are the same whenever, wherever and
        in whichever process they are drawn. The ``train`` split (the linear probe's training
        features) is drawn lazily, so runs that never probe do not hold it in memory.
        """
        if split not in self._eval_sets:
            images = self._images[split]
            partners = self.partner_indices(split) if self.pairing == "same_class" else None
            gen = torch.Generator()
            gen.manual_seed(derive_seed(self.seed, "eval-views", split))
            chunks = [
                self._draw_views(
                    images[i:i + _VIEW_CHUNK],
                    None if partners is None else images[partners[i:i + _VIEW_CHUNK]],
                    gen,
                )
                for i in range(0, len(images), _VIEW_CHUNK)
            ]
            tensors = {m: torch.cat([c[m] for c in chunks]) for m in self.modalities}
            tensors["label"] = self._labels[split]
            self._eval_sets[split] = TensorDictDataset(tensors)
        return self._eval_sets[split]

    def _draw_views(self, images: Tensor, noisy_source: Tensor | None,
                    generator: torch.Generator) -> dict[str, Tensor]:
        """The requested views of ``images``; the ``noisy`` one of ``noisy_source`` if given.

        With a ``noisy_source`` the angles and noise are those :func:`make_views` would draw for
        ``images`` from the same generator state (a twin generator replays the stream), and
        ``generator`` ends in the same state either way.
        """
        if noisy_source is None:
            return make_views(images, generator, max_angle=self.max_angle,
                              modalities=self.modalities)
        twin = torch.Generator(device=generator.device)
        twin.set_state(generator.get_state())
        views = make_views(images, generator, max_angle=self.max_angle,
                           modalities=[m for m in self.modalities if m == "rotated"])
        if "noisy" in self.modalities:
            views["noisy"] = make_views(noisy_source, twin, max_angle=self.max_angle,
                                        modalities=("noisy",))["noisy"]
        return {m: views[m] for m in self.modalities}

    def partner_indices(self, split: str, epoch: int | None = None) -> Tensor:
        """Positions, within ``split``, of the image under each item's ``noisy`` view.

        Args:
            split: ``"train"``, ``"val"`` or ``"test"``.
            epoch: for ``"train"`` only: the training epoch whose partners to return; ``None``
                gives the fixed partners of the ``train`` split's evaluation views
                (:meth:`eval_dataloader`).

        Returns:
            ``int64`` tensor ``(split_size,)``: ``arange`` with ``pairing="same_image"``, else
            the :func:`same_class_partners` of the split's labels, drawn from
            ``derive_seed(seed, "train-partners", epoch)`` (training) or
            ``derive_seed(seed, "eval-partners", split)`` (fixed views).
        """
        self.require_setup()
        check_split(split, EVAL_SPLITS)
        if epoch is not None and split != "train":
            raise ValueError(f"epoch applies to the train split only, got split={split!r}")
        labels = self._labels[split]
        if self.pairing == "same_image":
            return torch.arange(len(labels))
        if epoch is None:
            if split not in self._eval_partners:
                rng = np.random.default_rng(derive_seed(self.seed, "eval-partners", split))
                self._eval_partners[split] = torch.from_numpy(same_class_partners(labels, rng))
            return self._eval_partners[split]
        if self._train_partners is None or self._train_partners[0] != epoch:
            rng = np.random.default_rng(derive_seed(self.seed, "train-partners", int(epoch)))
            self._train_partners = (int(epoch),
                                    torch.from_numpy(same_class_partners(labels, rng)))
        return self._train_partners[1]

    # ------------------------------------------------------------ datasets

    def train_dataset(self) -> TensorDictDataset:
        """Training items ``{"image", "label", "index"}``; the views are drawn after transfer."""
        n = len(self._labels["train"])
        return TensorDictDataset({
            "image": self._images["train"],
            "label": self._labels["train"],
            "index": torch.arange(n),
        })

    def eval_dataset(self, split: str) -> TensorDictDataset:
        """Fixed views of ``split``: ``"train"`` (this fold's training images), ``"val"``,
        ``"test"``."""
        check_split(split, EVAL_SPLITS)
        return self._eval_set(split)

    # ------------------------------------------------------------ train views

    def train_view_seed(self, epoch: int, first_index: int) -> int:
        """Seed of the training views of the batch starting with item ``first_index``."""
        return derive_seed(self.seed, "train-views", epoch, first_index)

    def apply_train_views(self, batch: dict[str, Tensor], epoch: int | None = None
                          ) -> dict[str, Tensor]:
        """Replace ``"image"`` and ``"index"`` of a training batch by the requested views.

        The views are drawn by :func:`~mmssl.data.views.make_views` on the images' device from a
        generator seeded with :meth:`train_view_seed` ``(epoch, index[0])``. With
        ``pairing="same_class"`` the ``noisy`` view is drawn, with the same angles and noise, on
        the partner images (:meth:`partner_indices` ``("train", epoch)``, gathered from the CPU
        copy of the training split and moved to the batch's device).

        Args:
            batch: ``{"image": (B, 1, 32, 32), "index": (B,), "label": (B,), ...}``.
            epoch: the epoch; :meth:`current_epoch` when ``None``.

        Returns:
            A new dict with the modalities in place of ``"image"`` and ``"index"``; other keys
            are kept.
        """
        if "index" not in batch:
            raise KeyError("a training batch needs the 'index' key to seed its views")
        out = dict(batch)
        images = out.pop("image")
        index = out.pop("index")
        epoch = self.current_epoch() if epoch is None else epoch
        gen = torch.Generator(device=images.device)
        gen.manual_seed(self.train_view_seed(epoch, int(index[0])))
        noisy_source = None
        if self.pairing == "same_class" and "noisy" in self.modalities:
            partners = self.partner_indices("train", epoch)[index.cpu()]
            noisy_source = self._images["train"][partners].to(images.device)
        views = self._draw_views(images, noisy_source, gen)
        for m in self.modalities:
            out[m] = views[m]
        return out

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Turn training batches (those with an ``"image"`` key) into views, on the device;
        every batch's views leave in the module's memory format
        (:meth:`~mmssl.data.base.MultimodalDataModule.format_inputs`)."""
        if isinstance(batch, dict) and "image" in batch:
            batch = self.apply_train_views(batch)
        return self.format_inputs(batch)


@dataclass
class TwoViewMnistSettings:
    """Two-View MNIST views: ``pairing`` ``same_image`` (the reference) or ``same_class``
    (Wang et al.'s noisy-MNIST protocol); ``max_angle`` of the rotated view, in degrees."""

    pairing: Literal["same_image", "same_class"] = "same_image"
    max_angle: float = 45.0

    def validate(self) -> None:
        require(0 <= self.max_angle <= 180, "max_angle",
                f"must be in [0, 180] degrees; got {self.max_angle}")


def _build(data: DataSettings, settings: TwoViewMnistSettings, seed: int,
           skipped_rows: Path | None) -> TwoViewMnistDataModule:
    return TwoViewMnistDataModule(
        data_dir=Path(data.data_dir) if data.data_dir else None,
        modalities=tuple(data.modalities or TWO_VIEW_MODALITIES), num_folds=data.num_folds,
        fold=data.fold, batch_size=data.batch_size, seed=seed, num_workers=data.num_workers,
        eval_batch_size=data.eval_batch_size, max_angle=settings.max_angle,
        pairing=settings.pairing, pin_memory=data.pin_memory,
    )


def _input_shapes(settings: TwoViewMnistSettings,
                  modalities: Sequence[str]) -> dict[str, tuple[int, ...]]:
    return {m: (1, IMAGE_SIZE, IMAGE_SIZE) for m in modalities}


def _preflight(data: DataSettings, settings: TwoViewMnistSettings) -> None:
    if data.data_dir:
        find_mnist_files(Path(data.data_dir))


TWO_VIEW_MNIST = register_dataset(DatasetSpec(
    name="two_view_mnist",
    modalities=TWO_VIEW_MODALITIES,
    settings=TwoViewMnistSettings,
    build=_build,
    input_shapes=_input_shapes,
    summary="rotated (±45°) and noisy views of MNIST digits (--data-dir IDX files, else the "
            "embedded 5,000-image subset)",
    preflight=_preflight,
    num_classes=_NUM_CLASSES,
))
