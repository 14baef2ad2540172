"""fALFF (mmssl.data.falff) against closed forms, a brute-force DFT and its input checks."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from mmssl.data.neuro.falff import compute_falff, falff_band_bins, falff_output_name

AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])


def bold_image(series: np.ndarray, tr: float | None = 1.0) -> nib.Nifti1Image:
    """A (n, 1, 1, T) image whose voxel i holds series[i]."""
    data = np.asarray(series, dtype=np.float32)[:, None, None, :]
    image = nib.Nifti1Image(data, AFFINE)
    if tr is not None:
        image.header.set_zooms((3.0, 3.0, 3.0, tr))
        image.header.set_xyzt_units("mm", "sec")
    return image


def falff_values(series: np.ndarray, **kwargs: Any) -> np.ndarray:
    return np.asarray(compute_falff(bold_image(series), **kwargs).dataobj)[:, 0, 0]


def cosine(freq: float, n: int, tr: float = 1.0, amplitude: float = 1.0,
           phase: float = 0.0) -> np.ndarray:
    return amplitude * np.cos(2 * np.pi * freq * np.arange(n) * tr + phase)


def brute_force_falff(x: np.ndarray, tr: float, low: float, high: float) -> float:
    """Independent oracle: polyfit detrend, direct DFT sum, one-sided amplitude, ratio."""
    n = len(x)
    t = np.arange(n)
    residual = x - np.polyval(np.polyfit(t, x, 1), t)
    numerator = denominator = 0.0
    for k in range(1, n // 2 + 1):
        re = sum(residual[j] * math.cos(2 * math.pi * k * j / n) for j in range(n))
        im = -sum(residual[j] * math.sin(2 * math.pi * k * j / n) for j in range(n))
        weight = 1.0 if 2 * k == n else 2.0
        amplitude = weight * math.hypot(re, im) / n
        denominator += amplitude
        if low - 1e-12 <= k / (n * tr) <= high + 1e-12:
            numerator += amplitude
    return numerator / denominator


# ------------------------------------------------------------------------------ closed forms


def test_pure_in_band_sinusoid_gives_one() -> None:
    n = 200  # 0.05 Hz at TR 1 s is bin 10 exactly
    x = cosine(0.05, n, phase=0.3) + 7.0
    assert falff_values(x[None], detrend=False)[0] == pytest.approx(1.0, abs=1e-6)
    # the linear detrend removes a small ramp component, which leaks a little
    assert falff_values(x[None], detrend=True)[0] == pytest.approx(1.0, abs=0.05)


def test_out_of_band_sinusoid_gives_zero() -> None:
    x = cosine(0.2, 200, phase=1.1)
    assert falff_values(x[None], detrend=False)[0] == pytest.approx(0.0, abs=1e-6)
    assert falff_values(x[None], detrend=True)[0] < 0.05


def test_sum_of_sinusoids_gives_ratio_of_amplitudes() -> None:
    n = 200  # bins at 0.03 (in band), 0.2 and 0.3 Hz (out of band)
    x = cosine(0.03, n, amplitude=3.0) + cosine(0.2, n, amplitude=1.0) \
        + cosine(0.3, n, amplitude=2.0, phase=0.7)
    assert falff_values(x[None], detrend=False)[0] == pytest.approx(3 / 6, abs=1e-6)


def test_nyquist_component_counts_with_its_own_amplitude() -> None:
    # a unit cosine at the Nyquist bin has one-sided amplitude 1, like one anywhere else
    n = 100
    x = cosine(0.05, n) + cosine(0.5, n)
    assert falff_values(x[None], detrend=False)[0] == pytest.approx(0.5, abs=1e-6)


def test_band_edges_are_inclusive() -> None:
    n, tr = 100, 1.0  # bins at 0.01 and 0.08 Hz are k = 1 and 8
    assert list(falff_band_bins(n, tr)) == list(range(1, 9))
    x = cosine(0.01, n) + cosine(0.08, n) + cosine(0.09, n, amplitude=2.0)
    assert falff_values(x[None], detrend=False)[0] == pytest.approx(2 / 4, abs=1e-6)


def test_white_noise_gives_band_fraction() -> None:
    rng = np.random.default_rng(0)
    n = 200
    series = rng.standard_normal((500, n))
    values = falff_values(series)
    band = falff_band_bins(n, 1.0)  # k = 2..16: 15 of the 100 non-DC bins
    assert len(band) == 15
    # equal expected amplitude per bin (the half-weight Nyquist bin aside)
    expected = len(band) / (n // 2 - 0.5)
    assert values.mean() == pytest.approx(expected, abs=0.01)
    assert values.min() > 0 and values.max() < 0.4


def test_matches_brute_force_dft() -> None:
    rng = np.random.default_rng(1)
    tr = 2.0
    for n in (37, 40):  # odd and even lengths (with and without a Nyquist bin)
        t = np.arange(n)
        series = np.stack([
            rng.standard_normal(n),
            0.3 * t + cosine(0.03, n, tr) + 0.5 * rng.standard_normal(n),
            100.0 + cosine(0.15, n, tr, amplitude=4) + rng.standard_normal(n),
        ])
        image = bold_image(series, tr=tr)
        got = np.asarray(compute_falff(image, low=0.02, high=0.1).dataobj)[:, 0, 0]
        want = [brute_force_falff(s.astype(np.float32).astype(np.float64), tr, 0.02, 0.1)
                for s in series]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_chunking_mask_and_flat_voxels() -> None:
    rng = np.random.default_rng(2)
    data = rng.standard_normal((3, 4, 5, 60)).astype(np.float32)
    data[0, 0, 0] = 5.0  # constant voxel -> 0
    image = nib.Nifti1Image(data, AFFINE)
    whole = np.asarray(compute_falff(image, tr=2.0, chunk_voxels=7).dataobj)
    single = np.asarray(compute_falff(image, tr=2.0, chunk_voxels=10_000).dataobj)
    np.testing.assert_array_equal(whole, single)
    assert whole[0, 0, 0] == 0.0
    assert whole.dtype == np.float32 and whole.shape == (3, 4, 5)
    mask = np.zeros((3, 4, 5), dtype=np.uint8)
    mask[1:, 2:, 1:4] = 1
    masked = np.asarray(compute_falff(image, nib.Nifti1Image(mask, AFFINE), tr=2.0,
                                      chunk_voxels=5).dataobj)
    np.testing.assert_array_equal(masked[mask == 1], whole[mask == 1])
    assert (masked[mask == 0] == 0).all()
    out = compute_falff(image, tr=2.0)
    np.testing.assert_array_equal(out.affine, AFFINE)


def test_scale_factors_do_not_change_falff(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    data = (1000 + 50 * rng.standard_normal((2, 2, 2, 50))).astype(np.int16)
    plain = nib.Nifti1Image(data, AFFINE)
    scaled = nib.Nifti1Image(data, AFFINE)
    scaled.header.set_slope_inter(0.25, -3.0)
    nib.save(scaled, tmp_path / "scaled.nii")
    a = np.asarray(compute_falff(plain, tr=2.0).dataobj)
    b = np.asarray(compute_falff(tmp_path / "scaled.nii", tr=2.0).dataobj)
    np.testing.assert_allclose(a, b, rtol=1e-6)


# ------------------------------------------------------------------------------ TR sources


def test_tr_from_header_and_from_sidecar(tmp_path: Path) -> None:
    # with 100 volumes, bin 14 is 0.07 Hz at TR 2 s (in band) and 0.14 Hz at TR 1 s (not)
    n = 100
    x = np.cos(2 * np.pi * 14 * np.arange(n) / n)[None]
    explicit_2 = falff_values(x, tr=2.0, detrend=False)[0]
    explicit_1 = falff_values(x, tr=1.0, detrend=False)[0]
    assert explicit_2 == pytest.approx(1.0, abs=1e-6)
    assert explicit_1 == pytest.approx(0.0, abs=1e-6)

    header_2 = bold_image(x, tr=2.0)
    assert np.asarray(compute_falff(header_2, detrend=False).dataobj)[0, 0, 0] == \
        pytest.approx(explicit_2, abs=1e-6)
    header_ms = bold_image(x, tr=2000.0)
    header_ms.header.set_xyzt_units("mm", "msec")
    assert np.asarray(compute_falff(header_ms, detrend=False).dataobj)[0, 0, 0] == \
        pytest.approx(explicit_2, abs=1e-6)

    # the header says 1 s, the BIDS sidecar says 2 s: the sidecar wins
    path = tmp_path / "sub-01_task-rest_bold.nii.gz"
    nib.save(bold_image(x, tr=1.0), path)
    (tmp_path / "sub-01_task-rest_bold.json").write_text(json.dumps({"RepetitionTime": 2.0}))
    assert np.asarray(compute_falff(path, detrend=False).dataobj)[0, 0, 0] == \
        pytest.approx(explicit_2, abs=1e-6)
    # same when given the loaded image (its file name leads to the sidecar)
    assert np.asarray(compute_falff(nib.load(path), detrend=False).dataobj)[0, 0, 0] == \
        pytest.approx(explicit_2, abs=1e-6)


def test_no_tr_anywhere_is_an_error(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((1, 50))
    image = bold_image(x, tr=None)
    image.header["pixdim"][4] = 0.0
    path = tmp_path / "bold.nii.gz"
    nib.save(image, path)
    with pytest.raises(ValueError, match="no repetition time"):
        compute_falff(path)
    (tmp_path / "bold.json").write_text(json.dumps({"RepetitionTime": -1}))
    with pytest.raises(ValueError, match="RepetitionTime must be a positive"):
        compute_falff(path)


# ---------------------------------------------------------------------------------- errors


def test_rejects_bad_input(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="3-D.*4-D series"):
        compute_falff(nib.Nifti1Image(rng.standard_normal((4, 4, 4)), AFFINE), tr=1.0)
    # 20 volumes at TR 0.5 s: lowest frequency 0.1 Hz, above the band
    with pytest.raises(ValueError, match=r"lowest frequency resolvable is 1/\(T\*TR\) = 0\.1 Hz"):
        compute_falff(bold_image(rng.standard_normal((1, 20)), tr=0.5))
    with pytest.raises(ValueError, match="above the Nyquist frequency"):
        compute_falff(bold_image(rng.standard_normal((1, 200)), tr=10.0))
    with pytest.raises(ValueError, match="positive number of seconds"):
        compute_falff(bold_image(rng.standard_normal((1, 200))), tr=0.0)
    with pytest.raises(ValueError, match="low < high"):
        compute_falff(bold_image(rng.standard_normal((1, 200))), tr=1.0, low=0.08, high=0.01)
    image = nib.Nifti1Image(rng.standard_normal((4, 4, 4, 60)).astype(np.float32), AFFINE)
    with pytest.raises(ValueError, match="mask.*shape"):
        compute_falff(image, nib.Nifti1Image(np.ones((4, 4, 5), np.uint8), AFFINE), tr=1.0)
    shifted = AFFINE.copy()
    shifted[0, 3] = 1.5
    with pytest.raises(ValueError, match="mask.*different affine"):
        compute_falff(image, nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), shifted), tr=1.0)
    with pytest.raises(ValueError, match="no non-zero voxel"):
        compute_falff(image, nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), AFFINE), tr=1.0)
    with pytest.raises(ValueError, match="file not found"):
        compute_falff(tmp_path / "missing.nii.gz", tr=1.0)
    broken = np.asarray(image.dataobj).copy()
    broken[1, 2, 3, 7] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinite.*\(1, 2, 3\)"):
        compute_falff(nib.Nifti1Image(broken, AFFINE), tr=1.0)


def test_output_name() -> None:
    assert falff_output_name("sub-1_ses-a_task-rest_run-2_space-X_desc-preproc_bold.nii.gz") \
        == "sub-1_ses-a_task-rest_run-2_space-X_desc-falff_boldmap.nii.gz"
    with pytest.raises(ValueError, match="not a preprocessed BOLD"):
        falff_output_name("sub-1_T1w.nii.gz")
