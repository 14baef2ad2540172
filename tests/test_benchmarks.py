"""The benchmarks run end to end in quick mode and report what they promise; the harness's
interleaved timing, memory and FLOP helpers measure what they say (fake clocks, closed forms).

Only structure and agreement are checked, never timings (they depend on the machine's load).
"""

from __future__ import annotations

import gc
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# `python -m pytest` from the repository root can import `benchmarks`; a bare `pytest` puts
# tests/ (not the root) on sys.path, so add the root then.
if importlib.util.find_spec("benchmarks") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import harness, neuro, scaling, throughput  # noqa: E402
from benchmarks.harness import Timing  # noqa: E402

# --------------------------------------------------------------------------------------------
# The harness
# --------------------------------------------------------------------------------------------


class FakeMachine:
    """A clock that only the fake candidates advance, and a log of who ran when."""

    def __init__(self) -> None:
        self.now = 0.0
        self.log: list[str] = []
        self.clock_reads = 0

    def clock(self) -> float:
        self.clock_reads += 1
        return self.now

    def candidate(self, name: str, durations: list[float]):
        calls = iter(durations)

        def run() -> None:
            self.log.append(name)
            self.now += next(calls)

        return run


def test_time_interleaved_interleaves_candidates_and_takes_medians_of_the_timed_rounds():
    machine = FakeMachine()
    # The first duration of each is its warm-up call: huge, and it must not count.
    functions = {
        "a": machine.candidate("a", [100.0, 0.003, 0.001, 0.002, 0.007]),
        "b": machine.candidate("b", [100.0, 0.010, 0.030, 0.020, 0.040]),
        "c": machine.candidate("c", [100.0, 0.005, 0.005, 0.005, 0.005]),
    }
    timings = harness.time_interleaved(functions, warmup=1, repeats=4, clock=machine.clock)

    # One call of each candidate per round, in the mapping's order, warm-up round first.
    assert machine.log == ["a", "b", "c"] * 5
    assert machine.clock_reads == 2 * 3 * 4  # a start and an end per timed call only
    assert timings["a"].samples_ms == pytest.approx((3.0, 1.0, 2.0, 7.0))
    # Medians of an even count: the mean of the middle two.
    assert timings["a"].median_ms == pytest.approx(2.5)
    assert timings["b"].median_ms == pytest.approx(25.0)
    assert timings["c"].median_ms == pytest.approx(5.0)
    assert timings["a"].min_ms == pytest.approx(1.0)
    # Inclusive quartiles of (1, 2, 3, 7): Q1 = 1.75, Q3 = 4 → IQR 2.25; of 5s: 0.
    assert timings["a"].iqr_ms == pytest.approx(2.25)
    assert timings["c"].iqr_ms == pytest.approx(0.0) and timings["c"].iqr_percent == 0.0
    assert timings["b"].rate(50) == pytest.approx(50 / 0.025)
    assert gc.isenabled()


def test_time_interleaved_rejects_bad_rounds_and_nothing_to_time():
    with pytest.raises(ValueError, match="repeats"):
        harness.time_interleaved({"a": lambda: None}, warmup=0, repeats=0)
    with pytest.raises(ValueError, match="warmup"):
        harness.time_interleaved({"a": lambda: None}, warmup=-1, repeats=1)
    with pytest.raises(ValueError, match="at least one"):
        harness.time_interleaved({}, warmup=0, repeats=1)
    with pytest.raises(ValueError, match="at least one"):
        Timing.of([])


def test_timing_of_one_sample_has_no_spread():
    timing = Timing.of([0.004])
    assert (timing.median_ms, timing.min_ms, timing.iqr_ms) == pytest.approx((4.0, 4.0, 0.0))


def test_busy_machine_warning_threshold():
    # Busy when load + threads > cores + 1.
    assert harness.busy_machine_warning(1, 2.0, cores=2) is None
    assert harness.busy_machine_warning(1, None, cores=2) is None
    one = harness.busy_machine_warning(1, 2.5, cores=2)
    two = harness.busy_machine_warning(2, 1.5, cores=2)
    assert one is not None and "--threads 1" not in one
    assert two is not None and "--threads 1" in two


