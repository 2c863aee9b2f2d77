"""scglmm.pl: each plot is rendered to PNG (Agg) and its content checked against the stored fit."""

from __future__ import annotations

import warnings
from itertools import combinations
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.colors import to_rgba
from matplotlib.legend import Legend
from matplotlib.text import Text
from matplotlib.transforms import Bbox
from scipy import sparse
from scipy.stats import chi2, norm
from scipy.stats import t as t_dist

import scglmm
from scglmm.pl._utils import neg_log10_p, readable_name


@pytest.fixture(scope="module")
def fitted():
    """20 genes, 6 donors (3 ctrl, 3 stim), 6 DE genes; gene 19 all zero (no estimate)."""
    adata = scglmm.datasets.simulate(n_donors=6, cells_per_donor=40, n_genes=20, frac_de=0.3, lfc=(1.5, 3.0), seed=1)
    X = adata.X.tolil()
    X[:, 19] = 0
    adata.X = sparse.csr_matrix(X)
    adata.X.eliminate_zeros()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the fit may warn about the all-zero gene
        scglmm.tl.fit(adata, "~ condition + (1 | donor)", progress=False, n_jobs=1)
    return adata


@pytest.fixture(scope="module")
def kang():
    """The shipped Kang CD14 example, fitted as in the README (~ condition + (1 | donor))."""
    adata = scglmm.datasets.kang2018_cd14_mono()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        scglmm.tl.fit(adata, "~ condition + (1 | donor)", progress=False, n_jobs=2)
    return adata


@pytest.fixture(scope="module")
def by_type():
    """A groupby fit: 3 fake cell types (each in every donor); gene 12 (DE) has no counts in type C."""
    adata = scglmm.datasets.simulate(
        n_donors=8, cells_per_donor=120, n_genes=24, frac_de=0.4, lfc=(1.5, 3.0), mean_range=(0.5, 10.0), seed=3
    )
    adata.obs["cell_type"] = pd.Categorical(np.array(["A", "B", "C"])[np.arange(adata.n_obs) % 3])
    X = adata.X.tolil()
    X[np.flatnonzero(adata.obs["cell_type"] == "C"), 12] = 0
    adata.X = sparse.csr_matrix(X)
    adata.X.eliminate_zeros()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        scglmm.tl.fit(
            adata, "~ condition + (1 | donor)", groupby="cell_type", size_factors="libsize", progress=False, n_jobs=1
        )
    return adata


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _points(ax) -> list[PathCollection]:
    return [c for c in ax.collections if isinstance(c, PathCollection)]


def _n_points(ax) -> int:
    return sum(len(c.get_offsets()) for c in _points(ax))


def _lines(ax, gid: str):
    return [ln for ln in ax.get_lines() if ln.get_gid() == gid]


def _check_png(path) -> None:
    img = plt.imread(path)
    assert img.ndim == 3
    assert img.shape[0] > 200
    assert img.shape[1] > 200
    # not blank: some ink, and more than one colour of it
    ink = img[..., :3].min(axis=2) < 0.8
    assert 0.002 < ink.mean() < 0.5
    assert np.ptp(img[..., :3][ink], axis=0).max() > 0.2


# ------------------------------------------------------------------------------------------------
# text boxes of a rendered figure
# ------------------------------------------------------------------------------------------------
def _drawn_tick_labels(ax) -> tuple[list[Text], set[int]]:
    """The tick labels that are drawn (ticks inside the view limits), and the ids of all tick labels."""
    drawn, every = [], set()
    for axis in (ax.xaxis, ax.yaxis):
        lo, hi = sorted(axis.get_view_interval())
        tol = 1e-9 * max(1.0, hi - lo)
        for tick in axis.get_major_ticks() + axis.get_minor_ticks():
            every.update({id(tick.label1), id(tick.label2)})
            if tick.get_visible() and lo - tol <= tick.get_loc() <= hi + tol:
                drawn += [tick.label1, tick.label2]
    return drawn, every


