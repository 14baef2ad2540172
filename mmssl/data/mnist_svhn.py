"""MNIST-SVHN: pairs of an MNIST digit and an SVHN house-number digit of the same class.

This is the pairing protocol of MMVAE (Shi et al., NeurIPS 2019), which the Domino reference
implementation reuses:

1. **Splits.** The MNIST and SVHN training sets are each split by
   :func:`~mmssl.data.splits.stratified_fold` (``num_folds``, ``fold``, ``seed``) into a training
   and a validation part (the fold *is* honoured, unlike the reference, which always used fold 0);
   the test split pairs the two official test sets.
2. **Pairing** (:func:`pair_by_class`, per split). For every digit ``c`` the first
   ``n_c = min(#MNIST_c, #SVHN_c, max_per_class)`` images of class ``c`` of each dataset (in file
   order, as MMVAE's script takes them after sorting by label) are kept, and ``pairings`` times an
   independent random permutation of each class list is paired element-wise. A split therefore
   holds ``pairings * sum_c n_c`` pairs, every pair shares its label, and every kept image occurs
   exactly ``pairings`` times. With the defaults (``max_per_class=10_000``, ``pairings=30``)
   and 5 folds that is about 1.35M training, 0.34M validation and 0.3M test pairs: an "epoch"
   sees every training image about 30 times. That is the protocol, not an accident.
3. **Images.** ``mnist``: ``uint8`` 28×28 scaled by 1/255 and resized to 32×32 (bilinear,
   ``align_corners=False``), **without** the per-image min-max scaling of Two-View MNIST:
   MMVAE used ``Resize(32)`` + ``ToTensor`` (PIL rounds the resized image to ``uint8`` before
   the division; we resize the float image, a difference below 1/255). ``svhn``: ``uint8``
   3×32×32 scaled by 1/255. No normalisation, no augmentation.

Each source image is stored once, as ``uint8`` on the CPU; a split is an array of pair indices
into the sources, and batches are gathered and converted to ``float32`` one batch at a time
(:class:`PairedImageDataset`).

The pair indices are cached beside the data in
``data_dir/mnist_svhn_pairs/fold{fold}-of{num_folds}-seed{seed}-max{max_per_class}-dm{pairings}.npz``
together with a fingerprint: a SHA-256 of the four label arrays and the parameters. The pairing
depends on nothing else, so the cache is reused exactly when recomputing would (with the same
library versions) give the same pairs, and it is rebuilt when a label file changes. It also pins
the split across scikit-learn upgrades that might change ``StratifiedKFold``'s shuffling.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mmssl import io
from mmssl.data.base import MultimodalDataModule
from mmssl.data.loading import EVAL_SPLITS, check_split
from mmssl.data.mnist import load_mnist
from mmssl.data.registry import DatasetSpec, DataSettings, register_dataset
from mmssl.data.splits import stratified_fold
from mmssl.data.svhn import (
    MNIST_URL,
    SVHN_FILES,
    SVHN_URL,
    find_mnist_svhn_files,
    pair_by_class,
    pairing_fingerprint,
    read_svhn_mat,
)
from mmssl.data.views import IMAGE_SIZE, derive_seed
from mmssl.errors import MmsslError
from mmssl.settings import require

__all__ = [
    "MNIST_SVHN_MODALITIES",
    "MNIST_URL",
    "PAIR_CACHE_DIR",
    "SVHN_FILES",
    "SVHN_URL",
    "MnistSvhnDataModule",
    "PairedImageDataset",
    "find_mnist_svhn_files",
    "pair_by_class",
    "read_svhn_mat",
]

log = logging.getLogger(__name__)

#: The modalities of MNIST-SVHN, in canonical order.
MNIST_SVHN_MODALITIES: tuple[str, ...] = ("mnist", "svhn")
#: Sub-directory of ``data_dir`` holding the cached pair indices.
PAIR_CACHE_DIR = "mnist_svhn_pairs"

_NUM_CLASSES = 10
_PAIR_SPLITS: tuple[str, ...] = ("train", "val", "test")


# --------------------------------------------------------------------------------- dataset


class PairedImageDataset(Dataset[dict[str, Tensor]]):
    """Pairs of images stored once per source and looked up through pair indices.

    Item ``i`` is ``{m: image of sources[m][pairs[m][i]] as float32, "label": labels[i]}``.
    Sources are ``uint8`` ``(N_m, C, H, W)`` tensors; an item is scaled by 1/255 and, when its
    side is not ``size``, resized bilinearly (``align_corners=False``) to ``size`` × ``size``
    and clamped to :math:`[0, 1]`. ``__getitems__`` gathers a whole batch with one indexing
    operation per modality (use :func:`~mmssl.data.two_view_mnist.collate_tensor_dict`).
    """

    def __init__(self, sources: Mapping[str, Tensor], pairs: Mapping[str, Tensor],
                 labels: Tensor, *, size: int = IMAGE_SIZE) -> None:
        """Check that every modality has a source and pair indices as long as ``labels``."""
        if not sources or set(sources) != set(pairs):
            raise ValueError(f"sources {sorted(sources)} and pairs {sorted(pairs)} must name the "
                             f"same, non-empty set of modalities")
        for m, idx in pairs.items():
            if idx.ndim != 1 or len(idx) != len(labels):
                raise ValueError(f"pair indices of {m!r} have shape {tuple(idx.shape)}; "
                                 f"expected ({len(labels)},)")
            if sources[m].ndim != 4 or sources[m].dtype != torch.uint8:
                raise ValueError(f"source of {m!r} must be uint8 (N, C, H, W), got "
                                 f"{sources[m].dtype} {tuple(sources[m].shape)}")
        self.sources = dict(sources)
        self.pairs = {m: idx.to(torch.long) for m, idx in pairs.items()}
        self.labels = labels
        self.size = size

    def __len__(self) -> int:
        """Number of pairs."""
        return len(self.labels)

    def _convert(self, images: Tensor) -> Tensor:
        x = images.to(torch.float32).div_(255.0)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear",
                              align_corners=False).clamp_(0.0, 1.0)
        return x

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Tensor]:
        """An already collated batch of the pairs ``indices``."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        batch = {m: self._convert(self.sources[m][self.pairs[m][idx]]) for m in self.sources}
        batch["label"] = self.labels[idx]
        return batch

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        """Pair ``index`` as ``{modality: (C, size, size), "label": ()}``."""
        return {k: v[0] for k, v in self.__getitems__([index]).items()}


