"""Pure-array inference: contrasts, Wald statistics with small-sample references, BH.

Nothing here touches an AnnData. The AnnData layer (:mod:`scglmm.tl`) stores what these
functions need (coefficients, their covariance, ``sigma2``, the donor-level design) and calls them.

Calibration options (``calibration=``), all for a linear contrast ``c' beta`` with model
variance ``v = c' V c`` (``V`` the ML covariance of MODEL.md section 3):

``"z"``
    ML Wald z, two-sided normal p-value (glmmTMB's ``summary``).
``"t"``
    The same statistic referred to a t distribution with the between-donor degrees of freedom
    ``m - rank(X_b)`` when the contrast is donor-level (it involves only columns that are constant
    within every donor); within-donor contrasts keep the normal reference.
``"t_reml"``
    ``"t"`` plus a REML-type correction of the donor variance: ML estimates ``sigma2`` with
    divisor ``m`` instead of ``m - rank(X_b)``, so for a donor-level contrast the variance is
    increased by ``(sigma2 * m / (m - r) - sigma2) * c_b' (X_b' X_b)^{-1} c_b`` (the donor
    component of ``c' V c`` with the bias-corrected ``sigma2``).
``"t_floor"``
    ``"t_reml"`` with the donor variance of each gene floored at ``sigma2_floor`` (default: the
    median across genes of the corrected ``sigma2``) before the correction, so genes whose donor
    variance is estimated at or near 0 do not get the cell-level (too small) standard error of a
    donor-level effect.
``"satterthwaite"``
    The corrected variance of ``"t_reml"`` with Satterthwaite degrees of freedom: the donor part
    ``a = sigma2_adj * k`` of the contrast variance has ``m - r`` df, the cell-level part (the
    rest) is treated as known, so ``df = (m - r) * (var / a)^2``: ``m - r`` when the donor variance
    dominates, growing to the normal reference when it is 0.
``"satterthwaite_floor"``
    ``"satterthwaite"`` with the floor of ``"t_floor"`` on the donor variance (in the variance and
    in the df).

``"eb"``
    Empirical Bayes across genes (the default). For a donor-level contrast, the model variance
    splits as ``v = k (sigma2 + w)``, ``w`` the within-donor (sampling) variance of a donor's mean
    log expression. The between-donor residual sum of squares ``m (sigma2 + w)`` of each gene is a
    ``(sigma2_g + w_g) chi2(m - r)`` observation of its true donor variance ``sigma2_g`` (censored
    to ``<= m w`` when ``sigma2`` is at the boundary 0). A prior for ``sigma2`` on a grid (0 and
    log-spaced values) is estimated from all genes by maximum marginal likelihood (EM), each gene
    gets the posterior of its ``sigma2``, and the p-value is the posterior-averaged normal p-value
    ``sum_k w_gk 2 (1 - Phi(|c' beta| / sqrt(k (s_k + w_g))))``: the exact null distribution of the
    estimate given the data on donor variance when the prior is right. Genes borrow strength where
    donors are few, and the test becomes the ``"t"`` of ``m - r`` df as the prior flattens.
    Within-donor contrasts, or fewer than ``EB_MIN_GENES`` genes, fall back to ``"t"``.

``k = c_b' (X_b' X_b)^{-1} c_b`` treats donors as equally informative (balanced designs); with
unequal cells per donor it is an approximation of the donor part of ``c' V c``. Given the cells
per donor ``n_j`` (``donor_cells=``; :func:`scglmm.tl.fit` and :func:`scglmm.tl.test` pass them),
``"eb"`` takes each gene's own donor information: the within-donor variance of donor ``j``
is ``alpha_g / n_j``, ``alpha_g`` matched to the gene's
``c' V c`` at its ``sigma2``; the estimate's donor weights ``a = D X_b (X_b' D X_b)^{-1} c_b``
(``D = diag(1 / (sigma2 + alpha_g / n_j))``) give ``k_g = sum_j a_j^2`` (the derivative of
``c' V c`` in ``sigma2``, so the test variance under a grid value ``s`` is
``c' V c + k_g (s - sigma2)``) and the effective number of donors ``m_g = m k / k_g`` (Kish), whose
``m_g - r`` df replace ``m - r`` in the chi-square observation. Equal ``n_j`` give ``k`` and ``m``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import stats

from ._errors import InvalidValueError, MissingKeyError

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, NDArray

__all__ = [
    "CALIBRATIONS",
    "DEFAULT_CALIBRATION",
    "EB_MIN_GENES",
    "bh_adjust",
    "eb_donor_information",
    "eb_donor_variance",
    "contrast_vector",
    "donor_level_design",
    "LevelDesign",
    "level_design",
    "wald",
    "wald_pvalues",
    "chibar_sf",
    "lrt_f_pvalues",
    "lrt_pvalues",
    "mixture_name",
    "random_slopes",
    "resolve_column",
    "SlopeEffect",
    "slope_wald_pvalues",
]

#: Small-sample calibration options of Wald tests (see the module docstring).
CALIBRATIONS = ("eb", "z", "t", "t_reml", "t_floor", "satterthwaite", "satterthwaite_floor")
#: The default, chosen by ``benchmarks/calibration.py`` (see docs/calibration.md).
DEFAULT_CALIBRATION = "eb"
#: ``"eb"`` needs at least this many genes with a donor-level test to estimate its prior.
EB_MIN_GENES = 50
#: Grid of donor variances of the ``"eb"`` prior.
EB_GRID = np.concatenate([[0.0], np.logspace(-4.0, 1.0, 41)])


def bh_adjust(p: ArrayLike) -> NDArray[np.float64]:
    """Benjamini-Hochberg adjusted p-values; NaN stays NaN and is not counted."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m == 0:
        return out
    pv = p[ok]
    order = np.argsort(pv, kind="stable")
    ranked = pv[order] * m / np.arange(1, m + 1)
    adj = np.minimum.accumulate(ranked[::-1])[::-1]
    res = np.empty(m)
    res[order] = np.minimum(adj, 1.0)
    out[ok] = res
    return out


