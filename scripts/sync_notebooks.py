"""Keep the repository address in every notebook's Colab set-up cell in sync with pyproject.toml.

The address is declared in ONE place, ``[project.urls] Repository`` in pyproject.toml. Each notebook's
first code cell (the Colab set-up cell) carries it as the line ``REPO_URL = "..."``; this script
rewrites that line from pyproject.

    python scripts/sync_notebooks.py            # rewrite notebooks/*.ipynb where needed
    python scripts/sync_notebooks.py --check    # exit 1 if any notebook is out of sync (CI)
    python scripts/sync_notebooks.py --add-missing   # also insert the standard set-up cell where absent

Only the source of that one line changes; outputs and everything else are left byte-for-byte as
they were (the file is re-serialised the way nbformat writes it: one-space indent, sorted keys).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from spo_lab.teaching.notebook import repo_url  # noqa: E402

URL_LINE = re.compile(r'^REPO_URL = "[^"\n]*"$', re.M)

COLAB_CELL = '''\
# Colab set-up: on Google Colab, clone and install spo_lab; anywhere else this cell does nothing.
# REPO_URL is written by scripts/sync_notebooks.py from pyproject.toml -- change it there, not here.
REPO_URL = "{url}"
import os, subprocess, sys
if "google.colab" in sys.modules:
    repo = "/content/spo_lab"
    if not os.path.exists(repo):
        subprocess.run(["git", "clone", "--depth", "1", REPO_URL, repo], check=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e", repo], check=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "transformers", "tokenizers", "peft",
                        "pandas", "matplotlib", "tqdm"], check=True)  # torch comes with Colab
    sys.path.insert(0, repo)  # the running kernel started before the editable install
    os.chdir(os.path.join(repo, "notebooks"))'''


def colab_cell_source(url: str) -> str:
    """The standard Colab set-up cell with ``url`` filled in."""
    return COLAB_CELL.format(url=url)


def _source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _first_code_cell(nb):
    return next((c for c in nb.get("cells", []) if c.get("cell_type") == "code"), None)


def sync(path: Path, url: str, *, write: bool, add_missing: bool = False) -> str:
    """Return "ok", "updated", "would update", "missing" or "added" for one notebook."""
    raw = path.read_text(encoding="utf-8")
    nb = json.loads(raw)
    cell = _first_code_cell(nb)
    if cell is None or not URL_LINE.search(_source(cell)):
        if not add_missing:
            return "missing"
        new = {"cell_type": "code", "execution_count": None, "id": "colab-setup",
               "metadata": {"tags": ["colab-setup"]}, "outputs": [],
               "source": colab_cell_source(url).splitlines(keepends=True)}
        cells = nb.setdefault("cells", [])
        at = 1 if cells and cells[0].get("cell_type") == "markdown" else 0
        cells.insert(at, new)
        status = "added"
    else:
        src = _source(cell)
        fixed = URL_LINE.sub(f'REPO_URL = "{url}"', src)
        if fixed == src:
            return "ok"
        cell["source"] = fixed.splitlines(keepends=True)
        status = "updated" if write else "would update"
    if write:
        path.write_text(json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return status


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a notebook is out of sync")
    ap.add_argument("--add-missing", action="store_true", help="insert the standard Colab cell where absent")
    ap.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    args = ap.parse_args(argv)
    url = repo_url(ROOT / "pyproject.toml")
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    out_of_sync, missing = 0, 0
    for p in paths:
        status = sync(p, url, write=not args.check, add_missing=args.add_missing and not args.check)
        out_of_sync += status == "would update"
        missing += status == "missing"
        if status != "ok":
            print(f"{p.name}: {status}" + (" (no REPO_URL line in its first code cell)" if status == "missing" else ""))
    if out_of_sync:
        print(f"out of sync with pyproject.toml (Repository = {url}): run python scripts/sync_notebooks.py")
    if missing:
        print("no Colab set-up cell: run python scripts/sync_notebooks.py --add-missing")
    return 1 if out_of_sync or missing else 0


if __name__ == "__main__":
    sys.exit(main())
