"""The one measuring kit of the benchmarks: timing, machine, memory, FLOPs, tables and output.

Every benchmark module takes these from here and none repeats them:

* **timing** — :func:`time_interleaved` times several candidates in the same rounds (warm-up
  rounds first, CUDA synchronised around every call, the garbage collector paused) and
  summarises each as a :class:`Timing` (median, minimum, interquartile range);
  :func:`time_interleaved_in_processes` does the same with each candidate in its own process,
  for candidates that differ in process-wide state (the allocator's settings);
* **machine** — :func:`machine_description` (CPU model, logical cores, torch threads, torch
  version, device name, 1-minute load average) and :func:`busy_machine_warning`;
* **memory** — :func:`cuda_peak_bytes` (allocator peak), :func:`profiler_peak_bytes` (peak of
  PyTorch's CPU allocator from the profiler's memory events), :func:`peak_memory_bytes` (the
  one that fits the device) and :func:`autograd_saved_bytes` (what a graph holds for backward);
* **work** — :func:`count_flops` (matrix products and convolutions, forward and backward);
* **output** — :func:`make_console`, :func:`print_header`, :func:`print_table` (an
  :class:`mmssl.analysis.tables.Table` rendered with rich), :func:`write_results` (JSON,
  atomically), :func:`finish_run` (the results of a run) and :func:`format_bytes`;
* **command line** — :func:`benchmark_parser` with :func:`add_run_options` (``--device``,
  ``--repeats``, ``--warmup``, ``--quick``, ``--threads``, ``--json``), :func:`run_options`
  (their checks), :func:`run_benchmark` (a benchmark's ``main``), :func:`torch_threads` and
  :func:`int_list`.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.console import Console
from torch import Tensor

from mmssl import io
from mmssl.analysis.tables import Table

__all__ = [
    "Candidate",
    "Rounds",
    "RunOptions",
    "Timing",
    "add_run_options",
    "autograd_saved_bytes",
    "benchmark_parser",
    "busy_machine_warning",
    "count_flops",
    "cpu_name",
    "cuda_peak_bytes",
    "device_name",
    "finish_run",
    "format_bytes",
    "format_load",
    "int_list",
    "load_average",
    "machine_description",
    "make_console",
    "native_stderr_silenced",
    "peak_memory_bytes",
    "print_header",
    "print_table",
    "profiler_peak_bytes",
    "run_benchmark",
    "run_options",
    "synchronize",
    "time_interleaved",
    "time_interleaved_in_processes",
    "torch_threads",
    "write_results",
]

#: Console width when the output is not a terminal (pipes and CI logs default to 80 columns).
CONSOLE_WIDTH = 170
DEVICE_TYPES = ("cpu", "cuda")

# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def synchronize(device: torch.device | None) -> None:
    """Wait for the kernels queued on a CUDA device; nothing on the CPU (or ``None``)."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    """Summary of repeated timings of one candidate, in milliseconds.

    For samples :math:`t_1..t_n`: ``median_ms`` is their median, ``min_ms`` the minimum and
    ``iqr_ms`` the interquartile range :math:`Q_3 - Q_1` with the quartiles interpolated
    linearly between order statistics (``statistics.quantiles(method="inclusive")``; 0 for a
    single sample).
    """

    median_ms: float
    min_ms: float
    iqr_ms: float
    samples_ms: tuple[float, ...]

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Timing:
        """Summarise durations given in seconds (at least one)."""
        if not seconds:
            raise ValueError("Timing.of needs at least one duration")
        ms = [1000.0 * s for s in seconds]
        if len(ms) >= 2:
            q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive")
        else:
            q1 = q3 = ms[0]
        return cls(statistics.median(ms), min(ms), q3 - q1, tuple(ms))

    @property
    def seconds(self) -> float:
        """The median in seconds."""
        return self.median_ms / 1000.0

    @property
    def iqr_percent(self) -> float:
        """Interquartile range as a percentage of the median (the noise of the rounds)."""
        return 100.0 * self.iqr_ms / self.median_ms if self.median_ms > 0 else 0.0

    def rate(self, count: float) -> float:
        """``count`` things per median call, per second (e.g. pairs/s of a training step)."""
        return count / self.seconds


def time_interleaved(
    functions: Mapping[str, Callable[[], object]],
    device: torch.device | None = None,
    *,
    warmup: int,
    repeats: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Timing]:
    """Time each candidate once per round, the rounds interleaved; medians over ``repeats``.

    First ``warmup`` untimed rounds call every candidate once each; then ``repeats`` timed
    rounds do the same, in the mapping's order, so a slow phase of a noisy machine slows every
    candidate alike and the ratios of their medians stay meaningful. On CUDA the device is
    synchronised before and after every timed call, so queued kernels count for the call that
    queued them. The garbage collector is paused during the timed rounds (and restored).

    Args:
        functions: name → candidate (called without arguments; its result is ignored).
        device: synchronised around each call when it is a CUDA device.
        warmup: untimed rounds first (≥ 0).
        repeats: timed rounds (≥ 1).
        clock: seconds, monotonic (tests pass a fake one).

    Returns:
        name → :class:`Timing` of its ``repeats`` durations.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats ≥ 1 and warmup ≥ 0; got {repeats} and {warmup}")
    if not functions:
        raise ValueError("time_interleaved needs at least one function to time")
    for _ in range(warmup):
        for function in functions.values():
            function()
    synchronize(device)
    samples: dict[str, list[float]] = {name: [] for name in functions}
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            for name, function in functions.items():
                synchronize(device)
                start = clock()
                function()
                synchronize(device)
                samples[name].append(clock() - start)
    finally:
        if was_enabled:
            gc.enable()
    return {name: Timing.of(values) for name, values in samples.items()}