# ------------------------------------------------------------------------------------------------
# contrasts
# ------------------------------------------------------------------------------------------------
#: Messages of :func:`resolve_column` (not a column, several columns), by who asks.
_UNRESOLVED = {
    "contrast": (
        "{name!r} is not a design column; choose from {columns}.",
        "{name!r} matches several design columns {matches}; name one of them.",
    ),
    "coef": (
        "coefficient {name!r} is not in the design; choose one of {columns}.",
        "coefficient {name!r} matches several design columns {matches}; choose one of them.",
    ),
}


def resolve_column(
    name: str, columns: Sequence[str], *, asked_as: Literal["contrast", "coef"] = "contrast", param: str | None = None
) -> str:
    """The design column ``name`` means: itself, or the only column of the variable ``name``.

    Parameters
    ----------
    name
        A design column (``"condition[T.stim]"``) or a variable with one column (``"condition"``).
    columns
        The design columns.
    asked_as
        Wording of the error: a term of a contrast (``"contrast"``) or a coefficient (``"coef"``).
    param
        The parameter that carried ``name``, for the error.

    Raises
    ------
    MissingKeyError
        No column, or several columns, match.
    """
    name = name.strip()
    if name in columns:
        return name
    matches = [c for c in columns if c.startswith(f"{name}[")]
    if len(matches) == 1:
        return matches[0]
    missing, several = _UNRESOLVED[asked_as]
    msg = (several if matches else missing).format(name=name, columns=list(columns), matches=matches)
    raise MissingKeyError(msg, param=param)


def _level_column(factor: str, level: str, columns: Sequence[str], reference: str | None) -> str | None:
    """Design column of ``level`` of ``factor`` (``None`` for its reference level)."""
    for col in columns:
        if col == f"{factor}[T.{level}]" or col == f"{factor}[{level}]":
            return col
    if reference is not None and str(level) == str(reference):
        return None
    levels = [c[len(factor) + 1 : -1].removeprefix("T.") for c in columns if c.startswith(f"{factor}[")]
    if not levels:
        msg = f"{factor!r} is not a factor of the design; design columns are {list(columns)}."
        raise MissingKeyError(msg, param="contrast")
    choices = ([str(reference)] if reference is not None else []) + levels
    msg = f"level {level!r} of {factor!r} is not in the design; levels: {choices}."
    raise MissingKeyError(msg, param="contrast")


def _split_terms(expr: str) -> list[tuple[float, str]]:
    """Split ``"2*a[T.x] - b + 0.5 c"`` at top-level + and - into (sign, term)."""
    terms: list[tuple[float, str]] = []
    depth = 0
    cur = ""
    sign = 1.0
    for i, ch in enumerate(expr):
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if depth == 0 and ch in "+-":
            prev = expr[:i].rstrip()
            # a sign inside a number such as 1e-3 is part of the term
            if re.search(r"\d[eE]$", prev) and re.fullmatch(r"\s*[-+]?[\d.]+[eE]", cur or " "):
                cur += ch
                continue
            if cur.strip():
                terms.append((sign, cur.strip()))
                cur = ""
                sign = 1.0
            sign *= -1.0 if ch == "-" else 1.0
            continue
        cur += ch
    if cur.strip():
        terms.append((sign, cur.strip()))
    return terms


_WEIGHTED = re.compile(r"^([0-9.]+(?:[eE][-+]?\d+)?)\s*\*?\s*(.+)$")


def contrast_vector(
    contrast: str | Sequence | Mapping[str, float] | ArrayLike,
    columns: Sequence[str],
    *,
    reference_levels: Mapping[str, str] | None = None,
) -> tuple[NDArray[np.float64], str]:
    """Turn a contrast specification into a vector over the design columns and a name.

    Accepted forms:

    - a design column or a variable with one column: ``"condition[T.stim]"``, ``"condition"``;
    - a difference of two levels of a factor: ``("treatment", "B", "A")`` or, as PyDESeq2 writes it,
      ``["treatment", "B", "A"]`` (level ``B`` minus level ``A``; either may be the reference level);
    - an expression of design columns with ``+``, ``-`` and optional numeric weights:
      ``"treatment[T.B] - treatment[T.A]"``, ``"0.5*g[T.x] + 0.5*g[T.y]"``;
    - a mapping ``{column: weight}``;
    - a numeric vector with one weight per design column.

    Returns
    -------
    The contrast vector (p,) and a readable name.
    """
    cols = [str(c) for c in columns]
    p = len(cols)
    ref = dict(reference_levels or {})
    vec = np.zeros(p)
    if isinstance(contrast, str):
        expr = contrast.strip()
        if not expr:
            msg = "contrast is an empty string; name a design column, e.g. 'condition[T.stim]'."
            raise InvalidValueError(msg, param="contrast")
        try:  # a whole column name may itself contain '-' or '+' (e.g. a level 'IFN-b')
            vec[cols.index(resolve_column(expr, cols))] = 1.0
            return vec, resolve_column(expr, cols)
        except KeyError:
            pass
        terms = _split_terms(expr)
        if not terms:
            msg = f"could not read the contrast {contrast!r}."
            raise InvalidValueError(msg, param="contrast")
        for sign, term in terms:
            weight = 1.0
            m = _WEIGHTED.match(term)
            if m and not term.replace(".", "").isdigit():
                weight = float(m.group(1))
                term = m.group(2).strip()
            vec[cols.index(resolve_column(term, cols))] += sign * weight
        name = expr
    elif isinstance(contrast, Mapping):
        for k, w in contrast.items():
            vec[cols.index(resolve_column(str(k), cols))] += float(w)
        name = " + ".join(f"{float(w):g}*{resolve_column(str(k), cols)}" for k, w in contrast.items())
    elif isinstance(contrast, (tuple, list)) and any(isinstance(s, str) for s in contrast):
        _check_level_triple(contrast)
        factor, lev_a, lev_b = contrast
        if lev_a == lev_b:
            msg = f"contrast {contrast!r} compares a level with itself."
            raise InvalidValueError(msg, param="contrast")
        ca = _level_column(factor, lev_a, cols, ref.get(factor))
        cb = _level_column(factor, lev_b, cols, ref.get(factor))
        if ca is not None:
            vec[cols.index(ca)] += 1.0
        if cb is not None:
            vec[cols.index(cb)] -= 1.0
        name = f"{factor}_{lev_a}_vs_{lev_b}"
    else:
        arr = _numeric_contrast(contrast)
        if arr.shape != (p,):
            msg = f"a numeric contrast needs one weight per design column ({p}: {cols}); got {arr.shape[0]} values."
            raise InvalidValueError(msg, param="contrast")
        vec = arr.copy()
        name = "contrast_" + "_".join(f"{w:g}" for w in arr)
    if not np.any(vec != 0) or not np.all(np.isfinite(vec)):
        msg = f"contrast {contrast!r} has no non-zero finite weight on the design columns {cols}."
        raise InvalidValueError(msg, param="contrast")
    return vec, name


