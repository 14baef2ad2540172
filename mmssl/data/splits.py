"""Stratified k-fold train/validation splits of a labelled training set."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedKFold

__all__ = ["check_fold", "stratified_fold", "subject_splits"]


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


def subject_splits(
    subjects: np.ndarray,
    labels: np.ndarray,
    *,
    num_folds: int,
    fold: int,
    seed: int,
    val_fraction: float = 0.2,
) -> dict[str, np.ndarray]:
    """Subject-level train/validation/test subject sets for one fold of a cohort.

    Rows are sessions: ``subjects[i]`` and ``labels[i]`` (−1 = unlabelled) describe row i. A
    subject's label is that of its first labelled row. Labelled subjects are split by a
    shuffled stratified K-fold (fold ``fold`` is the test set); of the other folds a stratified
    ``val_fraction`` of subjects is held out for validation. Unlabelled subjects go to
    ``unlabelled`` (pretraining only). No subject is in two sets.

    Returns:
        ``{"train", "val", "test", "unlabelled"}`` → sorted arrays of subject ids.

    Raises:
        ValueError: a fold out of range, too few labelled subjects per class for the folds.
    """
    from sklearn.model_selection import train_test_split

    check_fold(num_folds, fold)
    subjects = np.asarray(subjects).astype(str)
    labels = np.asarray(labels)
    subject_label: dict[str, int] = {}
    for subject, label in zip(subjects, labels, strict=True):
        if label >= 0 and subject not in subject_label:
            subject_label[subject] = int(label)
    labelled = np.array(sorted(subject_label))
    unlabelled = np.array(sorted(set(subjects) - set(subject_label)))
    if len(labelled) == 0:
        raise ValueError("the cohort has no labelled subject; probes need labels")
    y = np.array([subject_label[s] for s in labelled])
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"labelled subjects all have label {classes[0]}; probes need 2 classes")
    needed = max(num_folds, 2)
    if counts.min() < needed:
        raise ValueError(
            f"class {classes[counts.argmin()]} has {counts.min()} labelled subjects; "
            f"{num_folds}-fold subject-level splits need at least {needed} per class"
        )
    rest, test = stratified_fold(y, num_folds=num_folds, fold=fold, seed=seed)
    train, val = train_test_split(rest, test_size=val_fraction, stratify=y[rest],
                                  random_state=seed)
    return {
        "train": np.sort(labelled[train]),
        "val": np.sort(labelled[val]),
        "test": np.sort(labelled[test]),
        "unlabelled": unlabelled,
    }
