"""Calibration and power of the composition tests (issue 21 item 4).

    python benchmarks/composition_calibration.py --reps 60 --focus-reps 400  # the study (~10 min, 2 cores)
    python benchmarks/composition_calibration.py --reps 5 --focus-reps 10 --out /tmp/cc  # a quick check

Data: :func:`scglmm.datasets.simulate_composition` (multinomial-logit shares with donor variation on the
logit scale; paired designs add sample effects). Grid: unpaired and paired x 3, 5, 10 donors per group
(paired: donors, each in both conditions) x 5, 10, 20 cell types x a median of 500 or 5,000 cells per
sample; null data sets (no effect) and power data sets with 1, 2 or 3 changing types in turn (logit
effects +0.8, -0.7, +0.6). Focused scenarios (10 types, ~2,000 cells; unpaired 5 and 6, paired 6 and 10)
with more data sets, for the choice of the default test.

Methods: scglmm's binomial GLMM per type (each against all others), ``~ condition + (1 | donor)``
(paired: ``+ (1 | donor:sample)``) tested by Wald ``z``, Wald ``t`` on the between-donor df, ``lrt``
(chi-square 1), ``lrt_f`` (LR on F(1, df), the default before this study), ``lrt_fn`` (the LR turned
into the F statistic it is in the normal linear model of the donors' values, ``df (exp(LR / donors) - 1)``
on F(1, df); the default since), and ``t_reml`` (the Wald statistic with the ML variance's scale undone,
``W df / donors`` on F(1, df); a candidate computed here only); for the paired designs the same model without the sample
term (``nosample_z``, ``nosample_lrt``); a binomial GLM without random effects (``glm``, Wald z); a t-test
on per-sample logit proportions (``logit_t``; paired: on the donors' differences, as propeller); and a
Wilcoxon test on the proportions (``wilcoxon``; paired: signed rank).

Writes ``composition_calibration.csv`` (every rate) and ``.md`` (the tables) to ``--out``
(default ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from scipy.special import expit

from scglmm.datasets import simulate_composition
from scglmm.tl._composition import composition_table

OUT = Path(__file__).resolve().parent / "results"
# power: 1, 2 or 3 changing types (in turn over the replicates), logit effects +0.8, -0.7, +0.6
EFFECTS = ({1: 0.8}, {1: 0.8, 4: -0.7}, {1: 0.8, 4: -0.7, 3: 0.6})
DESIGNS = ("unpaired", "paired")
DONORS = (3, 5, 10)
TYPES = (5, 10, 20)
CELLS = (500, 5000)
GRID = [(d, n, k, c) for d in DESIGNS for n in DONORS for k in TYPES for c in CELLS]
# the focused scenarios of the earlier study (10 types, ~2,000 cells), for the choice of the default test
FOCUS = [("unpaired", 5, 10, 2000), ("unpaired", 6, 10, 2000), ("paired", 6, 10, 2000), ("paired", 10, 10, 2000)]
UNPAIRED = "~ condition + (1 | donor)"
PAIRED = "~ condition + (1 | donor) + (1 | donor:sample)"


def glm_pvalues(counts: pd.DataFrame, stim: np.ndarray) -> np.ndarray:
    """Wald p-values of ``stim`` in a binomial GLM (logit) per type, cells as independent (IRLS)."""
    Y = counts.to_numpy(float)
    n = Y.sum(axis=1)
    X = np.column_stack([np.ones_like(n), stim])
    out = []
    for y in Y.T:
        beta = np.zeros(2)
        for _ in range(30):
            p = expit(X @ beta)
            w = n * p * (1 - p)
            info = X.T @ (X * w[:, None])
            beta = beta + np.linalg.solve(info, X.T @ (y - n * p))
        out.append(2 * stats.norm.sf(abs(beta[1]) / np.sqrt(np.linalg.inv(info)[1, 1])))
    return np.array(out)


def simple_pvalues(counts: pd.DataFrame, sobs: pd.DataFrame, paired: bool) -> dict[str, np.ndarray]:
    """Logit-proportion t-test and Wilcoxon on proportions, per type (paired: within donors)."""
    Y = counts.to_numpy(float)
    n = Y.sum(axis=1, keepdims=True)
    logit = np.log((Y + 0.5) / (n - Y + 0.5))
    prop = Y / n
    stim = (sobs["condition"] == "stim").to_numpy()
    if paired:
        order = np.argsort(sobs["donor"].astype(str).to_numpy(), kind="stable")
        st, ct = order[stim[order]], order[~stim[order]]
        return {
            "logit_t": stats.ttest_rel(logit[st], logit[ct], axis=0).pvalue,
            "wilcoxon": np.array([stats.wilcoxon(prop[st, k], prop[ct, k]).pvalue for k in range(Y.shape[1])]),
        }
    return {
        "logit_t": stats.ttest_ind(logit[stim], logit[~stim], axis=0).pvalue,
        "wilcoxon": stats.mannwhitneyu(prop[stim], prop[~stim], axis=0).pvalue,
    }


def one_replicate(design: str, donors: int, types: int, cells: int, seed: int, effect: dict | None) -> pd.DataFrame:
    """p-values of every method for every type of one simulated data set (long format)."""
    paired = design == "paired"
    counts, sobs = simulate_composition(
        n_donors=donors, n_types=types, paired=paired, effect=effect, seed=seed,
        cells_median=float(cells), cells_range=(max(cells // 5, 50), cells * 4),
    )  # fmt: skip
    stim = (sobs["condition"] == "stim").to_numpy(float)
    res = composition_table(counts, sobs, PAIRED if paired else UNPAIRED)
    pv = {m: np.asarray(res[f"p_{m}"])[:, 1] for m in ("z", "t", "lrt", "lrt_f", "lrt_fn")}
    df = float(np.asarray(res["df"])[1])
    levels = float(sobs["donor"].nunique())
    wald2 = np.asarray(res["wald_stat"])[:, 1] ** 2
    # Wald on F(1, df) with the ML variance's bias undone (variance x levels / df), the REML-like scale
    pv["t_reml"] = stats.f.sf(wald2 * df / levels, 1, df)
    if paired:
        red = composition_table(counts, sobs, UNPAIRED)
        pv["nosample_z"] = np.asarray(red["p_z"])[:, 1]
        pv["nosample_lrt"] = np.asarray(red["p_lrt"])[:, 1]
    pv["glm"] = glm_pvalues(counts, stim)
    pv.update(simple_pvalues(counts, sobs, paired))
    changing = np.isin(np.arange(counts.shape[1]), list((effect or {}).keys()))
    rows = [
        {"method": m, "type": k, "p": float(p[k]), "changing": bool(changing[k]), "status": str(res["status"][k])}
        for m, p in pv.items()
        for k in range(counts.shape[1])
    ]
    return pd.DataFrame(rows)


def scenario(args: tuple) -> list[dict]:
    """Rates of rejection (p < 0.05, 0.01) of every method in one scenario, null and power."""
    design, donors, types, cells, reps = args
    t0 = time.time()
    out = []
    base = 100_000 * DESIGNS.index(design) + 10_000 * donors + 1_000 * TYPES.index(types) if types in TYPES else 0
    base += 97 * cells % 1_000
    for kind in ("null", "power"):
        long = pd.concat([
            one_replicate(design, donors, types, cells, base + r + (50_000 if kind == "power" else 0),
                          None if kind == "null" else EFFECTS[r % 3])
            for r in range(reps)
        ])  # fmt: skip
        sub = long if kind == "null" else long[long["changing"]]
        rate = sub.groupby("method")["p"].agg(
            rate_05=lambda p: float(np.mean(p < 0.05)), rate_01=lambda p: float(np.mean(p < 0.01)), n="size"
        )
        rate = rate.reset_index()
        rate["kind"], rate["design"], rate["donors"], rate["types"], rate["cells"] = kind, design, donors, types, cells
        rate["reps"] = reps
        rate["not_ok"] = float(np.mean(long["status"] != "ok"))
        out += rate.to_dict("records")
    print(f"{design} {donors} donors, {types} types, {cells} cells: {time.time() - t0:.0f} s", flush=True)
    return out


METHODS = ["lrt_fn", "lrt_f", "t", "lrt", "z", "t_reml", "nosample_z", "nosample_lrt", "glm", "logit_t",
           "wilcoxon"]  # fmt: skip


def _wide(tab: pd.DataFrame, kind: str, columns: list[str]) -> str:
    sub = tab[tab["kind"] == kind]
    wide = sub.pivot_table(index="method", columns=columns, values="rate_05").reindex(
        [m for m in METHODS if m in set(sub["method"])]
    )
    return wide.round(3).to_markdown()


def report(tab: pd.DataFrame, reps: int, focus_reps: int, seconds: float) -> str:
    """The markdown tables of the study."""
    grid = tab[tab["study"] == "grid"]
    lines = [
        "# Composition tests: calibration and power (issue 21 item 4)",
        "",
        f"`python benchmarks/composition_calibration.py --reps {reps} --focus-reps {focus_reps}`"
        f" ({seconds / 60:.0f} min on 2 cores). Rates of p < 0.05.",
        "",
        "Simulation: `scglmm.datasets.simulate_composition` (multinomial-logit shares, donor sd per type",
        "0.15-0.7 on the logit scale; paired designs add sample effects, sd 0.1-0.4). Grid: design x donors",
        "per group (paired: donors, each in both conditions) x cell types x median cells per sample.",
        f"Null: {reps} data sets per cell of the grid, every type tested (SE of a rate about",
        f"{np.sqrt(0.05 * 0.95 / (reps * 5)):.3f} with 5 types, {np.sqrt(0.05 * 0.95 / (reps * 20)):.3f} with 20;",
        "types are not independent within a data set). Power: the same designs with 1, 2 or 3 changing types",
        "in turn (logit effects +0.8, -0.7, +0.6), power over the changing types.",
        "",
        "Methods: `lrt_fn` (the default since this study: the LR turned into the F of the normal model of the",
        "donors' values, df (exp(LR / donors) - 1), on F(1, df)), `lrt_f` (the default before: LR on F(1, df),",
        "df = between-donor df), `t` (Wald on t(df)), `lrt` (chi-square 1), `z` (Wald, normal), `t_reml` (Wald",
        "with the ML variance scale undone: W x df / donors on F(1, df); not offered),",
        "`nosample_*` (paired: the model without `(1 | donor:sample)`),",
        "`glm` (binomial GLM, cells independent), `logit_t` (t-test of logit",
        "shares; paired: of the donors' differences), `wilcoxon` (rank-sum; paired: signed-rank).",
        "",
    ]
    for kind in ("null", "power"):
        for design in DESIGNS:
            lines += [f"## {kind}, {design} (columns: donors, types, cells per sample)", ""]
            lines += [_wide(grid[grid["design"] == design], kind, ["donors", "types", "cells"]), ""]
    focus = tab[tab["study"] == "focus"]
    if len(focus):
        lines += [
            f"## focus: 10 types, ~2,000 cells per sample, {focus_reps} data sets (the choice of the default)",
            "",
            "null", "", _wide(focus, "null", ["design", "donors"]), "",
            "power", "", _wide(focus, "power", ["design", "donors"]), "",
        ]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=40, help="data sets per grid cell (null and power each)")
    parser.add_argument("--focus-reps", type=int, default=200, help="data sets per focused scenario")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    t0 = time.time()
    tasks = [(*g, args.reps) for g in GRID] + [(*f, args.focus_reps) for f in FOCUS]
    studies = ["grid"] * len(GRID) + ["focus"] * len(FOCUS)
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(scenario, tasks))
    tab = pd.DataFrame([dict(r, study=s) for s, rows in zip(studies, results, strict=True) for r in rows])
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    tab.to_csv(out / "composition_calibration.csv", index=False)
    text = report(tab, args.reps, args.focus_reps, time.time() - t0)
    (out / "composition_calibration.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
