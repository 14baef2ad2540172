"""Multimodal links through a shared subspace: held-out canonical correlation analysis.

Given two modalities' representations of the same subjects, :math:`X \\in \\mathbb R^{n\\times p}`
(e.g. T1 embeddings) and :math:`Y \\in \\mathbb R^{n\\times q}` (fALFF embeddings), CCA finds
weight pairs :math:`(a_j, b_j)` whose variates :math:`X a_j` and :math:`Y b_j` are maximally
correlated and uncorrelated with the earlier pairs. A link is only credible if it generalises,
so :func:`cca_links` **fits on the training subjects and scores on held-out ones**, and compares
the held-out correlations with a permutation null.

Closed form (features standardised with the training mean and standard deviation): with
ridge-regularised correlation matrices

.. math::

    C_{xx} = \\tfrac{1}{n-1} X^\\top X + \\lambda I,\\quad
    C_{yy} = \\tfrac{1}{n-1} Y^\\top Y + \\lambda I,\\quad
    C_{xy} = \\tfrac{1}{n-1} X^\\top Y,

the singular value decomposition
:math:`C_{xx}^{-1/2} C_{xy} C_{yy}^{-1/2} = U \\operatorname{diag}(\\rho) V^\\top` gives the
weights :math:`A = C_{xx}^{-1/2} U_{:,1:k}` and :math:`B = C_{yy}^{-1/2} V_{:,1:k}` of the
first :math:`k` components (:math:`\\rho` are the regularised canonical correlations). This is
exact and deterministic, unlike scikit-learn's iterative NIPALS ``CCA``. Signs are fixed so that
each x-weight vector's largest-magnitude entry is positive and each training correlation is
non-negative.

Permutation baseline: the pairing of training rows is destroyed by shuffling the rows of
:math:`Y_\\text{train}`, the CCA is refitted and scored on the *unshuffled* test pairs; over
:math:`P` permutations this gives a null distribution per component and the p-value

.. math::  p_j = \\frac{1 + \\#\\{\\pi : r^{\\pi}_j \\ge r_j\\}}{1 + P}.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "HARMONIZE", "LinkResult", "Standardizer", "canonical_variate", "cca_links",
    "harmonise_by_site",
    "reduced_cca_links", "residualise", "site_harmonisation_problem",
]

FloatArray = NDArray[np.float64]

#: how ``mmssl links`` treats the scanner site: ``site`` (:func:`harmonise_by_site`), ``none``
#: (site indicators in :func:`residualise`), ``auto`` (``site`` where every site can be fitted)
HARMONIZE = ("auto", "site", "none")

#: Relative floor on eigenvalues when inverting a (possibly singular) correlation matrix.
_EIGEN_FLOOR = 1e-12


@dataclass(frozen=True)
class Standardizer:
    """Feature-wise standardisation :math:`(x - \\mu)/\\sigma` fitted on training data.

    ``scale`` is the population standard deviation (``ddof=0``, as scikit-learn's
    ``StandardScaler``), with constant features given scale 1.
    """

    mean: FloatArray
    scale: FloatArray

    @classmethod
    def fit(cls, x: FloatArray) -> Standardizer:
        """Mean and standard deviation of the columns of ``x``."""
        scale = x.std(axis=0)
        return cls(mean=x.mean(axis=0), scale=np.where(scale > 0, scale, 1.0))

    def transform(self, x: FloatArray) -> FloatArray:
        """Standardised copy of ``x``."""
        return (np.asarray(x, dtype=np.float64) - self.mean) / self.scale


@dataclass
class LinkResult:
    """The outcome of :func:`cca_links`; ``x`` refers to ``modalities[0]``, ``y`` to ``[1]``.

    Attributes:
        modalities: the two modality names, in the order of the training mapping.
        train_correlations: (k,) correlations of the canonical variates on the training data.
        test_correlations: (k,) correlations of the canonical variates on held-out data.
        null_correlations: (n_permutations, k) held-out correlations after shuffling the
            training pairing.
        p_values: (k,) permutation p-values of ``test_correlations`` (NaN where undefined).
        x_weights: (p, k) canonical weights on ``modalities[0]``'s standardised features.
        y_weights: (q, k) canonical weights on ``modalities[1]``'s standardised features.
        scalers: the two modalities' training standardisers, in ``modalities`` order.
        regularization: the ridge :math:`\\lambda` added to the correlation matrices.
        n_train: training subjects.
        n_test: held-out subjects.
        seed: seed of the permutations.
    """

    modalities: tuple[str, str]
    train_correlations: FloatArray
    test_correlations: FloatArray
    null_correlations: FloatArray
    p_values: FloatArray
    x_weights: FloatArray
    y_weights: FloatArray
    scalers: tuple[Standardizer, Standardizer] = field(repr=False)
    regularization: float = 0.0
    n_train: int = 0
    n_test: int = 0
    seed: int = 0

    @property
    def n_components(self) -> int:
        """Number of canonical components k."""
        return int(self.x_weights.shape[1])

    def _index(self, modality: str) -> int:
        if modality not in self.modalities:
            raise KeyError(f"unknown modality {modality!r}; have {list(self.modalities)}")
        return self.modalities.index(modality)

    def weights(self, modality: str) -> FloatArray:
        """(D, k) canonical weights of ``modality`` (on its standardised features)."""
        return self.x_weights if self._index(modality) == 0 else self.y_weights

    def scaler(self, modality: str) -> Standardizer:
        """The training standardiser of ``modality``."""
        return self.scalers[self._index(modality)]

    def transform(self, modality: str, features: np.ndarray) -> FloatArray:
        """(N, k) canonical variates of ``modality``'s (N, D) features."""
        x = np.asarray(features, dtype=np.float64)
        weights = self.weights(modality)
        if x.ndim != 2 or x.shape[1] != weights.shape[0]:
            raise ValueError(
                f"{modality!r} features must be (N, {weights.shape[0]}), got shape {x.shape}"
            )
        return self.scaler(modality).transform(x) @ weights

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary (plain floats and lists; NaN becomes ``None``)."""
        return {
            "modalities": list(self.modalities),
            "n_components": self.n_components,
            "n_permutations": int(self.null_correlations.shape[0]),
            "n_train": self.n_train,
            "n_test": self.n_test,
            "regularization": float(self.regularization),
            "seed": self.seed,
            "train_correlations": _jsonable(self.train_correlations),
            "test_correlations": _jsonable(self.test_correlations),
            "p_values": _jsonable(self.p_values),
            "null_correlations": _jsonable(self.null_correlations),
            "weights": {m: _jsonable(self.weights(m)) for m in self.modalities},
            "scalers": {
                m: {"mean": _jsonable(s.mean), "scale": _jsonable(s.scale)}
                for m, s in zip(self.modalities, self.scalers, strict=True)
            },
        }


def _jsonable(array: np.ndarray) -> Any:
    """Nested lists of Python floats, with non-finite values as ``None``."""
    a = np.asarray(array, dtype=np.float64)
    if a.ndim == 0:
        return float(a) if np.isfinite(a) else None
    return (
        [_jsonable(row) for row in a]
        if a.ndim > 1
        else [float(v) if np.isfinite(v) else None for v in a]
    )


def canonical_variate(
    result: LinkResult, modality: str, component: int
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``(mean, scale, weight)`` of one modality's canonical variate.

    The variate is :math:`v = ((z - \\mu)/\\sigma)^\\top w`; feed the triple to
    :class:`mmssl.evaluation.saliency.LinearReadout` to map what drives it in the input volume.

    Raises:
        KeyError: an unknown modality.
        IndexError: a component outside ``0 … k−1``.
    """
    weights = result.weights(modality)
    k = weights.shape[1]
    if not 0 <= component < k:
        raise IndexError(f"component {component} out of range; the result has {k} components")
    scaler = result.scaler(modality)
    return scaler.mean.copy(), scaler.scale.copy(), weights[:, component].copy()


