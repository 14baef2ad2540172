"""Oracles for mmssl.evaluation.stats: brute force over every permutation, closed forms, scipy."""

from __future__ import annotations

import itertools
import math
import statistics
from fractions import Fraction

import numpy as np
import pytest
from scipy import integrate
from scipy import stats as sps

from mmssl.evaluation.stats import (
    Alternative,
    Comparison,
    _t_power_at,
    adjust_holm,
    anova_f_power,
    block_permutation_attainable_level,
    bootstrap_ci,
    friedman_test,
    holm,
    minimum_detectable_effect,
    minimum_detectable_spread,
    paired_t_power,
    sign_flip_attainable_level,
    sign_flip_test,
    wilcoxon_test,
    within_block_permutation_test,
)

# ----------------------------------------------------------------------------- sign-flip test


def brute_force_sign_flip(d: list[int], alternative: str) -> float:
    """p over every sign pattern, in exact integer arithmetic."""
    observed = sum(d)
    hits = 0
    patterns = list(itertools.product((1, -1), repeat=len(d)))
    for signs in patterns:
        total = sum(s * x for s, x in zip(signs, d, strict=True))
        hits += {"greater": total >= observed, "less": total <= observed,
                 "two-sided": abs(total) >= abs(observed)}[alternative]
    return hits / len(patterns)


@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
@pytest.mark.parametrize("n", range(1, 9))
def test_sign_flip_exact_matches_brute_force(n: int, alternative: Alternative) -> None:
    rng = np.random.default_rng(n)
    for _ in range(5):
        d = rng.integers(-4, 5, size=n).tolist()        # ties and zeros on purpose
        if not any(d):
            d[0] = 1
        scaled = [x / 64 for x in d]                     # exact in binary floating point
        assert sign_flip_test(scaled, alternative=alternative) == pytest.approx(
            brute_force_sign_flip(d, alternative), abs=1e-15)


def test_sign_flip_float_ties_count_as_extreme() -> None:
    d = [0.1, 0.2, 0.3]      # 0.1 + 0.2 − 0.3 ≠ 0 in floating point, but is a tie in exact maths
    assert sign_flip_test(d, alternative="two-sided") == pytest.approx(2 / 8)
    assert sign_flip_test([0.1, 0.2, -0.3], alternative="greater") == pytest.approx(5 / 8)


def exact_by_halves(d: np.ndarray, alternative: str) -> float:
    """Exact p for n up to ~20 by sorting the sums of the two halves (independent oracle)."""
    half = len(d) // 2

    def sums(part: np.ndarray) -> np.ndarray:
        signs = np.array(list(itertools.product((1, -1), repeat=len(part))))
        return signs @ part

    a, b = sums(d[:half]), np.sort(sums(d[half:]))
    observed = d.sum()
    if alternative == "greater":
        count = sum(len(b) - np.searchsorted(b, observed - x - 1e-12) for x in a)
    else:
        count = sum(np.searchsorted(b, observed - x + 1e-12, side="right") for x in a)
    return count / (len(a) * len(b))


@pytest.mark.parametrize("alternative", ["greater", "less"])
def test_sign_flip_monte_carlo_close_to_exact(alternative: Alternative) -> None:
    rng = np.random.default_rng(7)
    d = rng.normal(0.3, 1.0, size=18)                    # 2^18 > 2^16: Monte Carlo
    m = 20000
    exact = exact_by_halves(d, alternative)
    p = sign_flip_test(d, alternative=alternative, n_resamples=m, seed=3)
    assert abs(p - exact) <= 4 * math.sqrt(exact * (1 - exact) / m) + 2 / m
    assert sign_flip_test(d, alternative=alternative, n_resamples=m, seed=3) == p  # seeded


def test_sign_flip_monte_carlo_never_returns_zero() -> None:
    d = np.full(30, 1.0)
    assert sign_flip_test(d, n_resamples=99) == pytest.approx(1 / 100)   # (b + 1)/(m + 1)


