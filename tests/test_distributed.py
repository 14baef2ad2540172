"""Cross-process negatives: 2 CPU processes (gloo) give the single-process global-batch loss."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmssl.objectives.infonce import infonce
from mmssl.objectives.taxonomy import EstimatorSettings, Objective, taxonomy_loss


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _global_batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return {
        "anchors": torch.randn(8, 16, 1, generator=generator),
        "candidates": torch.randn(8, 16, 5, generator=generator),
        "global_a": torch.randn(8, 16, generator=generator),
        "global_b": torch.randn(8, 16, generator=generator),
        "local_a": torch.randn(8, 16, 6, generator=generator),
        "local_b": torch.randn(8, 16, 6, generator=generator),
    }


def _single_process():
    data = {k: v.clone().requires_grad_(True) for k, v in _global_batch().items()}
    nce = infonce(data["anchors"], data["candidates"])
    tax = taxonomy_loss({"a": {"l": data["local_a"]}, "b": {"l": data["local_b"]}},
                        {"a": data["global_a"], "b": data["global_b"]},
                        Objective.parse("CR-XX-RR"))
    (nce.loss + nce.penalty + tax.total).backward()
    return {"nce": nce.loss.item(), "penalty": nce.penalty.item(), "taxonomy": tax.total.item(),
            "grads": {k: v.grad for k, v in data.items()}}


def _worker(rank: int, world: int, port: int, results) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        full = _global_batch()
        rows = slice(rank * 8 // world, (rank + 1) * 8 // world)
        data = {k: v[rows].clone().requires_grad_(True) for k, v in full.items()}
        nce = infonce(data["anchors"], data["candidates"], gather=True)
        tax = taxonomy_loss({"a": {"l": data["local_a"]}, "b": {"l": data["local_b"]}},
                            {"a": data["global_a"], "b": data["global_b"]},
                            Objective.parse("CR-XX-RR"), estimator=EstimatorSettings(gather=True))
        # DDP averages gradients over processes: the loss it optimises is the process mean.
        ((nce.loss + nce.penalty + tax.total) / world).backward()
        values = torch.tensor([nce.loss.item(), nce.penalty.item(), tax.total.item()])
        dist.all_reduce(values)
        grads = {}
        for key, tensor in data.items():
            gathered = [torch.zeros_like(tensor.grad) for _ in range(world)]
            dist.all_gather(gathered, tensor.grad.contiguous())
            grads[key] = torch.cat(gathered)
        if rank == 0:
            results.put({"values": (values / world).tolist(),
                         "grads": {k: v.numpy().tolist() for k, v in grads.items()}})
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_processes_equal_the_single_process_loss_and_gradients():
    context = mp.get_context("spawn")
    results = context.Queue()
    port = _free_port()
    processes = [context.Process(target=_worker, args=(rank, 2, port, results))
                 for rank in range(2)]
    for process in processes:
        process.start()
    outcome = results.get(timeout=120)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    single = _single_process()
    nce, penalty, total = outcome["values"]
    assert nce == pytest.approx(single["nce"], rel=1e-5)
    assert penalty == pytest.approx(single["penalty"], rel=1e-5)
    assert total == pytest.approx(single["taxonomy"], rel=1e-5)
    for key, grad in single["grads"].items():
        torch.testing.assert_close(torch.tensor(outcome["grads"][key]), grad, rtol=1e-4,
                                   atol=1e-6, msg=key)


def test_local_negatives_alone_would_differ():
    """The check above is not vacuous: without gathering, half-batch losses differ."""
    full = _global_batch()
    halves = [infonce(full["anchors"][s], full["candidates"][s]).loss.item()
              for s in (slice(0, 4), slice(4, 8))]
    assert sum(halves) / 2 != pytest.approx(
        infonce(full["anchors"], full["candidates"]).loss.item(), rel=1e-3)


def test_lightning_ddp_on_two_cpu_processes_trains_and_evaluates(tiny_mnist_dir, tmp_path):
    """Two gloo processes (ddp_spawn): one run directory, completion recorded, probes work."""
    import json

    from mmssl import config as cfg
    from mmssl.runs.evaluation import evaluate
    from mmssl.runs.training import pretrain

    config = cfg.resolve("quick", None, {
        "objective.name": "XX-RR", "data.data_dir": str(tiny_mnist_dir), "data.batch_size": 8,
        "model.width": 8, "model.latent_dim": 8, "model.head_dim": 8, "trainer.epochs": 2,
        "trainer.progress_bar": False, "trainer.accelerator": "cpu", "trainer.devices": 2,
        "trainer.strategy": "ddp_spawn", "probe.Cs": [1.0],
    })
    out = tmp_path / "ddp"
    pretrain(config, out)
    done = json.loads((out / "pretrain.json").read_text())
    assert done["processes"] == 2 and done["epochs"] == 2
    # 160 training images, 8 per process and step, 2 processes: 10 steps per epoch.
    assert done["global_step"] == 20
    assert set(evaluate(out)["test"]) == {"rotated", "noisy", "joint"}


def test_a_fitted_pca_stem_reaches_every_ddp_process(tiny_mnist_dir, tmp_path):
    """The PCA encoder's stem is fitted before the processes start (ddp_spawn pickles the model):
    an unfitted stem would stop the first step; every process trains on the same stem."""
    import json

    import torch

    from mmssl import config as cfg
    from mmssl.runs.checkpoints import read_checkpoint
    from mmssl.runs.training import pretrain

    config = cfg.resolve("quick", None, {
        "objective.name": "RR", "data.data_dir": str(tiny_mnist_dir), "data.batch_size": 8,
        "model.encoder": "pca", "model.pca_components": 6, "model.latent_dim": 4,
        "model.local_taps": [], "model.global_head": "none", "trainer.epochs": 1,
        "trainer.progress_bar": False, "trainer.accelerator": "cpu", "trainer.devices": 2,
        "trainer.strategy": "ddp_spawn", "probe.Cs": [1.0],
    })
    out = tmp_path / "ddp-pca"
    pretrain(config, out)
    assert json.loads((out / "pretrain.json").read_text())["processes"] == 2
    stems = json.loads((out / "encoder_stems.json").read_text())
    assert set(stems) == {"rotated", "noisy"} and stems["noisy"]["volumes"] == 160
    state = read_checkpoint(out / "checkpoints" / "last.ckpt")["state_dict"]
    assert bool(state["encoders.rotated.fitted"]) and bool(state["encoders.noisy.fitted"])
    assert torch.count_nonzero(state["encoders.rotated.basis"]) > 0
