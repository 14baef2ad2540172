"""Paired neuroimaging volumes (e.g. T1 MRI + fALFF): manifest, validation, preprocessing, cache.

Manifest
========

A cohort is described by a CSV file, one row per scan session, for example::

    subject,session,label,t1,falff,age,sex
    sub-01,ses-1,AD,sub-01/ses-1/t1.nii.gz,sub-01/ses-1/falff.nii.gz,71.5,F
    sub-01,ses-2,AD,sub-01/ses-2/t1.nii.gz,sub-01/ses-2/falff.nii.gz,73.0,F
    sub-02,,CN,/data/sub-02/t1.nii,/data/sub-02/falff.nii,68,M
    sub-03,,,sub-03/t1.nii.gz,sub-03/falff.nii.gz,,

* The first line is the header; columns may come in any order. Every cell is read as text and
  stripped of surrounding spaces; lines whose cells are all empty are ignored. The file must be
  UTF-8 (a byte-order mark is fine) and comma-separated.
* ``subject`` (required): a non-empty identifier.
* ``session`` (optional): a session identifier; a (subject, session) pair must be unique, so a
  subject with several sessions needs this column. Rows of a duplicated pair are all bad (which
  of them is right cannot be told).
* ``label`` (optional): the class. Empty, ``-1``, ``NA``, ``N/A``, ``nan`` or ``None`` (any case)
  mean *unlabelled* (stored as -1; such rows still serve self-supervised training). Labels are
  either all integers ``>= 0`` (``1.0`` counts as 1; ``1.5`` is an error), used as they are, or
  all class names such as ``AD``/``CN``, mapped to ``0..K-1`` in sorted (code point) order of
  the distinct names found in the *whole* manifest (so skipping a bad row never renumbers the
  classes), unless an explicit ``label_mapping`` (name -> integer) is given, in which case every
  label must be one of its names. The mapping used is recorded in :attr:`Manifest.label_mapping`.
* One path column per modality, named by the caller (``modalities=("t1", "falff")``): a NIfTI
  file (``.nii`` or ``.nii.gz``) holding one 3-D volume (a 4-D file with exactly one volume is
  accepted). Relative paths are relative to the manifest's folder; ``~`` is expanded.
* Any other column is a covariate (``age``, ``sex``, site, ...), kept per row as text and, in a
  :class:`Cohort`, as a :class:`pandas.DataFrame` column (numeric when every cell that is not
  missing, i.e. empty or ``NA``/``N/A``/``nan``/``None``, is a number).

Every problem is collected before anything is computed, each naming the manifest line, the
subject, the column and the file (:class:`Problem`). By default any problem stops the run with a
:class:`ManifestError` listing them all; ``on_bad_row="skip"`` (CLI ``--on-bad-row skip``) drops
the rows that have problems, optionally writes them to a report CSV, and goes on with the rest.

Checks on each volume (:func:`validate_volumes`): the file exists and is a NIfTI file that
nibabel can load *and* whose data can be read in full (a corrupt gzip stream or a truncated file
is reported, not raised); it is 3-D, or 4-D with a single volume; its affine is finite and
invertible; every voxel is finite (NaN and infinite voxels are counted); it is not constant (an
empty map); its field of view overlaps the target grid at all. With ``strict_grid=True`` (the
default) the modalities of one row must also share a voxel grid (shape equal, affines within
1e-3), since the paired volumes of a session are expected to be co-registered; with
``strict_grid=False`` each volume is resampled to the target grid on its own, which is correct
whenever every affine maps to MNI space.

Preprocessing
=============

:func:`preprocess_volume` (settings in :class:`Preprocessing`): read the volume as ``float32``
(scale factors applied), resample it with ``nilearn.image.resample_img`` onto the target grid
(:func:`~mmssl.data.grid.mni_grid`, by default 64³ voxels of 3 mm around the MNI152 brain, which
crops or pads as needed; voxels outside the source's field of view become 0), set every voxel
outside the brain mask to 0 and normalise the voxels inside the mask (z-score: mean 0, standard
deviation 1; or min-max to [0, 1]; or nothing). Volumes are assumed to be registered to MNI
space already; nothing here registers them.

Cache
=====

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
          the entries above and opened memory-mapped (``np.load(..., mmap_mode="r")``)

``<sha>`` is the SHA-256 of the source file's bytes, ``<settings>`` the first 20 hex digits of
:meth:`Preprocessing.key` (which covers the settings, the target grid, the mask file's content
and :data:`PREPROCESSING_VERSION`), ``<list key>`` a hash of the ordered list of entries. So a
rerun hashes the files and reuses everything; a file whose content changed (whatever its name)
is preprocessed again, and an unchanged file is never preprocessed again, even when the manifest
changes (only the cheap cohort array is rebuilt). Other settings use other folders. Every file
is written to a temporary name and renamed into place, so an interrupted run never leaves a
half-written entry. Upgrading nibabel, nilearn or scipy does not invalidate the cache; delete the
folder (or bump :data:`PREPROCESSING_VERSION` in code) to recompute, and to reclaim the space
of old cohort arrays.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, get_args

import numpy as np
import pandas as pd

from mmssl.data.grid import (
    TargetGrid,
    _require_nilearn,
    _world_bounds,
    mni_brain_mask,
    mni_grid,
    resample_kwargs,
)

__all__ = [
    "CACHE_DIR_NAME",
    "NIFTI_SUFFIXES",
    "PREPROCESSING_VERSION",
    "UNLABELLED",
    "Cohort",
    "Manifest",
    "ManifestError",
    "ManifestRow",
    "OnBadRow",
    "Preprocessing",
    "Problem",
    "load_cohort",
    "load_mask",
    "preprocess_volume",
    "read_manifest",
    "validate_volumes",
    "write_problem_report",
]

log = logging.getLogger(__name__)

#: Version of the preprocessing code; part of :meth:`Preprocessing.key`, bump it when the
#: output of :func:`preprocess_volume` changes for the same settings.
PREPROCESSING_VERSION = 1
#: The label of an unlabelled row.
UNLABELLED = -1
#: File name endings accepted for volumes.
NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
#: Name of the default cache folder, created beside the manifest.
CACHE_DIR_NAME = ".mmssl_cache"
#: What to do with rows that have problems.
OnBadRow = Literal["error", "skip"]

_RESERVED = ("subject", "session", "label")
_MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "none"})
_UNLABELLED_TOKENS = _MISSING_TOKENS | {"-1"}
_NORMALIZATIONS = ("zscore", "minmax", "none")
_INTERPOLATIONS = ("continuous", "linear", "nearest")
_AFFINE_TOL = 1e-3
_INFO_VERSION = 1
_SETTINGS_DIR_CHARS = 20
_REPORT_COLUMNS = ("line", "subject", "column", "file", "message")
_SKIP_HINT = ("Pass --on-bad-row skip (on_bad_row='skip') to exclude the bad rows and go on with "
              "the others.")


def _require_nibabel() -> Any:
    """Import and return ``nibabel``, with an installation hint when it is missing."""
    try:
        import nibabel
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("neuroimaging support needs nibabel and nilearn: pip install "
                          "'nibabel>=5' 'nilearn>=0.10'") from err
    return nibabel


def _one_line(err: BaseException) -> str:
    """``Type: message`` of an exception on a single line."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


