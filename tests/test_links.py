"""Tests for held-out CCA links between two modalities (mmssl.evaluation.links)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.cross_decomposition import CCA

from mmssl.evaluation.links import LinkResult, canonical_variate, cca_links


def shared_latent_pair(
    n: int, rng: np.random.Generator, *, strength: float = 1.0, noise: float = 0.3
) -> dict[str, np.ndarray]:
    """Two modalities driven by one shared latent (scaled by ``strength``) plus private noise."""
    s = rng.standard_normal((n, 1))
    mix_x = np.linspace(1.0, 2.0, 8)[None, :]
    mix_y = np.linspace(-1.5, 1.0, 6)[None, :]
    x = strength * s @ mix_x + noise * rng.standard_normal((n, 8)) + 5.0
    y = strength * s @ mix_y + noise * rng.standard_normal((n, 6)) - 2.0
    return {"t1": x, "falff": y * 10.0}


def well_conditioned(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Three shared latents of decreasing strength seen through fixed full-rank mixings."""
    mix = np.random.default_rng(123)
    mx, my = mix.standard_normal((6, 6)), mix.standard_normal((5, 5))
    s = rng.standard_normal((n, 3))
    x = np.c_[s, rng.standard_normal((n, 3))] @ mx + 0.5 * rng.standard_normal((n, 6))
    y = np.c_[s, rng.standard_normal((n, 2))] @ my + 0.5 * rng.standard_normal((n, 5))
    return {"a": x + 3.0, "b": 2.0 * y}


def test_planted_link_is_found_and_significant() -> None:
    rng = np.random.default_rng(0)
    train, test = shared_latent_pair(200, rng), shared_latent_pair(100, rng)
    result = cca_links(train, test, n_components=2, n_permutations=100, seed=1)
    assert result.modalities == ("t1", "falff")
    assert result.test_correlations.shape == (2,)
    assert result.null_correlations.shape == (100, 2)
    assert result.train_correlations[0] > 0.8
    assert result.test_correlations[0] > 0.8
    assert result.p_values[0] < 0.05
    assert result.p_values[0] == pytest.approx(1 / 101)
    assert np.all(result.train_correlations >= 0)
    assert result.train_correlations[0] >= result.train_correlations[1]


def test_independent_modalities_give_no_link() -> None:
    rng = np.random.default_rng(2)
    train = {"t1": rng.standard_normal((150, 5)), "falff": rng.standard_normal((150, 4))}
    test = {"t1": rng.standard_normal((200, 5)), "falff": rng.standard_normal((200, 4))}
    result = cca_links(train, test, n_components=2, n_permutations=100, seed=0)
    assert abs(result.test_correlations[0]) < 0.2
    assert result.p_values[0] > 0.05
    assert np.all((result.p_values > 0) & (result.p_values <= 1))


def test_p_value_formula_and_seed() -> None:
    rng = np.random.default_rng(3)
    train, test = shared_latent_pair(60, rng, noise=2.0), shared_latent_pair(40, rng, noise=2.0)
    result = cca_links(train, test, n_components=2, n_permutations=50, seed=7)
    exceed = (result.null_correlations >= result.test_correlations).sum(axis=0)
    np.testing.assert_allclose(result.p_values, (1 + exceed) / 51)
    again = cca_links(train, test, n_components=2, n_permutations=50, seed=7)
    np.testing.assert_array_equal(again.null_correlations, result.null_correlations)
    other = cca_links(train, test, n_components=2, n_permutations=50, seed=8)
    assert not np.array_equal(other.null_correlations, result.null_correlations)
    none = cca_links(train, test, n_components=2, n_permutations=0)
    assert none.null_correlations.shape == (0, 2)
    np.testing.assert_array_equal(none.p_values, [1.0, 1.0])


def test_fit_uses_train_only() -> None:
    rng = np.random.default_rng(4)
    train = shared_latent_pair(80, rng)
    test_a, test_b = shared_latent_pair(30, rng), shared_latent_pair(30, rng)
    test_b = {k: v * 3.0 + 1.0 for k, v in test_b.items()}
    a = cca_links(train, test_a, n_components=2, n_permutations=5)
    b = cca_links(train, test_b, n_components=2, n_permutations=5)
    np.testing.assert_array_equal(a.x_weights, b.x_weights)
    np.testing.assert_array_equal(a.y_weights, b.y_weights)
    np.testing.assert_array_equal(a.train_correlations, b.train_correlations)
    for sa, sb in zip(a.scalers, b.scalers, strict=True):
        np.testing.assert_array_equal(sa.mean, sb.mean)
        np.testing.assert_array_equal(sa.scale, sb.scale)
    assert not np.allclose(a.test_correlations, b.test_correlations)


