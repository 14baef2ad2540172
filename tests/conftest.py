"""Shared pytest fixtures.

``tiny_mnist_dir`` writes a tiny MNIST look-alike in the real on-disk format (gzipped IDX files
with the official names) with a writer independent of :mod:`mmssl`, so it exercises the reader
for real and can stand in for ``--data-dir`` in end-to-end tests.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

TINY_TRAIN_PER_CLASS = 20
TINY_TEST_PER_CLASS = 5


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file: magic 0x0000 0x08 ndim, big-endian dims, data."""
    assert array.dtype == np.uint8
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(gzip.compress(header + array.tobytes(), mtime=0))


def tiny_digits(per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``10 * per_class`` 28x28 uint8 images whose label is drawn in, and balanced labels.

    Class ``k`` has a bright horizontal bar at rows ``3+2k..5+2k`` and a vertical bar whose
    column depends on ``k``, over sparse random speckle, so the classes are learnable.
    """
    labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
    rng.shuffle(labels)
    images = (rng.random((len(labels), 28, 28)) < 0.05).astype(np.uint8) * 80
    for i, k in enumerate(labels):
        images[i, 3 + 2 * k: 6 + 2 * k, 4:24] = 255
        images[i, 4:24, 4 + 2 * k: 6 + 2 * k] = 200
    return images, labels


@pytest.fixture(scope="session")
def tiny_mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the four gzipped MNIST IDX files: 200 train and 50 test images.

    Labels are balanced (20 train and 5 test images per class, in shuffled order).
    """
    root = tmp_path_factory.mktemp("tiny_mnist")
    rng = np.random.default_rng(20201225)
    train_x, train_y = tiny_digits(TINY_TRAIN_PER_CLASS, rng)
    test_x, test_y = tiny_digits(TINY_TEST_PER_CLASS, rng)
    write_idx_gz(root / "train-images-idx3-ubyte.gz", train_x)
    write_idx_gz(root / "train-labels-idx1-ubyte.gz", train_y)
    write_idx_gz(root / "t10k-images-idx3-ubyte.gz", test_x)
    write_idx_gz(root / "t10k-labels-idx1-ubyte.gz", test_y)
    return root


#: Images per digit 0..9 in the tiny SVHN files: unequal, some below and some above the tiny
#: MNIST counts (20 train, 5 test per class), so ``min(#mnist_c, #svhn_c)`` goes both ways.
TINY_SVHN_TRAIN_COUNTS = (6, 25, 20, 18, 15, 14, 13, 12, 12, 15)  # 150 images
TINY_SVHN_TEST_COUNTS = (2, 8, 6, 5, 4, 4, 3, 3, 2, 3)  # 40 images


def tiny_svhn(counts: tuple[int, ...], rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray]:
    """SVHN-layout arrays: ``X`` uint8 ``(32, 32, 3, N)`` and ``y`` uint8 ``(N, 1)`` in 1..10.

    Digit ``k`` (stored as label ``10`` for ``k = 0``, as in the real files) has a bright
    vertical bar at columns ``2+3k..3+3k`` in colour channel ``k % 3`` over dim random noise.
    """
    digits = np.repeat(np.arange(10), counts)
    rng.shuffle(digits)
    x = rng.integers(0, 60, size=(32, 32, 3, len(digits)), dtype=np.uint8)
    for n, k in enumerate(digits):
        x[4:28, 2 + 3 * k: 4 + 3 * k, k % 3, n] = 250
    y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(-1, 1)
    return x, y


def write_svhn_mat(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """Save ``X`` and ``y`` as a MATLAB v5 file, the format of the published SVHN files."""
    from scipy.io import savemat

    savemat(path, {"X": x, "y": y}, format="5")


@pytest.fixture(scope="session")
def tiny_mnist_svhn_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny MNIST IDX files (as ``tiny_mnist_dir``) plus tiny SVHN ``.mat`` files.

    SVHN: ``train_32x32.mat`` with 150 and ``test_32x32.mat`` with 40 images, class counts
    :data:`TINY_SVHN_TRAIN_COUNTS` and :data:`TINY_SVHN_TEST_COUNTS`.
    """
    root = tmp_path_factory.mktemp("tiny_mnist_svhn")
    rng = np.random.default_rng(20201226)
    train_x, train_y = tiny_digits(TINY_TRAIN_PER_CLASS, rng)
    test_x, test_y = tiny_digits(TINY_TEST_PER_CLASS, rng)
    write_idx_gz(root / "train-images-idx3-ubyte.gz", train_x)
    write_idx_gz(root / "train-labels-idx1-ubyte.gz", train_y)
    write_idx_gz(root / "t10k-images-idx3-ubyte.gz", test_x)
    write_idx_gz(root / "t10k-labels-idx1-ubyte.gz", test_y)
    write_svhn_mat(root / "train_32x32.mat", *tiny_svhn(TINY_SVHN_TRAIN_COUNTS, rng))
    write_svhn_mat(root / "test_32x32.mat", *tiny_svhn(TINY_SVHN_TEST_COUNTS, rng))
    return root
