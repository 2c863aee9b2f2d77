"""Inputs read from an AnnData: the counts, the log offset and the gene filter's thresholds.

The rules for these inputs live here once; :mod:`scglmm.tl`, :mod:`scglmm.pl` and the command
line call them. Errors are :class:`scglmm._core._errors.InputError` subclasses naming the
offending parameter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from scipy import sparse

from ._core._checks import check_separation
from ._core._counts import as_backed_counts
from ._core._errors import InvalidTypeError, InvalidValueError, MissingKeyError
from ._core._inference import CALIBRATIONS
from ._core._normalise import NORM_METHODS, pseudobulk, sample_factors
from ._formula import required_variables
from ._layout import Normalisation, OffsetSource
from ._logging import logger

if TYPE_CHECKING:
    from anndata import AnnData
    from numpy.typing import ArrayLike

    from ._formula import RETermSpec

__all__ = [
    "block_size",
    "calibration",
    "counts",
    "donor_labels",
    "groupby_labels",
    "key_added",
    "log_offset",
    "min_count",
    "n_agq",
    "n_jobs",
    "normalisation",
    "normalised_offset",
    "not_empty",
    "separation",
    "test_method",
]


def counts(adata: AnnData, layer: str | None) -> tuple[object, str]:
    """The count matrix (``adata.X`` or a layer) and how to name it in messages; a matrix of an
    AnnData opened with ``backed="r"`` is streamed from disk, never loaded."""
    if layer is None:
        Y = adata.X
        what = "adata.X"
    else:
        if layer not in adata.layers:
            msg = (
                f"layer {layer!r} not found; available layers: {list(adata.layers.keys())} (or layer=None for adata.X)."
            )
            raise MissingKeyError(msg, param="layer")
        Y = adata.layers[layer]
        what = f"adata.layers[{layer!r}]"
    if Y is None:
        msg = "adata.X is empty; pass the layer holding raw counts with `layer=`."
        raise InvalidValueError(msg, param="layer")
    backed = as_backed_counts(Y) if not (sparse.issparse(Y) or isinstance(Y, np.ndarray)) else None
    if backed is not None:  # backed="r": stream from disk, never load the matrix
        Y = backed
    elif not (sparse.issparse(Y) or isinstance(Y, np.ndarray)):
        Y = Y[:, :] if hasattr(Y, "shape") else np.asarray(Y)
        if not (sparse.issparse(Y) or isinstance(Y, np.ndarray)):
            Y = np.asarray(Y)
    return Y, what


def raw_counts_hint(adata: AnnData, layer: str | None) -> str:
    """What to say when ``adata.X`` holds no counts but ``adata.raw`` does (scanpy's usual layout after
    normalisation): how to pass them. Empty otherwise."""
    raw = adata.raw
    if layer is not None or raw is None:
        return ""
    X = raw.X
    vals = X.data[:10000] if sparse.issparse(X) else np.asarray(X[: min(X.shape[0], 200)]).ravel()
    if vals.size == 0 or np.any(vals < 0) or np.any(vals != np.floor(vals)):
        return ""
    return (
        "adata.raw holds integer counts: put those of these genes in a layer and pass it, e.g. "
        "adata.layers['counts'] = adata.raw[:, adata.var_names].X; scglmm.tl.fit(..., layer='counts')."
    )


def log_offset(
    adata: AnnData, Y, size_factors: str | ArrayLike | None, offset: str | ArrayLike | None
) -> tuple[np.ndarray, OffsetSource]:
    """The per-cell log offset of a fit and its source: ``offset`` (log scale) or
    ``size_factors`` (a scale, logged), each an ``obs`` column or an array, or by default the log of
    each cell's library size: an ``obs`` column ``total_counts`` or ``n_counts`` when it counts more
    genes than ``Y`` has (``Y`` is a subset of the genes), else each cell's total count over ``Y``."""
    if size_factors is not None and offset is not None:
        msg = "pass either size_factors (a scale, logged internally) or offset (already on the log scale), not both."
        raise InvalidValueError(msg, param="size_factors")
    if offset is not None:
        return _given_offset(adata, offset)
    if size_factors is None:
        sf = np.asarray(Y.sum(axis=1), dtype=float).ravel()
        column = _library_column(adata, sf)
        if column is not None:
            return np.log(adata.obs[column].to_numpy(dtype=float)), OffsetSource("size_factors", column)
        if np.any(sf <= 0):
            bad = adata.obs_names[sf <= 0][:5].tolist()
            msg = (
                f"{int((sf <= 0).sum())} cell(s) have zero total counts (e.g. {bad}), so the default size "
                "factor log(total counts) is undefined. Remove them first (sc.pp.filter_cells(adata, min_counts=1)) "
                "or pass size_factors=."
            )
            raise InvalidValueError(msg, param="size_factors")
        if Y.shape[1] < SUBSET_GENES:
            logger.warning(
                "size factors: each cell's total count over the %d genes of this matrix. If they are a subset of "
                "the measured genes, pass size_factors= with each cell's full library size (an obs column such "
                "as 'total_counts' computed before subsetting): fold changes depend on it.",
                Y.shape[1],
            )
        return np.log(sf), OffsetSource("total_counts")
    return _given_size_factors(adata, size_factors)


