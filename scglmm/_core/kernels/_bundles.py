"""The named tuples passed to and between the kernels (numba types them like tuples, fields by name).

A model's cells, its quadrature and its few-rows data are prepared once per fit (see
``scglmm._core._design``), with the path of the fit (:func:`._block.model_path`, which also finds
the design's :class:`DesignColumns`); :class:`Gene` is built inside the kernels for each gene.

A fit takes one of three paths, each a bundle of its own type: :class:`FewRowsPath` (the fast path
for designs with few distinct rows, Laplace objective), :class:`LaplacePath` (the general Laplace
kernel) and :class:`AGQPath` (adaptive Gauss-Hermite quadrature). The kernels are compiled per
argument type, and the functions whose work differs between the paths choose their implementation
from the type of the path (see :mod:`._optimise`), so that numba compiles only the functions of
the path a fit takes.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable

from numba.extending import overload

from ._jit import JIT

#: Compilation options of the implementations chosen by :func:`by_path` (compiled into their caller,
#: which is cached: no cache of their own).
_INNER = {k: v for k, v in JIT.items() if k != "cache"}

Cells = namedtuple("Cells", ["pos", "X", "off", "starts"])
Cells.__doc__ = """The cells of a model in donor-sorted order.

pos : (n,) int64
    Sorted position of each input row (cell).
X : (n, p) float64
    Fixed-effect design, sorted.
off : (n,) float64
    Log offsets, sorted.
starts : (m + 1,) int64
    Bounds of the cells of each level of the random-effect term (donor ``i`` owns
    ``starts[i]:starts[i + 1]``). One term for now: the donor random intercept.
"""

Quadrature = namedtuple("Quadrature", ["nodes", "logw"])
Quadrature.__doc__ = (
    """Adaptive Gauss-Hermite rule: nodes z_k and log(w_k) + z_k^2 (one node: the Laplace approximation)."""
)

FewRows = namedtuple("FewRows", ["on", "Xb", "Lw", "o_ref", "PA", "Lc", "bstarts", "dblk"])
FewRows.__doc__ = """Precomputed data of the fast path for designs with few distinct rows.

on : bool
    Whether the fast path applies (otherwise the arrays are placeholders of the right types).
Xb : (nb, p) float64
    Design row of each block (cells of one donor sharing a design row and a narrow range of offsets).
Lw : (n,) float64
    ``exp(off - o_ref)`` per sorted cell.
o_ref : float
    Reference offset (the largest).
PA : (nb, FEW_ROWS_KMAX + 1) float64
    Centred power sums ``sum_j (Lw_j / Lc_k - 1)^k`` of each block.
Lc : (nb,) float64
    Centre of each block's range of ``Lw``.
bstarts : (nb + 1,) int64
    Block bounds in the sorted cells.
dblk : (m + 1,) int64
    Donor ``i`` owns blocks ``dblk[i]:dblk[i + 1]``.
"""

Gene = namedtuple("Gene", ["nz_pos", "nz_y", "nz_starts", "PZ"])
Gene.__doc__ = """One gene's counts as lists of its non-zero cells.

nz_pos : (nnz,) int64
    Sorted positions of the cells with a non-zero count, listed block by block (donor by donor when
    the fast path is off), in increasing position within a block.
nz_y : (nnz,) float64
    Their counts.
nz_starts : (blocks + 1,) int64
    Bounds of each block's entries in ``nz_pos`` / ``nz_y``.
PZ : (nb, FEW_ROWS_KMAX + 3) float64
    Fast path only: y-weighted centred power sums per block, then its total count and sum of y * offset.
"""

DesignColumns = namedtuple("DesignColumns", ["cell_level", "two_valued", "first_value"])
DesignColumns.__doc__ = """Facts about the design's columns used by every gene.

cell_level : int
    The only column varying within some donor, -1 if none does, -2 if several do.
two_valued : (p,) bool
    Whether each column takes exactly two values (checked for separation).
first_value : (p,) float64
    The first value of each column.
"""

BlockOut = namedtuple("BlockOut", ["phi", "modes", "cov", "loglik", "n_iter", "status", "grad_max"])
BlockOut.__doc__ = """Outputs of a block of G genes, row g for gene g (written by the kernels).

phi : (G, p + 2) float64
    beta, log sigma^2, log theta.
modes : (G, m) float64
    Conditional modes of the donor effects.
cov : (G, p + 2, p + 2) float64
    Inverse negative Hessian over the free parameters (NaN elsewhere).
loglik : (G,) float64
n_iter : (G,) int64
status : (G,) int64
    Status bits (``scglmm._core._status``).
grad_max : (G,) float64
    Largest absolute gradient entry over the free parameters.
"""

REData = namedtuple(
    "REData",
    ["X", "off", "zval", "gidx", "lidx", "blk", "rterm", "rcoef", "toff", "tq", "lam_pos", "lam_t", "lam_r",
     "lam_c", "nk", "bstart", "nmax", "NB", "Q", "bptr", "bcol", "eptr", "efirst", "cptr", "crow", "family",
     "trials", "grp"],
)  # fmt: skip
REData.__doc__ = """A general random-effect structure as the kernels of :mod:`._re_laplace` take it.

Cell ``j`` has ``R = sum_t q_t`` random-effect entries ``r`` (term ``rterm[r]``, coefficient
``rcoef[r]``; term ``t`` owns entries ``toff[t] : toff[t] + tq[t]``).

X : (n, p) float64
    Fixed-effect design.
off : (n,) float64
    Log offsets.
