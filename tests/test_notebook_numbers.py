"""Every number a notebook's prose quotes from an output matches that output.

Convention: a markdown cell that quotes printed numbers lists them, exactly as written in its text, in its
metadata, ``"quotes": ["0.068", "0.907", ...]``. Each quote must appear in the cell's text and in a text
output of a code cell above it or right below it (stored outputs: the default profile's run), both as a whole number token
(``0.06`` does not match ``0.068``). Re-executing a notebook that changes a quoted number fails here until
the prose is updated; so does editing the prose without its quote list.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _text(x) -> str:
    return "".join(x) if isinstance(x, list) else str(x)


def _outputs(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if "text" in out:
            parts.append(_text(out["text"]))
        for mime, data in out.get("data", {}).items():
            if mime.startswith("text/"):
                parts.append(_text(data))
    return "\n".join(parts)


def _token(q: str) -> re.Pattern:
    """q as a whole number: no digit, decimal point or minus sign glued to either end."""
    return re.compile(rf"(?<![\d.]){re.escape(q)}(?![\d]|\.\d)")


def quote_problems(nb: dict) -> list[str]:
    """What is wrong with a notebook's quoted numbers (empty: every quote is in its text and in an output it may quote).

    A markdown cell may quote the outputs of every code cell above it and of the code cells right below it (up to
    the next markdown cell): prose often introduces the figure or table it reads.
    """
    problems, cells = [], nb["cells"]
    for i, cell in enumerate(cells):
        quotes = cell.get("metadata", {}).get("quotes", [])
        if cell["cell_type"] != "markdown" or not quotes:
            continue
        below = []
        for c in cells[i + 1:]:
            if c["cell_type"] != "code":
                break
            below.append(c)
        outputs = [_outputs(c) for c in cells[:i] + below if c["cell_type"] == "code"]
        src = _text(cell.get("source", ""))
        for q in quotes:
            pat = _token(q)
            if not pat.search(src):
                problems.append(f"{cell.get('id')}: quote {q!r} is not in the cell's text")
            if not any(pat.search(o) for o in outputs):
                problems.append(f"{cell.get('id')}: {q!r} is in no output the cell may quote")
    return problems


def _quoted(nb) -> int:
    return sum(len(c.get("metadata", {}).get("quotes", [])) for c in nb["cells"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_quoted_numbers_match_the_outputs(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert quote_problems(nb) == []


def test_the_notebooks_that_quote_outputs_declare_their_quotes():
    counts = {p.name[:2]: _quoted(json.loads(p.read_text(encoding="utf-8"))) for p in NOTEBOOKS}
    for number in ("01", "02", "03", "04", "05", "06", "07", "09", "10"):
        assert counts.get(number, 0) > 0, f"notebook {number} quotes printed numbers without declaring them"


def test_a_wrong_number_fails():
    """The check can fail: change one quoted number in the prose (and its quote), or in the output."""
    path = next(p for p in NOTEBOOKS if p.name.startswith("06"))
    nb = json.loads(path.read_text(encoding="utf-8"))
    cell = next(c for c in nb["cells"] if c.get("metadata", {}).get("quotes"))
    q = cell["metadata"]["quotes"][0]
    wrong = q[:-1] + ("1" if q[-1] != "1" else "2")
    # the prose says a number no output printed
    bad = copy.deepcopy(nb)
    c = next(x for x in bad["cells"] if x.get("id") == cell.get("id"))
    c["source"] = _text(c["source"]).replace(q, wrong)
    c["metadata"]["quotes"] = [wrong if x == q else x for x in c["metadata"]["quotes"]]
    assert any("no output" in p for p in quote_problems(bad))
    # the prose changed but its quote list did not
    bad = copy.deepcopy(nb)
    c = next(x for x in bad["cells"] if x.get("id") == cell.get("id"))
    c["source"] = _text(c["source"]).replace(q, wrong)
    assert any("not in the cell's text" in p for p in quote_problems(bad))


def test_whole_numbers_only():
    assert _token("0.06").search("D = 0.06 here") and not _token("0.06").search("D = 0.068")
    assert not _token("0.80").search("1.0.80") and not _token("8").search("18 steps")
