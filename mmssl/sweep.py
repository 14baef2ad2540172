"""Several models × folds × seeds in one go: a run directory each, then a table and a figure.

Finished runs (``metrics.json`` present) are skipped and interrupted ones resumed, so a sweep
can be re-run after a crash and only the missing work is done. Results are aggregated as
mean ± standard deviation over folds and seeds.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmssl import config as cfg
from mmssl.config import RunConfig, write_atomic
from mmssl.objectives.taxonomy import Objective
from mmssl.pipeline import RunDir, run

log = logging.getLogger("mmssl")


@dataclass
class SweepResult:
    """One row per model: its name, run directory and metrics (split → modality → metric)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    table_csv: Path | None = None
    table_md: Path | None = None
    figure: Path | None = None
    mode_figure: Path | None = None


def sweep_configs(
    base: RunConfig, objectives: Sequence[str], methods: Sequence[str] = ()
) -> list[tuple[str, RunConfig]]:
    """One configuration per taxonomy objective, then one per other method.

    Every entry shares the base configuration (data, fold, seed, trainer, optimiser), so the
    comparison is fair; each method takes its own settings from its section (``cca``, ``ae``…).
    """
    from mmssl.methods import METHODS

    seen: set[str] = set()
    configs = []

    def add(name: str, config: RunConfig) -> None:
        if name in seen:
            raise cfg.ConfigError(f"{name} is listed twice")
        seen.add(name)
        cfg.validate(config, f"sweep entry {name}")
        configs.append((name, config))

    for name in objectives:
        objective = Objective.parse(name).name
        config = copy.deepcopy(base)
        config.method = "taxonomy"
        config.objective.name = objective
        config.objective.weights = {}
        add(objective, config)
    for method in methods:
        if method == "taxonomy":
            raise cfg.ConfigError("--methods: list taxonomy models with --objectives instead")
        if method not in METHODS:
            raise cfg.ConfigError(f"--methods: unknown method {method!r}; valid: "
                                  + ", ".join(sorted(m for m in METHODS if m != "taxonomy")))
        config = copy.deepcopy(base)
        config.method = method  # type: ignore[assignment]
        add(method, config)
    if not configs:
        raise cfg.ConfigError("give at least one of --objectives or --methods")
    return configs


