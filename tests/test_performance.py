"""Faster steps (``mmssl.runs.performance``): memory format, compilation and loading choices.

Never timed: every choice that depends on a measurement gets an injected timing, so the tests
check what is decided, recorded, cached and reused, and that the layouts compute the same
thing — not which one is faster on this machine.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from mmssl import config as cfg
from mmssl.data.base import to_memory_format
from mmssl.data.neuro.datamodule import NeuroDataModule
from mmssl.data.two_view_mnist import TwoViewMnistDataModule
from mmssl.errors import ConfigError
from mmssl.methods import TaxonomyMethod
from mmssl.runs import performance
from mmssl.runs.performance import (
    CACHE_ENV,
    CACHE_FILE,
    MemoryFormatDecision,
    apply_memory_format,
    check_compile,
    decide_loader,
    decide_memory_format,
    model_memory_format,
)
from mmssl.runs.training import pretrain

# ---------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("trainer.memory_format", "nhwc", "auto, channels_last, contiguous"),
    ("trainer.compile", "yes", "true or false"),
    ("trainer.cpu_allocator", "jemalloc", "retain, system"),
    ("data.num_workers", "many", "auto"),
    ("data.pin_memory", "sometimes", "auto"),
])
def test_bad_performance_settings_name_the_key_and_the_values(key, value, expected):
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as error:
        cfg.from_dict({section: {name: value}})
    assert expected in str(error.value)
    assert repr(value) in str(error.value)


def test_performance_defaults():
    config = cfg.from_dict({})
    assert config.trainer.memory_format == "auto"
    assert config.trainer.compile is False
    assert config.trainer.cpu_allocator == "retain"
    for value in ("auto", "channels_last", "contiguous"):
        assert cfg.from_dict({"trainer": {"memory_format": value}}).trainer.memory_format == value


# ---------------------------------------------------------------------------- same arithmetic


def _method(shape: tuple[int, ...], objective: str = "CR-XX-CC-RR",
            estimator: str = "lean") -> TaxonomyMethod:
    torch.manual_seed(0)  # the weights, whatever tests ran before in this process
    method = TaxonomyMethod.create(
        ["a", "b"], {"a": shape, "b": shape},
        model={"width": 4, "latent_dim": 8, "head_dim": 8, "local_taps": ["block0"]},
        optim={"optimizer": "radam", "lr": 1e-3, "scheduler": "none"},
        objective={"name": objective, "estimator": estimator}, seed=0)
    assert isinstance(method, TaxonomyMethod)
    return method


def _loss_and_grads(method: TaxonomyMethod, batch: dict[str, torch.Tensor]
                    ) -> tuple[float, dict[str, torch.Tensor]]:
    method.zero_grad(set_to_none=True)
    loss, _ = method.compute_loss(batch, torch.Generator().manual_seed(5))
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in method.named_parameters()
             if p.grad is not None}
    return float(loss.detach()), grads


@pytest.mark.parametrize("shape", [(3, 32, 32), (2, 16, 16, 16)], ids=["2d", "3d"])
def test_channels_last_gives_the_same_loss_and_gradients(shape):
    base = _method(shape)
    generator = torch.Generator().manual_seed(1)
    batch = {m: torch.rand(6, *shape, generator=generator) for m in ("a", "b")}
    batch["label"] = torch.zeros(6, dtype=torch.long)

    last = copy.deepcopy(base)
    apply_memory_format(last, "channels_last")
    assert model_memory_format(base) == "contiguous"
    assert model_memory_format(last) == "channels_last"
    layout = torch.channels_last if len(shape) == 3 else torch.channels_last_3d
    conv = next(p for p in last.parameters() if p.dim() == len(shape) + 1 and p.shape[1] > 1)
    assert conv.is_contiguous(memory_format=layout) and not conv.is_contiguous()
    last_batch = {k: to_memory_format(v, "channels_last") for k, v in batch.items()}
    assert last_batch["a"].is_contiguous(memory_format=layout)
    assert not last_batch["a"].is_contiguous()

    loss, grads = _loss_and_grads(base, batch)
    loss_last, grads_last = _loss_and_grads(last, last_batch)
    assert loss_last == pytest.approx(loss, rel=1e-5, abs=1e-6)
    assert grads.keys() == grads_last.keys()
    for name in grads:
        torch.testing.assert_close(grads_last[name], grads[name], rtol=1e-4, atol=1e-5,
                                   msg=name)

    apply_memory_format(last, "contiguous")  # and back
    assert model_memory_format(last) == "contiguous"


def test_dense_and_lean_estimators_train_the_same_model():
    shape = (1, 32, 32)
    generator = torch.Generator().manual_seed(2)
    batch = {m: torch.rand(8, *shape, generator=generator) for m in ("a", "b")}
    lean, dense = _method(shape, estimator="lean"), _method(shape, estimator="dense")
    dense.load_state_dict(lean.state_dict())
    assert lean.estimator.estimator == "lean" and dense.estimator.estimator == "dense"
    loss_lean, grads_lean = _loss_and_grads(lean, batch)
    loss_dense, grads_dense = _loss_and_grads(dense, batch)
    assert loss_lean == pytest.approx(loss_dense, rel=1e-5)
    for name in grads_dense:
        torch.testing.assert_close(grads_lean[name], grads_dense[name], rtol=1e-4, atol=1e-6,
                                   msg=name)


def test_data_modules_emit_their_memory_format(tmp_path):
    images = TwoViewMnistDataModule(data_dir=tmp_path)
    batch = {"rotated": torch.rand(4, 3, 8, 8), "noisy": torch.rand(4, 3, 8, 8),
             "label": torch.zeros(4, dtype=torch.long)}
    assert images.on_after_batch_transfer(batch, 0) is batch  # contiguous: untouched
    images.configure_loading(memory_format="channels_last")
    out = images.on_after_batch_transfer(batch, 0)
    for m in ("rotated", "noisy"):
        assert out[m].is_contiguous(memory_format=torch.channels_last)
        assert not out[m].is_contiguous()
        assert torch.equal(out[m], batch[m])

    volumes = NeuroDataModule(tmp_path / "manifest.csv", ("t1", "falff"))
    volumes.configure_loading(memory_format="channels_last")
    batch = {"t1": torch.rand(2, 2, 4, 4, 4), "falff": torch.rand(2, 2, 4, 4, 4)}
    out = volumes.on_after_batch_transfer(batch, 0)
    assert out["t1"].is_contiguous(memory_format=torch.channels_last_3d)
    assert not out["t1"].is_contiguous()
    with pytest.raises(ValueError, match="channels_last"):
        volumes.configure_loading(memory_format="nhwc")


# ---------------------------------------------------------------------------- auto, the cache


def _timer(channels_last_ms: float, contiguous_ms: float, calls: list[str] | None = None):
    def timer(method, formats, batch_size, device, precision="32-true", **_):
        if calls is not None:
            calls.append(",".join(formats))
        table = {"channels_last": channels_last_ms, "contiguous": contiguous_ms}
        return {f: table[f] for f in formats}
    return timer


def _refuse(*args, **kwargs):
    raise AssertionError("measured although the decision was recorded or cached")


def test_auto_measures_then_uses_the_cache(tmp_path, monkeypatch):
    method, cache = _method((1, 32, 32)), tmp_path / "cache.json"
    calls: list[str] = []
    monkeypatch.setattr(performance, "time_memory_formats", _timer(5.0, 10.0, calls))
    first = decide_memory_format("auto", method, 16, torch.device("cpu"), cache=cache)
    assert (first.choice, first.source) == ("channels_last", "measured")
    assert first.ms_per_step == {"channels_last": 5.0, "contiguous": 10.0}
    stored = json.loads(cache.read_text())
    assert stored[first.key]["choice"] == "channels_last"
    assert stored[first.key]["fields"]["batch_size"] == 16
    assert calls == ["contiguous,channels_last"]

    monkeypatch.setattr(performance, "time_memory_formats", _refuse)
    again = decide_memory_format("auto", method, 16, torch.device("cpu"), cache=cache)
    assert (again.choice, again.source, again.key) == ("channels_last", "cached", first.key)
    assert again.ms_per_step == first.ms_per_step

    # Another batch shape is another key: measured again, and both stay cached.
    monkeypatch.setattr(performance, "time_memory_formats", _timer(10.0, 9.0))
    other = decide_memory_format("auto", method, 32, torch.device("cpu"), cache=cache)
    assert (other.choice, other.source) == ("contiguous", "measured")
    assert other.key != first.key
    assert set(json.loads(cache.read_text())) == {first.key, other.key}


def test_auto_keeps_contiguous_within_the_noise(tmp_path, monkeypatch):
    monkeypatch.setattr(performance, "time_memory_formats", _timer(9.9, 10.0))
    decision = decide_memory_format("auto", _method((1, 32, 32)), 8, torch.device("cpu"),
                                    cache=tmp_path / "c.json")
    assert decision.choice == "contiguous"


def test_configured_and_recorded_formats_are_never_measured(tmp_path, monkeypatch):
    monkeypatch.setattr(performance, "time_memory_formats", _refuse)
    method, cache = _method((1, 32, 32)), tmp_path / "c.json"
    configured = decide_memory_format("channels_last", method, 8, torch.device("cpu"),
                                      cache=cache)
    assert (configured.choice, configured.source) == ("channels_last", "configured")
    recorded = MemoryFormatDecision("channels_last", "measured", {"channels_last": 1.0,
                                                                  "contiguous": 2.0}).to_dict()
    resumed = decide_memory_format("contiguous", method, 8, torch.device("cpu"),
                                   recorded=recorded, cache=cache)
    assert (resumed.choice, resumed.source, resumed.resumed) == ("channels_last", "measured",
                                                                  True)
    assert not cache.exists()
    with pytest.raises(ValueError, match="trainer.memory_format"):
        decide_memory_format("nhwc", method, 8, torch.device("cpu"), cache=cache)


def test_an_unwritable_or_corrupt_cache_only_warns(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(performance, "time_memory_formats", _timer(5.0, 10.0))
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    method = _method((1, 32, 32))
    with caplog.at_level(logging.WARNING, logger="mmssl"):
        decision = decide_memory_format("auto", method, 8, torch.device("cpu"),
                                        cache=blocker / "sub" / CACHE_FILE)
    assert (decision.choice, decision.source) == ("channels_last", "measured")
    assert "could not write the memory-format cache" in caplog.text

    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{ not json")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mmssl"):
        decision = decide_memory_format("auto", method, 8, torch.device("cpu"), cache=corrupt)
    assert decision.source == "measured"
    assert "ignoring the unreadable memory-format cache" in caplog.text
    assert decision.key in json.loads(corrupt.read_text())  # replaced by a good one


def test_a_failed_timing_trains_contiguous_and_is_not_cached(tmp_path, monkeypatch, caplog):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("no room for the copies")

    monkeypatch.setattr(performance, "time_memory_formats", out_of_memory)
    cache = tmp_path / "c.json"
    with caplog.at_level(logging.WARNING, logger="mmssl"):
        decision = decide_memory_format("auto", _method((1, 32, 32)), 8, torch.device("cpu"),
                                        cache=cache)
    assert (decision.choice, decision.source) == ("contiguous", "measurement failed")
    assert "no room for the copies" in caplog.text and "trainer.memory_format" in caplog.text
    assert not cache.exists()


def test_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert performance.cache_folder() == tmp_path / "mine"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert performance.cache_folder() == tmp_path / "xdg" / "mmssl"


def test_the_timing_leaves_the_model_and_random_streams_alone():
    method = _method((1, 16, 16))
    before = {k: v.clone() for k, v in method.state_dict().items()}
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    ms = performance.time_memory_formats(method, ("contiguous", "channels_last"), 4,
                                         torch.device("cpu"), warmup=0, rounds=1)
    assert set(ms) == {"contiguous", "channels_last"} and all(v > 0 for v in ms.values())
    assert torch.equal(torch.rand(3), expected)
    for key, value in method.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert model_memory_format(method) == "contiguous"


# ---------------------------------------------------------------------------- in a run


def tiny_config(data_dir, **overrides) -> cfg.RunConfig:
    values = {
        "data.data_dir": str(data_dir), "data.batch_size": 16, "data.eval_batch_size": 64,
        "model.width": 8, "model.latent_dim": 16, "model.head_dim": 16,
        "trainer.epochs": 2, "trainer.progress_bar": False, "trainer.accelerator": "cpu",
        "probe.Cs": [0.1, 1.0], "probe.max_iter": 300,
    }
    values.update(overrides)
    return cfg.resolve("quick", None, values)


class SeeLayout(L.Callback):
    """Records the model's layout at every training step; crashes at ``crash_epoch``."""

    def __init__(self, crash_epoch: int | None = None) -> None:
        self.crash_epoch = crash_epoch
        self.layouts: set[str] = set()

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.crash_epoch:
            raise RuntimeError("simulated crash")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.layouts.add(model_memory_format(pl_module))