_FORMS = (
    "a design column or variable ('condition'), a level difference ['condition', 'stim', 'ctrl'], an "
    "expression ('treatment[T.B] - treatment[T.A]'), a mapping {column: weight} or one number per design column"
)


def _check_level_triple(contrast: Sequence) -> None:
    """A sequence with names must be ``(factor, level, other_level)``, three strings."""
    if len(contrast) != 3 or not all(isinstance(s, str) for s in contrast):
        msg = (
            f"contrast {list(contrast)!r}: a list or tuple of names is a difference of two levels of a factor, "
            f"[factor, level, reference_level], e.g. ['condition', 'stim', 'ctrl']. Accepted forms: {_FORMS}."
        )
        raise InvalidValueError(msg, param="contrast")


def _numeric_contrast(contrast: object) -> NDArray[np.float64]:
    """A numeric contrast as a flat float vector, or a clear error naming the accepted forms."""
    try:
        return np.asarray(contrast, dtype=float).ravel()
    except (TypeError, ValueError):
        msg = f"could not read the contrast {contrast!r}. Accepted forms: {_FORMS}."
        raise InvalidValueError(msg, param="contrast") from None


# ------------------------------------------------------------------------------------------------
# donor-level part of the design
# ------------------------------------------------------------------------------------------------
def donor_level_design(X: ArrayLike, donor_codes: ArrayLike, *, tol: float = 1e-10) -> tuple[NDArray, NDArray]:
    """Columns of ``X`` that are constant within every donor, and their per-donor values.

    Returns
    -------
    ``mask`` (p,) of donor-level columns and ``X_b`` (m, p) with one row per donor (the donor's
    value of each column; within-donor columns hold the donor mean, unused by the tests).
    """
    X = np.asarray(X, dtype=float)
    codes = np.asarray(donor_codes)
    m = int(codes.max()) + 1
    cnt = np.bincount(codes, minlength=m).astype(float)
    means = np.zeros((m, X.shape[1]))
    np.add.at(means, codes, X)
    means /= cnt[:, None]
    dev = np.abs(X - means[codes]).max(axis=0) if X.shape[0] else np.zeros(X.shape[1])
    scale = np.maximum(np.abs(X).max(axis=0), 1.0) if X.shape[0] else np.ones(X.shape[1])
    mask = dev <= tol * scale
    return mask, means


@dataclass(frozen=True)
class LevelDesign:
    """Where a contrast gets its information: the levels of a random-intercept term within which every
    column it weights is constant (see :func:`level_design`)."""

    term: int
    """Index of the term in the ``codes`` given to :func:`level_design`."""
    mask: NDArray[np.bool_]
    """(p + a,) the columns constant within the term's levels, then ``a`` indicator columns (True)."""
    design: NDArray[np.float64]
    """(L, p + a) per level: the values of the columns, then the indicators of the levels of the coarser
    terms it nests in and within whose levels the contrast varies (their effects cancel in the contrast)."""
    cells: NDArray[np.float64]
    """(L,) cells per level."""
    absorbed: int = 0
    """Rank of the indicator columns: the levels' effects the coarser terms absorb (the ML variance of the
    term is then estimated from ``L - absorbed`` levels)."""


