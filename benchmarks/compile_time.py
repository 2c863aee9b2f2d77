"""Cold-compile time of the README's first command, per numba kernel (issue 14, item 3).

Runs the README's first command

    scglmm fit data/kang2018_cd14_mono.h5ad --formula '~ condition + (1 + condition | donor)' \\
        --size-factors n_counts_all_genes --out results.h5ad --table results.tsv --n-jobs 2

in a child process with an empty on-disk cache (``NUMBA_CACHE_DIR`` set to a new temporary folder),
then once more with that cache filled (the cached run), and records every compilation numba does
on the way (its ``numba:compile`` events): which function, for which argument types, and how long.
A function called by another is compiled, or loaded from the cache, when its caller is typed, so
the events nest; each row of the table is a function's own time (its events minus the events
nested in them) and its inclusive time (with everything it compiled on the way).

    python benchmarks/compile_time.py [--runs 3] [--checkout PATH ...] [--out FILE]

``--checkout`` runs the command on another checkout of the package (e.g. a baseline extracted
with ``git archive``) in the same invocation, so that both see the same load of a shared
machine; the data file is always the one of this checkout. Prints the cold-compile time (the
time spent compiling, summed over the outermost compilations) and the wall time of the cold and
cached runs, medians over ``--runs``, and writes the tables to ``--out`` if given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "kang2018_cd14_mono.h5ad"

#: The child: records numba's compile events around the CLI's ``fit`` command and writes them as JSON.
_CHILD = r"""
import json, sys, threading, time
t_start = time.perf_counter()
from numba.core import event as ev

records = []
stack = threading.local()

class Recorder(ev.Listener):
    def on_start(self, event):
        st = getattr(stack, "s", None)
        if st is None:
            st = stack.s = []
        d = event.data["dispatcher"]
        st.append((d, event.data["args"], time.perf_counter(), time.thread_time(), len(st)))

    def on_end(self, event):
        d, args, t0, c0, depth = stack.s.pop()
        py = d.py_func
        records.append({
            "name": f"{py.__module__}.{py.__qualname__}",
            "sig": "(" + ", ".join(str(a) for a in args) + ")",
            "start": t0 - t_start,
            "seconds": time.perf_counter() - t0,
            "cpu": time.thread_time() - c0,
            "depth": depth,
        })

ev.register("numba:compile", Recorder())
from scglmm.cli import main

out = sys.argv[1]
sys.argv = ["scglmm", *sys.argv[2:]]
t0 = time.perf_counter()
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code or 0
finally:
    t1 = time.perf_counter()
    with open(out, "w") as fh:
        json.dump({"wall": t1 - t_start, "command": t1 - t0, "events": records}, fh)
sys.exit(code)
"""


def _run(checkout: Path, cache: Path, work: Path, tag: str) -> dict:
    """The README's first command on ``checkout`` with the numba cache ``cache``; its record."""
    rec = work / f"{tag}.json"
    argv = [
        "fit", str(DATA), "--formula", "~ condition + (1 + condition | donor)", "--size-factors", "n_counts_all_genes",
        "--out", str(work / f"{tag}.h5ad"), "--table", str(work / f"{tag}.tsv"), "--n-jobs", "2", "--quiet",
    ]  # fmt: skip
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), PYTHONPATH=str(checkout))
    env.pop("NUMBA_DISABLE_JIT", None)
    subprocess.run([sys.executable, "-c", _CHILD, str(rec), *argv], env=env, cwd=checkout, check=True)
    return json.loads(rec.read_text())


def _compile_seconds(events: list[dict], key: str = "seconds") -> float:
    """Time spent compiling (``key``: ``"seconds"`` wall clock, ``"cpu"`` CPU time of the
    compiling thread): the outermost compile events (nested ones are inside them)."""
    return sum(e[key] for e in events if e["depth"] == 0)


def _per_function(events: list[dict]) -> dict[str, dict]:
    """Per function: own CPU seconds (nested compilations subtracted), inclusive CPU seconds, signatures."""
    out: dict[str, dict] = {}
    for e in events:
        nested = sum(
            c["cpu"]
            for c in events
            if c["depth"] == e["depth"] + 1 and e["start"] <= c["start"] <= e["start"] + e["seconds"]
        )
        row = out.setdefault(e["name"], {"own": 0.0, "inclusive": 0.0, "sigs": []})
        row["own"] += e["cpu"] - nested
        row["inclusive"] += e["cpu"]
        row["sigs"].append(e["sig"])
    return out