def _record(run: Path) -> dict:
    return json.loads((run / "pretrain.json").read_text())


def test_auto_is_recorded_cached_and_kept_on_resume(tiny_mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(performance, "time_memory_formats", _timer(5.0, 10.0))
    config = tiny_config(tiny_mnist_dir)
    seen = SeeLayout()
    pretrain(config, tmp_path / "first", extra_callbacks=[seen])
    record = _record(tmp_path / "first")["memory_format"]
    assert (record["choice"], record["source"]) == ("channels_last", "measured")
    assert record["ms_per_step"] == {"channels_last": 5.0, "contiguous": 10.0}
    assert seen.layouts == {"channels_last"}
    assert (tmp_path / "cache" / CACHE_FILE).exists()
    compiled = _record(tmp_path / "first")["compile"]
    assert compiled["enabled"] is False and compiled["compile_s"] is None

    # The same model on the same machine: the cached decision, nothing measured.
    monkeypatch.setattr(performance, "time_memory_formats", _refuse)
    pretrain(config, tmp_path / "second")
    record = _record(tmp_path / "second")["memory_format"]
    assert (record["choice"], record["source"]) == ("channels_last", "cached")

    # A crashed run resumes in its recorded layout, even after the cache changed its mind.
    monkeypatch.setattr(performance, "time_memory_formats", _timer(5.0, 10.0))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "other-cache"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(config, tmp_path / "crashed", extra_callbacks=[SeeLayout(crash_epoch=1)])
    (tmp_path / "other-cache" / CACHE_FILE).unlink()
    monkeypatch.setattr(performance, "time_memory_formats", _refuse)
    seen = SeeLayout()
    pretrain(None, tmp_path / "crashed", resume=True, extra_callbacks=[seen])
    record = _record(tmp_path / "crashed")["memory_format"]
    assert (record["choice"], record["source"], record["resumed"]) == ("channels_last",
                                                                        "measured", True)
    assert seen.layouts == {"channels_last"}


def test_configured_contiguous_run_records_it(tiny_mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(performance, "time_memory_formats", _refuse)
    seen = SeeLayout()
    pretrain(tiny_config(tiny_mnist_dir, **{"trainer.memory_format": "contiguous",
                                            "trainer.epochs": 1}),
             tmp_path / "run", extra_callbacks=[seen])
    record = _record(tmp_path / "run")
    assert (record["memory_format"]["choice"],
            record["memory_format"]["source"]) == ("contiguous", "configured")
    assert record["loader"]["source"] == "configured"
    assert seen.layouts == {"contiguous"}
    assert record["cpu_allocator"]["cpu_allocator"] == "retain"
    assert record["cpu_allocator"]["applied"] is True  # glibc, here and in CI


# ---------------------------------------------------------------------------- compile


def test_a_broken_torch_compile_stops_with_the_setting_and_the_fix(tiny_mnist_dir, tmp_path,
                                                                    monkeypatch):
    def broken(device):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

    with pytest.raises(ConfigError, match="trainer.compile") as error:
        check_compile(torch.device("cpu"), broken)
    message = str(error.value)
    assert "C++ compiler" in message and "trainer.compile: false" in message
    assert "InvalidCxxCompiler" in message

    monkeypatch.setattr(performance, "_compile_probe", broken)
    config = tiny_config(tiny_mnist_dir, **{"trainer.compile": True, "trainer.epochs": 1,
                                            "trainer.memory_format": "contiguous"})
    with pytest.raises(ConfigError, match="trainer.compile"):
        pretrain(config, tmp_path / "run")
    assert not (tmp_path / "run" / "pretrain.json").exists()


@pytest.mark.slow
def test_compiled_run_records_its_compile_time(tiny_mnist_dir, tmp_path):
    config = tiny_config(tiny_mnist_dir, **{"trainer.compile": True, "trainer.epochs": 1,
                                            "trainer.memory_format": "contiguous",
                                            "objective.name": "CR"})
    pretrain(config, tmp_path / "run")
    compiled = _record(tmp_path / "run")["compile"]
    assert compiled["enabled"] is True and compiled["modules"] >= 2
    assert compiled["first_step_s"] > 0 and compiled["compile_s"] >= 0
    # checkpoints of a compiled run load into an uncompiled model (same keys)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=False)["state_dict"]
    assert not any("_orig_mod" in key for key in state)


# ---------------------------------------------------------------------------- loading


def _loading(requested, pin=False):
    return SimpleNamespace(requested_num_workers=requested, pin_memory=pin)


def test_loader_workers_configured_or_measured():
    def never(*args):
        raise AssertionError("timed a configured loader")

    kept = decide_loader(_loading(3, pin=True), 10.0, torch.device("cpu"),
                         volumes_per_batch=32, timer=never)
    assert (kept.num_workers, kept.pin_memory, kept.source) == (3, True, "configured")

    timed: list[int] = []

    def fast(datamodule, device, workers):
        timed.append(workers)
        return 1.0

    fed = decide_loader(_loading("auto"), 10.0, torch.device("cpu"), volumes_per_batch=32,
                        cpu_count=4, timer=fast)
    assert (fed.num_workers, fed.source, timed) == (0, "measured", [0])
    assert fed.ratio == pytest.approx(10.0)

    timed.clear()
    table = {0: 8.0, 1: 5.0, 2: 3.0}

    def slow(datamodule, device, workers):
        timed.append(workers)
        return table[workers]

    starved = decide_loader(_loading("auto"), 10.0, torch.device("cpu"), volumes_per_batch=32,
                            cpu_count=4, timer=slow)
    assert (starved.num_workers, timed) == (2, [0, 1, 2])
    assert starved.ms_per_batch == {"0": 8.0, "1": 5.0, "2": 3.0}
    timed.clear()
    one_core = decide_loader(_loading("auto"), 10.0, torch.device("cpu"), volumes_per_batch=32,
                             cpu_count=1, timer=slow)
    assert (one_core.num_workers, timed) == (0, [0])


def test_auto_loader_workers_are_measured_and_change_nothing_learned(tiny_mnist_dir, tmp_path):
    """``data.num_workers: auto`` times the real loader against a real step (whatever it picks
    here): the views are made on the device, so the weights match a run with 0 workers."""
    common = {"trainer.memory_format": "contiguous", "trainer.epochs": 1,
              "objective.name": "XX-RR"}
    pretrain(tiny_config(tiny_mnist_dir, **common, **{"data.num_workers": "auto"}),
             tmp_path / "auto")
    pretrain(tiny_config(tiny_mnist_dir, **common), tmp_path / "zero")
    loader = _record(tmp_path / "auto")["loader"]
    assert loader["source"] == "measured" and loader["num_workers"] in (0, 1, 2)
    assert loader["step_ms"] > 0 and loader["ms_per_batch"]["0"] > 0
    assert loader["pin_memory"] is False  # auto: pinned only when training on CUDA
    weights = [torch.load(tmp_path / run / "checkpoints" / "last.ckpt", map_location="cpu",
                          weights_only=False)["state_dict"] for run in ("auto", "zero")]
    for key, value in weights[0].items():
        assert torch.equal(value, weights[1][key]), key
