"""Does ``mmssl links`` keep its false-positive rate when nothing links the modalities?

The brain issue's null check, run the way a user runs the tools: for each of ``--seeds`` seeds,
``mmssl simulate`` writes a cohort with **no coupling planted** (``--coupling 0``; diagnosis,
age, sites and every nuisance as usual), ``mmssl run`` pretrains and evaluates a CR-XX model on
it, and ``mmssl links`` tests the held-out canonical pairs against its permutation null (Holm
across the pairs). A seed is a false positive when any pair is significant at ``--alpha``.
The modalities still share diagnosis, severity, age and site; ``links`` residualises the
diagnosis and covariates on the training subjects, so what it may call a link is variation
beyond them — here only what those linear adjustments miss (severity within patients, the
sites' non-linear contrast), which is exactly what this check exposes.

With ``--coupling 0.1`` (the simulator's default) the same loop measures how often a planted
link is found (power) at this setting.

Every step runs the installed command line in ``--work`` with relative paths, each seed's
files stay there (rerunning skips finished seeds), and the summary — per seed: the held-out
correlations, raw and Holm p-values, whether a pair is significant and the first pair's
correlation with the planted severity and coupling; overall: the false-positive (or detection)
rate with its exact 95 % Clopper–Pearson interval and the wall time — is printed and written
to ``--out`` (JSON).

    python -m benchmarks.links_null --seeds 20 --work runs/links-null \\
        --out results/links-null/summary.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from scipy.stats import beta

from mmssl import io
from mmssl.evaluation.links import HARMONIZE

__all__ = ["clopper_pearson", "main", "summarise_seed"]


def clopper_pearson(hits: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial confidence interval of a rate ``hits / trials``."""
    if trials < 1 or not 0 <= hits <= trials:
        raise ValueError(f"need 0 <= hits <= trials and trials >= 1, got {hits}/{trials}")
    tail = (1.0 - level) / 2.0
    low = 0.0 if hits == 0 else float(beta.ppf(tail, hits, trials - hits + 1))
    high = 1.0 if hits == trials else float(beta.ppf(1.0 - tail, hits + 1, trials - hits))
    return low, high


def summarise_seed(links: dict[str, Any], alpha: float) -> dict[str, Any]:
    """What one seed's ``links.json`` says: correlations, p-values, significance."""
    table = links.get("table") or [{}]
    first = table[0]
    return {
        "n_train": links["n_train"], "n_test": links["n_test"],
        "test_correlations": [round(float(r), 4) for r in links["test_correlations"]],
        "p_values": [round(float(p), 4) for p in links["p_values"]],
        "p_holm": [round(float(p), 4) for p in links["p_holm"]],
        "significant": any(float(p) < alpha for p in links["p_holm"]),
        "first_pair": {key: first.get(key) for key in (
            "t1_r_severity", "falff_r_severity", "t1_r_coupling", "falff_r_coupling")},
    }


def _mmssl(arguments: list[str], work: Path, log: Path) -> None:
    command = [sys.executable, "-m", "mmssl.cli", *arguments]
    with log.open("a") as handle:
        handle.write(f"$ mmssl {' '.join(arguments)}\n")
        handle.flush()
        done = subprocess.run(command, cwd=work, stdout=handle, stderr=subprocess.STDOUT,
                              check=False)
    if done.returncode != 0:
        raise SystemExit(f"`mmssl {' '.join(arguments)}` failed with exit {done.returncode}; "
                         f"see {log}")


