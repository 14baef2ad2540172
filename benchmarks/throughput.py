"""Training throughput of every taxonomy objective and every method; InfoNCE estimator vs masks.

Run ``python -m benchmarks.throughput`` from the repository root (or ``make bench``);
``--help`` lists the options and ``benchmarks/README.md`` explains every column. Three parts,
in the same run:

1. **Per objective** (:mod:`benchmarks.throughput_objectives`): full training steps of the
   paper-default model, and, interleaved with them, the encoder+heads forward alone and the
   objective alone, so that the objective's share of a step is measured rather than inferred.
2. **Estimator vs masks** (:mod:`benchmarks.throughput_estimator`):
   :func:`~mmssl.objectives.infonce.infonce` against
   :func:`~mmssl.objectives.infonce.infonce_with_masks` on CR-like shapes — same loss, penalty
   and gradients, forward+backward time and memory of each.
3. **Per method** (:mod:`benchmarks.throughput_methods`): a full training step of every
   registered method built from the default configuration, as ``mmssl train`` does.
4. **Today vs new** (:mod:`benchmarks.throughput_speedup`): for CR, RR and CR-XX-CC-RR, the
   step of the earlier defaults (dense estimator, contiguous, eager, per-parameter RAdam,
   glibc's allocator defaults) against the new one (lean estimator with shared candidates, the
   memory format a run would choose, multi-tensor RAdam, ``cpu_allocator: retain``), each in
   its own process, interleaved, with pairs/s and their ratio; and the dense vs lean
   estimator's memory at ``--speedup-est-batch`` × ``--speedup-est-locations`` (64 × 512).
5. **Compilation** (``--compile-objectives``, CR-XX-CC-RR unless ``--quick``): the new step
   eager against ``trainer.compile: true`` — compile time, steady-state ms of each, and the
   number of steps it takes to earn the compile time back.

Every timing is the median over ``--repeats`` rounds after ``--warmup`` rounds; the quantities
compared with each other are measured in interleaved rounds (:mod:`benchmarks.harness`), so
background load hits them alike.
"""

from __future__ import annotations

import argparse
import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from benchmarks import harness
from benchmarks.harness import Rounds, RunOptions, int_list, print_table
from benchmarks.throughput_estimator import (
    MEMORY_METHODS,
    EstimatorRow,
    compare_estimators,
    estimator_table,
)
from benchmarks.throughput_methods import (
    QUICK_METHODS,
    TAXONOMY_ROWS,
    MethodRow,
    all_methods,
    benchmark_datasets,
    dataset_inputs,
    measure_methods,
    methods_table,
)
from benchmarks.throughput_objectives import (
    SPLIT_TOLERANCE,
    ObjectiveRow,
    measure_objective,
    objectives_table,
)
from benchmarks.throughput_speedup import (
    MEMORY_FORMAT_CHOICES,
    SPEEDUP_OBJECTIVES,
    CompileRow,
    EstimatorMemoryRow,
    SpeedupRow,
    compile_table,
    estimator_memory,
    measure_compile,
    measure_speedup,
    memory_table,
    speedup_table,
)
from mmssl.methods import METHODS
from mmssl.objectives.taxonomy import Objective, all_objectives

__all__ = ["ROUNDS", "build_parser", "main", "run"]

QUICK_OBJECTIVES: tuple[str, ...] = ("CR", "RR", "CR-XX-CC-RR")
ROUNDS = Rounds(repeats=15, warmup=3, quick_repeats=3, quick_warmup=1)

FOOTER = (
    "How to read: pairs/s = batch size / median step time (a pair = one sample of both "
    "modalities). obj share = objective ms / step ms, both measured directly; fwd ms is the "
    "encoder+heads forward alone; rest ms = step − fwd − objective (encoder and head backward, "
    "optimizer step). Estimator table: ratios are mask-based / estimator, so > 1 means the "
    "estimator is faster or smaller; max |Δ| compares loss, penalty and input gradients of the "
    "two. Methods table: a full training step of each method with its default configuration "
    "(params = trainable parameters; GFLOP = matrix products and convolutions of a step, "
    "forward and backward, and GFLOP/s that work per median step time); × slower = ms/step / "
    "ms/step of the fastest decoder-free row. Today vs new: ratio = new pairs/s / today "
    "pairs/s (> 1: the new step is faster), both steps timed in the same rounds from the same "
    "weights; how = how the new memory format was chosen (configured, measured, cached). "
    "Estimator memory: peak = allocator peak of forward+backward (CUDA allocator, or the CPU "
    "profiler's memory events), saved = bytes the graph keeps for backward. Compilation: "
    "compile s = first compiled step − first eager step; break-even steps = compile s / (eager "
    "− compiled per step), 'never' when compiling does not make the step faster. All times are "
    "medians of interleaved rounds; IQR% = interquartile range / median (noise)."
)


