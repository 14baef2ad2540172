"""Pretrain, then evaluate: the two halves of a run and its run directory.

A run directory holds ``config.yaml`` (resolved), ``metrics.csv`` (training curves),
``checkpoints/`` (every epoch's ``last.ckpt`` plus the best by validation loss),
``pretrain.json`` (written only when pretraining finished), ``metrics.json`` and ``probe.json``
(written only when evaluation finished), ``features.npz`` and ``log.txt``. Every file that marks
completion is written atomically, so an interrupted run never looks complete.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger

from mmssl import config as cfg
from mmssl.config import RunConfig, write_atomic
from mmssl.methods import MultimodalMethod, method_class

log = logging.getLogger("mmssl")

# Lightning warns that the run directory is not empty (it holds config.yaml by design), and a
# torch pytree deprecation inside Lightning; neither is actionable for users.
warnings.filterwarnings("ignore", message="Experiment logs directory")
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)")
warnings.filterwarnings("ignore", message=".*does not have many workers")


class RunDirError(RuntimeError):
    """A run directory that does not fit the requested action."""


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def pretrain_done(self) -> Path:
        return self.root / "pretrain.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def probe(self) -> Path:
        return self.root / "probe.json"

    @property
    def features(self) -> Path:
        return self.root / "features.npz"

    @property
    def log(self) -> Path:
        return self.root / "log.txt"


def write_json(path: Path, values: Any) -> None:
    """JSON, atomically."""
    write_atomic(path, json.dumps(values, indent=2, sort_keys=False) + "\n")


def _attach_log_file(run: RunDir) -> logging.Handler:
    run.root.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run.log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("mmssl", "lightning.pytorch"):
        logging.getLogger(name).addHandler(handler)
    logging.getLogger("mmssl").setLevel(logging.INFO)
    return handler


def _detach_log_file(handler: logging.Handler) -> None:
    for name in ("mmssl", "lightning.pytorch"):
        logging.getLogger(name).removeHandler(handler)
    handler.close()


def make_datamodule(
    config: RunConfig, report_path: Path | None = None
) -> L.LightningDataModule:
    """The data module for ``config.data.dataset`` (``report_path``: skipped neuro rows)."""
    data = config.data
    common: dict[str, Any] = {
        "modalities": tuple(config.modalities),
        "num_folds": data.num_folds,
        "fold": data.fold,
        "batch_size": data.batch_size,
        "eval_batch_size": data.eval_batch_size,
        "seed": config.seed,
        "num_workers": data.num_workers,
    }
    if data.dataset == "two_view_mnist":
        from mmssl.data.two_view_mnist import TwoViewMnistDataModule

        return TwoViewMnistDataModule(
            data_dir=Path(data.data_dir) if data.data_dir else None, pairing=data.pairing,
            **common,
        )
    if data.dataset == "mnist_svhn":
        from mmssl.data.mnist_svhn import MnistSvhnDataModule

        return MnistSvhnDataModule(
            data_dir=Path(data.data_dir) if data.data_dir else None,  # type: ignore[arg-type]
            max_per_class=data.max_per_class, pairings=data.pairings,
            eval_pairings=data.eval_pairings, **common,
        )
    if data.dataset == "neuro":
        from mmssl.data.neuro import Preprocessing
        from mmssl.data.neuro_module import NeuroDataModule

        assert data.manifest is not None
        prep = data.preprocessing
        return NeuroDataModule(
            Path(data.manifest),
            preprocessing=Preprocessing(
                voxel_size=prep.voxel_size, shape=tuple(prep.shape),  # type: ignore[arg-type]
                mask=prep.mask, normalization=prep.normalization,
            ),
            cache_dir=Path(data.cache_dir) if data.cache_dir else None,
            on_bad_row=data.on_bad_row, report_path=report_path,
            label_mapping=data.label_mapping, val_fraction=data.val_fraction,
            pad=data.augmentation.pad, flip=data.augmentation.flip, **common,
        )
    raise cfg.ConfigError(f"data.dataset: unknown dataset {data.dataset!r}; valid: "
                          + ", ".join(cfg.DATASETS))


def make_method(config: RunConfig, datamodule: Any) -> MultimodalMethod:
    """The LightningModule of ``config.method`` for the datamodule's modalities and shapes."""
    return method_class(config.method).from_config(
        config, datamodule.input_shapes, datamodule.num_classes
    )


