"""The exact Hessian of the Laplace log-likelihood of a general structure without a border (every term
nested in the top-level factor: random slopes, ``donor/sample``), at converged modes.

With the notation of :mod:`._re_laplace` (``H = sum_j w_j a_j a_j' + I``, ``w_j = -e2_j``), the outer
parameters ``psi_i`` (beta, the Cholesky entries, log theta), the modes' derivatives ``u_i = du^/dpsi_i``
and, per row ``j``,

- ``deta_ji = d eta_j / d psi_i`` (total): ``x_j`` for beta, ``z_jr u^_(c)`` for the entry ``L[r, c]``,
  0 for log theta, each plus ``a_j' u_i``;
- ``b_ji = d a_j / d psi_i``: ``z_jr`` at coefficient ``c`` for the entry ``L[r, c]``, else 0;
- ``dw_ji = -(e3_j deta_ji + t2_j [i = theta])``,

the log-likelihood ``h(u^) + c(theta) - log det H / 2`` has the Hessian

    C_ik + c'' [i = k = theta] - tr(H^{-1} d2H_ik) / 2 + tr(H^{-1} dH_i H^{-1} dH_k) / 2,

``C``: the Hessian of ``h(u^(psi), psi)``, ``h_psipsi + (d grad_u h / dpsi)' du/dpsi``; ``dH_i = sum_j dw_ji
a_j a_j' + w_j (b_ji a_j' + a_j b_ji')``; ``d2H_ik`` the same differentiated again, whose modes' second
derivatives ``u_ik`` enter only through ``xi' u_ik = zeta' s_ik`` (``xi``, ``zeta = H^{-1} xi`` of the
gradient, ``H u_ik = s_ik`` the second derivative of the mode equation), so no second-order solve is
needed. Without a border ``H^{-1}`` is block-diagonal, so every term is a sum over rows, or over the
top-level blocks of small dense products (the last trace). The rows' derivatives up to the fourth in
eta and second in log theta are those of the donor-intercept kernels (:func:`._cell._cell_all_x`,
:func:`._few_rows._few_rows_block_sums_into`).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ._cell import NB, _cell_all_x, theta_terms
from ._jit import JIT as _JIT


@njit(**_JIT)
def _row_derivatives(fr, PZ, y, eta, t, theta, cs, D):
    """Per row (cell or block) ``(q, e1..e4, t0..t3, tt0..tt2)`` at ``eta`` into ``D`` (n, 12); ``cs`` the
    final inner pass's derivatives (with blocks, its 12 columns: :func:`._re_laplace._blocks_all`)."""
    if fr.on:
        _block_derivatives(fr, PZ, cs, theta, D)
        return
    for j in range(eta.shape[0]):
        z = eta[j] - t
        r = _cell_all_x(y[j], eta[j], math.exp(min(z, 709.0)), z, theta)
        for m in range(12):
            D[j, m] = r[m]


@njit(**_JIT)
def _block_derivatives(fr, PZ, cs, theta, D):
    """:func:`_row_derivatives` of blocks, the sums of :func:`._few_rows._few_rows_block_sums_into` (level 3)
    without ``q``: the final inner pass left ``e1..e3``, ``t0..t2``, ``G_0..2(PA)`` and the series' centre;
    one more series per block gives ``G_4(W)`` and ``G_3(PA)`` (``W = theta PA + PZ``, see
    :func:`._few_rows._centered_series`), and ``e4 = -G_4(W)``, ``t3 = G_4(W) - theta G_3(PA)``, ``tt_m =
    -G_(m+2)(W) + theta (2 G_(m+1)(PA) - G_m(PA))``."""
    PA = fr.PA
    for j in range(cs.shape[0]):
        rc, alpha, K = cs[j, 9], cs[j, 10], int(cs[j, 11])
        w1 = theta * PA[j, 0] + PZ[j, 0]  # W_(k-1), W_(k-2), W_(k-3)
        w2 = 0.0
        w3 = 0.0
        a1 = PA[j, 0]
        a2 = 0.0
        sg = -1.0  # (-1)^(k+1) rc^k
        s4 = p3 = 0.0
        for k in range(1, K + 1):
            sg *= -rc
            kf = float(k)
            wk = theta * PA[j, k] + PZ[j, k]
            ak = PA[j, k]
            s4 += (
                kf * sg * ((kf - 1.0) * (kf - 2.0) * w3 + 3.0 * (kf - 1.0) * (kf - 1.0) * w2
                + (3.0 * kf * kf - 3.0 * kf + 1.0) * w1 + kf * kf * wk)
            )  # fmt: skip
            p3 += kf * sg * ((kf - 1.0) * a2 + (2.0 * kf - 1.0) * a1 + kf * ak)
            w3, w2, w1 = w2, w1, wk
            a2, a1 = a1, ak
        G4, P3 = alpha * s4, alpha * p3
        P0, P1, P2 = cs[j, 6], cs[j, 7], cs[j, 8]
        D[j, 0] = 0.0  # q: not needed
        D[j, 1] = cs[j, 0]
        D[j, 2] = cs[j, 1]
        D[j, 3] = cs[j, 2]
        D[j, 4] = -G4
        D[j, 5] = cs[j, 3]
        D[j, 6] = cs[j, 4]
        D[j, 7] = cs[j, 5]
        D[j, 8] = G4 - theta * P3
        D[j, 9] = cs[j, 1] + theta * (2.0 * P1 - P0)
        D[j, 10] = cs[j, 2] + theta * (2.0 * P2 - P1)
        D[j, 11] = -G4 + theta * (2.0 * P3 - P2)