def objective_list(text: str) -> list[str]:
    """Comma-separated taxonomy objectives, canonical names (argparse type)."""
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected at least one objective")
    try:
        return [Objective.parse(name).name for name in names]
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def method_list(text: str) -> list[str]:
    """Comma-separated registered methods, without repeats (argparse type)."""
    names = list(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    if not names:
        raise argparse.ArgumentTypeError("expected at least one method")
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {', '.join(unknown)}; valid: {', '.join(all_methods())}")
    return names


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = harness.benchmark_parser(
        "benchmarks.throughput", "Training throughput per taxonomy objective, the InfoNCE "
        "estimator against its mask-based implementation (time, memory, agreement), and "
        "training throughput per method (decoder-free and decoder-based).", ROUNDS,
        quick_help="smoke run: 3 objectives, 3 methods, few repeats")
    parser.add_argument("--objectives", type=objective_list, default=None,
                        help="comma-separated objectives, e.g. CR,XX,CR-XX-CC-RR (default: all "
                        f"15; with --quick: {','.join(QUICK_OBJECTIVES)})")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="training batch size of parts 1 and 3 (default: 64)")
    parser.add_argument("--est-batch-sizes", type=int_list, default=[64, 128],
                        help="batch sizes B of the estimator comparison (default: 64,128)")
    parser.add_argument("--est-locations", type=int_list, default=[64, 512],
                        help="candidate locations L of the estimator comparison "
                        "(default: 64,512 = an 8×8 and an 8³ map)")
    parser.add_argument("--methods", type=method_list, default=None,
                        help="comma-separated methods of part 3, e.g. taxonomy,ae,mmvae "
                        f"(default: all: {','.join(all_methods())}; with --quick: "
                        f"{','.join(QUICK_METHODS)}); taxonomy gives the rows "
                        f"{' and '.join(TAXONOMY_ROWS)}")
    datasets = benchmark_datasets()
    shapes = "; ".join(f"{name}: " + ", ".join(
        f"{m} {'×'.join(map(str, s))}" for m, s in dataset_inputs(name).items())
        for name in datasets)
    parser.add_argument("--dataset", choices=datasets, default="two_view_mnist",
                        help=f"input shapes of part 3 (default: two_view_mnist; {shapes})")
    parser.add_argument("--mmvae-k", type=int, default=None,
                        help="MMVAE's importance samples K in part 3 (default: the "
                        "configuration's, 30)")
    parser.add_argument("--methods-memory-format", choices=MEMORY_FORMAT_CHOICES,
                        default="auto",
                        help="memory format of part 3's methods (default: auto, decided per "
                        "method as a run's trainer.memory_format: auto decides it, cache "
                        "included; contiguous: PyTorch's default layout for every method)")
    parser.add_argument("--skip-objectives", action="store_true", help="skip part 1")
    parser.add_argument("--skip-estimator", action="store_true", help="skip part 2")
    parser.add_argument("--skip-methods", action="store_true", help="skip part 3")
    parser.add_argument("--skip-speedup", action="store_true", help="skip part 4")
    parser.add_argument("--speedup-memory-format", choices=MEMORY_FORMAT_CHOICES,
                        default="auto",
                        help="memory format of part 4's new step (default: auto, chosen as "
                        "trainer.memory_format: auto chooses it, cache included)")
    parser.add_argument("--speedup-batch-size", type=int, default=64,
                        help="training batch size of part 4 (default: 64)")
    parser.add_argument("--compile-objectives", type=objective_list, default=None,
                        help="objectives of part 5 (default CR-XX-CC-RR; none with --quick "
                             "unless given)")
    parser.add_argument("--skip-compile", action="store_true", help="skip part 5")
    parser.add_argument("--speedup-est-batch", type=int, default=64,
                        help="B of part 4's estimator memory (default: 64)")
    parser.add_argument("--speedup-est-locations", type=int, default=512,
                        help="L of part 4's estimator memory (default: 512 = an 8³ map)")
    return parser


def problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the throughput-specific options, if anything."""
    if args.batch_size < 2:
        return "--batch-size must be ≥ 2 (InfoNCE needs negatives)"
    if args.mmvae_k is not None and args.mmvae_k < 1:
        return "--mmvae-k must be ≥ 1"
    if args.speedup_batch_size < 2 or args.speedup_est_batch < 2:
        return "--speedup-batch-size and --speedup-est-batch must be ≥ 2"
    if args.speedup_est_locations < 1:
        return "--speedup-est-locations must be ≥ 1"
    return None


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the tables and return (and optionally write) the results.

    ``--threads`` applies to this run only: torch's thread count is restored afterwards, so the
    function can be called from tests or notebooks.
    """
    return harness.run_benchmark(build_parser(), argv, ROUNDS, run, problem)