def _text_boxes(fig) -> tuple[list[tuple[str, Bbox]], list[tuple[str, Bbox]]]:
    """The window extents of every visible, non-empty text of the rendered ``fig`` (titles, axis
    labels, tick labels, annotations, figure texts) and of every legend box, named for messages."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = [leg for leg in fig.findobj(Legend) if leg.get_visible() and leg.axes in (None, *fig.axes)]
    skip = {id(t) for leg in legends for t in leg.findobj(Text)}
    texts = []
    for owner in [fig, *(ax for ax in fig.axes if ax.get_visible())]:
        candidates = owner.texts if owner is fig else owner.findobj(Text)
        if owner is not fig:
            drawn, every = _drawn_tick_labels(owner)
            skip |= every
            candidates = drawn + [t for t in candidates if id(t) not in skip]
        for t in candidates:
            if t.get_visible() and t.get_text().strip() and id(t) not in {id(x) for x, _ in texts}:
                texts.append((t, t.get_window_extent(renderer)))
    named = [(repr(t.get_text()), box) for t, box in texts]
    return named, [(f"legend {leg.get_title().get_text()!r}", leg.get_window_extent(renderer)) for leg in legends]


def assert_no_overlap(fig) -> None:
    """In the rendered ``fig`` no two text boxes overlap (titles, axis and tick labels, annotations,
    legends), and no legend overlaps the data area of any Axes."""
    texts, legends = _text_boxes(fig)
    boxes = texts + legends
    clashes = [(a, b) for (a, box_a), (b, box_b) in combinations(boxes, 2) if box_a.overlaps(box_b)]
    renderer = fig.canvas.get_renderer()
    for name, box in legends:
        for k, ax in enumerate(fig.axes):
            if ax.get_visible() and box.overlaps(ax.get_window_extent(renderer)):
                clashes.append((name, f"data area of axes {k}"))
    assert not clashes, clashes


# ------------------------------------------------------------------------------------------------
# volcano
# ------------------------------------------------------------------------------------------------
def test_volcano_content(fitted, tmp_path):
    res = scglmm.get.results(fitted)
    out = tmp_path / "volcano.png"
    ax = scglmm.pl.volcano(fitted, lfc_threshold=0.5, p_threshold=0.05, n_labels=2, show=False, save=out)
    _check_png(out)
    assert_no_overlap(ax.figure)
    assert ax.get_xlabel() == "log2 fold change (condition[T.stim])"
    assert "log_{10}" in ax.get_ylabel()
    n_ok = int(np.isfinite(res["p_value"]).sum())
    assert n_ok >= 17
    assert _n_points(ax) == n_ok
    assert f"{20 - n_ok} with no estimate not shown" in ax.get_title()
    # classes: up, down, n.s. with the counts of the calls
    sig = (res["adj_p_value"] < 0.05) & (res["log2_fc"].abs() >= 0.5)
    n_up, n_down = int((sig & (res["log2_fc"] > 0)).sum()), int((sig & (res["log2_fc"] < 0)).sum())
    assert n_up + n_down >= 3
    cols = _points(ax)
    assert [len(c.get_offsets()) for c in cols] == [n_up, n_down, n_ok - n_up - n_down]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [f"up ({n_up})", f"down ({n_down})", f"not significant ({n_ok - n_up - n_down})"]
    assert to_rgba(cols[0].get_facecolor()[0]) != to_rgba(cols[1].get_facecolor()[0])
    # the y of each drawn point is -log10 p of its gene
    up = res[sig & (res["log2_fc"] > 0)]
    np.testing.assert_allclose(cols[0].get_offsets()[:, 1], -np.log10(up["p_value"]), rtol=1e-9)
    np.testing.assert_allclose(cols[0].get_offsets()[:, 0], up["log2_fc"], rtol=1e-12)
    # thresholds: +-0.5 vertical, horizontal at the BH cut-off (largest raw p with adj p < 0.05)
    vx = sorted(ln.get_xdata()[0] for ln in _lines(ax, "lfc_threshold"))
    assert vx == pytest.approx([-0.5, 0.5])
    (hline,) = _lines(ax, "p_threshold")
    cut = res.loc[res["adj_p_value"] < 0.05, "p_value"].max()
    assert hline.get_ydata()[0] == pytest.approx(-np.log10(cut), rel=1e-9)
    # the two most significant called genes are labelled, nothing else
    texts = sorted(t.get_text() for t in ax.texts if t.get_gid() == "gene_label")
    expected = sorted(res[sig].sort_values("p_value").index[:2])
    assert texts == expected


def _label_boxes(ax):
    ax.figure.canvas.draw()
    renderer = ax.figure.canvas.get_renderer()
    return {t.get_text(): t.get_window_extent(renderer) for t in ax.texts if t.get_gid() == "gene_label"}


@pytest.mark.parametrize("figsize", [None, (3.5, 3.0)])
def test_volcano_labels_do_not_overlap_on_kang(kang, figsize):
    """Issue 14: the 15 labels of the Kang CD14 volcano were an unreadable blob."""
    res = scglmm.get.results(kang)
    sig = (res["adj_p_value"] < 0.05) & (res["log2_fc"].abs() >= 1.0)
    ax = scglmm.pl.volcano(kang, n_labels=15, figsize=figsize, show=False)
    boxes = _label_boxes(ax)
    assert_no_overlap(ax.figure)
    # the 15 most significant called genes (ties in p broken by |stat|), each labelled once
    top = res[sig].assign(a=res["stat"].abs()).sort_values(["p_value", "a"], ascending=[True, False]).index[:15]
    assert sorted(boxes) == sorted(top)
    assert "left out" not in ax.get_title()
    for (a, box_a), (b, box_b) in combinations(boxes.items(), 2):
        assert not box_a.overlaps(box_b), (a, b)
    # inside the axes, and each label joined to its gene's point or next to it
    frame = ax.get_window_extent().padded(1)
    for name, box in boxes.items():
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, name
    lines = [p for p in ax.patches if p.get_gid() == "gene_label_line"]
    assert {p.patchA.get_text() for p in lines} <= set(boxes)


def test_volcano_drops_labels_with_no_free_place(kang):
    """Far more labels than fit: those left over are removed, never drawn over each other."""
    ax = scglmm.pl.volcano(kang, n_labels=40, figsize=(3.0, 2.5), show=False)
    boxes = _label_boxes(ax)
    assert_no_overlap(ax.figure)
    n_left_out = 40 - len(boxes)
    assert n_left_out > 0
    assert f"{n_left_out} label(s) left out: no place without overlap" in ax.get_title()
    for (a, box_a), (b, box_b) in combinations(boxes.items(), 2):
        assert not box_a.overlaps(box_b), (a, b)
    lines = [p for p in ax.patches if p.get_gid() == "gene_label_line"]
    assert {p.patchA.get_text() for p in lines} <= set(boxes)


def test_volcano_group_colours_and_ax(fitted):
    fig, axes = plt.subplots(1, 2)
    ret = scglmm.pl.volcano(fitted, color_by="is_de", lfc_threshold=0.0, n_labels=0, ax=axes[1], show=False)
    assert ret is axes[1]
    assert not _points(axes[0])
    cols = _points(axes[1])
    ok = np.isfinite(scglmm.get.results(fitted)["p_value"]).to_numpy()
    is_de = fitted.var["is_de"].to_numpy()
    assert [len(c.get_offsets()) for c in cols] == [int((ok & ~is_de).sum()), int((ok & is_de).sum())]
    assert len({tuple(to_rgba(c.get_facecolor()[0])) for c in cols}) == 2
    assert [t.get_text() for t in axes[1].get_legend().get_texts()] == [
        f"False ({int((ok & ~is_de).sum())})",
        f"True ({int((ok & is_de).sum())})",
    ]
    assert not _lines(axes[1], "lfc_threshold")  # threshold 0: no vertical lines
    assert not [t for t in axes[1].texts if t.get_gid() == "gene_label"]
    assert_no_overlap(fig)


def test_titles_say_level_vs_reference(fitted):
    """Issue 14: a factor level column reads "stim vs ctrl", not the design name condition[T.stim]."""
    assert fitted.uns["scglmm"]["params"]["reference_levels"] == {"condition": "ctrl"}
    n_ok = int(scglmm.get.results(fitted)["p_value"].notna().sum())
    ax = scglmm.pl.volcano(fitted, n_labels=0, show=False)
    assert ax.get_title().startswith(f"stim vs ctrl: {n_ok} genes")
    assert ax.get_xlabel() == "log2 fold change (condition[T.stim])"  # the name to pass as coef=
    assert scglmm.pl.pvalue_qq(fitted, show=False).get_title().startswith(f"stim vs ctrl: {n_ok} genes")
    assert scglmm.pl.pvalue_hist(fitted, show=False).get_title().startswith(f"stim vs ctrl: {n_ok} genes")
    # a numeric covariate says what its fold change is per
    adata = fitted[:, :4].copy()
    scglmm.tl.fit(
        adata, "~ condition + covariate + (1 | donor)", size_factors="libsize", key_added="cov", progress=False
    )
    ax = scglmm.pl.volcano(adata, "covariate", key="cov", n_labels=0, show=False)
    assert ax.get_title().startswith("covariate (per unit increase): 4 genes")
    ax = scglmm.pl.volcano(adata, "condition", key="cov", n_labels=0, show=False)
    assert ax.get_title().startswith("stim vs ctrl: 4 genes")
    # a contrast keeps the name it was tested under
    name = scglmm.tl.test(adata, {"condition[T.stim]": 1.0, "covariate": 1.0}, key="cov", progress=False)
    ax = scglmm.pl.volcano(adata, contrast=name, key="cov", n_labels=0, show=False)
    assert ax.get_title().startswith(f"{name}: 4 genes")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("condition[T.stim]", "stim vs ctrl"),
        ("cell_type[T.B cells]", "B cells vs T cells"),
        ("`cell type`[T.B]", "B vs A"),
        ("treated", "treated: True vs False"),
        ("pct_mito", "pct_mito (per unit increase)"),
        ("np.log(n_counts)", "np.log(n_counts) (per unit increase)"),
        ("condition[T.stim]:pct_mito", "condition[T.stim]:pct_mito"),
        ("Intercept", "Intercept"),
        ("stim-ctrl", "stim-ctrl"),
        ("batch[T.b2]", "batch[T.b2]"),  # no reference level stored: the design name
    ],
)
def test_readable_name(name, expected):
    params = {
        "design_columns": ["Intercept", "condition[T.stim]", "cell_type[T.B cells]", "`cell type`[T.B]", "treated"]
        + ["pct_mito", "np.log(n_counts)", "condition[T.stim]:pct_mito", "batch[T.b2]"],
        "reference_levels": {"condition": "ctrl", "cell_type": "T cells", "cell type": "A", "treated": ""},
    }
    assert readable_name(name, params) == expected


def _with_p_zero(adata, gene="G00000", z=45.0):
    """A copy in which one gene's p-value underflowed to 0 (Wald statistic ``z``)."""
    adata = adata.copy()
    name = "condition[T.stim]"
    for k, v in (("coef", z * adata.varm["scglmm_se"].loc[gene, name]), ("pval", 0.0), ("stat", z)):
        df = adata.varm[f"scglmm_{k}"].copy()
        df.loc[gene, name] = v
        adata.varm[f"scglmm_{k}"] = df
    return adata


