"""Every file mmssl writes goes through here: atomically, with the usual permissions.

A file is written to a hidden temporary name *in its target folder* (``.NAME.XXXX.tmp``),
flushed and ``fsync``-ed, given the permissions the umask gives new files (``0o666 & ~umask``;
a bare :func:`tempfile.mkstemp` would leave it 0600, unreadable to colleagues sharing a cache),
and renamed over the target with :func:`os.replace`, which is atomic within one file system.
So a reader sees the old file or the new one, never half of one; a crash, a kill or a full disk
during the write leaves the previous version intact. Errors are turned into
:class:`~mmssl.errors.MmsslError` subclasses that say what happened: a full disk
(:class:`~mmssl.errors.DiskFullError`, with the bytes needed and free) and a folder that cannot
be written (:class:`~mmssl.errors.WriteError`). A temporary file is removed on every error the
process survives; :func:`remove_stale_temporaries` clears those a SIGKILL left behind.

Names that become part of a path (modalities, models, runs) are checked by :func:`check_name`;
:func:`contained` tells whether a path stays inside a folder (for reports that embed files).
"""

from __future__ import annotations

import csv
import errno
import gzip
import io
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from mmssl.errors import DiskFullError, WriteError

__all__ = [
    "TEMPORARY_SUFFIX",
    "atomic_write",
    "check_name",
    "contained",
    "default_file_mode",
    "ensure_writable_folder",
    "format_bytes",
    "relative_path",
    "remove_stale_temporaries",
    "save_figure",
    "save_image",
    "save_nifti",
    "save_npy",
    "save_npz",
    "write_bytes",
    "write_json",
    "write_error",
    "write_text",
]

#: Suffix of the temporary files of :func:`atomic_write` (``.NAME.XXXX.tmp``).
TEMPORARY_SUFFIX = ".tmp"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_FULL = (errno.ENOSPC, errno.EDQUOT)
_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST)
_umask_lock = threading.Lock()


def format_bytes(size: float) -> str:
    """``1536`` → ``"1.5 KiB"``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - unreachable


def _umask() -> int:
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _full_disk(path: Path, needed: int | None, written: int) -> DiskFullError:
    free = _free_bytes(path.parent)
    need = (f"needs {format_bytes(needed)}" if needed is not None
            else f"needs more than the {format_bytes(written)} written")
    have = f", {format_bytes(free)} free" if free is not None else ""
    return DiskFullError(
        f"no space left on the device writing {path}: {need}{have}. The previous version of "
        f"the file (if any) is intact and nothing half-written was left; free some space (or "
        f"choose another folder) and run the command again"
    )


def _unwritable(path: Path, error: OSError, hint: str = "") -> WriteError:
    reason = error.strerror or str(error)
    if error.errno == errno.EROFS:
        reason = "read-only file system"
    elif error.errno in (errno.EACCES, errno.EPERM):
        reason = "permission denied"
    return WriteError(f"cannot write {path}: {reason}" + (f"; {hint}" if hint else ""))


def default_file_mode() -> int:
    """The permissions the umask gives a new file (``0o666 & ~umask``)."""
    return 0o666 & ~_umask()


def write_error(path: Path | str, error: OSError, hint: str = "",
                size: int | None = None) -> DiskFullError | WriteError:
    """The user-facing error for an ``OSError`` raised while writing ``path``."""
    path = Path(path)
    if error.errno in _FULL:
        return _full_disk(path, size, 0)
    return _unwritable(path, error, hint)


def atomic_write(
    path: Path | str,
    write: Callable[[IO[bytes]], None] | bytes,
    *,
    size_hint: int | None = None,
    hint: str = "",
) -> Path:
    """Write a file atomically in its own folder.

    Args:
        path: the target; missing parent folders are created.
        write: the bytes, or a function that writes them to the open binary handle it gets.
        size_hint: the expected size in bytes (for the message if the disk fills up).
        hint: added to the message if the folder cannot be written (e.g. which setting moves it).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        DiskFullError: no space left (ENOSPC/EDQUOT); the old file and no temporary remain.
        WriteError: the folder cannot be created or written (read-only, permissions, a file in
            the way).
    """
    path = Path(path)
    needed = len(write) if isinstance(write, bytes | bytearray | memoryview) else size_hint
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                    suffix=TEMPORARY_SUFFIX)
    except OSError as error:
        if error.errno in _FULL:
            raise _full_disk(path, needed, 0) from None
        raise _unwritable(path, error, hint) from None
    tmp = Path(name)
    handle = os.fdopen(fd, "wb")
    try:
        with handle:
            if isinstance(write, bytes | bytearray | memoryview):
                handle.write(write)
            else:
                write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except OSError as error:
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        if error.errno in _FULL:
            raise _full_disk(path, needed, written) from None
        if error.errno in _UNWRITABLE:
            raise _unwritable(path, error, hint) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable (best effort: not every platform opens folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: Path | str, data: bytes, *, hint: str = "") -> Path:
    """Bytes, atomically."""
    return atomic_write(path, data, hint=hint)


def write_text(path: Path | str, text: str, *, hint: str = "") -> Path:
    """UTF-8 text, atomically."""
    return atomic_write(path, text.encode("utf-8"), hint=hint)


def write_json(path: Path | str, value: Any, *, hint: str = "") -> Path:
    """Indented JSON (and a final newline), atomically."""
    return write_text(path, json.dumps(value, indent=2, default=str) + "\n", hint=hint)


def save_npz(path: Path | str, arrays: Mapping[str, np.ndarray]) -> Path:
    """An uncompressed ``.npz`` of named arrays, atomically."""
    size = sum(np.asarray(a).nbytes for a in arrays.values())
    return atomic_write(path, lambda handle: np.savez(handle, **arrays),  # type: ignore[arg-type]
                        size_hint=size)


def save_npy(path: Path | str, array: np.ndarray, *, hint: str = "") -> Path:
    """One array as ``.npy``, atomically."""
    array = np.asarray(array)
    return atomic_write(path, lambda handle: np.save(handle, array, allow_pickle=False),
                        size_hint=array.nbytes + 128, hint=hint)


def save_nifti(
    path: Path | str,
    volume: np.ndarray,
    affine: np.ndarray,
    *,
    space: str = "mni",
    dtype: type | None = None,
    zooms: Sequence[float] | None = None,
) -> Path:
    """A NIfTI-1 image (gzipped when the name ends in ``.nii.gz``), atomically.

    Both the qform and the sform are set to ``affine`` with the xform code ``space`` (``mni``,
    ``scanner``, ``aligned``, ``talairach``), units are mm, and the gzip stream carries no time
    stamp, so equal arrays give byte-identical files. Booleans are stored as uint8, other floats
    as float32 unless ``dtype`` says otherwise; ``zooms`` sets every voxel size, the repetition
    time (seconds) of a 4-D series included.

    Raises:
        ValueError: a volume that is not 3-D/4-D, a non-finite or non-4×4 affine, or a name
            without a NIfTI extension.
    """
    import nibabel as nib

    path = Path(path)
    if not path.name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"NIfTI path must end in .nii or .nii.gz, got {path.name!r}")
    data = np.asarray(volume)
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    if dtype is not None:
        data = data.astype(dtype)
    elif np.issubdtype(data.dtype, np.floating):
        data = data.astype(np.float32)
    if data.ndim not in (3, 4):
        raise ValueError(f"volume must be 3-D or 4-D, got shape {data.shape}")
    matrix = np.asarray(affine, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise ValueError(f"affine must be a finite 4×4 matrix, got shape {matrix.shape}")
    image = nib.Nifti1Image(np.ascontiguousarray(data), matrix)
    image.header.set_xyzt_units("mm", "sec")
    if zooms is not None:
        image.header.set_zooms(tuple(float(z) for z in zooms))
    image.set_qform(matrix, code=space)
    image.set_sform(matrix, code=space)
    return save_image(path, image)


def save_image(path: Path | str, image: Any) -> Path:
    """A nibabel NIfTI image as it is (header included), atomically; gzipped for ``.nii.gz``
    (no time stamp in the stream, so equal images give equal files)."""
    path = Path(path)
    if not path.name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"NIfTI path must end in .nii or .nii.gz, got {path.name!r}")
    payload = image.to_bytes()
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    return atomic_write(path, payload)


def write_csv(path: Path | str, columns: Sequence[str], rows: Iterable[Mapping[str, Any]],
              *, delimiter: str = ",") -> Path:
    """A CSV (or, with a tab delimiter, TSV) file of ``rows`` with ``columns``, atomically."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n",
                            delimiter=delimiter)
    writer.writeheader()
    writer.writerows(rows)
    return write_text(path, buffer.getvalue())


