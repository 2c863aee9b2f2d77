"""Compilation: a fit compiles only the kernels of its path, each for one signature, and says so.

The block kernel is compiled per path (few-rows fast path, general Laplace kernel, adaptive
Gauss-Hermite); the functions whose work differs between the paths choose their implementation
from the path's type, so numba never compiles the other paths' functions. Checked in a child
process with an empty numba cache (``NUMBA_CACHE_DIR``), as on the first run after installing.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from numba.core import event as numba_event

import scglmm
from scglmm._core import _schedule

ROOT = Path(__file__).resolve().parents[1]

#: The child: a donor-level fit (few-rows path), then a fit with a cell-level covariate (general
#: Laplace kernel), reporting after each the compiled signatures of every kernel.
_CHILD = textwrap.dedent(
    """
    import importlib, json, logging, pkgutil, sys
    import numpy as np
    import scglmm
    from scglmm._core import kernels

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    def signatures():
        out = {}
        for info in pkgutil.iter_modules(kernels.__path__):
            mod = importlib.import_module(f"scglmm._core.kernels.{info.name}")
            for name, obj in vars(mod).items():
                if getattr(obj, "py_func", None) is not None and obj.py_func.__module__ == mod.__name__:
                    out[f"{info.name}.{name}"] = [str(s) for s in obj.signatures]
        return out

    rng = np.random.default_rng(0)
    donors = np.repeat(np.arange(6), 50)
    cond = (donors % 2).astype(float)
    X = np.column_stack([np.ones(300), cond])
    off = rng.normal(0.0, 0.05, 300)  # narrow: few blocks of cells, the few-rows path applies
    Y = rng.poisson(np.exp(off + 0.5 * cond)[:, None] * np.ones(8)).astype(float)
    scglmm.fit_genes(Y, X, donors, off)
    after_few = signatures()
    scglmm.fit_genes(Y, np.column_stack([X, rng.normal(size=300)]), donors, off)
    print(json.dumps({"few": after_few, "general": signatures()}))
    """
)


@pytest.fixture(scope="module")
def cold_run(tmp_path_factory) -> tuple[dict, str]:
    cache = tmp_path_factory.mktemp("numba_cache")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), PYTHONPATH=str(ROOT))
    res = subprocess.run(
        [sys.executable, "-c", _CHILD], env=env, cwd=ROOT, capture_output=True, text=True, check=True, timeout=900
    )
    return json.loads(res.stdout.strip().splitlines()[-1]), res.stderr


#: Kernels of the general Laplace kernel and of AGQ, which a few-rows fit must not compile.
GENERAL = ["_laplace.laplace_grad_hess", "_laplace.conditional_modes", "_start.glm_start", "_optimise._laplace_full"]
AGQ = ["_laplace.agq_value", "_optimise._fd_grad_hess", "_optimise._maximise_agq", "_optimise._agq_objective"]
FEW_ROWS = ["_few_rows.few_rows_laplace", "_few_rows.few_rows_modes", "_start.few_rows_start"]


def test_few_rows_fit_compiles_only_the_few_rows_path(cold_run):
    sigs = cold_run[0]["few"]
    for name in GENERAL + AGQ:
        assert sigs[name] == [], name
    for name in FEW_ROWS + ["_block.fit_block_csc", "_optimise.maximise_gene"]:
        assert len(sigs[name]) == 1, (name, sigs[name])
    assert "FewRowsPath" in sigs["_block.fit_block_csc"][0]


def test_general_fit_compiles_only_the_general_path(cold_run):
    before, sigs = cold_run[0]["few"], cold_run[0]["general"]
    for name in AGQ:
        assert sigs[name] == [], name
    for name in FEW_ROWS:  # nothing more of the few-rows path
        assert sigs[name] == before[name], name
    for name in GENERAL:
        assert len(sigs[name]) == 1, (name, sigs[name])
    assert len(sigs["_block.fit_block_csc"]) == 2


def test_every_kernel_compiles_once_per_path(cold_run):
    """No kernel is compiled for several argument types (literal flags, int32 and int64 indices,
    contiguous and strided arrays...) within a path: one signature each, but for the block kernel
    and its path-generic callees (one per path) and the copy helper (int64 and float64 vectors)."""
    sigs = cold_run[0]["general"]
    per_path = {"_block.fit_block_csc", "_optimise.maximise_gene", "_optimise._maximise_laplace", "_linalg._copy"}
    for name, s in sigs.items():
        assert len(s) <= (2 if name in per_path else 1), (name, s)


def test_first_run_logs_each_kernel_chain(cold_run):
    err = cold_run[1]
    assert "compiling scglmm's numba kernels (the first run after installing" in err
    assert "compiling the block kernel of the few-rows fast path" in err
    assert "compiled the block kernel of the few-rows fast path in" in err
    assert "compiling the block kernel of the general Laplace kernel" in err
    assert "later runs load them from the disk cache" in err


def test_compiled_run_logs_nothing(caplog):
    """Once compiled (or loaded from the cache) nothing is said about compiling."""
    rng = np.random.default_rng(1)
    Y = rng.poisson(2.0, size=(60, 4)).astype(float)
    X = np.column_stack([np.ones(60), np.arange(60) % 2])
    donors = np.repeat(np.arange(6), 10)
    scglmm.fit_genes(Y, X, donors)
    caplog.set_level(logging.INFO, logger="scglmm")
    scglmm.fit_genes(Y, X, donors)
    assert not [r for r in caplog.records if "compil" in r.getMessage()]


class _Dispatcher:
    """Stand-in for a numba dispatcher in a compile event."""

    def __init__(self, func) -> None:
        self.py_func = func


def _event(func, args: tuple, start: bool) -> numba_event.Event:
    status = numba_event.EventStatus.START if start else numba_event.EventStatus.END
    return numba_event.Event("numba:compile", status, data={"dispatcher": _Dispatcher(func), "args": args})


def test_compile_log_lines(caplog):
    """A line when a chain starts compiling (the first with the explanation), one when a block
    kernel is done, a summary at the end; compilations of other packages are not reported."""
    from scglmm._core.kernels import _block, _bundles, _optimise

    class PathType:  # the numba type of a path argument: its instance_class is the namedtuple
        instance_class = _bundles.LaplacePath

    def foreign():
        pass

    caplog.set_level(logging.INFO, logger="scglmm")
    with _schedule.compile_log() as log:
        log.notify(_event(_optimise._two_valued.py_func, (), True))
        log.notify(_event(_optimise._two_valued.py_func, (), False))
        log.notify(_event(foreign, (), True))
        log.notify(_event(foreign, (), False))
        args = (None, None, None, PathType(), None)
        log.notify(_event(_block.fit_block_csc.py_func, args, True))
        log.notify(_event(_optimise.maximise_gene.py_func, (), True))  # nested: no line of its own
        log.notify(_event(_optimise.maximise_gene.py_func, (), False))
        log.notify(_event(_block.fit_block_csc.py_func, args, False))
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("compiling scglmm's numba kernels (the first run after installing")
    assert lines[0].endswith("kernel _two_valued ...")
    assert lines[1] == "compiling the block kernel of the general Laplace kernel ..."
    assert lines[2].startswith("compiled the block kernel of the general Laplace kernel in ")
    assert lines[3].startswith("compiled 3 scglmm functions in ")
    assert len(lines) == 4