def test_machine_description_names_what_the_numbers_depend_on():
    meta = harness.machine_description(torch.device("cpu"))
    assert meta["torch"] == torch.__version__ and meta["device"] == "cpu"
    assert meta["threads"] == torch.get_num_threads() and meta["cpu_count"] >= 1
    assert meta["device_name"] == meta["cpu_model"] != ""


def test_autograd_saved_bytes_counts_each_saved_storage_once_and_skips_inputs():
    x = torch.randn(1000, requires_grad=True)
    # exp saves its result, which is also the output: one storage of 1000 floats.
    assert harness.autograd_saved_bytes(lambda: (x.exp(),), exclude=(x,)) == 4000
    # sin saves its input (excluded): only the output counts.
    assert harness.autograd_saved_bytes(lambda: (x.sin(),), exclude=(x,)) == 4000
    # x·x saves x twice (excluded); the output is a scalar.
    assert harness.autograd_saved_bytes(lambda: ((x * x).sum(),), exclude=(x,)) == 4


def test_count_flops_of_a_matrix_product_forward_and_backward():
    a = torch.randn(8, 16, requires_grad=True)
    b = torch.randn(16, 4)
    assert harness.count_flops(lambda: a @ b) == 2 * 8 * 16 * 4
    # Backward adds grad_a = grad_out @ bᵀ: another 2·8·4·16.
    assert harness.count_flops(lambda: (a @ b).sum().backward()) == 2 * (2 * 8 * 16 * 4)


def test_profiler_peak_bytes_sees_a_temporary_allocation():
    nbytes = 4 << 20

    def allocate_and_free() -> None:
        block = torch.ones(nbytes // 4)
        del block

    peak = harness.profiler_peak_bytes(allocate_and_free)
    assert nbytes <= peak < 2 * nbytes


def test_int_list_parses_in_order_without_repeats_and_checks_the_minimum():
    import argparse

    assert harness.int_list("8, 4,8,16") == [8, 4, 16]
    assert harness.int_list("1,2", minimum=1) == [1, 2]
    for bad in ("", "4,x", "1,4"):
        with pytest.raises(argparse.ArgumentTypeError):
            harness.int_list(bad)


def test_torch_threads_restores_the_thread_count():
    before = torch.get_num_threads()
    with harness.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError), harness.torch_threads(0):
        pass


# --------------------------------------------------------------------------------------------
# The benchmarks
# --------------------------------------------------------------------------------------------


