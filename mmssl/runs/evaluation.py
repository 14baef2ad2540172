"""Evaluation of a run directory: frozen features once, linear probes, generation grids.

:func:`evaluate` loads the chosen checkpoint (``trainer.checkpoint``: ``last`` or ``best``),
extracts the frozen features of the train (fixed views), validation and test splits with the
encoders in eval mode, saves them to ``features.npz``, and fits the probes
(:func:`mmssl.evaluation.probe.linear_evaluation`), writing ``probe.json`` and, last,
``metrics.json``. :func:`read_features` is the one reader of ``features.npz``.

Sessions that lack a modality: each modality's probe uses the rows that have it and the joint
probe the complete ones (:func:`~mmssl.evaluation.probe.linear_evaluation`); ``probe.json``
records the rows of every probe and split (``rows``), the log says how many complete sessions
the joint probe had, and ``features.npz`` keeps the presence masks
(``<split>/present/<modality>``, read by :func:`read_presence`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmssl import config as cfg
from mmssl import io
from mmssl.config import RunConfig
from mmssl.errors import RunDirError
from mmssl.evaluation.generate import generate as write_grid
from mmssl.evaluation.probe import JOINT, extract_split, linear_evaluation
from mmssl.methods import MultimodalMethod
from mmssl.runs.build import build_datamodule, torch_device
from mmssl.runs.checkpoints import load_method
from mmssl.runs.rundir import RunDir
from mmssl.runs.training import attached_log, pretrain, process_rank

__all__ = ["LoadedRun", "evaluate", "generate", "load_run", "read_features", "read_presence",
           "save_features"]

#: The name part of ``features.npz`` keys holding presence masks: ``<split>/present/<m>``.
PRESENT = "present"

log = logging.getLogger("mmssl")


@dataclass
class LoadedRun:
    """A pretrained run: its directory, configuration, model (eval mode) and data module."""

    run: RunDir
    config: RunConfig
    model: MultimodalMethod
    datamodule: Any
    device: torch.device


def load_run(out: Path, *, device: str | None = None, command: str = "pretrain") -> LoadedRun:
    """Open a pretrained run: its configuration, chosen checkpoint and (set up) data module."""
    run = RunDir(Path(out))
    run.require_pretrained(command)
    config = cfg.load(run.config)
    torch_dev = torch_device(config.trainer.accelerator, device)
    model = load_method(run.checkpoint(config.trainer.checkpoint), config.method).to(torch_dev)
    datamodule = build_datamodule(config)
    datamodule.setup("fit")
    return LoadedRun(run, config, model, datamodule, torch_dev)


def save_features(path: Path, features: Mapping[str, Mapping[str, np.ndarray]],
                  labels: Mapping[str, np.ndarray],
                  present: Mapping[str, Mapping[str, np.ndarray]] | None = None) -> Path:
    """``features.npz``: ``<split>/<modality>``, ``<split>/label`` and (when given)
    ``<split>/present/<modality>`` (bool) arrays, atomically."""
    arrays = {f"{split}/{m}": v for split, per in features.items() for m, v in per.items()}
    arrays.update({f"{split}/label": v for split, v in labels.items()})
    arrays.update({f"{split}/{PRESENT}/{m}": np.asarray(v, dtype=bool)
                   for split, per in (present or {}).items() for m, v in per.items()})
    return io.save_npz(path, arrays)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise RunDirError(f"{path.parent} has not been evaluated (no {path.name}); run "
                          f"`mmssl evaluate {path.parent}`")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return {key: arrays[key] for key in arrays.files}
    except (OSError, ValueError) as error:
        raise RunDirError(f"{path} cannot be read ({error}); run `mmssl evaluate "
                          f"{path.parent}` again") from None


def read_features(path: Path) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """What :func:`save_features` wrote: split → modality → features, and split → labels.

    Presence masks are not features (:func:`read_presence` reads them); files written before
    they existed read the same.
    """
    features: dict[str, dict[str, np.ndarray]] = {}
    labels: dict[str, np.ndarray] = {}
    for key, value in _load_npz(path).items():
        split, name = key.split("/", 1)
        if name == "label":
            labels[split] = value
        elif not name.startswith(f"{PRESENT}/"):
            features.setdefault(split, {})[name] = value
    return features, labels


def read_presence(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """split → modality → (N,) bool, whether each row of ``features.npz`` has the modality.

    A file without masks (written before they existed, or by a complete cohort's run of an
    older version) means every row has every modality.
    """
    arrays = _load_npz(path)
    present: dict[str, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        split, name = key.split("/", 1)
        if name == "label" or name.startswith(f"{PRESENT}/"):
            continue
        stored = arrays.get(f"{split}/{PRESENT}/{name}")
        present.setdefault(split, {})[name] = (np.ones(len(value), dtype=bool) if stored is None
                                               else stored.astype(bool))
    return present


def evaluate(out: Path, *, device: str | None = None, command: str = "pretrain"
             ) -> dict[str, Any]:
    """Frozen-encoder linear evaluation of a pretrained run; writes ``metrics.json``.

    Features of the train (fixed views), validation and test splits are extracted once with
    the encoders in eval mode, saved to ``features.npz``, and probed per modality and jointly.
    """
    loaded = load_run(out, device=device, command=command)
    run, config, model = loaded.run, loaded.config, loaded.model
    with attached_log(run):
        metrics: dict[str, Any] = {}
        checkpoint = run.checkpoint(config.trainer.checkpoint)
        probe_info: dict[str, Any] = {"checkpoint": run.relative(checkpoint),
                                      "checkpoint_choice": config.trainer.checkpoint}
        for variant, encoders in model.probe_encoders().items():
            features: dict[str, dict[str, np.ndarray]] = {}
            labels: dict[str, np.ndarray] = {}
            present: dict[str, dict[str, np.ndarray]] = {}
            for split in ("train", "val", "test"):
                extracted = extract_split(
                    encoders, loaded.datamodule.eval_dataloader(split), device=loaded.device
                )
                features[split], labels[split] = extracted.features, extracted.labels
                present[split] = extracted.present
            save_features(run.variant_features(variant), features, labels, present)
            result = linear_evaluation(features, labels, Cs=config.probe.Cs, seed=config.seed,
                                       max_iter=config.probe.max_iter,
                                       class_weight=config.probe.class_weight, present=present)
            probe_info[variant or "default"] = {"chosen_C": result["chosen_C"],
                                                "val_curve": result["val_curve"],
                                                "rows": result["rows"]}
            if not variant:
                _log_rows(result["rows"], labels)
            if variant:
                io.write_json(run.variant_metrics(variant), result["metrics"])
            else:
                metrics = result["metrics"]
        io.write_json(run.probe, probe_info)
        record = run.read_pretrain_record()
        metrics["checkpoint"] = {
            "choice": config.trainer.checkpoint, "file": run.relative(checkpoint),
            "epoch": record.get("best_epoch") if config.trainer.checkpoint == "best"
            else record.get("epochs")}
        note = early_best_note(config.trainer.checkpoint, record.get("best_epoch"),
                               record.get("epochs"))
        if note:
            metrics["checkpoint"]["note"] = note
            log.warning("%s", note)
        io.write_json(run.metrics, metrics)
        log.info("evaluated %s (%s checkpoint): %s", run.root, config.trainer.checkpoint,
                 metrics.get("test", {}))
        return metrics


def early_best_note(choice: str, best_epoch: int | None, epochs: int | None) -> str | None:
    """A warning when the best-validation-loss checkpoint is one of the first epochs of a run.

    With ``trainer.checkpoint: best`` the probe reads the encoder of the lowest validation
    loss. When that came within the first fifth of a run of at least 5 epochs (and at most
    epoch 1), the validation loss never recovered from its start and the probe evaluates an
    almost untrained encoder, which a reader of ``metrics.json`` should be told.
    """
    if choice != "best" or best_epoch is None or not epochs or epochs < 5:
        return None
    if best_epoch > max(1, epochs // 5):
        return None
    return (f"the lowest validation loss came after epoch {best_epoch} of {epochs}, so the "
            "probe evaluates an almost untrained encoder; train longer, or evaluate the last "
            "epoch with --set trainer.checkpoint=last")


def _log_rows(rows: Mapping[str, Mapping[str, int]], labels: Mapping[str, np.ndarray]) -> None:
    """Log how many rows each probe had; say so when sessions lacked a modality."""
    total = {split: len(y) for split, y in labels.items()}
    everything = sum(total.values())
    for probe, per_split in rows.items():
        used = sum(per_split.values())
        if probe == JOINT:
            log.info("joint probe on %d complete sessions of %d (%s)", used, everything,
                     ", ".join(f"{s} {n}/{total[s]}" for s, n in per_split.items()))
        elif used < everything:
            log.info("%s probe on the %d sessions of %d that have %s (%s)", probe, used,
                     everything, probe, ", ".join(f"{s} {n}/{total[s]}"
                                                  for s, n in per_split.items()))


def generate(out: Path, *, n: int = 10, split: str = "test", device: str | None = None) -> Path:
    """``generations.png``: inputs and (cross-modal) generations of a decoder model."""
    loaded = load_run(out, device=device)
    if not loaded.model.traits.has_decoders:
        raise RunDirError(f"{loaded.run.root} is a {loaded.config.method} run, which has no "
                          "decoders to generate with (ae, dccae, rr_ae and mmvae do)")
    batch = next(iter(loaded.datamodule.eval_dataloader(split)))
    batch = {m: batch[m][:n].to(loaded.device) for m in loaded.config.modalities}
    return write_grid(loaded.model, batch, loaded.run.generations,
                      f"{loaded.config.model_name}: {split} examples, inputs and generations")


def train_and_evaluate(config: RunConfig | None, out: Path, *, resume: bool = False,
                       command: str = "run") -> dict[str, Any]:
    """Pretrain (or resume, or skip a finished pretraining), then evaluate — ``mmssl run``.

    Returns the test/validation metrics ({} in a data-parallel worker process).
    """
    pretrain(config, out, resume=resume, command=command)
    if process_rank() > 0:
        return {}
    return evaluate(out, command=command)
