"""``log10`` of p-values from their test statistic, finite where the p-value underflows to 0."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy import special, stats

__all__ = ["log10_chi2_sf", "log10_f_sf", "log10_mixture_sf", "log10_two_sided"]

#: Below this log survival value scipy's own ``logsf`` is replaced by the tail formulas.
_TAIL = -600.0


def _t_logsf_tail(a: np.ndarray, df: np.ndarray) -> np.ndarray:
    """``log P(T > a)`` for Student's t from the incomplete beta function, exact in the far tail.

    ``P(T > a) = I_x(df/2, 1/2) / 2`` with ``x = df / (df + a^2)``, and
    ``I_x(p, q) = x^p (1 - x)^q / (p B(p, q)) 2F1(p + q, 1; p + 1; x)``.
    """
    p, q = df / 2.0, 0.5
    log_x = np.log(df) - 2.0 * np.log(a) - np.log1p(df / a**2)
    log_1mx = -np.log1p(df / a**2)
    x = np.exp(log_x)
    return (
        np.log(0.5)
        + p * log_x
        + q * log_1mx
        - np.log(p)
        - special.betaln(p, q)
        + np.log(special.hyp2f1(p + q, 1.0, p + 1.0, x))
    )


def log10_two_sided(stat: ArrayLike, df: ArrayLike = np.inf) -> np.ndarray:
    """``log10`` of the two-sided p-value of ``stat``: normal reference where ``df`` is inf, else t(df).

    ``log10(2) + log S(|stat|) / ln 10`` with the log survival function ``S``, so it stays finite
    where the p-value underflows to 0 (``|z| = 40`` gives about -349.4).
    """
    a = np.abs(np.asarray(stat, dtype=float))
    d = np.broadcast_to(np.asarray(df, dtype=float), a.shape)
    out = np.full(a.shape, np.nan)
    normal = np.isinf(d) & ~np.isnan(a)
    out[normal] = special.log_ndtr(-a[normal])
    t = np.isfinite(d) & (d > 0) & ~np.isnan(a)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out[t] = stats.t.logsf(a[t], d[t])
        tail = t & ~(out > _TAIL) & np.isfinite(a)
        out[tail] = _t_logsf_tail(a[tail], d[tail])
    return (np.log(2.0) + out) / np.log(10.0)


def log10_chi2_sf(stat: ArrayLike, df: ArrayLike) -> np.ndarray:
    """``log10`` of the chi-square survival function (likelihood-ratio tests), finite in the far tail.

    Where scipy's ``logsf`` underflows, the asymptotic series of the upper incomplete gamma
    function ``Q(k, u)`` (``k = df/2``, ``u = stat/2``, ``u`` above 600) is summed to 8 terms.
    """
    x = np.asarray(stat, dtype=float)
    d = np.broadcast_to(np.asarray(df, dtype=float), x.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = stats.chi2.logsf(x, d)
        k, u = d / 2.0, x / 2.0
        series, term = np.ones(x.shape), np.ones(x.shape)
        for j in range(1, 9):
            term = term * (k - j) / u
            series = series + term
        asym = (k - 1.0) * np.log(u) - u - special.gammaln(k) + np.log(series)
    tail = ~(out > _TAIL) & np.isfinite(asym) & (u > 300.0)
    out = np.where(tail, asym, out)
    return out / np.log(10.0)


def log10_f_sf(stat: ArrayLike, df: int, df_between: float) -> np.ndarray:
    """``log10`` of the p-value of a likelihood-ratio statistic of ``df`` fixed effects with a random slope,
    ``LR / df`` on ``F(df, df_between)`` (:func:`scglmm._core._inference.lrt_f_pvalues`). Its tail is
    polynomial, so scipy's ``logsf`` stays finite wherever the statistic is."""
    with np.errstate(divide="ignore"):
        return stats.f.logsf(np.asarray(stat, dtype=float) / df, df, df_between) / np.log(10.0)


def log10_mixture_sf(stat: ArrayLike, dfs: ArrayLike, weights: ArrayLike) -> np.ndarray:
    """``log10`` of the survival function of ``sum_k weights[k] chi2(dfs[k])`` (``chi2(0)``: the point mass
    at 0), the reference of a likelihood-ratio test of a variance component; finite in the far tail."""
    x = np.asarray(stat, dtype=float)
    parts = []
    for d, w in zip(np.asarray(dfs, dtype=int), np.asarray(weights, dtype=float), strict=True):
        with np.errstate(divide="ignore"):
            log10_sf = np.where(x <= 0.0, 0.0, -np.inf) if d == 0 else log10_chi2_sf(x, float(d))
        parts.append(np.log10(w) + log10_sf)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = special.logsumexp(np.log(10.0) * np.stack(parts), axis=0) / np.log(10.0)
    return np.where(np.isnan(x), np.nan, out)
