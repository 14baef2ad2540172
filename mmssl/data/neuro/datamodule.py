"""The multimodal neuroimaging data module: a validated, cached cohort split by subject.

Pretraining uses every session of the training subjects plus every unlabelled subject;
evaluation uses one session per labelled subject of each split: the first labelled one (in
session order) among those with the most modalities present. The splits are subject-level
(:func:`~mmssl.data.splits.subject_splits`): no subject is in two sets. Training batches get a
random pad-crop (and optional flips), drawn per modality (by default) or shared by the
modalities (the reference's choice, a shortcut for the cross-modal terms:
:mod:`mmssl.data.neuro.augment`), on the training device from a generator seeded by (seed,
epoch, first row of the batch), so a resumed run sees the same augmentations.

Missing modalities (an empty manifest cell): when a session this run uses lacks a modality,
every batch carries ``"present": {modality: (B,) bool tensor}`` (the volume of a missing
modality is zeros and must not be used); a cohort where every used session is complete serves
batches without that key, exactly as before. :attr:`NeuroDataModule.incomplete_sessions`
counts the sessions that lack one, for methods that cannot handle them to refuse.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mmssl import io
from mmssl.data.base import MultimodalDataModule
from mmssl.data.loading import EVAL_SPLITS
from mmssl.data.neuro.augment import independent_crop_flip, shared_crop_flip
from mmssl.data.neuro.cache import CACHE_DIR_NAME, CACHE_HINT
from mmssl.data.neuro.cohort import Cohort, load_cohort
from mmssl.data.neuro.preprocessing import Preprocessing
from mmssl.data.neuro.validation import MAX_VOLUME_BYTES
from mmssl.data.registry import DatasetSpec, DataSettings, register_dataset
from mmssl.data.splits import subject_splits
from mmssl.data.views import derive_seed
from mmssl.errors import DataError
from mmssl.settings import require

__all__ = ["AugmentationSettings", "CohortDataset", "NeuroDataModule", "NeuroSettings"]

log = logging.getLogger(__name__)


@dataclass
class AugmentationSettings:
    """Training augmentation (fusion-spec §4.4): zero-pad ``pad`` voxels then a random crop
    back to the grid; ``flip`` each axis with probability ½. By default each modality gets its
    own draw (:func:`~mmssl.data.neuro.augment.independent_crop_flip`); ``shared: true`` draws
    one transform per sample for all its modalities, as the reference does, which lets the
    cross-modal terms match a pair by its common shift instead of its content."""

    pad: int = 8
    flip: bool = False
    shared: bool = False

    def validate(self) -> None:
        require(self.pad >= 0, "pad", f"must be ≥ 0; got {self.pad}")


@dataclass
class NeuroSettings:
    """Paired brain volumes from a manifest CSV (:mod:`mmssl.data.neuro`).

    ``manifest`` is the CSV (``--manifest``); ``on_bad_row`` ``error`` lists every problem and
    stops, ``skip`` drops bad rows into ``skipped_rows.csv``; ``cache_dir`` holds the
    preprocessed volumes (default ``<manifest folder>/.mmssl_cache``; ``--cache-dir``);
    ``val_fraction`` of the non-test subjects validate; ``label_mapping`` maps class names to
    integers (``{CN: 0, AD: 1}``); ``strict_grid`` requires a row's modalities to share a voxel
    grid; ``max_volume_bytes`` bounds the voxel data a file may declare.
    """

    manifest: str | None = None
    on_bad_row: Literal["error", "skip"] = "error"
    cache_dir: str | None = None
    val_fraction: float = 0.2
    label_mapping: dict[str, int] | None = None
    strict_grid: bool = True
    max_volume_bytes: int = MAX_VOLUME_BYTES
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    augmentation: AugmentationSettings = field(default_factory=AugmentationSettings)

    def validate(self) -> None:
        require(0 < self.val_fraction < 1, "val_fraction",
                f"must be in (0, 1); got {self.val_fraction}")
        require(self.max_volume_bytes > 0, "max_volume_bytes",
                f"must be positive; got {self.max_volume_bytes}")


class CohortDataset(Dataset[dict[str, Tensor]]):
    """Rows of a cohort: modality volumes (1, D, H, W), label and (optionally) row index.

    With ``present`` (modality -> ``bool`` ``(N_cohort,)``) every batch also carries
    ``"present": {modality: (B,) bool tensor}``, whether each sample has that modality (its
    volume is zeros when not).
    """

    def __init__(self, volumes: Mapping[str, np.ndarray], rows: np.ndarray, labels: np.ndarray,
                 *, with_index: bool = False,
                 present: Mapping[str, np.ndarray] | None = None) -> None:
        self.volumes = volumes
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = labels
        self.with_index = with_index
        self.present = present

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {}
        for key, value in self.__getitems__([index]).items():
            item[key] = ({m: v[0] for m, v in value.items()} if isinstance(value, dict)
                         else value[0])
        return item

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        """A whole batch in one read per modality (rows sorted for the memmap)."""
        rows = self.rows[np.asarray(indices, dtype=np.int64)]
        order = np.argsort(rows)  # memmaps read fastest in file order
        batch: dict[str, Any] = {}
        for modality, volumes in self.volumes.items():
            data = np.empty((len(rows), *volumes.shape[1:]), dtype=np.float32)
            data[order] = volumes[rows[order]]
            batch[modality] = torch.from_numpy(data).unsqueeze(1)
        batch["label"] = torch.from_numpy(self.labels[rows].astype(np.int64))
        if self.with_index:
            batch["index"] = torch.from_numpy(rows)
        if self.present is not None:
            batch["present"] = {m: torch.from_numpy(np.ascontiguousarray(mask[rows]))
                                for m, mask in self.present.items()}
        return batch


class NeuroDataModule(MultimodalDataModule):
    """Paired volumes from a manifest (see :mod:`mmssl.data.neuro` for the format).

    Args:
        manifest: the manifest CSV.
        modalities: its path columns to use, e.g. ``("t1", "falff")``.
        preprocessing: target grid, mask and normalisation (cached by content).
        pad, flip: training augmentation (pad-crop; flips of every axis).
        shared_augmentation: one draw per sample for all modalities (else one per modality).
        num_workers, pin_memory: loader workers and pinning (each may be ``"auto"``, see
            :class:`~mmssl.data.base.MultimodalDataModule`).
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
        num_workers: int | str = 0,
        pin_memory: bool | str = False,
        val_fraction: float = 0.2,
        preprocessing: Preprocessing | None = None,
        cache_dir: Path | None = None,
        on_bad_row: str = "error",
        report_path: Path | None = None,
        label_mapping: Mapping[str, int] | None = None,
        pad: int = 8,
        flip: bool = False,
        shared_augmentation: bool = False,
        strict_grid: bool = True,
        max_volume_bytes: int = MAX_VOLUME_BYTES,
    ) -> None:
        if not modalities:
            raise ValueError("neuro data needs modalities: the manifest's path columns, "
                             "e.g. --modalities t1,falff")
        super().__init__(modalities, num_folds=num_folds, fold=fold, batch_size=batch_size,
                         eval_batch_size=eval_batch_size, seed=seed, num_workers=num_workers,
                         pin_memory=pin_memory)
        self.manifest = Path(manifest)
        self.val_fraction = val_fraction
        self.preprocessing = preprocessing or Preprocessing()
        self.cache_dir = cache_dir
        self.on_bad_row = on_bad_row
        self.report_path = report_path
        self.label_mapping = dict(label_mapping) if label_mapping else None
        self.pad, self.flip = pad, flip
        self.shared_augmentation = shared_augmentation
        self.strict_grid = strict_grid
        self.max_volume_bytes = max_volume_bytes
        self.cohort: Cohort | None = None
        self.subject_sets: dict[str, np.ndarray] = {}
        self._rows: dict[str, np.ndarray] = {}

    # -- set-up -------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.cohort is not None:
            return
        cohort = load_cohort(
            self.manifest, self.modalities, settings=self.preprocessing,
            cache_dir=self.cache_dir, on_bad_row=self.on_bad_row,  # type: ignore[arg-type]
            report_path=self.report_path, label_mapping=self.label_mapping,
            strict_grid=self.strict_grid, max_volume_bytes=self.max_volume_bytes,
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
            self._rows[split] = self._evaluation_rows(np.flatnonzero(in_set[split]))
        self._log_missing()

    def _evaluation_rows(self, rows: np.ndarray) -> np.ndarray:
        """Per labelled subject, the first labelled session among those with the most
        modalities present (sessions in (subject, session) order)."""
        assert self.cohort is not None
        chosen: dict[str, tuple[int, int]] = {}  # subject -> (modalities present, row)
        sessions = np.asarray(self.cohort.sessions).astype(str)
        subjects = np.asarray(self.cohort.subjects).astype(str)
        count = sum((mask.astype(np.int64) for mask in self.cohort.present.values()),
                    start=np.zeros(len(self.cohort), dtype=np.int64))
        for row in sorted(rows, key=lambda r: (subjects[r], sessions[r])):
            if self.cohort.labels[row] < 0:
                continue
            best = chosen.get(subjects[row])
            if best is None or count[row] > best[0]:
                chosen[subjects[row]] = (int(count[row]), int(row))
        return np.array(sorted(row for _, row in chosen.values()), dtype=np.int64)

    def _used_rows(self) -> np.ndarray:
        return np.unique(np.concatenate([self._rows[k] for k in ("pretrain", *EVAL_SPLITS)]))

    def _log_missing(self) -> None:
        assert self.cohort is not None
        used = self._used_rows()
        for m, mask in self.cohort.present.items():
            lacking = int((~mask[used]).sum())
            if lacking:
                log.info("%d of the %d sessions this run uses lack %s (%d of %d pretraining "
                         "sessions)", lacking, len(used), m,
                         int((~mask[self._rows["pretrain"]]).sum()), len(self._rows["pretrain"]))

    @property
    def incomplete_sessions(self) -> int:
        """How many sessions this run uses (pretraining or probes) lack a modality."""
        self.require_setup()
        assert self.cohort is not None
        return int((~self.cohort.complete[self._used_rows()]).sum())

    def presence(self) -> dict[str, np.ndarray] | None:
        """The cohort's presence masks when a session this run uses lacks a modality, else
        ``None`` (batches then carry no ``"present"``)."""
        self.require_setup()
        assert self.cohort is not None
        return dict(self.cohort.present) if self.incomplete_sessions else None

    # -- properties used by training and evaluation -------------------------------------------
    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Channel-first input shape per modality: (1, *grid shape)."""
        return {m: (1, *self.preprocessing.shape) for m in self.modalities}

    @property
    def num_classes(self) -> int:
        """Number of label classes among the labelled rows."""
        self.require_setup()
        assert self.cohort is not None
        labelled = self.cohort.labels[self.cohort.labels >= 0]
        return int(labelled.max()) + 1

    def split_rows(self, split: str) -> np.ndarray:
        """Cohort rows of ``pretrain``, ``train``, ``val`` or ``test``."""
        self.require_setup()
        if split not in self._rows:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(self._rows)}")
        return self._rows[split]

    def splits_table(self) -> pd.DataFrame:
        """One line per cohort row: subject, session, label, ``present_<modality>`` (whether
        the session has it) per modality, its subject set, its uses."""
        self.require_setup()
        assert self.cohort is not None
        subjects = np.asarray(self.cohort.subjects).astype(str)
        table = pd.DataFrame({
            "line": [row.line for row in self.cohort.manifest.rows],
            "subject": subjects,
            "session": np.asarray(self.cohort.sessions).astype(str),
            "label": self.cohort.labels,
            **{f"present_{m}": self.cohort.present[m] for m in self.modalities},
        })
        subject_set = {s: name for name, ids in self.subject_sets.items() for s in ids}
        table["subject_set"] = [subject_set[s] for s in subjects]
        table["pretrain"] = np.isin(np.arange(len(table)), self._rows["pretrain"])
        table["probe_split"] = ""
        for split in EVAL_SPLITS:
            table.loc[self._rows[split], "probe_split"] = split
        return table

    def is_setup(self) -> bool:
        return self.cohort is not None

    # -- datasets -----------------------------------------------------------------------------
    def _dataset(self, split: str, *, with_index: bool = False) -> CohortDataset:
        assert self.cohort is not None
        return CohortDataset(self.cohort.volumes, self.split_rows(split), self.cohort.labels,
                             with_index=with_index, present=self.presence())

    def train_dataset(self) -> Dataset[dict[str, Tensor]]:
        """Every session of the training and unlabelled subjects, with their row index."""
        return self._dataset("pretrain", with_index=True)

    def eval_dataset(self, split: str) -> Dataset[dict[str, Tensor]]:
        """One unaugmented session per labelled subject of ``split`` (the most complete)."""
        return self._dataset(split)

    def stem_dataset(self) -> Dataset[dict[str, Tensor]]:
        """Every pretraining session (unlabelled subjects included): the volumes are only
        cropped on the device, after loading, so these items are unaugmented."""
        return self._dataset("pretrain")

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Training batches (those with an ``"index"``): the pad-crop (and flips) on the device,
        shared by the modalities or drawn per modality; every batch's volumes then leave in the
        module's memory format
        (``channels_last`` is ``torch.channels_last_3d`` here)."""
        if not isinstance(batch, dict) or "index" not in batch:
            return self.format_inputs(batch)
        index = batch.pop("index")
        if self.pad or self.flip:
            epoch = self.current_epoch()
            generator = torch.Generator().manual_seed(
                derive_seed(self.seed, "neuro-augment", epoch, int(index[0])))
            augment = shared_crop_flip if self.shared_augmentation else independent_crop_flip
            views = augment({m: batch[m] for m in self.modalities}, generator,
                            pad=self.pad, flip=self.flip)
            batch.update(views)
        return self.format_inputs(batch)


def _build(data: DataSettings, settings: NeuroSettings, seed: int,
           skipped_rows: Path | None) -> NeuroDataModule:
    if not settings.manifest:
        raise DataError("the neuro dataset needs a manifest CSV (--manifest FILE); `mmssl "
                        "simulate --out DIR` writes a synthetic one")
    return NeuroDataModule(
        Path(settings.manifest), tuple(data.modalities or ()), num_folds=data.num_folds,
        fold=data.fold, batch_size=data.batch_size, eval_batch_size=data.eval_batch_size,
        seed=seed, num_workers=data.num_workers, pin_memory=data.pin_memory,
        val_fraction=settings.val_fraction,
        preprocessing=settings.preprocessing,
        cache_dir=Path(settings.cache_dir) if settings.cache_dir else None,
        on_bad_row=settings.on_bad_row, report_path=skipped_rows,
        label_mapping=settings.label_mapping, pad=settings.augmentation.pad,
        flip=settings.augmentation.flip, shared_augmentation=settings.augmentation.shared,
        strict_grid=settings.strict_grid,
        max_volume_bytes=settings.max_volume_bytes,
    )


def _input_shapes(settings: NeuroSettings, modalities: Sequence[str]) -> dict[str, tuple[int, ...]]:
    return {m: (1, *settings.preprocessing.shape) for m in modalities}


def cache_folder(settings: NeuroSettings) -> Path:
    """Where the preprocessing cache of ``settings`` lives."""
    if settings.cache_dir:
        return Path(settings.cache_dir).expanduser()
    assert settings.manifest is not None
    return Path(settings.manifest).expanduser().parent / CACHE_DIR_NAME


def _preflight(data: DataSettings, settings: NeuroSettings) -> None:
    if not settings.manifest:
        raise DataError("the neuro dataset needs a manifest CSV (--manifest FILE); `mmssl "
                        "simulate --out DIR` writes a synthetic one")
    if not data.modalities:
        raise DataError("name the manifest's path columns to use, e.g. --modalities t1,falff")
    manifest = Path(settings.manifest)
    if not manifest.is_file():
        raise DataError(f"--manifest {manifest}: no such file" if not manifest.exists()
                        else f"--manifest {manifest} is not a file")
    for modality in data.modalities:
        io.check_name(modality, "modality")
    io.ensure_writable_folder(cache_folder(settings), what="preprocessing cache",
                              hint=CACHE_HINT)


NEURO = register_dataset(DatasetSpec(
    name="neuro",
    modalities=(),
    settings=NeuroSettings,
    build=_build,
    input_shapes=_input_shapes,
    summary="paired brain volumes from a manifest CSV (--manifest; `mmssl simulate` writes one)",
    preflight=_preflight,
    path_fields=("manifest", "cache_dir"),
))
