"""trainer.cpu_allocator: glibc keeps freed memory, so training steps stop faulting pages in.

The effect is shown in fresh processes (the settings are process-wide and permanent): the
minor page faults of the paper's training step per step with the C library's defaults and
with ``retain``, counted by the kernel (``getrusage``), not timed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from mmssl.runs import allocator
from mmssl.runs.allocator import AllocatorRecord, apply_cpu_allocator

STEP_FAULTS = textwrap.dedent("""
    import json, resource, sys
    import torch
    from mmssl.methods import TaxonomyMethod
    from mmssl.runs.allocator import apply_cpu_allocator
    record = apply_cpu_allocator(sys.argv[1])
    torch.set_num_threads(1)
    torch.manual_seed(0)
    shapes = {"a": (1, 32, 32), "b": (1, 32, 32)}
    model = TaxonomyMethod.create(list(shapes), shapes, model={"local_taps": ["block1"]},
                                  objective={"name": "CR-XX-CC-RR"}, seed=0).train()
    batch = {m: torch.rand(64, *s) for m, s in shapes.items()}
    optimizer = torch.optim.RAdam(model.parameters(), lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss, _ = model.compute_loss(batch, torch.Generator().manual_seed(0))
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(6):
        step()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 6
    print(json.dumps({"faults": faults, "record": record.as_dict()}))
""")


def _faults_per_step(choice: str) -> dict:
    done = subprocess.run([sys.executable, "-c", STEP_FAULTS, choice], capture_output=True,
                          text=True, timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(allocator._glibc() is None, reason="mallopt is glibc's")
def test_retain_stops_the_page_faults_of_every_step():
    system, retain = _faults_per_step("system"), _faults_per_step("retain")
    assert system["record"] == {"cpu_allocator": "system", "applied": False,
                                "detail": "glibc defaults"}
    assert retain["record"]["applied"] is True
    assert "M_MMAP_THRESHOLD=33554432" in retain["record"]["detail"]
    if system["faults"] < 200:
        pytest.skip(f"this C library faults only {system['faults']:.0f} pages per step with "
                    "its defaults: nothing for retain to remove")
    assert retain["faults"] < 0.1 * system["faults"], (system, retain)


def test_retain_is_applied_once_and_recorded(monkeypatch):
    calls: list[tuple[int, int]] = []

    class FakeLibc:
        def mallopt(self, param: int, value: int) -> int:
            calls.append((param, value))
            return 1

        def gnu_get_libc_version(self) -> bytes:
            return b"2.99"

    monkeypatch.setattr(allocator, "_glibc", lambda: FakeLibc())
    allocator.retain_freed_memory.cache_clear()
    try:
        first = apply_cpu_allocator("retain")
        again = apply_cpu_allocator("retain")
        assert first is again and first.applied
        assert calls == [value for value in allocator.GLIBC_SETTINGS.values()]
        assert first.detail.startswith("glibc 2.99: M_MMAP_THRESHOLD=33554432")
        # system after retain says that retain's settings stay
        later = apply_cpu_allocator("system")
        assert later.applied and "stay in force" in later.detail
    finally:
        allocator.retain_freed_memory.cache_clear()


def test_retain_reports_what_it_could_not_do(monkeypatch):
    allocator.retain_freed_memory.cache_clear()
    try:
        monkeypatch.setattr(allocator, "_glibc", lambda: None)
        assert apply_cpu_allocator("retain") == AllocatorRecord(
            "retain", False, "not glibc: the system allocator is unchanged")
        allocator.retain_freed_memory.cache_clear()

        class Refusing:
            def mallopt(self, param: int, value: int) -> int:
                return 0 if param == allocator.M_TOP_PAD else 1

            def gnu_get_libc_version(self) -> bytes:
                return b"2.36"

        monkeypatch.setattr(allocator, "_glibc", lambda: Refusing())
        record = apply_cpu_allocator("retain")
        assert not record.applied and record.detail == "glibc 2.36 refused M_TOP_PAD"
    finally:
        allocator.retain_freed_memory.cache_clear()
    with pytest.raises(ValueError, match="retain, system"):
        apply_cpu_allocator("tcmalloc")