# --------------------------------------------------------------------------------------------
# Closed-form CCA
# --------------------------------------------------------------------------------------------


def _inverse_sqrt(c: FloatArray) -> FloatArray:
    """:math:`C^{-1/2}` of a symmetric positive semi-definite matrix (eigenvalues floored)."""
    values, vectors = np.linalg.eigh((c + c.T) / 2)
    floor = max(float(values.max(initial=0.0)), 1.0) * _EIGEN_FLOOR
    values = np.maximum(values, floor)
    return (vectors / np.sqrt(values)) @ vectors.T


def _correlations(u: FloatArray, v: FloatArray) -> FloatArray:
    """Column-wise Pearson correlations of two (n, k) arrays (NaN for constant columns)."""
    u = u - u.mean(axis=0)
    v = v - v.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (u * v).sum(axis=0) / np.sqrt((u * u).sum(axis=0) * (v * v).sum(axis=0))
    return np.asarray(r, dtype=np.float64)


@dataclass(frozen=True)
class _Whitened:
    """Standardised, whitened training data: :math:`X C_{xx}^{-1/2}`, :math:`Y C_{yy}^{-1/2}`."""

    x: FloatArray
    y: FloatArray
    x_whitener: FloatArray
    y_whitener: FloatArray


def _whiten(xs: FloatArray, ys: FloatArray, regularization: float) -> _Whitened:
    n = xs.shape[0]
    cxx = xs.T @ xs / (n - 1) + regularization * np.eye(xs.shape[1])
    cyy = ys.T @ ys / (n - 1) + regularization * np.eye(ys.shape[1])
    wx, wy = _inverse_sqrt(cxx), _inverse_sqrt(cyy)
    return _Whitened(x=xs @ wx, y=ys @ wy, x_whitener=wx, y_whitener=wy)


