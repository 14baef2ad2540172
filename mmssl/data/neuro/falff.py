"""fALFF: the fractional amplitude of low-frequency fluctuations of a resting-state BOLD series.

Definition (Zou et al., "An improved approach to detection of amplitude of low-frequency
fluctuation (ALFF) for resting-state fMRI: fractional ALFF", J. Neurosci. Methods 172:137-141,
2008): for each voxel, the sum of the amplitude spectrum over the low-frequency band divided by
the sum over the whole measurable frequency range.

Exact conventions used here
===========================

For one voxel with ``T`` volumes ``x_0 .. x_{T-1}`` acquired every ``TR`` seconds:

1. **Detrend.** With ``detrend=True`` the least-squares line ``a + b t`` is subtracted (this
   also removes the mean); with ``detrend=False`` only the mean is subtracted.
2. **Spectrum.** ``X_k = sum_t x_t exp(-2 pi i k t / T)`` for ``k = 0 .. floor(T/2)`` (the
   one-sided discrete Fourier transform, computed with ``numpy.fft.rfft``; no zero padding, no
   window), at frequencies ``f_k = k / (T TR)`` Hz. The lowest non-zero frequency resolvable is
   ``1 / (T TR)``, the highest the Nyquist frequency ``1 / (2 TR)``.
3. **Amplitude.** The one-sided amplitude spectrum ``A_k = 2 |X_k| / T`` for ``0 < k < T/2`` and
   ``A_{T/2} = |X_{T/2}| / T`` for the Nyquist bin (present when ``T`` is even), so that a
   cosine of amplitude ``a`` at any bin has ``A_k = a``. (The common factor ``2/T`` cancels in
   the ratio; only the Nyquist bin's half weight matters.) The DC bin ``k = 0`` is excluded
   everywhere.
4. **Ratio.** ``fALFF = sum_{k in band} A_k / sum_{k=1}^{floor(T/2)} A_k`` where the band is
   every ``k >= 1`` with ``low <= f_k <= high`` (both edges inclusive, to 1e-9 of a bin).

A voxel whose detrended series is numerically zero (root mean square below 1e-9 of the raw
series' RMS, e.g. a constant background voxel) has fALFF 0, as has every voxel outside the
mask. fALFF is invariant to the NIfTI scale factors (a positive slope cancels in the ratio, an
intercept is removed by step 1), so the stored values are used unscaled.

Memory: the series are read in the file's stored data type (memory-mapped for an uncompressed
``.nii``) and the spectra are computed ``chunk_voxels`` voxels at a time in float64, so the
workspace beyond the stored data is bounded by the chunk size.

:func:`falff_for_bids` applies :func:`compute_falff` to every preprocessed BOLD series of an
fMRIPrep-like derivative folder and writes the maps where :mod:`mmssl.data.bids` finds them.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np

from mmssl import __version__, io
from mmssl.data.neuro.bids import open_layout, require_bids_root

__all__ = [
    "FALFF_BAND_HZ",
    "FalffOutput",
    "compute_falff",
    "falff_band_bins",
    "falff_for_bids",
    "falff_output_name",
    "read_repetition_time",
]

log = logging.getLogger(__name__)

#: The conventional low-frequency band of Zou et al. (2008), in Hz.
FALFF_BAND_HZ: tuple[float, float] = (0.01, 0.08)
#: Default number of voxels whose spectra are computed at once.
DEFAULT_CHUNK_VOXELS = 20_000
#: Relative size below which a detrended series counts as zero (fALFF 0).
_FLAT_RELATIVE_RMS = 1e-9
#: Affine tolerance (mm) for "the mask is on the BOLD grid", as in :mod:`mmssl.data.neuro`.
_GRID_ATOL = 1e-3

# ------------------------------------------------------------------------------ band and TR


def falff_band_bins(n_volumes: int, tr: float, low: float = FALFF_BAND_HZ[0],
                    high: float = FALFF_BAND_HZ[1]) -> np.ndarray:
    """Indices ``k`` of the one-sided spectrum inside the band (conventions in the module doc).

    The band is every ``k`` in ``1 .. floor(T/2)`` with ``low <= k / (T TR) <= high``.

    Args:
        n_volumes: ``T``, the number of time points.
        tr: the repetition time in seconds.
        low: lower band edge in Hz (``>= 0``).
        high: upper band edge in Hz (``> low``, at most the Nyquist frequency ``1 / (2 TR)``).

    Returns:
        The sorted bin indices (at least one).

    Raises:
        ValueError: ``tr`` not positive and finite, the band empty or reversed, ``high`` above
            the Nyquist frequency, or too few volumes for any bin to fall inside the band (the
            message gives the lowest resolvable frequency ``1 / (T TR)``).
    """
    if not _positive_number(tr):
        raise ValueError(f"tr: the repetition time must be a positive number of seconds, got "
                         f"{tr!r}")
    tr = float(tr)
    if not (math.isfinite(low) and math.isfinite(high) and 0 <= low < high):
        raise ValueError(f"band: expected 0 <= low < high (Hz), got low={low!r}, high={high!r}")
    nyquist = 1.0 / (2.0 * tr)
    if high > nyquist * (1 + 1e-9):
        raise ValueError(f"band: high={high} Hz is above the Nyquist frequency 1/(2*TR) = "
                         f"{nyquist:.4g} Hz for TR={tr} s")
    if n_volumes < 3:
        raise ValueError(f"the BOLD series has {n_volumes} time point(s); fALFF needs at least 3")
    resolution = 1.0 / (n_volumes * tr)
    k = np.arange(1, n_volumes // 2 + 1)
    scaled = k.astype(np.float64)  # k in units of the resolution: f_k = k * resolution
    inside = (scaled >= low / resolution - 1e-9) & (scaled <= high / resolution + 1e-9)
    if not inside.any():
        needed = math.ceil(1.0 / (high * tr) - 1e-9)
        raise ValueError(
            f"the BOLD series is too short for the band {low}-{high} Hz: with T={n_volumes} "
            f"volumes at TR={tr} s the lowest frequency resolvable is 1/(T*TR) = "
            f"{resolution:.4g} Hz and the bins are spaced by that much, so none falls inside the "
            f"band (at least {needed} volumes are needed to resolve {high} Hz)")
    return k[inside]


def _positive_number(value: object) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(float(value)) and float(value) > 0)


def _sidecar_path(path: Path) -> Path:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return path.with_name(name[: -len(suffix)] + ".json")
    return path.with_suffix(".json")


def read_repetition_time(image: nib.Nifti1Image, path: Path | None = None) -> float:
    """The repetition time (s) of a 4-D image: the JSON sidecar's, else the header's.

    The BIDS sidecar (``<name>.json`` next to ``path``, key ``RepetitionTime``, seconds) is
    authoritative in BIDS and wins when present. Otherwise the header's ``pixdim[4]`` is used
    when positive, converted with the header's time unit (milliseconds and microseconds are
    converted; an unspecified unit is taken as seconds).

    Raises:
        ValueError: neither gives a positive, finite repetition time, or the sidecar is not
            valid JSON / its ``RepetitionTime`` is not a positive number.
    """
    if path is not None:
        sidecar = _sidecar_path(path)
        if sidecar.is_file():
            try:
                meta = json.loads(sidecar.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
                raise ValueError(f"{sidecar}: not a readable JSON sidecar ({error})") from error
            if isinstance(meta, dict) and "RepetitionTime" in meta:
                tr = meta["RepetitionTime"]
                if not _positive_number(tr):
                    raise ValueError(f"{sidecar}: RepetitionTime must be a positive number of "
                                     f"seconds, got {tr!r}")
                return float(tr)
    zooms = image.header.get_zooms()
    if len(zooms) >= 4:
        tr = float(zooms[3])
        if math.isfinite(tr) and tr > 0:
            unit = image.header.get_xyzt_units()[1]
            if unit == "unknown":
                log.warning("%s: repetition time %g taken from the header's pixdim[4] with no "
                            "time unit (assumed seconds); pass tr= or add a JSON sidecar if "
                            "that is wrong", path if path is not None else "BOLD image", tr)
            return tr / {"msec": 1e3, "usec": 1e6}.get(unit, 1.0)
    where = f"{path}" if path is not None else "the image"
    raise ValueError(f"{where}: no repetition time: the header's pixdim[4] is not positive and "
                     f"there is no JSON sidecar with RepetitionTime; pass tr= explicitly")


# ------------------------------------------------------------------------------------ fALFF


def _load(image: Any, what: str) -> tuple[nib.Nifti1Image, Path | None]:
    if isinstance(image, str | os.PathLike):
        path = Path(image).expanduser()
        if not path.is_file():
            raise ValueError(f"{what}: file not found: {path}")
        try:
            return nib.load(path), path  # type: ignore[return-value]
        except Exception as error:  # nibabel raises several types for bad files
            raise ValueError(f"{what}: {path} is not a NIfTI image nibabel can read "
                             f"({error})") from error
    if isinstance(image, nib.spatialimages.SpatialImage):
        name = image.get_filename()
        return image, (Path(name) if name else None)  # type: ignore[return-value]
    raise ValueError(f"{what}: expected a nibabel image or a path, got {type(image).__name__}")


def _stored_data(image: nib.spatialimages.SpatialImage) -> np.ndarray:
    """The voxel values as stored (no scaling; memory-mapped for uncompressed files)."""
    if nib.is_proxy(image.dataobj):
        return np.asanyarray(image.dataobj.get_unscaled())  # type: ignore[attr-defined]
    return np.asanyarray(image.dataobj)


def _mask_indices(mask: Any, spatial_shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """Flat (Fortran-order) indices of the mask's non-zero voxels on the BOLD grid."""
    if mask is None:
        return np.arange(int(np.prod(spatial_shape)))
    image, path = _load(mask, "mask")
    where = path if path is not None else "mask"
    shape = tuple(int(n) for n in image.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if shape != tuple(spatial_shape):
        raise ValueError(f"mask: {where} has shape {shape}, the BOLD grid is "
                         f"{tuple(spatial_shape)}; the mask must be on the BOLD grid")
    if not np.allclose(image.affine, affine, atol=_GRID_ATOL):
        raise ValueError(f"mask: {where} has a different affine from the BOLD series (beyond "
                         f"{_GRID_ATOL} mm); the mask must be on the BOLD grid")
    values = np.asanyarray(image.dataobj).reshape(shape)
    inside = np.isfinite(values) & (values != 0)
    flat = np.flatnonzero(inside.ravel(order="F"))
    if flat.size == 0:
        raise ValueError(f"mask: {where} has no non-zero voxel")
    return flat


def _falff_of_series(series: np.ndarray, band: np.ndarray, detrend: bool) -> np.ndarray:
    """fALFF of each row of ``series`` (voxels x time), float64, conventions as documented."""
    n = series.shape[1]
    x = series.astype(np.float64, copy=True)
    raw_rms = np.sqrt(np.mean(x * x, axis=1))
    x -= x.mean(axis=1, keepdims=True)
    if detrend:
        t = np.arange(n, dtype=np.float64)
        t -= t.mean()
        slope = (x @ t) / float(t @ t)
        x -= slope[:, None] * t[None, :]
    flat = np.sqrt(np.mean(x * x, axis=1)) <= _FLAT_RELATIVE_RMS * raw_rms
    amplitude = np.abs(np.fft.rfft(x, axis=1))
    amplitude[:, 0] = 0.0  # DC excluded
    if n % 2 == 0:
        amplitude[:, -1] *= 0.5  # the Nyquist bin has no mirror image
    total = amplitude.sum(axis=1)
    in_band = amplitude[:, band].sum(axis=1)
    result = np.zeros(series.shape[0], dtype=np.float64)
    usable = ~flat & (total > 0)
    result[usable] = in_band[usable] / total[usable]
    return result


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def compute_falff(bold: Any, mask: Any = None, *, tr: float | None = None,
                  low: float = FALFF_BAND_HZ[0], high: float = FALFF_BAND_HZ[1],
                  detrend: bool = True,
                  chunk_voxels: int = DEFAULT_CHUNK_VOXELS) -> nib.Nifti1Image:
    """The fALFF map of a 4-D BOLD series (Zou et al. 2008; conventions in the module doc).

    ``fALFF(v) = sum_{low <= f_k <= high} A_k(v) / sum_{k >= 1} A_k(v)`` with ``A`` the one-sided
    amplitude spectrum of voxel ``v``'s detrended series.

    Args:
        bold: a 4-D NIfTI image or the path of one (``T`` volumes on the last axis).
        mask: a 3-D image or path on the same grid (non-zero = inside), or ``None`` for every
            voxel.
        tr: repetition time in seconds; by default the JSON sidecar's ``RepetitionTime`` next to
            the file, else the header's ``pixdim[4]`` (:func:`read_repetition_time`).
        low: lower band edge (Hz).
        high: upper band edge (Hz), at most the Nyquist frequency ``1 / (2 TR)``.
        detrend: remove the least-squares line (else only the mean) before the transform.
        chunk_voxels: number of voxels transformed at once (bounds the float64 workspace to
            about ``chunk_voxels * T * 40`` bytes).

    Returns:
        A float32 3-D image on the BOLD grid (same affine), 0 outside the mask, values in
        [0, 1].

    Raises:
        ValueError: the input is not 4-D, ``tr`` is missing or not positive, the band is invalid
            or above Nyquist, the series is too short for the band, the mask is not on the BOLD
            grid or empty, or a voxel inside the mask holds a NaN or infinite value.
    """
    image, path = _load(bold, "bold")
    where = path if path is not None else "bold"
    if len(image.shape) != 4:
        raise ValueError(f"bold: {where} is {len(image.shape)}-D with shape "
                         f"{tuple(image.shape)}; a 4-D series (x, y, z, time) is needed")
    if not (isinstance(chunk_voxels, int) and chunk_voxels > 0):
        raise ValueError(f"chunk_voxels: expected a positive integer, got {chunk_voxels!r}")
    spatial = tuple(int(n) for n in image.shape[:3])
    n_volumes = int(image.shape[3])
    if tr is None:
        tr = read_repetition_time(image, path)
    band = falff_band_bins(n_volumes, tr, low, high)
    voxels = _mask_indices(mask, spatial, image.affine)

    data = _stored_data(image).reshape(-1, n_volumes, order="F")
    falff = np.zeros(int(np.prod(spatial)), dtype=np.float32)
    for part in _chunks(voxels.size, chunk_voxels):
        index = voxels[part]
        series = np.asarray(data[index], dtype=np.float64)
        bad = ~np.isfinite(series).all(axis=1)
        if bad.any():
            first = tuple(int(i) for i in np.unravel_index(index[bad][0], spatial, order="F"))
            raise ValueError(f"bold: {where} has {int(bad.sum())} voxel(s) inside the mask "
                             f"with NaN or infinite values (first at voxel {first})")
        falff[index] = _falff_of_series(series, band, detrend)

    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    out = nib.Nifti1Image(falff.reshape(spatial, order="F"), image.affine, header)
    source_header = image.header
    if isinstance(source_header, nib.Nifti1Header):
        out.set_qform(image.affine, int(source_header["qform_code"]))
        out.set_sform(image.affine, int(source_header["sform_code"]))
    out.header.set_xyzt_units(xyz=image.header.get_xyzt_units()[0] or "mm")
    out.header["descrip"] = f"fALFF {low:g}-{high:g} Hz TR {tr:g} s".encode()[:79]
    return out


# ------------------------------------------------------------------------------ BIDS driver


@dataclass(frozen=True)
class FalffOutput:
    """One fALFF map of :func:`falff_for_bids`.

    Attributes:
        bold: the preprocessed BOLD series it comes from.
        output: the fALFF map's path.
        status: ``"written"`` (computed now) or ``"exists"`` (left as it was).
        mask: the brain mask used, or ``None`` (every voxel).
        tr: the repetition time used (s); ``None`` when the map was left as it was.
    """

    bold: Path
    output: Path
    status: Literal["written", "exists"]
    mask: Path | None
    tr: float | None


_PREPROC_TAG = "_desc-preproc_bold"


def falff_output_name(bold_name: str, desc: str = "falff") -> str:
    """The fALFF map's file name for a preprocessed BOLD file name.

    ``sub-01_ses-1_task-rest_space-X_desc-preproc_bold.nii.gz`` ->
    ``sub-01_ses-1_task-rest_space-X_desc-falff_boldmap.nii.gz`` (every other entity kept).

    Raises:
        ValueError: the name does not contain ``_desc-preproc_bold``.
    """
    if _PREPROC_TAG not in bold_name:
        raise ValueError(f"{bold_name}: not a preprocessed BOLD file name (no "
                         f"'{_PREPROC_TAG}')")
    stem = bold_name.split(_PREPROC_TAG)[0]
    return f"{stem}_desc-{desc}_boldmap.nii.gz"


def _atomic_save_nifti(image: nib.Nifti1Image, path: Path) -> None:
    io.save_image(path, image)


def _atomic_save_json(data: Any, path: Path) -> None:
    io.write_json(path, data)


def _derivative_description(low: float, high: float, detrend: bool) -> dict[str, Any]:

    return {
        "Name": "fALFF maps (mmssl)",
        "BIDSVersion": "1.8.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": "mmssl-falff",
            "Version": __version__,
            "Description": (f"fALFF (Zou et al. 2008): one-sided amplitude spectrum of the "
                            f"{'linearly detrended' if detrend else 'demeaned'} series, band "
                            f"{low:g}-{high:g} Hz over all non-DC frequencies"),
        }],
    }


