"""Re-execute notebooks in place with a profile, so the committed outputs are the default run's.

    python scripts/run_notebooks.py                       # every notebooks/*.ipynb, default profile
    python scripts/run_notebooks.py notebooks/01_*.ipynb --profile ci

Runs each notebook in a fresh kernel of this interpreter, from the notebooks/ folder, and prints its
wall time. The stored outputs are what GitHub and Colab show a reader.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("paths", nargs="*", type=Path, help="notebooks (default: all)")
    ap.add_argument("--profile", default="default", choices=("default", "ci", "colab"))
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = ap.parse_args(argv)
    paths = args.paths or sorted((ROOT / "notebooks").glob("*.ipynb"))
    os.environ["SPO_LAB_PROFILE"] = args.profile
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        t0 = time.perf_counter()
        NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
        nbformat.write(nb, path)
        print(f"{path.name}: {time.perf_counter() - t0:.0f} s ({args.profile} profile)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
