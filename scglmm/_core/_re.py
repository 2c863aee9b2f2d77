"""General random-effect structures on plain arrays: terms, their preparation, and the fit of one gene.

The model (MODEL.md section 7) is ``log mu = X beta + offset + Z b`` with one block of random
effects per term ``(f_t | g_t)``: for each level of ``g_t`` a vector of ``q_t`` coefficients
(the columns of ``f_t``) ~ ``N(0, Sigma_t)``, independent across levels and terms; ``Sigma_t``
unstructured (``|``) or diagonal (``||``).

The estimator is the exact Laplace approximation of the NB marginal likelihood, maximised jointly
over ``(beta, Cholesky factors of the Sigma_t, log theta)``; the kernels are in
:mod:`.kernels._re_laplace` (value and exact gradient) and :mod:`.kernels._linalg` (the
block-diagonal-plus-border Hessian of the inner problem).

Parameterisation. The covariance of term ``t`` is ``Sigma_t = L_t L_t'`` with ``L_t`` lower
triangular whose entries (diagonal ones too) are free real numbers, as in lme4. The objective is
even in each column of ``L_t``, smooth everywhere, and the boundaries (a variance at 0, a
correlation at +-1) are interior points of this space where Newton's method converges normally;
in a log-Cholesky parameterisation they sit at minus infinity. Away from the boundary both are
reparameterisations of each other: ``beta``, its covariance (the beta block of the inverse of the
full negative Hessian) and the log-likelihood are the same. Only ``log theta`` is bounded above
(``T_MAX``, the Poisson limit, as for the donor intercept).

Top-level blocks. The top-level factor is the grouping factor (among the terms') in which the most
random effects nest; terms nested in it form one dense block per top-level level, the others (crossed
factors, e.g. batches) form the border of the Hessian, eliminated exactly by a Schur complement. Each
block keeps only the border effects its cells touch (:mod:`.kernels._linalg`): no matrix over all
levels is formed anywhere in a gene's fit; only the Schur complement (border x border) is dense.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from numba import typeof
from numba.core.typing.typeof import Purpose
from scipy import sparse
from scipy.sparse.csgraph import reverse_cuthill_mckee
from scipy.special import expit, gammaln

from ._prior import Prior
from ._status import (
    ALL_ZERO,
    CORRELATION_BOUNDARY,
    FAILED,
    NOT_CONVERGED,
    POISSON_LIMIT,
    SEPARATION,
    SIGMA2_BOUNDARY,
)
from .kernels._bundles import REData, RERows
from .kernels._cell import BINOMIAL, POISSON, count_table
from .kernels._cell import NB as NB_FAMILY
from .kernels._few_rows import (
    FEW_ROWS_KMAX,
    FEW_ROWS_RHO,
    few_rows_block_power_sums,
    few_rows_cut_blocks,
)
from .kernels._linalg import envelope
from .kernels._re_laplace import re_amat, re_block_gene, re_seed_fixed, re_value_grad
from .kernels._re_outer import re_level_effects, re_newton_step, re_poisson_glm

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, NDArray

__all__ = ["FAMILIES", "REFitOne", "RETerm", "REStructure", "fit_re_one", "prepare_re", "with_trials"]

#: Response families of the general engine and their codes in the kernels (``REData.family``).
FAMILIES = {"nb": NB_FAMILY, "binomial": BINOMIAL, "poisson": POISSON}
#: Upper bound of log theta (theta = 1e8, the Poisson limit), as for the donor intercept.
T_MAX = 18.42
#: A variance below this is reported as 0 (flag ``sigma2_boundary``).
VAR_ZERO = 1e-8
#: A fixed effect beyond this (log scale) is running to infinity: flag ``separation`` (as for the donor intercept).
SEPARATION_BOUND = 25.0
#: A correlation matrix whose smallest eigenvalue is below this is singular (flag ``correlation_boundary``).
COR_SINGULAR = 1e-6


@dataclass(frozen=True)
class RETerm:
    """One random-effect term (covariates f by grouping factor g): per-cell covariates ``Z`` of its coefficients
    and the level of each cell."""

    group: str
    """Name of the grouping factor (``"donor"``, ``"donor:sample"``)."""
    Z: NDArray[np.float64]
    """(n, q) covariates of the term's coefficients (a column of ones for an intercept)."""
    codes: NDArray[np.int64]
    """(n,) level of each cell, from 0 to ``len(levels) - 1``."""
    levels: NDArray[np.object_]
    """Labels of the levels."""
    coef_names: tuple[str, ...]
    """Names of the q coefficients (``"Intercept"``, ``"condition[T.stim]"``)."""
    diagonal: bool = False
    """Independent coefficients (the double bar of lme4): a diagonal covariance."""

    @property
    def q(self) -> int:
        """Number of coefficients per level."""
        return int(self.Z.shape[1])

    @property
    def m(self) -> int:
        """Number of levels."""
        return len(self.levels)

    @property
    def scalar_intercept(self) -> bool:
        """Whether the term is a single random intercept ``(1 | g)`` (the compiled kernels' model)."""
        return self.q == 1 and self.coef_names == ("Intercept",) and bool(np.all(self.Z == 1.0))

    def subset(self, keep: NDArray[np.bool_]) -> RETerm:
        """The term on the cells ``keep``: the levels without cells dropped, the others in their order."""
        codes = self.codes[keep]
        used = np.unique(codes)
        return replace(
            self, Z=self.Z[keep], codes=np.searchsorted(used, codes).astype(np.int64), levels=self.levels[used]
        )

    def varcomp_names(self) -> list[str]:
        """Names of the variance components: a variance per coefficient, then a correlation per pair.

        Correlations only for an unstructured covariance; names such as ``var(Intercept|donor)``.
        """
        out = [f"var({c}|{self.group})" for c in self.coef_names]
        if not self.diagonal:
            q = self.q
            out += [
                f"cor({self.coef_names[i]},{self.coef_names[k]}|{self.group})"
                for i in range(q)
                for k in range(i + 1, q)
            ]
        return out


@dataclass(frozen=True)
class REStructure:
    """A random-effect structure prepared for the kernels (see :class:`REData`)."""

    terms: tuple[RETerm, ...]
    data: REData
    groups: REData
    """The groups of the kernels' rows (see ``REData.grp``): a row per group, its design row, ``Z`` row and
    levels; what the kernels sum over after a pass over the rows runs over these."""
    top: int
    """Index of the term whose grouping factor is the top-level factor."""
    nested: tuple[bool, ...]
    """Whether each term nests in the top-level factor (else it is in the border)."""
    gpos: tuple[NDArray[np.int64], ...]
    """Global position of the first effect of each level of each term."""
    n_lambda: int
    """Number of free Cholesky entries."""
    rows: RERows
    """Whether the kernels' rows are blocks of cells (:class:`RERows`), with the blocks' offset sums."""
    blocks: _Blocks | None = None
    """The cells of each block (None: one row per cell)."""
    row_levels: tuple[NDArray[np.int64], ...] = ()
    """The level of each of the kernels' rows (cell or block), term by term."""
    compiled: dict[str, Callable] = field(default_factory=dict, compare=False, repr=False)
    """The kernels' compiled functions for this structure's argument types (filled by the first fit)."""
    prior: Prior | None = None
    """A log-prior on the outer parameters (:mod:`._prior`), added to the log-likelihood in the objective
    (the weak prior of genes that separate, :mod:`._penalised`); None: maximum likelihood."""

    def __getstate__(self) -> dict:
        """Pickled without the compiled functions (process-local; a worker compiles or loads its own)."""
        return {**self.__dict__, "compiled": {}}

    @property
    def p(self) -> int:
        """Number of fixed effects."""
        return int(self.data.X.shape[1])

    @property
    def n_params(self) -> int:
        """Outer parameters: beta, Cholesky entries, log theta."""
        return self.p + self.n_lambda + 1

    @property
    def n_border(self) -> int:
        """Effects in the border (crossed terms)."""
        return int(self.data.Q - self.data.NB)

    def effect_order(self) -> NDArray[np.int64]:
        """The global positions of the effects in the order results report them: the block effects as laid
        out, then the crossed terms' levels in their order (the kernels may order the border otherwise,
        :func:`_order_border`)."""
        border = [
            (self.gpos[it][:, None] + np.arange(t.q)[None, :]).ravel()
            for it, t in enumerate(self.terms)
            if not self.nested[it]
        ]
        return np.concatenate([np.arange(self.data.NB, dtype=np.int64), *border]).astype(np.int64)

    def varcomp_names(self) -> list[str]:
        """Names of the variance components, term by term."""
        return [name for t in self.terms for name in t.varcomp_names()]

    def cholesky(self, phi: NDArray[np.float64]) -> list[NDArray[np.float64]]:
        """The Cholesky factor ``L_t`` of every term at the parameters ``phi``."""
        out = []
        for t, term in enumerate(self.terms):
            q = term.q
            pos = self.data.lam_pos[t, :q, :q]
            out.append(np.where(pos >= 0, phi[np.maximum(pos, 0)], 0.0))
        return out


@dataclass(frozen=True)
class _Blocks:
    """Cells grouped into the kernels' rows: cells sharing the fixed design row, the random-effect
    covariates and levels, cut into narrow ranges of offsets (see :mod:`.kernels._few_rows`)."""

    order: NDArray[np.int64]
    """Cells sorted by block (and offset within a block)."""
    bstarts: NDArray[np.int64]
    """(B + 1,) first position of each block in ``order``."""
    Lw: NDArray[np.float64]
    """``exp(offset - o_ref)`` in the sorted order."""
    off: NDArray[np.float64]
    """Offsets in the sorted order."""
    e: NDArray[np.float64]
    """``exp(offset)`` in the sorted order."""
    esum: NDArray[np.float64]
    """(B,) sum of ``exp(offset)`` over each block's cells."""
    e2sum: NDArray[np.float64]
    """(B,) sum of ``exp(2 offset)`` over each block's cells."""
    e3sum: NDArray[np.float64]
    """(B,) sum of ``exp(3 offset)`` over each block's cells."""
    cbid: NDArray[np.int64]
    """(n,) block of each cell (original order)."""
    cLw: NDArray[np.float64]
    """(n,) ``exp(offset - o_ref)`` of each cell (original order)."""
    coff: NDArray[np.float64]
    """(n,) offset of each cell."""
    ce: NDArray[np.float64]
    """(n,) ``exp(offset)`` of each cell."""