def test_quick_run_writes_expected_json_and_implementations_agree(tmp_path):
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    returned = throughput.main([
        "--quick", "--objectives", "CR,CR-XX-CC-RR", "--batch-size", "4", "--device", "cpu",
        "--threads", "1", "--repeats", "2", "--warmup", "1", "--est-batch-sizes", "4,8",
        "--est-locations", "16", "--methods", "ae,mmvae", "--mmvae-k", "2", "--json", str(out),
        "--methods-memory-format", "channels_last",
        "--speedup-memory-format", "channels_last", "--speedup-batch-size", "4",
        "--speedup-est-batch", "32", "--speedup-est-locations", "128",
    ])
    assert torch.get_num_threads() == threads  # --threads is restored for the other tests
    results = json.loads(out.read_text())
    assert results == json.loads(json.dumps(returned))
    assert set(results) == {"meta", "objectives", "estimator", "methods", "speedup",
                            "estimator_memory", "compile", "notes"}
    assert {"torch", "device", "threads", "batch_size", "repeats", "warmup",
            "memory_method"} <= set(results["meta"])
    assert results["meta"]["device"] == "cpu" and results["meta"]["batch_size"] == 4
    assert results["meta"]["threads"] == 1
    assert results["meta"]["methods_dataset"] == "two_view_mnist"
    assert results["meta"]["methods_input_shapes"] == {"rotated": [1, 32, 32],
                                                       "noisy": [1, 32, 32]}
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

    # Part 4: today (dense, contiguous) vs new (lean, channels_last), the same computation.
    speedup = results["speedup"]
    assert [row["objective"] for row in speedup] == ["CR", "RR", "CR-XX-CC-RR"]
    for row in speedup:
        assert (row["memory_format"], row["memory_format_source"]) == ("channels_last",
                                                                       "configured")
        assert row["batch_size"] == 4
        assert row["today_pairs_per_s"] > 0 and row["new_pairs_per_s"] > 0
        assert row["ratio"] == pytest.approx(row["today_ms"] / row["new_ms"])
        assert row["loss_abs_diff"] < 1e-3
    assert results["compile"] == []  # part 5 runs only when asked for in quick mode
    (memory,) = results["estimator_memory"]
    assert (memory["batch"], memory["locations"]) == (32, 128)
    # The dense estimator keeps its score tensors for backward; the lean one recomputes them
    # (131k scores: above DIRECT_ELEMENTS, where lean would compute them directly too).
    assert memory["dense_saved_bytes"] > memory["lean_saved_bytes"] > 0

    methods = results["methods"]
    assert [row["label"] for row in methods] == ["ae", "mmvae K=2"]
    assert [(row["method"], row["variant"]) for row in methods] == [("ae", ""), ("mmvae", "K=2")]
    assert results["meta"]["methods_memory_format"] == "channels_last"
    for row in methods:
        assert row["decoders"] is True and row["batch_size"] == 4
        # The model really was laid out as asked (read back from its weights).
        assert (row["memory_format"], row["memory_format_source"]) == ("channels_last",
                                                                      "configured")
        assert isinstance(row["parameters"], int) and row["parameters"] > 0
        for key in ("loss", "pairs_per_s", "step_ms", "step_iqr_percent", "slowdown",
                    "gflop_per_step", "gflop_per_s"):
            assert isinstance(row[key], float) and math.isfinite(row[key]), (row["label"], key)
        assert row["pairs_per_s"] > 0 and row["step_ms"] > 0 and row["gflop_per_step"] > 0
    # MMVAE decodes K = 2 samples per pair into both modalities: more work than the AE.
    assert methods[1]["gflop_per_step"] > methods[0]["gflop_per_step"]
    # No decoder-free row was asked for: the reference is the faster of the two, at ratio 1.
    reference = methods[0]["reference"]
    assert reference in {"ae", "mmvae K=2"}
    assert all(row["reference"] == reference for row in methods)
    assert min(row["slowdown"] for row in methods) == 1.0


@pytest.mark.parametrize("faster", ["channels_last", "contiguous"])
def test_methods_part_trains_each_method_in_the_layout_a_run_would_choose(
        faster, tmp_path, monkeypatch):
    """Part 3 with ``auto`` decides the layout as ``trainer.memory_format: auto`` does (the
    timing, the margin, the machine cache) and lays the model out in it before timing."""
    from benchmarks import throughput_methods
    from mmssl.runs import performance

    monkeypatch.setenv("MMSSL_CACHE_DIR", str(tmp_path / "cache"))
    timed: list[str] = []

    def fake_timing(method, formats, batch_size, device, precision="32-true", **_):
        timed.append(type(method).__name__)
        return {f: (1.0 if f == faster else 10.0) for f in formats}

    monkeypatch.setattr(performance, "time_memory_formats", fake_timing)
    rows, _ = throughput_methods.measure_methods(
        ["ae"], 4, torch.device("cpu"), dataset="two_view_mnist", mmvae_k=None, warmup=1,
        repeats=1)
    assert len(timed) == 1  # one measurement, of the one model
    assert (rows[0].memory_format, rows[0].memory_format_source) == (faster, "measured")
    # A second measurement of the same model reads the decision from the cache, as runs do.
    rows, _ = throughput_methods.measure_methods(
        ["ae"], 4, torch.device("cpu"), dataset="two_view_mnist", mmvae_k=None, warmup=1,
        repeats=1)
    assert len(timed) == 1
    assert (rows[0].memory_format, rows[0].memory_format_source) == (faster, "cached")


def test_throughput_rejects_bad_options(capsys):
    for argv in (["--batch-size", "1"], ["--device", "tpu"], ["--threads", "0"],
                 ["--methods", "nope"], ["--dataset", "neuro"], ["--repeats", "0"],
                 ["--speedup-memory-format", "nhwc"], ["--speedup-est-batch", "1"]):
        with pytest.raises(SystemExit):
            throughput.main(argv)
    assert "--batch-size must be ≥ 2" in capsys.readouterr().err


