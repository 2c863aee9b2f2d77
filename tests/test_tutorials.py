"""The tutorials in tutorials/ execute top to bottom (nbclient), and are stored executed, with their outputs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(p.name for p in TUTORIALS.glob("*.ipynb"))


def _run(name: str):
    nb = nbformat.read(TUTORIALS / name, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=900,
        kernel_name="python3",
        resources={"metadata": {"path": str(TUTORIALS)}},  # notebooks find data relative to their folder
    )
    client.execute()
    return nb


def _text(nb) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                out.append(o["text"])
            elif "data" in o and "text/plain" in o["data"]:
                out.append(o["data"]["text/plain"])
    return "\n".join(out)


def test_tutorials_exist():
    assert {
        "01_scanpy_workflow.ipynb",
        "02_array_api.ipynb",
        "03_snakemake.ipynb",
        "04_paired_random_slope.ipynb",
        "05_composition.ipynb",
    } <= set(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_stored_executed_with_outputs(name):
    # the docs render the notebooks as stored (no execution at build time), so they are stored
    # executed, top to bottom, with their outputs (refresh with `python tutorials/execute.py`)
    nb = nbformat.read(TUTORIALS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    assert [c.get("execution_count") for c in code] == list(range(1, len(code) + 1))
    assert sum(bool(c.get("outputs")) for c in code) >= len(code) // 2
    assert not any(o.get("output_type") == "error" for c in code for o in c.get("outputs", []))


def test_scanpy_workflow_stores_its_figures():
    nb = nbformat.read(TUTORIALS / "01_scanpy_workflow.ipynb", as_version=4)
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 2


def test_scanpy_workflow_runs_and_wilcoxon_finds_what_is_not_there():
    nb = _run("01_scanpy_workflow.ipynb")
    text = _text(nb)
    m = re.search(r"hits where there is nothing to find: Wilcoxon (\d+), scglmm (\d+)", text)
    assert m is not None, text[-2000:]
    n_wil, n_glmm = int(m[1]), int(m[2])
    # On this fake 4-vs-4 donor split the cell-level Wilcoxon test reports about a hundred genes
    # (109 when written) and scglmm none; the bounds leave room for library changes.
    assert n_wil >= 30
    assert n_glmm <= 5
    assert n_wil > 5 * max(n_glmm, 1)
    m = re.search(r"(\d+) of (\d+) genes at adjusted p < 0.05", text)
    assert m is not None
    assert int(m[2]) == 1000
    # interferon-beta stimulation changes most monocyte genes; ISG15 leads the stim table
    assert int(m[1]) > 500
    assert "ISG15" in text


def test_array_api_runs_and_matches_the_loop():
    nb = _run("02_array_api.ipynb")
    text = _text(nb)
    assert "same estimates as the loop: True" in text
    m = re.search(r"called at adjusted p < 0.05: (\d+); of them truly DE: (\d+); truly DE in all: (\d+)", text)
    assert m is not None
    called, true_pos, n_de = (int(x) for x in m.groups())
    assert n_de == 12
    assert true_pos >= 6
    assert called - true_pos <= 3


def test_snakemake_tutorial_runs_the_rule():
    pytest.importorskip("snakemake")
    nb = _run("03_snakemake.ipynb")
    text = _text(nb)
    assert "snakemake exit code: 0" in text
    assert "outputs: ['kang.scglmm.h5ad', 'kang.scglmm.tsv']" in text
    assert "exit code: 0 | True" in text  # the second run has nothing to do
    # the run with a typo in the formula fails, says why, and leaves no output
    assert "snakemake exit code: 1" in text
    assert "last line of the log: Error: --formula: column(s) ['conditon']" in text
    assert "outputs left behind: []" in text


def test_paired_random_slope_runs_and_the_label_swap_finds_nothing():
    nb = _run("04_paired_random_slope.ipynb")
    text = _text(nb)
    assert "'slope_df': {'condition[T.stim]': 7.0}" in text  # 8 donors - 1: the paired t test's df
    m = re.search(
        r"adjusted p < 0.05: (\d+) of (\d+) genes with \(1 \+ condition \| donor\), (\d+) with \(1 \| donor\)", text
    )
    assert m is not None, text[-2000:]
    n_slope, n_genes, n_intercept = (int(x) for x in m.groups())
    assert n_genes == 300
    # interferon-beta changes most of these genes in every donor (273 and 290 when written); the
    # random slope, which tests against the spread of the donors' responses, calls fewer
    assert 200 <= n_slope < n_intercept
    # labels swapped in 4 of 8 donors: the average response is gone (23 and 0 genes when written)
    swapped = {
        name: int(re.search(rf"label swap, {re.escape(name)}: (\d+) of 300 genes", text)[1])
        for name in ("(1 | donor)", "(1 + condition | donor)")
    }
    assert swapped["(1 + condition | donor)"] <= 2
    assert swapped["(1 | donor)"] >= 10


def test_composition_tutorial_runs_and_finds_the_monocytes_falling():
    nb = _run("05_composition.ipynb")
    text = _text(nb)
    line = r"^([\w ]+): log OR ([-+][\d.]+) \(SE ([\d.]+)\), odds ratio [\d.]+, p = ([\d.]+)"
    effects = {m[1]: (float(m[2]), float(m[3]), float(m[4])) for m in re.finditer(line, text, re.M)}
    assert set(effects) == {"CD14 Mono", "CD4 Naive T", "DC", "B"}, text[-2000:]
    # the paired design, (1 | donor) + (1 | donor:sample), 8 donors: CD14 monocytes lose share in all
    # 8 donors (log OR -0.205, p 0.0015 by lrt_fn on F(1, 7) when written), naive CD4 T cells gain in all
    # 8 (+0.372, p 0.011); DCs fall (-0.340, p 0.015), B cells rise (+0.221, p 0.011)
    log_or, se, p = effects["CD14 Mono"]
    assert -0.3 < log_or < -0.12 and 0 < se < 0.08 and 0 < p < 0.01
    log_or, se, p = effects["CD4 Naive T"]
    assert 0.2 < log_or < 0.55 and 0 < p < 0.05
    assert effects["DC"][0] < 0 < effects["B"][0]
    assert all(0 < p < 0.1 for _, _, p in effects.values())
    assert "CD14 Mono share falls in 8 of 8 donors; CD4 Naive T share rises in 8 of 8" in text
    m = re.search(r"types at p < 0.05: (\d+) of 13 \| at adjusted p < 0.05: (\d+)", text)
    assert m is not None
    assert 2 <= int(m[1]) <= 6
    assert 1 <= int(m[2]) <= int(m[1])  # 13 types, 8 donors: 4 when written, 3 of them at 0.048
    assert re.search(r"CD14 Mono: .*adjusted p = 0\.0[0-4]\d", text)
    # without the sample term, and with cells as independent, more types come out (6 and 5 vs 4)
    m = re.search(
        r"\{'default \(sample term, lrt_fn\)': (\d+), 'no sample term \(z\)': (\d+), "
        r"'binomial GLM \(cells independent\)': (\d+)\}",
        text,
    )
    assert m is not None
    default, nosample, glm = (int(x) for x in m.groups())
    assert nosample > default and glm > default
    # against B, NK and naive CD4 T cells (naive CD4 T rising), every other type's log OR is lower
    assert "types with a lower log odds ratio against the reference: 10 of 10" in text
    stored = nbformat.read(TUTORIALS / "05_composition.ipynb", as_version=4)
    assert any("image/png" in o.get("data", {}) for c in stored.cells for o in c.get("outputs", []))
