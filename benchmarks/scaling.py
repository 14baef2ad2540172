"""Scaling figures: throughput against batch size and number of processes, and a sweep's wall time.

Run ``python -m benchmarks.scaling`` from the repository root (or ``make bench``):

1. Training throughput (pairs/s) of a taxonomy model against the batch size, one process; the
   batch sizes' steps timed in the same interleaved rounds (:mod:`benchmarks.harness`).
2. Data-parallel throughput against the number of processes at a fixed global batch: CPU
   processes with gloo here (``--device cuda`` uses NCCL and one GPU per process where a
   machine has several), with the contrastive negatives gathered across processes exactly as
   in training, and DistributedDataParallel averaging the gradients.
3. The wall time of a quick sweep (two objectives, one epoch each) on the embedded subset.

The model is the default configuration's (``mmssl train``: the paper's two-encoder taxonomy
model on Two-View MNIST, shapes from the dataset registry), without a scheduler.
"""

from __future__ import annotations

import argparse
import functools
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

from benchmarks import harness
from benchmarks.harness import Rounds, RunOptions, int_list, print_table, time_interleaved
from benchmarks.workloads import TrainingStep, radam, random_batches
from mmssl.analysis.tables import Table
from mmssl.config import RunConfig, resolve
from mmssl.data.registry import dataset_spec
from mmssl.methods import METHODS, TaxonomyMethod
from mmssl.objectives.taxonomy import EstimatorSettings

__all__ = ["ROUNDS", "DataParallelLoss", "GatheringTaxonomyMethod", "LossForward",
           "batch_scaling", "build", "main", "process_scaling", "sweep_wall_time"]

ROUNDS = Rounds(repeats=10, warmup=2, quick_repeats=2, quick_warmup=1)
NOTE = ("On CPU the processes share the same cores, so more processes cannot be faster here; "
        "the figures show the cost of the gather and DDP's all-reduce. On GPUs each process has "
        "its own device.")


class GatheringTaxonomyMethod(TaxonomyMethod):
    """The taxonomy model whose InfoNCE terms always take the negatives of every process.

    Under Lightning a method gathers when its trainer runs several processes; the benchmark's
    own DDP loop has no trainer, so this subclass gathers whenever a process group is
    initialised (:func:`~mmssl.objectives.infonce.gather_with_grad`).
    """

    def gathering_estimator(self) -> EstimatorSettings:
        """The estimator with ``gather=True``."""
        return replace(self.estimator, gather=True)


class LossForward(torch.nn.Module):
    """A method's ``compute_loss`` as ``forward``.

    DistributedDataParallel all-reduces the gradients only of a backward that follows its own
    ``forward``; calling the wrapped module directly would leave each process with its own
    gradients. Wrap this module in DDP and call :meth:`compute_loss` on the result's owner
    (:class:`DataParallelLoss`).
    """

    def __init__(self, method: TaxonomyMethod) -> None:
        super().__init__()
        self.method = method

    def forward(self, batch: Mapping[str, Tensor], generator: torch.Generator | None
                ) -> tuple[Tensor, dict[str, Tensor]]:
        """The method's loss and terms."""
        return self.method.compute_loss(batch, generator)


@dataclass
class DataParallelLoss:
    """``compute_loss`` through a DDP-wrapped :class:`LossForward` (gradients all-reduced)."""

    wrapped: torch.nn.parallel.DistributedDataParallel

    def compute_loss(self, batch: Mapping[str, Tensor], generator: torch.Generator | None
                     ) -> tuple[Tensor, dict[str, Tensor]]:
        """Forward through DDP, so the backward averages the gradients over the processes."""
        loss, terms = self.wrapped(batch, generator)
        return loss, terms


def config_for(objective: str) -> RunConfig:
    """The default configuration with ``objective`` and no learning-rate scheduler."""
    return resolve(None, None, {"objective.name": objective, "optim.scheduler": "none"})


def input_shapes(config: RunConfig) -> dict[str, tuple[int, ...]]:
    """The configuration's input shapes, from the dataset registry."""
    return dataset_spec(config.data.dataset).input_shapes(config.data.settings,
                                                          config.modalities)


def build(objective: str, *, gather: bool = False) -> TaxonomyMethod:
    """The paper's two-encoder taxonomy model; ``gather`` takes negatives from every process."""
    config = config_for(objective)
    cls = GatheringTaxonomyMethod if gather else METHODS[config.method]
    classes = dataset_spec(config.data.dataset).num_classes or 1
    model = cls.from_config(config, input_shapes(config), classes)
    assert isinstance(model, TaxonomyMethod)
    return model


def batch_scaling(objective: str, batch_sizes: Sequence[int], repeats: int, warmup: int,
                  device: torch.device) -> list[dict[str, Any]]:
    """Pairs/s against the batch size in one process, the batch sizes interleaved."""
    shapes = input_shapes(config_for(objective))
    steps = {}
    for batch_size in batch_sizes:
        torch.manual_seed(0)
        model = build(objective).to(device).train()
        batches = random_batches(shapes, batch_size, 1, device, num_classes=1, seed=0)
        steps[batch_size] = TrainingStep(model, radam(model, model.optim_settings), batches)
    timings = time_interleaved({str(b): step for b, step in steps.items()}, device,
                               warmup=warmup, repeats=repeats)
    return [{"batch_size": b, "ms_per_step": timings[str(b)].median_ms,
             "pairs_per_s": timings[str(b)].rate(b)} for b in batch_sizes]


