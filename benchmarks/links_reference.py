"""Is the planted structure–function link findable from the volumes themselves, without a model?

The brain issue asks ``mmssl links`` for a held-out link at 400 subjects whose maps localise the
coupled regions. Before asking a learned representation for that, this measures what the inputs
allow, with the same statistics ``links`` uses (:func:`mmssl.evaluation.links.cca_links`:
standardised features, regularised CCA fitted on training subjects, held-out canonical
correlation against a permutation null of the training pairing, Holm across pairs):

* **region oracle** — each modality reduced to the mean of its *planted* coupling region (T1
  caudate, fALFF insula; the ground truth's masks): the best a method that knew where to look
  could do (one feature per modality: every fitted weight is the same up to sign, so its p
  shuffles the held-out pairing instead of the training one);
* **whole brain** — each modality's grey-matter profile
  (:func:`mmssl.data.neuro.simulate.grey_matter_profiles`: log intensity per voxel,
  standardised per scan), reduced by PCA fitted on the training subjects to ``--pca`` components
  (:func:`~mmssl.evaluation.links.reduced_cca_links`, what ``links`` does with representations):
  a region-agnostic linear reference. Its first pair's voxel weights (the CCA weights mapped back
  through the PCA) are scored as a map: the localisation ROC AUC of their magnitude for the
  planted coupling region among the grey-matter voxels.

Both are residualised on the diagnosis, age, sex and site first (fitted on the training
subjects, as ``links --confounds auto``), so a link is one beyond them. Per row: held-out
correlation of the first pair, its permutation p, the Holm-adjusted p, and the correlation of
each modality's variate with the planted coupling latent on the held-out subjects.

    python -m benchmarks.links_reference COHORT [COHORT …] --pca 10,50 \\
        --json results/links-reference/summary.json
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from mmssl import io
from mmssl.data.neuro.simulate import (
    grey_matter_mask,
    grey_matter_profiles,
    load_ground_truth,
)
from mmssl.evaluation.links import canonical_variate, cca_links, reduced_cca_links, residualise
from mmssl.evaluation.saliency import localisation_auc
from mmssl.evaluation.stats import holm

__all__ = ["confounds", "held_out_permutation_p", "link_row", "main", "reference"]

MODALITIES = ("t1", "falff")


def confounds(subjects: Sequence[dict[str, str]]) -> np.ndarray:
    """Diagnosis (patient = 1), age, sex (F = 1) and one indicator per site but the first."""
    sites = sorted({s["site"] for s in subjects})
    return np.array([
        [float(s["label"] not in ("", "CN", "0")), float(s["age"]), float(s["sex"] == "F")]
        + [float(s["site"] == site) for site in sites[1:]]
        for s in subjects])


def link_row(result: Any, latent: np.ndarray, test: dict[str, np.ndarray]) -> dict[str, Any]:
    """First canonical pair: held-out r, p, Holm p, each variate's r with the planted latent."""
    adjusted = holm(result.p_values)
    row: dict[str, Any] = {"test_r": float(result.test_correlations[0]),
                           "p": float(result.p_values[0]), "p_holm": float(adjusted[0])}
    for modality in MODALITIES:
        variate = result.transform(modality, test[modality])[:, 0]
        row[f"{modality}_r_coupling"] = float(np.corrcoef(variate, latent)[0, 1])
    return row


def held_out_permutation_p(u: np.ndarray, v: np.ndarray, permutations: int,
                           seed: int) -> float:
    """One-sided permutation p of corr(u, v) > 0 over shuffles of the held-out pairing."""
    observed = float(np.corrcoef(u, v)[0, 1])
    rng = np.random.default_rng(seed)
    null = np.array([np.corrcoef(u, rng.permutation(v))[0, 1] for _ in range(permutations)])
    return float((1 + np.sum(null >= observed)) / (1 + permutations))