# -------------------------------------------------------------------------------- problems


@dataclass
class Problem:
    """One problem with a manifest, a row or a volume.

    Attributes:
        line: line of the manifest (the header is line 1); 0 for the file as a whole.
        subject: the row's subject ("" when unknown).
        column: the column concerned ("" when none).
        file: the volume concerned, as relative to the manifest folder when inside it ("" when
            none).
        message: what is wrong.
        manifest: the manifest's file name, used by ``str()``.
    """

    line: int
    subject: str
    column: str
    file: str
    message: str
    manifest: str = "manifest"

    def __str__(self) -> str:
        """E.g. ``manifest.csv line 7 (subject sub-03, column falff, file sub-03/falff.nii.gz):
        NaN voxels (12 of 51200)``."""
        where = self.manifest + (f" line {self.line}" if self.line > 0 else "")
        parts = [f"{name} {value}" for name, value in
                 (("subject", self.subject), ("column", self.column), ("file", self.file))
                 if value]
        if parts:
            where += f" ({', '.join(parts)})"
        return f"{where}: {self.message}"

    def as_row(self) -> dict[str, str | int]:
        """The report-CSV row: ``line``, ``subject``, ``column``, ``file``, ``message``."""
        return {"line": self.line, "subject": self.subject, "column": self.column,
                "file": self.file, "message": self.message}


class ManifestError(ValueError):
    """A manifest, or the volumes it lists, has problems; :attr:`problems` lists all of them.

    The message starts with ``N problem(s) in manifest PATH:``, lists every problem, one per
    line, and (when skipping rows can help) says that ``--on-bad-row skip`` excludes bad rows.
    """

    def __init__(self, problems: Sequence[Problem], manifest: Path | str, skippable: bool = True,
                 note: str = "") -> None:
        """Build the message from ``problems``; ``note`` is added before the skip hint."""
        self.problems = list(problems)
        self.manifest = Path(manifest)
        self.skippable = skippable
        self.note = note
        n = len(self.problems)
        lines = [f"{n} problem{'' if n == 1 else 's'} in manifest {self.manifest}:"]
        lines += [f"  - {p}" for p in self.problems]
        if note:
            lines.append(note)
        if skippable:
            lines.append(_SKIP_HINT)
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle support (exceptions cross process boundaries in data loaders)."""
        return (type(self), (self.problems, self.manifest, self.skippable, self.note))


def write_problem_report(path: Path, problems: Sequence[Problem]) -> None:
    """Write ``problems`` as CSV (``line,subject,column,file,message``), atomically.

    The file is written (with just the header when there is no problem) so that no stale
    report survives a clean run.
    """
    path = Path(path)

    def write(f: IO[str]) -> None:
        writer = csv.DictWriter(f, fieldnames=list(_REPORT_COLUMNS), lineterminator="\n")
        writer.writeheader()
        for p in problems:
            writer.writerow(p.as_row())

    _atomic_write(path, write, text=True)


# -------------------------------------------------------------------------------- manifest


@dataclass
class ManifestRow:
    """One usable row of a manifest.

    Attributes:
        line: the CSV line (the header is line 1).
        subject: the subject identifier.
        session: the session identifier ("" when the manifest has none).
        label: the class, ``-1`` when unlabelled.
        paths: modality -> absolute path of its volume.
        covariates: every other column -> the cell's text.
    """

    line: int
    subject: str
    session: str
    label: int
    paths: dict[str, Path]
    covariates: dict[str, str]


@dataclass
class Manifest:
    """A parsed manifest.

    Attributes:
        path: the absolute path of the CSV file.
        modalities: the path columns, in the order requested.
        rows: the rows without problems, in file order.
        label_mapping: class name -> integer when labels are names (given or derived), else
            ``None`` (integer labels, or none at all).
        covariate_columns: the other columns, in file order.
        problems: the problems of rows left out of :attr:`rows` (only with
            ``on_bad_row="skip"``; otherwise :func:`read_manifest` raises).
    """

    path: Path
    modalities: tuple[str, ...]
    rows: list[ManifestRow]
    label_mapping: dict[str, int] | None
    covariate_columns: list[str]
    problems: list[Problem] = field(default_factory=list)

    def display_path(self, path: Path) -> str:
        """``path`` relative to the manifest's folder when it lies inside it, else absolute."""
        return _display_path(path, self.path.parent)

    def covariate_frame(self) -> pd.DataFrame:
        """The covariates of :attr:`rows` as a DataFrame (index ``0..N-1``, file order).

        Cells that are empty or ``NA``, ``N/A``, ``nan``, ``None`` (any case) are missing. A
        column whose other cells all parse as numbers becomes ``float64`` (``NaN`` when
        missing); any other column keeps its text (``None`` when missing).
        """
        data: dict[str, Any] = {}
        for column in self.covariate_columns:
            cells = [row.covariates.get(column, "") for row in self.rows]
            present = [None if c.lower() in _MISSING_TOKENS else c for c in cells]
            numbers = [None if c is None else _to_float(c) for c in present]
            if all(n is not None or c is None for n, c in zip(numbers, present, strict=True)):
                data[column] = np.array([math.nan if n is None else n for n in numbers],
                                        dtype=np.float64)
            else:
                data[column] = pd.Series(present, dtype=object)
        return pd.DataFrame(data, index=pd.RangeIndex(len(self.rows)))


def _display_path(path: Path, base: Path) -> str:
    try:
        return Path(path).relative_to(base).as_posix()
    except ValueError:
        return str(path)


def _to_float(text: str) -> float | None:
    """``float(text)`` or ``None`` when ``text`` is not a number."""
    try:
        return float(text)
    except ValueError:
        return None


