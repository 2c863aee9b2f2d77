"""Vectorisable exp and log1p, and the chunked sums over cells built on them.

The passes over the cells are dominated by libm's exp and log1p, which are opaque calls that keep
LLVM from vectorising the loops. Below are inline versions built from arithmetic and bit
operations only (within 2 ulp of libm over the ranges used, tested against mpmath), so that the
per-cell loops compile to AVX2 code. Kernels that use them set ``error_model="numpy"`` (no
zero-division branch in the loop); the reductions are done in separate functions compiled with
reassociation allowed, the only fast-math licence taken (the elementwise parts, which hold the
compensated arithmetic below, only allow fused multiply-adds).
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from ._jit import RJIT as _RJIT
from ._jit import VJIT as _VJIT


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
