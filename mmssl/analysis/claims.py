"""``mmssl claims``: the paper's five claims, checked on a sweep or on committed results files.

The decision rules and their statistics are in :mod:`mmssl.analysis.claim_rules`. This module
gathers their inputs — the long scores table (``scores.csv``) and the held-out links of every
multimodal-capable run (``links.csv``: the canonical correlations between the first two
modalities' representations, :func:`~mmssl.evaluation.links.reduced_cca_links`, fitted on
train and scored on test with a permutation p-value) — from a sweep directory, writes both
beside the verdicts (``claims.json``, ``claims.md``), and renders the verdicts as a table. The
same verdicts can be recomputed from the committed files alone (:func:`claims_from_files`),
which is how ``REPRODUCTION.md`` is generated and checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmssl import io
from mmssl.analysis.aggregate import columns_of, headline_metric, summarise
from mmssl.analysis.claim_rules import ModelInfo, Verdict, evaluate_claims
from mmssl.analysis.comparisons import ModelPair, compare_models, comparisons_table
from mmssl.analysis.figures import comparisons_figure
from mmssl.analysis.records import RunRecord, load_records, model_info, read_scores, scores_frame
from mmssl.analysis.tables import Table, results_table
from mmssl.analysis.verdicts import LINK_COLUMNS
from mmssl.errors import RunDirError
from mmssl.evaluation.links import reduced_cca_links
from mmssl.evaluation.stats import Comparison
from mmssl.methods import METHODS, method_class
from mmssl.objectives.taxonomy import Objective, ObjectiveError
from mmssl.runs.evaluation import read_features, read_presence
from mmssl.runs.rundir import SweepDir

__all__ = ["LINK_COLUMNS", "ClaimsReport", "check_sweep", "claims_figure", "claims_from_files",
           "claims_markdown", "claims_table", "link_row", "links_frame", "model_infos_from_scores",
           "write_claims"]

@dataclass
class ClaimsReport:
    """The verdicts and what they were decided on."""

    verdicts: list[Verdict]
    metric: str
    runs: int
    models: list[str]
    alpha: float
    #: the long scores table the verdicts were decided on
    scores: pd.DataFrame | None = None
    #: the paired comparisons asked for beside the claims (``--compare A:B``)
    comparisons: list[Comparison] = field(default_factory=list)


def link_row(record: RunRecord, *, permutations: int = 100,
             components: int = 3) -> dict[str, Any]:
    """Held-out canonical correlations between the first two modalities of one run."""
    features, _ = read_features(record.run.features)
    presence = read_presence(record.run.features)
    modalities = list(features["train"])[:2]
    rows = {split: np.all([presence[split][m] for m in modalities], axis=0)
            for split in ("train", "test")}  # complete sessions only
    result, _, _ = reduced_cca_links(
        {m: features["train"][m][rows["train"]] for m in modalities},
        {m: features["test"][m][rows["test"]] for m in modalities},
        n_components=components, n_permutations=permutations, seed=record.seed)
    return {"model": record.model, "fold": record.fold, "seed": record.seed,
            "first": float(result.test_correlations[0]),
            "strength": float(np.mean(result.test_correlations)),
            "p_first": float(result.p_values[0])}


def links_frame(records: Sequence[RunRecord], *, permutations: int = 100) -> pd.DataFrame:
    """Links of every taxonomy run with two or more modalities."""
    rows = [link_row(r, permutations=permutations) for r in records
            if r.config.method == "taxonomy" and len(r.config.modalities) > 1
            and r.run.features.is_file()]
    return pd.DataFrame(rows, columns=list(LINK_COLUMNS))


def model_infos_from_scores(scores: pd.DataFrame) -> dict[str, ModelInfo]:
    """:class:`ModelInfo` of every model of a scores table, from its method (and objective)."""
    infos: dict[str, ModelInfo] = {}
    for model, method in scores[["model", "method"]].drop_duplicates().itertuples(index=False):
        if method not in METHODS:
            raise RunDirError(f"scores table: model {model!r} has unknown method {method!r}")
        if method == "taxonomy":
            try:
                modes = frozenset(Objective.parse(model).modes)
            except ObjectiveError as error:
                raise RunDirError(f"scores table: taxonomy model {model!r}: {error}") from None
            infos[model] = ModelInfo("taxonomy", modes, multimodal=bool(modes - {"CR"}))
        else:
            traits = method_class(method).traits
            infos[model] = ModelInfo("baseline", decoder=traits.has_decoders,
                                     multimodal=traits.relates_modalities)
    return infos


def _decide(scores: pd.DataFrame, models: dict[str, ModelInfo], links: pd.DataFrame | None,
            *, alpha: float, seed: int, compare: Sequence[ModelPair] = ()) -> ClaimsReport:
    comparisons = compare_models(scores, compare, alpha=alpha, seed=seed)
    verdicts = evaluate_claims(scores, models, links, alpha=alpha, seed=seed)
    runs = scores[["model", "fold", "seed"]].drop_duplicates()
    return ClaimsReport(verdicts, headline_metric(scores), len(runs),
                        list(dict.fromkeys(scores["model"])), alpha, scores, comparisons)


def check_sweep(sweep: SweepDir, *, permutations: int = 100, alpha: float = 0.05,
                seed: int = 0, all_runs: bool = False,
                compare: Sequence[ModelPair] = ()) -> ClaimsReport:
    """Decide the claims on a sweep's evaluated runs; writes ``scores.csv`` and ``links.csv``.

    By default only the runs the last ``mmssl sweep`` command of the folder requested; with
    ``all_runs`` every evaluated run its plan lists (sweeps added to one folder in steps, e.g.
    some models on three seeds and others on one). ``compare``: pairs of models compared beside
    the claims (:func:`~mmssl.analysis.comparisons.compare_models`).
    """
    records = load_records(sweep, requested_only=not all_runs)
    scores = scores_frame(records)
    links = links_frame(records, permutations=permutations)
    io.write_text(sweep.scores, scores.to_csv(index=False, lineterminator="\n"))
    io.write_text(sweep.links_table, links.to_csv(index=False, lineterminator="\n"))
    models = {r.model: model_info(r.config) for r in records}
    return _decide(scores, models, links if len(links) else None, alpha=alpha, seed=seed,
                   compare=compare)


def claims_from_files(scores: Sequence[Path], links: Sequence[Path] = (), *,
                      alpha: float = 0.05, seed: int = 0, models: Sequence[str] = (),
                      seeds: Sequence[int] = (),
                      compare: Sequence[ModelPair] = ()) -> ClaimsReport:
    """Decide the claims from committed scores files (and links files), no run directories.

    ``models`` and ``seeds``, when given, keep only those models and those seeds' runs (of the
    scores and the links alike), so that one committed file can hold a whole sweep and each
    generated block choose, say, the models run on every seed. ``compare``: pairs of models
    compared beside the claims, on the selected runs.

    Raises:
        RunDirError: no scores file, a links file without the link columns, a named model or
            seed that the scores files do not have, or nothing left after the selection.
    """
    if not scores:
        raise RunDirError("give at least one scores file")
    frame = pd.concat([read_scores(Path(p)) for p in scores], ignore_index=True)
    link_frames = []
    for path in links:
        table = pd.read_csv(path)
        missing = [c for c in LINK_COLUMNS if c not in table.columns]
        if missing:
            raise RunDirError(f"{path} is not a links table: columns {missing} are missing")
        link_frames.append(table)
    link_table = pd.concat(link_frames, ignore_index=True) if link_frames else None
    names = ", ".join(str(p) for p in scores)
    for column, wanted in (("model", [str(m) for m in models]), ("seed", [int(s) for s in seeds])):
        if not wanted:
            continue
        present = set(frame[column].astype(type(wanted[0])))
        absent = [w for w in wanted if w not in present]
        if absent:
            raise RunDirError(f"--{column}s: {absent} not in {names} (it has "
                              f"{sorted(present)})")
        frame = frame[frame[column].astype(type(wanted[0])).isin(wanted)]
        if link_table is not None and column in link_table.columns:
            link_table = link_table[link_table[column].astype(type(wanted[0])).isin(wanted)]
    if frame.empty:
        raise RunDirError(f"no scores left in {names} after the selection")
    frame = frame.reset_index(drop=True)
    if link_table is not None:
        link_table = link_table.reset_index(drop=True)
    return _decide(frame, model_infos_from_scores(frame), link_table, alpha=alpha, seed=seed,
                   compare=compare)


def claims_table(report: ClaimsReport, title: str) -> Table:
    """One row per claim: verdict and the evidence in one line."""
    rows = [[f"{v.claim_id}. {v.title}", v.status, v.summary] for v in report.verdicts]
    note = (f"Test {report.metric}; {report.runs} runs of {len(report.models)} models, paired "
            f"over folds × seeds; one-sided sign-flip permutation tests, Holm-adjusted within a "
            f"claim, α = {report.alpha}; 95 % BCa intervals; models chosen on validation.")
    return Table(title, ["claim", "verdict", "evidence"], rows, note=note,
                 text_columns=("claim", "verdict", "evidence"))


def claims_markdown(report: ClaimsReport, title: str, *, heading: str = "#",
                    results: bool = False) -> str:
    """The verdicts as Markdown: (with ``results``) the mean ± std test scores per model, the
    verdict table, each comparison, then the paired comparisons asked for (``--compare``).
    ``heading`` is the Markdown level of the title."""
    lines = [f"{heading} {title}", ""]
    if results and report.scores is not None:
        frame = report.scores
        table = results_table(summarise(frame), columns_of(frame), report.metric, "scores")
        lines += [table.to_markdown(), ""]
    lines.append(claims_table(report, title).to_markdown())
    for verdict in report.verdicts:
        if verdict.comparisons:
            lines.append(f"**Claim {verdict.claim_id}** — " + "; ".join(
                f"{c.label} ({c.column}): {c}" for c in verdict.comparisons))
            lines.append("")
    if report.comparisons:
        lines += ["**Paired comparisons**", "",
                  comparisons_table(report.comparisons, report.alpha, report.metric).to_markdown()]
    return "\n".join(lines)


def claims_figure(report: ClaimsReport, path: Path, title: str = "",
                  stamp: str | None = None) -> Path | None:
    """The evidence as a forest plot (:func:`~mmssl.analysis.figures.comparisons_figure`): each
    claim's comparisons under its verdict, then the paired comparisons asked for; ``None``
    when no claim could be tested and none was asked for. ``stamp`` is stored in the PNG."""
    groups = [(f"Claim {v.claim_id}, {v.title}: {v.status}", v.comparisons)
              for v in report.verdicts]
    groups.append(("Paired comparisons (two-sided)", report.comparisons))
    return comparisons_figure(groups, report.alpha, path, title=title, stamp=stamp)


def write_claims(sweep: SweepDir, report: ClaimsReport) -> tuple[Path, Path]:
    """``claims.json``, ``claims.md`` and (when anything was tested) the forest plot
    ``claims.png`` in the sweep directory, written atomically."""
    payload = {"metric": report.metric, "runs": report.runs, "models": report.models,
               "alpha": report.alpha, "claims": [asdict(v) for v in report.verdicts],
               "comparisons": [asdict(c) for c in report.comparisons]}
    io.write_json(sweep.claims_json, payload)
    title = f"The paper's claims on {sweep.root.name}"
    figure = claims_figure(report, sweep.claims_markdown.with_suffix(".png"), title)
    text = claims_markdown(report, title)
    if figure is not None:
        text += f"\n![The evidence: each comparison with its 95 % interval]({figure.name})\n"
    io.write_text(sweep.claims_markdown, text)
    return sweep.claims_json, sweep.claims_markdown