#: Pause before each block of a process-separated candidate: the OpenMP threads of the process
#: that ran last keep spinning for a while after their work and would take cores from the next.
SETTLE_SECONDS = 0.1
#: Calls per block of a process-separated candidate; the first of each block is not counted.
BLOCK_CALLS = 4


class Candidate(Protocol):
    """What a process-separated candidate's factory returns: called once per timed call;
    ``info`` (plain values) goes back to the parent once, when the candidate is ready."""

    @property
    def info(self) -> Mapping[str, Any]:
        """Plain values reported to the parent once (read-only, so a ``dict`` field conforms)."""
        ...

    def __call__(self) -> object:
        ...


def _candidate_process(factory: Callable[[], Candidate], threads: int | None,
                       device: str | None, connection: Any) -> None:
    """Body of one candidate's process: build it, report ``info``, then for each message
    ``("run", n, timed)`` call it n times and answer with the seconds of each call; any failure
    is sent back as text."""
    import traceback

    try:
        if threads is not None:
            torch.set_num_threads(threads)
        candidate = factory()
        where = torch.device(device) if device is not None else None
        connection.send(("ready", dict(candidate.info)))
        while True:
            message = connection.recv()
            if message == "stop":
                break
            _, calls, timed = message
            gc.disable() if timed else gc.enable()
            time.sleep(SETTLE_SECONDS)
            seconds = []
            for _ in range(calls):
                synchronize(where)
                start = time.perf_counter()
                candidate()
                synchronize(where)
                seconds.append(time.perf_counter() - start)
            connection.send(("done", seconds))
    except Exception:  # noqa: BLE001 - reported to the parent, which raises
        connection.send(("error", traceback.format_exc()))
    finally:
        connection.close()


