"""Figure checks shared by the tests of spo_lab.teaching: human labels, legends off the data, dpi >= 110."""

from __future__ import annotations

import re

RAW_KEY = re.compile(r"\b(eval|adv|grpo|reward|tracker|loss|time|sampled)/\w")  # a metric key, e.g. eval/greedy_acc


def check_figure(ax, *, new_figure=True):
    """Human axis labels with words (never a raw metric key), a legend placed by "best", dpi >= 110."""
    for text in (ax.get_xlabel(), ax.get_ylabel()):
        assert text and " " in text and not RAW_KEY.search(text), f"raw or missing axis label: {text!r}"
    leg = ax.get_legend()
    if leg is not None:
        assert leg._loc == 0, "legends are placed with loc='best'"
    if new_figure:
        assert ax.figure.dpi >= 110
    return ax


def legend_labels(ax):
    leg = ax.get_legend()
    return [t.get_text() for t in leg.get_texts()] if leg else []