def test_volcano_draws_p_zero_genes(fitted):
    adata = _with_p_zero(fitted)
    df = adata.uns["scglmm"]["params"]["df"]["condition[T.stim]"]
    ax = scglmm.pl.volcano(adata, lfc_threshold=0.0, n_labels=1, show=False)
    ys = np.concatenate([c.get_offsets()[:, 1] for c in _points(ax)])
    assert np.all(np.isfinite(ys))
    assert _n_points(ax) == int(np.isfinite(adata.varm["scglmm_pval"]["condition[T.stim]"]).sum())
    # exact height from the stored statistic and the fit's reference distribution
    expected = -(np.log(2.0) + (norm.logsf(45.0) if np.isinf(df) else t_dist.logsf(45.0, df))) / np.log(10.0)
    assert ys.max() == pytest.approx(expected, rel=1e-9)
    assert [t.get_text() for t in ax.texts if t.get_gid() == "gene_label"] == ["G00000"]
    assert "clipped" not in ax.get_title()


def test_volcano_clips_p_zero_without_statistic(fitted):
    adata = _with_p_zero(fitted)
    stat = adata.varm["scglmm_stat"].copy()
    stat.loc["G00000", "condition[T.stim]"] = np.nan  # no statistic to compute the height from
    adata.varm["scglmm_stat"] = stat
    ax = scglmm.pl.volcano(adata, lfc_threshold=0.0, n_labels=1, show=False)
    assert _n_points(ax) == int(np.isfinite(adata.varm["scglmm_pval"]["condition[T.stim]"]).sum())
    tri = [c for c in _points(ax) if len(c.get_offsets()) and c.get_paths()[0].vertices.shape[0] == 4]
    assert len(tri) == 1
    (xy,) = tri[0].get_offsets()
    p = adata.varm["scglmm_pval"]["condition[T.stim]"]
    assert xy[1] == pytest.approx(-np.log10(p[p > 0].min()), rel=1e-12)
    assert "1 with p = 0 clipped at the smallest p (triangles)" in ax.get_title()