def prepare_run_dir(config: RunConfig | None, out: Path, resume: bool) -> RunConfig:
    """Create or reopen a run directory; returns the configuration to use.

    A fresh run writes ``config.yaml``. ``resume`` reopens the saved configuration (and refuses
    a different one); without ``resume`` an existing run is never overwritten.
    """
    run = RunDir(Path(out))
    if process_rank() > 0:
        # A data-parallel worker: process 0 owns the run directory.
        return config if config is not None else cfg.load(run.config)
    if run.config.exists():
        saved = cfg.load(run.config)
        if not resume:
            raise RunDirError(
                f"{run.root} already holds a run (config.yaml exists); pass --resume to continue "
                "it, or choose another --out"
            )
        if config is not None and config.to_dict() != saved.to_dict():
            differing = _diff(saved.to_dict(), config.to_dict())
            raise RunDirError(
                f"--resume continues {run.root} with its saved config.yaml; the requested "
                f"configuration differs in {', '.join(differing)}"
            )
        return saved
    if resume:
        raise RunDirError(f"cannot resume {run.root}: it holds no config.yaml (no run started)")
    if config is None:
        raise RunDirError(f"{run.root} holds no run")
    run.root.mkdir(parents=True, exist_ok=True)
    cfg.save(config, run.config)
    return config


def process_rank() -> int:
    """This process's global rank under torchrun, Lightning's DDP launcher or SLURM (else 0)."""
    for variable in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(variable, "").isdigit():
            return int(os.environ[variable])
    return 0