def level_design(X: ArrayLike, codes: Sequence[ArrayLike], c: ArrayLike) -> LevelDesign | None:
    """The term (of the level ``codes`` of the random-intercept terms) on whose levels the contrast ``c``
    is tested: among the terms within whose levels every column ``c`` weights is constant, the one with
    the fewest levels; None if there is none (a within-level contrast, tested on the normal).

    When that term nests in a coarser term within whose levels the contrast varies (samples in donors,
    a condition that varies within donors), the coarser term's levels enter the per-level design as
    indicators: the comparison is made within them, as a paired t test makes it within donors, and the
    between-level df are ``levels - rank`` of that design (donors - 1 for a condition in every donor).
    """
    X = np.asarray(X, dtype=float)
    on = np.abs(np.asarray(c, dtype=float)) > 0
    found = [(i, *donor_level_design(X, cd)) for i, cd in enumerate(codes)]
    fits = [f for f in found if np.all(f[1][on])]
    if not fits:
        return None
    i, mask, Xb = min(fits, key=lambda f: f[2].shape[0])
    t = np.asarray(codes[i])
    extra = [_indicators(t, np.asarray(codes[j])) for j, mk, _ in found if j != i and not np.all(mk[on])]
    extra = [e for e in extra if e is not None]
    absorbed = 0
    if extra:
        absorbed = int(np.linalg.matrix_rank(np.hstack(extra)))
        Xb = np.hstack([Xb, *extra])
        mask = np.concatenate([mask, np.ones(Xb.shape[1] - mask.size, dtype=bool)])
    cells = np.bincount(t, minlength=Xb.shape[0]).astype(float)
    return LevelDesign(term=i, mask=mask, design=Xb, cells=cells, absorbed=absorbed)


def _indicators(inner: NDArray, outer: NDArray) -> NDArray | None:
    """(L, M) indicators of the ``outer`` level of each ``inner`` level, if ``inner`` nests in ``outer``."""
    pairs = np.unique(np.column_stack([inner, outer]), axis=0)
    L = int(inner.max()) + 1
    if pairs.shape[0] != L:
        return None
    out = np.zeros((L, int(outer.max()) + 1))
    out[pairs[:, 0], pairs[:, 1]] = 1.0
    return out


def _between(c: NDArray, mask: NDArray, Xb: NDArray) -> tuple[bool, int, float]:
    """Is ``c`` donor-level; between-donor df; ``c_b' (X_b' X_b)^-1 c_b``."""
    m = Xb.shape[0]
    on = np.abs(c) > 0
    if not np.all(mask[on]):
        return False, 0, np.nan
    Xd = Xb[:, mask]
    r = int(np.linalg.matrix_rank(Xd))
    df = m - r
    if df < 1:
        return True, 0, np.nan
    k = float(c[mask] @ np.linalg.pinv(Xd.T @ Xd) @ c[mask])
    return True, df, k


# ------------------------------------------------------------------------------------------------
# random slopes: which fixed effects a term's random coefficients vary, however they are coded
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SlopeEffect:
    """A fixed effect whose information lies in the spread of one term's per-level slopes.

    The level ``l``'s own slope of the ``base`` column is ``weights' b_l`` (``b_l`` the term's random
    coefficients); the per-level slopes are regressed on ``H`` (one row per level in which ``base``
    varies: a column of ones for ``base``, one per design column equal within each level to ``base``
    times a level constant, e.g. ``condition:sex``), and this effect is column ``h_index`` of ``H``.
    """

    base: int
    """Design column whose random slope this is (the effect itself, or the slope it interacts with)."""
    weights: NDArray[np.float64]
    """(q,) weights of the term's random coefficients giving a level's slope of ``base``."""
    H: NDArray[np.float64]
    """(m_s, h) level-constant multipliers of the slope family, one row per level in which ``base`` varies."""
    h_index: int
    """Column of ``H`` of this effect."""

    @property
    def n_levels(self) -> int:
        """Levels in which the slope varies (the others carry no slope information)."""
        return int(self.H.shape[0])

    @property
    def df(self) -> int:
        """Between-level df: ``n_levels - rank(H)`` (a paired t test on per-level differences)."""
        return self.n_levels - int(np.linalg.matrix_rank(self.H)) if self.H.size else 0

    def k(self, c: ArrayLike | None = None) -> float:
        """``c' (H' H)^-1 c`` for weights ``c`` on the columns of ``H`` (default: this effect alone)."""
        if c is None:
            c = np.eye(self.H.shape[1])[self.h_index]
        c = np.asarray(c, dtype=float)
        return float(c @ np.linalg.pinv(self.H.T @ self.H) @ c)


def random_slopes(X: ArrayLike, Z: ArrayLike, codes: ArrayLike, *, tol: float = 1e-8) -> dict[int, SlopeEffect]:
    """The design columns of ``X`` with a random slope in a term (covariates ``Z``, levels ``codes``).

    A column ``x`` varying within some level has the slope when, within every level, it is (up to a
    level constant) ``Z a`` with the same ``a`` everywhere (``(1 + condition | g)`` and
    ``(0 + condition | g)`` alike); its coefficient must be a within-level contrast (``e_j`` in the
    row space of the within-level centred ``X``). The level's slope is ``w' b_l``, ``w`` the row of
    ``pinv(P A)`` of ``x`` (``A`` the ``a`` of every such column, ``P`` the projector off the
    directions of ``Z`` that are constant within levels): the unit vector of the coefficient of the
    same name, ``(-1, 1)`` for cell-means coding. A within-level contrast that equals within each
    level a matched column times a level constant joins that column's family (see :class:`SlopeEffect`).
    """
    X, Z = np.asarray(X, dtype=float), np.asarray(Z, dtype=float)
    codes = np.asarray(codes, dtype=np.int64)
    Xt, Zt = _centre_within(X, codes), _centre_within(Z, codes)
    within = _row_space_diagonal(Xt, tol) > 1.0 - 1e-6
    matched = {j: a for j in np.flatnonzero(within) if (a := _same_weights(Xt[:, j], Zt, tol)) is not None}
    if not matched:
        return {}
    W = np.linalg.pinv(_row_projector(Zt, tol) @ np.column_stack(list(matched.values())))
    W = np.where(np.abs(W - np.round(W)) <= 1e-9, np.round(W), W)  # codings give integers: exact unit vectors
    out: dict[int, SlopeEffect] = {}
    others = [int(y) for y in np.flatnonzero(within) if y not in matched]
    for i, j in enumerate(matched):
        family, H = _family(Xt, int(j), others, codes, tol)
        for h, y in enumerate(family):
            out.setdefault(y, SlopeEffect(base=int(j), weights=W[i], H=H, h_index=h))
    return out