def test_neg_log10_p_matches_direct_formula():
    z = np.array([0.0, 1.0, 1.959963984540054, 5.0, 30.0])
    np.testing.assert_allclose(neg_log10_p(z), -np.log10(2 * norm.sf(z)), rtol=1e-10)
    np.testing.assert_allclose(neg_log10_p(z, 4.0), -np.log10(2 * t_dist.sf(z, 4.0)), rtol=1e-10)
    np.testing.assert_allclose(neg_log10_p([-1.959963984540054]), [-np.log10(0.05)], rtol=1e-10)
    # 2 * Phi(-45) underflows to 0; the asymptotic tail phi(z) / z gives log10 p = -441.47
    assert neg_log10_p([45.0])[0] == pytest.approx(441.475, abs=0.002)
    assert np.isnan(neg_log10_p([np.nan])[0])


def test_volcano_errors(fitted):
    with pytest.raises(KeyError, match="color_by column 'nope' not in adata.var"):
        scglmm.pl.volcano(fitted, color_by="nope", show=False)
    with pytest.raises(ValueError, match="was not run with groupby"):
        scglmm.pl.volcano(fitted, group="A", show=False)
    with pytest.raises(ValueError, match="p_threshold must lie strictly between 0.0 and 1.0"):
        scglmm.pl.volcano(fitted, p_threshold=1.5, show=False)
    with pytest.raises(KeyError, match="no scglmm results under key 'other'"):
        scglmm.pl.volcano(fitted, key="other", show=False)


# ------------------------------------------------------------------------------------------------
# donor effects
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["scglmm", "sf"])
def test_donor_effects_content(fitted, tmp_path, key):
    adata = fitted
    if key == "sf":
        adata = fitted.copy()
        # every gene gets an estimate (a separated one with the weak prior): no warning
        scglmm.tl.fit(adata, "~ condition + (1 | donor)", size_factors="libsize", key_added="sf", progress=False)
    # the library sizes (libsize, or each cell's total count) times the TMM factor of the cell's sample
    log_off = np.asarray(adata.uns[key]["log_offset"])
    gene = "G00001"
    out = tmp_path / "donors.png"
    ax = scglmm.pl.donor_effects(adata, gene, key=key, color_by="condition", show=False, save=out)
    _check_png(out)
    assert_no_overlap(ax.figure)
    assert ax.get_ylabel() == "donor effect on log mean (natural log)"
    assert ax.get_xlabel() == "donor (donor)"

    g = adata.var_names.get_loc(gene)
    y = np.asarray(adata.X[:, g].toarray()).ravel()
    stim = (adata.obs["condition"] == "stim").to_numpy(float)
    b0, b1 = adata.varm[f"{key}_coef"].iloc[g].to_numpy()
    fitrow = adata.varm[f"{key}_fit"].iloc[g]
    sigma2, theta = fitrow["sigma2"], fitrow["theta"]
    assert sigma2 > 0.05
    modes = adata.varm[f"{key}_donor_effects"].iloc[g]
    donors = adata.obs["donor"].astype(str).to_numpy()
    eta = b0 + b1 * stim + log_off
    raw, sd = {}, {}
    for d in modes.index:
        m = donors == d
        mu = np.exp(eta[m] + modes[d])
        # the stored mode solves the inner score equation; this checks the rebuilt offset too
        score = np.sum(theta * (y[m] - mu) / (theta + mu)) - modes[d] / sigma2
        assert abs(score) < 1e-3 * np.sum(y[m])
        H = np.sum(theta * mu * (theta + y[m]) / (theta + mu) ** 2) + 1 / sigma2
        sd[d] = 1 / np.sqrt(H)
        raw[d] = np.log(y[m].sum() / np.exp(eta[m]).sum())

    # x tick labels: donors grouped by condition (ctrl first), each group sorted by mode
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    ctrl = sorted(["D01", "D02", "D03"], key=lambda d: modes[d])
    stim_d = sorted(["D04", "D05", "D06"], key=lambda d: modes[d])
    assert ticks == ctrl + stim_d
    # the error bars: one container per condition, with the stored modes and +-1.96 cond. SD
    assert len(ax.containers) == 2
    colours = []
    for cont, ds in zip(ax.containers, (ctrl, stim_d), strict=True):
        line = cont.lines[0]
        np.testing.assert_allclose(line.get_ydata(), [modes[d] for d in ds], rtol=1e-12)
        segs = cont.lines[2][0].get_segments()
        half = [0.5 * (s[1, 1] - s[0, 1]) for s in segs]
        np.testing.assert_allclose(half, [1.96 * sd[d] for d in ds], rtol=1e-6)
        colours.append(to_rgba(line.get_color()))
    assert colours[0] != colours[1]
    # the open diamonds: raw log ratios, coloured as their group
    dia = _points(ax)
    assert len(dia) == 2
    assert sum(len(c.get_offsets()) for c in dia) == 6
    for c, ds, col in zip(dia, (ctrl, stim_d), colours, strict=True):
        # rtol 1e-6: the test's library sizes are float32 sums
        np.testing.assert_allclose(c.get_offsets()[:, 1], [raw[d] for d in ds], rtol=1e-6)
        assert to_rgba(c.get_edgecolor()[0]) == col
    # shrinkage: the modes are closer to 0 than the raw ratios on average
    assert np.mean(np.abs(modes.to_numpy())) < np.mean(np.abs([raw[d] for d in modes.index]))
    # the model band is +-1.96 sigma
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("model spread" in t for t in legend)
    assert any(t.startswith("raw log(observed / fixed-effect fit)") for t in legend)
    assert "conditional mode ± 1.96 cond. SD (condition = ctrl)" in legend


