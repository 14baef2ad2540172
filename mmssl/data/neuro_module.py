"""The multimodal neuroimaging data module: a validated, cached cohort split by subject.

Pretraining uses every session of the training subjects plus every unlabelled subject;
evaluation uses one session (the first labelled one) per labelled subject of each split. The
splits are subject-level (:func:`~mmssl.data.splits.subject_splits`): no subject is in two
sets. Training batches get the same random pad-crop (and optional flips) in every modality,
drawn on the training device from a generator seeded by (seed, epoch, first row of the
batch), so a resumed run sees the same augmentations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mmssl.data.neuro import Cohort, Preprocessing, load_cohort
from mmssl.data.splits import subject_splits
from mmssl.data.two_view_mnist import EpochShuffleSampler, tensor_dict_loader
from mmssl.data.views import derive_seed
from mmssl.data.volume_views import shared_crop_flip

EVAL_SPLITS = ("train", "val", "test")


class CohortDataset(Dataset[dict[str, Tensor]]):
    """Rows of a cohort: modality volumes (1, D, H, W), label and (optionally) row index."""

    def __init__(self, volumes: Mapping[str, np.ndarray], rows: np.ndarray, labels: np.ndarray,
                 *, with_index: bool = False) -> None:
        self.volumes = volumes
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = labels
        self.with_index = with_index

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {k: v[0] for k, v in self.__getitems__([index]).items()}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Tensor]:
        """A whole batch in one read per modality (rows sorted for the memmap)."""
        rows = self.rows[np.asarray(indices, dtype=np.int64)]
        order = np.argsort(rows)  # memmaps read fastest in file order
        batch: dict[str, Tensor] = {}
        for modality, volumes in self.volumes.items():
            data = np.empty((len(rows), *volumes.shape[1:]), dtype=np.float32)
            data[order] = volumes[rows[order]]
            batch[modality] = torch.from_numpy(data).unsqueeze(1)
        batch["label"] = torch.from_numpy(self.labels[rows].astype(np.int64))
        if self.with_index:
            batch["index"] = torch.from_numpy(rows)
        return batch


class NeuroDataModule(L.LightningDataModule):
    """Paired volumes from a manifest (see :mod:`mmssl.data.neuro` for the format).

    Args:
        manifest: the manifest CSV.
        modalities: its path columns to use, e.g. ``("t1", "falff")``.
        preprocessing: target grid, mask and normalisation (cached by content).
        pad, flip: training augmentation (shared pad-crop; flips of every axis).
        on_bad_row: ``error`` (default: stop with the full list of problems) or ``skip``.
        report_path: where the skipped rows are listed.
    """

    def __init__(
        self,
        manifest: Path,
        modalities: Sequence[str],
        *,
        num_folds: int = 5,
        fold: int = 0,
        batch_size: int = 8,
        eval_batch_size: int = 16,
        seed: int = 343,
        num_workers: int = 0,
        val_fraction: float = 0.2,
        preprocessing: Preprocessing | None = None,
        cache_dir: Path | None = None,
        on_bad_row: str = "error",
        report_path: Path | None = None,
        label_mapping: Mapping[str, int] | None = None,
        pad: int = 8,
        flip: bool = False,
    ) -> None:
        super().__init__()
        if not modalities:
            raise ValueError("neuro data needs modalities: the manifest's path columns, "
                             "e.g. --modalities t1,falff")
        self.manifest = Path(manifest)
        self.modalities = tuple(modalities)
        self.num_folds, self.fold, self.seed = num_folds, fold, seed
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.preprocessing = preprocessing or Preprocessing()
        self.cache_dir = cache_dir
        self.on_bad_row = on_bad_row
        self.report_path = report_path
        self.label_mapping = dict(label_mapping) if label_mapping else None
        self.pad, self.flip = pad, flip
        self.cohort: Cohort | None = None
        self.subject_sets: dict[str, np.ndarray] = {}
        self._rows: dict[str, np.ndarray] = {}
        self._sampler: EpochShuffleSampler | None = None

    # -- set-up -------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.cohort is not None:
            return
        cohort = load_cohort(
            self.manifest, self.modalities, settings=self.preprocessing,
            cache_dir=self.cache_dir, on_bad_row=self.on_bad_row,  # type: ignore[arg-type]
            report_path=self.report_path, label_mapping=self.label_mapping,
        )
        self.cohort = cohort
        subjects = np.asarray(cohort.subjects).astype(str)
        self.subject_sets = subject_splits(
            subjects, cohort.labels, num_folds=self.num_folds, fold=self.fold, seed=self.seed,
            val_fraction=self.val_fraction,
        )
        in_set = {name: np.isin(subjects, ids) for name, ids in self.subject_sets.items()}
        self._rows["pretrain"] = np.flatnonzero(in_set["train"] | in_set["unlabelled"])
        for split in EVAL_SPLITS:
            self._rows[split] = self._first_labelled_rows(np.flatnonzero(in_set[split]))

    def _first_labelled_rows(self, rows: np.ndarray) -> np.ndarray:
        assert self.cohort is not None
        chosen: dict[str, int] = {}
        sessions = np.asarray(self.cohort.sessions).astype(str)
        subjects = np.asarray(self.cohort.subjects).astype(str)
        for row in sorted(rows, key=lambda r: (subjects[r], sessions[r])):
            if self.cohort.labels[row] >= 0 and subjects[row] not in chosen:
                chosen[subjects[row]] = int(row)
        return np.array(sorted(chosen.values()), dtype=np.int64)

    # -- properties used by training and evaluation -------------------------------------------
    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Channel-first input shape per modality: (1, *grid shape)."""
        return {m: (1, *self.preprocessing.shape) for m in self.modalities}

    @property
    def num_classes(self) -> int:
        """Number of label classes among the labelled rows."""
        self._require_setup()
        assert self.cohort is not None
        labelled = self.cohort.labels[self.cohort.labels >= 0]
        return int(labelled.max()) + 1

    def split_rows(self, split: str) -> np.ndarray:
        """Cohort rows of ``pretrain``, ``train``, ``val`` or ``test``."""
        self._require_setup()
        if split not in self._rows:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(self._rows)}")
        return self._rows[split]

    def splits_table(self) -> pd.DataFrame:
        """One line per cohort row: subject, session, label, its subject set, its uses."""
        self._require_setup()
        assert self.cohort is not None
        subjects = np.asarray(self.cohort.subjects).astype(str)
        table = pd.DataFrame({
            "line": [row.line for row in self.cohort.manifest.rows],
            "subject": subjects,
            "session": np.asarray(self.cohort.sessions).astype(str),
            "label": self.cohort.labels,
        })
        subject_set = {s: name for name, ids in self.subject_sets.items() for s in ids}
        table["subject_set"] = [subject_set[s] for s in subjects]
        table["pretrain"] = np.isin(np.arange(len(table)), self._rows["pretrain"])
        table["probe_split"] = ""
        for split in EVAL_SPLITS:
            table.loc[self._rows[split], "probe_split"] = split
        return table

    def _require_setup(self) -> None:
        if self.cohort is None:
            raise RuntimeError("call setup() before using the data module")

    # -- loaders ------------------------------------------------------------------------------
    def _dataset(self, split: str, *, with_index: bool = False) -> CohortDataset:
        assert self.cohort is not None
        return CohortDataset(self.cohort.volumes, self.split_rows(split), self.cohort.labels,
                             with_index=with_index)

    def _loader(self, dataset: CohortDataset, batch_size: int, **kwargs: Any) -> DataLoader:
        return tensor_dict_loader(dataset, batch_size, num_workers=self.num_workers, **kwargs)

    def train_dataloader(self) -> DataLoader:
        dataset = self._dataset("pretrain", with_index=True)
        if len(dataset) < self.batch_size:
            raise ValueError(f"{len(dataset)} pretraining sessions are fewer than batch_size="
                             f"{self.batch_size}")
        self._sampler = EpochShuffleSampler(len(dataset), seed=self.seed)
        return self._loader(dataset, self.batch_size, sampler=self._sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._dataset("val"), self.batch_size)

    def eval_dataloader(self, split: str) -> DataLoader:
        """Unshuffled, unaugmented batches of one session per labelled subject of ``split``."""
        if split not in EVAL_SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(EVAL_SPLITS)}")
        return self._loader(self._dataset(split), self.eval_batch_size)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if not isinstance(batch, dict) or "index" not in batch:
            return batch
        index = batch.pop("index")
        if self.pad or self.flip:
            epoch = self.trainer.current_epoch if self.trainer is not None else 0
            generator = torch.Generator().manual_seed(
                derive_seed(self.seed, "neuro-augment", epoch, int(index[0])))
            views = shared_crop_flip({m: batch[m] for m in self.modalities}, generator,
                                     pad=self.pad, flip=self.flip)
            batch.update(views)
        return batch
