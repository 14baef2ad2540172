"""Faults injected for real — a kill in the middle of a checkpoint write, a full disk, a kill
between the last checkpoint and the completion marker, a diverging run, Ctrl-C — each ending
with the last good checkpoint intact and the run finishable."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from mmssl import io
from mmssl.cli import main
from mmssl.errors import DiskFullError, WriteError
from mmssl.runs.checkpoints import fit_progress, read_checkpoint

TINY = ["--preset", "quick", "--set", "model.width=8", "--set", "model.latent_dim=16",
        "--set", "model.head_dim=16", "--set", "probe.Cs=[1.0]", "--set",
        "trainer.progress_bar=false", "--batch-size", "16", "--accelerator", "cpu"]


def tiny_args(data_dir: Path, out: str, epochs: int = 2, objective: str = "RR") -> list[str]:
    return [*TINY, "--objective", objective, "--data-dir", str(data_dir), "--epochs",
            str(epochs), "--out", out]


# ------------------------------------------------------------------------------ atomic files


class _Boom(RuntimeError):
    pass


class Foreign:
    """A Python object a checkpoint must not smuggle in (unpickling would run its code)."""


def _half_then(failure: BaseException):  # noqa: ANN202 - a writer for atomic_write
    def write(handle) -> None:  # noqa: ANN001
        handle.write(b"x" * 1000)
        raise failure
    return write


@pytest.mark.parametrize("failure", [_Boom("killed"), OSError(errno.ENOSPC, "No space left"),
                                     KeyboardInterrupt()])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, failure):
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"the good one")
    expected = DiskFullError if isinstance(failure, OSError) else type(failure)
    with pytest.raises(expected) as caught:
        io.atomic_write(target, _half_then(failure), size_hint=5 << 20)
    assert target.read_bytes() == b"the good one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    if expected is DiskFullError:
        message = str(caught.value)
        assert "no space left" in message and "needs 5.0 MiB" in message and "free" in message


def test_written_files_take_the_umask_permissions(tmp_path):
    old = os.umask(0o002)
    try:
        path = io.write_text(tmp_path / "shared.json", "{}")
        assert path.stat().st_mode & 0o777 == 0o664  # mkstemp alone would give 0600
    finally:
        os.umask(old)
    old = os.umask(0o077)
    try:
        assert io.write_text(tmp_path / "private.json", "{}").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_a_folder_that_cannot_be_written_is_named(tmp_path, monkeypatch):
    in_the_way = tmp_path / "file"
    in_the_way.write_text("x")
    with pytest.raises(WriteError, match="cannot write .*file/out.json"):
        io.write_text(in_the_way / "out.json", "{}", hint="choose another --out")

    def read_only(*args, **kwargs):  # what a read-only mount answers, even to root
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(io.tempfile, "mkstemp", read_only)
    with pytest.raises(WriteError, match="read-only file system; set it elsewhere"):
        io.write_text(tmp_path / "x.json", "{}", hint="set it elsewhere")


# ------------------------------------------------------------------- checkpoints, for real

_KILLER = textwrap.dedent("""
    import os, signal, sys
    from mmssl import io
    from mmssl.cli import main

    real = io.atomic_write
    state = {"checkpoints": 0}

    def dying(path, write, **kwargs):
        if str(path).endswith("last.ckpt"):
            state["checkpoints"] += 1
            if state["checkpoints"] == int(os.environ["KILL_AT"]):
                # Write half of the bytes where the real writer would, then die by SIGKILL.
                import tempfile
                fd, name = tempfile.mkstemp(dir=os.path.dirname(path),
                                            prefix="." + os.path.basename(path) + ".",
                                            suffix=io.TEMPORARY_SUFFIX)
                os.write(fd, write[: len(write) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
        if str(path).endswith("pretrain.json") and os.environ.get("KILL_BEFORE_MARKER"):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path, write, **kwargs)

    io.atomic_write = dying
    sys.exit(main(sys.argv[1:]))
""")


def _run_killer(args: list[str], cwd: Path, **env: str) -> int:
    script = cwd / "killer.py"
    script.write_text(_KILLER)
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": "/dev/shm"
                   if Path("/dev/shm").is_dir() else os.environ.get("TMPDIR", "/tmp"), **env}
    done = subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=600)
    return done.returncode


def test_a_kill_during_a_checkpoint_write_keeps_the_last_good_one(tiny_mnist_dir, tmp_path,
                                                                  monkeypatch):
    """Killed (SIGKILL) half-way through writing epoch 2's checkpoint, with $TMPDIR on another
    file system: epoch 1's checkpoint is intact, and --resume finishes the run and cleans up."""
    args = ["pretrain", *tiny_args(tiny_mnist_dir, "runs/killed", epochs=3)]
    code = _run_killer(args, tmp_path, KILL_AT="2")
    assert code == -signal.SIGKILL
    run = tmp_path / "runs" / "killed"
    assert fit_progress(run / "checkpoints" / "last.ckpt") == (1, 10)
    stale = [p.name for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    assert stale  # the half-written temporary the kill left behind
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", "--resume", "--out", "runs/killed"]) == 0
    assert fit_progress(run / "checkpoints" / "last.ckpt")[0] == 3
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    assert json.loads((run / "pretrain.json").read_text())["epochs"] == 3


def test_a_kill_between_last_checkpoint_and_marker_finishes_with_resume(tiny_mnist_dir,
                                                                        tmp_path, monkeypatch):
    args = ["run", *tiny_args(tiny_mnist_dir, "runs/almost", epochs=1)]
    assert _run_killer(args, tmp_path, KILL_AT="0", KILL_BEFORE_MARKER="1") == -signal.SIGKILL
    run = tmp_path / "runs" / "almost"
    assert fit_progress(run / "checkpoints" / "last.ckpt")[0] == 1
    assert not (run / "pretrain.json").exists()
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--resume", "--out", "runs/almost"]) == 0  # not stuck at "epoch 0 of 1"
    assert (run / "pretrain.json").exists() and (run / "metrics.json").exists()


def test_a_full_disk_on_a_checkpoint_keeps_the_last_good_one(tiny_mnist_dir, tmp_path,
                                                             monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    real = io.atomic_write
    saves = {"n": 0}

    def full_on_second(path, write, **kwargs):  # noqa: ANN001, ANN202
        if str(path).endswith("last.ckpt"):
            saves["n"] += 1
            if saves["n"] == 2:
                return real(path, _half_then(OSError(errno.ENOSPC, "No space left")),
                            size_hint=len(write))
        return real(path, write, **kwargs)

    monkeypatch.setattr(io, "atomic_write", full_on_second)
    assert main(["pretrain", *tiny_args(tiny_mnist_dir, "runs/full", epochs=3)]) == 2
    message = " ".join(capsys.readouterr().out.split())
    assert "no space left on the device writing" in message and "last.ckpt" in message
    assert re.search(r"needs [0-9.]+ [KM]iB, [0-9.]+ [KMGT]iB free", message), message
    run = tmp_path / "runs" / "full"
    assert fit_progress(run / "checkpoints" / "last.ckpt")[0] == 1  # epoch 1 survived
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(io, "atomic_write", real)  # space freed
    assert main(["pretrain", "--resume", "--out", "runs/full"]) == 0
    assert fit_progress(run / "checkpoints" / "last.ckpt")[0] == 3


def test_a_full_disk_in_the_preprocessing_cache_says_so(tiny_neuro_cohort, tmp_path,
                                                        monkeypatch):
    import shutil

    from mmssl.data.neuro import load_cohort

    cohort = tmp_path / "cohort"
    shutil.copytree(tiny_neuro_cohort.parent, cohort)
    real = io.atomic_write

    def full(path, write, **kwargs):  # noqa: ANN001, ANN202
        if str(path).endswith(".npy"):  # the device fills up half-way through the entry
            return real(path, _half_then(OSError(errno.ENOSPC, "No space left on device")),
                        size_hint=kwargs.get("size_hint"))
        return real(path, write, **kwargs)

    monkeypatch.setattr(io, "atomic_write", full)
    with pytest.raises(DiskFullError, match="no space left .*npy"):
        load_cohort(cohort / "manifest.csv", ("t1", "falff"), progress=False)


def test_a_read_only_manifest_folder_names_the_cache_setting(tiny_neuro_cohort, tmp_path,
                                                             monkeypatch, capsys):
    import shutil

    cohort = tmp_path / "cohort"
    shutil.copytree(tiny_neuro_cohort.parent, cohort, ignore=shutil.ignore_patterns(".mmssl*"))
    real = io.tempfile.mkstemp

    def read_only_cohort(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if str(kwargs.get("dir", "")).startswith(str(cohort)):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*args, **kwargs)

    monkeypatch.setattr(io.tempfile, "mkstemp", read_only_cohort)
    monkeypatch.chdir(tmp_path)
    code = main(["run", "--preset", "neuro-quick", "--manifest", "cohort/manifest.csv",
                 "--out", "runs/neuro"])
    message = " ".join(capsys.readouterr().out.split())
    assert code == 2
    assert "read-only file system" in message
    assert "data.neuro.cache_dir" in message and "--cache-dir" in message
    assert not (tmp_path / "runs").exists()  # refused before the run directory was made


# ------------------------------------------------------------ divergence, Ctrl-C, --out


def test_a_diverging_run_stops_at_once_and_keeps_its_checkpoint(tiny_mnist_dir, tmp_path,
                                                                monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["pretrain", *tiny_args(tiny_mnist_dir, "runs/nan", epochs=5),
                 "--set", "optim.optimizer=sgd", "--set", "optim.lr=1e12",
                 "--set", "optim.scheduler=none"])
    message = " ".join(capsys.readouterr().out.split())
    assert code == 1
    assert "training diverged at epoch 0, step" in message
    assert "non-finite terms: RR/" in message and "Lower the learning rate" in message
    run = tmp_path / "runs" / "nan"
    assert not (run / "pretrain.json").exists()
    assert not (run / "checkpoints" / "last.ckpt").exists()  # none was good


def test_divergence_after_a_good_epoch_names_the_kept_checkpoint(tiny_mnist_dir, tmp_path,
                                                                 monkeypatch, capsys):
    from mmssl.methods import TaxonomyMethod

    real = TaxonomyMethod.compute_loss

    def nan_in_epoch_two(self, batch, generator):  # noqa: ANN001, ANN202
        loss, terms = real(self, batch, generator)
        if self.training and self.current_epoch == 1:
            terms = {**terms, "RR/rotated:noisy": loss * float("nan")}
            loss = loss * float("nan")
        return loss, terms

    monkeypatch.setattr(TaxonomyMethod, "compute_loss", nan_in_epoch_two)
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", *tiny_args(tiny_mnist_dir, "runs/late", epochs=3)]) == 1
    message = " ".join(capsys.readouterr().out.split())
    assert "epoch 1" in message and "last good checkpoint" in message and "is kept" in message
    assert fit_progress(tmp_path / "runs/late/checkpoints/last.ckpt")[0] == 1


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_prints_one_line_exits_130_and_resumes(tiny_mnist_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    mmssl = Path(sys.executable).parent / "mmssl"
    process = subprocess.Popen([str(mmssl), "run", *tiny_args(tiny_mnist_dir, "runs/ctrlc",
                                                                  epochs=30)],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True,
                               # a suite started in the background (nohup, `&`) inherits an
                               # ignored SIGINT; a user's terminal does not
                               preexec_fn=_default_sigint)
    checkpoint = tmp_path / "runs" / "ctrlc" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, process.communicate()[0]
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if "interrupted" in line]
    assert len(lines) == 1
    assert "continue with `mmssl run --resume --out runs/ctrlc`" in " ".join(output.split())
    read_checkpoint(checkpoint)  # the checkpoint on disk is whole


def test_out_that_is_not_a_run_is_refused_and_a_failed_setup_can_restart(tiny_mnist_dir,
                                                                         tmp_path, monkeypatch,
                                                                         capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "metrics.json").write_text("precious")
    assert main(["run", *tiny_args(tiny_mnist_dir, "results")]) == 2
    assert "not an mmssl run directory" in capsys.readouterr().out
    assert (tmp_path / "results" / "metrics.json").read_text() == "precious"
    # A start whose data set-up failed leaves config.yaml but no checkpoint: start again.
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "train-images-idx3-ubyte").write_bytes(b"garbage")
    for name in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / "broken" / name).write_bytes(b"garbage")
    assert main(["run", *tiny_args(tmp_path / "broken", "runs/retry")]) == 2
    assert (tmp_path / "runs" / "retry" / "config.yaml").exists()
    assert main(["run", *tiny_args(tiny_mnist_dir, "runs/retry")]) == 0
    assert (tmp_path / "runs" / "retry" / "metrics.json").exists()


def test_a_corrupt_or_foreign_checkpoint_is_refused_without_unsafe_advice(tiny_mnist_dir,
                                                                         tmp_path, monkeypatch,
                                                                         capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", *tiny_args(tiny_mnist_dir, "runs/a", epochs=1)]) == 0
    last = tmp_path / "runs/a/checkpoints/last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 3])
    assert main(["evaluate", "runs/a"]) == 2
    message = capsys.readouterr().out
    assert "corrupt or truncated" in message and "weights_only" not in message

    torch.save({"state_dict": {}, "object": Foreign()}, last)
    assert main(["evaluate", "runs/a"]) == 2
    message = " ".join(capsys.readouterr().out.split())
    assert "refused for safety" in message and "weights_only" not in message
    torch.save({"state_dict": {"x": torch.zeros(1)}, "hyper_parameters": {}}, last)
    assert main(["evaluate", "runs/a"]) == 2
    assert "not an mmssl taxonomy checkpoint" in " ".join(capsys.readouterr().out.split())


def test_a_run_being_trained_elsewhere_is_refused_and_unlocked_when_that_process_dies(
        tiny_mnist_dir, tmp_path, monkeypatch, capsys):
    """A second trainer on one run directory (a stopped sweep's worker still running, then the
    sweep started again) is refused with the holder's name; a killed holder frees the run."""
    monkeypatch.chdir(tmp_path)
    assert main(["run", *tiny_args(tiny_mnist_dir, "runs/a", epochs=1)]) == 0
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import fcntl, sys, time
        handle = open("runs/a/.training.lock", "a+")
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        handle.truncate(0); handle.write("mmssl process 4242 on elsewhere"); handle.flush()
        print("locked", flush=True); time.sleep(60)
    """)], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert main(["run", "--resume", "--out", "runs/a"]) == 2
        output = " ".join(capsys.readouterr().out.split())
        assert "is being trained by mmssl process 4242 on elsewhere" in output
        assert "continue with --resume" in output
    finally:
        holder.kill()
        holder.wait()
    assert main(["run", "--resume", "--out", "runs/a"]) == 0  # the dead holder's lock is gone
    assert "mmssl process" in (tmp_path / "runs" / "a" / ".training.lock").read_text()
