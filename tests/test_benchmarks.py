"""benchmarks/throughput.py runs end to end (all three parts) and its estimator and mask-based
losses agree.

Only structure and agreement are checked, never timings (they depend on the machine's load).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"


def load_script() -> ModuleType:
    # benchmarks/ is not a package: load the script by path (registered first for dataclasses).
    name = "mmssl_benchmarks_throughput"
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def test_quick_run_writes_expected_json_and_implementations_agree(tmp_path):
    throughput = load_script()
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    returned = throughput.main([
        "--quick", "--objectives", "CR,CR-XX-CC-RR", "--batch-size", "4", "--device", "cpu",
        "--threads", "1", "--repeats", "2", "--warmup", "1", "--est-batch-sizes", "4,8",
        "--est-locations", "16", "--methods", "ae,mmvae", "--mmvae-k", "2", "--json", str(out),
    ])
    assert torch.get_num_threads() == threads  # --threads is restored for the other tests
    results = json.loads(out.read_text())
    assert results == json.loads(json.dumps(returned))
    assert set(results) == {"meta", "objectives", "estimator", "methods", "notes"}
    assert {"torch", "device", "threads", "batch_size", "repeats", "warmup",
            "memory_method"} <= set(results["meta"])
    assert results["meta"]["device"] == "cpu" and results["meta"]["batch_size"] == 4
    assert results["meta"]["threads"] == 1
    assert results["meta"]["methods_dataset"] == "two_view_mnist"
    assert results["meta"]["methods_notes"] == []  # no CCA method, no suppressed warning

    objectives = results["objectives"]
    assert [row["objective"] for row in objectives] == ["CR", "CR-XX-CC-RR"]
    # CR: one term per modality; all four modes on two modalities: 2 + 2 + 2 + 2 terms.
    assert [row["terms"] for row in objectives] == [2, 8]
    for row in objectives:
        assert {"pairs_per_s", "step_ms", "forward_ms", "objective_ms", "objective_share",
                "rest_ms", "split_check_abs_diff"} <= set(row)
        assert all(isinstance(row[k], float) for k in ("pairs_per_s", "objective_share"))
        # The forward/objective split computes exactly the loss of the real training step.
        assert row["split_check_abs_diff"] < 1e-4

    estimator = results["estimator"]
    assert [(row["batch"], row["locations"]) for row in estimator] == [(4, 16), (8, 16)]
    for row in estimator:
        assert {"estimator_ms", "masks_ms", "time_ratio", "estimator_bytes", "masks_bytes",
                "memory_ratio"} <= set(row)
        assert row["loss_abs_diff"] < 1e-4
        assert row["penalty_abs_diff"] < 1e-4
        assert row["grad_abs_diff"] < 1e-4
        assert row["estimator_bytes"] > 0 and row["masks_bytes"] > 0

    methods = results["methods"]
    assert [row["label"] for row in methods] == ["ae", "mmvae K=2"]
    assert [(row["method"], row["variant"]) for row in methods] == [("ae", ""), ("mmvae", "K=2")]
    for row in methods:
        assert row["decoders"] is True and row["batch_size"] == 4
        assert isinstance(row["parameters"], int) and row["parameters"] > 0
        for key in ("loss", "pairs_per_s", "step_ms", "step_iqr_percent", "slowdown"):
            assert isinstance(row[key], float) and math.isfinite(row[key]), (row["label"], key)
        assert row["pairs_per_s"] > 0 and row["step_ms"] > 0
    # No decoder-free row was asked for: the reference is the faster of the two, at ratio 1.
    reference = methods[0]["reference"]
    assert reference in {"ae", "mmvae K=2"}
    assert all(row["reference"] == reference for row in methods)
    assert min(row["slowdown"] for row in methods) == 1.0
