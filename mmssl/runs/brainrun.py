"""What the brain analyses of a run share: the run opened on its brain grid, its subjects, the
planted ground truth of a simulated cohort, and per-subject attribution maps (cached).

Four kinds of per-subject map, each a volume on the run's grid (the input's MNI space):

* ``latent`` — label-free: the thresholded gradients of the representation's most variable
  latent units (:func:`~mmssl.evaluation.saliency.latent_unit_maps`; the authors' route);
* ``smoothgrad`` — SmoothGrad of the linear probe's decision (absolute, averaged);
* ``ig`` — Integrated Gradients of the probe's decision from the training subjects' mean
  volume (signed; patients' attributions sit where they differ from the typical brain);
* ``eg`` — expected gradients of the probe's decision: Integrated Gradients averaged over
  references drawn from the training subjects' volumes (signed; SHAP values of the probe
  against the training population rather than against its mean volume).

and one reference that involves no model: ``input`` — the preprocessed volumes themselves, so
a group test of them is the classical mass-univariate (VBM-like) analysis. It bounds what any
map of a model can localise on a cohort: a map cannot show a group difference the inputs do
not carry, and a learned map that localises no better than ``input`` adds nothing to it.

Maps of a split are computed once and kept in ``saliency/maps/<split>/<modality>-<method>.npy``
(float32, as computed: a probe's gradient with respect to one voxel of a large grid can be
smaller than float16 resolves) with their subjects in
``saliency/maps/<split>/<modality>-subjects.csv``: the subjects whose session has that modality
(an incomplete cohort maps each modality where it is present). ``evaluation.txt`` in the folder
names the evaluation the maps were made from (a digest of ``probe.json`` and ``features.npz``):
after ``mmssl evaluate`` writes another, the folder's maps are made again rather than reused.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from nilearn.image import resample_img

from mmssl import config as cfg
from mmssl import io
from mmssl.data.neuro.simulate import MODALITIES as SIMULATED_MODALITIES
from mmssl.data.neuro.simulate import GroundTruth, load_ground_truth
from mmssl.errors import RunDirError
from mmssl.evaluation.probe import fit_probe
from mmssl.evaluation.saliency import (
    ProbeLogit,
    expected_gradients,
    integrated_gradients,
    latent_unit_maps,
    select_units,
    smoothgrad,
)
from mmssl.nn import PCAEncoder
from mmssl.runs.evaluation import LoadedRun, load_run, read_features
from mmssl.runs.rundir import RunDir

__all__ = ["GROUP_METHODS", "METHODS", "SPLITS", "BrainRun", "MapSettings", "open_brain_run"]

log = logging.getLogger("mmssl")

#: The kinds of per-subject map.
METHODS: tuple[str, ...] = ("latent", "smoothgrad", "ig", "eg")
#: What a group test can take: the model's maps plus the model-free reference ``input``.
GROUP_METHODS: tuple[str, ...] = (*METHODS, "input")
#: The subject sets maps are made for (``all``: every labelled evaluation subject).
SPLITS: tuple[str, ...] = ("train", "val", "test", "all")
#: In a folder of cached maps: the evaluation they were made from.
EVALUATION_STAMP = "evaluation.txt"


@dataclass(frozen=True)
class MapSettings:
    """How the per-subject maps are made."""

    units: int | None = 16
    percentile: float = 95.0
    samples: int = 16
    noise: float = 0.1
    ig_steps: int = 32
    eg_samples: int = 32
    eg_references: int = 128
    batch_size: int = 4

    def key(self, method: str) -> str:
        """What a cached map of ``method`` depends on. The random draws of ``smoothgrad`` and
        ``eg`` are seeded per chunk of ``batch_size`` volumes, so their keys include it."""
        if method == "latent":
            return f"latent-u{self.units}-p{self.percentile:g}"
        if method == "smoothgrad":
            return f"smoothgrad-s{self.samples}-n{self.noise:g}-b{self.batch_size}"
        if method == "eg":
            return f"eg-s{self.eg_samples}-r{self.eg_references}-b{self.batch_size}"
        return f"ig-t{self.ig_steps}"


@dataclass
class BrainRun:
    """An evaluated neuroimaging run opened for brain-space analyses."""

    loaded: LoadedRun
    features: dict[str, dict[str, np.ndarray]]
    labels: dict[str, np.ndarray]
    probe_info: dict[str, Any]
    truth: GroundTruth | None
    _probes: dict[str, Any] = field(default_factory=dict)

    @property
    def run(self) -> RunDir:
        return self.loaded.run

    @property
    def grid(self) -> Any:
        return self.loaded.datamodule.cohort.grid

    @property
    def brain(self) -> np.ndarray:
        mask = self.loaded.datamodule.cohort.mask
        return np.ones(self.grid.shape, dtype=bool) if mask is None else np.asarray(mask)

    @property
    def modalities(self) -> list[str]:
        return list(self.loaded.config.modalities)

    # -- subjects ----------------------------------------------------------------------------
    def _split_rows(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if split not in SPLITS:
            raise ValueError(f"--split {split!r}: expected one of {', '.join(SPLITS)}")
        module = self.loaded.datamodule
        parts = ("train", "val", "test") if split == "all" else (split,)
        rows = [np.asarray(module.split_rows(s)) for s in parts]
        return np.concatenate(rows), np.concatenate([np.full(len(r), s)
                                                     for r, s in zip(rows, parts, strict=True)])

    def complete(self, split: str, modalities: Sequence[str]) -> np.ndarray:
        """Which of a split's evaluation rows have every one of ``modalities`` (bool)."""
        rows, _ = self._split_rows(split)
        present = getattr(self.loaded.datamodule.cohort, "present", None) or {}
        keep = np.ones(len(rows), dtype=bool)
        for modality in modalities:
            if modality in present:
                keep &= np.asarray(present[modality])[rows]
        return keep

    def rows(self, split: str, modalities: Sequence[str] = ()) -> np.ndarray:
        """Cohort rows of a split's evaluation subjects that have ``modalities`` (``all``:
        train, val and test)."""
        rows, _ = self._split_rows(split)
        return rows[self.complete(split, modalities)]

    def subjects(self, split: str, modalities: Sequence[str] = ()) -> pd.DataFrame:
        """One row per subject of :meth:`rows`: subject, session, label, split, covariates."""
        cohort = self.loaded.datamodule.cohort
        all_rows, which = self._split_rows(split)
        keep = self.complete(split, modalities)
        rows = all_rows[keep]
        table = pd.DataFrame({"subject": np.asarray(cohort.subjects)[rows],
                              "session": np.asarray(cohort.sessions)[rows],
                              "label": np.asarray(cohort.labels)[rows], "split": which[keep]})
        covariates = cohort.covariates.iloc[rows].reset_index(drop=True)
        return pd.concat([table, covariates], axis=1)

    def covariates(self, split: str, modality: str,
                   names: Sequence[str]) -> pd.DataFrame | None:
        """The columns of ``names`` that can adjust a group test of ``modality``'s subjects in
        ``split``: present, complete and not constant (``None`` when none is)."""
        subjects = self.subjects(split, [modality])
        present = [n for n in names if n in subjects.columns and subjects[n].notna().all()
                   and subjects[n].nunique() > 1]
        return subjects[present].reset_index(drop=True) if present else None

    def volumes(self, rows: np.ndarray, modality: str) -> torch.Tensor:
        """The preprocessed volumes of cohort rows, (N, 1, *grid)."""
        cohort = self.loaded.datamodule.cohort
        array = np.asarray(cohort.volumes[modality][np.sort(rows)], dtype=np.float32)
        order = np.argsort(np.argsort(rows))
        return torch.from_numpy(array[order]).unsqueeze(1)

    def mean_volume(self, modality: str) -> torch.Tensor:
        """The training subjects' mean preprocessed volume (1, *grid): the baseline from which
        Integrated Gradients attribute (``ig`` maps, and the link variates' maps)."""
        return self.volumes(self.rows("train", [modality]), modality).mean(0)

    def references(self, modality: str, count: int) -> torch.Tensor:
        """Up to ``count`` training volumes of ``modality`` (a seeded draw when there are more):
        the reference population of expected gradients."""
        rows = self.rows("train", [modality])
        if count < len(rows):
            generator = np.random.default_rng(self.loaded.config.seed)
            rows = np.sort(generator.choice(rows, size=count, replace=False))
        return self.volumes(rows, modality)

    def latent_values(self, split: str, modalities: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """Planted latent values (severity, coupling) of a split's subjects, if simulated."""
        if self.truth is None:
            return {}
        table = self.subjects(split, modalities)
        return {name: self.truth.values(name, table["subject"], table["session"]).astype(float)
                for name in ("severity", "coupling") if name in self.truth.subjects.columns}

    # -- ground truth ------------------------------------------------------------------------
    def truth_masks(self, kind: str = "effect") -> dict[str, np.ndarray]:
        """Where ``kind`` (``effect``: diagnosis; ``coupling``) was planted, per modality, on
        the run's grid ({} for a real cohort)."""
        if self.truth is None:
            return {}
        masks = {}
        for modality in self.modalities:
            if modality in SIMULATED_MODALITIES:
                image = resample_img(nib.load(self.truth.path(modality, kind)),
                                     target_affine=self.grid.affine, target_shape=self.grid.shape,
                                     interpolation="nearest", force_resample=True,
                                     copy_header=True)
                masks[modality] = np.asarray(image.dataobj) > 0
        return masks

    # -- per-subject maps ----------------------------------------------------------------------
    def probe(self, modality: str) -> Any:
        """The run's probe of ``modality``, refitted (once) at its chosen regularisation."""
        if modality not in self._probes:
            config = self.loaded.config
            chosen = self.probe_info["default"]["chosen_C"][modality]
            self._probes[modality] = fit_probe(
                (self.features["train"][modality], self.labels["train"]),
                (self.features["val"][modality], self.labels["val"]),
                Cs=[chosen], max_iter=config.probe.max_iter,
                class_weight=config.probe.class_weight, seed=config.seed)
        return self._probes[modality]

    def maps(self, modality: str, method: str, split: str,
             settings: MapSettings | None = None) -> np.ndarray:
        """Per-subject maps (N, *grid) of ``method`` for a split's subjects (cached)."""
        settings = settings or MapSettings()
        if method not in GROUP_METHODS:
            raise ValueError(f"--method {method!r}: expected one of {', '.join(GROUP_METHODS)}")
        if method == "input":  # no model: the preprocessed volumes, inside the brain
            volumes = self.volumes(self.rows(split, [modality]), modality)[:, 0].numpy()
            return (volumes * self.brain).astype(np.float32)
        folder = self.run.saliency / "maps" / split
        self._claim_cache(folder)
        path = folder / f"{modality}-{settings.key(method)}.npy"
        subjects = self.subjects(split, [modality])
        if path.is_file():
            cached = np.load(path, allow_pickle=False)
            # float16 files of earlier versions are recomputed: they lost small attributions
            if len(cached) == len(subjects) and cached.dtype == np.float32:
                return cached
        rows = self.rows(split, [modality])
        encoder = self.loaded.model.probe_encoders()[""][modality].to(self.loaded.device)
        if method == "latent" and isinstance(encoder, PCAEncoder):
            raise ValueError(
                f"--method latent: this run's {modality} encoder is the PCA-stem linear encoder "
                f"(model.encoder: pca), whose latent-unit gradients are one map per unit, the "
                f"same for every subject, so patients and controls cannot differ in them; use "
                f"--method ig (it varies with each subject's volume) or --method input")
        device = self.loaded.device
        maps = []
        brain = torch.from_numpy(np.array(self.brain, dtype=bool))
        if method == "latent":
            latents = self.features["train"][modality]
            units = select_units(latents, settings.units)
        elif method == "ig":
            baseline = self.mean_volume(modality).to(device)
        elif method == "eg":
            references = self.references(modality, settings.eg_references).to(device)
        for start in range(0, len(rows), settings.batch_size):
            x = self.volumes(rows[start:start + settings.batch_size], modality).to(device)
            if method == "latent":
                chunk = latent_unit_maps(encoder, x, units=units,
                                         percentile=settings.percentile, brain=brain.to(device))
            elif method == "smoothgrad":
                chunk = smoothgrad(ProbeLogit(encoder, self.probe(modality)), x,
                                   samples=settings.samples, noise=settings.noise,
                                   batch_size=settings.batch_size,
                                   seed=self.loaded.config.seed + start)[:, 0]
            elif method == "eg":
                chunk = expected_gradients(ProbeLogit(encoder, self.probe(modality)), x,
                                           baselines=references, samples=settings.eg_samples,
                                           batch_size=settings.batch_size,
                                           seed=self.loaded.config.seed + start)[:, 0]
            else:
                chunk = integrated_gradients(ProbeLogit(encoder, self.probe(modality)), x,
                                             baseline=baseline, steps=settings.ig_steps,
                                             batch_size=settings.batch_size)[:, 0]
            maps.append(chunk.detach().float().cpu().numpy())
        result = (np.concatenate(maps) * self.brain).astype(np.float32)
        io.save_npy(path, result)
        io.write_text(folder / f"{modality}-subjects.csv", subjects.to_csv(index=False))
        return result

    @cached_property
    def evaluation(self) -> str:
        """A digest of the run's ``probe.json`` and ``features.npz``: the evaluation that cached
        maps depend on."""
        digest = hashlib.sha256()
        for path in (self.run.probe, self.run.features):
            digest.update(path.read_bytes())
        return digest.hexdigest()[:16]

    def _claim_cache(self, folder: Path) -> None:
        """Remove the folder's cached maps when they were made from another evaluation of the
        run (or by a version that did not record it), and record this one."""
        stamp = folder / EVALUATION_STAMP
        if stamp.is_file() and stamp.read_text().strip() == self.evaluation:
            return
        for stale in folder.glob("*.npy"):
            stale.unlink()
        io.write_text(stamp, self.evaluation + "\n")


def open_brain_run(out: Path, *, device: str | None = None) -> BrainRun:
    """Open an evaluated neuroimaging run for brain-space analyses."""
    run = RunDir(Path(out))
    run.require_evaluated()
    config = cfg.load(run.config)
    if config.data.dataset != "neuro":
        raise RunDirError(
            f"{run.root} was trained on {config.data.dataset}; brain-space analyses need "
            "volumes on a brain grid (data.dataset: neuro)"
        )
    loaded = load_run(out, device=device)
    features, labels = read_features(run.features)
    truth: GroundTruth | None
    try:
        truth = load_ground_truth(Path(config.data.settings.manifest))
    except FileNotFoundError:
        truth = None  # a real cohort: nothing planted to compare with
    return BrainRun(loaded, features, labels, run.read_json(run.probe), truth)
