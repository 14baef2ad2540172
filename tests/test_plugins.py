"""A new method and a new dataset are one module each: the worked examples of CONTRIBUTING.md
(``examples/plugins``) register themselves and run end to end through the command line,
without any other file changing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "plugins"


def mmssl(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "mmssl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(EXAMPLES),
           "MMSSL_PLUGINS": "toy_method,toy_dataset"}
    return subprocess.run([str(script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_a_plugin_method_and_dataset_train_and_evaluate(tmp_path: Path) -> None:
    listed = mmssl(tmp_path, "list")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "toy_ntxent" in listed.stdout and "stripes" in listed.stdout
    done = mmssl(tmp_path, "run", "--dataset", "stripes", "--method", "toy_ntxent",
                 "--set", "toy_ntxent.temperature=0.2", "--set", "data.stripes.per_class=16",
                 "--epochs", "2", "--batch-size", "16", "--set", "model.width=8",
                 "--set", "trainer.progress_bar=false", "--set", "probe.Cs=[1.0]",
                 "--out", "runs/toy")
    assert done.returncode == 0, done.stdout + done.stderr
    run = tmp_path / "runs" / "toy"
    config = (run / "config.yaml").read_text()
    assert "toy_ntxent:\n  temperature: 0.2" in config and "stripes:" in config
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["test"]) == {"left", "right", "joint"}
    assert metrics["test"]["joint"]["accuracy"] > 0.5  # four classes: chance is 0.25
    bad = mmssl(tmp_path, "run", "--dataset", "stripes", "--method", "toy_ntxent",
                "--set", "toy_ntxent.temperature=0", "--out", "runs/bad")
    assert bad.returncode == 2 and "toy_ntxent.temperature: must be positive" in bad.stdout


def test_a_broken_plugin_is_named(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "mmssl"
    env = {**os.environ, "MMSSL_PLUGINS": "no_such_plugin_module"}
    done = subprocess.run([str(script), "list"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2
    assert "plugin 'no_such_plugin_module'" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
