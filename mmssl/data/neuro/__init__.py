"""Paired neuroimaging volumes (e.g. T1 MRI + fALFF), from a manifest to training batches.

The package follows the path of the data:

* :mod:`~mmssl.data.neuro.manifest` — the manifest CSV (one row per session), read and checked
  row by row; every problem is listed with its line, subject, column and file;
* :mod:`~mmssl.data.neuro.validation` — every volume checked before anything is computed
  (readable, sizes its header declares, 3-D, finite, on a common grid per row);
* :mod:`~mmssl.data.neuro.grid` — the MNI target grids and the MNI152 brain mask;
* :mod:`~mmssl.data.neuro.preprocessing` — resample, mask and normalise one volume;
* :mod:`~mmssl.data.neuro.cache` — preprocessed volumes cached by file content;
* :mod:`~mmssl.data.neuro.cohort` — all of it together: :func:`load_cohort` → :class:`Cohort`;
* :mod:`~mmssl.data.neuro.augment` — the shared random crop/flip of paired volumes;
* :mod:`~mmssl.data.neuro.datamodule` — subject-level splits and batches, the ``neuro``
  dataset of the registry.

The most used names are importable from this package directly.
"""

from mmssl.data.neuro.cache import CACHE_DIR_NAME
from mmssl.data.neuro.cohort import Cohort, load_cohort
from mmssl.data.neuro.datamodule import (
    AugmentationSettings,
    CohortDataset,
    NeuroDataModule,
    NeuroSettings,
)
from mmssl.data.neuro.grid import TargetGrid, mni_brain_mask, mni_grid
from mmssl.data.neuro.manifest import (
    NIFTI_SUFFIXES,
    UNLABELLED,
    Manifest,
    ManifestError,
    ManifestRow,
    OnBadRow,
    Problem,
    read_manifest,
    write_problem_report,
)
from mmssl.data.neuro.preprocessing import (
    PREPROCESSING_VERSION,
    Preprocessing,
    load_mask,
    preprocess_volume,
)
from mmssl.data.neuro.validation import MAX_VOLUME_BYTES, validate_volumes

__all__ = [
    "CACHE_DIR_NAME",
    "MAX_VOLUME_BYTES",
    "NIFTI_SUFFIXES",
    "PREPROCESSING_VERSION",
    "UNLABELLED",
    "AugmentationSettings",
    "Cohort",
    "CohortDataset",
    "Manifest",
    "ManifestError",
    "ManifestRow",
    "NeuroDataModule",
    "NeuroSettings",
    "OnBadRow",
    "Preprocessing",
    "Problem",
    "TargetGrid",
    "load_cohort",
    "load_mask",
    "mni_brain_mask",
    "mni_grid",
    "preprocess_volume",
    "read_manifest",
    "validate_volumes",
    "write_problem_report",
]
