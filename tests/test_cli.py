"""The ``scglmm`` command line: success paths, every error path, atomic outputs.

The input is a small real subset made at test time from ``data/kang2018_cd14_mono.h5ad`` (the
first 19 cells of each of the 16 samples, 300 cells in all, and the first 20 genes).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import anndata as ad
import click
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy import sparse

import scglmm
from scglmm import cli as cli_mod
from scglmm.cli import cli

EXAMPLE = Path(__file__).resolve().parents[1] / "data" / "kang2018_cd14_mono.h5ad"
FORMULA = "~ condition + (1 | donor)"
SF = "n_counts_all_genes"  # the full library size; the 20-gene totals can be 0
COEF = "condition[T.stim]"


def small_example() -> ad.AnnData:
    full = ad.read_h5ad(EXAMPLE)
    cells = full.obs.groupby("sample", observed=True).head(19).index[:300]
    small = full[cells, full.var_names[:20]].copy()
    small.X = sparse.csr_matrix(small.X)
    return small


@pytest.fixture(scope="module")
def small_h5ad(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("input") / "small.h5ad"
    small_example().write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def reference(small_h5ad) -> ad.AnnData:
    """The same fit done through the Python API."""
    adata = ad.read_h5ad(small_h5ad)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # genes without an estimate (HES4 is separated)
        scglmm.tl.fit(adata, FORMULA, size_factors=SF, n_jobs=1, progress=False)
    return adata


def run(*args: str | Path):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def ranked_genes(results: pd.DataFrame) -> list[str]:
    """The genes of a ``get.results`` table by p-value, then |stat| (largest first), missing values last."""
    ranked = results.assign(minus_abs_stat=-results["stat"].abs())
    return ranked.sort_values(["p_value", "minus_abs_stat"], kind="stable", na_position="last").index.tolist()


def by_gene(tsv: pd.DataFrame, genes: list[str] | pd.Index) -> pd.DataFrame:
    """The rows of a table written by the program, in the order of ``genes``."""
    return tsv.set_index("gene").loc[list(genes)]


# ------------------------------------------------------------------------------------------------
# success
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted(small_h5ad, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("fit")
    before = sha256(small_h5ad)
    res = run(
        "fit", small_h5ad, "--formula", FORMULA, "--size-factors", SF, "--out", out_dir / "fit.h5ad",
        "--table", out_dir / "fit.tsv", "--n-jobs", "1", "--top", "5",
    )  # fmt: skip
    return res, out_dir, before


def test_fit_writes_h5ad_and_tsv(fitted, small_h5ad, reference):
    res, out_dir, before = fitted
    assert res.exit_code == 0, res.stderr
    assert listing(out_dir) == ["fit.h5ad", "fit.tsv"]  # no temporary file left
    assert sha256(small_h5ad) == before  # the input is untouched
    out = ad.read_h5ad(out_dir / "fit.h5ad")
    assert out.shape == (300, 20)
    for suffix in ("coef", "se", "pval", "cov", "fit", "donor_effects"):
        assert f"scglmm_{suffix}" in out.varm
    assert out.uns["scglmm"]["params"]["formula"] == FORMULA
    assert out.uns["scglmm"]["params"]["n_jobs"] == 1
    # the stored fit is the Python API's fit
    np.testing.assert_allclose(
        out.varm["scglmm_coef"].to_numpy(), reference.varm["scglmm_coef"].to_numpy(), rtol=1e-10, atol=1e-12
    )
    np.testing.assert_allclose(
        out.varm["scglmm_fit"]["loglik"].to_numpy(), reference.varm["scglmm_fit"]["loglik"].to_numpy(), rtol=1e-12
    )


def test_fit_table_equals_get_results(fitted, reference):
    _, out_dir, _ = fitted
    tsv = pd.read_csv(out_dir / "fit.tsv", sep="\t")
    expected = scglmm.get.results(reference, COEF)
    assert list(tsv.columns) == ["gene", "coef", *expected.columns]
    assert len(tsv) == 20
    assert (tsv["coef"] == COEF).all()
    assert sorted(tsv["gene"]) == sorted(reference.var_names)
    assert tsv["gene"].tolist() == ranked_genes(expected)  # smallest p first, ties by |stat|
    expected = expected.loc[tsv["gene"]]
    for col in expected.columns:
        if pd.api.types.is_numeric_dtype(expected[col]):
            np.testing.assert_allclose(tsv[col].to_numpy(float), expected[col].to_numpy(float), rtol=1e-10)
        else:
            assert tsv[col].astype(str).tolist() == expected[col].astype(str).tolist()
    # the interferon gene is the top hit, as expected for stim vs ctrl in monocytes
    assert tsv.loc[tsv["gene"] == "ISG15", "log2_fc"].item() > 4.0
    assert tsv.loc[tsv["gene"] == "ISG15", "p_value"].item() < 1e-20


def test_fit_stdout_is_the_top_table_and_logs_go_to_stderr(fitted, reference):
    res, _, _ = fitted
    lines = res.stdout.splitlines()
    assert lines[0].startswith(f"top 5 of 20 genes for {COEF}")
    shown = [line.split()[0] for line in lines[3:]]  # title, column header, index-name line
    assert shown == ranked_genes(scglmm.get.results(reference, COEF))[:5]
    assert "[scglmm" not in res.stdout
    assert "[scglmm" in res.stderr
    assert "fit.h5ad" in res.stderr
    assert "Error" not in res.stderr


def test_fit_output_permissions_follow_umask(fitted):
    _, out_dir, _ = fitted
    mask = os.umask(0)
    os.umask(mask)
    for name in ("fit.h5ad", "fit.tsv"):
        assert (out_dir / name).stat().st_mode & 0o777 == 0o666 & ~mask


def test_quiet_prints_nothing_on_stdout(small_h5ad, tmp_path):
    res = run(
        "fit", small_h5ad, "-f", FORMULA, "--size-factors", SF, "-o", tmp_path / "q.h5ad", "--quiet",
        "--separation", "limit",
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    assert res.stdout == ""
    lines = res.stderr.splitlines()
    assert all("] WARNING: " in line for line in lines), lines  # warnings only, no info lines
    assert any("HES4" in line for line in lines)  # the gene without an estimate is still reported
    assert (tmp_path / "q.h5ad").exists()


def test_coef_option_and_key_added(small_h5ad, tmp_path, reference):
    res = run(
        "fit", small_h5ad, "-f", FORMULA, "--size-factors", SF, "-o", tmp_path / "k.h5ad", "--table",
        tmp_path / "k.tsv", "--coef", "Intercept", "--coef", "condition", "--key-added", "de", "--top", "0",
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    assert res.stdout == ""  # --top 0
    out = ad.read_h5ad(tmp_path / "k.h5ad")
    assert "de_coef" in out.varm
    assert "scglmm_coef" not in out.varm
    tsv = pd.read_csv(tmp_path / "k.tsv", sep="\t")
    assert tsv["coef"].tolist() == ["Intercept"] * 20 + [COEF] * 20
    np.testing.assert_allclose(
        by_gene(tsv[tsv["coef"] == "Intercept"], reference.var_names)["log_fc"].to_numpy(),
        reference.varm["scglmm_coef"]["Intercept"].to_numpy(),
        rtol=1e-10,
    )


def test_backed_equals_in_memory(fitted, small_h5ad, tmp_path):
    """--backed streams the counts from disk; the outputs are the same as a normal run."""
    _, out_dir, _ = fitted
    res = run(
        "fit", small_h5ad, "-f", FORMULA, "--size-factors", SF, "--backed", "-o", tmp_path / "b.h5ad",
        "--table", tmp_path / "b.tsv", "-j", "1",
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    assert "counts stay on disk" in res.stderr
    assert listing(tmp_path) == ["b.h5ad", "b.tsv"]
    backed, normal = ad.read_h5ad(tmp_path / "b.h5ad"), ad.read_h5ad(out_dir / "fit.h5ad")
    inp = ad.read_h5ad(small_h5ad)
    assert (backed.X != inp.X).nnz == 0
    assert list(backed.obs.columns) == list(inp.obs.columns)
    assert sorted(backed.varm) == sorted(normal.varm)
    for k in ("scglmm_coef", "scglmm_se", "scglmm_pval"):
        np.testing.assert_allclose(backed.varm[k].to_numpy(), normal.varm[k].to_numpy(), rtol=1e-10, atol=1e-300)
    assert backed.var["scglmm_status"].astype(str).tolist() == normal.var["scglmm_status"].astype(str).tolist()
    tb = pd.read_csv(tmp_path / "b.tsv", sep="\t")
    tn = pd.read_csv(out_dir / "fit.tsv", sep="\t")
    pd.testing.assert_frame_equal(tb, tn, rtol=1e-10)


def test_backed_compresses_the_results_and_copies_the_counts(small_h5ad, tmp_path):
    """With --backed the counts are INPUT's bytes (here uncompressed); the results get --compression (gzip)."""
    import h5py

    res = run("fit", small_h5ad, "-f", FORMULA, "--size-factors", SF, "--backed", "-o", tmp_path / "b.h5ad", "-q")
    assert res.exit_code == 0, res.stderr
    with h5py.File(small_h5ad) as src, h5py.File(tmp_path / "b.h5ad") as f:
        assert f["X"]["data"].compression == src["X"]["data"].compression is None
        assert f["varm"]["scglmm_coef"]["condition[T.stim]"].compression == "gzip"


