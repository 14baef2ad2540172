"""The SVHN .mat reader, MMVAE's class-matched pairing and the MNIST-SVHN data module."""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy.io import savemat
from torch import Tensor

import mmssl.data.mnist_svhn as ms
from mmssl.data import (
    EpochShuffleSampler,
    MnistSvhnDataModule,
    PairedImageDataset,
    load_mnist,
    pair_by_class,
    read_svhn_mat,
    stratified_fold,
)

SEED = 343

# ------------------------------------------------------------------------------ read_svhn_mat


def _mat(path: Path, **arrays: Any) -> Path:
    savemat(path, arrays, format="5")
    return path


def test_read_svhn_mat_transposes_and_maps_10_to_0(tmp_path: Path) -> None:
    x = np.zeros((32, 32, 3, 4), dtype=np.uint8)
    x[1, 2, 0, 3] = 200  # row 1, column 2, red, image 3
    x[5, 7, 2, 0] = 99  # row 5, column 7, blue, image 0
    y = np.array([[10], [1], [9], [10]], dtype=np.uint8)
    images, labels = read_svhn_mat(_mat(tmp_path / "train_32x32.mat", X=x, y=y))
    assert images.shape == (4, 3, 32, 32) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, [0, 1, 9, 0])
    assert images[3, 0, 1, 2] == 200 and images[0, 2, 5, 7] == 99
    assert int(images.astype(np.int64).sum()) == 299  # nothing else lit
    # labels stored as doubles (as MATLAB would) are accepted too
    _, labels_f = read_svhn_mat(_mat(tmp_path / "f.mat", X=x, y=y.astype(np.float64)))
    np.testing.assert_array_equal(labels_f, [0, 1, 9, 0])


def test_read_svhn_mat_errors_name_the_file(tmp_path: Path) -> None:
    x = np.zeros((32, 32, 3, 2), dtype=np.uint8)
    y = np.array([[1], [2]], dtype=np.uint8)
    junk = tmp_path / "junk_32x32.mat"
    junk.write_text("this is not a MATLAB file\n" * 20)
    with pytest.raises(ValueError, match="junk_32x32.mat"):
        read_svhn_mat(junk)
    with pytest.raises(ValueError, match=r"no_y\.mat.*no variable y"):
        read_svhn_mat(_mat(tmp_path / "no_y.mat", X=x))
    with pytest.raises(ValueError, match=r"no_x\.mat.*no variable X"):
        read_svhn_mat(_mat(tmp_path / "no_x.mat", y=y))
    with pytest.raises(ValueError, match=r"hwc\.mat.*\(32, 32, 3, N\)"):
        read_svhn_mat(_mat(tmp_path / "hwc.mat", X=np.zeros((2, 3, 32, 32), np.uint8), y=y))
    with pytest.raises(ValueError, match=r"short_y\.mat.*y must have shape"):
        read_svhn_mat(_mat(tmp_path / "short_y.mat", X=x, y=y[:1]))
    for bad in (0, 11):
        with pytest.raises(ValueError, match=rf"label{bad}\.mat.*1\.\.10.*\b{bad}\b"):
            read_svhn_mat(_mat(tmp_path / f"label{bad}.mat", X=x,
                               y=np.array([[1], [bad]], dtype=np.uint8)))
    with pytest.raises(FileNotFoundError, match="absent.mat"):
        read_svhn_mat(tmp_path / "absent.mat")


def test_fixture_is_in_the_real_layout(tiny_mnist_svhn_dir: Path) -> None:
    from scipy.io import loadmat

    raw = loadmat(tiny_mnist_svhn_dir / "train_32x32.mat")
    assert raw["X"].shape == (32, 32, 3, 150) and raw["X"].dtype == np.uint8
    assert raw["y"].shape == (150, 1) and set(np.unique(raw["y"])) == set(range(1, 11))
    images, labels = read_svhn_mat(tiny_mnist_svhn_dir / "train_32x32.mat")
    np.testing.assert_array_equal(labels, raw["y"][:, 0] % 10)
    # the class pattern (a bar in channel k % 3 at columns 2+3k..3+3k) survives the transpose
    for n in range(20):
        k = labels[n]
        assert (images[n, k % 3, 4:28, 2 + 3 * k: 4 + 3 * k] == 250).all()


