"""Data-parallel masking: with the presence masks gathered alongside the candidates, two CPU
processes (gloo) give the loss and gradients of the single-process masked global batch.

Kept apart from ``test_missing_modalities.py`` so that the spawned workers import only torch and
the objectives.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

from mmssl.objectives.taxonomy import EstimatorSettings, Objective, taxonomy_loss

C, L = 8, 5
#: fALFF presence of the global batch of 8: rank 0 misses one, rank 1 has none at all.
GLOBAL_FALFF = [True, False, True, True, False, False, False, False]
#: A single sample with fALFF in the global batch: its terms are skipped on both processes.
GLOBAL_SINGLE = [False, False, False, False, False, True, False, False]


def _global_features() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(11)
    return {"R_t1": torch.randn(8, C, generator=g), "R_falff": torch.randn(8, C, generator=g),
            "C_t1": torch.randn(8, C, L, generator=g), "C_falff": torch.randn(8, C, L, generator=g)}


def _ddp_loss(data: dict[str, Tensor], falff: Tensor, gather: bool):
    return taxonomy_loss({"t1": {"l": data["C_t1"]}, "falff": {"l": data["C_falff"]}},
                         {"t1": data["R_t1"], "falff": data["R_falff"]},
                         Objective.parse("CR-XX-RR"), estimator=EstimatorSettings(gather=gather),
                         present={"falff": falff})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker(rank: int, world: int, port: int, results: Any) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        rows = slice(rank * 4, (rank + 1) * 4)
        data = {k: v[rows].clone().requires_grad_(True) for k, v in _global_features().items()}
        result = _ddp_loss(data, torch.tensor(GLOBAL_FALFF[rows]), gather=True)
        (result.total / world).backward()  # DDP averages gradients over processes
        value = torch.tensor([result.total.item()])
        dist.all_reduce(value)
        grads = {}
        for key, tensor in data.items():
            parts = [torch.zeros_like(tensor) for _ in range(world)]
            dist.all_gather(parts, tensor.grad.contiguous())
            grads[key] = torch.cat(parts).numpy().tolist()
        single = _ddp_loss(data, torch.tensor(GLOBAL_SINGLE[rows]), gather=True)
        if rank == 0:
            results.put({"total": value.item() / world, "grads": grads,
                         "terms": sorted(result.terms), "single": sorted(single.terms)})
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_processes_with_masks_equal_the_single_process_masked_loss():
    data = {k: v.clone().requires_grad_(True) for k, v in _global_features().items()}
    single = _ddp_loss(data, torch.tensor(GLOBAL_FALFF), gather=False)
    single.total.backward()
    context = mp.get_context("spawn")
    results = context.Queue()
    port = _free_port()
    processes = [context.Process(target=_worker, args=(rank, 2, port, results))
                 for rank in range(2)]
    for process in processes:
        process.start()
    try:
        out = results.get(timeout=120)
    finally:
        for process in processes:
            process.join(timeout=60)
    assert all(process.exitcode == 0 for process in processes)
    assert out["terms"] == sorted(single.terms)
    assert out["single"] == ["CR/l/t1", "CR/l/t1/penalty"]  # decided on the global count
    assert out["total"] == pytest.approx(single.total.item(), rel=1e-5)
    for key, tensor in data.items():
        np.testing.assert_allclose(np.array(out["grads"][key]), tensor.grad.numpy(),
                                   rtol=1e-4, atol=1e-6, err_msg=key)
