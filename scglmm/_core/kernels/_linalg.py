"""Small dense linear algebra: Cholesky factors, solves and inverses of the tiny systems (q is small;
no LAPACK calls and no exceptions inside nogil code), and the block-diagonal-plus-border Hessians of
general random-effect structures.

The random effects of a general structure are ordered block by block (block ``k``: the effects of
every term nested in level ``k`` of the top-level factor, ``nk[k]`` of them, global positions
``bstart[k]:bstart[k] + nk[k]``) and then the border (the ``nc`` effects of crossed terms, global
positions ``NB:NB + nc``). The Hessian of the inner problem is

    H = [[A, B], [B', C]],   A = diag(A_1, ..., A_K)

and is factored exactly by a Schur complement on the border: a Cholesky factor of every ``A_k``,
``M_k = A_k^{-1} B_k``, and a Cholesky factor of ``S = C - sum_k B_k' M_k``. Work per factorisation:
``sum_k (nk^3 + nk^2 nc + nk nc^2) + nc^3``, linear in the number of top-level levels.

Each block's matrices are kept in a local index space of ``nmax + nc`` rows: the block's own
effects at ``0 .. nk[k] - 1`` (padded to ``nmax``), the border at ``nmax .. nmax + nc - 1``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ._jit import JIT as _JIT


@njit(**_JIT)
def _cholesky(M, L, n):
    """Cholesky factor of the leading n x n block of symmetric M into the leading block of L (lower
    triangle; its upper triangle set to 0). Returns False if that block is not positive definite."""
    for j in range(n):
        s = M[j, j]
        for k in range(j):
            s -= L[j, k] * L[j, k]
        if not s > 0.0 or not math.isfinite(s):
            return False
        L[j, j] = math.sqrt(s)
        for i in range(j + 1, n):
            s = M[i, j]
            for k in range(j):
                s -= L[i, k] * L[j, k]
            L[i, j] = s / L[j, j]
        for i in range(j):
            L[i, j] = 0.0
    return True


@njit(**_JIT)
def _chol_solve(L, n, x):
    """Solve (L L') z = x in place for the leading n entries of x (L from :func:`_cholesky`)."""
    for i in range(n):
        s = x[i]
        for k in range(i):
            s -= L[i, k] * x[k]
        x[i] = s / L[i, i]
    for i in range(n - 1, -1, -1):
        s = x[i]
        for k in range(i + 1, n):
            s -= L[k, i] * x[k]
        x[i] = s / L[i, i]


@njit(**_JIT)
def _spd_inverse(M, out):
    """Inverse of a symmetric positive definite matrix; False if not PD."""
    n = M.shape[0]
    L = np.empty((n, n))
    if not _cholesky(M, L, n):
        return False
    col = np.empty(n)
    for k in range(n):
        col[:] = 0.0
        col[k] = 1.0
        _chol_solve(L, n, col)
        for i in range(n):
            out[i, k] = col[i]
    return True


@njit(**_JIT)
def _copy(dst, src):
    """``dst[:] = src`` for vectors of the same length, without numba's shape check (whose error
    message machinery costs seconds of compilation)."""
    for i in range(dst.shape[0]):
        dst[i] = src[i]


@njit(**_JIT)
def _copy2(dst, src):
    """``dst[:, :] = src`` for matrices of the same shape (as :func:`_copy`)."""
    for i in range(dst.shape[0]):
        for j in range(dst.shape[1]):
            dst[i, j] = src[i, j]


@njit(**_JIT)
def block_factor(Tk, nk, nmax, nc, LA, M, LS):
    """Factor H from the per-block sums ``Tk`` (K, nmax + nc, nmax + nc) of ``w a a'`` (no identity).

    Fills ``LA`` (K, nmax, nmax), ``M`` (K, nmax, nc) and ``LS`` (nc, nc). Returns
    ``(ok, log det H)`` with H = sum of the blocks + identity.
    """
    K = nk.shape[0]
    S = np.eye(nc)
    A = np.empty((nmax, nmax))
    col = np.empty(nmax)
    logdet = 0.0
    for k in range(K):
        n = nk[k]
        for i in range(n):
            for j in range(n):
                A[i, j] = Tk[k, i, j]
            A[i, i] += 1.0
        if not _cholesky(A, LA[k], n):
            return False, 0.0
        for i in range(n):
            logdet += 2.0 * math.log(LA[k, i, i])
        for c in range(nc):
            for i in range(n):
                col[i] = Tk[k, i, nmax + c]
            _chol_solve(LA[k], n, col)
            for i in range(n):
                M[k, i, c] = col[i]
        for c1 in range(nc):
            for c2 in range(nc):
                s = Tk[k, nmax + c1, nmax + c2]
                for i in range(n):
                    s -= Tk[k, i, nmax + c1] * M[k, i, c2]
                S[c1, c2] += s
    if not _cholesky(S, LS, nc):
        return False, 0.0
    for c in range(nc):
        logdet += 2.0 * math.log(LS[c, c])
    return True, logdet


@njit(**_JIT)
def block_solve(LA, M, LS, nk, bstart, NB, rhs, out):
    """out = H^{-1} rhs (global effect order) from the factors of :func:`block_factor`."""
    K = nk.shape[0]
    nc = LS.shape[0]
    rc = np.empty(nc)
    for c in range(nc):
        rc[c] = rhs[NB + c]
    for k in range(K):
        b0 = bstart[k]
        for c in range(nc):
            s = 0.0
            for i in range(nk[k]):
                s += M[k, i, c] * rhs[b0 + i]
            rc[c] -= s
    _chol_solve(LS, nc, rc)
    for c in range(nc):
        out[NB + c] = rc[c]
    y = np.empty(LA.shape[1])
    for k in range(K):
        b0 = bstart[k]
        n = nk[k]
        for i in range(n):
            y[i] = rhs[b0 + i]
        _chol_solve(LA[k], n, y)
        for i in range(n):
            s = y[i]
            for c in range(nc):
                s -= M[k, i, c] * rc[c]
            out[b0 + i] = s


@njit(**_JIT)
def block_local_inverse(LA, M, LS, nk, nmax, E):
    """The entries of H^{-1} each block's cells need: E[k] over (block k's effects, border).

    ``E[k][:nk, :nk] = A_k^{-1} + M_k S^{-1} M_k'``, ``E[k][:nk, nmax:] = -M_k S^{-1}``,
    ``E[k][nmax:, nmax:] = S^{-1}``.
    """
    K = nk.shape[0]
    nc = LS.shape[0]
    Sinv = np.zeros((nc, nc))
    e = np.empty(max(nc, 1))
    for c in range(nc):
        e[:nc] = 0.0
        e[c] = 1.0
        _chol_solve(LS, nc, e)
        for i in range(nc):
            Sinv[i, c] = e[i]
    MS = np.empty((nmax, nc))
    col = np.empty(max(nmax, 1))
    for k in range(K):
        n = nk[k]
        for i in range(n):
            for c in range(nc):
                s = 0.0
                for c2 in range(nc):
                    s += M[k, i, c2] * Sinv[c2, c]
                MS[i, c] = s
        for j in range(n):
            col[:n] = 0.0
            col[j] = 1.0
            _chol_solve(LA[k], n, col)
            for i in range(n):
                s = col[i]
                for c in range(nc):
                    s += MS[i, c] * M[k, j, c]
                E[k, i, j] = s
        for i in range(n):
            for c in range(nc):
                E[k, i, nmax + c] = -MS[i, c]
                E[k, nmax + c, i] = -MS[i, c]
        for c1 in range(nc):
            for c2 in range(nc):
                E[k, nmax + c1, nmax + c2] = Sinv[c1, c2]
