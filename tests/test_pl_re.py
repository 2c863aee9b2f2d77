"""scglmm.pl.donor_effects on fits with general random-effect structures: random slopes (each donor's own
response), nested and crossed terms; values read back from the Axes and recomputed from what the fit stored."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import anndata as ad
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection

import scglmm
from scglmm._core._errors import InputError

DATA = Path(__file__).parent / "data" / "reference_re"
SLOPE = "~ condition + (1 + condition | donor)"
NESTED_CROSSED = "~ condition + (1 | donor/sample) + (1 | batch)"
STIM = "condition[T.stim]"


@pytest.fixture(scope="module")
def fitted() -> ad.AnnData:
    """6 donors, each in ctrl and stim (40 cells per sample), 6 genes with donor-specific responses
    (slope SD 0.5); fitted with a random slope (key ``scglmm``) and with nested + crossed terms (``nc``),
    batches b1..b3 crossing the donors."""
    a = scglmm.datasets.simulate(
        paired=True, slope_sd=0.5, n_donors=6, cells_per_donor=40, n_genes=6, frac_de=0.5, mean_range=(1, 10),
        sigma2_range=(0.1, 0.5), sigma2_zero_frac=0.0, seed=2,
    )  # fmt: skip
    a.obs["batch"] = pd.Categorical(np.array(["b1", "b2", "b3"])[np.arange(a.n_obs) % 3])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        scglmm.tl.fit(a, SLOPE, size_factors="libsize", norm_method="none", progress=False)
        scglmm.tl.fit(a, NESTED_CROSSED, size_factors="libsize", norm_method="none", key_added="nc", progress=False)
    return a


def _load_overlap_check():
    """``assert_no_overlap`` of tests/test_pl.py (test modules import each other only by path under
    pytest's importlib mode)."""
    spec = importlib.util.spec_from_file_location("_scglmm_test_pl", Path(__file__).with_name("test_pl.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.assert_no_overlap


assert_no_overlap = _load_overlap_check()


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _drawn(ax) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Tick labels, plotted values, half bar lengths and raw values (NaN where not drawn), left to right."""
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    values, half, raw = np.full(len(ticks), np.nan), np.full(len(ticks), np.nan), np.full(len(ticks), np.nan)
    for cont in ax.containers:
        x = np.rint(cont.lines[0].get_xdata()).astype(int)
        values[x] = cont.lines[0].get_ydata()
        segs = cont.lines[2][0].get_segments()
        half[x] = [0.5 * (s[1, 1] - s[0, 1]) for s in segs]
    for coll in ax.collections:
        if isinstance(coll, PathCollection) and len(coll.get_offsets()):
            off = np.asarray(coll.get_offsets())
            raw[np.rint(off[:, 0]).astype(int)] = off[:, 1]
    return ticks, values, half, raw


def _gene_data(a: ad.AnnData, key: str, gene: str):
    g = a.var_names.get_loc(gene)
    y = np.asarray(a.X[:, g].toarray()).ravel().astype(float)
    stim = (a.obs["condition"] == "stim").to_numpy(float)
    b0, b1 = a.varm[f"{key}_coef"].loc[gene, ["Intercept", STIM]].to_numpy(dtype=float)
    eta = b0 + b1 * stim + np.log(a.obs["libsize"].to_numpy(float))
    theta = float(a.varm[f"{key}_fit"].loc[gene, "theta"])
    return y, stim, b1, eta, theta


def _slope_expected(a: ad.AnnData, gene: str) -> dict[str, dict[str, float]]:
    """Per donor from the stored fit alone: own response, its conditional SD (Woodbury form of
    (Z'WZ + Sigma^-1)^-1 per donor block, valid at a singular Sigma), raw response; and the score check."""
    y, stim, b1, eta, theta = _gene_data(a, "scglmm", gene)
    modes = a.varm["scglmm_modes"].loc[gene]
    vc = a.varm["scglmm_varcomp"].loc[gene]
    v0, v1, r = vc["var(Intercept|donor)"], vc[f"var({STIM}|donor)"], vc[f"cor(Intercept,{STIM}|donor)"]
    S = np.array([[v0, r * np.sqrt(v0 * v1)], [r * np.sqrt(v0 * v1), v1]])
    donors = a.obs["donor"].astype(str).to_numpy()
    out: dict[str, dict[str, float]] = {}
    for d in a.uns["scglmm"]["params"]["random_effects"]["(1 + condition | donor)"]["levels"]:
        m = donors == d
        b = np.array([modes[f"donor[{d}]:Intercept"], modes[f"donor[{d}]:{STIM}"]])
        Z = np.column_stack([np.ones(m.sum()), stim[m]])
        mu = np.exp(eta[m] + Z @ b)
        w = theta * mu * (theta + y[m]) / (theta + mu) ** 2
        cov = S - S @ Z.T @ np.linalg.solve(np.diag(1 / w) + Z @ S @ Z.T, Z @ S)
        score = Z.T @ (theta * (y[m] - mu) / (theta + mu))  # = Sigma^-1 b at the mode
        fit0 = np.exp(eta[m])
        on, off = stim[m] == 1, stim[m] == 0
        raw = b1 + np.log(y[m][on].sum() / fit0[on].sum()) - np.log(y[m][off].sum() / fit0[off].sum())
        out[d] = {"value": b1 + b[1], "sd": np.sqrt(cov[1, 1]), "raw": raw, "score_gap": np.max(np.abs(S @ score - b))}
    return out


@pytest.mark.parametrize("gene", ["G00000", "G00002"])
def test_slope_shows_each_donors_own_response(fitted, gene):
    a = fitted
    ax = scglmm.pl.donor_effects(a, gene, coef=STIM, show=False)
    assert_no_overlap(ax.figure)
    assert ax.get_ylabel() == "each donor's own stim vs ctrl\n(fixed effect + mode, natural log)"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "raw: fixed effect + log(observed / fixed-effect fit), stim minus ctrl" in legend
    assert ax.get_xlabel() == "donor level"
    exp = _slope_expected(a, gene)
    ticks, values, half, raw = _drawn(ax)
    assert sorted(ticks) == sorted(exp)
    # the stored modes solve the inner score equation with the rebuilt offset (b = Sigma Z'(score))
    assert max(e["score_gap"] for e in exp.values()) < 1e-4
    np.testing.assert_allclose(values, [exp[d]["value"] for d in ticks], rtol=0, atol=1e-12)
    np.testing.assert_allclose(half, [1.96 * exp[d]["sd"] for d in ticks], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(raw, [exp[d]["raw"] for d in ticks], rtol=1e-6)
    # left to right by value; the band is the fixed effect +- 1.96 sd of the slope, the line at the fixed effect
    assert np.all(np.diff(values) >= 0)
    b1 = float(a.varm["scglmm_coef"].loc[gene, STIM])
    (line,) = [ln for ln in ax.get_lines() if ln.get_gid() == "fixed_effect"]
    np.testing.assert_allclose(line.get_ydata(), b1, rtol=0, atol=1e-15)
    (band,) = [p for p in ax.patches if p.get_label().startswith("fixed effect")]
    ys = band.get_patch_transform().transform(band.get_path().vertices)[:, 1]  # Rectangle or Polygon
    half_band = 1.96 * np.sqrt(float(a.varm["scglmm_varcomp"].loc[gene, f"var({STIM}|donor)"]))
    np.testing.assert_allclose([ys.min(), ys.max()], [b1 - half_band, b1 + half_band], rtol=1e-12)


def test_slope_default_is_the_donor_intercept(fitted):
    a = fitted
    gene = "G00003"
    ax = scglmm.pl.donor_effects(a, gene, show=False)
    assert_no_overlap(ax.figure)
    assert ax.get_ylabel() == "donor effect on log mean (natural log)"
    ticks, values, half, raw = _drawn(ax)
    modes = a.varm["scglmm_modes"].loc[gene]
    np.testing.assert_allclose(values, [modes[f"donor[{d}]:Intercept"] for d in ticks], rtol=0, atol=1e-15)
    # the intercept's raw value: log(observed / fixed-effect fit) over the donor's reference (ctrl) cells
    y, stim, _, eta, _ = _gene_data(a, "scglmm", gene)
    donors = a.obs["donor"].astype(str).to_numpy()
    for d, r in zip(ticks, raw, strict=True):
        m = (donors == d) & (stim == 0)
        np.testing.assert_allclose(r, np.log(y[m].sum() / np.exp(eta[m]).sum()), rtol=1e-6)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"raw log(observed / fixed-effect fit) where {STIM} = 0" in legend
    assert np.all(half > 0.01)


def _nc_expected(a: ad.AnnData, gene: str) -> tuple[pd.Series, np.ndarray, list[str]]:
    """The stored modes, and their conditional SDs from the dense (Z'WZ + G^-1)^-1 over every term."""
    y, stim, _, eta, theta = _gene_data(a, "nc", gene)
    modes = a.varm["nc_modes"].loc[gene]
    vc = a.varm["nc_varcomp"].loc[gene]
    obs = a.obs
    cell_names = {
        "donor": [f"donor[{d}]:Intercept" for d in obs["donor"].astype(str)],
        "donor:sample": [f"donor:sample[{d}:{s}]:Intercept" for d, s in zip(obs["donor"], obs["sample"], strict=True)],
        "batch": [f"batch[{b}]:Intercept" for b in obs["batch"].astype(str)],
    }
    names = list(modes.index)
    Z = np.zeros((a.n_obs, len(names)))
    prior = np.zeros(len(names))
    for factor, per_cell in cell_names.items():
        Z[np.arange(a.n_obs), [names.index(n) for n in per_cell]] = 1.0
        prior[[i for i, n in enumerate(names) if n.startswith(f"{factor}[")]] = vc[f"var(Intercept|{factor})"]
    mu = np.exp(eta + Z @ modes.to_numpy())
    w = theta * mu * (theta + y) / (theta + mu) ** 2
    cov = np.linalg.inv(Z.T @ (w[:, None] * Z) + np.diag(1 / prior))
    return modes, np.sqrt(np.diag(cov)), names


@pytest.mark.parametrize(("factor", "n_levels"), [("donor", 6), ("donor:sample", 12), ("batch", 3)])
def test_nested_and_crossed_terms_by_factor(fitted, factor, n_levels):
    a = fitted
    gene = "G00001"
    assert np.all(a.varm["nc_varcomp"].loc[gene].to_numpy() > 1e-5)  # every variance inside: G is invertible
    ax = scglmm.pl.donor_effects(a, gene, key="nc", factor=factor, show=False)
    assert_no_overlap(ax.figure)
    assert ax.get_ylabel() == f"{factor} effect on log mean (natural log)"
    assert ax.get_title().startswith(f"{gene}: var(Intercept|{factor}) = ")
    modes, sd, names = _nc_expected(a, gene)
    ticks, values, half, _ = _drawn(ax)
    assert len(ticks) == n_levels
    cols = [names.index(f"{factor}[{lev}]:Intercept") for lev in ticks]
    np.testing.assert_allclose(values, modes.to_numpy()[cols], rtol=0, atol=1e-15)
    np.testing.assert_allclose(half, 1.96 * sd[cols], rtol=1e-6)
    # colouring by a donor-level column works per level of the nested factor (each sample has one condition)
    if factor == "donor:sample":
        ax2 = scglmm.pl.donor_effects(a, gene, key="nc", factor=factor, color_by="condition", show=False)
        assert_no_overlap(ax2.figure)
        assert len(ax2.containers) == 2
        assert sorted(len(c.lines[0].get_ydata()) for c in ax2.containers) == [6, 6]


def test_h5ad_round_trip_plots_the_same(fitted, tmp_path):
    a = fitted
    path = tmp_path / "re.h5ad"
    a.write_h5ad(path)
    back = ad.read_h5ad(path)
    for key in ("scglmm", "nc"):
        for suffix in ("modes", "varcomp"):
            pd.testing.assert_frame_equal(back.varm[f"{key}_{suffix}"], a.varm[f"{key}_{suffix}"])
    pd.testing.assert_frame_equal(scglmm.get.varcomp(back, key="nc"), scglmm.get.varcomp(a, key="nc"))
    calls = [
        {"gene": "G00000", "coef": STIM},
        {"gene": "G00004"},
        {"gene": "G00001", "key": "nc", "factor": "donor:sample"},
        {"gene": "G00001", "key": "nc", "factor": "batch"},
        {"gene": "G00003", "key": "nc"},  # default: the first term of the formula (donor)
    ]
    for kw in calls:
        gene = kw.pop("gene")
        one = _drawn(scglmm.pl.donor_effects(a, gene, show=False, **kw))
        two = _drawn(scglmm.pl.donor_effects(back, gene, show=False, **kw))
        assert one[0] == two[0], kw
        for x, z in zip(one[1:], two[1:], strict=True):
            np.testing.assert_allclose(x, z, rtol=1e-12, atol=1e-14)
    ticks = _drawn(scglmm.pl.donor_effects(back, "G00003", key="nc", show=False))[0]
    assert sorted(ticks) == [f"D0{i}" for i in range(1, 7)]


def test_errors_name_the_valid_choices(fitted):
    a = fitted
    with pytest.raises(
        KeyError, match=r"factor 'sample' is not a grouping factor.*\['donor', 'donor:sample', 'batch'\]"
    ):
        scglmm.pl.donor_effects(a, "G00001", key="nc", factor="sample", show=False)
    with pytest.raises(KeyError, match=r"coef 'condition\[T.stim\]' has no random effect by 'batch'.*Intercept\|batch"):
        scglmm.pl.donor_effects(a, "G00001", key="nc", coef=STIM, factor="batch", show=False)
    with pytest.raises(
        InputError, match=r"coef 'covariate' has no random effect.*'condition\[T.stim\]\|donor'"
    ) as info:
        scglmm.pl.donor_effects(a, "G00001", coef="covariate", show=False)
    assert info.value.param == "coef"
    # a paired design: the condition varies within each donor
    with pytest.raises(ValueError, match=r"color_by column 'condition' must be constant within each donor"):
        scglmm.pl.donor_effects(a, "G00001", coef=STIM, color_by="condition", show=False)
    # a (1 | donor) fit has one random effect
    b = a[:, :2].copy()
    scglmm.tl.fit(
        b, "~ condition + (1 | donor)", size_factors="libsize", norm_method="none", key_added="ri", progress=False
    )
    with pytest.raises(KeyError, match=r"coef 'condition\[T.stim\]' has no random effect.*\['Intercept\|donor'\]"):
        scglmm.pl.donor_effects(b, "G00001", key="ri", coef=STIM, show=False)
    ax = scglmm.pl.donor_effects(b, "G00001", key="ri", coef="Intercept", factor="donor", show=False)
    np.testing.assert_allclose(np.sort(_drawn(ax)[1]), np.sort(b.varm["ri_donor_effects"].loc["G00001"]), atol=1e-15)


# ------------------------------------------------------------------------------------------------
# the shipped glmmTMB reference sets: levels without counts, crossed terms
# ------------------------------------------------------------------------------------------------
#: Genes of crossed.h5ad with a clear batch variance (glmmTMB: var(Intercept|batch) 0.53-0.63),
#: G0095 also with a large donor variance (0.91).
CROSSED_GENES = ["G0095", "G0064", "G0112", "G0010"]


@pytest.fixture(scope="module")
def crossed() -> ad.AnnData:
    a = ad.read_h5ad(DATA / "crossed.h5ad")[:, CROSSED_GENES].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        scglmm.tl.fit(
            a,
            "~ condition + covariate + (1 | donor) + (1 | batch)",
            size_factors="libsize",
            norm_method="none",
            progress=False,
        )
    return a


@pytest.mark.parametrize("factor", ["batch", "donor"])
def test_crossed_raw_values_agree_with_the_modes(crossed, factor):
    """The raw value of a level of one crossed term is computed against the fixed effects and the other
    term's modes: it agrees with the level's mode. Against the fixed effects alone, every batch's raw
    value also carried the donors' effects (log of the mean of exp(donor mode) over its cells, 0.4 for
    G0095), drawn visibly above the modes."""
    a = crossed
    raw_all, modes_all = [], []
    for gene in CROSSED_GENES:
        vc = a.varm["scglmm_varcomp"].loc[gene]
        assert vc["var(Intercept|batch)"] > 0.3
        ax = scglmm.pl.donor_effects(a, gene, factor=factor, show=False)
        assert_no_overlap(ax.figure)
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert "raw log(observed / fit of fixed effects + other terms' modes)" in legend
        ticks, values, _, raw = _drawn(ax)
        ok = np.isfinite(raw)
        assert ok.sum() >= len(ticks) - 1
        modes = a.varm["scglmm_modes"].loc[gene]
        np.testing.assert_allclose(values, [modes[f"{factor}[{lev}]:Intercept"] for lev in ticks], atol=1e-15)
        # agreement, not only the same order: the raw values scatter around the modes
        spread = np.sqrt(vc[f"var(Intercept|{factor})"])
        assert abs(np.mean(raw[ok] - values[ok])) < 0.2 * spread, gene
        raw_all.append(raw[ok])
        modes_all.append(values[ok])
        plt.close("all")
    raw_all, modes_all = np.concatenate(raw_all), np.concatenate(modes_all)
    assert np.corrcoef(raw_all, modes_all)[0, 1] > 0.9
    # recomputed here for the batch term: observed over fixed effects + donor modes, per batch
    if factor == "batch":
        gene = "G0095"
        g = a.var_names.get_loc(gene)
        y = np.asarray(a.X[:, g].toarray()).ravel()
        beta = a.varm["scglmm_coef"].loc[gene]
        stim = (a.obs["condition"] == "stim").to_numpy(float)
        eta = beta["Intercept"] + beta[STIM] * stim + beta["covariate"] * a.obs["covariate"].to_numpy(float)
        modes = a.varm["scglmm_modes"].loc[gene]
        donor_mode = np.array([modes[f"donor[{d}]:Intercept"] for d in a.obs["donor"].astype(str)])
        fitted = np.exp(eta + np.log(a.obs["libsize"].to_numpy(float)) + donor_mode)
        ticks, _, _, raw = _drawn(scglmm.pl.donor_effects(a, gene, factor="batch", show=False))
        batch = a.obs["batch"].astype(str).to_numpy()
        expected = [np.log(y[batch == b].sum() / fitted[batch == b].sum()) for b in ticks]
        np.testing.assert_allclose(raw, expected, rtol=1e-6)


@pytest.fixture(scope="module")
def slope_ref() -> ad.AnnData:
    """slope.h5ad fitted with a random slope; G0061 has no counts in one donor at all and in one
    donor's stim cells, G0003 none in 2 donors and in the stim cells of 5."""
    a = ad.read_h5ad(DATA / "slope.h5ad")[:, ["G0061", "G0003", "G0064"]].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        scglmm.tl.fit(
            a,
            "~ condition + covariate + (1 + condition | donor)",
            size_factors="libsize",
            norm_method="none",
            progress=False,
        )
    return a


@pytest.mark.parametrize("coef", [STIM, "Intercept"])
@pytest.mark.parametrize("figsize", [None, (3.5, 3.0)])
def test_legend_with_levels_without_counts_covers_nothing(slope_ref, coef, figsize):
    """The legend of levels without counts (a long entry) lay over the y label (slope) or over the data
    (intercept); it is now under the x label, the note on those levels its title."""
    a = slope_ref
    for gene, n_nocount in (("G0061", {STIM: 2, "Intercept": 1}), ("G0003", {STIM: 5, "Intercept": 2})):
        ax = scglmm.pl.donor_effects(a, gene, coef=coef, figsize=figsize, show=False)
        assert_no_overlap(ax.figure)
        fig = ax.figure
        renderer = fig.canvas.get_renderer()
        legend = ax.get_legend()
        assert legend.get_title().get_text() == f"{n_nocount[coef]} donor level(s) without counts: no raw value"
        box = legend.get_window_extent(renderer)
        assert box.y1 <= ax.xaxis.label.get_window_extent(renderer).y0  # under the x label
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.x1  # inside the figure
        assert np.isnan(_drawn(ax)[3]).sum() == n_nocount[coef]
        texts = [t.get_text() for t in legend.get_texts()]
        assert not [t for t in texts if "without counts" in t]
        plt.close("all")
