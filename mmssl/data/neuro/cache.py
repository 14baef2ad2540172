"""The preprocessing cache: facts and preprocessed volumes keyed by file content.

Preprocessing results live under ``cache_dir`` (default ``<manifest folder>/.mmssl_cache``)::

    .mmssl_cache/
      files/<sha[:2]>/<sha>.json
          facts about one source file, keyed by the SHA-256 of its bytes: shape, affine,
          NaN/inf counts, value range. Lets a rerun validate without decoding the volume.
      preprocessed/<settings>/settings.json
          the preprocessing settings, for people reading the cache
      preprocessed/<settings>/<sha[:2]>/<sha>.npy
          one preprocessed volume (float32, grid shape) per distinct source file content
      cohorts/<settings>/<modality>-<list key>.npy
          one (N, *grid shape) float32 array per modality, rows in manifest order, built from
          the entries above and opened memory-mapped (``np.load(..., mmap_mode="r")``); a
          session without the modality is a row of zeros (key :data:`MISSING_ENTRY`)

``<sha>`` is the SHA-256 of the source file's bytes, ``<settings>`` the first 20 hex digits of
:meth:`Preprocessing.key` (which covers the settings, the target grid, the mask file's content
and :data:`PREPROCESSING_VERSION`), ``<list key>`` a hash of the ordered list of entries (the
fixed sentinel :data:`MISSING_ENTRY` standing for a missing modality, which no SHA-256 can
equal). So a
rerun hashes the files and reuses everything; a file whose content changed (whatever its name)
is preprocessed again, and an unchanged file is never preprocessed again, even when the manifest
changes (only the cheap cohort array is rebuilt). Other settings use other folders. Every file
is written to a temporary name and renamed into place, so an interrupted run never leaves a
half-written entry. Upgrading nibabel, nilearn or scipy does not invalidate the cache; delete the
folder (or bump :data:`PREPROCESSING_VERSION` in code) to recompute, and to reclaim the space
of old cohort arrays.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmssl import io
from mmssl.data.neuro.manifest import one_line
from mmssl.data.neuro.preprocessing import sha256_file
from mmssl.data.neuro.validation import (
    MAX_VOLUME_BYTES,
    Inspection,
    VolumeInfo,
    VolumeUnreadable,
    inspect_path,
    inspect_volume,
    is_nifti_name,
)

__all__ = ["CACHE_DIR_NAME", "CACHE_HINT", "MISSING_ENTRY", "Cache", "cohort_array",
           "inspect_cached", "load_npy"]

log = logging.getLogger(__name__)

#: Name of the default cache folder, created beside the manifest.
CACHE_DIR_NAME = ".mmssl_cache"
#: What to do when the cache folder cannot be written.
CACHE_HINT = ("the preprocessing cache lives beside the manifest unless data.neuro.cache_dir "
              "is set: pass --cache-dir DIR (or --set data.neuro.cache_dir=DIR) with a writable "
              "folder")
_SETTINGS_DIR_CHARS = 20
#: The entry key of a missing modality in :func:`cohort_array` (a row of zeros); not hex, so no
#: SHA-256 of a file can equal it.
MISSING_ENTRY = "<missing>"

def load_npy(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """A float32 array of ``shape`` stored at ``path``, memory-mapped, or ``None``."""
    if not path.is_file():
        return None
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        log.warning("cache file %s is unreadable (%s); recomputing it", path, err)
        return None
    if array.dtype != np.float32 or array.shape != shape:
        log.warning("cache file %s holds %s %s, expected float32 %s; recomputing it", path,
                    array.dtype, array.shape, shape)
        return None
    return array


class Cache:
    """Paths and reads/writes of the cache folder (layout in the module docstring)."""

    def __init__(self, root: Path, settings_key: str) -> None:
        self.root = root
        self.settings_dir = settings_key[:_SETTINGS_DIR_CHARS]

    def info_path(self, sha: str) -> Path:
        return self.root / "files" / sha[:2] / f"{sha}.json"

    def settings_path(self) -> Path:
        return self.root / "preprocessed" / self.settings_dir / "settings.json"

    def entry_path(self, sha: str) -> Path:
        return self.root / "preprocessed" / self.settings_dir / sha[:2] / f"{sha}.npy"

    def cohort_path(self, modality: str, shas: Sequence[str]) -> Path:
        key = hashlib.sha256(json.dumps([self.settings_dir, list(shas)]).encode()).hexdigest()
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in modality)
        return self.root / "cohorts" / self.settings_dir / f"{safe}-{key[:32]}.npy"

    def read_info(self, sha: str) -> VolumeInfo | None:
        path = self.info_path(sha)
        if not path.is_file():
            return None
        try:
            return VolumeInfo.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("cache file %s is unreadable (%s); re-reading the volume", path, err)
            return None

    def write_info(self, sha: str, info: VolumeInfo) -> None:
        io.write_text(self.info_path(sha), json.dumps(info.to_json(), indent=1, sort_keys=True),
                      hint=CACHE_HINT)



#: Reports progress for one step: called once per item.
Advance = Callable[[], None]


def inspect_cached(paths: Sequence[Path], cache: Cache, steps: Any,
                   limit: int = MAX_VOLUME_BYTES) -> tuple[dict[Path, Inspection], dict[Path, str]]:
    """Hash every file and inspect it, reusing cached facts: ``(inspections, sha by path)``."""
    inspections: dict[Path, Inspection] = {}
    shas: dict[Path, str] = {}
    with steps.task("Hashing volumes", len(paths)) as advance:
        for p in paths:
            if p.is_file() and is_nifti_name(p):
                try:
                    shas[p] = sha256_file(p)
                except OSError as err:
                    inspections[p] = f"cannot read the file ({one_line(err)})"
            else:
                inspections[p] = inspect_path(p, limit)
            advance()
    todo = [p for p in paths if p in shas]
    with steps.task("Checking volumes", len(todo)) as advance:
        for p in todo:
            info = cache.read_info(shas[p])
            if info is None:
                try:
                    info = inspect_volume(p, limit)
                except VolumeUnreadable as err:
                    inspections[p] = str(err)
                    advance()
                    continue
                cache.write_info(shas[p], info)
            inspections[p] = info
            advance()
    return inspections, shas


def cohort_array(cache: Cache, modality: str, keys: Sequence[str],
                  shape: tuple[int, int, int]) -> np.ndarray:
    """The memory-mapped ``(N, *shape)`` stack of the entries ``keys``, built when missing.

    A key equal to :data:`MISSING_ENTRY` gives a row of zeros (a session without the
    modality); the sentinel is part of the list's hash, so the array's cache key changes with
    which sessions are missing.
    """
    path = cache.cohort_path(modality, keys)
    full = (len(keys), *shape)
    existing = load_npy(path, full)
    if existing is not None:
        return existing
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=io.TEMPORARY_SUFFIX,
                                   dir=path.parent)
    except OSError as error:
        raise io.write_error(path, error, CACHE_HINT, size=int(np.prod(full)) * 4) from None
    os.close(fd)
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=full)
        for i, sha in enumerate(keys):
            if sha == MISSING_ENTRY:
                out[i] = 0.0
                continue
            entry = load_npy(cache.entry_path(sha), shape)
            if entry is None:
                raise OSError(f"cache entry {cache.entry_path(sha)} vanished while assembling "
                              f"{path}")
            out[i] = entry
        out.flush()
        del out
        os.chmod(tmp, io.default_file_mode())
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise io.write_error(path, error, CACHE_HINT, size=int(np.prod(full)) * 4) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    loaded = load_npy(path, full)
    if loaded is None:  # pragma: no cover - just written
        raise OSError(f"could not read back the cohort array {path}")
    return loaded
