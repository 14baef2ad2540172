"""``mmssl report DIR``: one self-contained HTML page (and the same as Markdown) for a run or a
sweep — results table, training curves, t-SNE of test representations, probe scores per fold,
and for neuroimaging runs the saliency and link figures.

The HTML embeds every figure as a data URI, so the page is a single file to send or archive;
the Markdown references the PNGs written to ``report_figures/`` beside it.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmssl.config import save_figure, write_atomic


@dataclass
class Section:
    """A titled block of text, tables (markdown) and figures."""

    title: str
    text: str = ""
    tables: list[str] = field(default_factory=list)
    figures: list[tuple[Path, str]] = field(default_factory=list)  # (png, caption)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def metrics_markdown(metrics: dict[str, Any]) -> str:
    """split × representation table of every metric."""
    names = sorted({k for per in metrics.values() for m in per.values() for k in m})
    lines = ["| split | representation | " + " | ".join(names) + " |",
             "|---|---|" + "---:|" * len(names)]
    for split, per in metrics.items():
        for modality, values in per.items():
            cells = [f"{values[n]:.4f}" if n in values else "–" for n in names]
            lines.append(f"| {split} | {modality} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def training_curves(metrics_csv: Path, out: Path) -> Path | None:
    """Training loss per step and validation loss per epoch, from Lightning's CSV log."""
    import pandas as pd

    if not metrics_csv.exists():
        return None
    table = pd.read_csv(metrics_csv)
    if "train/loss" not in table:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.0, 3.4), dpi=110)
    train = table.dropna(subset=["train/loss"])
    ax.plot(train["step"], train["train/loss"], lw=1, label="train loss")
    if "val/loss" in table:
        val = table.dropna(subset=["val/loss"])
        ax.plot(val["step"], val["val/loss"], marker="o", ms=3, lw=1.5, label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Training curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out)


