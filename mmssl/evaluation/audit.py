r"""What a representation encodes: cross-validated linear decoding of known variables.

A label-free representation of brain scans carries whatever varies most between subjects. For
group inference that must be the disorder, not the scanner: self-supervised features that
decode the acquisition site better than the diagnosis will show the site in every map built
on them. This module measures it, per variable :math:`y` and feature matrix :math:`X`
(subjects × features), by :math:`K`-fold cross-validation over subjects:

* a **categorical** :math:`y` (diagnosis, site, sex) is predicted by an L2-regularised logistic
  regression on standardised features; the score is the ROC AUC for two classes
  (chance 0.5) and the balanced accuracy otherwise (chance :math:`1/C`);
* a **numeric** :math:`y` (age, a planted severity or coupling) is predicted by ridge regression
  (penalty chosen by efficient leave-one-out inside each training fold); the score is the
  out-of-fold :math:`R^2 = 1 - \sum_i (y_i - \hat y_i)^2 / \sum_i (y_i - \bar y)^2` over all
  subjects (chance 0; negative when predicting worse than the mean).

Every model is fitted on the training folds only. With ``components`` set, the features are
first reduced by a PCA fitted inside each training fold — the reference for raw volumes, whose
voxels far outnumber the subjects. Folds are stratified for categorical variables and
shuffled with a fixed seed, so a score is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import balanced_accuracy_score, r2_score, roc_auc_score
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

__all__ = ["Decoding", "decode", "variable_kind"]

Kind = Literal["categorical", "numeric"]
#: Ridge penalties searched (standardised features).
RIDGE_ALPHAS: NDArray[np.float64] = np.logspace(-2, 5, 15)


@dataclass(frozen=True)
class Decoding:
    """How well one variable is decoded from one feature matrix.

    Attributes:
        kind: ``categorical`` or ``numeric``.
        metric: ``roc_auc``, ``balanced_accuracy`` or ``r2``.
        score: the out-of-fold score.
        chance: the score of a predictor that ignores the features.
        subjects: rows used (those with a value).
        classes: the number of classes (categorical), else 0.
    """

    kind: Kind
    metric: str
    score: float
    chance: float
    subjects: int
    classes: int = 0


def variable_kind(values: ArrayLike, max_levels: int = 10) -> Kind:
    """``numeric`` for a float or integer column with more than ``max_levels`` distinct values,
    else ``categorical`` (strings, booleans, integer codes such as a diagnosis)."""
    array = np.asarray(values)
    if array.dtype.kind in "fiu" and len(np.unique(array[~_missing(array)])) > max_levels:
        return "numeric"
    return "categorical"


def _missing(array: NDArray[np.generic]) -> NDArray[np.bool_]:
    if array.dtype.kind == "f":
        return np.isnan(array)
    if array.dtype.kind == "O":
        return np.array([v is None or (isinstance(v, float) and np.isnan(v)) or v == ""
                         for v in array], dtype=bool)
    return np.zeros(array.shape, dtype=bool)


def decode(features: ArrayLike, values: ArrayLike, *, kind: Kind | None = None, folds: int = 5,
           components: int | None = None, seed: int = 0, max_iter: int = 2000) -> Decoding:
    """Cross-validated linear decoding of ``values`` from ``features`` (module docstring).

    Args:
        features: (n_subjects, n_features).
        values: (n_subjects,) the variable; missing entries (NaN, None, "") are left out.
        kind: ``categorical`` or ``numeric`` (default: :func:`variable_kind`).
        folds: K of the K-fold cross-validation (at least 2).
        components: reduce by a PCA with this many components fitted in each training fold.
        seed: seed of the fold assignment and of the models.

    Raises:
        ValueError: mismatched rows, fewer than two classes, too few subjects per fold or
            class, non-finite features.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(values)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"features {x.shape} and values ({len(y)},) must be "
                         "(subjects, features) and (subjects,)")
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    keep = ~_missing(y)
    x, y = x[keep], y[keep]
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values")
    kind = kind or variable_kind(y)
    model: Pipeline
    if kind == "categorical":
        classes, codes = np.unique(y.astype(str), return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"a categorical variable needs two classes, found {list(classes)}")
        smallest = int(np.bincount(codes).min())
        if smallest < folds:
            raise ValueError(f"the smallest class has {smallest} subjects, fewer than the "
                             f"{folds} folds")
        splitter: StratifiedKFold | KFold = StratifiedKFold(folds, shuffle=True,
                                                            random_state=seed)
        model = make_pipeline(StandardScaler(), LogisticRegression(
            C=0.1, max_iter=max_iter, class_weight="balanced", random_state=seed))
        target = codes
    else:
        if len(y) < 2 * folds:
            raise ValueError(f"{len(y)} subjects are too few for {folds} folds")
        splitter = KFold(folds, shuffle=True, random_state=seed)
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS))
        target = y.astype(np.float64)
    if components:
        model.steps.insert(1, ("pca", PCA(n_components=components, random_state=seed)))
    binary = kind == "categorical" and len(np.unique(target)) == 2
    predicted = np.zeros(len(target), dtype=np.float64)
    for train, test in splitter.split(x, target):
        fitted = clone(model)
        if components:
            fitted.set_params(pca__n_components=min(components, len(train) - 1, x.shape[1]))
        fitted.fit(x[train], target[train])
        if binary:
            predicted[test] = fitted.predict_proba(x[test])[:, 1]
        else:
            predicted[test] = fitted.predict(x[test])
    if kind == "numeric":
        return Decoding("numeric", "r2", float(r2_score(target, predicted)), 0.0, len(target))
    n_classes = int(target.max()) + 1
    if binary:
        return Decoding("categorical", "roc_auc", float(roc_auc_score(target, predicted)), 0.5,
                        len(target), 2)
    return Decoding("categorical", "balanced_accuracy",
                    float(balanced_accuracy_score(target, predicted.astype(int))),
                    1.0 / n_classes, len(target), n_classes)
