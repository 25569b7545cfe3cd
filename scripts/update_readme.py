"""Rewrite the README's result tables from the committed summaries.

    python scripts/update_readme.py            # rewrite README.md in place
    python scripts/update_readme.py --check    # exit 1 if README.md is not what the summaries say

Each block between ``<!-- name:start -->`` and ``<!-- name:end -->`` is written by the function
:data:`spo_lab.report.README_BLOCKS` names, from the ``summary.json`` it names (written by
``python -m spo_lab.experiment``). The package never writes into its source tree; this script does,
on request.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spo_lab.report import readme_text

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    ap.add_argument("--readme", default=str(ROOT / "README.md"), help="the README to rewrite")
    args = ap.parse_args(argv)
    path = Path(args.readme)
    old = path.read_text()
    new = readme_text(old, ROOT)
    if args.check:
        if new != old:
            print(f"{path} is out of date: run python scripts/update_readme.py", file=sys.stderr)
            return 1
        print(f"{path} agrees with the summaries")
        return 0
    path.write_text(new)
    print(f"rewrote the result blocks of {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
