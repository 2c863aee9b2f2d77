"""Normalisation factors of samples computed on their pseudobulks: TMM and median of ratios.

A condition that raises many genes at once (interferon) raises the total count of every cell it
touches, so each cell's total count over-estimates its sequencing depth and every other gene looks
lower. Robust factors fix that: they compare samples on the bulk of the genes, not on their sum.

Orientation follows scglmm, **samples x genes** (edgeR's ``calcNormFactors`` takes genes x samples).

- :func:`tmm_factors` is edgeR's ``calcNormFactors(method = "TMM")`` with its defaults
  (Robinson and Oshlack 2010): log ratios against a reference sample trimmed by 30 % at each end,
  average log expression trimmed by 5 %, the kept genes weighted by the inverse of the delta-method
  variance of their log ratio, the reference the sample whose upper-quartile factor is nearest the
  mean of all (the one with the largest sum of root counts if most upper quartiles are zero).
  With ``mode=True`` (``norm_method="tmm_mode"``) the window of
  kept log ratios, 40 % of the genes, is then re-centred on the estimate until the genes it keeps no
  longer change: edgeR's window is symmetric in rank over all genes, so when many genes change the same
  way (a stimulus inducing hundreds) it is asymmetric over the unchanged ones and leaves part of the
  shift; the re-centred window settles on the mode of the unchanged genes' log ratios.
- :func:`median_ratio_factors` is edgeR's ``method = "RLE"``, the median-of-ratios size factor of
  DESeq2 (Anders and Huber 2010) divided by the library size.

Both return factors relative to the library sizes, with geometric mean 1, as edgeR does: a sample's
effective depth is ``library size * factor``. :func:`sample_factors` turns them into the factor that
multiplies each cell's own library size, and :func:`robust_size_factors` gives per-cell size factors
from a count matrix (dense, CSR, CSC or counts on disk) and sample labels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from ._counts import level_stats
from ._errors import InvalidValueError

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, NDArray

__all__ = [
    "NORM_METHODS",
    "median_ratio_factors",
    "pseudobulk",
    "robust_size_factors",
    "sample_factors",
    "tmm_factors",
]

#: The normalisations: TMM (edgeR), TMM re-centred on the mode of the log ratios (the default of ``tl.fit``),
#: median of ratios (DESeq2, edgeR's RLE) and none (library size only).
NORM_METHODS = ("tmm", "tmm_mode", "ratio", "none")
NormMethod = Literal["tmm", "tmm_mode", "ratio", "none"]


# ------------------------------------------------------------------------------------------------
# pseudobulks
# ------------------------------------------------------------------------------------------------
def pseudobulk(Y, codes: ArrayLike, n_samples: int) -> NDArray[np.float64]:
    """The counts of each sample summed over its cells.

    Parameters
    ----------
    Y
        Cells x genes counts: a dense array, a sparse matrix, or counts on disk
        (:class:`scglmm._core._counts.BackedCounts`).
    codes
        Each cell's sample, ``0 .. n_samples - 1``; ``-1`` leaves the cell out.
    n_samples
        Number of samples.

    Returns
    -------
    ``(n_samples, genes)`` float64 sums; sparse input is never densified beyond this.
    """
    codes = np.asarray(codes, dtype=np.int64)
    return level_stats(Y, codes, n_samples, np.ones(codes.size))[0]


# ------------------------------------------------------------------------------------------------
# edgeR's factors (samples x genes)
# ------------------------------------------------------------------------------------------------
def _checked_pseudobulk(counts: ArrayLike, lib_size: ArrayLike | None) -> tuple[np.ndarray, np.ndarray]:
    """Counts as a float matrix without its all-zero genes, and the library sizes (default: row sums)."""
    x = np.asarray(counts, dtype=np.float64)
    if x.ndim != 2 or not np.all(np.isfinite(x)) or np.any(x < 0):
        msg = f"counts must be a finite non-negative samples x genes matrix; got shape {x.shape}."
        raise InvalidValueError(msg, param="counts")
    lib = x.sum(axis=1) if lib_size is None else np.asarray(lib_size, dtype=np.float64).ravel()
    if lib.shape != (x.shape[0],) or not np.all(np.isfinite(lib) & (lib > 0)):
        msg = f"lib_size must be {x.shape[0]} positive finite values (one per sample); got {lib}."
        raise InvalidValueError(msg, param="lib_size")
    return x[:, np.any(x > 0, axis=0)], lib


def _geometric_unit(f: np.ndarray) -> np.ndarray:
    """``f`` divided by its geometric mean."""
    return f / np.exp(np.mean(np.log(f)))


def _tmm_reference(x: np.ndarray, lib: np.ndarray) -> int:
    """edgeR's reference sample: upper-quartile factor nearest their mean (largest sum of root counts
    when the median upper quartile is zero)."""
    f75 = np.quantile(x, 0.75, axis=1) / lib
    if np.median(f75) < 1e-20:
        return int(np.argmax(np.sqrt(x).sum(axis=1)))
    return int(np.argmin(np.abs(f75 - f75.mean())))


def _log_ratios(obs: np.ndarray, ref: np.ndarray, n_obs: float, n_ref: float) -> tuple[np.ndarray, ...]:
    """Per gene with counts in both samples: log2 ratio M, average log2 expression A and the
    delta-method variance of M (edgeR's ``.calcFactorTMM``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        log_r = np.log2((obs / n_obs) / (ref / n_ref))
        abs_e = (np.log2(obs / n_obs) + np.log2(ref / n_ref)) / 2
        v = (n_obs - obs) / n_obs / obs + (n_ref - ref) / n_ref / ref
    fin = np.isfinite(log_r) & np.isfinite(abs_e)
    return log_r[fin], abs_e[fin], v[fin]


def _weighted_mean(log_r: np.ndarray, v: np.ndarray) -> float:
    """``sum(M / v) / sum(1 / v)``, 0 if undefined (edgeR: no shared genes, factor 1)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        m = np.nansum(log_r / v) / np.nansum(1.0 / v)
    return float(m) if np.isfinite(m) else 0.0


def _tmm_pair(
    obs: np.ndarray, ref: np.ndarray, n_obs: float, n_ref: float, trim: tuple[float, float], *, mode: bool
) -> float:
    """The TMM factor of one sample against the reference (edgeR's ``.calcFactorTMM``, weighted); with
    ``mode``, the window of kept log ratios then follows the estimate (:func:`_recentred`)."""
    log_r, abs_e, v = _log_ratios(obs, ref, n_obs, n_ref)
    if log_r.size == 0 or np.max(np.abs(log_r)) < 1e-6:
        return 1.0
    n = log_r.size
    lo_l, lo_s = np.floor(n * trim[0]) + 1, np.floor(n * trim[1]) + 1
    rank_r, rank_e = rankdata(log_r), rankdata(abs_e)
    in_a = (rank_e >= lo_s) & (rank_e <= n + 1 - lo_s)
    keep = (rank_r >= lo_l) & (rank_r <= n + 1 - lo_l) & in_a
    m = _weighted_mean(log_r[keep], v[keep])
    if mode:
        m = _recentred(log_r[in_a], v[in_a], m, max(int(n + 2 - 2 * lo_l), 1))
    return float(2.0**m)


def _recentred(log_r: np.ndarray, v: np.ndarray, m: float, k: int, max_iter: int = 100) -> float:
    """The weighted mean of the ``k`` log ratios nearest ``m``, re-centred until the genes kept no longer
    change: a window of TMM's width centred on its own estimate, which moves to the mode of the log
    ratios of the unchanged genes when the changed ones lie to one side."""
    kept = None
    for _ in range(max_iter):
        near = np.sort(np.argsort(np.abs(log_r - m), kind="stable")[:k])
        if kept is not None and np.array_equal(near, kept):
            break
        kept, m = near, _weighted_mean(log_r[near], v[near])
    return m


def tmm_factors(
    counts: ArrayLike,
    lib_size: ArrayLike | None = None,
    *,
    ref: int | None = None,
    logratio_trim: float = 0.3,
    sum_trim: float = 0.05,
    mode: bool = False,
) -> NDArray[np.float64]:
    """TMM normalisation factors of samples, as edgeR's ``calcNormFactors(method = "TMM")``.

    With ``mode=True`` each sample's window of kept log ratios (TMM's width: 40 % of the genes) is then
    re-centred on the estimate until the genes kept no longer change, so that it settles on the mode of
    the unchanged genes' log ratios instead of being pulled towards genes that all changed one way.

    Parameters
    ----------
    counts
        Samples x genes counts (e.g. pseudobulks; the transpose of edgeR's input).
    lib_size
        Library size per sample; default the row sums of ``counts`` (edgeR's default).
    ref
        Index of the reference sample; default chosen as edgeR does (upper-quartile rule).
    logratio_trim
        Fraction of log ratios trimmed at each end (edgeR's ``logratioTrim``).
    sum_trim
        Fraction of average log expressions trimmed at each end (edgeR's ``sumTrim``).
    mode
        Re-centre the window of kept log ratios on the estimate (``norm_method="tmm_mode"``);
        ``False`` is edgeR's TMM.

    Returns
    -------
    One factor per sample, with geometric mean 1; the effective depth is ``lib_size * factor``.
    """
    x, lib = _checked_pseudobulk(counts, lib_size)
    if x.shape[1] == 0 or x.shape[0] == 1:
        return np.ones(x.shape[0])
    r = _tmm_reference(x, lib) if ref is None else int(ref)
    trim = (float(logratio_trim), float(sum_trim))
    f = np.array([_tmm_pair(x[k], x[r], lib[k], lib[r], trim, mode=mode) for k in range(x.shape[0])])
    return _geometric_unit(f)


def median_ratio_factors(counts: ArrayLike, lib_size: ArrayLike | None = None) -> NDArray[np.float64]:
    """Median-of-ratios factors (DESeq2's size factors; edgeR's ``calcNormFactors(method = "RLE")``).

    Parameters
    ----------
    counts
        Samples x genes counts (e.g. pseudobulks).
    lib_size
        Library size per sample; default the row sums of ``counts``.

    Returns
    -------
    One factor per sample: the median over genes with a count in every sample of the ratio of the
    sample's count to the gene's geometric mean, divided by ``lib_size``, scaled to geometric mean 1.
    """
    x, lib = _checked_pseudobulk(counts, lib_size)
    if x.shape[1] == 0 or x.shape[0] == 1:
        return np.ones(x.shape[0])
    every = np.all(x > 0, axis=0)
    if not np.any(every):
        msg = (
            "no gene has a count in every sample, so the median of ratios is undefined; use "
            "norm_method='tmm' (or fewer, larger samples)."
        )
        raise InvalidValueError(msg, param="norm_method")
    logs = np.log(x[:, every])
    ratios = np.exp(logs - logs.mean(axis=0))
    return _geometric_unit(np.median(ratios, axis=1) / lib)


# ------------------------------------------------------------------------------------------------
# from sample factors to per-cell size factors
# ------------------------------------------------------------------------------------------------
_FACTORS = {
    "tmm": tmm_factors,
    "tmm_mode": lambda x: tmm_factors(x, mode=True),
    "ratio": median_ratio_factors,
}


def sample_factors(
    counts: ArrayLike,
    cell_library: ArrayLike,
    *,
    method: NormMethod = "tmm_mode",
    strata: ArrayLike | None = None,
) -> NDArray[np.float64]:
    """The factor of each sample that multiplies the library sizes of its cells.

    The samples' effective depths are ``T_k * f_k``, with ``T_k`` the total count of sample ``k``'s
    pseudobulk and ``f_k`` its (re-centred) TMM or median-of-ratios factor; the factor returned is
    ``r_k = T_k f_k / C_k``, ``C_k`` the sum of its cells' library sizes, scaled to geometric mean 1
    within each stratum (so that ``method="none"``, 1 everywhere, changes nothing). With the cells'
    total counts as library sizes ``r_k = f_k``. A sample without any count says nothing about its
    depth: it gets factor 1 (its cells keep their library sizes) and the other samples of its stratum
    are normalised without it.

    Parameters
    ----------
    counts
        Samples x genes pseudobulk counts (:func:`pseudobulk`).
    cell_library
        Per sample, the sum of its cells' library sizes (positive).
    method
        ``"tmm"`` (edgeR's TMM), ``"tmm_mode"`` (TMM re-centred on the mode), ``"ratio"`` (median of
        ratios) or ``"none"``.
    strata
        Per sample, a label of the stratum it belongs to (e.g. the cell type): factors are computed
        within each stratum separately, with its own reference. Default: one stratum.

    Returns
    -------
    One positive factor per sample.
    """
    x = np.asarray(counts, dtype=np.float64)
    lib = np.asarray(cell_library, dtype=np.float64).ravel()
    if method not in NORM_METHODS:
        msg = f"norm_method must be one of {NORM_METHODS}; got {method!r}."
        raise InvalidValueError(msg, param="norm_method")
    if method == "none":
        return np.ones(x.shape[0])
    if lib.shape != (x.shape[0],) or not np.all(np.isfinite(lib) & (lib > 0)):
        msg = f"cell_library must be {x.shape[0]} positive finite values (one per sample)."
        raise InvalidValueError(msg, param="cell_library")
    totals = x.sum(axis=1)
    codes = np.zeros(x.shape[0], dtype=np.int64) if strata is None else pd.factorize(np.asarray(strata))[0]
    out = np.ones(x.shape[0])
    for s in np.unique(codes):
        idx = np.flatnonzero((codes == s) & (totals > 0))
        if idx.size:
            out[idx] = _geometric_unit(totals[idx] * _FACTORS[method](x[idx]) / lib[idx])
    return out


def robust_size_factors(
    Y,
    samples: ArrayLike,
    *,
    library_size: ArrayLike | None = None,
    method: NormMethod = "tmm",
    strata: ArrayLike | None = None,
) -> NDArray[np.float64]:
    """Per-cell size factors: each cell's library size times a robust factor of its sample.

    The pure-array counterpart of the default normalisation of :func:`scglmm.tl.fit`: pass
    ``np.log`` of the result as ``log_offset`` to :func:`scglmm.fit_genes`.

    Parameters
    ----------
    Y
        Cells x genes raw counts: dense, CSR or CSC.
    samples
        Each cell's sample (any labels), e.g. donor and condition joined, ``"D1:stim"``.
    library_size
        Each cell's library size; default its total count over ``Y``.
    method
        ``"tmm_mode"`` (default: edgeR's TMM on the samples' pseudobulks, its window then re-centred
        on the mode of the log ratios), ``"tmm"`` (edgeR's TMM as is), ``"ratio"`` (median of ratios)
        or ``"none"`` (the library size alone).
    strata
        Each cell's stratum (e.g. its cell type): factors are computed within each stratum.

    Returns
    -------
    One positive size factor per cell (a scale, not a log).
    """
    labels = np.asarray(samples).ravel()
    if labels.shape[0] != Y.shape[0]:
        msg = f"samples must have one label per cell ({Y.shape[0]}); got {labels.shape[0]}."
        raise InvalidValueError(msg, param="samples")
    lib = np.asarray(Y.sum(axis=1), dtype=np.float64).ravel() if library_size is None else library_size
    lib = np.asarray(lib, dtype=np.float64).ravel()
    if lib.shape != labels.shape or not np.all(np.isfinite(lib) & (lib > 0)):
        msg = f"library_size must be {labels.shape[0]} positive finite values (one per cell)."
        raise InvalidValueError(msg, param="library_size")
    key = labels if strata is None else pd.MultiIndex.from_arrays([np.asarray(strata).ravel(), labels])
    codes, uniques = pd.factorize(key)
    n = len(uniques)
    stratum = None if strata is None else np.asarray(uniques.get_level_values(0))
    r = sample_factors(pseudobulk(Y, codes, n), np.bincount(codes, lib, minlength=n), method=method, strata=stratum)
    return lib * r[codes]
