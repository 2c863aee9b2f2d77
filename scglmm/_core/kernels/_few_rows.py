"""The fast path for designs with few distinct rows (donor-level factors, paired designs, cell-level factors).

Cells are grouped into blocks sharing donor i and design row x_b, with offsets in a narrow range:
every cell of block b has Lw_j = exp(o_j - o_ref) within a relative FEW_ROWS_RHO of the block
centre Lc_b. Then mu_j / theta = x_c (1 + eps_j) with x_c = exp(x_b' beta + b_i - t + o_ref) Lc_b
and |eps_j| <= FEW_ROWS_RHO, and the sums over the block of (y_j + theta) log1p(x_j) and its
derivatives in log x are Taylor series around x_c whose coefficients are centred power sums of eps
over the block's cells (gene-independent) and y-weighted ones over its non-zero cells (once per
gene). An evaluation then costs O(K) per block instead of O(cells). The series converge
geometrically with ratio rc * FEW_ROWS_RHO < FEW_ROWS_RHO for every value of the parameters
(rc = x_c / (1 + x_c) < 1), and K is chosen so that the remainder is below e^-38 (about 3e-17)
relative: exact to rounding, which the tests check against cell-by-cell sums.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ._cell import theta_terms
from ._jit import JIT as _JIT
from ._laplace import _donor_terms, _mode_found, _mode_step, _zero_sums

#: largest number of series terms
FEW_ROWS_KMAX = 24
#: relative half-width of the offset bins: every cell of a block has |Lw / Lc - 1| <= FEW_ROWS_RHO
FEW_ROWS_RHO = 0.2
LOG_FEW_ROWS_RHO = math.log(FEW_ROWS_RHO)


@njit(**_JIT)
def few_rows_cut_blocks(change, Lw, ratio):
    """Block starts (and n at the end): a new block at every ``change`` (new donor or design row)
    and wherever ``Lw`` exceeds ``ratio`` times the first ``Lw`` of the current block (cells are
    sorted by offset within a design row)."""
    n = Lw.shape[0]
    cuts = np.empty(n + 1, dtype=np.int64)
    nc = 0
    lo = 0.0
    for j in range(n):
        if change[j] or Lw[j] > lo * ratio:
            cuts[nc] = j
            nc += 1
            lo = Lw[j]
    cuts[nc] = n
    return cuts[: nc + 1].copy()


@njit(**_JIT)
def few_rows_block_power_sums(Lw, bstarts, kk):
    """Per block: centre Lc (midpoint of its Lw range) and PA[:, k] = sum (Lw / Lc - 1)^k, k < kk."""
    nb = bstarts.shape[0] - 1
    PA = np.zeros((nb, kk))
    Lc = np.zeros(nb)
    for i in range(nb):
        lo = bstarts[i]
        hi = bstarts[i + 1]
        mn = Lw[lo]
        mx = Lw[lo]
        for j in range(lo, hi):
            mn = min(mn, Lw[j])
            mx = max(mx, Lw[j])
        c = 0.5 * (mn + mx)
        Lc[i] = c
        for j in range(lo, hi):
            e = Lw[j] / c - 1.0
            pw = 1.0
            for k in range(kk):
                PA[i, k] += pw
                pw *= e
    return PA, Lc


@njit(**_JIT)
def few_rows_gene_power_sums(PA, Lw, Lc, off, bstarts, nzp, nzy, nzs, PZ):
    """Per block i: PZ[i, k] = sum over its non-zero cells of y * eps^k with eps = Lw / Lc[i] - 1
    (k < KMAX + 1), and in the last two columns the block's total count and sum of y * offset.

    Four cells at a time, so that their chains of multiplications run side by side."""
    m = bstarts.shape[0] - 1
    KK = PA.shape[1]
    for i in range(m):
        lo = nzs[i]
        hi = nzs[i + 1]
        inv = 1.0 / Lc[i]
        for k in range(KK + 2):
            PZ[i, k] = 0.0
        idx = lo
        while idx + 4 <= hi:
            j0 = nzp[idx]
            j1 = nzp[idx + 1]
            j2 = nzp[idx + 2]
            j3 = nzp[idx + 3]
            e0 = Lw[j0] * inv - 1.0
            e1 = Lw[j1] * inv - 1.0
            e2 = Lw[j2] * inv - 1.0
            e3 = Lw[j3] * inv - 1.0
            p0 = nzy[idx]
            p1 = nzy[idx + 1]
            p2 = nzy[idx + 2]
            p3 = nzy[idx + 3]
            PZ[i, KK] += (p0 + p1) + (p2 + p3)
            PZ[i, KK + 1] += (p0 * off[j0] + p1 * off[j1]) + (p2 * off[j2] + p3 * off[j3])
            for k in range(KK):
                PZ[i, k] += (p0 + p1) + (p2 + p3)
                p0 *= e0
                p1 *= e1
                p2 *= e2
                p3 *= e3
            idx += 4
        while idx < hi:
            j = nzp[idx]
            e = Lw[j] * inv - 1.0
            pw = nzy[idx]
            PZ[i, KK] += pw
            PZ[i, KK + 1] += pw * off[j]
            for k in range(KK):
                PZ[i, k] += pw
                pw *= e
            idx += 1


@njit(**_JIT)
def _centered_series(M, i, KK, K, lx, rc, alpha, level, G):
    """G[m] = sum over a block's cells of w_j g_m(x_c (1 + eps_j)), m = 0..4, from the weighted
    centred power sums M[i, k] = sum_j w_j eps_j^k, with x_c the block centre, rc = x_c / (1 + x_c),
    alpha = 1 - rc and lx = log1p(x_c). With beta_k = (-1)^(k+1) rc^k:

        g0 = log1p(x_c) + sum_k beta_k eps^k / k
        g1 = rc + alpha sum_k beta_k eps^k
        g2 = alpha sum_k k beta_k (eps^(k-1) + eps^k)
        g3 = alpha sum_k k beta_k ((k-1) eps^(k-2) + (2k-1) eps^(k-1) + k eps^k)
        g4 = alpha sum_k k beta_k ((k-1)(k-2) eps^(k-3) + 3(k-1)^2 eps^(k-2) + (3k^2-3k+1) eps^(k-1) + k^2 eps^k)

    (Taylor series in eps of log1p(x) and of its derivatives in log x; |rc eps| <= FEW_ROWS_RHO.)
    """
    G[:] = 0.0
    M0 = M[i, 0]
    bk = 1.0
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    s4 = 0.0
    for k in range(1, K + 1):
        bk = bk * rc if k > 1 else rc
        sg = bk if (k % 2 == 1) else -bk
        kf = float(k)
        Mk = M[i, k]
        Mk1 = M[i, k - 1]
        s1 += sg * Mk
        s2 += kf * sg * (Mk1 + Mk)
        if level >= 2:
            s0 += sg * Mk / kf
        if level >= 3:
            Mk2 = M[i, k - 2] if k >= 2 else 0.0
            Mk3 = M[i, k - 3] if k >= 3 else 0.0
            s3 += kf * sg * ((kf - 1.0) * Mk2 + (2.0 * kf - 1.0) * Mk1 + kf * Mk)
            s4 += (
                kf
                * sg
                * (
                    (kf - 1.0) * (kf - 2.0) * Mk3
                    + 3.0 * (kf - 1.0) * (kf - 1.0) * Mk2
                    + (3.0 * kf * kf - 3.0 * kf + 1.0) * Mk1
                    + kf * kf * Mk
                )
            )
    G[0] = M0 * lx + s0
    G[1] = M0 * rc + alpha * s1
    G[2] = alpha * s2
    G[3] = alpha * s3
    G[4] = alpha * s4


@njit(**_JIT)
def _few_rows_block_sums_into(i, c, t, theta, PA, PZ, Lc, o_ref, level, S, GP, GQ):
    """Sums over block i's cells (linear predictor c + offset) of (q, e1..e4, t0..t3, tt0..tt2)
    into S[0..11]; level 1: only e1, e2 (S[1], S[2]); level 2: also q (S[0]); level 3: everything.

    With x_j = mu_j / theta = x_c (1 + eps_j) (x_c at the block's centre offset), every term is a
    combination of sums over the block of (y_j + theta) g_m(x_j) plus terms linear in y, where
    g_0 = log1p(x) and g_m is its m-th derivative in log x. These sums are Taylor series around x_c
    (see :func:`_centered_series`) in the block's centred power sums of eps (PA, gene-independent)
    and their y-weighted versions (PZ, once per gene). Since |eps| <= FEW_ROWS_RHO and 0 < rc < 1, the
    series converge geometrically for every parameter value; K terms leave a remainder below
    (rc FEW_ROWS_RHO)^K K^3, under 1e-19 relative. ``GP`` and ``GQ`` (5,) are scratch.
    """
    KK = PA.shape[1]
    z = c - t + o_ref + math.log(Lc[i])  # log x_c
    rc, alpha, lx, K = _block_centre(z, KK)
    _centered_series(PA, i, KK, K, lx, rc, alpha, level, GP)
    _centered_series(PZ, i, KK, K, lx, rc, alpha, level, GQ)
    ysum = PZ[i, KK]
    S[:] = 0.0
    S[0] = c * ysum + PZ[i, KK + 1] - theta * GP[0] - GQ[0]
    S[1] = ysum - theta * GP[1] - GQ[1]
    S[2] = -theta * GP[2] - GQ[2]
    if level >= 3:
        S[3] = -theta * GP[3] - GQ[3]
        S[4] = -theta * GP[4] - GQ[4]
        S[5] = theta * (GP[1] - GP[0]) + GQ[1]
        S[6] = theta * (GP[2] - GP[1]) + GQ[2]
        S[7] = theta * (GP[3] - GP[2]) + GQ[3]
        S[8] = theta * (GP[4] - GP[3]) + GQ[4]
        S[9] = theta * (-GP[0] + 2.0 * GP[1] - GP[2]) - GQ[2]
        S[10] = theta * (-GP[1] + 2.0 * GP[2] - GP[3]) - GQ[3]
        S[11] = theta * (-GP[2] + 2.0 * GP[3] - GP[4]) - GQ[4]


@njit(**_JIT)
def _block_centre(z, KK):
    """For the block centre x_c = exp(z): rc = x_c / (1 + x_c), alpha = 1 - rc and lx = log1p(x_c),
    without overflow, and the number K < KK of series terms that leaves a remainder (rc
    FEW_ROWS_RHO)^K below e^-38 (log rc = z - lx needs no further logarithm)."""
    if z >= 0.0:
        ez = math.exp(-z)
        rc = 1.0 / (1.0 + ez)
        alpha = ez * rc
        lx = z + math.log1p(ez)
    else:
        ez = math.exp(z)
        alpha = 1.0 / (1.0 + ez)
        rc = ez * alpha
        lx = math.log1p(ez)
    if rc <= 0.0:
        return rc, alpha, lx, 1
    K = int(math.ceil(-38.0 / (z - lx + LOG_FEW_ROWS_RHO)))
    return rc, alpha, lx, max(1, min(K, KK - 1))


@njit(**_JIT)
def _few_rows_block_sums(i, c, t, theta, y, off, Lw, bstarts, nzp, nzy, nzs, PA, PZ, Lc, o_ref, level, S):
    """:func:`_few_rows_block_sums_into` with its own scratch (the signature used by the tests)."""
    GP = np.empty(5)
    GQ = np.empty(5)
    _few_rows_block_sums_into(i, c, t, theta, PA, PZ, Lc, o_ref, level, S, GP, GQ)


@njit(**_JIT)
def _few_rows_block_d12(i, c, t, theta, PA, PZ, Lc, o_ref):
    """First and second derivative in eta of block i's sum of q (S[1], S[2] of
    :func:`_few_rows_block_sums`) without scratch arrays: both are linear in the power sums, so one
    series runs over W_k = theta PA[i, k] + PZ[i, k]."""
    KK = PA.shape[1]
    z = c - t + o_ref + math.log(Lc[i])
    rc, alpha, lx, K = _block_centre(z, KK)
    w0 = theta * PA[i, 0] + PZ[i, 0]
    wprev = w0
    bk = 1.0
    s1 = 0.0
    s2 = 0.0
    for k in range(1, K + 1):
        bk *= rc
        sg = bk if (k % 2 == 1) else -bk
        wk = theta * PA[i, k] + PZ[i, k]
        s1 += sg * wk
        s2 += k * sg * (wprev + wk)
        wprev = wk
    return PZ[i, KK] - (w0 * rc + alpha * s1), -alpha * s2


@njit(**_JIT)
def _row_dot(Xd, phi, i):
    c = 0.0
    for k in range(Xd.shape[1]):
        c += Xd[i, k] * phi[k]
    return c


@njit(**_JIT)
def few_rows_modes(y, off, Lw, bstarts, dblk, Xb, nzp, nzy, nzs, PA, PZ, Lmax, o_ref, phi, b, tol=1e-8, maxit=100):
    """Conditional modes for a design with few distinct rows (as :func:`conditional_modes`)."""
    p = Xb.shape[1]
    s = phi[p]
    t = phi[p + 1]
    theta = math.exp(t)
    prec = math.exp(-s)
    ok = True
    for i in range(dblk.shape[0] - 1):
        bi = b[i]
        done = False
        for _ in range(maxit):
            f1 = -bi * prec
            f2 = -prec
            for blk in range(dblk[i], dblk[i + 1]):
                e1, e2 = _few_rows_block_d12(blk, _row_dot(Xb, phi, blk) + bi, t, theta, PA, PZ, Lmax, o_ref)
                f1 += e1
                f2 += e2
            bi, done = _mode_step(bi, -f1 / f2, tol, np.inf, 0.0)
            if done:
                break
        if not _mode_found(b, i, bi, done):
            ok = False
    return ok


@njit(**_JIT)
def few_rows_laplace(
    y, off, Lw, bstarts, dblk, Xb, nzp, nzy, nzs, PA, PZ, Lmax, o_ref, phi, b, cnt_gt, lgy, derivs, grad, hess, VB
):
    """Laplace value (and, if ``derivs``, exact gradient and Hessian) for a design with few
    distinct rows. ``b`` must hold the conditional modes."""
    p = Xb.shape[1]
    q = p + 2
    js = p
    jt = p + 1
    s = phi[js]
    t = phi[jt]
    theta = math.exp(t)
    prec = math.exp(-s)
    S = np.empty(12)
    GP = np.empty(5)
    GQ = np.empty(5)
    g = np.empty(q)
    a = np.empty(q)
    c = np.empty(q)
    d = np.empty(q)
    F = np.empty((q, q))
    A = np.empty((q, q))
    C = np.empty((q, q))
    v = np.empty(q)
    dK = np.empty(q)
    if derivs:
        grad[:] = 0.0
        hess[:, :] = 0.0
    level = 3 if derivs else 2
    total = 0.0
    for i in range(dblk.shape[0] - 1):
        bi = b[i]
        h = -0.5 * bi * bi * prec
        f2 = -prec
        f3 = 0.0
        f4 = 0.0
        _zero_sums(g, a, c, d, F, A, C)
        for blk in range(dblk[i], dblk[i + 1]):
            ci = _row_dot(Xb, phi, blk) + bi
            _few_rows_block_sums_into(blk, ci, t, theta, PA, PZ, Lmax, o_ref, level, S, GP, GQ)
            h += S[0]
            f2 += S[2]
            if not derivs:
                continue
            f3 += S[3]
            f4 += S[4]
            for k in range(p):
                xk = Xb[blk, k]
                g[k] += S[1] * xk
                a[k] += S[2] * xk
                c[k] += S[3] * xk
                d[k] += S[4] * xk
                F[k, jt] += S[6] * xk
                A[k, jt] += S[7] * xk
                C[k, jt] += S[8] * xk
                for l in range(k + 1):
                    xx = xk * Xb[blk, l]
                    F[k, l] += S[2] * xx
                    A[k, l] += S[3] * xx
                    C[k, l] += S[4] * xx
            g[jt] += S[5]
            a[jt] += S[6]
            c[jt] += S[7]
            d[jt] += S[8]
            F[jt, jt] += S[9]
            A[jt, jt] += S[10]
            C[jt, jt] += S[11]
        if not derivs:
            total += h - 0.5 * s - 0.5 * math.log(-f2)
            continue
        total += _donor_terms(bi, s, prec, h, f2, f3, f4, g, a, c, d, F, A, C, v, dK, p, grad, hess, VB[i])
    cv, c1, c2 = theta_terms(cnt_gt, t)
    if derivs:
        for k in range(q):
            for l in range(k):
                hess[l, k] = hess[k, l]
        grad[jt] += c1
        hess[jt, jt] += c2
    return total + cv - lgy