# ------------------------------------------------------------------------------ pair_by_class


def _expected_pairs(a: np.ndarray, b: np.ndarray, pairings: int, cap: int) -> int:
    return pairings * sum(min(int((a == c).sum()), int((b == c).sum()), cap) for c in range(10))


def test_pair_by_class_protocol() -> None:
    a = np.array([3, 1, 1, 3, 3, 3, 0, 1, 7])  # class 7 has no partner in b
    b = np.array([1, 3, 3, 1, 1, 1, 1, 0, 0, 2])
    ia, ib = pair_by_class(a, b, max_per_class=10, pairings=4, rng=np.random.default_rng(0))
    assert ia.dtype == np.int64 and ib.dtype == np.int64
    np.testing.assert_array_equal(a[ia], b[ib])
    # n_0 = min(1, 2) = 1, n_1 = min(3, 5) = 3, n_3 = min(4, 2) = 2
    assert len(ia) == 4 * (1 + 3 + 2) == _expected_pairs(a, b, 4, 10)
    # the first n_c items of each class (in file order) are kept, each exactly `pairings` times
    assert Counter(ia.tolist()) == {6: 4, 1: 4, 2: 4, 7: 4, 0: 4, 3: 4}
    assert Counter(ib.tolist()) == {7: 4, 0: 4, 3: 4, 4: 4, 1: 4, 2: 4}
    # rounds are laid out one after the other: each round holds every kept item once
    for r in range(4):
        assert sorted(ia[6 * r: 6 * (r + 1)].tolist()) == [0, 1, 2, 3, 6, 7]
    # the pairing is random but seeded
    again = pair_by_class(a, b, max_per_class=10, pairings=4, rng=np.random.default_rng(0))
    other = pair_by_class(a, b, max_per_class=10, pairings=4, rng=np.random.default_rng(1))
    assert np.array_equal(again[0], ia) and np.array_equal(again[1], ib)
    assert not (np.array_equal(other[0], ia) and np.array_equal(other[1], ib))


def test_pair_by_class_cap_and_mixing() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.integers(0, 10, 3000), rng.integers(0, 10, 2000)
    ia, ib = pair_by_class(a, b, max_per_class=50, pairings=3, rng=rng)
    assert len(ia) == 3 * 10 * 50 == _expected_pairs(a, b, 3, 50)
    np.testing.assert_array_equal(a[ia], b[ib])
    assert set(ia.tolist()) == {i for c in range(10) for i in np.flatnonzero(a == c)[:50]}
    # the stored order mixes classes (unshuffled loaders must not see one class per batch)
    assert len(set(a[ia[:64]].tolist())) > 5
    # every (a, b) combination is a random matching: round 2 differs from round 1
    assert not np.array_equal(ib[:500], ib[500:1000])
    with pytest.raises(ValueError, match="pairings"):
        pair_by_class(a, b, max_per_class=5, pairings=0, rng=rng)
    with pytest.raises(ValueError, match="max_per_class"):
        pair_by_class(a, b, max_per_class=0, pairings=1, rng=rng)


# --------------------------------------------------------------------------------- data module


