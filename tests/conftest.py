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


@pytest.fixture(autouse=True, scope="session")
def _private_mmssl_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Point mmssl's per-machine cache (the memory-format decisions of ``trainer.memory_format:
    auto``) at a folder of this test session, never the user's ``~/.cache/mmssl``."""
    import os

    os.environ["MMSSL_CACHE_DIR"] = str(tmp_path_factory.mktemp("mmssl-cache"))

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


# ------------------------------------------------------------------------- neuroimaging

#: Shape and voxel size (mm) of the tiny neuroimaging volumes.
NEURO_SHAPE = (20, 24, 20)
NEURO_VOXEL_MM = 8.0
#: World position (mm) of voxel (0, 0, 0): the 160 x 192 x 160 mm box covers the MNI152 brain.
NEURO_ORIGIN = (-73.0, -107.0, -70.0)
#: The rows of the tiny cohort: (subject, session, label, age, sex); the manifest's data lines
#: are 2..11 in this order. ``sub-05`` is unlabelled, ``sub-08``'s T1 is an uncompressed .nii.
NEURO_ROWS: tuple[tuple[str, str, str, str, str], ...] = (
    ("sub-01", "ses-1", "AD", "71.5", "F"),
    ("sub-01", "ses-2", "AD", "73.0", "F"),
    ("sub-02", "ses-1", "CN", "68", "M"),
    ("sub-02", "ses-2", "CN", "69", "M"),
    ("sub-03", "ses-1", "CN", "70", "F"),
    ("sub-04", "ses-1", "AD", "80", "M"),
    ("sub-05", "ses-1", "", "", "F"),
    ("sub-06", "ses-1", "CN", "66", "M"),
    ("sub-07", "ses-1", "AD", "77", "F"),
    ("sub-08", "ses-1", "CN", "62", "M"),
)


def neuro_affine(shift: tuple[float, float, float] = (0.0, 0.0, 0.0),
                 voxel: float = NEURO_VOXEL_MM) -> np.ndarray:
    """RAS affine with isotropic ``voxel`` mm voxels, voxel (0,0,0) at ``NEURO_ORIGIN + shift``."""
    affine = np.diag([voxel, voxel, voxel, 1.0])
    affine[:3, 3] = np.asarray(NEURO_ORIGIN) + np.asarray(shift)
    return affine


def neuro_volume(kind: str, seed: int, affine: np.ndarray | None = None,
                 shape: tuple[int, ...] = NEURO_SHAPE) -> np.ndarray:
    """A float32 brain-like volume defined in world coordinates (so it moves with the affine).

    An ellipsoid around (0, -17, 5) mm with a smooth pattern (different for ``t1`` and
    ``falff``) plus seeded noise, over a dim, noisy background.
    """
    affine = neuro_affine() if affine is None else affine
    rng = np.random.default_rng(seed)
    ijk = np.indices(shape[:3], dtype=np.float64).reshape(3, -1)
    x, y, z = affine[:3, :3] @ ijk + affine[:3, 3:4]
    inside = ((x / 70.0) ** 2 + ((y + 17.0) / 88.0) ** 2 + ((z - 5.0) / 76.0) ** 2) <= 1.0
    if kind == "t1":
        pattern = 80.0 + 20.0 * np.cos(x / 15.0) * np.cos(z / 20.0)
        background = 5.0
    else:
        pattern = 0.5 + 0.2 * np.sin(y / 20.0) + 0.1 * np.cos(x / 10.0)
        background = 0.05
    data = np.where(inside, pattern, background)
    data = data * (1.0 + 0.05 * rng.standard_normal(data.shape))
    return data.reshape(shape[:3]).astype(np.float32)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    """Save ``data`` with ``affine`` as NIfTI-1 (gzipped when the name ends in .gz)."""
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


@pytest.fixture(scope="session")
def tiny_neuro_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny paired T1 + fALFF cohort; returns its ``manifest.csv``.

    Ten rows (:data:`NEURO_ROWS`: eight subjects, two of them with two sessions; labels AD/CN
    and one empty), each with ``<subject>/<session>/t1.nii.gz`` and ``falff.nii.gz`` (``sub-08``:
    ``t1.nii``), 20 x 24 x 20 voxels of 8 mm on :func:`neuro_affine`, every file with its own
    noise. The manifest (``subject,session,label,t1,falff,age,sex``) uses relative paths.
    Tests that modify files must copy the folder first (``shutil.copytree``).
    """
    pytest.importorskip("nibabel")
    root = tmp_path_factory.mktemp("tiny_neuro")
    lines = ["subject,session,label,t1,falff,age,sex"]
    for n, (subject, session, label, age, sex) in enumerate(NEURO_ROWS):
        folder = f"{subject}/{session}"
        t1_name = "t1.nii" if subject == "sub-08" else "t1.nii.gz"
        write_nifti(root / folder / t1_name, neuro_volume("t1", 1000 + n), neuro_affine())
        write_nifti(root / folder / "falff.nii.gz", neuro_volume("falff", 2000 + n),
                    neuro_affine())
        lines.append(f"{subject},{session},{label},{folder}/{t1_name},{folder}/falff.nii.gz,"
                     f"{age},{sex}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


@pytest.fixture(scope="session")
def simulated_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small cohort from ``mmssl simulate`` (48 subjects, 6 mm grid): its manifest path."""
    from mmssl.data.neuro.simulate import SimulationSettings, simulate_cohort

    out = tmp_path_factory.mktemp("simulated")
    # Stronger effects than the calibrated defaults (made for 200 subjects at 3 mm), so that a
    # three-epoch run on 48 subjects at 6 mm separates the groups and finds the coupling.
    settings = SimulationSettings(subjects=48, seed=7, voxel_size=6.0, sessions=1,
                                  t1_effect=0.4, falff_effect=0.25, coupling=0.3)
    return simulate_cohort(out, settings, progress=False)
