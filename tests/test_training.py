"""Training: every objective trains, runs are reproducible, and resume is exact."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from mmssl import config as cfg
from mmssl.errors import RunDirError
from mmssl.methods import TaxonomyMethod
from mmssl.objectives.taxonomy import all_objectives
from mmssl.runs.evaluation import evaluate
from mmssl.runs.training import pretrain


def tiny_method(objective: str) -> TaxonomyMethod:
    return TaxonomyMethod.create(
        ["rotated", "noisy"], {"rotated": (1, 32, 32), "noisy": (1, 32, 32)},
        model={"width": 8, "latent_dim": 16, "local_taps": ["block1"], "head_dim": 16},
        optim={"optimizer": "radam", "lr": 1e-3, "scheduler": "none"},
        objective={"name": objective},
        seed=0,
    )


@pytest.mark.parametrize("objective", all_objectives())
def test_every_objective_trains_a_step(objective):
    torch.manual_seed(0)
    method = tiny_method(objective)
    batch = {m: torch.rand(8, 1, 32, 32) for m in ("rotated", "noisy")}
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in method.encoders.state_dict().items()}
    loss, terms = method.compute_loss(batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    assert {name.split("/")[0] for name in terms} == set(objective.split("-"))
    loss.backward()
    optimizer.step()
    changed = [k for k, v in method.encoders.state_dict().items()
               if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    assert any(k.startswith("rotated") for k in changed)
    assert any(k.startswith("noisy") for k in changed)


def test_unimodal_cr_on_one_modality():
    method = TaxonomyMethod.create(
        ["rotated"], {"rotated": (1, 32, 32)},
        model={"width": 8, "latent_dim": 16, "head_dim": 16}, optim={},
        objective={"name": "CR"},
    )
    loss, terms = method.compute_loss({"rotated": torch.rand(4, 1, 32, 32)}, None)
    assert torch.isfinite(loss)
    assert list(terms) == ["CR/block1/rotated", "CR/block1/rotated/penalty"]


def tiny_config(data_dir, **overrides) -> cfg.RunConfig:
    values = {
        "data.data_dir": str(data_dir), "data.batch_size": 16, "data.eval_batch_size": 64,
        "model.width": 8, "model.latent_dim": 16, "model.head_dim": 16,
        "trainer.epochs": 3, "trainer.progress_bar": False, "trainer.accelerator": "cpu",
        "probe.Cs": [0.1, 1.0], "probe.max_iter": 300,
    }
    values.update(overrides)
    return cfg.resolve("quick", None, values)


class CrashAtEpoch(L.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def _weights(run_dir):
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=False)["state_dict"]
    return {k: v for k, v in state.items() if v.dtype.is_floating_point}


def test_interrupted_then_resumed_run_matches_uninterrupted(tiny_mnist_dir, tmp_path):
    config = tiny_config(tiny_mnist_dir, **{"objective.name": "CR-XX-CC-RR"})
    pretrain(config, tmp_path / "straight")
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(config, tmp_path / "crashed", extra_callbacks=[CrashAtEpoch(2)])
    assert not (tmp_path / "crashed" / "pretrain.json").exists()  # never looks complete
    with pytest.raises(RunDirError, match="--resume"):
        pretrain(config, tmp_path / "crashed")  # never silently overwritten
    pretrain(None, tmp_path / "crashed", resume=True)
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "crashed")
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0, msg=key)
    # The training curves of the interrupted epochs survive the resume.
    import pandas as pd
    curves = pd.read_csv(tmp_path / "crashed" / "metrics.csv")
    assert sorted(curves["epoch"].dropna().unique()) == [0, 1, 2]


def test_same_seed_same_run_and_metrics_schema(tiny_mnist_dir, tmp_path):
    config = tiny_config(tiny_mnist_dir, **{"objective.name": "XX-RR", "trainer.epochs": 1})
    pretrain(config, tmp_path / "a")
    pretrain(config, tmp_path / "b")
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    metrics_a = evaluate(tmp_path / "a")
    metrics_again = evaluate(tmp_path / "a")
    assert metrics_a == metrics_again  # fixed evaluation views, deterministic probe
    saved = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert set(saved) == {"val", "test", "checkpoint"}
    assert saved["checkpoint"]["choice"] == "last"
    for split in (saved["val"], saved["test"]):
        assert set(split) == {"rotated", "noisy", "joint"}
        for values in split.values():
            assert 0.0 <= values["accuracy"] <= 1.0
    assert (tmp_path / "a" / "config.yaml").exists()
    assert (tmp_path / "a" / "metrics.csv").exists()
    assert cfg.load(tmp_path / "a" / "config.yaml") == config


def test_resume_refuses_a_different_configuration(tiny_mnist_dir, tmp_path):
    config = tiny_config(tiny_mnist_dir, **{"trainer.epochs": 1})
    pretrain(config, tmp_path / "run")
    other = tiny_config(tiny_mnist_dir, **{"trainer.epochs": 2})
    with pytest.raises(RunDirError, match="differs in trainer.epochs"):
        pretrain(other, tmp_path / "run", resume=True)
    with pytest.raises(RunDirError, match="no config.yaml"):
        pretrain(None, tmp_path / "nothing", resume=True)


def test_a_best_checkpoint_from_the_first_epochs_is_flagged():
    from mmssl.runs.evaluation import early_best_note

    note = early_best_note("best", 1, 15)
    assert note is not None and "epoch 1 of 15" in note and "trainer.checkpoint=last" in note
    assert early_best_note("best", 3, 15) is not None  # within the first fifth
    assert early_best_note("best", 4, 15) is None
    assert early_best_note("best", 1, 4) is None  # too short a run to tell
    assert early_best_note("last", 1, 15) is None
    assert early_best_note("best", None, 15) is None
