"""Voxel-wise group inference and cluster tables, checked against independent oracles.

Oracles: numpy least squares for the t-statistic, a brute-force Freedman–Lane max-T over all
8! permutations for the FWE p-values, binomial bounds for the null false-positive rate, a
planted blob for detection and localisation, and brute-force nearest-label search for atlas
naming.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mmssl.evaluation.clusters import cluster_table, region_summary
from mmssl.evaluation.group import (
    abs_t_correlation,
    design_matrix,
    to_volume,
    voxelwise_group_test,
)

# ------------------------------------------------------------------------------------------
# Independent oracles
# ------------------------------------------------------------------------------------------


def ols_group_t(design: np.ndarray, y: np.ndarray) -> np.ndarray:
    """t of column 0 by plain least squares: t = beta_0 / sqrt(s^2 [(X'X)^-1]_00)."""
    n, p = design.shape
    beta, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ beta
    s2 = (residual**2).sum(axis=0) / (n - p)
    return beta[0] / np.sqrt(s2 * np.linalg.inv(design.T @ design)[0, 0])


def freedman_lane_max_t(
    design: np.ndarray, y: np.ndarray, permutations: np.ndarray, chunk: int = 4096
) -> np.ndarray:
    """max_v |t_v| for each row permutation P of the reduced-model residuals, refitted in full.

    Freedman–Lane: y* = P R_Z y + Z gamma; the Z part is absorbed by the full model, so the
    refit of P R_Z y on [x, Z] gives the same t.
    """
    n, p = design.shape
    confounds = design[:, 1:]
    residual = y - confounds @ np.linalg.lstsq(confounds, y, rcond=None)[0]
    xtx_inv = np.linalg.inv(design.T @ design)
    row0 = (xtx_inv @ design.T)[0]
    annihilator = np.eye(n) - design @ xtx_inv @ design.T
    out = []
    for start in range(0, len(permutations), chunk):
        y_star = residual[permutations[start : start + chunk]]  # (b, n, v)
        beta0 = np.einsum("n,bnv->bv", row0, y_star)
        res = np.einsum("mn,bnv->bmv", annihilator, y_star)
        s2 = (res**2).sum(axis=1) / (n - p)
        t = beta0 / np.sqrt(s2 * xtx_inv[0, 0])
        out.append(np.abs(t).max(axis=1))
    return np.concatenate(out)


def hand_design(group: np.ndarray, age: np.ndarray, sex: np.ndarray) -> np.ndarray:
    """[group, 1, age (raw, uncentred), sex==M] built without the module."""
    return np.column_stack([group, np.ones_like(age), age, (sex == "M").astype(float)])


def small_cohort(n: int, seed: int) -> tuple[np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    group = np.array([1] * (n // 2) + [0] * (n - n // 2))
    covariates = pd.DataFrame(
        {
            "age": rng.uniform(55, 85, n).round(1),
            "sex": np.where(np.arange(n) % 3 == 0, "M", "F"),
        }
    )
    return group, covariates


# ------------------------------------------------------------------------------------------
# Design matrix
# ------------------------------------------------------------------------------------------


def test_design_codes_centres_numeric_and_one_hot_categoricals_with_a_reference():
    groups = ["AD", "CN", "AD", "CN", "AD", "CN", "CN", "AD"]
    cov = pd.DataFrame(
        {
            "age": [70.0, 65.0, 80.0, 72.0, 68.0, 60.0, 75.0, 77.0],
            "sex": ["F", "M", "M", "F", "F", "M", "F", "M"],
            "site": ["B", "A", "C", "B", "A", "C", "A", "B"],
        }
    )
    x, names = design_matrix(groups, cov, group_codes={"AD": 1, "CN": 0})
    assert names == ("group", "intercept", "age", "sex[M]", "site[B]", "site[C]")
    np.testing.assert_array_equal(x[:, 0], [1, 0, 1, 0, 1, 0, 0, 1])
    np.testing.assert_array_equal(x[:, 1], 1.0)
    np.testing.assert_allclose(x[:, 2], cov["age"] - cov["age"].mean())
    np.testing.assert_array_equal(x[:, 3], (cov["sex"] == "M").astype(float))
    np.testing.assert_array_equal(x[:, 4], (cov["site"] == "B").astype(float))
    np.testing.assert_array_equal(x[:, 5], (cov["site"] == "C").astype(float))
    design = design_matrix(groups, cov, group_codes={"AD": 1, "CN": 0})
    assert design.reference_levels == {"sex": "F", "site": "A"}
    # A categorical dtype's own first category is the reference.
    cov_cat = cov.assign(site=pd.Categorical(cov["site"], categories=["C", "B", "A"]))
    _, names_cat = design_matrix(groups, cov_cat, group_codes={"AD": 1, "CN": 0})
    assert names_cat[-2:] == ("site[B]", "site[A]")


def test_design_missing_covariate_is_an_error_naming_column_and_rows_or_dropped_on_request():
    group, cov = small_cohort(10, seed=1)
    cov.loc[[2, 7], "age"] = np.nan
    with pytest.raises(ValueError, match=r"'age'.*rows \[2, 7\]"):
        design_matrix(group, cov)
    with pytest.warns(UserWarning, match="dropped 2 subjects"):
        design = design_matrix(group, cov, drop_missing=True)
    assert design.matrix.shape == (8, 4)
    np.testing.assert_array_equal(design.rows, [0, 1, 3, 4, 5, 6, 8, 9])
    assert design.dropped == {"age": (2, 7)}
    kept_age = cov["age"].drop(index=[2, 7]).to_numpy()
    np.testing.assert_allclose(design.matrix[:, 2], kept_age - kept_age.mean())


@pytest.mark.parametrize(
    ("groups", "covariates", "codes", "message"),
    [
        ([1, 1, 1, 1, 1], None, None, "all 5 subjects .* are patients"),
        ([0, 0, 0, 0], None, None, "are controls"),
        (
            ["AD", "CN", "MCI", "AD"],
            None,
            {"AD": 1, "CN": 0},
            r"unknown labels 'MCI' at rows \[2\]",
        ),
        ([1, 0, 2, 1], None, None, r"unknown labels 2"),
        ([1, 0, None, 1], None, None, "unknown labels None"),
        ([1, 0, 1, 0], None, {"AD": 2}, "must map labels to 1"),
        ([1, 0, 1, 0, 1], pd.DataFrame({"scanner": ["X"] * 5}), None, "'scanner' has a single"),
        ([1, 0, 1, 0, 1], pd.DataFrame({"tiv": [1.5] * 5}), None, "'tiv' is constant"),
        ([1, 0, 1, 0], pd.DataFrame({"a": [1.0, 2, 3, 4]}).iloc[:3], None, "3 rows"),
    ],
)
def test_design_rejects_bad_groups_and_covariates(groups, covariates, codes, message):
    with pytest.raises(ValueError, match=message):
        design_matrix(groups, covariates, group_codes=codes)


def test_design_rejects_collinear_confounds_and_a_group_confounded_with_site():
    group, cov = small_cohort(12, seed=2)
    with pytest.raises(ValueError, match="'age_months' is collinear"):
        design_matrix(group, cov.assign(age_months=12 * cov["age"] + 3))
    site = np.where(group == 1, "S1", "S2")
    with pytest.raises(ValueError, match="group indicator is a linear combination"):
        design_matrix(group, cov.assign(site=site))
    with pytest.raises(ValueError, match="need more subjects than columns"):
        design_matrix([1, 0, 1], pd.DataFrame({"age": [60.0, 70, 65]}))


# ------------------------------------------------------------------------------------------
# The t-statistic and p-values
# ------------------------------------------------------------------------------------------


def test_t_map_equals_numpy_ols_with_age_and_sex_in_a_masked_volume():
    n, shape = 15, (3, 4, 5)
    group, cov = small_cohort(n, seed=3)
    rng = np.random.default_rng(3)
    mask = rng.random(shape) < 0.6
    maps = rng.normal(size=(n, *shape)) + 0.04 * cov["age"].to_numpy()[:, None, None, None]
    maps += 0.8 * group[:, None, None, None] * (np.arange(5) / 4)[None, None, None, :]
    result = voxelwise_group_test(maps, group, cov, mask=mask, n_permutations=0)

    expected = ols_group_t(hand_design(group, cov["age"].to_numpy(), cov["sex"]), maps[:, mask])
    np.testing.assert_allclose(result.t, expected, rtol=1e-8, atol=1e-10)
    assert result.df == n - 4
    assert result.design_names == ("group", "intercept", "age", "sex[M]")
    assert result.n_per_group == {"patients": 7, "controls": 8}
    np.testing.assert_allclose(result.p_uncorrected, 2 * stats.t.sf(np.abs(expected), n - 4))
    volume = result.t_volume
    assert volume.shape == shape
    np.testing.assert_allclose(volume[mask], expected, rtol=1e-8)
    assert np.all(volume[~mask] == 0)
    assert np.all(np.isnan(result.p_fwe))
    with pytest.raises(ValueError, match="n_permutations=0"):
        result.threshold()
    # Flat maps already masked, with the mask for volumes, give the same result.
    flat = voxelwise_group_test(maps[:, mask], group, cov, mask=mask, n_permutations=0)
    np.testing.assert_allclose(flat.t_volume, volume)
    one_sided = voxelwise_group_test(maps[:, mask], group, cov, n_permutations=0, two_sided=False)
    np.testing.assert_allclose(one_sided.p_uncorrected, stats.t.sf(expected, n - 4))
    assert one_sided.mask is None


def test_fwe_p_values_agree_with_brute_force_freedman_lane_over_all_permutations():
    n, n_voxels, n_perm = 8, 30, 5000
    group, cov = small_cohort(n, seed=4)
    rng = np.random.default_rng(4)
    y = rng.normal(size=(n, n_voxels)) + 0.05 * cov["age"].to_numpy()[:, None]
    y[:, :4] += 4.0 * group[:, None]  # a few voxels with an effect, so some p are small
    result = voxelwise_group_test(y, group, cov, n_permutations=n_perm, seed=11)

    design = hand_design(group, cov["age"].to_numpy(), cov["sex"])
    t_obs = ols_group_t(design, y)
    np.testing.assert_allclose(result.t, t_obs, rtol=1e-8)
    all_perms = np.array(list(itertools.permutations(range(n))))
    assert len(all_perms) == math.factorial(n)
    exact_null = np.sort(freedman_lane_max_t(design, y, all_perms))
    # exact permutation p: share of all 8! permutations (identity included) with max|t| >= |t|
    p_exact = 1 - np.searchsorted(exact_null, np.abs(t_obs) - 1e-9, side="left") / len(exact_null)
    sd = np.sqrt(p_exact * (1 - p_exact) / n_perm)
    tolerance = 4.5 * sd + 2.0 / (n_perm + 1)
    assert np.all(np.abs(result.p_fwe - p_exact) <= tolerance), (result.p_fwe, p_exact)
    assert p_exact.min() < 0.05  # the comparison covers small p-values too

    # The max-T null distribution is the Freedman-Lane one (KS against the exact CDF)...
    def exact_cdf(x: np.ndarray) -> np.ndarray:
        return np.searchsorted(exact_null, x, side="right") / len(exact_null)

    assert len(result.h0_max_t) == n_perm
    assert stats.kstest(result.h0_max_t, exact_cdf).pvalue > 1e-3
    # ...and the check has power: sign-flipping (what nilearn does when handed an explicit
    # intercept column) gives a visibly different null on this design.
    from nilearn.mass_univariate import permuted_ols

    flipped = permuted_ols(
        design[:, [0]],
        y,
        design[:, 1:],
        model_intercept=False,
        n_perm=n_perm,
        random_state=11,
        output_type="dict",
    )
    assert stats.kstest(flipped["h0_max_t"][0], exact_cdf).pvalue < 1e-6


def test_null_maps_give_any_fwe_false_positive_at_most_about_alpha():
    reps, n, n_voxels, alpha = 100, 20, 60, 0.05
    group, cov = small_cohort(n, seed=5)
    rng = np.random.default_rng(5)
    hits = 0
    for rep in range(reps):
        y = rng.normal(size=(n, n_voxels)) + 0.05 * cov["age"].to_numpy()[:, None]
        result = voxelwise_group_test(y, group, cov, n_permutations=199, seed=rep)
        hits += bool(result.threshold(alpha).any())
    # P(Binomial(100, 0.05) >= 12) < 0.005; the exact level here is 9/200 = 0.045.
    upper = stats.binom.ppf(0.995, reps, alpha)
    assert hits <= upper, hits
    assert hits >= 1, "no false positive in 100 null runs: the test is far too conservative"


def test_constant_voxels_get_t_zero_p_one_and_do_not_disturb_the_others():
    n = 12
    group, cov = small_cohort(n, seed=6)
    rng = np.random.default_rng(6)
    y = rng.normal(size=(n, 10))
    y_with = np.column_stack([y[:, :5], np.full(n, 5.0), y[:, 5:], np.zeros(n)])
    a = voxelwise_group_test(y, group, cov, n_permutations=50, seed=1)
    b = voxelwise_group_test(y_with, group, cov, n_permutations=50, seed=1)
    live = np.r_[0:5, 6:11]
    np.testing.assert_allclose(b.t[live], a.t, rtol=1e-10)
    np.testing.assert_allclose(b.p_fwe[live], a.p_fwe)
    assert b.t[5] == 0 and b.t[11] == 0
    assert b.p_fwe[5] == 1 and b.p_uncorrected[11] == 1
    np.testing.assert_array_equal(np.flatnonzero(b.degenerate), [5, 11])


def test_dropping_subjects_with_missing_covariates_drops_their_maps_too():
    n = 14
    group, cov = small_cohort(n, seed=7)
    rng = np.random.default_rng(7)
    y = rng.normal(size=(n, 8))
    cov.loc[[3], "sex"] = None
    with pytest.warns(UserWarning, match="dropped 1 subjects"):
        result = voxelwise_group_test(y, group, cov, n_permutations=0, drop_missing=True)
    keep = np.delete(np.arange(n), 3)
    sex = cov["sex"].to_numpy()[keep]
    expected = ols_group_t(hand_design(group[keep], cov["age"].to_numpy()[keep], sex), y[keep])
    np.testing.assert_allclose(result.t, expected, rtol=1e-8)
    assert result.dropped == {"sex": (3,)}
    with pytest.raises(ValueError, match="maps has 13 subjects but groups has 14"):
        voxelwise_group_test(y[1:], group, cov, n_permutations=0, drop_missing=True)


def test_bad_maps_are_rejected():
    group = np.array([1, 0, 1, 0, 1, 0])
    with pytest.raises(ValueError, match="mask has shape"):
        voxelwise_group_test(np.zeros((6, 2, 2, 2)), group, mask=np.ones((2, 2, 3)))
    bad = np.random.default_rng(0).normal(size=(6, 4))
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN/infinite.*subject 2"):
        voxelwise_group_test(bad, group)
    with pytest.raises(ValueError, match="every voxel is constant"):
        voxelwise_group_test(np.ones((6, 4)), group)
    with pytest.raises(ValueError, match="n_permutations"):
        voxelwise_group_test(np.ones((6, 4)), group, n_permutations=-1)


# ------------------------------------------------------------------------------------------
# Planted effect: detection, cluster table, region summary, localisation
# ------------------------------------------------------------------------------------------


def distance_from(shape: tuple[int, int, int], centre: tuple[int, int, int]) -> np.ndarray:
    """Euclidean distance (in voxels) of every voxel of ``shape`` from ``centre``."""
    grid = np.indices(shape)
    d2 = sum((grid[a] - centre[a]) ** 2 for a in range(3))
    return np.sqrt(d2)


def test_planted_blobs_are_detected_and_described_by_the_cluster_table():
    from mmssl.evaluation.saliency import localisation_auc

    shape, n = (14, 14, 14), 24
    affine = np.array([[4.0, 0, 0, -28], [0, 4, 0, -30], [0, 0, 4, -22], [0, 0, 0, 1]])
    brain = distance_from(shape, (7, 7, 7)) <= 6.5
    up_centre, down_centre, radius = (5, 8, 6), (9, 4, 9), 2.0
    d_up, d_down = distance_from(shape, up_centre), distance_from(shape, down_centre)
    up, down = d_up <= radius, d_down <= radius
    # Plateau (sharp edge, so the extent is the blob's) plus a cone peaking at the centre.
    profile_up = np.where(up, 1 + 0.5 * (1 - d_up / radius), 0.0)
    profile_down = np.where(down, 1 + 0.5 * (1 - d_down / radius), 0.0)
    group, cov = small_cohort(n, seed=8)
    rng = np.random.default_rng(8)
    age = cov["age"].to_numpy()
    maps = rng.normal(size=(n, *shape)) + 0.05 * (age - 70)[:, None, None, None]
    maps += 4.0 * group[:, None, None, None] * (profile_up - profile_down)
    result = voxelwise_group_test(maps, group, cov, mask=brain, n_permutations=300, seed=3)

    significant = result.threshold(0.05)
    table = cluster_table(result.t_volume, affine, significant)
    # Two blob-sized clusters; FWE allows a stray false-positive voxel (5% of runs) beside them.
    assert (table["n_voxels"] >= 10).sum() == 2, table
    assert table["n_voxels"].iloc[:2].min() >= 10, table  # the blobs have the largest |peak|
    assert localisation_auc(np.abs(result.t_volume), up | down, brain) > 0.99
    voxel_volume = 64.0
    for centre, blob, sign in ((up_centre, up, 1), (down_centre, down, -1)):
        row = table.iloc[:2][np.sign(table["peak_stat"].iloc[:2]) == sign].iloc[0]
        peak = np.array([row["peak_i"], row["peak_j"], row["peak_k"]])
        assert np.abs(peak - np.array(centre)).max() <= 1, (peak, centre)
        assert abs(row["n_voxels"] - blob.sum()) <= 0.1 * blob.sum()
        assert row["volume_mm3"] == pytest.approx(row["n_voxels"] * voxel_volume)
        np.testing.assert_allclose(
            [row["peak_x"], row["peak_y"], row["peak_z"]], affine[:3, :3] @ peak + affine[:3, 3]
        )
        np.testing.assert_allclose(
            [row["com_x"], row["com_y"], row["com_z"]],
            affine[:3, :3] @ np.array(centre) + affine[:3, 3],
            atol=4.0,
        )
    assert list(table["cluster"]) == list(range(1, len(table) + 1))
    assert abs(table["peak_stat"].iloc[0]) >= abs(table["peak_stat"].iloc[1])

    # Region summary with an atlas on the same grid: the planted regions come first.
    atlas = np.zeros(shape, dtype=np.int16)
    atlas[up], atlas[down] = 1, 2
    atlas[2:5, 2:5, 2:5] = 3
    atlas[10:13, 9:12, 3:6] = 4
    names = {1: "planted up", 2: "planted down", 3: "other A", 4: "other B"}
    summary = region_summary(
        result.t_volume, affine, atlas, names, affine, brain, sort_by="mean_abs"
    )
    assert set(summary["region"].iloc[:2]) == {"planted up", "planted down"}
    by_mean = region_summary(result.t_volume, affine, atlas, names, affine, brain)
    assert by_mean["region"].iloc[0] == "planted up"
    assert by_mean["region"].iloc[-1] == "planted down"
    np.testing.assert_allclose(
        by_mean.set_index("region").loc["planted up", "mean"], result.t_volume[up & brain].mean()
    )


# ------------------------------------------------------------------------------------------
# Cluster geometry and atlas naming
# ------------------------------------------------------------------------------------------


def test_cluster_sizes_peaks_and_connectivity_on_a_hand_made_volume():
    shape = (10, 10, 10)
    affine = np.array([[2.0, 0, 0, -10], [0, 3, 0, 5], [0, 0, 4, -20], [0, 0, 0, 1]])
    stat = np.zeros(shape)
    stat[1:3, 1:3, 1:3] = 1.0
    stat[2, 1, 2] = 3.0  # peak of the cube
    stat[6, 6, 6], stat[7, 7, 7] = -5.0, -2.0  # touch at a corner only
    stat[6, 1, 6], stat[7, 2, 6] = 2.5, 2.0  # touch along an edge only
    sig = stat != 0

    t26 = cluster_table(stat, affine, sig, connectivity=26)
    assert list(t26["n_voxels"]) == [2, 8, 2]
    first = t26.iloc[0]
    assert first["peak_stat"] == -5.0 and (first["peak_i"], first["peak_j"]) == (6, 6)
    np.testing.assert_allclose([first["peak_x"], first["peak_y"], first["peak_z"]], [2, 23, 4])
    np.testing.assert_allclose([first["com_x"], first["com_y"], first["com_z"]], [3, 24.5, 6])
    cube = t26.iloc[1]
    assert cube["peak_stat"] == 3.0 and cube["volume_mm3"] == pytest.approx(8 * 24.0)
    np.testing.assert_allclose([cube["com_x"], cube["com_y"], cube["com_z"]], [-7, 9.5, -14])
    assert t26["peak_region"].isna().all()

    assert list(cluster_table(stat, affine, sig, connectivity=18)["n_voxels"]) == [1, 8, 2, 1]
    assert sorted(cluster_table(stat, affine, sig, connectivity=6)["n_voxels"]) == [1, 1, 1, 1, 8]
    assert list(cluster_table(stat, affine, sig, min_cluster_voxels=3)["n_voxels"]) == [8]
    empty = cluster_table(stat, affine, np.zeros(shape, bool))
    assert len(empty) == 0 and "peak_stat" in empty.columns
    with pytest.raises(ValueError, match="connectivity"):
        cluster_table(stat, affine, sig, connectivity=8)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN"):
        cluster_table(np.where(sig, np.nan, 0), affine, sig)
    with pytest.raises(ValueError, match="atlas_affine is required"):
        cluster_table(stat, affine, sig, atlas_labels=np.zeros(shape, int))


def test_atlas_naming_on_a_finer_flipped_grid_inside_near_and_far():
    # Stat map: 4 mm, 20^3. Atlas: 2 mm, x axis flipped, origins off the map's grid.
    map_affine = np.array([[4.0, 0, 0, -40], [0, 4, 0, -40], [0, 0, 4, -40], [0, 0, 0, 1]])
    atlas_affine = np.array([[-2.0, 0, 0, 40.5], [0, 2, 0, -41.5], [0, 0, 2, -39.5], [0, 0, 0, 1]])
    atlas = np.zeros((41, 41, 41), dtype=np.int32)
    atlas[10:16, 20:26, 20:26] = 7  # x in [10.5, 20.5] mm, y in [-1.5, 8.5], z in [0.5, 10.5]
    atlas[30:36, 5:10, 5:10] = 3
    names = {7: "Hippocampus_L", 3: "Precuneus"}

    def world_of_atlas(ijk: np.ndarray) -> np.ndarray:
        return ijk @ atlas_affine[:3, :3].T + atlas_affine[:3, 3]

    def voxel(x: float, y: float, z: float) -> tuple[int, int, int]:
        ijk = np.linalg.solve(map_affine[:3, :3], np.array([x, y, z]) - map_affine[:3, 3])
        assert np.allclose(ijk, np.rint(ijk))
        i, j, k = (int(v) for v in np.rint(ijk))
        return i, j, k

    stat, sig = np.zeros((20, 20, 20)), np.zeros((20, 20, 20), bool)
    inside, near, far = voxel(16, 4, 4), voxel(24, 4, 4), voxel(-24, 28, 28)
    for point, value in ((inside, 9.0), (near, 6.0), (far, 3.0)):
        stat[point], sig[point] = value, True
    # A 4-voxel cluster: 3 voxels in the hippocampus, 1 on background (peak at -8).
    cluster = [voxel(12, 0, 28), voxel(16, 0, 28), voxel(12, 4, 28), voxel(16, 4, 32)]
    atlas[10:16, 20:26, 30:35] = 7  # label 7 also at z in [20.5, 28.5]: z = 28 in, 32 out
    for point, value in zip(cluster, (-8.0, -1.0, -1.0, -1.0), strict=True):
        stat[point], sig[point] = value, True

    table = cluster_table(
        stat,
        map_affine,
        sig,
        atlas_labels=atlas,
        atlas_names=names,
        atlas_affine=atlas_affine,
        connectivity=26,
    ).set_index("peak_stat")

    assert table.loc[9.0, "peak_region"] == "Hippocampus_L"
    assert table.loc[9.0, "peak_region_distance_mm"] == 0.0
    # Just outside (x = 24 mm, region ends at x = 20.5): nearest labelled voxel by brute force.
    labelled = np.argwhere(atlas != 0)
    distance = np.linalg.norm(world_of_atlas(labelled) - np.array([24.0, 4, 4]), axis=1)
    nearest = labelled[np.argmin(distance)]
    assert table.loc[6.0, "peak_region"] == names[int(atlas[tuple(nearest)])] == "Hippocampus_L"
    np.testing.assert_allclose(table.loc[6.0, "peak_region_distance_mm"], distance.min())
    assert 0 < distance.min() <= 5.0
    assert table.loc[3.0, "peak_region"] == "unlabelled"
    assert np.isnan(table.loc[3.0, "peak_region_distance_mm"])
    assert table.loc[3.0, "region_fractions"] == {"unlabelled": 1.0}
    assert table.loc[-8.0, "n_voxels"] == 4
    assert table.loc[-8.0, "peak_region"] == "Hippocampus_L"
    assert table.loc[-8.0, "region_fractions"] == {"Hippocampus_L": 0.75, "unlabelled": 0.25}
    assert table.loc[-8.0, "top_regions"] == "Hippocampus_L (75.0%); unlabelled (25.0%)"
    # A smaller search radius than the distance makes the near peak unlabelled.
    short = cluster_table(
        stat,
        map_affine,
        sig,
        atlas_labels=atlas,
        atlas_names=names,
        atlas_affine=atlas_affine,
        label_search_mm=distance.min() - 0.1,
    ).set_index("peak_stat")
    assert short.loc[6.0, "peak_region"] == "unlabelled"


def test_region_fractions_keep_the_top_three_and_unknown_labels_get_a_generic_name():
    affine = np.eye(4)
    stat, sig = np.zeros((12, 3, 3)), np.zeros((12, 3, 3), bool)
    sig[:, 1, 1], stat[:, 1, 1] = True, np.linspace(1, 2, 12)
    atlas = np.zeros((12, 3, 3), dtype=int)
    atlas[0:5, 1, 1], atlas[5:8, 1, 1], atlas[8:10, 1, 1], atlas[10:12, 1, 1] = 1, 2, 3, 9
    table = cluster_table(
        stat,
        affine,
        sig,
        atlas_labels=atlas,
        atlas_names={1: "A", 2: "B", 3: "C"},
        atlas_affine=affine,
    )
    assert table.loc[0, "region_fractions"] == {"A": 5 / 12, "B": 3 / 12, "C": 2 / 12}
    assert table.loc[0, "peak_region"] == "label 9"


def test_to_volume_round_trips_and_checks_sizes():
    mask = np.zeros((2, 3, 4), bool)
    mask[0, 1, 2] = mask[1, 2, 3] = True
    vol = to_volume(np.array([1.5, -2.0]), mask)
    assert vol[0, 1, 2] == 1.5 and vol[1, 2, 3] == -2.0 and vol.sum() == -0.5
    flat = to_volume(np.array([True, False]), mask.ravel(), (2, 3, 4))
    assert flat.dtype == bool and flat[0, 1, 2] and flat.sum() == 1
    with pytest.raises(ValueError, match="in-mask values"):
        to_volume(np.ones(3), mask)


def test_abs_t_correlation_is_pearson_of_the_absolute_maps() -> None:
    """r of |t| maps over the mask: 1 for a constant-gradient attribution map (the inputs' t
    times a sign and a scale at every voxel), numpy's r otherwise, NaN for a constant map."""
    rng = np.random.default_rng(0)
    mask = np.zeros((4, 5, 6), dtype=bool)
    mask[1:3, 1:4, 1:5] = True
    reference = rng.normal(size=mask.shape)
    signs = rng.choice([-1.0, 1.0], size=mask.shape)
    assert abs_t_correlation(3.0 * signs * reference, reference, mask) == pytest.approx(1.0)
    other = rng.normal(size=mask.shape)
    other[~mask] = 1e6  # outside the brain: ignored
    expected = np.corrcoef(np.abs(other[mask]), np.abs(reference[mask]))[0, 1]
    assert abs_t_correlation(other, reference, mask) == pytest.approx(expected)
    assert np.isnan(abs_t_correlation(np.ones(mask.shape), reference, mask))
