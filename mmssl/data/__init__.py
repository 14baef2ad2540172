"""Everything that turns files into batches, and the dataset registry.

* :mod:`~mmssl.data.registry` — datasets declare themselves (:class:`DatasetSpec`);
* :mod:`~mmssl.data.base`, :mod:`~mmssl.data.loading` — the common data module, loaders and
  the resume-exact sampler;
* :mod:`~mmssl.data.mnist`, :mod:`~mmssl.data.views`, :mod:`~mmssl.data.two_view_mnist` —
  IDX files, the embedded MNIST subset and Two-View MNIST;
* :mod:`~mmssl.data.mnist_svhn` — SVHN ``.mat`` files and the MMVAE pairing;
* :mod:`~mmssl.data.neuro` — manifests, validation, preprocessing, cache, cohorts of brain
  volumes;
* :mod:`~mmssl.data.splits` — stratified and subject-level folds.

Importing this package imports every module in it (and the ``neuro`` package), and each
dataset registers itself: ``two_view_mnist``, ``mnist_svhn``, ``neuro``.
"""

import sys

from mmssl.data.base import MultimodalDataModule
from mmssl.data.loading import (
    EVAL_SPLITS,
    EpochShuffleSampler,
    TensorDictDataset,
    check_split,
    tensor_dict_loader,
)
from mmssl.data.mnist import MnistArrays, find_mnist_files, load_mnist, read_idx, write_idx
from mmssl.data.mnist_svhn import (
    MNIST_SVHN_MODALITIES,
    MnistSvhnDataModule,
    MnistSvhnSettings,
    PairedImageDataset,
    find_mnist_svhn_files,
    pair_by_class,
    read_svhn_mat,
)
from mmssl.data.neuro import NeuroDataModule, NeuroSettings
from mmssl.data.registry import DATASETS, DatasetSpec, DataSettings, dataset_spec, register_dataset
from mmssl.data.splits import check_fold, stratified_fold
from mmssl.data.two_view_mnist import (
    PAIRINGS,
    TwoViewMnistDataModule,
    TwoViewMnistSettings,
    same_class_partners,
)
from mmssl.data.views import (
    IMAGE_SIZE,
    TWO_VIEW_MODALITIES,
    derive_seed,
    make_views,
    prepare_images,
    rotate,
    sample_angles,
)
from mmssl.plugins import import_submodules

# A new dataset is one module in this package: it registers itself when imported.
import_submodules(sys.modules[__name__])

__all__ = [
    "DATASETS",
    "EVAL_SPLITS",
    "IMAGE_SIZE",
    "MNIST_SVHN_MODALITIES",
    "PAIRINGS",
    "TWO_VIEW_MODALITIES",
    "DataSettings",
    "DatasetSpec",
    "EpochShuffleSampler",
    "MnistArrays",
    "MnistSvhnDataModule",
    "MnistSvhnSettings",
    "MultimodalDataModule",
    "NeuroDataModule",
    "NeuroSettings",
    "PairedImageDataset",
    "TensorDictDataset",
    "TwoViewMnistDataModule",
    "TwoViewMnistSettings",
    "check_fold",
    "check_split",
    "dataset_spec",
    "derive_seed",
    "find_mnist_files",
    "find_mnist_svhn_files",
    "load_mnist",
    "make_views",
    "pair_by_class",
    "prepare_images",
    "read_idx",
    "read_svhn_mat",
    "register_dataset",
    "rotate",
    "same_class_partners",
    "sample_angles",
    "stratified_fold",
    "tensor_dict_loader",
    "write_idx",
]
