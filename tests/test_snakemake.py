"""The Snakemake rule in ``tutorials/snakemake`` runs end to end with the real ``snakemake``.

The input is a small real subset made at test time from ``data/kang2018_cd14_mono.h5ad`` (the
first 19 cells of each of the 16 samples, 300 cells, and the first 20 genes), so the run takes
seconds; the rule and the ``scglmm`` program are the ones users run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest

import scglmm

pytest.importorskip("snakemake", reason="snakemake is in the test extra: pip install -e '.[test]'")

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "tutorials" / "snakemake"
EXAMPLE = ROOT / "data" / "kang2018_cd14_mono.h5ad"
BIN = Path(sys.executable).parent


def small_example() -> ad.AnnData:
    full = ad.read_h5ad(EXAMPLE)
    cells = full.obs.groupby("sample", observed=True).head(19).index[:300]
    return full[cells, full.var_names[:20]].copy()


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(WORKFLOW / "Snakefile"), "--directory", str(workdir)]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=300, cwd=workdir)


@pytest.fixture(scope="module")
def workflow_run(tmp_path_factory):
    if shutil.which("scglmm", path=str(BIN)) is None:
        pytest.skip("the scglmm program is not installed next to this Python (pip install -e .)")
    work = tmp_path_factory.mktemp("snakemake")
    small = work / "input" / "small.h5ad"
    small.parent.mkdir()
    small_example().write_h5ad(small)
    config = work / "config.yaml"
    config.write_text(
        "datasets:\n"
        f"  small: {small}\n"
        'formula: "~ condition + (1 | donor)"\n'
        "outdir: out\n"
        "logdir: logs\n"
        "threads: 4\n"
        'extra: "--size-factors n_counts_all_genes --coef condition"\n'
    )
    res = snakemake(work, "--cores", "2", "--configfile", str(config))
    return res, work, small


def test_snakemake_runs(workflow_run):
    res, work, _ = workflow_run
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in (work / "out").iterdir()) == ["small.scglmm.h5ad", "small.scglmm.tsv"]
    assert (work / "logs" / "small.scglmm_fit.log").is_file()
    # only the configured dataset ran, not the default one of the tutorial's config.yaml
    assert "kang2018_cd14_mono" not in res.stderr


def test_declared_h5ad(workflow_run):
    res, work, small = workflow_run
    assert res.returncode == 0, res.stderr[-3000:]
    out = ad.read_h5ad(work / "out" / "small.scglmm.h5ad")
    inp = ad.read_h5ad(small)
    assert out.shape == inp.shape == (300, 20)
    assert (out.X != inp.X).nnz == 0  # the counts are carried over unchanged
    with h5py.File(work / "out" / "small.scglmm.h5ad") as f:
        assert f["X"]["data"].compression == "gzip"  # the program's default
    for suffix in ("coef", "se", "pval", "cov", "fit", "donor_effects"):
        assert f"scglmm_{suffix}" in out.varm
    assert list(out.varm["scglmm_coef"].columns) == ["Intercept", "condition[T.stim]"]
    params = out.uns["scglmm"]["params"]
    assert params["formula"] == "~ condition + (1 | donor)"
    assert params["n_jobs"] == 2  # the rule passes {threads}, which Snakemake capped at --cores 2
    assert "n_counts_all_genes" in params["offset_source"]


def test_declared_tsv(workflow_run):
    res, work, _ = workflow_run
    assert res.returncode == 0, res.stderr[-3000:]
    out = ad.read_h5ad(work / "out" / "small.scglmm.h5ad")
    tsv = pd.read_csv(work / "out" / "small.scglmm.tsv", sep="\t")
    expected = scglmm.get.results(out, "condition[T.stim]")
    assert list(tsv.columns) == ["gene", "coef", *expected.columns]
    assert len(tsv) == 20
    assert sorted(tsv["gene"]) == sorted(out.var_names)
    ranked = expected.assign(minus_abs_stat=-expected["stat"].abs())
    ranked = ranked.sort_values(["p_value", "minus_abs_stat"], kind="stable", na_position="last")
    assert tsv["gene"].tolist() == ranked.index.tolist()  # smallest p first, then largest |stat|
    expected = expected.loc[tsv["gene"]]
    assert (tsv["coef"] == "condition[T.stim]").all()
    for col in ("log_fc", "se", "p_value", "adj_p_value", "sigma2", "dispersion"):
        np.testing.assert_allclose(tsv[col].to_numpy(float), expected[col].to_numpy(float), rtol=1e-12)
    assert tsv["status"].tolist() == expected["status"].astype(str).tolist()
    # interferon-stimulated genes go up in stimulated monocytes
    isg15 = tsv.set_index("gene").loc["ISG15"]
    assert isg15["log2_fc"] > 4.0
    assert isg15["adj_p_value"] < 1e-10


def test_log_holds_the_run(workflow_run):
    res, work, _ = workflow_run
    assert res.returncode == 0, res.stderr[-3000:]
    log = (work / "logs" / "small.scglmm_fit.log").read_text()
    assert "read " in log
    assert "n_jobs=2" in log
    assert "top 10 of 20 genes for condition[T.stim]" in log
    assert "Error" not in log


def test_failed_job_leaves_no_output(workflow_run, tmp_path):
    """A bad formula: the job fails, Snakemake reports it, and no declared output exists."""
    res, _, small = workflow_run
    assert res.returncode == 0, res.stderr[-3000:]
    config = tmp_path / "config.yaml"
    config.write_text(
        f'datasets:\n  small: {small}\nformula: "~ conditon + (1 | donor)"\noutdir: out\nlogdir: logs\n'
        'extra: "--size-factors n_counts_all_genes"\n'
    )
    bad = snakemake(tmp_path, "--cores", "1", "--configfile", str(config))
    assert bad.returncode != 0
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    log = (tmp_path / "logs" / "small.scglmm_fit.log").read_text()
    assert log.strip().splitlines()[-1].startswith("Error: --formula: column(s) ['conditon']")