@njit(**_JIT)
def hessian_at(d, dg, fr, PZ, y, cnt_gt, phi, u, a, state, jac, out):
    """The exact Hessian of the Laplace log-likelihood at ``phi`` into ``out`` (P, P), at the converged modes
    ``u`` with their derivatives ``jac``, for the rows ``d`` and their groups ``dg`` (the rows' derivatives
    summed over each group: every term below is linear in them), ``a`` the groups' rows of ``Z Lambda`` and
    ``state = (work, E, zeta, P_j, d_j, cs)`` what the gradient left (:func:`._re_laplace._gradient`: the
    factors of ``H`` at ``u``, the blocks' inverses, ``H^{-1} xi``, per group ``H^{-1} a_j`` and ``a_j' H^{-1}
    a_j``; the final inner pass's derivatives per row). Returns False when the structure has a border or
    another family than NB."""
    n, p = d.X.shape
    P = phi.shape[0]
    if d.Q != d.NB or d.family != NB:
        return False
    work, E, zeta, Pj, dd, cs = state
    t = phi[P - 1]
    eta = np.empty(n)
    if not fr.on:
        au = np.empty(a.shape[0])
        group_au(dg, a, u, au)
        for j in range(n):
            e = d.off[j] + au[d.grp[j]]
            for k in range(p):
                e += d.X[j, k] * phi[k]
            eta[j] = e
    Drow = np.empty((n, 12))
    _row_derivatives(fr, PZ, y, eta, t, math.exp(t), cs, Drow)
    D = np.empty((a.shape[0], 12))
    group_sums(d.grp, Drow, 12, D)
    hh = np.zeros((P, P))
    acc = np.zeros((P, P))
    toff = work[4]
    dH = np.zeros((P, toff[d.nk.shape[0]]))
    _row_terms(dg, a, u, D, E, jac, zeta, Pj, dd, toff, hh, acc, dH)
    rhs = np.zeros((P, d.Q))
    _mode_rhs(dg, a, u, D[:, 1], D[:, 2], D[:, 6], rhs)
    for i in range(P):
        for k in range(i + 1):
            s = 0.0
            for q in range(d.Q):
                s += rhs[i, q] * jac[q, k]
            out[i, k] = hh[i, k] + s - 0.5 * acc[i, k]
    _block_traces(d, E, dH, toff, out)
    out[P - 1, P - 1] += theta_terms(cnt_gt, t)[2]
    for i in range(P):
        for k in range(i):
            out[k, i] = out[i, k]
    return True


@njit(**_JIT)
def group_au(dg, a, u, out):
    """``a_k' u`` of each group ``k`` (``a`` the groups' rows of ``Z Lambda``, ``dg`` their ``REData``) into
    ``out``: the random effects' part of the linear predictor of the group's rows."""
    for k in range(a.shape[0]):
        e = 0.0
        for r in range(a.shape[1]):
            e += a[k, r] * u[dg.gidx[k, r]]
        out[k] = e


