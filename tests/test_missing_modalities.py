"""Sessions that lack a modality (an empty manifest cell), from the manifest to the probes.

The oracle of the loss: a batch in which sample k lacks fALFF must give exactly the terms of
the same batch with sample k's fALFF terms removed — CR of T1 on the whole batch, CR of fALFF
and every cross-modal term on the batch without sample k.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

pytest.importorskip("nibabel")
pytest.importorskip("nilearn")

from conftest import NEURO_ROWS  # noqa: E402

from mmssl import config as cfg  # noqa: E402
from mmssl.cli import main  # noqa: E402
from mmssl.data.neuro import (  # noqa: E402
    ManifestError,
    NeuroDataModule,
    Preprocessing,
    load_cohort,
    read_manifest,
)
from mmssl.errors import ConfigError  # noqa: E402
from mmssl.evaluation.probe import extract_split, fit_probe, linear_evaluation  # noqa: E402
from mmssl.methods import CRCCAMethod, TaxonomyMethod  # noqa: E402
from mmssl.objectives.cca import dcca_loss  # noqa: E402
from mmssl.objectives.infonce import infonce, masked_infonce  # noqa: E402
from mmssl.objectives.taxonomy import (  # noqa: E402
    MODES,
    Objective,
    ObjectiveError,
    taxonomy_loss,
)
from mmssl.runs.build import build_method  # noqa: E402
from mmssl.runs.evaluation import read_features, read_presence, save_features  # noqa: E402

MODS = ("t1", "falff")
SETTINGS = Preprocessing(voxel_size=8.0, shape=(24, 28, 24))


# ------------------------------------------------------------------------------ data: manifest


def edit_manifest(manifest: Path, edit: Callable[[list[dict[str, str]]], object]) -> None:
    """Rewrite ``manifest`` after ``edit`` changed its rows (dicts, in file order)."""
    with manifest.open(newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = list(reader.fieldnames or []), list(reader)
    edit(rows)
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture
def cohort(tiny_neuro_cohort: Path, tmp_path: Path) -> Path:
    """The tiny cohort with fALFF missing for sub-01 ses-1 (line 2) and sub-03 (line 6)."""
    shutil.copytree(tiny_neuro_cohort.parent, tmp_path / "cohort")
    manifest = tmp_path / "cohort" / "manifest.csv"

    def drop(rows: list[dict[str, str]]) -> None:
        rows[0]["falff"] = ""
        rows[4]["falff"] = ""

    edit_manifest(manifest, drop)
    return manifest


def test_an_empty_cell_is_a_missing_modality_and_an_all_empty_row_a_problem(cohort: Path):
    manifest = read_manifest(cohort, MODS)
    assert len(manifest.rows) == len(NEURO_ROWS) and not manifest.problems
    assert set(manifest.rows[0].paths) == {"t1"} and set(manifest.rows[1].paths) == set(MODS)
    assert set(manifest.rows[4].paths) == {"t1"}

    def empty_row(rows: list[dict[str, str]]) -> None:
        rows[6]["t1"] = rows[6]["falff"] = ""  # sub-05: nothing at all
        rows[7]["subject"] = ""  # another bad row: every one is named

    edit_manifest(cohort, empty_row)
    with pytest.raises(ManifestError) as info:
        read_manifest(cohort, MODS)
    problems = info.value.problems
    assert [(p.line, p.subject) for p in problems] == [(8, "sub-05"), (9, "")]
    assert "no volume for any modality" in problems[0].message
    assert "t1" in problems[0].message and "falff" in problems[0].message
    assert "line 8 (subject sub-05" in str(info.value)
    kept = read_manifest(cohort, MODS, on_bad_row="skip")
    assert len(kept.rows) == len(NEURO_ROWS) - 2
    assert "sub-05" not in {r.subject for r in kept.rows}


def test_validation_names_every_bad_row_and_checks_only_present_files(cohort: Path):
    folder = cohort.parent
    (folder / "sub-02" / "ses-1" / "falff.nii.gz").write_bytes(b"not a volume")
    (folder / "sub-01" / "ses-1" / "falff.nii.gz").write_bytes(b"left over, not listed")

    def empty_row(rows: list[dict[str, str]]) -> None:
        rows[9]["t1"] = rows[9]["falff"] = ""

    edit_manifest(cohort, empty_row)
    with pytest.raises(ManifestError) as info:
        load_cohort(cohort, MODS, settings=SETTINGS, progress=False,
                    cache_dir=cohort.parent / "cache")
    rows = [(p.line, p.subject, p.column) for p in info.value.problems]
    # sub-01 ses-1's unlisted, broken fALFF file is never opened: its cell is empty.
    assert rows == [(4, "sub-02", "falff"), (11, "sub-08", "t1, falff")]


def test_a_modality_no_row_has_is_refused(cohort: Path):
    def drop_all(rows: list[dict[str, str]]) -> None:
        for row in rows:
            row["falff"] = ""

    edit_manifest(cohort, drop_all)
    with pytest.raises(ManifestError, match="no usable row has a volume for modality falff"):
        load_cohort(cohort, MODS, settings=SETTINGS, progress=False)


def test_cohort_presence_masks_and_zero_filled_memmapped_rows(cohort: Path, tmp_path: Path,
                                                              tiny_neuro_cohort: Path):
    cache = tmp_path / "cache"
    full = load_cohort(tiny_neuro_cohort, MODS, settings=SETTINGS, progress=False,
                       cache_dir=cache)
    part = load_cohort(cohort, MODS, settings=SETTINGS, progress=False, cache_dir=cache)
    expected = np.ones(len(NEURO_ROWS), dtype=bool)
    expected[[0, 4]] = False
    np.testing.assert_array_equal(part.present["falff"], expected)
    assert part.present["t1"].all() and part.present["falff"].dtype == bool
    np.testing.assert_array_equal(part.complete, expected)
    assert part.has_missing and not full.has_missing
    for m in MODS:
        assert isinstance(part.volumes[m], np.memmap) and part.volumes[m].dtype == np.float32
    assert not part.volumes["falff"][[0, 4]].any()  # missing rows: zeros
    np.testing.assert_array_equal(part.volumes["falff"][expected],
                                  full.volumes["falff"][expected])
    np.testing.assert_array_equal(part.volumes["t1"], full.volumes["t1"])
    # The sentinel is part of the array's cache key: not the complete cohort's file.
    assert part.volumes["falff"].filename != full.volumes["falff"].filename
    assert part.volumes["t1"].filename == full.volumes["t1"].filename
    again = load_cohort(cohort, MODS, settings=SETTINGS, progress=False, cache_dir=cache)
    assert again.volumes["falff"].filename == part.volumes["falff"].filename


# ------------------------------------------------------------------------ data: data module


# ------------------------------------------------------------------------------ the loss


B, C, L = 6, 8, 5
K = 2  # the sample without fALFF


def _features(seed: int = 0, missing_garbage: float = float("nan")) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    data = {
        "R_t1": torch.randn(B, C, generator=g), "R_falff": torch.randn(B, C, generator=g),
        "C_t1": torch.randn(B, C, L, generator=g), "C_falff": torch.randn(B, C, L, generator=g),
    }
    # What sits in the absent sample's fALFF features must never be read.
    data["R_falff"][K] = missing_garbage
    data["C_falff"][K] = missing_garbage
    return {k: v.requires_grad_(True) for k, v in data.items()}


def _loss(data: dict[str, Tensor], objective: str, rows: Any = slice(None), **kwargs: Any):
    return taxonomy_loss(
        {"t1": {"l": data["C_t1"][rows]}, "falff": {"l": data["C_falff"][rows]}},
        {"t1": data["R_t1"][rows], "falff": data["R_falff"][rows]},
        Objective.parse(objective), generator=torch.Generator().manual_seed(5), **kwargs)


def _oracle(data: dict[str, Tensor], objective: str) -> dict[str, Tensor]:
    """The terms with sample K's fALFF terms removed, computed without any mask."""
    keep = [i for i in range(B) if i != K]
    parsed = Objective.parse(objective)
    terms: dict[str, Tensor] = {}
    if "CR" in parsed.modes:
        for m, rows in (("t1", slice(None)), ("falff", keep)):
            result = infonce(data[f"R_{m}"][rows].unsqueeze(-1), data[f"C_{m}"][rows])
            terms[f"CR/l/{m}"], terms[f"CR/l/{m}/penalty"] = result.loss, result.penalty
    cross = [m for m in parsed.modes if MODES[m].cross_modal]
    if cross:
        terms.update(_loss(data, "-".join(cross), keep).terms)
    return terms


