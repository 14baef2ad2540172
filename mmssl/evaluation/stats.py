r"""Statistics for comparing models over the runs of a sweep (numpy and scipy only).

A sweep trains every model on the same runs r = (fold, seed), so two models are compared
**paired**: :math:`d_r = s_A(r) - s_B(r)`. The tests here make no normality assumption where
they decide anything:

* :func:`sign_flip_test` — the paired permutation test (Fisher 1935, §21; Good, *Permutation,
  Parametric and Bootstrap Tests of Hypotheses*, 3rd ed., 2005, §3.1). Under
  :math:`H_0` the distribution of each :math:`d_r` is symmetric about 0, so every sign pattern
  :math:`\epsilon \in \{\pm1\}^n` is equally likely and
  :math:`p = \#\{\epsilon : T(\epsilon \circ d) \ge T(d)\} / 2^n` with :math:`T = \sum_r d_r`.
  All :math:`2^n` patterns are enumerated when :math:`2^n \le 2^{16}`; otherwise m random
  patterns give :math:`p = (b + 1)/(m + 1)` (b of them at least as extreme), which is a valid
  p-value (Phipson & Smyth 2010, *Stat. Appl. Genet. Mol. Biol.* 9:39).
* :func:`within_block_permutation_test` — the randomisation test of a randomised complete block
  design (blocks = runs, treatments = models; Good 2005, §4.3): treatment labels are permuted
  independently within each block, the statistic is the variance of the treatment means.
* :func:`holm` — Holm's step-down adjustment (Holm 1979, *Scand. J. Statist.* 6:65–70), which
  controls the family-wise error rate under any dependence.
* :func:`bootstrap_ci` — bias-corrected and accelerated bootstrap interval of the mean
  (Efron 1987, *JASA* 82:171–185).
* :func:`paired_t_power`, :func:`minimum_detectable_effect` — analytic power of the one-sample
  (paired) t test through the noncentral t distribution (Cohen 1988, *Statistical Power
  Analysis*, ch. 2), used to say how large an effect the runs at hand could have detected; the
  sign-flip test has asymptotic relative efficiency 1 against the t test for normal
  differences, so this is its power to a good approximation. :func:`anova_f_power` and
  :func:`minimum_detectable_spread` do the same for the block design.

Everything is pure: arrays in, numbers out; randomness only through an explicit ``seed``.
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import optimize, special
from scipy import stats as sps

Alternative = Literal["greater", "less", "two-sided"]
ALTERNATIVES: tuple[str, ...] = ("greater", "less", "two-sided")

#: Enumerate every permutation when there are at most this many; sample otherwise.
EXACT_LIMIT = 2**16
#: Relative tolerance under which a resampled statistic counts as tied with the observed one
#: (sums of the same numbers in another order differ in the last bits).
_TIE_TOLERANCE = 1e-9


def _check_alternative(alternative: str) -> None:
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {', '.join(ALTERNATIVES)}; "
                         f"got {alternative!r}")


def _finite_vector(values: ArrayLike, name: str) -> NDArray[np.float64]:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional; got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite; got {array[~np.isfinite(array)][:3]}")
    return array


def _check_resamples(n_resamples: int) -> None:
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be at least 1; got {n_resamples}")


@functools.lru_cache(maxsize=17)
def _all_sign_patterns(n: int) -> NDArray[np.float64]:
    """The 2^n × n matrix of every sign pattern; row 0 is all +1 (the observed data)."""
    bits = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
    patterns = (1 - 2 * bits).astype(float)
    patterns.setflags(write=False)
    return patterns


def _all_signed_sums(d: NDArray[np.float64]) -> NDArray[np.float64]:
    r""":math:`\sum_r \epsilon_r d_r` for every sign pattern ε; entry 0 is the observed sum.

    The sums over the two halves of d are enumerated separately and added in an outer sum
    (2^k + 2^(n−k) products instead of n·2^n).
    """
    half = len(d) // 2
    first = _all_sign_patterns(half) @ d[:half]
    second = _all_sign_patterns(len(d) - half) @ d[half:]
    return np.asarray((first[:, None] + second[None, :]).ravel())


def _tail_count(resampled: NDArray[np.float64], observed: float, tolerance: float,
                alternative: str) -> int:
    """How many resampled statistics are at least as extreme as ``observed``."""
    if alternative == "greater":
        return int(np.count_nonzero(resampled >= observed - tolerance))
    if alternative == "less":
        return int(np.count_nonzero(resampled <= observed + tolerance))
    return int(np.count_nonzero(np.abs(resampled) >= abs(observed) - tolerance))


def sign_flip_test(differences: ArrayLike, *, alternative: Alternative = "greater",
                   n_resamples: int = 20000, seed: int = 0) -> float:
    r"""Paired permutation (sign-flip) test of the mean difference.

    Statistic :math:`T(d) = \sum_r d_r` (equivalent to the mean). Under :math:`H_0`
    (each :math:`d_r` symmetric about 0, independent over runs) the p-value is the share of sign
    patterns :math:`\epsilon` with :math:`T(\epsilon \circ d) \ge T(d)` (``"greater"``),
    :math:`\le T(d)` (``"less"``) or :math:`|T(\epsilon \circ d)| \ge |T(d)|` (``"two-sided"``).
    Exact over all :math:`2^n` patterns when :math:`2^n \le 2^{16}`; otherwise ``n_resamples``
    random patterns and :math:`p = (b+1)/(m+1)`.

    Returns ``nan`` for no differences and 1 when every difference is 0.
    """
    _check_alternative(alternative)
    _check_resamples(n_resamples)
    d = _finite_vector(differences, "differences")
    n = len(d)
    if n == 0:
        return float("nan")
    if not np.any(d):
        return 1.0
    tolerance = _TIE_TOLERANCE * float(np.sum(np.abs(d)))
    if 2**n <= EXACT_LIMIT:
        sums = _all_signed_sums(d)
        return _tail_count(sums, float(sums[0]), tolerance, alternative) / len(sums)
    observed = float(np.sum(d))
    rng = np.random.default_rng(seed)
    extreme, done = 0, 0
    while done < n_resamples:
        chunk = min(n_resamples - done, max(1, 2**20 // n))
        signs = 1.0 - 2.0 * rng.integers(0, 2, size=(chunk, n))
        extreme += _tail_count(signs @ d, observed, tolerance, alternative)
        done += chunk
    return (extreme + 1) / (n_resamples + 1)


def sign_flip_attainable_level(n: int, alpha: float, n_resamples: int = 20000) -> float:
    r"""The largest p-value ≤ α that :func:`sign_flip_test` can return for n differences.

    Exact enumeration (:math:`2^n \le 2^{16}`) yields multiples of :math:`2^{-n}`, so the test
    rejects at level α exactly when it rejects at :math:`\lfloor \alpha 2^n \rfloor / 2^n`
    (0: it can never reject, e.g. n ≤ 4 at α = 0.05); Monte Carlo yields multiples of
    :math:`1/(m+1)` from :math:`1/(m+1)` up. Used to state the power of the test honestly.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1); got {alpha}")
    _check_resamples(n_resamples)
    if n < 1:
        return 0.0
    grid = 2**n if 2**n <= EXACT_LIMIT else n_resamples + 1
    return math.floor(alpha * grid * (1 + 1e-12)) / grid


