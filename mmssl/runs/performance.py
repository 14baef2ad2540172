"""Faster training steps that learn the same thing: memory format, compilation and loading.

Three choices of a run are made here, at the start of training, and recorded in its
``pretrain.json``:

* **Memory format** (``trainer.memory_format``). Convolutions on the CPU (oneDNN) and on
  NVIDIA GPUs (cuDNN) are often faster with the channels innermost — NHWC for images, NDHWC for
  volumes — than in PyTorch's default NCHW/NCDHW layout. ``channels_last`` converts the model's
  4-D weights to ``torch.channels_last`` and its 5-D weights to ``torch.channels_last_3d``
  (:func:`apply_memory_format`), and the data module emits its inputs in the same layout
  (:meth:`~mmssl.data.base.MultimodalDataModule.format_inputs`); the values are the same, only
  the order of the arithmetic inside the kernels changes (losses and gradients agree to float
  rounding). ``auto`` times a few full training steps — forward, backward and optimiser step —
  of both layouts at the run's batch shape, on the run's device and precision, on *copies* of
  the model with their own optimiser, under :func:`torch.random.fork_rng`
  (:func:`time_memory_formats`): the run's weights, optimiser state and random streams are
  exactly what they would have been without the measurement. The rounds of the two layouts are
  interleaved, so a noisy machine slows both alike; ``channels_last`` is chosen when its median
  step is faster by more than :data:`MEMORY_FORMAT_MARGIN` (else the layout of earlier
  versions). The decision is cached per machine in ``memory-format.json`` under
  :func:`cache_folder`, keyed by device, torch version, threads, input shapes, model, batch size
  and precision (:func:`cache_key`), so the runs of a sweep measure once and agree. A resumed
  run reuses the decision saved in its checkpoint (``checkpoint["mmssl"]["performance"]``), so
  resuming stays bit-identical.
* **Compilation** (``trainer.compile``). Every encoder, head and decoder
  (:meth:`~mmssl.methods.base.MultimodalMethod.compile_modules`) is compiled in place with
  :meth:`torch.nn.Module.compile`: the module objects, their parameters and their
  ``state_dict`` keys are unchanged, so checkpoints load without compiling. The objectives stay
  eager (the lean estimator is its own :class:`torch.autograd.Function`). The first training
  step pays for compilation; :class:`RunPerformance` records the first step's seconds, the
  median of the following steps and their difference, the compile overhead. Before anything is
  compiled a tiny function is compiled and run on the training device
  (:func:`check_compile`): where ``torch.compile`` cannot work (no C++ compiler for the CPU
  backend, no Triton for CUDA…) the run stops at once with a :class:`~mmssl.errors.ConfigError`
  that names ``trainer.compile`` and the fix, rather than training slower than asked or
  failing at the first step.
* **Loading** (``data.num_workers``, ``data.pin_memory``). ``pin_memory: auto`` pins exactly
  when training on CUDA (pinning only speeds up host-to-GPU copies). ``num_workers: auto`` times
  a few batches of the training loader in the training process (fetch, transfer, device-side
  views) against a training step (:func:`decide_loader`): when in-process loading delivers at
  least :data:`FED_RATIO` times the volumes per second that training consumes it keeps 0
  workers (no processes to start, nothing competing with the step for cores); otherwise it times
  1 and 2 workers too and keeps the fastest.

Under data-parallel training process 0 decides and broadcasts, so every process uses the same
layout, workers and compilation.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import Tensor, nn

from mmssl import io
from mmssl.data.base import MEMORY_FORMATS, to_memory_format
from mmssl.errors import ConfigError
from mmssl.methods.base import MultimodalMethod, make_optimizer

__all__ = [
    "CACHE_ENV",
    "CACHE_FILE",
    "FED_RATIO",
    "MEMORY_FORMAT_MARGIN",
    "LoaderDecision",
    "MemoryFormatDecision",
    "RunPerformance",
    "apply_memory_format",
    "autocast_dtype",
    "cache_folder",
    "check_compile",
    "cache_key",
    "cache_key_fields",
    "compile_in_place",
    "decide_loader",
    "decide_memory_format",
    "device_label",
    "model_memory_format",
    "random_batch",
    "time_loader",
    "time_memory_formats",
]

log = logging.getLogger("mmssl")

#: Environment variable naming the folder of mmssl's per-machine cache (else
#: ``$XDG_CACHE_HOME/mmssl``, else ``~/.cache/mmssl``).
CACHE_ENV = "MMSSL_CACHE_DIR"
#: The memory-format decisions, one entry per :func:`cache_key`.
CACHE_FILE = "memory-format.json"
#: ``channels_last`` must be faster than ``contiguous`` by more than this fraction of a step to
#: be chosen: within the noise the layout of earlier versions is kept.
MEMORY_FORMAT_MARGIN = 0.03
#: Untimed and timed rounds of :func:`time_memory_formats` (each round: one step per layout).
MEASURE_WARMUP, MEASURE_ROUNDS = 3, 5
#: In-process loading must deliver this many times the volumes per second of training for
#: ``num_workers: auto`` to keep 0 workers.
FED_RATIO = 5.0
#: Batches timed per candidate of :func:`time_loader` (after one untimed batch).
LOADER_BATCHES = 4
#: Training steps after the first whose median is the steady state of :class:`RunPerformance`.
STEADY_STEPS = 5


# ------------------------------------------------------------------------------ memory format


def _layout(tensor: Tensor, memory_format: str) -> torch.memory_format:
    if memory_format == "contiguous" or tensor.dim() not in (4, 5):
        return torch.contiguous_format
    return torch.channels_last if tensor.dim() == 4 else torch.channels_last_3d


def apply_memory_format(module: nn.Module, memory_format: str) -> nn.Module:
    """Lay out ``module``'s 4-D and 5-D parameters and buffers in ``memory_format``, in place.

    ``channels_last``: 4-D tensors (2-D convolution weights, (out, in, kH, kW)) become
    ``torch.channels_last`` and 5-D ones (3-D convolution weights) ``torch.channels_last_3d``;
    ``contiguous``: row-major. ``nn.Module.to(memory_format=...)`` cannot do this for a model
    with both ranks, nor for 5-D weights with ``channels_last``. Parameters keep their identity
    (an optimiser built before still holds them); values are unchanged.

    Raises:
        ValueError: an unknown ``memory_format``.
    """
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"unknown memory format {memory_format!r}; valid: "
                         f"{', '.join(MEMORY_FORMATS)}")

    def convert(tensor: Tensor) -> Tensor:
        if tensor.dim() not in (4, 5):
            return tensor
        return tensor.contiguous(memory_format=_layout(tensor, memory_format))

    return module._apply(convert)


def model_memory_format(module: nn.Module) -> str:
    """``channels_last`` when every 4-D/5-D parameter of ``module`` is laid out channels-last,
    ``contiguous`` when every one is row-major, ``mixed`` otherwise (``contiguous`` without
    any). A 1×1 kernel with one input channel is both; it does not decide."""
    kinds = set()
    for param in module.parameters():
        if param.dim() not in (4, 5):
            continue
        last = param.is_contiguous(memory_format=_layout(param, "channels_last"))
        plain = param.is_contiguous()
        if last and not plain:
            kinds.add("channels_last")
        elif plain and not last:
            kinds.add("contiguous")
    if len(kinds) > 1:
        return "mixed"
    return kinds.pop() if kinds else "contiguous"


@dataclass
class MemoryFormatDecision:
    """The layout a run trains in and how it was chosen.

    ``source``: ``configured`` (``trainer.memory_format`` named it), ``measured`` (``auto``:
    timed now), ``cached`` (``auto``: timed earlier on this machine for the same key),
    ``measurement failed`` (``auto``: the timing raised, e.g. out of memory; contiguous, not
    cached);
    ``ms_per_step``: the medians timed (``None`` when configured); ``resumed``: reused from the
    checkpoint of the run being resumed.
    """

    choice: str
    source: str
    ms_per_step: dict[str, float] | None = None
    key: str | None = None
    resumed: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON, and the checkpoint's ``weights_only`` loading)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> MemoryFormatDecision:
        """The decision :meth:`to_dict` wrote.

        Raises:
            ValueError: not a decision (an unknown layout or missing fields).
        """
        choice = values.get("choice")
        if choice not in MEMORY_FORMATS or not isinstance(values.get("source"), str):
            raise ValueError(f"not a memory-format decision: {dict(values)!r}")
        ms = values.get("ms_per_step")
        return cls(choice=str(choice), source=str(values["source"]),
                   ms_per_step=None if ms is None else {str(k): float(v) for k, v in ms.items()},
                   key=values.get("key"), resumed=bool(values.get("resumed", False)))


def cache_folder() -> Path:
    """mmssl's per-machine cache: ``$MMSSL_CACHE_DIR``, else ``$XDG_CACHE_HOME/mmssl``, else
    ``~/.cache/mmssl``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "mmssl"
    return Path.home() / ".cache" / "mmssl"