def test_backed_interrupted_while_copying(small_h5ad, tmp_path, monkeypatch):
    """INPUT is copied in a thread during the fit; an interrupt there reaches the program, which leaves no file."""
    import scglmm.cli

    def copy_file(src, dst, stop):
        Path(dst).write_bytes(Path(src).read_bytes()[:1000])
        raise KeyboardInterrupt

    monkeypatch.setattr(scglmm.cli, "_copy_file", copy_file)
    res = run("fit", small_h5ad, "-f", FORMULA, "--size-factors", SF, "--backed", "-o", tmp_path / "b.h5ad")
    assert_one_line_error(res, 130, ["interrupted"])
    assert listing(tmp_path) == []


def test_background_copy_is_exact_and_can_be_stopped(tmp_path):
    """The copy of INPUT made during the fit is byte for byte; a stopped copy leaves no file."""
    import threading

    from scglmm.cli import _BackgroundCopy, _copy_file

    src = tmp_path / "src.bin"
    src.write_bytes(np.random.default_rng(0).bytes(300_001))
    copy = _BackgroundCopy(src, tmp_path / "out" / "x.h5ad")
    assert copy.take().read_bytes() == src.read_bytes()
    copy.take().unlink()
    stop = threading.Event()
    stop.set()
    _copy_file(src, tmp_path / "none.bin", stop, chunk=1000)
    assert (tmp_path / "none.bin").stat().st_size == 0
    part = _BackgroundCopy(src, tmp_path / "out" / "y.h5ad")
    part.discard()
    assert listing(tmp_path / "out") == []


