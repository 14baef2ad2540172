"""One table type, rendered to the terminal (rich), CSV, Markdown and HTML.

Results are built once as a :class:`Table` of rows of data; every output — the console, the
``.csv`` and ``.md`` files, the HTML report — renders that same object. Nothing parses a
rendered table back.
"""

from __future__ import annotations

import csv
import html
import io as _io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

__all__ = ["Table", "metrics_table", "results_table", "summary_csv"]


@dataclass
class Table:
    """A titled table: column names, rows of cells (already formatted text), and a note."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""
    #: columns aligned left (text); the others are right-aligned (numbers)
    text_columns: tuple[str, ...] = ()

    def _left(self, column: str) -> bool:
        return column in self.text_columns or column == self.columns[0]

    def to_markdown(self) -> str:
        """A GitHub Markdown table (pipes and HTML in cells escaped), the note above it."""
        def cell(text: str) -> str:
            return html.escape(str(text), quote=False).replace("|", "\\|")

        lines = [cell(self.note), ""] if self.note else []
        lines.append("| " + " | ".join(cell(c) for c in self.columns) + " |")
        lines.append("|" + "".join("---|" if self._left(c) else "---:|" for c in self.columns))
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        buffer = _io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.columns)
        writer.writerows(self.rows)
        return buffer.getvalue()

    def to_html(self) -> str:
        """An HTML table, every cell escaped, the note in a paragraph before it."""
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row)
                       + "</tr>" for row in self.rows)
        note = f"<p>{html.escape(self.note)}</p>" if self.note else ""
        return f"{note}<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def to_rich(self) -> Any:
        """A :class:`rich.table.Table` for the console."""
        from rich.table import Table as RichTable

        table = RichTable(title=self.title, caption=self.note or None)
        for column in self.columns:
            table.add_column(column, justify="left" if self._left(column) else "right")
        for row in self.rows:
            table.add_row(*[str(v) for v in row])
        return table


def metrics_table(metrics: Mapping[str, Mapping[str, Mapping[str, float]]], title: str) -> Table:
    """split × representation rows of every metric of a run's ``metrics.json``."""
    splits = {split: per for split, per in metrics.items() if split in ("val", "test")}
    names = sorted({k for per in splits.values() for m in per.values() for k in m})
    rows = []
    for split, per in splits.items():
        for modality, values in per.items():
            rows.append([split, modality, *[f"{values[n]:.4f}" if n in values else "–"
                                            for n in names]])
    return Table(title, ["split", "representation", *names], rows,
                 text_columns=("split", "representation"))


def results_table(summary: pd.DataFrame, columns: Sequence[str], metric: str,
                  title: str) -> Table:
    """Test ``metric`` (mean ± std over runs) per model and representation column; when the
    models ran different numbers of runs, a ``runs`` column says how many each had."""
    test = summary[(summary["split"] == "test") & (summary["metric"] == metric)]
    counts = sorted(set(test["n"].astype(int))) if len(test) else [0]
    runs = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
    per_model = len(counts) > 1
    rows = []
    for model in dict.fromkeys(test["model"]):
        cells = [model]
        if per_model:
            cells.append(str(int(test[test["model"] == model]["n"].max())))
        for column in columns:
            hit = test[(test["model"] == model) & (test["modality"] == column)]
            if hit.empty:
                cells.append("–")
                continue
            first = hit.iloc[0]
            cells.append(f"{first['mean']:.4f}"
                         + (f" ± {first['std']:.4f}" if int(first["n"]) > 1 else ""))
        rows.append(cells)
    note = (f"Test {metric} of a logistic-regression probe on frozen encoders (regularisation "
            f"chosen on validation); mean ± std over {runs} run(s) (folds × seeds).")
    return Table(title, ["model", *(["runs"] if per_model else []), *columns], rows, note=note)


def summary_csv(summary: pd.DataFrame) -> str:
    """The long aggregated table: model, split, modality, metric, mean, std, n."""
    return summary.to_csv(index=False, float_format="%.6f", lineterminator="\n")
