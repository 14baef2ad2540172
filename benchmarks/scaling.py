"""Scaling figures: throughput against batch size and number of processes, and a sweep's wall time.

1. Training throughput (pairs/s) of a taxonomy model against the batch size, one process.
2. Data-parallel throughput against the number of processes at a fixed global batch: CPU
   processes with gloo here (``--device cuda`` uses NCCL and one GPU per process where a
   machine has several), with the contrastive negatives gathered across processes exactly as
   in training, and DistributedDataParallel averaging the gradients.
3. The wall time of a quick sweep (two objectives, one epoch each) on the embedded subset.

Usage: ``python benchmarks/scaling.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from rich.console import Console
from rich.table import Table

from mmssl import config as cfg
from mmssl.methods import METHODS

SHAPES = {"rotated": (1, 32, 32), "noisy": (1, 32, 32)}


def build(objective: str, *, gather: bool = False) -> Any:
    """The paper's two-encoder taxonomy model; ``gather`` takes negatives from every process."""
    config = cfg.resolve(None, None, {"objective.name": objective, "optim.scheduler": "none"})
    model = METHODS["taxonomy"].from_config(config, SHAPES, 10)
    if gather:
        from dataclasses import replace

        model.estimator = replace(model.estimator, gather=True)
    return model


def step_times(model: Any, batch_size: int, repeats: int, warmup: int,
               device: torch.device) -> list[float]:
    """Seconds per training step (forward, loss, backward, optimiser step)."""
    model.to(device).train()
    optimizer = torch.optim.RAdam(model.parameters(), lr=4e-4)
    generator = torch.Generator().manual_seed(0)
    batch = {m: torch.rand(batch_size, *s, generator=generator).to(device)
             for m, s in SHAPES.items()}
    times = []
    for index in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        loss, _ = model.compute_loss(batch, torch.Generator().manual_seed(index))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return times


def batch_scaling(objective: str, batch_sizes: Sequence[int], repeats: int, warmup: int,
                  device: torch.device) -> list[dict[str, Any]]:
    """Pairs/s against the batch size in one process."""
    rows = []
    for batch_size in batch_sizes:
        torch.manual_seed(0)
        median = statistics.median(step_times(build(objective), batch_size, repeats, warmup,
                                              device))
        rows.append({"batch_size": batch_size, "ms_per_step": 1e3 * median,
                     "pairs_per_s": batch_size / median})
    return rows


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ddp_worker(rank: int, world: int, port: int, objective: str, global_batch: int,
                repeats: int, warmup: int, device_type: str, threads: int, results: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        device = torch.device("cuda", rank) if device_type == "cuda" else torch.device("cpu")
        torch.manual_seed(0)
        model = build(objective, gather=True).to(device)
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[rank] if device_type == "cuda" else None)
        optimizer = torch.optim.RAdam(wrapped.parameters(), lr=4e-4)
        local = global_batch // world
        generator = torch.Generator().manual_seed(rank)
        batch = {m: torch.rand(local, *s, generator=generator).to(device)
                 for m, s in SHAPES.items()}
        times = []
        for index in range(warmup + repeats):
            dist.barrier()
            start = time.perf_counter()
            # DDP hooks the gradients of the wrapped module's parameters.
            loss, _ = wrapped.module.compute_loss(batch, torch.Generator().manual_seed(index))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if device_type == "cuda":
                torch.cuda.synchronize(device)
            dist.barrier()
            if index >= warmup:
                times.append(time.perf_counter() - start)
        if rank == 0:
            results.put(statistics.median(times))
    finally:
        dist.destroy_process_group()