def run_seed(seed: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Simulate, train, evaluate and link one cohort (skipped when its links.json exists)."""
    cohort, run = f"cohorts/seed{seed}", f"runs/seed{seed}"
    result = work / run / "links.json"
    log = work / f"seed{seed}.log"
    started = time.perf_counter()
    # A links.json of another --harmonize (or of a version without the option) is redone.
    done = (result.is_file()
            and json.loads(result.read_text()).get("harmonize_requested") == args.harmonize)
    if not done:
        if not (work / cohort / "manifest.csv").is_file():
            _mmssl(["simulate", "--out", cohort, "--subjects", str(args.subjects),
                    "--seed", str(seed), "--coupling", str(args.coupling),
                    "--voxel-size", str(args.voxel_size)], work, log)
        if not (work / run / "links").exists():
            presets = [part for name in args.preset or ["neuro-quick"]
                       for part in ("--preset", name)]
            chosen = ([] if args.objective == "preset" else ["--objective", args.objective]) + (
                [] if args.epochs == 0 else ["--epochs", str(args.epochs)])
            _mmssl(["run", *presets, "--manifest", f"{cohort}/manifest.csv", *chosen,
                    "--seed", str(seed), "--set", "trainer.checkpoint=last",
                    "--set", "trainer.progress_bar=false", "--out", run], work, log)
        _mmssl(["links", run, "--permutations", str(args.permutations),
                "--alpha", str(args.alpha), "--harmonize", args.harmonize], work, log)
    summary = summarise_seed(json.loads(result.read_text()), args.alpha)
    summary["seed"], summary["seconds"] = seed, round(time.perf_counter() - started, 1)
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.links_null",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20, help="cohorts (seeds 0..N-1)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--subjects", type=int, default=200)
    parser.add_argument("--coupling", type=float, default=0.0,
                        help="0: the null (no link planted); > 0: measures power")
    parser.add_argument("--voxel-size", type=float, default=6.0,
                        help="mm of the simulated grid (6: fast, matches neuro-quick)")
    parser.add_argument("--preset", action="append", default=None,
                        help="presets of `mmssl run`, in order (repeatable; default neuro-quick)")
    parser.add_argument("--objective", default="CR-XX",
                        help="objective of the runs; `preset`: the presets' own")
    parser.add_argument("--epochs", type=int, default=5, help="epochs; 0: the presets' own")
    parser.add_argument("--permutations", type=int, default=200)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--harmonize", default="auto", choices=HARMONIZE,
                        help="how links treats the scanner site (mmssl links --harmonize)")
    parser.add_argument("--work", type=Path, default=Path("runs/links-null"))
    parser.add_argument("--out", type=Path, default=None,
                        help="summary JSON (default: WORK/summary.json)")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.subjects < 20 or args.epochs < 0:
        parser.error("need --seeds >= 1, --subjects >= 20 and --epochs >= 0")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    console = Console()
    started = time.perf_counter()
    seeds = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        seeds.append(run_seed(seed, args, work))
        row = seeds[-1]
        console.print(f"seed {seed}: r_test {row['test_correlations']}, p_holm "
                      f"{row['p_holm']}, significant {row['significant']} "
                      f"({row['seconds']:.0f} s)")
    hits = sum(row["significant"] for row in seeds)
    low, high = clopper_pearson(hits, len(seeds))
    kind = "false-positive rate" if args.coupling == 0 else "detection rate (power)"
    summary = {
        "question": kind, "settings": {k: (str(v) if isinstance(v, Path) else v)
                                       for k, v in vars(args).items()},
        "seeds": seeds, "significant": hits, "rate": hits / len(seeds),
        "rate_ci95": [round(low, 4), round(high, 4)],
        "null_holds": (hits / len(seeds) <= 0.05) if args.coupling == 0 else None,
        "seconds": round(time.perf_counter() - started, 1),
    }
    table = Table(title=f"links with coupling {args.coupling:g}: {kind}")
    for column in ("seeds", "significant", "rate", "95 % CI", "wall time"):
        table.add_column(column, justify="right")
    table.add_row(str(len(seeds)), str(hits), f"{hits / len(seeds):.2f}",
                  f"{low:.2f}–{high:.2f}", f"{summary['seconds'] / 60:.1f} min")
    console.print(table)
    out = args.out or work / "summary.json"
    io.write_json(out, summary)
    console.print(f"summary: {out}")
    return summary


if __name__ == "__main__":
    main()