def time_interleaved_in_processes(
    factories: Mapping[str, Callable[[], Candidate]],
    *,
    warmup: int,
    repeats: int,
    threads: int | None = None,
    device: torch.device | None = None,
    block: int = BLOCK_CALLS,
) -> tuple[dict[str, Timing], dict[str, dict[str, Any]]]:
    """:func:`time_interleaved` with each candidate in a process of its own.

    For candidates that differ in process-wide state — the C library's allocator settings
    (``trainer.cpu_allocator``), environment variables read once — which two candidates in one
    process would share. Each factory (picklable: a module-level function, or a
    :func:`functools.partial` of one) runs in a fresh ``spawn`` process and returns the
    candidate; the parent then runs rounds, the candidates in the mapping's order, one process
    computing at a time. A round gives each candidate a *block* of ``block`` consecutive calls
    after a short pause; the first call of a block is not counted (it pays for the switch of
    processes: caches and pages the other process displaced), so ``repeats`` timed rounds give
    ``repeats × (block − 1)`` durations per candidate. ``warmup`` untimed rounds come first.
    Calls are timed inside their process (device synchronised around each, garbage collector
    paused in timed rounds), so start-up and messaging are not counted.

    Returns:
        name → :class:`Timing`, and name → the ``info`` its candidate reported.

    Raises:
        RuntimeError: a candidate failed (its traceback in the message) or its process died.
    """
    import multiprocessing

    if repeats < 1 or warmup < 0 or block < 2:
        raise ValueError(f"need repeats ≥ 1, warmup ≥ 0 and block ≥ 2; got {repeats}, "
                         f"{warmup} and {block}")
    if not factories:
        raise ValueError("time_interleaved_in_processes needs at least one candidate")
    context = multiprocessing.get_context("spawn")
    connections: dict[str, Any] = {}
    processes = []
    infos: dict[str, dict[str, Any]] = {}

    def answer(name: str) -> Any:
        try:
            kind, value = connections[name].recv()
        except EOFError:
            raise RuntimeError(f"candidate {name!r}: its process exited without answering "
                               "(killed, or out of memory?)") from None
        if kind == "error":
            raise RuntimeError(f"candidate {name!r} failed in its process:\n{value}")
        return value

    samples: dict[str, list[float]] = {name: [] for name in factories}
    try:
        for name, factory in factories.items():
            parent, child = context.Pipe()
            process = context.Process(
                target=_candidate_process, daemon=True,
                args=(factory, threads, None if device is None else str(device), child))
            process.start()
            child.close()
            connections[name] = parent
            processes.append(process)
            infos[name] = answer(name)  # built one after another: no overlap in set-up either
        for round_index in range(warmup + repeats):
            timed = round_index >= warmup
            for name in factories:
                connections[name].send(("run", block, timed))
                seconds = answer(name)
                if timed:
                    samples[name].extend(seconds[1:])
    finally:
        for connection in connections.values():
            with contextlib.suppress(OSError):
                connection.send("stop")
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    return {name: Timing.of(values) for name, values in samples.items()}, infos


# --------------------------------------------------------------------------------------------
# Machine
# --------------------------------------------------------------------------------------------


