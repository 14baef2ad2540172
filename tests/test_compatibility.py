"""Behaviour kept across the reorganisation: the same numbers for the same seed, and run
directories written by mmssl 0.1 (flat settings, old checkpoint layout) still evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from mmssl.cli import main

#: Metrics of `mmssl run --preset quick --objective RR --epochs 1 --set
#: trainer.limit_train_batches=2` on the embedded subset, measured with mmssl 0.1 (commit
#: 0dd782b) before the registries and layers were introduced; 1 and 2 threads agree.
PINNED = {
    "val": {"rotated": 0.7125, "noisy": 0.58625, "joint": 0.75},
    "test": {"rotated": 0.679, "noisy": 0.586, "joint": 0.748},
}


def test_a_quick_run_gives_the_numbers_of_the_earlier_version(tmp_path: Path,
                                                               monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--preset", "quick", "--objective", "RR", "--epochs", "1",
                 "--set", "trainer.limit_train_batches=2", "--set",
                 "trainer.progress_bar=false", "--accelerator", "cpu",
                 # 0.1 trained in the contiguous layout; `auto` could pick another per machine
                 "--set", "trainer.memory_format=contiguous", "--out", "runs/pin"]) == 0
    metrics = json.loads((tmp_path / "runs" / "pin" / "metrics.json").read_text())
    for split, columns in PINNED.items():
        for column, accuracy in columns.items():
            assert metrics[split][column]["accuracy"] == pytest.approx(accuracy, abs=1e-9), (
                split, column)


def test_a_run_directory_of_the_earlier_layout_is_still_evaluated(tiny_mnist_dir: Path,
                                                                   tmp_path: Path,
                                                                   monkeypatch) -> None:
    """Rewrite a fresh run into mmssl 0.1's layout — flat data keys in config.yaml, flat
    checkpoint hyper-parameters without the mmssl marker, a best-epochNNN.ckpt name — and
    evaluate and report it with this version."""
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", "--preset", "quick", "--objective", "XX", "--data-dir",
                 str(tiny_mnist_dir), "--epochs", "1", "--batch-size", "16", "--set",
                 "model.width=8", "--set", "probe.Cs=[1.0]", "--set",
                 "trainer.progress_bar=false", "--out", "runs/old"]) == 0
    run = tmp_path / "runs" / "old"
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["pairing"] = config["data"].pop("two_view_mnist")["pairing"]
    config["data"].update({"manifest": None, "label_mapping": None, "max_per_class": 10000,
                           "pairings": 30, "eval_pairings": 1})
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    hparams = checkpoint.pop("hyper_parameters")
    checkpoint.pop("mmssl")
    checkpoint["hyper_parameters"] = {**hparams["inputs"], "model": hparams["model"],
                                      "optim": hparams["optim"], **hparams["sections"]}
    torch.save(checkpoint, run / "checkpoints" / "best-epoch000.ckpt")
    (run / "checkpoints" / "last.ckpt").unlink()
    (run / "checkpoints" / "best.ckpt").unlink()
    record = json.loads((run / "pretrain.json").read_text())
    record.update(last_checkpoint="checkpoints/best-epoch000.ckpt",
                  best_checkpoint="checkpoints/best-epoch000.ckpt")
    (run / "pretrain.json").write_text(json.dumps(record))
    assert main(["evaluate", "runs/old"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["test"]) == {"rotated", "noisy", "joint"}
    assert main(["report", "runs/old"]) == 0
