"""Per-cell pieces of the NB log-density and the count table of a gene."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ._jit import JIT as _JIT


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


#: Family codes of the general engine's rows (``REData.family``).
NB, BINOMIAL, POISSON = 0, 1, 2


@njit(**_JIT)
def _expit_parts(eta: float) -> tuple[float, float]:
    """p = 1 / (1 + exp(-eta)) and 1 - p, each without cancellation."""
    if eta >= 0.0:
        e = math.exp(-eta)
        return 1.0 / (1.0 + e), e / (1.0 + e)
    e = math.exp(eta)
    return e / (1.0 + e), 1.0 / (1.0 + e)


@njit(**_JIT)
def row_glm(family: int, y: float, n: float, eta: float) -> tuple[float, float, float, float]:
    """q and its first three derivatives in eta of a row of a family without dispersion.

    Binomial (``family == BINOMIAL``), ``y`` successes of ``n`` trials with logit link:
    ``q = y eta - n log(1 + e^eta)``, ``e1 = y - n p``, ``e2 = -n p (1 - p)``, ``e3 = e2 (1 - 2 p)``
    (``log C(n, y)`` left to the caller). Poisson (``n`` unused), log link: ``q = y eta - e^eta``,
    ``e1 = y - mu``, ``e2 = e3 = -mu`` (``log y!`` left to the caller).
    """
    if family == BINOMIAL:
        p, r = _expit_parts(eta)
        w = n * p * r
        return y * eta - n * _softplus(eta), y - n * p, -w, -w * (r - p)
    mu = math.exp(min(eta, 709.0))
    return y * eta - mu, y - mu, -mu, -mu