def _check_modalities(modalities: Sequence[str]) -> tuple[str, ...]:
    if isinstance(modalities, str):
        raise TypeError(f"modalities must be a sequence of column names such as ('t1', 'falff'),"
                        f" not the string {modalities!r}")
    mods = tuple(str(m).strip() for m in modalities)
    if not mods or any(not m for m in mods):
        raise ValueError(f"modalities must be non-empty column names, got {tuple(modalities)!r}")
    if len(set(mods)) != len(mods):
        raise ValueError(f"modalities must be distinct, got {mods!r}")
    reserved = [m for m in mods if m in _RESERVED]
    if reserved:
        raise ValueError(f"{', '.join(reserved)} cannot be a modality: subject, session and label"
                         f" are reserved manifest columns")
    return mods


def _check_mapping(label_mapping: Mapping[str, int] | None) -> dict[str, int] | None:
    if label_mapping is None:
        return None
    out: dict[str, int] = {}
    for name, value in label_mapping.items():
        key = str(name).strip()
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise ValueError(f"label_mapping must map class names to integers >= 0; "
                             f"{name!r} -> {value!r}")
        if not key or key.lower() in _UNLABELLED_TOKENS:
            raise ValueError(f"label_mapping key {name!r} is reserved for unlabelled rows")
        out[key] = int(value)
    if not out:
        raise ValueError("label_mapping is empty; pass None to derive it from the labels")
    return out


