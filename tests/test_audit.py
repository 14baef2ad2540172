"""Cross-validated decoding of known variables (mmssl.evaluation.audit)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score
from sklearn.model_selection import KFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mmssl.evaluation.audit import RIDGE_ALPHAS, decode, variable_kind


def test_numeric_decoding_is_the_out_of_fold_r2_of_ridge() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 6))
    y = x @ np.array([1.0, -2.0, 0.0, 0.5, 0.0, 0.0]) + 0.5 * rng.normal(size=120)
    result = decode(x, y, folds=5, seed=3)
    assert (result.kind, result.metric, result.chance, result.subjects) == ("numeric", "r2", 0.0,
                                                                            120)
    oracle = cross_val_predict(make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS)),
                               x, y, cv=KFold(5, shuffle=True, random_state=3))
    assert result.score == pytest.approx(r2_score(y, oracle), abs=1e-12)
    assert result.score > 0.9  # the signal explains 5.25 / 5.5 of the variance
    noise = decode(x, rng.normal(size=120), folds=5)
    assert noise.score < 0.05  # nothing to decode: about zero, or below


def test_categorical_decoding_scores_auc_for_two_classes_and_balanced_accuracy_beyond() -> None:
    rng = np.random.default_rng(1)
    site = np.repeat(np.array(["S1", "S2", "S3"], dtype=object), 40)
    x = rng.normal(size=(120, 4))
    x[:, 0] += np.select([site == "S1", site == "S2"], [-3.0, 0.0], 3.0)
    result = decode(x, site)
    assert (result.metric, result.classes, result.chance) == ("balanced_accuracy", 3,
                                                              pytest.approx(1 / 3))
    assert result.score > 0.85
    label = (x[:, 1] > 0).astype(int)
    binary = decode(x, label)
    assert (binary.metric, binary.chance) == ("roc_auc", 0.5) and binary.score > 0.95
    shuffled = decode(x, rng.permutation(label))
    assert abs(shuffled.score - 0.5) < 0.15


def test_missing_values_are_left_out_and_pca_is_fitted_within_folds() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, 500))  # more features than subjects, as voxels
    y = x[:, :3].sum(1)
    with_missing = y.copy()
    with_missing[:10] = np.nan
    result = decode(x, with_missing, components=40)
    assert result.subjects == 50
    labels = np.array([None] * 5 + [0, 1] * 25 + [None] * 5, dtype=object)
    assert decode(x, labels).subjects == 50


def test_variable_kinds() -> None:
    assert variable_kind(np.linspace(60, 90, 50)) == "numeric"
    assert variable_kind(np.array([0, 1, 1, 0])) == "categorical"
    assert variable_kind(np.array(["F", "M", "F"], dtype=object)) == "categorical"
    assert variable_kind(np.arange(30)) == "numeric"


@pytest.mark.parametrize(("features", "values", "kwargs", "message"), [
    (np.zeros((10, 2)), np.zeros(9), {}, "must be"),
    (np.zeros((10, 2)), np.zeros(10), {"folds": 1}, "at least 2"),
    (np.ones((10, 2)), np.array(["a"] * 10, dtype=object), {}, "two classes"),
    (np.ones((12, 2)), np.array(["a"] * 9 + ["b"] * 3, dtype=object), {}, "smallest class"),
    (np.full((12, 2), np.nan), np.arange(12.0), {"kind": "numeric"}, "NaN or infinite"),
    (np.ones((8, 2)), np.arange(8.0), {"kind": "numeric"}, "too few"),
])
def test_bad_inputs_are_named(features, values, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        decode(features, values, **kwargs)