def _canonical_weights(
    w: _Whitened, xs: FloatArray, ys: FloatArray, k: int, rows: np.ndarray | None = None
) -> tuple[FloatArray, FloatArray]:
    """(A, B) of the first k components; ``rows`` re-pairs Y's training rows (permutations).

    Shuffling Y's rows changes neither its standardisation nor :math:`C_{yy}`, so only the
    cross term is recomputed.
    """
    y_white = w.y if rows is None else w.y[rows]
    y_std = ys if rows is None else ys[rows]
    t = w.x.T @ y_white / (xs.shape[0] - 1)
    u, _, vt = np.linalg.svd(t, full_matrices=False)
    a = w.x_whitener @ u[:, :k]
    b = w.y_whitener @ vt[:k].T
    # Deterministic signs: the largest-|.| x weight positive, then training correlations ≥ 0.
    pivot = a[np.argmax(np.abs(a), axis=0), np.arange(k)]
    flip = np.where(pivot < 0, -1.0, 1.0)
    a, b = a * flip, b * flip
    r = _correlations(xs @ a, y_std @ b)
    b = b * np.where(r < 0, -1.0, 1.0)
    return a, b


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _check_split(
    name: str, data: Mapping[str, np.ndarray], modalities: tuple[str, str] | None
) -> tuple[tuple[str, str], FloatArray, FloatArray]:
    keys = tuple(data)
    if len(keys) != 2:
        raise ValueError(
            f"{name}: CCA links need exactly two modalities, got {len(keys)} ({list(keys)})"
        )
    if modalities is not None and set(keys) != set(modalities):
        raise ValueError(f"{name} has modalities {list(keys)}; train has {list(modalities)}")
    order: tuple[str, str] = (keys[0], keys[1]) if modalities is None else modalities
    arrays = []
    for m in order:
        a = np.asarray(data[m], dtype=np.float64)
        if a.ndim != 2 or a.shape[1] == 0:
            raise ValueError(f"{name}[{m!r}] must be a 2-D (N, D) array, got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name}[{m!r}] contains NaN or infinite values")
        arrays.append(a)
    x, y = arrays
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{name}: {order[0]!r} has {x.shape[0]} rows but {order[1]!r} has {y.shape[0]}; "
            "rows must be the same subjects"
        )
    return order, x, y


