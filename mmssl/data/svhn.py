"""SVHN's ``.mat`` files and the MMVAE pairing of MNIST and SVHN digits by class.

The file formats and the pairing protocol of :mod:`mmssl.data.mnist_svhn` (see its docstring):
:func:`read_svhn_mat` reads the published cropped-digit files, :func:`find_mnist_svhn_files`
finds them beside the MNIST IDX files, :func:`pair_by_class` draws the class-matched pairs and
:func:`pairing_fingerprint` identifies a pairing for the cache.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import scipy.io

from mmssl.data.mnist import MNIST_FILES, candidate_names
from mmssl.data.views import IMAGE_SIZE

__all__ = [
    "MNIST_URL",
    "SVHN_FILES",
    "SVHN_URL",
    "find_mnist_svhn_files",
    "pair_by_class",
    "pairing_fingerprint",
    "read_svhn_mat",
]

#: The SVHN cropped-digit files: split -> file name.
SVHN_FILES: dict[str, str] = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
#: Where SVHN is published (format 2, cropped digits).
SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
#: Where MNIST is published (or any of its mirrors).
MNIST_URL = "https://yann.lecun.com/exdb/mnist/"

_SVHN_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)
_CACHE_VERSION = "mnist-svhn-pairs-v1"
_NUM_CLASSES = 10


# ----------------------------------------------------------------------------------- files


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one SVHN cropped-digits file such as ``train_32x32.mat`` or ``test_32x32.mat``.

    The files are MATLAB v5 files holding ``X``, ``uint8`` of shape ``(32, 32, 3, N)`` (height,
    width, RGB channel, image), and ``y``, of shape ``(N, 1)`` with labels ``1..10`` where ``10``
    stands for the digit 0.

    Args:
        path: the ``.mat`` file.

    Returns:
        ``(images, labels)``: ``uint8`` ``(N, 3, 32, 32)`` (``images[n, c, h, w] == X[h, w, c, n]``)
        and ``int64`` ``(N,)`` digits in ``0..9``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it is not a readable MATLAB v5 file, lacks ``X`` or ``y``, has the wrong
            shapes or dtype, or holds labels outside ``1..10``. The message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SVHN file {path} does not exist (published at {SVHN_URL})")
    try:
        mat = scipy.io.loadmat(path, variable_names=["X", "y"])
    except NotImplementedError as err:  # MATLAB v7.3 (HDF5)
        raise ValueError(f"{path}: unsupported MATLAB file version ({err}); expected the "
                         f"MATLAB v5 SVHN file from {SVHN_URL}") from err
    except Exception as err:  # scipy raises ValueError, MatReadError, TypeError, ... on junk
        raise ValueError(f"{path}: not a readable MATLAB .mat file ({type(err).__name__}: "
                         f"{err}); expected the SVHN cropped-digits file from {SVHN_URL}") from err
    missing = [k for k in ("X", "y") if k not in mat]
    if missing:
        raise ValueError(f"{path}: no variable {' or '.join(missing)}; an SVHN cropped-digits "
                         f"file holds X (32, 32, 3, N) uint8 and y (N, 1)")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"])
    if x.ndim != 4 or x.shape[:3] != _SVHN_SHAPE or x.dtype != np.uint8:
        raise ValueError(f"{path}: X must be uint8 of shape (32, 32, 3, N), got {x.dtype} of "
                         f"shape {x.shape}")
    n = x.shape[3]
    if y.shape not in ((n, 1), (n,)):
        raise ValueError(f"{path}: y must have shape ({n}, 1) to match X's {n} images, got "
                         f"{y.shape}")
    y = y.reshape(-1)
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise ValueError(f"{path}: y must hold integer labels, got dtype {y.dtype}")
    bad = ~np.isin(y, np.arange(1, _NUM_CLASSES + 1))
    if bad.any():
        raise ValueError(f"{path}: labels must lie in 1..10 (10 meaning digit 0), found "
                         f"{sorted(set(y[bad].tolist()))[:10]}")
    labels = y.astype(np.int64) % _NUM_CLASSES
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))
    return images, labels


def _required_files() -> list[str]:
    return [*MNIST_FILES.values(), *SVHN_FILES.values()]


def find_mnist_svhn_files(data_dir: Path | None) -> dict[str, Path]:
    """Locate the four MNIST IDX files and the two SVHN ``.mat`` files in ``data_dir``.

    The MNIST files follow :func:`~mmssl.data.mnist.find_mnist_files` (plain or ``.gz``, dashed
    or dotted names); the SVHN files are ``train_32x32.mat`` and ``test_32x32.mat``.

    Args:
        data_dir: the directory; ``None`` is refused (there is no embedded copy of SVHN).

    Returns:
        Role -> path, for the roles of :data:`~mmssl.data.mnist.MNIST_FILES` and ``svhn_train``,
        ``svhn_test``.

    Raises:
        FileNotFoundError: ``data_dir`` is ``None`` or not a directory, or files are missing; the
            message names the directory, lists exactly the missing files and says where MNIST
            and SVHN are published.
    """
    where = (f"MNIST: {', '.join(MNIST_FILES.values())} (plain or .gz) from {MNIST_URL} or a "
             f"mirror; SVHN: {', '.join(SVHN_FILES.values())} (format 2, cropped digits) from "
             f"{SVHN_URL}")
    if data_dir is None:
        raise FileNotFoundError(
            f"MNIST-SVHN has no embedded default: pass data_dir, a directory holding all of "
            f"{', '.join(_required_files())}. {where}"
        )
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"MNIST-SVHN data directory {data_dir} does not exist or is not a directory; it must "
            f"hold {', '.join(_required_files())}. {where}"
        )
    found: dict[str, Path] = {}
    missing: list[str] = []
    for role, name in MNIST_FILES.items():
        hit = next((data_dir / c for c in candidate_names(name) if (data_dir / c).is_file()), None)
        if hit is None:
            missing.append(f"{name}[.gz]")
        else:
            found[role] = hit
    for split, name in SVHN_FILES.items():
        if (data_dir / name).is_file():
            found[f"svhn_{split}"] = data_dir / name
        else:
            missing.append(name)
    if missing:
        raise FileNotFoundError(
            f"MNIST-SVHN data directory {data_dir} is missing {len(missing)} of the "
            f"{len(_required_files())} required files: {', '.join(missing)}. {where}"
        )
    return found


# --------------------------------------------------------------------------------- pairing


def pair_by_class(labels_a: np.ndarray, labels_b: np.ndarray, *, max_per_class: int,
                  pairings: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    r"""Pair items of two labelled sets by class, the MMVAE way.

    For each class :math:`c` present in both sets, in ascending order, the first
    :math:`n_c = \min(\#a_c, \#b_c, \text{max\_per\_class})` positions of class :math:`c` in
    each set (ascending, i.e. file order) are kept. Then ``pairings`` rounds follow; in each,
    every class draws ``rng.permutation`` of its ``a`` list and then of its ``b`` list, the
    permuted lists are paired element-wise and concatenated over classes, and the round's
    :math:`N = \sum_c n_c` pairs are put in a random order (``rng.permutation(N)``) so that
    unshuffled loaders mix classes. Rounds are laid out one after the other: the first ``k * N``
    pairs hold every kept item exactly ``k`` times.

    Args:
        labels_a: ``(N_a,)`` integer labels of the first set.
        labels_b: ``(N_b,)`` integer labels of the second set.
        max_per_class: the cap on :math:`n_c`, at least 1.
        pairings: number of rounds, at least 1 (MMVAE's ``dm``).
        rng: the random source.

    Returns:
        ``(idx_a, idx_b)``, ``int64`` arrays of length ``pairings * N`` with
        ``labels_a[idx_a] == labels_b[idx_b]``.
    """
    a, b = np.asarray(labels_a), np.asarray(labels_b)
    if a.ndim != 1 or b.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shapes {a.shape} and {b.shape}")
    if max_per_class < 1:
        raise ValueError(f"max_per_class must be at least 1, got {max_per_class}")
    if pairings < 1:
        raise ValueError(f"pairings must be at least 1, got {pairings}")
    kept: list[tuple[np.ndarray, np.ndarray]] = []
    for c in np.intersect1d(np.unique(a), np.unique(b)):
        members_a, members_b = np.flatnonzero(a == c), np.flatnonzero(b == c)
        n = min(len(members_a), len(members_b), max_per_class)
        kept.append((members_a[:n], members_b[:n]))
    total = sum(len(ka) for ka, _ in kept)
    idx_a = np.empty(pairings * total, dtype=np.int64)
    idx_b = np.empty(pairings * total, dtype=np.int64)
    for r in range(pairings):
        round_a, round_b = [], []
        for ka, kb in kept:
            round_a.append(rng.permutation(ka))
            round_b.append(rng.permutation(kb))
        order = rng.permutation(total)
        chunk = slice(r * total, (r + 1) * total)
        if total:
            idx_a[chunk] = np.concatenate(round_a)[order]
            idx_b[chunk] = np.concatenate(round_b)[order]
    return idx_a, idx_b


def pairing_fingerprint(labels: Mapping[str, np.ndarray], params: Mapping[str, int]) -> str:
    """SHA-256 over the cache version, the parameters and the label arrays (as int64)."""
    digest = hashlib.sha256(_CACHE_VERSION.encode())
    for key in sorted(params):
        digest.update(f"{key}={int(params[key])};".encode())
    for key in sorted(labels):
        array = np.ascontiguousarray(labels[key], dtype="<i8")
        digest.update(f"{key}:{len(array)};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