# ------------------------------------------------------------------------------------------------
# normalisation: a robust factor per sample times each cell's library size
# ------------------------------------------------------------------------------------------------
def normalisation(
    adata: AnnData,
    method: object,
    sample_key: str | None,
    specs: tuple[RETermSpec, ...],
    fixed: str,
    groupby: str | None,
) -> Normalisation:
    """The normalisation of a fit: ``method`` checked, and its samples' ``obs`` columns.

    The samples are the levels of ``sample_key`` or, by default, the combinations of the grouping
    columns of the random-effect terms ``specs`` (e.g. the donor) with the factors (non-numeric
    columns) of the fixed formula ``fixed`` (e.g. the condition): donor x condition, the units a
    pseudobulk analysis would compare. Factors are computed within each group of ``groupby``.
    """
    if method not in NORM_METHODS:
        msg = f"norm_method must be one of {NORM_METHODS}; got {method!r}."
        raise InvalidValueError(msg, param="norm_method")
    if sample_key is not None:
        _sample_column(adata, sample_key)
    if method == "none":
        return Normalisation("none", (), groupby)
    if sample_key is not None:
        return Normalisation(method, (sample_key,), groupby)  # type: ignore[arg-type]
    grouping = [c for spec in specs for c in spec.group]
    factors = [v for v in required_variables(fixed) if v in adata.obs.columns and _is_factor(adata.obs[v])]
    return Normalisation(method, tuple(dict.fromkeys(grouping + factors)), groupby)  # type: ignore[arg-type]


def _is_factor(col: pd.Series) -> bool:
    """Whether an ``obs`` column is a factor (categorical, strings, booleans), not a number."""
    return pd.api.types.is_bool_dtype(col) or not pd.api.types.is_numeric_dtype(col)


def _sample_column(adata: AnnData, sample_key: str) -> None:
    """``sample_key``: an ``obs`` column with a label for every cell."""
    if not isinstance(sample_key, str) or sample_key not in adata.obs.columns:
        msg = f"sample_key {sample_key!r} is not a column of adata.obs; available columns: {list(adata.obs.columns)}."
        raise MissingKeyError(msg, param="sample_key")
    n_missing = int(adata.obs[sample_key].isna().sum())
    if n_missing:
        msg = f"sample_key column {sample_key!r} has {n_missing} missing value(s); every cell needs a sample."
        raise InvalidValueError(msg, param="sample_key")


