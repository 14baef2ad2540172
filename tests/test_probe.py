"""Tests for the frozen-encoder linear evaluation in :mod:`mmssl.evaluation.probe`."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    balanced_accuracy_score,
    brier_score_loss,
    roc_auc_score,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor, nn

from mmssl.evaluation.probe import (
    DEFAULT_CS,
    classification_metrics,
    extract_features,
    fit_probe,
    linear_evaluation,
)

# The probe must converge with its default iteration budget: a ConvergenceWarning is a failure.
pytestmark = pytest.mark.filterwarnings("error::sklearn.exceptions.ConvergenceWarning")


# --------------------------------------------------------------------------------------------
# extract_features
# --------------------------------------------------------------------------------------------


def _bn_buffers(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor, Tensor]:
    """running_mean, running_var and num_batches_tracked of a tracking BatchNorm."""
    mean, var, count = bn.running_mean, bn.running_var, bn.num_batches_tracked
    assert mean is not None and var is not None and count is not None
    return mean, var, count


class _BNEncoder(nn.Module):
    """Conv → BatchNorm → pool → dropout; train and eval outputs differ."""

    def __init__(self, wrap: bool) -> None:
        super().__init__()
        self.wrap = wrap
        self.conv = nn.Conv2d(2, 4, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        mean, var, count = _bn_buffers(self.bn)
        with torch.no_grad():  # running stats far from any batch's statistics
            mean.copy_(torch.tensor([1.0, -2.0, 0.5, 3.0]))
            var.copy_(torch.tensor([4.0, 0.25, 9.0, 1.0]))
            count.fill_(7)

    def forward(self, x: Tensor) -> Tensor | SimpleNamespace:
        z = self.drop(self.bn(self.conv(x)).mean(dim=(2, 3)))
        return SimpleNamespace(z=z) if self.wrap else z


def _bn_state(enc: _BNEncoder) -> list[Tensor]:
    return [t.clone() for t in _bn_buffers(enc.bn)]


def test_extract_features_eval_mode_order_and_restored_flags() -> None:
    torch.manual_seed(0)
    encoders = {"a": _BNEncoder(wrap=False), "b": _BNEncoder(wrap=True)}
    for enc in encoders.values():
        enc.train()
    encoders["b"].drop.eval()  # a mixed state that must survive as it is
    before = {k: _bn_state(e) for k, e in encoders.items()}
    expected_models = {k: copy.deepcopy(e).eval() for k, e in encoders.items()}

    xs = {"a": torch.randn(13, 2, 6, 6), "b": torch.randn(13, 2, 6, 6) * 3 + 1}
    labels = torch.tensor([4, 0, 2, 2, 1, 3, 0, 4, 1, 1, 3, 2, 0])
    bounds = [(0, 5), (5, 10), (10, 13)]  # uneven final batch
    loader = [{"a": xs["a"][i:j], "b": xs["b"][i:j], "label": labels[i:j]} for i, j in bounds]

    feats, y = extract_features(encoders, loader, device="cpu")

    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, labels.numpy())
    with torch.no_grad():
        out_b = expected_models["b"](xs["b"])
        assert isinstance(out_b, SimpleNamespace)
        expected = {"a": expected_models["a"](xs["a"]), "b": out_b.z}
        # Sanity: train mode gives something else, so the equality below is meaningful.
        train_copy = copy.deepcopy(encoders["a"]).train()
        assert not torch.allclose(train_copy(xs["a"][:5]), expected["a"][:5], atol=1e-2)
    for k in ("a", "b"):
        assert feats[k].shape == (13, 4)
        assert feats[k].dtype in (np.float32, np.float64)
        np.testing.assert_allclose(feats[k], expected[k].numpy(), rtol=1e-5, atol=1e-6)

    for k, enc in encoders.items():
        for old, new in zip(before[k], _bn_state(enc), strict=True):
            assert torch.equal(old, new), "BatchNorm running statistics changed"
    assert encoders["a"].training and encoders["a"].bn.training and encoders["a"].drop.training
    assert encoders["b"].training and encoders["b"].bn.training
    assert not encoders["b"].drop.training


def test_extract_features_restores_flags_on_error() -> None:
    enc = _BNEncoder(wrap=False).train()
    loader = [{"a": torch.randn(3, 2, 4, 4), "label": torch.zeros(3)}, {"label": torch.zeros(2)}]
    with pytest.raises(ValueError, match="modality 'a'"):
        extract_features({"a": enc}, loader)
    assert enc.training and enc.bn.training


# --------------------------------------------------------------------------------------------
# fit_probe
# --------------------------------------------------------------------------------------------


def _clusters(
    rng: np.random.Generator, centers: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    y = np.arange(n) % len(centers)
    return centers[y] + rng.normal(size=(n, centers.shape[1])), y


def test_fit_probe_separable_reaches_perfect_accuracy() -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 8)) * 10
    res = fit_probe(
        _clusters(rng, centers, 150), _clusters(rng, centers, 150), _clusters(rng, centers, 150)
    )
    assert res.val_metric == "accuracy"
    assert res.metrics["val"]["accuracy"] == 1.0
    assert res.metrics["test"]["accuracy"] == 1.0


def test_fit_probe_ties_go_to_smaller_C() -> None:
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(2, 5)) * 10
    res = fit_probe(_clusters(rng, centers, 100), _clusters(rng, centers, 100), Cs=(10.0, 0.1, 1.0))
    assert set(res.val_curve.values()) == {1.0}  # every C perfect on validation
    assert res.chosen_C == 0.1
    assert "test" not in res.metrics


def test_fit_probe_on_noise_is_near_chance() -> None:
    rng = np.random.default_rng(2)

    def noise(n: int) -> tuple[np.ndarray, np.ndarray]:
        return rng.normal(size=(n, 20)), rng.permutation(np.arange(n) % 2)

    res = fit_probe(noise(400), noise(2000), noise(2000))
    for split in ("val", "test"):
        assert abs(res.metrics[split]["accuracy"] - 0.5) < 0.05
        assert abs(res.metrics[split]["roc_auc"] - 0.5) < 0.05
    assert abs(res.metrics["test"]["balanced_accuracy"] - 0.5) < 0.05


def _noisy_linear(rng: np.random.Generator, w: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(n, w.size))
    return x, (x @ w + 3 * rng.normal(size=n) > 0).astype(np.int64)


def test_fit_probe_selects_C_on_validation_only() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=50)
    train, val = _noisy_linear(rng, w, 60), _noisy_linear(rng, w, 200)
    flipped_test = (val[0], 1 - val[1])  # prefers whatever validation likes least
    cs = DEFAULT_CS

    # Independent reference: the validation and test ROC AUC of every C.
    val_auc, test_auc = {}, {}
    for c in cs:
        ref = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000))
        ref.fit(*train)
        val_auc[c] = roc_auc_score(val[1], ref.predict_proba(val[0])[:, 1])
        test_auc[c] = roc_auc_score(flipped_test[1], ref.predict_proba(flipped_test[0])[:, 1])
    best_val = max(cs, key=lambda c: (val_auc[c], -c))
    best_test = max(cs, key=lambda c: (test_auc[c], -c))
    assert best_val != best_test, "scenario must make validation and test disagree"

    res = fit_probe(train, val, flipped_test, Cs=cs)
    assert res.val_metric == "roc_auc"
    assert res.chosen_C == best_val
    for c in cs:
        assert res.val_curve[float(c)] == pytest.approx(val_auc[c], abs=1e-6)
    assert res.metrics["test"]["roc_auc"] == pytest.approx(test_auc[best_val], abs=1e-6)

    # Whatever the test split is, the choice and the validation curve stay the same.
    for other_test in (val, None, _noisy_linear(rng, -w, 300)):
        other = fit_probe(train, val, other_test, Cs=cs)
        assert other.chosen_C == res.chosen_C
        assert other.val_curve == res.val_curve
        assert other.metrics["val"] == res.metrics["val"]


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------


def test_binary_metrics_match_sklearn_on_probe_probabilities() -> None:
    rng = np.random.default_rng(3)
    w = rng.normal(size=10)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        x, y = _noisy_linear(rng, w, n)
        return x, np.where(y == 1, 7, 3)  # labels {3, 7}: 7 is the positive class

    x_test, y_test = split(300)
    res = fit_probe(split(200), split(200), (x_test, y_test))
    m = res.metrics["test"]
    assert set(m) == {"accuracy", "balanced_accuracy", "roc_auc", "brier"}
    assert all(type(v) is float for v in m.values())

    np.testing.assert_array_equal(res.classes, [3, 7])
    p_pos = res.model.predict_proba(x_test)[:, 1]
    pred = res.model.predict(x_test)
    assert 0.6 < m["roc_auc"] < 0.99  # not trivially separable
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y_test == 7, p_pos), abs=1e-12)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_test, pred), abs=1e-12)
    assert m["brier"] == pytest.approx(brier_score_loss(y_test, p_pos, pos_label=7), abs=1e-12)
    assert m["accuracy"] == pytest.approx(float(np.mean(pred == y_test)), abs=1e-12)


def test_classification_metrics_by_hand() -> None:
    y = np.array([0, 0, 1, 1, 1])
    p1 = np.array([0.1, 0.6, 0.4, 0.9, 0.8])
    m = classification_metrics(y, np.stack([1 - p1, p1], axis=1), [0, 1])
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["roc_auc"] == pytest.approx(5 / 6)  # 5 of the 6 (pos, neg) pairs ordered
    assert m["brier"] == pytest.approx((0.01 + 0.36 + 0.36 + 0.01 + 0.04) / 5)

    proba = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4]])
    mc = classification_metrics([0, 2, 2, 1], proba, [0, 1, 2])
    assert set(mc) == {"accuracy", "balanced_accuracy"}
    assert mc["accuracy"] == pytest.approx(2 / 4)
    assert mc["balanced_accuracy"] == pytest.approx((1 + 0 + 0.5) / 3)


# --------------------------------------------------------------------------------------------
# linear_evaluation
# --------------------------------------------------------------------------------------------


def _two_halves(seed: int = 4, n: int = 400) -> tuple[dict, dict]:
    """label = a + 2b; modality "m1" sees only a, "m2" only b."""
    rng = np.random.default_rng(seed)
    features, labels = {}, {}
    for split in ("train", "val", "test"):
        a, b = rng.integers(0, 2, n), rng.integers(0, 2, n)
        m1 = np.column_stack([a + 0.1 * rng.normal(size=n), rng.normal(size=(n, 3))])
        m2 = np.column_stack([rng.normal(size=(n, 2)), b + 0.1 * rng.normal(size=n)])
        features[split] = {"m1": m1, "m2": m2}
        labels[split] = a + 2 * b
    return features, labels


def test_linear_evaluation_joint_probe_uses_both_modalities() -> None:
    features, labels = _two_halves()
    out = linear_evaluation(features, labels)
    assert set(out) == {"metrics", "chosen_C", "val_curve", "rows"}
    assert out["rows"] == {probe: {split: len(labels[split]) for split in ("train", "val", "test")}
                           for probe in ("m1", "m2", "joint")}  # complete rows: all of them
    assert set(out["metrics"]) == {"val", "test"}
    for split in ("val", "test"):
        per = out["metrics"][split]
        assert list(per) == ["m1", "m2", "joint"]
        assert per["joint"]["accuracy"] >= 0.99
        for m in ("m1", "m2"):
            assert 0.4 <= per[m]["accuracy"] <= 0.6
        assert "roc_auc" not in per["joint"]
    assert set(out["chosen_C"]) == {"m1", "m2", "joint"}
    assert set(out["val_curve"]["joint"]) == {str(float(c)) for c in DEFAULT_CS}
    # Plain JSON-serialisable floats throughout.
    assert json.loads(json.dumps(out)) == out
    assert all(
        type(v) is float for s in out["metrics"].values() for p in s.values() for v in p.values()
    )


def test_linear_evaluation_single_modality_has_no_joint() -> None:
    features, labels = _two_halves(n=120)
    only = {split: {"m1": f["m1"]} for split, f in features.items()}
    out = linear_evaluation(only, labels, Cs=(0.1, 1.0))
    assert list(out["metrics"]["test"]) == ["m1"]


def test_linear_evaluation_is_deterministic() -> None:
    features, labels = _two_halves(n=150)
    first = linear_evaluation(features, labels, seed=3)
    second = linear_evaluation(features, labels, seed=3)
    assert first == second


def test_linear_evaluation_errors() -> None:
    features, labels = _two_halves(n=60)

    no_test = {k: v for k, v in features.items() if k != "test"}
    with pytest.raises(ValueError, match="missing split 'test'"):
        linear_evaluation(no_test, labels)

    no_m2 = dict(features, val={"m1": features["val"]["m1"]})
    with pytest.raises(ValueError, match=r"split 'val' is missing modalities \['m2'\]"):
        linear_evaluation(no_m2, labels)

    short = dict(features, test={"m1": features["test"]["m1"], "m2": features["test"]["m2"][:-1]})
    with pytest.raises(ValueError, match=r"split 'test', modality 'm2': 59 feature rows but 60"):
        linear_evaluation(short, labels)

    one_class = dict(labels, val=np.zeros(60, dtype=np.int64))
    with pytest.raises(ValueError, match="split 'val' has a single class"):
        linear_evaluation(features, one_class)
