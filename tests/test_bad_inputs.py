"""Everything a user can get wrong ends with exit status 2, one message naming the input, and no
traceback — and nothing is created before the input is known to be good.

Each case runs the real command line (``mmssl.cli.main``) from a temporary working directory
with relative paths, as a user types it.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from mmssl.cli import main

QUICK = ["--preset", "quick", "--epochs", "1", "--set", "trainer.progress_bar=false",
         "--set", "trainer.limit_train_batches=1"]


def write_manifest(folder: Path, header: str, rows: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def hostile_nifti(path: Path, side: int = 1024) -> Path:
    """A ~70-byte gzipped NIfTI-1 whose header claims ``side``³ float32 voxels (4 GiB)."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape((side, side, side))
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352
    raw = header.binaryblock + b"\x00" * 4
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw, mtime=0))
    return path


def cases() -> list[tuple[str, list[str], str]]:
    """(id, argv, text the message must contain)."""
    return [
        ("lr-inf", ["run", *QUICK, "--set", "optim.lr=inf"], "optim.lr: expected a finite"),
        ("lr-nan", ["run", *QUICK, "--set", "optim.lr=nan"], "optim.lr: expected a finite"),
        ("lr-negative", ["run", *QUICK, "--set", "optim.lr=-1"], "optim.lr: must be positive"),
        ("lr-text", ["run", *QUICK, "--set", "optim.lr=fast"], "optim.lr: expected a number"),
        ("seed-negative", ["run", *QUICK, "--seed", "-3"], "--seed"),
        ("limit-negative", ["run", *QUICK, "--set", "trainer.limit_train_batches=-1"],
         "trainer.limit_train_batches"),
        ("limit-fractional-count", ["run", *QUICK, "--set", "trainer.limit_train_batches=2.5"],
         "trainer.limit_train_batches"),
        ("section-as-value", ["run", *QUICK, "--set", "optim=3"], "optim: is a section"),
        ("value-as-section", ["run", *QUICK, "--set", "seed.x=3"], "seed: expected an integer"),
        ("unknown-key", ["run", *QUICK, "--set", "optim.lrr=1"], "unknown key"),
        ("unknown-section", ["run", *QUICK, "--set", "optimiser.lr=1"], "optimiser"),
        ("set-without-equals", ["run", *QUICK, "--set", "optim.lr"], "expected KEY=VALUE"),
        ("accelerator-tpu", ["run", *QUICK, "--accelerator", "tpu"], "--accelerator"),
        ("accelerator-gpu-missing", ["run", *QUICK, "--accelerator", "gpu"],
         "no CUDA GPU is visible"),
        ("devices-zero", ["run", *QUICK, "--set", "trainer.devices=0"], "trainer.devices"),
        ("precision", ["run", *QUICK, "--set", "trainer.precision=8-bit"], "trainer.precision"),
        ("epochs-zero", ["run", *QUICK, "--epochs", "0"], "trainer.epochs"),
        ("batch-one", ["run", *QUICK, "--batch-size", "1"], "data.batch_size"),
        ("fold-out-of-range", ["run", *QUICK, "--fold", "9"], "data.fold: must be in 0..4"),
        ("unknown-objective", ["run", *QUICK, "--objective", "CR-QQ"], "Valid objectives"),
        ("unknown-method", ["run", *QUICK, "--method", "simclr"], "unknown method"),
        ("unknown-dataset", ["run", *QUICK, "--dataset", "cifar"], "unknown dataset"),
        ("unknown-preset", ["run", "--preset", "nope"], "valid presets"),
        ("unknown-modality", ["run", *QUICK, "--modalities", "rotated,blurry"], "blurry"),
        ("modality-with-slash", ["run", *QUICK, "--modalities", "rotated,a/b"],
         "not a valid name"),
        ("cross-modal-with-one-modality", ["run", *QUICK, "--objective", "XX",
                                           "--modalities", "rotated"], "need two or more"),
        ("unknown-flag", ["run", "--bogus", "1"], "valid flags of `mmssl run`"),
        ("critic", ["run", *QUICK, "--set", "objective.critic=l2"], "objective.critic"),
        ("clip-zero", ["run", *QUICK, "--set", "objective.clip=0"], "objective.clip"),
        ("weights-for-absent-mode", ["run", *QUICK, "--objective", "CR",
                                     "--set", "objective.weights={RR: 2}"], "not in objective"),
        ("probe-cs", ["run", *QUICK, "--set", "probe.Cs=[0]"], "probe.Cs"),
        ("data-dir-missing", ["run", *QUICK, "--data-dir", "no/such/dir"],
         "no/such/dir does not exist"),
        ("data-dir-empty", ["run", *QUICK, "--data-dir", "empty"], "is missing 4 of the 4"),
        ("config-missing", ["run", "--config", "nope.yaml"], "--config nope.yaml"),
        ("config-not-yaml", ["run", "--config", "bad.yaml"], "not valid YAML"),
        ("config-not-mapping", ["run", "--config", "list.yaml"], "must hold a mapping"),
        ("out-is-a-file", ["run", *QUICK, "--out", "afile"], "is a file"),
        ("out-not-a-run", ["run", *QUICK, "--out", "notes"], "not an mmssl run directory"),
        ("resume-nothing", ["run", "--resume", "--out", "nothing"], "holds no run"),
        ("resume-without-out", ["run", "--resume"], "--resume needs --out"),
        ("resume-with-flags", ["run", "--resume", "--out", "x", "--epochs", "3"],
         "drop --epochs"),
        ("evaluate-not-a-run", ["evaluate", "no/run"], "does not exist"),
        ("evaluate-folder-not-a-run", ["evaluate", "notes"], "not a run directory"),
        ("report-not-a-run", ["report", "notes"], "neither a run directory"),
        ("links-not-a-run", ["links", "notes"], "not a run directory"),
        ("saliency-not-a-run", ["saliency", "notes"], "not a run directory"),
        ("generate-not-a-run", ["generate", "notes"], "not a run directory"),
        ("claims-not-a-sweep", ["claims", "notes"], "no evaluated runs"),
        ("claims-nothing", ["claims"], "give a sweep directory"),
        ("claims-scores-missing", ["claims", "--scores", "none.csv"], "none.csv"),
        ("sweep-twice", ["sweep", *QUICK, "--objectives", "CR,CR", "--out", "s"],
         "listed twice"),
        ("sweep-nothing", ["sweep", *QUICK, "--out", "s"], "--objectives or --methods"),
        ("sweep-bad-folds", ["sweep", *QUICK, "--objectives", "CR", "--folds", "a,b",
                             "--out", "s"], "--folds"),
        ("sweep-negative-seed", ["sweep", *QUICK, "--objectives", "CR", "--seeds", "-1",
                                 "--out", "s"], "--seeds"),
        ("sweep-launcher", ["sweep", *QUICK, "--objectives", "CR", "--launcher", "k8s",
                            "--out", "s"], "--launcher"),
        ("sweep-jobs", ["sweep", *QUICK, "--objectives", "CR", "--jobs", "0", "--out", "s"],
         "--jobs"),
        ("sweep-taxonomy-method", ["sweep", *QUICK, "--methods", "taxonomy", "--out", "s"],
         "--objectives"),
        ("sweep-unknown-method", ["sweep", *QUICK, "--methods", "byol", "--out", "s"],
         "unknown method"),
        ("sweep-out-not-a-sweep", ["sweep", *QUICK, "--objectives", "CR", "--out", "notes"],
         "not an mmssl sweep"),
        ("neuro-no-manifest", ["run", "--preset", "neuro-quick"], "needs a manifest"),
        ("neuro-manifest-missing", ["run", "--preset", "neuro-quick", "--manifest", "no.csv"],
         "no.csv: no such file"),
        ("neuro-manifest-column-slash", ["run", "--preset", "neuro-quick", "--manifest",
                                         "cohort/manifest.csv", "--modalities", "t1,/etc/x"],
         "not a valid name"),
        ("neuro-on-bad-row", ["run", "--preset", "neuro-quick", "--manifest",
                              "cohort/manifest.csv", "--on-bad-row", "ignore"],
         "data.neuro.on_bad_row"),
        ("neuro-val-fraction", ["run", "--preset", "neuro-quick", "--manifest",
                                "cohort/manifest.csv", "--set", "data.neuro.val_fraction=1"],
         "data.neuro.val_fraction"),
        ("neuro-voxel-size", ["run", "--preset", "neuro-quick", "--manifest",
                              "cohort/manifest.csv", "--set",
                              "data.neuro.preprocessing.voxel_size=0"], "voxel_size"),
        ("simulate-bad-fraction", ["simulate", "--out", "sim", "--patient-fraction", "2"],
         "patient_fraction"),
        ("simulate-shared-anatomy", ["simulate", "--out", "sim", "--shared-anatomy", "1.5"],
         "shared_anatomy must lie in [0, 1]"),
        ("simulate-falff-noise-fwhm", ["simulate", "--out", "sim", "--falff-noise-fwhm", "0"],
         "falff_noise_fwhm must lie in (0, 60] mm"),
        ("simulate-falff-field-sd", ["simulate", "--out", "sim", "--falff-field-sd", "-1"],
         "falff_field_sd must lie in [0, 1]"),
        ("neuro-augmentation-shared", ["run", "--preset", "neuro-quick", "--manifest",
                                       "cohort/manifest.csv", "--set",
                                       "data.neuro.augmentation.shared=maybe"],
         "shared"),
        ("manifest-not-bids", ["manifest", "notes"], "dataset_description.json"),
        ("falff-not-4d", ["falff", "flat.nii.gz", "--out", "f.nii.gz"], "4-D"),
        ("saliency-units", ["saliency", "notes", "--units", "x"], "--units 'x'"),
        ("saliency-method", ["saliency", "notes", "--methods", "occlusion"], "occlusion"),
        ("saliency-eg-samples", ["saliency", "notes", "--eg-samples", "0"],
         "--eg-samples 0: expected a positive number"),
        ("regions-eg-references", ["regions", "notes", "--method", "eg", "--eg-references", "-1"],
         "--eg-references -1: expected a positive number"),
        ("regions-method", ["regions", "notes", "--method", "lime"], "--method 'lime'"),
        ("regions-alpha", ["regions", "notes", "--alpha", "2"], "--alpha must be in (0, 1)"),
        ("regions-smooth", ["regions", "notes", "--smooth", "-4"],
         "smoothing FWHM must be a non-negative number of mm"),
    ]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with the files the cases refer to, by relative path."""
    import nibabel as nib

    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    write_manifest(tmp_path / "cohort", "subject,label,t1,falff", ["s1,AD,a.nii.gz,b.nii.gz"])
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)),
             str(tmp_path / "flat.nii.gz"))
    return tmp_path


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize(("argv", "message"), [c[1:] for c in cases()],
                         ids=[c[0] for c in cases()])
def test_bad_input_exits_2_naming_it(argv: list[str], message: str, workdir: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    before = _snapshot(workdir)
    code = main(argv)
    captured = capsys.readouterr()
    printed = " ".join((captured.out + captured.err).split())
    assert code == 2, printed
    assert message in printed
    assert "Traceback" not in printed
    created = _snapshot(workdir) - before
    # Validation happens before anything is written (the cache check writes nothing lasting).
    assert not any(c.startswith(("runs", "s/", "x", "nothing")) for c in created), created


def test_hostile_nifti_is_a_bad_row_read_in_bounded_memory(tmp_path: Path) -> None:
    """A 70-byte .nii.gz claiming 1024³ float32 is reported like any bad row, without reading."""
    import tracemalloc

    from mmssl.data.neuro import NeuroDataModule
    from mmssl.data.neuro.manifest import ManifestError
    from tests.conftest import neuro_affine, neuro_volume, write_nifti

    hostile = hostile_nifti(tmp_path / "s1" / "t1.nii.gz")
    assert hostile.stat().st_size < 120
    for subject in ("s1", "s2", "s3"):
        write_nifti(tmp_path / subject / "falff.nii.gz", neuro_volume("falff", 1),
                    neuro_affine())
    for subject in ("s2", "s3"):
        write_nifti(tmp_path / subject / "t1.nii.gz", neuro_volume("t1", 2), neuro_affine())
    manifest = write_manifest(tmp_path, "subject,label,t1,falff",
                              [f"{s},{lab},{s}/t1.nii.gz,{s}/falff.nii.gz"
                               for s, lab in (("s1", "AD"), ("s2", "CN"), ("s3", "AD"))])
    module = NeuroDataModule(manifest, ("t1", "falff"), num_folds=2, batch_size=2)
    tracemalloc.start()
    with pytest.raises(ManifestError) as caught:
        module.setup()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    message = str(caught.value)
    assert "line 2" in message and "s1/t1.nii.gz" in message
    assert "declares" in message and "4.0 GiB" in message
    assert peak < 200 * 2**20  # far below the 4 GiB the header claims


def test_truncated_uncompressed_nifti_is_reported(tmp_path: Path) -> None:
    from mmssl.data.neuro.validation import inspect_path

    path = tmp_path / "t1.nii"
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    problem = inspect_path(path)
    assert isinstance(problem, str) and "holds only" in problem


def test_limit_on_declared_size_names_the_setting(tmp_path: Path) -> None:
    import nibabel as nib

    from mmssl.data.neuro.validation import inspect_path

    path = tmp_path / "big.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((16, 16, 16), np.float32), np.eye(4)), str(path))
    problem = inspect_path(path, limit=1000)
    assert isinstance(problem, str) and "data.neuro.max_volume_bytes" in problem
    assert not isinstance(inspect_path(path), str)  # under the default limit it is read


def test_gzip_size_check_survives_a_multi_member_stream(tmp_path: Path) -> None:
    """A valid file whose gzip trailer does not give the size (two members) is still read."""
    import nibabel as nib

    from mmssl.data.neuro.validation import inspect_path

    image = nib.Nifti1Image(np.arange(512, dtype=np.float32).reshape(8, 8, 8), np.eye(4))
    raw = image.to_bytes()
    half = len(raw) // 2
    path = tmp_path / "two.nii.gz"
    path.write_bytes(gzip.compress(raw[:half], mtime=0) + gzip.compress(raw[half:], mtime=0))
    (isize,) = struct.unpack("<I", path.read_bytes()[-4:])
    assert isize != len(raw)  # the trailer only knows the last member
    info = inspect_path(path)
    assert not isinstance(info, str), info