def _read_records(path: Path, name: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and ``(line, cells)`` records of a CSV file; fatal problems raise."""

    def fatal(message: str, line: int = 0) -> ManifestError:
        return ManifestError([Problem(line, "", "", "", message, name)], path, skippable=False)

    if not path.exists():
        raise fatal(f"manifest not found: {path}")
    if not path.is_file():
        raise fatal(f"{path} is not a file")
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            records: list[tuple[int, list[str]]] = []
            last = 0
            for cells in reader:
                records.append((last + 1, cells))
                last = reader.line_num
    except UnicodeDecodeError as err:
        with path.open("rb") as raw:
            magic = raw.read(4)
        kind = (" (it looks like an Excel workbook or another zip file: export it as CSV)"
                if magic.startswith(b"PK") else
                " (it looks gzip-compressed: decompress it)" if magic.startswith(b"\x1f\x8b")
                else "")
        raise fatal(f"not a text CSV file: it is not UTF-8 ({err.reason} at byte "
                    f"{err.start}){kind}") from err
    except csv.Error as err:
        raise fatal(f"not a valid CSV file (line {last + 1}: {err})", last + 1) from err
    except OSError as err:
        raise fatal(f"cannot read the manifest ({_one_line(err)})") from err
    if not records or not any(c.strip() for c in records[0][1]):
        raise fatal("the first line is empty; expected a header such as "
                    "subject,session,label,t1,falff", 1)
    header = [c.strip() for c in records[0][1]]
    return header, records[1:]


def _closest(name: str, columns: Sequence[str]) -> str:
    """A hint naming a column equal to ``name`` up to case, if any."""
    hits = [c for c in columns if c.lower() == name.lower()]
    return f" (did you mean {hits[0]!r}? column names are case-sensitive)" if hits else ""


@dataclass
class _Candidate:
    """A data row as parsed, with its problems; ``label_text`` is resolved later."""

    line: int
    subject: str
    session: str
    label_text: str
    paths: dict[str, Path]
    covariates: dict[str, str]
    problems: list[Problem]
    label: int = UNLABELLED
    complete: bool = True  # False when the row has the wrong number of fields


@dataclass
class _Parsed:
    manifest: Manifest
    candidates: list[_Candidate]


def _parse_manifest(path: Path, modalities: Sequence[str],
                    label_mapping: Mapping[str, int] | None) -> _Parsed:
    """Parse and check a manifest; fatal problems raise, row problems stay on the candidates."""
    path = Path(os.path.abspath(Path(path).expanduser()))
    mods = _check_modalities(modalities)
    mapping = _check_mapping(label_mapping)
    name = path.name
    header, records = _read_records(path, name)

    fatal: list[Problem] = []
    present = [c for c in header if c]
    listed = ", ".join(present)
    dupes = sorted({c for c in present if present.count(c) > 1})
    if dupes:
        fatal.append(Problem(1, "", dupes[0], "", f"duplicate column name(s) "
                             f"{', '.join(dupes)} in the header", name))
    if "subject" not in header:
        hint = _closest("subject", present)
        if len(present) == 1 and any(sep in present[0] for sep in ";\t|"):
            hint += (" (the header is a single column: is the file separated by something "
                     "other than commas?)")
        fatal.append(Problem(1, "", "subject", "", f"no 'subject' column; the manifest's "
                             f"columns are: {listed}{hint}", name))
    for m in mods:
        if m not in header:
            fatal.append(Problem(1, "", m, "", f"no column {m!r} for modality {m}; the "
                                 f"manifest's columns are: {listed}{_closest(m, present)}",
                                 name))
    if fatal:
        raise ManifestError(fatal, path, skippable=False)
    unnamed = [i + 1 for i, c in enumerate(header) if not c]
    if unnamed:
        log.warning("%s: ignoring %d column(s) without a name (position %s)", path,
                    len(unnamed), ", ".join(map(str, unnamed)))
    index = {c: i for i, c in enumerate(header) if c}
    covariate_columns = [c for c in header if c and c not in _RESERVED and c not in mods]
    base = path.parent

    candidates: list[_Candidate] = []
    for line, cells in records:
        if not any(c.strip() for c in cells):
            continue
        cells = [c.strip() for c in cells]
        subject = cells[index["subject"]] if index["subject"] < len(cells) else ""
        if len(cells) != len(header):
            candidates.append(_Candidate(line, subject, "", "", {}, {}, [Problem(
                line, subject, "", "", f"{len(cells)} fields, but the header has "
                f"{len(header)} (a stray or missing comma? quote cells that contain commas)",
                name)], complete=False))
            continue
        problems: list[Problem] = []
        if not subject:
            problems.append(Problem(line, "", "subject", "", "empty subject", name))
        session = cells[index["session"]] if "session" in index else ""
        label_text = cells[index["label"]] if "label" in index else ""
        paths: dict[str, Path] = {}
        for m in mods:
            cell = cells[index[m]]
            if not cell:
                problems.append(Problem(line, subject, m, "", f"empty path for modality {m}",
                                        name))
                continue
            p = Path(cell).expanduser()
            resolved = Path(os.path.normpath(p if p.is_absolute() else base / p))
            twin = next((other for other, q in paths.items() if q == resolved), None)
            if twin is not None:
                problems.append(Problem(line, subject, m, _display_path(resolved, base),
                                        f"same file as column {twin}; each modality needs its "
                                        f"own volume", name))
            paths[m] = resolved
        covariates = {c: cells[index[c]] for c in covariate_columns}
        candidates.append(_Candidate(line, subject, session, label_text, paths, covariates,
                                     problems))

    _check_duplicates(candidates, "session" in index, name)
    used_mapping = _resolve_labels(candidates, mapping, name)
    rows = [ManifestRow(c.line, c.subject, c.session, c.label, c.paths, c.covariates)
            for c in candidates if not c.problems]
    problems = [p for c in candidates for p in c.problems]
    manifest = Manifest(path=path, modalities=mods, rows=rows, label_mapping=used_mapping,
                        covariate_columns=covariate_columns, problems=problems)
    return _Parsed(manifest, candidates)


def _check_duplicates(candidates: Sequence[_Candidate], has_session: bool, name: str) -> None:
    """Flag every row of a (subject, session) pair that occurs more than once."""
    groups: dict[tuple[str, str], list[_Candidate]] = defaultdict(list)
    for c in candidates:
        if c.subject and c.complete:
            groups[(c.subject, c.session)].append(c)
    for (subject, session), members in groups.items():
        if len(members) < 2:
            continue
        lines = [str(m.line) for m in members]
        joined = ", ".join(lines[:-1]) + f" and {lines[-1]}"
        what = (f"subject {subject!r} with session {session!r}" if session
                else f"subject {subject!r}" + (" with an empty session" if has_session else ""))
        fix = "" if has_session else "; add a session column to tell sessions apart"
        for m in members:
            m.problems.append(Problem(m.line, subject, "session" if has_session else "subject",
                                      "", f"duplicate {what} on lines {joined}{fix}", name))


def _resolve_labels(candidates: Sequence[_Candidate], mapping: dict[str, int] | None,
                    name: str) -> dict[str, int] | None:
    """Set ``label`` on every candidate and return the mapping in use (see the module doc)."""

    def bad(c: _Candidate, message: str) -> None:
        c.problems.append(Problem(c.line, c.subject, "label", "", message, name))

    labelled = [c for c in candidates if c.label_text.lower() not in _UNLABELLED_TOKENS]
    if mapping is not None:
        names = ", ".join(sorted(mapping))
        for c in labelled:
            if c.label_text in mapping:
                c.label = mapping[c.label_text]
            else:
                bad(c, f"unknown label {c.label_text!r}; mapping has {names}")
        return dict(mapping)

    numeric = {id(c): _to_float(c.label_text) for c in labelled}
    names_found = sorted({c.label_text for c in labelled if numeric[id(c)] is None})
    if names_found:
        derived = {n: i for i, n in enumerate(names_found)}
        for c in labelled:
            if numeric[id(c)] is None:
                c.label = derived[c.label_text]
            else:
                bad(c, f"label {c.label_text!r} is a number while other labels are class names "
                       f"({', '.join(names_found)}); use one kind, or pass a label mapping")
        return derived
    for c in labelled:
        value = numeric[id(c)]
        assert value is not None
        if not value.is_integer():
            bad(c, f"non-integer numeric label {c.label_text!r}; labels must be integers >= 0, "
                   f"class names, or empty/-1 for unlabelled")
        elif value < 0:
            bad(c, f"negative label {c.label_text!r}; classes are integers >= 0 and -1 (or an "
                   f"empty cell) marks an unlabelled row")
        else:
            c.label = int(value)
    return None


def read_manifest(path: Path, modalities: Sequence[str], *,
                  label_mapping: Mapping[str, int] | None = None,
                  on_bad_row: OnBadRow = "error") -> Manifest:
    """Read and check a manifest CSV (format in the module docstring); volumes are not opened.

    Args:
        path: the CSV file.
        modalities: the path columns to use, e.g. ``("t1", "falff")``.
        label_mapping: class name -> integer; by default class names are numbered in sorted
            order and integer labels are used as they are.
        on_bad_row: ``"error"`` raises on any problem; ``"skip"`` leaves rows with problems out
            of :attr:`Manifest.rows` and lists their problems in :attr:`Manifest.problems`.

    Returns:
        The manifest.

    Raises:
        ManifestError: the file is missing, unreadable or not a CSV, has no ``subject`` column,
            lacks a modality's column or has duplicate column names (always), or, with
            ``on_bad_row="error"``, any row has a problem (empty subject or path, duplicate
            subject/session, unknown or non-integer label, wrong number of fields). All
            problems are listed.
    """
    _check_on_bad_row(on_bad_row)
    manifest = _parse_manifest(path, modalities, label_mapping).manifest
    if manifest.problems and on_bad_row == "error":
        raise ManifestError(manifest.problems, manifest.path)
    return manifest


def _check_on_bad_row(on_bad_row: str) -> None:
    if on_bad_row not in get_args(OnBadRow):
        raise ValueError(f"on_bad_row must be one of {', '.join(get_args(OnBadRow))}, got "
                         f"{on_bad_row!r}")


# --------------------------------------------------------------------------------- volumes


@dataclass(frozen=True)
class _VolumeInfo:
    """What validation needs to know about one volume file (JSON-cacheable)."""

    shape: tuple[int, ...]
    affine: tuple[float, ...]
    dtype: str
    n_nan: int | None = None
    n_inf: int | None = None
    minimum: float | None = None
    maximum: float | None = None

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.shape[:3]

    @property
    def affine_matrix(self) -> np.ndarray:
        return np.asarray(self.affine, dtype=np.float64).reshape(4, 4)

    def to_json(self) -> dict[str, Any]:
        return {"version": _INFO_VERSION, "shape": list(self.shape), "affine": list(self.affine),
                "dtype": self.dtype, "n_nan": self.n_nan, "n_inf": self.n_inf,
                "minimum": self.minimum, "maximum": self.maximum}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> _VolumeInfo:
        if data.get("version") != _INFO_VERSION:
            raise ValueError(f"info version {data.get('version')!r} != {_INFO_VERSION}")
        affine = tuple(float(v) for v in data["affine"])
        if len(affine) != 16:
            raise ValueError("affine must have 16 entries")
        return cls(shape=tuple(int(s) for s in data["shape"]), affine=affine,
                   dtype=str(data["dtype"]),
                   n_nan=None if data["n_nan"] is None else int(data["n_nan"]),
                   n_inf=None if data["n_inf"] is None else int(data["n_inf"]),
                   minimum=None if data["minimum"] is None else float(data["minimum"]),
                   maximum=None if data["maximum"] is None else float(data["maximum"]))


class _VolumeUnreadable(Exception):
    """A volume could not be read; the message is the problem's text."""


def _is_nifti_name(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _extra_volumes(shape: Sequence[int]) -> int:
    """How many 3-D volumes a data shape holds (1 for 3-D, product of the extra dims else)."""
    return int(np.prod(shape[3:], dtype=np.int64)) if len(shape) > 3 else 1


def _inspect_volume(path: Path) -> _VolumeInfo:
    """Load a NIfTI file and read all of its data; raises :class:`_VolumeUnreadable`."""
    nib = _require_nibabel()
    try:
        img = nib.load(str(path), mmap=False)
        shape = tuple(int(s) for s in img.shape)
        affine = tuple(float(v) for v in np.asarray(img.affine, dtype=np.float64).ravel())
        dtype = str(img.get_data_dtype())
        if len(shape) < 3 or _extra_volumes(shape) != 1:
            # The shape alone is a problem: do not read (possibly very large) 4-D data.
            return _VolumeInfo(shape=shape, affine=affine, dtype=dtype)
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # nibabel raises ImageFileError, EOFError, OSError, zlib.error...
        raise _VolumeUnreadable(f"cannot read the volume ({_one_line(err)}): a corrupt or "
                                f"truncated file, or not a NIfTI file?") from err
    if data.dtype.kind not in "biuf":
        raise _VolumeUnreadable(f"unsupported voxel type {data.dtype} (expected real numbers)")
    if data.dtype.kind == "f":
        nan_mask = np.isnan(data)
        inf_mask = np.isinf(data)
        n_nan, n_inf = int(nan_mask.sum()), int(inf_mask.sum())
        finite = data[~(nan_mask | inf_mask)] if n_nan or n_inf else data
    else:
        n_nan = n_inf = 0
        finite = data
    lo = float(finite.min()) if finite.size else None
    hi = float(finite.max()) if finite.size else None
    return _VolumeInfo(shape=shape, affine=affine, dtype=dtype, n_nan=n_nan, n_inf=n_inf,
                       minimum=lo, maximum=hi)


def _content_problems(info: _VolumeInfo, grid: TargetGrid) -> list[str]:
    """The problems of one volume by itself (shape, affine, values, field of view)."""
    out: list[str] = []
    shape = info.shape
    if len(shape) < 3:
        out.append(f"{len(shape)}-D image of shape {shape}; expected a 3-D volume")
        return out
    n = _extra_volumes(shape)
    if n != 1:
        if len(shape) == 4:
            out.append(f"4-D image with {shape[3]} volumes (shape {shape}); expected one 3-D "
                       f"volume (a 4-D file must hold exactly one volume)")
        else:
            out.append(f"{len(shape)}-D image of shape {shape} ({n} volumes); expected one 3-D "
                       f"volume")
        return out
    affine = info.affine_matrix
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        out.append(f"invalid affine (not finite or not invertible): {affine.tolist()}")
        return out
    total = int(np.prod(shape, dtype=np.int64))
    if info.n_nan or info.n_inf:
        if info.n_nan and info.n_inf:
            out.append(f"non-finite voxels: {info.n_nan} NaN and {info.n_inf} infinite "
                       f"(of {total})")
        elif info.n_nan:
            out.append(f"NaN voxels ({info.n_nan} of {total})")
        else:
            out.append(f"infinite voxels ({info.n_inf} of {total})")
    if info.minimum is None:
        pass  # no finite voxel at all: already reported as non-finite voxels
    elif info.minimum == info.maximum:
        out.append(f"constant volume (every voxel is {info.minimum:g}): an empty or failed map?")
    lo, hi = _world_bounds(affine, shape[:3])
    glo, ghi = grid.world_bounds()
    if np.any(hi <= glo) or np.any(ghi <= lo):
        out.append(f"its field of view ({_fmt_box(lo, hi)}) does not overlap the target grid "
                   f"({_fmt_box(glo, ghi)}); is the volume registered to MNI space (check its "
                   f"affine: sform/qform)?")
    return out


def _fmt_box(lo: np.ndarray, hi: np.ndarray) -> str:
    return ", ".join(f"{axis} {a:.0f}..{b:.0f}" for axis, a, b in zip("xyz", lo, hi, strict=True)
                     ) + " mm"


def _grid_mismatch(info: _VolumeInfo, ref: _VolumeInfo, ref_modality: str) -> str | None:
    """Why ``info``'s voxel grid differs from ``ref``'s, or ``None`` when it does not."""
    if info.spatial_shape != ref.spatial_shape:
        what = f"shape {info.spatial_shape} differs from {ref_modality}'s {ref.spatial_shape}"
    else:
        diff = float(np.max(np.abs(info.affine_matrix - ref.affine_matrix)))
        if diff <= _AFFINE_TOL:
            return None
        what = (f"affine differs from {ref_modality}'s (by up to {diff:.4g}; tolerance "
                f"{_AFFINE_TOL:g})")
    return (f"voxel grid mismatch: {what}. The modalities of a row are expected to be "
            f"co-registered on one voxel grid (strict_grid=True); pass strict_grid=False "
            f"to resample each of them to the target grid on its own")


#: The outcome of inspecting one path: its facts, or the text of its problem.
_Inspection = _VolumeInfo | str


def _row_volume_problems(line: int, subject: str, paths: Mapping[str, Path],
                         modalities: Sequence[str], inspections: Mapping[Path, _Inspection],
                         grid: TargetGrid, strict_grid: bool, base: Path,
                         name: str) -> list[Problem]:
    """The volume problems of one row, in modality order."""
    problems: list[Problem] = []
    usable: list[tuple[str, _VolumeInfo]] = []
    for m in modalities:
        if m not in paths:
            continue
        shown = _display_path(paths[m], base)
        result = inspections[paths[m]]
        messages = [result] if isinstance(result, str) else _content_problems(result, grid)
        problems += [Problem(line, subject, m, shown, msg, name) for msg in messages]
        if isinstance(result, _VolumeInfo) and len(result.shape) >= 3 \
                and _extra_volumes(result.shape) == 1:
            usable.append((m, result))
    if strict_grid and len(usable) > 1:
        ref_m, ref = usable[0]
        for m, info in usable[1:]:
            msg = _grid_mismatch(info, ref, ref_m)
            if msg:
                problems.append(Problem(line, subject, m, _display_path(paths[m], base), msg,
                                        name))
    return problems


def _inspect_path(path: Path) -> _Inspection:
    """Inspect one volume without any cache."""
    if not path.exists():
        return f"file not found: {path}"
    if not path.is_file():
        return f"not a file: {path}"
    if not _is_nifti_name(path):
        return f"unsupported file type {path.name!r}; expected a NIfTI file (.nii or .nii.gz)"
    try:
        return _inspect_volume(path)
    except _VolumeUnreadable as err:
        return str(err)


def validate_volumes(manifest: Manifest, grid: TargetGrid, *,
                     strict_grid: bool = True) -> list[Problem]:
    """Open every volume of ``manifest.rows`` and list every problem (none: an empty list).

    Per row and modality: the file exists; it is ``.nii``/``.nii.gz`` and loads, data included
    (a corrupt gzip stream or a truncated file is a problem, not an exception); it is 3-D or
    4-D with one volume; its affine is valid; all voxels are finite (NaN/inf counted); it is
    not constant; its field of view overlaps ``grid``. With ``strict_grid`` the modalities of a
    row must share one voxel grid (shape equal, affine entries within 1e-3): paired volumes of
    one session are expected to be co-registered. Every volume is resampled onto ``grid``
    anyway, so ``strict_grid=False`` is sound when each affine maps to MNI space.

    Args:
        manifest: a manifest from :func:`read_manifest`.
        grid: the target grid (for the field-of-view check).
        strict_grid: whether a row's modalities must share a voxel grid.

    Returns:
        The problems, in row then modality order.
    """
    inspections: dict[Path, _Inspection] = {}
    for row in manifest.rows:
        for p in row.paths.values():
            if p not in inspections:
                inspections[p] = _inspect_path(p)
    problems: list[Problem] = []
    for row in manifest.rows:
        problems += _row_volume_problems(row.line, row.subject, row.paths, manifest.modalities,
                                         inspections, grid, strict_grid, manifest.path.parent,
                                         manifest.path.name)
    return problems


# ---------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class Preprocessing:
    """How volumes are brought onto a common grid.

    Attributes:
        voxel_size: edge of the isotropic target voxels in mm (:func:`~mmssl.data.grid.mni_grid`).
        shape: the target grid's shape.
        mask: ``"mni152"`` (nilearn's MNI152 brain mask on the grid), ``"none"``, or the path of
            a NIfTI mask in MNI space (resampled nearest-neighbour; voxels > 0.5 are inside; a
            relative path is taken relative to the current directory and stored absolute).
        normalization: ``"zscore"`` (mean 0, std 1 over the mask's voxels), ``"minmax"`` (to
            [0, 1] over the mask) or ``"none"``; with no mask, over the whole grid.
        interpolation: ``"continuous"`` (cubic spline), ``"linear"`` or ``"nearest"``, as in
            ``nilearn.image.resample_img``.
    """

    voxel_size: float = 3.0
    shape: tuple[int, int, int] = (64, 64, 64)
    mask: str = "mni152"
    normalization: str = "zscore"
    interpolation: str = "continuous"

    def __post_init__(self) -> None:
        """Validate the settings and normalise their types."""
        v = float(self.voxel_size)
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"voxel_size must be a positive number of mm, got "
                             f"{self.voxel_size!r}")
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape must be three positive integers, got {self.shape!r}")
        if self.normalization not in _NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {', '.join(_NORMALIZATIONS)}, got "
                             f"{self.normalization!r}")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {', '.join(_INTERPOLATIONS)}, got "
                             f"{self.interpolation!r}")
        mask = str(self.mask)
        if mask not in ("mni152", "none"):
            if not mask.strip():
                raise ValueError("mask must be 'mni152', 'none' or the path of a NIfTI mask")
            mask = os.path.abspath(Path(mask).expanduser())
        object.__setattr__(self, "voxel_size", v)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "mask", mask)

    def grid(self) -> TargetGrid:
        """The target grid: ``mni_grid(voxel_size, shape)``."""
        return mni_grid(self.voxel_size, self.shape)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-serialisable dict."""
        return {"voxel_size": self.voxel_size, "shape": list(self.shape), "mask": self.mask,
                "normalization": self.normalization, "interpolation": self.interpolation}

    def key(self) -> str:
        """A stable SHA-256 (hex) of everything that determines a preprocessed volume.

        Covers :data:`PREPROCESSING_VERSION`, the settings, the target grid's affine and shape,
        and, for a mask file, the SHA-256 of its bytes instead of its path.

        Raises:
            FileNotFoundError: the mask file does not exist.
        """
        mask = self.mask
        if mask not in ("mni152", "none"):
            mask_path = Path(mask)
            if not mask_path.is_file():
                raise FileNotFoundError(f"mask file {mask_path} does not exist (settings.mask "
                                        f"must be 'mni152', 'none' or a NIfTI mask)")
            mask = "sha256:" + _sha256_file(mask_path)
        payload = {"preprocessing_version": PREPROCESSING_VERSION, **self.to_dict(),
                   "mask": mask, "grid": self.grid().to_dict()}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def load_mask(settings: Preprocessing, grid: TargetGrid) -> np.ndarray | None:
    """The brain mask that ``settings`` asks for, on ``grid`` (``None`` for ``"none"``).

    Raises:
        ValueError: a mask file cannot be read, is not 3-D, or has no voxel inside the grid.
    """
    if settings.mask == "none":
        return None
    if settings.mask == "mni152":
        return mni_brain_mask(grid)
    nib, nilearn = _require_nibabel(), _require_nilearn()
    path = Path(settings.mask)
    try:
        img = nib.load(str(path), mmap=False)
        data = np.asanyarray(img.dataobj)
    except Exception as err:
        raise ValueError(f"mask {path}: cannot read it ({_one_line(err)})") from err
    if data.ndim < 3 or _extra_volumes(data.shape) != 1:
        raise ValueError(f"mask {path}: shape {data.shape}; expected a 3-D volume")
    img3 = nib.Nifti1Image(data.reshape(data.shape[:3]).astype(np.float32), img.affine)
    resampled = nilearn.image.resample_img(img3, target_affine=grid.affine,
                                           target_shape=grid.shape, interpolation="nearest",
                                           **resample_kwargs())
    mask = np.asanyarray(resampled.dataobj) > 0.5
    if not mask.any():
        raise ValueError(f"mask {path} has no voxel inside the target grid; is it in MNI space?")
    mask.setflags(write=False)
    return mask


def preprocess_volume(path: Path, grid: TargetGrid, mask: np.ndarray | None,
                      settings: Preprocessing) -> np.ndarray:
    """Load a volume, resample it onto ``grid``, mask it and normalise it (module docstring).

    Args:
        path: a NIfTI file with one 3-D volume (4-D with a single volume is accepted).
        grid: the target grid.
        mask: ``bool`` of shape ``grid.shape`` or ``None``; voxels outside it become 0 and the
            normalisation statistics come from the voxels inside it (all voxels when ``None``).
        settings: ``interpolation`` and ``normalization`` are used here.

    Returns:
        ``float32`` array of shape ``grid.shape``. When the masked voxels are constant, z-score
        gives 0 there and min-max 0 (with a warning).

    Raises:
        ValueError: the file cannot be read, holds several volumes or non-finite voxels, or the
            mask has the wrong shape. The message names the file.
    """
    nib, nilearn = _require_nibabel(), _require_nilearn()
    path = Path(path)
    if mask is not None and tuple(mask.shape) != grid.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from the grid's {grid.shape}")
    try:
        img = nib.load(str(path), mmap=False)
        data = img.get_fdata(dtype=np.float32)
    except Exception as err:
        raise ValueError(f"{path}: cannot read the volume ({_one_line(err)})") from err
    if data.ndim < 3 or _extra_volumes(data.shape) != 1:
        raise ValueError(f"{path}: shape {data.shape}; expected one 3-D volume")
    data = data.reshape(data.shape[:3])
    if not np.all(np.isfinite(data)):
        raise ValueError(f"{path}: {int(np.sum(~np.isfinite(data)))} non-finite voxels")
    # A fresh float32 image: resampling keeps the input dtype, which would round integer T1s.
    source = nib.Nifti1Image(data, np.asarray(img.affine, dtype=np.float64))
    resampled = nilearn.image.resample_img(source, target_affine=grid.affine,
                                           target_shape=grid.shape,
                                           interpolation=settings.interpolation,
                                           **resample_kwargs())
    out = np.array(resampled.dataobj, dtype=np.float32)
    inside = np.ones(grid.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    out[~inside] = 0.0
    values = out[inside].astype(np.float64)
    if settings.normalization == "none" or values.size == 0:
        return out
    if settings.normalization == "zscore":
        mean, std = float(values.mean()), float(values.std())
        if std > 1e-12 * max(1.0, abs(mean)):
            out[inside] = ((values - mean) / std).astype(np.float32)
        else:
            log.warning("%s is constant inside the mask after resampling; z-scored to 0", path)
            out[inside] = 0.0
    else:  # minmax
        lo, hi = float(values.min()), float(values.max())
        if hi > lo:
            out[inside] = ((values - lo) / (hi - lo)).astype(np.float32)
        else:
            log.warning("%s is constant inside the mask after resampling; scaled to 0", path)
            out[inside] = 0.0
    return out


# ------------------------------------------------------------------------------------ cache


def _sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write(path: Path, write: Callable[[IO[Any]], None], *, text: bool = False) -> None:
    """Write ``path`` through ``write(file)`` on a temporary file, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        f: IO[Any]
        with (os.fdopen(fd, "w", newline="") if text else os.fdopen(fd, "wb")) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    _atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def _atomic_save_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=1, sort_keys=True)

    def write(f: IO[Any]) -> None:
        f.write(text)

    _atomic_write(path, write, text=True)


