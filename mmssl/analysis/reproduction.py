"""Generated blocks of a Markdown document: verdicts that can be traced to committed files.

``REPRODUCTION.md`` is prose written by people around tables written by :mod:`mmssl`. Every
table of scores and verdicts sits in a *generated block*::

    <!-- BEGIN mmssl claims --scores results/mnist/scores.csv --links results/mnist/links.csv -->
    ... (written by `mmssl claims --refresh REPRODUCTION.md`; never edited by hand)
    <!-- END mmssl claims -->

The arguments after ``BEGIN mmssl claims`` are those of ``mmssl claims`` (``--scores`` and
``--links`` repeatable, ``--alpha``, ``--title``, ``--models``/``--seeds``, comma-separated,
to decide from part of the files, ``--compare A:B``, repeatable, for paired comparisons
beside the claims, and ``--figure PNG`` for a forest plot of the evidence, which the block then
shows), with paths relative to the document's folder.
:func:`refresh_document` recomputes every block from the files it names
(:func:`~mmssl.analysis.claims.claims_from_files`: the mean ± std test scores per model, the
verdicts with p-values, intervals and the number of paired runs) and rewrites the document
atomically; with ``check`` it rewrites nothing and returns the blocks whose text differs, which
is how a test keeps the committed verdicts equal to what the committed results give. A block's
figure carries a stamp of the text it was drawn with (:func:`block_stamp`, in the PNG's
``Description``), so a figure left behind by an edit — a title changed by hand in the marker
and the heading alike, say — is stale too.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from mmssl import io
from mmssl.analysis.claims import ClaimsReport, claims_figure, claims_from_files, claims_markdown
from mmssl.analysis.comparisons import ModelPair, parse_pairs
from mmssl.analysis.figures import png_description
from mmssl.errors import ConfigError, RunDirError

__all__ = ["BLOCK", "BlockSpec", "block_stamp", "parse_block_arguments", "refresh_document"]

#: A generated block: its arguments, its body and the closing marker.
BLOCK = re.compile(r"(?P<open><!-- BEGIN mmssl claims (?P<args>[^\n]*?) -->\n)"
                   r"(?P<body>.*?)(?P<close><!-- END mmssl claims -->)", re.S)


@dataclass(frozen=True)
class BlockSpec:
    """What one generated block is computed from (paths relative to the document)."""

    scores: tuple[str, ...]
    links: tuple[str, ...] = ()
    alpha: float = 0.05
    title: str = "The paper's claims"
    models: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()
    compare: tuple[ModelPair, ...] = ()
    figure: str | None = None


def parse_block_arguments(text: str, where: str) -> BlockSpec:
    """The :class:`BlockSpec` of a block's argument string (``mmssl claims`` flags).

    Raises:
        ConfigError: an unknown flag, a flag without its value, or no ``--scores``, naming
            ``where`` (the document and block number).
    """
    try:
        words = shlex.split(text)
    except ValueError as error:
        raise ConfigError(f"{where}: cannot parse the block's arguments {text!r}: {error}") \
            from None
    scores: list[str] = []
    links: list[str] = []
    alpha, title = 0.05, BlockSpec.title
    models: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()
    compare: list[str] = []
    figure: str | None = None
    position = 0
    while position < len(words):
        flag = words[position]
        if flag not in ("--scores", "--links", "--alpha", "--title", "--models", "--seeds",
                        "--compare", "--figure"):
            raise ConfigError(f"{where}: unknown argument {flag!r}; a generated block takes "
                              "--scores FILE (repeatable), --links FILE, --alpha A, --title T, "
                              "--models M1,M2, --seeds S1,S2, --compare A:B (repeatable), "
                              "--figure PNG")
        if position + 1 >= len(words):
            raise ConfigError(f"{where}: {flag} needs a value")
        value = words[position + 1]
        if flag == "--scores":
            scores.append(value)
        elif flag == "--links":
            links.append(value)
        elif flag == "--title":
            title = value
        elif flag == "--compare":
            compare.append(value)
        elif flag == "--figure":
            if not value.lower().endswith(".png"):
                raise ConfigError(f"{where}: --figure names a PNG file; got {value!r}")
            figure = value
        elif flag == "--models":
            models = tuple(m.strip() for m in value.split(",") if m.strip())
        elif flag == "--seeds":
            try:
                seeds = tuple(int(v) for v in value.split(",") if v.strip())
            except ValueError:
                raise ConfigError(f"{where}: --seeds expects integers like 1,2,3, got "
                                  f"{value!r}") from None
        else:
            try:
                alpha = float(value)
            except ValueError:
                raise ConfigError(f"{where}: --alpha expects a number, got {value!r}") from None
        position += 2
    if not scores:
        raise ConfigError(f"{where}: a generated block needs at least one --scores FILE")
    try:
        pairs = parse_pairs(compare)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    return BlockSpec(tuple(scores), tuple(links), alpha, title, models, seeds, pairs, figure)


def _draw_figure(spec: BlockSpec, base: Path, report: ClaimsReport, stamp: str) -> None:
    """The block's forest plot at ``spec.figure`` (if it names one), stamped with its text."""
    if spec.figure is not None:
        claims_figure(report, base / spec.figure, spec.title, stamp=stamp)


