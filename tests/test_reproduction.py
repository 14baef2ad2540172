"""Generated blocks of REPRODUCTION.md: recomputed from committed results files, and checked.

The last test is the one that matters to a reader: every verdict and score table of the
committed ``REPRODUCTION.md`` equals what ``mmssl claims`` gives on the committed files under
``results/`` (so no number in it is typed by hand, and none goes stale).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mmssl.analysis.claims import check_sweep
from mmssl.analysis.figures import png_description
from mmssl.analysis.reproduction import block_stamp, parse_block_arguments, refresh_document
from mmssl.cli import main
from mmssl.errors import ConfigError
from mmssl.runs.rundir import SweepDir
from tests.test_claims import supportive_sweep

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A document folder with committed-style ``results/demo/{scores,links}.csv``."""
    root = tmp_path_factory.mktemp("doc")
    sweep = root / "sweep"
    supportive_sweep(sweep)
    check_sweep(SweepDir(sweep), permutations=30)
    committed = root / "results" / "demo"
    committed.mkdir(parents=True)
    for name in ("scores.csv", "links.csv"):
        (committed / name).write_bytes((sweep / name).read_bytes())
    return root


BEGIN = ("<!-- BEGIN mmssl claims --scores results/demo/scores.csv "
         '--links results/demo/links.csv --title "Demo sweep" -->')
DOCUMENT = f"""# Reproduction

Prose written by people.

{BEGIN}
stale text
<!-- END mmssl claims -->

More prose.
"""


def test_refresh_fills_blocks_from_the_files_and_keeps_the_prose(results: Path) -> None:
    document = results / "REPRODUCTION.md"
    document.write_text(DOCUMENT)
    assert refresh_document(document, check=True) == ["Demo sweep"]
    assert document.read_text() == DOCUMENT  # check writes nothing
    assert refresh_document(document) == ["Demo sweep"]
    text = document.read_text()
    assert text.startswith("# Reproduction\n\nProse written by people.\n")
    assert text.endswith("<!-- END mmssl claims -->\n\nMore prose.\n")
    assert "stale text" not in text
    assert "#### Demo sweep" in text
    assert "| XX | " in text and " ± " in text  # the scores table
    assert "| 1. multimodal beats unimodal | supported |" in text
    assert "`results/demo/scores.csv`" in text
    assert refresh_document(document, check=True) == []  # now up to date


def test_a_changed_results_file_makes_the_block_stale(results: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    (copy / "results" / "demo").mkdir(parents=True)
    for name in ("scores.csv", "links.csv"):
        (copy / "results" / "demo" / name).write_bytes(
            (results / "results" / "demo" / name).read_bytes())
    document = copy / "REPRODUCTION.md"
    document.write_text(DOCUMENT)
    refresh_document(document)
    scores = copy / "results" / "demo" / "scores.csv"
    lines = scores.read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if ",test," in line)
    cells = lines[row].split(",")
    cells[7] = f"{float(cells[7]) + 0.05:.6f}"  # one test score edited by hand
    lines[row] = ",".join(cells)
    scores.write_text("\n".join(lines) + "\n")
    assert refresh_document(document, check=True) == ["Demo sweep"]


