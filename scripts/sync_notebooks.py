"""Keep the repository address in every notebook in sync with pyproject.toml: Colab set-up cell and badge.

The address is declared in ONE place, ``[project.urls] Repository`` in pyproject.toml. Each notebook
carries it twice, and this script writes both from pyproject:

- its first code cell (the Colab set-up cell) holds the line ``REPO_URL = "..."``;
- its first cell is a markdown cell with the "Open in Colab" badge, which links to
  ``https://colab.research.google.com/github/<owner>/<repo>/blob/main/notebooks/<file>.ipynb``.

    python scripts/sync_notebooks.py            # rewrite notebooks/*.ipynb where needed
    python scripts/sync_notebooks.py --check    # exit 1 if any notebook is out of sync or lacks a part (CI)
    python scripts/sync_notebooks.py --add-missing   # also insert the set-up cell and the badge where absent
    python scripts/sync_notebooks.py --add-missing notebooks/02_*.ipynb   # only the notebooks named

Only the source of the REPO_URL line and of the badge line change (or the missing cells are inserted);
outputs and everything else are left byte-for-byte as they were (the file is re-serialised the way
nbformat writes it: one-space indent, sorted keys).
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
BRANCH = "main"  # the branch the Colab badge opens
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
BADGE_LINE = re.compile(r"^\[!\[Open In Colab\]\(" + re.escape(BADGE_IMAGE) + r"\)\]\([^)\n]*\)$", re.M)
GITHUB_URL = re.compile(r"^https?://github\.com/([^/\s]+)/([^/\s]+?)(?:\.git)?/?$")

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


def colab_badge_source(url: str, notebook: str) -> str:
    """The standard "Open in Colab" badge for ``notebooks/<notebook>`` of the GitHub repository ``url``.

    Raises ValueError if ``url`` is not a GitHub repository address (Colab opens notebooks from GitHub).
    """
    m = GITHUB_URL.match(url.strip())
    if not m:
        raise ValueError(f"the Colab badge needs a https://github.com/<owner>/<repo> address, got {url!r}")
    owner, repo = m.groups()
    link = f"https://colab.research.google.com/github/{owner}/{repo}/blob/{BRANCH}/notebooks/{notebook}"
    return f"[![Open In Colab]({BADGE_IMAGE})]({link})"


def _source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _first_code_cell(nb):
    return next((c for c in nb.get("cells", []) if c.get("cell_type") == "code"), None)


def _is_badge_cell(cell) -> bool:
    return cell.get("cell_type") == "markdown" and bool(BADGE_LINE.search(_source(cell)))


def _sync_setup_cell(nb, url: str, add_missing: bool) -> str:
    """The Colab set-up cell: "ok", "changed", "missing" or "added" (``nb`` edited in place)."""
    cell = _first_code_cell(nb)
    if cell is None or not URL_LINE.search(_source(cell)):
        if not add_missing:
            return "missing"
        new = {"cell_type": "code", "execution_count": None, "id": "colab-setup",
               "metadata": {"tags": ["colab-setup"]}, "outputs": [],
               "source": colab_cell_source(url).splitlines(keepends=True)}
        cells = nb.setdefault("cells", [])
        at = 1 if cells and _is_badge_cell(cells[0]) else 0  # after the badge, if any
        at += 1 if len(cells) > at and cells[at].get("cell_type") == "markdown" else 0  # after the title
        cells.insert(at, new)
        return "added"
    src = _source(cell)
    fixed = URL_LINE.sub(f'REPO_URL = "{url}"', src)
    if fixed == src:
        return "ok"
    cell["source"] = fixed.splitlines(keepends=True)
    return "changed"


def _sync_badge(nb, url: str, notebook: str, add_missing: bool) -> str:
    """The Colab badge, the notebook's first cell: "ok", "changed", "missing" or "added" (``nb`` edited in place)."""
    badge = colab_badge_source(url, notebook)
    cells = nb.setdefault("cells", [])
    if not cells or not _is_badge_cell(cells[0]):
        if not add_missing:
            return "missing"
        cells.insert(0, {"cell_type": "markdown", "id": "colab-badge", "metadata": {"tags": ["colab-badge"]},
                         "source": [badge]})
        return "added"
    src = _source(cells[0])
    fixed = BADGE_LINE.sub(lambda _: badge, src)
    if fixed == src:
        return "ok"
    cells[0]["source"] = fixed.splitlines(keepends=True)
    return "changed"


def sync(path: Path, url: str, *, write: bool, add_missing: bool = False, parts: dict | None = None) -> str:
    """Return "ok", "updated", "would update", "missing" or "added" for one notebook.

    Two parts are checked, the set-up cell's REPO_URL line and the Colab badge; ``parts``, if given, is
    filled with each part's own status ("ok", "changed", "missing" or "added"). "missing" wins over the
    others (nothing is written then); with ``add_missing`` the missing parts are inserted ("added").
    """
    raw = path.read_text(encoding="utf-8")
    nb = json.loads(raw)
    found = {"set-up cell": _sync_setup_cell(nb, url, add_missing), "badge": _sync_badge(nb, url, path.name, add_missing)}
    if parts is not None:
        parts.update(found)
    states = set(found.values())
    if "missing" in states:
        return "missing"
    if states == {"ok"}:
        return "ok"
    status = "added" if "added" in states else ("updated" if write else "would update")
    if write:
        path.write_text(json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return status


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a notebook is out of sync")
    ap.add_argument("--add-missing", action="store_true",
                    help="insert the standard Colab set-up cell and badge where absent")
    ap.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    args = ap.parse_args(argv)
    url = repo_url(ROOT / "pyproject.toml")
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    out_of_sync, missing = 0, 0
    for p in paths:
        parts: dict = {}
        status = sync(p, url, write=not args.check, add_missing=args.add_missing and not args.check, parts=parts)
        out_of_sync += status == "would update"
        missing += status == "missing"
        if status != "ok":
            detail = ", ".join(f"{name} {state}" for name, state in parts.items() if state != "ok")
            print(f"{p.name}: {status} ({detail})")
    if out_of_sync:
        print(f"out of sync with pyproject.toml (Repository = {url}): run python scripts/sync_notebooks.py")
    if missing:
        print("no Colab set-up cell (a REPO_URL line in the first code cell) or no Colab badge (the first cell): "
              "run python scripts/sync_notebooks.py --add-missing NOTEBOOK ...")
    return 1 if out_of_sync or missing else 0


if __name__ == "__main__":
    sys.exit(main())