#: Whether :func:`prepare_re` may collapse cells into blocks (tests switch it off to compare).
USE_BLOCKS = True
#: Blocks are used when they hold on average at least this many cells: a cost model, not a precision
#: threshold (both layouts give the same objective to rounding). Since the blocks' series run in one loop
#: per pass, a block row costs about 2-3 cell rows (slope model, 1,000 donors x 50 cells: 0.034 against
#: 0.014 microseconds per row for a pass with the first two derivatives), so blocks pay from 2 cells per
#: block on average: on 200 donors x 20 cells (3.3 cells per block) they cut the CPU per gene from 18.6 to
#: 11.9 ms (slope) and 17.2 to 10.3 ms (nested), on 500 donors x 12 cells from 32 to 21 ms, the
#: log-likelihoods within 2e-10 and the statuses the same (issue 20). It was 20 (the donor-intercept fast
#: path's threshold), then 4.
MIN_CELLS_PER_BLOCK = 2


def _no_rows(p: int) -> RERows:
    """The placeholder :class:`RERows` of a structure fitted cell by cell."""
    return RERows(False, np.zeros((1, FEW_ROWS_KMAX + 1)), np.ones(1), 0.0, np.zeros(1), _inv_k())


def _inv_k() -> NDArray[np.float64]:
    """``1 / k`` for k = 0 .. FEW_ROWS_KMAX (0 at k = 0)."""
    k = np.arange(FEW_ROWS_KMAX + 1, dtype=np.float64)
    return np.divide(1.0, k, out=np.zeros_like(k), where=k > 0)


def _row_codes(key: NDArray[np.float64]) -> NDArray[np.int64]:
    """The rank of each row of ``key`` among its distinct rows in lexicographic order (the inverse of
    ``np.unique(key, axis=0)``, column by column: numpy's row-wise unique sorts a structured view, ~50
    times slower on 50,000 rows)."""
    code = np.zeros(key.shape[0], dtype=np.int64)
    for k in range(key.shape[1]):
        vals, inv = np.unique(key[:, k], return_inverse=True)
        _, code = np.unique(code * vals.size + inv.ravel(), return_inverse=True)
        code = code.ravel().astype(np.int64)
    return code


def _cut_blocks(
    X: NDArray[np.float64], offset: NDArray[np.float64], zval: NDArray[np.float64], gidx: NDArray[np.int64]
) -> tuple[_Blocks, RERows] | None:
    """Blocks of cells with one fixed design row, random-effect row and levels, and offsets within a
    relative ``FEW_ROWS_RHO`` of the block centre; None when they would hold fewer than
    ``MIN_CELLS_PER_BLOCK`` cells on average (e.g. a numeric per-cell covariate)."""
    n = X.shape[0]
    if n == 0:
        return None
    inv = _row_codes(np.hstack([X, zval, gidx.astype(np.float64)]))
    if (int(inv.max()) + 1) * MIN_CELLS_PER_BLOCK > n:
        return None
    order = np.lexsort((offset, inv)).astype(np.int64)
    change = np.ones(n, dtype=bool)
    change[1:] = inv[order][1:] != inv[order][:-1]
    o_ref = float(offset.max())
    off_s = np.ascontiguousarray(offset[order], dtype=np.float64)
    Lw = np.exp(off_s - o_ref)
    bstarts = few_rows_cut_blocks(change, Lw, (1.0 + FEW_ROWS_RHO) / (1.0 - FEW_ROWS_RHO))
    nb = bstarts.shape[0] - 1
    if nb * MIN_CELLS_PER_BLOCK > n:
        return None
    PA, Lc = few_rows_block_power_sums(Lw, bstarts, FEW_ROWS_KMAX + 1)
    e = np.exp(off_s)
    cbid = np.empty(n, dtype=np.int64)
    cbid[order] = np.repeat(np.arange(nb, dtype=np.int64), np.diff(bstarts))
    cLw = np.empty(n)
    cLw[order] = Lw
    blocks = _Blocks(
        order=order, bstarts=bstarts, Lw=Lw, off=off_s, e=e,
        esum=np.add.reduceat(e, bstarts[:-1]), e2sum=np.add.reduceat(e * e, bstarts[:-1]),
        e3sum=np.add.reduceat(e**3, bstarts[:-1]),
        cbid=cbid, cLw=cLw, coff=offset.copy(), ce=np.exp(offset),
    )  # fmt: skip
    return blocks, RERows(True, PA, Lc, o_ref, np.log(Lc), _inv_k())


def _nests_in(codes: NDArray[np.int64], parent: NDArray[np.int64]) -> NDArray[np.int64] | None:
    """The parent level of each level of ``codes`` if every level lies within one parent level, else None."""
    m = int(codes.max()) + 1
    pair = codes.astype(np.int64) * (int(parent.max()) + 1) + parent
    if np.unique(pair).size != m:
        return None
    out = np.empty(m, dtype=np.int64)
    out[codes] = parent
    return out


def _choose_top(terms: tuple[RETerm, ...]) -> tuple[int, list[NDArray[np.int64] | None]]:
    """The term whose grouping factor leaves the smallest border (ties: more levels), and the parent
    map of each term (None: not nested in it)."""
    best = None
    for s, cand in enumerate(terms):
        parents = [_nests_in(t.codes, cand.codes) for t in terms]
        border = sum(t.m * t.q for t, par in zip(terms, parents, strict=True) if par is None)
        key = (border, -cand.m, s)
        if best is None or key < best[0]:
            best = (key, s, parents)
    assert best is not None
    return best[1], best[2]