def _load_npy(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
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


class _Steps:
    """Optional rich progress bars."""

    def __init__(self, progress: Any | None) -> None:
        self.progress = progress

    @contextlib.contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[[], None]]:
        if self.progress is None:
            yield lambda: None
            return
        bar = self.progress
        task_id = bar.add_task(description, total=total)
        yield lambda: bar.advance(task_id)
        bar.update(task_id, completed=total)


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[_Steps]:
    if not enabled:
        yield _Steps(None)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn()) as bar:
        yield _Steps(bar)


@dataclass
class Cohort:
    """Preprocessed, validated volumes of a manifest's usable rows.

    Attributes:
        manifest: the manifest restricted to the kept rows (row ``i`` is item ``i``).
        volumes: modality -> read-only memory-mapped ``float32`` array ``(N, *grid.shape)``.
        labels: ``int64`` ``(N,)``, -1 when unlabelled.
        subjects: ``str`` ``(N,)``.
        sessions: ``str`` ``(N,)`` ("" when the manifest has no session).
        grid: the target grid.
        mask: the brain mask on the grid (``bool``), or ``None``.
        skipped: the problems of the rows left out (with ``on_bad_row="skip"``).
        label_mapping: class name -> integer, or ``None`` for integer labels.
        covariates: the covariate columns of the kept rows (index ``0..N-1``).
        settings: the preprocessing settings.
        cache_dir: where the cache lives.
    """

    manifest: Manifest
    volumes: dict[str, np.ndarray]
    labels: np.ndarray
    subjects: np.ndarray
    sessions: np.ndarray
    grid: TargetGrid
    mask: np.ndarray | None
    skipped: list[Problem]
    label_mapping: dict[str, int] | None
    covariates: pd.DataFrame
    settings: Preprocessing
    cache_dir: Path

    def __len__(self) -> int:
        """Number of rows (subjects × sessions)."""
        return len(self.labels)