def block_stamp(body: str) -> str:
    """What a block's figure records of the text it was drawn with: ``mmssl claims`` and the
    first 16 hex digits of the SHA-256 of the block's body (title, numbers, verdicts)."""
    return f"mmssl claims {hashlib.sha256(body.encode()).hexdigest()[:16]}"


def _render(spec: BlockSpec, base: Path) -> tuple[str, ClaimsReport]:
    """The body of a block and the report it shows (the figure is drawn by the caller)."""
    report = claims_from_files([base / p for p in spec.scores], [base / p for p in spec.links],
                               alpha=spec.alpha, models=spec.models, seeds=spec.seeds,
                               compare=spec.compare)
    sources = ", ".join(f"`{p}`" for p in (*spec.scores, *spec.links))
    text = claims_markdown(report, spec.title, heading="####", results=True)
    if spec.figure is not None:
        text = (f"{text.rstrip()}\n\n![{spec.title}: each comparison with its 95 % interval, "
                f"filled where significant after Holm]({spec.figure})")
    return f"{text.rstrip()}\n\nComputed by `mmssl claims` from {sources}.\n", report


def refresh_document(path: Path, *, check: bool = False) -> list[str]:
    """Recompute every generated block of ``path``; the titles of the blocks that changed.

    With ``check`` nothing is written; a block whose ``--figure`` file is missing, or was drawn
    for other text (its stamp, :func:`block_stamp`, differs), counts as changed. A refresh
    redraws a block's figure only then or when its text changed (PNG bytes can differ between
    matplotlib versions, so the bytes themselves are not compared).
    Raises :class:`ConfigError` when the document has no block, or a ``BEGIN`` marker without
    its ``END``.
    """
    text = Path(path).read_text()
    if text.count("<!-- BEGIN mmssl claims") != text.count("<!-- END mmssl claims -->"):
        raise ConfigError(f"{path}: every '<!-- BEGIN mmssl claims … -->' needs its "
                          "'<!-- END mmssl claims -->'")
    blocks = list(BLOCK.finditer(text))
    if not blocks:
        raise ConfigError(f"{path} has no generated block ('<!-- BEGIN mmssl claims "
                          "--scores FILE -->' … '<!-- END mmssl claims -->')")
    changed: list[str] = []
    pieces: list[str] = []
    last = 0
    base = Path(path).parent
    for number, block in enumerate(blocks, start=1):
        where = f"{path}, generated block {number}"
        spec = parse_block_arguments(block["args"], where)
        try:
            body, report = _render(spec, base)
        except (ConfigError, RunDirError) as error:   # e.g. a model or file it names is absent
            raise type(error)(f"{where} ({spec.title!r}): {error}") from None
        stamp = block_stamp(body)
        stale_figure = (spec.figure is not None
                        and png_description(base / spec.figure) != stamp)
        if body != block["body"] or stale_figure:
            changed.append(spec.title)
            if not check:
                _draw_figure(spec, base, report, stamp)
        pieces += [text[last:block.start()], block["open"], body, block["close"]]
        last = block.end()
    pieces.append(text[last:])
    if changed and not check:
        io.write_text(Path(path), "".join(pieces))
    return changed
