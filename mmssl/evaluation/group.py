"""Voxel-wise group inference on brain maps and tables of the clusters it finds.

Which brain regions separate Alzheimer's patients from controls at group level? Given one map
per subject in a common (MNI) space, e.g. the saliency maps of :mod:`mmssl.evaluation.saliency`,
this module fits a general linear model at every voxel, controls the family-wise error over
voxels by permutation, and describes the significant clusters with an atlas.

**Model.** For subject :math:`s` and voxel :math:`v`,

.. math::

    y_{sv} = x_s \\beta_v + z_s^\\top \\gamma_v + \\varepsilon_{sv},

with the tested variable :math:`x_s \\in \\{0, 1\\}` (1 for patients, 0 for controls) and the
confounds :math:`z_s` = an intercept plus the covariates (numeric covariates centred,
categorical ones one-hot coded with the first level as reference); see :func:`design_matrix`.
With :math:`M = [x, Z]` (:math:`n \\times p`, full column rank) the OLS estimate and its
t-statistic are

.. math::

    \\hat\\theta_v = (M^\\top M)^{-1} M^\\top y_v, \\qquad
    \\hat\\sigma_v^2 = \\frac{\\lVert y_v - M \\hat\\theta_v\\rVert^2}{n - p}, \\qquad
    t_v = \\frac{c^\\top \\hat\\theta_v}
        {\\sqrt{\\hat\\sigma_v^2\\, c^\\top (M^\\top M)^{-1} c}},\\quad c = (1, 0, \\dots, 0)^\\top,

i.e. the group difference adjusted for the confounds. The uncorrected p-value is the parametric
one, from Student's t with :math:`n - p` degrees of freedom.

**Permutation (Freedman–Lane).** Under :math:`H_0: \\beta_v = 0` the residuals of the reduced
model, :math:`r_v = R_Z y_v` with :math:`R_Z = I - Z(Z^\\top Z)^{-1} Z^\\top`, are approximately
exchangeable. Freedman & Lane (1983) permute them, add the fitted confound part back,
:math:`y_v^{*} = P r_v + Z \\hat\\gamma_v`, and refit the full model; the permutation
:math:`P` is the same for every voxel so that the spatial dependence is kept. Since the
confound part is absorbed by the full model, this equals fitting :math:`P r_v` on
:math:`[x, Z]`, or equivalently :math:`r_v` on the jointly permuted :math:`[P^\\top x,
P^\\top Z]`, which is what nilearn does. Winkler et al. (2014) compare this scheme with the
alternatives and recommend it. Implementation: :func:`nilearn.mass_univariate.permuted_ols`.

**Family-wise error by max-T** (Nichols & Holmes 2002). For each of :math:`B` permutations take
:math:`T^{*}_b = \\max_v |t^{*}_{bv}|` (or :math:`\\max_v t^{*}_{bv}` one-sided). The
FWE-corrected p-value of voxel :math:`v` is

.. math::  p^{\\mathrm{FWE}}_v = \\frac{1 + \\#\\{b : T^{*}_b \\ge |t_v|\\}}{1 + B},

and :math:`\\{v : p^{\\mathrm{FWE}}_v < \\alpha\\}` has family-wise error at most
:math:`\\alpha` (strong control; exact under exchangeability up to the Freedman–Lane
approximation). With :math:`B` permutations the smallest attainable p is :math:`1/(B+1)`.

**Note on nilearn 0.14.** ``permuted_ols`` treats a constant column among ``confounding_vars``
as an *intercept test* and then *sign-flips* the data instead of permuting it (a different
null, which assumes symmetric errors and is visibly wider on small samples). We therefore pass
the confounds *without* the intercept column and let nilearn add it
(``model_intercept=True``); the model is the same, the permutation scheme is Freedman–Lane.

Clusters of the significant voxels and their atlas names are in
:mod:`mmssl.evaluation.clusters`.

References:
    Freedman D, Lane D (1983). A nonstochastic interpretation of reported significance levels.
    J Bus Econ Stat 1:292-298.
    Nichols TE, Holmes AP (2002). Nonparametric permutation tests for functional neuroimaging:
    a primer with examples. Hum Brain Mapp 15:1-25.
    Winkler AM, Ridgway GR, Webster MA, Smith SM, Nichols TE (2014). Permutation inference for
    the general linear model. NeuroImage 92:381-397.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy import stats

__all__ = [
    "Design",
    "GroupTest",
    "abs_t_correlation",
    "design_matrix",
    "to_volume",
    "voxelwise_group_test",
]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

#: Name of the tested column and of the intercept column of the design.
GROUP_COLUMN = "group"
INTERCEPT_COLUMN = "intercept"

#: Default coding of ``groups``: 1 (or True) = patient, 0 (or False) = control.
DEFAULT_GROUP_CODES: Mapping[Hashable, int] = {1: 1, 0: 0}

#: A voxel whose residual after removing the confounds is below this fraction of its norm
#: carries no information about the group (e.g. constant across subjects): t = 0, p = 1.
_DEGENERATE_RTOL = 1e-9



# --------------------------------------------------------------------------------------------
# Design matrix
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Design:
    """A group-comparison design: :math:`M = [x, 1, Z_\\text{cov}]` and its bookkeeping.

    Unpacks as ``X, names = design_matrix(...)``.

    Attributes:
        matrix: (n_kept, p) float design; column 0 is the group indicator (patients 1,
            controls 0), column 1 the intercept, then the coded covariates.
        names: the p column names, e.g. ``("group", "intercept", "age", "sex[M]")``.
        rows: 0-based positions (into ``groups``) of the subjects kept.
        dropped: for ``drop_missing=True``, covariate column -> positions dropped because its
            value was missing (a subject missing several appears under each).
        reference_levels: categorical covariate -> its reference (dropped) level.
    """

    matrix: FloatArray
    names: tuple[str, ...]
    rows: NDArray[np.intp]
    dropped: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    reference_levels: Mapping[str, Any] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.matrix, self.names))

    @property
    def group(self) -> FloatArray:
        """The tested variable :math:`x` (column 0)."""
        return self.matrix[:, 0]

    @property
    def confounds(self) -> FloatArray:
        """The confounds :math:`Z` (intercept and covariates), columns 1..p-1."""
        return self.matrix[:, 1:]


def _describe_rows(positions: Sequence[int], index: pd.Index | None) -> str:
    shown = list(positions[:20])
    more = f" and {len(positions) - 20} more" if len(positions) > 20 else ""
    text = f"rows {shown}{more}"
    if index is not None and not isinstance(index, pd.RangeIndex):
        text += f" (index {[index[i] for i in shown]}{more})"
    return text


def _group_indicator(groups: ArrayLike, codes: Mapping[Hashable, int]) -> FloatArray:
    array = np.asarray(groups, dtype=object)
    if array.ndim != 1:
        raise ValueError(f"groups must be one label per subject (1-D), got shape {array.shape}")
    values = array.tolist()
    bad_codes = {k: v for k, v in codes.items() if v not in (0, 1)}
    if bad_codes:
        raise ValueError(
            f"group_codes must map labels to 1 (patients) or 0 (controls); got {bad_codes}"
        )
    out = np.empty(len(values), dtype=np.float64)
    unknown: dict[str, list[int]] = {}
    for i, value in enumerate(values):
        try:
            code = codes.get(value) if not (isinstance(value, float) and np.isnan(value)) else None
        except TypeError:  # unhashable label
            code = None
        if code is None:
            unknown.setdefault(repr(value), []).append(i)
        else:
            out[i] = code
    if unknown:
        listed = "; ".join(f"{label} at {_describe_rows(r, None)}" for label, r in unknown.items())
        raise ValueError(
            f"groups: unknown labels {listed}; expected one of {sorted(map(repr, codes))} "
            "(pass group_codes={label: 1 for patients, 0 for controls})"
        )
    return out


def _code_covariate(name: str, column: pd.Series) -> tuple[FloatArray, list[str], Any]:
    """Columns, their names and the reference level (None if numeric) of one covariate."""
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        values = column.to_numpy(dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise ValueError(f"covariate {name!r} has infinite values")
        if np.ptp(values) == 0:
            raise ValueError(
                f"covariate {name!r} is constant ({values[0]!r} for every subject); "
                "it is confounded with the intercept, drop it"
            )
        return (values - values.mean())[:, None], [name], None
    if isinstance(column.dtype, pd.CategoricalDtype):
        present = set(column)
        levels = [c for c in column.cat.categories if c in present]
    else:
        levels = sorted(set(column), key=lambda v: (str(type(v)), str(v)))
    if len(levels) < 2:
        raise ValueError(
            f"covariate {name!r} has a single level {levels!r} for every subject; "
            "it is confounded with the intercept, drop it"
        )
    reference, others = levels[0], levels[1:]
    coded = np.stack([(column == level).to_numpy(dtype=np.float64) for level in others], axis=1)
    return coded, [f"{name}[{level}]" for level in others], reference


def _check_full_rank(matrix: FloatArray, names: Sequence[str]) -> None:
    """Raise if a confound, or the group, is a linear combination of earlier columns.

    Columns are checked in the order intercept, covariates, group, so the message names the
    first redundant confound, or says the group is confounded with the confounds.
    """
    n, p = matrix.shape
    if n <= p:
        raise ValueError(
            f"design: {n} subjects for {p} columns {list(names)}; need more subjects than "
            "columns to estimate the residual variance"
        )
    order = list(range(1, p)) + [0]
    norms = np.linalg.norm(matrix, axis=0)
    scaled = matrix / np.where(norms > 0, norms, 1.0)
    for k in range(1, len(order) + 1):
        cols = order[:k]
        rank = np.linalg.matrix_rank(scaled[:, cols], tol=1e-8 * np.sqrt(n))
        if rank < k:
            culprit, earlier = names[cols[-1]], [names[c] for c in cols[:-1]]
            if cols[-1] == 0:
                raise ValueError(
                    f"design: the group indicator is a linear combination of the confounds "
                    f"{earlier} (e.g. a site or covariate that separates patients from "
                    "controls); the group effect is not estimable"
                )
            raise ValueError(
                f"design: confound {culprit!r} is collinear with {earlier} (a linear "
                "combination of them); drop it or one of them"
            )


def design_matrix(
    groups: ArrayLike,
    covariates: pd.DataFrame | None = None,
    *,
    group_codes: Mapping[Hashable, int] | None = None,
    drop_missing: bool = False,
) -> Design:
    """Design :math:`M = [x, 1, Z_\\text{cov}]` for a patients-versus-controls comparison.

    Column 0 is the tested variable :math:`x` (patients 1, controls 0), column 1 the intercept,
    then the covariates in ``covariates``' column order: a numeric covariate becomes one centred
    column :math:`z - \\bar z`; a categorical one (object, string, bool or ``category`` dtype,
    e.g. sex "F"/"M", site) becomes 0/1 indicators of every level but the reference, which is
    the first category (``category`` dtype) or the smallest value, named ``"col[level]"``.
    Centring changes only the intercept, never the group effect. Rows are aligned by position.

    Args:
        groups: one label per subject, mapped by ``group_codes`` (default: 1/True = patient,
            0/False = control).
        covariates: one row per subject, or None (intercept only).
        group_codes: label -> 1 (patients) or 0 (controls), e.g. ``{"AD": 1, "CN": 0}``.
        drop_missing: drop subjects with a missing covariate (reported in
            :attr:`Design.dropped`, with a warning) instead of raising.

    Returns:
        A :class:`Design`; it unpacks as ``(X, names)``.

    Raises:
        ValueError: unknown group labels; lengths differ; a missing covariate value (naming the
            column and rows) unless ``drop_missing``; only one group present; a constant
            covariate; collinear confounds or a group confounded with them; n <= p.
    """
    codes = DEFAULT_GROUP_CODES if group_codes is None else group_codes
    x = _group_indicator(groups, codes)
    n = x.size
    if n == 0:
        raise ValueError("groups is empty")
    keep = np.ones(n, dtype=bool)
    dropped: dict[str, tuple[int, ...]] = {}
    if covariates is not None:
        if not isinstance(covariates, pd.DataFrame):
            raise ValueError(
                f"covariates must be a pandas DataFrame or None, got {type(covariates).__name__}"
            )
        if len(covariates) != n:
            raise ValueError(f"covariates has {len(covariates)} rows but groups has {n} subjects")
        missing = {
            str(col): np.flatnonzero(covariates[col].isna().to_numpy())
            for col in covariates.columns
        }
        missing = {col: rows for col, rows in missing.items() if rows.size}
        if missing:
            described = "; ".join(
                f"{col!r}: {_describe_rows(rows.tolist(), covariates.index)}"
                for col, rows in missing.items()
            )
            if not drop_missing:
                raise ValueError(
                    f"covariates: missing values in {described} "
                    "(fill them, or pass drop_missing=True to drop those subjects)"
                )
            for col, rows in missing.items():
                keep[rows] = False
                dropped[col] = tuple(int(r) for r in rows)
            warnings.warn(
                f"design_matrix: dropped {int((~keep).sum())} subjects with missing covariates: "
                f"{described}",
                UserWarning,
                stacklevel=2,
            )
    rows = np.flatnonzero(keep)
    x = x[rows]
    n_patients = int(x.sum())
    if n_patients in (0, x.size):
        which = "patients" if n_patients else "controls"
        raise ValueError(
            f"groups: all {x.size} subjects (after dropping missing) are {which}; "
            "a group comparison needs both patients (1) and controls (0)"
        )
    columns: list[FloatArray] = [x[:, None], np.ones((x.size, 1))]
    names = [GROUP_COLUMN, INTERCEPT_COLUMN]
    references: dict[str, Any] = {}
    if covariates is not None:
        kept = covariates.iloc[rows]
        for col in kept.columns:
            if str(col) in (GROUP_COLUMN, INTERCEPT_COLUMN):
                raise ValueError(f"covariates: column name {col!r} is reserved; rename it")
            coded, coded_names, reference = _code_covariate(str(col), kept[col])
            columns.append(coded)
            names.extend(coded_names)
            if reference is not None:
                references[str(col)] = reference
    matrix = np.ascontiguousarray(np.hstack(columns), dtype=np.float64)
    if len(set(names)) != len(names):
        raise ValueError(f"design: duplicate column names {names}; rename the covariates")
    _check_full_rank(matrix, names)
    return Design(matrix, tuple(names), rows, dropped, references)


# --------------------------------------------------------------------------------------------
# Voxel-wise test
# --------------------------------------------------------------------------------------------


def to_volume(
    values: ArrayLike, mask: ArrayLike, shape: Sequence[int] | None = None, *, fill: float = 0.0
) -> NDArray[Any]:
    """Scatter in-mask values back into a volume: ``out[mask] = values``, ``fill`` elsewhere.

    ``mask`` is a boolean volume, or a flat boolean vector reshaped to ``shape``. Boolean
    values give a boolean volume (``fill`` then is False).
    """
    m = np.asarray(mask) != 0
    if shape is not None:
        if m.size != int(np.prod(shape)):
            raise ValueError(
                f"mask has {m.size} elements, shape {tuple(shape)} needs {np.prod(shape)}"
            )
        m = m.reshape(tuple(shape))
    v = np.asarray(values)
    if v.ndim != 1 or v.size != int(m.sum()):
        raise ValueError(f"values must be a vector of {int(m.sum())} in-mask values, got {v.shape}")
    if v.dtype == np.bool_:
        out_b = np.zeros(m.shape, dtype=bool)
        out_b[m] = v
        return out_b
    out = np.full(m.shape, fill, dtype=np.result_type(v.dtype, np.float64))
    out[m] = v
    return out


@dataclass(frozen=True)
class GroupTest:
    """Result of :func:`voxelwise_group_test`; per-voxel arrays are over the in-mask voxels.

    Attributes:
        t: group t-statistic per voxel (patients minus controls, adjusted for the confounds).
        p_uncorrected: parametric p from Student's t with ``df`` degrees of freedom.
        p_fwe: max-T permutation FWE-corrected p (nilearn's ``-log10`` converted back); NaN
            when ``n_permutations == 0``.
        h0_max_t: sorted permutation distribution of :math:`\\max_v |t|` (or :math:`\\max_v t`
            one-sided), length ``n_permutations``.
        n_per_group: ``{"patients": n1, "controls": n0}`` after dropping missing covariates.
        design_names: design column names (``group``, ``intercept``, covariates).
        df: residual degrees of freedom :math:`n - p`.
        two_sided: whether :math:`|t|` (both directions) or only patients > controls was tested.
        n_permutations: number of permutations.
        mask: boolean volume of the tested voxels, or None when the maps were given flat.
        rows: positions of the subjects used.
        dropped: covariate -> positions dropped for missing values.
        degenerate: voxels with no residual variance after the confounds (e.g. constant across
            subjects); they get t = 0 and p = 1 and are not part of the max-T family.
    """

    t: FloatArray
    p_uncorrected: FloatArray
    p_fwe: FloatArray
    h0_max_t: FloatArray
    n_per_group: Mapping[str, int]
    design_names: tuple[str, ...]
    df: int
    two_sided: bool
    n_permutations: int
    mask: BoolArray | None
    rows: NDArray[np.intp]
    dropped: Mapping[str, tuple[int, ...]]
    degenerate: BoolArray

    def volume(
        self,
        values: ArrayLike,
        mask: ArrayLike | None = None,
        shape: Sequence[int] | None = None,
        *,
        fill: float = 0.0,
    ) -> NDArray[Any]:
        """In-mask ``values`` as a volume (:func:`to_volume`); ``mask`` defaults to the test's.

        Without any mask (maps given flat) the values are returned unchanged.
        """
        chosen = self.mask if mask is None else mask
        if chosen is None:
            return np.asarray(values)
        return to_volume(values, chosen, shape, fill=fill)

    @property
    def t_volume(self) -> NDArray[Any]:
        """The t map as a volume (0 outside the mask)."""
        return self.volume(self.t)

    def threshold(self, alpha: float = 0.05) -> NDArray[np.bool_]:
        """Voxels with FWE-corrected :math:`p < \\alpha`, as a boolean volume (flat if no mask)."""
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if self.n_permutations == 0:
            raise ValueError("no permutations were run (n_permutations=0): no FWE p-values")
        return self.volume(self.p_fwe < alpha)


def _maps_matrix(maps: ArrayLike, mask: ArrayLike | None) -> tuple[FloatArray, BoolArray | None]:
    data = np.asarray(maps, dtype=np.float64)
    if data.ndim == 4:
        shape = data.shape[1:]
        m = np.ones(shape, dtype=bool) if mask is None else np.asarray(mask) != 0
        if m.shape != shape:
            raise ValueError(f"mask has shape {m.shape}, the maps' volumes have shape {shape}")
        if not m.any():
            raise ValueError("mask is empty")
        return data[:, m], m
    if data.ndim == 2:
        if mask is None:
            return data, None
        m = np.asarray(mask) != 0
        if int(m.sum()) != data.shape[1]:
            raise ValueError(
                f"maps are flat with {data.shape[1]} voxels but the mask has {int(m.sum())} "
                "voxels; give (n, X, Y, Z) maps or maps already masked by this mask"
            )
        return data, m
    raise ValueError(
        f"maps must be (n_subjects, n_voxels) or (n_subjects, X, Y, Z), got shape {data.shape}"
    )


def voxelwise_group_test(
    maps: ArrayLike,
    groups: ArrayLike,
    covariates: pd.DataFrame | None = None,
    *,
    mask: ArrayLike | None = None,
    n_permutations: int = 1000,
    two_sided: bool = True,
    seed: int = 0,
    n_jobs: int = 1,
    group_codes: Mapping[Hashable, int] | None = None,
    drop_missing: bool = False,
) -> GroupTest:
    """Voxel-wise GLM group t-test with Freedman–Lane max-T FWE control (module docstring).

    Args:
        maps: (n_subjects, n_voxels), or (n_subjects, X, Y, Z) volumes restricted to ``mask``
            (all voxels if None). Flat maps may come with the volume ``mask`` they were
            extracted with, so that results can be put back into volumes.
        groups, covariates, group_codes, drop_missing: as :func:`design_matrix`.
        n_permutations: permutations for the max-T null (0: t and uncorrected p only).
        two_sided: test :math:`|t|`; otherwise only patients > controls.
        seed: seed of the permutations (results are reproducible for fixed ``n_jobs``).
        n_jobs: parallel workers for the permutations (joblib).

    Raises:
        ValueError: bad shapes, non-finite values in the maps, a subject count that differs
            from ``groups``, a negative ``n_permutations``, every voxel degenerate, or any
            design error of :func:`design_matrix`.
    """
    from nilearn.mass_univariate import permuted_ols

    if int(n_permutations) != n_permutations or n_permutations < 0:
        raise ValueError(f"n_permutations must be a non-negative integer, got {n_permutations}")
    n_permutations = int(n_permutations)
    y, volume_mask = _maps_matrix(maps, mask)
    n_total = np.asarray(groups, dtype=object).reshape(-1).shape[0]
    if y.shape[0] != n_total:
        raise ValueError(f"maps has {y.shape[0]} subjects but groups has {n_total}")
    design = design_matrix(groups, covariates, group_codes=group_codes, drop_missing=drop_missing)
    if not np.all(np.isfinite(y)):
        bad = np.argwhere(~np.isfinite(y))
        raise ValueError(
            f"maps have {len(bad)} NaN/infinite values inside the mask "
            f"(first at subject {bad[0, 0]}, masked voxel {bad[0, 1]})"
        )
    y = y[design.rows]
    n, p = design.matrix.shape
    n_voxels = y.shape[1]

    confounds = design.confounds
    fitted = confounds @ np.linalg.lstsq(confounds, y, rcond=None)[0]
    residual_norm = np.linalg.norm(y - fitted, axis=0)
    degenerate = residual_norm <= _DEGENERATE_RTOL * np.linalg.norm(y, axis=0)
    live = np.flatnonzero(~degenerate)
    if live.size == 0:
        raise ValueError(
            "maps: every voxel is constant across subjects (or fully explained by the "
            "confounds); nothing to test"
        )

    # The intercept is left to nilearn (model_intercept=True): given as a constant confound
    # column, nilearn 0.14 would switch to sign-flipping (module docstring).
    covariate_columns = design.matrix[:, 2:]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*number of permutations.*")
        out = permuted_ols(
            tested_vars=np.ascontiguousarray(design.group[:, None]),
            target_vars=np.ascontiguousarray(y[:, live]),
            confounding_vars=(
                np.ascontiguousarray(covariate_columns) if covariate_columns.shape[1] else None
            ),
            model_intercept=True,
            n_perm=n_permutations,
            two_sided_test=two_sided,
            random_state=seed,
            n_jobs=n_jobs,
            verbose=0,
            output_type="dict",
        )

    t = np.zeros(n_voxels)
    t[live] = np.asarray(out["t"], dtype=np.float64)[0]
    df = n - p
    p_unc = 2.0 * stats.t.sf(np.abs(t), df) if two_sided else stats.t.sf(t, df)
    p_unc[degenerate] = 1.0
    if n_permutations > 0:
        p_fwe = np.ones(n_voxels)
        p_fwe[live] = 10.0 ** (-np.asarray(out["logp_max_t"], dtype=np.float64)[0])
        h0 = np.sort(np.asarray(out["h0_max_t"], dtype=np.float64)[0])
    else:
        p_fwe = np.full(n_voxels, np.nan)
        h0 = np.empty(0)
    n_patients = int(design.group.sum())
    return GroupTest(
        t=t,
        p_uncorrected=p_unc,
        p_fwe=p_fwe,
        h0_max_t=h0,
        n_per_group={"patients": n_patients, "controls": n - n_patients},
        design_names=design.names,
        df=df,
        two_sided=two_sided,
        n_permutations=n_permutations,
        mask=volume_mask,
        rows=design.rows,
        dropped=design.dropped,
        degenerate=degenerate,
    )


def abs_t_correlation(t_map: ArrayLike, reference_t: ArrayLike, mask: ArrayLike) -> float:
    """Pearson's r between |t| of a map and |t| of the inputs' own test, over the brain.

    r(|t|, |t_input|) = cov(|t|, |t_input|) / (sd(|t|) sd(|t_input|)) over the voxels of
    ``mask``. Near 1: the map's group difference lies where the inputs' does, in the same
    proportions — the first-order behaviour of a gradient × input map (Integrated Gradients,
    Sundararajan et al., ICML 2017, with a gradient that is the same in every subject gives
    |t| = |t_input| at every voxel, r = 1). Lower: the network reweights the inputs' difference
    from subject to subject, or shows one they do not have. NaN when either map is constant.
    """
    inside = np.asarray(mask, dtype=bool)
    a = np.abs(np.asarray(t_map, dtype=np.float64)[inside])
    b = np.abs(np.asarray(reference_t, dtype=np.float64)[inside])
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])