zval : (n, R) float64
    Random-effect covariates of each cell (``Z`` before the Cholesky factor).
gidx, lidx : (n, R) int64
    Global position of each entry's effect, and its position in the cell's block-local space
    (the block's own effects, then the border effects its cells touch; see :mod:`._linalg`).
blk : (n,) int64
    Top-level block of each cell.
rterm, rcoef : (R,) int64; toff, tq : (T,) int64
    Entry -> term and coefficient; term -> first entry and number of coefficients.
lam_pos : (T, qmax, qmax) int64
    Position in the outer parameter vector of each entry of each term's Cholesky factor (-1: 0).
lam_t, lam_r, lam_c : (NL,) int64
    Term, row and column of the Cholesky parameter ``p + i``.
nk, bstart : (K,) int64
    Effects in each top-level block and their first global position.
nmax, NB, Q : int
    Largest block, number of block effects (the border starts there), total number of effects.
bptr : (K + 1,) int64; bcol : int64
    The border effects (0 .. Q - NB - 1, increasing) that the cells of block ``k`` touch:
    ``bcol[bptr[k]:bptr[k + 1]]``.
eptr, efirst, cptr, crow : int64
    The border's envelope (:func:`._linalg.envelope`): row ``i`` of the border x border matrices holds
    columns ``efirst[i] .. i``, flat from ``eptr[i]``; ``crow[cptr[j]:cptr[j + 1]]`` the rows below ``j``
    holding column ``j``.
family : int
    The response family of the rows (:mod:`._cell`: ``NB`` 0, ``BINOMIAL`` 1 with a logit link, ``POISSON``
    2); the kernels branch on it row by row, so that every family shares them.
trials : (n,) float64
    Binomial trials of each row (the family ``BINOMIAL``; a placeholder of length 0 otherwise).
grp : (n,) int64
    The group of each row: rows sharing their design row, ``Z`` row and levels (a donor x condition, say,
    cut into blocks by offset) form a group. Everything the kernels do after a pass over the rows (the sums
    of ``H``, the gradient, the modes' derivatives, the exact Hessian) is linear in the rows' derivatives,
    so it runs over the groups, on their sums (:func:`._re_hessian.group_sums`), with the groups' own
    ``REData`` (``REStructure.groups``, whose ``grp`` is ``0 .. G - 1``).
"""


FewRowsPath = namedtuple("FewRowsPath", ["cells", "few"])
FewRowsPath.__doc__ = """The few-rows fast path, Laplace objective: :class:`Cells` and :class:`FewRows` (``on``)."""

LaplacePath = namedtuple("LaplacePath", ["cells", "columns"])
LaplacePath.__doc__ = """The general Laplace kernel: :class:`Cells` and the design's :class:`DesignColumns`."""

AGQPath = namedtuple("AGQPath", ["cells", "quad", "few", "columns"])
AGQPath.__doc__ = """Adaptive Gauss-Hermite quadrature (more than one node): :class:`Cells`, the
:class:`Quadrature`, :class:`FewRows` (with ``few.on``, the starting values and the lists of non-zero
cells come from its blocks, as for the fast path; the objective is summed cell by cell) and the
design's :class:`DesignColumns`."""


def by_path(few_rows: Callable, laplace: Callable, agq: Callable) -> Callable[[Callable], Callable]:
    """Make a stub dispatch on its path argument (the first bundle of a path type among its
    arguments) when numba compiles a call of it.

    ``few_rows``, ``laplace`` and ``agq`` are functions with the stub's parameters (``None``: no
    implementation for that path); a kernel calling the stub with a :class:`FewRowsPath` runs (and
    compiles) only ``few_rows``, and so on. A numba dispatcher given as an implementation is
    compiled from its Python function, as the implementation itself, rather than called from one:
    every function level costs compilation time, as numba optimises each function again with all
    it calls. The stub itself is not callable from Python.
    """

    def decorate(stub: Callable) -> Callable:
        table = {
            FewRowsPath: getattr(few_rows, "py_func", few_rows),
            LaplacePath: getattr(laplace, "py_func", laplace),
            AGQPath: getattr(agq, "py_func", agq),
        }

        def typing(*args):  # argument types -> the implementation for that path (None: no match)
            for a in args:
                impl = table.get(getattr(a, "instance_class", None))
                if impl is not None:
                    return impl
            return None

        overload(stub, jit_options=_INNER, strict=False)(typing)
        return stub

    return decorate


RERows = namedtuple("RERows", ["on", "PA", "Lc", "o_ref", "logLc", "inv_k"])
RERows.__doc__ = """Collapsed rows of a general random-effect structure (see :mod:`._re_laplace`).

When ``on``, the rows of an :class:`REData` are blocks of cells sharing the fixed design row, the
random-effect covariates and levels, with offsets within a relative ``FEW_ROWS_RHO`` of the block
centre (as in :mod:`._few_rows`); the row's offset is 0 and each gene's sums over a block's cells
come from Taylor series in these gene-independent power sums and the gene's own (``PZ``).

on : bool
    Whether the rows are blocks (False: one row per cell, the other fields are placeholders).
PA : (B, KMAX + 1) float64
    Centred power sums of each block's offsets, ``sum_j (Lw_j / Lc_b - 1)^k``.
Lc : (B,) float64
    Block centres of ``Lw = exp(offset - o_ref)``.
o_ref : float
    Reference offset.
logLc : (B,) float64
    ``log(Lc)``.
inv_k : (KMAX + 1,) float64
    ``1 / k`` (0 at k = 0).
"""
