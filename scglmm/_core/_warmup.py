"""Compile the general engine's kernels in two processes at once, before a parallel run.

With a cold numba cache (the first run after installing) one process needs about 23 s to compile the
kernels of a random-effect structure, about half of it for the value-gradient kernel
(:func:`.kernels._re_laplace.re_value_grad`) and half for the rest (the start's per-level fits and
Poisson GLM, the seed's weighted cross-products, the Newton step, the count tables). Before the genes of
a parallel run are dispatched, a worker compiles the value-gradient kernel while this process compiles
the others; each writes numba's on-disk cache, from which the other process (and every later worker)
loads what it did not compile. With a warm cache both only load. Results do not depend on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from joblib import Parallel, delayed
from joblib.parallel import get_active_backend

from ._re import _Problem, _seed_hessian, _start
from .kernels._re_outer import re_newton_step

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from ._re import REStructure

__all__ = ["compile_in_two"]


def compile_in_two(s: REStructure, y: NDArray[np.float64], n_jobs: int) -> None:
    """Compile (or load) the kernels of ``s`` for a gene's counts ``y``: the value-gradient kernel in a
    worker of joblib's active backend, the others here, at the same time."""
    if "value_grad" in s.compiled:  # already compiled in this process
        return
    y = np.ascontiguousarray(y, dtype=np.float64)
    if not getattr(get_active_backend()[0], "supports_return_generator", False):  # e.g. multiprocessing
        Parallel(n_jobs=int(n_jobs))([delayed(_value_grad_once)(s, y)])
        _others_once(s, y)
        return
    pending = Parallel(n_jobs=int(n_jobs), return_as="generator")([delayed(_value_grad_once)(s, y)])
    _others_once(s, y)
    list(pending)


def _value_grad_once(s: REStructure, y: NDArray[np.float64]) -> None:
    """One evaluation of the value-gradient kernel at arbitrary parameters (it compiles or loads it)."""
    prob = _Problem(s, y)
    phi = np.zeros(s.n_params)
    prob.value_grad(phi)


def _others_once(s: REStructure, y: NDArray[np.float64]) -> None:
    """The start, the seed's cross-products and a Newton step for ``y`` (they compile or load their kernels)."""
    prob = _Problem(s, y)
    phi = _start(s, prob.y, prob)
    P = s.n_params
    free = np.ones(P, dtype=bool)
    free[-1] = False  # the seed's log theta column would evaluate the value-gradient kernel
    _seed_hessian(prob, phi, np.zeros(P), free)
    re_newton_step(np.zeros(P), -np.eye(P), free)
