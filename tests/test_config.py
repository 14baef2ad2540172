"""Configuration: presets, overrides, and errors that name the key and the valid choices."""

from __future__ import annotations

import pytest

from mmssl import config as cfg


def test_presets_resolve_and_paper_defaults():
    paper = cfg.resolve("two_view_mnist")
    assert paper.optim.optimizer == "radam" and paper.optim.lr == pytest.approx(4e-4)
    assert paper.optim.scheduler == "onecycle" and paper.optim.max_lr == pytest.approx(1e-2)
    assert paper.data.batch_size == 64 and paper.trainer.epochs == 50
    assert paper.objective.clip == 20.0 and paper.objective.penalty_weight == pytest.approx(0.04)
    assert set(cfg.preset_names()) >= {"quick", "two_view_mnist"}


def test_priority_defaults_preset_file_flags(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("trainer:\n  epochs: 7\noptim:\n  lr: 0.001\n")
    config = cfg.resolve("quick", path, {"trainer.epochs": 3, "objective.name": "rr-cr"})
    assert config.trainer.epochs == 3  # flag beats file
    assert config.optim.lr == pytest.approx(1e-3)  # file beats preset/defaults
    assert config.objective.name == "CR-RR"  # canonicalised


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"optim.lrr": 1}, "unknown key 'optim.lrr'.*valid keys here: optimizer, lr"),
        ({"bogus": 1}, "unknown key 'bogus'.*valid keys here: method, seed, data"),
        ({"optim.scheduler": "cosine"}, "optim.scheduler.*onecycle"),
        ({"seed": "abc"}, "seed"),
        ({"objective.name": "CR-ZZ"}, "Valid objectives: CR, XX"),
        ({"data.fold": 5}, r"data.fold: must be in 0..4"),
        ({"data.batch_size": 1}, "data.batch_size: must be ≥ 2"),
        ({"data.modalities": ["rotated"], "objective.name": "CR-RR"}, "two or more modalities"),
        ({"objective.weights": {"RR": 2.0}, "objective.name": "CR"}, "not in objective CR"),
    ],
)
def test_bad_values_fail_with_a_clear_message(overrides, message):
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.resolve("quick", None, overrides)


def test_unknown_preset_and_bad_files(tmp_path):
    with pytest.raises(cfg.ConfigError, match="valid presets: ae-mnist_svhn"):
        cfg.resolve("nope")
    with pytest.raises(cfg.ConfigError, match="cannot read config file"):
        cfg.resolve(None, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(cfg.ConfigError, match="not valid YAML"):
        cfg.resolve(None, bad)


def test_save_load_round_trip(tmp_path):
    config = cfg.resolve("quick", None, {"seed": 5, "objective.weights": {"XX": 2.0}})
    cfg.save(config, tmp_path / "config.yaml")
    assert cfg.load(tmp_path / "config.yaml") == config
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind
