"""BIDS dataset -> manifest (mmssl.data.bids) and fALFF derivatives (falff_for_bids)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from mmssl.data.neuro import read_manifest
from mmssl.data.neuro.bids import (
    BidsManifest,
    manifest_from_bids,
    summarize_manifest,
    unpaired_report_path,
)
from mmssl.data.neuro.falff import compute_falff, falff_for_bids

SPACE = "MNI152NLin2009cAsym"
AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])


def write_volume(path: Path, seed: int, shape: tuple[int, ...] = (4, 4, 4)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).random(shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, AFFINE), path)


def write_tsv(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(row) + "\n" for row in rows))


def write_description(folder: Path, derivative: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    description = {"Name": folder.name, "BIDSVersion": "1.8.0"}
    if derivative:
        description["DatasetType"] = "derivative"
    (folder / "dataset_description.json").write_text(json.dumps(description))


def t1_path(root: Path, subject: str, session: str = "", run: str = "") -> Path:
    ses_dir = f"ses-{session}/" if session else ""
    ses_key = f"_ses-{session}" if session else ""
    run_key = f"_run-{run}" if run else ""
    return root / f"sub-{subject}/{ses_dir}anat/sub-{subject}{ses_key}{run_key}_T1w.nii.gz"


def falff_path(root: Path, subject: str, session: str = "") -> Path:
    ses_dir = f"ses-{session}/" if session else ""
    ses_key = f"_ses-{session}" if session else ""
    return (root / "derivatives/falff" / f"sub-{subject}/{ses_dir}func"
            / f"sub-{subject}{ses_key}_task-rest_space-{SPACE}_desc-falff_boldmap.nii.gz")


@pytest.fixture
def bids_root(tmp_path: Path) -> Path:
    """A tiny dataset covering each pairing case.

    sub-01: sessions 1, 2 (sessions.tsv ages; ses-2's diagnosis overrides), T1w + fALFF each
    sub-02: no sessions, T1w + fALFF, site n/a
    sub-03: ses-1 T1w + fALFF; ses-2 T1w only; ses-3 (in sessions.tsv) fALFF only
    sub-04: no sessions, two T1w runs (ambiguous) + fALFF
    sub-05: T1w + fALFF but no participants.tsv row
    sub-06: in participants.tsv, no files at all
    """
    root = tmp_path / "ds"
    write_description(root)
    write_description(root / "derivatives/falff", derivative=True)
    write_tsv(root / "participants.tsv", [
        ["participant_id", "diagnosis", "age", "sex", "site"],
        ["sub-01", "AD", "70", "F", "A"],
        ["sub-02", "CN", "65", "M", "n/a"],
        ["sub-03", "CN", "80", "F", "B"],
        ["sub-04", "AD", "77", "M", "A"],
        ["sub-06", "AD", "60", "F", "B"],
    ])
    write_tsv(root / "sub-01/sub-01_sessions.tsv", [
        ["session_id", "age", "diagnosis"], ["ses-1", "71", "n/a"], ["ses-2", "73.5", "CN"]])
    write_tsv(root / "sub-03/sub-03_sessions.tsv", [
        ["session_id", "age"], ["ses-1", "81"], ["ses-2", "82"], ["ses-3", "83"]])
    seed = 0
    for subject, session in [("01", "1"), ("01", "2"), ("02", ""), ("03", "1"), ("05", "")]:
        write_volume(t1_path(root, subject, session), seed := seed + 1)
        write_volume(falff_path(root, subject, session), seed := seed + 1)
    write_volume(t1_path(root, "03", "2"), seed := seed + 1)
    write_volume(falff_path(root, "03", "3"), seed := seed + 1)
    write_volume(t1_path(root, "04", run="1"), seed := seed + 1)
    write_volume(t1_path(root, "04", run="2"), seed := seed + 1)
    write_volume(falff_path(root, "04"), seed := seed + 1)
    return root


def test_manifest_rows_labels_and_covariates(bids_root: Path) -> None:
    manifest = manifest_from_bids(bids_root)
    table = manifest.table
    assert list(table.columns) == ["subject", "session", "label", "t1", "falff",
                                   "age", "sex", "site"]
    keys = list(zip(table["subject"], table["session"], strict=True))
    assert keys == [("01", "1"), ("01", "2"), ("02", ""), ("03", "1"), ("03", "2")]
    rows = table.set_index(["subject", "session"])
    assert rows.loc[("01", "1"), "label"] == "AD"  # sessions.tsv n/a -> the participant's
    assert rows.loc[("01", "2"), "label"] == "CN"  # sessions.tsv overrides
    assert rows.loc[("01", "1"), "age"] == "71"  # sessions.tsv overrides participants' 70
    assert rows.loc[("01", "2"), "age"] == "73.5"
    assert rows.loc[("02", ""), "age"] == "65"  # no sessions.tsv
    assert rows.loc[("02", ""), "site"] == ""  # n/a -> empty
    assert rows.loc[("01", "2"), "sex"] == "F"
    assert rows.loc[("03", "2"), "falff"] == ""  # T1-only session kept
    # paths are absolute without out_path and point at the right files
    assert Path(rows.loc[("01", "2"), "t1"]) == t1_path(bids_root, "01", "2")
    assert Path(rows.loc[("02", ""), "falff"]) == falff_path(bids_root, "02")
    assert manifest.n_subjects == 6
    assert manifest.covariates == ("age", "sex", "site")


def test_unpaired_report_reasons(bids_root: Path) -> None:
    report = manifest_from_bids(bids_root).unpaired
    got = {(r.subject, r.session, r.reason): (r.detail, bool(r.in_manifest))
           for r in report.itertuples()}
    assert set(got) == {
        ("03", "2", "no fALFF"),
        ("03", "3", "no T1w"),
        ("04", "", "several T1w files"),
        ("05", "", "no participants.tsv row"),
        ("06", "", "no T1w"),
        ("06", "", "no fALFF"),
    }
    assert got[("03", "2", "no fALFF")][1] is True  # kept as T1-only
    assert got[("03", "3", "no T1w")][1] is False
    detail = got[("04", "", "several T1w files")][0]
    assert "sub-04/anat/sub-04_run-1_T1w.nii.gz" in detail
    assert "sub-04/anat/sub-04_run-2_T1w.nii.gz" in detail


def test_write_relative_paths_and_report(bids_root: Path, tmp_path: Path) -> None:
    manifest = manifest_from_bids(bids_root)
    out = tmp_path / "out" / "cohort.csv"
    report_path = manifest.write(out)
    assert report_path == unpaired_report_path(out) == out.with_name("cohort_unpaired.csv")
    written = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert len(written) == len(manifest.table)
    for column in ("t1", "falff"):
        for cell, absolute in zip(written[column], manifest.table[column], strict=True):
            if not absolute:
                assert cell == ""
                continue
            assert not Path(cell).is_absolute() and cell.startswith("../ds/")
            assert (out.parent / cell).resolve() == Path(absolute).resolve()
    report = pd.read_csv(report_path, dtype=str, keep_default_na=False)
    assert sorted(set(report["reason"])) == ["no T1w", "no fALFF", "no participants.tsv row",
                                             "several T1w files"]
    assert not list(out.parent.glob(".*.tmp"))

    # out_path= makes the table itself relative; write() elsewhere still resolves
    relative = manifest_from_bids(bids_root, out_path=tmp_path / "m.csv")
    assert relative.table.loc[0, "t1"] == "ds/sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"
    relative.write(tmp_path / "deep" / "er" / "m.csv")
    again = pd.read_csv(tmp_path / "deep" / "er" / "m.csv", dtype=str, keep_default_na=False)
    assert again.loc[0, "t1"] == "../../ds/sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"

    # a rewrite with nothing unpaired removes the stale report
    complete = BidsManifest(table=manifest.table, unpaired=manifest.unpaired.iloc[:0],
                            root=manifest.root)
    assert complete.write(out) is None
    assert not report_path.exists()


def test_complete_rows_are_a_valid_neuro_manifest(bids_root: Path, tmp_path: Path) -> None:
    manifest = manifest_from_bids(bids_root)
    out = tmp_path / "out" / "manifest.csv"
    manifest.write(out)
    written = pd.read_csv(out, dtype=str, keep_default_na=False)
    complete = tmp_path / "out" / "complete.csv"
    written[written["falff"] != ""].to_csv(complete, index=False)
    parsed = read_manifest(complete, ("t1", "falff"))
    assert [(r.subject, r.session) for r in parsed.rows] == [
        ("01", "1"), ("01", "2"), ("02", ""), ("03", "1")]
    assert parsed.label_mapping == {"AD": 0, "CN": 1}
    assert [r.label for r in parsed.rows] == [0, 1, 1, 1]
    assert parsed.rows[0].paths["t1"].resolve() == t1_path(bids_root, "01", "1").resolve()
    assert parsed.rows[0].paths["falff"].resolve() == falff_path(bids_root, "01", "1").resolve()


def test_summary_counts(bids_root: Path) -> None:
    text = summarize_manifest(manifest_from_bids(bids_root))
    assert "6 subjects, 9 sessions" in text
    assert "paired (T1w + fALFF): 4" in text
    assert "T1w only (no fALFF):  1" in text
    assert "left out:             4" in text
    assert "no participants.tsv row: 1" in text
    assert "several T1w files: 1" in text
    assert "no T1w: 2" in text
    assert "labels: AD 1, CN 4" in text


def test_errors(bids_root: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(ValueError, match="not a BIDS dataset.*dataset_description.json"):
        manifest_from_bids(plain)
    with pytest.raises(ValueError, match=r"'group' is not a column.*participant_id, diagnosis, "
                                         r"age, sex, site"):
        manifest_from_bids(bids_root, label_column="group")
    with pytest.raises(ValueError, match="t1: expected 'raw' or 'derivatives'"):
        manifest_from_bids(bids_root, t1="native")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="derivatives/fmriprep.*does not exist"):
        manifest_from_bids(bids_root, t1="derivatives")
    (bids_root / "participants.tsv").unlink()
    with pytest.raises(ValueError, match="no participants.tsv"):
        manifest_from_bids(bids_root)


def test_absent_covariate_and_missing_falff_folder_are_noted(bids_root: Path) -> None:
    import shutil

    shutil.rmtree(bids_root / "derivatives")
    manifest = manifest_from_bids(bids_root, covariates=("age", "handedness"))
    assert list(manifest.table.columns) == ["subject", "session", "label", "t1", "falff", "age"]
    assert (manifest.table["falff"] == "").all()
    assert any("handedness" in note for note in manifest.notes)
    assert any("no fALFF derivatives" in note for note in manifest.notes)


# --------------------------------------------------------------------------- falff_for_bids


def test_falff_for_bids_writes_derivatives_that_pair(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_description(root)
    write_description(root / "derivatives/fmriprep", derivative=True)
    write_tsv(root / "participants.tsv", [["participant_id", "diagnosis", "age", "sex"],
                                          ["sub-01", "AD", "70", "F"],
                                          ["sub-02", "CN", "66", "M"]])
    prep = root / "derivatives/fmriprep"
    rng = np.random.default_rng(0)
    bolds = {}
    for subject, session in [("01", "1"), ("01", "2"), ("02", "")]:
        ses_dir = f"ses-{session}/" if session else ""
        ses_key = f"_ses-{session}" if session else ""
        func = prep / f"sub-{subject}/{ses_dir}func"
        stem = f"sub-{subject}{ses_key}_task-rest_space-{SPACE}"
        bold = func / f"{stem}_desc-preproc_bold.nii.gz"
        func.mkdir(parents=True)
        series = rng.standard_normal((4, 4, 4, 40)).astype(np.float32)
        image = nib.Nifti1Image(series, AFFINE)
        image.header.set_zooms((3.0, 3.0, 3.0, 1.0))  # the sidecar's 2 s must win
        nib.save(image, bold)
        (func / f"{stem}_desc-preproc_bold.json").write_text(json.dumps({"RepetitionTime": 2}))
        bolds[(subject, session)] = bold
    mask = np.zeros((4, 4, 4), np.uint8)
    mask[1:3, 1:3, 1:3] = 1
    mask_path = prep / f"sub-02/func/sub-02_task-rest_space-{SPACE}_desc-brain_mask.nii.gz"
    nib.save(nib.Nifti1Image(mask, AFFINE), mask_path)
    # fMRIPrep's one anatomical template for the sessions of sub-01, and sub-02's own
    write_volume(prep / f"sub-01/anat/sub-01_space-{SPACE}_desc-preproc_T1w.nii.gz", 1)
    write_volume(prep / f"sub-02/anat/sub-02_space-{SPACE}_desc-preproc_T1w.nii.gz", 2)

    results = falff_for_bids(root)
    assert [r.status for r in results] == ["written"] * 3
    assert json.loads((root / "derivatives/falff/dataset_description.json").read_text())[
        "DatasetType"] == "derivative"
    for (subject, session), bold in bolds.items():
        expected = falff_path(root, subject, session)
        result = next(r for r in results if r.bold == bold)
        assert result.output == expected and expected.is_file()
        assert result.tr == 2.0
        sidecar = json.loads(expected.with_name(
            expected.name.replace(".nii.gz", ".json")).read_text())
        assert sidecar["RepetitionTime"] == 2.0 and sidecar["BandHz"] == [0.01, 0.08]
        want_mask = mask_path if subject == "02" else None
        assert result.mask == want_mask
        got = np.asarray(nib.load(expected).dataobj)  # type: ignore[attr-defined]
        want = np.asarray(compute_falff(bold, want_mask, tr=2.0).dataobj)
        np.testing.assert_array_equal(got, want)
        with_tr_1 = np.asarray(compute_falff(bold, want_mask, tr=1.0).dataobj)
        assert not np.allclose(got, with_tr_1)
    falff_02 = nib.load(falff_path(root, "02"))
    assert (np.asarray(falff_02.dataobj)[mask == 0] == 0).all()  # type: ignore[attr-defined]

    # a rerun leaves existing maps alone
    before = falff_path(root, "01", "1").stat().st_mtime_ns
    assert [r.status for r in falff_for_bids(root)] == ["exists"] * 3
    assert falff_path(root, "01", "1").stat().st_mtime_ns == before

    manifest = manifest_from_bids(root, t1="derivatives")
    table = manifest.table.set_index(["subject", "session"])
    assert list(table.index) == [("01", "1"), ("01", "2"), ("02", "")]
    assert (table["falff"] != "").all()
    assert Path(table.loc[("01", "2"), "falff"]) == falff_path(root, "01", "2")
    subject_template = f"sub-01_space-{SPACE}_desc-preproc_T1w.nii.gz"
    assert Path(table.loc[("01", "2"), "t1"]).name == subject_template
    assert manifest.unpaired.empty


def test_falff_for_bids_errors(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_description(root)
    with pytest.raises(ValueError, match="derivatives/fmriprep.*does not exist"):
        falff_for_bids(root)
    write_description(root / "derivatives/fmriprep", derivative=True)
    with pytest.raises(ValueError, match="no preprocessed BOLD series"):
        falff_for_bids(root)