def process_scaling(objective: str, global_batch: int, processes: Sequence[int], repeats: int,
                    warmup: int, device: torch.device) -> list[dict[str, Any]]:
    """Pairs/s of the global batch against the number of data-parallel processes."""
    cores = os.cpu_count() or 1
    rows = []
    for world in processes:
        if global_batch % world:
            raise ValueError(f"global batch {global_batch} is not divisible by {world}")
        context = mp.get_context("spawn")
        results = context.Queue()
        threads = max(1, cores // world) if device.type == "cpu" else 1
        port = _free_port()
        workers = [context.Process(target=_ddp_worker, args=(
            rank, world, port, objective, global_batch, repeats, warmup, device.type, threads,
            results)) for rank in range(world)]
        for worker in workers:
            worker.start()
        median = results.get(timeout=600)
        for worker in workers:
            worker.join(timeout=60)
        rows.append({"processes": world, "threads_per_process": threads,
                     "global_batch": global_batch, "ms_per_step": 1e3 * median,
                     "pairs_per_s": global_batch / median})
    return rows


def sweep_wall_time(epochs: int, limit_batches: int) -> dict[str, Any]:
    """Seconds for `mmssl sweep` of CR and XX on the embedded subset, as a subprocess."""
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "mmssl.cli", "sweep", "--preset", "quick",
                   "--objectives", "CR,XX", "--epochs", str(epochs), "--out", folder,
                   "--set", f"trainer.limit_train_batches={limit_batches}",
                   "--set", "trainer.progress_bar=false"]
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        seconds = time.perf_counter() - start
    return {"objectives": ["CR", "XX"], "epochs": epochs, "train_batches_per_epoch":
            limit_batches, "seconds": seconds}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the measurements, print the tables, return the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objective", default="CR-XX-CC-RR")
    parser.add_argument("--batch-sizes", default="16,32,64,128,256")
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--global-batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="few repeats, a smoke run")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup = 2, 1
    device = torch.device(args.device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    result: dict[str, Any] = {
        "meta": {"torch": torch.__version__, "device": str(device), "cores": os.cpu_count(),
                 "objective": args.objective, "load_before": load},
        "batch": batch_scaling(args.objective, [int(b) for b in args.batch_sizes.split(",")],
                               args.repeats, args.warmup, device),
        "processes": process_scaling(args.objective, args.global_batch,
                                     [int(p) for p in args.processes.split(",")],
                                     args.repeats, args.warmup, device),
    }
    if not args.skip_sweep:
        result["sweep"] = sweep_wall_time(1, 5 if args.quick else 50)
    console = Console()
    console.print(f"mmssl scaling  torch {torch.__version__}  device {device}  "
                  f"{os.cpu_count()} cores  objective {args.objective}  load {load}")
    table = Table(title="Throughput against batch size (one process)")
    for column in ("batch", "ms/step", "pairs/s", "× pairs/s of the smallest batch"):
        table.add_column(column, justify="right")
    base = result["batch"][0]["pairs_per_s"]
    for row in result["batch"]:
        table.add_row(str(row["batch_size"]), f"{row['ms_per_step']:.1f}",
                      f"{row['pairs_per_s']:,.0f}", f"{row['pairs_per_s'] / base:.2f}×")
    console.print(table)
    table = Table(title=f"Data-parallel throughput, global batch {args.global_batch} "
                        "(negatives gathered across processes)")
    for column in ("processes", "threads each", "ms/step", "pairs/s", "× one process"):
        table.add_column(column, justify="right")
    base = result["processes"][0]["pairs_per_s"]
    for row in result["processes"]:
        table.add_row(str(row["processes"]), str(row["threads_per_process"]),
                      f"{row['ms_per_step']:.1f}", f"{row['pairs_per_s']:,.0f}",
                      f"{row['pairs_per_s'] / base:.2f}×")
    console.print(table)
    if "sweep" in result:
        sweep = result["sweep"]
        console.print(f"quick sweep (CR, XX; {sweep['epochs']} epoch of "
                      f"{sweep['train_batches_per_epoch']} batches each, then probes): "
                      f"{sweep['seconds']:.1f} s wall time")
    console.print("On CPU the processes share the same cores, so more processes cannot be "
                  "faster here; the figures show the cost of the gather and DDP's all-reduce. "
                  "On GPUs each process has its own device.")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