def test_test_correlations_are_those_of_projected_test_data() -> None:
    rng = np.random.default_rng(5)
    train, test = well_conditioned(200, rng), well_conditioned(100, rng)
    result = cca_links(train, test, n_components=3, n_permutations=0)
    u, v = result.transform("a", test["a"]), result.transform("b", test["b"])
    expected = [np.corrcoef(u[:, j], v[:, j])[0, 1] for j in range(3)]
    np.testing.assert_allclose(result.test_correlations, expected, atol=1e-12)
    u, v = result.transform("a", train["a"]), result.transform("b", train["b"])
    # Training variates are (nearly) uncorrelated across components and have ~unit variance.
    cross = np.asarray(np.corrcoef(u.T))[np.triu_indices(3, 1)]
    assert np.max(np.abs(cross)) < 1e-2
    np.testing.assert_allclose(u.var(axis=0, ddof=1), 1.0, atol=1e-2)


def test_matches_sklearn_cca_on_well_conditioned_data() -> None:
    rng = np.random.default_rng(6)
    train, test = well_conditioned(500, rng), well_conditioned(300, rng)
    ours = cca_links(train, test, n_components=3, n_permutations=0, regularization=0.0)
    ref = CCA(n_components=3, max_iter=5000, tol=1e-12).fit(train["a"], train["b"])

    def corr(data: dict[str, np.ndarray]) -> np.ndarray:
        u, v = ref.transform(data["a"], data["b"])
        return np.array([np.corrcoef(u[:, j], v[:, j])[0, 1] for j in range(3)])

    np.testing.assert_allclose(ours.train_correlations, corr(train), atol=1e-3)
    np.testing.assert_allclose(np.abs(ours.test_correlations), np.abs(corr(test)), atol=1e-3)
    assert ours.train_correlations[0] > ours.train_correlations[1] > ours.train_correlations[2]
    # The default ridge barely moves well-conditioned correlations.
    ridge = cca_links(train, test, n_components=3, n_permutations=0)
    np.testing.assert_allclose(ridge.train_correlations, ours.train_correlations, atol=1e-3)


def test_canonical_variate_and_to_dict() -> None:
    rng = np.random.default_rng(7)
    train, test = shared_latent_pair(50, rng), shared_latent_pair(20, rng)
    result = cca_links(train, test, n_components=2, n_permutations=10)
    mean, scale, weight = canonical_variate(result, "falff", 1)
    assert mean.shape == scale.shape == weight.shape == (6,)
    variate = ((test["falff"] - mean) / scale) @ weight
    np.testing.assert_allclose(variate, result.transform("falff", test["falff"])[:, 1])
    weight[:] = 0.0  # a copy: the result is untouched
    assert np.any(result.y_weights[:, 1] != 0)
    with pytest.raises(KeyError, match="unknown modality"):
        canonical_variate(result, "dti", 0)
    with pytest.raises(IndexError, match="out of range"):
        canonical_variate(result, "t1", 2)

    payload = result.to_dict()
    assert json.loads(json.dumps(payload, allow_nan=False))["modalities"] == ["t1", "falff"]
    assert len(payload["null_correlations"]) == 10
    assert np.array(payload["weights"]["t1"]).shape == (8, 2)
    assert isinstance(result, LinkResult)


def test_errors() -> None:
    rng = np.random.default_rng(8)
    train, test = shared_latent_pair(30, rng), shared_latent_pair(10, rng)
    three = {**train, "dti": train["t1"]}
    with pytest.raises(ValueError, match="exactly two modalities"):
        cca_links(three, test)
    with pytest.raises(ValueError, match="exactly two modalities"):
        cca_links({"t1": train["t1"]}, test)
    with pytest.raises(ValueError, match="train has"):
        cca_links(train, {"t1": test["t1"], "dti": test["falff"]})
    with pytest.raises(ValueError, match="exceeds the smaller"):
        cca_links(train, test, n_components=7)
    with pytest.raises(ValueError, match="too few training"):
        cca_links({k: v[:3] for k, v in train.items()}, test, n_components=3)
    with pytest.raises(ValueError, match="too few test"):
        cca_links(train, {k: v[:2] for k, v in test.items()})
    with pytest.raises(ValueError, match="rows must be the same subjects"):
        cca_links({"t1": train["t1"], "falff": train["falff"][:-1]}, test)
    with pytest.raises(ValueError, match="features but train has"):
        cca_links(train, {"t1": test["t1"][:, :5], "falff": test["falff"]})
    bad = train["t1"].copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cca_links({"t1": bad, "falff": train["falff"]}, test)
    with pytest.raises(ValueError, match="regularization"):
        cca_links(train, test, regularization=-1.0)
    with pytest.raises(ValueError, match="n_components"):
        cca_links(train, test, n_components=0)