def test_donor_effects_no_colour_and_errors(fitted):
    ax = scglmm.pl.donor_effects(fitted, "G00002", show=False)
    assert_no_overlap(ax.figure)
    assert len(ax.containers) == 1
    assert len(ax.containers[0].lines[0].get_ydata()) == 6
    with pytest.raises(ValueError, match="must be constant within each donor"):
        scglmm.pl.donor_effects(fitted, "G00002", color_by="covariate", show=False)
    with pytest.raises(KeyError, match="gene 'nope' found 0 times"):
        scglmm.pl.donor_effects(fitted, "nope", show=False)
    with pytest.raises(ValueError, match="has no estimate"):
        scglmm.pl.donor_effects(fitted, "G00019", show=False)


def test_donor_effects_needs_offset_array_again(fitted):
    adata = fitted[:, :3].copy()
    off = np.log(adata.obs["libsize"].to_numpy())
    scglmm.tl.fit(adata, "~ condition + (1 | donor)", offset=off, key_added="arr", progress=False)
    adata.uns["arr"].pop("log_offset", None)  # as after a fit that did not store its offset
    with pytest.raises(ValueError, match="cannot rebuild the offset"):
        scglmm.pl.donor_effects(adata, "G00001", key="arr", show=False)
    ax = scglmm.pl.donor_effects(adata, "G00001", key="arr", offset=off, show=False)
    modes = adata.varm["arr_donor_effects"].loc["G00001"]
    drawn = ax.containers[0].lines[0].get_ydata()
    np.testing.assert_allclose(np.sort(drawn), np.sort(modes.to_numpy()), rtol=1e-12)


@pytest.mark.parametrize("figsize", [None, (3.5, 3.0)])
def test_donor_effects_legend_with_donors_without_counts(figsize):
    """The reference set of tests/data/reference_small fitted with (1 | donor): G0057 has no counts in
    2 donors. Their note is the legend's title, and the legend lies under the x label, over nothing."""
    import anndata as ad

    from scglmm.pl._utils import LEGEND

    path = Path(__file__).parent / "data" / "reference_small" / "data.h5ad"
    adata = ad.read_h5ad(path)[:, ["G0057", "G0001"]].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        scglmm.tl.fit(adata, "~ condition + covariate + (1 | donor)", size_factors="libsize", progress=False)
    for color_by in (None, "condition"):
        ax = scglmm.pl.donor_effects(adata, "G0057", color_by=color_by, figsize=figsize, show=False)
        assert_no_overlap(ax.figure)
        legend = ax.get_legend()
        assert legend.get_title().get_text() == "2 donor(s) without counts: no raw value"
        texts = [t.get_text() for t in legend.get_texts()]
        assert "raw log(observed / fixed-effect fit)" in texts
        assert [t for t in texts if t.startswith("conditional mode")]
        assert legend.get_texts()[0].get_fontsize() == LEGEND["fontsize"]
        renderer = ax.figure.canvas.get_renderer()
        assert legend.get_window_extent(renderer).y1 <= ax.xaxis.label.get_window_extent(renderer).y0
        plt.close("all")
    # no levels without counts: no legend title
    ax = scglmm.pl.donor_effects(adata, "G0001", show=False)
    assert_no_overlap(ax.figure)
    assert ax.get_legend().get_title().get_text() == ""


# ------------------------------------------------------------------------------------------------
# calibration plots
# ------------------------------------------------------------------------------------------------
def test_pvalue_qq_content(fitted, tmp_path):
    out = tmp_path / "qq.png"
    ax = scglmm.pl.pvalue_qq(fitted, show=False, save=out)
    _check_png(out)
    assert_no_overlap(ax.figure)
    assert "expected" in ax.get_xlabel()
    assert "observed" in ax.get_ylabel()
    res = scglmm.get.results(fitted)
    p = res["p_value"].dropna().to_numpy()
    n = p.size
    (pts,) = _points(ax)
    xy = pts.get_offsets()
    assert len(xy) == n
    assert n >= 17
    np.testing.assert_allclose(xy[:, 0], -np.log10(np.arange(1, n + 1) / (n + 1)), rtol=1e-12)
    np.testing.assert_allclose(xy[:, 1], np.sort(-np.log10(p))[::-1], rtol=1e-9)
    band = [c for c in ax.collections if not isinstance(c, PathCollection)]
    assert len(band) == 1
    lam = np.median(norm.isf(p / 2) ** 2) / 0.454936423119572
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"condition[T.stim] (lambda = {lam:.2f})" in legend
    assert "95% pointwise band (uniform)" in legend
    assert f"({20 - n} with no estimate not shown)" in ax.get_title()


