"""Stratified K-fold train/validation splits."""

from __future__ import annotations

import numpy as np
import pytest

from mmssl.data.splits import check_fold, stratified_fold

LABELS = np.repeat(np.arange(10), 23)[np.random.default_rng(0).permutation(230)]


def test_fold_partitions_and_is_stratified() -> None:
    train, val = stratified_fold(LABELS, num_folds=5, fold=2, seed=343)
    assert train.dtype == np.int64 and val.dtype == np.int64
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)  # sorted, no repeats
    assert np.intersect1d(train, val).size == 0
    np.testing.assert_array_equal(np.union1d(train, val), np.arange(230))
    counts = np.bincount(LABELS[val], minlength=10)
    assert counts.min() >= 4 and counts.max() <= 5  # 23 / 5 per class


def test_folds_differ_and_cover_everything() -> None:
    vals = [stratified_fold(LABELS, num_folds=5, fold=k, seed=343)[1] for k in range(5)]
    for a in range(5):
        for b in range(a + 1, 5):
            assert np.intersect1d(vals[a], vals[b]).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate(vals)), np.arange(230))


def test_seed_determines_the_split() -> None:
    a = stratified_fold(LABELS, num_folds=4, fold=1, seed=7)[1]
    np.testing.assert_array_equal(a, stratified_fold(LABELS, num_folds=4, fold=1, seed=7)[1])
    assert not np.array_equal(a, stratified_fold(LABELS, num_folds=4, fold=1, seed=8)[1])


def test_shuffled_not_contiguous() -> None:
    ordered = np.repeat(np.arange(10), 23)  # sorted labels: unshuffled K-fold takes runs
    val = stratified_fold(ordered, num_folds=5, fold=0, seed=0)[1]
    assert np.any(np.diff(val) > 1)
    first_of_class = [val[ordered[val] == k][0] - 23 * k for k in range(10)]
    assert len(set(first_of_class)) > 1  # not the same offset in every class


@pytest.mark.parametrize(("num_folds", "fold", "match"), [
    (5, 5, r"0\.\.4"),
    (5, -1, r"0\.\.4"),
    (1, 0, "at least 2"),
    (0, 0, "at least 2"),
])
def test_bad_fold_arguments(num_folds: int, fold: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        stratified_fold(LABELS, num_folds=num_folds, fold=fold, seed=0)
    with pytest.raises(ValueError, match=match):
        check_fold(num_folds, fold)


def test_non_integer_fold_rejected() -> None:
    with pytest.raises(ValueError, match="integer"):
        check_fold(5, 1.0)  # type: ignore[arg-type]
