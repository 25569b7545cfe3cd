"""The marked reading path (spo_lab.teaching.path): stated once, timed by its size, marked in the notebooks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from spo_lab.teaching import path

ROOT = Path(__file__).resolve().parent.parent
MARKERS = re.compile(r"<!-- reading-path:start -->\n(.*?)\n<!-- reading-path:end -->", re.S)


def _nb(name):
    return json.loads((ROOT / "notebooks" / name).read_text(encoding="utf-8"))


def _src(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_the_stated_time_agrees_with_the_count():
    stops = path.stops()
    statement = path.summary_markdown(stops)
    readme = MARKERS.search((ROOT / "README.md").read_text(encoding="utf-8"))
    assert readme, "the README's Notebooks section states the path between reading-path markers"
    assert readme.group(1) == statement
    cell = next(c for c in _nb("01_quickstart.ipynb")["cells"] if c.get("id") == "reading-path")
    assert _src(cell) == statement
    total = path.minutes(stops)
    assert f"**The {total}-minute path.**" in statement
    words, figures = sum(s.words for s in stops), sum(s.figures for s in stops)
    assert total * 60 >= 60 * words / path.WORDS_PER_MINUTE + path.SECONDS_PER_FIGURE * figures > (total - 1) * 60


def test_the_path_fits_half_an_hour():
    assert path.minutes(path.stops()) <= 30


def test_the_from_scratch_loop_is_the_second_stop():
    names = [name for name, _ in path.ORDER]
    assert names[:2] == ["01_quickstart.ipynb", "10_spo_from_scratch.ipynb"]
    assert all(s.cells > 0 for s in path.stops()), "every stop has marked cells"


@pytest.mark.parametrize("name", [n for n, _ in path.ORDER])
def test_path_cells_are_badged_and_the_rest_is_depth(name):
    for cell in _nb(name)["cells"]:
        if cell["cell_type"] != "markdown" or cell.get("id") in ("colab-badge", "reading-path"):
            continue
        on_path = path.PATH_TAG in cell.get("metadata", {}).get("tags", [])
        src = _src(cell)
        assert (path.PATH_BADGE in src) == on_path, (name, cell.get("id"), src[:60])
        heading = src.split("\n", 1)[0]
        if heading.startswith("## ") and not on_path and not heading.startswith("## Exercises"):
            assert path.DEPTH_BADGE in heading, (name, heading)


def test_counting_on_hand_made_cells():
    md = {"cell_type": "markdown", "source": [f"{path.PATH_BADGE} one two ", "three"]}
    code = {"cell_type": "code", "source": "x = 1", "outputs": [
        {"output_type": "stream", "text": ["four five\n"]},
        {"output_type": "display_data", "data": {"image/png": "AAAA", "text/plain": "<Figure size 10x10>"}},
        {"output_type": "execute_result", "data": {"text/plain": "six", "text/html": "<b>six</b>"}}]}
    assert path.cell_words(md) == 3
    assert path.cell_words(code) == 3 + 2 + 1  # "x = 1", the stream, the table's text (not the figure's repr)
    assert path.cell_figures(code) == 1 and path.cell_figures(md) == 0
    stop = path.Stop("x.ipynb", "x", 2, words=400, figures=2)
    assert stop.seconds == 60 * 400 / path.WORDS_PER_MINUTE + 2 * path.SECONDS_PER_FIGURE
    assert path.minutes([stop]) == 3
