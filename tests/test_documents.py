"""The project's documents point at things that exist: every relative link and image of the
Markdown files resolves to a file of the repository, every ``#anchor`` to a heading of the
document it names, and every section of BRAIN.md that code, tests and results cite by its
quoted title is a heading there — so moving or renaming a section cannot leave a reader
at a dead end."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "BRAIN.md", "REPRODUCTION.md", "CONTRIBUTING.md",
             "results/README.md", "benchmarks/README.md")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE_BLOCK = re.compile(r"^```.*?^```", flags=re.M | re.S)
CITATION = re.compile(r'BRAIN\.md,\s+\\?"([^"\\]+)')  # also inside a Python string


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def headings(path: Path) -> list[str]:
    text = CODE_BLOCK.sub("", path.read_text(encoding="utf-8"))
    return [m.group(1) for m in re.finditer(r"^#{1,6} (.+)$", text, flags=re.M)]


def links(path: Path) -> list[str]:
    text = CODE_BLOCK.sub("", path.read_text(encoding="utf-8"))
    return [m.group(1) for m in LINK.finditer(text)]


def test_slug_follows_github() -> None:
    assert slug("What sets a learned map's score — four cohorts, and 600 subjects") == \
        "what-sets-a-learned-maps-score--four-cohorts-and-600-subjects"
    assert slug("Does `links` keep its error rate when nothing is linked?") == \
        "does-links-keep-its-error-rate-when-nothing-is-linked"
    assert slug("At 64³ on a GPU") == "at-64³-on-a-gpu"


@pytest.mark.parametrize("document", DOCUMENTS)
def test_relative_links_and_anchors_resolve(document: str) -> None:
    source = ROOT / document
    broken = []
    for target in links(source):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        path = (source.parent / path_part).resolve() if path_part else source
        if not path.exists():
            broken.append(f"{target}: no such file")
            continue
        if anchor and path.suffix == ".md" and anchor not in {slug(h) for h in headings(path)}:
            broken.append(f"{target}: no heading with anchor #{anchor} in {path.name}")
    assert not broken, f"{document}: " + "; ".join(broken)


def test_sections_cited_by_name_are_headings_of_brain_md() -> None:
    titles = [" ".join(h.split()) for h in headings(ROOT / "BRAIN.md")]
    cited = {}
    for folder in ("mmssl", "tests", "benchmarks", "results"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix not in {".py", ".md"} or not path.is_file():
                continue
            for match in CITATION.finditer(path.read_text(encoding="utf-8")):
                cited[" ".join(match.group(1).split())] = path.relative_to(ROOT)
    assert cited, "no citation of BRAIN.md found: the pattern is out of date"
    missing = {name: str(where) for name, where in cited.items()
               if not any(title.startswith(name) for title in titles)}
    assert not missing, f"sections cited but not in BRAIN.md: {missing}"
