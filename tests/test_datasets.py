"""The example data ship inside the package: they load from an installed wheel, from any directory."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import scglmm

ROOT = Path(__file__).resolve().parents[1]


def test_loads_from_the_source_tree():
    adata = scglmm.datasets.kang2018_cd14_mono()
    assert adata.shape == (2913, 1000)
    assert sorted(adata.obs["condition"].unique()) == ["ctrl", "stim"]
    assert adata.obs["donor"].nunique() == 8


def test_cell_labels_load_from_the_source_tree():
    adata = scglmm.datasets.kang2018_cell_types()
    assert adata.shape == (13999, 0)
    assert list(adata.obs.columns) == ["donor", "condition", "sample", "cell_type"]
    assert list(adata.obs["condition"].cat.categories) == ["ctrl", "stim"]
    assert adata.obs["donor"].nunique() == 8 and adata.obs["sample"].nunique() == 16
    assert adata.obs["cell_type"].nunique() == 13 and not adata.obs.isna().any().any()
    with pytest.raises(FileNotFoundError, match="kang2018_obs.csv.gz"):
        scglmm.datasets.kang2018_cell_types("/nonexistent/kang2018_obs.csv.gz")


def test_explicit_path_that_does_not_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.h5ad not found"):
        scglmm.datasets.kang2018_cd14_mono(tmp_path / "nope.h5ad")


@pytest.mark.skipif(importlib.util.find_spec("hatchling") is None, reason="needs hatchling (the test extra)")
def test_loads_from_an_installed_wheel_outside_the_source_tree(tmp_path):
    wheels = tmp_path / "wheels"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels)]
    cmd.append(str(ROOT))
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("scglmm-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        assert "scglmm/data/kang2018_cd14_mono.h5ad" in z.namelist()
        assert "scglmm/data/kang2018_obs.csv.gz" in z.namelist()
        z.extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import scglmm, pathlib; a = scglmm.datasets.kang2018_cd14_mono(); "
        "print(pathlib.Path(scglmm.__file__).parent); print(a.n_obs, a.n_vars); "
        "print(scglmm.datasets.kang2018_cell_types().n_obs)"
    )
    # only the unpacked wheel is on the path for scglmm (the dependencies come from this environment)
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {code}"],
        cwd=elsewhere, capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    pkg_dir, shape, n_labelled = out.stdout.strip().splitlines()
    assert Path(pkg_dir) == site / "scglmm"
    assert shape == "2913 1000"
    assert n_labelled == "13999"


def test_simulate_de_direction_fixes_signs_only():
    both = scglmm.datasets.simulate(n_donors=4, cells_per_donor=5, n_genes=40, frac_de=0.5, seed=1)
    up = scglmm.datasets.simulate(n_donors=4, cells_per_donor=5, n_genes=40, frac_de=0.5, seed=1, de_direction="up")
    down = scglmm.datasets.simulate(n_donors=4, cells_per_donor=5, n_genes=40, frac_de=0.5, seed=1, de_direction="down")
    np.testing.assert_array_equal(up.var["is_de"], both.var["is_de"])
    np.testing.assert_array_equal(up.var["beta_condition"], np.abs(both.var["beta_condition"]))
    np.testing.assert_array_equal(down.var["beta_condition"], -np.abs(both.var["beta_condition"]))
    with pytest.raises(ValueError, match="de_direction must be 'both', 'up' or 'down'"):
        scglmm.datasets.simulate(de_direction="upward")
