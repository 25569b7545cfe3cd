"""The reading path: which cells of which notebooks a GRPO user reads first, and how long that takes.

The path is marked in the notebooks themselves: every cell on it carries the tag ``path`` in its
metadata, and every markdown cell on it shows the badge :data:`PATH_BADGE`; the section headings of
the path's notebooks that are not on it show :data:`DEPTH_BADGE`. :data:`ORDER` is the order of the
stops. Its length is measured, not guessed: the words a reader sees in the path's cells (markdown,
code and printed text outputs; ``len(text.split())``) at :data:`WORDS_PER_MINUTE`, plus
:data:`SECONDS_PER_FIGURE` per figure shown. :func:`summary_markdown` writes the statement that opens
notebook 01 and the README's "Notebooks" section (a test keeps the three in agreement)::

    python -m spo_lab.teaching.path            # the path, stop by stop, with its words, figures and minutes
    python -m spo_lab.teaching.path --write    # and write that statement into notebook 01 and the README
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ORDER", "PATH_TAG", "PATH_BADGE", "DEPTH_BADGE", "WORDS_PER_MINUTE", "SECONDS_PER_FIGURE", "Stop",
           "cell_words", "cell_figures", "stops", "minutes", "summary_markdown"]

ORDER = (
    ("01_quickstart.ipynb", "the GRPO -> SPO card, the tiny Qwen3 and one SPO run"),
    ("10_spo_from_scratch.ipynb", "the whole algorithm in plain torch, and its learning curve"),
    ("02_degenerate_groups.ipynb", "why a GRPO group with equal rewards teaches nothing, and how often that happens"),
    ("03_value_tracker.ipynb", "the Beta tracker as a moving average with a memory of 1 / (1 - rho) rewards"),
    ("04_advantages.ipynb", "the G = 1 trap and the signal share of an advantage"),
    ("05_prioritized_sampling.ipynb", "the sampling weight sqrt(v (1 - v)) + 0.05"),
    ("06_training.ipynb", "SPO vs GRPO at equal budget, three seeds, and why SPO wins, in numbers"),
)
"""(notebook, what its stop shows), in reading order"""

PATH_TAG = "path"
PATH_BADGE = "**[Path]**"
DEPTH_BADGE = "*[Depth]*"
WORDS_PER_MINUTE = 200
"""a careful reading speed for technical prose with formulas and code"""
SECONDS_PER_FIGURE = 30

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def _text(x) -> str:
    return "".join(x) if isinstance(x, list) else str(x)


def cell_words(cell: dict) -> int:
    """Words a reader sees in a cell: its source (badge excluded) and, for code, its printed text outputs."""
    words = len(_text(cell.get("source", "")).replace(PATH_BADGE, "").split())
    for out in cell.get("outputs", []):
        if "text" in out:
            words += len(_text(out["text"]).split())
        data = out.get("data", {})
        if "image/png" in data:
            continue  # a figure: counted by cell_figures, its repr text is not read
        for mime in ("text/markdown", "text/plain"):
            if mime in data:
                words += len(_text(data[mime]).split())
                break
    return words


def cell_figures(cell: dict) -> int:
    """Figures a cell shows (PNG outputs)."""
    return sum("image/png" in out.get("data", {}) for out in cell.get("outputs", []))


@dataclass
class Stop:
    """One stop of the path: a notebook, what it shows, and the size of its path cells."""

    notebook: str
    shows: str
    cells: int
    words: int
    figures: int

    @property
    def seconds(self) -> float:
        return 60 * self.words / WORDS_PER_MINUTE + SECONDS_PER_FIGURE * self.figures


def _path_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if PATH_TAG in c.get("metadata", {}).get("tags", [])]


def stops(notebooks: Path = NOTEBOOKS) -> list[Stop]:
    """The path's stops in reading order, each counted from the notebook's stored cells and outputs."""
    out = []
    for name, shows in ORDER:
        cells = _path_cells(json.loads((Path(notebooks) / name).read_text(encoding="utf-8")))
        out.append(Stop(name, shows, len(cells), sum(map(cell_words, cells)), sum(map(cell_figures, cells))))
    return out


def minutes(path_stops: list[Stop]) -> int:
    """The path's reading time in whole minutes, rounded up."""
    return math.ceil(sum(s.seconds for s in path_stops) / 60)


def summary_markdown(path_stops: list[Stop]) -> str:
    """The statement of the path that opens notebook 01 and the README's "Notebooks" section."""
    words, figures, total = sum(s.words for s in path_stops), sum(s.figures for s in path_stops), minutes(path_stops)
    lines = [f"**The {total}-minute path.** Read the cells marked {PATH_BADGE}, in this order; the rest, marked "
             f"{DEPTH_BADGE} (and notebooks 7, 8, 9, 11, 12), is depth for later. Timed by its size: {words:,} words "
             f"(prose, code and printed outputs) at {WORDS_PER_MINUTE} words a minute and {figures} figures at "
             f"{SECONDS_PER_FIGURE} s each.", ""]
    for i, s in enumerate(path_stops, 1):
        lines.append(f"{i}. `{s.notebook}` -- {s.shows} ({s.words:,} words, {s.figures} figure"
                     f"{'s' if s.figures != 1 else ''}, {s.seconds / 60:.1f} min)")
    return "\n".join(lines)


README_MARKERS = ("<!-- reading-path:start -->\n", "\n<!-- reading-path:end -->")
STATEMENT_CELL_ID = "reading-path"
"""the id of notebook 01's cell that holds the statement"""


def write_statement(statement: str) -> None:
    """Put ``statement`` between the README's reading-path markers and into notebook 01's statement cell."""
    readme = NOTEBOOKS.parent / "README.md"
    text = readme.read_text(encoding="utf-8")
    start, end = README_MARKERS
    head, rest = text.split(start, 1)
    readme.write_text(head + start + statement + end + rest.split(end, 1)[1], encoding="utf-8")
    nb_path = NOTEBOOKS / ORDER[0][0]
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    cell = next(c for c in nb["cells"] if c.get("id") == STATEMENT_CELL_ID)
    cell["source"] = statement.splitlines(keepends=True)
    nb_path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def main(argv=None) -> int:
    path_stops = stops()
    statement = summary_markdown(path_stops)
    print(statement)
    if "--write" in (sys.argv[1:] if argv is None else argv):
        write_statement(statement)
    return 0


if __name__ == "__main__":
    sys.exit(main())