def device_label(device: torch.device) -> str:
    """The GPU's name on CUDA, the CPU model otherwise (what a timing depends on)."""
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or platform.machine()


def cache_key_fields(method: MultimodalMethod, batch_size: int, device: torch.device,
                     precision: str) -> dict[str, Any]:
    """What a step's timing depends on: the device (kind and name), torch's version and
    threads, the precision, the batch size, the input shapes and the model (method, model
    settings, optimiser, method sections)."""
    hparams = dict(method.hparams)
    return {
        "device": device.type,
        "device_name": device_label(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "precision": precision,
        "batch_size": int(batch_size),
        "input_shapes": {m: list(s) for m, s in method.inputs.input_shapes.items()},
        "method": method.name,
        "model": hparams.get("model"),
        "optimizer": (hparams.get("optim") or {}).get("optimizer"),
        "sections": hparams.get("sections"),
    }


def cache_key(fields: Mapping[str, Any]) -> str:
    """A short stable key of :func:`cache_key_fields`: SHA-256 of their sorted JSON, 16 hex."""
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        log.warning("ignoring the unreadable memory-format cache %s (%s)", path, error)
        return {}
    return values if isinstance(values, dict) else {}


def _write_cache(path: Path, key: str, entry: Mapping[str, Any]) -> None:
    values = _read_cache(path)
    values[key] = dict(entry)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        io.write_json(path, values)
    except OSError as error:  # WriteError and DiskFullError are OSErrors
        log.warning("could not write the memory-format cache %s (%s); the next run will "
                    "measure again", path, error)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a Lightning precision (``bf16-mixed`` → bfloat16, ``16-mixed``
    → float16), ``None`` for the others."""
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)


def random_batch(input_shapes: Mapping[str, Sequence[int]], batch_size: int,
                 device: torch.device, generator: torch.Generator) -> dict[str, Tensor]:
    """A training batch of uniform inputs in [0, 1) and label 0, drawn from ``generator``."""
    batch = {m: torch.rand(batch_size, *shape, generator=generator).to(device)
             for m, shape in input_shapes.items()}
    batch["label"] = torch.zeros(batch_size, dtype=torch.long, device=device)
    return batch


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _random_state_kept(device: torch.device) -> Iterator[None]:
    """Every random stream torch keeps for ``device`` (and the CPU) restored afterwards."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


def time_memory_formats(
    method: MultimodalMethod, formats: Sequence[str], batch_size: int, device: torch.device,
    precision: str = "32-true", *, warmup: int = MEASURE_WARMUP, rounds: int = MEASURE_ROUNDS,
) -> dict[str, float]:
    """Median milliseconds of a full training step of ``method`` in each layout of ``formats``.

    Each layout trains its own copy of the model (rebuilt from its hyper-parameters, the
    weights copied) on ``device`` with its own optimiser (the configured one, no schedule), on
    one random batch of ``batch_size`` at the method's input shapes, under autocast for a
    mixed ``precision``. ``warmup`` untimed then ``rounds`` timed rounds, each one step per
    layout, interleaved; CUDA is synchronised around each step. All of it runs under
    :func:`torch.random.fork_rng`, so the caller's random streams, weights and optimiser state
    are untouched.
    """
    if rounds < 1 or warmup < 0:
        raise ValueError(f"need rounds ≥ 1 and warmup ≥ 0; got {rounds} and {warmup}")
    dtype = autocast_dtype(precision)
    with _random_state_kept(device):
        generator = torch.Generator().manual_seed(0)
        batch = random_batch(method.inputs.input_shapes, batch_size, device, generator)
        setups: dict[str, tuple[MultimodalMethod, torch.optim.Optimizer, dict[str, Tensor]]] = {}
        for memory_format in formats:
            copy = type(method).from_hparams(dict(method.hparams))
            copy.load_state_dict(method.state_dict())
            copy = copy.to(device).train()
            apply_memory_format(copy, memory_format)
            optimizer = make_optimizer(copy.optim_settings,
                                       [p for p in copy.parameters() if p.requires_grad])
            inputs = {k: to_memory_format(v, memory_format) for k, v in batch.items()}
            setups[memory_format] = (copy, optimizer, inputs)

        def step(memory_format: str, index: int) -> None:
            model, optimizer, inputs = setups[memory_format]
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss, _ = model.compute_loss(inputs, torch.Generator().manual_seed(index))
            loss.backward()
            optimizer.step()

        for index in range(warmup):
            for memory_format in formats:
                step(memory_format, index)
        samples: dict[str, list[float]] = {f: [] for f in formats}
        for index in range(warmup, warmup + rounds):
            for memory_format in formats:
                _synchronize(device)
                start = time.perf_counter()
                step(memory_format, index)
                _synchronize(device)
                samples[memory_format].append(time.perf_counter() - start)
    return {f: 1000.0 * statistics.median(s) for f, s in samples.items()}


def decide_memory_format(
    requested: str, method: MultimodalMethod, batch_size: int, device: torch.device, *,
    precision: str = "32-true", recorded: Mapping[str, Any] | None = None,
    cache: Path | None = None,
) -> MemoryFormatDecision:
    """The layout to train in: ``recorded`` (a resumed run's), else the ``requested`` one, else
    (``auto``) the cached decision for this machine and model, else a measurement
    (:func:`time_memory_formats`, looked up at call time), then cached.

    Args:
        requested: ``auto``, ``channels_last`` or ``contiguous`` (``trainer.memory_format``).
        method: the model, at its current weights (left untouched).
        batch_size: the training batch size.
        device: the training device.
        precision: Lightning's precision string (mixed precisions time under autocast).
        recorded: the decision saved in the checkpoint of the run being resumed.
        cache: the cache file (default: ``memory-format.json`` in :func:`cache_folder`).
    """
    if recorded is not None:
        decision = MemoryFormatDecision.from_dict(recorded)
        decision.resumed = True
        return decision
    if requested != "auto":
        if requested not in MEMORY_FORMATS:
            raise ValueError(f"trainer.memory_format: expected auto or one of "
                             f"{', '.join(MEMORY_FORMATS)}; got {requested!r}")
        return MemoryFormatDecision(choice=requested, source="configured")
    fields = cache_key_fields(method, batch_size, device, precision)
    key = cache_key(fields)
    path = cache if cache is not None else cache_folder() / CACHE_FILE
    entry = _read_cache(path).get(key)
    if isinstance(entry, Mapping) and entry.get("choice") in MEMORY_FORMATS:
        return MemoryFormatDecision(
            choice=str(entry["choice"]), source="cached", key=key,
            ms_per_step={str(k): float(v) for k, v in (entry.get("ms_per_step") or {}).items()})
    try:
        ms = time_memory_formats(method, MEMORY_FORMATS, batch_size, device, precision)
    except (RuntimeError, torch.OutOfMemoryError) as error:  # e.g. no room for two copies
        log.warning("trainer.memory_format auto: the timing failed (%s: %s); training "
                    "contiguous (set trainer.memory_format to skip the timing)",
                    type(error).__name__, error)
        return MemoryFormatDecision(choice="contiguous", source="measurement failed", key=key)
    faster = ms["channels_last"] < (1.0 - MEMORY_FORMAT_MARGIN) * ms["contiguous"]
    decision = MemoryFormatDecision(choice="channels_last" if faster else "contiguous",
                                    source="measured", ms_per_step=ms, key=key)
    _write_cache(path, key, {"choice": decision.choice, "ms_per_step": ms, "fields": fields,
                             "measured": datetime.now(UTC).isoformat(timespec="seconds")})
    return decision


# ------------------------------------------------------------------------------ compilation


def _compile_probe(device: torch.device) -> None:
    """Compile and run a tiny function with :func:`torch.compile`'s default backend."""
    import torch._dynamo

    def probe(x: Tensor) -> Tensor:
        return torch.sin(x) * 2.0 + 1.0

    torch._dynamo.reset()
    try:
        compiled = torch.compile(probe, fullgraph=True)
        compiled(torch.ones(8, device=device))
    finally:
        torch._dynamo.reset()


def check_compile(device: torch.device,
                  probe: Callable[[torch.device], None] | None = None) -> None:
    """Check that :func:`torch.compile` works on ``device`` (``probe``, by default a tiny
    function compiled and run) before a run with ``trainer.compile: true`` compiles its model.

    Raises:
        ConfigError: it does not; the message names ``trainer.compile``, the cause and the fix.
    """
    try:
        (probe or _compile_probe)(device)
    except Exception as error:  # any backend failure: missing compiler, Triton, …
        lines = str(error).strip().splitlines()
        cause = type(error).__name__ + (f": {lines[0]}" if lines else "")
        fix = ("install a C++ compiler (e.g. g++) that torch's inductor backend can call"
               if device.type == "cpu" else
               "install a Triton that matches this torch (pip install triton)"
               if device.type == "cuda" else "train without compilation")
        raise ConfigError(
            f"trainer.compile: true, but torch.compile does not work on this {device.type} "
            f"machine ({cause}). Fix: {fix}, or set trainer.compile: false "
            f"(--set trainer.compile=false) to train uncompiled.") from error


def compile_in_place(method: MultimodalMethod) -> int:
    """Compile every module of :meth:`~mmssl.methods.base.MultimodalMethod.compile_modules`
    with :meth:`torch.nn.Module.compile` (the module and its ``state_dict`` unchanged);
    returns how many."""
    modules = method.compile_modules()
    for module in modules:
        module.compile()
    return len(modules)


# ------------------------------------------------------------------------------ loading


@dataclass
class LoaderDecision:
    """Loader workers and pinning of a run, and the measurement behind ``auto``.

    ``ms_per_batch``: loader milliseconds per batch by worker count (fetch, transfer and the
    device-side views); ``loader_volumes_per_s`` and ``training_volumes_per_s`` at the chosen
    count and the run's step; ``ratio`` = loader / training volumes per second.
    """

    num_workers: int
    pin_memory: bool
    source: str
    ms_per_batch: dict[str, float] = field(default_factory=dict)
    step_ms: float | None = None
    loader_volumes_per_s: float | None = None
    training_volumes_per_s: float | None = None
    ratio: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain values for ``pretrain.json``."""
        return asdict(self)


def time_loader(datamodule: Any, device: torch.device, num_workers: int,
                batches: int = LOADER_BATCHES) -> float:
    """Median milliseconds per training batch of ``datamodule``'s loader with ``num_workers``.

    Fetch, transfer to ``device`` and ``on_after_batch_transfer`` (device-side views and
    crops), one untimed batch first (worker start-up); under :func:`torch.random.fork_rng`, and
    the data module's worker count is restored.
    """
    before = datamodule.num_workers
    samples: list[float] = []
    try:
        with _random_state_kept(device):
            datamodule.configure_loading(num_workers=num_workers)
            loader = datamodule.train_dataloader()
            iterator = iter(loader)
            for index in range(batches + 1):
                _synchronize(device)
                start = time.perf_counter()
                batch = next(iterator, None)
                if batch is None:
                    break
                batch = move_data_to_device(batch, device)
                datamodule.on_after_batch_transfer(batch, 0)
                _synchronize(device)
                if index:
                    samples.append(time.perf_counter() - start)
            del iterator, loader
    finally:
        datamodule.configure_loading(num_workers=before)
    if not samples:
        raise ValueError("the training loader gave fewer than two batches to time")
    return 1000.0 * statistics.median(samples)


def decide_loader(datamodule: Any, step_ms: float | None, device: torch.device, *,
                  volumes_per_batch: int, cpu_count: int | None = None,
                  timer: Callable[[Any, torch.device, int], float] | None = None
                  ) -> LoaderDecision:
    """Worker processes and pinning of the training loader.

    ``pin_memory`` is the data module's (``auto``: pinned on CUDA). With ``num_workers`` set,
    it is kept (``configured``). With ``auto`` the in-process loader is timed (``timer``,
    :func:`time_loader` by default); it keeps 0 workers when it delivers at least
    :data:`FED_RATIO` × the volumes per second of a training step of ``step_ms``, or when there
    is one core; else 1 and 2 workers (at most ``cpu_count − 1``) are timed too and the fastest
    is kept (``measured``).
    """
    pin = bool(datamodule.pin_memory)
    requested = datamodule.requested_num_workers
    if requested != "auto":
        return LoaderDecision(num_workers=int(requested), pin_memory=pin, source="configured")
    timer = timer or time_loader
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    times = {0: timer(datamodule, device, 0)}
    fed = step_ms is not None and step_ms >= FED_RATIO * times[0]
    if not fed and step_ms is not None and cores > 1:
        for workers in (1, 2):
            if workers <= cores - 1:
                times[workers] = timer(datamodule, device, workers)
    chosen = min(times, key=lambda n: (times[n], n))
    loader_rate = 1000.0 * volumes_per_batch / times[chosen]
    train_rate = None if step_ms is None else 1000.0 * volumes_per_batch / step_ms
    return LoaderDecision(
        num_workers=chosen, pin_memory=pin, source="measured",
        ms_per_batch={str(n): t for n, t in times.items()}, step_ms=step_ms,
        loader_volumes_per_s=loader_rate, training_volumes_per_s=train_rate,
        ratio=None if train_rate is None else loader_rate / train_rate,
    )


# ------------------------------------------------------------------------------ the callback


class RunPerformance(L.Callback):
    """Applies a run's memory format, loader choice and compilation; records them.

    At ``setup`` (before checkpoint weights and optimiser state are restored and before the
    model moves to its device) process 0 decides the layout (:func:`decide_memory_format`) and
    the loader (:func:`decide_loader`) and broadcasts them; every process then lays out its
    model, tells the data module the layout and workers, and compiles when asked. The first
    :data:`STEADY_STEPS` + 1 training steps are timed (first step = compile overhead + a
    step). :meth:`record` gives what ``pretrain.json`` stores.

    Args:
        memory_format: ``trainer.memory_format``.
        compile: ``trainer.compile``.
        batch_size: the training batch size.
        precision: ``trainer.precision``.
        recorded: the memory-format decision saved in the resumed run's checkpoint.
        compile_probe: what :func:`check_compile` runs (tests; default: a tiny compiled
            function).
    """

    def __init__(self, *, memory_format: str, compile: bool, batch_size: int,
                 precision: str = "32-true", recorded: Mapping[str, Any] | None = None,
                 compile_probe: Callable[[torch.device], None] | None = None) -> None:
        self.memory_format = memory_format
        self.compile = compile
        self.compile_probe = compile_probe
        self.batch_size = batch_size
        self.precision = precision
        self.recorded = dict(recorded) if recorded is not None else None
        self.decision: MemoryFormatDecision | None = None
        self.loader: LoaderDecision | None = None
        self.compiled_modules = 0
        self.step_seconds: list[float] = []
        self._started: float | None = None
        self._device: torch.device | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not isinstance(pl_module, MultimodalMethod):
            return
        device = trainer.strategy.root_device
        self._device = device
        datamodule = getattr(trainer, "datamodule", None)
        choices: dict[str, Any] | None = None
        if trainer.is_global_zero:
            choices = self._decide(pl_module, datamodule, device)
        choices = trainer.strategy.broadcast(choices, src=0)
        assert choices is not None
        self.decision = MemoryFormatDecision.from_dict(choices["memory_format"])
        apply_memory_format(pl_module, self.decision.choice)
        pl_module.performance_record = {"memory_format": self.decision.to_dict()}
        if choices.get("loader") is not None:
            self.loader = LoaderDecision(**choices["loader"])
        if datamodule is not None and hasattr(datamodule, "configure_loading"):
            datamodule.configure_loading(
                memory_format=self.decision.choice,
                num_workers=None if self.loader is None else self.loader.num_workers)
        if self.compile:
            check_compile(device, self.compile_probe)
            self.compiled_modules = compile_in_place(pl_module)
        log.info("memory format %s (%s%s)%s", self.decision.choice, self.decision.source,
                 ", resumed" if self.decision.resumed else "",
                 f"; compiling {self.compiled_modules} modules" if self.compile else "")

    def _decide(self, method: MultimodalMethod, datamodule: Any,
                device: torch.device) -> dict[str, Any]:
        decision = decide_memory_format(self.memory_format, method, self.batch_size, device,
                                        precision=self.precision, recorded=self.recorded)
        loader = None
        if datamodule is not None and hasattr(datamodule, "requested_num_workers"):
            step_ms = None
            if datamodule.requested_num_workers == "auto":
                step_ms = (decision.ms_per_step or {}).get(decision.choice)
                if step_ms is None:
                    step_ms = time_memory_formats(method, [decision.choice], self.batch_size,
                                                  device, self.precision)[decision.choice]
            loader = decide_loader(datamodule, step_ms, device,
                                   volumes_per_batch=self.batch_size * len(method.modalities))
            if loader.source == "measured":
                log.info("data.num_workers auto: %d (loader %.1f ms/batch against a %.1f ms "
                         "step)", loader.num_workers,
                         loader.ms_per_batch[str(loader.num_workers)], step_ms)
        return {"memory_format": decision.to_dict(),
                "loader": None if loader is None else loader.to_dict()}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        if len(self.step_seconds) <= STEADY_STEPS:
            if self._device is not None:
                _synchronize(self._device)
            self._started = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._started is not None and len(self.step_seconds) <= STEADY_STEPS:
            if self._device is not None:
                _synchronize(self._device)
            self.step_seconds.append(time.perf_counter() - self._started)
            self._started = None

    def record(self) -> dict[str, Any]:
        """``memory_format``, ``compile`` and ``loader`` records for ``pretrain.json``.

        ``compile``: ``enabled``, ``modules`` compiled, ``first_step_s`` (the first training
        step of this process's fit), ``steady_ms_per_step`` (median of the next steps) and,
        when compiled, ``compile_s`` = first step − steady step (the compile overhead).
        """
        first = self.step_seconds[0] if self.step_seconds else None
        rest = self.step_seconds[1:]
        steady = 1000.0 * statistics.median(rest) if rest else None
        compile_s = (max(0.0, first - steady / 1000.0)
                     if self.compile and first is not None and steady is not None else None)
        return {
            "memory_format": None if self.decision is None else self.decision.to_dict(),
            "compile": {"enabled": self.compile, "modules": self.compiled_modules,
                        "first_step_s": first, "steady_ms_per_step": steady,
                        "compile_s": compile_s},
            "loader": None if self.loader is None else self.loader.to_dict(),
        }
