"""``mmssl report DIR``: one self-contained HTML page (and the same as Markdown) for a run or a
sweep — results table, training curves, t-SNE of test representations, probe scores per fold,
the claims, and for neuroimaging runs the saliency and link figures.

The HTML embeds every figure as a data URI, so the page is a single file to send or archive;
the Markdown references the PNGs beside it. Only files inside the run or sweep directory are
ever read or embedded (a path recorded in ``saliency.json`` or ``links.json`` that points
elsewhere is skipped), and every text that reaches the page — in HTML or in Markdown — is
escaped.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmssl import io
from mmssl.analysis.aggregate import columns_of, headline_metric, summarise
from mmssl.analysis.figures import fold_scores, training_curves, tsne_figure
from mmssl.analysis.records import load_records, scores_frame
from mmssl.analysis.tables import Table, metrics_table, results_table
from mmssl.errors import RunDirError
from mmssl.runs.evaluation import read_features, read_presence
from mmssl.runs.rundir import RunDir, SweepDir

__all__ = ["Section", "build_report", "render"]


@dataclass
class Section:
    """A titled block of text, tables, a configuration listing and figures."""

    title: str
    text: str = ""
    tables: list[Table] = field(default_factory=list)
    code: str = ""
    figures: list[tuple[Path, str]] = field(default_factory=list)  # (png, caption)


def _md(text: str) -> str:
    """Markdown-safe text: HTML escaped (a Markdown renderer would otherwise pass it on)."""
    return html.escape(text, quote=False)


def _recorded_figures(root: Path, recorded: Any) -> list[tuple[Path, str]]:
    """The PNGs a summary JSON lists, kept only when they stay inside ``root``."""
    figures = []
    for entry in recorded if isinstance(recorded, list) else []:
        path = io.contained(root, str(entry))
        if path is not None and path.is_file() and path.suffix == ".png":
            figures.append((path, path.stem.replace("_", " ")))
    return figures


def _regions_table(report: dict[str, Any]) -> Table:
    """Per modality: FWE-significant voxels, clusters, on a simulated cohort how the t map
    localises the planted effect beside the model-free reference, and how closely a learned
    map's |t| follows the inputs' own test."""
    rows = []
    for modality, entry in report.get("modalities", {}).items():
        auc = entry.get("localisation_auc", {}).get("t")
        reference = entry.get("input_localisation_auc")
        follows = entry.get("input_abs_t_correlation")
        rows.append([modality, str(entry.get("significant_voxels")), str(entry.get("clusters")),
                     "–" if auc is None else f"{auc:.3f}",
                     "–" if reference is None else f"{reference:.3f}",
                     "–" if follows is None else f"{follows:.2f}"])
    return Table(f"{report.get('method')} maps, FWE p < {report.get('alpha')}, "
                 f"{report.get('permutations')} permutations, smoothing "
                 f"{report.get('smooth_fwhm_mm', 0)} mm",
                 ["modality", "significant voxels", "clusters", "localisation AUC",
                  "inputs' localisation AUC", "r(|t|, inputs' |t|)"], rows)


def _audit_table(report: dict[str, Any]) -> Table:
    """One row per modality × variable × source of ``mmssl audit``: score beside chance."""
    rows = [[str(r["modality"]), str(r["variable"]), str(r["source"]), str(r["metric"]),
             f"{r['score']:.3f}", f"{r['chance']:.2f}"] for r in report.get("table", [])]
    return Table("Cross-validated linear decoding",
                 ["modality", "variable", "from", "metric", "score", "chance"], rows,
                 text_columns=("variable", "from", "metric"))


def _objective_table(objective: dict[str, Any]) -> Table:
    """The audit's pretraining-loss check: unaugmented losses beside the logged ones."""
    names = (("train_unaugmented", "training subjects, unaugmented (eval mode)"),
             ("val_unaugmented", "validation subjects, unaugmented (eval mode)"),
             ("train_logged_final", "final logged training loss (augmented batches)"),
             ("val_logged_first", "first logged validation loss (untrained, ≈ chance)"),
             ("shortcut_gap", "shortcut gap: unaugmented − logged training"),
             ("generalisation_gap", "generalisation gap: validation − training subjects"))
    rows = [[label, f"{objective[key]:.3f}"] for key, label in names if key in objective]
    return Table("Pretraining objective", ["loss", "value"], rows, text_columns=("loss",))