def normalised_offset(
    adata: AnnData, Y, log_off: np.ndarray, norm: Normalisation
) -> tuple[np.ndarray, pd.DataFrame | None]:
    """``log_off`` (the log library sizes) plus the log of each cell's sample factor, and the table of
    the factors (index: the samples, ``a:b`` for columns ``a`` and ``b``; columns: the sample columns,
    ``groupby``, ``n_cells``, ``total_counts`` of the pseudobulk, ``factor``); unchanged and ``None``
    for ``"none"``."""
    if norm.method == "none":
        return log_off, None
    if Y.shape[1] < NORM_GENES:
        logger.warning(
            "normalisation: %s factors from the %d genes of this matrix are noisy. Compute them on all genes "
            "(size_factors=scglmm.robust_size_factors(...) with norm_method='none') or pass norm_method='none'.",
            norm.method, Y.shape[1],
        )  # fmt: skip
    columns = list(norm.samples) + ([norm.groupby] if norm.groupby is not None else [])
    codes, names = pd.factorize(adata.obs[columns].astype(str).agg(":".join, axis=1), sort=True)
    first = np.unique(codes, return_index=True)[1]  # one cell of each sample
    strata = None if norm.groupby is None else adata.obs[norm.groupby].astype(str).to_numpy()[first]
    sums = pseudobulk(Y, codes, len(names))
    library = np.bincount(codes, np.exp(log_off), len(names))
    factor = sample_factors(sums, library, method=norm.method, strata=strata)
    table = adata.obs.iloc[first][columns].astype(str).set_axis(pd.Index(names, dtype=str))
    table["n_cells"] = np.bincount(codes, minlength=len(names))
    table["total_counts"] = sums.sum(axis=1)
    table["factor"] = factor
    _warn_empty_samples(table, columns)
    return log_off + np.log(factor)[codes], table


def _warn_empty_samples(table: pd.DataFrame, columns: list[str]) -> None:
    """Say which samples have no counts (their cells keep their library sizes)."""
    empty = table.index[table["total_counts"] <= 0]
    if len(empty):
        logger.warning(
            "normalisation: %d sample(s) (levels of %s) have no counts at all, e.g. %s; their cells keep their "
            "library sizes (factor 1).",
            len(empty), columns, list(empty[:3]),
        )  # fmt: skip


#: A matrix with fewer genes than this gives noisy normalisation factors (the fit says so).
NORM_GENES = 100
#: ``obs`` columns of each cell's library size that the default size factors use when they come from more
#: genes than the matrix has (scanpy's ``calculate_qc_metrics`` and older ``filter_cells``), in this order.
LIBRARY_COLUMNS = ("total_counts", "n_counts")
#: A matrix with fewer genes than this is likely a subset of the measured genes (the default size factors say so).
SUBSET_GENES = 5000


def _library_column(adata: AnnData, totals: np.ndarray) -> str | None:
    """The first of :data:`LIBRARY_COLUMNS` that holds a library size from more genes than the matrix: positive,
    finite, at least each cell's total over the matrix and above it somewhere; ``None`` if there is none."""
    for column in LIBRARY_COLUMNS:
        if column not in adata.obs.columns or not pd.api.types.is_numeric_dtype(adata.obs[column]):
            continue
        lib = adata.obs[column].to_numpy(dtype=float)
        if np.all(np.isfinite(lib) & (lib > 0)) and np.all(lib >= totals - 0.5) and np.any(lib > totals + 0.5):
            return column
    return None


#: Message for an ``obs`` column of the wrong dtype, by parameter.
_NOT_NUMERIC = {
    "offset": "offset column {column!r} must be numeric (log scale); it has dtype {dtype}.",
    "size_factors": "size_factors column {column!r} must be numeric (positive scale factors), not {dtype}.",
}


def _numeric_column(adata: AnnData, param: str, column: str) -> np.ndarray:
    """``obs[column]``, named by ``param`` (``"offset"`` or ``"size_factors"``): present and numeric."""
    if column not in adata.obs.columns:
        msg = f"{param} column {column!r} not in adata.obs; available columns: {list(adata.obs.columns)}."
        raise MissingKeyError(msg, param=param)
    col = adata.obs[column]
    if not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
        raise InvalidTypeError(_NOT_NUMERIC[param].format(column=column, dtype=col.dtype), param=param)
    return col.to_numpy(dtype=float)


def _per_cell(
    adata: AnnData, param: str, value: str | ArrayLike, kind: Literal["size_factors", "log_offset"]
) -> tuple[np.ndarray, OffsetSource]:
    """One value per cell from an ``obs`` column (by name) or an array, and where it came from."""
    if isinstance(value, str):
        arr, src = _numeric_column(adata, param, value), OffsetSource(kind, value)
    else:
        arr, src = np.asarray(value, dtype=float).ravel(), OffsetSource(kind)
    if arr.shape != (adata.n_obs,):
        msg = f"{param} must have one value per cell ({adata.n_obs}); got shape {arr.shape}."
        raise InvalidValueError(msg, param=param)
    return arr, src