class _FitState(L.Callback):
    """Records where fit ended, from process 0, so the caller knows even after a spawn."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            best = trainer.checkpoint_callback
            write_json(self.path, {
                "epoch": trainer.current_epoch, "global_step": trainer.global_step,
                "interrupted": trainer.interrupted,
                "best": best.best_model_path if isinstance(best, ModelCheckpoint) else "",
                "device": str(pl_module.device), "world_size": trainer.world_size,
            })


def _diff(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            keys += _diff(va, vb, f"{prefix}{key}.")
        elif va != vb:
            keys.append(f"{prefix}{key}")
    return keys


def _trainer(config: RunConfig, run: RunDir, extra_callbacks: list[Any] | None = None) -> L.Trainer:
    trainer_cfg = config.trainer
    # Two callbacks: Lightning saves ``last`` only alongside a top-k save, so the every-epoch
    # checkpoint that --resume needs is its own unmonitored callback.
    every_epoch = ModelCheckpoint(
        dirpath=run.checkpoints, filename="last", save_top_k=1, every_n_epochs=1,
        enable_version_counter=False,
    )
    best = ModelCheckpoint(
        dirpath=run.checkpoints, filename="best-epoch{epoch:03d}", auto_insert_metric_name=False,
        monitor="val/loss", mode="min", save_top_k=1,
    )
    callbacks: list[Any] = [best, every_epoch, *(extra_callbacks or [])]
    if trainer_cfg.progress_bar:
        callbacks.append(RichProgressBar() if os.isatty(1) else TQDMProgressBar(refresh_rate=20))
    kwargs: dict[str, Any] = {}
    if trainer_cfg.limit_train_batches is not None:
        limit = trainer_cfg.limit_train_batches
        kwargs["limit_train_batches"] = int(limit) if limit >= 1 else limit
    return L.Trainer(
        max_epochs=trainer_cfg.epochs,
        accelerator=trainer_cfg.accelerator,
        devices=trainer_cfg.devices,
        precision=trainer_cfg.precision,  # type: ignore[arg-type]
        num_nodes=trainer_cfg.num_nodes,
        strategy=trainer_cfg.strategy,
        sync_batchnorm=trainer_cfg.sync_batchnorm,
        logger=CSVLogger(save_dir=run.root, name="", version=""),
        callbacks=callbacks,
        default_root_dir=run.root,
        log_every_n_steps=trainer_cfg.log_every_n_steps,
        enable_progress_bar=trainer_cfg.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


def pretrain(
    config: RunConfig | None,
    out: Path,
    *,
    resume: bool = False,
    extra_callbacks: list[Any] | None = None,
) -> Path:
    """Self-supervised pretraining into ``out``; returns the checkpoint evaluation will use.

    ``resume`` continues from ``checkpoints/last.ckpt`` (saved every epoch) with the saved
    configuration; the per-step random sources depend only on (seed, epoch, step), so a resumed
    run ends with the same weights as an uninterrupted one.
    """
    run = RunDir(Path(out))
    config = prepare_run_dir(config, run.root, resume)
    handler = _attach_log_file(run)
    try:
        if run.pretrain_done.exists():
            log.info("pretraining of %s already finished; skipping", run.root)
            return _chosen_checkpoint(config, run)
        L.seed_everything(config.seed, workers=True, verbose=False)
        datamodule = make_datamodule(config, report_path=run.root / "skipped_rows.csv")
        if hasattr(datamodule, "splits_table"):
            datamodule.setup("fit")
            write_atomic(run.root / "splits.csv", datamodule.splits_table().to_csv(index=False))
        model = make_method(config, datamodule)
        fit_state = run.root / ".fit_state.json"
        fit_state.unlink(missing_ok=True)
        trainer = _trainer(config, run, [*(extra_callbacks or []), _FitState(fit_state)])
        ckpt_path = run.last_checkpoint if resume and run.last_checkpoint.exists() else None
        log.info("pretraining %s (%s) into %s%s", config.method, config.objective.name,
                 run.root, f", resuming from {ckpt_path}" if ckpt_path else "")
        started = time.perf_counter()
        earlier_curves = _set_aside_curves(run) if ckpt_path else None
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        finally:
            if earlier_curves is not None:
                _merge_curves(earlier_curves, run.root / "metrics.csv")
        if process_rank() > 0 or not trainer.is_global_zero:
            return run.last_checkpoint  # process 0 records completion
        state = json.loads(fit_state.read_text()) if fit_state.exists() else {"epoch": 0}
        if state.get("interrupted") or state["epoch"] < config.trainer.epochs:
            raise RunDirError(
                f"pretraining of {run.root} stopped at epoch {state['epoch']} of "
                f"{config.trainer.epochs}; continue it with --resume"
            )
        best = str(state.get("best") or "")
        write_json(run.pretrain_done, {
            "epochs": config.trainer.epochs,
            "global_step": state["global_step"],
            "last_checkpoint": str(run.last_checkpoint.relative_to(run.root)),
            "best_checkpoint": (Path(best).resolve().relative_to(run.root.resolve()).as_posix()
                                if best else None),
            "seconds": round(time.perf_counter() - started, 2),
            "device": state["device"],
            "processes": state["world_size"],
        })
        fit_state.unlink(missing_ok=True)
        return _chosen_checkpoint(config, run)
    finally:
        _detach_log_file(handler)


def _set_aside_curves(run: RunDir) -> Path | None:
    """Move metrics.csv aside before resuming: Lightning's CSV logger deletes it on start."""
    current = run.root / "metrics.csv"
    if not current.exists():
        return None
    aside = run.root / ".metrics.before-resume.csv"
    if aside.exists():  # an earlier resume crashed before merging: keep the oldest curves
        _merge_curves(aside, current)
    os.replace(current, aside)
    return aside


def _merge_curves(earlier: Path, current: Path) -> None:
    """Earlier curves up to the resumed step, then the new ones, into ``current``."""
    import pandas as pd

    old = pd.read_csv(earlier)
    if current.exists():
        new = pd.read_csv(current)
        if len(new) and "step" in new and "step" in old:
            old = old[old["step"] < new["step"].min()]
        merged = pd.concat([old, new], ignore_index=True)
    else:
        merged = old
    write_atomic(current, merged.to_csv(index=False))
    earlier.unlink()


def _chosen_checkpoint(config: RunConfig, run: RunDir) -> Path:
    info = json.loads(run.pretrain_done.read_text())
    key = "best_checkpoint" if config.trainer.checkpoint == "best" else "last_checkpoint"
    chosen = info.get(key) or info["last_checkpoint"]
    return run.root / chosen