def test_sign_flip_edge_cases_and_errors() -> None:
    assert math.isnan(sign_flip_test([]))
    assert sign_flip_test([0.0, 0.0, 0.0]) == 1.0
    assert sign_flip_test([0.0] * 40, n_resamples=10) == 1.0
    assert sign_flip_test([1.0]) == 0.5
    with pytest.raises(ValueError, match="alternative"):
        sign_flip_test([1.0], alternative="bigger")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        sign_flip_test([1.0, float("nan")])
    with pytest.raises(ValueError, match="n_resamples"):
        sign_flip_test([1.0] * 20, n_resamples=0)


def test_sign_flip_attainable_level() -> None:
    assert sign_flip_attainable_level(4, 0.05) == 0.0          # 1/16 > 0.05: can never reject
    assert sign_flip_attainable_level(5, 0.05) == 1 / 32
    assert sign_flip_attainable_level(6, 0.05) == 3 / 64
    assert sign_flip_attainable_level(20, 0.05, n_resamples=999) == 50 / 1000
    # the smallest p of five positive differences is exactly the attainable level
    assert sign_flip_test([1.0, 2.0, 3.0, 4.0, 5.0]) == sign_flip_attainable_level(5, 0.05)


def test_wilcoxon_wrapper() -> None:
    assert wilcoxon_test([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(1 / 32)  # all ranks positive
    assert wilcoxon_test([1.0, 2.0, 3.0, 4.0, 5.0], "less") == pytest.approx(1.0)
    assert math.isnan(wilcoxon_test([]))
    assert wilcoxon_test([0.0, 0.0]) == 1.0


# ----------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_matches_scipy_bca() -> None:
    x = np.random.default_rng(3).exponential(size=15)
    for method in ("bca", "percentile", "basic"):
        low, high = bootstrap_ci(x, n_resamples=40000, method=method)  # type: ignore[arg-type]
        reference = sps.bootstrap((x,), np.mean, n_resamples=40000, method=method,
                                  rng=np.random.default_rng(1)).confidence_interval
        width = reference.high - reference.low
        assert abs(low - reference.low) < 0.03 * width
        assert abs(high - reference.high) < 0.03 * width


def test_bootstrap_basic_is_reflected_percentile() -> None:
    x = np.random.default_rng(5).normal(size=12)
    p_low, p_high = bootstrap_ci(x, method="percentile", n_resamples=2000, seed=2)
    b_low, b_high = bootstrap_ci(x, method="basic", n_resamples=2000, seed=2)
    assert b_low == pytest.approx(2 * x.mean() - p_high)
    assert b_high == pytest.approx(2 * x.mean() - p_low)


def test_bootstrap_ci_covers_true_mean_at_about_nominal_rate() -> None:
    rng = np.random.default_rng(11)
    trials, n, true_mean = 400, 20, 0.85
    covered = 0
    for i in range(trials):
        low, high = bootstrap_ci(rng.normal(true_mean, 0.01, size=n), n_resamples=2000, seed=i)
        covered += low <= true_mean <= high
    rate = covered / trials
    # BCa undercovers slightly at n = 20 (≈ 0.93); a broken interval lands far outside.
    lower = sps.binom.ppf(0.001, trials, 0.92) / trials
    upper = sps.binom.ppf(0.999, trials, 0.95) / trials
    assert lower <= rate <= upper, rate


def test_bootstrap_ci_degenerate_cases() -> None:
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    assert all(math.isnan(v) for v in bootstrap_ci([0.3]))
    assert bootstrap_ci([0.2, 0.2, 0.2]) == (0.2, 0.2)
    low, high = bootstrap_ci([0.0, 1.0])
    assert 0.0 <= low <= high <= 1.0
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([1.0, 2.0], confidence=95)


# ----------------------------------------------------------------------------- Holm


def test_holm_hand_computed() -> None:
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 → max(0.06, 0.04) = 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])                 # capped at 1
    adjusted = holm([0.01, np.nan, 0.04])                                 # nan: m = 2
    assert adjusted[0] == pytest.approx(0.02) and adjusted[2] == pytest.approx(0.04)
    assert math.isnan(adjusted[1])
    assert holm([]).shape == (0,)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.2, 1.5])


