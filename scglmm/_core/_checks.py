"""Input rules of the array API: counts, design, donors, offset and the fitting settings.

Every check raises ``ValueError`` (``TypeError`` for counts of a non-numeric type) with a message
saying what to pass instead, before any kernel runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse

from ._design import redundant_columns
from ._errors import InvalidTypeError, InvalidValueError

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, NDArray

__all__ = [
    "check_block_size",
    "check_coef_names",
    "check_count_matrix",
    "check_counts",
    "check_design_matrix",
    "check_donors",
    "check_n_agq",
    "check_n_jobs",
    "check_offset",
]


def check_counts(Y: ArrayLike | sparse.spmatrix | sparse.sparray, *, what: str = "counts", param: str = "Y") -> None:
    """Raise an input error unless all entries are finite, non-negative integers (never densifies).

    ``what`` names the matrix in the message, ``param`` the parameter that passed it.
    """
    if hasattr(Y, "iter_chunks"):  # counts on disk (BackedCounts): streamed
        Y.check_counts(what, param=param)
        return
    vals = Y.data if sparse.issparse(Y) else np.asarray(Y)
    hint = "Pass the layer holding them (e.g. layer='counts')." if what.startswith("adata") else "Pass raw counts."
    if vals.dtype.kind not in "biuf":
        msg = f"{what} must be numeric, got dtype {vals.dtype}; convert it (e.g. .astype(np.float32)). {hint}"
        raise InvalidTypeError(msg, param=param)
    if vals.size == 0:
        return
    if vals.dtype.kind == "f":
        finite = np.isfinite(vals)
        if not np.all(finite):
            n_nan = int(np.isnan(vals).sum())
            n_inf = int((~finite).sum()) - n_nan
            msg = f"{what}: found {n_nan} NaN and {n_inf} infinite value(s); scglmm needs raw integer counts. {hint}"
            raise InvalidValueError(msg, param=param)
        frac = vals != np.floor(vals)
        if np.any(frac):
            msg = (
                f"{what}: found {int(frac.sum())} non-integer value(s) (e.g. {float(vals[frac][0])!r}); "
                f"scglmm needs raw integer counts, not normalised or log-transformed data. {hint}"
            )
            raise InvalidValueError(msg, param=param)
    if vals.dtype.kind != "u" and np.any(vals < 0):
        neg = vals < 0
        msg = (
            f"{what}: found {int(neg.sum())} negative value(s) (e.g. {vals[neg][0].item()!r}); scglmm needs "
            f"raw non-negative integer counts. {hint}"
        )
        raise InvalidValueError(msg, param=param)


def check_count_matrix(Y: Any) -> None:
    """Raise unless ``Y`` (an array, sparse matrix or counts on disk) is 2-d, cells x genes."""
    if Y.ndim != 2:
        msg = (
            f"Y must be a 2-d cells x genes matrix; got {Y.ndim} dimension(s). "
            "For one gene use scglmm.fit_gene(y, ...) or pass y[:, None]."
        )
        raise InvalidValueError(msg, param="Y")


def check_design_matrix(X: ArrayLike, n: int, coef_names: Sequence[str] | None = None) -> NDArray[np.float64]:
    """``X`` as a finite (n, p) float64 matrix of full column rank (a vector is one column)."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2 or X.shape[0] != n:
        msg = (
            f"X must be a (n_cells, n_coef) design matrix with one row per cell of the counts "
            f"({n} cells); got shape {X.shape}. Counts are cells x genes: transpose them if they are genes x cells."
        )
        raise InvalidValueError(msg, param="X")
    if not np.all(np.isfinite(X)):
        msg = "X (the design matrix) contains NaN or infinite values; fill them or drop those cells from every input."
        raise InvalidValueError(msg, param="X")
    rank = np.linalg.matrix_rank(X)
    if rank < X.shape[1]:
        names = list(coef_names) if coef_names is not None and len(coef_names) == X.shape[1] else None
        names = names or [f"x{k}" for k in range(X.shape[1])]
        msg = (
            f"X (the design matrix) is rank deficient ({rank} of {X.shape[1]} columns estimable): column(s) "
            f"{redundant_columns(X, names)} are linear combinations of the others {names}; drop them."
        )
        raise InvalidValueError(msg, param="X")
    return X


