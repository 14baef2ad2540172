"""Configuration: presets, overrides, and errors that name the key and the valid choices."""

from __future__ import annotations

from pathlib import Path

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
    with pytest.raises(cfg.ConfigError, match="valid presets: ae, cr_cca"):
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


def test_presets_compose_dataset_first_method_second():
    composed = cfg.resolve(["two_view_mnist", "dccae"])
    assert composed.method == "dccae" and composed.data.batch_size == 256
    assert composed.cca.variant == "trace" and composed.cca.on == "head"  # `on` is not a bool
    assert composed.optim.scheduler == "onecycle"  # from the dataset preset
    mmvae = cfg.resolve(["mnist_svhn", "mmvae"], None, {"data.data_dir": "x"})
    assert (mmvae.optim.optimizer, mmvae.optim.scheduler, mmvae.trainer.epochs) == (
        "adam", "none", 30)
    # the names of earlier versions are the two presets in a row
    assert cfg.resolve("dccae-two_view_mnist").to_dict() == composed.to_dict()
    # a flag beats both presets
    assert cfg.resolve(["two_view_mnist", "dccae"], None,
                       {"data.batch_size": 256}).data.batch_size == 256


def test_settings_of_earlier_versions_are_read(tmp_path):
    """Flat data keys of mmssl ≤ 0.1 (saved config.yaml, --set) land in their dataset section."""
    old = tmp_path / "config.yaml"
    old.write_text("method: taxonomy\ndata:\n  dataset: two_view_mnist\n  pairing: same_class\n"
                   "  manifest: null\n  label_mapping: null\n")
    config = cfg.load(old)
    assert config.data.settings.pairing == "same_class"
    flags = cfg.resolve("quick", None, {"data.pairing": "same_class"})
    assert flags.data.settings.pairing == "same_class"
    assert "pairing" not in cfg.RunConfig().to_dict()["data"]


def test_paths_are_stored_absolute_relative_to_where_they_were_written(tmp_path, monkeypatch):
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "run.yaml").write_text(
        "data:\n  dataset: neuro\n  modalities: [t1, falff]\n  neuro:\n"
        "    manifest: ../cohort/manifest.csv\n    preprocessing: {mask: masks/brain.nii.gz}\n")
    monkeypatch.chdir(tmp_path / "configs")
    from_file = cfg.resolve(None, configs / "run.yaml")
    assert from_file.data.settings.manifest == str(tmp_path / "cohort" / "manifest.csv")
    assert from_file.data.settings.preprocessing.mask == str(configs / "masks" / "brain.nii.gz")
    monkeypatch.chdir(tmp_path)
    from_flag = cfg.resolve("neuro-quick", None, {"data.neuro.manifest": "c/m.csv",
                                                  "data.data_dir": "~/mnist"})
    assert from_flag.data.settings.manifest == str(tmp_path / "c" / "m.csv")
    assert from_flag.data.data_dir == str(Path.home() / "mnist")
    assert from_flag.data.settings.preprocessing.mask == "mni152"  # a keyword, not a path


def test_only_the_used_sections_are_saved(tmp_path):
    config = cfg.resolve(["two_view_mnist", "dccae"])
    saved = config.to_dict()
    assert {"ae", "cca"} <= set(saved) and "mmvae" not in saved and "objective" not in saved
    assert set(saved["data"]) >= {"dataset", "two_view_mnist"} and "neuro" not in saved["data"]
    cfg.save(config, tmp_path / "c.yaml")
    assert cfg.load(tmp_path / "c.yaml").to_dict() == saved