@njit(**_JIT)
def group_sums(grp, cs, ncol, out):
    """The sums of the first ``ncol`` columns of the rows' ``cs`` over each group (``grp``, ``REData.grp``)
    into ``out``."""
    out[:, :ncol] = 0.0
    for j in range(cs.shape[0]):
        k = grp[j]
        for m in range(ncol):
            out[k, m] += cs[j, m]


@njit(**_JIT)
def _row_terms(d, a, u, D, E, jac, zeta, Pj, dd, toff, hh, acc, dH):
    """The row sums of the Hessian (lower triangles), one pass over the rows. Per row ``j``: ``g_i = d eta_j /
    d psi_i`` at fixed modes (``x_j`` for beta, ``z_jr u_(c)`` for the entry ``L[r, c]``, 0 for log theta),
    ``deta_i = g_i + a_j' u_i``, ``v = e2 deta + t1 [theta]``, ``zb_i = zeta' b_ji``, ``pb_i = P_j' b_ji`` and
    ``bu_ik = b_ji' u_k``:

    - into ``hh``, ``h_psipsi``: ``e2 g g'``, ``t1 g`` against log theta, ``tt0`` on its diagonal;
    - into ``acc``, ``tr(H^{-1} d2H_ik)``: ``A deta deta' + B (deta e_t' + e_t deta') + C e_t e_t' + v zb' +
      zb v' + 2 (dw pb' + pb dw') + F (bu + bu') + 2 w (b_i' H^{-1} b_k)``, with ``A = -d e4 + az e3``,
      ``B = -d t3 + az t2``, ``C = -d tt2 + az tt1``, ``F = -d e3 + az e2`` (``d = a' H^{-1} a``, ``az =
      zeta' a``; only the Cholesky entries have a ``b``);
    - into ``dH`` (per parameter, over each block's effects), ``dH_i``."""
    n, R = a.shape
    p = d.X.shape[1]
    P = acc.shape[0]
    NL = d.lam_t.shape[0]
    it = P - 1
    eb = np.empty(NL, dtype=np.int64)
    er = np.empty(NL, dtype=np.int64)
    for i in range(NL):
        eb[i] = d.toff[d.lam_t[i]] + d.lam_c[i]
        er[i] = d.toff[d.lam_t[i]] + d.lam_r[i]
    zb = np.empty(NL)
    pb = np.zeros(P)
    zt = np.zeros(P)
    dw = np.empty(P)
    g = np.zeros(P)
    de = np.empty(P)
    cv = np.empty(P)
    for j in range(n):
        e2, e3, e4 = D[j, 2], D[j, 3], D[j, 4]
        t1, t2, t3, tt1, tt2 = D[j, 6], D[j, 7], D[j, 8], D[j, 10], D[j, 11]
        for k in range(p):
            g[k] = d.X[j, k]
        for i in range(NL):
            zb[i] = d.zval[j, er[i]]
            g[p + i] = zb[i] * u[d.gidx[j, eb[i]]]
        az = 0.0
        for r in range(R):
            az += a[j, r] * zeta[d.gidx[j, r]]
        for i in range(NL):
            pb[p + i] = zb[i] * Pj[j, eb[i]]
            zt[p + i] = zb[i] * zeta[d.gidx[j, eb[i]]]
        dj = dd[j]
        A = -dj * e4 + az * e3
        for i in range(P):
            s = g[i]
            for r in range(R):
                s += a[j, r] * jac[d.gidx[j, r], i]
            de[i] = s
            dw[i] = -e3 * s
            cv[i] = 0.5 * A * s + e2 * zt[i] - 2.0 * e3 * pb[i]
        dw[it] -= t2
        for i in range(P):  # the rank-2 form of the A, v zb' and dw pb' terms (the docstring's)
            di, ci, hi = de[i], cv[i], e2 * g[i]
            for k in range(i + 1):
                acc[i, k] += di * cv[k] + de[k] * ci
                hh[i, k] += hi * g[k]
        for i in range(NL):  # what v and dw's log theta entries add (t1, -t2) against the Cholesky entries
            acc[it, p + i] += t1 * zt[p + i] - 2.0 * t2 * pb[p + i]
        B = -dj * t3 + az * t2
        for k in range(it):
            hh[it, k] += t1 * g[k]
            acc[it, k] += B * de[k]
        hh[it, it] += D[j, 9]
        acc[it, it] += 2.0 * B * de[it] - dj * tt2 + az * tt1
        _cholesky_terms(d, a, j, E, jac, eb, zb, (-dj * e3 + az * e2, e2), toff, acc, dH)
        blk = d.blk[j]
        k0 = toff[blk]
        nk = d.nk[blk]
        for r in range(R):
            lr = k0 + d.lidx[j, r] * nk
            for r2 in range(R):
                aa = a[j, r] * a[j, r2]
                c = lr + d.lidx[j, r2]
                for i in range(P):
                    dH[i, c] += dw[i] * aa