@dataclass
class Launcher:
    """Where a sweep's runs execute.

    ``sequential`` runs them one after the other in this process; ``local`` runs ``jobs`` at a
    time in subprocesses and ``slurm`` submits them as a SLURM job array, both through
    submitit (an existing engine: no scheduler of our own). Logs of submitted jobs go to
    ``<sweep>/.submitit``.
    """

    kind: str = "sequential"
    jobs: int = 1
    slurm_partition: str | None = None
    slurm_gpus: int = 0
    slurm_cpus: int = 4
    slurm_minutes: int = 240

    def __post_init__(self) -> None:
        if self.kind not in ("sequential", "local", "slurm"):
            raise cfg.ConfigError(f"--launcher {self.kind!r}: valid: sequential, local, slurm")
        if self.jobs < 1:
            raise cfg.ConfigError(f"--jobs must be ≥ 1; got {self.jobs}")

    def run_all(self, work: list[tuple[RunConfig | None, Path, bool]], folder: Path) -> None:
        """Run every (config, run directory, resume) entry; raise if any failed."""
        if not work:
            return
        if self.kind == "sequential":
            for config, run_dir, resume in work:
                run(config, run_dir, resume=resume)
            return
        import submitit

        executor = submitit.AutoExecutor(folder=folder / ".submitit",
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
        failures = []
        waves = [work] if self.kind == "slurm" else [
            work[i:i + self.jobs] for i in range(0, len(work), self.jobs)]
        for wave in waves:
            jobs = executor.map_array(_run_job, [w[0] for w in wave], [w[1] for w in wave],
                                      [w[2] for w in wave], [threads] * len(wave))
            for job, (_, run_dir, _) in zip(jobs, wave, strict=True):
                try:
                    job.result()
                except Exception as error:  # noqa: BLE001 - reported below, all at once
                    failures.append(f"{run_dir}: {error}".splitlines()[0])
        if failures:
            raise RuntimeError(f"{len(failures)} sweep run(s) failed (rerun the sweep to resume "
                               "them; logs in .submitit): " + "; ".join(failures))


def _run_job(config: RunConfig | None, run_dir: Path, resume: bool, threads: int) -> str:
    """One sweep entry in a worker process (module level, so it can be pickled)."""
    import torch

    torch.set_num_threads(threads)
    run(config, run_dir, resume=resume)
    return str(run_dir)


def run_sweep(
    base: RunConfig,
    objectives: Sequence[str],
    out: Path,
    methods: Sequence[str] = (),
    *,
    folds: Sequence[int] | None = None,
    seeds: Sequence[int] | None = None,
    launcher: Launcher | None = None,
) -> SweepResult:
    """Run (or resume, or skip) every model × fold × seed under ``out``; tabulate and plot.

    Each run lives in ``out/<model>/fold<k>-seed<s>``. The table and figure give, per model and
    representation, the mean ± standard deviation over folds and seeds of the test metric.
    """
    out = Path(out)
    folds = list(folds) if folds else [base.data.fold]
    seeds = list(seeds) if seeds else [base.seed]
    entries = []
    for name, config in sweep_configs(base, objectives, methods):
        for fold in folds:
            for seed in seeds:
                variant = copy.deepcopy(config)
                variant.data.fold, variant.seed = fold, seed
                cfg.validate(variant, f"sweep entry {name} fold {fold} seed {seed}")
                entries.append((name, fold, seed, variant))
    work: list[tuple[RunConfig | None, Path, bool]] = []
    for index, (name, fold, seed, config) in enumerate(entries, 1):
        run_dir = RunDir(out / name / f"fold{fold}-seed{seed}")
        label = f"[{index}/{len(entries)}] {name} fold {fold} seed {seed}"
        if run_dir.metrics.exists():
            log.info("%s: finished earlier, skipping", label)
            continue
        resume = run_dir.config.exists()
        log.info("%s: %s", label, "resuming" if resume else "queued")
        work.append((None if resume else config, run_dir.root, resume))
    (launcher or Launcher()).run_all(work, out)
    runs = [
        {"model": name, "fold": fold, "seed": seed,
         "run_dir": str(out / name / f"fold{fold}-seed{seed}"),
         "metrics": json.loads(RunDir(out / name / f"fold{fold}-seed{seed}").metrics.read_text())}
        for name, fold, seed, _ in entries
    ]
    rows = aggregate(runs)
    result = SweepResult(rows=rows)
    modalities = base.modalities
    columns = modalities + (["joint"] if len(modalities) > 1 else [])
    result.table_csv = out / "results.csv"
    result.table_md = out / "results.md"
    write_atomic(out / "runs.csv", runs_csv(runs, columns))
    write_atomic(result.table_csv, results_csv(rows, columns))
    write_atomic(result.table_md, results_markdown(rows, columns))
    result.figure = out / "accuracy.png"
    plot_accuracy(rows, columns, result.figure)
    effects = mode_effects(rows, columns)
    if effects:
        write_atomic(out / "mode_effects.json", json.dumps(effects, indent=2) + "\n")
        result.mode_figure = out / "mode_effects.png"
        plot_mode_effects(effects, columns, result.mode_figure)
    return result


def mode_effects(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> dict[str, Any]:
    """How adding each mode shifts the test score: the paper's "composition matters".

    For every mode M and every taxonomy model O without M such that O+M was also run, the
    effect is score(O+M) − score(O) (mean over folds and seeds); per mode and representation
    it is averaged over those pairs. Returns ``{mode: {column: {"mean", "pairs"}}}`` for the
    modes with at least one pair.
    """
    from mmssl.objectives.taxonomy import MODES, ObjectiveError

    metric = metric_name(rows)
    scores: dict[frozenset[str], dict[str, float]] = {}
    for row in rows:
        try:
            modes = frozenset(Objective.parse(row["model"]).modes)
        except ObjectiveError:
            continue  # a baseline, not a taxonomy model
        scores[modes] = {c: row["metrics"]["test"][c][metric]["mean"]
                         for c in columns if c in row["metrics"]["test"]}
    effects: dict[str, Any] = {}
    for mode in MODES:
        per_column: dict[str, list[float]] = {}
        for modes, values in scores.items():
            with_mode = modes | {mode}
            if mode in modes or with_mode not in scores:
                continue
            for column, value in values.items():
                if column in scores[with_mode]:
                    per_column.setdefault(column, []).append(scores[with_mode][column] - value)
        if per_column:
            effects[mode] = {c: {"mean": sum(v) / len(v), "pairs": len(v)}
                             for c, v in per_column.items()}
    return effects


def plot_mode_effects(effects: dict[str, Any], columns: Sequence[str], path: Path) -> None:
    """Heat map: modes × representations, colour = mean change of the test score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    modes = list(effects)
    grid = np.array([[effects[m].get(c, {}).get("mean", np.nan) for c in columns]
                     for m in modes])
    limit = float(np.nanmax(np.abs(grid))) or 1.0
    fig, ax = plt.subplots(figsize=(1.4 * len(columns) + 2.2, 0.6 * len(modes) + 1.6), dpi=120)
    image = ax.imshow(grid, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    for i, mode in enumerate(modes):
        for j, column in enumerate(columns):
            entry = effects[mode].get(column)
            if entry:
                ax.text(j, i, f"{entry['mean']:+.3f}\n({entry['pairs']})", ha="center",
                        va="center", fontsize=7)
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(modes)), [f"+{m}" for m in modes])
    ax.set_title("Change of the test score when a mode is added\n(mean over model pairs)",
                 fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    cfg.save_figure(fig, path)


def aggregate(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model: split → modality → metric → {mean, std, n} over its folds and seeds.

    The standard deviation is the sample one (ddof 1), 0 for a single run.
    """
    import numpy as np

    models: dict[str, list[dict[str, Any]]] = {}
    for run_info in runs:
        models.setdefault(run_info["model"], []).append(run_info["metrics"])
    rows = []
    for model, metrics_list in models.items():
        summary: dict[str, Any] = {}
        for split in metrics_list[0]:
            for modality in metrics_list[0][split]:
                for metric in metrics_list[0][split][modality]:
                    values = np.array([m[split][modality][metric] for m in metrics_list],
                                      dtype=float)
                    summary.setdefault(split, {}).setdefault(modality, {})[metric] = {
                        "mean": float(values.mean()),
                        "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                        "n": len(values),
                    }
        rows.append({"model": model, "metrics": summary})
    return rows


def metric_name(rows: Sequence[dict[str, Any]]) -> str:
    """The headline metric: ROC AUC for binary tasks, accuracy otherwise."""
    first = rows[0]["metrics"]["test"]
    sample = next(iter(first.values()))
    return "roc_auc" if "roc_auc" in sample else "accuracy"


def runs_csv(runs: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Every run's metrics, long format: model, fold, seed, split, modality, metric, value."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["model", "fold", "seed", "split", "modality", "metric", "value"])
    for run_info in runs:
        for split, per_modality in run_info["metrics"].items():
            for modality in columns:
                for metric, value in per_modality.get(modality, {}).items():
                    writer.writerow([run_info["model"], run_info["fold"], run_info["seed"],
                                     split, modality, metric, f"{value:.6f}"])
    return buffer.getvalue()


def results_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Aggregated, long format: model, split, modality, metric, mean, std, n."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["model", "split", "modality", "metric", "mean", "std", "n"])
    for row in rows:
        for split, per_modality in row["metrics"].items():
            for modality in columns:
                for metric, stats in per_modality.get(modality, {}).items():
                    writer.writerow([row["model"], split, modality, metric,
                                     f"{stats['mean']:.6f}", f"{stats['std']:.6f}", stats["n"]])
    return buffer.getvalue()


def results_markdown(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Markdown table of the headline test metric (mean ± std) per model and modality."""
    metric = metric_name(rows)
    n = rows[0]["metrics"]["test"][columns[0]][metric]["n"]
    lines = [f"Test {metric} of a logistic-regression probe on frozen encoders (regularisation "
             f"chosen on validation); mean ± std over {n} run(s) (folds × seeds).", "",
             "| model | " + " | ".join(columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for row in rows:
        test = row["metrics"]["test"]
        cells = []
        for column in columns:
            if column not in test:
                cells.append("–")
                continue
            stats = test[column][metric]
            cells.append(f"{stats['mean']:.4f}" + (f" ± {stats['std']:.4f}"
                                                  if stats["n"] > 1 else ""))
        lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_accuracy(rows: Sequence[dict[str, Any]], columns: Sequence[str], path: Path) -> None:
    """Grouped bars of the headline test metric (error bars: std), written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metric = metric_name(rows)
    models = [row["model"] for row in rows]
    width = 0.8 / len(columns)
    x = np.arange(len(models))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(models) + 2), 4.2), dpi=120)
    nan = {"mean": np.nan, "std": 0.0, "n": 0}
    for k, column in enumerate(columns):
        stats = [row["metrics"]["test"].get(column, {}).get(metric, nan) for row in rows]
        means = [s["mean"] for s in stats]
        errors = [s["std"] if s["n"] > 1 else 0.0 for s in stats]
        bars = ax.bar(x + (k - (len(columns) - 1) / 2) * width, means, width, label=column,
                      yerr=errors if any(errors) else None, capsize=2)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=1)
    ax.set_xticks(x, models, rotation=20, ha="right")
    ax.set_ylabel(f"test {metric.replace('_', ' ')}")
    values = [row["metrics"]["test"][c][metric]["mean"] for row in rows for c in columns
              if c in row["metrics"]["test"]]
    low = min(values) if values else 0.0
    ax.set_ylim(max(0.0, low - 0.1), 1.0)
    ax.set_title("Linear probe on frozen encoders, per modality")
    ax.legend(title="representation", fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    cfg.save_figure(fig, path)
