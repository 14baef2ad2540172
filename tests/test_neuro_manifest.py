"""Manifest reading, volume validation, preprocessing and caching of paired neuroimaging data."""

from __future__ import annotations

import csv
import gzip
import json
import logging
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("nibabel")
pytest.importorskip("nilearn")

from conftest import (  # noqa: E402
    NEURO_ROWS,
    NEURO_SHAPE,
    neuro_affine,
    neuro_volume,
    write_nifti,
)

from mmssl.data import neuro  # noqa: E402
from mmssl.data.neuro import (  # noqa: E402
    ManifestError,
    Preprocessing,
    Problem,
    load_cohort,
    preprocess_volume,
    read_manifest,
    validate_volumes,
)
from mmssl.data.neuro.grid import (  # noqa: E402
    TargetGrid,
    mni_brain_bbox_centre,
    mni_brain_mask,
    mni_grid,
)

MODS = ("t1", "falff")
VOXEL, SHAPE = 8.0, (24, 28, 24)
SETTINGS = Preprocessing(voxel_size=VOXEL, shape=SHAPE)
N_ROWS = len(NEURO_ROWS)


@pytest.fixture
def grid() -> TargetGrid:
    """The small test grid: 24 x 28 x 24 voxels of 8 mm around the MNI152 brain."""
    return mni_grid(VOXEL, SHAPE)


@pytest.fixture
def cohort(tiny_neuro_cohort: Path, tmp_path: Path) -> Path:
    """A private, modifiable copy of the tiny cohort; returns its manifest."""
    shutil.copytree(tiny_neuro_cohort.parent, tmp_path / "cohort")
    return tmp_path / "cohort" / "manifest.csv"