class _Cache:
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

    def read_info(self, sha: str) -> _VolumeInfo | None:
        path = self.info_path(sha)
        if not path.is_file():
            return None
        try:
            return _VolumeInfo.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("cache file %s is unreadable (%s); re-reading the volume", path, err)
            return None

    def write_info(self, sha: str, info: _VolumeInfo) -> None:
        _atomic_save_json(self.info_path(sha), info.to_json())


def _inspect_cached(paths: Sequence[Path], cache: _Cache, steps: _Steps
                    ) -> tuple[dict[Path, _Inspection], dict[Path, str]]:
    """Hash every file and inspect it, reusing cached facts: ``(inspections, sha by path)``."""
    inspections: dict[Path, _Inspection] = {}
    shas: dict[Path, str] = {}
    with steps.task("Hashing volumes", len(paths)) as advance:
        for p in paths:
            if p.is_file() and _is_nifti_name(p):
                try:
                    shas[p] = _sha256_file(p)
                except OSError as err:
                    inspections[p] = f"cannot read the file ({_one_line(err)})"
            else:
                inspections[p] = _inspect_path(p)
            advance()
    todo = [p for p in paths if p in shas]
    with steps.task("Checking volumes", len(todo)) as advance:
        for p in todo:
            info = cache.read_info(shas[p])
            if info is None:
                try:
                    info = _inspect_volume(p)
                except _VolumeUnreadable as err:
                    inspections[p] = str(err)
                    advance()
                    continue
                cache.write_info(shas[p], info)
            inspections[p] = info
            advance()
    return inspections, shas