def _family(Xt: NDArray, j: int, others: list[int], codes: NDArray, tol: float) -> tuple[list[int], NDArray]:
    """Column ``j`` and those of ``others`` equal to it times a level constant within each level (centred
    columns ``Xt``), and ``H``: their level constants in the levels where ``j`` varies."""
    family, consts = [j], [_times_level(Xt[:, j], Xt[:, j], codes, tol)]
    for y in others:
        c = _times_level(Xt[:, y], Xt[:, j], codes, tol)
        if c is not None:
            family.append(y)
            consts.append(c)
    return family, np.column_stack(consts)[_varies(Xt[:, j], codes, tol)]


def _centre_within(A: NDArray, codes: NDArray) -> NDArray:
    """``A`` minus its mean within each level."""
    m = int(codes.max()) + 1 if codes.size else 0
    sums = np.zeros((m, A.shape[1]))
    np.add.at(sums, codes, A)
    cnt = np.maximum(np.bincount(codes, minlength=m), 1).astype(float)
    return A - (sums / cnt[:, None])[codes]


def _row_projector(A: NDArray, tol: float) -> NDArray:
    """Orthogonal projector onto the row space of ``A`` (numerical rank at relative ``tol``)."""
    vals, vecs = np.linalg.eigh(A.T @ A)
    keep = vals > tol * max(float(vals.max(initial=0.0)), 1e-300)
    V = vecs[:, keep]
    return V @ V.T


def _row_space_diagonal(A: NDArray, tol: float) -> NDArray:
    """``e_j' P e_j`` per column, ``P`` the projector onto the row space of ``A``: 1 where ``e_j`` lies in it."""
    return np.diag(_row_projector(A, tol)) if A.size else np.zeros(A.shape[1])


def _same_weights(xt: NDArray, Zt: NDArray, tol: float) -> NDArray | None:
    """``a`` with ``xt = Zt a`` (both centred within levels), or ``None`` if no ``a`` fits every level."""
    scale = float(np.abs(xt).max(initial=0.0))
    if scale == 0.0 or Zt.shape[1] == 0:
        return None
    a = np.linalg.lstsq(Zt, xt, rcond=None)[0]
    return a if float(np.abs(xt - Zt @ a).max()) <= tol * scale else None


def _varies(xt: NDArray, codes: NDArray, tol: float) -> NDArray:
    """(m,) levels in which the centred column ``xt`` is not constant."""
    m = int(codes.max()) + 1
    dev = np.zeros(m)
    np.maximum.at(dev, codes, np.abs(xt))
    return dev > tol * max(float(np.abs(xt).max(initial=0.0)), 1e-300)


def _times_level(yt: NDArray, xt: NDArray, codes: NDArray, tol: float) -> NDArray | None:
    """(m,) level constants ``c_l`` with ``yt = c_l xt`` in every level (0 where ``x`` is constant, and
    there ``yt`` must be 0), or ``None``."""
    m = int(codes.max()) + 1
    xy, xx = np.bincount(codes, xt * yt, m), np.bincount(codes, xt * xt, m)
    c = np.divide(xy, xx, out=np.zeros(m), where=_varies(xt, codes, tol))
    scale = max(float(np.abs(yt).max(initial=0.0)), 1e-300)
    return c if float(np.abs(yt - c[codes] * xt).max(initial=0.0)) <= tol * scale else None


# ------------------------------------------------------------------------------------------------
# Wald tests
# ------------------------------------------------------------------------------------------------
def wald(coef: ArrayLike, cov: ArrayLike, c: ArrayLike) -> tuple[NDArray, NDArray]:
    """Estimate ``c' beta`` and its model variance ``c' V c`` per gene.

    ``coef`` is (G, p); ``cov`` is (G, p, p) or (G, p*p) row-major. Only the columns with a
    non-zero weight enter, so a coefficient that is NaN (it diverged, status ``partial_separation``)
    does not affect contrasts that do not involve it.
    """
    coef = np.asarray(coef, dtype=float)
    G, p = coef.shape
    cov = np.asarray(cov, dtype=float).reshape(G, p, p)
    c = np.asarray(c, dtype=float)
    nz = np.flatnonzero(c != 0.0)
    est = coef[:, nz] @ c[nz]
    var = np.einsum("i,gij,j->g", c[nz], cov[:, nz][:, :, nz], c[nz])
    return est, var


def default_sigma2_floor(sigma2_adj: ArrayLike, *, quantile: float = 0.5) -> float:
    """Across-gene floor of the donor variance for ``"t_floor"``: a low quantile of the
    bias-corrected estimates of the genes that have one."""
    s = np.asarray(sigma2_adj, dtype=float)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return 0.0
    return float(np.quantile(s, quantile))