def _lambda_layout(terms: tuple[RETerm, ...], p: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """``lam_pos`` (T, qmax, qmax) and the (term, row, column) of each Cholesky parameter."""
    qmax = max(t.q for t in terms)
    lam_pos = -np.ones((len(terms), qmax, qmax), dtype=np.int64)
    trc = []
    for it, t in enumerate(terms):
        for c in range(t.q):
            for r in range(c, t.q if not t.diagonal else c + 1):
                lam_pos[it, r, c] = p + len(trc)
                trc.append((it, r, c))
    return lam_pos, np.asarray(trc, dtype=np.int64).reshape(-1, 3)


def _positions(
    terms: tuple[RETerm, ...], top: int, parents: list[NDArray[np.int64] | None]
) -> tuple[list[NDArray[np.int64]], NDArray[np.int64], NDArray[np.int64], int, int]:
    """Global position of each level's first effect; block sizes and starts; block effects; total effects."""
    K = terms[top].m
    nk = np.zeros(K, dtype=np.int64)
    gpos: list[NDArray[np.int64]] = [np.zeros(t.m, dtype=np.int64) for t in terms]
    local: list[NDArray[np.int64]] = [np.zeros(t.m, dtype=np.int64) for t in terms]
    for it, (t, par) in enumerate(zip(terms, parents, strict=True)):
        if par is None:
            continue
        for lev in range(t.m):
            local[it][lev] = nk[par[lev]]
            nk[par[lev]] += t.q
    bstart = np.concatenate([[0], np.cumsum(nk)[:-1]]).astype(np.int64)
    NB = int(nk.sum())
    pos = NB
    for it, (t, par) in enumerate(zip(terms, parents, strict=True)):
        if par is None:
            gpos[it] = pos + t.q * np.arange(t.m, dtype=np.int64)
            pos += t.q * t.m
        else:
            gpos[it] = bstart[par] + local[it]
    return gpos, nk, bstart, NB, pos


def _local_positions(
    gidx: NDArray[np.int64],
    blk: NDArray[np.int64],
    border: NDArray[np.bool_],
    nk: NDArray[np.int64],
    bstart: NDArray[np.int64],
    NB: int,
    Q: int,
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Each entry's position in its block's local space, and the border effects each block touches.

    ``border[r]``: entry ``r`` belongs to a crossed term. Returns ``lidx`` (n, R), ``bptr`` (K + 1) and
    ``bcol``: block ``k`` touches the border effects ``bcol[bptr[k]:bptr[k + 1]]`` (increasing, from 0),
    which sit at local positions ``nk[k] + 0, 1, ...`` (see :mod:`.kernels._linalg`).
    """
    K, nc = nk.shape[0], Q - NB
    lidx = gidx - bstart[blk][:, None]
    key = blk[:, None] * max(nc, 1) + (gidx[:, border] - NB)
    used, inv = np.unique(key, return_inverse=True)
    bptr = np.searchsorted(used // max(nc, 1), np.arange(K + 1)).astype(np.int64)
    pos = inv.reshape(key.shape) - bptr[blk][:, None] + nk[blk][:, None]
    lidx[:, border] = pos
    return np.ascontiguousarray(lidx), bptr, (used % max(nc, 1)).astype(np.int64)


def _global_index(
    terms: tuple[RETerm, ...], gpos: list[NDArray[np.int64]], toff: NDArray[np.int64], n: int
) -> NDArray[np.int64]:
    """``gidx`` (n, R): the global position of each cell's effect of every entry."""
    gidx = np.empty((n, int(sum(t.q for t in terms))), dtype=np.int64)
    for it, t in enumerate(terms):
        base = gpos[it][t.codes]
        for c in range(t.q):
            gidx[:, toff[it] + c] = base + c
    return gidx


def _envelope_first(bptr: NDArray[np.int64], bcol: NDArray[np.int64], nc: int) -> NDArray[np.int64]:
    """The first column of each border row's envelope: the smallest border effect sharing a block with it
    (the Schur complement's non-zeros are the pairs of border effects a block touches)."""
    first = np.arange(nc, dtype=np.int64)
    counts = np.diff(bptr)
    has = counts > 0
    if has.any():
        low = np.minimum.reduceat(bcol, bptr[:-1][has])
        np.minimum.at(first, bcol, np.repeat(low, counts[has]))
    return first


def _envelope_size(bptr: NDArray[np.int64], bcol: NDArray[np.int64], nc: int) -> int:
    """Entries of the border's envelope (:func:`_envelope_first`)."""
    return int((np.arange(nc) - _envelope_first(bptr, bcol, nc) + 1).sum())


def _order_border(
    terms: tuple[RETerm, ...],
    parents: list[NDArray[np.int64] | None],
    gpos: list[NDArray[np.int64]],
    bptr: NDArray[np.int64],
    bcol: NDArray[np.int64],
    NB: int,
) -> bool:
    """Reorder the border's levels (``gpos`` of the crossed terms, in place) by reverse Cuthill-McKee on
    the graph of levels sharing a block, if that narrows the envelope of the Schur complement by at
    least :data:`ENVELOPE_GAIN` (returns whether it did). A level keeps its effects together."""
    crossed = [it for it, par in enumerate(parents) if par is None]
    first = np.concatenate([gpos[it] for it in crossed]) - NB  # each level's first effect
    q = np.concatenate([np.full(terms[it].m, terms[it].q, dtype=np.int64) for it in crossed])
    nc = int(q.sum())
    order = np.argsort(first)
    node = np.repeat(order, q[order])  # the level of each border effect
    K = bptr.size - 1
    inc = sparse.csr_matrix(
        (np.ones(bcol.size), (np.repeat(np.arange(K), np.diff(bptr)), node[bcol])), shape=(K, first.size)
    )
    graph = (inc.T @ inc).tocsr()
    perm = reverse_cuthill_mckee(graph, symmetric_mode=True)
    new_first = np.empty_like(first)
    new_first[perm] = np.concatenate([[0], np.cumsum(q[perm])[:-1]])
    remap = new_first[node] + (np.arange(nc) - first[node])  # each border effect's new position
    size = _envelope_size(bptr, bcol, nc)
    if _envelope_size(bptr, remap[bcol], nc) > ENVELOPE_GAIN * size:
        return False
    start = 0
    for it in crossed:
        gpos[it][:] = NB + new_first[start : start + terms[it].m]
        start += terms[it].m
    return True


def _border_layout(
    terms: tuple[RETerm, ...], parents: list[NDArray[np.int64] | None], gpos: list[NDArray[np.int64]], lay: tuple
) -> tuple[NDArray, NDArray, NDArray, NDArray, tuple]:
    """Each cell's global and block-local effect positions, the border effects of every block, and the
    border's envelope (:func:`.kernels._linalg.envelope`), the crossed levels first reordered
    (``gpos`` in place) where that narrows it. ``lay``: ``(toff, blk, nk, bstart, NB, Q)``."""
    toff, blk, nk, bstart, NB, Q = lay
    n = blk.shape[0]
    rterm = np.repeat(np.arange(len(terms)), [t.q for t in terms])
    border = np.array([parents[it] is None for it in rterm], dtype=bool)
    gidx = _global_index(terms, gpos, toff, n)
    lidx, bptr, bcol = _local_positions(gidx, blk, border, nk, bstart, NB, Q)
    if Q > NB and _order_border(terms, parents, gpos, bptr, bcol, NB):
        gidx = _global_index(terms, gpos, toff, n)
        lidx, bptr, bcol = _local_positions(gidx, blk, border, nk, bstart, NB, Q)
    return gidx, lidx, bptr, bcol, envelope(_envelope_first(bptr, bcol, Q - NB))


#: Reverse Cuthill-McKee orders the border only if it shrinks the envelope to this share or less.
ENVELOPE_GAIN = 0.8


def prepare_re(
    X: NDArray[np.float64],
    offset: NDArray[np.float64],
    terms: list[RETerm] | tuple[RETerm, ...],
    *,
    blocks: bool | None = None,
    family: int = NB_FAMILY,
    trials: NDArray[np.float64] | None = None,
) -> REStructure:
    """Lay out a random-effect structure for the kernels.

    Parameters
    ----------
    X
        (n, p) fixed-effect design (checked by the caller).
    offset
        (n,) log offsets.
    terms
        The random-effect terms; each cell has one level of every term.
    blocks
        Whether cells sharing their design rows and levels may be collapsed into blocks (default:
        :data:`USE_BLOCKS`); they are when the blocks hold at least ``MIN_CELLS_PER_BLOCK`` cells on
        average. Both layouts give the same objective (to rounding).
    family
        The response family of the rows (:data:`FAMILIES`); with a family
        other than NB the rows are never collapsed into blocks and the dispersion is held (no theta).
    trials
        (n,) binomial trials of each row (``BINOMIAL`` only; per gene they may be replaced with
        :func:`with_trials`).

    Returns
    -------
    The :class:`REStructure`: the top-level factor, the block and border layout of the effects,
    and the per-cell entries of ``Z``.
    """
    terms = tuple(terms)
    if not terms:
        msg = "at least one random-effect term is needed."
        raise ValueError(msg)
    n, p = X.shape
    top, parents = _choose_top(terms)
    gpos, nk, bstart, NB, Q = _positions(terms, top, parents)
    nmax = int(nk.max())
    tq = np.array([t.q for t in terms], dtype=np.int64)
    toff = np.concatenate([[0], np.cumsum(tq)[:-1]]).astype(np.int64)
    rterm = np.repeat(np.arange(len(terms)), tq).astype(np.int64)
    rcoef = np.concatenate([np.arange(q) for q in tq]).astype(np.int64)
    blk = terms[top].codes.astype(np.int64)
    zval = np.ascontiguousarray(np.hstack([t.Z for t in terms]), dtype=np.float64)
    gidx, lidx, bptr, bcol, env = _border_layout(terms, parents, gpos, (toff, blk, nk, bstart, NB, Q))
    lam_pos, trc = _lambda_layout(terms, p)
    X = np.ascontiguousarray(X, dtype=np.float64)
    off = np.ascontiguousarray(offset, dtype=np.float64)
    use_blocks = (USE_BLOCKS if blocks is None else blocks) and family == NB_FAMILY
    cut = _cut_blocks(X, off, zval, gidx) if use_blocks else None
    rows, bl = _no_rows(p), None
    row_levels = tuple(np.ascontiguousarray(t.codes, dtype=np.int64) for t in terms)
    if cut is not None:
        bl, rows = cut
        rep = bl.order[bl.bstarts[:-1]]
        row_levels = tuple(c[rep] for c in row_levels)
        X, off, zval, gidx, lidx, blk = X[rep], np.zeros(rep.size), zval[rep], gidx[rep], lidx[rep], blk[rep]
    data = REData(
        X, off, np.ascontiguousarray(zval), np.ascontiguousarray(gidx), np.ascontiguousarray(lidx),
        np.ascontiguousarray(blk), rterm, rcoef, toff, tq, lam_pos, trc[:, 0].copy(), trc[:, 1].copy(),
        trc[:, 2].copy(), nk, bstart, nmax, NB, Q, bptr, bcol, *env, int(family), _trials(family, trials, n),
        np.zeros(X.shape[0], dtype=np.int64),
    )  # fmt: skip
    data, groups = _row_groups(data)
    return REStructure(
        terms=terms,
        data=data,
        groups=groups,
        top=top,
        nested=tuple(par is not None for par in parents),
        gpos=tuple(gpos),
        n_lambda=len(trc),
        rows=rows,
        blocks=bl,
        row_levels=row_levels,
    )


#: Rows are summed into groups (:func:`_row_groups`) when there are at most this share as many groups as rows
#: (else each row is its own group: ``(1 | donor) + (1 | batch)`` with batches drawn per cell has 48,047
#: groups of 50,000 cells, and regrouped rows took 16 % more CPU there).
GROUP_GAIN = 0.5


def _row_groups(d: REData) -> tuple[REData, REData]:
    """``d`` with the group of each row (``REData.grp``: rows sharing their design row, ``Z`` row and
    levels), and the groups' own ``REData`` (a row each: the first of its rows; offsets 0, no trials); each
    row its own group, and ``d`` for both, when that would not halve the rows (:data:`GROUP_GAIN`)."""
    code = _row_codes(np.hstack([d.X, d.zval, d.gidx.astype(np.float64)]))
    first = np.unique(code, return_index=True)[1]
    G = first.size
    if G / d.X.shape[0] > GROUP_GAIN:  # hardly fewer groups than rows: the rows, in their own order
        d = d._replace(grp=np.arange(d.X.shape[0], dtype=np.int64))
        return d, d
    groups = d._replace(
        X=np.ascontiguousarray(d.X[first]), off=np.zeros(G), zval=np.ascontiguousarray(d.zval[first]),
        gidx=np.ascontiguousarray(d.gidx[first]), lidx=np.ascontiguousarray(d.lidx[first]),
        blk=np.ascontiguousarray(d.blk[first]), trials=np.zeros(0), grp=np.arange(G, dtype=np.int64),
    )  # fmt: skip
    return d._replace(grp=code), groups


@dataclass
class _Problem:
    """One gene's objective with warm-started modes."""

    s: REStructure
    y: NDArray[np.float64]
    nz: tuple[NDArray[np.int64], NDArray[np.float64]] | None = None
    """The gene's non-zero cells and their counts, if known (else found in ``y``)."""
    cnt_gt: NDArray[np.float64] = field(init=False)
    lgy: float = field(init=False)
    u: NDArray[np.float64] = field(init=False)
    PZ: NDArray[np.float64] = field(init=False)
    """The gene's y-weighted power sums per block, its count and ``sum y offset`` in the last two
    columns (a placeholder when the rows are cells)."""
    moments: tuple[NDArray, NDArray] | None = field(init=False)
    """Per block, the sums of ``y^2`` and ``y exp(offset)`` (None when the rows are cells)."""
    n_eval: int = 0
    seed: tuple | None = None
    """What the start learnt for a cheap first outer Hessian (:func:`_seed_hessian`): per term its
    Cholesky factor and per-level sampling covariances, the rows' linear predictors, ``E``, ``E2``, dispersion."""
    jac: NDArray[np.float64] | None = None
    """The modes' derivatives ``du / dphi`` (Q, P) at the parameters of ``u``, if known (warm starts)."""
    hess: NDArray[np.float64] | None = None
    """The exact Hessian (P, P) at the parameters of ``u``, if known (:attr:`has_exact_hessian`)."""
    want_hess: bool = False
    """Whether evaluations at ``self.u`` compute the exact Hessian too (:meth:`exact_hessian`)."""
    newton: bool = field(init=False)
    """Whether the iterations are Newton steps on the exact Hessian (:func:`_maximise`; :data:`USE_NEWTON`
    and :attr:`has_exact_hessian`), else BFGS."""
    kernel: Callable = field(init=False)
    """:func:`re_value_grad`, after the first call its compiled function for these argument types."""

    def __post_init__(self) -> None:
        if self.nz is None:
            nzc = np.flatnonzero(self.y)
            self.nz = (nzc, self.y[nzc])
        nzc, nzv = self.nz
        if self.s.data.family == NB_FAMILY:
            self.cnt_gt, self.lgy = count_table(nzv)  # the zero cells count for nothing in it
        else:  # no dispersion: an empty count table; the rows' constants
            self.cnt_gt, self.lgy = np.zeros(1), _glm_constant(self.s.data, self.y)
        self.kernel = self.s.compiled.get("value_grad", re_value_grad)
        self.newton = USE_NEWTON and self.has_exact_hessian
        self.u = np.zeros(self.s.data.Q)
        self.PZ, self.moments = _gene_power_sums(self.s, nzc, nzv)

    @property
    def row_counts(self) -> NDArray[np.float64]:
        """The gene's total count in each row of the kernels (a cell or a block)."""
        return self.y if self.s.blocks is None else self.PZ[:, -2]

    def value_grad(
        self,
        phi: NDArray[np.float64],
        u: NDArray[np.float64] | None = None,
        jac: NDArray[np.float64] | None = None,
        hess: NDArray[np.float64] | None = None,
    ) -> tuple[float, NDArray]:
        """Laplace log-likelihood and gradient at ``phi`` (modes warm-started from, and written to, ``u``;
        their derivatives ``du / dphi`` into ``jac`` and the exact Hessian into ``hess`` if given, or into
        ``self.jac`` and, if :attr:`want_hess` or :attr:`newton`, ``self.hess`` when ``u`` is ``self.u``)."""
        uu = self.u if u is None else u
        P = phi.shape[0]
        grad = np.zeros(P)
        self.n_eval += 1
        if u is None:
            self.jac = jac = np.empty((uu.shape[0], P)) if USE_MODE_JAC else None
            want = self.want_hess or self.newton
            self.hess = hess = np.empty((P, P)) if want and self.has_exact_hessian and USE_MODE_JAC else None
        jj = _NO_JAC if jac is None else jac
        hh = _NO_JAC if hess is None or jac is None else hess
        gene = (self.s.data, self.s.groups, self.s.rows, self.PZ, self.y, self.cnt_gt, self.lgy)
        args = (*gene, phi, uu, grad, True, jj, hh)
        try:
            ok, val, _ = self.kernel(*args)
        except ZeroDivisionError:  # an extreme trial point (theta or a mean at 0): outside the usable region
            if u is None:
                self.jac = self.hess = None
            return -np.inf, grad
        if self.kernel is re_value_grad:
            self.kernel = _compiled(re_value_grad, args)
            self.s.compiled["value_grad"] = self.kernel
        if not ok or not np.isfinite(val) or not np.all(np.isfinite(grad)):
            if u is None:
                self.jac = self.hess = None
            return -np.inf, grad
        if self.s.prior is not None:
            pv, pg = self.s.prior.value_grad(phi)
            if not np.isfinite(pv):
                return -np.inf, grad
            val += pv
            grad += pg
        return float(val), grad

    @property
    def has_exact_hessian(self) -> bool:
        """Whether :meth:`exact_hessian` applies: no border (every term nested in the top-level factor) and
        the NB family (:mod:`.kernels._re_hessian`)."""
        d = self.s.data
        return USE_EXACT_HESSIAN and d.Q == d.NB and d.family == NB_FAMILY

    def exact_hessian(self, phi: NDArray[np.float64]) -> NDArray | None:
        """The exact Hessian of the objective at ``phi``, the parameters of ``self.u`` (evaluated there first
        if unknown); None where it does not apply or is not finite."""
        if self.hess is None and self.has_exact_hessian:
            want, self.want_hess = self.want_hess, True
            self.value_grad(phi)
            self.want_hess = want
        if self.hess is None or not np.all(np.isfinite(self.hess)):
            return None
        out = self.hess.copy()
        if self.s.prior is not None:
            out[np.diag_indices(phi.shape[0])] -= self.s.prior.curvature(phi)
        return out

    def predicted_modes(self, dphi: NDArray[np.float64]) -> NDArray[np.float64]:
        """A copy of the modes moved to first order by the parameter change ``dphi`` (a warm start)."""
        if self.jac is None:
            return self.u.copy()
        return self.u + self.jac @ dphi

    def hessian(
        self, phi: NDArray[np.float64], free: NDArray[np.bool_], *, central: bool = True, g0: NDArray | None = None
    ) -> NDArray:
        """Hessian of the log-likelihood by central (or forward) differences of the exact gradient,
        over the free parameters (zero rows and columns elsewhere). ``g0``: the gradient at ``phi``
        if known (forward differences)."""
        P = phi.shape[0]
        H = np.zeros((P, P))
        if not central and g0 is None:
            g0 = self.value_grad(phi, self.u.copy())[1]
        for i in np.flatnonzero(free):
            h = (1e-4 if central else 1e-5) * max(1.0, abs(phi[i]))
            gs = []
            for sgn in (1.0, -1.0) if central else (1.0,):
                ph = phi.copy()
                ph[i] += sgn * h
                gs.append(self.value_grad(ph, self.predicted_modes(ph - phi))[1])
            H[:, i] = (gs[0] - gs[1]) / (2.0 * h) if central else (gs[0] - g0) / h
        H = 0.5 * (H + H.T)
        H[~free, :] = 0.0
        H[:, ~free] = 0.0
        return H


#: Placeholder of ``jac`` when the modes' derivatives are not wanted.
_NO_JAC = np.empty((0, 0))
#: Whether the modes' derivatives warm-start the modes of trial points (line search, finite differences).
USE_MODE_JAC = True
#: Whether structures without a border take their fresh Hessians (the last Newton steps, the standard errors)
#: from the exact Hessian (:meth:`_Problem.exact_hessian`, one evaluation) instead of forward differences.
USE_EXACT_HESSIAN = True
#: Whether structures with an exact Hessian take Newton steps on it from the start (about 10 evaluations per
#: fit instead of about 20); a fit that then ends with any status flag is fitted again by BFGS and the
#: higher kept (:func:`_checked_by_bfgs`).
USE_NEWTON = True
CHECK_BY_BFGS = True
#: The statuses of a Newton fit that are checked by BFGS: every Newton fit that ended lower than BFGS's on the
#: Kang data ended with a variance at 0 (at the Poisson limit or not), and one ended not converged.
CHECKED_STATUS = SIGMA2_BOUNDARY | POISSON_LIMIT | NOT_CONVERGED | FAILED


def _compiled(dispatcher: Any, args: tuple) -> Callable:
    """The compiled function of a numba ``dispatcher`` for the types of ``args`` (already compiled by a
    call with them), to be called directly: the dispatcher types every field of the named tuples
    again on each call (about 60 microseconds, as much as an evaluation on blocks of cells)."""
    try:
        return dispatcher.get_overload(tuple(typeof(a, Purpose.argument) for a in args))
    except (KeyError, TypeError, ValueError):
        return dispatcher


def _gene_power_sums(
    s: REStructure, nzc: NDArray[np.int64], nzv: NDArray[np.float64]
) -> tuple[NDArray, tuple[NDArray, NDArray] | None]:
    """Per block, the gene's sums ``sum y eps^k`` over its non-zero cells ``nzc`` (counts ``nzv``), its
    total count and ``sum y offset``, and the sums of ``y^2`` and ``y exp(offset)``
    (:func:`.kernels._re_laplace.re_block_gene`)."""
    kk = FEW_ROWS_KMAX + 1
    bl = s.blocks
    if bl is None:
        return np.zeros((1, kk + 2)), None
    nb = bl.bstarts.size - 1
    PZ = np.empty((nb, kk + 2))
    y2 = np.empty(nb)
    ye = np.empty(nb)
    re_block_gene(nzc, nzv, bl.cbid, bl.cLw, s.rows.Lc, bl.coff, bl.ce, PZ, y2, ye)
    return PZ, (y2, ye)


def _start(s: REStructure, y: NDArray[np.float64], prob: _Problem | None = None) -> NDArray[np.float64]:
    """Starting values (``prob``: the gene's problem, if already set up; its modes are warm-started).

    A Poisson GLM for beta (a few IRLS steps) and a moment estimate of the dispersion; then, term by
    term (coarsest grouping factor first), penalised per-level Poisson fits of the term's effects
    with the earlier terms' effects in the offset, whose spread less their mean sampling variance
    estimates the term's covariance (:func:`_start_effects`); the modes start at these effects. Last, beta
    moves from the GLM's marginal mean to the model's conditional one (:func:`_lognormal_shift`; from
    :data:`COHORT_START_LEVELS` levels on).
    """
    if prob is None:
        prob = _Problem(s, np.ascontiguousarray(y, dtype=np.float64))
    if s.data.family != NB_FAMILY:
        return _start_glm(s, prob.y)
    X = s.data.X
    if s.blocks is not None:
        E, E2, off = s.blocks.esum, s.blocks.e2sum, np.zeros(X.shape[0])
    else:
        off = s.data.off
        E = E2 = np.ones(X.shape[0])
    ysum = prob.row_counts
    G = s.groups.X.shape[0]
    Eg = np.bincount(s.data.grp, weights=E * np.exp(off), minlength=G)  # per group, offsets in E
    yg = np.bincount(s.data.grp, weights=ysum, minlength=G)
    beta = _poisson_glm(s.groups.X, np.zeros(G), Eg, yg)
    if s.blocks is not None:
        disp = _block_dispersion(prob, E, E2, s.blocks.e3sum)
    else:
        mu = np.exp(np.clip(X @ beta + off, -30.0, 30.0))
        disp = max(0.05, float(((ysum - mu) ** 2 - mu).sum() / max((mu**2).sum(), 1e-10)))
    phi = np.zeros(s.n_params)
    phi[: s.p] = beta
    phi[-1] = float(np.clip(-np.log(disp), -5.0, 10.0))
    if USE_LEVEL_START:
        eta = _start_effects(s, prob, phi, (X @ beta + off, E, E2, ysum), (Eg, yg), disp)
        if START_LOGNORMAL and s.data.nk.shape[0] >= COHORT_START_LEVELS:
            phi[: s.p] -= _lognormal_shift(s, phi)
        if s.blocks is None:  # the dispersion again, around the means with the level effects
            mu = np.exp(np.clip(eta, -30.0, 30.0))
            disp = max(0.05, float(((ysum - mu) ** 2 - mu).sum() / max((mu**2).sum(), 1e-10)))
            phi[-1] = float(np.clip(-np.log(disp), -5.0, 10.0))
    else:
        for i in range(s.n_lambda):
            phi[s.p + i] = 0.3 if s.data.lam_r[i] == s.data.lam_c[i] else 0.0
    return phi


def _lognormal_shift(s: REStructure, phi: NDArray[np.float64]) -> NDArray[np.float64]:
    """How far the Poisson GLM's fixed effects of the start exceed those of the model: the GLM fits the
    marginal mean, ``E exp(x'beta + z'b) = exp(x'beta + z' G z / 2)`` with ``G`` the random effects'
    covariance (here the start's, from ``phi``), so its coefficients carry ``z_j' G z_j / 2`` of each row;
    returned as their least-squares fit on the design (exact when the ``z`` lie in its span, as a random
    slope on a fixed effect)."""
    d = s.data
    c = np.zeros(d.X.shape[0])
    for t, L in enumerate(s.cholesky(phi)):
        o, q = int(d.toff[t]), int(d.tq[t])
        ZL = d.zval[:, o : o + q] @ L
        c += 0.5 * np.einsum("jc,jc->j", ZL, ZL)
    return np.linalg.lstsq(d.X, c, rcond=None)[0]


def _block_dispersion(prob: _Problem, E: NDArray, E2: NDArray, E3: NDArray) -> float:
    """A moment estimate of the NB dispersion around each block's own mean (which absorbs the random
    effects), at least 0.05.

    With cells ``j`` of a block, ``e_j = exp(offset_j)``, means ``m e_j``, ``m^ = sum y / sum e`` and
    ``Ek = sum e_j^k``, the residual sum ``ss = sum (y_j - m^ e_j)^2`` has expectation ``m (E - E2 / E) +
    disp m^2 c`` with ``c = E2 - 2 E3 / E + E2^2 / E^2``: the block's own mean takes a share of its
    Poisson variance, which at a few cells per block and low counts outweighs the overdispersion
    (without it the estimate sat at its floor, and the outer iterations walked log theta down by 2-3).
    ``m^2`` is estimated by ``Y (Y - 1) / E^2`` (``Y`` the block's count), whose expectation is ``m^2 (1 +
    disp E2 / E^2)``: a few fixed-point steps solve for ``disp``. A block of one cell adds nothing."""
    y2sum, yesum = prob.moments  # type: ignore[misc]
    ysum = prob.row_counts
    m = ysum / E
    ss = y2sum - 2.0 * m * yesum + m * m * E2
    num = float((ss - m * (E - E2 / E)).sum())
    c = np.maximum(E2 - 2.0 * E3 / E + (E2 / E) ** 2, 0.0) * ysum * np.maximum(ysum - 1.0, 0.0) / (E * E)
    r = E2 / (E * E)
    disp = 0.05
    for _ in range(8):
        den = float((c / (1.0 + disp * r)).sum())
        disp = max(0.05, num / max(den, 1e-10))
    return disp


#: Whether :func:`_start` estimates the covariances from per-level fits (else Cholesky diagonals 0.3).
USE_LEVEL_START = True
#: Whether :func:`_start` moves the GLM's fixed effects from the marginal to the conditional mean
#: (:func:`_lognormal_shift`). At 1,000 donors x 50 cells (``benchmarks/cohort.py``) the random slope's
#: fits took 6 evaluations instead of 8 (median; 19 against 25 ms), the optimum the same.
START_LOGNORMAL = True
#: Whether a random intercept nested in the top-level random intercept has its start's variance corrected
#: for what its parent's per-level fits absorbed (:func:`_level_covariance`). At 1,000 donors x 50 cells,
#: ``(1 | donor/sample)`` took 5 evaluations instead of 7.5 (median; 22 against 29 ms), the optimum the same.
START_NESTED = True
#: :data:`START_LOGNORMAL` and :data:`START_NESTED` apply from this many levels of the top-level factor on.
#: With a handful of donors the start's covariance is a rough guess, and the shift it gives moves where some
#: fits end (Kang pDC and CD14 monocytes, 8 donors: a few genes at a variance or correlation boundary, where
#: the likelihood is flat and has several maxima, ended elsewhere, higher or lower, for 3 % less CPU).
COHORT_START_LEVELS = 100
#: Prior variance of the per-level fits of the start (keeps levels without counts finite).
START_PRIOR = 4.0
#: Smallest variance (along any direction) of a starting covariance.
START_VAR_FLOOR = 0.0025


def _poisson_glm(X: NDArray, off: NDArray, E: NDArray, ysum: NDArray) -> NDArray[np.float64]:
    """A few IRLS steps of the Poisson GLM of row totals ``ysum`` with means ``E exp(X beta + off)``
    (:func:`.kernels._re_outer.re_poisson_glm`; least squares when the normal equations fail)."""
    level = np.log(max(ysum.sum(), 0.5) / (E * np.exp(off)).sum())
    beta = np.linalg.lstsq(X, np.full(X.shape[0], level), rcond=None)[0]
    if re_poisson_glm(X, off, E, ysum, beta, 8):
        return beta
    for _ in range(8):
        eta = np.clip(X @ beta, -30.0, 30.0)
        W = np.maximum(np.exp(np.clip(eta + off, -30.0, 30.0)) * E, 1e-10)
        new = np.linalg.lstsq(X * np.sqrt(W)[:, None], (eta + (ysum - W) / W) * np.sqrt(W), rcond=None)[0]
        if not np.all(np.isfinite(new)):
            break
        beta = new
    return beta


def _start_effects(s: REStructure, prob: _Problem, phi: NDArray, rows: tuple, groups: tuple, disp: float) -> NDArray:
    """The Cholesky entries of ``phi`` and the modes ``prob.u`` from per-level fits of each term's effects
    (:func:`.kernels._re_outer.re_level_effects`), terms with fewer levels first: covariance = mean of
    ``b_l b_l'`` less the mean inverse information (:func:`_level_covariance`), eigenvalues floored at
    :data:`START_VAR_FLOOR`. ``rows = (linear predictor, E, E2, counts)`` of the kernels' rows (see
    :func:`_start`), ``groups = (E, counts)`` summed over their groups (offsets in ``E``), on which the fits'
    Poisson steps run. Returns the rows' linear predictor with the effects."""
    d, dg = s.data, s.groups
    cur, E, E2, ysum = rows
    cur = cur.copy()
    gcur = dg.X @ phi[: s.p]  # the groups' linear predictor without offsets
    u = np.zeros(d.Q)
    info: dict[int, tuple[NDArray, NDArray]] = {}
    for it in sorted(range(len(s.terms)), key=lambda k: s.terms[k].m):
        term = s.terms[it]
        q, o = term.q, int(d.toff[it])
        Z = np.ascontiguousarray(d.zval[:, o : o + q])
        lev = s.row_levels[it]
        glev = np.empty(dg.X.shape[0], dtype=np.int64)
        glev[d.grp] = lev  # a group's rows share their levels
        gZ = np.ascontiguousarray(dg.zval[:, o : o + q])
        b = np.empty((term.m, q))
        V = np.empty((term.m, q, q))
        fits = ((glev, gZ, gcur, groups[0], groups[0], groups[1]), (lev, Z, cur, E, E2, ysum))
        re_level_effects(*fits, disp, START_PRIOR, 4, b, V)
        w, U = np.linalg.eigh(_level_covariance(s, it, b, V))
        L = np.linalg.cholesky((U * np.maximum(w, START_VAR_FLOOR)) @ U.T)
        for i in range(s.n_lambda):
            if d.lam_t[i] == it:
                phi[s.p + i] = L[d.lam_r[i], d.lam_c[i]]
        cur += np.einsum("jc,jc->j", Z, b[lev])
        gcur += np.einsum("jc,jc->j", gZ, b[glev])
        idx = s.gpos[it][:, None] + np.arange(q)[None, :]
        u[idx] = np.linalg.solve(L, b.T).T
        info[it] = (L, V)
    prob.u = u
    prob.seed = (info, cur, E, E2, disp)
    return cur


def _level_covariance(s: REStructure, it: int, b: NDArray, V: NDArray) -> NDArray[np.float64]:
    """The start's covariance of term ``it`` from its per-level fits (effects ``b``, sampling variances ``V``):
    the mean of ``b_l b_l'`` less the mean ``V_l`` (diagonal for a ``||`` term).

    A random intercept nested in the top-level random intercept (``donor/sample``) is fitted after it, with
    its effects in the offset: each parent's effect took the mean of its ``k`` children's, so their spread is
    ``(1 - 1 / k)`` of their variance and of their noise, and the plain estimate sat at its floor
    (:data:`START_NESTED`, from :data:`COHORT_START_LEVELS` levels on)."""
    term, top = s.terms[it], s.terms[s.top]
    S = b.T @ b / term.m - V.mean(axis=0)
    k = term.m / top.m
    nested = it != s.top and s.nested[it] and term.scalar_intercept and top.scalar_intercept
    if START_NESTED and nested and k > 1.0 and top.m >= COHORT_START_LEVELS:
        S = (b.T @ b / term.m - V.mean(axis=0) * (1.0 - 1.0 / k)) * k / (k - 1.0)
    return np.diag(np.diag(S)) if term.diagonal else S


def _seed_hessian(prob: _Problem, phi: NDArray, g: NDArray, free: NDArray[np.bool_]) -> NDArray | None:
    """A first negative Hessian for BFGS from the start's by-products, with one gradient evaluation
    instead of one per parameter: the fixed effects' marginal information (NB weights at the start's
    linear predictors; the random effects, with the start's covariances, eliminated), each term's
    Fisher information of its Cholesky entries from its per-level effects (``b_l ~ N(0, L L' +
    V_l)``), and the log theta column by a forward difference of the exact gradient; the fixed-effect
    / covariance cross block is left 0. The log theta curvature can be negative at the start, as in
    a forward-difference Hessian (the Newton step takes absolute eigenvalues). None when the start
    left no such by-products or a number is not finite (then forward differences are used)."""
    if prob.seed is None or len(prob.seed[0]) != len(prob.s.terms):
        return None
    s, d = prob.s, prob.s.data
    info, cur, E, E2, disp = prob.seed
    P, p = phi.shape[0], s.p
    B = np.zeros((P, P))
    mu = E * np.exp(np.clip(cur, -50.0, 50.0))
    w = mu / (1.0 + disp * mu * E2 / (E * E))
    ok, info_beta = re_seed_fixed(d, re_amat(d, phi), w)
    if not ok:
        return None
    B[:p, :p] = info_beta
    for it, (L, V) in info.items():
        Sinv = np.linalg.inv(L @ L.T + V)
        idx = np.flatnonzero(d.lam_t == it)
        D = []
        for i in idx:
            r, c = d.lam_r[i], d.lam_c[i]
            Dm = np.zeros_like(L)
            Dm[r, :] += L[:, c]
            Dm[:, r] += L[:, c]
            D.append(np.einsum("lab,bc->lac", Sinv, Dm))
        for a, ia in enumerate(idx):
            for b, ib in enumerate(idx):
                B[p + ia, p + ib] = 0.5 * np.einsum("lab,lba->", D[a], D[b])
    if free[-1]:
        h = 1e-5 * max(1.0, abs(phi[-1]))
        ph = phi.copy()
        ph[-1] += h
        col = -(prob.value_grad(ph, prob.predicted_modes(ph - phi))[1] - g) / h
        B[:, -1] = B[-1, :] = col
    if s.prior is not None:
        B[np.diag_indices(P)] += s.prior.curvature(phi)
    B[~free, :] = 0.0
    B[:, ~free] = 0.0
    return B if np.all(np.isfinite(B)) else None


def _restart(s: REStructure, phi: NDArray[np.float64]) -> NDArray[np.float64]:
    """A second start after a boundary fit: the same beta and theta, each term's sds kept (at least
    0.3) and its correlations set to 0."""
    out = phi.copy()
    d = s.data
    for it, L in enumerate(s.cholesky(phi)):
        sd = np.maximum(np.sqrt(np.diag(L @ L.T)), 0.3)
        for i in range(s.n_lambda):
            if d.lam_t[i] == it:
                out[s.p + i] = sd[d.lam_r[i]] if d.lam_r[i] == d.lam_c[i] else 0.0
    out[-1] = min(out[-1], 10.0)
    return out


@dataclass(frozen=True)
class REFitOne:
    """The fit of one gene (see :func:`fit_re_one`)."""

    phi: NDArray[np.float64]
    """Outer parameters ``(beta, Cholesky entries, log theta)`` at the optimum."""
    loglik: float
    cov_phi: NDArray[np.float64]
    """Covariance of ``phi`` (inverse negative Hessian; rows of held parameters are NaN)."""
    modes: NDArray[np.float64]
    """Conditional modes ``b = Lambda u``, in the order of :meth:`REStructure.effect_order`."""
    n_iter: int
    n_eval: int
    status: int
    grad_max: float


def _newton_step(g: NDArray, H: NDArray, free: NDArray[np.bool_]) -> tuple[NDArray, float, bool]:
    """Newton step of a maximisation on the free parameters, with the negative Hessian's eigenvalues
    made positive (absolute value, floored). Returns the step, the decrement ``g' step`` and whether
    the negative Hessian was positive definite (:func:`.kernels._re_outer.re_newton_step`)."""
    step, dec, pd = re_newton_step(g, H, free)
    return step, float(dec), bool(pd)


def _line_search(prob: _Problem, phi: NDArray, val: float, step: NDArray, dec: float) -> tuple[NDArray, float, NDArray]:
    """Backtracking (Armijo) along ``step`` with log theta projected onto its bound; returns the new point.
    The first trial moves no parameter by more than :data:`MAX_STEP` (a far trial point costs many inner
    iterations and is rejected anyway)."""
    alpha = min(1.0, MAX_STEP / max(float(np.abs(step).max()), 1e-300))
    for _ in range(40):
        trial = phi + alpha * step
        trial[-1] = min(trial[-1], T_MAX)
        u = prob.predicted_modes(trial - phi)
        jac = np.empty_like(prob.jac) if prob.jac is not None else None
        hess = np.empty((phi.shape[0],) * 2) if prob.newton else None
        vt, gt = prob.value_grad(trial, u, jac, hess)
        if np.isfinite(vt) and vt >= val + 1e-4 * alpha * dec - 1e-12 * abs(val):
            prob.u, prob.jac, prob.hess = u, jac, hess
            return trial, vt, gt
        alpha *= 0.5
    return phi, val, np.array([])


def _maximise(
    prob: _Problem,
    phi: NDArray,
    max_iter: int,
    seed: bool = False,
    first: tuple[float, NDArray] | None = None,
    hold: NDArray[np.bool_] | None = None,
    stop_crawl: bool = False,
) -> tuple[NDArray, float, NDArray, NDArray, bool, int, NDArray, bool]:
    """Newton iterations on the exact Hessian (``prob.newton``), else quasi-Newton iterations on the exact
    gradient finished by Newton with a fresh Hessian.

    With ``prob.newton`` (structures without a border, :mod:`.kernels._re_hessian`) every accepted trial
    point computes the exact Hessian with its gradient, and each iteration is a Newton step on it (its
    eigenvalues made positive): about half the evaluations of BFGS. The rest of this docstring is the
    BFGS path.

    The negative Hessian starts as the start's information (``seed``, :func:`_seed_hessian`), else
    as forward differences of the gradient, and is updated by BFGS after each step; trial points
    start their modes at the first-order prediction from ``prob.jac``. When the Newton decrement
    falls below :data:`DEC_FRESH` with an updated matrix, the Hessian is computed afresh
    (:func:`_fresh_hessian`: exactly for structures without a border, else by forward differences of
    the exact gradient, one evaluation per parameter, whose truncation error, about 1e-5 relative, is
    far below what a standard error needs) and the last steps are Newton steps on it, not updated:
    convergence (a decrement below 1e-10) and the Hessian returned for the covariance rest on a fresh
    Hessian computed at most a few steps of decrement below :data:`DEC_FRESH` (well under a thousandth
    of a standard error) before the optimum.

    BFGS iterations that crawl (the decrement below :data:`DEC_STALL` and not cut tenfold in five steps,
    typically along a variance running to 0) get a fresh Hessian too, and a line search's first trial
    moves no parameter by more than :data:`MAX_STEP`.

    ``first``: the value and gradient at ``phi`` with ``prob.u`` its modes, if known (else evaluated).
    ``hold``: parameters held at their values in ``phi`` (a boundary, :func:`_boundary_points`).
    ``stop_crawl``: stop after :data:`CRAWL_STOP` crawling iterations in a row (see :data:`CRAWL_DEC`; the
    caller then tries the boundaries it may head for, :func:`_crawled`).

    Returns ``(phi, value, gradient, Hessian, converged, iterations, free, crawled)`` with ``prob.u`` the
    modes at ``phi``; the Hessian is the fresh one when converged.
    """
    val, g = prob.value_grad(phi) if first is None else first
    P = phi.shape[0]
    free = np.ones(P, dtype=bool) if hold is None else ~hold
    B: NDArray | None = None  # approximation of the negative Hessian
    fresh = False
    converged = False
    it = 0
    decs: list[float] = []
    crawl = 0  # crawling iterations in a row
    for it in range(1, max_iter + 1):
        held = prob.s.data.family != NB_FAMILY or (phi[-1] >= T_MAX - 3.0 and g[-1] >= -1e-6)
        if held and free[-1]:
            phi[-1] = T_MAX
            val, g = prob.value_grad(phi)
            B = None
        free[-1] = not held
        B, fresh = _iteration_matrix(prob, phi, g, free, (B, fresh), seed and it == 1)
        step, dec, pd = _newton_step(g, -B, free)
        decs.append(dec)
        slow = len(decs) > 5 and dec > 0.1 * decs[-6]
        stalled = slow and dec < DEC_STALL
        crawl = crawl + 1 if slow and dec < CRAWL_DEC else 0
        if stop_crawl and crawl >= CRAWL_STOP:
            return phi, val, g, -B, False, it, free, True
        if (dec < DEC_FRESH or stalled) and not fresh:
            B, fresh = -_fresh_hessian(prob, phi, free, g), True
            step, dec, pd = _newton_step(g, -B, free)
        if pd and dec < 1e-10:
            converged = True
            break
        if free[-1] and phi[-1] > 6.0 and step[-1] > 0.0 and (limit := _poisson_limit(prob, phi, val)):
            phi, val, g, B = (*limit, None)  # theta ran to the Poisson limit, higher there
            continue
        new, vnew, gnew = _line_search(prob, phi, val, step, dec)
        if gnew.size == 0:
            if fresh:
                converged = pd and dec < 1e-6
                break
            B = None
            continue
        if prob.hess is not None:
            B = None  # Newton: the exact Hessian at the new point (computed with its gradient), next iteration
        elif not (fresh and dec < DEC_FRESH):  # far from the optimum: update; near it: Newton on the fresh Hessian
            B, fresh = _bfgs(B, new - phi, g - gnew), False
        phi, val, g = new, vnew, gnew
        if prob.s.prior is None and np.abs(phi[: prob.s.p]).max() > SEPARATION_BOUND:
            break  # (with a prior the effects are bounded: a far intercept of a rare gene is no divergence)
    H = -B if B is not None else np.zeros((P, P))
    return phi, val, g, H, converged and fresh, it, free, False


def _iteration_matrix(
    prob: _Problem, phi: NDArray, g: NDArray, free: NDArray[np.bool_], current: tuple, seed: bool
) -> tuple[NDArray, bool]:
    """The negative Hessian of an iteration of :func:`_maximise` and whether it is fresh: Newton's exact one
    when the current point has it, else the BFGS matrix ``current = (B, fresh)`` if any, else the start's
    seed (``seed``, :func:`_seed_hessian`), else a fresh Hessian (:func:`_fresh_hessian`)."""
    B, fresh = current
    if prob.newton and prob.hess is not None and (Hx := prob.exact_hessian(phi)) is not None:
        return -Hx, True
    if B is None and seed and USE_SEED:
        B, fresh = _seed_hessian(prob, phi, g, free), False
    if B is None:
        B, fresh = -_fresh_hessian(prob, phi, free, g), True
    return B, fresh


def _fresh_hessian(prob: _Problem, phi: NDArray, free: NDArray[np.bool_], g: NDArray) -> NDArray:
    """The Hessian at ``phi`` over the free parameters (zero rows and columns elsewhere): exact where
    there is one (:meth:`_Problem.exact_hessian`, one evaluation), else by forward differences of the
    gradient ``g`` (one evaluation per free parameter)."""
    H = prob.exact_hessian(phi) if prob.has_exact_hessian else None
    if H is None:
        return prob.hessian(phi, free, central=False, g0=g)
    H[~free, :] = 0.0
    H[:, ~free] = 0.0
    return H


def _poisson_limit(prob: _Problem, phi: NDArray, val: float) -> tuple[NDArray, float, NDArray] | None:
    """``phi`` with log theta at its bound (the Poisson limit), its value and gradient, if higher than
    ``val`` (its modes then in ``prob.u``); else None."""
    trial = phi.copy()
    trial[-1] = T_MAX
    u = prob.u.copy()
    vt, gt = prob.value_grad(trial, u)
    if not vt > val:
        return None
    prob.u, prob.jac, prob.hess = u, None, None
    return trial, vt, gt


#: A crawl: iterations in a row whose decrement is below CRAWL_DEC and not cut tenfold in five steps; after
#: CRAWL_STOP of them the iterations stop for a boundary trial (:func:`_fit`).
CRAWL_DEC = 1e-4
CRAWL_STOP = 10
#: A variance component's sd below this (relative to the largest of its term, at least 1) is tried at 0
#: by the boundary trial after a crawl (:func:`_boundary_points`).
SD_SMALL = 0.05
#: Largest change of any parameter (log scale for the effects and log theta) in a line search's first trial.
MAX_STEP = 1.0
#: Whether a fit that converged on a boundary is restarted too (else only one that did not converge).
RESTART_CONVERGED = False
#: Whether the first BFGS matrix comes from the start's by-products (:func:`_seed_hessian`), else forward differences.
USE_SEED = True
#: Newton decrement below which the BFGS matrix is replaced by a fresh finite-difference Hessian.
DEC_FRESH = 1e-10
#: Below this decrement, BFGS iterations that have not cut the decrement tenfold in five steps (a crawl
#: along a flat ridge, typically a variance running to 0) are replaced by a fresh Hessian too.
DEC_STALL = 1e-6


def _bfgs(B: NDArray, s: NDArray, yv: NDArray) -> NDArray | None:
    """BFGS update of the negative Hessian ``B`` with step ``s`` and gradient change ``yv`` (of the
    negated objective). A finite-difference matrix that is not positive definite is first made so as
    the Newton step makes it (eigenvalues to their absolute values, floored) rather than discarded.
    None (recompute) when the curvature condition fails."""
    if not np.all(np.isfinite(B)):
        return None
    Bs = B @ s
    sBs = float(s @ Bs)
    if not sBs > 0.0:
        w, V = np.linalg.eigh(0.5 * (B + B.T))
        B = (V * np.maximum(np.abs(w), 1e-8 * max(1.0, float(np.abs(w).max())))) @ V.T
        Bs = B @ s
        sBs = float(s @ Bs)
    sy = float(s @ yv)
    if not (sy > 1e-12 * np.linalg.norm(s) * np.linalg.norm(yv)) or not sBs > 0.0:
        return None
    return B - np.outer(Bs, Bs) / sBs + np.outer(yv, yv) / sy


def _boundary_status(s: REStructure, phi: NDArray) -> int:
    """Flags for variances at 0 and singular correlation matrices."""
    status = 0
    for term, L in zip(s.terms, s.cholesky(phi), strict=True):
        S = L @ L.T
        v = np.diag(S)
        if np.any(v < VAR_ZERO):
            status |= SIGMA2_BOUNDARY
        elif term.q > 1 and not term.diagonal:
            sd = np.sqrt(v)
            if np.linalg.eigvalsh(S / np.outer(sd, sd)).min() < COR_SINGULAR:
                status |= CORRELATION_BOUNDARY
    return status


def fit_re_one(
    s: REStructure,
    y: NDArray[np.float64],
    *,
    max_iter: int = 100,
    nz: tuple[NDArray[np.int64], NDArray[np.float64]] | None = None,
) -> REFitOne:
    """Maximise the Laplace log-likelihood of one gene.

    Parameters
    ----------
    s
        The prepared structure (:func:`prepare_re`).
    y
        (n,) counts of the gene (float64).
    max_iter
        Outer Newton iterations.
    nz
        The non-zero cells of ``y`` (indices, counts), if known: saves passes over the zero cells.

    Returns
    -------
    An :class:`REFitOne`; with an unusable status its numbers are NaN.
    """
    P = s.n_params
    nan = REFitOne(np.full(P, np.nan), np.nan, np.full((P, P), np.nan), np.full(s.data.Q, np.nan), 0, 0, 0, np.nan)
    if not (nz[1].size > 0 if nz is not None else np.any(y > 0)):
        return REFitOne(**{**nan.__dict__, "status": ALL_ZERO})
    prob = _Problem(s, np.ascontiguousarray(y, dtype=np.float64), nz)
    if s.prior is None and _separated(s.data.X, prob.row_counts, s.data):
        return REFitOne(**{**nan.__dict__, "status": SEPARATION})
    phi = _start(s, prob.y, prob)
    first = prob.value_grad(phi)
    if not np.isfinite(first[0]):
        return REFitOne(**{**nan.__dict__, "status": FAILED})
    try:
        fit = _fit(s, prob, phi, max_iter, nan, first)
    except (np.linalg.LinAlgError, ValueError, ArithmeticError):  # non-finite numbers reached the dense algebra
        fit = REFitOne(**{**nan.__dict__, "status": FAILED, "n_eval": prob.n_eval})
    if prob.newton and fit.status & CHECKED_STATUS and CHECK_BY_BFGS:
        return _checked_by_bfgs(s, prob, fit, max_iter, nan)
    return fit


def _checked_by_bfgs(s: REStructure, prob: _Problem, fit: REFitOne, max_iter: int, nan: REFitOne) -> REFitOne:
    """A Newton fit that ended with a checked status (:data:`CHECKED_STATUS`), fitted again from the start
    by BFGS, whose path can reach another maximum: with few donors a random slope's likelihood has several
    on its variance boundaries, and Newton from the start ended lower on 20 of the 6,989 genes fitted in
    the Kang pDC cells (with a variance at 0). The BFGS fit is kept unless the Newton fit is higher by more
    than 1e-9; the evaluations of both are counted."""
    again = _Problem(s, prob.y, prob.nz)
    again.newton = False
    phi = _start(s, again.y, again)
    first = again.value_grad(phi)
    try:
        other = _fit(s, again, phi, max_iter, nan, first) if np.isfinite(first[0]) else nan
    except (np.linalg.LinAlgError, ValueError, ArithmeticError):
        other = nan
    n_eval = fit.n_eval + again.n_eval
    if np.isfinite(fit.loglik) and not other.loglik >= fit.loglik - 1e-9:
        return replace(fit, n_eval=n_eval)
    return replace(other, n_eval=n_eval)


def _fit(
    s: REStructure, prob: _Problem, phi: NDArray, max_iter: int, nan: REFitOne, first: tuple[float, NDArray]
) -> REFitOne:
    """The optimisation of :func:`fit_re_one` from the start ``phi`` (boundary trial after a crawl, restart,
    covariance, flags); ``first``: the value and gradient there."""
    P = s.n_params
    phi, val, g, H, converged, it, free, crawled = _maximise(
        prob, phi, max_iter, seed=True, first=first, stop_crawl=s.n_lambda > 0
    )
    if crawled:
        phi, val, g, H, converged, it2, free = _crawled(prob, phi, val, g, max_iter - it)
        it += it2
    boundary = _boundary_status(s, phi) if np.isfinite(val) and s.n_lambda else 0
    if boundary and (RESTART_CONVERGED or not converged):
        # the boundaries are stationary points of the Cholesky parameterisation: a fit that stopped on one
        # without converging restarts from the same fixed effects and theta with uncorrelated, non-zero sds
        # (one that converged has a negative definite Hessian there, a local maximum: benchmarks/restart_policy.py)
        u_best = prob.u.copy()
        prob.u, prob.jac, prob.hess = np.zeros_like(prob.u), None, None
        phi2, val2, g2, H2, conv2, it2, free2, _ = _maximise(prob, _restart(s, phi), max_iter)
        it += it2
        if val2 > val:
            phi, val, g, H, converged, free = phi2, val2, g2, H2, conv2, free2
            boundary = _boundary_status(s, phi)
        else:
            prob.u, prob.jac, prob.hess = u_best, None, None
    if not np.isfinite(val):
        return REFitOne(**{**nan.__dict__, "status": FAILED, "n_iter": it})
    if s.prior is None and np.abs(phi[: s.p]).max() > SEPARATION_BOUND:
        return REFitOne(**{**nan.__dict__, "status": SEPARATION, "n_iter": it, "n_eval": prob.n_eval})
    if not converged:
        Hx = prob.exact_hessian(phi) if prob.has_exact_hessian else None
        H = Hx if Hx is not None else prob.hessian(phi, free)
    idx = np.flatnonzero(free)
    cov = np.full((P, P), np.nan)
    status = 0 if converged else NOT_CONVERGED
    try:
        A = -H[np.ix_(idx, idx)]
        np.linalg.cholesky(A)
        cov[np.ix_(idx, idx)] = np.linalg.inv(A)
    except np.linalg.LinAlgError:
        status |= NOT_CONVERGED
        cov[np.ix_(idx, idx)] = np.linalg.pinv(-H[np.ix_(idx, idx)])
    if not free[-1] and s.data.family == NB_FAMILY:
        status |= POISSON_LIMIT
    status |= boundary
    modes = _modes_b(s, phi, prob.u)
    if s.prior is not None:  # report the log-likelihood, not the penalised objective
        val -= s.prior.value_grad(phi)[0]
    return REFitOne(phi, val, cov, modes, it, prob.n_eval, status, float(np.abs(g[free]).max()))


def _crawled(
    prob: _Problem, phi: NDArray, val: float, g: NDArray, max_iter: int
) -> tuple[NDArray, float, NDArray, NDArray, bool, int, NDArray]:
    """After a crawl (:func:`_maximise` with ``stop_crawl``): the best fit with a boundary held
    (:func:`_boundary_points`) if it converged, is at least as high and is a maximum across the boundary
    (:func:`_holds_across`), else the crawl resumed from where it stopped. Returns as :func:`_maximise`
    (without the crawl flag)."""
    u0, jac0, hess0 = prob.u.copy(), prob.jac, prob.hess
    best, it = None, 0
    for point, hold in _boundary_points(prob.s, phi):
        prob.u, prob.jac, prob.hess = u0.copy(), None, None
        res = _maximise(prob, point, max_iter, hold=hold)
        it += res[5]
        if res[4] and res[1] >= val and (best is None or res[1] > best[0][1]):
            best = (res, prob.u.copy(), hold)
    if best is not None and _holds_across(prob, best[0][0], best[1], best[2]):
        prob.u, prob.jac, prob.hess = best[1], None, None
        res = best[0]
        return (*res[:5], res[5] + it, res[6])
    prob.u, prob.jac, prob.hess = u0, jac0, hess0
    res = _maximise(prob, phi, max(max_iter - it, 1), first=(val, g))
    return (*res[:5], res[5] + it, res[6])


def _boundary_points(s: REStructure, phi: NDArray) -> list[tuple[NDArray, NDArray[np.bool_]]]:
    """The boundaries a crawl at ``phi`` may head for, each as a start with the parameters to hold:

    * a correlation at +-1: a diagonal entry of a term's Cholesky factor (not the first, with free entries
      left of it) at 0;
    * a variance component at 0: one whose sd is below :data:`SD_SMALL` of the largest of its term (at
      least 1), its row of the Cholesky factor zeroed, the rest of the covariance re-factored, its row
      and column held at 0.
    """
    d = s.data
    out = []
    for t, L in enumerate(s.cholesky(phi)):
        q = L.shape[0]
        pos = d.lam_pos[t, :q, :q]
        for j in range(1, q):
            if pos[j, j] >= 0 and np.any(pos[j, :j] >= 0):
                point, hold = phi.copy(), np.zeros(phi.shape[0], dtype=bool)
                point[pos[j, j]], hold[pos[j, j]] = 0.0, True
                out.append((point, hold))
        S = L @ L.T
        sd = np.sqrt(np.diag(S))
        for j in np.flatnonzero(sd < SD_SMALL * max(1.0, float(sd.max()))):
            keep = np.arange(q) != j
            Lk = np.zeros_like(L)
            Sk = S[np.ix_(keep, keep)]
            if Sk.size:
                Lk[np.ix_(keep, keep)] = np.linalg.cholesky(Sk + 1e-14 * np.eye(Sk.shape[0]))
            point, hold = phi.copy(), np.zeros(phi.shape[0], dtype=bool)
            mask = pos >= 0
            point[pos[mask]] = Lk[mask]
            line = np.concatenate([pos[j, : j + 1], pos[j:, j]])
            hold[line[line >= 0]] = True
            out.append((point, hold))
    return out


def _holds_across(prob: _Problem, phi: NDArray, u: NDArray, hold: NDArray[np.bool_]) -> bool:
    """Whether moving each held diagonal Cholesky entry off its boundary (0) by a small step lowers the
    objective to first order there: the boundary fit is then a maximum across it, not a saddle."""
    d = prob.s.data
    for i in np.flatnonzero(hold):
        if d.lam_r[i - prob.s.p] != d.lam_c[i - prob.s.p]:
            continue
        ph = phi.copy()
        ph[i] = 1e-3
        _, gh = prob.value_grad(ph, u.copy(), np.empty((u.shape[0], phi.shape[0])))
        if not gh[i] <= 0.0:
            return False
    return True


def _separated(X: NDArray[np.float64], y: NDArray[np.float64], d: REData | None = None) -> bool:
    """Whether a 0/1 column of the design (a factor level) has no counts in its cells, or all of them;
    in a binomial structure ``d``, also no failures (``trials - y``)."""
    if d is not None and d.family == BINOMIAL and _separated(X, d.trials - y):
        return True
    for k in range(X.shape[1]):
        col = X[:, k]
        on = col == 1.0
        if on.all() or not np.all(on | (col == 0.0)):
            continue
        if not np.any(y[on] > 0) or not np.any(y[~on] > 0):
            return True
    return False


def _modes_b(s: REStructure, phi: NDArray, u: NDArray) -> NDArray:
    """Conditional modes on the scale of ``b`` (``b = L_t u`` per level)."""
    b = np.empty_like(u)
    for it, (term, L) in enumerate(zip(s.terms, s.cholesky(phi), strict=True)):
        idx = s.gpos[it][:, None] + np.arange(term.q)[None, :]
        b[idx] = u[idx] @ L.T
    return b[s.effect_order()]


def varcomp(s: REStructure, phi: NDArray) -> NDArray[np.float64]:
    """Variances and correlations (``VarCorr``) in the order of :meth:`REStructure.varcomp_names`.

    A variance below :data:`VAR_ZERO` is reported as 0 and its correlations as NaN; a correlation
    within :data:`COR_SINGULAR` of +-1 as +-1.
    """
    out: list[float] = []
    for term, L in zip(s.terms, s.cholesky(phi), strict=True):
        S = L @ L.T
        v = np.diag(S).copy()
        zero = v < VAR_ZERO
        out += list(np.where(zero, 0.0, v))
        if not term.diagonal:
            sd = np.sqrt(v)
            for i in range(term.q):
                for k in range(i + 1, term.q):
                    c = S[i, k] / (sd[i] * sd[k]) if not (zero[i] or zero[k]) else np.nan
                    if abs(c) > 1.0 - COR_SINGULAR:
                        c = float(np.sign(c))
                    out.append(c)
    return np.asarray(out, dtype=np.float64)


def linear_predictor_rows(s: REStructure, phi: NDArray) -> NDArray[np.float64]:
    """Rows of ``Z Lambda`` (n, R) at ``phi`` (for tests and diagnostics)."""
    return re_amat(s.data, phi)


def laplace_at(s: REStructure, y: NDArray[np.float64], phi: NDArray[np.float64]) -> float:
    """The Laplace log-likelihood of one gene at given parameters (modes converged from 0)."""
    prob = _Problem(s, np.ascontiguousarray(y, dtype=np.float64))
    return prob.value_grad(np.asarray(phi, dtype=np.float64))[0]


def phi_from_varcomp(
    s: REStructure, beta: NDArray[np.float64], vc: NDArray[np.float64], theta: float
) -> NDArray[np.float64]:
    """Outer parameters from fixed effects, variance components (order of :meth:`REStructure.varcomp_names`)
    and theta (capped at the Poisson limit ``exp(T_MAX)``): the Cholesky factors of the covariances."""
    phi = np.zeros(s.n_params)
    phi[: s.p] = beta
    phi[-1] = min(float(np.log(theta)), T_MAX)
    k = 0
    d = s.data
    for it, term in enumerate(s.terms):
        q = term.q
        v = np.asarray(vc[k : k + q], dtype=np.float64)
        k += q
        S = np.diag(v)
        if not term.diagonal:
            for i in range(q):
                for j in range(i + 1, q):
                    S[i, j] = S[j, i] = vc[k] * np.sqrt(v[i] * v[j])
                    k += 1
        w, V = np.linalg.eigh(S)
        L = (
            np.linalg.cholesky(S + 1e-14 * np.eye(q))
            if w.min() > 0
            else np.linalg.qr((V * np.sqrt(np.maximum(w, 0))).T)[1].T
        )
        for i in range(s.n_lambda):
            if d.lam_t[i] == it:
                phi[s.p + i] = L[d.lam_r[i], d.lam_c[i]]
    return phi


def _trials(family: int, trials: ArrayLike | None, n: int) -> NDArray[np.float64]:
    """The binomial trials of the rows, checked (a placeholder of length 0 for other families)."""
    if family != BINOMIAL:
        return np.zeros(0)
    t = np.ascontiguousarray(trials if trials is not None else np.full(n, np.nan), dtype=np.float64)
    if t.shape != (n,) or not np.all(np.isfinite(t)) or np.any(t < 0):
        msg = f"trials: a finite non-negative number per row is needed ({n} rows)."
        raise ValueError(msg)
    return t


def with_trials(s: REStructure, trials: ArrayLike) -> REStructure:
    """The binomial structure ``s`` with other trials per row (e.g. each cell type against a reference)."""
    t = _trials(BINOMIAL, trials, s.data.X.shape[0])
    return replace(s, data=s.data._replace(trials=t), compiled=s.compiled)


def _glm_constant(d: REData, y: NDArray[np.float64]) -> float:
    """What :func:`re_value_grad` subtracts from the rows' sum of q for a family without dispersion:
    ``-sum log C(n, y)`` (binomial) or ``sum log y!`` (Poisson), so that the value is the log-likelihood."""
    if d.family == BINOMIAL:
        n = d.trials
        return float(-(gammaln(n + 1.0) - gammaln(y + 1.0) - gammaln(n - y + 1.0)).sum())
    return float(gammaln(y + 1.0).sum())


def _start_glm(s: REStructure, y: NDArray[np.float64]) -> NDArray[np.float64]:
    """Starting values of a family without dispersion: beta of the GLM without random effects (IRLS),
    each term's variances from the excess spread of the rows' working residuals (shared equally by the
    terms, at least 0.01), correlations 0, theta held at its bound."""
    d = s.data
    resid, w, beta = _glm_irls(d, y)
    phi = np.zeros(s.n_params)
    phi[: s.p] = beta
    use = w > 1e-6  # rows with information (binomial rows without trials have none)
    excess = float(np.var(resid[use]) - np.mean(1.0 / w[use])) if use.sum() > 1 else 0.0
    sd = np.sqrt(max(excess / len(s.terms), 0.01))
    for i in range(s.n_lambda):
        phi[s.p + i] = sd if d.lam_r[i] == d.lam_c[i] else 0.0
    phi[-1] = T_MAX
    return phi


def _glm_irls(d: REData, y: NDArray[np.float64], iters: int = 25) -> tuple[NDArray, NDArray, NDArray]:
    """IRLS of the binomial (logit) or Poisson (log) GLM of the rows without random effects; returns
    the rows' working residuals ``(y - mean) / w`` (empirical logits less the fit), weights and beta
    (each coefficient within +-20)."""
    X, off = d.X, d.off
    binom = d.family == BINOMIAL
    n = d.trials if binom else np.ones_like(y)
    emp = np.log((y + 0.5) / (n - y + 0.5)) if binom else np.log(y + 0.5)
    beta = np.linalg.lstsq(X, emp - off, rcond=None)[0]
    for _ in range(iters):
        eta = np.clip(X @ beta + off, -30.0, 30.0)
        mean = n * expit(eta) if binom else np.exp(eta)
        w = np.maximum(mean * (1.0 - expit(eta)) if binom else mean, 1e-8)
        z = eta - off + (y - mean) / w
        sw = np.sqrt(w)
        new = np.clip(np.linalg.lstsq(X * sw[:, None], z * sw, rcond=None)[0], -20.0, 20.0)
        done = np.max(np.abs(new - beta)) < 1e-8
        beta = new
        if done:
            break
    eta = np.clip(X @ beta + off, -30.0, 30.0)
    mean = n * expit(eta) if binom else np.exp(eta)
    w = np.maximum(mean * (1.0 - expit(eta)) if binom else mean, 1e-8)
    return (y - mean) / w, w, beta