def test_neuro_quick_run_writes_finite_positive_numbers_and_a_figure(tmp_path):
    out, figure, work = tmp_path / "neuro.json", tmp_path / "fig" / "neuro.png", tmp_path / "w"
    threads = torch.get_num_threads()
    returned = neuro.main([
        "--quick", "--subjects", "6", "--device", "cpu", "--threads", "1", "--repeats", "1",
        "--warmup", "0", "--split-files", "1", "--workdir", str(work), "--json", str(out),
        "--figure", str(figure), "--variants", "fp32,fp32-cl",
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

    assert meta["variants"] == ["fp32", "fp32-cl"]
    both = results["training"]
    # Each variant starts from the same weights on the same batches: same first loss, up to
    # the rounding of another convolution layout (measured up to 3e-4 relative on RR, whose
    # scores are large; another batch changes the loss by percents).
    first = {(r["objective"], r["batch_size"], r["variant"]): r["loss"] for r in both}
    for (objective, batch, _variant), loss in first.items():
        assert loss == pytest.approx(first[(objective, batch, "fp32")], rel=1e-3)
    training = [r for r in both if r["variant"] == "fp32"]
    assert sorted((r["objective"], r["batch_size"]) for r in training) == [
        ("CR-XX-CC-RR", 2), ("CR-XX-CC-RR", 4), ("RR", 2), ("RR", 4)]
    for row in training:
        assert row["size"] == 32 and row["tap"] == "block1" and math.isfinite(row["loss"])
        positive(row, ("parameters", "step_ms", "volumes_per_s", "pairs_per_s", "peak_bytes",
                       "gflop_per_step", "gflop_per_s"))
        assert math.isclose(row["volumes_per_s"], 2 * row["pairs_per_s"])
    # A step's convolutions scale with the batch: twice the batch, twice the FLOPs.
    flops = {(r["objective"], r["batch_size"]): r["gflop_per_step"] for r in training}
    for objective in ("CR-XX-CC-RR", "RR"):
        assert flops[(objective, 4)] == pytest.approx(2 * flops[(objective, 2)], rel=0.05)

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


def test_scaling_model_gathers_negatives_only_when_asked():
    assert scaling.build("XX-RR", gather=True).gathering_estimator().gather is True
    assert scaling.build("XX-RR").gathering_estimator().gather is False


@pytest.mark.slow  # starts data-parallel processes (≈ 1 minute)
def test_scaling_benchmark_quick_reports_batch_and_process_scaling(tmp_path):
    # The data-parallel workers are spawned and import benchmarks.scaling by name.
    result = scaling.main(["--quick", "--skip-sweep", "--objective", "XX-RR",
                           "--batch-sizes", "4,8", "--global-batch", "8",
                           "--json", str(tmp_path / "scaling.json")])
    assert [row["batch_size"] for row in result["batch"]] == [4, 8]
    assert [row["processes"] for row in result["processes"]] == [1, 2]
    for row in result["batch"] + result["processes"]:
        assert math.isfinite(row["pairs_per_s"]) and row["pairs_per_s"] > 0
    assert json.loads((tmp_path / "scaling.json").read_text()) == json.loads(json.dumps(result))
    assert {"torch", "device", "cores", "objective", "load_before"} <= set(result["meta"])


# The null calibration of `mmssl links` (benchmarks.links_null)

def test_clopper_pearson_matches_scipy_exact_interval() -> None:
    from scipy.stats import binomtest

    from benchmarks.links_null import clopper_pearson

    for hits, trials in ((0, 20), (1, 20), (7, 20), (20, 20), (3, 400)):
        expected = binomtest(hits, trials).proportion_ci(confidence_level=0.95, method="exact")
        assert clopper_pearson(hits, trials) == pytest.approx(
            (expected.low, expected.high), abs=1e-9)
    with pytest.raises(ValueError, match="hits <= trials"):
        clopper_pearson(3, 2)


def test_links_null_summarises_a_seed_by_its_holm_p_values() -> None:
    from benchmarks.links_null import summarise_seed

    links = {"n_train": 128, "n_test": 40, "test_correlations": [0.41, 0.1, -0.05],
             "p_values": [0.004, 0.3, 0.7], "p_holm": [0.012, 0.6, 0.7],
             "table": [{"t1_r_severity": 0.1, "falff_r_severity": -0.2, "t1_r_coupling": 0.5,
                        "falff_r_coupling": 0.45, "other": 1}]}
    summary = summarise_seed(links, alpha=0.05)
    assert summary["significant"] is True
    assert summary["first_pair"] == {"t1_r_severity": 0.1, "falff_r_severity": -0.2,
                                     "t1_r_coupling": 0.5, "falff_r_coupling": 0.45}
    assert summarise_seed(links, alpha=0.01)["significant"] is False  # 0.012 is not below 0.01


@pytest.mark.slow
def test_links_null_runs_the_command_line_per_seed_and_resumes(tmp_path: Path) -> None:
    from benchmarks.links_null import main as links_null

    argv = ["--seeds", "1", "--subjects", "40", "--epochs", "1", "--voxel-size", "12",
            "--permutations", "60", "--work", str(tmp_path / "work")]
    summary = links_null(argv)
    assert summary["seeds"][0]["n_test"] > 0 and len(summary["seeds"][0]["p_holm"]) == 3
    assert summary["rate"] in (0.0, 1.0) and summary["rate_ci95"][1] > 0.8
    written = json.loads((tmp_path / "work" / "summary.json").read_text())
    assert written["significant"] == summary["significant"]
    log = (tmp_path / "work" / "seed0.log").read_text()
    assert log.count("$ mmssl") == 3  # simulate, run, links
    again = links_null(argv)  # finished seeds are read back, not rerun
    assert again["seeds"][0]["test_correlations"] == summary["seeds"][0]["test_correlations"]
    assert (tmp_path / "work" / "seed0.log").read_text() == log
    linear = links_null([*argv, "--harmonize", "none"])  # only links is redone
    assert (tmp_path / "work" / "seed0.log").read_text().count("$ mmssl") == 4
    assert linear["settings"]["harmonize"] == "none"
    written = json.loads((tmp_path / "work" / "runs" / "seed0" / "links.json").read_text())
    assert written["harmonize"] == written["harmonize_requested"] == "none"


# Can InfoNCE learn the matcher's correspondence? (benchmarks.pairing_learnability)

def test_pairing_learnability_loss_is_the_symmetric_infonce_by_hand() -> None:
    from benchmarks.pairing_learnability import infonce, top1

    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 4, generator=generator), torch.randn(5, 4, generator=generator)
    scores = (a @ b.T / 2.0).tolist()  # scaled by sqrt(4)
    expected = 0.0
    for i in range(5):
        row = [scores[i][j] for j in range(5)]
        column = [scores[j][i] for j in range(5)]
        expected -= scores[i][i] - math.log(sum(math.exp(s) for s in row))
        expected -= scores[i][i] - math.log(sum(math.exp(s) for s in column))
    assert float(infonce(a, b)) == pytest.approx(expected / 5, rel=1e-6)
    eye = torch.eye(5)
    assert top1(eye, 3 * eye) == 1.0
    assert top1(eye, eye.flip(0)) == pytest.approx(0.2)  # only the middle row keeps its pair


def test_pairing_learnability_shared_projection_pairs_identical_profiles_at_start() -> None:
    """Identical profiles: one shared random projection pairs every held-out subject before
    training; separate projections start at chance; the measurements land where asked."""
    from benchmarks.pairing_learnability import learnability

    rng = np.random.default_rng(0)
    profiles = rng.standard_normal((60, 400))
    found = learnability([profiles, profiles.copy()], train=40, steps=20, batch=8, latent=64,
                         lr=1e-3, seed=0, checkpoints=[0, 10, 20])
    assert found["matcher_top1"] == 1.0 and found["held_out"] == 20
    shared, separate = found["variants"]["shared"], found["variants"]["separate"]
    assert [p["step"] for p in shared] == [0, 10, 20] == [p["step"] for p in separate]
    assert shared[0]["held_out_top1"] == 1.0
    assert separate[0]["held_out_top1"] <= 0.3  # 1/20 is chance
    for trace in (shared, separate):  # the training loss falls on the pairs it is fitted to
        assert trace[-1]["train_loss"] < trace[0]["train_loss"]
    with pytest.raises(ValueError, match="--batch"):
        learnability([profiles, profiles], train=4, steps=1, batch=8, latent=4, lr=1e-3,
                     seed=0, checkpoints=[0])


# Is the planted link findable from the inputs? (benchmarks.links_reference)

def test_held_out_permutation_p_against_brute_force() -> None:
    from benchmarks.links_reference import held_out_permutation_p

    rng = np.random.default_rng(3)
    u = rng.standard_normal(30)
    v = 0.8 * u + 0.6 * rng.standard_normal(30)
    p = held_out_permutation_p(u, v, 99, seed=5)
    observed = np.corrcoef(u, v)[0, 1]
    shuffles = np.random.default_rng(5)
    null = [np.corrcoef(u, shuffles.permutation(v))[0, 1] for _ in range(99)]
    assert p == pytest.approx((1 + sum(r >= observed for r in null)) / 100)
    assert p == pytest.approx(0.01)  # a strong correlation beats every shuffle
    assert held_out_permutation_p(u, -v, 99, seed=5) > 0.9  # one-sided


def test_links_reference_finds_a_strong_planted_link_with_the_region_oracle(
        tmp_path: Path) -> None:
    """A cohort with a strong coupling: the oracle's held-out link is significant and its
    variates follow the planted latent; every row reports what the table promises."""
    from benchmarks.links_reference import confounds, main
    from mmssl.data.neuro.simulate import SimulationSettings, simulate_cohort

    settings = SimulationSettings(subjects=40, seed=11, voxel_size=12.0, coupling=0.3)
    cohort = simulate_cohort(tmp_path / "cohort", settings, progress=False).parent
    result = main([str(cohort), "--pca", "5", "--permutations", "99",
                   "--json", str(tmp_path / "ref.json")])
    found = result["cohorts"]["cohort"]
    assert (found["subjects"], found["train"], found["test"]) == (40, 26, 14)
    oracle, whole = found["rows"]
    assert oracle["test_r"] > 0.5 and oracle["p"] <= 0.05
    assert oracle["t1_r_coupling"] > 0.5 and oracle["falff_r_coupling"] > 0.5
    assert whole["features"] == "whole grey matter, PCA 5"
    for key in ("t1_coupling_auc", "falff_coupling_auc"):
        assert 0.0 <= whole[key] <= 1.0
    assert json.loads((tmp_path / "ref.json").read_text())["cohorts"]["cohort"]["rows"][0][
        "test_r"] == pytest.approx(oracle["test_r"])
    table = confounds([{"label": "AD", "age": "70", "sex": "F", "site": "S2"},
                       {"label": "CN", "age": "60.5", "sex": "M", "site": "S1"}])
    np.testing.assert_array_equal(table, [[1, 70, 1, 1], [0, 60.5, 0, 0]])


def test_compile_part_reports_an_unavailable_compiler(monkeypatch):
    """Where torch.compile cannot run, part 5 says so instead of failing the benchmark."""
    from benchmarks import throughput_speedup
    from mmssl.errors import ConfigError

    def refuse(device):
        raise ConfigError("trainer.compile: no C++ compiler")

    monkeypatch.setattr(throughput_speedup, "check_compile", refuse)
    row = throughput_speedup.measure_compile("CR-XX-CC-RR", 4, torch.device("cpu"),
                                             warmup=0, repeats=1)
    assert not row.available and "no C++ compiler" in row.detail
    assert row.break_even_steps is None
    table = throughput_speedup.compile_table([row])
    assert table.rows[0][2] == "unavailable" and table.rows[0][-1] == "—"


def test_a_candidate_failing_in_its_process_names_itself_and_the_error():
    """time_interleaved_in_processes: a factory that raises in its process stops the run with
    the candidate's name and the child's traceback, and no process is left behind."""
    import functools
    import multiprocessing

    from benchmarks.harness import time_interleaved_in_processes

    with pytest.raises(RuntimeError, match=r"candidate 'broken' failed(.|\n)*ValueError"):
        time_interleaved_in_processes({"broken": functools.partial(int, "not a number")},
                                      warmup=0, repeats=1)
    assert multiprocessing.active_children() == []
    with pytest.raises(ValueError, match="block ≥ 2"):
        time_interleaved_in_processes({"x": functools.partial(int, "1")}, warmup=0, repeats=1,
                                      block=1)
