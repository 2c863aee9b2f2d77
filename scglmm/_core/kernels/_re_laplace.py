"""Laplace approximation for general random-effect structures: modes, value and exact gradient.

Spherical random effects ``u ~ N(0, I)`` with ``b = Lambda u``, ``Lambda`` block-diagonal with one
lower-triangular Cholesky factor ``L_t`` per term (repeated for each of its levels). With
``a_j`` the row of ``Z Lambda`` of cell ``j``,

    eta_j = x_j' beta + o_j + a_j' u,   h(u) = sum_j log NB(y_j; e^eta_j, theta) - u'u / 2,
    H = -h''(u^) = sum_j w_j a_j a_j' + I  (w_j = -d2 log NB / d eta2),
    log L ~= h(u^) - 0.5 log det H,

which equals ``h_b(b^) - 0.5 log det G - 0.5 log det H_b`` of MODEL.md section 7 (``G = Lambda
Lambda'``) and stays smooth where ``G`` is singular (a variance at 0, a correlation at +-1).

The outer parameters are ``phi = (beta, lambda, log theta)`` with ``lambda`` the free entries of
the ``L_t``. The gradient is exact (implicit dependence of ``u^`` included): with ``d_j = a_j' H^{-1}
a_j``, ``xi = sum_j (-e3_j d_j) a_j`` and ``zeta = H^{-1} xi``,

    d logL / d phi_i = dh/dphi_i - 0.5 [tr(H^{-1} dH/dphi_i at fixed u) + zeta' d(grad_u h)/dphi_i].

A pass over the rows (cells, or blocks of cells with their series) gives each row's derivatives in eta and
log theta; everything after it (``H``, the gradient, the modes' derivatives, the exact Hessian) is linear in
them, with coefficients shared by the rows of a group (``REData.grp``: same design row, ``Z`` row and levels),
so it runs once per group on their sums: 2,000 groups instead of 8,000 blocks for 1,000 donors x 2 conditions.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ._cell import NB, _cell_all_x, row_glm, theta_terms
from ._few_rows import _block_centre
from ._jit import JIT as _JIT
from ._linalg import block_factor, block_local_inverse, block_solve, block_workspace
from ._re_hessian import _mode_rhs, group_au, group_sums, hessian_at


@njit(**_JIT)
def re_amat(d, phi):
    """Rows ``a_j`` of ``Z Lambda`` (n, R) for the Cholesky factors in ``phi``."""
    n, R = d.zval.shape
    T, qm, _ = d.lam_pos.shape
    L = np.zeros((T, qm, qm))
    for t in range(T):
        for r in range(qm):
            for c in range(qm):
                k = d.lam_pos[t, r, c]
                if k >= 0:
                    L[t, r, c] = phi[k]
    a = np.empty((n, R))
    for j in range(n):
        for r in range(R):
            t = d.rterm[r]
            c = d.rcoef[r]
            o = d.toff[t]
            s = 0.0
            for cc in range(c, d.tq[t]):
                s += d.zval[j, o + cc] * L[t, cc, c]
            a[j, r] = s
    return a


@njit(**_JIT)
def _eta(d, dg, eta0, a, u, eta):
    """``eta = eta0 + (Z Lambda u)`` per row, the last term once per group (``a`` the groups' rows)."""
    G, R = a.shape
    if eta0.shape[0] == G:  # each row its own group (no scratch: a pass allocates nothing)
        for j in range(G):
            e = eta0[j]
            for r in range(R):
                e += a[j, r] * u[dg.gidx[j, r]]
            eta[j] = e
        return
    au = np.empty(G)
    group_au(dg, a, u, au)
    for j in range(eta0.shape[0]):
        eta[j] = eta0[j] + au[d.grp[j]]


@njit(**_JIT)
def _block_centres(fr, eta, t, C):
    """Each block's series centre (:func:`._few_rows._block_centre`: ``rc``, ``alpha``, ``log1p`` and the
    number of terms) into ``C`` (n, 4), in a loop of its own: the series that follow run in another (a
    loop doing both took 0.26 ms over 8,000 blocks, the two loops 0.15 ms)."""
    KK = fr.PA.shape[1]
    for j in range(eta.shape[0]):
        rc, alpha, lx, K = _block_centre(eta[j] - t + fr.o_ref + fr.logLc[j], KK)
        C[j, 0] = rc
        C[j, 1] = alpha
        C[j, 2] = lx
        C[j, 3] = K


@njit(**_JIT)
def _blocks_q12(fr, PZ, eta, t, theta, cs, C):
    """Sums over each block j's cells (linear predictor ``eta[j]`` + offset) of e1 and e2 into ``cs[j,
    :2]`` and of q (the total returned): S[0..2] of :func:`._few_rows._few_rows_block_sums_into`, by one
    series per block, all three being linear in the power sums: it runs over ``W_k = theta PA[j, k] +
    PZ[j, k]``. (The loop over the blocks is here, not in the caller: a call per block, passing the
    arrays of ``fr``, cost more than the series.)"""
    PA = fr.PA
    KK = PA.shape[1]
    total = 0.0
    _block_centres(fr, eta, t, C)
    for j in range(eta.shape[0]):
        c = eta[j]
        rc, alpha, lx, K = C[j, 0], C[j, 1], C[j, 2], int(C[j, 3])
        w0 = theta * PA[j, 0] + PZ[j, 0]
        wprev = w0
        nrc = -rc
        sg = -1.0  # (-1)^(k+1) rc^k
        s0 = 0.0
        s1 = 0.0
        s2 = 0.0
        for k in range(1, K + 1):
            sg *= nrc
            wk = theta * PA[j, k] + PZ[j, k]
            s0 += sg * wk * fr.inv_k[k]
            s1 += sg * wk
            s2 += k * sg * (wprev + wk)
            wprev = wk
        ysum = PZ[j, KK]
        total += c * ysum + PZ[j, KK + 1] - (w0 * lx + s0)
        cs[j, 0] = ysum - (w0 * rc + alpha * s1)
        cs[j, 1] = -alpha * s2
    return total


@njit(**_JIT)
def _blocks_all(fr, PZ, eta, t, theta, cs, C):
    """Sums over each block j's cells of ``(e1, e2, e3, t0, t1, t2)`` into ``cs[j]`` and of q (the total
    returned): with ``G_m(M)`` the sums of the m-th derivatives of log1p in log x weighted by the power
    sums M (:func:`._few_rows._centered_series`), e_m = -G_m(W) (and e1 + ysum) and ``t_m = G_(m+1)(W)
    - theta G_m(PA)``: one series over ``W_k = theta PA[j, k] + PZ[j, k]`` to G_3, one over PA to G_2.
    If ``cs`` has 12 columns, also ``G_0..2(PA)``, the block centre's ``rc``, ``alpha`` and the number of
    terms (for :func:`._re_hessian._block_derivatives`)."""
    PA = fr.PA
    KK = PA.shape[1]
    total = 0.0
    _block_centres(fr, eta, t, C)
    for j in range(eta.shape[0]):
        c = eta[j]
        rc, alpha, lx, K = C[j, 0], C[j, 1], C[j, 2], int(C[j, 3])
        w0 = theta * PA[j, 0] + PZ[j, 0]
        w1 = w0  # W_(k-1)
        w2 = 0.0  # W_(k-2)
        a1 = PA[j, 0]
        nrc = -rc
        sg = -1.0  # (-1)^(k+1) rc^k
        s0 = s1 = s2 = s3 = p0 = p1 = p2 = 0.0
        for k in range(1, K + 1):
            sg *= nrc
            kf = float(k)
            wk = theta * PA[j, k] + PZ[j, k]
            ak = PA[j, k]
            s0 += sg * wk * fr.inv_k[k]
            s1 += sg * wk
            s2 += kf * sg * (w1 + wk)
            s3 += kf * sg * ((kf - 1.0) * w2 + (2.0 * kf - 1.0) * w1 + kf * wk)
            p0 += sg * ak * fr.inv_k[k]
            p1 += sg * ak
            p2 += kf * sg * (a1 + ak)
            w2 = w1
            w1 = wk
            a1 = ak
        ysum = PZ[j, KK]
        G1 = w0 * rc + alpha * s1
        G2 = alpha * s2
        G3 = alpha * s3
        cs[j, 0] = ysum - G1
        cs[j, 1] = -G2
        cs[j, 2] = -G3
        P0 = PA[j, 0] * lx + p0
        P1 = PA[j, 0] * rc + alpha * p1
        P2 = alpha * p2
        cs[j, 3] = G1 - theta * P0
        cs[j, 4] = G2 - theta * P1
        cs[j, 5] = G3 - theta * P2
        if cs.shape[1] > 6:  # what the exact Hessian's derivatives start from (:mod:`._re_hessian`)
            cs[j, 6] = P0
            cs[j, 7] = P1
            cs[j, 8] = P2
            cs[j, 9] = rc
            cs[j, 10] = alpha
            cs[j, 11] = K
        total += c * ysum + PZ[j, KK + 1] - (w0 * lx + s0)
    return total


@njit(**_JIT)
def _pass(d, dg, fr, PZ, y, eta0, a, u, t, theta, eta, cs, C, full=True):
    """One pass over the rows at modes ``u``: ``eta``, the per-row derivatives ``cs[j] = (e1, e2, e3,
    t0, t1, t2)`` and ``h(u)`` without the count-only constants, ``sum_j q(eta_j) - u'u / 2``.

    A row is a cell (one exp and one log each) or, with ``fr.on``, a block of cells sharing the row's
    design and levels, whose sums come from the block's Taylor series (:mod:`._few_rows`); unless
    ``full``, a block's pass fills only e1 and e2 (what the inner Newton iterations use). With a family
    other than NB (``d.family``, never with blocks) a row is a binomial or Poisson observation
    (:func:`._cell.row_glm`) and its theta derivatives are 0."""
    _eta(d, dg, eta0, a, u, eta)
    s = 0.0
    if fr.on and not full:
        s = _blocks_q12(fr, PZ, eta, t, theta, cs, C)
    elif fr.on:
        s = _blocks_all(fr, PZ, eta, t, theta, cs, C)
    elif d.family != NB:
        for j in range(y.shape[0]):
            q, e1, e2, e3 = row_glm(d.family, y[j], d.trials[j], eta[j])
            cs[j, 0] = e1
            cs[j, 1] = e2
            cs[j, 2] = e3
            cs[j, 3] = 0.0
            cs[j, 4] = 0.0
            cs[j, 5] = 0.0
            s += q
    else:
        for j in range(y.shape[0]):
            z = eta[j] - t
            q, e1, e2, e3, _, t0, t1, t2, _, _, _, _ = _cell_all_x(y[j], eta[j], math.exp(min(z, 709.0)), z, theta)
            cs[j, 0] = e1
            cs[j, 1] = e2
            cs[j, 2] = e3
            cs[j, 3] = t0
            cs[j, 4] = t1
            cs[j, 5] = t2
            s += q
    for i in range(u.shape[0]):
        s -= 0.5 * u[i] * u[i]
    return s


@njit(**_JIT)
def _accumulate(d, a, w, work):
    """The sums over the cells of ``w_j a_j a_j'``: per block, the rows of its own effects in block-local
    positions into ``Tk`` (flat, see :mod:`._linalg`); border x border into ``Cb`` (its lower triangle, over
    the border's envelope)."""
    Tk, toff, Cb, eptr, efirst = work[0], work[4], work[7], work[8], work[9]
    Tk[:] = 0.0
    Cb[:] = 0.0
    n, R = a.shape
    for j in range(n):
        k = d.blk[j]
        nk = d.nk[k]
        nl = nk + d.bptr[k + 1] - d.bptr[k]
        for r in range(R):
            v = w[j] * a[j, r]
            lr = d.lidx[j, r]
            if lr < nk:
                row = toff[k] + lr * nl
                for r2 in range(R):
                    Tk[row + d.lidx[j, r2]] += v * a[j, r2]
            else:
                g = d.gidx[j, r] - d.NB
                for r2 in range(R):
                    g2 = d.gidx[j, r2] - d.NB
                    if d.lidx[j, r2] >= nk and g2 <= g:
                        Cb[eptr[g] + g2 - efirst[g]] += v * a[j, r2]


@njit(**_JIT)
def re_modes(d, dg, fr, PZ, y, eta0, a, u, t, tol, maxit, work, cs, csg, full):
    """Newton maximisation of h over u (in place, warm start). h is strictly concave.

    ``d`` the rows, ``dg`` their groups (``REData.grp``) and ``a`` the groups' rows of ``Z Lambda``: each
    pass runs over the rows, the sums of the gradient and of ``H`` over the groups.

    Returns ``(ok, h(u^), log det H, iterations)``; on return the factors in ``work`` and the
    per-row derivatives in ``cs`` belong to u^ (with blocks of cells and not ``full``, only e1 and e2:
    see :func:`_pass`; ``full`` costs a little more per pass and saves a pass when the gradient follows),
    and if ``full`` their sums over the groups in ``csg`` (G, 6; ``cs`` itself when each row is its own group).
    """
    n = eta0.shape[0]
    ng = a.shape[0]
    Q = u.shape[0]
    theta = math.exp(t)
    eta = np.empty(n)
    w = np.empty(ng)
    g = np.empty(Q)
    step = np.empty(Q)
    trial = np.empty(Q)
    cur = cs  # the derivatives at u; the trial points' go to the other buffer, and the two swap
    alt = np.empty_like(cs)
    swapped = False
    full = full or not fr.on
    C = np.empty((n if fr.on else 0, 4))  # the blocks' series centres (:func:`_block_centres`)
    hval = _pass(d, dg, fr, PZ, y, eta0, a, u, t, theta, eta, cur, C, full)
    prev = np.inf
    logdet = 0.0
    it = 0
    while True:
        for i in range(Q):
            g[i] = -u[i]
        src = cur  # the groups' sums (each row its own group: the rows')
        if ng < n:
            group_sums(d.grp, cur, 2, csg)
            src = csg
        for k in range(ng):
            w[k] = -src[k, 1]
            for r in range(a.shape[1]):
                g[dg.gidx[k, r]] += src[k, 0] * a[k, r]
        _accumulate(dg, a, w, work)
        ok, logdet = block_factor(d.nk, d.bptr, d.bcol, work, 1.0)
        if not ok:
            return False, hval, 0.0, it
        block_solve(d.nk, d.bstart, d.bptr, d.bcol, d.NB, work, g, step)
        dec = 0.0
        for i in range(Q):
            dec += g[i] * step[i]
        if dec < tol or (dec < 1e-14 and dec > 0.25 * prev) or it >= maxit:
            break
        prev = dec
        it += 1
        alpha = 1.0
        hnew = hval
        for _ in range(60):
            for i in range(Q):
                trial[i] = u[i] + alpha * step[i]
            hnew = _pass(d, dg, fr, PZ, y, eta0, a, trial, t, theta, eta, alt, C, full)
            if hnew >= hval - 1e-13 * (1.0 + abs(hval)):
                break
            alpha *= 0.5
        u[:] = trial
        cur, alt = alt, cur
        swapped = not swapped
        hval = hnew
    if swapped:
        cs[:, :] = cur
    if full and ng < n:
        group_sums(d.grp, cs, 6, csg)
    return math.isfinite(hval), hval, logdet, it


@njit(**_JIT)
def re_workspace(d):
    """Work arrays of :func:`re_modes` for a structure (:func:`._linalg.block_workspace`)."""
    return block_workspace(d.nk, d.bptr, (d.eptr, d.efirst, d.cptr, d.crow))


@njit(**_JIT)
def re_value_grad(d, dg, fr, PZ, y, cnt_gt, lgy, phi, u, grad, want_grad, jac, hess):
    """Laplace log-likelihood at ``phi`` (modes ``u`` updated in place), for the rows ``d`` and their
    groups ``dg`` (``REData.grp``: what follows a pass over the rows runs over the groups), and, if ``want_grad``, its
    exact gradient into ``grad`` and, if ``jac`` is (Q, P), the derivatives of the modes ``du / dphi``
    into it (a first-order prediction of the modes at nearby parameters) and, if ``hess`` is (P, P)
    too, the exact Hessian into it (structures without a border, :mod:`._re_hessian`; NaN where it
    does not apply). Returns ``(ok, value, inner iterations)``."""
    n, p = d.X.shape
    t = phi[phi.shape[0] - 1]
    a = re_amat(dg, phi)
    eta0 = np.empty(n)
    for j in range(n):
        e = d.off[j]
        for k in range(p):
            e += d.X[j, k] * phi[k]
        eta0[j] = e
    work = re_workspace(d)
    cs = np.empty((n, 12 if hess.shape[0] == phi.shape[0] else 6))
    csg = cs if a.shape[0] == n else np.empty((a.shape[0], 6))
    ok, hval, logdet, it = re_modes(d, dg, fr, PZ, y, eta0, a, u, t, 1e-22, 200, work, cs, csg, want_grad)
    cval, cd1, _ = theta_terms(cnt_gt, t)
    val = hval + cval - lgy - 0.5 * logdet
    if not ok or not math.isfinite(val):
        return False, val, it
    if want_grad:
        E, zeta, Pj, dd = _gradient(dg, a, u, csg, cd1, work, grad)
        if jac.shape[0] == u.shape[0]:
            _mode_jacobian(dg, a, u, csg, work, jac)
            state = (work, E, zeta, Pj, dd, cs)
            if hess.shape[0] == phi.shape[0] and not hessian_at(d, dg, fr, PZ, y, cnt_gt, phi, u, a, state, jac, hess):
                hess[:, :] = np.nan
    return True, val, it


@njit(**_JIT)
def _mode_jacobian(d, a, u, cs, work, jac):
    """``du / dphi = H^{-1} d(grad_u h) / dphi`` at converged modes (implicit function theorem), with
    ``d(grad_u h) / dphi`` at fixed ``u``: ``sum_j a_j e2_j d eta_j / dphi`` plus, for a Cholesky entry
    ``L_t[r, c]``, ``z_jr e1_j`` at the position of coefficient c, and ``sum_j a_j t1_j`` for log theta."""
    Q = u.shape[0]
    P = jac.shape[1]
    rhs = np.zeros((P, Q))
    _mode_rhs(d, a, u, cs[:, 0], cs[:, 1], cs[:, 4], rhs)
    col = np.empty(Q)
    for k in range(P):
        block_solve(d.nk, d.bstart, d.bptr, d.bcol, d.NB, work, rhs[k], col)
        for i in range(Q):
            jac[i, k] = col[i]


@njit(**_JIT)
def _gradient(d, a, u, cs, cd1, work, grad):
    """Exact gradient of the Laplace log-likelihood at converged modes ``u`` with the per-cell
    derivatives ``cs`` there (see the module docstring). Returns what the exact Hessian reuses
    (:mod:`._re_hessian`): the blocks' local inverses ``E``, ``zeta = H^{-1} xi``, per row ``H^{-1} a_j`` at
    its entries and ``d_j = a_j' H^{-1} a_j``."""
    n, R = a.shape
    p = d.X.shape[1]
    Q = u.shape[0]
    toff, eptr, efirst = work[4], work[8], work[9]
    E = np.empty_like(work[0])
    Sinv = block_local_inverse(d.nk, d.bptr, d.bcol, work, E)
    P = np.empty((n, R))
    dd = np.empty(n)
    xi = np.zeros(Q)
    for j in range(n):
        e3 = cs[j, 2]
        k = d.blk[j]
        nk = d.nk[k]
        nl = nk + d.bptr[k + 1] - d.bptr[k]
        dj = 0.0
        for r in range(R):
            s = 0.0
            lr = d.lidx[j, r]
            for r2 in range(R):
                lr2 = d.lidx[j, r2]
                if lr < nk:
                    e = E[toff[k] + lr * nl + lr2]
                elif lr2 < nk:
                    e = E[toff[k] + lr2 * nl + lr]
                else:
                    g1, g2 = d.gidx[j, r] - d.NB, d.gidx[j, r2] - d.NB
                    if g2 > g1:
                        g1, g2 = g2, g1
                    e = Sinv[eptr[g1] + g2 - efirst[g1]]
                s += e * a[j, r2]
            P[j, r] = s
            dj += a[j, r] * s
        dd[j] = dj
        for r in range(R):
            xi[d.gidx[j, r]] -= e3 * dj * a[j, r]
    zeta = np.empty(Q)
    block_solve(d.nk, d.bstart, d.bptr, d.bcol, d.NB, work, xi, zeta)
    grad[:] = 0.0
    NL = d.lam_t.shape[0]
    jt = grad.shape[0] - 1
    for j in range(n):
        e1, e2, e3, t0, t1, t2 = cs[j, 0], cs[j, 1], cs[j, 2], cs[j, 3], cs[j, 4], cs[j, 5]
        dj = dd[j]
        az = 0.0
        for r in range(R):
            az += a[j, r] * zeta[d.gidx[j, r]]
        cb = e1 - 0.5 * (-e3 * dj + e2 * az)
        for k in range(p):
            grad[k] += d.X[j, k] * cb
        grad[jt] += t0 - 0.5 * (-t2 * dj + t1 * az)
        for i in range(NL):
            o = d.toff[d.lam_t[i]]
            rr = o + d.lam_r[i]
            rc = o + d.lam_c[i]
            zr = d.zval[j, rr]
            if zr == 0.0:
                continue
            gi = d.gidx[j, rc]
            s = zr * u[gi]
            grad[p + i] += e1 * s - 0.5 * (-2.0 * e2 * zr * P[j, rc] - e3 * s * dj + e2 * s * az + e1 * zr * zeta[gi])
    grad[jt] += cd1
    return E, zeta, P, dd


@njit(**_JIT)
def re_seed_fixed(d, a, w):
    """The fixed effects' information with the random effects eliminated, ``X'WX - X'WA H^{-1} A'WX``
    with ``H = A'WA + I`` (rows ``a_j`` of ``Z Lambda``, weights ``w_j``), by the block factorisation of
    :mod:`._linalg` (no matrix over all levels). Returns ``(ok, information)``."""
    n, p = d.X.shape
    R = a.shape[1]
    XX = np.zeros((p, p))
    C = np.zeros((p, d.Q))
    for j in range(n):
        wj = w[j]
        for k in range(p):
            v = wj * d.X[j, k]
            for k2 in range(p):
                XX[k, k2] += v * d.X[j, k2]
            for r in range(R):
                C[k, d.gidx[j, r]] += v * a[j, r]
    work = re_workspace(d)
    _accumulate(d, a, w, work)
    ok, _ = block_factor(d.nk, d.bptr, d.bcol, work, 1.0)
    if not ok:
        return False, XX
    col = np.empty(d.Q)
    for k in range(p):
        block_solve(d.nk, d.bstart, d.bptr, d.bcol, d.NB, work, C[k], col)
        for k2 in range(p):
            s = 0.0
            for i in range(d.Q):
                s += C[k2, i] * col[i]
            XX[k2, k] -= s
    return True, XX


@njit(**_JIT)
def re_block_gene(nzc, nzv, cbid, cLw, Lc, coff, ce, PZ, y2, ye):
    """A gene's sums per block from its non-zero cells only (``nzc`` their indices in increasing
    order, ``nzv`` their counts; per cell its block ``cbid``, ``exp(offset - o_ref)`` ``cLw``, offset
    ``coff`` and ``exp(offset)`` ``ce``): ``PZ[b, k] = sum y eps^k`` with ``eps = cLw / Lc[b] - 1``
    (k < KMAX + 1), the block's total count and ``sum y offset`` in the last two columns, and the sums
    of ``y^2`` (``y2``) and ``y exp(offset)`` (``ye``); all filled in place. The cells are read in
    their own order (the per-block arrays are small and stay in cache), four at a time so that their
    chains of multiplications run side by side."""
    KK = PZ.shape[1] - 2
    PZ[:, :] = 0.0
    y2[:] = 0.0
    ye[:] = 0.0
    n = nzc.shape[0]
    i = 0
    while i + 4 <= n:  # four cells' chains of powers side by side, each block's sums still in cell order
        b0, b1, b2, b3 = cbid[nzc[i]], cbid[nzc[i + 1]], cbid[nzc[i + 2]], cbid[nzc[i + 3]]
        p0, p1, p2, p3 = nzv[i], nzv[i + 1], nzv[i + 2], nzv[i + 3]
        e0 = cLw[nzc[i]] / Lc[b0] - 1.0
        e1 = cLw[nzc[i + 1]] / Lc[b1] - 1.0
        e2 = cLw[nzc[i + 2]] / Lc[b2] - 1.0
        e3 = cLw[nzc[i + 3]] / Lc[b3] - 1.0
        for k in range(KK):
            PZ[b0, k] += p0
            PZ[b1, k] += p1
            PZ[b2, k] += p2
            PZ[b3, k] += p3
            p0 *= e0
            p1 *= e1
            p2 *= e2
            p3 *= e3
        for m in range(i, i + 4):
            _block_gene_totals(nzc[m], nzv[m], cbid, coff, ce, PZ, y2, ye, KK)
        i += 4
    for m in range(i, n):
        c = nzc[m]
        b = cbid[c]
        eps = cLw[c] / Lc[b] - 1.0
        pw = nzv[m]
        for k in range(KK):
            PZ[b, k] += pw
            pw *= eps
        _block_gene_totals(c, nzv[m], cbid, coff, ce, PZ, y2, ye, KK)


@njit(inline="always", **_JIT)
def _block_gene_totals(c, v, cbid, coff, ce, PZ, y2, ye, KK):
    """Cell ``c``'s count ``v`` into its block's total, ``sum y offset``, ``sum y^2`` and ``sum y exp(offset)``
    (:func:`re_block_gene`)."""
    b = cbid[c]
    PZ[b, KK] += v
    PZ[b, KK + 1] += v * coff[c]
    y2[b] += v * v
    ye[b] += v * ce[c]