@pytest.mark.parametrize("objective", ["CR", "XX", "CC", "RR", "CR-XX-CC-RR"])
def test_masked_loss_equals_the_loss_without_the_absent_samples_terms(objective: str):
    present = {"falff": torch.arange(B) != K, "t1": torch.ones(B, dtype=torch.bool)}
    data = _features()
    masked = _loss(data, objective, present=present)
    masked.total.backward()
    reference = _features()
    expected = _oracle(reference, objective)
    assert set(masked.terms) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(masked.terms[name], value, rtol=1e-6, atol=1e-7, msg=name)
    total = sum(expected.values(), start=torch.zeros(()))
    torch.testing.assert_close(masked.total, total, rtol=1e-6, atol=1e-6)
    assert torch.isfinite(masked.total)
    total.backward()
    for key in data:
        grad, want = data[key].grad, reference[key].grad
        assert (grad is None) == (want is None), key  # e.g. CC reads no global feature
        if grad is not None and want is not None:
            assert torch.isfinite(grad).all(), key
            torch.testing.assert_close(grad, want, rtol=1e-5, atol=1e-7, msg=key)
            if key.endswith("falff"):
                assert not grad[K].any(), key  # the absent sample gets no gradient


def test_all_present_masks_give_exactly_the_unmasked_loss():
    data = _features(missing_garbage=0.5)
    ones = {m: torch.ones(B, dtype=torch.bool) for m in MODS}
    masked = _loss(data, "CR-XX-CC-RR", present=ones)
    plain = _loss(data, "CR-XX-CC-RR")
    assert set(masked.terms) == set(plain.terms)
    for name in plain.terms:
        torch.testing.assert_close(masked.terms[name], plain.terms[name], rtol=1e-6, atol=0)