def tsne_figure(features: Path, out: Path, *, seed: int = 0, max_points: int = 2000) -> Path | None:
    """t-SNE of the test representations per modality (and jointly), coloured by label."""
    from sklearn.manifold import TSNE
    from sklearn.preprocessing import StandardScaler

    from mmssl.pipeline import read_features

    if not features.exists():
        return None
    split_features, split_labels = read_features(features)
    labels = split_labels.get("test")
    modalities = list(split_features.get("test", {}))
    if labels is None or not modalities:
        return None
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.permutation(len(labels))[:max_points])
    panels = {m: split_features["test"][m][keep] for m in modalities}
    if len(modalities) > 1:
        panels["joint"] = np.concatenate([panels[m] for m in modalities], axis=1)
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.5), dpi=110,
                             squeeze=False)
    perplexity = float(max(2, min(30, (len(keep) - 1) // 3)))
    for ax, (name, values) in zip(axes[0], panels.items(), strict=True):
        embedded = TSNE(n_components=2, perplexity=perplexity, random_state=seed,
                        init="pca").fit_transform(StandardScaler().fit_transform(values))
        scatter = ax.scatter(embedded[:, 0], embedded[:, 1], c=labels[keep], s=6,
                             cmap="tab10" if labels.max() > 1 else "coolwarm")
        ax.set_title(f"{name} (test)", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(scatter, ax=axes[0].tolist(), shrink=0.8, label="label")
    return save_figure(fig, out)


def fold_scores(runs_csv: Path, out: Path) -> Path | None:
    """Each run's test headline metric per model and representation (points = folds × seeds)."""
    import pandas as pd

    if not runs_csv.exists():
        return None
    table = pd.read_csv(runs_csv)
    test = table[table["split"] == "test"]
    metric = "roc_auc" if (test["metric"] == "roc_auc").any() else "accuracy"
    test = test[test["metric"] == metric]
    models = list(dict.fromkeys(test["model"]))
    modalities = list(dict.fromkeys(test["modality"]))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(models) + 2), 3.8), dpi=110)
    width = 0.8 / max(1, len(modalities))
    for k, modality in enumerate(modalities):
        for i, model in enumerate(models):
            values = test[(test["model"] == model) & (test["modality"] == modality)]["value"]
            x = i + (k - (len(modalities) - 1) / 2) * width
            ax.scatter(np.full(len(values), x), values, s=14,
                       color=f"C{k}", label=modality if i == 0 else None)
    ax.set_xticks(range(len(models)), models, rotation=20, ha="right")
    ax.set_ylabel(f"test {metric.replace('_', ' ')}")
    ax.set_title("Probe score of every fold and seed")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return save_figure(fig, out)


def run_sections(root: Path, figures: Path) -> list[Section]:
    """Sections for one run directory."""
    sections: list[Section] = []
    config = (root / "config.yaml").read_text() if (root / "config.yaml").exists() else ""
    summary = Section("Run", text=f"Run directory `{root}`.")
    if (root / "pretrain.json").exists():
        done = json.loads((root / "pretrain.json").read_text())
        summary.text += (f" Pretrained {done.get('epochs')} epochs, {done.get('global_step')} "
                         f"steps in {done.get('seconds')} s on {done.get('device')}.")
    summary.tables.append("```yaml\n" + config.strip() + "\n```")
    sections.append(summary)
    if (root / "metrics.json").exists():
        metrics = json.loads((root / "metrics.json").read_text())
        sections.append(Section("Linear probe on frozen encoders",
                                text="Logistic regression, regularisation chosen on validation.",
                                tables=[metrics_markdown(metrics)]))
    curves = training_curves(root / "metrics.csv", figures / "curves.png")
    if curves:
        sections.append(Section("Training", figures=[(curves, "Training curves")]))
    tsne = tsne_figure(root / "features.npz", figures / "tsne.png")
    if tsne:
        sections.append(Section("Test representations",
                                figures=[(tsne, "t-SNE of test representations by label")]))
    for name, title in (("saliency.json", "Saliency maps"), ("links.json", "Multimodal links")):
        if (root / name).exists():
            report = json.loads((root / name).read_text())
            section = Section(title, figures=[(Path(p), Path(p).stem.replace("_", " "))
                                              for p in report.get("figures", [])
                                              if Path(p).exists()])
            if name == "links.json":
                rows = zip(report["train_correlations"], report["test_correlations"],
                           report["p_values"], strict=True)
                section.tables.append(
                    "| component | train r | test r | p |\n|---:|---:|---:|---:|\n" + "\n".join(
                        f"| {k + 1} | {a:.3f} | {b:.3f} | {p:.3f} |"
                        for k, (a, b, p) in enumerate(rows)))
            sections.append(section)
    if (root / "generations.png").exists():
        sections.append(Section("Generations", figures=[(root / "generations.png",
                                                         "Inputs and generations")]))
    return sections


def sweep_sections(root: Path, figures: Path) -> list[Section]:
    """Sections for a sweep directory."""
    sections = [Section("Results", text=f"Sweep directory `{root}`.",
                        tables=[(root / "results.md").read_text().strip()],
                        figures=[(root / "accuracy.png", "Test score per model")])]
    if (root / "mode_effects.png").exists():
        sections.append(Section("Composition of objectives", figures=[
            (root / "mode_effects.png", "Change of the test score when a mode is added")]))
    scatter = fold_scores(root / "runs.csv", figures / "fold_scores.png")
    if scatter:
        sections.append(Section("Folds and seeds", figures=[(scatter, "Every run's score")]))
    if (root / "claims.md").exists():
        table = (root / "claims.md").read_text().split("\n", 2)[2].strip()
        sections.append(Section("The paper's claims", text="From `mmssl claims`.",
                                tables=[table]))
    return sections


def _markdown_table_to_html(table: str) -> str:
    if table.startswith("```"):
        body = table.strip("`").split("\n", 1)[1] if "\n" in table else ""
        return (f"<details><summary>resolved configuration</summary><pre>{html.escape(body)}"
                "</pre></details>")
    lines = [line for line in table.splitlines() if line.startswith("|")]
    if len(lines) < 2:
        return f"<p>{html.escape(table)}</p>"
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cells[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in cells[2:])
    intro = "".join(f"<p>{html.escape(line)}</p>" for line in table.splitlines()
                    if line.strip() and not line.startswith("|"))
    return f"{intro}<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


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


def render(sections: list[Section], title: str, out_dir: Path) -> tuple[Path, Path]:
    """Write ``report.html`` (self-contained) and ``report.md`` into ``out_dir``."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    markdown = [f"# {title}", ""]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        markdown += [f"## {section.title}", ""]
        if section.text:
            parts.append(f"<p>{html.escape(section.text)}</p>")
            markdown += [section.text, ""]
        for table in section.tables:
            parts.append(_markdown_table_to_html(table))
            markdown += [table, ""]
        for png, caption in section.figures:
            data = base64.b64encode(png.read_bytes()).decode()
            parts.append(f"<figure><img alt='{html.escape(caption)}' "
                         f"src='data:image/png;base64,{data}'><figcaption>"
                         f"{html.escape(caption)}</figcaption></figure>")
            relative = png.relative_to(out_dir) if png.is_relative_to(out_dir) else png
            markdown += [f"![{caption}]({relative})", ""]
    parts.append(_CHECK + "</body></html>")
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    write_atomic(html_path, "\n".join(parts))
    write_atomic(md_path, "\n".join(markdown))
    return html_path, md_path


def build_report(directory: Path) -> tuple[Path, Path]:
    """The report of a run directory or a sweep directory."""
    root = Path(directory)
    figures = root / "report_figures"
    if (root / "results.md").exists() and (root / "runs.csv").exists():
        return render(sweep_sections(root, figures), f"mmssl sweep: {root.name}", root)
    if (root / "config.yaml").exists():
        return render(run_sections(root, figures), f"mmssl run: {root.name}", root)
    raise FileNotFoundError(
        f"{root} is neither a run directory (config.yaml) nor a sweep (results.md, runs.csv)"
    )
