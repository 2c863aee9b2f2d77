"""Design preparation: the order of the cells, the random-effect terms and the fast path's data.

Cells are sorted by donor, then design row, then offset, so that each donor is a contiguous block
of cells and, within a donor, cells sharing a design row and a narrow range of offsets form
contiguous blocks (the fast path for designs with few distinct rows, see
:mod:`scglmm._core.kernels._few_rows`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .kernels._bundles import Cells, FewRows, Quadrature
from .kernels._few_rows import FEW_ROWS_KMAX, FEW_ROWS_RHO, few_rows_block_power_sums, few_rows_cut_blocks
from .kernels._order import distinct_row_ids, stable_counting_sort

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = [
    "USE_FEW_ROWS",
    "PreparedDesign",
    "RandomTerm",
    "few_rows_data",
    "gauss_hermite",
    "prepare_design",
    "redundant_columns",
]

#: Whether fits may take the fast path for designs with few distinct rows (tests switch it off to
#: compare with the general kernel; results agree to the optimiser's tolerance).
USE_FEW_ROWS = True


def redundant_columns(X: np.ndarray, names: list[str]) -> list[str]:
    """Columns that add nothing to the ones before them (in formula order), i.e. the ones to drop."""
    kept: list[int] = []
    out = []
    for k in range(X.shape[1]):
        if np.linalg.matrix_rank(X[:, [*kept, k]]) > len(kept):
            kept.append(k)
        else:
            out.append(str(names[k]))
    return out


@dataclass(frozen=True)
class RandomTerm:
    """A random-effect term: one effect per level of a factor of the cells (e.g. the donor).

    Today the only term is the donor random intercept; the cells of level ``i`` are
    ``starts[i]:starts[i + 1]`` in the sorted order.
    """

    name: str
    """What the levels are (``"donor"``)."""
    levels: NDArray[np.object_]
    """Labels of the levels, in the order of ``starts`` (and of the fitted modes)."""
    starts: NDArray[np.int64]
    """(m + 1,) bounds of each level's cells in the sorted order."""


@dataclass(frozen=True)
class PreparedDesign:
    """A model's design with its cells in the order the kernels need.

    ``X`` and ``offset`` are sorted; ``pos[r]`` is the sorted position of input row ``r``.
    """

    X: NDArray[np.float64]
    offset: NDArray[np.float64]
    pos: NDArray[np.int64]
    terms: tuple[RandomTerm, ...]

    def __post_init__(self) -> None:
        if len(self.terms) != 1:  # the kernels fit exactly one term: the donor random intercept
            msg = f"exactly one random-effect term is supported; got {len(self.terms)}."
            raise NotImplementedError(msg)

    @property
    def donors(self) -> RandomTerm:
        """The donor random intercept (the only term)."""
        return self.terms[0]

    def cells(self) -> Cells:
        """The cells as the kernels take them."""
        return Cells(self.pos, self.X, self.offset, self.donors.starts)


def prepare_design(
    X: NDArray[np.float64], codes: NDArray[np.int64], levels: NDArray[np.object_], offset: NDArray[np.float64]
) -> PreparedDesign:
    """Sort the cells by donor, design row and offset.

    Parameters
    ----------
    X
        (n, p) design, checked (see :func:`scglmm._core._checks.check_design_matrix`).
    codes
        (n,) donor of each cell, 0 .. m - 1 in the order of ``levels``.
    levels
        (m,) donor labels.
    offset
        (n,) log offsets.

    Returns
    -------
    The :class:`PreparedDesign` with its one term, the donor random intercept.
    """
    n = X.shape[0]
    codes = codes.astype(np.int64)
    m = len(levels)
    # distinct design rows, numbered in lexicographic order (a numeric lexsort: much faster than
    # np.unique(axis=0) on a large design)
    if _many_distinct_rows(X):
        # the fast path cannot apply (blocks would average fewer than 20 cells): donor order only,
        # input order within a donor (stable), which also keeps the CSC row reads in order
        order = stable_counting_sort(codes, m, np.arange(n, dtype=np.int64))
    else:
        row_id = distinct_row_ids(X, np.lexsort(X.T[::-1]))
        n_rows = int(row_id.max()) + 1
        # by (donor, row) then offset: sort by offset, then a stable sort on one integer key
        by_off = np.argsort(offset)
        key = codes * n_rows + row_id
        if m * n_rows <= 4 * n:
            order = stable_counting_sort(key, m * n_rows, by_off)
        else:
            order = by_off[np.argsort(key[by_off], kind="stable")]
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n)
    starts = np.searchsorted(codes[order], np.arange(m + 1)).astype(np.int64)
    donors = RandomTerm(name="donor", levels=np.asarray(levels, dtype=object), starts=starts)
    return PreparedDesign(
        X=np.ascontiguousarray(X[order]), offset=np.ascontiguousarray(offset[order]), pos=pos, terms=(donors,)
    )