def test_terms_with_fewer_than_two_valid_samples_are_absent_not_nan():
    data = _features()
    falff = torch.zeros(B, dtype=torch.bool)
    falff[0] = True  # a single sample with fALFF: no negatives for any term that needs it
    result = _loss(data, "CR-XX-CC-RR", present={"falff": falff})
    assert set(result.terms) == {"CR/l/t1", "CR/l/t1/penalty"}
    torch.testing.assert_close(result.total,
                               result.terms["CR/l/t1"] + result.terms["CR/l/t1/penalty"])
    assert all(torch.isfinite(v) for v in result.terms.values())


def test_bad_presence_masks_are_refused():
    data = _features(missing_garbage=0.0)
    with pytest.raises(ObjectiveError, match=r"present\['falff'\] must be a \(6,\) bool"):
        _loss(data, "RR", present={"falff": torch.ones(B)})
    with pytest.raises(ObjectiveError, match=r"must be a \(6,\) bool tensor"):
        _loss(data, "RR", present={"falff": torch.ones(B - 1, dtype=torch.bool)})
    with pytest.raises(ObjectiveError, match="without features"):
        _loss(data, "RR", present={"dti": torch.ones(B, dtype=torch.bool)})


# ---------------------------------------------------------------------------- the method


def _method(objective: str = "CR-XX-CC-RR") -> TaxonomyMethod:
    torch.manual_seed(0)
    shape = (1, 16, 16, 16)
    method = TaxonomyMethod.create(list(MODS), {m: shape for m in MODS},
                                   model={"width": 4, "latent_dim": 8, "head_dim": 8,
                                          "local_taps": ["block0"]},
                                   objective={"name": objective})
    assert isinstance(method, TaxonomyMethod)
    return method


