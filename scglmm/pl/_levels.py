"""The per-level data of one random effect of one gene, rebuilt from the counts, the design and the
offset of a fit: what :func:`scglmm.pl.donor_effects` draws beside the stored conditional modes.

- the conditional SD of each level's mode: the Laplace curvature of all modes of all terms together
  (crossed and nested terms share cells, so one term's modes are not independent of the others'),
  given the estimated parameters, like lme4's ``condVar``;
- the unshrunk raw value of each level: observed over predicted counts, the prediction made of the
  fixed effects and the conditional modes of every other term (so that a crossed or nested term's
  raw values do not carry the other terms' effects and compare with its modes); for a 0/1 slope
  column, the difference of that ratio between its two values, plus the fixed effect.

A fit with one ``(1 | donor)`` is described here as the general structure with that one term.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse

from .._core._errors import InvalidValueError
from .._formula import RETermSpec, build_re_terms

__all__ = ["Levels", "StoredEffects", "StoredTerm", "rebuild_levels"]


@dataclass(frozen=True)
class StoredTerm:
    """One random-effect term of a fit: its spec, its coefficients and its levels, in stored order."""

    spec: RETermSpec
    coefs: tuple[str, ...]
    levels: tuple[str, ...]

    @property
    def group(self) -> str:
        """The grouping factor, ``"donor"``, ``"donor:sample"``."""
        return self.spec.group_name

    def mode_name(self, level: str, coef: str) -> str:
        """Column of ``varm[f"{key}_modes"]`` of one level and coefficient, ``donor[D01]:condition[T.stim]``."""
        return f"{self.group}[{level}]:{coef}"


@dataclass(frozen=True)
class StoredEffects:
    """The random effects a fit stored for one gene."""

    terms: tuple[StoredTerm, ...]
    modes: pd.Series
    """Conditional mode of every level of every term, by :meth:`StoredTerm.mode_name`."""
    varcomp: pd.Series
    """``var(c|g)`` and ``cor(c1,c2|g)``, as in ``varm[f"{key}_varcomp"]``."""
    theta: float


@dataclass(frozen=True)
class Levels:
    """The rebuilt data of the levels of the shown term (in stored order)."""

    obs: pd.DataFrame
    """``obs`` of the run's cells."""
    cell_level: np.ndarray
    """Per cell, the index of its level among the shown term's levels."""
    cond_sd: np.ndarray
    raw: np.ndarray
    """Raw value per level; NaN or infinite where it cannot be computed (no counts)."""
    raw_label: str
    """What the raw values are, for the legend (``""``: none can be computed)."""


def rebuild_levels(
    obs: pd.DataFrame,
    y: np.ndarray,
    eta: np.ndarray,
    effects: StoredEffects,
    shown: tuple[int, str],
    center: float,
    sides: str,
) -> Levels:
    """Conditional SD and raw value of each level of term ``shown[0]`` for its coefficient ``shown[1]``.

    ``y`` are the gene's counts and ``eta`` the fixed-effect linear predictor (offset included) of
    the cells of ``obs``; ``center`` is the fixed effect added to the plotted modes (0 for a deviation);
    ``sides`` names the two values of a 0/1 coefficient for the legend (``"stim minus ctrl"``).
    """
    shown, coef = shown
    re_terms = build_re_terms(tuple(t.spec for t in effects.terms), obs)
    index = effects.modes.index
    positions = [_positions(t, index) for t in effects.terms]
    cell_levels = [_cell_levels(t, rt) for t, rt in zip(effects.terms, re_terms, strict=True)]
    Z = _random_design(re_terms, positions, cell_levels, len(index))
    mu = np.exp(eta + Z @ effects.modes.to_numpy(dtype=float))
    theta = effects.theta
    w = mu if np.isinf(theta) else theta * mu * (theta + y) / (theta + mu) ** 2
    root = _cov_root(effects, positions)
    sel = positions[shown][:, effects.terms[shown].coefs.index(coef)]
    cond_sd = _cond_sd(Z, w, root, sel)
    term, codes = re_terms[shown], cell_levels[shown]
    # the prediction the raw value compares with: the fixed effects and the modes of the other
    # terms (crossed and nested terms share cells; without them a level's ratio carries their effects)
    others = effects.modes.to_numpy(dtype=float).copy()
    others[positions[shown].ravel()] = 0.0
    fitted = np.exp(eta + Z @ others)
    fit = "fixed-effect fit" if len(effects.terms) == 1 else "fit of fixed effects + other terms' modes"
    raw, label = _raw(term, (coef, sides, fit), center, (y, fitted), codes, len(effects.terms[shown].levels))
    return Levels(obs=obs, cell_level=codes, cond_sd=cond_sd, raw=raw, raw_label=label)


# ------------------------------------------------------------------------------------------------
# the random-effect design and the conditional SD
# ------------------------------------------------------------------------------------------------
def _positions(term: StoredTerm, index: pd.Index) -> np.ndarray:
    """(levels, coefficients) positions of the term's modes among the stored modes."""
    names = [term.mode_name(lev, c) for lev in term.levels for c in term.coefs]
    pos = index.get_indexer(names)
    if np.any(pos < 0):
        missing = [n for n, p in zip(names, pos, strict=True) if p < 0][:3]
        msg = f"the stored conditional modes lack {missing} of the term {term.spec}; refit."
        raise InvalidValueError(msg, param="key")
    return pos.reshape(len(term.levels), len(term.coefs))


