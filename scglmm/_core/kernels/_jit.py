"""Compilation options shared by the kernels."""

from __future__ import annotations

#: Plain kernels: cached on disk, release the GIL, strict IEEE arithmetic.
JIT = {"cache": True, "nogil": True, "fastmath": False}
#: Elementwise passes over the cells: no zero-division branch, fused multiply-adds allowed.
VJIT = {"cache": True, "nogil": True, "error_model": "numpy", "fastmath": {"contract"}}
#: Reductions over chunks of cells: reassociation allowed (vectorised sums), the only fast-math licence taken.
RJIT = {"cache": True, "nogil": True, "error_model": "numpy", "fastmath": {"reassoc", "contract", "nsz"}}