def cca_links(
    train: Mapping[str, np.ndarray],
    test: Mapping[str, np.ndarray],
    *,
    n_components: int = 3,
    n_permutations: int = 200,
    seed: int = 0,
    regularization: float = 1e-3,
) -> LinkResult:
    """Held-out CCA between two modalities' representations, with a permutation null.

    Args:
        train: exactly two modalities → (N_train, D_m) features, rows paired by subject. Only
            these are used to fit the standardisers and the canonical weights.
        test: the same modalities → (N_test, D_m) held-out features, used only for scoring.
        n_components: canonical components k (≤ min(D_x, D_y) and ≤ N_train − 1).
        n_permutations: shuffles of the training pairing for the null (0 gives p = 1).
        seed: seed of the permutations.
        regularization: ridge :math:`\\lambda \\ge 0` on the (unit-diagonal) correlation
            matrices; small values stabilise the whitening when D is large relative to N.

    Returns:
        A :class:`LinkResult`.

    Raises:
        ValueError: not exactly two modalities, different modalities in train and test,
            non-finite or malformed arrays, unpaired rows, too many components, fewer than
            ``max(3, k + 1)`` training or 3 test subjects, or invalid settings.
    """
    modalities, x_train, y_train = _check_split("train", train, None)
    _, x_test, y_test = _check_split("test", test, modalities)
    p, q = x_train.shape[1], y_train.shape[1]
    for name, a, width in (("x", x_test, p), ("y", y_test, q)):
        if a.shape[1] != width:
            m = modalities[0 if name == "x" else 1]
            raise ValueError(f"test[{m!r}] has {a.shape[1]} features but train has {width}")
    if n_components < 1:
        raise ValueError(f"n_components must be ≥ 1, got {n_components}")
    if n_components > min(p, q):
        raise ValueError(
            f"n_components={n_components} exceeds the smaller representation size "
            f"min({p}, {q}) = {min(p, q)}"
        )
    n_train, n_test = x_train.shape[0], x_test.shape[0]
    if n_train < max(3, n_components + 1):
        raise ValueError(
            f"too few training subjects ({n_train}) for {n_components} components; need at "
            f"least {max(3, n_components + 1)}"
        )
    if n_test < 3:
        raise ValueError(f"too few test subjects ({n_test}); need at least 3")
    if n_permutations < 0:
        raise ValueError(f"n_permutations must be ≥ 0, got {n_permutations}")
    if not (np.isfinite(regularization) and regularization >= 0):
        raise ValueError(f"regularization must be finite and ≥ 0, got {regularization}")

    scalers = (Standardizer.fit(x_train), Standardizer.fit(y_train))
    xs, ys = scalers[0].transform(x_train), scalers[1].transform(y_train)
    xt, yt = scalers[0].transform(x_test), scalers[1].transform(y_test)

    whitened = _whiten(xs, ys, regularization)
    a, b = _canonical_weights(whitened, xs, ys, n_components)
    train_r = _correlations(xs @ a, ys @ b)
    test_r = _correlations(xt @ a, yt @ b)

    rng = np.random.default_rng(seed)
    null = np.empty((n_permutations, n_components))
    for i in range(n_permutations):
        rows = rng.permutation(n_train)
        a_perm, b_perm = _canonical_weights(whitened, xs, ys, n_components, rows)
        null[i] = _correlations(xt @ a_perm, yt @ b_perm)
    exceed = (null >= test_r).sum(axis=0)
    p_values = np.where(np.isfinite(test_r), (1.0 + exceed) / (1.0 + n_permutations), np.nan)

    return LinkResult(
        modalities=modalities,
        train_correlations=train_r,
        test_correlations=test_r,
        null_correlations=null,
        p_values=p_values,
        x_weights=a,
        y_weights=b,
        scalers=scalers,
        regularization=float(regularization),
        n_train=n_train,
        n_test=n_test,
        seed=seed,
    )


