"""Normalisation that survives a global shift (issue 19, item 5).

The factors against edgeR's ``calcNormFactors`` (numbers computed once with R, ``tests/data/normalisation``)
and against values worked out by hand; dense, CSR, CSC and on-disk counts alike; what ``tl.fit`` stores;
and a simulation in which 15 % of the genes are strongly induced: with plain library sizes every other gene
looks down, with the default TMM factors the null genes stay centred on 0.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import scglmm
from scglmm._core._counts import as_backed_counts
from scglmm._core._errors import InvalidValueError
from scglmm._core._normalise import (
    median_ratio_factors,
    pseudobulk,
    robust_size_factors,
    sample_factors,
    tmm_factors,
)

DATA = Path(__file__).parent / "data" / "normalisation"
FORMATS = {"dense": np.asarray, "csr": sparse.csr_matrix, "csc": sparse.csc_matrix}


# ------------------------------------------------------------------------------------------------
# the factors: edgeR and hand-computed values
# ------------------------------------------------------------------------------------------------
def _edger(name: str) -> tuple[np.ndarray, pd.DataFrame]:
    ref = pd.read_csv(DATA / "edger_factors.csv")
    ref = ref[ref["dataset"] == name]
    x = pd.read_csv(DATA / f"{name}.csv", index_col=0)
    assert list(x.index.astype(str)) == list(ref["sample"].astype(str))
    return x.to_numpy(dtype=float), ref


@pytest.mark.parametrize("name", ["small", "kang_pseudobulk", "shift_pseudobulk"])
def test_tmm_and_median_ratio_match_edger(name) -> None:
    x, ref = _edger(name)
    np.testing.assert_allclose(tmm_factors(x), ref["tmm"], rtol=1e-12)
    np.testing.assert_allclose(median_ratio_factors(x), ref["rle"], rtol=1e-12)
    # the library sizes given, computed exactly as the R script does (ties among log ratios depend on them)
    lib = x.sum(axis=1) * (1 + 0.1 * ((np.arange(1, x.shape[0] + 1) % 3) - 1))
    np.testing.assert_allclose(lib, ref["lib"], rtol=1e-14)
    np.testing.assert_allclose(tmm_factors(x, lib), ref["tmm_lib"], rtol=1e-12)


def test_factors_by_hand_recover_a_known_depth_under_a_global_shift() -> None:
    # sample 2 is sample 1 sequenced 3 times deeper, each gene off by its own factor c (two genes by
    # none), plus two genes induced 50-fold: its total count grows 10-fold, but the other genes say the
    # depth ratio is 3. The median of ratios gets it exactly (the 7th and 8th of the 14 ratios are the two
    # genes with c = 1), TMM within 2 % (it keeps genes with c from 0.9 to 1.1, weighted by their counts)
    base = np.array([40.0, 80, 120, 160, 200, 240, 280, 320, 360, 400, 440, 480, 520, 560])
    c = np.array([0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0, 1.0, 1.05, 1.1, 1.15, 1.2, 50.0, 50.0])
    deep = 3 * base * c
    x = np.vstack([base, deep])
    assert x[1].sum() / x[0].sum() > 10
    f_tmm, f_ratio = tmm_factors(x), median_ratio_factors(x)
    assert (x[1].sum() * f_tmm[1]) / (x[0].sum() * f_tmm[0]) == pytest.approx(3.0, rel=0.02)
    assert (x[1].sum() * f_ratio[1]) / (x[0].sum() * f_ratio[0]) == pytest.approx(3.0, rel=1e-12)
    assert np.prod(f_tmm) == pytest.approx(1.0, rel=1e-12) and np.prod(f_ratio) == pytest.approx(1.0, rel=1e-12)


def test_tmm_by_hand_trimmed_weighted_mean() -> None:
    # two samples with equal libraries (100), the first the reference. The log2 ratios of the 10 genes,
    # sorted: -3, log2 0.9, 0, 0, 0, log2 1.2, log2 1.2, log2 1.3, log2 1.4, 1 (genes 0, 7, 2-4, 5-6, 9, 8, 1).
    # edgeR keeps average ranks 4..7 (trimming floor(10 * 0.3) = 3 at each end; the 5 % trim of the
    # average log expression keeps all 10): the three ties at 0 (average rank 4) and the two at log2 1.2
    # (rank 6.5). Each is weighted by 1 / v, v = (100 - y1) / (100 y1) + (100 - y2) / (100 y2):
    # v = 0.18 for 10 vs 10, 0.09 + 88 / 1200 for 10 vs 12.
    y1 = np.array([16.0, 4, 10, 10, 10, 10, 10, 10, 10, 10])
    y2 = np.array([2.0, 8, 10, 10, 10, 12, 12, 9, 14, 13])
    assert y1.sum() == y2.sum() == 100
    v12 = 0.09 + 88 / 1200
    log2_f = (2 * np.log2(1.2) / v12) / (3 / 0.18 + 2 / v12)
    f = np.array([1.0, 2**log2_f])
    np.testing.assert_allclose(tmm_factors(np.vstack([y1, y2]), ref=0), f / np.sqrt(f[1]), rtol=1e-12)


def test_tmm_mode_by_hand_recentres_on_the_unchanged_genes() -> None:
    # equal libraries (3000) against a reference of 100 counts per gene; 6 genes unchanged (ratios 0.9 to
    # 1.1), 4 induced 4- to 6-fold. edgeR keeps average ranks 4..7 of the log ratios (the two ties at 0 have
    # rank 3.5): 1.05, 1.1 and the induced gene at 4, so its estimate is pulled up (about 0.94 in log2).
    # Re-centred, the window of 4 nearest log ratios moves to ratios 1, 1, 1.05, 1.1 and stays there.
    y1 = np.full(10, 100.0)
    y2 = np.array([90.0, 95, 100, 100, 105, 110, 400, 450, 500, 600])
    x, lib = np.vstack([y1, y2]), np.array([3000.0, 3000.0])
    w = 1 / ((3000 - y2) / (3000 * y2) + (3000 - y1) / (3000 * y1))
    m = np.log2(y2 / y1)
    first, final = [5, 6, 4], [2, 3, 4, 5]
    log2_tmm = np.sum(w[first] * m[first]) / np.sum(w[first])
    log2_mode = np.sum(w[final] * m[final]) / np.sum(w[final])
    assert log2_tmm > 0.9 and abs(log2_mode) < 0.06
    for mode, log2_f in ((False, log2_tmm), (True, log2_mode)):
        f = tmm_factors(x, lib, ref=0, mode=mode)
        np.testing.assert_allclose(f, [2 ** (-log2_f / 2), 2 ** (log2_f / 2)], rtol=1e-12)


def test_tmm_mode_is_tmm_without_a_one_sided_change() -> None:
    # the 8 control samples of Kang, no stimulus: both settle near the same centre (within 5 %)
    x, _ = _edger("kang_pseudobulk")
    ctrl = x[0::2]
    np.testing.assert_allclose(tmm_factors(ctrl, mode=True), tmm_factors(ctrl), rtol=0.05)


def test_degenerate_inputs() -> None:
    x = np.array([[3.0, 0, 5, 7], [3.0, 0, 5, 7]])
    np.testing.assert_array_equal(tmm_factors(x), [1.0, 1.0])  # identical samples
    np.testing.assert_array_equal(tmm_factors(x[:1]), [1.0])  # one sample
    y = np.array([[3.0, 1, 5, 7], [4.0, 2, 5, 6], [1.0, 2, 9, 9]])
    with_zero = np.insert(y, 2, 0.0, axis=1)  # a gene without counts is ignored
    np.testing.assert_array_equal(tmm_factors(with_zero), tmm_factors(y))
    np.testing.assert_array_equal(median_ratio_factors(with_zero), median_ratio_factors(y))
    np.testing.assert_array_equal(tmm_factors(x, mode=True), [1.0, 1.0])
    with pytest.raises(InvalidValueError, match="no gene has a count in every sample"):
        median_ratio_factors(np.array([[1.0, 0], [0, 1]]))
    with pytest.raises(InvalidValueError, match="counts must be a finite non-negative"):
        tmm_factors(np.array([[1.0, -1]]))
    with pytest.raises(InvalidValueError, match="lib_size must be 2 positive"):
        tmm_factors(x, [1.0, 0.0])


# ------------------------------------------------------------------------------------------------
# per-cell size factors from the array API: every storage format alike
# ------------------------------------------------------------------------------------------------
def _shifted(n_donors: int = 6, seed: int = 0, **kw) -> ad.AnnData:
    """Paired donors; 15 % of genes strongly induced in stim (natural-log effects 1.5 to 3)."""
    args = {"cells_per_donor": 40, "n_genes": 300, "frac_de": 0.15, "lfc": (1.5, 3.0), "de_direction": "up"}
    return scglmm.datasets.simulate(n_donors=n_donors, seed=seed, **{**args, **kw})


@pytest.mark.parametrize("fmt", ["dense", "csr", "csc", "backed"])
def test_pseudobulk_every_format(fmt, tmp_path) -> None:
    a = _shifted(n_genes=50)
    codes = a.obs["sample"].cat.codes.to_numpy()
    expected = np.vstack([np.asarray(a.X[codes == k].sum(axis=0)) for k in range(codes.max() + 1)])
    if fmt == "backed":
        a.write_h5ad(tmp_path / "a.h5ad")
        Y = as_backed_counts(tmp_path / "a.h5ad")
    else:
        Y = FORMATS[fmt](a.X.toarray()) if fmt == "dense" else FORMATS[fmt](a.X)
    np.testing.assert_array_equal(pseudobulk(Y, codes, codes.max() + 1), expected)


def test_robust_size_factors_identical_for_dense_csr_csc() -> None:
    a = _shifted(paired=True)
    samples = a.obs["sample"].to_numpy()
    out = {name: robust_size_factors(f(a.X.toarray()), samples) for name, f in FORMATS.items()}
    np.testing.assert_array_equal(out["dense"], out["csr"])
    np.testing.assert_array_equal(out["dense"], out["csc"])
    totals = np.asarray(a.X.sum(axis=1)).ravel()
    np.testing.assert_array_equal(robust_size_factors(a.X, samples, method="none"), totals)
    # each cell's total times the TMM factor of its sample's pseudobulk
    codes, names = pd.factorize(samples)
    f = tmm_factors(pseudobulk(a.X, codes, len(names)))
    np.testing.assert_allclose(out["csr"], totals * f[codes], rtol=1e-13)


def test_library_sizes_given_keep_the_samples_robust_depth() -> None:
    a = _shifted()
    samples = a.obs["sample"].to_numpy()
    lib = a.obs["libsize"].to_numpy()
    s = robust_size_factors(a.X, samples, library_size=lib)
    codes, names = pd.factorize(samples)
    P = pseudobulk(a.X, codes, len(names))
    # within a sample the cells keep their library sizes' ratios ...
    r = s / lib
    for k in range(len(names)):
        assert np.ptp(r[codes == k]) < 1e-12 * r[codes == k].max()
    # ... and the samples' depths are the pseudobulks' TMM depths (up to one constant)
    depth = np.bincount(codes, s)
    tmm_depth = P.sum(axis=1) * tmm_factors(P)
    np.testing.assert_allclose(depth / tmm_depth, (depth / tmm_depth)[0], rtol=1e-12)


def test_strata_are_normalised_separately() -> None:
    a = _shifted()
    strata = np.where(a.obs["donor"].isin(["D01", "D02", "D04"]), "x", "y")
    s = robust_size_factors(a.X, a.obs["sample"].to_numpy(), strata=strata)
    for g in ("x", "y"):
        cells = strata == g
        alone = robust_size_factors(a.X[cells], a.obs["sample"].to_numpy()[cells])
        np.testing.assert_allclose(s[cells], alone, rtol=1e-13)


def test_sample_factors_checks() -> None:
    with pytest.raises(InvalidValueError, match="norm_method must be one of"):
        sample_factors(np.ones((2, 3)), np.ones(2), method="TMM")
    np.testing.assert_array_equal(sample_factors(np.array([[1.0, 2], [0, 0]]), [3.0, 3.0]), [1.0, 1.0])
    with pytest.raises(InvalidValueError, match="cell_library must be 2 positive"):
        sample_factors(np.ones((2, 3)), [1.0, 0.0])
    np.testing.assert_array_equal(sample_factors(np.ones((2, 3)), [1.0, 5.0], method="none"), [1.0, 1.0])


# ------------------------------------------------------------------------------------------------
# tl.fit: the default, what it stores, the other choices
# ------------------------------------------------------------------------------------------------
def _fit(a: ad.AnnData, formula: str = "~ condition + (1 | donor)", **kw) -> None:
    with warnings.catch_warnings():  # the summary warning of genes without an estimate
        warnings.simplefilter("ignore", UserWarning)
        scglmm.tl.fit(a, formula, progress=False, min_cells=None, min_donors=None, **kw)


@pytest.mark.parametrize("fmt", ["dense", "csr", "csc"])
def test_fit_default_is_tmm_mode_on_donor_x_condition(fmt) -> None:
    a = _shifted(n_genes=30, paired=True)
    a.X = FORMATS[fmt](a.X.toarray()) if fmt == "dense" else FORMATS[fmt](a.X)
    _fit(a)
    params, table = a.uns["scglmm"]["params"], a.uns["scglmm"]["norm_factors"]
    assert params["norm_method"] == "tmm_mode" and list(params["norm_samples"]) == ["donor", "condition"]
    assert list(table.columns) == ["donor", "condition", "n_cells", "total_counts", "factor"]
    assert table.index[0] == "D01:ctrl" and len(table) == 12
    totals = np.asarray(a.X.sum(axis=1), dtype=float).ravel()
    factor = table["factor"].to_numpy()[_codes(a)[0]]
    np.testing.assert_allclose(a.uns["scglmm"]["log_offset"], np.log(totals * factor), rtol=1e-13)
    np.testing.assert_allclose(table["factor"], tmm_factors(pseudobulk(a.X, *_codes(a)), mode=True), rtol=1e-13)


def _codes(a: ad.AnnData) -> tuple[np.ndarray, int]:
    codes, names = pd.factorize(a.obs["donor"].astype(str) + ":" + a.obs["condition"].astype(str), sort=True)
    return codes, len(names)


def test_none_is_the_plain_library_size_and_an_offset_is_used_as_given() -> None:
    a = _shifted(n_genes=20)
    _fit(a, norm_method="none", key_added="none")
    _fit(a, offset=np.log(a.obs["libsize"].to_numpy()), key_added="off")
    assert "norm_factors" not in a.uns["none"] and "norm_factors" not in a.uns["off"]
    assert a.uns["off"]["params"]["norm_method"] == "none"
    np.testing.assert_array_equal(a.uns["none"]["log_offset"], np.log(np.asarray(a.X.sum(axis=1), float).ravel()))
    np.testing.assert_array_equal(a.uns["off"]["log_offset"], np.log(a.obs["libsize"].to_numpy()))


def test_ratio_sample_key_groupby_and_h5ad(tmp_path) -> None:
    a = _shifted(n_genes=40, paired=True)
    a.obs["lane"] = np.where(np.arange(a.n_obs) % 2 == 0, "L1", "L2")
    _fit(a, norm_method="ratio", sample_key="lane", key_added="lane")
    assert list(a.uns["lane"]["norm_factors"].index) == ["L1", "L2"]
    assert list(a.uns["lane"]["params"]["norm_samples"]) == ["lane"]
    a.obs["half"] = np.where(a.obs["donor"].isin(["D01", "D02", "D03"]), "h1", "h2")
    _fit(a, groupby="half", key_added="grp", min_cells_group=None, min_donors_group=None)
    table = a.uns["grp"]["norm_factors"]
    assert list(table.columns) == ["donor", "condition", "half", "n_cells", "total_counts", "factor"]
    for g, part in table.groupby("half"):
        assert np.exp(np.mean(np.log(part["factor"]))) == pytest.approx(1.0, rel=1e-12), g
    a.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    pd.testing.assert_frame_equal(back.uns["grp"]["norm_factors"], table, check_dtype=False, check_names=False)
    assert back.uns["grp:h1"]["params"]["norm_method"] == "tmm_mode"


def test_a_sample_without_counts_keeps_its_library_sizes(caplog) -> None:
    a = _shifted(n_genes=20)
    X = a.X.toarray()
    X[(a.obs["donor"] == "D02").to_numpy()] = 0
    a.X = sparse.csr_matrix(X)
    with caplog.at_level(logging.WARNING, logger="scglmm"):
        _fit(a, size_factors="libsize")
    table = a.uns["scglmm"]["norm_factors"]
    assert table.loc["D02:ctrl", "factor"] == 1.0 and table.loc["D02:ctrl", "total_counts"] == 0
    others = table.drop(index="D02:ctrl")["factor"]
    assert np.exp(np.mean(np.log(others))) == pytest.approx(1.0, rel=1e-12)
    assert any("have no counts at all, e.g. ['D02:ctrl']" in r.getMessage() for r in caplog.records)


def test_cli_norm_method_flag(tmp_path) -> None:
    from click.testing import CliRunner

    from scglmm.cli import cli

    a = _shifted(n_genes=20)
    a.write_h5ad(tmp_path / "in.h5ad")
    out = {}
    for method in ("tmm", "none"):
        args = ["fit", str(tmp_path / "in.h5ad"), "-f", "~ condition + (1 | donor)", "-q", "--min-cells", "0"]
        args += ["--norm-method", method, "--out", str(tmp_path / f"{method}.h5ad")]
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 0, res.stderr
        out[method] = ad.read_h5ad(tmp_path / f"{method}.h5ad")
    assert out["tmm"].uns["scglmm"]["params"]["norm_method"] == "tmm"
    assert "norm_factors" not in out["none"].uns["scglmm"]
    res = CliRunner().invoke(cli, [*args[:-4], "--sample-key", "lane", "--out", str(tmp_path / "x.h5ad")])
    assert res.exit_code == 1 and "--sample-key" in res.stderr


# ------------------------------------------------------------------------------------------------
# a global shift: null genes stay centred with the default, drift down with plain library sizes
# ------------------------------------------------------------------------------------------------
def test_global_shift_null_genes_stay_centred() -> None:
    # donor variances as measured on the shipped Kang data (median 0.011, 90 % below 0.06); what TMM leaves
    # of the shift grows with the share of induced genes and the spread of the null genes' log ratios, and
    # the re-centred window of "tmm_mode" removes most of it (benchmarks/results/normalisation.md)
    a = _shifted(n_donors=8, cells_per_donor=50, n_genes=400, frac_de=0.15, sigma2_range=(0.0, 0.1))
    null = ~a.var["is_de"].to_numpy()
    median = {}
    for method in (None, "tmm", "none"):
        key = method or "default"
        _fit(a, key_added=key, **({} if method is None else {"norm_method": method}))
        r = scglmm.get.results(a, "condition", key=key).loc[a.var_names]
        median[key] = float(np.nanmedian(r["log2_fc"].to_numpy()[null]))
    assert a.uns["default"]["params"]["norm_method"] == "tmm_mode"
    assert median["none"] < -0.8  # measured: -1.17
    assert abs(median["tmm"]) < 0.2  # measured: -0.12
    assert abs(median["default"]) < abs(median["tmm"])  # measured: -0.08