def test_pvalue_qq_band_covers_uniform():
    """On exactly uniform p-values every point lies inside the 95 % pointwise band."""
    n = 200
    p = (np.arange(1, n + 1) - 0.5) / n
    z = norm.isf(p / 2)
    genes = pd.Index([f"g{i}" for i in range(n)])
    import anndata as ad

    adata = ad.AnnData(np.zeros((2, n), dtype=np.float32), var=pd.DataFrame(index=genes))
    params = {"design_columns": ["Intercept", "x"], "calibration": "z", "df": {"Intercept": np.inf, "x": np.inf}}
    params["formula"] = "~ x + (1 | donor)"
    adata.uns["u"] = {"params": params}
    adata.varm["u_coef"] = pd.DataFrame({"Intercept": 0.0, "x": z}, index=genes)
    adata.varm["u_se"] = pd.DataFrame({"Intercept": 1.0, "x": np.ones(n)}, index=genes)
    adata.varm["u_stat"] = pd.DataFrame({"Intercept": 0.0, "x": z}, index=genes)  # what every fit stores
    adata.varm["u_pval"] = pd.DataFrame({"Intercept": 1.0, "x": p}, index=genes)
    adata.varm["u_fit"] = pd.DataFrame({"sigma2": 0.1, "dispersion": 0.1, "status": "ok"}, index=genes)
    ax = scglmm.pl.pvalue_qq(adata, key="u", show=False)
    assert_no_overlap(ax.figure)
    band = next(c for c in ax.collections if not isinstance(c, PathCollection))
    verts = band.get_paths()[0].vertices
    xy = _points(ax)[0].get_offsets()
    for x, y in xy:
        ys = verts[np.isclose(verts[:, 0], x), 1]
        assert ys.min() - 1e-9 <= y <= ys.max() + 1e-9
    lam_text = next(t.get_text() for t in ax.get_legend().get_texts() if "lambda" in t.get_text())
    assert lam_text == "x (lambda = 1.00)"


def test_pvalue_hist_content(fitted, tmp_path):
    out = tmp_path / "hist.png"
    ax = scglmm.pl.pvalue_hist(fitted, bins=10, show=False, save=out)
    _check_png(out)
    assert_no_overlap(ax.figure)
    assert ax.get_xlabel() == "p-value"
    assert ax.get_ylabel() == "number of genes"
    p = scglmm.get.results(fitted)["p_value"].dropna().to_numpy()
    heights = np.array([r.get_height() for r in ax.patches])
    assert heights.size == 10
    assert heights.sum() == p.size
    np.testing.assert_array_equal(heights, np.histogram(p, bins=np.linspace(0, 1, 11))[0])
    (line,) = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert line.get_ydata()[0] == pytest.approx(p.size / 10)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"p < 0.05: {np.mean(p < 0.05):.1%} of genes (expected 5%)" in legend
    with pytest.raises(ValueError, match="bins must be a positive integer"):
        scglmm.pl.pvalue_hist(fitted, bins=0, show=False)


def test_show_none_follows_scanpy_autoshow(fitted, monkeypatch):
    import scanpy as sc

    shown = []
    monkeypatch.setattr(plt, "show", lambda: shown.append(1))
    before = sc.settings.autoshow
    try:
        sc.settings.autoshow = True
        assert scglmm.pl.pvalue_hist(fitted) is None
        assert shown == [1]
        sc.settings.autoshow = False
        assert scglmm.pl.pvalue_hist(fitted) is not None
        assert shown == [1]
        assert scglmm.pl.pvalue_hist(fitted, show=True) is None
        assert shown == [1, 1]
    finally:
        sc.settings.autoshow = before


def test_plots_of_a_groupby_fit(fitted):
    adata = fitted[:, :4].copy()
    adata.obs["half"] = np.where(np.arange(adata.n_obs) % 2 == 0, "even", "odd")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        scglmm.tl.fit(
            adata, "~ condition + (1 | donor)", groupby="half", key_added="gb", size_factors="libsize", progress=False,
            store_modes=True,
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"choose one group with group=, one of \['even', 'odd'\]"):
        scglmm.pl.donor_effects(adata, "G00001", key="gb", show=False)
    with pytest.raises(ValueError, match="choose one group with group="):
        scglmm.pl.volcano(adata, key="gb", show=False)
    with pytest.raises(KeyError, match="not fitted under key 'gb'"):
        scglmm.pl.pvalue_hist(adata, key="gb", group="third", show=False)
    ax = scglmm.pl.donor_effects(adata, "G00001", key="gb", group="odd", color_by="condition", show=False)
    assert_no_overlap(ax.figure)
    # the raw ratios use only the odd cells and the offset stored for the whole fit
    sub = "gb:odd"
    odd = (adata.obs["half"] == "odd").to_numpy()
    y = np.asarray(adata.X[:, 1].toarray()).ravel()[odd]
    off = np.asarray(adata.uns["gb"]["log_offset"])[odd]
    stim = (adata.obs["condition"].to_numpy()[odd] == "stim").astype(float)
    b0, b1 = adata.varm[f"{sub}_coef"].loc["G00001"].to_numpy()
    donors = adata.obs["donor"].astype(str).to_numpy()[odd]
    raw = {d: np.log(y[donors == d].sum() / np.exp(b0 + b1 * stim + off)[donors == d].sum()) for d in set(donors)}
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    drawn = np.concatenate([c.get_offsets()[:, 1] for c in _points(ax)])
    finite = [raw[d] for d in ticks if np.isfinite(raw[d])]
    np.testing.assert_allclose(drawn, finite, rtol=1e-9)
    # the volcano of one group shows that group's genes and p-values
    ax = scglmm.pl.volcano(adata, key="gb", group="even", lfc_threshold=0.0, show=False)
    res = scglmm.get.results(adata, key="gb", group="even")
    assert _n_points(ax) == int(res["p_value"].notna().sum())
    assert ax.get_title().startswith("stim vs ctrl [even]:")  # issue 14: was "condition[T.stim] [even]:"
    ys = np.sort(np.concatenate([c.get_offsets()[:, 1] for c in _points(ax)]))
    np.testing.assert_allclose(ys, np.sort(-np.log10(res["p_value"].dropna())), rtol=1e-9)


