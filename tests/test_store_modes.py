"""What a fit stores (issue 22, item 8): the conditional modes only where asked (``store_modes``), and the
same results, read back the same way, whatever is left out."""

from __future__ import annotations

import warnings
from pathlib import Path

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import scglmm
from scglmm._core._errors import MissingKeyError
from scglmm.cli import cli

matplotlib.use("Agg")
FORMULA = "~ condition + (1 | donor)"
SLOPE = "~ covariate + (1 + covariate | donor)"


def _data() -> ad.AnnData:
    a = scglmm.datasets.simulate(n_donors=6, cells_per_donor=40, n_genes=10, seed=5, frac_de=0.3)
    a.obs["half"] = pd.Categorical(np.where(np.arange(a.n_obs) % 2 == 0, "even", "odd"))
    return a


def _fit(formula: str = FORMULA, **kwargs) -> ad.AnnData:
    a = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        scglmm.tl.fit(a, formula, size_factors="libsize", n_jobs=1, progress=False, **kwargs)
    return a


def _mode_keys(a: ad.AnnData) -> list[str]:
    return [k for k in a.varm if k.endswith(("_donor_effects", "_modes"))]


@pytest.fixture(scope="module")
def grouped() -> ad.AnnData:
    return _fit(groupby="half")


@pytest.fixture(scope="module")
def grouped_with_modes() -> ad.AnnData:
    return _fit(groupby="half", store_modes=True)


def test_one_fit_stores_its_modes_by_default():
    a = _fit()
    assert _mode_keys(a) == ["scglmm_donor_effects"]
    assert a.uns["scglmm"]["params"]["store_modes"] is True
    assert _mode_keys(_fit(store_modes=False)) == []


def test_groupby_stores_modes_only_when_asked(grouped, grouped_with_modes):
    assert _mode_keys(grouped) == []
    assert _mode_keys(grouped_with_modes) == ["scglmm:even_donor_effects", "scglmm:odd_donor_effects"]
    for a, stored in ((grouped, False), (grouped_with_modes, True)):
        assert a.uns["scglmm"]["params"]["store_modes"] is stored
        assert all(a.uns[f"scglmm:{g}"]["params"]["store_modes"] is stored for g in ("even", "odd"))


def test_leaving_the_modes_out_changes_nothing_else(grouped, grouped_with_modes):
    assert set(grouped_with_modes.varm) - set(grouped.varm) == set(_mode_keys(grouped_with_modes))
    for k in grouped.varm:
        if isinstance(grouped.varm[k], pd.DataFrame):
            pd.testing.assert_frame_equal(grouped.varm[k], grouped_with_modes.varm[k], check_exact=True)
        else:
            np.testing.assert_array_equal(grouped.varm[k], grouped_with_modes.varm[k])
    pd.testing.assert_frame_equal(
        scglmm.get.results(grouped, "condition"), scglmm.get.results(grouped_with_modes, "condition"), check_exact=True
    )


def test_fit_status_is_categorical_with_the_same_values(grouped):
    for g in ("even", "odd"):
        status = grouped.varm[f"scglmm:{g}_fit"]["status"]
        assert isinstance(status.dtype, pd.CategoricalDtype)
        assert status.astype(str).tolist() == grouped.var[f"scglmm:{g}_status"].astype(str).tolist()


def test_round_trip_through_h5ad(grouped, tmp_path: Path):
    grouped.write_h5ad(tmp_path / "g.h5ad")
    back = ad.read_h5ad(tmp_path / "g.h5ad")
    assert _mode_keys(back) == []
    before = scglmm.get.results(grouped, "condition")
    after = scglmm.get.results(back, "condition")
    pd.testing.assert_frame_equal(after, before, check_exact=True)
    pd.testing.assert_frame_equal(back.varm["scglmm:odd_fit"], grouped.varm["scglmm:odd_fit"], check_exact=True)
    with pytest.raises(KeyError, match="store_modes=True"):
        scglmm.pl.donor_effects(back, "G00001", group="odd", show=False)


def test_donor_effects_without_modes_names_the_option(grouped, grouped_with_modes):
    import matplotlib.pyplot as plt

    with pytest.raises(MissingKeyError, match=r"groupby stores them only when asked.*store_modes=True") as err:
        scglmm.pl.donor_effects(grouped, "G00001", group="odd", show=False)
    assert "--store-modes" in str(err.value)
    with pytest.raises(KeyError, match=r"under 'scglmm' did not store the conditional modes.*store_modes=True"):
        scglmm.pl.donor_effects(_fit(store_modes=False), "G00001", show=False)
    assert scglmm.pl.donor_effects(grouped_with_modes, "G00001", group="odd", show=False) is not None
    plt.close("all")


def test_general_structure_keeps_its_variance_components():
    a = _fit(SLOPE, groupby="half")
    assert _mode_keys(a) == []
    assert {"scglmm:even_varcomp", "scglmm:odd_varcomp"} <= set(a.varm)
    assert len(scglmm.get.varcomp(a)) == 2 * a.n_vars
    with pytest.raises(KeyError, match="store_modes=True"):
        scglmm.pl.donor_effects(a, "G00001", group="even", show=False)
    b = _fit(SLOPE, groupby="half", store_modes=True)
    assert _mode_keys(b) == ["scglmm:even_modes", "scglmm:odd_modes"]


def test_store_modes_must_be_a_bool():
    a = _data()
    with pytest.raises(TypeError, match="store_modes must be True, False or None"):
        scglmm.tl.fit(a, FORMULA, store_modes="yes", progress=False)
    assert "scglmm" not in a.uns


def test_cli_flag(tmp_path: Path):
    _data().write_h5ad(tmp_path / "in.h5ad")
    base = ["fit", str(tmp_path / "in.h5ad"), "-f", FORMULA, "--size-factors", "libsize", "--groupby", "half", "-q"]
    for flag, expected in (([], []), (["--store-modes"], ["scglmm:even_donor_effects", "scglmm:odd_donor_effects"])):
        res = CliRunner().invoke(cli, [*base, *flag, "-o", str(tmp_path / "out.h5ad")])
        assert res.exit_code == 0, res.output
        assert _mode_keys(ad.read_h5ad(tmp_path / "out.h5ad")) == expected
    res = CliRunner().invoke(cli, ["fit", "--help"])
    assert "--store-modes / --no-store-modes" in res.output