def eb_donor_information(
    var: ArrayLike, sigma2: ArrayLike, c_b: ArrayLike, X_b: ArrayLike, donor_cells: ArrayLike, *, n_iter: int = 60
) -> tuple[NDArray, NDArray]:
    """Per-gene ``k_g`` and effective number of donors ``m_g`` of a donor-level contrast (``"eb"``
    with ``donor_cells``; module docstring).

    ``var`` (G,) model variances ``c' V c``, ``sigma2`` (G,) donor variances, ``c_b`` and ``X_b``
    the contrast and design on the donor-level columns (one row per donor), ``donor_cells`` (m,).
    ``alpha_g`` is found by bisection on ``log alpha`` (``c' V c`` grows with it); genes without a
    finite positive ``var`` get ``k`` and ``m``.
    """
    v = np.asarray(var, dtype=float)
    s = np.maximum(np.nan_to_num(np.asarray(sigma2, dtype=float)), 0.0)
    Xb = np.asarray(X_b, dtype=float)
    n = np.asarray(donor_cells, dtype=float)
    ok = np.isfinite(v) & (v > 0)
    vg = np.where(ok, v, 1.0)

    def weights(log_alpha: NDArray) -> tuple[NDArray, NDArray]:
        d = 1.0 / (s[:, None] + np.exp(log_alpha)[:, None] / n[None, :])  # (G, m) donor precisions
        inv = np.linalg.pinv(np.einsum("jp,gj,jq->gpq", Xb, d, Xb))  # pinv: X_b may be rank-deficient
        a = np.einsum("jp,gj,gpq,q->gj", Xb, d, inv, c_b)  # the estimate's weights on donor means
        return np.einsum("gj,gj->g", a, a / d), a  # (c' V c at alpha, a)

    k = float(c_b @ np.linalg.pinv(Xb.T @ Xb) @ c_b)
    # k min_j(sigma2 + alpha / n_j) <= c' V c(alpha) <= k max_j(...): the root lies in [lo, hi]
    lo, hi = np.log(vg / k * n.min()) - 30.0, np.log(vg / k * n.max()) + 1.0
    for _ in range(n_iter):
        mid = 0.5 * (lo + hi)
        big = weights(mid)[0] > vg
        lo, hi = np.where(big, lo, mid), np.where(big, mid, hi)
    k_g = (weights(0.5 * (lo + hi))[1] ** 2).sum(axis=1)
    k_g = np.where(ok & np.isfinite(k_g) & (k_g > 0), k_g, k)
    return k_g, Xb.shape[0] * k / k_g


def eb_donor_variance(
    est: ArrayLike,
    var: ArrayLike,
    sigma2: ArrayLike,
    *,
    n_donors: float | ArrayLike,
    df: float | ArrayLike,
    k: float | ArrayLike,
    grid: ArrayLike = EB_GRID,
    max_iter: int = 1000,
    tol: float = 1e-8,
) -> dict[str, NDArray]:
    """Empirical-Bayes p-values of a donor-level contrast (calibration ``"eb"``).

    Parameters
    ----------
    est, var
        (G,) estimates ``c' beta`` and model variances ``c' V c``.
    sigma2
        (G,) ML donor variances (0 at the boundary).
    n_donors, df, k
        Number of donors ``m``, between-donor df ``m - r`` and ``c_b' (X_b' X_b)^{-1} c_b``: numbers,
        or (G,) arrays of per-gene values (see :func:`eb_donor_information`).
    grid
        Support of the prior of ``sigma2``.

    Returns
    -------
    dict with ``p_value``, ``stat`` (the normal quantile of the p-value, signed), ``se_test``
    (``|estimate| / |stat|``), ``sigma2_post`` (posterior mean of ``sigma2``), ``prior`` (weights on
    ``grid``) and ``grid``.
    """
    est = np.asarray(est, dtype=float)
    var = np.asarray(var, dtype=float)
    s2 = np.nan_to_num(np.asarray(sigma2, dtype=float), nan=0.0)
    grid = np.asarray(grid, dtype=float)
    ok = np.isfinite(est) & np.isfinite(var) & (var > 0)
    G = est.shape[0]
    p = np.full(G, np.nan)
    s2_post = np.full(G, np.nan)
    e, v, s = est[ok], var[ok], np.maximum(s2[ok], 0.0)
    k, m, df = (np.broadcast_to(np.asarray(a, dtype=float), est.shape)[ok][:, None] for a in (k, n_donors, df))
    w = np.maximum(v / k[:, 0] - s, 1e-12 * np.maximum(v / k[:, 0], 1e-300))  # within-donor variance of a mean
    tot = w[:, None] + grid[None, :]  # total donor-level variance under each grid value
    at0 = s <= 1e-8 * w  # sigma2 at the boundary: the residual sum of squares is only known to be <= m w
    loglik = np.empty_like(tot)
    rss = m[:, 0] * (s + w)
    loglik[~at0] = stats.chi2.logpdf(rss[~at0, None] / tot[~at0], df[~at0]) - np.log(tot[~at0])
    loglik[at0] = stats.chi2.logcdf(m[at0] * w[at0, None] / tot[at0], df[at0])
    loglik -= loglik.max(axis=1, keepdims=True)
    lik = np.exp(loglik)
    prior = np.full(grid.size, 1.0 / grid.size)
    for _ in range(max_iter):
        post = lik * prior
        post /= post.sum(axis=1, keepdims=True)
        new = post.mean(axis=0)
        done = np.max(np.abs(new - prior)) < tol
        prior = new
        if done:
            break
    post = lik * prior
    post /= post.sum(axis=1, keepdims=True)
    pk = 2.0 * stats.norm.sf(np.abs(e)[:, None] / np.sqrt(k * tot))
    p[ok] = np.minimum((post * pk).sum(axis=1), 1.0)
    s2_post[ok] = post @ grid
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = np.sign(est) * stats.norm.isf(p / 2.0)
        se_test = np.abs(est) / np.abs(stat)
    return {"p_value": p, "stat": stat, "se_test": se_test, "sigma2_post": s2_post, "prior": prior, "grid": grid}