def run(args: argparse.Namespace, options: RunOptions) -> dict[str, Any]:
    """The body of :func:`main` once the arguments are parsed and checked."""
    device, repeats, warmup = options.device, options.repeats, options.warmup
    objectives = args.objectives or (list(QUICK_OBJECTIVES) if args.quick else all_objectives())
    methods = args.methods or (list(QUICK_METHODS) if args.quick else all_methods())

    console = harness.make_console()
    meta: dict[str, Any] = {
        **harness.machine_description(device),
        "batch_size": args.batch_size,
        "repeats": repeats,
        "warmup": warmup,
        "quick": args.quick,
        "memory_method": MEMORY_METHODS[device.type],
        "time_ratio": "mask-based / estimator",
        "methods_dataset": args.dataset,
        "methods_input_shapes": {m: list(s) for m, s in dataset_inputs(args.dataset).items()},
        "methods_memory_format": args.methods_memory_format,
    }
    harness.print_header(console, "mmssl throughput", meta,
                         f"batch {args.batch_size}  repeats {repeats} (+{warmup} warm-up)",
                         warn_if_busy=device.type == "cpu")

    objective_rows: list[ObjectiveRow] = []
    if not args.skip_objectives:
        for name in objectives:
            row = measure_objective(name, args.batch_size, device, warmup=warmup,
                                    repeats=repeats)
            objective_rows.append(row)
            if row.split_check_abs_diff > SPLIT_TOLERANCE:
                console.print(f"[red]warning[/red]: {name}: the forward/objective split differs "
                              f"from compute_loss by {row.split_check_abs_diff:.3g}")
        print_table(console, objectives_table(objective_rows, args.batch_size))

    estimator_rows: list[EstimatorRow] = []
    if not args.skip_estimator:
        for batch, locations in itertools.product(args.est_batch_sizes, args.est_locations):
            estimator_rows.append(compare_estimators(batch, locations, device, warmup=warmup,
                                                     repeats=repeats))
        label = "peak" if device.type == "cuda" else "saved"
        print_table(console, estimator_table(estimator_rows, label))
        console.print(f"Memory ({label}) = {MEMORY_METHODS[device.type]}.")

    method_rows: list[MethodRow] = []
    if not args.skip_methods:
        method_rows, notes = measure_methods(
            methods, args.batch_size, device, dataset=args.dataset, mmvae_k=args.mmvae_k,
            warmup=warmup, repeats=repeats, memory_format=args.methods_memory_format,
        )
        meta["methods_notes"] = notes
        print_table(console, methods_table(method_rows, args.batch_size, args.dataset))
        for note in notes:
            console.print(f"[yellow]note[/yellow]: {note}")
        broken = [r.label for r in method_rows if not math.isfinite(r.loss)]
        if broken:
            console.print(f"[red]warning[/red]: non-finite loss at the first step: "
                          f"{', '.join(broken)}")

    speedup_rows: list[SpeedupRow] = []
    memory_rows: list[EstimatorMemoryRow] = []
    if not args.skip_speedup:
        for name in SPEEDUP_OBJECTIVES:
            speedup_rows.append(measure_speedup(
                name, args.speedup_batch_size, device,
                memory_format=args.speedup_memory_format, warmup=warmup, repeats=repeats))
        print_table(console, speedup_table(speedup_rows))
        memory_rows.append(estimator_memory(args.speedup_est_batch, args.speedup_est_locations,
                                            device))
        peak = "CUDA allocator peak" if device.type == "cuda" else "CPU profiler peak"
        print_table(console, memory_table(memory_rows, "peak"))
        console.print(f"Estimator memory: peak = {peak}; saved = autograd-saved bytes.")

    compile_rows: list[CompileRow] = []
    compile_objectives = args.compile_objectives or ([] if args.quick else ["CR-XX-CC-RR"])
    if not args.skip_compile and compile_objectives:
        for name in compile_objectives:
            compile_rows.append(measure_compile(name, args.speedup_batch_size, device,
                                                warmup=warmup, repeats=repeats))
        print_table(console, compile_table(compile_rows))
        for compile_row in compile_rows:
            if not compile_row.available:
                console.print("[yellow]note[/yellow]: torch.compile unavailable: "
                              f"{compile_row.detail}")

    return harness.finish_run(console, meta, {
        "objectives": [asdict(r) for r in objective_rows],
        "estimator": [asdict(r) for r in estimator_rows],
        "methods": [asdict(r) for r in method_rows],
        "speedup": [asdict(r) for r in speedup_rows],
        "estimator_memory": [asdict(r) for r in memory_rows],
        "compile": [asdict(r) for r in compile_rows],
    }, FOOTER, args.json)


if __name__ == "__main__":
    main()