def _batch(falff: list[bool]) -> dict[str, Any]:
    g = torch.Generator().manual_seed(3)
    n = len(falff)
    x = {m: torch.randn(n, 1, 16, 16, 16, generator=g) for m in MODS}
    present = torch.tensor(falff)
    x["falff"][~present] = 0.0
    return {**x, "label": torch.zeros(n, dtype=torch.long),
            "present": {"t1": torch.ones(n, dtype=torch.bool), "falff": present}}


def _record_inputs(module: nn.Module) -> list[Tensor]:
    seen: list[Tensor] = []
    module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    return seen


def test_encoders_and_batchnorm_see_only_present_samples():
    method = _method().train()
    batch = _batch([True, False, True, True, False, True])
    seen = _record_inputs(method.encoder("falff"))
    heads = _record_inputs(method.global_heads["falff"])
    bn_before = method.encoder("falff").post[1][0].running_mean.clone()
    loss, terms = method.compute_loss(batch, torch.Generator().manual_seed(0))
    keep = torch.tensor([0, 2, 3, 5])
    assert len(seen) == 1 and torch.equal(seen[0], batch["falff"][keep])
    assert len(heads) == 1 and heads[0].shape[0] == 4
    # BatchNorm's statistics come from the four present volumes only.
    reference = _method().train()
    reference.encoder("falff")(batch["falff"][keep])
    torch.testing.assert_close(method.encoder("falff").post[1][0].running_mean,
                               reference.encoder("falff").post[1][0].running_mean)
    assert not torch.equal(method.encoder("falff").post[1][0].running_mean, bn_before)
    assert "RR/t1:falff" in terms and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in method.parameters())


def test_a_modality_present_once_is_left_out_in_training_but_used_in_eval():
    method = _method("RR").train()
    batch = _batch([False, True, False, False])
    seen = _record_inputs(method.encoder("falff"))
    loss, terms = method.compute_loss(batch, None)
    assert seen == [] and terms == {}  # BatchNorm cannot train on one sample: skipped
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()  # every parameter stays in the graph (weight 0)
    assert all(p.grad is not None and not p.grad.any() for p in method.parameters())
    method.eval()
    with torch.no_grad():
        method.compute_loss(batch, None)
    assert len(seen) == 1 and seen[0].shape[0] == 1


