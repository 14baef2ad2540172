"""Baselines: each trains, descends its loss, and is probed with the same metrics schema."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from mmssl import config as cfg
from mmssl.cli import main
from mmssl.methods import METHODS
from mmssl.runs.evaluation import evaluate, generate
from mmssl.runs.training import pretrain

SHAPES = {"rotated": (1, 32, 32), "noisy": (1, 32, 32)}
BASELINES = ["supervised", "ae", "dccae", "cr_cca", "rr_ae", "mmvae"]


def tiny(method: str, **overrides) -> cfg.RunConfig:
    values = {"method": method, "model.width": 8, "model.latent_dim": 8, "model.head_dim": 8,
              "mmvae.latent_dim": 4, "mmvae.K": 4,
              # tiny batches: the CCA is only exercised here, not estimated
              "cca.dim": 4, "cca.allow_small_batch": True}
    values.update(overrides)
    return cfg.resolve("quick", None, values)


def test_registry_lists_every_method():
    assert set(BASELINES) | {"taxonomy"} == set(METHODS)


@pytest.mark.parametrize("method", BASELINES)
def test_loss_decreases_on_a_fixed_batch(method):
    torch.manual_seed(0)
    model = METHODS[method].from_config(tiny(method), SHAPES, 10)
    # Two views of the same digits-like batch so the cross-modal terms have something to learn.
    base = torch.rand(32, 1, 32, 32)
    batch = {"rotated": base.flip(-1), "noisy": (base + 0.1 * torch.rand_like(base)).clamp(0, 1),
             "label": torch.randint(0, 10, (32,))}
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the CCA rank warning is tested elsewhere
        for _ in range(12):
            loss, terms = model.compute_loss(batch, torch.Generator().manual_seed(1))
            assert torch.isfinite(loss), terms
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert min(losses[-3:]) < losses[0], losses


def test_cr_cca_and_dccae_use_a_cca_term_between_modalities():
    for method in ("dccae", "cr_cca"):
        model = METHODS[method].from_config(tiny(method), SHAPES, 10)
        batch = {m: torch.rand(16, 1, 32, 32) for m in SHAPES}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            _, terms = model.compute_loss(batch, None)
        assert "CCA/rotated:noisy" in terms and terms["CCA/rotated:noisy"] < 0


def test_supervised_needs_classes_and_rr_ae_has_both_directions():
    with pytest.raises(ValueError, match="≥ 2 classes"):
        METHODS["supervised"].from_config(tiny("supervised"), SHAPES, 1)
    model = METHODS["rr_ae"].from_config(tiny("rr_ae"), SHAPES, 10)
    _, terms = model.compute_loss({m: torch.rand(8, 1, 32, 32) for m in SHAPES}, None)
    assert {"RR/rotated:noisy", "RR/noisy:rotated", "AE/rotated", "AE/noisy"} <= set(terms)


def test_multimodal_methods_need_two_modalities():
    with pytest.raises(cfg.ConfigError, match="needs two or more"):
        cfg.resolve("quick", None, {"method": "mmvae", "data.modalities": ["rotated"]})
    assert cfg.resolve("quick", None, {"method": "ae", "data.modalities": ["rotated"]})


def _tiny_run_config(data_dir, method):
    return tiny(method, **{
        "data.data_dir": str(data_dir), "data.batch_size": 16, "data.eval_batch_size": 64,
        "trainer.epochs": 1, "trainer.progress_bar": False, "trainer.accelerator": "cpu",
        "probe.Cs": [0.1, 1.0], "probe.max_iter": 300,
    })


def test_every_method_gives_the_same_metrics_schema(tiny_mnist_dir, tmp_path):
    schemas = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for method in ["taxonomy", *BASELINES]:
            out = tmp_path / method
            pretrain(_tiny_run_config(tiny_mnist_dir, method), out)
            metrics = evaluate(out)
            schemas[method] = {split: {m: sorted(v) for m, v in metrics[split].items()}
                               for split in ("val", "test")}
            assert json.loads((out / "metrics.json").read_text()) == metrics
    reference = schemas["taxonomy"]
    assert reference == {s: {m: ["accuracy", "balanced_accuracy"]
                             for m in ("rotated", "noisy", "joint")} for s in ("val", "test")}
    for method, schema in schemas.items():
        assert schema == reference, method
    sampled = json.loads((tmp_path / "mmvae" / "metrics_sampled.json").read_text())
    assert set(sampled["test"]) == {"rotated", "noisy", "joint"}


def test_generate_writes_cross_modal_grid_and_refuses_encoder_only(tiny_mnist_dir, tmp_path,
                                                                   capsys):
    out = tmp_path / "mmvae"
    pretrain(_tiny_run_config(tiny_mnist_dir, "mmvae"), out)
    path = generate(out, n=4)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    taxonomy = tmp_path / "taxonomy"
    pretrain(_tiny_run_config(tiny_mnist_dir, "taxonomy"), taxonomy)
    assert main(["generate", str(taxonomy)]) == 2
    assert "has no decoder" in " ".join(capsys.readouterr().out.split())


def test_sweep_compares_objectives_and_methods(tiny_mnist_dir, tmp_path):
    out = tmp_path / "sweep"
    code = main(["sweep", "--objectives", "XX", "--methods", "ae,supervised",
                 "--data-dir", str(tiny_mnist_dir), "--out", str(out), "--epochs", "1",
                 "--batch-size", "16", "--accelerator", "cpu", "--set", "model.width=8",
                 "--set", "model.latent_dim=8", "--set", "model.head_dim=8",
                 "--set", "probe.Cs=[1.0]", "--set", "trainer.progress_bar=false"])
    assert code == 0
    table = (out / "results.md").read_text()
    for name in ("| XX |", "| ae |", "| supervised |"):
        assert name in table
    assert main(["sweep", "--methods", "taxonomy", "--out", str(out)]) == 2
    assert main(["sweep", "--methods", "vae", "--out", str(out)]) == 2


def test_mnist_svhn_end_to_end_with_mmvae(tiny_mnist_svhn_dir, tmp_path):
    config = cfg.resolve("mmvae-mnist_svhn", None, {
        "data.data_dir": str(tiny_mnist_svhn_dir), "data.batch_size": 16, "data.pairings": 2,
        "data.eval_batch_size": 64, "model.width": 8, "mmvae.latent_dim": 4, "mmvae.K": 2,
        "trainer.epochs": 1, "trainer.progress_bar": False, "trainer.accelerator": "cpu",
        "probe.Cs": [1.0], "probe.max_iter": 300,
    })
    out = tmp_path / "mmvae"
    pretrain(config, out)
    metrics = evaluate(out)
    assert set(metrics["test"]) == {"mnist", "svhn", "joint"}
    assert generate(out, n=3).exists()  # a 1-channel and a 3-channel decoder in one grid


def test_same_class_pairing_reaches_the_data_module(tiny_mnist_dir):
    from mmssl.runs.build import build_datamodule as make_datamodule

    config = tiny("taxonomy", **{"data.data_dir": str(tiny_mnist_dir),
                                 "data.pairing": "same_class"})
    assert make_datamodule(config).pairing == "same_class"
    with pytest.raises(cfg.ConfigError, match="same_image"):
        tiny("taxonomy", **{"data.pairing": "other_image"})