def check_donors(donors: ArrayLike, n: int) -> tuple[NDArray[np.intp], NDArray[np.object_]]:
    """The donor code of each cell (0 .. m - 1) and the m >= 2 donor labels, sorted.

    ``donors`` is the public ``groups`` argument: one donor label per cell, none missing.
    """
    donors = np.asarray(donors)
    if donors.shape != (n,):
        msg = f"groups must have one donor label per cell ({n}); got shape {donors.shape}."
        raise InvalidValueError(msg, param="groups")
    codes, levels = pd.factorize(donors, sort=True)
    if np.any(codes < 0):
        msg = "groups contains missing values (NaN/None); every cell needs a donor."
        raise InvalidValueError(msg, param="groups")
    if len(levels) < 2:
        msg = (
            f"at least two donors are needed to estimate a donor variance; got {len(levels)} "
            f"({[str(d) for d in levels]}). Check that groups holds the donor of each cell."
        )
        raise InvalidValueError(msg, param="groups")
    return codes, np.asarray(levels, dtype=object)


def check_offset(offset: ArrayLike | None, n: int) -> NDArray[np.float64]:
    """The finite log offset of each cell (zeros if ``offset`` is None)."""
    if offset is None:
        return np.zeros(n)
    off = np.asarray(offset, dtype=np.float64).ravel()
    if off.shape != (n,):
        msg = f"offset must have one value per cell ({n}); got shape {off.shape}."
        raise InvalidValueError(msg, param="offset")
    if not np.all(np.isfinite(off)):
        msg = "offset (log scale) contains NaN or infinite values (a size factor of 0 gives log(0) = -inf)."
        raise InvalidValueError(msg, param="offset")
    return off


def check_coef_names(coef_names: Sequence[str] | None, p: int) -> list[str]:
    """One name (as a string) per design column; ``x0, x1, ...`` if None."""
    if coef_names is None:
        coef_names = [f"x{k}" for k in range(p)]
    coef_names = [str(c) for c in coef_names]
    if len(coef_names) != p:
        msg = f"coef_names has {len(coef_names)} names for {p} design columns; pass one name per column of X."
        raise InvalidValueError(msg, param="coef_names")
    return coef_names


def check_n_agq(n_agq: Any) -> None:
    """Raise unless ``n_agq`` is a positive integer."""
    if not isinstance(n_agq, int | np.integer) or n_agq < 1:
        msg = f"n_agq must be a positive integer (1 = Laplace, e.g. 25 for adaptive Gauss-Hermite); got {n_agq!r}."
        raise InvalidValueError(msg, param="n_agq")


#: How genes that separate are reported (:func:`scglmm.fit_genes`).
SEPARATION_CHOICES = ("prior", "limit")


def check_separation(separation: Any) -> None:
    """Raise unless ``separation`` is one of :data:`SEPARATION_CHOICES`."""
    if separation not in SEPARATION_CHOICES:
        msg = (
            f"separation must be one of {list(SEPARATION_CHOICES)} ('prior': finite effects with a weak prior for "
            f"genes that separate, 'limit': the maximum-likelihood limits, NaN where they are infinite); "
            f"got {separation!r}."
        )
        raise InvalidValueError(msg, param="separation")


def check_n_jobs(n_jobs: Any) -> None:
    """Raise unless ``n_jobs`` is a non-zero integer."""
    if not isinstance(n_jobs, int | np.integer) or n_jobs == 0:
        msg = f"n_jobs must be a non-zero integer (-1 = all cores); got {n_jobs!r}."
        raise InvalidValueError(msg, param="n_jobs")


def check_block_size(block_size: Any) -> None:
    """Raise unless ``block_size`` is a positive integer."""
    if not isinstance(block_size, int | np.integer) or block_size < 1:
        msg = f"block_size must be a positive integer; got {block_size!r}."
        raise InvalidValueError(msg, param="block_size")