def test_confounds_have_the_same_columns_when_a_site_is_missing_from_test() -> None:
    """A category level present in one split only (a site with no test subject) still gets
    its indicator column in both splits, so the training fit applies to the test rows."""
    import pandas as pd

    from mmssl.runs.links import _confound_matrices

    class FakeRun:
        tables = {
            "train": pd.DataFrame({"label": [0, 1, 0, 1], "age": [60.0, 70.0, 65.0, 72.0],
                                   "sex": ["F", "M", "F", "M"], "site": ["S1", "S2", "S3", "S1"]}),
            "test": pd.DataFrame({"label": [1, 0], "age": [68.0, 61.0], "sex": ["F", "F"],
                                  "site": ["S1", "S1"]}),
        }

        def subjects(self, split, pair):
            return self.tables[split]

    train, test = _confound_matrices(FakeRun(), ["age", "sex", "site"], ("t1", "falff"))
    # label, age, sex=M, site=S2, site=S3
    assert train.shape == (4, 5) and test.shape == (2, 5)
    assert test[:, 2].tolist() == [0.0, 0.0] and test[:, 3:].sum() == 0.0
    assert train[:, 3].tolist() == [0.0, 1.0, 0.0, 0.0]
    assert train[:, 4].tolist() == [0.0, 0.0, 1.0, 0.0]


def _structured_pair(rng: np.random.Generator, n: int, mixes: tuple[np.ndarray, np.ndarray],
                     shared: float) -> dict[str, np.ndarray]:
    """64-d representations of low rank (6 private factors each, as a trained encoder's are)
    plus a factor both modalities carry with weight ``shared`` (0: nothing links them)."""
    link = rng.standard_normal((n, 1))
    out = {}
    for name, mix in zip(("t1", "falff"), mixes, strict=True):
        factors = rng.standard_normal((n, 6))
        out[name] = (factors @ mix[:6] + shared * link @ mix[6:]
                     + 0.3 * rng.standard_normal((n, 64)))
    return out


def _link_rate(draws: int, shared: float, permutations: int) -> float:
    """How often the held-out test (PCA 10, 3 pairs, Holm) calls any pair significant at 0.05,
    at the brain issue's split sizes (128 training, 40 test subjects)."""
    from mmssl.evaluation.links import reduced_cca_links
    from mmssl.evaluation.stats import holm

    rng = np.random.default_rng(2024)
    hits = 0
    for draw in range(draws):
        mixes = (rng.standard_normal((7, 64)), rng.standard_normal((7, 64)))
        train = _structured_pair(rng, 128, mixes, shared)
        test = _structured_pair(rng, 40, mixes, shared)
        result, _, _ = reduced_cca_links(train, test, pca=10, n_components=3,
                                         n_permutations=permutations, seed=draw)
        hits += bool((holm(result.p_values) < 0.05).any())
    return hits / draws


def test_links_false_positive_rate_is_at_most_alpha_with_no_shared_factor() -> None:
    """The null calibration on a fast setting: 120 independent pairs of structured 64-d
    representations (1,000 draws: the slow twin). The bound is alpha plus 2.5 binomial
    standard errors. With 3 pairs Holm multiplies the smallest p by 3, so the permutation count
    must allow p < 0.05 / 3 at all (50 permutations could never reject: 3/51 > 0.05)."""
    rate = _link_rate(120, shared=0.0, permutations=100)
    assert rate <= 0.05 + 2.5 * np.sqrt(0.05 * 0.95 / 120), rate


@pytest.mark.slow
def test_links_false_positive_rate_over_a_thousand_null_draws() -> None:
    rate = _link_rate(1000, shared=0.0, permutations=100)
    assert rate <= 0.05 + 2.5 * np.sqrt(0.05 * 0.95 / 1000), rate


def test_links_find_a_shared_factor_of_moderate_strength() -> None:
    """The same test is not blind: a factor shared with weight 0.5 (each private factor has
    weight 1) is found in most draws."""
    assert _link_rate(30, shared=0.5, permutations=100) >= 0.8


def test_a_permutation_count_too_small_for_holm_is_named() -> None:
    from mmssl.runs.links import resolution_note

    note = resolution_note(3, 50, 0.05)
    assert note is not None and "no link can be significant" in note and "at least 60" in note
    assert resolution_note(3, 59, 0.05) is not None  # 3/60 = 0.05 is the floor: 59 is short
    assert resolution_note(3, 60, 0.05) is None  # 3/61 < 0.05
    assert resolution_note(1, 20, 0.05) is None and resolution_note(3, 0, 0.05) is None


# Site harmonisation (links --harmonize site)

