"""Data: MNIST-layout loading, stratified folds, view generation and the Two-View MNIST module."""

from mmssl.data.mnist import MnistArrays, find_mnist_files, load_mnist, read_idx, write_idx
from mmssl.data.splits import check_fold, stratified_fold
from mmssl.data.two_view_mnist import (
    EVAL_SPLITS,
    EpochShuffleSampler,
    TensorDictDataset,
    TwoViewMnistDataModule,
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
    "TWO_VIEW_MODALITIES",
    "EpochShuffleSampler",
    "MnistArrays",
    "TensorDictDataset",
    "TwoViewMnistDataModule",
    "check_fold",
    "derive_seed",
    "find_mnist_files",
    "load_mnist",
    "make_views",
    "prepare_images",
    "read_idx",
    "rotate",
    "sample_angles",
    "stratified_fold",
    "write_idx",
]