def test_plots_of_a_tested_contrast(fitted):
    adata = fitted.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        name = scglmm.tl.test(adata, "condition[T.stim]", method="lrt", progress=False)
    res = scglmm.get.results(adata, contrast=name)
    # a gene whose condition effect diverged (partial_separation, issue 14) has an LRT p-value
    # but no fold change to place it by: the volcano leaves it out and says so
    ok = res["p_value"].notna() & res["log2_fc"].notna()
    ax = scglmm.pl.volcano(adata, contrast=name, lfc_threshold=0.0, show=False)
    assert _n_points(ax) == int(ok.sum())
    assert f"{int((~ok).sum())} with no estimate not shown" in ax.get_title()
    assert ax.get_xlabel() == f"log2 fold change ({name})"
    ys = np.sort(np.concatenate([c.get_offsets()[:, 1] for c in _points(ax)]))
    np.testing.assert_allclose(ys, np.sort(-np.log10(res.loc[ok, "p_value"])), rtol=1e-9)
    ax = scglmm.pl.pvalue_qq(adata, contrast=name, show=False)
    assert len(_points(ax)[0].get_offsets()) == int(res["p_value"].notna().sum())  # every p-value
    # a likelihood-ratio p-value that underflowed gets its chi-square height
    from scglmm.pl._utils import height as _height

    fake = res.copy()
    g = fake.index[0]
    fake.loc[g, "p_value"] = 0.0
    fake.loc[g, "stat"] = 2000.0
    fake.loc[g, "df"] = 1.0
    y, clipped = _height(fake)
    assert not clipped.any()
    # chi-square(1) of 2000 is z = sqrt(2000) two-sided: 436.043 (the sf itself underflows to 0)
    assert chi2.sf(2000.0, 1) == 0.0
    assert y[0] == pytest.approx(neg_log10_p([np.sqrt(2000.0)])[0], rel=1e-6)
    # with 3 degrees of freedom where scipy still has it: the same as chi2.logsf
    fake.loc[g, "stat"] = 1400.0
    fake.loc[g, "df"] = 3.0
    y, _ = _height(fake)
    assert y[0] == pytest.approx(-chi2.logsf(1400.0, 3) / np.log(10.0), rel=1e-9)


def test_plots_after_an_h5ad_round_trip(fitted, tmp_path):
    """What the CLI and Snakemake write is read back and plotted the same."""
    import anndata as ad

    path = tmp_path / "fit.h5ad"
    fitted.write_h5ad(path)
    back = ad.read_h5ad(path)
    for func in (scglmm.pl.volcano, scglmm.pl.pvalue_qq):
        a = np.concatenate([c.get_offsets() for c in _points(func(fitted, show=False))])
        b = np.concatenate([c.get_offsets() for c in _points(func(back, show=False))])
        np.testing.assert_array_equal(a, b)
    a = scglmm.pl.donor_effects(fitted, "G00001", color_by="condition", show=False)
    b = scglmm.pl.donor_effects(back, "G00001", color_by="condition", show=False)
    for ca, cb in zip(_points(a), _points(b), strict=True):
        np.testing.assert_allclose(ca.get_offsets(), cb.get_offsets(), rtol=1e-12)
    assert [t.get_text() for t in a.get_xticklabels()] == [t.get_text() for t in b.get_xticklabels()]


