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
what the analyses downstream need.

The audit also checks the pretraining objective itself (:func:`objective_check`): the frozen
model's loss on unaugmented batches of its training subjects and of its validation subjects,
beside the final logged training losses and the first logged validation loss (the untrained
model's, about chance). A training loss far below the same subjects' unaugmented loss means the
objective was solved through the augmentation (a shortcut); a validation loss far above the
training subjects' means the model memorised them. Either way the representation has not
learned what generalises.

Written: ``audit.json`` (settings and every score),
``audit.csv`` (one row per variable × source) and ``audit.png`` (grouped bars with chance).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mmssl import io
from mmssl.evaluation.audit import decode, variable_kind
from mmssl.evaluation.plots import decoding_bars
from mmssl.runs.brainrun import BrainRun, open_brain_run
from mmssl.runs.evaluation import read_presence

__all__ = ["objective_check", "run_audit"]

#: Columns of the subject table that are bookkeeping, not variables.
BOOKKEEPING: tuple[str, ...] = ("subject", "session", "label", "split")
#: How many of the last logged training losses (one batch each) the objective check averages.
FINAL_TRAINING_VALUES = 3


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


def _logged(curves: Path) -> dict[str, float]:
    """From ``metrics.csv``: the mean of the last (up to) :data:`FINAL_TRAINING_VALUES` logged
    training losses (each one batch's) and the first logged validation loss."""
    if not curves.is_file():
        return {}
    frame = pd.read_csv(curves)
    logged: dict[str, float] = {}
    if "train/loss" in frame and frame["train/loss"].notna().any():
        logged["train_logged_final"] = float(
            frame["train/loss"].dropna().iloc[-FINAL_TRAINING_VALUES:].mean())
    if "val/loss" in frame and frame["val/loss"].notna().any():
        logged["val_logged_first"] = float(frame["val/loss"].dropna().iloc[0])
    return logged


def objective_check(brain_run: BrainRun, *, repeats: int = 4, seed: int = 0) -> dict[str, Any]:
    """The pretraining loss of the frozen model (eval mode) on unaugmented batches.

    For the training and the validation subjects (one session each, every modality present),
    ``repeats`` random partitions into batches of the run's batch size give the mean loss of
    :meth:`~mmssl.methods.base.MultimodalMethod.compute_loss`. Returned with the logged values
    (:func:`_logged`) and two gaps: ``shortcut_gap`` = unaugmented training loss − last logged
    training loss, ``generalisation_gap`` = validation loss − unaugmented training loss.
    """
    model = brain_run.loaded.model
    modalities = brain_run.modalities
    batch_size = int(brain_run.loaded.config.data.batch_size)
    device = brain_run.loaded.device
    was_training = model.training
    model.eval()
    result: dict[str, Any] = {"batch_size": batch_size, "repeats": repeats}
    rng = np.random.default_rng(seed)
    try:
        for split in ("train", "val"):
            rows = brain_run.rows(split, modalities)
            if len(rows) < 2:
                continue
            subjects = brain_run.subjects(split, modalities)
            labels = torch.as_tensor(subjects["label"].to_numpy(copy=True))
            volumes = {m: brain_run.volumes(rows, m) for m in modalities}
            size = min(batch_size, len(rows))
            losses: list[float] = []
            with torch.no_grad():
                for repeat in range(repeats):
                    order = torch.from_numpy(rng.permutation(len(rows)))
                    for start in range(0, len(rows) - size + 1, size):
                        index = order[start:start + size]
                        batch: dict[str, Any] = {m: volumes[m][index].to(device)
                                                 for m in modalities}
                        batch["label"] = labels[index].to(device)
                        generator = torch.Generator().manual_seed(seed + 7919 * repeat + start)
                        loss, _ = model.compute_loss(batch, generator)
                        losses.append(float(loss))
            result[f"{split}_unaugmented"] = float(np.mean(losses))
            result[f"{split}_subjects"] = len(rows)
    finally:
        model.train(was_training)
    result.update(_logged(brain_run.run.curves))
    if "train_unaugmented" in result and "train_logged_final" in result:
        result["shortcut_gap"] = result["train_unaugmented"] - result["train_logged_final"]
    if "train_unaugmented" in result and "val_unaugmented" in result:
        result["generalisation_gap"] = result["val_unaugmented"] - result["train_unaugmented"]
    return result


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
    report["objective"] = objective_check(brain_run, seed=seed)
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
