"""Reports: one self-contained HTML page per run or sweep, rendered in headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from mmssl.cli import main

TINY = ["--epochs", "1", "--batch-size", "16", "--accelerator", "cpu",
        "--set", "model.width=8", "--set", "model.latent_dim=16", "--set", "model.head_dim=16",
        "--set", "probe.Cs=[1.0]", "--set", "trainer.progress_bar=false"]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have Debian's chromium (.ci/run installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


def rendered_image_counts(html_file, tmp_path) -> tuple[int, int]:
    """Load the page in headless Chromium; the page marks how many images decoded."""
    dom = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'chromium'}", "--dump-dom",
         html_file.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    total = re.search(r'data-images-total="(\d+)"', dom)
    loaded = re.search(r'data-images-loaded="(\d+)"', dom)
    assert total and loaded, dom[:500]
    return int(loaded.group(1)), int(total.group(1))


def test_run_report_renders_with_every_figure(tiny_mnist_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--objective", "XX", "--data-dir", str(tiny_mnist_dir), "--out",
                 str(out), *TINY]) == 0
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "Linear probe on frozen encoders" in page and "t-SNE" in page
    assert page.count("data:image/png;base64,") == 2  # curves and t-SNE, embedded
    markdown = (out / "report.md").read_text()
    assert "![Training curves](report_figures/curves.png)" in markdown
    loaded, total = rendered_image_counts(out / "report.html", tmp_path)
    assert loaded == total == 2


def test_sweep_report_renders_with_every_figure(tiny_mnist_dir, tmp_path):
    out = tmp_path / "sweep"
    assert main(["sweep", "--objectives", "CR,XX,CR-XX", "--data-dir", str(tiny_mnist_dir),
                 "--out", str(out), *TINY]) == 0
    assert main(["claims", str(out), "--permutations", "10"]) == 0
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    for heading in ("Results", "Composition of objectives", "Folds and seeds",
                    "The paper&#x27;s claims", "multimodal beats unimodal"):
        assert heading in page
    loaded, total = rendered_image_counts(out / "report.html", tmp_path)
    assert loaded == total == 3  # scores, mode effects, per-run scores


def test_report_refuses_other_directories(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "neither a run directory" in " ".join(capsys.readouterr().out.split())
