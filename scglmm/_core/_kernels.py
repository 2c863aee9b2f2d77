"""Numba kernels for the negative binomial GLMM with one scalar random effect per donor block.

Everything here works on plain arrays. Cells are sorted so that each donor is a contiguous block
``starts[i]:starts[i + 1]``; the random-effect vector of a block has length one (a random
intercept), and all per-block work is done in functions that take the block bounds, so that blocks
with a longer random-effect vector can later reuse the same outer optimiser.

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
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

# status bits (see scglmm._core._status)
SIGMA2_BOUNDARY = 1
POISSON_LIMIT = 2
NOT_CONVERGED = 4
SEPARATION = 8
ALL_ZERO = 16
FAILED = 32

LOG_2PI = math.log(2.0 * math.pi)

_JIT = {"cache": True, "nogil": True, "fastmath": False}


# --------------------------------------------------------------------------------------------------
# per-cell pieces
# --------------------------------------------------------------------------------------------------
@njit(**_JIT)
def _softplus(z: float) -> float:
    """log(1 + exp(z)) without overflow."""
    if z > 0.0:
        return z + math.log1p(math.exp(-z))
    return math.log1p(math.exp(z))


@njit(**_JIT)
def _cell_q(y: float, eta: float, t: float, theta: float) -> float:
    """q(eta, t, y) = y eta - (y + theta) log1p(mu / theta)."""
    return y * eta - (y + theta) * _softplus(eta - t)


@njit(**_JIT)
def _cell_d12(y: float, eta: float, t: float, theta: float) -> tuple[float, float]:
    """First and second derivative of q in eta."""
    return _cell_d12_x(y, math.exp(min(eta - t, 709.0)), theta)


@njit(**_JIT)
def _cell_all(y: float, eta: float, t: float, theta: float):
    """All derivatives of q needed for the Laplace gradient and Hessian.

    Returns (q, e1, e2, e3, e4, t0, t1, t2, t3, tt0, tt1, tt2) where ``ek`` is the k-th derivative
    in eta, ``tk`` the derivative once in t and k times in eta, ``ttk`` twice in t, k times in eta.
    With g_0 = log1p(mu/theta) and g_k its k-th derivative in z = eta - t (g_1 = r = mu/(mu+theta)):
    d^k q / d eta^k = -(y+theta) g_k (+ y for k = 1), d/dt of -(y+theta) g_k is
    -theta g_k + (y+theta) g_{k+1}, and d^2/dt^2 is -theta g_k + 2 theta g_{k+1} - (y+theta) g_{k+2}.
    """
    z = eta - t
    return _cell_all_x(y, eta, math.exp(min(z, 709.0)), z, theta)


@njit(**_JIT)
def _x_parts(x: float) -> tuple[float, float]:
    """r = x / (1 + x) and rho = 1 / (1 + x) for x = mu / theta >= 0, without overflow."""
    if x > 1e200:
        return 1.0, 1.0 / x
    rho = 1.0 / (1.0 + x)
    return x * rho, rho


@njit(**_JIT)
def _x_parts_log(x: float, z: float) -> tuple[float, float, float]:
    """r, rho (as :func:`_x_parts`) and log1p(x), given x >= 0 and z = log(x).

    log1p as log(a) + (x - (a - 1)) / a with a = fl(1 + x): for x < 1, a - 1 is exact and
    x - (a - 1) is the exact rounding error of 1 + x, so the correction restores full relative
    accuracy (measured within 1 ulp of log1p over 1e-300 <= x <= 1e15); libm's log is about three
    times faster than its log1p, and this is the costliest operation of the pass over the cells."""
    if x > 1e15:
        if x > 1e200:
            return 1.0, 1.0 / x, z + 1.0 / x
        rho = 1.0 / (1.0 + x)
        return x * rho, rho, z + 1.0 / x
    a = 1.0 + x
    rho = 1.0 / a
    return x * rho, rho, math.log(a) + (x - (a - 1.0)) * rho


@njit(**_JIT)
def _cell_d12_x(y: float, x: float, theta: float) -> tuple[float, float]:
    """As :func:`_cell_d12` from x = mu / theta (no transcendental function)."""
    r, rho = _x_parts(x)
    yt = y + theta
    return y - yt * r, -yt * r * rho


@njit(**_JIT)
def _cell_all_x(y: float, eta: float, x: float, z: float, theta: float):
    """:func:`_cell_all` from x = mu / theta and z = log(x) (one log1p, no exp)."""
    r, rho, g0 = _x_parts_log(x, z)
    g1 = r
    g2 = r * rho
    g3 = g2 * (rho - r)
    g4 = g2 * (1.0 - 6.0 * r * rho)
    yt = y + theta
    q = y * eta - yt * g0
    e1 = y - yt * g1
    e2 = -yt * g2
    e3 = -yt * g3
    e4 = -yt * g4
    t0 = -theta * g0 + yt * g1
    t1 = -theta * g1 + yt * g2
    t2 = -theta * g2 + yt * g3
    t3 = -theta * g3 + yt * g4
    tt0 = -theta * g0 + 2.0 * theta * g1 - yt * g2
    tt1 = -theta * g1 + 2.0 * theta * g2 - yt * g3
    tt2 = -theta * g2 + 2.0 * theta * g3 - yt * g4
    return q, e1, e2, e3, e4, t0, t1, t2, t3, tt0, tt1, tt2


@njit(**_JIT)
def theta_terms(cnt_gt: np.ndarray, t: float) -> tuple[float, float, float]:
    """sum_cells C(y, theta) and its first two derivatives in t = log theta."""
    theta = math.exp(t)
    v = 0.0
    d1 = 0.0
    d2 = 0.0
    for k in range(1, cnt_gt.shape[0]):
        c = cnt_gt[k]
        if c == 0.0:
            break
        kk = float(k)
        v += c * math.log1p(kk / theta)
        d1 -= c * kk / (theta + kk)
        d2 += c * kk * theta / ((theta + kk) * (theta + kk))
    return v, d1, d2


@njit(**_JIT)
def count_table(y: np.ndarray) -> tuple[np.ndarray, float]:
    """cnt_gt[k] = #cells with y > k (k = 0..max y - 1) and sum of lgamma(y + 1)."""
    ymax = 0
    for j in range(y.shape[0]):
        if y[j] > ymax:
            ymax = int(y[j])
    hist = np.zeros(ymax + 1)
    lg = 0.0
    for j in range(y.shape[0]):
        yj = int(y[j])
        if yj > 0:
            hist[yj] += 1.0
    for v in range(2, ymax + 1):
        if hist[v] > 0.0:
            lg += hist[v] * math.lgamma(v + 1.0)
    cnt_gt = np.zeros(max(ymax, 1))
    acc = 0.0
    for k in range(ymax - 1, -1, -1):
        acc += hist[k + 1]
        cnt_gt[k] = acc
    return cnt_gt, lg