def test_compression(fitted, small_h5ad, tmp_path, reference):
    """The output is gzip-compressed by default; --compression none writes plain arrays, the same values."""
    import h5py

    _, out_dir, _ = fitted  # default flags
    with h5py.File(out_dir / "fit.h5ad") as f:
        assert f["X"]["data"].compression == "gzip"
        assert f["varm"]["scglmm_coef"]["condition[T.stim]"].compression == "gzip"
    res = run(
        "fit", small_h5ad, "-f", FORMULA, "--size-factors", SF, "-o", tmp_path / "c.h5ad", "--compression", "none"
    )
    assert res.exit_code == 0, res.stderr
    with h5py.File(tmp_path / "c.h5ad") as f:
        assert f["X"]["data"].compression is None
        assert f["varm"]["scglmm_coef"]["condition[T.stim]"].compression is None
    out = ad.read_h5ad(tmp_path / "c.h5ad")
    np.testing.assert_allclose(out.varm["scglmm_coef"], reference.varm["scglmm_coef"], rtol=1e-10)
    assert "[default: gzip]" in run("fit", "--help").stdout
    bad = run("fit", small_h5ad, "-f", FORMULA, "-o", tmp_path / "x.h5ad", "--compression", "zip")
    assert_one_line_error(bad, 2, ["--compression", "zip"])


def test_offset_equals_log_size_factors(small_h5ad, tmp_path):
    adata = ad.read_h5ad(small_h5ad)
    adata.obs["log_sf"] = np.log(adata.obs[SF])
    src = tmp_path / "with_offset.h5ad"
    adata.write_h5ad(src)
    # an offset is used as given: the same as size factors without normalisation
    a = run("fit", src, "-f", FORMULA, "--size-factors", SF, "--norm-method", "none", "-o", tmp_path / "a.h5ad",
            "--table", tmp_path / "a.tsv")  # fmt: skip
    b = run("fit", src, "-f", FORMULA, "--offset", "log_sf", "-o", tmp_path / "b.h5ad", "--table", tmp_path / "b.tsv")
    assert a.exit_code == 0, a.stderr
    assert b.exit_code == 0, b.stderr
    ta = pd.read_csv(tmp_path / "a.tsv", sep="\t").set_index("gene")
    tb = by_gene(pd.read_csv(tmp_path / "b.tsv", sep="\t"), ta.index)
    np.testing.assert_allclose(ta["log_fc"], tb["log_fc"], rtol=1e-8)
    np.testing.assert_allclose(ta["se"], tb["se"], rtol=1e-8)


def test_layer_option(small_h5ad, tmp_path, reference):
    adata = ad.read_h5ad(small_h5ad)
    adata.layers["counts"] = adata.X.copy()
    adata.X = adata.X.astype(float) / 7.0  # normalised values in X; raw counts in the layer
    src = tmp_path / "layer.h5ad"
    adata.write_h5ad(src)
    res = run("fit", src, "-f", FORMULA, "--size-factors", SF, "--layer", "counts", "-o", tmp_path / "l.h5ad")
    assert res.exit_code == 0, res.stderr
    out = ad.read_h5ad(tmp_path / "l.h5ad")
    np.testing.assert_allclose(out.varm["scglmm_coef"], reference.varm["scglmm_coef"], rtol=1e-10)