def edit_manifest(manifest: Path, edit: Callable[[list[dict[str, str]]], object]) -> None:
    """Rewrite ``manifest`` after ``edit`` changed its rows (dicts, in file order)."""
    with manifest.open(newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = list(reader.fieldnames or []), list(reader)
    edit(rows)
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def volume_path(manifest: Path, row: int, modality: str) -> Path:
    """The file of ``modality`` of data row ``row`` (0-based; manifest line ``row + 2``)."""
    subject, session = NEURO_ROWS[row][:2]
    folder = manifest.parent / subject / session
    return next(folder.glob(f"{modality}.nii*"))


def one(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


def counting_preprocess(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Spy on ``preprocess_volume`` as called by ``load_cohort``; returns the list of calls."""
    calls: list[Path] = []
    import mmssl.data.neuro.cohort as cohort_module

    original = cohort_module.preprocess_volume

    def spy(path: Path, *args: object, **kwargs: object) -> np.ndarray:
        calls.append(Path(path))
        return original(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cohort_module, "preprocess_volume", spy)
    return calls


# ------------------------------------------------------------------------------------ grid


def test_mni_grid_is_centred_on_the_brain_and_round_trips() -> None:
    centre = np.asarray(mni_brain_bbox_centre())
    np.testing.assert_allclose(centre, [0.0, -17.0, 5.0], atol=1.0)
    default = mni_grid()
    assert default.shape == (64, 64, 64) and default.voxel_size == (3.0, 3.0, 3.0)
    assert np.all(np.diag(default.affine)[:3] > 0)
    np.testing.assert_allclose(default.affine[:3, :3] @ np.full(3, 31.5) + default.affine[:3, 3],
                               centre)
    # The whole brain is inside the default grid: the mask touches none of its faces.
    mask = mni_brain_mask(default)
    assert mask.dtype == bool and mask.shape == (64, 64, 64) and 0.15 < mask.mean() < 0.4
    for axis in range(3):
        assert not mask.take(0, axis=axis).any() and not mask.take(-1, axis=axis).any()
    assert mni_brain_mask(mni_grid()) is mask and not mask.flags.writeable
    again = TargetGrid.from_dict(json.loads(json.dumps(default.to_dict())))
    assert again == default and hash(again) == hash(default)
    assert mni_grid(3.0, (64, 64, 60)) != default
    with pytest.raises(ValueError, match="shape"):
        TargetGrid.from_dict({"affine": np.eye(4).tolist(), "shape": [4, 4]})


# -------------------------------------------------------------------------------- manifest


def test_read_manifest_maps_string_labels_and_keeps_covariates(tiny_neuro_cohort: Path) -> None:
    m = read_manifest(tiny_neuro_cohort, MODS)
    assert [r.line for r in m.rows] == list(range(2, 2 + N_ROWS))
    assert [(r.subject, r.session) for r in m.rows] == [row[:2] for row in NEURO_ROWS]
    assert m.label_mapping == {"AD": 0, "CN": 1}
    assert [r.label for r in m.rows] == [{"AD": 0, "CN": 1, "": -1}[row[2]] for row in NEURO_ROWS]
    assert m.covariate_columns == ["age", "sex"]
    assert m.rows[0].covariates == {"age": "71.5", "sex": "F"}
    for r in m.rows:
        for p in r.paths.values():
            assert p.is_absolute() and p.is_file()
    frame = m.covariate_frame()
    assert frame["age"].dtype == np.float64 and np.isnan(frame["age"][6])
    assert list(frame["sex"])[:3] == ["F", "F", "M"]

    explicit = read_manifest(tiny_neuro_cohort, MODS, label_mapping={"CN": 0, "AD": 1})
    assert explicit.label_mapping == {"CN": 0, "AD": 1}
    assert [r.label for r in explicit.rows][:3] == [1, 1, 0]


def test_unknown_label_with_an_explicit_mapping(cohort: Path) -> None:
    edit_manifest(cohort, lambda rows: rows[3].update(label="MCI"))
    with pytest.raises(ManifestError) as info:
        read_manifest(cohort, MODS, label_mapping={"AD": 0, "CN": 1})
    p = one(info.value.problems)
    assert (p.line, p.subject, p.column) == (5, "sub-02", "label")
    assert p.message == "unknown label 'MCI'; mapping has AD, CN"
    skipped = read_manifest(cohort, MODS, label_mapping={"AD": 0, "CN": 1}, on_bad_row="skip")
    assert len(skipped.rows) == N_ROWS - 1 and 5 not in [r.line for r in skipped.rows]


def test_numeric_labels(cohort: Path) -> None:
    labels = ["0", "1", "1.0", "-1", "", "NA", "2", "0", "1", "3"]

    def set_labels(rows: list[dict[str, str]]) -> None:
        for row, label in zip(rows, labels, strict=True):
            row["label"] = label

    edit_manifest(cohort, set_labels)
    m = read_manifest(cohort, MODS)
    assert m.label_mapping is None
    assert [r.label for r in m.rows] == [0, 1, 1, -1, -1, -1, 2, 0, 1, 3]

    def bad_labels(rows: list[dict[str, str]]) -> None:
        rows[1]["label"], rows[2]["label"] = "1.5", "-2"

    edit_manifest(cohort, bad_labels)
    with pytest.raises(ManifestError) as info:
        read_manifest(cohort, MODS)
    first, second = info.value.problems
    assert (first.line, first.column) == (3, "label") and "non-integer" in first.message
    assert (second.line, second.column) == (4, "label") and "negative" in second.message

    edit_manifest(cohort, lambda rows: rows[1].update(label="AD"))
    with pytest.raises(ManifestError) as info:
        read_manifest(cohort, MODS)
    assert all("class names" in p.message for p in info.value.problems)


def test_missing_modality_column_lists_the_columns(tiny_neuro_cohort: Path) -> None:
    with pytest.raises(ManifestError) as info:
        read_manifest(tiny_neuro_cohort, ("t1", "dti"))
    p = one(info.value.problems)
    assert (p.line, p.column) == (1, "dti")
    assert "subject, session, label, t1, falff, age, sex" in p.message
    assert "--on-bad-row" not in str(info.value)  # skipping rows cannot fix this
    with pytest.raises(ManifestError):  # not even when skipping
        load_cohort(tiny_neuro_cohort, ("t1", "dti"), settings=SETTINGS, on_bad_row="skip",
                    progress=False)


def test_manifest_file_problems(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "nope.csv", MODS)
    (tmp_path / "binary.csv").write_bytes(gzip.compress(b"subject,t1,falff\n" * 50))
    with pytest.raises(ManifestError, match="not a text CSV file.*gzip-compressed"):
        read_manifest(tmp_path / "binary.csv", MODS)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ManifestError, match="expected a header"):
        read_manifest(tmp_path / "empty.csv", MODS)
    (tmp_path / "nosubject.csv").write_text("Subject,t1,falff\ns1,a.nii,b.nii\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(tmp_path / "nosubject.csv", MODS)
    p = one(info.value.problems)
    assert p.column == "subject" and "did you mean 'Subject'" in p.message
    (tmp_path / "semicolon.csv").write_text("subject;t1;falff\ns1;a.nii;b.nii\n")
    with pytest.raises(ManifestError, match="other than commas"):
        read_manifest(tmp_path / "semicolon.csv", MODS)


def test_duplicate_subject_session_names_both_lines(cohort: Path) -> None:
    edit_manifest(cohort, lambda rows: rows[3].update(session="ses-1"))
    with pytest.raises(ManifestError) as info:
        read_manifest(cohort, MODS)
    a, b = info.value.problems
    assert [(p.line, p.subject, p.column) for p in (a, b)] == [(4, "sub-02", "session"),
                                                               (5, "sub-02", "session")]
    assert "lines 4 and 5" in a.message and a.message == b.message


def test_empty_subject_and_path_cells(cohort: Path) -> None:
    def edit(rows: list[dict[str, str]]) -> None:
        rows[0]["subject"] = ""
        rows[2]["falff"] = ""  # a missing modality: not a problem
        rows[4]["falff"] = rows[4]["t1"] = ""  # no volume at all: a problem
        rows[5]["falff"] = rows[5]["t1"]
        rows[7]["age"] = "NA"

    edit_manifest(cohort, edit)
    with pytest.raises(ManifestError) as info:
        read_manifest(cohort, MODS)
    a, b, c = info.value.problems
    assert (a.line, a.column, a.message) == (2, "subject", "empty subject")
    assert (b.line, b.subject) == (6, "sub-03") and "no volume for any modality" in b.message
    assert (c.line, c.subject, c.column) == (7, "sub-04", "falff")
    assert c.message.startswith("same file as column t1")
    kept = read_manifest(cohort, MODS, on_bad_row="skip")
    assert len(kept.rows) == N_ROWS - 3 and len(kept.problems) == 3
    assert set(kept.rows[1].paths) == {"t1"}  # line 4, sub-02 ses-1: fALFF missing
    ages = kept.covariate_frame()["age"]
    assert ages.dtype == np.float64 and int(ages.isna().sum()) == 2  # sub-05's "" and "NA"


def test_malformed_rows_and_header(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("subject,session,t1,falff\n"
                        "s1,,a.nii,b.nii\n"
                        "\n"
                        "s2,,a2.nii,b2.nii,extra\n"
                        "s1,,c.nii,d.nii\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(manifest, MODS)
    assert [(p.line, p.subject) for p in info.value.problems] == [
        (2, "s1"), (4, "s2"), (5, "s1")]
    assert "5 fields, but the header has 4" in info.value.problems[1].message
    assert "lines 2 and 5" in info.value.problems[0].message
    manifest.write_text("subject,t1,t1,falff\ns1,a.nii,a.nii,b.nii\n")
    with pytest.raises(ManifestError, match="duplicate column name"):
        read_manifest(manifest, MODS)


# --------------------------------------------------------------------------------- volumes


def _missing(path: Path) -> None:
    path.unlink()


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(2000))


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _four_d(volumes: int) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        data = np.stack([neuro_volume("falff", 7 + k) for k in range(volumes)], axis=-1)
        write_nifti(path, data, neuro_affine())
    return write


def _shape_mismatch(path: Path) -> None:
    write_nifti(path, neuro_volume("falff", 7, shape=(20, 24, 18)), neuro_affine())


def _affine_mismatch(path: Path) -> None:
    write_nifti(path, neuro_volume("falff", 7), neuro_affine(shift=(2.0, 0.0, 0.0)))


def _nan(path: Path) -> None:
    data = neuro_volume("falff", 7)
    data.reshape(-1)[::800] = np.nan
    write_nifti(path, data, neuro_affine())


def _far_away(path: Path) -> None:
    affine = neuro_affine(shift=(1000.0, 0.0, 0.0))
    write_nifti(path, neuro_volume("falff", 7, affine=affine), affine)


def _constant(path: Path) -> None:
    write_nifti(path, np.zeros(NEURO_SHAPE, np.float32), neuro_affine())


VOLUME_CASES = {
    "missing file": (4, "falff", _missing, "file not found"),
    "garbage gzip": (4, "t1", _garbage, "cannot read the volume"),
    "truncated gzip": (4, "falff", _truncated, "corrupt or truncated"),
    "truncated nii": (9, "t1", _truncated, "corrupt or truncated"),
    "4-D, 3 volumes": (4, "falff", _four_d(3), "4-D image with 3 volumes"),
    "shape mismatch": (4, "falff", _shape_mismatch,
                       "shape (20, 24, 18) differs from t1's (20, 24, 20)"),
    "affine mismatch": (4, "falff", _affine_mismatch, "affine differs from t1's"),
    "NaN voxels": (4, "falff", _nan, "NaN voxels (12 of 9600)"),
    "no overlap": (4, "falff", _far_away, "does not overlap the target grid"),
    "constant": (4, "falff", _constant, "constant volume"),
}


@pytest.mark.parametrize("case", list(VOLUME_CASES))
def test_each_volume_problem_is_reported(case: str, cohort: Path, grid: TargetGrid) -> None:
    row, column, damage, expected = VOLUME_CASES[case]
    path = volume_path(cohort, row, column)
    damage(path)
    # A volume moved out of the grid also leaves t1's voxel grid: strict_grid would add that.
    strict = case != "no overlap"
    p = one(validate_volumes(read_manifest(cohort, MODS), grid, strict_grid=strict))
    subject = NEURO_ROWS[row][0]
    assert (p.line, p.subject, p.column) == (row + 2, subject, column)
    assert p.file == path.relative_to(cohort.parent).as_posix()
    assert expected in p.message
    assert str(p).startswith(f"manifest.csv line {row + 2} (subject {subject}, column {column}, "
                             f"file {p.file}): ")


def test_wrong_extension_and_strict_grid_off(cohort: Path, grid: TargetGrid) -> None:
    _shape_mismatch(volume_path(cohort, 4, "falff"))
    assert len(validate_volumes(read_manifest(cohort, MODS), grid)) == 1
    assert validate_volumes(read_manifest(cohort, MODS), grid, strict_grid=False) == []
    shutil.copy(volume_path(cohort, 0, "t1"), cohort.parent / "t1.img.gz")
    edit_manifest(cohort, lambda rows: rows[0].update(t1="t1.img.gz"))
    p = one(validate_volumes(read_manifest(cohort, MODS), grid, strict_grid=False))
    assert p.line == 2 and "expected a NIfTI file" in p.message


def test_four_d_with_one_volume_is_accepted(cohort: Path, grid: TargetGrid) -> None:
    import nibabel as nib

    load: Any = nib.load
    path = volume_path(cohort, 4, "falff")
    three_d = np.asanyarray(load(path).dataobj).copy()
    write_nifti(path, three_d[..., None], neuro_affine())
    assert load(path).shape == (*NEURO_SHAPE, 1)
    assert validate_volumes(read_manifest(cohort, MODS), grid) == []
    mask = mni_brain_mask(grid)
    four = preprocess_volume(path, grid, mask, SETTINGS)
    write_nifti(path, three_d, neuro_affine())
    np.testing.assert_array_equal(four, preprocess_volume(path, grid, mask, SETTINGS))


def damage_three_rows(manifest: Path) -> None:
    """Line 3: missing t1; line 6: NaN in falff; line 9: label 'MCI' (not in the mapping)."""
    _missing(volume_path(manifest, 1, "t1"))
    _nan(volume_path(manifest, 4, "falff"))
    edit_manifest(manifest, lambda rows: rows[7].update(label="MCI"))


def test_all_problems_are_reported_together(cohort: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    damage_three_rows(cohort)
    calls = counting_preprocess(monkeypatch)
    report = cohort.parent / "problems.csv"
    with pytest.raises(ManifestError) as info:
        load_cohort(cohort, MODS, settings=SETTINGS, label_mapping={"AD": 0, "CN": 1},
                    progress=False, report_path=report)
    err = info.value
    assert len(report.read_text().splitlines()) == 1 + 3
    assert [(p.line, p.column) for p in err.problems] == [(3, "t1"), (6, "falff"), (9, "label")]
    text = str(err)
    assert text.startswith(f"3 problems in manifest {cohort}:")
    for p in err.problems:
        assert str(p) in text
    assert "--on-bad-row skip" in text
    assert calls == []  # everything is checked before anything is preprocessed
    assert str(pickle.loads(pickle.dumps(err))) == text


def test_skip_keeps_the_good_rows_and_writes_a_report(cohort: Path, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    damage_three_rows(cohort)
    report = tmp_path / "reports" / "bad_rows.csv"
    with caplog.at_level(logging.WARNING, logger="mmssl.data.neuro"):
        c = load_cohort(cohort, MODS, settings=SETTINGS, on_bad_row="skip", report_path=report,
                        label_mapping={"AD": 0, "CN": 1}, progress=False)
    assert len(c) == N_ROWS - 3
    assert [r.line for r in c.manifest.rows] == [2, 4, 5, 7, 8, 10, 11]
    assert list(c.subjects) == ["sub-01", "sub-02", "sub-02", "sub-04", "sub-05", "sub-07",
                                "sub-08"]
    assert [p.line for p in c.skipped] == [3, 6, 9]
    with report.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["line", "subject", "column", "file", "message"]
    assert [(r["line"], r["subject"], r["column"]) for r in rows] == [
        ("3", "sub-01", "t1"), ("6", "sub-03", "falff"), ("9", "sub-06", "label")]
    assert rows[1]["file"] == "sub-03/ses-1/falff.nii.gz"
    assert "skipping 3 of 10 rows" in caplog.text

    for row in range(N_ROWS):  # now break every row
        _missing(volume_path(cohort, row, "falff"))
    with pytest.raises(ManifestError, match="No usable row"):
        load_cohort(cohort, MODS, settings=SETTINGS, on_bad_row="skip", progress=False)


# --------------------------------------------------------------------------- preprocessing


def test_preprocess_volume_lands_on_the_grid_masked_and_zscored(tiny_neuro_cohort: Path,
                                                                grid: TargetGrid) -> None:
    mask = mni_brain_mask(grid)
    path = volume_path(tiny_neuro_cohort, 0, "t1")
    out = preprocess_volume(path, grid, mask, SETTINGS)
    assert out.dtype == np.float32 and out.shape == SHAPE
    assert np.all(out[~mask] == 0.0)
    assert abs(out[mask].mean()) < 1e-4 and abs(out[mask].std() - 1.0) < 1e-4
    minmax = preprocess_volume(path, grid, mask,
                               Preprocessing(voxel_size=VOXEL, shape=SHAPE,
                                             normalization="minmax"))
    assert minmax[mask].min() == 0.0 and abs(minmax[mask].max() - 1.0) < 1e-6
    assert np.all(minmax[~mask] == 0.0)


def test_translation_in_the_affine_is_honoured(tmp_path: Path, grid: TargetGrid) -> None:
    raw = Preprocessing(voxel_size=VOXEL, shape=SHAPE, mask="none", normalization="none")
    data = neuro_volume("t1", 5)
    base = preprocess_volume(write_nifti(tmp_path / "a.nii.gz", data, neuro_affine()), grid,
                             None, raw)
    assert base.std() > 1.0
    # Same voxels, affine moved one target voxel (8 mm) along +x: the image moves by one voxel.
    moved = preprocess_volume(
        write_nifti(tmp_path / "b.nii.gz", data, neuro_affine(shift=(VOXEL, 0.0, 0.0))),
        grid, None, raw)
    np.testing.assert_allclose(moved[3:-3][1:], base[3:-3][:-1], atol=1e-3)
    assert not np.allclose(moved, base, atol=1.0)
    # The voxels padded by 2 slices along -y and the affine shifted back by 2 voxels: the same
    # world image, stored differently. (Linear interpolation: the cubic spline's prefilter is
    # global, so the extra slices would perturb the values near the edge a little.)
    padded = np.zeros((20, 26, 20), np.float32)
    padded[:, 2:] = data
    linear = Preprocessing(voxel_size=VOXEL, shape=SHAPE, mask="none", normalization="none",
                           interpolation="linear")
    base = preprocess_volume(tmp_path / "a.nii.gz", grid, None, linear)
    same = preprocess_volume(
        write_nifti(tmp_path / "c.nii.gz", padded, neuro_affine(shift=(0.0, -2 * VOXEL, 0.0))),
        grid, None, linear)
    inside = slice(4, 25)  # grid rows whose centres lie inside the unpadded volume
    np.testing.assert_allclose(same[:, inside], base[:, inside], atol=1e-3)
    assert np.abs(base[:, inside]).max() > 50.0


def test_preprocessing_settings_and_key(tmp_path: Path, grid: TargetGrid) -> None:
    assert SETTINGS.key() == Preprocessing(voxel_size=8, shape=[24, 28, 24]).key()  # type: ignore[arg-type]
    keys = {SETTINGS.key(), Preprocessing(voxel_size=VOXEL, shape=SHAPE, normalization="minmax")
            .key(), Preprocessing(voxel_size=VOXEL, shape=SHAPE, mask="none").key(),
            Preprocessing(voxel_size=VOXEL, shape=SHAPE, interpolation="linear").key()}
    assert len(keys) == 4
    for bad in ({"normalization": "robust"}, {"interpolation": "cubic"}, {"voxel_size": 0},
                {"shape": (64, 64)}):
        with pytest.raises(ValueError):
            Preprocessing(**bad)  # type: ignore[arg-type]
    mask_data = mni_brain_mask(grid).astype(np.uint8)
    mask_file = write_nifti(tmp_path / "mask.nii.gz", mask_data, grid.affine)
    with_file = Preprocessing(voxel_size=VOXEL, shape=SHAPE, mask=str(mask_file))
    key = with_file.key()
    np.testing.assert_array_equal(neuro.load_mask(with_file, grid), mni_brain_mask(grid))
    write_nifti(mask_file, np.ones_like(mask_data), grid.affine)
    assert with_file.key() != key


# ------------------------------------------------------------------------------------ cache


def test_cache_reuses_and_invalidates_per_file(cohort: Path, monkeypatch: pytest.MonkeyPatch,
                                               grid: TargetGrid) -> None:
    calls = counting_preprocess(monkeypatch)
    first = load_cohort(cohort, MODS, settings=SETTINGS, progress=False)
    assert len(calls) == 2 * N_ROWS
    assert first.cache_dir == cohort.parent / ".mmssl_cache"
    for m in MODS:
        v = first.volumes[m]
        assert isinstance(v, np.memmap) and v.dtype == np.float32 and v.shape == (N_ROWS, *SHAPE)
        assert not v.flags.writeable
    mask = mni_brain_mask(grid)
    np.testing.assert_array_equal(
        first.volumes["falff"][4],
        preprocess_volume(volume_path(cohort, 4, "falff"), grid, mask, SETTINGS))
    np.testing.assert_array_equal(first.labels, [0, 0, 1, 1, 1, 0, -1, 1, 0, 1])
    assert first.labels.dtype == np.int64 and first.label_mapping == {"AD": 0, "CN": 1}
    assert list(first.sessions[:2]) == ["ses-1", "ses-2"]
    assert first.covariates["age"].iloc[0] == 71.5 and first.grid == grid

    calls.clear()
    second = load_cohort(cohort, MODS, settings=SETTINGS, progress=False)
    assert calls == []
    for m in MODS:
        np.testing.assert_array_equal(second.volumes[m], first.volumes[m])

    changed = volume_path(cohort, 2, "falff")
    write_nifti(changed, neuro_volume("falff", 999), neuro_affine())
    third = load_cohort(cohort, MODS, settings=SETTINGS, progress=False)
    assert calls == [changed]
    assert not np.array_equal(third.volumes["falff"][2], first.volumes["falff"][2])
    np.testing.assert_array_equal(np.delete(third.volumes["falff"], 2, axis=0),
                                  np.delete(first.volumes["falff"], 2, axis=0))

    calls.clear()
    edit_manifest(cohort, lambda rows: rows.pop(0))  # a changed manifest reuses the entries
    fourth = load_cohort(cohort, MODS, settings=SETTINGS, progress=False)
    assert calls == [] and len(fourth) == N_ROWS - 1
    np.testing.assert_array_equal(fourth.volumes["t1"], first.volumes["t1"][1:])

    other = Preprocessing(voxel_size=VOXEL, shape=SHAPE, normalization="minmax")
    fifth = load_cohort(cohort, MODS, settings=other, progress=False)
    assert len(calls) == 2 * (N_ROWS - 1)
    assert float(fifth.volumes["t1"].max()) == pytest.approx(1.0)
    leftovers = [p for p in (cohort.parent / ".mmssl_cache").rglob("*") if p.suffix == ".tmp"]
    assert leftovers == []


def test_progress_and_explicit_cache_dir(tiny_neuro_cohort: Path, tmp_path: Path) -> None:
    c = load_cohort(tiny_neuro_cohort, MODS, settings=SETTINGS, cache_dir=tmp_path / "cache",
                    progress=True, label_mapping={"CN": 0, "AD": 1})
    assert c.cache_dir == tmp_path / "cache" and len(c) == N_ROWS
    assert not (tiny_neuro_cohort.parent / ".mmssl_cache").exists()
    assert c.label_mapping == {"CN": 0, "AD": 1} and c.labels[0] == 1
    settings_files = list((tmp_path / "cache").glob("preprocessed/*/settings.json"))
    assert len(settings_files) == 1
    assert json.loads(settings_files[0].read_text())["key"] == SETTINGS.key()