# --------------------------------------------------------------------------------------------------
# vectorisable exp and log1p
# --------------------------------------------------------------------------------------------------
# The passes over the cells are dominated by libm's exp and log1p, which are opaque calls that keep
# LLVM from vectorising the loops. Below are inline versions built from arithmetic and bit
# operations only (within 2 ulp of libm over the ranges used, tested against mpmath), so that the
# per-cell loops compile to AVX2 code. Kernels that use them set ``error_model="numpy"`` (no
# zero-division branch in the loop); the reductions are done in separate functions compiled with
# reassociation allowed, the only fast-math licence taken (the elementwise parts, which hold the
# compensated arithmetic below, only allow fused multiply-adds).
@intrinsic
def _f64_bits(typingctx, x):
    """The bits of a float64 as an int64."""
    sig = types.int64(types.float64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return sig, codegen


@intrinsic
def _bits_f64(typingctx, x):
    """The float64 with the given bits."""
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return sig, codegen


_LN2_HI = 6.93147180369123816490e-01  # ln 2 split so that k * _LN2_HI is exact for |k| < 2^20
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.4426950408889634
_TWO52 = 4503599627370496.0
_SQRT_HALF_BITS = 0x3FE6A09E667F3BCD  # bits of sqrt(1/2)
_VJIT = {"cache": True, "nogil": True, "error_model": "numpy", "fastmath": {"contract"}}
_RJIT = {"cache": True, "nogil": True, "error_model": "numpy", "fastmath": {"reassoc", "contract", "nsz"}}


@njit(inline="always", **_VJIT)
def _vexp(x: float) -> float:
    """exp(x) for -708 <= x <= 709: x = k ln2 + r with |r| <= ln2 / 2, e^r by its Taylor
    polynomial of degree 13 (remainder below 2e-17), 2^k from its bits."""
    kf = math.floor(x * _INV_LN2 + 0.5)
    r = (x - kf * _LN2_HI) - kf * _LN2_LO
    e = 1.0 / 6227020800.0
    e = e * r + 1.0 / 479001600.0
    e = e * r + 1.0 / 39916800.0
    e = e * r + 1.0 / 3628800.0
    e = e * r + 1.0 / 362880.0
    e = e * r + 1.0 / 40320.0
    e = e * r + 1.0 / 5040.0
    e = e * r + 1.0 / 720.0
    e = e * r + 1.0 / 120.0
    e = e * r + 1.0 / 24.0
    e = e * r + 1.0 / 6.0
    e = e * r + 0.5
    e = e * r + 1.0
    e = e * r + 1.0
    # 2^k: k + 1023 in the exponent field (kf + 2^52 holds k in its low bits)
    k = _f64_bits(kf + (_TWO52 + 1023.0)) & 0x7FF
    return e * _bits_f64(k << 52)


@njit(inline="always", **_VJIT)
def _vlog1p(x: float, a: float, rho: float) -> float:
    """log1p(x) for 0 <= x < 1e300, given a = 1 + x (rounded) and rho = 1 / a.

    log(a) by a = 2^k m, m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(s), s = (m - 1) / (m + 1),
    |s| <= 0.172, by its series to s^23; plus (x - (a - 1)) / a, the exact rounding error of
    1 + x (for x < 1) to first order, which restores relative accuracy for small x."""
    bits = _f64_bits(a)
    k = (bits - _SQRT_HALF_BITS) >> 52
    m = _bits_f64(bits - (k << 52))
    kf = _bits_f64(k | 0x4330000000000000) - _TWO52  # k as a float, from its bits
    f = m - 1.0
    s = f / (2.0 + f)
    s2 = s * s
    p = 2.0 / 23.0
    p = p * s2 + 2.0 / 21.0
    p = p * s2 + 2.0 / 19.0
    p = p * s2 + 2.0 / 17.0
    p = p * s2 + 2.0 / 15.0
    p = p * s2 + 2.0 / 13.0
    p = p * s2 + 2.0 / 11.0
    p = p * s2 + 2.0 / 9.0
    p = p * s2 + 2.0 / 7.0
    p = p * s2 + 2.0 / 5.0
    p = p * s2 + 2.0 / 3.0
    return kf * _LN2_HI + (f - s * (f - s2 * p) + (kf * _LN2_LO + (x - (a - 1.0)) * rho))


@njit(**_VJIT)
def vexp_array(x: np.ndarray, out: np.ndarray) -> None:
    """out = exp(x) elementwise with :func:`_vexp` (x clipped to [-708, 709]); for tests."""
    for j in range(x.shape[0]):
        out[j] = _vexp(min(max(x[j], -708.0), 709.0))


@njit(**_VJIT)
def vlog1p_array(x: np.ndarray, out: np.ndarray) -> None:
    """out = log1p(x) elementwise with :func:`_vlog1p` (0 <= x < 1e300); for tests."""
    for j in range(x.shape[0]):
        a = 1.0 + x[j]
        out[j] = _vlog1p(x[j], a, 1.0 / a)


#: cells per chunk of the two-phase passes (elementwise values into scratch, then the sums)
CHUNK = 256


@njit(**_VJIT)
def _chunk_g(w, lo, hi, eb, G):
    """G[m, j - lo] = g_m(x_j), m = 0..4, for cells lo <= j < hi, with x_j = w_j eb = mu / theta,
    g_0 = log1p(x) and g_m its m-th derivative in log x. Elementwise, so it vectorises. (x is
    capped at 1e300, beyond any count model.)"""
    for j in range(lo, hi):
        k = j - lo
        x = min(w[j] * eb, 1e300)
        a = 1.0 + x
        rho = 1.0 / a
        r = x * rho
        g2 = r * rho
        G[0, k] = _vlog1p(x, a, rho)
        G[1, k] = r
        G[2, k] = g2
        G[3, k] = g2 * (rho - r)
        G[4, k] = g2 * (1.0 - 6.0 * r * rho)


@njit(**_RJIT)
def _chunk_sums(y, eta0, lo, hi, G, S):
    """Add to S: sum g_m (S[0:5]), sum y g_m (S[5:10]), sum y, sum y eta0 (S[10], S[11])."""
    a0 = a1 = a2 = a3 = a4 = 0.0
    y0 = y1 = y2 = y3 = y4 = 0.0
    ys = 0.0
    ye = 0.0
    for j in range(lo, hi):
        k = j - lo
        yy = y[j]
        g0 = G[0, k]
        g1 = G[1, k]
        g2 = G[2, k]
        g3 = G[3, k]
        g4 = G[4, k]
        a0 += g0
        a1 += g1
        a2 += g2
        a3 += g3
        a4 += g4
        y0 += yy * g0
        y1 += yy * g1
        y2 += yy * g2
        y3 += yy * g3
        y4 += yy * g4
        ys += yy
        ye += yy * eta0[j]
    S[0] += a0
    S[1] += a1
    S[2] += a2
    S[3] += a3
    S[4] += a4
    S[5] += y0
    S[6] += y1
    S[7] += y2
    S[8] += y3
    S[9] += y4
    S[10] += ys
    S[11] += ye


@njit(**_RJIT)
def _chunk_sums_z(y, lo, hi, G, S):
    """Add to S the z-weighted sums (z = G[5], the cell-level column): sum z g_m (S[12:16],
    m = 1..4), sum y z g_m (S[16:20]), sum z^2 g_m (S[20:23], m = 2..4), sum y z^2 g_m (S[23:26])
    and sum y z (S[26])."""
    b1 = b2 = b3 = b4 = 0.0
    c1 = c2 = c3 = c4 = 0.0
    d2 = d3 = d4 = 0.0
    e2 = e3 = e4 = 0.0
    yz = 0.0
    for j in range(lo, hi):
        k = j - lo
        z = G[5, k]
        yy = y[j]
        zy = z * yy
        zz = z * z
        zzy = zz * yy
        g1 = G[1, k]
        g2 = G[2, k]
        g3 = G[3, k]
        g4 = G[4, k]
        b1 += z * g1
        b2 += z * g2
        b3 += z * g3
        b4 += z * g4
        c1 += zy * g1
        c2 += zy * g2
        c3 += zy * g3
        c4 += zy * g4
        d2 += zz * g2
        d3 += zz * g3
        d4 += zz * g4
        e2 += zzy * g2
        e3 += zzy * g3
        e4 += zzy * g4
        yz += zy
    S[12] += b1
    S[13] += b2
    S[14] += b3
    S[15] += b4
    S[16] += c1
    S[17] += c2
    S[18] += c3
    S[19] += c4
    S[20] += d2
    S[21] += d3
    S[22] += d4
    S[23] += e2
    S[24] += e3
    S[25] += e4
    S[26] += yz


@njit(**_RJIT)
def _mode_sums(y, w, lo, hi, eb, theta):
    """First four derivatives in b of the cells' part of h_i (one pass, vectorised)."""
    f1 = 0.0
    f2 = 0.0
    f3 = 0.0
    f4 = 0.0
    for j in range(lo, hi):
        x = min(w[j] * eb, 1e300)
        rho = 1.0 / (1.0 + x)
        r = x * rho
        yt = y[j] + theta
        g2 = r * rho
        f1 += y[j] - yt * r
        f2 -= yt * g2
        f3 -= yt * g2 * (rho - r)
        f4 -= yt * g2 * (1.0 - 6.0 * r * rho)
    return f1, f2, f3, f4


# --------------------------------------------------------------------------------------------------
# conditional modes and the Laplace objective
# --------------------------------------------------------------------------------------------------
@njit(**_JIT)
def conditional_modes(y, eta0, w, starts, s, t, b, tol=1e-12, maxit=100):
    """Halley's method on each donor's b_i (h_i is strictly concave in b). Updates ``b`` in place.

    Steps use h's first three derivatives (cubic convergence; plain Newton steps while the step
    is above 0.5), all four summed in one pass over the donor's cells. After a Halley step delta the
    error left is about |f3^2 / (4 f2^2) - f4 / (6 f2)| |delta|^3 (f_k the k-th derivative of h_i;
    |f3 / (2 f2)| delta^2 after a Newton step). A donor is done, without another pass over its
    cells, once that predicted error is below ``tol`` (relative to 1 + |b_i|) after a step below
    1e-2, or once a step is below 1e-8.
    ``w = exp(eta0)`` (one exponential per cell per change of beta); mu / theta is then
    ``w * exp(b - t)``, so the passes over the cells need no transcendental function.
    Returns False if some donor did not converge.
    """
    theta = math.exp(t)
    prec = math.exp(-s)
    ok = True
    for i in range(starts.shape[0] - 1):
        bi = b[i]
        done = False
        for _ in range(maxit):
            c1, c2, f3, f4 = _mode_sums(y, w, starts[i], starts[i + 1], math.exp(bi - t), theta)
            f1 = c1 - bi * prec
            f2 = c2 - prec
            step = -f1 / f2
            err = abs(0.5 * f3 / f2) * step * step
            if abs(step) <= 0.5:
                den = 1.0 + 0.5 * step * f3 / f2
                if den > 0.5:
                    step /= den
                    err = abs(0.25 * f3 * f3 / (f2 * f2) - f4 / (6.0 * f2)) * abs(step) ** 3
            if step > 2.0:
                step = 2.0
            elif step < -2.0:
                step = -2.0
            bi += step
            scale = 1.0 + abs(bi)
            if abs(step) <= 1e-8 * scale or (abs(step) <= 1e-2 and err <= tol * scale):
                done = True
                break
        if not done or not math.isfinite(bi):
            ok = False
        b[i] = bi
    return ok


@njit(**_JIT)
def _donor_h(y, eta0, lo, hi, bi, t, theta, prec):
    """h_i(b) without the gene-level constants (C and lgamma terms)."""
    h = -0.5 * bi * bi * prec
    for j in range(lo, hi):
        h += _cell_q(y[j], eta0[j] + bi, t, theta)
    return h


@njit(**_JIT)
def laplace_value(y, eta0, w, starts, s, t, b, cnt_gt, lgy):
    """Laplace log-likelihood at modes ``b`` (which must be the conditional modes); ``w = exp(eta0)``.
    Summed chunk by chunk with the vectorised pieces of :func:`laplace_grad_hess`."""
    theta = math.exp(t)
    prec = math.exp(-s)
    G = np.empty((6, CHUNK))
    S = np.empty(27)
    total = 0.0
    for i in range(starts.shape[0] - 1):
        bi = b[i]
        eb = math.exp(bi - t)
        S[:] = 0.0
        for lo in range(starts[i], starts[i + 1], CHUNK):
            hi = min(lo + CHUNK, starts[i + 1])
            _chunk_g(w, lo, hi, eb, G)
            _chunk_sums(y, eta0, lo, hi, G, S)
        h = -0.5 * bi * bi * prec + S[11] + bi * S[10] - S[5] - theta * S[0]
        f2 = -prec - S[7] - theta * S[2]
        total += h - 0.5 * s - 0.5 * math.log(-f2)
    c, _, _ = theta_terms(cnt_gt, t)
    return total + c - lgy


@njit(**_JIT)
def agq_value(y, eta0, starts, s, t, b, cnt_gt, lgy, nodes, logw):
    """Adaptive Gauss-Hermite log-likelihood with ``nodes`` (z_k) and ``logw`` (log w_k + z_k^2).

    Centred at the conditional modes ``b`` and scaled by the curvature there. With a single node
    (z = 0, w = sqrt(pi)) it equals :func:`laplace_value`.
    """
    theta = math.exp(t)
    prec = math.exp(-s)
    K = nodes.shape[0]
    vals = np.empty(K)
    total = 0.0
    for i in range(starts.shape[0] - 1):
        lo = starts[i]
        hi = starts[i + 1]
        bi = b[i]
        f2 = -prec
        for j in range(lo, hi):
            f2 += _cell_d12(y[j], eta0[j] + bi, t, theta)[1]
        scale = math.sqrt(2.0 / -f2)
        vmax = -np.inf
        for k in range(K):
            v = logw[k] + _donor_h(y, eta0, lo, hi, bi + nodes[k] * scale, t, theta, prec)
            vals[k] = v
            if v > vmax:
                vmax = v
        acc = 0.0
        for k in range(K):
            acc += math.exp(vals[k] - vmax)
        total += vmax + math.log(acc) + math.log(scale) - 0.5 * (LOG_2PI + s)
    c, _, _ = theta_terms(cnt_gt, t)
    return total + c - lgy


@njit(**_JIT)
def _donor_terms(bi, s, prec, h, f2, f3, f4, g, a, c, d, F, A, C, v, dK, p, grad, hess, vout):
    """Add one donor's Laplace term to ``grad`` and the lower triangle of ``hess``; return L_i.
    ``vout`` (q,) receives v = db_i / dphi, the sensitivity of the mode (to predict it elsewhere).

    On entry g, a, c, d hold f_phi, f_bphi, f_bbphi, f_bbbphi and F, A, C the lower triangle and
    the t column of the beta rows of f_phiphi, f_bphiphi, f_bbphiphi, all without the prior term.
    """
    q = p + 2
    js = p
    jt = p + 1
    # the prior term -b^2 exp(-s) / 2
    g[js] = 0.5 * bi * bi * prec
    a[js] = bi * prec
    c[js] = prec
    d[js] = 0.0
    F[js, js] = -0.5 * bi * bi * prec
    A[js, js] = -bi * prec
    C[js, js] = -prec
    # symmetrize (only lower triangle and the t column of the beta rows were filled)
    for k in range(p):
        F[jt, k] = F[k, jt]
        A[jt, k] = A[k, jt]
        C[jt, k] = C[k, jt]
        for l in range(k):
            F[l, k] = F[k, l]
            A[l, k] = A[k, l]
            C[l, k] = C[k, l]
    K = f2
    for k in range(q):
        v[k] = -a[k] / K
        vout[k] = v[k]
    for k in range(q):
        dK[k] = c[k] + f3 * v[k]
    for k in range(q):
        grad[k] += g[k] - 0.5 * dK[k] / K
    grad[js] -= 0.5
    for k in range(q):
        for l in range(k + 1):
            dv = -(A[k, l] + c[k] * v[l] + v[k] * c[l] + f3 * v[k] * v[l]) / K
            d2K = C[k, l] + d[k] * v[l] + v[k] * d[l] + f4 * v[k] * v[l] + f3 * dv
            hess[k, l] += F[k, l] - a[k] * a[l] / K - 0.5 * (d2K / K - dK[k] * dK[l] / (K * K))
    return h - 0.5 * s - 0.5 * math.log(-K)


@njit(**_JIT)
def cell_level_column(X, starts):
    """Index of the only column of ``X`` that varies within some donor, -1 if none does, -2 if
    several do (see :func:`laplace_grad_hess`)."""
    n, p = X.shape
    jc = -1
    for k in range(p):
        varies = False
        for i in range(starts.shape[0] - 1):
            x0 = X[starts[i], k] if starts[i] < n else 0.0
            for j in range(starts[i] + 1, starts[i + 1]):
                if X[j, k] != x0:
                    varies = True
                    break
            if varies:
                break
        if varies:
            if jc >= 0:
                return -2
            jc = k
    return jc


@njit(**_JIT)
def _donor_sums_one_cell_column(y, X, eta0, w, lo, hi, bi, eb, t, theta, jc, h, f2, g, a, c, d, F, A, C, G, S):
    """One donor's sums for :func:`laplace_grad_hess` when only column ``jc`` varies within donors
    (-1: none). Weighted sums over the cells of 1, z and z^2 (z the cell's value of column ``jc``)
    in scalars; the donor's constant row multiplies them afterwards. Fills g, a, c, d, F, A, C
    (lower triangle and t column, without the prior term); returns h, f2, f3, f4.

    Every per-cell term is a combination of g_0..g_4 (see :func:`_cell_all`) with weights theta
    and y: e1 = y - (y + theta) g_1, e_m = -(y + theta) g_m, t_m = -theta g_m + (y + theta) g_{m+1},
    tt_m = -theta g_m + 2 theta g_{m+1} - (y + theta) g_{m+2}. So the pass sums g_m and y g_m (and
    their z- and z^2-weighted versions), chunk by chunk: values into ``G`` (6, CHUNK), then sums
    into ``S`` (27,), both vectorised."""
    p = X.shape[1]
    jt = p + 1
    S[:] = 0.0
    for lo_c in range(lo, hi, CHUNK):
        hi_c = min(lo_c + CHUNK, hi)
        _chunk_g(w, lo_c, hi_c, eb, G)
        _chunk_sums(y, eta0, lo_c, hi_c, G, S)
        if jc >= 0:
            for j in range(lo_c, hi_c):
                G[5, j - lo_c] = X[j, jc]
            _chunk_sums_z(y, lo_c, hi_c, G, S)
    th = theta
    h += S[11] + bi * S[10] - S[5] - th * S[0]
    s1 = S[10] - S[6] - th * S[1]
    s2 = -(S[7] + th * S[2])
    s3 = -(S[8] + th * S[3])
    s4 = -(S[9] + th * S[4])
    st0 = -th * S[0] + S[6] + th * S[1]
    st1 = -th * S[1] + S[7] + th * S[2]
    st2 = -th * S[2] + S[8] + th * S[3]
    st3 = -th * S[3] + S[9] + th * S[4]
    stt0 = -th * S[0] + 2.0 * th * S[1] - S[7] - th * S[2]
    stt1 = -th * S[1] + 2.0 * th * S[2] - S[8] - th * S[3]
    stt2 = -th * S[2] + 2.0 * th * S[3] - S[9] - th * S[4]
    z1 = S[26] - S[16] - th * S[12]
    z2 = -(S[17] + th * S[13])
    z3 = -(S[18] + th * S[14])
    z4 = -(S[19] + th * S[15])
    zt1 = -th * S[12] + S[17] + th * S[13]
    zt2 = -th * S[13] + S[18] + th * S[14]
    zt3 = -th * S[14] + S[19] + th * S[15]
    zz2 = -(S[23] + th * S[20])
    zz3 = -(S[24] + th * S[21])
    zz4 = -(S[25] + th * S[22])
    f2 += s2
    for k in range(p):
        if k == jc:
            g[k] = z1
            a[k] = z2
            c[k] = z3
            d[k] = z4
            F[k, jt] = zt1
            A[k, jt] = zt2
            C[k, jt] = zt3
        else:
            xk = X[lo, k]
            g[k] = s1 * xk
            a[k] = s2 * xk
            c[k] = s3 * xk
            d[k] = s4 * xk
            F[k, jt] = st1 * xk
            A[k, jt] = st2 * xk
            C[k, jt] = st3 * xk
        for l in range(k + 1):
            if k == jc and l == jc:
                F[k, l] = zz2
                A[k, l] = zz3
                C[k, l] = zz4
            elif k == jc or l == jc:
                xo = X[lo, l] if k == jc else X[lo, k]
                F[k, l] = z2 * xo
                A[k, l] = z3 * xo
                C[k, l] = z4 * xo
            else:
                xx = X[lo, k] * X[lo, l]
                F[k, l] = s2 * xx
                A[k, l] = s3 * xx
                C[k, l] = s4 * xx
    g[jt] = st0
    a[jt] = st1
    c[jt] = st2
    d[jt] = st3
    F[jt, jt] = stt0
    A[jt, jt] = stt1
    C[jt, jt] = stt2
    return h, f2, s3, s4


@njit(**_JIT)
def laplace_grad_hess(y, X, eta0, w, starts, s, t, b, cnt_gt, lgy, grad, hess, VB, jc=-2):
    """Laplace log-likelihood with its exact gradient and Hessian in phi = (beta, s, t).

    ``b`` must hold the conditional modes. ``grad`` (q,) and ``hess`` (q, q) are overwritten, and
    ``VB`` (m, q) receives the sensitivities db_i / dphi of the modes. ``jc`` (from
    :func:`cell_level_column`): when at most one column varies within donors (``jc`` its index,
    or -1 for none), every other column is constant in a donor and factors out of the donor's sums,
    which then need a fixed set of scalar accumulators; -2 takes the general loop.
    Per donor, with f(b, phi) = h_i and b^(phi) its maximiser, v = db^/dphi = -f_bphi / f_bb:

        L_i      = f - s/2 - log(-f_bb)/2
        dL_i     = f_phi - e_s/2 - dK/(2K),           K = f_bb,  dK = f_bbphi + f_bbb v
        d2L_i    = f_phiphi - f_bphi f_bphi'/K - (d2K/K - dK dK'/K^2)/2
        d2K      = f_bbphiphi + f_bbbphi v' + v f_bbbphi' + f_bbbb v v' + f_bbb dv
        dv       = -(f_bphiphi + f_bbphi v' + v f_bbphi' + f_bbb v v') / K
    """
    n, p = X.shape
    q = p + 2
    jt = p + 1
    theta = math.exp(t)
    prec = math.exp(-s)
    grad[:] = 0.0
    hess[:, :] = 0.0
    g = np.empty(q)
    a = np.empty(q)
    c = np.empty(q)
    d = np.empty(q)
    F = np.empty((q, q))
    A = np.empty((q, q))
    C = np.empty((q, q))
    v = np.empty(q)
    dK = np.empty(q)
    G = np.empty((6, CHUNK))
    S = np.empty(27)
    total = 0.0
    for i in range(starts.shape[0] - 1):
        bi = b[i]
        g[:] = 0.0
        a[:] = 0.0
        c[:] = 0.0
        d[:] = 0.0
        F[:, :] = 0.0
        A[:, :] = 0.0
        C[:, :] = 0.0
        h = -0.5 * bi * bi * prec
        f2 = -prec
        f3 = 0.0
        f4 = 0.0
        eb = math.exp(bi - t)
        if jc >= -1:
            h, f2, f3, f4 = _donor_sums_one_cell_column(
                y, X, eta0, w, starts[i], starts[i + 1], bi, eb, t, theta, jc, h, f2, g, a, c, d, F, A, C, G, S
            )
            total += _donor_terms(bi, s, prec, h, f2, f3, f4, g, a, c, d, F, A, C, v, dK, p, grad, hess, VB[i])
            continue
        for j in range(starts[i], starts[i + 1]):
            eta = eta0[j] + bi
            qv, e1, e2, e3, e4, t0, t1, t2, t3, tt0, tt1, tt2 = _cell_all_x(y[j], eta, w[j] * eb, eta - t, theta)
            h += qv
            f2 += e2
            f3 += e3
            f4 += e4
            for k in range(p):
                xk = X[j, k]
                g[k] += e1 * xk
                a[k] += e2 * xk
                c[k] += e3 * xk
                d[k] += e4 * xk
                F[k, jt] += t1 * xk
                A[k, jt] += t2 * xk
                C[k, jt] += t3 * xk
                for l in range(k + 1):
                    xx = xk * X[j, l]
                    F[k, l] += e2 * xx
                    A[k, l] += e3 * xx
                    C[k, l] += e4 * xx
            g[jt] += t0
            a[jt] += t1
            c[jt] += t2
            d[jt] += t3
            F[jt, jt] += tt0
            A[jt, jt] += tt1
            C[jt, jt] += tt2
        total += _donor_terms(bi, s, prec, h, f2, f3, f4, g, a, c, d, F, A, C, v, dK, p, grad, hess, VB[i])
    for k in range(q):
        for l in range(k):
            hess[l, k] = hess[k, l]
    cv, c1, c2 = theta_terms(cnt_gt, t)
    grad[jt] += c1
    hess[jt, jt] += c2
    return total + cv - lgy


# --------------------------------------------------------------------------------------------------
# designs with few distinct rows (donor-level factors, paired designs, cell-level factors)
# --------------------------------------------------------------------------------------------------
# Cells are grouped into blocks sharing donor i and design row x_b, with offsets in a narrow range:
# every cell of block b has Lw_j = exp(o_j - o_ref) within a relative DL_RHO of the block centre
# Lc_b. Then mu_j / theta = x_c (1 + eps_j) with x_c = exp(x_b' beta + b_i - t + o_ref) Lc_b and
# |eps_j| <= DL_RHO, and the sums over the block of (y_j + theta) log1p(x_j) and its derivatives in
# log x are Taylor series around x_c whose coefficients are centred power sums of eps over the
# block's cells (gene-independent) and y-weighted ones over its non-zero cells (once per gene). An
# evaluation then costs O(K) per block instead of O(cells). The series converge geometrically
# with ratio rc * DL_RHO < DL_RHO for every value of the parameters (rc = x_c / (1 + x_c) < 1),
# and K is chosen so that the remainder is below e^-38 (about 3e-17) relative: exact to rounding,
# which the tests check against cell-by-cell sums.
DL_KMAX = 24
#: relative half-width of the offset bins: every cell of a block has |Lw / Lc - 1| <= DL_RHO
DL_RHO = 0.2
LOG_DL_RHO = math.log(DL_RHO)
#: log(sigma^2) above which a gene with counts in a single donor is flagged as separated.
SIGMA2_SEPARATION = math.log(20.0)


@njit(**_JIT)
def dl_cut_blocks(change, Lw, ratio):
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
def dl_block_power_sums(Lw, bstarts, kk):
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
def dl_gene_power_sums(PA, Lw, Lc, off, bstarts, nzp, nzy, nzs, PZ):
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

    (Taylor series in eps of log1p(x) and of its derivatives in log x; |rc eps| <= DL_RHO.)
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
def _dl_block_sums_into(i, c, t, theta, PA, PZ, Lc, o_ref, level, S, GP, GQ):
    """Sums over block i's cells (linear predictor c + offset) of (q, e1..e4, t0..t3, tt0..tt2)
    into S[0..11]; level 1: only e1, e2 (S[1], S[2]); level 2: also q (S[0]); level 3: everything.

    With x_j = mu_j / theta = x_c (1 + eps_j) (x_c at the block's centre offset), every term is a
    combination of sums over the block of (y_j + theta) g_m(x_j) plus terms linear in y, where
    g_0 = log1p(x) and g_m is its m-th derivative in log x. These sums are Taylor series around x_c
    (see :func:`_centered_series`) in the block's centred power sums of eps (PA, gene-independent)
    and their y-weighted versions (PZ, once per gene). Since |eps| <= DL_RHO and 0 < rc < 1, the
    series converge geometrically for every parameter value; K terms leave a remainder below
    (rc DL_RHO)^K K^3, under 1e-19 relative. ``GP`` and ``GQ`` (5,) are scratch.
    """
    KK = PA.shape[1]
    z = c - t + o_ref + math.log(Lc[i])  # log x_c
    rc, alpha, lx = _dl_centre(z)
    K = _dl_terms(z, lx, rc, KK)
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
def _dl_centre(z):
    """For the block centre x_c = exp(z): rc = x_c / (1 + x_c), alpha = 1 - rc and
    lx = log1p(x_c), without overflow."""
    if z >= 0.0:
        ez = math.exp(-z)
        rc = 1.0 / (1.0 + ez)
        return rc, ez * rc, z + math.log1p(ez)
    ez = math.exp(z)
    alpha = 1.0 / (1.0 + ez)
    return ez * alpha, alpha, math.log1p(ez)


@njit(**_JIT)
def _dl_terms(z, lx, rc, KK):
    """Number of series terms for the block centre log x_c = z (lx = log1p(x_c), rc = x_c / (1 + x_c)):
    the remainder (rc DL_RHO)^K is below e^-38; log rc = z - lx needs no further logarithm."""
    if rc <= 0.0:
        return 1
    K = int(math.ceil(-38.0 / (z - lx + LOG_DL_RHO)))
    return max(1, min(K, KK - 1))


@njit(**_JIT)
def _dl_block_sums(i, c, t, theta, y, off, Lw, bstarts, nzp, nzy, nzs, PA, PZ, Lc, o_ref, level, S):
    """:func:`_dl_block_sums_into` with its own scratch (the signature used by the tests)."""
    GP = np.empty(5)
    GQ = np.empty(5)
    _dl_block_sums_into(i, c, t, theta, PA, PZ, Lc, o_ref, level, S, GP, GQ)


@njit(**_JIT)
def _dl_block_d12(i, c, t, theta, PA, PZ, Lc, o_ref):
    """First and second derivative in eta of block i's sum of q (S[1], S[2] of
    :func:`_dl_block_sums`) without scratch arrays: both are linear in the power sums, so one
    series runs over W_k = theta PA[i, k] + PZ[i, k]."""
    KK = PA.shape[1]
    z = c - t + o_ref + math.log(Lc[i])
    rc, alpha, lx = _dl_centre(z)
    K = _dl_terms(z, lx, rc, KK)
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
def _dl_c(Xd, phi, i):
    c = 0.0
    for k in range(Xd.shape[1]):
        c += Xd[i, k] * phi[k]
    return c


@njit(**_JIT)
def dl_modes(y, off, Lw, bstarts, dblk, Xb, nzp, nzy, nzs, PA, PZ, Lmax, o_ref, phi, b, tol=1e-8, maxit=100):
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
                e1, e2 = _dl_block_d12(blk, _dl_c(Xb, phi, blk) + bi, t, theta, PA, PZ, Lmax, o_ref)
                f1 += e1
                f2 += e2
            step = -f1 / f2
            if step > 2.0:
                step = 2.0
            elif step < -2.0:
                step = -2.0
            bi += step
            if abs(step) <= tol * (1.0 + abs(bi)):
                done = True
                break
        if not done or not math.isfinite(bi):
            ok = False
        b[i] = bi
    return ok


@njit(**_JIT)
def dl_laplace(
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
        g[:] = 0.0
        a[:] = 0.0
        c[:] = 0.0
        d[:] = 0.0
        F[:, :] = 0.0
        A[:, :] = 0.0
        C[:, :] = 0.0
        for blk in range(dblk[i], dblk[i + 1]):
            ci = _dl_c(Xb, phi, blk) + bi
            _dl_block_sums_into(blk, ci, t, theta, PA, PZ, Lmax, o_ref, level, S, GP, GQ)
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


@njit(**_JIT)
def _glm_newton_step(M, rhs, beta, L, step):
    """Complete the lower triangle ``M`` (with a tiny ridge), solve ``M step = rhs`` and move
    ``beta`` by the step, damped to a largest component of 3. Returns the largest component of
    the undamped step, or -1 if ``M`` is not positive definite."""
    p = beta.shape[0]
    for k in range(p):
        M[k, k] += 1e-8 * (1.0 + M[k, k])
        for l in range(k):
            M[l, k] = M[k, l]
    if not _cholesky(M, L):
        return -1.0
    _chol_solve(L, rhs, step)
    mx = 0.0
    for k in range(p):
        mx = max(mx, abs(step[k]))
    sc = 1.0 if mx < 3.0 else 3.0 / mx
    for k in range(p):
        beta[k] += sc * step[k]
    return mx


@njit(**_JIT)
def dl_start(Xd, PA, Lw, o_ref, nzp, nzy, nzs, beta, Lc, dblk, maxit=25):
    """Poisson GLM start from block sums; moment estimates of the NB dispersion and donor variance.

    Block sums of Lw and Lw^2 come from the centred power sums: Lc (M0 + M1), Lc^2 (M0 + 2 M1 + M2).
    """
    m, p = Xd.shape
    eo = math.exp(o_ref)
    Ysum = np.zeros(m)
    YL = np.zeros(m)
    Y2 = 0.0
    for i in range(m):
        for idx in range(nzs[i], nzs[i + 1]):
            Ysum[i] += nzy[idx]
            YL[i] += nzy[idx] * Lw[nzp[idx]]
            Y2 += nzy[idx] * nzy[idx]
    tot_y = 0.0
    tot_e = 0.0
    for i in range(m):
        tot_y += Ysum[i]
        tot_e += eo * Lc[i] * (PA[i, 0] + PA[i, 1])
    beta[:] = 0.0
    M = np.empty((p, p))
    L = np.empty((p, p))
    rhs = np.empty(p)
    step = np.empty(p)
    # intercept-only start, then Newton on the donor sums
    beta[0] = math.log(max(tot_y, 0.5) / tot_e) / max(Xd[0, 0], 1e-12) if Xd[0, 0] != 0.0 else 0.0
    for _ in range(maxit):
        M[:, :] = 0.0
        rhs[:] = 0.0
        for i in range(m):
            mu = math.exp(min(_dl_c(Xd, beta, i), 50.0)) * eo * Lc[i] * (PA[i, 0] + PA[i, 1])
            for k in range(p):
                rhs[k] += (Ysum[i] - mu) * Xd[i, k]
                for l in range(k + 1):
                    M[k, l] += mu * Xd[i, k] * Xd[i, l]
        mx = _glm_newton_step(M, rhs, beta, L, step)
        if mx < 1e-8:  # converged, or not positive definite (-1)
            break
    num = Y2
    den = 0.0
    for i in range(m):
        mi = math.exp(min(_dl_c(Xd, beta, i), 50.0)) * eo
        s1 = Lc[i] * (PA[i, 0] + PA[i, 1])
        s2 = Lc[i] * Lc[i] * (PA[i, 0] + 2.0 * PA[i, 1] + PA[i, 2])
        num += -2.0 * mi * YL[i] + mi * mi * s2 - mi * s1
        den += mi * mi * s2
    disp = num / den if den > 0.0 else 1.0
    # donor variance by moments of the donors' observed / expected ratios (as in fit_gene)
    nd = dblk.shape[0] - 1
    v = 0.0
    for d in range(nd):
        yd = 0.0
        md = 0.0
        for i in range(dblk[d], dblk[d + 1]):
            yd += Ysum[i]
            md += math.exp(min(_dl_c(Xd, beta, i), 50.0)) * eo * Lc[i] * (PA[i, 0] + PA[i, 1])
        if md > 0.0:
            v += (yd / md - 1.0) ** 2 - 1.0 / md
    v = min(max(v / max(nd, 1), 0.01), 2.0)
    return disp - v, math.log1p(v)


# --------------------------------------------------------------------------------------------------
# small dense linear algebra (q is tiny; avoids LAPACK calls and exceptions inside nogil code)
# --------------------------------------------------------------------------------------------------
@njit(**_JIT)
def _cholesky(M, L):
    """Cholesky of symmetric M into lower L. Returns False if M is not positive definite."""
    n = M.shape[0]
    L[:, :] = 0.0
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
    return True


@njit(**_JIT)
def _chol_solve(L, rhs, out):
    n = L.shape[0]
    for i in range(n):
        s = rhs[i]
        for k in range(i):
            s -= L[i, k] * out[k]
        out[i] = s / L[i, i]
    for i in range(n - 1, -1, -1):
        s = out[i]
        for k in range(i + 1, n):
            s -= L[k, i] * out[k]
        out[i] = s / L[i, i]


@njit(**_JIT)
def _spd_inverse(M, out):
    """Inverse of a symmetric positive definite matrix; False if not PD."""
    n = M.shape[0]
    L = np.empty((n, n))
    if not _cholesky(M, L):
        return False
    e = np.zeros(n)
    col = np.empty(n)
    for k in range(n):
        e[:] = 0.0
        e[k] = 1.0
        _chol_solve(L, e, col)
        for i in range(n):
            out[i, k] = col[i]
    return True


# --------------------------------------------------------------------------------------------------
# starting values
# --------------------------------------------------------------------------------------------------
@njit(**_JIT)
def glm_start(X, off, starts, nzp, nzy, nzs, beta, b, maxit=25, tol=1e-4, n_sample=1024):
    """Starting values from a Poisson GLM (no donor effects); writes ``beta``, returns moment
    estimates of the NB dispersion and of log(sigma^2) (as :func:`dl_start`; ``nzs`` lists the
    non-zero cells per donor), and starting values of the modes in ``b`` (each donor's log ratio of
    observed to expected counts, shrunk as a normal mean with the moment variance).

    Only a start, so it is computed cheaply: the count terms (sum y x) come exactly from the
    non-zero cells ``nzp``, ``nzy``; the mean terms (sum mu x, sum mu x x') from every k-th cell
    scaled by k (k = n // n_sample), a systematic sample over the donor-sorted cells. The outer
    Newton starts from here and maximises the exact objective."""
    n, p = X.shape
    k_step = max(1, n // n_sample)
    scale = n / ((n + k_step - 1) // k_step)
    ytot = 0.0
    yx = np.zeros(p)
    for idx in range(nzp.shape[0]):
        j = nzp[idx]
        ytot += nzy[idx]
        for k in range(p):
            yx[k] += nzy[idx] * X[j, k]
    ebar = 0.0
    for j in range(0, n, k_step):
        ebar += math.exp(off[j])
    ebar *= scale
    beta[:] = 0.0
    beta[0] = math.log(max(ytot, 0.5) / ebar)  # assumes column 0 is the intercept-like column
    M = np.empty((p, p))
    L = np.empty((p, p))
    rhs = np.empty(p)
    step = np.empty(p)
    for _ in range(maxit):
        M[:, :] = 0.0
        rhs[:] = 0.0
        for j in range(0, n, k_step):
            e = off[j]
            for k in range(p):
                e += X[j, k] * beta[k]
            mu = math.exp(min(e, 50.0)) * scale
            for k in range(p):
                rhs[k] -= mu * X[j, k]
                for l in range(k + 1):
                    M[k, l] += mu * X[j, k] * X[j, l]
        for k in range(p):
            rhs[k] += yx[k]
        mx = _glm_newton_step(M, rhs, beta, L, step)
        if mx < tol:  # converged, or not positive definite (-1)
            break
    # moments: sum (y - mu)^2 - mu = sum_nz (y^2 - 2 y mu) + sum_all (mu^2 - mu); the donor
    # variance from the donors' observed / expected ratios
    num = 0.0
    den = 0.0
    nnz = nzp.shape[0]
    for idx in range(nnz):
        num += nzy[idx] * nzy[idx]
    # the cross term sum_nz y mu from a systematic sample of the non-zero cells as well
    k_nz = max(1, nnz // n_sample)
    scale_nz = nnz / ((nnz + k_nz - 1) // k_nz) if nnz > 0 else 1.0
    for idx in range(0, nnz, k_nz):
        j = nzp[idx]
        e = off[j]
        for k in range(p):
            e += X[j, k] * beta[k]
        num -= 2.0 * scale_nz * nzy[idx] * math.exp(min(e, 50.0))
    m = starts.shape[0] - 1
    v = 0.0
    nd = 0
    md_all = np.empty(m)
    for i in range(m):
        md = 0.0
        j0 = ((starts[i] + k_step - 1) // k_step) * k_step
        for j in range(j0, starts[i + 1], k_step):
            e = off[j]
            for k in range(p):
                e += X[j, k] * beta[k]
            mu = math.exp(min(e, 50.0))
            num += scale * (mu * mu - mu)
            den += scale * mu * mu
            md += scale * mu
        yd = 0.0
        for idx in range(nzs[i], nzs[i + 1]):
            yd += nzy[idx]
        if md > 0.0:
            v += (yd / md - 1.0) ** 2 - 1.0 / md
            nd += 1
        b[i] = math.log((yd + 0.5) / (md + 0.5))  # shrunk below, once the variance is known
        md_all[i] = md
    disp = num / den if den > 0.0 else 1.0
    # not below 0.1 (the fixed start it replaces): starting closer to the boundary sigma^2 = 0
    # stalls some huge-count Poisson genes on the flat corner sigma^2 -> 0, theta -> inf
    v = min(max(v / max(nd, 1), 0.1), 2.0)
    for i in range(m):
        # shrink as a normal mean: data precision about the expected count, prior precision 1 / v
        b[i] = min(max(b[i] * v * md_all[i] / (1.0 + v * md_all[i]), -3.0), 3.0)
    return disp - v, math.log1p(v)


# --------------------------------------------------------------------------------------------------
# the outer optimiser for one gene
# --------------------------------------------------------------------------------------------------
@njit(**_VJIT)
def _eta0(X, off, phi, eta0, w, starts, jc=-2):
    """eta0 = X beta + offset and w = exp(eta0) (clipped to [-708, 700] to stay finite).

    With ``jc`` >= -1 (at most column ``jc`` varies within donors, see :func:`cell_level_column`)
    each donor's other columns give one constant, and the pass reads only the offset and that
    column."""
    n, p = X.shape
    if jc >= -1:
        for i in range(starts.shape[0] - 1):
            lo = starts[i]
            hi = starts[i + 1]
            if hi <= lo:
                continue
            c = 0.0
            for k in range(p):
                if k != jc:
                    c += X[lo, k] * phi[k]
            if jc >= 0:
                bc = phi[jc]
                for j in range(lo, hi):
                    eta0[j] = off[j] + c + X[j, jc] * bc
            else:
                for j in range(lo, hi):
                    eta0[j] = off[j] + c
        for j in range(n):
            w[j] = _vexp(min(max(eta0[j], -708.0), 700.0))
        return
    for j in range(n):
        e = off[j]
        for k in range(p):
            e += X[j, k] * phi[k]
        eta0[j] = e
    for j in range(n):
        w[j] = _vexp(min(max(eta0[j], -708.0), 700.0))


@njit(**_JIT)
def _objective(y, X, off, starts, phi, b, cnt_gt, lgy, scratch, nodes, logw, jc=-2):
    """Objective at phi after refreshing the modes in ``b`` (warm start). NaN if modes fail.

    ``scratch`` (2, n) is reused for eta0 = X beta + offset and w = exp(eta0)."""
    p = X.shape[1]
    eta0 = scratch[0]
    w = scratch[1]
    _eta0(X, off, phi, eta0, w, starts, jc)
    ok = conditional_modes(y, eta0, w, starts, phi[p], phi[p + 1], b)
    if not ok:
        return np.nan
    if nodes.shape[0] <= 1:
        return laplace_value(y, eta0, w, starts, phi[p], phi[p + 1], b, cnt_gt, lgy)
    return agq_value(y, eta0, starts, phi[p], phi[p + 1], b, cnt_gt, lgy, nodes, logw)


@njit(**_JIT)
def _fd_grad_hess(y, X, off, starts, phi, b, cnt_gt, lgy, eta0, nodes, logw, free, grad, hess, h):
    """Central finite-difference gradient and Hessian of the objective (used for n_agq > 1)."""
    q = phi.shape[0]
    f0 = _objective(y, X, off, starts, phi, b, cnt_gt, lgy, eta0, nodes, logw)
    b0 = b.copy()
    x = phi.copy()
    fp = np.zeros(q)
    fm = np.zeros(q)
    grad[:] = 0.0
    hess[:, :] = 0.0
    for k in range(q):
        if not free[k]:
            continue
        x[:] = phi
        x[k] += h
        b[:] = b0
        fp[k] = _objective(y, X, off, starts, x, b, cnt_gt, lgy, eta0, nodes, logw)
        x[k] -= 2.0 * h
        b[:] = b0
        fm[k] = _objective(y, X, off, starts, x, b, cnt_gt, lgy, eta0, nodes, logw)
        grad[k] = (fp[k] - fm[k]) / (2.0 * h)
        hess[k, k] = (fp[k] - 2.0 * f0 + fm[k]) / (h * h)
    for k in range(q):
        if not free[k]:
            continue
        for l in range(k):
            if not free[l]:
                continue
            x[:] = phi
            x[k] += h
            x[l] += h
            b[:] = b0
            fpp = _objective(y, X, off, starts, x, b, cnt_gt, lgy, eta0, nodes, logw)
            x[k] -= 2.0 * h
            x[l] -= 2.0 * h
            b[:] = b0
            fmm = _objective(y, X, off, starts, x, b, cnt_gt, lgy, eta0, nodes, logw)
            val = (fpp - fp[k] - fp[l] + 2.0 * f0 - fm[k] - fm[l] + fmm) / (2.0 * h * h)
            hess[k, l] = val
            hess[l, k] = val
    b[:] = b0
    _objective(y, X, off, starts, phi, b, cnt_gt, lgy, eta0, nodes, logw)
    return f0


@njit(**_JIT)
def _laplace_full(y, X, off, starts, phi, b, cnt_gt, lgy, scratch, grad, hess, VB, jc=-2):
    """Modes (warm-started from ``b``), then value, gradient and Hessian. NaN if modes fail."""
    p = X.shape[1]
    eta0 = scratch[0]
    w = scratch[1]
    _eta0(X, off, phi, eta0, w, starts, jc)
    if not conditional_modes(y, eta0, w, starts, phi[p], phi[p + 1], b):
        return np.nan
    return laplace_grad_hess(y, X, eta0, w, starts, phi[p], phi[p + 1], b, cnt_gt, lgy, grad, hess, VB, jc)


@njit(**_JIT)
def _eval(y, X, off, starts, phi, b, cnt_gt, lgy, eta0, nodes, logw, dl, derivs, grad, hess, VB):
    """Refresh the modes in ``b`` (warm start) and return the objective; with ``derivs`` (Laplace
    only) also its exact gradient and Hessian (and the sensitivities of the modes in ``VB``).
    Uses the donor-level kernels when ``dl[0]``."""
    if dl[0] and nodes.shape[0] <= 1:
        Xb, Lw, o_ref, PA, Lmax, nzp, nzy, nzs, PZ = dl[1], dl[2], dl[3], dl[4], dl[5], dl[6], dl[7], dl[8], dl[9]
        bst, dblk = dl[10], dl[11]
        if not dl_modes(y, off, Lw, bst, dblk, Xb, nzp, nzy, nzs, PA, PZ, Lmax, o_ref, phi, b):
            return np.nan
        return dl_laplace(
            y, off, Lw, bst, dblk, Xb, nzp, nzy, nzs, PA, PZ, Lmax, o_ref, phi, b, cnt_gt, lgy, derivs, grad, hess, VB
        )
    if derivs:
        return _laplace_full(y, X, off, starts, phi, b, cnt_gt, lgy, eta0, grad, hess, VB, dl[12])
    return _objective(y, X, off, starts, phi, b, cnt_gt, lgy, eta0, nodes, logw, dl[12])


@njit(**_JIT)
def _derivs(y, X, off, starts, phi, b, cnt_gt, lgy, eta0, nodes, logw, free, grad, hess, VB):
    if nodes.shape[0] <= 1:
        return _laplace_full(y, X, off, starts, phi, b, cnt_gt, lgy, eta0, grad, hess, VB)
    return _fd_grad_hess(y, X, off, starts, phi, b, cnt_gt, lgy, eta0, nodes, logw, free, grad, hess, 1e-4)


@njit(**_JIT)
def _n_donors_with_counts(y, starts):
    out = 0
    for i in range(starts.shape[0] - 1):
        for j in range(starts[i], starts[i + 1]):
            if y[j] > 0.0:
                out += 1
                break
    return out


@njit(**_JIT)
def _dl_donors_with_counts(nzs, dblk):
    """:func:`_n_donors_with_counts` from the per-block lists of non-zero cells."""
    out = 0
    for i in range(dblk.shape[0] - 1):
        if nzs[dblk[i + 1]] > nzs[dblk[i]]:
            out += 1
    return out


@njit(**_JIT)
def _dl_separated(Xb, PZ):
    """:func:`_separated` from the blocks: each block has one design row ``Xb`` and total count
    ``PZ[:, -2]``, and every cell is in a block, so the values of a column and the counts on each
    are the same as over the cells."""
    return _separated_rows(Xb, PZ[:, PZ.shape[1] - 2])


@njit(**_JIT)
def _two_valued(X):
    """For each column of ``X``: whether it takes exactly two values, and its first value."""
    n, p = X.shape
    tv = np.zeros(p, dtype=np.bool_)
    v0 = np.zeros(p)
    for k in range(p):
        a = X[0, k] if n > 0 else 0.0
        b = a
        two = n > 0
        for j in range(n):
            x = X[j, k]
            if x != a:
                if b == a:
                    b = x
                elif x != b:
                    two = False
                    break
        tv[k] = two and b != a
        v0[k] = a
    return tv, v0


@njit(**_JIT)
def _separated_nz(X, nzp, nzy, tv, v0):
    """True if some two-valued column of ``X`` has zero total count on one of its values, from the
    non-zero cells (rows ``nzp`` of ``X``, counts ``nzy``) and the two-valued columns ``tv`` (first
    value ``v0``) of :func:`_two_valued`: a zero total on one value is a value no non-zero cell has."""
    for k in range(X.shape[1]):
        if not tv[k]:
            continue
        s0 = 0.0
        s1 = 0.0
        for idx in range(nzp.shape[0]):
            if X[nzp[idx], k] == v0[k]:
                s0 += nzy[idx]
            else:
                s1 += nzy[idx]
        if s0 == 0.0 or s1 == 0.0:
            return True
    return False


@njit(**_JIT)
def _separated_rows(X, w):
    """True if some column of ``X`` takes exactly two values and the rows with one of them have
    total weight ``w`` 0 (rows are cells with their counts, or blocks with their totals)."""
    n, p = X.shape
    for k in range(p):
        v0 = X[0, k]
        v1 = v0
        two = True
        s0 = 0.0
        s1 = 0.0
        for j in range(n):
            x = X[j, k]
            if x == v0:
                s0 += w[j]
            else:
                if v1 == v0:
                    v1 = x
                if x == v1:
                    s1 += w[j]
                else:
                    two = False
                    break
        if two and v1 != v0 and (s0 == 0.0 or s1 == 0.0):
            return True
    return False


@njit(**_JIT)
def _maximise(
    y,
    X,
    off,
    starts,
    nodes,
    logw,
    phi,
    b,
    dl,
    cnt_gt,
    lgy,
    grad,
    hess,
    s_min,
    t_max,
    t_min,
    tol_eff,
    gtol,
    btol,
    maxit,
    sep_bound,
):
    """Newton iterations with line search from ``phi`` and modes ``b`` (both updated in place);
    ``grad`` and ``hess`` end at the last accepted point. Returns
    (loglik, n_iter, converged, max abs free gradient, status bits)."""
    p = X.shape[1]
    q = p + 2
    js = p
    jt = p + 1
    m = starts.shape[0] - 1
    status = 0
    fast = dl[0] and nodes.shape[0] <= 1
    eta0 = np.empty((2, 0 if fast else y.shape[0]))  # scratch: eta0 and exp(eta0), reused by every evaluation
    gtrial = np.zeros(q)
    htrial = np.zeros((q, q))
    M = np.zeros((q, q))
    Lc = np.zeros((q, q))
    gf = np.zeros(q)
    step = np.zeros(q)
    trial = np.zeros(q)
    btrial = np.zeros(m)
    VB = np.zeros((m, q))  # sensitivities of the modes at the accepted point, and at a trial
    VBt = np.zeros((m, q))
    free = np.ones(q, dtype=np.bool_)
    laplace = nodes.shape[0] <= 1
    # Laplace: every accepted point comes with its exact derivatives (one pass over the cells);
    # AGQ: values in the line search, finite-difference derivatives at accepted points.
    if laplace:
        val = _eval(y, X, off, starts, phi, b, cnt_gt, lgy, eta0, nodes, logw, dl, True, grad, hess, VB)
    else:
        val = _objective(y, X, off, starts, phi, b, cnt_gt, lgy, eta0, nodes, logw)
        if math.isfinite(val):
            val = _derivs(y, X, off, starts, phi, b, cnt_gt, lgy, eta0, nodes, logw, free, grad, hess, VB)
    if not math.isfinite(val):
        return np.nan, 0, False, np.nan, FAILED
    n_iter = 0
    converged = False
    gmax = np.inf
    for it in range(maxit):
        n_iter = it + 1
        free[:] = True
        # near a bound the objective is flat to rounding (theta > 2e6 or sigma^2 < 2e-9): if the
        # gradient does not point away from the bound, move onto it and hold it there
        if phi[js] <= s_min + 7.0 and grad[js] <= btol:
            phi[js] = s_min
            free[js] = False
        if phi[jt] >= t_max - 3.0 and grad[jt] >= -btol:
            phi[jt] = t_max
            free[jt] = False
        # Newton direction on the free parameters, with a Levenberg shift if not concave
        lam = 0.0
        maxdiag = 0.0
        for k in range(q):
            maxdiag = max(maxdiag, abs(hess[k, k]))
        for _attempt in range(60):
            for k in range(q):
                for l in range(q):
                    if free[k] and free[l]:
                        M[k, l] = -hess[k, l]
                    else:
                        M[k, l] = 1.0 if k == l else 0.0
                if free[k]:
                    M[k, k] += lam
                gf[k] = grad[k] if free[k] else 0.0
            if _cholesky(M, Lc):
                break
            lam = 1e-8 * (1.0 + maxdiag) if lam == 0.0 else lam * 10.0
        _chol_solve(Lc, gf, step)
        dec = 0.0
        gmax = 0.0
        for k in range(q):
            dec += gf[k] * step[k]
            gmax = max(gmax, abs(gf[k]))
        if lam == 0.0 and (dec < tol_eff or gmax < gtol):
            converged = True
            break
        mx = 0.0
        for k in range(q):
            mx = max(mx, abs(step[k]))
        if mx > 3.0:
            for k in range(q):
                step[k] *= 3.0 / mx
        # backtracking line search (Armijo), projected onto the bounds
        alpha = 1.0
        accepted = False
        vt = np.nan
        for _ls in range(40):
            for k in range(q):
                trial[k] = phi[k] + alpha * step[k]
            trial[js] = max(trial[js], s_min)
            trial[jt] = min(max(trial[jt], t_min), t_max)
            if laplace:
                # warm start of the modes, to first order: b + (db / dphi) (trial - phi)
                for i in range(m):
                    bi = b[i]
                    for k in range(q):
                        bi += VB[i, k] * (trial[k] - phi[k])
                    btrial[i] = bi if math.isfinite(bi) else b[i]
                vt = _eval(
                    y, X, off, starts, trial, btrial, cnt_gt, lgy, eta0, nodes, logw, dl, True, gtrial, htrial, VBt
                )
            else:
                btrial[:] = b
                vt = _objective(y, X, off, starts, trial, btrial, cnt_gt, lgy, eta0, nodes, logw)
            if math.isfinite(vt) and vt >= val + 1e-4 * alpha * dec:
                accepted = True
                break
            alpha *= 0.5
        if not accepted:
            # no ascent possible at machine precision: accept as converged if the decrement is small
            if dec < 1e-6 * (1.0 + abs(val)):
                converged = True
            break
        phi[:] = trial
        b[:] = btrial
        val = vt
        if laplace:
            grad[:] = gtrial
            hess[:, :] = htrial
            VB[:, :] = VBt
        # plateau jumps: the objective is flat towards theta -> inf and sigma^2 -> 0, so Newton
        # crawls there by about one unit of log per iteration; try the bound directly.
        jumped = False
        if phi[jt] > 6.0 and step[jt] > 0.0 and phi[jt] < t_max:
            trial[:] = phi
            trial[jt] = t_max
            btrial[:] = b
            vt = _eval(y, X, off, starts, trial, btrial, cnt_gt, lgy, eta0, nodes, logw, dl, False, gtrial, htrial, VBt)
            if math.isfinite(vt) and vt >= val:
                phi[:] = trial
                b[:] = btrial
                val = vt
                jumped = True
        if phi[js] < -12.0 and step[js] < 0.0 and phi[js] > s_min:
            trial[:] = phi
            trial[js] = s_min
            btrial[:] = b
            vt = _eval(y, X, off, starts, trial, btrial, cnt_gt, lgy, eta0, nodes, logw, dl, False, gtrial, htrial, VBt)
            if math.isfinite(vt) and vt >= val:
                phi[:] = trial
                b[:] = btrial
                val = vt
                jumped = True
        if jumped and laplace:
            val = _eval(y, X, off, starts, phi, b, cnt_gt, lgy, eta0, nodes, logw, dl, True, grad, hess, VB)
        elif not laplace:
            free[:] = True
            val = _derivs(y, X, off, starts, phi, b, cnt_gt, lgy, eta0, nodes, logw, free, grad, hess, VB)
        sep = False
        for k in range(1, p):
            if abs(phi[k]) > sep_bound:
                sep = True
        if sep:
            status |= SEPARATION
            break

    return val, n_iter, converged, gmax, status


@njit(**_JIT)
def fit_gene(
    y,
    X,
    off,
    starts,
    nodes,
    logw,
    phi,
    b,
    cov,
    dl,
    s_min=-23.0,
    t_max=18.42,
    t_min=-10.0,
    tol=1e-10,
    maxit=200,
    sep_bound=25.0,
):
    """Maximise the Laplace (or AGQ) marginal likelihood of one gene.

    Parameters
    ----------
    y, X, off, starts
        Counts (float), design, log offsets, all in donor-sorted order; ``starts`` (m + 1,) block bounds.
    nodes, logw
        Gauss-Hermite nodes and log(weights) + nodes^2; one node means Laplace.
    phi
        (p + 2,) output: beta, log sigma^2, log theta.
    b
        (m,) output: conditional modes.
    cov
        (p + 2, p + 2) output: inverse negative Hessian over the free parameters (NaN elsewhere).
    dl
        Fast-path data ``(on, Xb, Lw, o_ref, PA, Lmax, nzp, nzy, nzs, PZ, bstarts, dblk)`` (see
        :func:`fit_block_csc`); with ``on`` False only its types matter.

    Returns
    -------
    loglik, n_iter, status bits, max abs gradient over free parameters
    """
    n, p = X.shape
    q = p + 2
    js = p
    jt = p + 1
    cov[:, :] = np.nan
    b[:] = 0.0
    status = 0
    fast = dl[0] and nodes.shape[0] <= 1  # y is not filled in then: use the non-zero lists
    cnt_gt, lgy = count_table(dl[7])  # only non-zero counts matter
    ysum = 0.0
    for j in range(dl[7].shape[0]):
        ysum += dl[7][j]
    # scale of the log-likelihood's terms (sum of y log y and more): rounding makes the objective
    # and its gradient uncertain in proportion, so convergence and boundary tests are relative to it
    # (an upper bound from the total and the largest count: no pass over the cells)
    scale = 1.0 + ysum * (1.0 + math.log1p(float(cnt_gt.shape[0])))
    tol_eff = max(tol, 1e-15 * scale)
    gtol = max(1e-9, 1e-11 * scale)
    btol = max(1e-6, 1e-11 * scale)
    if ysum == 0.0:
        phi[:] = np.nan
        b[:] = np.nan
        return np.nan, 0, ALL_ZERO, np.nan

    # separation: a two-valued design column (a factor level) with no counts on one side sends the
    # estimates to infinity; flag it instead of reporting a huge effect.
    if _dl_separated(dl[1], dl[9]) if fast else _separated_nz(X, dl[6], dl[7], dl[13], dl[14]):
        phi[:] = np.nan
        b[:] = np.nan
        return np.nan, 0, SEPARATION, np.nan

    # starting values: Poisson GLM, then a moment estimate of the dispersion
    beta0 = np.zeros(p)
    sigma2_0 = 0.1
    if dl[0]:
        disp, sigma2_0 = dl_start(dl[1], dl[4], dl[2], dl[3], dl[6], dl[7], dl[8], beta0, dl[5], dl[11])
    else:
        disp, sigma2_0 = glm_start(X, off, starts, dl[6], dl[7], dl[8], beta0, b)
    t0 = -math.log(max(disp, 0.05))
    t0 = min(max(t0, -3.0), 3.0)
    for k in range(p):
        phi[k] = beta0[k]
    phi[js] = math.log(sigma2_0)
    phi[jt] = t0

    grad = np.zeros(q)
    hess = np.zeros((q, q))
    val, n_iter, converged, gmax, status = _maximise(
        y,
        X,
        off,
        starts,
        nodes,
        logw,
        phi,
        b,
        dl,
        cnt_gt,
        lgy,
        grad,
        hess,
        s_min,
        t_max,
        t_min,
        tol_eff,
        gtol,
        btol,
        maxit,
        sep_bound,
    )
    if status & FAILED:
        phi[:] = np.nan
        return np.nan, 0, FAILED, np.nan
    free = np.ones(q, dtype=np.bool_)

    # final derivatives (at the accepted point) and covariance over the free parameters
    free[:] = True
    if phi[js] <= s_min + 1e-9 and grad[js] <= btol:
        free[js] = False
        status |= SIGMA2_BOUNDARY
    if phi[jt] >= t_max - 1e-9 and grad[jt] >= -btol:
        free[jt] = False
        status |= POISSON_LIMIT
    nf = 0
    for k in range(q):
        if free[k]:
            nf += 1
    idx = np.empty(nf, dtype=np.int64)
    nf = 0
    for k in range(q):
        if free[k]:
            idx[nf] = k
            nf += 1
    Mf = np.empty((nf, nf))
    for k in range(nf):
        for l in range(nf):
            Mf[k, l] = -hess[idx[k], idx[l]]
    inv = np.empty((nf, nf))
    if _spd_inverse(Mf, inv):
        for k in range(nf):
            for l in range(nf):
                cov[idx[k], idx[l]] = inv[k, l]
    else:
        status |= NOT_CONVERGED
    # the random-effect analogue: counts in a single donor can drive sigma^2 to infinity
    if phi[js] > SIGMA2_SEPARATION:
        n_with = _dl_donors_with_counts(dl[8], dl[11]) if fast else _n_donors_with_counts(y, starts)
    else:
        n_with = 2
    if n_with < 2:
        status |= SEPARATION
    if not converged and (status & SEPARATION) == 0:
        status |= NOT_CONVERGED
    if not math.isfinite(val):
        status |= FAILED
    return val, n_iter, status, gmax


# --------------------------------------------------------------------------------------------------
# blocks of genes from CSC storage
# --------------------------------------------------------------------------------------------------
@njit(**_JIT)
def fit_block_csc(
    data,
    indices,
    indptr,
    pos,
    X,
    off,
    starts,
    nodes,
    logw,
    dl_on,
    Xd,
    Lw,
    o_ref,
    PA,
    Lmax,
    bstarts,
    dblk,
    out_phi,
    out_b,
    out_cov,
    out_ll,
    out_iter,
    out_status,
    out_gmax,
):
    """Fit every column of a CSC block (cells x genes). ``pos[row]`` is the cell's donor-sorted
    position. Outputs are written per gene (row g of each ``out_*`` array).

    With ``dl_on`` (few distinct design rows), cells of a donor with the same design row form
    blocks ``bstarts[k]:bstarts[k + 1]`` (donor i owns blocks ``dblk[i]:dblk[i + 1]``), ``Xd`` is
    the design row of each block, ``Lw = exp(off - o_ref)``, ``PA[k, :]`` the power sums of ``Lw``
    over block k and ``Lmax`` the largest ``Lw`` per block; zero counts are then summed by power
    series (see above).
    """
    n = X.shape[0]
    y = np.zeros(n)
    G = indptr.shape[0] - 1
    nzp = np.empty(n, dtype=np.int64)
    nzy = np.empty(n)
    # non-zero cells are listed per block (per donor when the fast path is off)
    bnd = bstarts if dl_on else starts
    nb = bnd.shape[0] - 1
    nzs = np.zeros(nb + 1, dtype=np.int64)
    PZ = np.empty((PA.shape[0], PA.shape[1] + 2))
    # non-zero cells are bucketed by block (donor, or donor and design row on the fast path)
    # straight from the sparse column: a counting sort keyed by input row, in O(non-zeros). The
    # fast path with the Laplace objective never looks at the cells one by one and needs no dense y.
    jc = cell_level_column(X, starts)  # the general kernel's shortcut for one cell-level column
    tv, v0 = _two_valued(X)  # separation checks need only these and the non-zero cells
    lists_only = dl_on and nodes.shape[0] <= 1
    bid = np.empty(n, dtype=np.int64)
    tb = np.empty(n, dtype=np.int64)
    tj = np.empty(n, dtype=np.int64)
    cur = np.empty(nb + 1, dtype=np.int64)
    # block of each cell indexed by its row in the input, so that a column's (sorted) row
    # indices read it in order instead of jumping through the donor-sorted positions
    for i in range(nb):
        for j in range(bnd[i], bnd[i + 1]):
            tb[j] = i
    for r in range(n):
        bid[r] = tb[pos[r]]
    for g in range(G):
        # counting sort of the column's non-zero cells by block (one random access per cell)
        nzs[:] = 0
        a = indptr[g]
        for k in range(a, indptr[g + 1]):
            r = indices[k]
            blk = bid[r] if data[k] != 0.0 else -1
            tj[k - a] = pos[r]
            tb[k - a] = blk
            nzs[blk + 1] += 1
        nzs[0] = 0  # explicit zeros were counted there
        for i in range(nb):
            nzs[i + 1] += nzs[i]
        cur[:] = nzs
        for k in range(a, indptr[g + 1]):
            blk = tb[k - a]
            if blk >= 0:
                c = cur[blk]
                nzp[c] = tj[k - a]
                nzy[c] = data[k]
                cur[blk] = c + 1
        nnz = nzs[nb]
        if not lists_only:
            y[:] = 0.0
            for k in range(nnz):
                y[nzp[k]] = nzy[k]
        if dl_on:
            dl_gene_power_sums(PA, Lw, Lmax, off, bstarts, nzp, nzy, nzs, PZ)
        dl = (dl_on, Xd, Lw, o_ref, PA, Lmax, nzp[:nnz], nzy[:nnz], nzs, PZ, bstarts, dblk, jc, tv, v0)
        ll, it, st, gm = fit_gene(y, X, off, starts, nodes, logw, out_phi[g], out_b[g], out_cov[g], dl)
        out_ll[g] = ll
        out_iter[g] = it
        out_status[g] = st
        out_gmax[g] = gm


# --------------------------------------------------------------------------------------------------
# sparse input: columns of a CSR matrix as CSC
# --------------------------------------------------------------------------------------------------
@njit(**_JIT)
def csr_column_counts(indptr, indices, n_cols, r0, r1):
    """Number of stored entries per column in rows ``r0:r1`` of a CSR matrix."""
    out = np.zeros(n_cols, dtype=np.int64)
    for k in range(indptr[r0], indptr[r1]):
        out[indices[k]] += 1
    return out


@njit(**_JIT)
def csr_row_cursors(indptr, indices, a):
    """Per row of a canonical CSR matrix, the position of its first entry in column >= ``a``."""
    n = indptr.shape[0] - 1
    cur = np.empty(n, dtype=np.int64)
    for r in range(n):
        lo = indptr[r]
        hi = indptr[r + 1]
        while lo < hi:  # binary search: the row's column indices are sorted
            mid = (lo + hi) // 2
            if indices[mid] < a:
                lo = mid + 1
            else:
                hi = mid
        cur[r] = lo
    return cur


@njit(**_JIT)
def csr_columns_to_csc(indptr, indices, data, a, e, r0, r1, cursor, dest, out_data, out_rows):
    """Scatter the entries of rows ``r0:r1`` in columns ``a:e`` of a canonical CSR matrix into
    CSC arrays ``out_data`` / ``out_rows`` of those columns; ``dest`` (e - a) holds each column's
    first position for these rows and ``cursor`` each row's first entry in column >= ``a``
    (:func:`csr_row_cursors`), advanced here to column ``e``: consecutive panels then read every
    entry once in all. Rows are visited in order, so each column's rows come sorted; disjoint row
    ranges with their own ``dest`` can be scattered by concurrent threads."""
    cur = dest.copy()
    for r in range(r0, r1):
        k = cursor[r]
        end = indptr[r + 1]
        while k < end and indices[k] < e:
            c = indices[k] - a
            d = cur[c]
            out_rows[d] = r
            out_data[d] = data[k]
            cur[c] = d + 1
            k += 1
        cursor[r] = k


# --------------------------------------------------------------------------------------------------
# the order of the cells (donor, design row, offset)
# --------------------------------------------------------------------------------------------------
@njit(**_JIT)
def distinct_row_ids(X, ro):
    """Number the distinct rows of ``X`` 0, 1, ... in lexicographic order, given ``ro``, the rows
    of ``X`` in lexicographic order (``np.lexsort``); returns each row's number."""
    n, p = X.shape
    ids = np.empty(n, dtype=np.int64)
    cur = 0
    for i in range(n):
        r = ro[i]
        if i > 0:
            q = ro[i - 1]
            for j in range(p):
                if X[r, j] != X[q, j]:
                    cur += 1
                    break
        ids[r] = cur
    return ids


@njit(**_JIT)
def stable_counting_sort(key, n_keys, seq):
    """The elements of ``seq`` (indices into ``key``, values 0 .. n_keys - 1) sorted by their key,
    keeping the order of ``seq`` among equal keys (a stable sort in O(n + n_keys))."""
    cnt = np.zeros(n_keys + 1, dtype=np.int64)
    for i in range(seq.shape[0]):
        cnt[key[seq[i]] + 1] += 1
    for k in range(n_keys):
        cnt[k + 1] += cnt[k]
    out = np.empty_like(seq)
    for i in range(seq.shape[0]):
        c = seq[i]
        k = key[c]
        out[cnt[k]] = c
        cnt[k] += 1
    return out
