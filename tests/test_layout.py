"""The AnnData layout module: keys, the readers of a run and the offset's source as data."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest

import scglmm
from scglmm import _layout
from scglmm._core._errors import MissingKeyError


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    from pathlib import Path

    a = ad.read_h5ad(Path(__file__).parent / "data" / "reference_small" / "data.h5ad")[:, :12].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        scglmm.tl.fit(a, "~ condition + (1 | donor)", size_factors="libsize")
    path = tmp_path_factory.mktemp("layout") / "fit.h5ad"
    a.write_h5ad(path)
    return ad.read_h5ad(path)


def test_keys():
    assert _layout.group_key("scglmm", "CD4 T/naive") == "scglmm:CD4 T_naive"
    assert _layout.contrast_name("treatment[T.B] - treatment[T.A]") == "treatment[T.B]-treatment[T.A]"
    assert _layout.varm_key("k", "coef") == "k_coef"
    assert _layout.rank_key("k") == "k_rank_genes_groups"


def test_offset_source_round_trip(fitted):
    src = _layout.offset_source(fitted, "scglmm")
    assert src == _layout.OffsetSource("size_factors", "libsize")
    assert fitted.uns["scglmm"]["params"]["offset_source"] == "obs['libsize'] (size factors, logged)"
    # the library sizes times the (default) mode-centred TMM factor of each donor's sample, read back from h5ad
    norm = _layout.normalisation(fitted, "scglmm")
    assert norm == _layout.Normalisation("tmm_mode", ("donor", "condition"), None)
    table = fitted.uns["scglmm"]["norm_factors"]
    factor = table["factor"].to_numpy()[
        table.index.get_indexer(fitted.obs["donor"].astype(str) + ":" + fitted.obs["condition"].astype(str))
    ]
    off = _layout.stored_log_offset(fitted, "scglmm")
    np.testing.assert_allclose(off, np.log(fitted.obs["libsize"].to_numpy() * factor), rtol=1e-13)


def test_normalisation_of_an_older_fit_is_none():
    assert _layout.Normalisation.from_params({"formula": "~ x + (1 | d)"}) == _layout.Normalisation()


def test_a_rank_block_is_not_a_fit(fitted):
    assert "params" in fitted.uns["scglmm_rank_genes_groups"]
    with pytest.raises(MissingKeyError, match=r"keys with results: \['scglmm'\]") as err:
        _layout.fit_params(fitted, "scglmm_rank_genes_groups")
    assert err.value.param == "key"


def test_coef_cov_shape(fitted):
    cov = _layout.coef_cov(fitted, "scglmm")
    assert cov.shape == (12, 2, 2)
    se = fitted.varm["scglmm_se"].to_numpy()
    np.testing.assert_allclose(np.sqrt(np.diagonal(cov, axis1=1, axis2=2)), se, rtol=1e-12)
