"""Execute the tutorials in place, so that their outputs and figures are stored with them.

The documentation renders the notebooks as stored (``nb_execution_mode = "off"``), so that the
pages show every result and figure without running the code at build time; the test suite runs
them again from scratch (``tests/test_tutorials.py``). Run this after changing a tutorial or
anything its outputs show:

    python tutorials/execute.py [NAME.ipynb ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbclient
import nbformat

HERE = Path(__file__).resolve().parent


def execute(path: Path) -> None:
    """Run ``path`` top to bottom in its folder and write it back with its outputs."""
    nb = nbformat.read(path, as_version=4)
    resources = {"metadata": {"path": str(HERE)}}  # notebooks find data relative to their folder
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3", resources=resources)
    client.execute()
    nb.metadata.pop("widgets", None)  # progress-bar widget state is not needed on a static page
    nbformat.write(nb, path)
    print(f"executed {path.name}")


if __name__ == "__main__":
    names = sys.argv[1:] or sorted(p.name for p in HERE.glob("*.ipynb"))
    for name in names:
        execute(HERE / name)