def reduced_cca_links(
    train: Mapping[str, np.ndarray],
    test: Mapping[str, np.ndarray],
    *,
    pca: int | None = 10,
    n_components: int = 3,
    n_permutations: int = 200,
    seed: int = 0,
) -> tuple[LinkResult, dict[str, Any], dict[str, FloatArray]]:
    """:func:`cca_links` after an optional per-modality PCA fitted on the training rows only.

    Each modality's representation is projected on its first ``min(pca, N_train − 2, D)``
    principal components of the training data (``pca`` falsy: no reduction). Without this,
    CCA on 64-d features of a few dozen subjects finds perfect, meaningless training
    correlations. Returns the link result, the fitted ``sklearn`` PCA per reduced modality
    and the (reduced) test features the result applies to.
    """
    from sklearn.decomposition import PCA

    reduced_train = {m: np.asarray(x, dtype=np.float64) for m, x in train.items()}
    reduced_test = {m: np.asarray(x, dtype=np.float64) for m, x in test.items()}
    reducers: dict[str, Any] = {}
    if pca:
        for m, x in reduced_train.items():
            n = max(1, min(pca, len(x) - 2, x.shape[1]))
            reducers[m] = PCA(n_components=n, random_state=seed).fit(x)
            reduced_train[m] = reducers[m].transform(x)
            reduced_test[m] = reducers[m].transform(reduced_test[m])
    result = cca_links(reduced_train, reduced_test, n_components=n_components,
                       n_permutations=n_permutations, seed=seed)
    return result, reducers, reduced_test


def _with_intercept(confounds: np.ndarray) -> FloatArray:
    """[1, C]: the confound design with an intercept column."""
    return np.column_stack([np.ones(len(confounds)), np.asarray(confounds, dtype=np.float64)])


def _matched_rows(
    train: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
    c_train: FloatArray, c_test: FloatArray,
) -> Iterator[tuple[str, FloatArray, FloatArray]]:
    """Each modality's training and test features as float64, checked against the confound
    rows (ValueError naming the modality when they do not match)."""
    for modality, x in train.items():
        x_train = np.asarray(x, dtype=np.float64)
        x_test = np.asarray(test[modality], dtype=np.float64)
        if len(x_train) != len(c_train) or len(x_test) != len(c_test):
            raise ValueError(f"{modality}: confounds have {len(c_train)}/{len(c_test)} rows, "
                             f"features {len(x_train)}/{len(x_test)}")
        yield modality, x_train, x_test


def residualise(
    train: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
    confounds_train: np.ndarray, confounds_test: np.ndarray,
) -> tuple[dict[str, FloatArray], dict[str, FloatArray]]:
    r"""Remove what linear confounds explain from every modality, fitted on training rows only.

    For each modality :math:`X` and confounds :math:`C` (an intercept is added),
    :math:`\hat B = \arg\min_B \lVert X_{tr} - [1, C_{tr}] B\rVert^2` (least squares on the
    training rows) and both splits become :math:`X - [1, C] \hat B`. A link found afterwards
    is one *beyond* the confounds (e.g. diagnosis, age, site).

    Raises:
        ValueError: confound rows that do not match the features.
    """
    c_train, c_test = _with_intercept(confounds_train), _with_intercept(confounds_test)
    out_train: dict[str, FloatArray] = {}
    out_test: dict[str, FloatArray] = {}
    for modality, x_train, x_test in _matched_rows(train, test, c_train, c_test):
        coef, *_ = np.linalg.lstsq(c_train, x_train, rcond=None)
        out_train[modality] = x_train - c_train @ coef
        out_test[modality] = x_test - c_test @ coef
    return out_train, out_test


def _site_counts(sites: np.ndarray) -> dict[str, int]:
    """Rows per site, sites in sorted order."""
    names, counts = np.unique(np.asarray(sites).astype(str), return_counts=True)
    return {str(name): int(count) for name, count in zip(names, counts, strict=True)}


