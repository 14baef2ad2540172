"""Stratified k-fold train/validation splits of a labelled training set."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedKFold

__all__ = ["check_fold", "stratified_fold"]


def check_fold(num_folds: int, fold: int) -> None:
    """Validate a ``(num_folds, fold)`` pair.

    Args:
        num_folds: number of folds ``K``; must be at least 2.
        fold: the selected fold; must lie in ``0..K-1``.

    Raises:
        ValueError: with a message naming the offending value and the valid range.
    """
    if isinstance(num_folds, bool) or not isinstance(num_folds, int | np.integer):
        raise ValueError(f"num_folds must be an integer, got {num_folds!r}")
    if isinstance(fold, bool) or not isinstance(fold, int | np.integer):
        raise ValueError(f"fold must be an integer, got {fold!r}")
    if num_folds < 2:
        raise ValueError(f"num_folds must be at least 2, got {num_folds}")
    if not 0 <= fold < num_folds:
        raise ValueError(
            f"fold must lie in 0..{num_folds - 1} for num_folds={num_folds}, got {fold}"
        )


def stratified_fold(labels: np.ndarray, *, num_folds: int, fold: int, seed: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    r"""Train and validation indices of one fold of a shuffled stratified K-fold split.

    The ``N`` samples are partitioned by
    ``StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=seed)`` into ``K`` disjoint
    validation sets :math:`V_0, \dots, V_{K-1}` with :math:`\bigcup_k V_k = \{0..N-1\}`, each
    holding about :math:`1/K` of every class; fold ``k`` returns :math:`(\{0..N-1\} \setminus V_k,
    V_k)`. The fold index is honoured (an earlier implementation always returned fold 0).

    Args:
        labels: class labels of shape ``(N,)``.
        num_folds: ``K >= 2``.
        fold: which fold to return, ``0 <= fold < K``.
        seed: the shuffling seed.

    Returns:
        ``(train_indices, val_indices)``, each sorted ascending, ``int64``.

    Raises:
        ValueError: ``num_folds < 2``, ``fold`` out of range, labels not 1-D, or (from
            scikit-learn) no class has ``num_folds`` members.
    """
    check_fold(num_folds, fold)
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    splitter = StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=seed)
    placeholder = np.zeros((len(labels), 1))
    for k, (train_idx, val_idx) in enumerate(splitter.split(placeholder, labels)):
        if k == fold:
            return np.sort(train_idx).astype(np.int64), np.sort(val_idx).astype(np.int64)
    raise AssertionError("unreachable: StratifiedKFold yields num_folds folds")