# ------------------------------------------------------------------------------------------------
# summary across the groups of a groupby fit
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lfc_threshold", [1.0, 0.0])
def test_groups_summary_content(by_type, tmp_path, lfc_threshold):
    out = tmp_path / "groups.png"
    axes = scglmm.pl.groups_summary(by_type, lfc_threshold=lfc_threshold, n_top=8, show=False, save=out)
    _check_png(out)
    assert_no_overlap(axes["counts"].figure)
    assert set(axes) == {"counts", "heatmap", "colorbar"}
    res = scglmm.get.results(by_type)  # all groups, stacked
    groups = ["A", "B", "C"]
    # bars: DE genes up and down per group, as get.results calls them
    called = (res["adj_p_value"] < 0.05) & (res["log2_fc"].abs() >= lfc_threshold)
    n_up = [int((called & (res["log2_fc"] > 0) & (res["group"] == g)).sum()) for g in groups]
    n_down = [int((called & (res["log2_fc"] < 0) & (res["group"] == g)).sum()) for g in groups]
    assert sum(n_up) + sum(n_down) >= 6
    ax = axes["counts"]
    for gid, expected in (("up", n_up), ("down", n_down)):
        bars = [p for p in ax.patches if p.get_gid() == gid]
        assert [b.get_height() for b in bars] == expected
        assert [round(b.get_x() + b.get_width() / 2) for b in bars] == [0, 1, 2]
    assert "stim vs ctrl by cell_type" in ax.get_title()
    assert f"|log2 FC| >= {lfc_threshold:g}" in ax.get_title()
    # heatmap: rows = top genes (DE somewhere, by smallest adj. p), columns = groups, log2 FC
    hm = axes["heatmap"]
    rows = [t.get_text() for t in hm.get_yticklabels()]
    assert [t.get_text() for t in hm.get_xticklabels()] == groups
    best = res[called].groupby(level=0)["adj_p_value"].min().sort_values(kind="stable")
    assert len(rows) == min(8, len(best))
    assert set(rows) <= set(best.index)
    np.testing.assert_array_equal(np.sort(best[rows].to_numpy()), best[rows].to_numpy())
    assert len(best) > len(rows)
    assert best[rows].max() <= best.drop(rows).min()
    (image,) = hm.images
    values = image.get_array()
    for i, gene in enumerate(rows):
        for j, g in enumerate(groups):
            stored = by_type.varm[f"scglmm:{g}_coef"].loc[gene, "condition[T.stim]"] / np.log(2.0)
            if np.isfinite(stored):
                assert values[i, j] == pytest.approx(stored, rel=1e-12)
            else:
                assert values.mask[i, j]
    # colour scale symmetric about 0; dots on the DE cells
    lo, hi = image.get_clim()
    assert lo == pytest.approx(-hi)
    (dots,) = [c for c in hm.collections if c.get_gid() == "called"]
    expected = {(j, i) for i, gene in enumerate(rows) for j, g in enumerate(groups) if called[res["group"] == g][gene]}
    assert {tuple(map(int, xy)) for xy in dots.get_offsets()} == expected


def test_groups_summary_shows_missing_values(by_type):
    """Gene 12 has no counts in type C: its C cell is missing (grey), the others are drawn."""
    res = scglmm.get.results(by_type, group=["A", "B", "C"]).loc["G00012"].set_index("group")
    assert np.isnan(res.loc["C", "log2_fc"])
    assert (res.loc[["A", "B"], "adj_p_value"] < 0.05).any()  # DE elsewhere: among the top genes
    axes = scglmm.pl.groups_summary(by_type, lfc_threshold=0.0, n_top=24, show=False)
    hm = axes["heatmap"]
    assert_no_overlap(hm.figure)
    rows = [t.get_text() for t in hm.get_yticklabels()]
    values = hm.images[0].get_array()
    i = rows.index("G00012")
    assert values.mask[i, 2]
    assert not values.mask[i, :2].any()
    np.testing.assert_allclose(values[i, :2], res.loc[["A", "B"], "log2_fc"], rtol=1e-12)
    # the missing colour is grey, not a colour of the scale
    assert to_rgba(hm.images[0].get_cmap().get_bad()) == to_rgba("0.82")
    assert "grey: no estimate" in hm.get_title()


def test_groups_summary_into_ax_and_errors(by_type, fitted):
    adata = by_type.copy()
    adata.var["gene_symbol"] = [f"sym{i}" for i in range(adata.n_vars)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 5))
    axes = scglmm.pl.groups_summary(adata, n_top=5, gene_symbols="gene_symbol", ax=right, show=False)
    assert right not in fig.axes
    assert left in fig.axes
    assert {axes[k] for k in axes} <= set(fig.axes)
    assert axes["heatmap"].get_position().x0 >= left.get_position().x1
    assert {t.get_text() for t in axes["heatmap"].get_yticklabels()} <= set(adata.var["gene_symbol"])
    assert len(axes["heatmap"].get_yticklabels()) == 5
    with pytest.raises(ValueError, match="was not run with groupby") as err:
        scglmm.pl.groups_summary(fitted, show=False)
    assert err.value.param == "key"
    with pytest.raises(ValueError, match="alpha must lie strictly between") as err:
        scglmm.pl.groups_summary(by_type, alpha=0.0, show=False)
    assert err.value.param == "alpha"
    with pytest.raises(ValueError, match="n_top must be a positive integer") as err:
        scglmm.pl.groups_summary(by_type, n_top=0, show=False)
    assert err.value.param == "n_top"
    with pytest.raises(ValueError, match="lfc_threshold must be a non-negative") as err:
        scglmm.pl.groups_summary(by_type, lfc_threshold=-1.0, show=False)
    assert err.value.param == "lfc_threshold"


def test_groups_summary_colour_scale_ignores_one_extreme_gene(by_type):
    """A near-separated gene with a log2 FC of 19 in one group must not set the colour scale of all the others."""
    adata = by_type.copy()
    axes = scglmm.pl.groups_summary(adata, lfc_threshold=0.0, n_top=24, show=False)
    rows = [t.get_text() for t in axes["heatmap"].get_yticklabels()]
    before = axes["heatmap"].images[0].get_clim()[1]
    adata.varm["scglmm:A_coef"].loc[rows[0], "condition[T.stim]"] = 19.0 * np.log(2.0)
    axes = scglmm.pl.groups_summary(adata, lfc_threshold=0.0, n_top=24, show=False)
    (image,) = axes["heatmap"].images
    values = np.abs(image.get_array().compressed())
    lo, hi = image.get_clim()
    assert lo == pytest.approx(-hi) and hi < 19.0 / 2
    assert hi == pytest.approx(np.quantile(values, 0.95), rel=1e-12) and hi == pytest.approx(before, rel=0.5)
    assert axes["colorbar"].get_children() and image.colorbar.extend == "both"
    assert_no_overlap(axes["counts"].figure)