def free_port() -> int:
    """A TCP port free on the loopback interface now (for the process group's rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ddp_worker(rank: int, world: int, port: int, objective: str, global_batch: int,
               repeats: int, warmup: int, device_type: str, threads: int, results: Any) -> None:
    """One data-parallel process: time DDP training steps; rank 0 puts the median seconds."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        device = torch.device("cuda", rank) if device_type == "cuda" else torch.device("cpu")
        torch.manual_seed(0)
        model = build(objective, gather=True).to(device)
        wrapped = torch.nn.parallel.DistributedDataParallel(
            LossForward(model), device_ids=[rank] if device_type == "cuda" else None)
        batches = random_batches(input_shapes(config_for(objective)), global_batch // world, 1,
                                 device, num_classes=1, seed=rank)
        train = TrainingStep(DataParallelLoss(wrapped), radam(model, model.optim_settings),
                             batches)

        def step() -> None:
            # Every rank ends each step at the barrier, so the next one starts together.
            train()
            harness.synchronize(device)
            dist.barrier()

        dist.barrier()
        timing = time_interleaved({"step": step}, device, warmup=warmup,
                                  repeats=repeats)["step"]
        if rank == 0:
            results.put(timing.seconds)
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
        port = free_port()
        workers = [context.Process(target=ddp_worker, args=(
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


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = harness.benchmark_parser(
        "benchmarks.scaling", __doc__.splitlines()[0] if __doc__ else None, ROUNDS,
        quick_help="few repeats, a smoke run")
    parser.add_argument("--objective", default="CR-XX-CC-RR",
                        help="taxonomy objective of the model (default: CR-XX-CC-RR)")
    parser.add_argument("--batch-sizes", type=int_list, default=[16, 32, 64, 128, 256],
                        help="batch sizes of part 1 (default: 16,32,64,128,256)")
    parser.add_argument("--processes", type=functools.partial(int_list, minimum=1),
                        default=[1, 2], help="data-parallel process counts (default: 1,2)")
    parser.add_argument("--global-batch", type=int, default=128,
                        help="global batch of part 2, split evenly (default: 128)")
    parser.add_argument("--skip-sweep", action="store_true", help="skip part 3 (the sweep)")
    return parser


def problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the scaling-specific options, if anything."""
    for world in args.processes:
        if args.global_batch % world or args.global_batch // world < 2:
            return (f"--global-batch {args.global_batch} must split into batches of ≥ 2 over "
                    f"{world} process(es)")
    return None


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the measurements, print the tables, return the figures."""
    return harness.run_benchmark(build_parser(), argv, ROUNDS, run, problem)


def run(args: argparse.Namespace, options: RunOptions) -> dict[str, Any]:
    """The body of :func:`main` once the arguments are parsed and checked."""
    device, repeats, warmup = options.device, options.repeats, options.warmup
    console = harness.make_console()
    machine = harness.machine_description(device)
    meta = {**machine, "cores": machine["cpu_count"], "objective": args.objective,
            "load_before": machine["load_average_before"], "repeats": repeats, "warmup": warmup}
    harness.print_header(console, "mmssl scaling", meta,
                         f"{machine['cpu_count']} cores  objective {args.objective}  repeats "
                         f"{repeats} (+{warmup} warm-up)", warn_if_busy=device.type == "cpu")
    parts: dict[str, Any] = {
        "batch": batch_scaling(args.objective, args.batch_sizes, repeats, warmup, device),
        "processes": process_scaling(args.objective, args.global_batch, args.processes,
                                     repeats, warmup, device),
    }
    if not args.skip_sweep:
        parts["sweep"] = sweep_wall_time(1, 5 if args.quick else 50)
    base = parts["batch"][0]["pairs_per_s"]
    print_table(console, Table(
        "Throughput against batch size (one process)",
        ["batch", "ms/step", "pairs/s", "× pairs/s of the smallest batch"],
        [[str(row["batch_size"]), f"{row['ms_per_step']:.1f}", f"{row['pairs_per_s']:,.0f}",
          f"{row['pairs_per_s'] / base:.2f}×"] for row in parts["batch"]]))
    base = parts["processes"][0]["pairs_per_s"]
    print_table(console, Table(
        f"Data-parallel throughput, global batch {args.global_batch} (negatives gathered "
        "across processes)",
        ["processes", "threads each", "ms/step", "pairs/s", "× one process"],
        [[str(row["processes"]), str(row["threads_per_process"]), f"{row['ms_per_step']:.1f}",
          f"{row['pairs_per_s']:,.0f}", f"{row['pairs_per_s'] / base:.2f}×"]
         for row in parts["processes"]]))
    if "sweep" in parts:
        sweep = parts["sweep"]
        console.print(f"quick sweep (CR, XX; {sweep['epochs']} epoch of "
                      f"{sweep['train_batches_per_epoch']} batches each, then probes): "
                      f"{sweep['seconds']:.1f} s wall time")
    return harness.finish_run(console, meta, parts, NOTE, args.json)


if __name__ == "__main__":
    main()
