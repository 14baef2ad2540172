r"""Keeping freed CPU memory in the process, so training steps stop paying for page faults.

A training step allocates and frees the same activations and gradients every time: at the
paper's shapes (batch 64, 32×32) a handful of 2–8 MiB tensors, at 64³ volumes tens of MiB.
glibc's ``malloc`` serves blocks above its *mmap threshold* with fresh ``mmap`` pages and
returns freed memory at the top of the heap to the system once more than its *trim threshold*
is free; both thresholds start at 128 KiB and adapt to what is freed. For a training loop that
means the same memory is handed back and faulted in again, page by page, every step: on the
2-core machines of ``benchmarks/README.md`` an element-wise op on a fresh 2 MiB tensor took
~1.3 ms inside a step against ~0.07 ms on reused memory, and the whole step of CR-XX-CC-RR
spent about a fifth of its time there.

``trainer.cpu_allocator: retain`` (the default) sets, through ``mallopt``:

* ``M_MMAP_THRESHOLD`` = 32 MiB (glibc's ceiling on 64-bit): blocks up to that size come from
  the heap, whose pages stay mapped;
* ``M_TRIM_THRESHOLD`` = 1 GiB: freed memory at the top of the heap is kept up to that much;
* ``M_TOP_PAD`` = 256 MiB: the heap grows in large steps (address space, not resident memory).

The values of the arithmetic are untouched — only where the bytes live changes — so losses,
gradients and resumed runs are bit-identical either way. Peak resident memory moved by under
5 % in the measurements of ``benchmarks/README.md``; what changes is that a process which freed
a lot keeps up to 1 GiB of it until it exits. This is the effect PyTorch's CPU performance guide
gets from preloading jemalloc or tcmalloc, with nothing to install. ``system`` leaves glibc's
defaults. On a C library other than glibc (macOS, musl) ``retain`` does nothing and says so in
the record. The settings are process-wide and persist; :func:`retain_freed_memory` is idempotent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = ["ALLOCATOR_CHOICES", "GLIBC_SETTINGS", "AllocatorRecord", "CpuAllocator",
           "apply_cpu_allocator", "retain_freed_memory"]

CpuAllocator = Literal["retain", "system"]
ALLOCATOR_CHOICES: tuple[str, ...] = ("retain", "system")

#: ``mallopt`` parameter numbers (glibc ``malloc.h``) and the values ``retain`` sets.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
GLIBC_SETTINGS: dict[str, tuple[int, int]] = {
    "M_MMAP_THRESHOLD": (M_MMAP_THRESHOLD, 32 * 1024**2),
    "M_TRIM_THRESHOLD": (M_TRIM_THRESHOLD, 1024**3),
    "M_TOP_PAD": (M_TOP_PAD, 256 * 1024**2),
}


@dataclass(frozen=True)
class AllocatorRecord:
    """What ``trainer.cpu_allocator`` did in this process, for ``pretrain.json``."""

    cpu_allocator: str  # the setting: retain or system
    applied: bool  # whether glibc's settings were changed (now or earlier in the process)
    detail: str  # the values set, or why nothing was

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (it has ``mallopt`` and
    ``gnu_get_libc_version``), else ``None``."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version")):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    libc.gnu_get_libc_version.restype = ctypes.c_char_p
    return libc


@functools.cache
def retain_freed_memory() -> AllocatorRecord:
    """Set :data:`GLIBC_SETTINGS` with ``mallopt`` (once per process; later calls return the
    first call's record). Nothing is changed where the C library is not glibc or a call
    fails; the record says which."""
    libc = _glibc()
    if libc is None:
        return AllocatorRecord("retain", False, "not glibc: the system allocator is unchanged")
    version = libc.gnu_get_libc_version().decode()
    failed = [name for name, (param, value) in GLIBC_SETTINGS.items()
              if libc.mallopt(param, value) != 1]
    if failed:
        return AllocatorRecord("retain", False, f"glibc {version} refused {', '.join(failed)}")
    values = ", ".join(f"{name}={value}" for name, (_, value) in GLIBC_SETTINGS.items())
    return AllocatorRecord("retain", True, f"glibc {version}: {values}")


def apply_cpu_allocator(choice: str) -> AllocatorRecord:
    """Apply ``trainer.cpu_allocator`` (``retain`` or ``system``) to this process.

    ``system`` changes nothing — but once ``retain`` has run in a process its settings stay, and
    the record says so rather than pretend otherwise.
    """
    if choice == "retain":
        return retain_freed_memory()
    if choice != "system":
        raise ValueError(f"cpu_allocator must be one of {', '.join(ALLOCATOR_CHOICES)}; "
                         f"got {choice!r}")
    if retain_freed_memory.cache_info().currsize and retain_freed_memory().applied:
        return AllocatorRecord("system", True, "retain's settings were applied earlier in "
                                               "this process and stay in force")
    return AllocatorRecord("system", False, "glibc defaults")