def load_average() -> float | None:
    """The 1-minute load average, where the platform has one."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def format_load(load: float | None) -> str:
    """A load average for the output (``n/a`` where the platform has none)."""
    return "n/a" if load is None else f"{load:.2f}"


def busy_machine_warning(threads: int, load: float | None, cores: int | None = None
                         ) -> str | None:
    """A warning when other processes already occupy the cores a CPU run needs, else ``None``.

    Busy when ``load + threads > cores + 1``: one busy core's worth of slack, since the
    1-minute average lags behind a load that just ended. With every core busy, torch's OpenMP
    threads are oversubscribed and wait on each other: on the 2-core development machine a
    step ran ~40× slower with 2 threads than with 1.
    """
    cores = cores if cores is not None else (os.cpu_count() or 1)
    if load is None or load + threads <= cores + 1.0:
        return None
    return (f"the 1-minute load average is {load:.1f} on {cores} cores before the run: other "
            f"processes compete with its {threads} thread(s), so timings can be far too slow "
            "(oversubscribed OpenMP threads). Rerun on a quiet machine"
            + (" or with --threads 1." if threads > 1 else "."))


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo on Linux, else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """The GPU's name on CUDA, the CPU model otherwise."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def machine_description(device: torch.device) -> dict[str, Any]:
    """What the numbers of a run depend on: software, device, threads, cores and load.

    Keys: ``torch``, ``python``, ``platform``, ``device``, ``device_name`` (GPU name on CUDA,
    else the CPU model), ``cpu_model``, ``threads`` (``torch.get_num_threads()``),
    ``cpu_count`` (logical cores), ``load_average_before`` and ``timestamp`` (UTC).
    """
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": device_name(device),
        "cpu_model": cpu_name(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_before": load_average(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }


# --------------------------------------------------------------------------------------------
# Memory and work
# --------------------------------------------------------------------------------------------


def cuda_peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Allocator peak during ``fn`` above what was allocated before it (CUDA).

    ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` minus
    ``torch.cuda.memory_allocated`` just before the call: activations, gradients and transients
    of the call; what existed before (parameters, inputs) is excluded.
    """
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - before)


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null: the profiler's C++ start/stop lines go there."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def profiler_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes allocated through PyTorch's CPU allocator during ``fn``; -1 if unavailable.

    ``fn`` runs under ``torch.profiler.profile(profile_memory=True)``; its memory events (every
    allocation, +bytes, and free, −bytes) are ordered by time and the peak is
    :math:`\\max_k \\sum_{e \\le k} \\mathrm{bytes}_e`. Memory that existed before the call and
    allocations outside PyTorch's allocator (oneDNN scratch pads, Python objects) are not
    counted. Finer than the process's maximum resident set size, which only grows and counts
    pages, not tensors. -1 when this torch's profiler does not expose its memory events.
    """
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    with native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU],
                                           profile_memory=True) as prof:
        fn()
    results: Any = getattr(prof.profiler, "kineto_results", None)
    if results is None:
        return -1
    events = sorted(
        ((e.start_ns(), int(e.nbytes())) for e in results.events()
         if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")),
        key=lambda event: event[0],
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak memory of ``fn``: :func:`cuda_peak_bytes` on CUDA, :func:`profiler_peak_bytes` else."""
    if device.type == "cuda":
        return cuda_peak_bytes(fn, device)
    return profiler_peak_bytes(fn)


def _storage_key(tensor: Tensor) -> int:
    return int(tensor.untyped_storage().data_ptr())


def autograd_saved_bytes(forward: Callable[[], Sequence[Tensor]],
                         exclude: Sequence[Tensor] = ()) -> int:
    """Bytes of the distinct storages a forward saves for backward, plus its outputs.

    ``forward`` runs under :func:`torch.autograd.graph.saved_tensors_hooks` and returns its
    output tensors; every storage saved for backward or returned is counted once, the storages
    of ``exclude`` (the caller's inputs) not at all. This is the memory the graph holds between
    forward and backward: deterministic, without transients or gradients (not an allocator
    peak). The outputs are kept alive while counting, so no storage is reused.
    """
    storages: dict[int, int] = {}

    def pack(tensor: Tensor) -> Tensor:
        storages[_storage_key(tensor)] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        outputs = forward()
    for output in outputs:
        storages[_storage_key(output)] = output.untyped_storage().nbytes()
    for tensor in exclude:
        storages.pop(_storage_key(tensor), None)
    total = sum(storages.values())
    del outputs
    return total


def count_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations of one call of ``fn`` (torch.utils.flop_counter).

    Counts the matrix products and convolutions that :class:`FlopCounterMode` knows, forward
    and backward (2 per multiply-add); elementwise work, reductions and the optimizer are not
    counted, so FLOP/s from it is a lower bound of the work done.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def format_bytes(n: float) -> str:
    """Human-readable bytes (``1.5 KiB``), ``n/a`` for a negative count (not measured)."""
    return "n/a" if n < 0 else io.format_bytes(n)


def make_console() -> Console:
    """A console, :data:`CONSOLE_WIDTH` columns wide when not on a terminal."""
    return Console() if sys.stdout.isatty() else Console(width=CONSOLE_WIDTH)


def print_header(console: Console, title: str, meta: Mapping[str, Any], details: str, *,
                 warn_if_busy: bool = True) -> None:
    """The run's first line (title, torch, device, threads, ``details``) and the load warning.

    ``meta`` is a :func:`machine_description`; ``warn_if_busy`` is for runs that need the CPU
    (a CUDA-only run does not).
    """
    console.print(
        f"[bold]{title}[/bold]  torch {meta['torch']}  device {meta['device']} "
        f"({meta['device_name']})  threads {meta['threads']}  {details}  1-min load average "
        f"{format_load(meta['load_average_before'])}"
    )
    warning = (busy_machine_warning(meta["threads"], meta["load_average_before"])
               if warn_if_busy else None)
    if warning:
        console.print(f"[red]warning[/red]: {warning}")


def print_table(console: Console, table: Table, *, no_wrap: Sequence[str] = ()) -> None:
    """Print ``table`` with rich; the columns named in ``no_wrap`` never wrap."""
    rendered = table.to_rich()
    for column, name in zip(rendered.columns, table.columns, strict=True):
        column.no_wrap = name in no_wrap
    console.print(rendered)


def write_results(path: Path, results: Mapping[str, Any], console: Console | None = None
                  ) -> None:
    """Write the results as indented JSON, atomically (parent folders created)."""
    io.write_json(path, dict(results))
    if console is not None:
        console.print(f"wrote {path}")


def finish_run(console: Console, meta: dict[str, Any], parts: Mapping[str, Any], notes: str,
               json_path: Path | None) -> dict[str, Any]:
    """End a run: record the load after it, print ``notes``, assemble and write the results.

    The results are ``{"meta": meta, **parts, "notes": notes}``; ``meta`` gets
    ``load_average_after``. Written to ``json_path`` (:func:`write_results`) when given.
    """
    meta["load_average_after"] = load_average()
    console.print(notes, style="dim")
    results: dict[str, Any] = {"meta": meta, **parts, "notes": notes}
    if json_path is not None:
        write_results(json_path, results, console)
    return results


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def int_list(text: str, *, minimum: int = 2) -> list[int]:
    """Comma-separated integers ≥ ``minimum``, in order, without repeats (argparse type; use
    ``functools.partial`` for another minimum)."""
    try:
        values = list(dict.fromkeys(int(v) for v in text.split(",") if v.strip()))
    except ValueError:
        message = f"expected comma-separated integers; got {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if not values or any(v < minimum for v in values):
        raise argparse.ArgumentTypeError(f"expected integers ≥ {minimum}; got {text!r}")
    return values


@dataclass(frozen=True)
class Rounds:
    """Default timed and warm-up rounds of a benchmark, normally and with ``--quick``."""

    repeats: int
    warmup: int
    quick_repeats: int
    quick_warmup: int


@dataclass(frozen=True)
class RunOptions:
    """The checked common options: the device and the rounds in effect."""

    device: torch.device
    repeats: int
    warmup: int
    quick: bool


def default_device() -> str:
    """``cuda`` where available, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def benchmark_parser(module: str, description: str | None, rounds: Rounds, *,
                     quick_help: str, device_help: str = "") -> argparse.ArgumentParser:
    """The command line of ``python -m <module>`` with the options of :func:`add_run_options`."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    add_run_options(parser, rounds, quick_help=quick_help, device_help=device_help)
    return parser


def add_run_options(parser: argparse.ArgumentParser, rounds: Rounds, *, quick_help: str,
                    device_help: str = "") -> None:
    """Add ``--device``, ``--repeats``, ``--warmup``, ``--quick``, ``--threads``, ``--json``."""
    device = default_device()
    parser.add_argument("--device", default=device,
                        help=f"torch device{device_help} (default here: {device})")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed rounds per measurement (default: {rounds.repeats}; "
                        f"--quick: {rounds.quick_repeats})")
    parser.add_argument("--warmup", type=int, default=None,
                        help=f"untimed rounds first (default: {rounds.warmup}; "
                        f"--quick: {rounds.quick_warmup})")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for this run (default: torch's default; "
                        "restored afterwards)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")


def run_options(args: argparse.Namespace, parser: argparse.ArgumentParser, rounds: Rounds
                ) -> RunOptions:
    """Check the options of :func:`add_run_options`; a bad one exits through ``parser.error``."""
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be ≥ 1")
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        parser.error(f"bad --device {args.device!r}: {error}")
    if device.type not in DEVICE_TYPES:
        parser.error(f"--device must be cpu or cuda; got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    quick = bool(args.quick)
    repeats = args.repeats if args.repeats is not None else (
        rounds.quick_repeats if quick else rounds.repeats)
    warmup = args.warmup if args.warmup is not None else (
        rounds.quick_warmup if quick else rounds.warmup)
    if repeats < 1 or warmup < 0:
        parser.error("--repeats must be ≥ 1 and --warmup ≥ 0")
    return RunOptions(device=device, repeats=repeats, warmup=warmup, quick=quick)


def run_benchmark(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    rounds: Rounds,
    body: Callable[[argparse.Namespace, RunOptions], dict[str, Any]],
    check: Callable[[argparse.Namespace], str | None] | None = None,
) -> dict[str, Any]:
    """A benchmark's ``main``: parse ``argv``, check, run ``body`` with ``--threads`` in effect.

    The common options go through :func:`run_options`; ``check`` returns a message for a bad
    benchmark-specific option (reported through ``parser.error``) or ``None``. torch's thread
    count is restored afterwards, so a benchmark can be called from tests or notebooks.
    """
    args = parser.parse_args(argv)
    options = run_options(args, parser, rounds)
    problem = check(args) if check is not None else None
    if problem:
        parser.error(problem)
    with torch_threads(args.threads):
        return body(args, options)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` inside the block (unchanged for ``None``), restored."""
    before = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be ≥ 1; got {threads}")
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