def reference(cohort: Path | str, *, train_fraction: float, pca: Sequence[int],
              permutations: int, seed: int) -> dict[str, Any]:
    """The region oracle and the whole-brain rows of one cohort."""
    folder = Path(cohort)
    truth = load_ground_truth(folder)
    rows, profiles = grey_matter_profiles(folder, modalities=MODALITIES)
    mask = grey_matter_mask(folder)
    with (folder / "ground_truth" / "subjects.csv").open(newline="") as handle:
        table = {(r["subject"], r["session"]): r for r in csv.DictReader(handle)}
    subjects = [table[(r["subject"], r["session"])] for r in rows]
    latent = np.array([float(s["coupling"]) for s in subjects])
    n = len(rows)
    order = np.random.default_rng(seed).permutation(n)
    train = np.zeros(n, dtype=bool)
    train[order[:int(round(train_fraction * n))]] = True
    covariates = confounds(subjects)
    result: dict[str, Any] = {"subjects": n, "train": int(train.sum()),
                              "test": int((~train).sum()), "voxels": int(mask.sum()),
                              "rows": []}

    def split(features: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray],
                                                           dict[str, np.ndarray]]:
        return residualise({m: x[train] for m, x in features.items()},
                           {m: x[~train] for m, x in features.items()},
                           covariates[train], covariates[~train])

    region = {m: profiles[i][:, truth.mask(m, "coupling")[mask]].mean(axis=1, keepdims=True)
              for i, m in enumerate(MODALITIES)}
    fit, held = split(region)
    # One feature per modality: every fitted weight is the same up to sign, so the training-
    # pairing null of cca_links cannot test it; the held-out pairing is permuted instead.
    oracle = cca_links(fit, held, n_components=1, n_permutations=0, seed=seed)
    row = {"features": "planted region means (oracle)", **link_row(oracle, latent[~train], held)}
    row["p"] = row["p_holm"] = held_out_permutation_p(
        oracle.transform("t1", held["t1"])[:, 0], oracle.transform("falff", held["falff"])[:, 0],
        permutations, seed)
    result["rows"].append(row)
    fit, held = split(dict(zip(MODALITIES, profiles, strict=True)))
    for components in pca:
        found, reducers, reduced_held = reduced_cca_links(
            fit, held, pca=components, n_components=3, n_permutations=permutations, seed=seed)
        row = {"features": f"whole grey matter, PCA {components}",
               **link_row(found, latent[~train], reduced_held)}
        for modality in MODALITIES:
            _, scale, weights = canonical_variate(found, modality, 0)
            voxel_weights = reducers[modality].components_.T @ (weights / scale)
            volume = np.zeros(mask.shape)
            volume[mask] = np.abs(voxel_weights)
            row[f"{modality}_coupling_auc"] = localisation_auc(
                volume, truth.mask(modality, "coupling"), mask)
        result["rows"].append(row)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cohorts", nargs="+", help="simulated cohort folders")
    parser.add_argument("--train-fraction", type=float, default=0.64,
                        help="subjects that fit (the rest are held out; links uses 0.64)")
    parser.add_argument("--pca", type=str, default="10,50",
                        help="comma-separated PCA sizes of the whole-brain rows")
    parser.add_argument("--permutations", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=str, default=None)
    args = parser.parse_args(argv)
    if not 0.2 <= args.train_fraction <= 0.9:
        parser.error(f"--train-fraction must lie in [0.2, 0.9]; got {args.train_fraction}")
    pca = [int(p) for p in args.pca.split(",") if p.strip()]
    console = Console()
    if not console.is_terminal:  # a log file: wide enough for the table
        console = Console(width=140)
    results: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items() if k != "json"},
                               "cohorts": {}}
    for cohort in args.cohorts:
        started = time.perf_counter()
        found = reference(cohort, train_fraction=args.train_fraction, pca=pca,
                          permutations=args.permutations, seed=args.seed)
        found["seconds"] = round(time.perf_counter() - started, 1)
        results["cohorts"][Path(cohort).name] = found
        table = Table(title=f"{cohort}: {found['train']} training, {found['test']} held-out "
                      f"subjects, {found['voxels']} grey-matter voxels")
        columns = ("features", "held-out r", "p", "Holm p", "T1 r(coupling)",
                   "fALFF r(coupling)", "T1 map AUC", "fALFF map AUC")
        for column in columns:
            table.add_column(column, justify="left" if column == "features" else "right")
        for row in found["rows"]:
            def cell(key: str, row: dict[str, Any] = row) -> str:
                value = row.get(key)
                return "—" if value is None or (isinstance(value, float) and math.isnan(value)) \
                    else f"{value:.3g}"
            table.add_row(row["features"], cell("test_r"), cell("p"), cell("p_holm"),
                          cell("t1_r_coupling"), cell("falff_r_coupling"),
                          cell("t1_coupling_auc"), cell("falff_coupling_auc"))
        console.print(table)
    if args.json:
        io.write_json(Path(args.json), results)
    return results


if __name__ == "__main__":
    main()