def save_figure(figure: Any, path: Path | str, **savefig: Any) -> Path:
    """A matplotlib figure as PNG, atomically; the figure is closed afterwards."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", **savefig)
    finally:
        plt.close(figure)
    return atomic_write(path, buffer.getvalue())


def remove_stale_temporaries(folder: Path | str) -> list[Path]:
    """Delete the temporary files a killed writer left in ``folder`` (not recursive).

    Only call this where a single process writes (the owner of a run directory).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for candidate in folder.glob(f".*{TEMPORARY_SUFFIX}"):
        if candidate.is_file():
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def check_name(value: str, what: str) -> str:
    """A name that becomes part of a path: letters, digits, ``_`` and ``-`` (not first).

    Raises:
        ValueError: naming ``what`` and the offending value.
    """
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} is not a valid name: use letters, digits, '_' and '-' "
            "(starting with a letter or digit); it becomes part of file names"
        )
    return value


def ensure_writable_folder(folder: Path | str, *, what: str, hint: str = "") -> Path:
    """Create ``folder`` if needed and prove it writable by creating and removing a file there.

    A real write, not :func:`os.access`: permission bits do not stop root, read-only mounts
    and full disks do.

    Raises:
        WriteError: a file in the way, a read-only or forbidden folder (with ``hint``).
        DiskFullError: the device is full.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise WriteError(f"{what} {folder} is a file, not a folder"
                         + (f"; {hint}" if hint else ""))
    atomic_write(folder / ".mmssl-write-check", b"", hint=hint)
    (folder / ".mmssl-write-check").unlink(missing_ok=True)
    return folder


def contained(root: Path | str, path: Path | str) -> Path | None:
    """``path`` (relative to ``root`` unless absolute) resolved, if it stays inside ``root``.

    Symbolic links are followed, so a link pointing out of ``root`` is not contained.
    """
    root_resolved = Path(root).resolve()
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = root_resolved / candidate
    resolved = candidate.resolve()
    return resolved if resolved.is_relative_to(root_resolved) else None


def relative_path(path: Path | str, root: Path | str) -> str:
    """``path`` written relative to ``root`` (both resolved), with forward slashes.

    Raises:
        ValueError: ``path`` is not inside ``root``.
    """
    resolved = Path(path).resolve()
    base = Path(root).resolve()
    if not resolved.is_relative_to(base):
        raise ValueError(f"{path} is not inside {root}")
    return resolved.relative_to(base).as_posix()