def _given_offset(adata: AnnData, offset: str | ArrayLike) -> tuple[np.ndarray, OffsetSource]:
    """A log offset passed by the user: an ``obs`` column or an array, finite, one per cell."""
    off, src = _per_cell(adata, "offset", offset, "log_offset")
    if not np.all(np.isfinite(off)):
        msg = (
            f"offset contains {int((~np.isfinite(off)).sum())} NaN or infinite value(s) (log scale: a zero "
            "size factor gives -inf); fix them or remove those cells."
        )
        raise InvalidValueError(msg, param="offset")
    return off, src


def _given_size_factors(adata: AnnData, size_factors: str | ArrayLike) -> tuple[np.ndarray, OffsetSource]:
    """Size factors passed by the user (an ``obs`` column or an array, positive, one per cell), logged."""
    sf, src = _per_cell(adata, "size_factors", size_factors, "size_factors")
    if not np.all(np.isfinite(sf)) or np.any(sf <= 0):
        raise InvalidValueError(_bad_size_factors(adata, sf, src.column), param="size_factors")
    return np.log(sf), src


def _bad_size_factors(adata: AnnData, sf: np.ndarray, column: str) -> str:
    """The message for size factors that are not all positive and finite, naming where they were read."""
    kinds = {"missing (NaN)": np.isnan(sf), "infinite": np.isinf(sf), "zero": sf == 0, "negative": sf < 0}
    found = ", ".join(f"{int(v.sum())} {k}" for k, v in kinds.items() if v.any())
    where = f" in adata.obs[{column!r}]" if column else " in the array passed"
    bad = ~(np.isfinite(sf) & (sf > 0))
    cells = adata.obs_names[bad][:3].tolist()
    return (
        f"size_factors must be positive and finite (a scale, not a log); found {found}{where} (e.g. cells {cells}). "
        "Remove those cells or fix the factors; if your column is already on the log scale, pass it as offset=."
    )


def min_count(name: str, value: int | None) -> int:
    """A gene or group filter threshold (``None``: no filter, i.e. 0)."""
    if value is None:
        return 0
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 0:
        msg = f"{name} must be a non-negative integer or None (no filter); got {value!r}."
        raise InvalidValueError(msg, param=name)
    return int(value)


# ------------------------------------------------------------------------------------------------
# settings of tl.fit and tl.test
# ------------------------------------------------------------------------------------------------
def key_added(value: object) -> str:
    """The key under which a fit is stored: a non-empty string."""
    if not isinstance(value, str) or not value:
        msg = f"key_added must be a non-empty string; got {value!r}."
        raise InvalidValueError(msg, param="key_added")
    return value


def flag(name: str, value: object, *, default: bool) -> bool:
    """A switch that is ``True``, ``False`` or ``None`` (``default``)."""
    if value is None:
        return default
    if not isinstance(value, bool | np.bool_):
        msg = f"{name} must be True, False or None (the default); got {value!r}."
        raise InvalidTypeError(msg, param=name)
    return bool(value)


def calibration(value: object, *, or_none: bool = False) -> str | None:
    """A calibration of :data:`~scglmm._core._inference.CALIBRATIONS`; with ``or_none`` (for
    :func:`scglmm.tl.test`) also ``None``, meaning the fit's."""
    if or_none and value is None:
        return None
    if value not in CALIBRATIONS:
        alt = " or None (the fit's)" if or_none else ""
        msg = f"calibration must be one of {CALIBRATIONS}{alt}; got {value!r}."
        raise InvalidValueError(msg, param="calibration")
    return str(value)


def _positive_int(value: object, name: str, note: str = "") -> int:
    """``value`` as a positive integer, or an error naming ``name`` (``note``: what the values mean)."""
    if not isinstance(value, int | np.integer) or value < 1:
        msg = f"{name} must be a positive integer{note}; got {value!r}."
        raise InvalidValueError(msg, param=name)
    return int(value)


def n_agq(value: object) -> int:
    """Gauss-Hermite nodes: 1 (Laplace) or more."""
    return _positive_int(value, "n_agq", " (1 = Laplace, e.g. 25 for adaptive Gauss-Hermite)")


