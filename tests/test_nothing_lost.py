"""Nothing is ever half-written: a failed run leaves the AnnData exactly as it was.

Failures injected here: an exception and a KeyboardInterrupt raised by the compiled block kernel on
its third call (serial and threaded), a warning turned into an error, and bad input. Also: results
under another ``key_added`` are never touched, and re-running with the same key replaces the old
results whole (no stale columns or keys).
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import scglmm
from scglmm._core.kernels import _block as _kernels

FORMULA = "~ condition + (1 | donor)"


def make_adata() -> ad.AnnData:
    a = scglmm.datasets.simulate(
        n_donors=4, cells_per_donor=15, n_genes=24, mean_range=(0.5, 10.0), paired=True, seed=11
    )
    a.obs["cell_type"] = pd.Categorical(np.where(np.arange(a.n_obs) % 3 == 0, "B", "A"))
    return a


# ------------------------------------------------------------------------------------------------
# exact comparison of two AnnData objects
# ------------------------------------------------------------------------------------------------
def _equal(x: Any, y: Any, where: str) -> None:
    if isinstance(x, pd.DataFrame):
        assert isinstance(y, pd.DataFrame), where
        pd.testing.assert_frame_equal(x, y, obj=where)
    elif isinstance(x, pd.Series):
        pd.testing.assert_series_equal(x, y, obj=where)
    elif sparse.issparse(x):
        assert sparse.issparse(y), where
        np.testing.assert_array_equal(x.toarray(), y.toarray(), err_msg=where)
    elif isinstance(x, np.ndarray):
        assert isinstance(y, np.ndarray), where
        assert x.dtype == y.dtype, where
        np.testing.assert_array_equal(x, y, err_msg=where)
    elif isinstance(x, dict):
        assert isinstance(y, dict) and list(x) == list(y), (where, list(x), list(y))
        for k in x:
            _equal(x[k], y[k], f"{where}[{k!r}]")
    elif isinstance(x, list | tuple):
        assert type(x) is type(y) and len(x) == len(y), where
        for i, (u, v) in enumerate(zip(x, y, strict=True)):
            _equal(u, v, f"{where}[{i}]")
    elif isinstance(x, float) and np.isnan(x):
        assert isinstance(y, float) and np.isnan(y), where
    else:
        assert x == y, where


def assert_adata_equal(a: ad.AnnData, b: ad.AnnData) -> None:
    """Same keys everywhere, same values (NaN == NaN), same dtypes and key order."""
    assert a.shape == b.shape
    _equal(a.X, b.X, "X")
    _equal(a.obs, b.obs, "obs")
    _equal(a.var, b.var, "var")
    for attr in ("layers", "obsm", "varm", "obsp", "varp"):
        ma, mb = getattr(a, attr), getattr(b, attr)
        assert list(ma.keys()) == list(mb.keys()), (attr, list(ma.keys()), list(mb.keys()))
        for k in ma:
            _equal(ma[k], mb[k], f"{attr}[{k!r}]")
    _equal(dict(a.uns), dict(b.uns), "uns")


def _fitted(*keys: str) -> ad.AnnData:
    """An AnnData holding earlier results under each key (the first with a covariate)."""
    a = make_adata()
    for i, key in enumerate(keys):
        formula = "~ condition + covariate + (1 | donor)" if i == 0 else FORMULA
        scglmm.tl.fit(a, formula, key_added=key, n_jobs=1, block_size=4)
    return a


# ------------------------------------------------------------------------------------------------
# failures injected into the block kernel
# ------------------------------------------------------------------------------------------------
class _FailOnCall:
    """Stand-in for ``fit_block_csc``: runs the real kernel, but raises ``exc`` on call ``n``."""

    def __init__(self, real, n: int, exc: BaseException) -> None:
        self.real, self.n, self.exc = real, n, exc
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, *args, **kwargs):
        with self.lock:
            self.calls += 1
            mine = self.calls
        if mine == self.n:
            raise self.exc
        return self.real(*args, **kwargs)


@pytest.mark.parametrize("n_jobs", [1, 2])
@pytest.mark.parametrize(
    "exc", [RuntimeError("injected failure in block 3"), KeyboardInterrupt()], ids=["exception", "interrupt"]
)
@pytest.mark.parametrize("groupby", [None, "cell_type"], ids=["plain", "groupby"])
def test_worker_failure_leaves_adata_untouched(monkeypatch, n_jobs: int, exc: BaseException, groupby) -> None:
    a = _fitted("scglmm", "other")
    before = a.copy()
    fake = _FailOnCall(_kernels.fit_block_csc, 3, exc)
    monkeypatch.setattr(_kernels, "fit_block_csc", fake)
    with pytest.raises(type(exc)):
        scglmm.tl.fit(a, FORMULA, n_jobs=n_jobs, block_size=4, groupby=groupby)  # 6 blocks per fit
    assert fake.calls >= 3
    assert_adata_equal(a, before)


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_worker_failure_in_array_api_propagates(monkeypatch, n_jobs: int) -> None:
    rng = np.random.default_rng(0)
    Y = rng.poisson(2.0, size=(40, 30)).astype(float)
    X = np.column_stack([np.ones(40), np.arange(40) % 2])
    fake = _FailOnCall(_kernels.fit_block_csc, 3, ValueError("boom in block 3"))
    monkeypatch.setattr(_kernels, "fit_block_csc", fake)
    with pytest.raises(ValueError, match="boom in block 3"):
        scglmm.fit_genes(Y, X, np.repeat(list("abcd"), 10), n_jobs=n_jobs, block_size=5)


def test_failure_with_copy_true_leaves_original_untouched(monkeypatch) -> None:
    a = _fitted("scglmm")
    before = a.copy()
    monkeypatch.setattr(_kernels, "fit_block_csc", _FailOnCall(_kernels.fit_block_csc, 2, RuntimeError("x")))
    with pytest.raises(RuntimeError):
        scglmm.tl.fit(a, FORMULA, n_jobs=1, block_size=4, copy=True)
    assert_adata_equal(a, before)


def test_warning_as_error_leaves_adata_untouched() -> None:
    """A user running with warnings as errors: the summary warning aborts the run before any write."""
    a = _fitted("scglmm")
    a.X = a.X.toarray()
    a.X[:, 0] = 0.0  # an all-zero gene with the filter off -> the run's summary warning
    a.X[0, 0] = 1.0
    before = a.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="genes have no estimate"):
            scglmm.tl.fit(a, FORMULA, n_jobs=1, min_cells=0, min_donors=0, separation="limit")
    assert_adata_equal(a, before)


@pytest.mark.parametrize(
    ("formula", "kwargs"),
    [
        ("~ condition + (1 | nobody)", {}),
        (FORMULA, {"layer": "missing"}),
        (FORMULA, {"size_factors": np.zeros(60)}),
        ("~ condition + (1 | donor)", {"groupby": "nope"}),
    ],
)
def test_bad_input_leaves_previous_results_untouched(formula: str, kwargs: dict) -> None:
    a = _fitted("scglmm", "other")
    before = a.copy()
    with pytest.raises((KeyError, ValueError)):
        scglmm.tl.fit(a, formula, **kwargs)
    assert_adata_equal(a, before)


# ------------------------------------------------------------------------------------------------
# replace whole, never touch other keys
# ------------------------------------------------------------------------------------------------
def _keys_of(a: ad.AnnData, key: str) -> dict[str, list[str]]:
    def mine(k: str) -> bool:
        return k == key or k.startswith((f"{key}_", f"{key}:"))

    return {
        "varm": sorted(k for k in a.varm if mine(k)),
        "var": sorted(k for k in a.var.columns if mine(k)),
        "uns": sorted(k for k in a.uns if mine(k)),
    }


def test_rerun_same_key_replaces_whole_and_keeps_other_key() -> None:
    a = _fitted("scglmm", "other")  # "scglmm" was fitted with the covariate
    other_before = {k: a.varm[k].copy() for k in a.varm if k.startswith("other_")}
    other_uns = a.uns["other"]
    assert "covariate" in a.varm["scglmm_coef"].columns
    scglmm.tl.fit(a, "~ condition + (1 | donor)", n_jobs=1)
    fresh = make_adata()
    scglmm.tl.fit(fresh, "~ condition + (1 | donor)", n_jobs=1)
    # the same keys as a fresh run, and the same contents (timings aside)
    assert _keys_of(a, "scglmm") == _keys_of(fresh, "scglmm")
    for k in _keys_of(fresh, "scglmm")["varm"]:
        _equal(a.varm[k], fresh.varm[k], k)
    assert list(a.varm["scglmm_coef"].columns) == ["Intercept", "condition[T.stim]"]
    assert a.uns["scglmm"]["params"]["formula"] == "~ condition + (1 | donor)"
    # the other key: untouched, the very same objects
    for k, v in other_before.items():
        _equal(a.varm[k], v, k)
    assert a.uns["other"] is other_uns


def test_rerun_groupby_then_plain_drops_group_keys() -> None:
    a = make_adata()
    scglmm.tl.fit(a, FORMULA, groupby="cell_type", min_cells_group=5, n_jobs=1)
    grouped = _keys_of(a, "scglmm")
    assert any(":" in k for k in grouped["uns"]), grouped
    scglmm.tl.fit(a, FORMULA, n_jobs=1)
    fresh = make_adata()
    scglmm.tl.fit(fresh, FORMULA, n_jobs=1)
    assert _keys_of(a, "scglmm") == _keys_of(fresh, "scglmm")
    assert not any(":" in k for v in _keys_of(a, "scglmm").values() for k in v)


def test_rerun_plain_then_groupby_drops_plain_keys() -> None:
    a = make_adata()
    scglmm.tl.fit(a, FORMULA, n_jobs=1)
    scglmm.tl.fit(a, FORMULA, groupby="cell_type", min_cells_group=5, n_jobs=1)
    fresh = make_adata()
    scglmm.tl.fit(fresh, FORMULA, groupby="cell_type", min_cells_group=5, n_jobs=1)
    assert _keys_of(a, "scglmm") == _keys_of(fresh, "scglmm")


def test_copy_true_does_not_touch_original() -> None:
    a = _fitted("other")
    before = a.copy()
    b = scglmm.tl.fit(a, FORMULA, n_jobs=1, copy=True)
    assert_adata_equal(a, before)
    assert "scglmm_coef" in b.varm and "other_coef" in b.varm


def test_results_independent_of_n_jobs() -> None:
    a1, a2 = make_adata(), make_adata()
    scglmm.tl.fit(a1, FORMULA, n_jobs=1, block_size=5)
    scglmm.tl.fit(a2, FORMULA, n_jobs=2, block_size=7)
    for k in ("scglmm_coef", "scglmm_se", "scglmm_pval", "scglmm_fit", "scglmm_cov", "scglmm_donor_effects"):
        if k == "scglmm_fit":
            _equal(a1.varm[k], a2.varm[k], k)
        else:
            _equal(a1.varm[k], a2.varm[k], k)


# ------------------------------------------------------------------------------------------------
# the CLI: no partial output file
# ------------------------------------------------------------------------------------------------
def test_cli_failure_mid_run_writes_no_file(tmp_path: Path, monkeypatch) -> None:
    from click.testing import CliRunner

    from scglmm.cli import cli

    a = make_adata()
    src = tmp_path / "in.h5ad"
    a.write_h5ad(src)
    out = tmp_path / "out.h5ad"
    table = tmp_path / "out.tsv"
    monkeypatch.setattr(_kernels, "fit_block_csc", _FailOnCall(_kernels.fit_block_csc, 1, RuntimeError("boom")))
    res = CliRunner().invoke(cli, ["fit", str(src), "-f", FORMULA, "-o", str(out), "--table", str(table)])
    assert res.exit_code == 1, res.output
    assert not out.exists() and not table.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5ad"]  # no temporary file left either


def test_fit_on_a_view_leaves_the_parent_untouched() -> None:
    """As with scanpy tools, a view becomes its own object (anndata warns); the parent is not written to."""
    from anndata import ImplicitModificationWarning

    a = _fitted("other")
    before = a.copy()
    v = a[:, :12]
    with pytest.warns(ImplicitModificationWarning, match="initializing view as actual"):
        scglmm.tl.fit(v, FORMULA, size_factors="libsize", n_jobs=1)
    assert not v.is_view and "scglmm_coef" in v.varm and v.varm["scglmm_coef"].shape[0] == 12
    assert_adata_equal(a, before)