@njit(inline="always", **_JIT)
def _cholesky_terms(d, a, j, E, jac, eb, zb, coefs, toff, acc, dH):
    """The terms of :func:`_row_terms` that only the Cholesky entries have (their ``b_ji``): into ``acc``,
    ``F (bu + bu')`` and ``2 w (b_i' H^{-1} b_k)``; into ``dH``, ``w (b_i a' + a b_i')``. ``coefs = (F, e2)``."""
    F, e2 = coefs
    R = a.shape[1]
    p = d.X.shape[1]
    P = acc.shape[0]
    blk = d.blk[j]
    k0 = toff[blk]
    nk = d.nk[blk]
    for l in range(eb.shape[0]):
        if zb[l] == 0.0:
            continue
        gl = d.gidx[j, eb[l]]
        il = p + l
        for k in range(P):
            f = F * zb[l] * jac[gl, k] * (2.0 if k == il else 1.0)
            if k <= il:
                acc[il, k] += f
            else:
                acc[k, il] += f
        ll = d.lidx[j, eb[l]]
        for m in range(l + 1):
            acc[il, p + m] += -2.0 * e2 * zb[l] * zb[m] * E[k0 + ll * nk + d.lidx[j, eb[m]]]
        wv = -e2 * zb[l]
        for r in range(R):
            lr = d.lidx[j, r]
            dH[il, k0 + ll * nk + lr] += wv * a[j, r]
            dH[il, k0 + lr * nk + ll] += wv * a[j, r]


@njit(**_JIT)
def _block_traces(d, E, dH, toff, out):
    """Add ``tr(H^{-1} dH_i H^{-1} dH_k) / 2`` (lower triangle): per top-level block, ``M_i = H_k^{-1} dH_i``
    over its effects and ``sum tr(M_i M_k)``."""
    P = out.shape[0]
    K = d.nk.shape[0]
    nmax = 1
    for k in range(K):
        nmax = max(nmax, d.nk[k])
    M = np.empty((P, nmax * nmax))
    for k in range(K):
        nk = d.nk[k]
        k0 = toff[k]
        for i in range(P):
            for r in range(nk):
                for c in range(nk):
                    s = 0.0
                    for m in range(nk):
                        s += E[k0 + r * nk + m] * dH[i, k0 + m * nk + c]
                    M[i, r * nk + c] = s
        for i in range(P):
            for k2 in range(i + 1):
                s = 0.0
                for r in range(nk):
                    for c in range(nk):
                        s += M[i, r * nk + c] * M[k2, c * nk + r]
                out[i, k2] += 0.5 * s


@njit(**_JIT)
def _mode_rhs(d, a, u, e1s, e2s, t1s, rhs):
    """``d(grad_u h) / dphi`` at fixed ``u`` into ``rhs`` (P, Q), from the rows' ``e1``, ``e2`` and ``t1``
    (see :func:`._re_laplace._mode_jacobian`)."""
    n, R = a.shape
    p = d.X.shape[1]
    P = rhs.shape[0]
    NL = d.lam_t.shape[0]
    for j in range(n):
        e1, e2, t1 = e1s[j], e2s[j], t1s[j]
        for r in range(R):
            g = d.gidx[j, r]
            ae2 = a[j, r] * e2
            for k in range(p):
                rhs[k, g] += ae2 * d.X[j, k]
            rhs[P - 1, g] += a[j, r] * t1
        for i in range(NL):
            o = d.toff[d.lam_t[i]]
            zr = d.zval[j, o + d.lam_r[i]]
            if zr == 0.0:
                continue
            gc = d.gidx[j, o + d.lam_c[i]]
            s = zr * u[gc] * e2
            for r in range(R):
                rhs[p + i, d.gidx[j, r]] += a[j, r] * s
            rhs[p + i, gc] += zr * e1