def _sources(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Images and labels of the four sources, read independently of the data module."""
    mnist = load_mnist(root)
    return {
        "mnist_train": (mnist.train_images, mnist.train_labels),
        "mnist_test": (mnist.test_images, mnist.test_labels),
        "svhn_train": read_svhn_mat(root / "train_32x32.mat"),
        "svhn_test": read_svhn_mat(root / "test_32x32.mat"),
    }


def _dm(root: Path, **kwargs: Any) -> MnistSvhnDataModule:
    kwargs.setdefault("pairings", 3)
    kwargs.setdefault("batch_size", 32)
    module = MnistSvhnDataModule(root, **kwargs)
    module.setup("fit")
    return module


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(ms.PAIR_CACHE_DIR))
    return dst


@pytest.mark.parametrize("cap", [10_000, 3])
def test_pairs_share_labels_and_counts_follow_the_protocol(tiny_mnist_svhn_dir: Path,
                                                            cap: int) -> None:
    src = _sources(tiny_mnist_svhn_dir)
    dm = _dm(tiny_mnist_svhn_dir, max_per_class=cap, num_folds=5, fold=1)
    folds = {m: stratified_fold(src[f"{m}_train"][1], num_folds=5, fold=1, seed=SEED)
             for m in ("mnist", "svhn")}
    parts = {
        "train": {m: src[f"{m}_train"][1][folds[m][0]] for m in folds},
        "val": {m: src[f"{m}_train"][1][folds[m][1]] for m in folds},
        "test": {m: src[f"{m}_test"][1] for m in folds},
    }
    for split in ("train", "val", "test"):
        expected = _expected_pairs(parts[split]["mnist"], parts[split]["svhn"], 3, cap)
        assert dm.split_size(split) == expected > 0, split
        pairs = dm.pair_indices(split)
        part = "test" if split == "test" else "train"
        mnist_labels = src[f"mnist_{part}"][1][pairs["mnist"]]
        np.testing.assert_array_equal(mnist_labels, src[f"svhn_{part}"][1][pairs["svhn"]])
        served = torch.cat([b["label"] for b in dm.eval_dataloader(split)]).numpy()
        np.testing.assert_array_equal(served, mnist_labels)
    # the tiny data makes min() bind both ways: SVHN's 2 zeros vs MNIST's 5 in the test split,
    # MNIST's 5 ones vs SVHN's 8
    test = parts["test"]
    assert (test["svhn"] == 0).sum() < (test["mnist"] == 0).sum()
    assert (test["mnist"] == 1).sum() < (test["svhn"] == 1).sum()


def test_folds_are_honoured_and_disjoint(tiny_mnist_svhn_dir: Path) -> None:
    src = _sources(tiny_mnist_svhn_dir)
    val_sets = []
    for fold in (0, 1, 2):
        dm = _dm(tiny_mnist_svhn_dir, num_folds=3, fold=fold)
        train, val = dm.pair_indices("train"), dm.pair_indices("val")
        for m in ("mnist", "svhn"):
            assert set(train[m].tolist()).isdisjoint(val[m].tolist()), (fold, m)
            _, val_part = stratified_fold(src[f"{m}_train"][1], num_folds=3, fold=fold,
                                          seed=SEED)
            assert set(val[m].tolist()) <= set(val_part.tolist())
        val_sets.append((frozenset(val["mnist"].tolist()), frozenset(val["svhn"].tolist())))
    assert len(set(val_sets)) == 3
    for k in (0, 1):  # mnist, svhn
        assert val_sets[0][k] != val_sets[1][k] != val_sets[2][k]


def test_batches_hold_the_paired_images(tiny_mnist_svhn_dir: Path) -> None:
    src = _sources(tiny_mnist_svhn_dir)
    dm = _dm(tiny_mnist_svhn_dir)
    assert dm.modalities == ("mnist", "svhn") and dm.num_classes == 10
    assert dm.input_shapes == {"mnist": (1, 32, 32), "svhn": (3, 32, 32)}
    with pytest.raises(ValueError, match="input_shapes"):
        _ = dm.input_shape
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, EpochShuffleSampler)
    assert len(loader) == dm.split_size("train") // 32  # drop_last
    batch = next(iter(loader))
    assert set(batch) == {"mnist", "svhn", "label"}
    assert batch["mnist"].shape == (32, 1, 32, 32) and batch["svhn"].shape == (32, 3, 32, 32)
    assert batch["label"].shape == (32,) and batch["label"].dtype == torch.int64
    for m in ("mnist", "svhn"):
        assert batch[m].dtype == torch.float32
        assert batch[m].min() >= 0.0 and batch[m].max() <= 1.0
    # the eval batch's images are the paired source images: SVHN /255, MNIST /255 then resized
    test = next(iter(dm.eval_dataloader("test")))
    pairs = dm.pair_indices("test")
    n = len(test["label"])
    svhn = torch.from_numpy(src["svhn_test"][0][pairs["svhn"][:n]]).float() / 255
    torch.testing.assert_close(test["svhn"], svhn, rtol=0, atol=1e-6)
    mnist = torch.from_numpy(src["mnist_test"][0][pairs["mnist"][:n]]).float()[:, None] / 255
    resized = torch.nn.functional.interpolate(mnist, size=(32, 32), mode="bilinear",
                                              align_corners=False)
    torch.testing.assert_close(test["mnist"], resized, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(test["label"].numpy(), src["mnist_test"][1][pairs["mnist"][:n]])


def test_paired_dataset_scales_without_min_max() -> None:
    dim = torch.full((2, 1, 28, 28), 51, dtype=torch.uint8)  # a dim, flat image: 51/255 = 0.2
    dim[1, 0, 0, 0] = 102
    colour = torch.arange(2 * 3 * 32 * 32, dtype=torch.int64).remainder(256).to(torch.uint8)
    colour = colour.reshape(2, 3, 32, 32)
    data = PairedImageDataset({"mnist": dim, "svhn": colour},
                              {"mnist": torch.tensor([1, 0, 0]), "svhn": torch.tensor([0, 1, 1])},
                              torch.tensor([4, 5, 6]))
    assert len(data) == 3
    batch = data.__getitems__([1, 0])
    assert batch["mnist"].shape == (2, 1, 32, 32) and batch["svhn"].shape == (2, 3, 32, 32)
    torch.testing.assert_close(batch["mnist"][0], torch.full((1, 32, 32), 0.2))
    assert batch["mnist"][1].max() < 0.45  # 102/255 = 0.4 at most: not stretched to 1
    torch.testing.assert_close(batch["svhn"][0], colour[1].float() / 255)
    assert batch["label"].tolist() == [5, 4]
    item = data[2]
    assert item["svhn"].shape == (3, 32, 32) and int(item["label"]) == 6


def test_training_order_is_a_function_of_seed_and_epoch(tiny_mnist_svhn_dir: Path) -> None:
    a, b = _dm(tiny_mnist_svhn_dir), _dm(tiny_mnist_svhn_dir)

    def labels(dm: MnistSvhnDataModule, epoch: int) -> Tensor:
        loader = dm.train_dataloader()
        assert isinstance(loader.sampler, EpochShuffleSampler)
        loader.sampler.set_epoch(epoch)
        return torch.cat([batch["svhn"].flatten(1).sum(1) for batch in loader])

    assert torch.equal(labels(a, 2), labels(b, 2))
    assert not torch.equal(labels(a, 2), labels(a, 3))


def test_eval_loaders_are_deterministic(tiny_mnist_svhn_dir: Path, tmp_path: Path) -> None:
    a = _dm(tiny_mnist_svhn_dir, eval_batch_size=64)
    b = _dm(_copy(tiny_mnist_svhn_dir, tmp_path / "copy"), eval_batch_size=17)  # no cache
    assert b.cache_path is not None and b.cache_path.parent.parent == tmp_path / "copy"
    for split in ("train", "val", "test"):
        ba, bb = list(a.eval_dataloader(split)), list(b.eval_dataloader(split))
        for key in ("mnist", "svhn", "label"):
            assert torch.equal(torch.cat([x[key] for x in ba]), torch.cat([x[key] for x in bb]))
    first = [x["label"] for x in a.val_dataloader()]
    assert all(torch.equal(x, y) for x, y in zip(first, [x["label"] for x in a.val_dataloader()],
                                                  strict=True))
    # another seed pairs differently
    c = _dm(tiny_mnist_svhn_dir, seed=7)
    assert not np.array_equal(c.pair_indices("test")["svhn"], a.pair_indices("test")["svhn"])


def test_eval_pairings_serves_the_first_rounds(tiny_mnist_svhn_dir: Path) -> None:
    dm = _dm(tiny_mnist_svhn_dir, eval_pairings=1)
    for split in ("train", "test"):
        served = sum(len(b["label"]) for b in dm.eval_dataloader(split))
        assert served * 3 == dm.split_size(split)
        # the first round holds every kept image exactly once
        first = dm.pair_indices(split)["svhn"][:served]
        assert len(set(first.tolist())) == served
        assert set(first.tolist()) == set(dm.pair_indices(split)["svhn"].tolist())
    # the val/test loaders keep all pairings
    assert sum(len(b["label"]) for b in dm.test_dataloader()) == dm.split_size("test")
    with pytest.raises(ValueError, match="eval_pairings"):
        MnistSvhnDataModule(tiny_mnist_svhn_dir, pairings=3, eval_pairings=4)


def test_single_modality(tiny_mnist_svhn_dir: Path) -> None:
    both = _dm(tiny_mnist_svhn_dir)
    only = _dm(tiny_mnist_svhn_dir, modalities=["svhn"])
    assert only.input_shape == (3, 32, 32) and only.input_shapes == {"svhn": (3, 32, 32)}
    got, ref = next(iter(only.eval_dataloader("val"))), next(iter(both.eval_dataloader("val")))
    assert set(got) == {"svhn", "label"}
    assert torch.equal(got["svhn"], ref["svhn"]) and torch.equal(got["label"], ref["label"])


def test_constructor_validation(tiny_mnist_svhn_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"rotated.*\['mnist', 'svhn'\]"):
        MnistSvhnDataModule(tiny_mnist_svhn_dir, modalities=("mnist", "rotated"))
    with pytest.raises(ValueError, match="duplicate"):
        MnistSvhnDataModule(tiny_mnist_svhn_dir, modalities=("svhn", "svhn"))
    with pytest.raises(ValueError, match="fold"):
        MnistSvhnDataModule(tiny_mnist_svhn_dir, fold=5)
    with pytest.raises(ValueError, match="pairings"):
        MnistSvhnDataModule(tiny_mnist_svhn_dir, pairings=0)
    with pytest.raises(RuntimeError, match="setup"):
        MnistSvhnDataModule(tiny_mnist_svhn_dir).train_dataloader()
    with pytest.raises(ValueError, match="fewer than batch_size"):
        _dm(tiny_mnist_svhn_dir, batch_size=10_000).train_dataloader()


# ---------------------------------------------------------------------------- missing files


def test_missing_files_are_listed_with_their_sources(tiny_mnist_svhn_dir: Path,
                                                     tmp_path: Path) -> None:
    root = _copy(tiny_mnist_svhn_dir, tmp_path / "data")
    (root / "test_32x32.mat").unlink()
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as info:
        MnistSvhnDataModule(root).setup()
    msg = str(info.value)
    assert str(root) in msg and "missing 2 of the 6" in msg
    assert "test_32x32.mat" in msg and "t10k-labels-idx1-ubyte" in msg
    missing_part = msg.split("files:")[1].split(".", 1)[0]
    assert "train_32x32" not in missing_part and "train-images" not in missing_part
    assert "http://ufldl.stanford.edu/housenumbers/" in msg
    assert "yann.lecun.com/exdb/mnist" in msg
    for data_dir in (None, tmp_path / "nowhere"):
        with pytest.raises(FileNotFoundError) as info:
            MnistSvhnDataModule(data_dir).setup()
        msg = str(info.value)
        assert "train_32x32.mat" in msg and "train-images-idx3-ubyte" in msg
        assert "ufldl.stanford.edu/housenumbers" in msg and "yann.lecun.com" in msg


# ------------------------------------------------------------------------------------ cache


class _Spy:
    """Counts calls of :func:`pair_by_class` made by the data module."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = ms.pair_by_class

        def spy(*args: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(ms, "pair_by_class", spy)


def _all_pairs(dm: MnistSvhnDataModule) -> dict[str, dict[str, np.ndarray]]:
    return {s: dm.pair_indices(s) for s in ("train", "val", "test")}


def _same(p: dict[str, dict[str, np.ndarray]], q: dict[str, dict[str, np.ndarray]]) -> bool:
    return all(np.array_equal(p[s][m], q[s][m]) for s in p for m in p[s])


def test_cache_written_reused_and_invalidated(tiny_mnist_svhn_dir: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    root = _copy(tiny_mnist_svhn_dir, tmp_path / "data")
    spy = _Spy(monkeypatch)
    first = _dm(root, fold=2, seed=11, max_per_class=7)
    path = root / "mnist_svhn_pairs" / "fold2-of5-seed11-max7-dm3.npz"
    assert first.cache_path == path and path.is_file()
    assert spy.calls == 3  # train, val, test
    assert not [p for p in path.parent.iterdir() if p != path]  # no temporary left behind
    mtime = path.stat().st_mtime_ns

    second = _dm(root, fold=2, seed=11, max_per_class=7)
    assert spy.calls == 3 and path.stat().st_mtime_ns == mtime
    assert _same(_all_pairs(first), _all_pairs(second))

    # new images with the same labels leave the pairing (hence the cache) valid
    x, y = ms.read_svhn_mat(root / "test_32x32.mat")
    savemat(root / "test_32x32.mat", {"X": (255 - x).transpose(2, 3, 1, 0),
                                      "y": np.where(y == 0, 10, y)[:, None].astype(np.uint8)})
    _dm(root, fold=2, seed=11, max_per_class=7)
    assert spy.calls == 3

    # a changed label invalidates it, even one of an image no cached pair uses (so the cached
    # pairs would still look consistent): the pairs are recomputed and follow the new labels
    x, y = ms.read_svhn_mat(root / "train_32x32.mat")
    used = set(first.pair_indices("train")["svhn"]) | set(first.pair_indices("val")["svhn"])
    unused = [i for i in np.flatnonzero(y == 1) if i not in used]
    assert unused, "the fixture must leave some SVHN training images unpaired"
    y[unused[0]] = 2
    savemat(root / "train_32x32.mat", {"X": x.transpose(2, 3, 1, 0),
                                       "y": np.where(y == 0, 10, y)[:, None].astype(np.uint8)})
    third = _dm(root, fold=2, seed=11, max_per_class=7)
    assert spy.calls == 6 and path.stat().st_mtime_ns != mtime
    mnist_labels = load_mnist(root).train_labels
    for split in ("train", "val"):
        pairs = third.pair_indices(split)
        np.testing.assert_array_equal(mnist_labels[pairs["mnist"]], y[pairs["svhn"]])
    assert not _same(_all_pairs(first), _all_pairs(third))

    # other parameters use another cache file
    _dm(root, fold=2, seed=11, max_per_class=7, pairings=2)
    assert (path.parent / "fold2-of5-seed11-max7-dm2.npz").is_file() and spy.calls == 9


def test_corrupt_cache_is_rebuilt(tiny_mnist_svhn_dir: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    root = _copy(tiny_mnist_svhn_dir, tmp_path / "data")
    reference = _all_pairs(_dm(root))
    cache = _dm(root).cache_path
    assert cache is not None
    cache.write_bytes(b"not an npz")
    spy = _Spy(monkeypatch)
    assert _same(_all_pairs(_dm(root)), reference) and spy.calls == 3
    assert _same(_all_pairs(_dm(root)), reference) and spy.calls == 3  # rewritten, reused


def test_unwritable_data_dir_falls_back_to_memory(tiny_mnist_svhn_dir: Path, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    root = _copy(tiny_mnist_svhn_dir, tmp_path / "data")
    (root / ms.PAIR_CACHE_DIR).write_text("a file where the cache directory should be")
    with caplog.at_level(logging.WARNING, logger="mmssl.data.mnist_svhn"):
        dm = _dm(root)
    assert dm.cache_path is None
    assert any("could not write" in r.getMessage() for r in caplog.records)
    reference = _dm(tiny_mnist_svhn_dir)
    assert _same(_all_pairs(dm), _all_pairs(reference))