def wald_pvalues(
    coef: ArrayLike,
    cov: ArrayLike,
    c: ArrayLike,
    *,
    sigma2: ArrayLike,
    donor_mask: ArrayLike,
    donor_design: ArrayLike,
    calibration: str = DEFAULT_CALIBRATION,
    sigma2_floor: float | None = None,
    donor_cells: ArrayLike | None = None,
    absorbed: int = 0,
) -> dict[str, NDArray | float | bool]:
    """Wald test of ``c' beta`` for every gene with the chosen small-sample calibration.

    Parameters
    ----------
    coef, cov
        (G, p) coefficients and (G, p, p) or (G, p*p) covariances.
    c
        Contrast vector (p,).
    sigma2
        (G,) donor variance estimates (0 at the boundary).
    donor_mask, donor_design
        From :func:`donor_level_design`.
    calibration
        One of :data:`CALIBRATIONS`. ``"eb"`` uses all genes at once (rows of ``coef``).
    sigma2_floor
        For ``"t_floor"``: the floor of the donor variance; ``None`` uses
        :func:`default_sigma2_floor`.
    donor_cells
        For ``"eb"``: cells per donor (rows of ``donor_design``); each gene's own donor information
        (module docstring). ``None`` (or equal numbers) treats donors as equally informative.
    absorbed
        Levels whose effects coarser random effects absorb (:attr:`LevelDesign.absorbed`, the rank of the
        design's indicator columns): the ML variance of the levels comes from ``m - absorbed`` of them.

    Returns
    -------
    dict with ``estimate``, ``se`` (model), ``se_test`` (used in the statistic), ``stat``,
    ``df`` (``inf`` for the normal reference), ``p_value``, ``donor_level`` and ``sigma2_floor``;
    with ``"eb"`` on a donor-level contrast also ``eb_prior``, ``eb_grid`` and ``sigma2_post``.
    """
    if calibration not in CALIBRATIONS:
        msg = f"calibration must be one of {CALIBRATIONS}; got {calibration!r}."
        raise InvalidValueError(msg, param="calibration")
    c = np.asarray(c, dtype=float)
    est, var = wald(coef, cov, c)
    se = np.sqrt(np.where(var >= 0, var, np.nan))
    mask = np.asarray(donor_mask, dtype=bool)
    Xb = np.asarray(donor_design, dtype=float)
    m = Xb.shape[0]
    s2 = np.nan_to_num(np.asarray(sigma2, dtype=float), nan=0.0)
    cb = np.concatenate([c, np.zeros(Xb.shape[1] - c.size)])  # the design's extra columns (level_design)
    is_b, df_b, k = _between(cb, mask, Xb)
    if donor_cells is not None and np.shape(donor_cells) != (m,):
        msg = f"donor_cells needs one number of cells per donor ({m}); got shape {np.shape(donor_cells)}."
        raise InvalidValueError(msg, param="donor_cells")
    if calibration == "eb":
        n_ok = int(np.sum(np.isfinite(est) & np.isfinite(var) & (var > 0)))
        if is_b and df_b >= 1 and n_ok >= EB_MIN_GENES:
            k_g, m_g = k, m
            if donor_cells is not None and np.ptp(np.asarray(donor_cells, dtype=float)) > 0:
                k_g, m_g = eb_donor_information(var, s2, cb[mask], Xb[:, mask], donor_cells)
            eb = eb_donor_variance(est, var, s2, n_donors=m_g - absorbed, df=m_g - (m - df_b), k=k_g)
            return {
                "estimate": est,
                "se": se,
                "se_test": eb["se_test"],
                "stat": eb["stat"],
                "df": np.inf,
                "p_value": eb["p_value"],
                "donor_level": True,
                "sigma2_floor": np.nan,
                "eb_prior": eb["prior"],
                "eb_grid": eb["grid"],
                "sigma2_post": eb["sigma2_post"],
            }
        calibration = "t"
    var_t = var.copy()
    df = np.inf
    floor = np.nan
    if calibration != "z" and is_b and df_b >= 1:
        df = float(df_b)
        if calibration != "t":
            s2_adj = s2 * (m - absorbed) / df_b
            if calibration.endswith("floor"):
                floor = default_sigma2_floor(s2_adj[np.isfinite(var)]) if sigma2_floor is None else float(sigma2_floor)
                s2_adj = np.maximum(s2_adj, floor)
            var_t = var + (s2_adj - s2) * k
            if calibration.startswith("satterthwaite"):
                # donor part a = s2_adj k has df_b degrees of freedom; the cell-level part
                # b = var_t - a is estimated from many cells (infinite df)
                a = s2_adj * k
                with np.errstate(invalid="ignore", divide="ignore"):
                    df = np.where(a > 0, df_b * (np.maximum(var_t, a) / a) ** 2, np.inf)
                df = np.where(np.isfinite(var_t), df, np.nan)
    se_t = np.sqrt(np.where(var_t >= 0, var_t, np.nan))
    with np.errstate(invalid="ignore", divide="ignore"):
        stat = est / se_t
    df = np.broadcast_to(np.asarray(df, dtype=float), stat.shape) if np.ndim(df) else df
    p = _two_sided(stat, df)
    return {
        "estimate": est,
        "se": se,
        "se_test": se_t,
        "stat": stat,
        "df": df,
        "p_value": p,
        "donor_level": bool(is_b),
        "sigma2_floor": floor,
    }


