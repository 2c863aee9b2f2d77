"""Numba kernels for the negative binomial GLMM with one scalar random effect per donor block.

Everything here works on plain arrays and the small named tuples of :mod:`._bundles`. Cells are
sorted so that each donor is a contiguous block ``starts[i]:starts[i + 1]``; the random-effect
vector of a block has length one (a random intercept), and all per-block work is done in
functions that take the block bounds, so that blocks with a longer random-effect vector can later
reuse the same outer optimiser.

Notation (see ``docs/model.md``): for one gene, cell ``j`` in donor ``i``,

    eta_ij = x_ij' beta + o_ij + b_i,   mu = exp(eta),   theta = exp(t),   sigma^2 = exp(s)

The NB log-density is split as

    log NB(y; mu, theta) = C(y, theta) - lgamma(y + 1) + q(eta, t, y)
    C(y, theta)          = sum_{k < y} log1p(k / theta)          (no dependence on eta)
    q(eta, t, y)         = y * eta - (y + theta) * log1p(mu / theta)

which is exact and stays accurate as ``theta -> inf`` (the Poisson limit). ``C`` summed over cells
only needs ``cnt_gt[k]`` = number of cells with ``y > k``: a table of the gene's distinct counts.

The outer parameter vector is ``phi = (beta_1..beta_p, s, t)``. The Laplace approximation of the
marginal log-likelihood and its exact gradient and Hessian in ``phi`` (including the implicit
dependence of the conditional modes ``b_i^`` on ``phi``) are assembled per donor from sums of
per-cell derivatives of ``q`` up to fourth order in ``eta``.

Modules, each importing only the ones above it:

* ``_jit``: compilation options; ``_bundles``: the named tuples passed between the kernels, among
  them the three paths of a fit, and :func:`by_path`, which dispatches a call on the path's type;
* ``_cell``: per-cell pieces and the count table; ``_vector``: vectorised exp / log1p and chunk sums;
* ``_linalg``: Cholesky factors, solves and inverses of the tiny dense systems, and the
  block-diagonal-plus-border Hessians of general random-effect structures (Schur complement on
  the border);
* ``_laplace``: the general Laplace / AGQ value, conditional modes, gradient and Hessian;
* ``_few_rows``: the fast path for designs with few distinct rows (sums by power series);
* ``_start``: starting values; ``_optimise``: evaluation, Newton maximisers, one gene;
* ``_block``: the path of a model, and a block of genes from CSC arrays;
* ``_sparse``: CSR -> CSC panels; ``_order``: the order of the cells;
* ``_re_laplace``, ``_re_outer``: general random-effect structures (Laplace value, modes and exact
  gradient; starting values and the outer Newton step), used by ``scglmm._core._re``.

Compilation: the block kernel ``_block.fit_block_csc`` is compiled for the path of the model
(:func:`_block.model_path`: the few-rows fast path, the general Laplace kernel or adaptive
Gauss-Hermite), and the steps that differ between the paths are stubs that choose their
implementation from the path's type when numba compiles them, so a fit compiles only its own path
(the README's first command: 71 signatures instead of 135, see
``benchmarks/results/compile_time.md``). Keep one compiled signature per
function and path: pass flags that take both values as numpy bools (literal ``True`` / ``False``
arguments compile a function twice), arrays as contiguous float64 / int64, and copy arrays with
``_linalg._copy`` rather than ``a[:] = b`` (numba's shape-mismatch error costs seconds to compile).
``python benchmarks/compile_time.py`` lists what a cold run compiles and how long each function takes.

Numba caches each function on disk next to its module and does not notice when a function it
calls from another module changes: after editing a kernel module, clear ``__pycache__`` here.
"""
