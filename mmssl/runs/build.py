"""From a validated configuration to the objects of a run: data module, method, preflight.

:func:`preflight` checks everything a run needs from its environment before any folder is
created — the accelerator exists, the input files are there, the caches and the run directory
can be written — so a user's mistake never leaves a half-made run directory behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from mmssl.config import RunConfig
from mmssl.data.registry import dataset_spec
from mmssl.errors import ConfigError, DataError, RunDirError
from mmssl.methods import METHODS, MultimodalMethod, method_class

__all__ = ["build_datamodule", "build_method", "check_accelerator", "preflight", "torch_device"]


def build_datamodule(config: RunConfig, skipped_rows: Path | None = None) -> L.LightningDataModule:
    """The data module of ``config.data.dataset`` (``skipped_rows``: where bad rows are listed)."""
    return dataset_spec(config.data.dataset).build(config.data, config.data.settings, config.seed,
                                                   skipped_rows)


def build_method(config: RunConfig, datamodule: Any) -> MultimodalMethod:
    """The LightningModule of ``config.method`` for the data module's modalities and shapes.

    A data module whose sessions may lack a modality says how many of the sessions the run
    uses do (``incomplete_sessions``); a method without the trait
    ``handles_missing_modalities`` refuses such data here, before training starts.

    Raises:
        ConfigError: the method cannot handle the data module's incomplete sessions.
    """
    cls = method_class(config.method)
    num_classes = datamodule.num_classes
    incomplete = int(getattr(datamodule, "incomplete_sessions", 0) or 0)
    if incomplete and not cls.traits.handles_missing_modalities:
        able = sorted(name for name, method in METHODS.items()
                      if method.traits.handles_missing_modalities)
        raise ConfigError(
            f"method {config.method} cannot train on sessions that lack a modality, and "
            f"{incomplete} of the sessions this run uses lack one (an empty path cell in the "
            f"manifest); use a method that can ({', '.join(able)}), or keep only complete "
            f"sessions in the manifest"
        )
    return cls.from_config(config, datamodule.input_shapes, num_classes)


def check_accelerator(accelerator: str, devices: int) -> None:
    """The requested accelerator exists here, with enough devices.

    Raises:
        ConfigError: naming ``--accelerator`` / ``trainer.devices`` and what is available.
    """
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--accelerator {accelerator} (trainer.accelerator): no CUDA GPU is visible here "
                "(torch.cuda.is_available() is False); use --accelerator cpu, or auto to take a "
                "GPU when there is one"
            )
        if devices > torch.cuda.device_count():
            raise ConfigError(
                f"trainer.devices={devices} but only {torch.cuda.device_count()} CUDA GPU(s) are "
                "visible"
            )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--accelerator mps (trainer.accelerator): Apple MPS is not available "
                          "here; use --accelerator cpu or auto")


def torch_device(accelerator: str, requested: str | None = None) -> torch.device:
    """The device for evaluation: ``requested`` if given, else what ``accelerator`` implies."""
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise ConfigError(f"--device {requested!r}: expected cpu, cuda, cuda:N or mps") \
                from None
        check_accelerator(device.type, 1)
        return device
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    if accelerator in ("auto", "mps") and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def preflight(config: RunConfig, out: Path | None = None) -> None:
    """Check the environment for a run of ``config`` into ``out`` before anything is written.

    Raises:
        ConfigError: an accelerator that is not available.
        DataError: input files or folders that are missing or not writable.
        RunDirError: ``out`` is a file.
    """
    check_accelerator(config.trainer.accelerator, config.trainer.devices)
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise RunDirError(f"--out {out} is a file, not a folder; choose a folder for the run")
    try:
        dataset_spec(config.data.dataset).preflight(config.data, config.data.settings)
    except (FileNotFoundError, NotADirectoryError) as error:
        raise DataError(str(error)) from None
