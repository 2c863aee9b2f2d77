"""Calibration and power of the composition tests (issue 21 item 4).

    python benchmarks/composition_calibration.py            # the study (~10 min on 2 loaded cores)
    python benchmarks/composition_calibration.py --reps 10  # a quick check

Data: :func:`scglmm.datasets.simulate_composition` (multinomial-logit shares with donor variation on the
logit scale, 10 types, ~2,000 cells per sample; paired designs add sample effects). Null scenarios
(no effect): unpaired 3, 5, 6 and 10 donors per group; paired 6 and 10 donors (each in both conditions).
Power: the same designs with logit effects +0.8, -0.7, +0.6 on three types (power on those three).

Methods: scglmm's binomial GLMM per type (each against all others), ``~ condition + (1 | donor)``
(paired: ``+ (1 | donor:sample)``) tested by Wald ``z``, Wald ``t`` on the between-donor df, ``lrt``
(chi-square 1) and ``lrt_f`` (LR on F(1, df)); for the paired designs the same model without the sample
term (``nosample_t``, ``nosample_lrt``); a binomial GLM without random effects (``glm``, Wald z); a t-test
on per-sample logit proportions (``logit_t``; paired: on the donors' differences, as propeller); and a
Wilcoxon test on the proportions (``wilcoxon``; paired: signed rank).

Writes ``benchmarks/results/composition_calibration.csv`` (every rate) and ``.md`` (the tables).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from scipy.special import expit

from scglmm.datasets import simulate_composition
from scglmm.tl._composition import composition_table

OUT = Path(__file__).resolve().parent / "results"
EFFECT = {1: 0.8, 4: -0.7, 7: 0.6}
SCENARIOS = [("unpaired", 3), ("unpaired", 5), ("unpaired", 6), ("unpaired", 10), ("paired", 6), ("paired", 10)]
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


def one_replicate(design: str, donors: int, seed: int, effect: dict | None) -> pd.DataFrame:
    """p-values of every method for every type of one simulated data set (long format)."""
    paired = design == "paired"
    counts, sobs = simulate_composition(n_donors=donors, paired=paired, effect=effect, seed=seed)
    stim = (sobs["condition"] == "stim").to_numpy(float)
    res = composition_table(counts, sobs, PAIRED if paired else UNPAIRED)
    pv = {m: np.asarray(res[f"p_{m}"])[:, 1] for m in ("z", "t", "lrt", "lrt_f")}
    if paired:
        red = composition_table(counts, sobs, UNPAIRED)
        pv["nosample_t"] = np.asarray(red["p_t"])[:, 1]
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


def study(reps: int) -> pd.DataFrame:
    """Rejection rates at 0.05 (and 0.01) of every method in every scenario, null and power."""
    out = []
    for kind, effect in (("null", None), ("power", EFFECT)):
        for design, donors in SCENARIOS:
            t0 = time.time()
            long = pd.concat(
                [one_replicate(design, donors, 1000 * donors + r + (0 if design == "unpaired" else 500), effect)
                 for r in range(reps)]
            )  # fmt: skip
            sub = long if kind == "null" else long[long["changing"]]
            rate = sub.groupby("method")["p"].agg(
                rate_05=lambda p: float(np.mean(p < 0.05)), rate_01=lambda p: float(np.mean(p < 0.01)), n="size"
            )
            rate["kind"], rate["design"], rate["donors"] = kind, design, donors
            rate["not_ok"] = float(np.mean(long["status"] != "ok"))
            out.append(rate.reset_index())
            print(f"{kind} {design} {donors}: {time.time() - t0:.0f} s", flush=True)
    return pd.concat(out, ignore_index=True)


def report(tab: pd.DataFrame, reps: int, seconds: float) -> str:
    """The markdown tables of the study."""
    lines = [
        "# Composition tests: calibration and power (issue 21 item 4)",
        "",
        f"`python benchmarks/composition_calibration.py --reps {reps}` ({seconds / 60:.0f} min). Rates of p < 0.05;",
        f"null: {reps} data sets x 10 types per scenario (SE about 0.007 at 0.05); power: the 3 changing types.",
        "Columns: design and donors per group (paired: donors, each in both conditions).",
        "",
    ]
    for kind in ("null", "power"):
        wide = tab[tab["kind"] == kind].pivot_table(index="method", columns=["design", "donors"], values="rate_05")
        lines += [f"## {kind}", "", wide.round(3).to_markdown(), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=100)
    args = parser.parse_args()
    t0 = time.time()
    tab = study(args.reps)
    OUT.mkdir(exist_ok=True)
    tab.to_csv(OUT / "composition_calibration.csv", index=False)
    (OUT / "composition_calibration.md").write_text(report(tab, args.reps, time.time() - t0))
    print(report(tab, args.reps, time.time() - t0))


if __name__ == "__main__":
    main()