def _sited_confounds(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    sites = rng.choice(np.array(["S1", "S2", "S3"]), size=n)
    confounds = np.column_stack([rng.integers(0, 2, n), rng.normal(70, 6, n)])  # label, age
    return confounds, sites


def test_harmonise_by_site_is_the_site_interaction_regression_scaled_per_site() -> None:
    """Oracle: one least-squares fit of the full site × [1, confounds] design gives the same
    residuals as the per-site fits; each site's residuals are then divided by their own
    standard deviation (degrees of freedom n_s − 3)."""
    from mmssl.evaluation.links import harmonise_by_site

    rng = np.random.default_rng(0)
    c_train, s_train = _sited_confounds(rng, 90)
    c_test, s_test = _sited_confounds(rng, 30)
    x_train, x_test = rng.normal(size=(90, 4)), rng.normal(size=(30, 4))
    train, test, counts = harmonise_by_site({"a": x_train}, {"a": x_test}, c_train, c_test,
                                            s_train, s_test)
    assert counts == {s: int((s_train == s).sum()) for s in ("S1", "S2", "S3")}

    def design(c: np.ndarray, s: np.ndarray) -> np.ndarray:
        base = np.column_stack([np.ones(len(c)), c])
        return np.column_stack([base * (s == site)[:, None] for site in ("S1", "S2", "S3")])

    coef, *_ = np.linalg.lstsq(design(c_train, s_train), x_train, rcond=None)
    residual_train = x_train - design(c_train, s_train) @ coef
    residual_test = x_test - design(c_test, s_test) @ coef
    for site in ("S1", "S2", "S3"):
        rows, held = s_train == site, s_test == site
        scale = np.sqrt((residual_train[rows] ** 2).sum(axis=0) / (rows.sum() - 3))
        np.testing.assert_allclose(train["a"][rows], residual_train[rows] / scale, atol=1e-10)
        np.testing.assert_allclose(test["a"][held], residual_test[held] / scale, atol=1e-10)


def test_site_specific_confound_effects_make_a_false_link_that_harmonising_removes() -> None:
    """Both modalities follow age with a slope that differs between sites (as a scanner's
    contrast changes how atrophy shows): site indicators plus one common age slope leave
    age × site in both, a shared signal that the held-out test duly calls a link; removed
    within each site, nothing links them."""
    from mmssl.evaluation.links import harmonise_by_site, reduced_cca_links, residualise

    rng = np.random.default_rng(1)
    slopes = {"S1": -1.0, "S2": 0.0, "S3": 1.0}
    loadings = {m: rng.normal(size=8) for m in ("t1", "falff")}

    def split(n: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        confounds, sites = _sited_confounds(rng, n)
        age = (confounds[:, 1] - 70) / 6
        slope = np.array([slopes[s] for s in sites])
        features = {m: np.outer(slope * age, loadings[m]) + rng.normal(size=(n, 8))
                    for m in ("t1", "falff")}
        return features, confounds, sites

    (x_train, c_train, s_train), (x_test, c_test, s_test) = split(300), split(100)
    indicators = np.column_stack([(s_train == s) for s in ("S2", "S3")]).astype(float)
    indicators_test = np.column_stack([(s_test == s) for s in ("S2", "S3")]).astype(float)
    linear = residualise(x_train, x_test, np.column_stack([c_train, indicators]),
                         np.column_stack([c_test, indicators_test]))
    harmonised = harmonise_by_site(x_train, x_test, c_train, c_test, s_train, s_test)[:2]
    found, _, _ = reduced_cca_links(*linear, pca=None, n_components=1, n_permutations=200)
    removed, _, _ = reduced_cca_links(*harmonised, pca=None, n_components=1, n_permutations=200)
    assert found.test_correlations[0] > 0.4 and found.p_values[0] < 0.01
    assert abs(removed.test_correlations[0]) < 0.25 and removed.p_values[0] > 0.05


def test_harmonise_by_site_names_the_sites_it_cannot_fit() -> None:
    from mmssl.evaluation.links import harmonise_by_site

    rng = np.random.default_rng(2)
    confounds = rng.normal(size=(12, 2))
    x = {"a": rng.normal(size=(12, 3))}
    sites = np.array(["S1"] * 6 + ["S2"] * 6)
    with pytest.raises(ValueError, match=r"\['S9'\] have test subjects but no training"):
        harmonise_by_site(x, {"a": x["a"][:2]}, confounds, confounds[:2], sites,
                          np.array(["S1", "S9"]))
    small = np.array(["S1"] * 8 + ["S2"] * 4)
    with pytest.raises(ValueError, match=r"too few training subjects.*'S2': 4.*at least 5"):
        harmonise_by_site(x, x, confounds, confounds, small, small)