def separation(value: object) -> str:
    """How genes that separate are reported: ``"prior"`` or ``"limit"``."""
    check_separation(value)
    return str(value)


def n_jobs(value: object) -> int:
    """Worker threads: a non-zero integer (-1 = all cores); ``None`` takes ``scanpy.settings.n_jobs``."""
    if value is None:
        import scanpy as sc

        value = int(sc.settings.n_jobs) if sc.settings.n_jobs else 1
    if not isinstance(value, int | np.integer) or value == 0:
        msg = f"n_jobs must be a non-zero integer (-1 = all cores) or None; got {value!r}."
        raise InvalidValueError(msg, param="n_jobs")
    return int(value)


def block_size(value: object) -> int:
    """Genes per block: a positive integer."""
    return _positive_int(value, "block_size")


def test_method(method: object, reduced_formula: str | None, contrast: object) -> str:
    """``"wald"`` or ``"lrt"``; only an LRT takes a reduced formula, and only one with a reduced formula
    may leave out the contrast."""
    if method not in ("wald", "lrt"):
        msg = f"method must be 'wald' or 'lrt'; got {method!r}."
        raise InvalidValueError(msg, param="method")
    if method == "wald" and reduced_formula is not None:
        msg = "reduced_formula is only used with method='lrt'."
        raise InvalidValueError(msg, param="reduced_formula")
    if contrast is None and reduced_formula is None:
        what = "the contrast to test" if method == "wald" else "the column(s) to drop, or pass reduced_formula"
        msg = f"contrast is missing: name {what}, e.g. 'condition[T.stim]'."
        raise InvalidValueError(msg, param="contrast")
    return str(method)


# ------------------------------------------------------------------------------------------------
# the cells: something to fit, donors, groups
# ------------------------------------------------------------------------------------------------
def not_empty(adata: AnnData) -> None:
    """Refuse an AnnData without cells or genes."""
    if adata.n_obs == 0 or adata.n_vars == 0:
        msg = f"adata has {adata.n_obs} cells x {adata.n_vars} genes; nothing to fit (was it subset to empty?)."
        raise InvalidValueError(msg, param="adata")


def donor_labels(adata: AnnData, donor: str) -> pd.Series:
    """The donor column of ``(1 | donor)``: present, a non-empty label for every cell, two donors
    at least."""
    if donor not in adata.obs.columns:
        msg = (
            f"donor column {donor!r} of '(1 | {donor})' is not in adata.obs; "
            f"available columns: {list(adata.obs.columns)}."
        )
        raise MissingKeyError(msg, param="formula")
    labels = adata.obs[donor]
    if labels.isna().any():
        msg = f"donor column {donor!r} has {int(labels.isna().sum())} missing value(s); every cell needs a donor."
        raise InvalidValueError(msg, param="adata")
    empty = labels.astype(str).str.strip() == ""
    if empty.any():
        msg = (
            f"donor column {donor!r} has {int(empty.sum())} empty label(s) "
            "''; every cell needs a donor name (an empty name cannot be stored in .h5ad either)."
        )
        raise InvalidValueError(msg, param="adata")
    n_donors = int(pd.Series(labels).nunique())
    if n_donors < 2:
        msg = (
            f"donor column {donor!r} has {n_donors} distinct value(s) {[str(d) for d in pd.unique(labels)]}; "
            "a donor variance needs at least 2 donors. Check that the formula's '(1 | ...)' names the donor column "
            "and that the cells were not subset to one donor."
        )
        raise InvalidValueError(msg, param="formula")
    return labels


def groupby_labels(adata: AnnData, groupby: str) -> pd.Series:
    """The ``groupby`` column: present, a label for every cell."""
    if groupby not in adata.obs.columns:
        msg = f"groupby column {groupby!r} is not in adata.obs; available columns: {list(adata.obs.columns)}."
        raise MissingKeyError(msg, param="groupby")
    labels = adata.obs[groupby]
    if labels.isna().any():
        msg = (
            f"groupby column {groupby!r} has {int(labels.isna().sum())} missing value(s); "
            "label every cell or subset the cells first."
        )
        raise InvalidValueError(msg, param="groupby")
    return labels
