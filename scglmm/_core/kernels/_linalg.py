"""Small dense linear algebra (q is tiny; avoids LAPACK calls and exceptions inside nogil code)."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ._jit import JIT as _JIT


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