def wilcoxon_test(differences: ArrayLike, alternative: Alternative = "greater") -> float:
    """Wilcoxon signed-rank test of the paired differences (Wilcoxon 1945), for reporting.

    A thin wrapper over :func:`scipy.stats.wilcoxon` (zeros dropped, exact distribution for
    small n). ``nan`` for no differences, 1 when every difference is 0.
    """
    _check_alternative(alternative)
    d = _finite_vector(differences, "differences")
    if len(d) == 0:
        return float("nan")
    if not np.any(d):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(sps.wilcoxon(d, alternative=alternative).pvalue)


def _bootstrap_means(x: NDArray[np.float64], n_resamples: int, seed: int) -> NDArray[np.float64]:
    """Means of ``n_resamples`` resamples of ``x`` drawn with replacement, sorted."""
    rng = np.random.default_rng(seed)
    n = len(x)
    chunks = []
    for start in range(0, n_resamples, max(1, 2**20 // n)):
        size = min(n_resamples - start, max(1, 2**20 // n))
        chunks.append(x[rng.integers(0, n, size=(size, n))].mean(axis=1))
    return np.sort(np.concatenate(chunks))


def bootstrap_ci(values: ArrayLike, *, confidence: float = 0.95, n_resamples: int = 10000,
                 seed: int = 0, method: Literal["bca", "percentile", "basic"] = "bca",
                 ) -> tuple[float, float]:
    r"""Two-sided bootstrap confidence interval of the mean of ``values``.

    B resamples of the n values with replacement give means :math:`\hat\theta^*_b`; with
    :math:`\hat\theta` the sample mean and :math:`\gamma = 1 - \text{confidence}`:

    * ``"percentile"``: the :math:`\gamma/2` and :math:`1-\gamma/2` quantiles of
      :math:`\hat\theta^*`;
    * ``"basic"``: :math:`2\hat\theta` minus those quantiles (reversed);
    * ``"bca"`` (Efron 1987, *JASA* 82:171–185; Efron & Tibshirani 1993, §14.3): the quantiles
      at :math:`\Phi\bigl(z_0 + \frac{z_0 + z_q}{1 - a(z_0 + z_q)}\bigr)` for
      :math:`z_q = \Phi^{-1}(\gamma/2), \Phi^{-1}(1-\gamma/2)`, with bias correction
      :math:`z_0 = \Phi^{-1}(\#\{\hat\theta^* < \hat\theta\}/B + \tfrac12\#\{\hat\theta^* =
      \hat\theta\}/B)` and acceleration :math:`a = \sum_i (\bar\theta_{(\cdot)} -
      \theta_{(i)})^3 / \bigl(6 [\sum_i (\bar\theta_{(\cdot)} - \theta_{(i)})^2]^{3/2}\bigr)`
      from the leave-one-out means :math:`\theta_{(i)}` — the same interval as
      :func:`scipy.stats.bootstrap`, computed without its per-call overhead.

    Degenerate cases: fewer than two values give ``(nan, nan)`` (no spread to resample),
    identical values give ``(mean, mean)``; where the BCa correction is undefined (every
    resampled mean on one side) the percentile interval is returned.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    if method not in ("bca", "percentile", "basic"):
        raise ValueError(f"method must be 'bca', 'percentile' or 'basic'; got {method!r}")
    _check_resamples(n_resamples)
    x = _finite_vector(values, "values")
    n = len(x)
    if n < 2:
        return float("nan"), float("nan")
    if np.ptp(x) == 0:
        return float(x[0]), float(x[0])
    means = _bootstrap_means(x, int(n_resamples), seed)
    theta = float(np.mean(x))
    tail = (1 - confidence) / 2
    levels = np.array([tail, 1 - tail])
    if method == "basic":
        low, high = np.quantile(means, levels[::-1])
        return 2 * theta - float(low), 2 * theta - float(high)
    if method == "bca":
        below = (np.count_nonzero(means < theta) + np.count_nonzero(means <= theta)) / 2
        z0 = float(special.ndtri(below / len(means)))
        leave_one_out = (np.sum(x) - x) / (n - 1)
        spread = leave_one_out.mean() - leave_one_out
        acceleration = float(np.sum(spread**3) / (6 * np.sum(spread**2) ** 1.5))
        z = special.ndtri(levels)
        corrected = special.ndtr(z0 + (z0 + z) / (1 - acceleration * (z0 + z)))
        if np.all(np.isfinite(corrected)):
            levels = corrected
    low, high = np.quantile(means, levels)
    return float(low), float(high)


def holm(p_values: ArrayLike) -> NDArray[np.float64]:
    r"""Holm–Bonferroni step-down adjusted p-values.

    With the m non-missing p-values sorted, :math:`p_{(1)} \le \dots \le p_{(m)}`,
    :math:`\tilde p_{(i)} = \min\{1, \max_{j \le i} (m - j + 1)\, p_{(j)}\}`: rejecting every
    hypothesis with :math:`\tilde p \le \alpha` is Holm's procedure at level α. ``nan`` entries
    stay ``nan`` and do not count toward m.
    """
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"p_values must be one-dimensional; got shape {p.shape}")
    present = ~np.isnan(p)
    if np.any((p[present] < 0) | (p[present] > 1)):
        raise ValueError(f"p_values must lie in [0, 1]; got {p[present].min()}..{p[present].max()}")
    adjusted = np.full_like(p, np.nan)
    index = np.flatnonzero(present)
    m = len(index)
    if m:
        order = index[np.argsort(p[index], kind="stable")]
        scaled = (m - np.arange(m)) * p[order]
        adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return adjusted


def _complete_table(table: ArrayLike) -> NDArray[np.float64]:
    array = np.asarray(table, dtype=float)
    if array.ndim != 2:
        raise ValueError(f"table must be 2-D (blocks × treatments); got shape {array.shape}")
    blocks, treatments = array.shape
    if blocks < 1 or treatments < 2:
        raise ValueError(f"table needs at least 1 block and 2 treatments; got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("table must be complete and finite (every model scored on every run)")
    return array


def _treatment_mean_variance(tables: NDArray[np.float64]) -> NDArray[np.float64]:
    """Variance (ddof 0) of the treatment (last-axis) means over blocks, for stacked tables."""
    return np.asarray(np.var(tables.mean(axis=-2), axis=-1))


def within_block_permutation_test(table: ArrayLike, *, n_resamples: int = 10000,
                                  seed: int = 0) -> float:
    r"""Randomisation test that treatment means differ in a complete block design.

    ``table[b, t]`` is the score of treatment (model) t on block (run) b. Statistic
    :math:`S = \operatorname{Var}_t(\bar y_{\cdot t})`, the variance of the treatment means.
    Under :math:`H_0` the treatments are exchangeable within each block, so the labels are
    permuted independently in every block: exactly over all :math:`(t!)^b` relabellings when
    there are at most :math:`2^{16}` of them, otherwise by ``n_resamples`` random ones with
    :math:`p = (b + 1)/(m + 1)`. Block effects (run offsets) cancel because every permutation
    keeps each block's values in that block.
    """
    _check_resamples(n_resamples)
    y = _complete_table(table)
    blocks, treatments = y.shape
    observed = float(_treatment_mean_variance(y))
    tolerance = _TIE_TOLERANCE * max(float(np.var(y)), 1e-300)
    if math.factorial(treatments) ** blocks <= EXACT_LIMIT:
        permutations = np.array(list(itertools.permutations(range(treatments))))
        choice = np.array(list(itertools.product(range(len(permutations)), repeat=blocks)))
        columns = permutations[choice]                                  # (N, blocks, t)
        permuted = np.take_along_axis(y[None], columns, axis=2)
        resampled = _treatment_mean_variance(permuted)
        return _tail_count(resampled, observed, tolerance, "greater") / len(resampled)
    rng = np.random.default_rng(seed)
    extreme, done = 0, 0
    while done < n_resamples:
        chunk = min(n_resamples - done, max(1, 2**20 // y.size))
        permuted = rng.permuted(np.broadcast_to(y, (chunk, blocks, treatments)), axis=2)
        extreme += _tail_count(_treatment_mean_variance(permuted), observed, tolerance, "greater")
        done += chunk
    return (extreme + 1) / (n_resamples + 1)


def block_permutation_attainable_level(blocks: int, treatments: int, alpha: float,
                                       n_resamples: int = 10000) -> float:
    r"""The largest p-value ≤ α that :func:`within_block_permutation_test` can return.

    The statistic is unchanged when the same relabelling is applied to every block, so the
    :math:`N = (t!)^b` relabellings of the exact test come in groups of :math:`t!` and its
    p-values are multiples of :math:`t!/N`; Monte Carlo p-values are multiples of
    :math:`1/(m+1)`. 0 when the test can never reject at α.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1); got {alpha}")
    _check_resamples(n_resamples)
    if blocks < 1 or treatments < 2:
        return 0.0
    relabellings = math.factorial(treatments) ** blocks
    if relabellings <= EXACT_LIMIT:
        grid = relabellings // math.factorial(treatments)
    else:
        grid = n_resamples + 1
    return math.floor(alpha * grid * (1 + 1e-12)) / grid


def friedman_test(table: ArrayLike) -> float:
    """Friedman's rank test of a complete block design (Friedman 1937), for reporting.

    :func:`scipy.stats.friedmanchisquare` on the treatments (columns); needs at least three
    treatments. Returns the (chi-square approximate) p-value, ``nan`` where it is undefined
    (e.g. every block tied).
    """
    y = _complete_table(table)
    if y.shape[1] < 3:
        raise ValueError(f"friedman_test needs at least 3 treatments (columns); got {y.shape[1]}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(sps.friedmanchisquare(*y.T).pvalue)


def _check_power_args(sd: float, n: int, alpha: float) -> None:
    if not sd >= 0:
        raise ValueError(f"sd must be non-negative; got {sd}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1); got {alpha}")
    if n < 0:
        raise ValueError(f"n must be non-negative; got {n}")


def _nct_cdf(df: int, noncentrality: float, x: float) -> float:
    """The noncentral t distribution function, finite where scipy's ``nctdtr`` returns nan.

    ``nctdtr`` gives nan deep in a tail for some arguments (e.g. ν = 14, λ = 10, x = −3.27,
    where the value is below 1e-20); there the reflection F_{ν,λ}(x) = 1 − F_{ν,−λ}(−x) is
    used, and where that fails too, the side of the distribution x lies on (0 or 1).
    """
    value = float(special.nctdtr(df, noncentrality, x))
    if math.isfinite(value):
        return value
    reflected = 1.0 - float(special.nctdtr(df, -noncentrality, -x))
    if math.isfinite(reflected):
        return min(1.0, max(0.0, reflected))
    return 0.0 if x < noncentrality else 1.0


def _t_power_at(noncentrality: float, df: int, alpha: float, alternative: str) -> float:
    """Power of the t test on ``df`` degrees of freedom at noncentrality λ = δ√n/σ."""
    if alternative == "two-sided":
        critical = float(special.stdtrit(df, 1 - alpha / 2))
        return (1 - _nct_cdf(df, noncentrality, critical)
                + _nct_cdf(df, noncentrality, -critical))
    critical = float(special.stdtrit(df, 1 - alpha))
    if alternative == "greater":
        return 1 - _nct_cdf(df, noncentrality, critical)
    return _nct_cdf(df, noncentrality, -critical)


def paired_t_power(effect: float, sd: float, n: int, alpha: float,
                   alternative: Alternative = "greater") -> float:
    r"""Power of the paired (one-sample) t test at level α for a true mean difference ``effect``.

    With :math:`\nu = n - 1`, noncentrality :math:`\lambda = \delta\sqrt{n}/\sigma` and
    :math:`F_{\nu,\lambda}` the noncentral t distribution function,
    ``"greater"``: :math:`1 - F_{\nu,\lambda}(t_{1-\alpha,\nu})`;
    ``"less"``: :math:`F_{\nu,\lambda}(-t_{1-\alpha,\nu})`;
    ``"two-sided"``: both tails at :math:`t_{1-\alpha/2,\nu}`. ``nan`` for n < 2; with
    σ = 0 the test is decided by the sign of δ alone (power 1, α at δ = 0, 0 against it).
    """
    _check_alternative(alternative)
    _check_power_args(sd, n, alpha)
    if n < 2:
        return float("nan")
    if sd == 0:
        toward = {"greater": effect > 0, "less": effect < 0, "two-sided": effect != 0}
        return 1.0 if toward[alternative] else (alpha if effect == 0 else 0.0)
    return _t_power_at(effect * math.sqrt(n) / sd, n - 1, alpha, alternative)


def _solve_increasing(power_of: Callable[[float], float], power: float, guess: float) -> float:
    """The x ≥ 0 with ``power_of(x) = power``, for a power curve increasing in x ≥ 0."""
    if power_of(0.0) >= power:
        return 0.0
    upper = max(guess, 1e-6)
    while power_of(upper) < power:
        upper *= 2
        if upper > 1e12:
            return math.inf
    return float(optimize.brentq(lambda x: power_of(x) - power, 0.0, upper, xtol=1e-12,
                                 rtol=1e-12))


def minimum_detectable_effect(sd: float, n: int, alpha: float, power: float = 0.8,
                              alternative: Alternative = "greater") -> float:
    r"""The smallest mean difference δ ≥ 0 the paired t test detects with the given power.

    Solves :func:`paired_t_power` (δ, σ, n, α) = power for δ: first the noncentrality λ with
    power(λ) = power, then :math:`\delta = \lambda\sigma/\sqrt n` (in the claimed direction: for
    ``"less"`` the magnitude of a negative difference). ``inf`` when n < 2 (no test is
    possible), 0 when σ = 0.
    """
    _check_alternative(alternative)
    _check_power_args(sd, n, alpha)
    if not alpha < power < 1:
        raise ValueError(f"power must be in (alpha, 1) = ({alpha}, 1); got {power}")
    if n < 2:
        return math.inf
    if sd == 0:
        return 0.0
    sign = -1.0 if alternative == "less" else 1.0
    guess = float(special.ndtri(1 - alpha) + special.ndtri(power))
    noncentrality = _solve_increasing(
        lambda lam: _t_power_at(sign * lam, n - 1, alpha, alternative), power, guess)
    return noncentrality * sd / math.sqrt(n)


def _f_power_at(noncentrality: float, df1: int, df2: int, alpha: float) -> float:
    critical = float(special.fdtri(df1, df2, 1 - alpha))
    return float(1 - special.ncfdtr(df1, df2, noncentrality, critical))


def anova_f_power(spread: float, sd: float, blocks: int, treatments: int, alpha: float) -> float:
    r"""Power of the block-design F test against the least favourable treatment means of a range.

    Additive model :math:`y_{bt} = \mu + \beta_b + \tau_t + \varepsilon_{bt}`,
    :math:`\varepsilon \sim N(0, \sigma^2)`; :math:`F = MS_\text{treat}/MS_\text{error}` on
    :math:`(t-1, (b-1)(t-1))` degrees of freedom with noncentrality
    :math:`\lambda = b \sum_t \tau_t^2 / \sigma^2`. Among treatment effects whose best-minus-worst
    range is ``spread`` = Δ, :math:`\sum \tau_t^2` is smallest (Δ²/2) with two treatments at ±Δ/2
    and the rest midway, so this is the power guaranteed for any configuration with that range
    (Montgomery, *Design and Analysis of Experiments*, §4.1 and §3.7). For two treatments it
    equals the two-sided paired t power with :math:`\sigma_d = \sigma\sqrt2`.
    """
    _check_power_args(sd, blocks, alpha)
    if treatments < 2:
        raise ValueError(f"treatments must be at least 2; got {treatments}")
    if blocks < 2:
        return float("nan")
    if sd == 0:
        return 1.0 if spread != 0 else alpha
    return _f_power_at(blocks * spread**2 / 2 / sd**2, treatments - 1,
                       (blocks - 1) * (treatments - 1), alpha)


def minimum_detectable_spread(sd: float, blocks: int, treatments: int, alpha: float,
                              power: float = 0.8) -> float:
    r"""The smallest best-minus-worst range Δ that :func:`anova_f_power` detects with ``power``.

    Solves for λ, then :math:`\Delta = \sigma\sqrt{2\lambda/b}`. ``inf`` for fewer than two
    blocks, 0 when σ = 0.
    """
    _check_power_args(sd, blocks, alpha)
    if treatments < 2:
        raise ValueError(f"treatments must be at least 2; got {treatments}")
    if not alpha < power < 1:
        raise ValueError(f"power must be in (alpha, 1) = ({alpha}, 1); got {power}")
    if blocks < 2:
        return math.inf
    if sd == 0:
        return 0.0
    df1, df2 = treatments - 1, (blocks - 1) * (treatments - 1)
    noncentrality = _solve_increasing(lambda lam: _f_power_at(lam, df1, df2, alpha), power,
                                      float(treatments) * 4)
    return sd * math.sqrt(2 * noncentrality / blocks)


def format_p(p: float) -> str:
    """A p-value for humans: three decimals, scientific notation below 0.001."""
    if math.isnan(p):
        return "nan"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


@dataclass(frozen=True)
class Comparison:
    """One tested comparison: an effect, its interval, its p-value before and after Holm.

    ``mean`` is oriented so that a positive value favours the claim (e.g. model A − model B);
    ``ci_low``/``ci_high`` is its bootstrap interval (``nan`` where none applies); ``p`` the
    one-sided p-value in the claimed direction, ``p_adjusted`` the Holm-adjusted one over the
    comparisons of a claim (:func:`adjust_holm`), ``mde`` the minimum detectable effect at 80 %
    power for the runs at hand.
    """

    label: str
    column: str
    n: int
    mean: float
    ci_low: float
    ci_high: float
    p: float
    p_adjusted: float = float("nan")
    mde: float = float("nan")

    def significant(self, alpha: float) -> bool:
        """Holm-adjusted p ≤ α (the unadjusted p where no adjustment was made)."""
        p = self.p if math.isnan(self.p_adjusted) else self.p_adjusted
        return bool(p <= alpha)

    def __str__(self) -> str:
        interval = ("" if math.isnan(self.ci_low) or math.isnan(self.ci_high)
                    else f" [{self.ci_low:.3f}, {self.ci_high:.3f}]")
        holm_part = "" if math.isnan(self.p_adjusted) else f" (Holm {format_p(self.p_adjusted)})"
        return f"{self.mean:+.3f}{interval}, p={format_p(self.p)}{holm_part}, n={self.n}"


def adjust_holm(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """The comparisons with ``p_adjusted`` filled by :func:`holm` over all of them."""
    adjusted = holm([c.p for c in comparisons]) if comparisons else np.array([])
    return [replace(c, p_adjusted=float(a)) for c, a in zip(comparisons, adjusted, strict=True)]