def load_cohort(manifest_path: Path, modalities: Sequence[str], *,
                settings: Preprocessing | None = None, cache_dir: Path | None = None,
                on_bad_row: OnBadRow = "error", report_path: Path | None = None,
                label_mapping: Mapping[str, int] | None = None, progress: bool = True,
                strict_grid: bool = True) -> Cohort:
    """Read, validate, preprocess (with a cache) and stack a cohort's paired volumes.

    Everything is checked before anything is preprocessed: the manifest, then every volume of
    every row (rows with manifest problems included, so one run lists every problem).

    Args:
        manifest_path: the manifest CSV (format in the module docstring).
        modalities: the path columns, e.g. ``("t1", "falff")``.
        settings: preprocessing settings (default :class:`Preprocessing()`).
        cache_dir: the cache folder (default ``<manifest folder>/.mmssl_cache``).
        on_bad_row: ``"error"`` raises :class:`ManifestError` listing every problem;
            ``"skip"`` drops rows with any problem, logs a warning and goes on.
        report_path: where to write the row problems as CSV (``line,subject,column,file,
            message``), in either mode; written (header only) even when there is none.
        label_mapping: class name -> integer (see :func:`read_manifest`).
        progress: show rich progress bars.
        strict_grid: require a row's modalities to share a voxel grid (:func:`validate_volumes`).

    Returns:
        The cohort; its volumes are memory-mapped arrays in the cache.

    Raises:
        ManifestError: problems with ``on_bad_row="error"``, or no usable row left, or a problem
            with the manifest as a whole.
        ValueError: invalid arguments or mask.
        OSError: the cache folder cannot be written.
    """
    _check_on_bad_row(on_bad_row)
    settings = Preprocessing() if settings is None else settings
    grid = settings.grid()
    mask = load_mask(settings, grid)
    parsed = _parse_manifest(Path(manifest_path), modalities, label_mapping)
    manifest = parsed.manifest
    root = (Path(cache_dir).expanduser() if cache_dir is not None
            else manifest.path.parent / CACHE_DIR_NAME)
    settings_key = settings.key()
    cache = _Cache(Path(os.path.abspath(root)), settings_key)
    name, base = manifest.path.name, manifest.path.parent

    with _progress(progress) as steps:
        paths = list(dict.fromkeys(p for c in parsed.candidates for p in c.paths.values()))
        inspections, shas = _inspect_cached(paths, cache, steps)
        for c in parsed.candidates:
            c.problems += _row_volume_problems(c.line, c.subject, c.paths, manifest.modalities,
                                               inspections, grid, strict_grid, base, name)
        problems = [p for c in parsed.candidates for p in c.problems]
        kept = [c for c in parsed.candidates if not c.problems]
        if report_path is not None:
            write_problem_report(Path(report_path), problems)
        if problems and on_bad_row == "error":
            raise ManifestError(problems, manifest.path,
                                note=f"(also written to {report_path})" if report_path else "")
        if on_bad_row == "skip" and problems:
            log.warning("skipping %d of %d rows of %s with %d problem(s)%s",
                        len(parsed.candidates) - len(kept), len(parsed.candidates),
                        manifest.path, len(problems),
                        f"; see {report_path}" if report_path is not None else "")
        if not kept:
            raise ManifestError(problems, manifest.path, skippable=False,
                                note="No usable row is left." if problems
                                else "The manifest has no data rows.")

        todo = list(dict.fromkeys(shas[p] for c in kept for p in c.paths.values()))
        source = {shas[p]: p for p in reversed(paths) if p in shas}
        missing = [s for s in todo if _load_npy(cache.entry_path(s), grid.shape) is None]
        if missing and not cache.settings_path().is_file():
            _atomic_save_json(cache.settings_path(), {
                **settings.to_dict(), "key": settings_key, "grid": grid.to_dict(),
                "preprocessing_version": PREPROCESSING_VERSION})
        with steps.task("Preprocessing volumes", len(missing)) as advance:
            for sha in missing:
                volume = preprocess_volume(source[sha], grid, mask, settings)
                _atomic_save_npy(cache.entry_path(sha), volume)
                advance()

        volumes: dict[str, np.ndarray] = {}
        with steps.task("Assembling cohort arrays", len(manifest.modalities)) as advance:
            for m in manifest.modalities:
                keys = [shas[c.paths[m]] for c in kept]
                volumes[m] = _cohort_array(cache, m, keys, grid.shape)
                advance()

    rows = [ManifestRow(c.line, c.subject, c.session, c.label, c.paths, c.covariates)
            for c in kept]
    kept_manifest = Manifest(path=manifest.path, modalities=manifest.modalities, rows=rows,
                             label_mapping=manifest.label_mapping,
                             covariate_columns=list(manifest.covariate_columns), problems=[])
    return Cohort(
        manifest=kept_manifest,
        volumes=volumes,
        labels=np.array([r.label for r in rows], dtype=np.int64),
        subjects=np.array([r.subject for r in rows], dtype=str),
        sessions=np.array([r.session for r in rows], dtype=str),
        grid=grid,
        mask=mask,
        skipped=problems if on_bad_row == "skip" else [],
        label_mapping=manifest.label_mapping,
        covariates=kept_manifest.covariate_frame(),
        settings=settings,
        cache_dir=cache.root,
    )


def _cohort_array(cache: _Cache, modality: str, keys: Sequence[str],
                  shape: tuple[int, int, int]) -> np.ndarray:
    """The memory-mapped ``(N, *shape)`` stack of the entries ``keys``, built when missing."""
    path = cache.cohort_path(modality, keys)
    full = (len(keys), *shape)
    existing = _load_npy(path, full)
    if existing is not None:
        return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=full)
        for i, sha in enumerate(keys):
            entry = _load_npy(cache.entry_path(sha), shape)
            if entry is None:
                raise OSError(f"cache entry {cache.entry_path(sha)} vanished while assembling "
                              f"{path}")
            out[i] = entry
        out.flush()
        del out
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    loaded = _load_npy(path, full)
    if loaded is None:  # pragma: no cover - just written
        raise OSError(f"could not read back the cohort array {path}")
    return loaded