def holm_rejects(p: list[Fraction], alpha: Fraction) -> set[int]:
    """Holm's step-down procedure at level alpha (the definition), in exact arithmetic."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    rejected: set[int] = set()
    for j, i in enumerate(order):
        if p[i] <= alpha / (len(p) - j):
            rejected.add(i)
        else:
            break
    return rejected


def test_holm_is_the_smallest_level_that_rejects() -> None:
    rng = np.random.default_rng(2)
    for _ in range(200):
        m = int(rng.integers(1, 7))
        p = [Fraction(int(k), 10000) for k in rng.integers(0, 550, size=m) ** 2 // 100]
        # Holm rejects H_i at every level from some (m − j)·p_(j) on: try them all
        candidates = sorted({min(Fraction(1), (m - j) * x) for j, x in enumerate(sorted(p))})
        expected = [float(min((a for a in candidates if i in holm_rejects(p, a)),
                              default=Fraction(1))) for i in range(m)]
        assert holm([float(x) for x in p]) == pytest.approx(expected, abs=1e-12)


def test_adjust_holm_fills_comparisons() -> None:
    comparisons = [Comparison("a", "x", 10, 0.1, 0.0, 0.2, p) for p in (0.01, 0.04)]
    adjusted = adjust_holm(comparisons)
    assert [c.p_adjusted for c in adjusted] == pytest.approx([0.02, 0.04])
    assert [c.significant(0.03) for c in adjusted] == [True, False]
    assert adjust_holm([]) == []


def test_comparison_one_line() -> None:
    c = Comparison("XX − CR", "joint", 15, 0.031, 0.012, 0.050, 0.004, 0.012, 0.02)
    assert str(c) == "+0.031 [0.012, 0.050], p=0.004 (Holm 0.012), n=15"
    assert str(Comparison("s", "j", 3, 0.01, math.nan, math.nan, 0.00002)) == \
        "+0.010, p=2.0e-05, n=3"


# ----------------------------------------------------------------------------- block design


def brute_force_block_p(table: np.ndarray) -> float:
    """Every within-row relabelling, statistic by plain Python."""
    def statistic(rows: list[tuple[float, ...]]) -> float:
        return statistics.pvariance([statistics.fmean(col) for col in zip(*rows, strict=True)])

    observed = statistic([tuple(r) for r in table])
    per_row = [list(itertools.permutations(row)) for row in table.tolist()]
    values = [statistic(list(choice)) for choice in itertools.product(*per_row)]
    return sum(v >= observed - 1e-12 for v in values) / len(values)


def test_within_block_exact_matches_brute_force() -> None:
    rng = np.random.default_rng(4)
    for shape in [(3, 3), (2, 4), (4, 2), (5, 2)]:
        for integers in (True, False):
            table = (rng.integers(0, 4, size=shape).astype(float) if integers
                     else rng.normal(size=shape))
            assert within_block_permutation_test(table) == pytest.approx(
                brute_force_block_p(table), abs=1e-12)


def test_within_block_monte_carlo_close_to_exact_and_ignores_block_offsets() -> None:
    rng = np.random.default_rng(6)
    table = rng.normal(size=(7, 3)) + np.array([0.0, 0.3, 0.6])   # 6^7 relabellings: sampled
    # exact by brute force over 6^7 with numpy
    perms = np.array(list(itertools.permutations(range(3))))
    choice = np.array(list(itertools.product(range(6), repeat=7)))
    permuted = np.take_along_axis(table[None], perms[choice], axis=2)
    statistic = permuted.mean(axis=1).var(axis=1)
    exact = float(np.mean(statistic >= table.mean(axis=0).var() - 1e-12))
    m = 20000
    p = within_block_permutation_test(table, n_resamples=m, seed=1)
    assert abs(p - exact) <= 4 * math.sqrt(exact * (1 - exact) / m) + 2 / m
    shifted = table + rng.normal(0, 5, size=(7, 1))                 # run offsets cancel
    assert within_block_permutation_test(shifted, n_resamples=m, seed=1) == pytest.approx(p)


def test_within_block_errors_and_attainable_level() -> None:
    with pytest.raises(ValueError, match="complete"):
        within_block_permutation_test([[1.0, np.nan], [2.0, 3.0]])
    with pytest.raises(ValueError, match="2-D"):
        within_block_permutation_test([1.0, 2.0])
    assert block_permutation_attainable_level(2, 3, 0.05) == 0.0    # 36 / 3! = 6 classes
    assert block_permutation_attainable_level(3, 3, 0.05) == 1 / 36
    assert block_permutation_attainable_level(15, 6, 0.05, 999) == 50 / 1000
    # a table with a consistent ordering attains the smallest p of its design exactly
    table = np.array([[0.0, 1.0, 2.0]] * 3)
    assert within_block_permutation_test(table) == pytest.approx(1 / 36)


def test_friedman_closed_form() -> None:
    # identical ranking in all 5 blocks: chi2 = 12/(bk(k+1)) ΣR² − 3b(k+1) = 10; sf = e^(−5)
    table = np.array([[1.0, 2.0, 3.0]] * 5) + np.arange(5)[:, None]
    assert friedman_test(table) == pytest.approx(math.exp(-5))
    with pytest.raises(ValueError, match="3 treatments"):
        friedman_test(np.ones((4, 2)))


# ----------------------------------------------------------------------------- power


def t_power_by_integration(effect: float, sd: float, n: int, alpha: float,
                           alternative: str) -> float:
    """P(reject) as an integral over the chi-square distributed sample variance."""
    df, lam = n - 1, effect * math.sqrt(n) / sd
    tail = alpha / 2 if alternative == "two-sided" else alpha
    c = sps.t.ppf(1 - tail, df)

    def integrand(v: float) -> float:
        scale = c * math.sqrt(v / df)
        upper = sps.norm.sf(scale - lam)
        lower = sps.norm.cdf(-scale - lam)
        value = {"greater": upper, "less": lower, "two-sided": upper + lower}[alternative]
        return float(value * sps.chi2.pdf(v, df))

    return float(integrate.quad(integrand, 0, np.inf, limit=200)[0])


@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
@pytest.mark.parametrize(("effect", "sd", "n", "alpha"),
                         [(0.01, 0.014, 15, 0.05), (-0.02, 0.03, 6, 0.01), (0.3, 1.0, 40, 0.1)])
def test_paired_t_power_closed_form(effect: float, sd: float, n: int, alpha: float,
                                    alternative: str) -> None:
    assert paired_t_power(effect, sd, n, alpha, alternative) == pytest.approx(  # type: ignore
        t_power_by_integration(effect, sd, n, alpha, alternative), abs=1e-6)


def test_paired_t_power_limits() -> None:
    assert paired_t_power(0.0, 1.0, 10, 0.05) == pytest.approx(0.05)
    assert paired_t_power(0.0, 1.0, 10, 0.05, "two-sided") == pytest.approx(0.05)
    n, effect = 4000, 0.05                      # large n: the normal approximation
    normal = sps.norm.sf(sps.norm.ppf(0.95) - effect * math.sqrt(n))
    assert paired_t_power(effect, 1.0, n, 0.05) == pytest.approx(normal, abs=2e-3)
    assert math.isnan(paired_t_power(1.0, 1.0, 1, 0.05))
    assert paired_t_power(0.1, 0.0, 5, 0.05) == 1.0
    with pytest.raises(ValueError, match="sd"):
        paired_t_power(0.1, -1.0, 5, 0.05)


@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
@pytest.mark.parametrize(("sd", "n", "alpha"), [(0.014, 15, 0.05 / 3), (1.0, 5, 0.05),
                                                (0.02, 120, 0.01)])
def test_mde_inverts_power(sd: float, n: int, alpha: float, alternative: str) -> None:
    mde = minimum_detectable_effect(sd, n, alpha, 0.8, alternative)  # type: ignore[arg-type]
    signed = -mde if alternative == "less" else mde
    assert paired_t_power(signed, sd, n, alpha, alternative) == pytest.approx(  # type: ignore
        0.8, abs=1e-8)
    assert minimum_detectable_effect(sd, 2 * n, alpha, 0.8, alternative) < mde  # type: ignore


@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
def test_power_stays_finite_where_scipy_nctdtr_returns_nan(alternative: str) -> None:
    """scipy's noncentral t cdf is nan deep in a tail (ν = 14, λ = 10, x ≈ −3.27): found by a
    two-sided comparison of 9 columns at n = 15, whose MDE search stepped there and crashed."""
    for df in (1, 4, 14, 59):
        for noncentrality in (0.0, 3.0, 6.76, 10.0, 40.0, 80.0):
            for alpha in (0.05, 0.0055, 1e-4):
                sign = -1.0 if alternative == "less" else 1.0
                power = _t_power_at(sign * noncentrality, df, alpha, alternative)
                assert 0.0 <= power <= 1.0 + 1e-12, (df, noncentrality, alpha)
    level = 2 * sign_flip_attainable_level(15, 0.05 / 9 / 2, 10000)
    mde = minimum_detectable_effect(1.0, 15, level, 0.8, alternative)  # type: ignore[arg-type]
    signed = -mde if alternative == "less" else mde
    assert paired_t_power(signed, 1.0, 15, level, alternative) == pytest.approx(  # type: ignore
        0.8, abs=1e-8)


def test_mde_degenerate() -> None:
    assert minimum_detectable_effect(1.0, 1, 0.05) == math.inf
    assert minimum_detectable_effect(0.0, 10, 0.05) == 0.0
    with pytest.raises(ValueError, match="power"):
        minimum_detectable_effect(1.0, 10, 0.05, power=0.01)


def test_anova_f_power_two_treatments_is_two_sided_t() -> None:
    for spread, sd, blocks in [(0.01, 0.01, 15), (0.5, 1.0, 6)]:
        assert anova_f_power(spread, sd, blocks, 2, 0.05) == pytest.approx(
            paired_t_power(spread, sd * math.sqrt(2), blocks, 0.05, "two-sided"))
    assert anova_f_power(0.0, 1.0, 10, 4, 0.05) == pytest.approx(0.05)


def test_anova_f_power_matches_simulated_f_test() -> None:
    rng = np.random.default_rng(8)
    blocks, treatments, sd, spread, alpha, trials = 8, 4, 1.0, 1.2, 0.05, 4000
    effects = np.array([spread / 2, -spread / 2, 0.0, 0.0])     # the least favourable layout
    y = rng.normal(0, sd, size=(trials, blocks, treatments)) + effects
    y += rng.normal(0, 3, size=(trials, blocks, 1))             # block effects
    residual = (y - y.mean(axis=2, keepdims=True) - y.mean(axis=1, keepdims=True)
                + y.mean(axis=(1, 2), keepdims=True))
    ms_treat = blocks * y.mean(axis=1).var(axis=1, ddof=1)
    ms_error = (residual**2).sum(axis=(1, 2)) / ((blocks - 1) * (treatments - 1))
    critical = sps.f.ppf(1 - alpha, treatments - 1, (blocks - 1) * (treatments - 1))
    rate = float(np.mean(ms_treat / ms_error > critical))
    power = anova_f_power(spread, sd, blocks, treatments, alpha)
    assert abs(rate - power) < 4 * math.sqrt(power * (1 - power) / trials)
    mds = minimum_detectable_spread(sd, blocks, treatments, alpha)
    assert anova_f_power(mds, sd, blocks, treatments, alpha) == pytest.approx(0.8, abs=1e-8)
    assert minimum_detectable_spread(sd, 1, treatments, alpha) == math.inf
