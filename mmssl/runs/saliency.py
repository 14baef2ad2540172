"""``mmssl saliency RUN_DIR``: per-subject maps four ways, and their group maps in brain space.

For each modality and each method (:data:`~mmssl.runs.brainrun.METHODS`: label-free latent-unit
gradients, SmoothGrad, Integrated Gradients and expected gradients of the probe) the maps of a
split's subjects are made (:meth:`~mmssl.runs.brainrun.BrainRun.maps`) and summarised as
NIfTI volumes on the run's grid with PNG figures: the mean over all subjects, over patients and
over controls, and the patients − controls difference. On a simulated cohort each group map is
scored against the planted effect: the ROC AUC of its voxels (absolute values) against the
effect mask inside the brain (:func:`~mmssl.evaluation.saliency.localisation_auc`).
Everything is summarised in ``saliency.json`` with paths relative to the run directory.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmssl import io
from mmssl.evaluation.plots import plot_map
from mmssl.evaluation.saliency import group_maps, localisation_auc
from mmssl.runs.brainrun import METHODS, BrainRun, MapSettings, open_brain_run

__all__ = ["run_saliency", "write_map"]


def write_map(brain_run: BrainRun, volume: np.ndarray, path: Path, title: str,
              figures: list[str]) -> str:
    """A map as NIfTI on the run's grid and as a glass-brain PNG; both recorded relatively."""
    run = brain_run.run
    io.save_nifti(path, volume.astype(np.float32), brain_run.grid.affine)
    png = path.with_name(path.name.replace(".nii.gz", ".png"))
    plot_map(path, png, title=title)
    figures.append(run.relative(png))
    return run.relative(path)


def run_saliency(out: Path, *, split: str = "test", methods: Sequence[str] = METHODS,
                 settings: MapSettings | None = None, device: str | None = None
                 ) -> dict[str, Any]:
    """Per-subject maps and group maps of every modality and method; writes saliency.json."""
    settings = settings or MapSettings()
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"--methods {unknown}: expected some of {', '.join(METHODS)}")
    brain_run = open_brain_run(out, device=device)
    run = brain_run.run
    subjects = brain_run.subjects(split)
    truth = brain_run.truth_masks("effect")
    report: dict[str, Any] = {"split": split, "subjects": int(len(subjects)),
                              "patients": int((subjects["label"] == 1).sum()),
                              "settings": settings.__dict__, "modalities": {}}
    figures: list[str] = []
    for modality in brain_run.modalities:
        labels = brain_run.subjects(split, [modality])["label"].to_numpy()
        entry: dict[str, Any] = {"maps": {}, "localisation_auc": {}, "seconds": {},
                                 "subjects": int(len(labels))}
        for method in methods:
            started = time.perf_counter()
            maps = brain_run.maps(modality, method, split, settings)
            entry["seconds"][method] = round(time.perf_counter() - started, 1)
            for name, volume in group_maps(maps, labels).items():
                key = f"{method}_{name}"
                entry["maps"][key] = write_map(
                    brain_run, volume, run.saliency / modality / f"{key}.nii.gz",
                    f"{modality}: {method} ({name})", figures)
                if modality in truth:
                    entry["localisation_auc"][key] = localisation_auc(
                        np.abs(volume), truth[modality], brain_run.brain)
        report["modalities"][modality] = entry
    report["figures"] = figures
    io.write_json(run.saliency_summary, report)
    return report