def _cell_levels(term: StoredTerm, rebuilt) -> np.ndarray:
    """Per cell, the index of its level among the stored levels of ``term``."""
    if tuple(rebuilt.coef_names) != term.coefs:
        msg = (
            f"the random coefficients of {term.spec} are {list(rebuilt.coef_names)} in these cells but were "
            f"{list(term.coefs)} in the fit; plot the AnnData that was fitted."
        )
        raise InvalidValueError(msg, param="adata")
    lev_map = pd.Index(term.levels).get_indexer([str(v) for v in rebuilt.levels])
    if np.any(lev_map < 0):
        extra = [str(v) for v, k in zip(rebuilt.levels, lev_map, strict=True) if k < 0][:3]
        msg = f"cells of {term.group} level(s) {extra} were not in the fit; plot the AnnData that was fitted."
        raise InvalidValueError(msg, param="adata")
    return lev_map[rebuilt.codes]


def _random_design(re_terms, positions: list[np.ndarray], cell_levels: list[np.ndarray], Q: int) -> sparse.csr_matrix:
    """The (cells, Q) random-effect design ``Z``, its columns in the order of the stored modes."""
    n = len(cell_levels[0])
    rows, cols, vals = [], [], []
    for rt, pos, lev in zip(re_terms, positions, cell_levels, strict=True):
        for c in range(pos.shape[1]):
            rows.append(np.arange(n))
            cols.append(pos[lev, c])
            vals.append(rt.Z[:, c])
    return sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, Q))


def _term_cov(term: StoredTerm, varcomp: pd.Series) -> np.ndarray:
    """The (q, q) covariance of one level's coefficients (a correlation not stored, or NaN, is 0)."""
    var = np.array([float(varcomp[f"var({c}|{term.group})"]) for c in term.coefs])
    S = np.diag(var)
    sd = np.sqrt(var)
    for i, ci in enumerate(term.coefs):
        for k in range(i + 1, len(term.coefs)):
            r = float(varcomp.get(f"cor({ci},{term.coefs[k]}|{term.group})", 0.0))
            S[i, k] = S[k, i] = (0.0 if np.isnan(r) else r) * sd[i] * sd[k]
    return S


def _cov_root(effects: StoredEffects, positions: list[np.ndarray]) -> np.ndarray:
    """(Q, Q) symmetric square root ``A`` of the prior covariance of all modes (``G = A A``), singular
    where a variance is 0 or a correlation is +-1."""
    Q = len(effects.modes)
    A = np.zeros((Q, Q))
    for term, pos in zip(effects.terms, positions, strict=True):
        val, vec = np.linalg.eigh(_term_cov(term, effects.varcomp))
        root = (vec * np.sqrt(np.clip(val, 0.0, None))) @ vec.T
        for row in pos:
            A[np.ix_(row, row)] = root
    return A


def _cond_sd(Z: sparse.csr_matrix, w: np.ndarray, A: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """Conditional SD of the modes ``sel``: the diagonal of ``(Z'WZ + G^-1)^-1``, computed as
    ``A (A Z'WZ A + I)^-1 A`` so that a singular ``G`` (a variance at 0) needs no inverse."""
    ZtWZ = (Z.T @ Z.multiply(w[:, None])).toarray()
    M = A @ ZtWZ @ A + np.eye(A.shape[0])
    As = A[sel]
    var = np.einsum("ij,ji->i", As, np.linalg.solve(M, As.T))
    return np.sqrt(np.clip(var, 0.0, None))


# ------------------------------------------------------------------------------------------------
# the raw values
# ------------------------------------------------------------------------------------------------
def _log_ratio(mask: np.ndarray, codes: np.ndarray, counts: tuple[np.ndarray, np.ndarray], m: int) -> np.ndarray:
    """Per level, log(observed / predicted counts) over the cells in ``mask``."""
    y, fitted = counts
    ysum = np.bincount(codes[mask], weights=y[mask], minlength=m)
    fsum = np.bincount(codes[mask], weights=fitted[mask], minlength=m)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(ysum) - np.log(fsum)


def _raw(
    term, coef: tuple[str, str], center: float, counts: tuple[np.ndarray, np.ndarray], codes: np.ndarray, m: int
) -> tuple[np.ndarray, str]:
    """The raw value of each level and its legend text (``coef``: the coefficient, the words for its
    sides and for the prediction ``counts[1]`` that the observed counts ``counts[0]`` are compared with).

    An intercept: the log ratio over the cells where the term's other columns are 0. A 0/1 column
    ``c``: the log ratio where ``c = 1`` minus where ``c = 0`` (just the former without an intercept),
    both where the term's other columns are 0, plus ``center``. Other columns have no raw value.
    """
    coef, sides, fit = coef
    names = list(term.coef_names)
    j = names.index(coef)
    others = [k for k, name in enumerate(names) if name != "Intercept" and k != j]
    base = np.all(term.Z[:, others] == 0.0, axis=1)
    if coef == "Intercept":
        where = f" where {', '.join(names[k] for k in others)} = 0" if others else ""
        return _log_ratio(base, codes, counts, m), f"raw log(observed / {fit}){where}"
    col = term.Z[:, j]
    if not np.all((col == 0.0) | (col == 1.0)):
        return np.full(m, np.nan), ""
    raw = _log_ratio(base & (col == 1.0), codes, counts, m) + center
    prefix = "raw: fixed effect + " if center != 0.0 else "raw: "
    if "Intercept" not in names:
        return raw, f"{prefix}log(observed / {fit}) where {coef} = 1"
    with np.errstate(invalid="ignore"):  # no counts on both sides: NaN, not drawn
        raw = raw - _log_ratio(base & (col == 0.0), codes, counts, m)
    return raw, f"{prefix}log(observed / {fit}), {sides}"
