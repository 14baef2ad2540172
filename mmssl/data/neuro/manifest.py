"""The manifest: one CSV row per scan session, checked row by row before anything runs.

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
  accepted). Relative paths are relative to the manifest's folder; ``~`` is expanded. An
  **empty cell means the modality is missing** for that session (e.g. no usable fMRI): it is
  not a problem, and :attr:`ManifestRow.paths` holds only the modalities present. A row whose
  every modality cell is empty is a problem ("no volume for any modality").
* Any other column is a covariate (``age``, ``sex``, site, ...), kept per row as text and, in a
  :class:`Cohort`, as a :class:`pandas.DataFrame` column (numeric when every cell that is not
  missing, i.e. empty or ``NA``/``N/A``/``nan``/``None``, is a number).

Every problem is collected before anything is computed, each naming the manifest line, the
subject, the column and the file (:class:`Problem`). By default any problem stops the run with a
:class:`ManifestError` listing them all; ``on_bad_row="skip"`` (CLI ``--on-bad-row skip``) drops
the rows that have problems, optionally writes them to a report CSV, and goes on with the rest.

Checks on each volume present (:func:`validate_volumes`): the file exists and is a NIfTI file that
nibabel can load *and* whose data can be read in full (a corrupt gzip stream or a truncated file
is reported, not raised); it is 3-D, or 4-D with a single volume; its affine is finite and
invertible; every voxel is finite (NaN and infinite voxels are counted); it is not constant (an
empty map); its field of view overlaps the target grid at all. With ``strict_grid=True`` (the
default) the modalities present in one row must also share a voxel grid (shape equal, affines within
1e-3), since the paired volumes of a session are expected to be co-registered; with
``strict_grid=False`` each volume is resampled to the target grid on its own, which is correct
whenever every affine maps to MNI space.

"""

from __future__ import annotations

import csv
import io as _io
import logging
import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd

from mmssl import io
from mmssl.errors import DataError

__all__ = [
    "NIFTI_SUFFIXES",
    "UNLABELLED",
    "Manifest",
    "ManifestError",
    "ManifestRow",
    "OnBadRow",
    "Problem",
    "display_path",
    "one_line",
    "check_on_bad_row",
    "parse_manifest",
    "read_manifest",
    "write_problem_report",
]

log = logging.getLogger(__name__)

#: The label of an unlabelled row.
UNLABELLED = -1
#: File name endings accepted for volumes.
NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
#: What to do with rows that have problems.
OnBadRow = Literal["error", "skip"]

_RESERVED = ("subject", "session", "label")
_MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "none"})
_UNLABELLED_TOKENS = _MISSING_TOKENS | {"-1"}
_REPORT_COLUMNS = ("line", "subject", "column", "file", "message")
_SKIP_HINT = ("Pass --on-bad-row skip (data.neuro.on_bad_row: skip) to exclude the bad rows and go "
              "on with the others.")


def one_line(err: BaseException) -> str:
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


class ManifestError(DataError):
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

    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(_REPORT_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for p in problems:
        writer.writerow(p.as_row())
    io.write_text(path, buffer.getvalue())


# -------------------------------------------------------------------------------- manifest


@dataclass
class ManifestRow:
    """One usable row of a manifest.

    Attributes:
        line: the CSV line (the header is line 1).
        subject: the subject identifier.
        session: the session identifier ("" when the manifest has none).
        label: the class, ``-1`` when unlabelled.
        paths: modality -> absolute path of its volume, for the modalities present only (an
            empty manifest cell means the modality is missing for this session).
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
        return display_path(path, self.path.parent)

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


def display_path(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` when inside it, else as it is."""
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
        raise fatal(f"cannot read the manifest ({one_line(err)})") from err
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
class Candidate:
    """A data row as parsed, with its problems (volume checks add theirs later)."""

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
class Parsed:
    """A parsed manifest with every data row, problems included (for :func:`load_cohort`)."""

    manifest: Manifest
    candidates: list[Candidate]


def parse_manifest(path: Path, modalities: Sequence[str],
                   label_mapping: Mapping[str, int] | None) -> Parsed:
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

    candidates: list[Candidate] = []
    for line, cells in records:
        if not any(c.strip() for c in cells):
            continue
        cells = [c.strip() for c in cells]
        subject = cells[index["subject"]] if index["subject"] < len(cells) else ""
        if len(cells) != len(header):
            candidates.append(Candidate(line, subject, "", "", {}, {}, [Problem(
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
                continue  # the modality is missing for this session
            p = Path(cell).expanduser()
            resolved = Path(os.path.normpath(p if p.is_absolute() else base / p))
            twin = next((other for other, q in paths.items() if q == resolved), None)
            if twin is not None:
                problems.append(Problem(line, subject, m, display_path(resolved, base),
                                        f"same file as column {twin}; each modality needs its "
                                        f"own volume", name))
            paths[m] = resolved
        if not paths:
            problems.append(Problem(line, subject, ", ".join(mods), "",
                                    f"no volume for any modality: every path cell "
                                    f"({', '.join(mods)}) is empty", name))
        covariates = {c: cells[index[c]] for c in covariate_columns}
        candidates.append(Candidate(line, subject, session, label_text, paths, covariates,
                                     problems))

    _check_duplicates(candidates, "session" in index, name)
    used_mapping = _resolve_labels(candidates, mapping, name)
    rows = [ManifestRow(c.line, c.subject, c.session, c.label, c.paths, c.covariates)
            for c in candidates if not c.problems]
    problems = [p for c in candidates for p in c.problems]
    manifest = Manifest(path=path, modalities=mods, rows=rows, label_mapping=used_mapping,
                        covariate_columns=covariate_columns, problems=problems)
    return Parsed(manifest, candidates)


def _check_duplicates(candidates: Sequence[Candidate], has_session: bool, name: str) -> None:
    """Flag every row of a (subject, session) pair that occurs more than once."""
    groups: dict[tuple[str, str], list[Candidate]] = defaultdict(list)
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


def _resolve_labels(candidates: Sequence[Candidate], mapping: dict[str, int] | None,
                    name: str) -> dict[str, int] | None:
    """Set ``label`` on every candidate and return the mapping in use (see the module doc)."""

    def bad(c: Candidate, message: str) -> None:
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
            ``on_bad_row="error"``, any row has a problem (empty subject, every path cell
            empty, duplicate subject/session, unknown or non-integer label, wrong number of
            fields). All problems are listed; a single empty path cell is a missing modality,
            not a problem.
    """
    check_on_bad_row(on_bad_row)
    manifest = parse_manifest(path, modalities, label_mapping).manifest
    if manifest.problems and on_bad_row == "error":
        raise ManifestError(manifest.problems, manifest.path)
    return manifest


def check_on_bad_row(on_bad_row: str) -> None:
    """``on_bad_row`` is ``error`` or ``skip``."""
    if on_bad_row not in get_args(OnBadRow):
        raise ValueError(f"on_bad_row must be one of {', '.join(get_args(OnBadRow))}, got "
                         f"{on_bad_row!r}")


