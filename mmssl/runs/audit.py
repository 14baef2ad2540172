"""``mmssl audit RUN_DIR``: what a neuroimaging run's representation encodes.

For every modality, the frozen representation of the labelled evaluation subjects (one session
each; train, validation and test together) is asked, by cross-validated linear decoding
(:func:`~mmssl.evaluation.audit.decode`), how much it tells about the diagnosis, every
covariate of the manifest (age, sex, site, …) and, on a simulated cohort, the planted latents
(severity among patients, the structure–function coupling). The same is asked of the
preprocessed volumes themselves, reduced by a PCA fitted inside each training fold
(``--components``; 0 leaves this reference out), so a score reads against what the inputs
carry linearly.

A representation that decodes the scanner site far better than the diagnosis will show the
site in its saliency maps and links; one that decodes nothing beyond chance has not learned
what the analyses downstream need. Written: ``audit.json`` (settings and every score),
``audit.csv`` (one row per variable × source) and ``audit.png`` (grouped bars with chance).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmssl import io
from mmssl.evaluation.audit import decode, variable_kind
from mmssl.evaluation.plots import decoding_bars
from mmssl.runs.brainrun import open_brain_run
from mmssl.runs.evaluation import read_presence

__all__ = ["run_audit"]

#: Columns of the subject table that are bookkeeping, not variables.
BOOKKEEPING: tuple[str, ...] = ("subject", "session", "label", "split")


def _variables(subjects: pd.DataFrame, planted: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Name → values (NaN/None for missing) of everything to decode, diagnosis first."""
    labels = subjects["label"].to_numpy()
    variables: dict[str, np.ndarray] = {
        "diagnosis": np.where(labels >= 0, labels, -1).astype(object)}
    variables["diagnosis"][labels < 0] = None
    for column in subjects.columns:
        if column not in BOOKKEEPING and subjects[column].nunique(dropna=True) > 1:
            variables[column] = subjects[column].to_numpy()
    if "severity" in planted:  # among patients: for everyone it restates the diagnosis
        variables["severity (patients)"] = np.where(labels == 1, planted["severity"], np.nan)
    if "coupling" in planted:
        variables["coupling"] = planted["coupling"]
    return variables


def run_audit(out: Path, *, folds: int = 5, components: int = 64, seed: int = 0,
              device: str | None = None) -> dict[str, Any]:
    """Decode diagnosis, covariates and planted latents from each modality's representation
    (and from the volumes' PCA); writes audit.json, audit.csv and audit.png."""
    if folds < 2:
        raise ValueError(f"--folds must be at least 2; got {folds}")
    if components < 0:
        raise ValueError(f"--components must be non-negative (0: no input reference); "
                         f"got {components}")
    started = time.perf_counter()
    brain_run = open_brain_run(out, device=device)
    run = brain_run.run
    presence = read_presence(run.features)
    rows: list[dict[str, Any]] = []
    report: dict[str, Any] = {"folds": folds, "components": components, "seed": seed,
                              "modalities": {}}
    for modality in brain_run.modalities:
        subjects = brain_run.subjects("all", [modality])
        features = np.concatenate([
            brain_run.features[split][modality][presence[split][modality]]
            for split in ("train", "val", "test")])
        if len(features) != len(subjects):
            raise RuntimeError(f"{modality}: {len(features)} feature rows for "
                               f"{len(subjects)} subjects; rerun `mmssl evaluate`")
        # source → (feature matrix, PCA components fitted per fold or None)
        sources: dict[str, tuple[np.ndarray, int | None]] = {f"{modality} z": (features, None)}
        if components:
            inputs = brain_run.maps(modality, "input", "all")[:, brain_run.brain]
            sources[f"{modality} inputs"] = (inputs, components)
        planted = brain_run.latent_values("all", [modality])
        variables = _variables(subjects, planted)
        entry: dict[str, Any] = {"subjects": len(subjects), "variables": {}}
        for name, values in variables.items():
            kind = "categorical" if name == "diagnosis" else variable_kind(values)
            scores: dict[str, Any] = {}
            for source, (matrix, reduce) in sources.items():
                try:
                    result = decode(matrix, values, kind=kind, folds=folds,
                                    components=reduce, seed=seed)
                except ValueError as error:  # e.g. too few subjects in a class
                    scores[source] = {"skipped": str(error)}
                    continue
                scores[source] = {"score": result.score, "metric": result.metric,
                                  "chance": result.chance, "subjects": result.subjects}
                rows.append({"modality": modality, "variable": name, "kind": kind,
                             "source": source, "metric": result.metric,
                             "score": round(result.score, 4), "chance": round(result.chance, 4),
                             "subjects": result.subjects})
            entry["variables"][name] = scores
        report["modalities"][modality] = entry
    table = pd.DataFrame(rows)
    io.write_text(run.root / "audit.csv", table.to_csv(index=False))
    report["table"] = rows
    if len(table):
        figure = decoding_bars(table, run.root / "audit.png",
                               title=f"What the representation encodes ({run.root.name})")
        report["figures"] = [run.relative(figure)]
    report["seconds"] = round(time.perf_counter() - started, 1)
    io.write_json(run.audit_summary, report)
    return report