def test_groupby(small_h5ad, tmp_path):
    res = run(
        "fit", small_h5ad, "-f", FORMULA, "--size-factors", SF, "--groupby", "donor_group",
        "-o", tmp_path / "g.h5ad", "--table", tmp_path / "g.tsv", "--top", "3",
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    tsv = pd.read_csv(tmp_path / "g.tsv", sep="\t")
    assert list(tsv.columns[:3]) == ["gene", "group", "coef"]
    assert len(tsv) == 40
    assert sorted(tsv["group"].unique()) == ["A", "B"]
    adata = ad.read_h5ad(small_h5ad)
    for g in ("A", "B"):
        alone = adata[adata.obs["donor_group"] == g].copy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            scglmm.tl.fit(alone, FORMULA, size_factors=SF, n_jobs=1, progress=False)
        expected = scglmm.get.results(alone, COEF)
        assert tsv.loc[tsv["group"] == g, "gene"].tolist() == ranked_genes(expected)  # ranked within the group
        part = by_gene(tsv[tsv["group"] == g], expected.index)
        np.testing.assert_allclose(part["log_fc"].to_numpy(), expected["log_fc"].to_numpy(), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(part["se"].to_numpy(), expected["se"].to_numpy(), rtol=1e-8)
    assert res.stdout.count("top 3 of 20 genes for") == 2
    assert f"A / {COEF}" in res.stdout
    # a contrast on one group of the grouped fit
    res = run(
        "test",
        tmp_path / "g.h5ad",
        "-c",
        COEF,
        "--group",
        "A",
        "-o",
        tmp_path / "t.h5ad",
        "--table",
        tmp_path / "t.tsv",
    )
    assert res.exit_code == 0, res.stderr
    t = pd.read_csv(tmp_path / "t.tsv", sep="\t")
    assert list(t.columns[:3]) == ["gene", "group", "contrast"]
    assert (t["group"] == "A").all()
    assert len(t) == 20
    part = by_gene(tsv[tsv["group"] == "A"], t["gene"])
    np.testing.assert_allclose(t["log2_fc"].to_numpy(), part["log2_fc"].to_numpy(), rtol=1e-10)
    np.testing.assert_allclose(t["p_value"].to_numpy(), part["p_value"].to_numpy(), rtol=1e-8)


def test_tables_are_ranked_by_p_then_abs_stat_within_each_block():
    """Within each (group, coef) block: smallest p first, ties (p underflowing to 0) by |stat|, NaN last;
    the blocks keep their order."""
    nan = np.nan
    df = pd.DataFrame(
        {
            "gene": ["a", "b", "c", "d", "e", "f", "g"],
            "group": ["B", "B", "B", "B", "A", "A", "A"],
            "coef": "x",
            "stat": [2.0, -40.0, 30.0, nan, 1.0, nan, -3.0],
            "p_value": [0.04, 0.0, 0.0, nan, 0.3, nan, 0.003],
        }
    )
    ranked = cli_mod._ranked(df, ("group", "coef"))
    assert ranked["gene"].tolist() == ["b", "c", "a", "d", "g", "e", "f"]
    assert ranked.index.tolist() == list(range(7))
    assert cli_mod._ranked(df.drop(columns="group"), ("group", "coef"))["gene"].tolist()[:3] == ["b", "c", "g"]


def test_version_and_help():
    res = run("--version")
    assert res.exit_code == 0
    assert res.stdout.strip() == f"scglmm, version {scglmm.__version__}"
    main = run("--help")
    assert main.exit_code == 0
    for phrase in ("negative binomial", "random", "donor", "scglmm fit cells.h5ad", "Output", "fit", "test"):
        assert phrase in main.stdout
    assert run("-h").stdout == main.stdout
    fit_help = run("fit", "--help")
    assert fit_help.exit_code == 0
    for phrase in ("Examples:", "--formula", "--out", "--table", "--size-factors", "--groupby", "--n-jobs", "varm"):
        assert phrase in fit_help.stdout
    bare = run("fit")  # no arguments: the help (on stderr, as click does), not an error line
    assert bare.exit_code in (0, 2)
    assert "Usage: scglmm fit [OPTIONS] INPUT" in bare.output
    assert not bare.output.startswith("Error")
    test_help = run("test", "-h")
    assert test_help.exit_code == 0
    assert "--contrast" in test_help.stdout


def test_console_script_entry_point():
    """``scglmm`` is installed as a program; ``python -m scglmm`` is run for real in the SIGTERM test."""
    from importlib.metadata import entry_points

    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "scglmm"]
    assert script.value == "scglmm.cli:main"
    assert script.load() is cli_mod.main


# ------------------------------------------------------------------------------------------------
# errors: one line, non-zero exit, nothing written
# ------------------------------------------------------------------------------------------------
def _variant(small_h5ad: Path, folder: Path, name: str, change) -> Path:
    adata = ad.read_h5ad(small_h5ad)
    change(adata)
    path = folder / name
    adata.write_h5ad(path)
    return path


def _float_counts(a):
    a.X = a.X.astype(float) * 0.5


def _negative_counts(a):
    X = a.X.toarray()
    X[3, 4] = -1
    a.X = sparse.csr_matrix(X)


def _nan_counts(a):
    X = a.X.toarray().astype(float)
    X[3, 4] = np.nan
    a.X = X


def _one_donor(a):
    a.obs["donor"] = "d1"


def _nan_condition(a):
    cond = a.obs["condition"].astype(object)
    cond.iloc[5] = np.nan
    a.obs["condition"] = cond


def _zero_cells(a):
    X = a.X.toarray()
    X[:4] = 0
    a.X = sparse.csr_matrix(X)
    del a.obs["n_counts"]  # else the default size factors are this library column (it counts more genes)


def _zero_sf(a):
    a.obs[SF] = a.obs[SF].to_numpy().copy()
    a.obs.iloc[0, a.obs.columns.get_loc(SF)] = 0.0


def _copy_condition(a):
    a.obs["stimulated"] = (a.obs["condition"] == "stim").astype(float)


# (name, data change or None, extra args (replacing the defaults where named), exit code, words in message)
ERRORS = [
    ("unknown fixed column", None, ["-f", "~ conditon + (1 | donor)"], 1, ["conditon", "not in adata.obs"]),
    ("unknown donor column", None, ["-f", "~ condition + (1 | donr)"], 1, ["donr", "not in adata.obs"]),
    ("no tilde", None, ["-f", "condition + (1 | donor)"], 1, ["must start with '~'"]),
    ("no random effect", None, ["-f", "~ condition"], 1, ["no random-effect term"]),
    ("random slope with n-agq", None, ["-f", "~ condition + (1 + condition | donor)", "--n-agq", "3"], 1, ["--n-agq"]),
    ("grouping not a column", None, ["-f", "~ condition + (1 | donor + sample)"], 1, ["not supported"]),
    ("formula syntax", None, ["-f", "~ condition * + (1 | donor)"], 1, ["formula"]),
    (
        "missing layer",
        None,
        ["--layer", "counts"],
        1,
        ["--layer: layer 'counts' not found", "layer=None", "line: layer=None is no --layer"],
    ),
    ("size factor column", None, ["--size-factors", "libsize"], 1, ["--size-factors: ", "'libsize'", "donor_group"]),
    ("offset column", None, ["--offset", "log_lib", "--size-factors", None], 1, ["--offset: ", "'log_lib'"]),
    ("groupby column", None, ["--groupby", "celltype"], 1, ["celltype"]),
    ("coef not in design", None, ["--coef", "treatment"], 1, ["--coef", "'treatment'", "condition[T.stim]"]),
    (
        "non-integer counts",
        _float_counts,
        [],
        1,
        ["non-integer", "raw integer counts", "layer='counts'", "line: layer= is --layer"],
    ),
    ("negative counts", _negative_counts, [], 1, ["negative"]),
    ("NaN counts", _nan_counts, [], 1, ["NaN"]),
    ("one donor", _one_donor, [], 1, ["donor", "2"]),
    ("NaN covariate", _nan_condition, [], 1, ["condition", "missing"]),
    (
        "zero-count cells",
        _zero_cells,
        ["--size-factors", None],
        1,
        ["--size-factors: ", "zero total counts", "pass size_factors=", "size_factors= is --size-factors"],
    ),
    (
        "zero size factor",
        _zero_sf,
        [],
        1,
        ["--size-factors: size_factors must be positive", "offset=", "line: offset= is --offset"],
    ),
    ("rank deficient", _copy_condition, ["-f", "~ condition + stimulated + (1 | donor)"], 1, ["rank deficient"]),
    ("both offset kinds", None, ["--offset", SF], 2, ["--size-factors", "--offset", "not both"]),
    ("n-jobs zero", None, ["--n-jobs", "0"], 2, ["--n-jobs"]),
    ("n-agq zero", None, ["--n-agq", "0"], 2, ["--n-agq"]),
    ("unknown flag", None, ["--bogus"], 2, ["--bogus", "scglmm fit --help"]),
]


def _args(src: Path, out: Path, extra: list) -> list:
    base = {"-f": FORMULA, "--size-factors": SF, "-o": str(out)}
    rest = []
    it = iter(extra)
    for tok in it:
        if tok in base:
            base[tok] = next(it)
        elif tok.startswith("--") and tok not in ("--bogus",):
            rest += [tok, next(it)]
        else:
            rest.append(tok)
    args = ["fit", str(src)]
    for k, v in base.items():
        if v is not None:
            args += [k, v]
    return args + rest


def assert_one_line_error(res, code: int, words: list[str]) -> str:
    assert res.exit_code == code, (res.exit_code, res.stderr)
    assert res.stdout == ""
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, res.stderr
    assert res.stderr.rstrip("\n").splitlines()[-1] == errors[0]  # the last line
    assert "Traceback" not in res.stderr
    for w in words:
        assert w in errors[0], (w, errors[0])
    return errors[0]


@pytest.mark.parametrize(("name", "change", "extra", "code", "words"), ERRORS, ids=[e[0] for e in ERRORS])
def test_fit_errors(small_h5ad, tmp_path, name, change, extra, code, words):
    src = small_h5ad if change is None else _variant(small_h5ad, tmp_path, "bad.h5ad", change)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    res = run(*_args(src, out_dir / "o.h5ad", extra), "--table", out_dir / "o.tsv")
    assert_one_line_error(res, code, words)
    assert listing(out_dir) == []


def test_missing_input(tmp_path):
    res = run("fit", tmp_path / "nope.h5ad", "-f", FORMULA, "-o", tmp_path / "o.h5ad")
    assert_one_line_error(res, 1, ["nope.h5ad", "does not exist"])
    assert listing(tmp_path) == []


def test_input_is_a_folder(tmp_path):
    res = run("fit", tmp_path, "-f", FORMULA, "-o", tmp_path / "o.h5ad")
    assert_one_line_error(res, 1, ["is not a file"])


def test_unreadable_h5ad(tmp_path):
    bad = tmp_path / "bad.h5ad"
    bad.write_text("cell,gene\n1,2\n")
    res = run("fit", bad, "-f", FORMULA, "-o", tmp_path / "o.h5ad")
    assert_one_line_error(res, 1, ["cannot read", "bad.h5ad", ".h5ad (AnnData) file"])
    assert listing(tmp_path) == ["bad.h5ad"]


def test_missing_required_options(small_h5ad, tmp_path):
    assert_one_line_error(run("fit", small_h5ad, "-o", tmp_path / "o.h5ad"), 2, ["Missing option", "--formula"])
    assert_one_line_error(run("fit", small_h5ad, "-f", FORMULA), 2, ["Missing option", "--out"])
    assert_one_line_error(run("fitt", small_h5ad), 2, ["No such command", "fitt"])


def test_keyword_gloss_names_whole_keywords_only():
    """The gloss says which flag a Python keyword of the message is; 'log_offset=' is not 'offset='."""
    with cli_mod.cli.make_context("scglmm", ["fit", "--help"], resilient_parsing=True) as ctx:
        fit = cli_mod.cli.get_command(ctx, "fit")
        with click.Context(fit, info_name="fit", parent=ctx):
            assert cli_mod._keyword_gloss("pass offset= or layer=None") == (
                " (on the command line: layer=None is no --layer; offset= is --offset)"
            )
            assert cli_mod._keyword_gloss("stored as log_offset= and adata.layer=") == ""
            assert cli_mod._keyword_gloss("no keyword here") == ""
    assert cli_mod._keyword_gloss("offset=") == ""  # no command running


def test_a_value_without_its_flag_is_named(small_h5ad, fitted, tmp_path):
    """A formula (contrast, output name) given as a positional argument: the error names it and its flag."""
    res = run("fit", small_h5ad, FORMULA, "-o", tmp_path / "o.h5ad")
    line = assert_one_line_error(res, 2, ["Missing option '-f' / '--formula'"])
    assert line == (
        f"Error: Missing option '-f' / '--formula'. Got the extra argument '{FORMULA}': the formula goes after "
        f"-f/--formula, e.g. -f '{FORMULA}'. See 'scglmm fit --help'."
    )
    # unquoted, the shell splits the formula into words: all of them are named, and the quotes asked for
    res = run("fit", small_h5ad, *FORMULA.split(), "-o", tmp_path / "o.h5ad")
    assert_one_line_error(res, 2, ["'~', 'condition', '+'", "the formula goes after -f/--formula, in quotes", FORMULA])
    _, out_dir, _ = fitted
    res = run("test", out_dir / "fit.h5ad", "condition", "-o", tmp_path / "t.h5ad")
    assert_one_line_error(res, 2, ["--contrast", "extra argument 'condition'", "goes after -c/--contrast"])
    res = run("fit", small_h5ad, "-f", FORMULA, tmp_path / "o.h5ad")
    assert_one_line_error(res, 2, ["--out", f"extra argument '{tmp_path / 'o.h5ad'}'", "goes after -o/--out"])
    assert listing(tmp_path) == []


def test_out_equal_to_input_is_refused(small_h5ad, tmp_path):
    before = sha256(small_h5ad)
    same = [small_h5ad, small_h5ad.parent / ".." / small_h5ad.parent.name / small_h5ad.name]
    link = tmp_path / "link.h5ad"
    link.symlink_to(small_h5ad)
    for out in [*same, link]:
        res = run("fit", small_h5ad, "-f", FORMULA, "--size-factors", SF, "-o", out)
        assert_one_line_error(res, 1, ["--out", "is the input file", "never overwrites"])
    res = run("fit", small_h5ad, "-f", FORMULA, "--size-factors", SF, "-o", tmp_path / "o.h5ad", "--table", small_h5ad)
    assert_one_line_error(res, 1, ["--table", "is the input file"])
    res = run("fit", small_h5ad, "-f", FORMULA, "-o", tmp_path / "o.h5ad", "--table", tmp_path / "o.h5ad")
    assert_one_line_error(res, 1, ["--table and --out are the same file"])
    res = run("fit", small_h5ad, "-f", FORMULA, "-o", tmp_path / "o.tsv", "--table", tmp_path / "o.h5ad")
    assert_one_line_error(res, 2, ["are they swapped?"])
    assert sha256(small_h5ad) == before
    assert listing(tmp_path) == ["link.h5ad"]


def test_output_folder_not_writable(small_h5ad, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    res = run("fit", small_h5ad, "-f", FORMULA, "-o", blocker / "sub" / "o.h5ad")
    assert_one_line_error(res, 1, ["cannot write --out", "is not a folder"])
    res = run("fit", small_h5ad, "-f", FORMULA, "-o", tmp_path)
    assert_one_line_error(res, 1, ["is a folder"])
    if sys.platform.startswith("linux"):  # /proc refuses new files, even for root
        res = run("fit", small_h5ad, "-f", FORMULA, "-o", "/proc/scglmm_out.h5ad")
        assert_one_line_error(res, 1, ["cannot write --out", "not writable"])
    assert listing(tmp_path) == ["a_file"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write to read-only folders")
def test_output_folder_read_only(small_h5ad, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        res = run("fit", small_h5ad, "-f", FORMULA, "-o", ro / "o.h5ad")
        assert_one_line_error(res, 1, ["cannot write --out", "not writable"])
    finally:
        ro.chmod(0o755)


def test_verbose_shows_the_traceback(small_h5ad, tmp_path):
    res = run("fit", small_h5ad, "-f", "~ conditon + (1 | donor)", "-o", tmp_path / "o.h5ad", "--verbose")
    assert res.exit_code == 1
    assert "Traceback" in res.stderr
    assert res.stderr.rstrip("\n").splitlines()[-1].startswith("Error: --formula: column(s) ['conditon']")


@pytest.mark.parametrize(
    ("param", "line"),
    [
        ("n_agq", "Error: --n-agq: bad value 'x'; see the docs."),
        ("n_jobs", "Error: --n-jobs: bad value 'x'; see the docs."),  # the long flag of -j / --n-jobs
        ("size_factors", "Error: --size-factors: bad value 'x'; see the docs."),
        ("group", "Error: bad value 'x'; see the docs."),  # a keyword without a flag in 'fit'
        (None, "Error: bad value 'x'; see the docs."),
    ],
)
def test_input_error_names_the_flag_of_its_param(small_h5ad, tmp_path, monkeypatch, param, line):
    """The library's InputError names a Python keyword; the program prints the command's flag for it."""
    from scglmm._core._errors import MissingKeyError

    def fit(*args, **kwargs):
        raise MissingKeyError("bad value 'x'; see the docs.", param=param)

    monkeypatch.setattr(scglmm.tl, "fit", fit)
    res = run("fit", small_h5ad, "-f", FORMULA, "-o", tmp_path / "o.h5ad", "--table", tmp_path / "o.tsv")
    assert assert_one_line_error(res, 1, []) == line
    assert listing(tmp_path) == []


def test_input_error_of_test_names_its_flag(fitted, tmp_path, monkeypatch):
    from scglmm._core._errors import InvalidValueError

    def test(*args, **kwargs):
        raise InvalidValueError("group(s) ['C'] not fitted.", param="group")

    monkeypatch.setattr(scglmm.tl, "test", test)
    res = run("test", fitted[1] / "fit.h5ad", "-c", COEF, "--group", "C", "-o", tmp_path / "t.h5ad")
    assert assert_one_line_error(res, 1, []) == "Error: --group: group(s) ['C'] not fitted."
    assert listing(tmp_path) == []


# ------------------------------------------------------------------------------------------------
# atomic outputs
# ------------------------------------------------------------------------------------------------
def _failing_write(exc: type[BaseException]):
    def write_h5ad(self, filename, *args, **kwargs):
        Path(filename).write_bytes(b"\x89HDF\r\n partial")  # half a file ...
        raise exc("disk full")  # ... then the failure

    return write_h5ad


@pytest.mark.parametrize(
    ("exc", "code", "words"),
    [
        (OSError, 1, ["disk full"]),
        (RuntimeError, 1, ["RuntimeError: disk full"]),
        (KeyboardInterrupt, 130, ["interrupted"]),
    ],
)
def test_no_partial_file_when_writing_fails(small_h5ad, tmp_path, monkeypatch, exc, code, words):
    old = tmp_path / "o.h5ad"
    old.write_bytes(b"previous result")  # an existing output is kept as it was
    monkeypatch.setattr(ad.AnnData, "write_h5ad", _failing_write(exc))
    res = run("fit", small_h5ad, "-f", FORMULA, "--size-factors", SF, "-o", old, "--table", tmp_path / "o.tsv")
    assert_one_line_error(res, code, words)
    assert listing(tmp_path) == ["o.h5ad"]  # no table, no temporary file
    assert old.read_bytes() == b"previous result"


def test_no_partial_file_when_the_table_fails(small_h5ad, tmp_path, monkeypatch):
    def to_csv(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_csv", to_csv)
    res = run(
        "fit", small_h5ad, "-f", FORMULA, "--size-factors", SF, "-o", tmp_path / "o.h5ad", "--table", tmp_path / "o.tsv"
    )
    assert_one_line_error(res, 130, ["interrupted; no output was written"])
    assert listing(tmp_path) == []  # the .h5ad, already written to its temporary file, is gone too


def test_closed_stdout_is_not_an_error(small_h5ad, tmp_path, monkeypatch):
    """``scglmm fit ... | head -1``: the reader goes away, the files are written, the exit code is 0."""

    def echo(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli_mod.click, "echo", echo)
    res = run(
        "fit", small_h5ad, "-f", FORMULA, "--size-factors", SF, "-o", tmp_path / "o.h5ad", "--table", tmp_path / "o.tsv"
    )
    assert res.exit_code == 0, res.stderr
    assert "Error" not in res.stderr
    assert listing(tmp_path) == ["o.h5ad", "o.tsv"]


def test_interrupt_during_the_fit(small_h5ad, tmp_path, monkeypatch):
    def interrupted_fit(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(scglmm.tl, "fit", interrupted_fit)
    res = run("fit", small_h5ad, "-f", FORMULA, "--size-factors", SF, "-o", tmp_path / "o.h5ad")
    assert_one_line_error(res, 130, ["interrupted"])
    assert listing(tmp_path) == []


def test_write_atomically_directly(tmp_path):
    target = tmp_path / "sub" / "t.txt"
    cli_mod.write_atomically([(target, lambda p: p.write_text("whole"))])
    assert target.read_text() == "whole"
    assert listing(target.parent) == ["t.txt"]

    def half(p: Path) -> None:
        p.write_text("ha")
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        cli_mod.write_atomically([(tmp_path / "a.txt", lambda p: p.write_text("a")), (target, half)])
    assert target.read_text() == "whole"
    assert listing(tmp_path) == ["sub"]  # a.txt was not renamed into place either
    assert listing(target.parent) == ["t.txt"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_leaves_no_output(tmp_path):
    """A scheduler's SIGTERM in the middle of a run: exit 130, nothing written, no temporary file."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "scglmm", "fit", str(EXAMPLE), "-f", FORMULA, "-o", str(out_dir / "o.h5ad")]
    proc = subprocess.Popen(
        [*cmd, "--table", str(out_dir / "o.tsv"), "--n-jobs", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until the fit has started
        line = proc.stderr.readline()
        seen.append(line)
        if "fitting" in line or not line:
            break
    assert any("fitting" in s for s in seen), seen
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (seen, stderr)
    assert stdout == ""
    assert "Traceback" not in stderr
    assert stderr.rstrip("\n").splitlines()[-1] == "Error: interrupted; no output was written."
    assert listing(out_dir) == []


# ------------------------------------------------------------------------------------------------
# scglmm test
# ------------------------------------------------------------------------------------------------
def test_test_command_wald(fitted, tmp_path):
    _, out_dir, _ = fitted
    src = out_dir / "fit.h5ad"
    res = run("test", src, "--contrast", COEF, "-o", tmp_path / "t.h5ad", "--table", tmp_path / "t.tsv", "--top", "3")
    assert res.exit_code == 0, res.stderr
    tsv = pd.read_csv(tmp_path / "t.tsv", sep="\t")
    fit_tsv = pd.read_csv(out_dir / "fit.tsv", sep="\t")
    assert len(tsv) == 20
    assert list(tsv.columns[:2]) == ["gene", "contrast"]
    name = tsv["contrast"].iloc[0]
    out = ad.read_h5ad(tmp_path / "t.h5ad")
    expected = scglmm.get.results(out, contrast=name)
    assert list(tsv.columns[2:]) == list(expected.columns)
    assert tsv["gene"].tolist() == ranked_genes(expected)
    np.testing.assert_allclose(tsv["p_value"].to_numpy(), expected.loc[tsv["gene"], "p_value"].to_numpy(), rtol=1e-12)
    # a Wald test of one coefficient is that coefficient's own test
    fit_tsv = by_gene(fit_tsv, tsv["gene"])
    np.testing.assert_allclose(tsv["p_value"].to_numpy(), fit_tsv["p_value"].to_numpy(), rtol=1e-8)
    np.testing.assert_allclose(tsv["log2_fc"].to_numpy(), fit_tsv["log2_fc"].to_numpy(), rtol=1e-10)
    assert res.stdout.startswith(f"top 3 of 20 genes for {name}")


def test_test_command_level_triple_and_lrt(fitted, tmp_path):
    _, out_dir, _ = fitted
    src = out_dir / "fit.h5ad"
    fit_tsv = pd.read_csv(out_dir / "fit.tsv", sep="\t")
    # VARIABLE,LEVEL,BASELINE: stim minus ctrl is the coefficient itself; ctrl minus stim flips the sign
    res = run("test", src, "-c", "condition,ctrl,stim", "-o", tmp_path / "t.h5ad", "--table", tmp_path / "t.tsv")
    assert res.exit_code == 0, res.stderr
    tsv = pd.read_csv(tmp_path / "t.tsv", sep="\t")
    fit_tsv = by_gene(fit_tsv, tsv["gene"])
    np.testing.assert_allclose(tsv["log2_fc"].to_numpy(), -fit_tsv["log2_fc"].to_numpy(), rtol=1e-10)
    np.testing.assert_allclose(tsv["p_value"].to_numpy(), fit_tsv["p_value"].to_numpy(), rtol=1e-8)
    # likelihood-ratio test against the intercept-only model: LR = 2 (l_full - l_reduced)
    res = run(
        "test", src, "-c", "condition", "--method", "lrt", "--key-added", "lrt_cond", "-o", tmp_path / "l.h5ad",
        "--table", tmp_path / "l.tsv", "-j", "1", "-q",
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    assert res.stdout == ""
    lrt = pd.read_csv(tmp_path / "l.tsv", sep="\t")
    assert (lrt["contrast"] == "lrt_cond").all()
    stored = ad.read_h5ad(tmp_path / "l.h5ad").varm["scglmm_contrast_lrt_cond"]
    lrt = by_gene(lrt, stored.index)
    ok = np.isfinite(stored["loglik_full"].to_numpy())
    assert ok.sum() >= 15
    lr = 2 * (stored["loglik_full"] - stored["loglik_reduced"]).to_numpy()
    np.testing.assert_allclose(lrt["stat"].to_numpy()[ok], lr[ok], rtol=1e-8, atol=1e-8)


def test_test_command_errors(fitted, small_h5ad, tmp_path):
    _, out_dir, _ = fitted
    src = out_dir / "fit.h5ad"
    res = run("test", src, "--contrast", "nope", "-o", tmp_path / "t.h5ad")
    assert_one_line_error(res, 1, ["nope"])
    res = run("test", small_h5ad, "--contrast", COEF, "-o", tmp_path / "t.h5ad")  # not fitted
    line = assert_one_line_error(res, 1, ["no scglmm results under key 'scglmm'", "run 'scglmm fit' on it first"])
    assert "scglmm.tl.fit" not in line  # the program's words, not the Python API's
    res = run("test", src, "--contrast", COEF, "--key", "other", "-o", tmp_path / "t.h5ad")
    line = assert_one_line_error(res, 1, ["--key: ", "key 'other'", "as --key (keys with results: ['scglmm'])"])
    assert "scglmm.tl.fit" not in line
    # scanpy's layout also has 'params': not a fit
    res = run("test", src, "--contrast", COEF, "--key", "scglmm_rank_genes_groups", "-o", tmp_path / "t.h5ad")
    assert_one_line_error(res, 1, ["--key: ", "keys with results: ['scglmm']"])
    res = run("test", src, "--contrast", COEF, "-o", src)
    assert_one_line_error(res, 1, ["is the input file"])
    res = run("test", src, "--contrast", COEF, "--method", "score", "-o", tmp_path / "t.h5ad")
    assert_one_line_error(res, 2, ["--method", "score"])
    res = run("test", src, "--contrast", COEF, "--reduced-formula", "~ 1", "-o", tmp_path / "t.h5ad")
    assert_one_line_error(res, 2, ["--reduced-formula", "--method lrt"])
    assert_one_line_error(run("test", src, "-o", tmp_path / "t.h5ad"), 2, ["Missing option", "--contrast"])
    assert listing(tmp_path) == []


def test_docs_cover_every_option():
    """docs/cli.md documents every flag of every command and every exit code."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    for name, command in cli.commands.items():
        assert f"## `scglmm {name}`" in doc
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("-"):
                    assert f"`{opt}" in doc or f" {opt}" in doc, (name, opt)
    for code in (cli_mod.EXIT_OK, cli_mod.EXIT_ERROR, cli_mod.EXIT_USAGE, cli_mod.EXIT_INTERRUPTED):
        assert f"`{code}`" in doc


def test_fit_names_pseudo_replication_on_stderr(small_h5ad, tmp_path):
    """The paired example with (1 | donor): the guard's warning reaches a pipeline's log, once, with the fix."""
    res = run("fit", small_h5ad, "-f", FORMULA, "--size-factors", SF, "-o", tmp_path / "p.h5ad", "-j", "1")
    assert res.exit_code == 0, res.stderr
    lines = [line for line in res.stderr.splitlines() if "pseudo-replication" in line]
    assert len(lines) == 1 and "(1 + condition | donor)" in lines[0]


def test_composition_command(tmp_path):
    d = pd.read_csv(Path(__file__).parent / "data" / "composition" / "counts_A.csv")
    obs = d.loc[d.index.repeat(d["n"])].drop(columns="n").reset_index(drop=True).astype("category")
    obs.index = obs.index.astype(str)
    src = tmp_path / "cells.h5ad"
    ad.AnnData(obs=obs).write_h5ad(src)
    table = tmp_path / "comp.tsv"
    args = ["composition", str(src), "--groupby", "cell_type", "-f", "~ condition + (1 | donor)"]
    res = CliRunner().invoke(cli, [*args, "--table", str(table), "--top", "2"])
    assert res.exit_code == 0, res.output
    tab = pd.read_csv(table, sep="\t")
    assert len(tab) == 10 and {"cell_type", "coef", "log_or", "p_value", "var(Intercept|donor)"} <= set(tab.columns)
    assert CliRunner().invoke(cli, args).exit_code == 2  # neither --out nor --table
    bad = CliRunner().invoke(cli, [*args[:3], "celltype", *args[4:], "--table", str(tmp_path / "x.tsv")])
    assert bad.exit_code == 1 and "--groupby" in bad.output
