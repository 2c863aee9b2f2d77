"""Small dense linear algebra: Cholesky factors, solves and inverses of the tiny systems (q is small;
no LAPACK calls and no exceptions inside nogil code), and the block-diagonal-plus-border Hessians of
general random-effect structures.

The random effects of a general structure are ordered block by block (block ``k``: the effects of
every term nested in level ``k`` of the top-level factor, ``nk[k]`` of them, global positions
``bstart[k]:bstart[k] + nk[k]``) and then the border (the ``nc`` effects of crossed terms, global
positions ``NB:NB + nc``). The Hessian of the inner problem is

    H = [[A, B], [B', C]],   A = diag(A_1, ..., A_K)

and is factored exactly by a Schur complement on the border: a Cholesky factor of every ``A_k``,
``M_k = A_k^{-1} B_k``, and a Cholesky factor of ``S = C - sum_k B_k' M_k``.

Block ``k`` touches only the border effects that its cells have (``bcol[bptr[k]:bptr[k + 1]]``, in
increasing order, ``nb_k`` of them): the other columns of ``B_k`` are 0. Each block keeps the rows of
its own effects over a local space of ``nk[k] + nb_k`` columns (its own effects, then its border
effects; ``A_k`` and ``B_k``), stored flat one block after the other (offsets from
:func:`block_offsets`). Memory and work grow with the non-zeros of H (``sum_k nk (nk + nb_k)``), not
with the number of levels squared.

The border x border matrices (the sums ``C``, the Schur complement ``S``, its Cholesky factor and the
entries of ``S^{-1}`` the gradient needs) are stored over an envelope: row ``i`` holds its columns
``efirst[i] .. i`` flat at ``eptr[i]`` (entry ``(i, j)`` at ``eptr[i] + j - efirst[i]``). The exact
elimination fills ``S`` wherever two border effects share a block, and the envelope is the smallest one
holding every such pair: a Cholesky factor stays inside the envelope of its matrix, and so do the
entries of the inverse that a recursion over the factor's columns yields (:func:`env_inverse`). The
border's order is chosen when the structure is prepared (reverse Cuthill-McKee when it narrows the
envelope: plates shared by a few neighbouring donors give a band), so memory and work follow the
envelope (``sum_i w_i`` and ``sum_i w_i^2`` with ``w_i`` the row widths) rather than ``nc^2`` and
``nc^3``; a dense crossing (every donor meeting most batches) fills it, as it fills the exact
elimination. Work per factorisation ``sum_k (nk^3 + nk^2 nb_k + nk nb_k^2) + sum_i w_i^2``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ._jit import JIT as _JIT


@njit(**_JIT)
def _cholesky(M, L, n):
    """Cholesky factor of the symmetric n x n matrix M (its lower triangle read) into the n x n matrix L
    (lower triangle; its upper triangle set to 0), by :func:`_chol_flat`. Returns False if M is not
    positive definite."""
    ok, _ = _chol_flat(M.reshape(-1), 0, M.shape[1], 0.0, L.reshape(-1), 0, n)
    return ok


@njit(**_JIT)
def _chol_solve(L, n, x):
    """Solve (L L') z = x in place for the leading n entries of x (L n x n from :func:`_cholesky`)."""
    _chol_solve_flat(L.reshape(-1), 0, n, x, 0, 1)


@njit(**_JIT)
def _spd_inverse_rows(L, n):
    """``(L L')^{-1}`` from a lower Cholesky factor: ``X = L^{-1}`` row by row, then ``X' X``, both by
    updates along contiguous rows (about n^3 / 3 multiply-adds)."""
    X = np.zeros((n, n))
    t = np.empty(max(n, 1))
    for i in range(n):
        t[: i + 1] = 0.0
        t[i] = 1.0
        for k in range(i):
            f = L[i, k]
            for c in range(k + 1):
                t[c] -= f * X[k, c]
        d = L[i, i]
        for c in range(i + 1):
            X[i, c] = t[c] / d
    out = np.zeros((n, n))
    for i in range(n):
        for a in range(i + 1):
            f = X[i, a]
            for b in range(a, i + 1):
                out[a, b] += f * X[i, b]
    for a in range(n):
        for b in range(a):
            out[a, b] = out[b, a]
    return out


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
def block_offsets(nk, bptr):
    """Offsets of each block's flat storage: ``toff`` (the rows of its own effects in its local space,
    ``nk (nk + nb_k)``), ``aoff`` (factors of ``A_k``, ``nk^2``) and ``moff`` (``M_k``, ``nk nb_k``), each (K + 1,)."""
    K = nk.shape[0]
    toff = np.zeros(K + 1, dtype=np.int64)
    aoff = np.zeros(K + 1, dtype=np.int64)
    moff = np.zeros(K + 1, dtype=np.int64)
    for k in range(K):
        n = nk[k]
        nb = bptr[k + 1] - bptr[k]
        toff[k + 1] = toff[k] + n * (n + nb)
        aoff[k + 1] = aoff[k] + n * n
        moff[k + 1] = moff[k] + n * nb
    return toff, aoff, moff


@njit(**_JIT)
def block_workspace(nk, bptr, env):
    """Work arrays of the factorisation: ``(Tk, LA, M, LS, toff, aoff, moff, Cb, eptr, efirst, cptr, crow)``
    (see :func:`block_factor`); ``env = (eptr, efirst, cptr, crow)``, the border's envelope
    (:func:`envelope`): ``LS`` and ``Cb`` are stored over it."""
    toff, aoff, moff = block_offsets(nk, bptr)
    K = nk.shape[0]
    eptr, efirst, cptr, crow = env
    size = eptr[eptr.shape[0] - 1]
    return (
        np.empty(toff[K]), np.empty(aoff[K]), np.empty(moff[K]), np.zeros(size), toff, aoff, moff, np.zeros(size),
        eptr, efirst, cptr, crow,
    )  # fmt: skip


@njit(inline="always", **_JIT)
def env_at(eptr, efirst, i, j):
    """Flat position of entry ``(i, j)``, ``j <= i``, of an envelope (inside it)."""
    return eptr[i] + j - efirst[i]


@njit(**_JIT)
def envelope(efirst):
    """The envelope with rows starting at columns ``efirst`` (``efirst[i] <= i``): ``(eptr, efirst, cptr,
    crow)``, with ``crow[cptr[j]:cptr[j + 1]]`` the rows ``i > j`` whose envelope holds column ``j``
    (increasing)."""
    n = efirst.shape[0]
    eptr = np.zeros(n + 1, dtype=np.int64)
    cptr = np.zeros(n + 1, dtype=np.int64)
    for i in range(n):
        eptr[i + 1] = eptr[i] + i - efirst[i] + 1
        for j in range(efirst[i], i):
            cptr[j + 1] += 1
    for j in range(n):
        cptr[j + 1] += cptr[j]
    crow = np.empty(cptr[n], dtype=np.int64)
    fill = cptr[:n].copy()
    for i in range(n):
        for j in range(efirst[i], i):
            crow[fill[j]] = i
            fill[j] += 1
    return eptr, efirst.astype(np.int64), cptr, crow


@njit(**_JIT)
def env_cholesky(A, L, eptr, efirst, n, diag):
    """Cholesky factor of ``A + diag I`` (both over the envelope ``eptr``, ``efirst``) into ``L``, with the
    entries and sums of :func:`_chol_flat` (the products outside the envelope are the dense
    factorisation's exact zeros). Returns whether it is positive definite."""
    for i in range(n):
        fi = efirst[i]
        ri = eptr[i] - fi
        for j in range(fi, i + 1):
            rj = eptr[j] - efirst[j]
            s = A[ri + j]
            if i == j:
                s += diag
            for k in range(max(fi, efirst[j]), j):
                s -= L[ri + k] * L[rj + k]
            if i == j:
                if not s > 0.0 or not math.isfinite(s):
                    return False
                L[ri + i] = math.sqrt(s)
            else:
                L[ri + j] = s / L[rj + j]
    return True


@njit(**_JIT)
def env_solve(L, eptr, efirst, cptr, crow, n, x):
    """Solve ``(L L') z = x`` in place (``L`` over the envelope, from :func:`env_cholesky`; the sums of
    :func:`_chol_solve_flat`)."""
    for i in range(n):
        ri = eptr[i] - efirst[i]
        s = x[i]
        for k in range(efirst[i], i):
            s -= L[ri + k] * x[k]
        x[i] = s / L[ri + i]
    for i in range(n - 1, -1, -1):
        s = x[i]
        for c in range(cptr[i], cptr[i + 1]):
            k = crow[c]
            s -= L[eptr[k] + i - efirst[k]] * x[k]
        x[i] = s / L[eptr[i] + i - efirst[i]]


@njit(**_JIT)
def env_inverse(L, eptr, efirst, cptr, crow, n):
    """The entries of ``(L L')^{-1}`` over the envelope of ``L``: by the recursion over the factor's
    columns (last first), ``Z_kj = -sum_m L_mj Z_km / L_jj`` and ``Z_jj = (1 / L_jj - sum_m L_mj Z_mj) /
    L_jj`` (``m`` the rows below ``j`` in the envelope), which reads only entries inside it. A dense
    envelope (most of the lower triangle) takes :func:`_spd_inverse_rows` instead, as fast on full rows."""
    size = eptr[n]
    Z = np.zeros(size)
    if 2 * size > n * (n + 1) // 2 + n:
        D = np.zeros((n, n))
        for i in range(n):
            for j in range(efirst[i], i + 1):
                D[i, j] = L[eptr[i] + j - efirst[i]]
        Dinv = _spd_inverse_rows(D, n)
        for i in range(n):
            for j in range(efirst[i], i + 1):
                Z[eptr[i] + j - efirst[i]] = Dinv[i, j]
        return Z
    lcol = np.empty(max(n, 1))
    zcol = np.empty(max(n, 1))
    for j in range(n - 1, -1, -1):
        c0, c1 = cptr[j], cptr[j + 1]
        m = c1 - c0
        ljj = L[eptr[j] + j - efirst[j]]
        for a in range(m):
            lcol[a] = L[eptr[crow[c0 + a]] + j - efirst[crow[c0 + a]]]
            zcol[a] = 0.0
        for a in range(m):  # zcol = Z[rows, rows] @ lcol, over the lower triangle of the rows' block
            k = crow[c0 + a]
            rk = eptr[k] - efirst[k]
            s = 0.0
            for b in range(a):
                z = Z[rk + crow[c0 + b]]
                s += z * lcol[b]
                zcol[b] += z * lcol[a]
            zcol[a] += s + Z[rk + k] * lcol[a]
        diag = 1.0 / ljj
        for a in range(m):
            k = crow[c0 + a]
            Z[eptr[k] + j - efirst[k]] = -zcol[a] / ljj
            diag -= lcol[a] * (-zcol[a] / ljj)
        Z[eptr[j] + j - efirst[j]] = diag / ljj
    return Z


@njit(inline="always", **_JIT)
def _chol_flat(T, t0, tstride, diag, L, a0, n):
    """Cholesky factor of ``A = T[:n, :n] + diag I`` (rows of ``T`` at ``T[t0 + i tstride]``) into the
    flat ``n x n`` array ``L`` at ``a0`` (lower triangle; upper set to 0), as :func:`_cholesky`, with the
    log determinant. Returns ``(ok, log det A)``."""
    logdet = 0.0
    for j in range(n):
        rj = a0 + j * n
        s = T[t0 + j * tstride + j] + diag
        for k in range(j):
            s -= L[rj + k] * L[rj + k]
        if not s > 0.0 or not math.isfinite(s):
            return False, 0.0
        ljj = math.sqrt(s)
        L[rj + j] = ljj
        for i in range(j + 1, n):
            ri = a0 + i * n
            s = T[t0 + i * tstride + j]
            for k in range(j):
                s -= L[ri + k] * L[rj + k]
            L[ri + j] = s / ljj
        for i in range(j):
            L[a0 + i * n + j] = 0.0
    for i in range(n):
        logdet += 2.0 * math.log(L[a0 + i * n + i])
    return True, logdet


@njit(inline="always", **_JIT)
def _chol_solve_flat(L, a0, n, x, x0, xs):
    """Solve ``(L L') z = x`` in place, ``L`` flat ``n x n`` at ``a0``, ``x`` the entries ``x[x0 + i xs]``
    (as :func:`_chol_solve`)."""
    for i in range(n):
        s = x[x0 + i * xs]
        for k in range(i):
            s -= L[a0 + i * n + k] * x[x0 + k * xs]
        x[x0 + i * xs] = s / L[a0 + i * n + i]
    for i in range(n - 1, -1, -1):
        s = x[x0 + i * xs]
        for k in range(i + 1, n):
            s -= L[a0 + k * n + i] * x[x0 + k * xs]
        x[x0 + i * xs] = s / L[a0 + i * n + i]


@njit(**_JIT)
def block_factor(nk, bptr, bcol, work, diag):
    """Factor H from the sums of ``w a a'`` in ``work``: per block ``Tk`` (the rows of its own effects, over
    its local space) and ``Cb`` (border x border, dense); H = these + ``diag`` times the identity (1 for
    the inner problem).

    Fills ``LA``, ``M`` and ``LS`` of ``work`` (:func:`block_workspace`). Returns ``(ok, log det H)``.
    """
    Tk, LA, M, LS, toff, aoff, moff, Cb, eptr, efirst = work[:10]
    K = nk.shape[0]
    nc = efirst.shape[0]
    S = Cb.copy()
    logdet = 0.0
    for k in range(K):
        n = nk[k]
        b0 = bptr[k]
        nb = bptr[k + 1] - b0
        nl = n + nb
        t0 = toff[k]
        m0 = moff[k]
        ok, ld = _chol_flat(Tk, t0, nl, diag, LA, aoff[k], n)
        if not ok:
            return False, 0.0
        logdet += ld
        for c in range(nb):
            for i in range(n):
                M[m0 + i * nb + c] = Tk[t0 + i * nl + n + c]
            _chol_solve_flat(LA, aoff[k], n, M, m0 + c, nb)
        for c1 in range(nb):  # the lower triangle only (bcol increases): the Cholesky reads no other
            g1 = bcol[b0 + c1]
            for c2 in range(c1 + 1):
                s = 0.0
                for i in range(n):
                    s += Tk[t0 + i * nl + n + c1] * M[m0 + i * nb + c2]
                S[eptr[g1] + bcol[b0 + c2] - efirst[g1]] -= s
    if not env_cholesky(S, LS, eptr, efirst, nc, diag):
        return False, 0.0
    for c in range(nc):
        logdet += 2.0 * math.log(LS[eptr[c] + c - efirst[c]])
    return True, logdet


@njit(**_JIT)
def block_solve(nk, bstart, bptr, bcol, NB, work, rhs, out):
    """out = H^{-1} rhs (global effect order) from the factors of :func:`block_factor`."""
    LA, M, LS, aoff, moff = work[1], work[2], work[3], work[5], work[6]
    eptr, efirst, cptr, crow = work[8], work[9], work[10], work[11]
    K = nk.shape[0]
    nc = efirst.shape[0]
    rc = np.empty(nc)
    for c in range(nc):
        rc[c] = rhs[NB + c]
    if nc > 0:
        for k in range(K):
            b0 = bstart[k]
            p0 = bptr[k]
            nb = bptr[k + 1] - p0
            m0 = moff[k]
            for c in range(nb):
                s = 0.0
                for i in range(nk[k]):
                    s += M[m0 + i * nb + c] * rhs[b0 + i]
                rc[bcol[p0 + c]] -= s
        env_solve(LS, eptr, efirst, cptr, crow, nc, rc)
    for c in range(nc):
        out[NB + c] = rc[c]
    for k in range(K):
        b0 = bstart[k]
        n = nk[k]
        p0 = bptr[k]
        nb = bptr[k + 1] - p0
        m0 = moff[k]
        for i in range(n):
            out[b0 + i] = rhs[b0 + i]
        _chol_solve_flat(LA, aoff[k], n, out, b0, 1)
        for i in range(n):
            s = out[b0 + i]
            for c in range(nb):
                s -= M[m0 + i * nb + c] * rc[bcol[p0 + c]]
            out[b0 + i] = s


@njit(**_JIT)
def block_local_inverse(nk, bptr, bcol, work, E):
    """The entries of H^{-1} each block's cells need: into ``E`` (flat, as ``Tk``) the rows of block k's own
    effects over its local space, ``[A_k^{-1} + M_k S_k^{-1} M_k', -M_k S_k^{-1}]`` (``S_k^{-1}``: the rows
    and columns of ``S^{-1}`` at the block's border effects); returns the entries of ``S^{-1}`` over the
    border's envelope (:func:`env_inverse`)."""
    LA, M, LS, toff, aoff, moff = work[1], work[2], work[3], work[4], work[5], work[6]
    eptr, efirst, cptr, crow = work[8], work[9], work[10], work[11]
    K = nk.shape[0]
    Sinv = env_inverse(LS, eptr, efirst, cptr, crow, efirst.shape[0])
    nmax = 1
    for k in range(K):
        nmax = max(nmax, nk[k])
    col = np.empty(nmax)
    for k in range(K):
        n = nk[k]
        p0 = bptr[k]
        nb = bptr[k + 1] - p0
        nl = n + nb
        m0 = moff[k]
        e0 = toff[k]
        for i in range(n):
            for c in range(nb):
                s = 0.0
                for c2 in range(nb):
                    g1, g2 = max(bcol[p0 + c2], bcol[p0 + c]), min(bcol[p0 + c2], bcol[p0 + c])
                    s += M[m0 + i * nb + c2] * Sinv[eptr[g1] + g2 - efirst[g1]]
                E[e0 + i * nl + n + c] = -s
        for j in range(n):
            for i in range(n):
                col[i] = 0.0
            col[j] = 1.0
            _chol_solve_flat(LA, aoff[k], n, col, 0, 1)
            for i in range(n):
                s = col[i]
                for c in range(nb):
                    s -= E[e0 + i * nl + n + c] * M[m0 + j * nb + c]
                E[e0 + i * nl + j] = s
    return Sinv
