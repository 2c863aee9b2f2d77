"""The outer optimiser for one gene: evaluation, Newton iterations, covariance and status.

The steps that differ between the paths (:class:`FewRowsPath`, :class:`LaplacePath`,
:class:`AGQPath` of :mod:`._bundles`) are stubs dispatching on the path's type (:func:`by_path`):
a fit compiles only its path's evaluation, starting values and checks.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .._status import ALL_ZERO, FAILED, NOT_CONVERGED, POISSON_LIMIT, SEPARATION, SIGMA2_BOUNDARY
from ._bundles import by_path
from ._cell import count_table
from ._few_rows import few_rows_laplace, few_rows_modes
from ._jit import JIT as _JIT
from ._jit import VJIT as _VJIT
from ._laplace import agq_value, conditional_modes, laplace_grad_hess, laplace_value
from ._linalg import _chol_solve, _cholesky, _copy, _copy2, _spd_inverse
from ._start import few_rows_start, glm_start
from ._vector import _vexp

#: log(sigma^2) above which a gene with counts in a single donor is flagged as separated.
SIGMA2_SEPARATION = math.log(20.0)


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
def _laplace_objective(y, X, off, starts, phi, b, cnt_gt, lgy, scratch, jc=-2):
    """Laplace objective at phi after refreshing the modes in ``b`` (warm start). NaN if modes fail.

    ``scratch`` (2, n) is reused for eta0 = X beta + offset and w = exp(eta0)."""
    p = X.shape[1]
    eta0 = scratch[0]
    w = scratch[1]
    _eta0(X, off, phi, eta0, w, starts, jc)
    ok = conditional_modes(y, eta0, w, starts, phi[p], phi[p + 1], b)
    if not ok:
        return np.nan
    return laplace_value(y, eta0, w, starts, phi[p], phi[p + 1], b, cnt_gt, lgy)


@njit(**_JIT)
def _agq_objective(y, X, off, starts, phi, b, cnt_gt, lgy, scratch, nodes, logw, jc=-2):
    """Adaptive Gauss-Hermite objective (``nodes``, ``logw``: more than one node) at phi after
    refreshing the modes in ``b`` (warm start), as :func:`_laplace_objective`."""
    p = X.shape[1]
    eta0 = scratch[0]
    w = scratch[1]
    _eta0(X, off, phi, eta0, w, starts, jc)
    ok = conditional_modes(y, eta0, w, starts, phi[p], phi[p + 1], b)
    if not ok:
        return np.nan
    return agq_value(y, eta0, starts, phi[p], phi[p + 1], b, cnt_gt, lgy, nodes, logw)


@njit(**_JIT)
def _fd_grad_hess(y, X, off, starts, phi, b, cnt_gt, lgy, eta0, nodes, logw, free, grad, hess, h):
    """Central finite-difference gradient and Hessian of the AGQ objective (used for n_agq > 1)."""
    q = phi.shape[0]
    f0 = _agq_objective(y, X, off, starts, phi, b, cnt_gt, lgy, eta0, nodes, logw)
    b0 = b.copy()
    x = phi.copy()
    fp = np.zeros(q)
    fm = np.zeros(q)
    grad[:] = 0.0
    hess[:, :] = 0.0
    for k in range(q):
        if not free[k]:
            continue
        _copy(x, phi)
        x[k] += h
        _copy(b, b0)
        fp[k] = _agq_objective(y, X, off, starts, x, b, cnt_gt, lgy, eta0, nodes, logw)
        x[k] -= 2.0 * h
        _copy(b, b0)
        fm[k] = _agq_objective(y, X, off, starts, x, b, cnt_gt, lgy, eta0, nodes, logw)
        grad[k] = (fp[k] - fm[k]) / (2.0 * h)
        hess[k, k] = (fp[k] - 2.0 * f0 + fm[k]) / (h * h)
    for k in range(q):
        if not free[k]:
            continue
        for l in range(k):
            if not free[l]:
                continue
            _copy(x, phi)
            x[k] += h
            x[l] += h
            _copy(b, b0)
            fpp = _agq_objective(y, X, off, starts, x, b, cnt_gt, lgy, eta0, nodes, logw)
            x[k] -= 2.0 * h
            x[l] -= 2.0 * h
            _copy(b, b0)
            fmm = _agq_objective(y, X, off, starts, x, b, cnt_gt, lgy, eta0, nodes, logw)
            val = (fpp - fp[k] - fp[l] + 2.0 * f0 - fm[k] - fm[l] + fmm) / (2.0 * h * h)
            hess[k, l] = val
            hess[l, k] = val
    _copy(b, b0)
    _agq_objective(y, X, off, starts, phi, b, cnt_gt, lgy, eta0, nodes, logw)
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


def _eval_few_rows(path, y, gene, phi, b, cnt_gt, lgy, eta0, derivs, grad, hess, VB):
    off, few = path.cells.off, path.few
    Xb, Lw, o_ref, PA, Lc, bst, dblk = few.Xb, few.Lw, few.o_ref, few.PA, few.Lc, few.bstarts, few.dblk
    nzp, nzy, nzs, PZ = gene.nz_pos, gene.nz_y, gene.nz_starts, gene.PZ
    if not few_rows_modes(y, off, Lw, bst, dblk, Xb, nzp, nzy, nzs, PA, PZ, Lc, o_ref, phi, b):
        return np.nan
    return few_rows_laplace(
        y, off, Lw, bst, dblk, Xb, nzp, nzy, nzs, PA, PZ, Lc, o_ref, phi, b, cnt_gt, lgy, derivs, grad, hess, VB
    )


def _eval_cells(path, y, gene, phi, b, cnt_gt, lgy, eta0, derivs, grad, hess, VB):
    X, off, starts = path.cells.X, path.cells.off, path.cells.starts
    jc = path.columns.cell_level
    if derivs:
        return _laplace_full(y, X, off, starts, phi, b, cnt_gt, lgy, eta0, grad, hess, VB, jc)
    return _laplace_objective(y, X, off, starts, phi, b, cnt_gt, lgy, eta0, jc)


@by_path(_eval_few_rows, _eval_cells, None)
def _eval(path, y, gene, phi, b, cnt_gt, lgy, eta0, derivs, grad, hess, VB):
    """Laplace paths: refresh the modes in ``b`` (warm start) and return the objective; with
    ``derivs`` also its exact gradient and Hessian (and the sensitivities of the modes in ``VB``).
    The few-rows path sums by blocks, the general kernel cell by cell (``eta0``: (2, n) scratch; the
    design's cell-level column, see :func:`cell_level_column`, shortens its passes). ``derivs`` is
    passed as a numpy bool, not a literal, so that one compiled signature serves both values."""


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
def _few_rows_donors_with_counts(nzs, dblk):
    """:func:`_n_donors_with_counts` from the per-block lists of non-zero cells."""
    out = 0
    for i in range(dblk.shape[0] - 1):
        if nzs[dblk[i + 1]] > nzs[dblk[i]]:
            out += 1
    return out


@njit(**_JIT)
def _few_rows_separated(Xb, PZ):
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
def _hold_bounds(phi, grad, free, s_min, t_max, btol):
    """Near a bound the objective is flat to rounding (theta > 2e6 or sigma^2 < 2e-9): if the
    gradient does not point away from the bound, move onto it and hold it there (``free``)."""
    js = phi.shape[0] - 2
    jt = js + 1
    free[:] = True
    if phi[js] <= s_min + 7.0 and grad[js] <= btol:
        phi[js] = s_min
        free[js] = False
    if phi[jt] >= t_max - 3.0 and grad[jt] >= -btol:
        phi[jt] = t_max
        free[jt] = False


@njit(**_JIT)
def _newton_step(grad, hess, free, M, Lc, gf, step):
    """Newton direction ``step`` on the free parameters, with a Levenberg shift if the Hessian is not
    negative definite. Returns the shift, the Newton decrement and the largest free gradient entry."""
    q = grad.shape[0]
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
        Lc[:, :] = 0.0  # a failed factorisation leaves zeros, not an earlier factor, behind
        if _cholesky(M, Lc, q):
            break
        lam = 1e-8 * (1.0 + maxdiag) if lam == 0.0 else lam * 10.0
    _copy(step, gf)
    _chol_solve(Lc, q, step)
    dec = 0.0
    gmax = 0.0
    for k in range(q):
        dec += gf[k] * step[k]
        gmax = max(gmax, abs(gf[k]))
    return lam, dec, gmax


@njit(**_JIT)
def _newton_direction(phi, grad, hess, free, M, Lc, gf, step, s_min, t_max, btol, tol_eff, gtol):
    """One iteration's direction: hold the bounds (:func:`_hold_bounds`), then the Newton step of
    :func:`_newton_step`. Returns (converged, Newton decrement, largest free gradient entry):
    converged if the Hessian needed no shift and the decrement or the gradient is below its
    tolerance; else ``step`` is scaled down to a largest component of 3."""
    _hold_bounds(phi, grad, free, s_min, t_max, btol)
    lam, dec, gmax = _newton_step(grad, hess, free, M, Lc, gf, step)
    if lam == 0.0 and (dec < tol_eff or gmax < gtol):
        return True, dec, gmax
    mx = 0.0
    for k in range(step.shape[0]):
        mx = max(mx, abs(step[k]))
    if mx > 3.0:
        for k in range(step.shape[0]):
            step[k] *= 3.0 / mx
    return False, dec, gmax


@njit(**_JIT)
def _trial_point(phi, step, alpha, trial, s_min, t_min, t_max):
    """``trial = phi + alpha step``, projected onto the bounds of log sigma^2 and log theta."""
    js = phi.shape[0] - 2
    jt = js + 1
    for k in range(phi.shape[0]):
        trial[k] = phi[k] + alpha * step[k]
    trial[js] = max(trial[js], s_min)
    trial[jt] = min(max(trial[jt], t_min), t_max)


@njit(**_JIT)
def _plateau_trial(side, phi, step, b, trial, btrial, s_min, t_max):
    """Plateau jumps: the objective is flat towards theta -> inf and sigma^2 -> 0, so Newton crawls
    there by about one unit of log per iteration; try the bound directly. Side 0: log theta (above
    6, last step up), side 1: log sigma^2 (below -12, last step down). If ``phi`` is on that
    plateau, set ``trial`` to ``phi`` moved onto the bound and ``btrial`` to ``b``; returns whether."""
    js = phi.shape[0] - 2
    jt = js + 1
    if side == 0:
        if not (phi[jt] > 6.0 and step[jt] > 0.0 and phi[jt] < t_max):
            return False
        k, bound = jt, t_max
    else:
        if not (phi[js] < -12.0 and step[js] < 0.0 and phi[js] > s_min):
            return False
        k, bound = js, s_min
    _copy(trial, phi)
    trial[k] = bound
    _copy(btrial, b)
    return True


@njit(**_JIT)
def _accept(vt, bar, phi, b, trial, btrial):
    """If the value ``vt`` at ``trial`` (modes ``btrial``) is finite and at least ``bar``, move
    ``phi`` and ``b`` there; returns whether."""
    if not (math.isfinite(vt) and vt >= bar):
        return False
    _copy(phi, trial)
    _copy(b, btrial)
    return True


@njit(**_JIT)
def _beta_diverged(phi, sep_bound):
    """Whether some effect beyond the first has left [-sep_bound, sep_bound] (separation)."""
    for k in range(1, phi.shape[0] - 2):  # noqa: SIM110 (a loop numba compiles to plain code)
        if abs(phi[k]) > sep_bound:
            return True
    return False


@njit(**_JIT)
def _maximise_laplace(
    y, path, gene, phi, b, cnt_gt, lgy, grad, hess, s_min, t_max, t_min, tol_eff, gtol, btol, maxit, sep_bound
):
    """Newton iterations with line search from ``phi`` and modes ``b`` (both updated in place) on a
    Laplace path (:class:`FewRowsPath` or :class:`LaplacePath`); ``grad`` and ``hess`` end at the
    last accepted point. Every accepted point comes with its exact derivatives (one pass over the
    cells, or over the blocks). Returns (loglik, n_iter, converged, max abs free gradient, status bits)."""
    q = phi.shape[0]
    m = b.shape[0]
    status = 0
    yes = np.bool_(True)  # not literals: one compiled signature of _eval for both
    no = np.bool_(False)
    eta0 = np.empty((2, y.shape[0]))  # scratch: eta0 and exp(eta0), reused by every evaluation
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
    val = _eval(path, y, gene, phi, b, cnt_gt, lgy, eta0, yes, grad, hess, VB)
    if not math.isfinite(val):
        return np.nan, 0, False, np.nan, FAILED
    n_iter = 0
    converged = False
    gmax = np.inf
    for it in range(maxit):
        n_iter = it + 1
        converged, dec, gmax = _newton_direction(
            phi, grad, hess, free, M, Lc, gf, step, s_min, t_max, btol, tol_eff, gtol
        )
        if converged:
            break
        # backtracking line search (Armijo), projected onto the bounds
        alpha = 1.0
        accepted = False
        vt = np.nan
        for _ls in range(40):
            _trial_point(phi, step, alpha, trial, s_min, t_min, t_max)
            # warm start of the modes, to first order: b + (db / dphi) (trial - phi)
            for i in range(m):
                bi = b[i]
                for k in range(q):
                    bi += VB[i, k] * (trial[k] - phi[k])
                btrial[i] = bi if math.isfinite(bi) else b[i]
            vt = _eval(path, y, gene, trial, btrial, cnt_gt, lgy, eta0, yes, gtrial, htrial, VBt)
            accepted = _accept(vt, val + 1e-4 * alpha * dec, phi, b, trial, btrial)
            if accepted:
                break
            alpha *= 0.5
        if not accepted:
            # no ascent possible at machine precision: accept as converged if the decrement is small
            converged = dec < 1e-6 * (1.0 + abs(val))
            break
        val = vt
        _copy(grad, gtrial)
        _copy2(hess, htrial)
        _copy2(VB, VBt)
        jumped = False
        for side in range(2):
            if _plateau_trial(side, phi, step, b, trial, btrial, s_min, t_max):
                vt = _eval(path, y, gene, trial, btrial, cnt_gt, lgy, eta0, no, gtrial, htrial, VBt)
                if _accept(vt, val, phi, b, trial, btrial):
                    val = vt
                    jumped = True
        if jumped:
            val = _eval(path, y, gene, phi, b, cnt_gt, lgy, eta0, yes, grad, hess, VB)
        if _beta_diverged(phi, sep_bound):
            status |= SEPARATION
            break

    return val, n_iter, converged, gmax, status


@njit(**_JIT)
def _maximise_agq(
    y, path, gene, phi, b, cnt_gt, lgy, grad, hess, s_min, t_max, t_min, tol_eff, gtol, btol, maxit, sep_bound
):
    """As :func:`_maximise_laplace` on the :class:`AGQPath`: values in the line search,
    finite-difference derivatives at accepted points."""
    X, off, starts = path.cells.X, path.cells.off, path.cells.starts
    nodes, logw = path.quad.nodes, path.quad.logw
    jc = path.columns.cell_level
    q = phi.shape[0]
    status = 0
    eta0 = np.empty((2, y.shape[0]))  # scratch: eta0 and exp(eta0), reused by every evaluation
    M = np.zeros((q, q))
    Lc = np.zeros((q, q))
    gf = np.zeros(q)
    step = np.zeros(q)
    trial = np.zeros(q)
    btrial = np.zeros(starts.shape[0] - 1)
    free = np.ones(q, dtype=np.bool_)
    val = _agq_objective(y, X, off, starts, phi, b, cnt_gt, lgy, eta0, nodes, logw)
    if math.isfinite(val):
        val = _fd_grad_hess(y, X, off, starts, phi, b, cnt_gt, lgy, eta0, nodes, logw, free, grad, hess, 1e-4)
    if not math.isfinite(val):
        return np.nan, 0, False, np.nan, FAILED
    n_iter = 0
    converged = False
    gmax = np.inf
    for it in range(maxit):
        n_iter = it + 1
        converged, dec, gmax = _newton_direction(
            phi, grad, hess, free, M, Lc, gf, step, s_min, t_max, btol, tol_eff, gtol
        )
        if converged:
            break
        alpha = 1.0
        accepted = False
        vt = np.nan
        for _ls in range(40):
            _trial_point(phi, step, alpha, trial, s_min, t_min, t_max)
            _copy(btrial, b)
            vt = _agq_objective(y, X, off, starts, trial, btrial, cnt_gt, lgy, eta0, nodes, logw)
            accepted = _accept(vt, val + 1e-4 * alpha * dec, phi, b, trial, btrial)
            if accepted:
                break
            alpha *= 0.5
        if not accepted:
            converged = dec < 1e-6 * (1.0 + abs(val))
            break
        val = vt
        # plateau jumps (as in _maximise_laplace; these values use the design's cell-level column)
        for side in range(2):
            if _plateau_trial(side, phi, step, b, trial, btrial, s_min, t_max):
                vt = _agq_objective(y, X, off, starts, trial, btrial, cnt_gt, lgy, eta0, nodes, logw, jc)
                if _accept(vt, val, phi, b, trial, btrial):
                    val = vt
        free[:] = True
        val = _fd_grad_hess(y, X, off, starts, phi, b, cnt_gt, lgy, eta0, nodes, logw, free, grad, hess, 1e-4)
        if _beta_diverged(phi, sep_bound):
            status |= SEPARATION
            break

    return val, n_iter, converged, gmax, status


# ---- the steps of maximise_gene that differ between the paths ---------------------------------


@by_path(_maximise_laplace, _maximise_laplace, _maximise_agq)
def _maximise(
    y, path, gene, phi, b, cnt_gt, lgy, grad, hess, s_min, t_max, t_min, tol_eff, gtol, btol, maxit, sep_bound
):
    """The Newton iterations of the path (:func:`_maximise_laplace` or :func:`_maximise_agq`)."""


def _separated_few_rows(path, gene):
    return _few_rows_separated(path.few.Xb, gene.PZ)


def _separated_cells(path, gene):
    cols = path.columns
    return _separated_nz(path.cells.X, gene.nz_pos, gene.nz_y, cols.two_valued, cols.first_value)


@by_path(_separated_few_rows, _separated_cells, _separated_cells)
def _separated(path, gene):
    """Whether a two-valued design column (a factor level) has no counts on one side: the
    estimates would go to infinity. From the blocks on the few-rows path, else the non-zero cells."""


def _start_few_rows(path, gene, beta, b):
    few = path.few
    return few_rows_start(
        few.Xb, few.PA, few.Lw, few.o_ref, gene.nz_pos, gene.nz_y, gene.nz_starts, beta, few.Lc, few.dblk
    )


def _start_cells(path, gene, beta, b):
    c = path.cells
    return glm_start(c.X, c.off, c.starts, gene.nz_pos, gene.nz_y, gene.nz_starts, beta, b)


def _start_agq(path, gene, beta, b):
    few, c = path.few, path.cells
    nzp, nzy, nzs = gene.nz_pos, gene.nz_y, gene.nz_starts
    if few.on:
        return few_rows_start(few.Xb, few.PA, few.Lw, few.o_ref, nzp, nzy, nzs, beta, few.Lc, few.dblk)
    return glm_start(c.X, c.off, c.starts, nzp, nzy, nzs, beta, b)


@by_path(_start_few_rows, _start_cells, _start_agq)
def _start(path, gene, beta, b):
    """Starting values: ``beta`` from a Poisson GLM (from the blocks when the design has few distinct
    rows), moment estimates of the dispersion and of sigma^2 returned (see :mod:`._start`)."""


def _donors_few_rows(path, y, gene):
    return _few_rows_donors_with_counts(gene.nz_starts, path.few.dblk)


def _donors_cells(path, y, gene):
    return _n_donors_with_counts(y, path.cells.starts)


@by_path(_donors_few_rows, _donors_cells, _donors_cells)
def _donors_with_counts(path, y, gene):
    """Number of donors with a non-zero count (the few-rows path has no dense ``y``)."""


@njit(**_JIT)
def maximise_gene(
    y,
    path,
    gene,
    phi,
    b,
    cov,
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
    y
        Counts (float) in donor-sorted order; not filled in (unused) on the few-rows path, which
        reads only ``gene``.
    path
        :class:`FewRowsPath`, :class:`LaplacePath` or :class:`AGQPath`: the model's cells and the
        data of its path (compiled per path, see :mod:`._bundles`).
    gene
        :class:`Gene`: the gene's non-zero cells (by block on the few-rows path, and with ``few.on``
        on the AGQ path; else by donor).
    phi
        (p + 2,) output: beta, log sigma^2, log theta.
    b
        (m,) output: conditional modes.
    cov
        (p + 2, p + 2) output: inverse negative Hessian over the free parameters (NaN elsewhere).

    Returns
    -------
    loglik, n_iter, status bits, max abs gradient over free parameters
    """
    nzy = gene.nz_y
    p = path.cells.X.shape[1]
    q = p + 2
    js = p
    jt = p + 1
    cov[:, :] = np.nan
    b[:] = 0.0
    status = 0
    cnt_gt, lgy = count_table(nzy)  # only non-zero counts matter
    ysum = 0.0
    for j in range(nzy.shape[0]):
        ysum += nzy[j]
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
    if _separated(path, gene):
        phi[:] = np.nan
        b[:] = np.nan
        return np.nan, 0, SEPARATION, np.nan

    # starting values: Poisson GLM, then a moment estimate of the dispersion
    beta0 = np.zeros(p)
    disp, sigma2_0 = _start(path, gene, beta0, b)
    t0 = -math.log(max(disp, 0.05))
    t0 = min(max(t0, -3.0), 3.0)
    for k in range(p):
        phi[k] = beta0[k]
    phi[js] = math.log(sigma2_0)
    phi[jt] = t0

    grad = np.zeros(q)
    hess = np.zeros((q, q))
    val, n_iter, converged, gmax, status = _maximise(
        y, path, gene, phi, b, cnt_gt, lgy, grad, hess, s_min, t_max, t_min, tol_eff, gtol, btol, maxit, sep_bound
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
    n_with = _donors_with_counts(path, y, gene) if phi[js] > SIGMA2_SEPARATION else 2
    if n_with < 2:
        status |= SEPARATION
    if not converged and (status & SEPARATION) == 0:
        status |= NOT_CONVERGED
    if not math.isfinite(val):
        status |= FAILED
    return val, n_iter, status, gmax
