"""Several objectives in one go: one run directory each, then a table and a figure.

Finished runs (``metrics.json`` present) are skipped and interrupted ones resumed, so a sweep
can be re-run after a crash and only the missing work is done.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
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


def run_sweep(
    base: RunConfig, objectives: Sequence[str], out: Path, methods: Sequence[str] = ()
) -> SweepResult:
    """Run (or resume, or skip) every entry under ``out``, then tabulate and plot."""
    out = Path(out)
    configs = sweep_configs(base, objectives, methods)
    for index, (name, config) in enumerate(configs, 1):
        run_dir = RunDir(out / name)
        if run_dir.metrics.exists():
            log.info("[%d/%d] %s: finished earlier, skipping", index, len(configs), name)
            continue
        resume = run_dir.config.exists()
        log.info("[%d/%d] %s: %s", index, len(configs), name, "resuming" if resume else "starting")
        run(None if resume else config, run_dir.root, resume=resume)
    rows = [
        {"model": name, "run_dir": str(out / name),
         "metrics": json.loads(RunDir(out / name).metrics.read_text())}
        for name, _ in configs
    ]
    result = SweepResult(rows=rows)
    modalities = base.modalities
    columns = modalities + (["joint"] if len(modalities) > 1 else [])
    result.table_csv = out / "results.csv"
    result.table_md = out / "results.md"
    write_atomic(result.table_csv, results_csv(rows, columns))
    write_atomic(result.table_md, results_markdown(rows, columns))
    result.figure = out / "accuracy.png"
    plot_accuracy(rows, columns, result.figure)
    return result


def metric_name(rows: Sequence[dict[str, Any]]) -> str:
    """The headline metric: ROC AUC for binary tasks, accuracy otherwise."""
    first = rows[0]["metrics"]["test"]
    sample = next(iter(first.values()))
    return "roc_auc" if "roc_auc" in sample else "accuracy"


def results_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Long-format CSV: model, split, modality, metric, value."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["model", "split", "modality", "metric", "value"])
    for row in rows:
        for split, per_modality in row["metrics"].items():
            for modality in columns:
                for metric, value in per_modality.get(modality, {}).items():
                    writer.writerow([row["model"], split, modality, metric, f"{value:.6f}"])
    return buffer.getvalue()


def results_markdown(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Markdown table of the headline test metric per model and modality."""
    metric = metric_name(rows)
    lines = [f"Test {metric} of a logistic-regression probe on frozen encoders "
             "(regularisation chosen on validation).", "",
             "| model | " + " | ".join(columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for row in rows:
        test = row["metrics"]["test"]
        cells = [f"{test[c][metric]:.4f}" if c in test else "–" for c in columns]
        lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_accuracy(rows: Sequence[dict[str, Any]], columns: Sequence[str], path: Path) -> None:
    """Grouped bar chart of the headline test metric, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metric = metric_name(rows)
    models = [row["model"] for row in rows]
    width = 0.8 / len(columns)
    x = np.arange(len(models))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(models) + 2), 4.2), dpi=120)
    for k, column in enumerate(columns):
        values = [row["metrics"]["test"].get(column, {}).get(metric, np.nan) for row in rows]
        bars = ax.bar(x + (k - (len(columns) - 1) / 2) * width, values, width, label=column)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=1)
    ax.set_xticks(x, models, rotation=20, ha="right")
    ax.set_ylabel(f"test {metric.replace('_', ' ')}")
    values = [row["metrics"]["test"][c][metric] for row in rows for c in columns
              if c in row["metrics"]["test"]]
    low = min(values) if values else 0.0
    ax.set_ylim(max(0.0, low - 0.1), 1.0)
    ax.set_title("Linear probe on frozen encoders, per modality")
    ax.legend(title="representation", fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