def _many_distinct_rows(X: NDArray) -> bool:
    """True if ``X`` certainly has more than n / 20 distinct rows (the fast path's limit), judged
    from the first n / 20 + 1 rows: if those are all distinct in some column, so are that many
    rows of X. A continuous cell-level covariate is caught without sorting the whole design."""
    n = X.shape[0]
    k = n // 20 + 1
    if n < 40 or k > n:
        return False
    head = X[:k]
    return any(np.unique(head[:, j]).size == k for j in range(X.shape[1]))


def few_rows_data(
    X: NDArray[np.float64], offset: NDArray[np.float64], starts: NDArray[np.int64], *, enable: bool | None = None
) -> FewRows:
    """Precomputed quantities for designs with few distinct rows.

    Cells come sorted by donor, design row and offset (``X``, ``offset`` and the donor bounds
    ``starts`` of a :class:`PreparedDesign`). Within a donor, cells with the same design row are
    cut into blocks whose offsets lie within a relative half-width ``FEW_ROWS_RHO`` of the block
    centre ``Lc`` (``Lw = exp(offset - o_ref)``), so that each gene is summed per block by
    convergent Taylor series (see the kernels). Used when blocks hold on average at least 20
    cells, and ``enable`` (default: :data:`USE_FEW_ROWS`).

    Returns
    -------
    A :class:`FewRows` with ``PA[k, :]`` the centred power sums ``sum_j (Lw_j / Lc_k - 1)^k`` of
    block k; ``on`` is False (placeholder arrays) when the fast path does not apply.
    """
    if enable is None:
        enable = USE_FEW_ROWS
    n, p = X.shape
    m = starts.shape[0] - 1
    kk = FEW_ROWS_KMAX + 1
    placeholder = FewRows(
        False, np.zeros((1, p)), np.zeros(1), 0.0, np.zeros((1, kk)), np.ones(1),
        np.zeros(2, dtype=np.int64), np.zeros(m + 1, dtype=np.int64),
    )  # fmt: skip
    if not enable or n == 0:
        return placeholder
    # runs of cells sharing donor and design row
    change = np.zeros(n, dtype=bool)
    change[starts[:-1][starts[:-1] < n]] = True
    if n > 1:
        change[1:] |= np.any(X[1:] != X[:-1], axis=1)
    if np.count_nonzero(change) * 20 > n:
        return placeholder
    o_ref = float(offset.max())
    Lw = np.exp(offset - o_ref)
    # cut each run into offset bins: Lw_max / Lw_min <= (1 + rho) / (1 - rho)
    bstarts = few_rows_cut_blocks(change, Lw, (1.0 + FEW_ROWS_RHO) / (1.0 - FEW_ROWS_RHO))
    nb = bstarts.shape[0] - 1
    if nb * 20 > n:
        return placeholder
    dblk = np.searchsorted(bstarts, starts).astype(np.int64)
    Xb = np.ascontiguousarray(X[bstarts[:-1]])
    PA, Lc = few_rows_block_power_sums(Lw, bstarts, kk)
    return FewRows(True, Xb, Lw, o_ref, PA, Lc, bstarts, dblk)


def gauss_hermite(n_agq: int) -> Quadrature:
    """The adaptive Gauss-Hermite rule with ``n_agq`` nodes (checked: a positive integer); one node
    is the Laplace approximation."""
    if n_agq == 1:
        return Quadrature(np.zeros(1), np.array([0.5 * np.log(np.pi)]))
    z, w = np.polynomial.hermite.hermgauss(int(n_agq))
    return Quadrature(z, np.log(w) + z * z)
