"""Data: MNIST-layout loading, stratified folds, views, Two-View MNIST and MNIST-SVHN."""

from mmssl.data.mnist import MnistArrays, find_mnist_files, load_mnist, read_idx, write_idx
from mmssl.data.mnist_svhn import (
    MNIST_SVHN_MODALITIES,
    MnistSvhnDataModule,
    PairedImageDataset,
    find_mnist_svhn_files,
    pair_by_class,
    read_svhn_mat,
)
from mmssl.data.splits import check_fold, stratified_fold
from mmssl.data.two_view_mnist import (
    EVAL_SPLITS,
    PAIRINGS,
    EpochShuffleSampler,
    TensorDictDataset,
    TwoViewMnistDataModule,
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

__all__ = [
    "EVAL_SPLITS",
    "IMAGE_SIZE",
    "MNIST_SVHN_MODALITIES",
    "PAIRINGS",
    "TWO_VIEW_MODALITIES",
    "EpochShuffleSampler",
    "MnistArrays",
    "MnistSvhnDataModule",
    "PairedImageDataset",
    "TensorDictDataset",
    "TwoViewMnistDataModule",
    "check_fold",
    "derive_seed",
    "find_mnist_files",
    "find_mnist_svhn_files",
    "load_mnist",
    "make_views",
    "pair_by_class",
    "prepare_images",
    "read_idx",
    "read_svhn_mat",
    "rotate",
    "same_class_partners",
    "sample_angles",
    "stratified_fold",
    "write_idx",
]