def slope_wald_pvalues(
    est: ArrayLike,
    var: ArrayLike,
    tau2: ArrayLike,
    *,
    n_levels: int,
    df: int,
    calibration: str = DEFAULT_CALIBRATION,
    k: float | None = None,
) -> dict[str, NDArray | float]:
    """Wald test of a fixed effect that has a random slope, e.g. ``condition`` under
    ``(1 + condition | donor)``.

    Its information comes from the spread of the levels' own slopes, as in a paired t test on
    per-donor differences: in a balanced design the estimate's variance is ``(tau2 + w) / m``, with
    ``tau2`` the slope variance, ``w`` the sampling variance of one level's slope and ``m`` levels,
    and ``m (tau2_hat + w)`` is a ``(tau2 + w) chi2(df)`` observation. ``"eb"`` is then the
    empirical-Bayes test of :func:`eb_donor_variance` with ``k = 1 / m`` (a prior for ``tau2``
    across genes), ``"t"`` refers ``est / se`` to t with ``df`` degrees of freedom and ``"z"`` to
    the normal. ``"eb"`` falls back to ``"t"`` with fewer than :data:`EB_MIN_GENES` genes.

    Parameters
    ----------
    est, var
        (G,) estimates and model variances (from the full Hessian).
    tau2
        (G,) ML variance of the random slope (0 at the boundary).
    n_levels, df
        Levels of the slope's grouping factor and the test's degrees of freedom.
    calibration
        ``"eb"``, ``"t"`` or ``"z"``.
    k
        Share of the slope variance in the estimate's, ``(tau2 + w) k`` (default ``1 / n_levels``; an
        interaction with a level-wide factor, e.g. ``condition:sex``, has ``c' (H' H)^-1 c``, see
        :class:`SlopeEffect`).

    Returns
    -------
    dict with ``stat``, ``p_value``, ``df`` (``inf`` for ``"eb"`` and ``"z"``) and, with ``"eb"``,
    ``eb_prior``.
    """
    est = np.asarray(est, dtype=float)
    var = np.asarray(var, dtype=float)
    n_ok = int(np.sum(np.isfinite(est) & np.isfinite(var) & (var > 0)))
    if calibration == "eb" and df >= 1 and n_ok >= EB_MIN_GENES:
        eb = eb_donor_variance(est, var, tau2, n_donors=n_levels, df=df, k=1.0 / n_levels if k is None else k)
        return {"stat": eb["stat"], "p_value": eb["p_value"], "df": np.inf, "eb_prior": eb["prior"]}
    with np.errstate(invalid="ignore", divide="ignore"):
        stat = est / np.sqrt(np.where(var >= 0, var, np.nan))
    if calibration == "z":
        return {"stat": stat, "p_value": _two_sided(stat, np.inf), "df": np.inf}
    if df < 1:
        return {"stat": stat, "p_value": np.full_like(stat, np.nan), "df": float(df)}
    return {"stat": stat, "p_value": _two_sided(stat, float(df)), "df": float(df)}


def _two_sided(stat: NDArray, df: float | NDArray) -> NDArray:
    a = np.abs(stat)
    if np.ndim(df) == 0:
        return 2.0 * stats.norm.sf(a) if np.isinf(df) else 2.0 * stats.t.sf(a, df)
    out = 2.0 * stats.norm.sf(a)
    fin = np.isfinite(df) & np.isfinite(a)
    out[fin] = 2.0 * stats.t.sf(a[fin], df[fin])
    return out


def chibar_sf(stat: ArrayLike, dfs: Sequence[int], weights: Sequence[float]) -> NDArray[np.float64]:
    """Survival function of the mixture ``sum_k weights[k] chi2(dfs[k])`` (a chi-bar-square).

    ``chi2(0)`` is the point mass at 0: its survival function is 1 at ``stat <= 0`` and 0 above.
    The reference of a likelihood-ratio test of a variance component, whose null value 0 sits on
    the boundary of the parameter space (Self & Liang 1987; Stram & Lee 1994): dropping one
    variance with its ``k`` covariances is referred to ``0.5 chi2(k) + 0.5 chi2(k + 1)``.
    NaN stays NaN.
    """
    x = np.asarray(stat, dtype=float)
    if len(dfs) != len(weights) or not dfs:
        msg = f"dfs and weights must have the same non-zero length; got {len(dfs)} and {len(weights)}."
        raise InvalidValueError(msg, param="weights")
    out = np.zeros(x.shape)
    for d, w in zip(dfs, weights, strict=True):
        out += float(w) * (np.where(x <= 0.0, 1.0, 0.0) if int(d) == 0 else stats.chi2.sf(x, int(d)))
    return np.where(np.isnan(x), np.nan, out)


def mixture_name(dfs: Sequence[int], weights: Sequence[float]) -> str:
    """``"0.5 chi2(1) + 0.5 chi2(2)"``."""
    return " + ".join(f"{float(w):g} chi2({int(d)})" for d, w in zip(dfs, weights, strict=True))


def lrt_pvalues(
    loglik_full: ArrayLike, loglik_reduced: ArrayLike, df: int | Sequence[int], weights: Sequence[float] | None = None
) -> tuple[NDArray, NDArray]:
    """Likelihood-ratio statistic ``2 (l_full - l_reduced)`` and its chi-square(df) p-value.

    With a sequence ``df`` and ``weights``, the p-value is from the mixture of :func:`chibar_sf`.
    Slightly negative statistics from optimiser noise are set to 0.
    """
    lf = np.asarray(loglik_full, dtype=float)
    lr = np.asarray(loglik_reduced, dtype=float)
    stat = 2.0 * (lf - lr)
    stat = np.where(np.isfinite(stat), np.maximum(stat, 0.0), np.nan)
    if weights is None:
        return stat, stats.chi2.sf(stat, df)
    return stat, chibar_sf(stat, list(df), weights)  # type: ignore[arg-type]


def lrt_f_pvalues(stat: ArrayLike, df: int, df_between: float) -> NDArray:
    """p-values of likelihood-ratio statistics of ``df`` fixed effects whose information is the spread
    between ``df_between + df`` levels (a random slope's effect): ``LR / df`` on ``F(df, df_between)``,
    the small-sample reference of the same df as the Wald test's ``"t"`` (the chi-square is its limit as
    the levels grow, and is anti-conservative with few of them)."""
    return stats.f.sf(np.asarray(stat, dtype=float) / df, df, df_between)