def falff_for_bids(bids_dir: str | os.PathLike[str], *, bold_pipeline: str = "fmriprep",
                   out_pipeline: str = "falff", space: str = "MNI152NLin2009cAsym",
                   task: str = "rest", desc: str = "falff",
                   low: float = FALFF_BAND_HZ[0], high: float = FALFF_BAND_HZ[1],
                   detrend: bool = True, overwrite: bool = False,
                   chunk_voxels: int = DEFAULT_CHUNK_VOXELS) -> list[FalffOutput]:
    """Compute fALFF for every preprocessed BOLD series of a BIDS dataset's derivatives.

    Inputs are ``<bids_dir>/derivatives/<bold_pipeline>/sub-*/[ses-*/]func/
    *_task-<task>_space-<space>[...]_desc-preproc_bold.nii[.gz]`` (found with pybids), each
    with its repetition time from its JSON metadata (BIDS inheritance applies) or header, and
    the brain mask of the same name with ``_desc-brain_mask`` when it exists (else every voxel).
    Each map is written to ``<bids_dir>/derivatives/<out_pipeline>/`` at the same relative
    folder under the name of :func:`falff_output_name`, with a JSON sidecar recording the
    source, band and TR; ``dataset_description.json`` is created when missing. Existing maps
    are left alone unless ``overwrite`` (they are not checked against the band).

    Returns:
        One :class:`FalffOutput` per BOLD series, in path order.

    Raises:
        ValueError: ``bids_dir`` has no ``dataset_description.json``, the BOLD pipeline folder
            is missing or holds no matching series, or :func:`compute_falff` rejects a series
            (the error names the file).
    """

    root = require_bids_root(bids_dir)
    source_root = root / "derivatives" / bold_pipeline
    layout = open_layout(source_root, derivative=True)
    bolds = sorted(Path(f) for f in layout.get(
        suffix="bold", desc="preproc", space=space, task=task,
        extension=[".nii.gz", ".nii"], return_type="file"))
    if not bolds:
        raise ValueError(f"{source_root}: no preprocessed BOLD series "
                         f"(*_task-{task}_space-{space}*_desc-preproc_bold.nii[.gz])")
    out_root = root / "derivatives" / out_pipeline
    description = out_root / "dataset_description.json"
    if not description.is_file():
        _atomic_save_json(_derivative_description(low, high, detrend), description)

    results: list[FalffOutput] = []
    for bold in bolds:
        relative = bold.parent.relative_to(source_root)
        output = out_root / relative / falff_output_name(bold.name, desc)
        mask_path = bold.with_name(bold.name.split(_PREPROC_TAG)[0] + "_desc-brain_mask"
                                   + (".nii.gz" if bold.name.endswith(".gz") else ".nii"))
        mask = mask_path if mask_path.is_file() else None
        if output.is_file() and not overwrite:
            results.append(FalffOutput(bold, output, "exists", mask, None))
            continue
        metadata_tr = layout.get_metadata(str(bold)).get("RepetitionTime")
        if metadata_tr is not None and not _positive_number(metadata_tr):
            raise ValueError(f"{bold}: RepetitionTime in its JSON metadata must be a positive "
                             f"number of seconds, got {metadata_tr!r}")
        image = nib.load(bold)
        tr = (float(metadata_tr) if metadata_tr is not None
              else read_repetition_time(image, bold))  # type: ignore[arg-type]
        falff = compute_falff(image, mask, tr=tr, low=low, high=high, detrend=detrend,
                              chunk_voxels=chunk_voxels)
        _atomic_save_nifti(falff, output)
        _atomic_save_json({
            "Sources": [os.path.relpath(bold, output.parent)],
            "Mask": os.path.relpath(mask, output.parent) if mask is not None else None,
            "RepetitionTime": tr,
            "BandHz": [low, high],
            "Detrend": "linear" if detrend else "mean",
            "Method": "fALFF, Zou et al. 2008, J Neurosci Methods 172:137-141",
        }, _sidecar_path(output))
        log.info("fALFF %s -> %s", bold, output)
        results.append(FalffOutput(bold, output, "written", mask, tr))
    return results
