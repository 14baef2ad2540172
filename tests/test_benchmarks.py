"""benchmarks/throughput.py runs end to end (all three parts) and its estimator and mask-based
losses agree; benchmarks/neuro.py runs end to end in quick mode.

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
NEURO_SCRIPT = SCRIPT.with_name("neuro.py")


def load_script(script: Path = SCRIPT, name: str = "mmssl_benchmarks_throughput") -> ModuleType:
    # benchmarks/ is not a package: load the script by path (registered first for dataclasses).
    spec = importlib.util.spec_from_file_location(name, script)
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


def test_neuro_quick_run_writes_finite_positive_numbers_and_a_figure(tmp_path):
    neuro = load_script(NEURO_SCRIPT, "mmssl_benchmarks_neuro")
    out, figure, work = tmp_path / "neuro.json", tmp_path / "fig" / "neuro.png", tmp_path / "w"
    threads = torch.get_num_threads()
    returned = neuro.main([
        "--quick", "--subjects", "6", "--device", "cpu", "--threads", "1", "--repeats", "1",
        "--warmup", "0", "--split-files", "1", "--workdir", str(work), "--json", str(out),
        "--figure", str(figure),
    ])
    assert torch.get_num_threads() == threads
    results = json.loads(out.read_text())
    assert results == json.loads(json.dumps(returned))
    assert set(results) == {"meta", "preprocessing", "loading", "training", "fed", "figure",
                            "notes"}
    meta = results["meta"]
    assert meta["device"] == "cpu" and meta["threads"] == 1 and meta["quick"] is True
    assert (meta["subjects"], meta["volumes"], meta["sizes"]) == (6, 12, [32])
    assert meta["batch_sizes"] == [2, 4] and meta["load_batch_sizes"] == [2, 4]
    assert "profiler" in meta["memory_method"]
    assert list(work.iterdir()) == []  # the simulated cohort and its caches are gone

    def positive(row, keys):
        for key in keys:
            assert isinstance(row[key], int | float), key
            assert math.isfinite(row[key]) and row[key] > 0, (key, row[key])

    # The paper grid, the 2 mm grid and the training grid, each preprocessed cold then warm.
    prep = results["preprocessing"]
    assert [(r["size"], r["voxel_size"]) for r in prep] == [(32, 6.0), (64, 3.0), (96, 2.0)]
    for row in prep:
        assert row["volumes"] == 12 and math.isfinite(row["other_ms"]) and row["mask_s"] >= 0
        positive(row, ("cold_s", "cold_volumes_per_s", "hash_ms", "validate_ms",
                       "preprocess_ms", "warm_s", "warm_volumes_per_s", "warm_speedup",
                       "cache_bytes"))

    training = results["training"]
    assert sorted((r["objective"], r["batch_size"]) for r in training) == [
        ("CR-XX-CC-RR", 2), ("CR-XX-CC-RR", 4), ("RR", 2), ("RR", 4)]
    for row in training:
        assert row["size"] == 32 and row["tap"] == "block1" and math.isfinite(row["loss"])
        positive(row, ("parameters", "step_ms", "volumes_per_s", "pairs_per_s", "peak_bytes"))
        assert math.isclose(row["volumes_per_s"], 2 * row["pairs_per_s"])

    loading = results["loading"]
    assert [(r["size"], r["batch_size"]) for r in loading] == [(32, 2), (32, 4)]
    for row in loading:
        assert row["batches_per_epoch"] == 6 // row["batch_size"]
        assert row["step_source"] == "measured"
        assert row["fed"] in {"yes", "no", "only CR-XX-CC-RR", "only RR"}
        positive(row, ("fetch_ms", "augment_ms", "load_ms", "volumes_per_s", "batches_per_s",
                       "step_ms", "step_rr_ms", "ratio", "ratio_rr"))

    assert results["figure"] == str(figure)
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scaling_benchmark_quick_reports_batch_and_process_scaling(tmp_path):
    import importlib
    import math
    import sys
    from pathlib import Path

    # Importable by name: the data-parallel workers are spawned and unpickle its functions.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    module = importlib.import_module("scaling")
    result = module.main(["--quick", "--skip-sweep", "--objective", "XX-RR",
                          "--batch-sizes", "4,8", "--global-batch", "8",
                          "--json", str(tmp_path / "scaling.json")])
    assert [row["batch_size"] for row in result["batch"]] == [4, 8]
    assert [row["processes"] for row in result["processes"]] == [1, 2]
    for row in result["batch"] + result["processes"]:
        assert math.isfinite(row["pairs_per_s"]) and row["pairs_per_s"] > 0
    assert (tmp_path / "scaling.json").exists()
