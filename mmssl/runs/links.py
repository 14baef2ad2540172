"""``mmssl links RUN_DIR``: multimodal links through a shared subspace, found and named.

The two modalities' representations of the training subjects are reduced by PCA and related by
regularised CCA; the canonical pairs are scored on the held-out test subjects against a
permutation null (training pairings shuffled), and their p-values adjusted by Holm across the
components (:func:`~mmssl.evaluation.links.reduced_cca_links`). On a neuroimaging run the
representations are first residualised on confounds fitted on the training subjects — the
diagnosis and the covariates the manifest has (age, sex, site) — so a link is one *beyond*
diagnosis and covariates (``--confounds none`` relates the raw representations).

For every significant pair (and at least the first) each modality's variate is mapped into
the brain: Integrated Gradients of the variate from the training mean volume, averaged in
absolute value over the test subjects, named by the atlas regions with the largest mean
(:func:`~mmssl.evaluation.group.region_summary`). ``links/links.csv`` is the link table — per
component: held-out correlation, p, the leading T1 and fALFF regions, how the variates relate
to the diagnosis (ROC AUC) and covariates, and on a simulated cohort their correlation with the
planted latents and how the maps localise the planted coupling; ``links/pair<k>.png`` shows the
two maps side by side.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from mmssl import config as cfg
from mmssl import io
from mmssl.data.neuro.atlas import load_atlas
from mmssl.errors import RunDirError
from mmssl.evaluation.clusters import region_summary
from mmssl.evaluation.links import (
    HARMONIZE,
    canonical_variate,
    harmonise_by_site,
    reduced_cca_links,
    residualise,
    site_harmonisation_problem,
)
from mmssl.evaluation.plots import canonical_scatter, paired_maps
from mmssl.evaluation.saliency import LinearReadout, integrated_gradients, localisation_auc
from mmssl.evaluation.stats import holm
from mmssl.runs.brainrun import BrainRun, open_brain_run
from mmssl.runs.evaluation import read_features, read_presence
from mmssl.runs.rundir import RunDir

__all__ = ["resolution_note", "run_links"]

log = logging.getLogger("mmssl")


def resolution_note(components: int, permutations: int, alpha: float) -> str | None:
    """A warning when the permutation count makes a significant link impossible.

    A permutation p-value is at least 1 / (permutations + 1), and Holm multiplies the smallest
    of ``components`` of them by ``components``; when that floor is not below ``alpha`` no pair can
    be called significant whatever the data (e.g. 3 pairs and 50 permutations: 3/51 > 0.05).
    """
    if permutations < 1:
        return None
    floor = components / (permutations + 1)
    if floor < alpha:  # a link is significant when p_holm < alpha
        return None
    needed = int(np.ceil(components / alpha))
    return (f"--permutations {permutations} with {components} pairs: the smallest Holm-adjusted "
            f"p is {floor:.3f}, not below alpha {alpha:g}, so no link can be significant; use "
            f"at least {needed} permutations")


def _confound_matrices(brain_run: BrainRun, names: Sequence[str], pair: Sequence[str]
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Label plus the named covariates of the train and test splits' complete rows, numeric,
    with the same columns in both: a category becomes one indicator per level found in either
    split (all but the first), so a site absent from the test subjects still has its column;
    a covariate missing for some subject of either split is left out."""
    splits = {split: brain_run.subjects(split, pair) for split in ("train", "test")}
    columns: dict[str, list[pd.Series]] = {
        split: [subjects["label"].astype(float)] for split, subjects in splits.items()}
    for name in names:
        if any(name not in s.columns or s[name].isna().any() for s in splits.values()):
            continue
        if all(pd.api.types.is_numeric_dtype(s[name]) for s in splits.values()):
            for split, subjects in splits.items():
                columns[split].append(subjects[name].astype(float))
            continue
        levels = sorted({str(v) for s in splits.values() for v in s[name].unique()})
        for split, subjects in splits.items():
            values = subjects[name].astype(str)
            columns[split] += [(values == level).astype(float) for level in levels[1:]]
    return np.column_stack(columns["train"]), np.column_stack(columns["test"])