def test_command_line_refresh_and_check(results: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(results)
    Path("CHECK.md").write_text(DOCUMENT)
    assert main(["claims", "--check", "CHECK.md"]) == 1
    assert "mmssl claims --refresh CHECK.md" in " ".join(capsys.readouterr().out.split())
    assert main(["claims", "--refresh", "CHECK.md"]) == 0
    assert main(["claims", "--check", "CHECK.md"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_a_figure_drawn_for_other_text_is_stale(results: Path, tmp_path: Path) -> None:
    """Editing a block's title by hand in the marker and the heading alike leaves the text up to
    date but the figure not: its stamp names the old text, so check says so and refresh redraws."""
    copy = tmp_path / "copy"
    (copy / "results").mkdir(parents=True)
    (copy / "results" / "demo").symlink_to(results / "results" / "demo")
    document = copy / "REPRODUCTION.md"
    document.write_text(DOCUMENT.replace('--title "Demo sweep"',
                                         '--title "Demo sweep" --figure results/claims.png'))
    assert refresh_document(document) == ["Demo sweep"]
    figure = copy / "results" / "claims.png"
    first = png_description(figure)
    body = document.read_text().split(" -->\n", 1)[1].split("<!-- END", 1)[0]
    assert first == block_stamp(body)
    assert refresh_document(document, check=True) == []
    document.write_text(document.read_text().replace("Demo sweep", "Demo sweep, renamed"))
    assert refresh_document(document, check=True) == ["Demo sweep, renamed"]
    assert png_description(figure) == first  # check wrote nothing
    assert refresh_document(document) == ["Demo sweep, renamed"]
    assert png_description(figure) not in (None, first)
    assert refresh_document(document, check=True) == []
    figure.write_bytes(b"not a png")  # a damaged figure is stale as well
    assert refresh_document(document, check=True) == ["Demo sweep, renamed"]
    figure.unlink()
    assert refresh_document(document, check=True) == ["Demo sweep, renamed"]


@pytest.mark.parametrize(("arguments", "message"), [
    ("--links x.csv", "needs at least one --scores"),
    ("--scores", "--scores needs a value"),
    ("--scores a.csv --alpha high", "--alpha expects a number"),
    ("--scores a.csv --bogus 1", "unknown argument '--bogus'"),
    ("--scores 'a.csv", "cannot parse"),
])
def test_bad_block_arguments_are_named(arguments: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_block_arguments(arguments, "DOC.md, generated block 1")


def test_unbalanced_or_missing_blocks_are_errors(tmp_path: Path) -> None:
    document = tmp_path / "D.md"
    document.write_text("<!-- BEGIN mmssl claims --scores a.csv -->\nno end\n")
    with pytest.raises(ConfigError, match="needs its"):
        refresh_document(document)
    document.write_text("just prose\n")
    with pytest.raises(ConfigError, match="no generated block"):
        refresh_document(document)



def test_models_and_seeds_select_part_of_the_files(results: Path, tmp_path: Path) -> None:
    """Deciding from a selection equals deciding from files that hold only that selection."""
    import pandas as pd

    from mmssl.analysis.claims import claims_from_files, claims_markdown
    from mmssl.errors import RunDirError

    folder = results / "results" / "demo"
    keep = ["CR", "XX", "XX-RR", "dccae"]
    for name in ("scores.csv", "links.csv"):
        table = pd.read_csv(folder / name)
        table[table["model"].isin(keep) & (table["seed"] == 2)].to_csv(tmp_path / name,
                                                                        index=False)
    selected = claims_from_files([folder / "scores.csv"], [folder / "links.csv"],
                                 models=keep, seeds=[2])
    prefiltered = claims_from_files([tmp_path / "scores.csv"], [tmp_path / "links.csv"])
    assert claims_markdown(selected, "t") == claims_markdown(prefiltered, "t")
    assert selected.runs == prefiltered.runs == 4 * 5  # 4 models × 5 folds of seed 2
    everything = claims_from_files([folder / "scores.csv"], [folder / "links.csv"])
    assert claims_markdown(everything, "t") != claims_markdown(selected, "t")
    with pytest.raises(RunDirError, match=r"--models: \['VAE'\] not in"):
        claims_from_files([folder / "scores.csv"], models=["CR", "VAE"])
    with pytest.raises(RunDirError, match=r"--seeds: \[7\] not in"):
        claims_from_files([folder / "scores.csv"], seeds=[7])
    spec = parse_block_arguments("--scores a.csv --models CR,XX --seeds 1,2", "DOC.md")
    assert spec.models == ("CR", "XX") and spec.seeds == (1, 2)
    with pytest.raises(ConfigError, match="--seeds expects integers"):
        parse_block_arguments("--scores a.csv --seeds one", "DOC.md")


def test_command_line_selection_needs_scores_files(results: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(results)
    assert main(["claims", "--scores", "results/demo/scores.csv", "--models", "CR,XX",
                 "--seeds", "1", "--markdown", "part.md"]) == 0
    part = Path("part.md").read_text()
    assert "XX − CR" in part and "n=5" in part and "n=10" not in part  # seed 1's 5 folds
    capsys.readouterr()
    assert main(["claims", "sweep", "--models", "CR"]) != 0
    said = capsys.readouterr()
    assert "give --scores FILE" in " ".join((said.out + said.err).split())


def test_committed_reproduction_equals_its_committed_results() -> None:
    """Every table and verdict of REPRODUCTION.md is what the committed results files give."""
    document = ROOT / "REPRODUCTION.md"
    assert refresh_document(document, check=True) == [], (
        "REPRODUCTION.md is stale: run `mmssl claims --refresh REPRODUCTION.md`")
