"""A BIDS dataset (raw T1w + fALFF derivatives) -> an mmssl manifest CSV.

Layout read (BIDS 1.8; files found with pybids, ``validate=False``)::

    <root>/dataset_description.json
    <root>/participants.tsv                  participant_id, <label column>, age, sex, [site]
    <root>/sub-<id>/sub-<id>_sessions.tsv    session_id, [age], [<label column>] (optional)
    <root>/sub-<id>/[ses-<ses>/]anat/sub-<id>[_ses-<ses>]_T1w.nii[.gz]              (t1="raw")
    <root>/derivatives/<t1_pipeline>/sub-<id>/[ses-<ses>/]anat/
        sub-<id>[_ses-<ses>]_space-<space>_desc-preproc_T1w.nii[.gz]          (t1="derivatives")
    <root>/derivatives/<falff_pipeline>/dataset_description.json  (DatasetType "derivative")
    <root>/derivatives/<falff_pipeline>/sub-<id>/[ses-<ses>/]func/
        sub-<id>[_ses-<ses>]_task-<task>_space-<space>_desc-<falff_desc>_boldmap.nii[.gz]

One manifest row per (subject, session) that has exactly one T1w candidate, a
``participants.tsv`` row and at most one fALFF candidate (format: :mod:`mmssl.data.neuro`)::

    subject,session,label,t1,falff,age,sex,site

``subject`` and ``session`` are the BIDS labels without ``sub-``/``ses-`` (``session`` empty for
a dataset without sessions). ``label`` is the label column of ``sessions.tsv`` when it has a
value there, else of ``participants.tsv`` (empty = unlabelled). Covariates follow the same rule
(a session's age overrides the participant's); ``n/a`` becomes an empty cell, and a covariate
found in no table is left out (listed in :attr:`BidsManifest.notes`). A session with a T1w but
no fALFF map is kept with an empty ``falff`` cell (the trainer treats it as incomplete) and is
also reported as ``no fALFF``.

Sessions are the union of the sessions seen in the raw files, the ``sessions.tsv`` files and the
derivatives; a subject without any session folder has one session with an empty label. With
``t1="derivatives"``, a session without a session-level preprocessed T1w uses the subject-level
one (fMRIPrep writes one anatomical template per subject when there are several sessions).

Every session that is not a complete pair is reported in :attr:`BidsManifest.unpaired`, one row
per reason (:data:`REASONS`), with the files concerned, and written beside the manifest as
``<stem>_unpaired.csv``.

Note: raw T1w images are in the scanner's space; :mod:`mmssl.data.neuro` assumes volumes that
are already registered to MNI space, so for fMRIPrep outputs use ``t1="derivatives"``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from mmssl import io

if TYPE_CHECKING:
    from bids import BIDSLayout

__all__ = [
    "MODALITY_COLUMNS",
    "REASONS",
    "BidsManifest",
    "manifest_from_bids",
    "open_layout",
    "require_bids_root",
    "summarize_manifest",
    "unpaired_report_path",
]

log = logging.getLogger(__name__)

#: The manifest's path columns, in order.
MODALITY_COLUMNS: tuple[str, str] = ("t1", "falff")
#: Reasons a session is reported, in the order the summary lists them.
REASON_NO_PARTICIPANT = "no participants.tsv row"
REASON_NO_T1 = "no T1w"
REASON_SEVERAL_T1 = "several T1w files"
REASON_NO_FALFF = "no fALFF"
REASON_SEVERAL_FALFF = "several fALFF files"
REASONS: tuple[str, ...] = (REASON_NO_PARTICIPANT, REASON_NO_T1, REASON_SEVERAL_T1,
                            REASON_NO_FALFF, REASON_SEVERAL_FALFF)
#: Cells that BIDS tables use for "missing".
_MISSING = frozenset({"", "n/a", "na", "nan", "none"})
_NIFTI = [".nii.gz", ".nii"]
_REPORT_COLUMNS = ["subject", "session", "reason", "detail", "in_manifest"]

T1Source = Literal["raw", "derivatives"]


# ----------------------------------------------------------------------------------- layout


def require_bids_root(bids_dir: str | os.PathLike[str]) -> Path:
    """``bids_dir`` as an absolute path, checked to be a BIDS dataset's root.

    Raises:
        ValueError: the folder does not exist or has no ``dataset_description.json``.
    """
    root = Path(bids_dir).expanduser().resolve()
    if not root.is_dir():
        raise ValueError(f"bids_dir: {root} is not a folder")
    if not (root / "dataset_description.json").is_file():
        raise ValueError(f"bids_dir: {root} is not a BIDS dataset (no dataset_description.json "
                         f"in it)")
    return root


def open_layout(root: Path, *, derivative: bool = False) -> BIDSLayout:
    """A pybids layout of one dataset folder (raw, or a derivative pipeline's folder).

    Raises:
        ValueError: the folder or its ``dataset_description.json`` is missing, or pybids
            rejects it (the message names the folder).
    """
    from bids import BIDSLayout

    if not (root / "dataset_description.json").is_file():
        what = "derivative pipeline folder" if derivative else "BIDS dataset"
        state = "does not exist" if not root.is_dir() else "has no dataset_description.json"
        raise ValueError(f"{root}: expected a {what}, but it {state}")
    try:
        return BIDSLayout(root, validate=False, is_derivative=derivative)
    except Exception as error:  # pybids raises its own exception types
        raise ValueError(f"{root}: pybids cannot index it: {error}") from error


def _query_none() -> Any:
    from bids.layout import Query

    return Query.NONE


def _session_filter(session: str) -> Any:
    return session if session else _query_none()


# ----------------------------------------------------------------------------------- tables


def _strip_prefix(value: str, prefix: str) -> str:
    value = value.strip()
    return value[len(prefix):] if value.startswith(prefix) else value


def _cell(value: Any) -> str:
    text = "" if value is None else str(value).strip()
    return "" if text.lower() in _MISSING else text


def _read_tsv(path: Path, id_column: str) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False,
                            encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as error:
        raise ValueError(f"{path}: not a readable tab-separated table ({error})") from error
    table.columns = [str(c).strip() for c in table.columns]
    if id_column not in table.columns:
        raise ValueError(f"{path}: no {id_column!r} column (columns: "
                         f"{', '.join(table.columns) or 'none'})")
    return table


def _participants(root: Path) -> pd.DataFrame:
    path = root / "participants.tsv"
    if not path.is_file():
        raise ValueError(f"{root}: no participants.tsv (it gives each subject's label and "
                         f"covariates, one row per participant_id)")
    table = _read_tsv(path, "participant_id")
    table["participant_id"] = [_strip_prefix(v, "sub-") for v in table["participant_id"]]
    empty = table["participant_id"] == ""
    if empty.any():
        raise ValueError(f"{path}: {int(empty.sum())} row(s) with an empty participant_id")
    duplicated = sorted(set(table.loc[table["participant_id"].duplicated(), "participant_id"]))
    if duplicated:
        raise ValueError(f"{path}: participant_id repeated: "
                         f"{', '.join('sub-' + d for d in duplicated)}")
    return table.set_index("participant_id")


def _sessions_table(root: Path, subject: str) -> pd.DataFrame | None:
    path = root / f"sub-{subject}" / f"sub-{subject}_sessions.tsv"
    if not path.is_file():
        return None
    table = _read_tsv(path, "session_id")
    table["session_id"] = [_strip_prefix(v, "ses-") for v in table["session_id"]]
    duplicated = sorted(set(table.loc[table["session_id"].duplicated(), "session_id"]))
    if duplicated:
        raise ValueError(f"{path}: session_id repeated: "
                         f"{', '.join('ses-' + d for d in duplicated)}")
    return table.set_index("session_id")


def _value(name: str, session_row: pd.Series | None, participant_row: pd.Series | None) -> str:
    """The session table's value when present, else the participant table's (else empty)."""
    for row in (session_row, participant_row):
        if row is not None and name in row.index:
            value = _cell(row[name])
            if value:
                return value
    return ""


# --------------------------------------------------------------------------------- manifest


@dataclass
class BidsManifest:
    """A manifest built from a BIDS dataset, with the sessions it could not pair.

    Attributes:
        table: one row per usable session, columns ``subject, session, label, t1, falff`` and
            the covariates found; paths relative to ``base`` (absolute when ``base`` is
            ``None``); ``falff`` empty for a session without a map.
        unpaired: one row per (session, reason): ``subject, session, reason, detail`` (the
            files concerned, relative to the BIDS root) and ``in_manifest`` (True for a session
            kept as T1-only).
        root: the BIDS dataset's root.
        base: the folder the paths of ``table`` are relative to, or ``None``.
        covariates: the covariate columns of ``table``.
        notes: things the user should know (covariates not found, no fALFF derivatives).
        n_subjects: subjects seen (files, participants.tsv or sessions.tsv).
        n_sessions: (subject, session) pairs seen.
    """

    table: pd.DataFrame
    unpaired: pd.DataFrame
    root: Path
    base: Path | None = None
    covariates: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)
    n_subjects: int = 0
    n_sessions: int = 0

    def table_relative_to(self, folder: str | os.PathLike[str]) -> pd.DataFrame:
        """:attr:`table` with its paths made relative to ``folder`` (absolute if impossible,
        e.g. on another Windows drive)."""
        folder = Path(folder).expanduser().resolve()
        table = self.table.copy()
        for column in MODALITY_COLUMNS:
            table[column] = [self._relative(cell, folder) for cell in table[column]]
        return table

    def _relative(self, cell: str, folder: Path) -> str:
        if not cell:
            return ""
        path = Path(cell) if self.base is None else self.base / cell
        try:
            return Path(os.path.relpath(path, folder)).as_posix()
        except ValueError:
            return str(path)

    def write(self, path: str | os.PathLike[str]) -> Path | None:
        """Write the manifest CSV (paths relative to its folder) atomically.

        Also writes :func:`unpaired_report_path` when some sessions are reported, and removes a
        stale one from an earlier run otherwise.

        Returns:
            The report's path, or ``None`` when every session is a complete pair.
        """
        target = Path(path).expanduser().resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        _atomic_csv(self.table_relative_to(target.parent), target)
        report = unpaired_report_path(target)
        if len(self.unpaired):
            _atomic_csv(self.unpaired, report)
            return report
        report.unlink(missing_ok=True)
        return None


def unpaired_report_path(manifest_path: str | os.PathLike[str]) -> Path:
    """``<folder>/<stem>_unpaired.csv`` for a manifest ``<folder>/<stem>.csv``."""
    path = Path(manifest_path)
    return path.with_name(f"{path.stem}_unpaired.csv")


def _atomic_csv(table: pd.DataFrame, path: Path) -> None:
    io.write_text(path, table.to_csv(index=False, lineterminator="\n"))


def _files(layout: BIDSLayout | None, **query: Any) -> list[Path]:
    if layout is None:
        return []
    return sorted(Path(f) for f in layout.get(return_type="file", extension=_NIFTI, **query))


def _sessions_of(subject: str, layouts: Iterable[BIDSLayout | None],
                 sessionless_layouts: Iterable[BIDSLayout | None],
                 sessions_table: pd.DataFrame | None) -> list[str]:
    """Named sessions of every layout and table; ``""`` too when the subject has none, or
    has images without a session in ``sessionless_layouts``."""
    named: set[str] = set(sessions_table.index) if sessions_table is not None else set()
    for layout in layouts:
        if layout is not None:
            named.update(str(s) for s in layout.get_sessions(subject=subject))
    sessionless = any(
        layout is not None and layout.get(subject=subject, session=_query_none(),
                                          extension=_NIFTI, datatype=["anat", "func"],
                                          return_type="file")
        for layout in sessionless_layouts)
    named.discard("")
    sessions = sorted(named)
    if sessionless or not sessions:
        sessions.insert(0, "")
    return sessions


def _label_column_check(label_column: str, participants: pd.DataFrame,
                        session_tables: dict[str, pd.DataFrame | None], root: Path) -> None:
    if label_column in participants.columns:
        return
    if any(t is not None and label_column in t.columns for t in session_tables.values()):
        return
    available = ", ".join(["participant_id", *participants.columns])
    raise ValueError(f"label_column: {label_column!r} is not a column of "
                     f"{root / 'participants.tsv'} nor of any sessions.tsv (participants.tsv "
                     f"columns: {available})")


def manifest_from_bids(bids_dir: str | os.PathLike[str], *, t1: T1Source = "raw",
                       falff_pipeline: str = "falff", falff_desc: str = "falff",
                       space: str = "MNI152NLin2009cAsym", label_column: str = "diagnosis",
                       covariates: Sequence[str] = ("age", "sex", "site"), task: str = "rest",
                       t1_pipeline: str = "fmriprep",
                       out_path: str | os.PathLike[str] | None = None) -> BidsManifest:
    """Pair each session's T1w with its fALFF map and collect labels and covariates.

    Layout, pairing rules and the reasons a session is reported: see the module docstring.

    Args:
        bids_dir: the BIDS dataset's root.
        t1: ``"raw"`` for ``sub-*/[ses-*/]anat/*_T1w.nii[.gz]``, ``"derivatives"`` for
            ``derivatives/<t1_pipeline>/...space-<space>_desc-preproc_T1w.nii[.gz]``.
        falff_pipeline: the folder under ``derivatives/`` holding the fALFF maps.
        falff_desc: the maps' ``desc`` entity.
        space: the ``space`` entity of the fALFF maps (and derivative T1w).
        label_column: the column of ``participants.tsv`` (or ``sessions.tsv``) giving the class.
        covariates: columns copied as covariates when they exist.
        task: the ``task`` entity of the fALFF maps.
        t1_pipeline: the folder under ``derivatives/`` holding preprocessed T1w (``t1=
            "derivatives"`` only).
        out_path: where the manifest will be written; the paths of :attr:`BidsManifest.table`
            are then relative to its folder (otherwise absolute). :meth:`BidsManifest.write`
            makes them relative to wherever it writes in any case.

    Returns:
        The manifest table, the report of unpaired sessions and counts.

    Raises:
        ValueError: not a BIDS dataset, no ``participants.tsv`` or ``participant_id`` column,
            repeated participant or session ids, ``label_column`` in no table (the available
            columns are listed), an unknown ``t1`` or a missing ``derivatives/<t1_pipeline>``.
    """
    if t1 not in ("raw", "derivatives"):
        raise ValueError(f"t1: expected 'raw' or 'derivatives', got {t1!r}")
    root = require_bids_root(bids_dir)
    participants = _participants(root)
    raw = open_layout(root)
    notes: list[str] = []

    falff_root = root / "derivatives" / falff_pipeline
    falff_layout: BIDSLayout | None = None
    if falff_root.is_dir():
        falff_layout = open_layout(falff_root, derivative=True)
    else:
        notes.append(f"no fALFF derivatives at {falff_root}: every session is T1-only "
                     f"(`mmssl falff` computes them from fMRIPrep's preprocessed BOLD)")
    t1_layout = raw
    if t1 == "derivatives":
        t1_layout = open_layout(root / "derivatives" / t1_pipeline, derivative=True)
        t1_query: dict[str, Any] = {"suffix": "T1w", "desc": "preproc", "space": space,
                                    "datatype": "anat"}
    else:
        t1_query = {"suffix": "T1w", "datatype": "anat"}
    falff_query = {"suffix": "boldmap", "desc": falff_desc, "space": space, "task": task}

    layouts = [raw, falff_layout] + ([t1_layout] if t1 == "derivatives" else [])
    subjects: set[str] = set(participants.index)
    for layout in layouts:
        if layout is not None:
            subjects.update(str(s) for s in layout.get_subjects())
    subject_list = sorted(subjects)
    session_tables = {s: _sessions_table(root, s) for s in subject_list}
    _label_column_check(label_column, participants, session_tables, root)

    found = [c for c in covariates if c in participants.columns
             or any(t is not None and c in t.columns for t in session_tables.values())]
    missing_covariates = [c for c in covariates if c not in found]
    if missing_covariates:
        notes.append(f"covariate(s) in no table, left out: {', '.join(missing_covariates)}")

    rows: list[dict[str, str]] = []
    report: list[dict[str, Any]] = []
    n_sessions = 0
    base = Path(out_path).expanduser().resolve().parent if out_path is not None else None

    def shown(paths: Sequence[Path]) -> str:
        return "; ".join(Path(os.path.relpath(p, root)).as_posix() for p in paths)

    for subject in subject_list:
        sessions_table = session_tables[subject]
        participant_row = (participants.loc[subject] if subject in participants.index
                           else None)
        for session in _sessions_of(subject, layouts, [raw, falff_layout], sessions_table):
            n_sessions += 1
            problems: list[tuple[str, str]] = []
            if participant_row is None:
                problems.append((REASON_NO_PARTICIPANT, f"sub-{subject}"))
            t1_files = _files(t1_layout, subject=subject, session=_session_filter(session),
                              **t1_query)
            if not t1_files and session and t1 == "derivatives":
                t1_files = _files(t1_layout, subject=subject, session=_query_none(), **t1_query)
            if not t1_files:
                problems.append((REASON_NO_T1, ""))
            elif len(t1_files) > 1:
                problems.append((REASON_SEVERAL_T1, shown(t1_files)))
            falff_files = _files(falff_layout, subject=subject,
                                 session=_session_filter(session), **falff_query)
            if not falff_files:
                problems.append((REASON_NO_FALFF, ""))
            elif len(falff_files) > 1:
                problems.append((REASON_SEVERAL_FALFF, shown(falff_files)))

            blocking = {REASON_NO_PARTICIPANT, REASON_NO_T1, REASON_SEVERAL_T1,
                        REASON_SEVERAL_FALFF}
            kept = not any(reason in blocking for reason, _ in problems)
            for reason, detail in problems:
                report.append({"subject": subject, "session": session, "reason": reason,
                               "detail": detail, "in_manifest": kept})
            if not kept:
                continue
            session_row = (sessions_table.loc[session]
                           if sessions_table is not None and session in sessions_table.index
                           else None)
            row = {
                "subject": subject,
                "session": session,
                "label": _value(label_column, session_row, participant_row),
                "t1": _path_cell(t1_files[0], base),
                "falff": _path_cell(falff_files[0], base) if falff_files else "",
            }
            row.update({c: _value(c, session_row, participant_row) for c in found})
            rows.append(row)

    columns = ["subject", "session", "label", *MODALITY_COLUMNS, *found]
    return BidsManifest(
        table=pd.DataFrame(rows, columns=columns, dtype=str),
        unpaired=pd.DataFrame(report, columns=_REPORT_COLUMNS),
        root=root, base=base, covariates=tuple(found), notes=notes,
        n_subjects=len(subject_list), n_sessions=n_sessions)


def _path_cell(path: Path, base: Path | None) -> str:
    if base is None:
        return str(path)
    try:
        return Path(os.path.relpath(path, base)).as_posix()
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------- summary


def summarize_manifest(manifest: BidsManifest) -> str:
    """A few lines for people: subjects, sessions, paired, T1-only, left out by reason.

    Counts are of sessions; a session reported for several reasons counts once under each.
    """
    table = manifest.table
    paired = int((table["falff"] != "").sum())
    t1_only = len(table) - paired
    left_out = manifest.unpaired.loc[~manifest.unpaired["in_manifest"].astype(bool)]
    n_left_out = len(left_out[["subject", "session"]].drop_duplicates())
    lines = [
        f"BIDS dataset {manifest.root}: {manifest.n_subjects} subjects, "
        f"{manifest.n_sessions} sessions",
        f"  paired (T1w + fALFF): {paired}",
        f"  T1w only (no fALFF):  {t1_only}",
        f"  left out:             {n_left_out}",
    ]
    for reason in REASONS:
        if reason == REASON_NO_FALFF:
            continue  # counted above as T1w only (or with the session's blocking reason)
        n = int((left_out["reason"] == reason).sum())
        if n:
            lines.append(f"    {reason}: {n}")
    labels = table["label"].replace("", "(unlabelled)").value_counts().sort_index()
    if len(labels):
        lines.append("  labels: " + ", ".join(f"{k} {v}" for k, v in labels.items()))
    lines.append("  covariates: " + (", ".join(manifest.covariates) or "none"))
    lines.extend(f"  note: {note}" for note in manifest.notes)
    return "\n".join(lines)