def _device(accelerator: str) -> torch.device:
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    if accelerator in ("auto", "mps") and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def evaluate(out: Path, *, device: str | None = None) -> dict[str, Any]:
    """Frozen-encoder linear evaluation of a pretrained run; writes ``metrics.json``.

    Features of the train (fixed views), validation and test splits are extracted once with
    the encoders in eval mode, saved to ``features.npz``, and probed per modality and jointly.
    """
    from mmssl.evaluation.probe import extract_features, linear_evaluation

    run = RunDir(Path(out))
    if not run.config.exists():
        raise RunDirError(f"{run.root} is not a run directory (no config.yaml)")
    if not run.pretrain_done.exists():
        raise RunDirError(
            f"{run.root} has not finished pretraining (no pretrain.json); run `mmssl pretrain "
            f"--resume --out {run.root}` first"
        )
    config = cfg.load(run.config)
    handler = _attach_log_file(run)
    try:
        checkpoint = _chosen_checkpoint(config, run)
        torch_device = torch.device(device) if device else _device(config.trainer.accelerator)
        cls = method_class(config.method)
        model = cls.load_from_checkpoint(checkpoint, map_location="cpu")
        model.to(torch_device)
        datamodule: Any = make_datamodule(config)
        datamodule.setup("fit")
        variants = model.probe_encoders()
        metrics: dict[str, Any] = {}
        probe_info: dict[str, Any] = {"checkpoint": str(checkpoint.relative_to(run.root))}
        for variant, encoders in variants.items():
            features: dict[str, dict[str, np.ndarray]] = {}
            labels: dict[str, np.ndarray] = {}
            for split in ("train", "val", "test"):
                features[split], labels[split] = extract_features(
                    encoders, datamodule.eval_dataloader(split), device=torch_device
                )
            suffix = f"_{variant}" if variant else ""
            _save_features(run.root / f"features{suffix}.npz", features, labels)
            result = linear_evaluation(features, labels, Cs=config.probe.Cs, seed=config.seed,
                                       max_iter=config.probe.max_iter,
                                       class_weight=config.probe.class_weight)
            probe_info[variant or "default"] = {"chosen_C": result["chosen_C"],
                                                "val_curve": result["val_curve"]}
            if variant:
                write_json(run.root / f"metrics{suffix}.json", result["metrics"])
            else:
                metrics = result["metrics"]
        write_json(run.probe, probe_info)
        write_json(run.metrics, metrics)
        log.info("evaluated %s: %s", run.root, json.dumps(metrics.get("test", {})))
        return metrics
    finally:
        _detach_log_file(handler)


def generate(out: Path, *, n: int = 10, split: str = "test", device: str | None = None) -> Path:
    """Write ``generations.png``: inputs and (cross-modal) generations of a decoder model."""
    from mmssl.evaluation.generate import generate as write_grid

    run = RunDir(Path(out))
    if not run.pretrain_done.exists():
        raise RunDirError(f"{run.root} holds no finished pretraining (no pretrain.json)")
    config = cfg.load(run.config)
    torch_device = torch.device(device) if device else _device(config.trainer.accelerator)
    model = method_class(config.method).load_from_checkpoint(
        _chosen_checkpoint(config, run), map_location="cpu").to(torch_device)
    datamodule: Any = make_datamodule(config)
    datamodule.setup("fit")
    batch = next(iter(datamodule.eval_dataloader(split)))
    batch = {m: batch[m][:n].to(torch_device) for m in config.modalities}
    return write_grid(model, batch, run.root / "generations.png",
                      f"{config.model_name}: {split} examples, inputs and generations")


def _save_features(path: Path, features: Mapping[str, Mapping[str, np.ndarray]],
                   labels: Mapping[str, np.ndarray]) -> None:
    arrays = {f"{split}/{m}": v for split, per in features.items() for m, v in per.items()}
    arrays.update({f"{split}/label": v for split, v in labels.items()})
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, path)


def read_features(path: Path) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """What :func:`_save_features` wrote: split → modality → features, and split → labels."""
    if not path.exists():
        raise RunDirError(f"{path.parent} has not been evaluated (no {path.name}); run "
                          f"`mmssl evaluate {path.parent}`")
    features: dict[str, dict[str, np.ndarray]] = {}
    labels: dict[str, np.ndarray] = {}
    with np.load(path) as arrays:
        for key in arrays.files:
            split, name = key.split("/", 1)
            if name == "label":
                labels[split] = arrays[key]
            else:
                features.setdefault(split, {})[name] = arrays[key]
    return features, labels


def run(config: RunConfig | None, out: Path, *, resume: bool = False) -> dict[str, Any]:
    """Pretrain (or resume), then evaluate; returns the metrics ({} in data-parallel workers)."""
    pretrain(config, out, resume=resume)
    if process_rank() > 0:
        return {}
    return evaluate(out)
