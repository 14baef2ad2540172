"""The results of a sweep: the committable scores file, the mean ± std table, the figures.

:func:`write_sweep_results` reads every evaluated run of a sweep directory (from its own
``config.yaml`` and ``metrics.json``) and writes ``scores.csv`` (one row per run × split ×
representation × metric, with the configuration hash and mmssl version), ``results.csv`` (mean,
std, n per model), ``results.md`` (the headline table), ``accuracy.png`` and, when taxonomy
models differ by one mode, ``mode_effects.json`` / ``mode_effects.png``. A ``links.csv`` left
by an earlier ``mmssl claims`` is removed: it described the runs of that call, not these.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mmssl import io
from mmssl.analysis.aggregate import columns_of, headline_metric, mode_effects, summarise
from mmssl.analysis.figures import plot_mode_effects, plot_scores
from mmssl.analysis.records import load_records, model_info, scores_frame
from mmssl.analysis.tables import Table, results_table, summary_csv
from mmssl.runs.rundir import SweepDir

__all__ = ["SweepResults", "write_sweep_results"]

log = logging.getLogger("mmssl")


@dataclass
class SweepResults:
    """What :func:`write_sweep_results` computed and where it wrote it."""

    sweep: SweepDir
    scores: pd.DataFrame
    summary: pd.DataFrame
    metric: str
    columns: list[str]
    table: Table
    effects: dict[str, Any]
    figure: Path | None
    mode_figure: Path | None


def write_sweep_results(sweep: SweepDir) -> SweepResults:
    """Aggregate a sweep's evaluated runs and write its tables and figures (atomically)."""
    records = load_records(sweep)
    scores = scores_frame(records)
    summary = summarise(scores)
    metric = headline_metric(scores)
    columns = columns_of(scores)
    table = results_table(summary, columns, metric, f"Sweep {sweep.root}")
    io.write_text(sweep.scores, scores.to_csv(index=False, lineterminator="\n"))
    if sweep.links_table.is_file():
        # links.csv comes from `mmssl claims` over the runs of that call; beside a newer
        # scores.csv it would describe other runs, and committing the pair would mix them.
        sweep.links_table.unlink()
        log.info("removed %s (it described the runs of an earlier `mmssl claims`); run "
                 "`mmssl claims %s` to recompute it", sweep.links_table, sweep.root)
    io.write_text(sweep.results_csv, summary_csv(summary))
    io.write_text(sweep.results_markdown, table.to_markdown())
    figure = plot_scores(summary, columns, metric, sweep.figure)
    models = {r.model: model_info(r.config) for r in records}
    effects = mode_effects(summary, models, columns, metric)
    mode_figure = None
    if effects:
        io.write_json(sweep.mode_effects, effects)
        mode_figure = plot_mode_effects(effects, columns, sweep.mode_effects_figure)
    return SweepResults(sweep, scores, summary, metric, columns, table, effects, figure,
                        mode_figure)
