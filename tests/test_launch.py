"""The local launcher's pool: ``jobs`` runs in flight, the next one started as soon as any ends.

The scheduling is checked on fake jobs whose durations are counted in looks (no clock), then on
real submitit subprocesses, where a failing entry must be reported and the others still run.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from mmssl.runs.launch import rolling_pool


class FakeJob:
    """Done after ``looks`` calls of ``done()``; ``result()`` raises ``error`` if given."""

    def __init__(self, name: str, looks: int, events: list[tuple[str, str]],
                 error: Exception | None = None) -> None:
        self.name, self.left, self.events, self.error = name, looks, events, error
        events.append(("start", name))

    def done(self) -> bool:
        self.left -= 1
        if self.left == 0:
            self.events.append(("end", self.name))
        return self.left <= 0

    def result(self) -> object:
        if self.error is not None:
            raise self.error
        return self.name


def test_the_next_run_starts_when_any_slot_frees_not_after_the_whole_wave() -> None:
    events: list[tuple[str, str]] = []
    looks = {"long": 8, "b": 1, "c": 1, "d": 1}
    failed = rolling_pool(list(looks), lambda n: FakeJob(n, looks[n], events), 2,
                          wait=lambda: events.append(("wait", "")))
    assert failed == []
    starts = [name for kind, name in events if kind == "start"]
    assert starts == ["long", "b", "c", "d"]                  # in work order
    end_of_long = events.index(("end", "long"))
    assert events.index(("start", "c")) < end_of_long         # waves would start c after it
    assert events.index(("start", "d")) < end_of_long
    in_flight, most = 0, 0
    for kind, _ in events:
        in_flight += {"start": 1, "end": -1}.get(kind, 0)
        most = max(most, in_flight)
    assert most == 2


def test_failures_are_returned_in_work_order_and_do_not_stop_the_others() -> None:
    events: list[tuple[str, str]] = []
    looks = {"a": 3, "b": 1, "c": 2, "d": 1}
    errors = {"a": RuntimeError("a broke"), "b": None, "c": ValueError("c broke"), "d": None}
    failed = rolling_pool(list(looks), lambda n: FakeJob(n, looks[n], events, errors[n]), 3,
                          wait=lambda: None)
    assert [(entry, str(error)) for entry, error in failed] == [("a", "a broke"),
                                                                ("c", "c broke")]
    assert sorted(name for kind, name in events if kind == "end") == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="slots"):
        rolling_pool(["a"], lambda n: FakeJob(n, 1, events), 0, wait=lambda: None)


def test_real_submitit_subprocesses(tmp_path: Path) -> None:
    """Through submitit's local executor, as ``--launcher local`` runs: four entries in two
    slots, one of which fails in its subprocess."""
    import submitit

    executor = submitit.AutoExecutor(folder=tmp_path / "logs", cluster="local")
    executor.update_parameters(timeout_min=5)
    work = [1.5, 0.1, -1.0, 0.1]

    def submit(value: float) -> submitit.Job:
        return executor.submit(time.sleep, value) if value >= 0 else \
            executor.submit(math.sqrt, value)

    failed = rolling_pool(work, submit, 2, wait=lambda: time.sleep(0.1))
    assert [entry for entry, _ in failed] == [-1.0]
    assert "math domain error" in str(failed[0][1])