def _short(name: str) -> str:
    return name.replace("scglmm._core.kernels.", "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="cold (and cached) runs per checkout; medians are reported")
    ap.add_argument("--checkout", type=Path, action="append", default=[], help="also time this checkout (repeatable)")
    ap.add_argument("--label", action="append", default=[], help="a name per --checkout (default: its path)")
    ap.add_argument("--out", type=Path, help="write the tables (markdown) here")
    a = ap.parse_args()

    load_before = os.getloadavg()
    checkouts = [("this checkout", ROOT)]
    for i, c in enumerate(a.checkout):
        checkouts.append((a.label[i] if i < len(a.label) else str(c), c.resolve()))
    results: dict[str, list[dict]] = {label: [] for label, _ in checkouts}
    with tempfile.TemporaryDirectory(prefix="scglmm-compile-") as tmp:
        tmp = Path(tmp)
        for r in range(a.runs):  # interleaved: each round runs every checkout once, cold then cached
            for k, (label, path) in enumerate(checkouts):
                cache = tmp / f"cache{r}_{k}"
                cache.mkdir()
                cold = _run(path, cache, tmp, f"cold{r}_{k}")
                warm = _run(path, cache, tmp, f"warm{r}_{k}")
                results[label].append({"cold": cold, "warm": warm})
                print(
                    f"[{label}] run {r + 1}: compiling {_compile_seconds(cold['events']):.1f} s "
                    f"(CPU {_compile_seconds(cold['events'], 'cpu'):.1f} s; {len(cold['events'])} signatures), "
                    f"cold run {cold['wall']:.1f} s, cached run "
                    f"{warm['wall']:.1f} s ({len(warm['events'])} compiled)",
                    flush=True,
                )

    lines = [
        "# Cold-compile time of the README's first command",
        "",
        "`scglmm fit data/kang2018_cd14_mono.h5ad --formula '~ condition + (1 + condition | donor)' "
        "--size-factors n_counts_all_genes --out results.h5ad "
        "--table results.tsv --n-jobs 2`, in a child process with an empty `NUMBA_CACHE_DIR` (cold), then again "
        "with the cache it filled (cached).",
        f"`python benchmarks/compile_time.py --runs {a.runs}`; {platform.machine()}, Python "
        f"{platform.python_version()}, {os.cpu_count()} cores; load average (1, 5, 15 min) before the runs: "
        f"{' '.join(f'{x:.2f}' for x in load_before)}, after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        f"medians of {a.runs} runs.",
        "",
        "Compiling: the time spent in numba's compilations (the outermost ones), wall clock and CPU time of "
        "the compiling thread (less sensitive to the load of a shared machine).",
        "",
        "| checkout | compiling (cold, wall) | compiling (cold, CPU) | signatures compiled | cold run (wall) "
        "| cached run (wall) |",
        "|---|---|---|---|---|---|",
    ]
    for label, runs in results.items():
        comp = statistics.median(_compile_seconds(x["cold"]["events"]) for x in runs)
        cpu = statistics.median(_compile_seconds(x["cold"]["events"], "cpu") for x in runs)
        nsig = statistics.median(len(x["cold"]["events"]) for x in runs)
        cold = statistics.median(x["cold"]["wall"] for x in runs)
        warm = statistics.median(x["warm"]["wall"] for x in runs)
        lines.append(f"| {label} | {comp:.1f} s | {cpu:.1f} s | {nsig:.0f} | {cold:.1f} s | {warm:.1f} s |")
    for label, runs in results.items():
        per = [_per_function(x["cold"]["events"]) for x in runs]
        names = sorted(
            {n for p in per for n in p}, key=lambda n: -statistics.median(p[n]["own"] if n in p else 0.0 for p in per)
        )
        lines += [
            "",
            f"## Per function, {label} (CPU seconds, medians of the runs; own = without what it compiled on the way)",
            "",
            "| function | own | inclusive | signatures |",
            "|---|---|---|---|",
        ]
        for n in names:
            own = statistics.median(p[n]["own"] if n in p else 0.0 for p in per)
            inc = statistics.median(p[n]["inclusive"] if n in p else 0.0 for p in per)
            sigs = max((p[n]["sigs"] for p in per if n in p), key=len)
            sig_text = "<br>".join(s if len(s) < 120 else s[:117] + "..." for s in sigs)
            lines.append(f"| `{_short(n)}` | {own:.2f} | {inc:.2f} | {len(sigs)}: {sig_text} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out is not None:
        a.out.write_text(text)


if __name__ == "__main__":
    t = time.perf_counter()
    main()
    print(f"benchmark took {time.perf_counter() - t:.0f} s", file=sys.stderr)