def site_harmonisation_problem(sites_train: np.ndarray, sites_test: np.ndarray,
                                design_columns: int) -> str | None:
    """Why :func:`harmonise_by_site` cannot fit these sites (None when it can): a test site
    with no training subjects, or a site with fewer training subjects than the confound
    model's ``design_columns`` (intercept included) + 2."""
    counts = _site_counts(sites_train)
    unseen = sorted(str(site) for site in set(np.asarray(sites_test).astype(str)) - set(counts))
    if unseen:
        return (f"site(s) {unseen} have test subjects but no training subjects, so they cannot "
                f"be harmonised")
    needed = design_columns + 2
    small = {site: n for site, n in counts.items() if n < needed}
    if small:
        return (f"site(s) with too few training subjects to harmonise {small}: each needs at "
                f"least {needed} (the confound model has {design_columns} columns)")
    return None


def harmonise_by_site(
    train: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
    confounds_train: np.ndarray, confounds_test: np.ndarray,
    sites_train: np.ndarray, sites_test: np.ndarray,
) -> tuple[dict[str, FloatArray], dict[str, FloatArray], dict[str, int]]:
    r"""Remove the confounds within each site and equalise the sites' residual scales, fitted
    on training rows only.

    For site :math:`s` with training rows :math:`X_s` and confounds :math:`C_s` (an intercept
    is added), :math:`\hat B_s = \arg\min_B \lVert X_s - [1, C_s] B\rVert^2` and every row
    of that site, training or test, becomes

    .. math:: \tilde x = (x - [1, c]\hat B_s) \oslash \hat\sigma_s, \qquad
        \hat\sigma_s^2 = \frac{\lVert X_s - [1, C_s]\hat B_s\rVert^2_{\text{col}}}
                               {n_s - \operatorname{rank}[1, C_s]}

    (per feature). That is the location-and-scale adjustment of ComBat (Johnson et al.,
    Biostatistics 2007; Fortin et al., NeuroImage 2018) with site-specific covariate slopes
    and without its empirical-Bayes shrinkage. Linear site indicators
    (:func:`residualise` with the site among the confounds) remove only each site's mean: when
    sites change contrast or scale, the confounds' effects differ between sites, and what
    they leave is shared by the modalities of a subject — a link that is the scanner's, not
    the brain's. Here it is removed at the price of a few more parameters per site.

    Returns the harmonised training and test features and the training rows per site.

    Raises:
        ValueError: a test site with no training rows, a site with too few training rows for
            its confound model (at least the design's columns + 2), or rows that do not match.
    """
    sites_train = np.asarray(sites_train).astype(str)
    sites_test = np.asarray(sites_test).astype(str)
    c_train, c_test = _with_intercept(confounds_train), _with_intercept(confounds_test)
    if len(sites_train) != len(c_train) or len(sites_test) != len(c_test):
        raise ValueError(f"sites have {len(sites_train)}/{len(sites_test)} rows, confounds "
                         f"{len(c_train)}/{len(c_test)}")
    problem = site_harmonisation_problem(sites_train, sites_test, c_train.shape[1])
    if problem:
        raise ValueError(f"{problem}; use --harmonize none")
    counts = _site_counts(sites_train)
    out_train: dict[str, FloatArray] = {}
    out_test: dict[str, FloatArray] = {}
    for modality, x_train, x_test in _matched_rows(train, test, c_train, c_test):
        harmonised_train = np.empty_like(x_train)
        harmonised_test = np.empty_like(x_test)
        for site in counts:
            rows, held = sites_train == site, sites_test == site
            coef, _, rank, _ = np.linalg.lstsq(c_train[rows], x_train[rows], rcond=None)
            residual = x_train[rows] - c_train[rows] @ coef
            scale = np.sqrt((residual**2).sum(axis=0) / (rows.sum() - rank))
            scale = np.where(scale > 0, scale, 1.0)
            harmonised_train[rows] = residual / scale
            harmonised_test[held] = (x_test[held] - c_test[held] @ coef) / scale
        out_train[modality], out_test[modality] = harmonised_train, harmonised_test
    return out_train, out_test, counts