def _sites(brain_run: BrainRun, pair: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """The train and test subjects' sites, or None when there is no site column (or missing
    values, or a single site in training: nothing to harmonise)."""
    tables = [brain_run.subjects(split, pair) for split in ("train", "test")]
    if any("site" not in t.columns or t["site"].isna().any() for t in tables):
        return None
    train, test = (t["site"].astype(str).to_numpy() for t in tables)
    return (train, test) if len(set(train)) > 1 else None


def _adjusted(brain_run: BrainRun, train: dict[str, np.ndarray], test: dict[str, np.ndarray],
              names: Sequence[str], pair: Sequence[str], harmonize: str
              ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Both splits with the label and the named covariates removed — within each site when
    ``harmonize`` asks for it and the sites allow it — and what was done, for the report."""
    sites = _sites(brain_run, pair) if harmonize != "none" and "site" in names else None
    notes: list[str] = []
    if sites is not None:
        c_train, c_test = _confound_matrices(brain_run, [n for n in names if n != "site"], pair)
        problem = site_harmonisation_problem(*sites, c_train.shape[1] + 1)  # + the intercept
        if not (problem and harmonize == "auto"):  # `site` with a problem: the error names it
            fit, held, counts = harmonise_by_site(train, test, c_train, c_test, *sites)
            return fit, held, {"harmonize": "site", "site_training_subjects": counts,
                               "harmonize_notes": notes}
        notes.append(f"not harmonised by site ({problem}): site indicators among the linear "
                     f"confounds instead")
        log.warning(notes[-1])
    c_train, c_test = _confound_matrices(brain_run, names, pair)
    adjusted = residualise(train, test, c_train, c_test)
    return *adjusted, {"harmonize": "none", "site_training_subjects": {},
                       "harmonize_notes": notes}


def run_links(out: Path, *, components: int = 3, permutations: int = 200,
              modalities: Sequence[str] | None = None, pca: int | None = 10,
              alpha: float = 0.05, confounds: str = "auto", harmonize: str = "auto",
              steps: int = 16, batch_size: int = 4, device: str | None = None) -> dict[str, Any]:
    """Held-out CCA links between two modalities; on a neuroimaging run mapped and named.

    ``confounds``: ``auto`` (neuroimaging runs: diagnosis + age, sex, site when present;
    otherwise none), ``none``, or a comma-separated list of covariates (with the diagnosis).
    ``harmonize``: ``site`` (when the confounds include a site with two or more levels: the
    other confounds are removed within each site and the sites' residual scales equalised,
    :func:`~mmssl.evaluation.links.harmonise_by_site`; an error when a site has too few
    training subjects for that), ``none`` (site indicators among the linear confounds,
    :func:`~mmssl.evaluation.links.residualise`), or ``auto`` (``site`` where every site can
    be fitted, else ``none`` with a warning in the log and the report).
    """
    if harmonize not in HARMONIZE:
        raise ValueError(f"--harmonize {harmonize!r}: expected one of {', '.join(HARMONIZE)}")
    started = time.perf_counter()
    run = RunDir(Path(out))
    run.require_evaluated()
    floor = resolution_note(components, permutations, alpha)
    if floor:
        log.warning(floor)
    config = cfg.load(run.config)
    features, labels = read_features(run.features)
    pair = list(modalities or config.modalities[:2])
    if len(pair) != 2 or any(m not in config.modalities for m in pair):
        raise ValueError(f"--modalities: links need two of the run's modalities "
                         f"{config.modalities}; got {pair}")
    neuro = config.data.dataset == "neuro"
    brain_run = open_brain_run(out, device=device) if neuro else None
    presence = read_presence(run.features)
    complete = {split: np.all([presence[split][m] for m in pair], axis=0)
                for split in ("train", "test")}
    train = {m: features["train"][m][complete["train"]] for m in pair}
    test = {m: features["test"][m][complete["test"]] for m in pair}
    test_labels = labels["test"][complete["test"]]
    names: list[str] = []
    harmonised: dict[str, Any] = {"harmonize": "none", "site_training_subjects": {},
                                  "harmonize_notes": []}
    if confounds != "none" and (neuro or confounds != "auto"):
        if brain_run is None:
            raise RunDirError("--confounds needs the covariates of a neuroimaging run")
        names = ["age", "sex", "site"] if confounds == "auto" else [
            c.strip() for c in confounds.split(",") if c.strip()]
        train, test, harmonised = _adjusted(brain_run, train, test, names, pair, harmonize)
    result, reducers, reduced_test = reduced_cca_links(
        train, test, pca=pca, n_components=components, n_permutations=permutations,
        seed=config.seed)
    adjusted = holm(result.p_values)
    significant = [k for k, p in enumerate(adjusted) if p < alpha]
    report: dict[str, Any] = {
        "modalities": pair, "confounds": ["label", *names] if names else [],
        **harmonised, "harmonize_requested": harmonize,
        "pca_components": {m: int(r.n_components_) for m, r in reducers.items()},
        **result.to_dict(), "p_holm": [float(p) for p in adjusted], "alpha": alpha,
        "significant": significant, "maps": {}, "figures": [],
    }
    variates = {m: result.transform(m, reduced_test[m]) for m in pair}
    scatter = canonical_scatter(variates, test_labels, pair,
                                run.links / "component0_scatter.png")
    report["figures"].append(run.relative(scatter))
    if floor:
        report["warning"] = floor
    if brain_run is None:
        io.write_json(run.links_summary, report)
        return report
    rows = _link_rows(brain_run, result, reducers, variates, test_labels, significant or [0],
                      pair, report, steps=steps, batch_size=batch_size)
    io.write_text(run.links / "links.csv", pd.DataFrame(rows).to_csv(index=False))
    report["table"] = rows
    report["seconds"] = round(time.perf_counter() - started, 1)
    io.write_json(run.links_summary, report)
    return report


def _variate_map(brain_run: BrainRun, modality: str, pair: Sequence[str],
                 readout: LinearReadout, steps: int, batch_size: int) -> np.ndarray:
    """Mean |IG| of a canonical variate over the test subjects, from the training mean."""
    device = brain_run.loaded.device
    baseline = brain_run.mean_volume(modality).to(device)
    rows = brain_run.rows("test", pair)
    total = np.zeros(brain_run.grid.shape)
    for start in range(0, len(rows), batch_size):
        x = brain_run.volumes(rows[start:start + batch_size], modality).to(device)
        attributions = integrated_gradients(readout.to(device), x, baseline=baseline,
                                            steps=steps, batch_size=batch_size)
        total += attributions[:, 0].abs().sum(0).detach().cpu().numpy()
    return total / len(rows) * brain_run.brain


def _link_rows(brain_run: BrainRun, result: Any, reducers: dict[str, Any],
               variates: dict[str, np.ndarray], labels: np.ndarray, components: list[int],
               pair: list[str], report: dict[str, Any], *, steps: int,
               batch_size: int) -> list[dict[str, Any]]:
    run = brain_run.run
    atlas = load_atlas("harvard_oxford")
    encoders = brain_run.loaded.model.probe_encoders()[""]
    coupling = brain_run.truth_masks("coupling")
    effect = brain_run.truth_masks("effect")
    latents = brain_run.latent_values("test", pair)
    subjects = brain_run.subjects("test", pair)
    rows = []
    for component in components:
        row: dict[str, Any] = {"component": component + 1,
                               "test_r": float(result.test_correlations[component]),
                               "p": float(result.p_values[component]),
                               "p_holm": report["p_holm"][component]}
        volumes = {}
        for modality in pair:
            mean, scale, weights = canonical_variate(result, modality, component)
            if modality in reducers:
                # The variate is linear in z: w·((P(z − μ) − m)/σ) = (Pᵀ(w/σ))·(z − μ) + c.
                pca_model = reducers[modality]
                weights = pca_model.components_.T @ (weights / scale)
                mean, scale = pca_model.mean_, np.ones_like(pca_model.mean_)
            readout = LinearReadout(encoders[modality], mean, scale, weights)
            volume = _variate_map(brain_run, modality, pair, readout, steps, batch_size)
            volumes[modality] = volume
            path = run.links / f"component{component}_{modality}.nii.gz"
            io.save_nifti(path, volume, brain_run.grid.affine)
            report["maps"][f"component{component}_{modality}"] = run.relative(path)
            regions = region_summary(volume, brain_run.grid.affine, atlas.labels, atlas.names,
                                     atlas.affine, brain_run.brain)
            row[f"{modality}_regions"] = "; ".join(regions["region"].head(3))
            score = variates[modality][:, component]
            if len(np.unique(labels)) == 2:
                row[f"{modality}_diagnosis_auc"] = float(roc_auc_score(labels, score))
            for name in ("age",):
                if name in subjects and subjects[name].notna().all():
                    row[f"{modality}_r_{name}"] = float(np.corrcoef(score, subjects[name])[0, 1])
            for name, values in latents.items():
                row[f"{modality}_r_{name}"] = float(np.corrcoef(score, values)[0, 1])
            if modality in coupling:
                row[f"{modality}_coupling_auc"] = localisation_auc(volume, coupling[modality],
                                                                   brain_run.brain)
                row[f"{modality}_effect_auc"] = localisation_auc(volume, effect[modality],
                                                                 brain_run.brain)
        png = run.links / f"pair{component + 1}.png"
        paired_maps({m: run.links / f"component{component}_{m}.nii.gz" for m in pair}, png,
                    title=f"canonical pair {component + 1}: held-out r = {row['test_r']:.2f}, "
                          f"p = {row['p_holm']:.3g} (Holm)")
        report["figures"].append(run.relative(png))
        rows.append(row)
    return rows
