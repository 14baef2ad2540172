"""Cost of the neuroimaging path: preprocessing, loading from the cache and 3-D training.

Run ``python -m benchmarks.neuro`` from the repository root (or ``make bench``); ``--help``
lists the options and ``benchmarks/README.md`` explains every column. The benchmark simulates a
paired T1/fALFF cohort (:func:`~mmssl.data.neuro.simulate.simulate_cohort`, ``--subjects``
subjects at 3 mm) in a temporary folder and measures, in one run:

1. **Preprocessing** (:mod:`benchmarks.neuro_preprocessing`): cold and warm
   :func:`~mmssl.data.neuro.load_cohort` at the paper grid (64³ at 3 mm), at a 96³ grid (2 mm)
   and at every training grid, with the per-volume split of the cold load.
2. **Loading from the cache** (:mod:`benchmarks.neuro_loading`): batches through the data
   module's loader and device-side pad-crop against the training step of the same grid and
   batch: is the training loop fed?
3. **Training** (:mod:`benchmarks.neuro_training`) of the taxonomy model (CR-XX-CC-RR and the
   cheaper RR; the ``neuro`` preset, the default local tap of each size) at 32³, 64³ (and
   128³ with ``--large`` or on CUDA) and several batch sizes: ms/step, volumes/s, pairs/s,
   FLOPs and peak memory.
4. A **figure** (``--figure``, PNG): step time and peak memory against batch size per volume
   size, with the loading time per batch.

Every timing except the cold loads (one pass over all volumes, which fills the cache) is the
median over ``--repeats`` rounds after ``--warmup`` rounds, the rounds of the compared things
interleaved (:mod:`benchmarks.harness`). On CUDA every timed call is synchronised.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.harness import Rounds, RunOptions, int_list, print_table
from benchmarks.neuro_cohort import MODALITIES, grid_specs
from benchmarks.neuro_loading import (
    LoadRow,
    fed_summary,
    load_rows,
    loading_table,
    measure_loading,
)
from benchmarks.neuro_preprocessing import measure_preprocessing, preprocessing_table
from benchmarks.neuro_training import TRAIN_OBJECTIVES, TrainRow, measure_training, training_table
from mmssl import io
from mmssl.data.neuro.simulate import SimulationSettings, simulate_cohort
from mmssl.runs.allocator import ALLOCATOR_CHOICES

__all__ = ["ROUNDS", "build_parser", "main", "run", "write_figure"]

SIMULATION_VOXEL_MM = 3.0
SIMULATION_SEED = 0
LARGE_SIZE = 128
ROUNDS = Rounds(repeats=7, warmup=1, quick_repeats=2, quick_warmup=1)
DEFAULT_SUBJECTS, QUICK_SUBJECTS = 64, 8
DEFAULT_SIZES: tuple[int, ...] = (32, 64)
QUICK_SIZES: tuple[int, ...] = (32,)
DEFAULT_BATCH_SIZES: tuple[int, ...] = (4, 8, 16)
QUICK_BATCH_SIZES: tuple[int, ...] = (2, 4)
DEFAULT_LOAD_BATCH_SIZES: tuple[int, ...] = (8, 32)
QUICK_LOAD_BATCH_SIZES: tuple[int, ...] = (2, 4)
DEFAULT_SPLIT_FILES, QUICK_SPLIT_FILES = 4, 2
DEFAULT_FIGURE = Path("runs/bench/neuro_cost.png")

#: How part 3 measures peak memory on each device (also in the JSON's ``meta.memory_method``).
MEMORY_METHODS = {
    "cpu": (
        "profiler peak: the largest sum of bytes allocated (minus bytes freed) through PyTorch's "
        "CPU allocator during one training step, from the memory events of torch.profiler "
        "(profile_memory=True), the events ordered by time. Counts activations, gradients and "
        "transients; parameters, optimizer state and the input batch existed before and are "
        "excluded; so are allocations outside PyTorch's allocator (oneDNN scratch pads, Python "
        "objects)"
    ),
    "cuda": (
        "allocator peak: torch.cuda.max_memory_allocated during one training step minus the "
        "bytes allocated before it (parameters, optimizer state and the input batch excluded; "
        "activations, gradients and transients included)"
    ),
}

FOOTER = (
    "How to read: a volume is one modality of one session; a pair is one session in both "
    "modalities (2 volumes). Preprocessing: cold = load_cohort with an empty cache folder (one "
    "pass over all volumes: hash, validate, preprocess, write, assemble); hash, validate and "
    "preprocess ms/vol are the same work timed directly on a few files (SHA-256 of the bytes; "
    "nibabel decode with finiteness and range checks; preprocess_volume), other = cold per "
    "volume minus those three (cache writes, cohort assembly, manifest parsing); warm = "
    "load_cohort again (hashes every file, every entry a cache hit). Loading: fetch = next "
    "batch from the DataLoader (memmap read, collate, transfer to the device), augment = the "
    "data module's device-side pad-crop; load/step = (fetch + augment) / training step "
    "at the same grid and batch; < 1 means loading keeps up. With num_workers=0 loading is not "
    "overlapped with the step and adds to it; with num_workers >= 1 the fetch can run beside "
    "the step, the augmentation cannot. Training: vol/s = 2 x batch / step, pairs/s = batch / "
    "step; GFLOP = convolutions and matrix products of a step, forward and backward, GFLOP/s "
    "that work per median step. Times are medians of interleaved rounds; IQR% = interquartile "
    "range / median (noise)."
)


def size_list(text: str) -> list[int]:
    """Comma-separated volume sides: powers of two ≥ 16 (the 3-D DCGAN encoder's)."""
    values = int_list(text)
    bad = [v for v in values if v < 16 or v & (v - 1)]
    if bad:
        raise argparse.ArgumentTypeError(
            f"the 3-D DCGAN encoder needs power-of-two sides ≥ 16 (e.g. 32,64,128); got {bad}")
    return sorted(values)


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = harness.benchmark_parser(
        "benchmarks.neuro", "Cost of the neuroimaging path on a simulated cohort: preprocessing "
        "throughput (cold and warm cache), loading from the cache against the training step, "
        "training throughput and peak memory of the 3-D taxonomy model, and a figure.", ROUNDS,
        device_help=" of parts 2 and 3 (preprocessing always runs on the CPU)",
        quick_help=f"smoke run: {QUICK_SUBJECTS} subjects, 32³ only, batches 2 and 4, few "
        "repeats")
    parser.add_argument("--subjects", type=int, default=None,
                        help=f"subjects of the simulated cohort, one session each (default: "
                        f"{DEFAULT_SUBJECTS}; --quick: {QUICK_SUBJECTS})")
    parser.add_argument("--sizes", type=size_list, default=None,
                        help="volume sides of the training part, powers of two (default: "
                        f"{','.join(map(str, DEFAULT_SIZES))}, plus {LARGE_SIZE} with --large "
                        f"or on CUDA; --quick: {','.join(map(str, QUICK_SIZES))})")
    parser.add_argument("--large", action="store_true",
                        help=f"add {LARGE_SIZE}³ to the default sizes (slow on a CPU)")
    parser.add_argument("--batch-sizes", type=int_list, default=None,
                        help="training batch sizes (default: "
                        f"{','.join(map(str, DEFAULT_BATCH_SIZES))}; --quick: "
                        f"{','.join(map(str, QUICK_BATCH_SIZES))})")
    parser.add_argument("--load-batch-sizes", type=int_list, default=None,
                        help="batch sizes of the loading part (default: "
                        f"{','.join(map(str, DEFAULT_LOAD_BATCH_SIZES))}; --quick: "
                        f"{','.join(map(str, QUICK_LOAD_BATCH_SIZES))})")
    parser.add_argument("--split-files", type=int, default=None,
                        help="files timed directly for the per-volume split of preprocessing "
                        f"(default: {DEFAULT_SPLIT_FILES}; --quick: {QUICK_SPLIT_FILES})")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the temporary cohort and caches go (default: the system's "
                        "temporary folder); removed at the end")
    parser.add_argument("--figure", type=Path, default=DEFAULT_FIGURE,
                        help=f"PNG to write (default: {DEFAULT_FIGURE})")
    parser.add_argument("--no-figure", action="store_true", help="write no figure")
    parser.add_argument("--variants", type=lambda text: [v.strip() for v in text.split(",")],
                        default=["fp32"],
                        help="how the training steps run, compared in the same rounds: fp32 "
                        "(default), fp32-cl (channels-last-3d), bf16 (bfloat16 autocast), "
                        "bf16-cl (both)")
    parser.add_argument("--cpu-allocator", choices=ALLOCATOR_CHOICES, default="retain",
                        help="trainer.cpu_allocator of the training part (default retain, as "
                        "mmssl train; system: glibc's defaults — run the benchmark once with "
                        "each for a before/after, the setting is process-wide)")
    return parser


def problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the neuro-specific options, if anything."""
    if args.subjects is not None and args.subjects < 2:
        return "--subjects must be ≥ 2"
    if args.split_files is not None and args.split_files < 1:
        return "--split-files must be ≥ 1"
    return None


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the tables and return (and optionally write) the results.

    ``--threads`` applies to this run only: torch's thread count is restored afterwards.
    """
    return harness.run_benchmark(build_parser(), argv, ROUNDS, run, problem)


def run(args: argparse.Namespace, options: RunOptions) -> dict[str, Any]:
    """The body of :func:`main` once the arguments are parsed and checked."""
    device, repeats, warmup, quick = options.device, options.repeats, options.warmup, args.quick
    subjects = args.subjects or (QUICK_SUBJECTS if quick else DEFAULT_SUBJECTS)
    if args.sizes is not None:
        sizes = list(args.sizes)
    elif quick:
        sizes = list(QUICK_SIZES)
    else:
        sizes = list(DEFAULT_SIZES) + ([LARGE_SIZE] if args.large or device.type == "cuda"
                                       else [])
    batch_sizes = args.batch_sizes or list(QUICK_BATCH_SIZES if quick else DEFAULT_BATCH_SIZES)
    load_batch_sizes = args.load_batch_sizes or list(
        QUICK_LOAD_BATCH_SIZES if quick else DEFAULT_LOAD_BATCH_SIZES)
    split_files = args.split_files or (QUICK_SPLIT_FILES if quick else DEFAULT_SPLIT_FILES)
    figure = None if args.no_figure else args.figure

    console = harness.make_console()
    meta: dict[str, Any] = {
        **harness.machine_description(device),
        "subjects": subjects,
        "volumes": len(MODALITIES) * subjects,
        "simulation_voxel_size": SIMULATION_VOXEL_MM,
        "sizes": sizes,
        "batch_sizes": batch_sizes,
        "load_batch_sizes": load_batch_sizes,
        "objectives": list(TRAIN_OBJECTIVES),
        "variants": list(args.variants),
        "split_files": split_files,
        "repeats": repeats,
        "warmup": warmup,
        "quick": quick,
        "memory_method": MEMORY_METHODS[device.type],
        "cpu_allocator": args.cpu_allocator,
    }
    # Preprocessing always runs on the CPU, so the load warning applies whatever the device.
    harness.print_header(
        console, "mmssl neuro benchmark", meta,
        f"{subjects} subjects  sizes {','.join(map(str, sizes))}  batches "
        f"{','.join(map(str, batch_sizes))}  repeats {repeats} (+{warmup} warm-up)")

    grids = grid_specs(sizes)
    grid_of = {g.size: g for g in grids}
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mmssl-neuro-bench-", dir=args.workdir) as tmp:
        workdir = Path(tmp)
        start = time.perf_counter()
        manifest = simulate_cohort(workdir / "cohort", SimulationSettings(
            subjects=subjects, seed=SIMULATION_SEED, voxel_size=SIMULATION_VOXEL_MM),
            progress=False)
        meta["simulation_s"] = time.perf_counter() - start
        console.print(f"simulated {subjects} subjects ({meta['volumes']} volumes at "
                      f"{SIMULATION_VOXEL_MM:g} mm) in {meta['simulation_s']:.1f} s")

        prep_rows, cohorts = measure_preprocessing(
            manifest, grids, workdir, split_files=split_files, warmup=warmup, repeats=repeats)
        print_table(console, preprocessing_table(prep_rows, subjects),
                    no_wrap=("grid", "role", "cache"))

        load_timings, load_notes = measure_loading(
            cohorts, grid_of, sizes, load_batch_sizes, device, warmup=warmup, repeats=repeats)
        all_train_rows = measure_training(manifest, cohorts, grid_of, sizes, batch_sizes,
                                          device, warmup=warmup, repeats=repeats,
                                          variants=args.variants,
                                          cpu_allocator=args.cpu_allocator)
        # the loading part and the figure compare with the first variant's steps
        train_rows = [r for r in all_train_rows if r.variant == args.variants[0]]
        memory_label = "allocator" if device.type == "cuda" else "profiler"
        print_table(console, training_table(all_train_rows, memory_label))
        console.print(f"Peak memory ({memory_label}) = {MEMORY_METHODS[device.type]}.")
        broken = [f"{r.size}³ {r.objective} batch {r.batch_size}" for r in train_rows
                  if not math.isfinite(r.loss)]
        if broken:
            console.print(f"[red]warning[/red]: non-finite loss at the first step: "
                          f"{', '.join(broken)}")

        loading = load_rows(load_timings, train_rows)
        print_table(console, loading_table(loading), no_wrap=("grid", "fed?"))
        if any(r.step_source != "measured" for r in loading):
            console.print("* step not trained at this batch: the step time of the nearest "
                          "trained batch B', scaled by batch / B' (see step_source in the JSON).")
        for note in load_notes:
            console.print(f"[yellow]note[/yellow]: {note}")
        summary = fed_summary(loading)
        console.print(f"[bold]Is the loop fed?[/bold] {summary}")
        del cohorts  # drop the memory maps before the folder goes

    meta["loading_notes"] = load_notes
    if figure is not None:
        title = (f"mmssl neuro benchmark: {meta['device']} ({meta['device_name']}), "
                 f"{meta['threads']} thread(s), torch {meta['torch']}, {subjects} subjects, "
                 f"medians of {repeats} rounds")
        write_figure(figure, train_rows, loading, title)
        console.print(f"figure: {figure}")
    return harness.finish_run(console, meta, {
        "preprocessing": [asdict(r) for r in prep_rows],
        "loading": [asdict(r) for r in loading],
        "training": [asdict(r) for r in all_train_rows],
        "fed": summary,
        "figure": str(figure) if figure is not None else None,
    }, FOOTER, args.json)


def write_figure(path: Path, train: Sequence[TrainRow], loading: Sequence[LoadRow],
                 title: str) -> None:
    """Step time (with loading time per batch) and peak memory against batch size, per size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

    fig, (ax_time, ax_memory) = plt.subplots(1, 2, figsize=(12, 4.6), constrained_layout=True)
    sizes = sorted({r.size for r in train} | {r.size for r in loading})
    colours = [f"C{i}" for i in range(len(sizes))]
    styles = dict(zip(TRAIN_OBJECTIVES, ("-", "--"), strict=True))
    batches: set[int] = set()
    for colour, size in zip(colours, sizes, strict=False):
        for objective, style in styles.items():
            rows = sorted((r for r in train if r.size == size and r.objective == objective),
                          key=lambda r: r.batch_size)
            if not rows:
                continue
            x = [r.batch_size for r in rows]
            batches.update(x)
            ax_time.plot(x, [r.step_ms for r in rows], style, marker="o", color=colour,
                         label=f"{size}³ step {objective}")
            memory = [(r.batch_size, r.peak_bytes / 2**20) for r in rows if r.peak_bytes > 0]
            if memory:
                ax_memory.plot(*zip(*memory, strict=True), style, marker="o", color=colour,
                               label=f"{size}³ {objective}")
        load = sorted((r for r in loading if r.size == size), key=lambda r: r.batch_size)
        if load:
            batches.update(r.batch_size for r in load)
            ax_time.plot([r.batch_size for r in load], [r.load_ms for r in load], ":",
                         marker="^", color=colour, label=f"{size}³ loading (fetch + augment)")
    for ax, ylabel in ((ax_time, "ms per batch (median)"),
                       (ax_memory, "peak memory per step (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sorted(batches))
        ax.set_xticklabels([str(b) for b in sorted(batches)])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("batch size (pairs)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    ax_time.set_title("training step and loading time")
    ax_memory.set_title("peak memory of a training step")
    fig.suptitle(title, fontsize=9)
    io.save_figure(fig, path, dpi=120)


if __name__ == "__main__":
    main()