def test_the_method_loss_is_the_masked_taxonomy_loss_of_its_features():
    method = _method().eval()
    batch = _batch([True, True, False, True, True])
    with torch.no_grad():
        loss, terms = method.compute_loss(batch, torch.Generator().manual_seed(4))
        present = method.presence(batch)
        local, global_, _ = method.encode_all(batch, present)
        keep = torch.tensor([0, 1, 3, 4])
        alone = method.encoder("falff")(batch["falff"][keep])
        torch.testing.assert_close(global_["falff"][keep],
                                   method.global_features("falff", alone.z))
        assert not global_["falff"][2].any()
        expected = taxonomy_loss(local, global_, method.objective, present=present,
                                 generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(loss, expected.total)
    assert set(terms) == set(expected.terms)


def test_cr_cca_correlates_only_the_complete_samples():
    torch.manual_seed(0)
    shape = (1, 16, 16, 16)
    method = CRCCAMethod.create(list(MODS), {m: shape for m in MODS},
                                model={"width": 4, "latent_dim": 8, "head_dim": 8,
                                       "local_taps": ["block0"]},
                                cca={"on": "z", "r1": 1e-3, "r2": 1e-3}).eval()
    batch = _batch([True, True, False, True, True, True])
    with torch.no_grad():
        _, terms = method.compute_loss(batch, None)
        keep = torch.tensor([0, 1, 3, 4, 5])
        z = {m: method.encoder(m)(batch[m][keep]).z for m in MODS}
        settings = method.cca_settings
        expected = dcca_loss(z["t1"], z["falff"], r1=settings.r1, r2=settings.r2,
                             top_k=settings.top_k, variant=settings.variant)
    torch.testing.assert_close(terms["CCA/t1:falff"], expected)
    assert "CR/block0/falff" in terms and "XX/block0/t1:falff" not in terms


def test_masked_infonce_equals_infonce_of_the_valid_samples_for_both_estimators():
    g = torch.Generator().manual_seed(2)
    anchors, candidates = torch.randn(7, 4, 1, generator=g), torch.randn(7, 4, 3, generator=g)
    valid = torch.tensor([True, False, True, True, False, True, True])
    expected = infonce(anchors[valid], candidates[valid])
    for estimator in ("lean", "dense"):
        got = masked_infonce(anchors, candidates, valid, estimator=estimator)  # type: ignore[arg-type]
        assert got is not None
        torch.testing.assert_close(got.loss, expected.loss)
        torch.testing.assert_close(got.penalty, expected.penalty)
    assert masked_infonce(anchors, candidates, torch.arange(7) == 3) is None
    with pytest.raises(ValueError, match=r"valid must be a \(7,\) bool tensor"):
        masked_infonce(anchors, candidates, torch.ones(7))


# ------------------------------------------------------------------------------ probes


def _probe_data(seed: int = 0):
    rng = np.random.default_rng(seed)
    features, labels, present = {}, {}, {}
    for split, n in (("train", 80), ("val", 40), ("test", 40)):
        y = np.tile([0, 1], n // 2)
        t1 = y[:, None] + 0.5 * rng.normal(size=(n, 3))
        falff = y[:, None] + 0.5 * rng.normal(size=(n, 2))
        mask = rng.random(n) > 0.3
        mask[:4] = True  # both classes surely present
        falff[~mask] = np.nan  # absent rows: never read
        features[split] = {"t1": t1, "falff": falff}
        labels[split] = y
        present[split] = {"t1": np.ones(n, dtype=bool), "falff": mask}
    return features, labels, present


def test_probes_use_the_rows_of_their_modality_and_joint_the_complete_rows():
    features, labels, present = _probe_data()
    out = linear_evaluation(features, labels, Cs=(0.1, 1.0), present=present)
    for split in ("train", "val", "test"):
        n, kept = len(labels[split]), int(present[split]["falff"].sum())
        assert out["rows"]["t1"][split] == n
        assert out["rows"]["falff"][split] == out["rows"]["joint"][split] == kept < n
    assert set(out["metrics"]["test"]) == {"t1", "falff", "joint"}
    rows = {s: present[s]["falff"] for s in ("train", "val", "test")}
    for probe in ("falff", "joint"):  # the same probe fitted by hand on the kept rows
        def x(split: str, probe: str = probe) -> np.ndarray:
            parts = [features[split]["t1"], features[split]["falff"]]
            chosen = parts[1] if probe == "falff" else np.concatenate(parts, axis=1)
            return chosen[rows[split]]

        by_hand = fit_probe((x("train"), labels["train"][rows["train"]]),
                            (x("val"), labels["val"][rows["val"]]),
                            (x("test"), labels["test"][rows["test"]]), Cs=(0.1, 1.0))
        assert out["metrics"]["test"][probe] == by_hand.metrics["test"]
    with pytest.raises(ValueError, match="probe 'falff'.*nan|NaN"):
        linear_evaluation(features, labels, Cs=(0.1,))  # without masks the NaN rows are read


def test_extract_split_encodes_only_present_rows_and_features_npz_keeps_the_masks(
        tmp_path: Path):
    class Sum(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            assert x.abs().sum(dim=tuple(range(1, x.dim()))).gt(0).all(), "a missing volume"
            return x.flatten(1)[:, :2] + 1.0

    g = torch.Generator().manual_seed(0)
    batches = []
    for start in (0, 3):
        falff = torch.tensor([True, False, True]) if start == 0 else torch.zeros(3, dtype=bool)
        x = {m: torch.rand(3, 4, generator=g) + 0.1 for m in MODS}
        x["falff"][~falff] = 0.0
        batches.append({**x, "label": torch.tensor([0, 1, 0]),
                        "present": {"t1": torch.ones(3, dtype=torch.bool), "falff": falff}})
    split = extract_split({m: Sum() for m in MODS}, batches)
    np.testing.assert_array_equal(split.present["falff"], [1, 0, 1, 0, 0, 0])
    assert split.present["t1"].all() and split.features["falff"].shape == (6, 2)
    assert not split.features["falff"][~split.present["falff"]].any()
    np.testing.assert_allclose(split.features["falff"][0], batches[0]["falff"][0, :2] + 1.0)
    path = save_features(tmp_path / "features.npz", {"test": split.features},
                         {"test": split.labels}, {"test": split.present})
    features, labels = read_features(path)
    assert set(features["test"]) == set(MODS) and labels["test"].tolist() == [0, 1, 0] * 2
    np.testing.assert_array_equal(read_presence(path)["test"]["falff"], split.present["falff"])
    old = save_features(tmp_path / "old.npz", {"test": split.features}, {"test": split.labels})
    assert set(read_features(old)[0]["test"]) == set(MODS)
    assert all(mask.all() for mask in read_presence(old)["test"].values())


# ------------------------------------------------------------------- refusals, end to end


@pytest.mark.parametrize("method", ["ae", "dccae", "rr_ae", "mmvae", "supervised"])
def test_methods_that_cannot_handle_missing_modalities_refuse(method: str):
    config = cfg.resolve("neuro-quick", None, {"method": method,
                                               "data.manifest": "/nowhere/manifest.csv",
                                               "cca.allow_small_batch": True})
    datamodule = SimpleNamespace(input_shapes={m: (1, 32, 32, 32) for m in MODS},
                                 num_classes=2, incomplete_sessions=7)
    with pytest.raises(ConfigError, match=rf"method {method} cannot train on sessions that "
                                          r"lack a modality, and 7 of the sessions"):
        build_method(config, datamodule)
    taxonomy = cfg.resolve("neuro-quick", None, {"data.manifest": "/nowhere/manifest.csv"})
    assert isinstance(build_method(taxonomy, datamodule), TaxonomyMethod)


@pytest.fixture(scope="module")
def incomplete_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A simulated cohort (24 subjects × 2 sessions, 6 mm), 30 % of sessions lacking fALFF."""
    from mmssl.data.neuro.simulate import SimulationSettings, simulate_cohort

    out = tmp_path_factory.mktemp("incomplete")
    settings = SimulationSettings(subjects=24, sessions=2, seed=1, voxel_size=6.0,
                                  missing_falff_fraction=0.3)
    return simulate_cohort(out, settings, progress=False)


def test_batches_eval_rows_splits_table_and_log(incomplete_cohort: Path, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture):
    module = NeuroDataModule(incomplete_cohort, MODS, num_folds=3, fold=0, batch_size=4,
                             seed=1, val_fraction=0.4, label_mapping={"CN": 0, "AD": 1},
                             preprocessing=Preprocessing(voxel_size=6.0, shape=(32, 32, 32)),
                             pad=0)
    with caplog.at_level(logging.INFO, logger="mmssl"):
        module.setup("fit")
    cohort = module.cohort
    assert cohort is not None
    used = np.unique(np.concatenate([module.split_rows(s)
                                     for s in ("pretrain", "train", "val", "test")]))
    lacking = int((~cohort.present["falff"][used]).sum())
    assert module.incomplete_sessions == lacking >= 1
    assert f"{lacking} of the {len(used)} sessions this run uses lack falff" in caplog.text
    # Per labelled subject: ses-1 unless only ses-2 is complete.
    evaluated = np.concatenate([module.split_rows(s) for s in ("train", "val", "test")])
    chosen = dict(zip(cohort.subjects[evaluated], cohort.sessions[evaluated], strict=True))
    has = {(s, t): bool(p) for s, t, p in zip(cohort.subjects, cohort.sessions,
                                                cohort.present["falff"], strict=True)}
    labelled = sorted(set(cohort.subjects[cohort.labels >= 0]))
    assert sorted(chosen) == labelled
    for subject in labelled:
        best = "ses-2" if has[(subject, "ses-2")] and not has[(subject, "ses-1")] else "ses-1"
        assert chosen[subject] == best, subject
    assert "ses-2" in chosen.values()  # the rule was exercised
    table = module.splits_table()
    np.testing.assert_array_equal(table["present_falff"], cohort.present["falff"])
    assert table["present_t1"].all()
    rows = module.split_rows("train")
    batch = next(iter(module.eval_dataloader("train")))
    assert set(batch["present"]) == set(MODS)
    n = len(batch["label"])
    assert batch["present"]["falff"].dtype == torch.bool
    np.testing.assert_array_equal(batch["present"]["falff"].numpy(),
                                  cohort.present["falff"][rows[:n]])
    pretrain = module.train_dataset()
    batch = pretrain.__getitems__(list(range(len(pretrain))))  # type: ignore[attr-defined]
    absent = ~batch["present"]["falff"]
    assert absent.any() and not batch["falff"][absent].any()
    assert batch["falff"][~absent].abs().sum(dim=(1, 2, 3, 4)).gt(0).all()
    item = pretrain[0]
    assert item["present"]["falff"].shape == () and item["t1"].shape[0] == 1


def test_a_complete_cohort_serves_no_presence(incomplete_cohort: Path, tmp_path: Path):
    lines = incomplete_cohort.read_text().splitlines()
    falff = lines[0].split(",").index("falff")
    complete = incomplete_cohort.with_name("complete.csv")  # the same files: cached already
    complete.write_text("\n".join([lines[0], *[line for line in lines[1:]
                                              if line.split(",")[falff]]]) + "\n")
    module = NeuroDataModule(complete, MODS, num_folds=3, batch_size=4, seed=1,
                             val_fraction=0.4, label_mapping={"CN": 0, "AD": 1},
                             preprocessing=Preprocessing(voxel_size=6.0, shape=(32, 32, 32)),
                             pad=0)
    module.setup("fit")
    assert module.cohort is not None and not module.cohort.has_missing
    assert module.incomplete_sessions == 0 and module.presence() is None
    assert "present" not in next(iter(module.eval_dataloader("train")))
    assert "present" not in module.train_dataset()[0]


QUICK = ["--set", "trainer.epochs=1", "--set", "model.width=8", "--set", "data.batch_size=8",
         "--set", "data.num_folds=3", "--set", "data.neuro.val_fraction=0.4",
         "--set", "trainer.progress_bar=false", "--set", "probe.Cs=[0.1,1.0]",
         "--set", "probe.max_iter=300"]


def test_end_to_end_run_on_a_cohort_with_missing_falff(incomplete_cohort: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "run"
    assert main(["run", "--preset", "neuro-quick", "--manifest", str(incomplete_cohort),
                 "--out", str(out), *QUICK]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"val", "test", "checkpoint"}
    assert metrics["checkpoint"]["choice"] == "best"
    for per in (metrics["val"], metrics["test"]):
        assert set(per) == {"t1", "falff", "joint"}
        assert all(isinstance(v, float) for m in per.values() for v in m.values())
    rows = json.loads((out / "probe.json").read_text())["default"]["rows"]
    present = read_presence(out / "features.npz")
    for split in ("train", "val", "test"):
        n = len(present[split]["t1"])
        assert rows["t1"][split] == n
        assert rows["joint"][split] == rows["falff"][split] == int(present[split]["falff"].sum())
    complete, total = sum(rows["joint"].values()), sum(rows["t1"].values())
    assert complete < total
    log = (out / "log.txt").read_text()
    assert f"joint probe on {complete} complete sessions of {total}" in log
    assert "lack falff" in log
    splits = (out / "splits.csv").read_text().splitlines()
    assert "present_falff" in splits[0].split(",")
    assert any(line.split(",")[5] == "False" for line in splits[1:])  # present_falff column
    assert "val/CR/block1/falff" in (out / "metrics.csv").read_text().splitlines()[0]
    capsys.readouterr()
    refused = tmp_path / "ae"
    assert main(["run", "--preset", "neuro-quick", "--method", "ae", "--manifest",
                 str(incomplete_cohort), "--out", str(refused), *QUICK]) == 2
    said = capsys.readouterr()
    text = said.out + said.err
    assert "method ae cannot train on sessions that lack a modality" in text
    assert "Traceback" not in text