def run_sections(run: RunDir) -> list[Section]:
    """Sections for one run directory."""
    sections: list[Section] = []
    summary = Section("Run", text=f"Run directory {run.root}.")
    if run.pretrained():
        done = run.read_pretrain_record()
        summary.text += (f" Pretrained {done.get('epochs')} epochs, {done.get('global_step')} "
                         f"steps in {done.get('seconds')} s on {done.get('device')}.")
    if run.config.is_file():
        summary.code = run.config.read_text()
    sections.append(summary)
    if run.evaluated():
        sections.append(Section("Linear probe on frozen encoders",
                                text="Logistic regression, regularisation chosen on validation.",
                                tables=[metrics_table(run.read_metrics(), "Linear probe")]))
    if run.curves.is_file():
        curves = training_curves(pd.read_csv(run.curves), run.report_figures / "curves.png")
        if curves:
            sections.append(Section("Training", figures=[(curves, "Training curves")]))
    if run.features.is_file():
        features, labels = read_features(run.features)
        if "test" in features and "test" in labels:
            presence = read_presence(run.features)["test"]
            complete = np.all(list(presence.values()), axis=0)  # sessions with every modality
            tsne = tsne_figure({m: v[complete] for m, v in features["test"].items()},
                               labels["test"][complete], run.report_figures / "tsne.png")
            if tsne:
                sections.append(Section("Test representations", figures=[
                    (tsne, "t-SNE of test representations by label")]))
    for summary_path, title in ((run.saliency_summary, "Saliency maps"),
                                (run.regions_summary, "Brain regions: patients vs controls"),
                                (run.links_summary, "Multimodal links"),
                                (run.audit_summary, "What the representation encodes")):
        if not summary_path.is_file():
            continue
        report = run.read_json(summary_path)
        section = Section(title, figures=_recorded_figures(run.root, report.get("figures")))
        if summary_path == run.regions_summary:
            section.tables.append(_regions_table(report))
        if summary_path == run.audit_summary:
            section.tables.append(_audit_table(report))
            if report.get("objective"):
                section.tables.append(_objective_table(report["objective"]))
        if summary_path == run.links_summary:
            rows = [[str(k + 1), f"{a:.3f}", f"{b:.3f}", f"{p:.3f}"] for k, (a, b, p) in
                    enumerate(zip(report["train_correlations"], report["test_correlations"],
                                  report["p_values"], strict=True))]
            section.tables.append(Table("Canonical correlations",
                                        ["component", "train r", "test r", "p"], rows))
        sections.append(section)
    if run.generations.is_file():
        sections.append(Section("Generations", figures=[(run.generations,
                                                         "Inputs and generations")]))
    return sections


def sweep_sections(sweep: SweepDir) -> list[Section]:
    """Sections for a sweep directory."""
    scores = scores_frame(load_records(sweep))
    summary = summarise(scores)
    metric, columns = headline_metric(scores), columns_of(scores)
    results = Section("Results", text=f"Sweep directory {sweep.root}.",
                      tables=[results_table(summary, columns, metric, "Results")])
    if sweep.figure.is_file():
        results.figures.append((sweep.figure, "Test score per model"))
    sections = [results]
    if sweep.mode_effects_figure.is_file():
        sections.append(Section("Composition of objectives", figures=[
            (sweep.mode_effects_figure, "Change of the test score when a mode is added")]))
    scatter = fold_scores(scores, metric, sweep.fold_figure)
    if scatter:
        sections.append(Section("Folds and seeds", figures=[(scatter, "Every run's score")]))
    if sweep.claims_json.is_file():
        claims = RunDir(sweep.root).read_json(sweep.claims_json)
        rows = [[f"{c['claim_id']}. {c['title']}", c["status"], c["summary"]]
                for c in claims.get("claims", [])]
        sections.append(Section("The paper's claims", text="From `mmssl claims`.", tables=[
            Table("Claims", ["claim", "verdict", "evidence"], rows,
                  text_columns=("claim", "verdict", "evidence"))]))
    return sections


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}th,td{border:1px solid #ccc;
padding:3px 8px;text-align:right}th:first-child,td:first-child{text-align:left}
figure{margin:1em 0}img{max-width:100%}figcaption{font-size:0.85em;color:#555}
pre{background:#f6f6f6;padding:0.8em;font-size:0.8em;overflow:auto}"""

# Marks the page once every image has decoded, so a headless browser can check the figures.
_CHECK = """<script>window.addEventListener('load',()=>{const i=[...document.images];
document.body.dataset.imagesTotal=i.length;
document.body.dataset.imagesLoaded=i.filter(x=>x.complete&&x.naturalWidth>0).length;});
</script>"""


def render(sections: list[Section], title: str, root: Path, html_path: Path,
           markdown_path: Path) -> tuple[Path, Path]:
    """Write the HTML page (self-contained) and the Markdown, embedding files under ``root``."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    markdown = [f"# {_md(title)}", ""]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        markdown += [f"## {_md(section.title)}", ""]
        if section.text:
            parts.append(f"<p>{html.escape(section.text)}</p>")
            markdown += [_md(section.text), ""]
        for table in section.tables:
            parts.append(table.to_html())
            markdown += [table.to_markdown(), ""]
        if section.code:
            parts.append("<details><summary>resolved configuration</summary><pre>"
                         f"{html.escape(section.code)}</pre></details>")
            fence = "~~~~"
            markdown += [fence + "yaml", section.code.replace(fence, "~ ~ ~ ~").rstrip(), fence,
                         ""]
        for png, caption in section.figures:
            inside = io.contained(root, Path(png).resolve())  # figures are found from here
            if inside is None:
                continue
            data = base64.b64encode(inside.read_bytes()).decode()
            parts.append(f"<figure><img alt='{html.escape(caption)}' "
                         f"src='data:image/png;base64,{data}'><figcaption>"
                         f"{html.escape(caption)}</figcaption></figure>")
            markdown += [f"![{_md(caption)}]({io.relative_path(inside, root)})", ""]
    parts.append(_CHECK + "</body></html>")
    io.write_text(html_path, "\n".join(parts))
    io.write_text(markdown_path, "\n".join(markdown))
    return html_path, markdown_path


def build_report(directory: Path) -> tuple[Path, Path]:
    """The report of a run directory or a sweep directory."""
    root = Path(directory)
    sweep = SweepDir(root)
    if sweep.is_sweep():
        return render(sweep_sections(sweep), f"mmssl sweep: {root.resolve().name}", root,
                      sweep.report_html, sweep.report_markdown)
    run = RunDir(root)
    if run.is_run():
        return render(run_sections(run), f"mmssl run: {root.resolve().name}", root,
                      run.report_html, run.report_markdown)
    raise RunDirError(f"{root} is neither a run directory (config.yaml) nor a sweep "
                      "(sweep.json)")
