"""Where the runs of a sweep execute: here, one after the other; in local processes; on SLURM.

``sequential`` runs them in this process; ``local`` keeps ``jobs`` of them running in
subprocesses, starting the next as soon as one ends (:func:`rolling_pool`), and ``slurm`` submits
them as a SLURM job array; both through submitit (an existing engine: no scheduler of our own).
Logs of submitted jobs go to ``<sweep>/.submitit``. A failed run does not stop the others; all
failures are reported together, and rerunning the sweep resumes them.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from mmssl.config import RunConfig
from mmssl.errors import ConfigError, MmsslError, RunDirError
from mmssl.runs.evaluation import train_and_evaluate

__all__ = ["LAUNCHERS", "Launcher", "Work", "rolling_pool"]

#: The launchers.
LAUNCHERS: tuple[str, ...] = ("sequential", "local", "slurm")

#: One run to do: (configuration or None to resume with the saved one, run directory, resume).
Work = tuple[RunConfig | None, Path, bool]


@dataclass
class Launcher:
    """How to run a sweep's entries (see the module docstring)."""

    kind: str = "sequential"
    jobs: int = 1
    slurm_partition: str | None = None
    slurm_gpus: int = 0
    slurm_cpus: int = 4
    slurm_minutes: int = 240

    def __post_init__(self) -> None:
        if self.kind not in LAUNCHERS:
            raise ConfigError(f"--launcher {self.kind!r}: valid: {', '.join(LAUNCHERS)}")
        if self.jobs < 1:
            raise ConfigError(f"--jobs must be ≥ 1; got {self.jobs}")
        for name in ("slurm_gpus", "slurm_cpus", "slurm_minutes"):
            if getattr(self, name) < (0 if name == "slurm_gpus" else 1):
                raise ConfigError(f"--{name.replace('_', '-')} must be positive; got "
                                  f"{getattr(self, name)}")

    def run_all(self, work: list[Work], logs: Path) -> None:
        """Run every entry; raise one error listing every failure."""
        if not work:
            return
        failures: list[str] = []
        if self.kind == "sequential":
            for config, run_dir, resume in work:
                try:
                    train_and_evaluate(config, run_dir, resume=resume, command="sweep")
                except MmsslError as error:
                    if error.exit_code == 130:
                        raise
                    failures.append(f"{run_dir}: {error}".splitlines()[0])
        else:
            failures = self._submit(work, logs)
        if failures:
            raise RunDirError(f"{len(failures)} sweep run(s) failed (rerun the sweep to resume "
                              "them): " + "; ".join(failures))

    def _submit(self, work: list[Work], logs: Path) -> list[str]:
        import submitit  # heavy and optional at run time: imported only to launch

        executor = submitit.AutoExecutor(folder=logs,
                                         cluster="local" if self.kind == "local" else "slurm")
        if self.kind == "slurm":
            executor.update_parameters(
                timeout_min=self.slurm_minutes, cpus_per_task=self.slurm_cpus,
                gpus_per_node=self.slurm_gpus, slurm_array_parallelism=self.jobs,
                **({"slurm_partition": self.slurm_partition} if self.slurm_partition else {}),
            )
        else:
            executor.update_parameters(timeout_min=self.slurm_minutes)
        threads = max(1, (os.cpu_count() or 1) // self.jobs)
        if self.kind == "slurm":  # one job array; SLURM keeps `jobs` of it running
            jobs = executor.map_array(run_job, [w[0] for w in work], [w[1] for w in work],
                                      [w[2] for w in work], [threads] * len(work))
            failed: list[tuple[Work, BaseException]] = []
            for job, entry in zip(jobs, work, strict=True):
                try:
                    job.result()
                except Exception as error:  # noqa: BLE001 - reported below, all at once
                    failed.append((entry, error))
        else:
            failed = rolling_pool(
                work, lambda w: executor.submit(run_job, w[0], w[1], w[2], threads), self.jobs,
                wait=lambda: time.sleep(POLL_SECONDS))
        return [f"{run_dir}: {error}".splitlines()[0] + f" (log: {logs})"
                for (_, run_dir, _), error in failed]


class _Job(Protocol):
    """What :func:`rolling_pool` needs of a submitted job (a :class:`submitit.Job` has it)."""

    def done(self) -> bool: ...

    def result(self) -> object: ...


#: How often the local launcher looks for a finished run, in seconds.
POLL_SECONDS = 1.0
Entry = TypeVar("Entry")


def rolling_pool(work: Sequence[Entry], submit: Callable[[Entry], _Job], slots: int, *,
                 wait: Callable[[], None]) -> list[tuple[Entry, BaseException]]:
    """Run ``work`` with at most ``slots`` jobs in flight, starting the next entry as soon as any
    running job finishes — not in waves of ``slots``, where one long run (an MMVAE among
    taxonomy models) would hold the other slots idle until it ends. Entries start in order.

    ``submit`` starts one entry and returns its job; ``wait`` pauses between looks when no job
    has finished. Returns the (entry, error) of every failed job, in ``work`` order; a failure
    does not stop the others.
    """
    if slots < 1:
        raise ValueError(f"slots must be ≥ 1; got {slots}")
    pending = deque(enumerate(work))
    running: list[tuple[int, Entry, _Job]] = []
    failed: list[tuple[int, Entry, BaseException]] = []
    while pending or running:
        while pending and len(running) < slots:
            index, entry = pending.popleft()
            running.append((index, entry, submit(entry)))
        finished = [item for item in running if item[2].done()]
        if not finished:
            wait()
            continue
        for item in finished:
            running.remove(item)
            try:
                item[2].result()
            except Exception as error:  # noqa: BLE001 - reported by the caller, all at once
                failed.append((item[0], item[1], error))
    return [(entry, error) for _, entry, error in sorted(failed, key=lambda f: f[0])]


def run_job(config: RunConfig | None, run_dir: Path, resume: bool, threads: int) -> str:
    """One sweep entry in a worker process (module level, so it can be pickled)."""
    import torch

    torch.set_num_threads(threads)
    train_and_evaluate(config, run_dir, resume=resume, command="sweep")
    return str(run_dir)
