"""Checkpoints: written atomically in the run directory, read safely, checked before use.

Lightning's own writer serialises into a temporary location and copies the bytes over the
target; with the run directory on another file system a kill during the copy leaves a
truncated ``last.ckpt`` and the previous good one is gone. :class:`AtomicCheckpointIO` instead
serialises in memory and writes through :func:`mmssl.io.atomic_write` (a temporary file beside
the target, ``fsync``, rename): the previous checkpoint survives a kill or a full disk, and the
error says how much space was needed.

Every read goes through :func:`read_checkpoint`: ``torch.load(..., weights_only=True)``
(tensors and plain values only; a checkpoint holding arbitrary Python objects is refused, never
unpickled), with errors that say whether the file is missing, empty, truncated, or not an
mmssl checkpoint.
"""

from __future__ import annotations

import io as _io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import CheckpointIO

from mmssl import io
from mmssl.errors import CheckpointError
from mmssl.methods import MultimodalMethod, method_class

__all__ = [
    "CHECKPOINT_FORMAT",
    "AtomicCheckpointIO",
    "fit_progress",
    "load_method",
    "read_checkpoint",
]

#: Written into every checkpoint under the ``"mmssl"`` key (with the method's name).
CHECKPOINT_FORMAT = 1


def read_checkpoint(path: Path | str, *, map_location: Any = "cpu", mmap: bool = False,
                    lightning: bool = True) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and check it is a Lightning checkpoint.

    ``lightning=False`` accepts any mapping (Lightning's own temporary files).

    Raises:
        CheckpointError: missing, empty, truncated or corrupt, holding Python objects beyond
            tensors and plain values, or without a ``state_dict``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): it was cut off while "
                              "being written")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        # torch's own message suggests loading unsafely; we never do.
        raise CheckpointError(
            f"checkpoint {path} holds Python objects other than tensors and plain values; it "
            "is not an mmssl checkpoint and is refused for safety"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({reason})") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint {path} is not a checkpoint (not a mapping)")
    if lightning and not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"checkpoint {path} is not a Lightning checkpoint (no state_dict)")
    return checkpoint


def load_method(path: Path | str, method: str) -> MultimodalMethod:
    """The trained method saved in checkpoint ``path``, checked to be a ``method`` checkpoint.

    Raises:
        CheckpointError: unreadable (see :func:`read_checkpoint`), written by another method,
            or its weights do not fit the architecture its settings describe.
    """
    path = Path(path)
    checkpoint = read_checkpoint(path)
    marker = checkpoint.get("mmssl")
    saved_method = marker.get("method") if isinstance(marker, dict) else None
    if saved_method is not None and saved_method != method:
        raise CheckpointError(f"checkpoint {path} holds a {saved_method} model, but the run's "
                              f"configuration says {method}")
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, dict):
        raise CheckpointError(f"checkpoint {path} is not an mmssl checkpoint (no settings)")
    try:
        model = method_class(method).from_hparams(hparams)
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path} is not an mmssl {method} checkpoint: its "
                              f"settings do not describe one ({error})") from None
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise CheckpointError(f"checkpoint {path}: its weights do not fit the {method} model "
                              f"its settings describe ({first})") from None
    return model.eval()


def fit_progress(path: Path | str) -> tuple[int, int]:
    """Epochs completed and optimizer steps taken by the training that wrote ``path``.

    Read from Lightning's loop state (the epoch counter of the fit loop), falling back to the
    ``epoch`` key (+1: checkpoints are written at the end of an epoch).
    """
    checkpoint = read_checkpoint(path, mmap=True)
    epochs = checkpoint.get("epoch", -1) + 1
    try:
        progress = checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]
        epochs = max(int(progress["processed"]), int(progress["completed"]))
    except (KeyError, TypeError):
        pass
    return int(epochs), int(checkpoint.get("global_step", 0))


class AtomicCheckpointIO(CheckpointIO):
    """Lightning checkpoint I/O that writes atomically in place and reads safely."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        buffer = _io.BytesIO()
        torch.save(checkpoint, buffer)
        io.atomic_write(Path(path), buffer.getvalue())

    def load_checkpoint(self, path: Any, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        # Lightning also loads its own files through here (a spawned run's weights).
        return read_checkpoint(Path(path), map_location=map_location or "cpu", lightning=False)

    def remove_checkpoint(self, path: Any) -> None:
        Path(path).unlink(missing_ok=True)