# ------------------------------------------------------------------------------ datamodule


class MnistSvhnDataModule(MultimodalDataModule):
    """MNIST-SVHN with MMVAE's class-matched pairing (see the module docstring).

    Batches of every loader are ``{"mnist": (B, 1, 32, 32), "svhn": (B, 3, 32, 32), "label":
    (B,)}`` (only the requested modalities), ``float32`` in :math:`[0, 1]` and ``int64``; there is
    no augmentation, so nothing happens after the batch transfer. The public surface matches
    :class:`~mmssl.data.two_view_mnist.TwoViewMnistDataModule`.

    Args:
        data_dir: directory with the MNIST IDX files and ``train_32x32.mat``, ``test_32x32.mat``
            (there is no embedded default; ``None`` raises at :meth:`setup`). The pair cache is
            written to its ``mnist_svhn_pairs`` sub-directory when it is writable.
        num_folds: number of stratified folds of each training set.
        fold: the fold used for validation, ``0 <= fold < num_folds``.
        batch_size: training (and validation/test) batch size; training drops the last
            incomplete batch.
        seed: seeds the fold split, the pairing and the shuffling.
        num_workers: data-loader worker processes (or ``"auto"``).
        pin_memory: pin the loaders' batches (``"auto"``: when training on CUDA).
        eval_batch_size: batch size of :meth:`eval_dataloader` (feature extraction).
        max_per_class: cap on the images kept per class and dataset (MMVAE's ``max_d``).
        pairings: number of pairing rounds (MMVAE's ``dm``).
        modalities: the modalities to serve, a non-empty, duplicate-free subset of
            :data:`MNIST_SVHN_MODALITIES`, in the order given. The pairing always uses both
            datasets' labels, so a single-modality run sees the same ``pairings``-fold repeated
            images as a bimodal one (as in the reference).
        eval_pairings: how many pairing rounds :meth:`eval_dataloader` serves (the first ones,
            each holding every kept image once); ``None`` serves all ``pairings``, like the
            reference. ``1`` makes feature extraction and probing ``pairings`` times cheaper.
    """

    def __init__(
        self,
        data_dir: Path | None,
        num_folds: int = 5,
        fold: int = 0,
        batch_size: int = 64,
        seed: int = 343,
        num_workers: int | str = 0,
        eval_batch_size: int = 256,
        max_per_class: int = 10_000,
        pairings: int = 30,
        modalities: Sequence[str] = MNIST_SVHN_MODALITIES,
        eval_pairings: int | None = None,
        pin_memory: bool | str = False,
    ) -> None:
        """Validate the arguments; nothing is loaded until :meth:`setup`."""
        super().__init__(modalities, available=MNIST_SVHN_MODALITIES, num_folds=num_folds,
                         fold=fold, batch_size=batch_size, eval_batch_size=eval_batch_size,
                         seed=seed, num_workers=num_workers, pin_memory=pin_memory)
        for name, value in (("max_per_class", max_per_class), ("pairings", pairings)):
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        if eval_pairings is not None and not 1 <= eval_pairings <= pairings:
            raise ValueError(f"eval_pairings must lie in 1..pairings={pairings} (or be None), "
                             f"got {eval_pairings}")
        self.data_dir = None if data_dir is None else Path(data_dir)
        self.max_per_class = max_per_class
        self.pairings = pairings
        self.eval_pairings = pairings if eval_pairings is None else eval_pairings
        self.data_source: str | None = None
        #: Path of the pair cache used by the last :meth:`setup`, ``None`` if it was not written.
        self.cache_path: Path | None = None
        self._pairs: dict[str, dict[str, np.ndarray]] = {}
        self._datasets: dict[str, PairedImageDataset] = {}

    @property
    def num_classes(self) -> int:
        """Number of digit classes (10)."""
        return _NUM_CLASSES

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Item shape of each served modality: ``mnist`` (1, 32, 32), ``svhn`` (3, 32, 32)."""
        shapes = {"mnist": (1, IMAGE_SIZE, IMAGE_SIZE), "svhn": (3, IMAGE_SIZE, IMAGE_SIZE)}
        return {m: shapes[m] for m in self.modalities}

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The one item shape shared by all served modalities (for single-shape callers).

        Raises:
            ValueError: the modalities have different shapes (``mnist`` and ``svhn`` together);
                use :attr:`input_shapes`.
        """
        shapes = set(self.input_shapes.values())
        if len(shapes) != 1:
            raise ValueError(f"the modalities have different input shapes {self.input_shapes}; "
                             f"use input_shapes")
        return shapes.pop()

    @property
    def cache_file(self) -> Path | None:
        """Where the pair indices of this configuration are cached (``None`` without data_dir)."""
        if self.data_dir is None:
            return None
        name = (f"fold{self.fold}-of{self.num_folds}-seed{self.seed}-max{self.max_per_class}"
                f"-dm{self.pairings}.npz")
        return self.data_dir / PAIR_CACHE_DIR / name

    # ------------------------------------------------------------------ setup

    def setup(self, stage: str | None = None) -> None:
        """Read the files, load or compute the pairs and build the datasets.

        Idempotent: later calls (Lightning calls it once per stage) do nothing.

        Raises:
            FileNotFoundError: ``data_dir`` is ``None`` or files are missing
                (see :func:`find_mnist_svhn_files`).
            ValueError: a file is malformed.
        """
        if self._datasets:
            return
        files = find_mnist_svhn_files(self.data_dir)
        assert self.data_dir is not None  # find_mnist_svhn_files refuses None
        mnist = load_mnist(self.data_dir)
        svhn_train_x, svhn_train_y = read_svhn_mat(files["svhn_train"])
        svhn_test_x, svhn_test_y = read_svhn_mat(files["svhn_test"])
        labels = {
            "mnist_train": mnist.train_labels, "svhn_train": svhn_train_y,
            "mnist_test": mnist.test_labels, "svhn_test": svhn_test_y,
        }
        self._pairs = self._load_or_make_pairs(labels)
        images = {
            "train": {"mnist": mnist.train_images, "svhn": svhn_train_x},
            "test": {"mnist": mnist.test_images, "svhn": svhn_test_x},
        }
        sources = {
            part: {m: self._as_source(images[part][m]) for m in self.modalities}
            for part in ("train", "test")
        }
        self._datasets = {}
        for split in _PAIR_SPLITS:
            part = "test" if split == "test" else "train"
            pairs = self._pairs[split]
            self._datasets[split] = PairedImageDataset(
                sources[part],
                {m: torch.from_numpy(pairs[m]) for m in self.modalities},
                torch.from_numpy(labels[f"mnist_{part}"][pairs["mnist"]]),
            )
        self.data_source = (f"{self.data_dir} (MNIST IDX + SVHN .mat; fold {self.fold} of "
                            f"{self.num_folds}, seed {self.seed}, max_per_class "
                            f"{self.max_per_class}, pairings {self.pairings})")

    @staticmethod
    def _as_source(images: np.ndarray) -> Tensor:
        """``uint8`` ``(N, C, H, W)`` tensor of ``(N, H, W)`` or ``(N, C, H, W)`` images."""
        t = torch.from_numpy(np.ascontiguousarray(images))
        return t.unsqueeze(1) if t.ndim == 3 else t

    def _params(self) -> dict[str, int]:
        return {"num_folds": self.num_folds, "fold": self.fold, "seed": self.seed,
                "max_per_class": self.max_per_class, "pairings": self.pairings}

    def _compute_pairs(self, labels: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        """Fold-split both training sets and pair every split (indices into the full sources)."""
        parts: dict[str, dict[str, np.ndarray]] = {"train": {}, "val": {}}
        for m in MNIST_SVHN_MODALITIES:
            train_idx, val_idx = stratified_fold(labels[f"{m}_train"], num_folds=self.num_folds,
                                                 fold=self.fold, seed=self.seed)
            parts["train"][m], parts["val"][m] = train_idx, val_idx
        parts["test"] = {m: np.arange(len(labels[f"{m}_test"]), dtype=np.int64)
                         for m in MNIST_SVHN_MODALITIES}
        out: dict[str, dict[str, np.ndarray]] = {}
        for split in _PAIR_SPLITS:
            source = "test" if split == "test" else "train"
            members = parts[split]
            rng = np.random.default_rng(
                derive_seed(self.seed, "mnist-svhn-pairs", self.num_folds, self.fold, split))
            ia, ib = pair_by_class(labels[f"mnist_{source}"][members["mnist"]],
                                   labels[f"svhn_{source}"][members["svhn"]],
                                   max_per_class=self.max_per_class, pairings=self.pairings,
                                   rng=rng)
            out[split] = {"mnist": members["mnist"][ia], "svhn": members["svhn"][ib]}
        return out

    @staticmethod
    def _valid_pairs(pairs: Mapping[str, Mapping[str, np.ndarray]],
                     labels: Mapping[str, np.ndarray]) -> bool:
        """Whether cached pairs are in range and label-matched for these label arrays."""
        for split in _PAIR_SPLITS:
            source = "test" if split == "test" else "train"
            ia, ib = pairs[split]["mnist"], pairs[split]["svhn"]
            la, lb = labels[f"mnist_{source}"], labels[f"svhn_{source}"]
            if ia.ndim != 1 or ia.shape != ib.shape or ia.dtype.kind not in "iu" \
                    or ib.dtype.kind not in "iu":
                return False
            if len(ia) and (ia.min() < 0 or ia.max() >= len(la) or ib.min() < 0
                            or ib.max() >= len(lb)):
                return False
            if not np.array_equal(la[ia], lb[ib]):
                return False
        return True

    def _read_cache(self, path: Path, fingerprint: str,
                    labels: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]] | None:
        """The cached pairs at ``path`` when present, readable, current and consistent."""
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["fingerprint"]) != fingerprint:
                    log.info("MNIST-SVHN pair cache %s is stale (the labels or parameters "
                             "changed); recomputing", path)
                    return None
                pairs = {s: {m: np.asarray(z[f"{s}_{m}"], dtype=np.int64)
                             for m in MNIST_SVHN_MODALITIES} for s in _PAIR_SPLITS}
        except (OSError, ValueError, KeyError) as err:
            log.warning("MNIST-SVHN pair cache %s is unreadable (%s); recomputing", path, err)
            return None
        if not self._valid_pairs(pairs, labels):
            log.warning("MNIST-SVHN pair cache %s is inconsistent with the data; recomputing",
                        path)
            return None
        return pairs

    @staticmethod
    def _write_cache(path: Path, fingerprint: str,
                     pairs: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        """Write the cache atomically: a temporary file in the same directory, then rename."""
        arrays: dict[str, Any] = {f"{s}_{m}": pairs[s][m] for s in pairs for m in pairs[s]}
        arrays["fingerprint"] = np.array(fingerprint)
        io.save_npz(path, arrays)

    def _load_or_make_pairs(self, labels: Mapping[str, np.ndarray]
                            ) -> dict[str, dict[str, np.ndarray]]:
        path = self.cache_file
        assert path is not None
        fingerprint = pairing_fingerprint(labels, self._params())
        cached = self._read_cache(path, fingerprint, labels)
        if cached is not None:
            log.info("MNIST-SVHN pairs loaded from %s", path)
            self.cache_path = path
            return cached
        pairs = self._compute_pairs(labels)
        try:
            self._write_cache(path, fingerprint, pairs)
        except (OSError, MmsslError) as err:
            log.warning("could not write the MNIST-SVHN pair cache %s (%s); using the pairs "
                        "computed in memory", path, err)
            self.cache_path = None
        else:
            log.info("MNIST-SVHN pairs written to %s", path)
            self.cache_path = path
        return pairs

    # ------------------------------------------------------------- accessors

    def is_setup(self) -> bool:
        return bool(self._datasets)

    def split_size(self, split: str) -> int:
        """Number of pairs in ``split`` (one of ``train``, ``val``, ``test``), all pairings."""
        self.require_setup()
        check_split(split, EVAL_SPLITS)
        return len(self._datasets[split])

    def pair_indices(self, split: str) -> dict[str, np.ndarray]:
        """The pairs of ``split``: modality -> indices into that dataset's source split.

        ``train`` and ``val`` index the official training sets (MNIST 60k, SVHN 73,257 at full
        scale), ``test`` the test sets; both modalities are returned whatever is served.
        """
        self.require_setup()
        check_split(split, EVAL_SPLITS)
        return {m: v.copy() for m, v in self._pairs[split].items()}

    # ------------------------------------------------------------ dataloaders

    def train_dataset(self) -> PairedImageDataset:
        """Every training pair of every pairing round (shuffled by the base class)."""
        return self._datasets["train"]

    def eval_dataset(self, split: str) -> Dataset[dict[str, Tensor]]:
        """The first ``eval_pairings`` pairing rounds of ``split`` (test: all pairs)."""
        check_split(split, EVAL_SPLITS)
        return self._first_rounds(split)

    def test_dataloader(self) -> DataLoader:
        """All test pairs, in their stored (class-mixed) order, batch size ``batch_size``."""
        self.require_setup()
        return self.loader(self._datasets["test"], self.batch_size)

    def _first_rounds(self, split: str) -> Dataset[dict[str, Tensor]]:
        """The pairs of the first ``eval_pairings`` pairing rounds of ``split``."""
        dataset = self._datasets[split]
        n = len(dataset) // self.pairings * self.eval_pairings
        if n == len(dataset):
            return dataset
        return PairedImageDataset(
            dataset.sources, {m: p[:n] for m, p in dataset.pairs.items()}, dataset.labels[:n],
            size=dataset.size,
        )


@dataclass
class MnistSvhnSettings:
    """MNIST-SVHN pairing (MMVAE protocol): at most ``max_per_class`` images per class, paired
    ``pairings`` times; ``eval_pairings`` rounds serve validation and probes (1: each kept image
    once; the reference evaluated all 30, i.e. 30 copies of the same images)."""

    max_per_class: int = 10_000
    pairings: int = 30
    eval_pairings: int | None = 1

    def validate(self) -> None:
        require(self.max_per_class >= 1, "max_per_class", f"must be ≥ 1; got {self.max_per_class}")
        require(self.pairings >= 1, "pairings", f"must be ≥ 1; got {self.pairings}")
        require(self.eval_pairings is None or 1 <= self.eval_pairings <= self.pairings,
                "eval_pairings", f"must be in 1..{self.pairings} or null; got {self.eval_pairings}")


def _build(data: DataSettings, settings: MnistSvhnSettings, seed: int,
           skipped_rows: Path | None) -> MnistSvhnDataModule:
    return MnistSvhnDataModule(
        data_dir=Path(data.data_dir) if data.data_dir else None, num_folds=data.num_folds,
        fold=data.fold, batch_size=data.batch_size, seed=seed, num_workers=data.num_workers,
        eval_batch_size=data.eval_batch_size, max_per_class=settings.max_per_class,
        pairings=settings.pairings, modalities=tuple(data.modalities or MNIST_SVHN_MODALITIES),
        eval_pairings=settings.eval_pairings, pin_memory=data.pin_memory,
    )


def _input_shapes(settings: MnistSvhnSettings,
                  modalities: Sequence[str]) -> dict[str, tuple[int, ...]]:
    shapes = {"mnist": (1, IMAGE_SIZE, IMAGE_SIZE), "svhn": (3, IMAGE_SIZE, IMAGE_SIZE)}
    return {m: shapes[m] for m in modalities}


def _preflight(data: DataSettings, settings: MnistSvhnSettings) -> None:
    find_mnist_svhn_files(Path(data.data_dir) if data.data_dir else None)


MNIST_SVHN = register_dataset(DatasetSpec(
    name="mnist_svhn",
    modalities=MNIST_SVHN_MODALITIES,
    settings=MnistSvhnSettings,
    build=_build,
    input_shapes=_input_shapes,
    summary="MNIST IDX + SVHN .mat in --data-dir, paired by class (MMVAE protocol)",
    preflight=_preflight,
    num_classes=_NUM_CLASSES,
))
