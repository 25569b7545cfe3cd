"""The one figure style (spo_lab.teaching.style), the notebook set-up's dpi, and the package's import direction."""

from __future__ import annotations

import ast
import inspect
import itertools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402

import spo_lab  # noqa: E402
from figure_checks import RAW_KEY  # noqa: E402
from spo_lab.teaching import notebook, style  # noqa: E402

PACKAGE = Path(spo_lab.__file__).resolve().parent
METHODS = ("spo", "grpo", "dr_grpo", "rloo", "reinforce", "spo-uniform", "spo-no-init", "spo-const-rho",
           "spo-kl-clock", "spo-no-baseline", "spo-n0-1", "spo-n0-2", "spo-no-norm", "spo-paper-init", "initial", "paper")


def _distance(a, b):
    return sum((x - y) ** 2 for x, y in zip(to_rgb(a), to_rgb(b))) ** 0.5


def test_one_distinct_colour_per_method():
    assert set(METHODS) == set(style.METHOD_COLORS)
    from spo_lab import experiment

    assert all(style.color(run) != style.color("spo") for run in experiment.RUNS if run != "spo"), "an arm looks like SPO"
    everything = {**style.METHOD_COLORS, **style.OTHER_COLORS}
    assert len(set(everything.values())) == len(everything)
    for (a, ca), (b, cb) in itertools.combinations(everything.items(), 2):
        assert _distance(ca, cb) > 0.15, f"{a} and {b} look alike: {ca} vs {cb}"
    assert style.color("spo") != style.color("initial")
    assert style.color("warm start") == style.color("initial")


def test_aliases_and_run_names_resolve_to_their_method():
    assert style.color("SPO: r - v") == style.color("prioritized") == style.color("spo")
    assert style.color("GRPO (all samples)") == style.color("grpo-toy") == style.color("grpo")
    assert style.color("spo-uniform-long") == style.color("spo-uniform")
    assert all(a in style.METHOD_COLORS or a in style.OTHER_COLORS for a in style.ALIASES.values())


def test_colors_keep_one_figure_distinct():
    names = ["spo", "grpo", "rho = 0.5", "rho = 0.99", "spo-a", "spo-b"]
    palette = style.colors(names)
    assert len(set(palette.values())) == len(names)
    assert palette["spo"] == style.color("spo") and palette["grpo"] == style.color("grpo")
    assert set(palette.values()).isdisjoint(set(style.METHOD_COLORS.values()) - {palette["spo"], palette["grpo"]})


def test_labels_are_human_and_carry_units():
    for key, text in style.LABELS.items():
        assert " " in text and not RAW_KEY.search(text), f"{key}: {text!r}"
    assert style.label("eval/greedy_acc") == "held-out accuracy, greedy (fraction correct)"
    assert style.label("group/degenerate_frac") == "degenerate groups (fraction)"
    # every metric key the trainer logs that a notebook or the main job plots
    for key in ("eval/greedy_acc", "eval/sampled_acc", "reward/mean", "adv/raw_var", "adv/zero_frac",
                "group/degenerate_frac", "responses", "responses_incl_init", "step"):
        assert key in style.LABELS
    assert style.label("time/foo") == "foo time (seconds per step)"
    assert not RAW_KEY.search(style.label("loss/new_thing"))


def test_new_axes_dpi_and_apply():
    ax = style._ax()
    assert ax.figure.dpi >= 110 and style.DPI >= 110
    with matplotlib.rc_context():
        style.apply()
        assert plt.rcParams["figure.dpi"] >= 110 and plt.rcParams["savefig.dpi"] >= 110


def test_notebook_setup_default_dpi():
    assert inspect.signature(notebook.setup).parameters["dpi"].default >= 110
    with matplotlib.rc_context():
        notebook.setup()
        assert plt.rcParams["figure.dpi"] >= 110


def test_paper_line():
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], label="ours")
    assert style.paper_line(ax, 0.6, "~60 %") is ax
    style.legend(ax)
    line = ax.get_lines()[-1]
    assert line.get_linestyle() == "--" and list(line.get_ydata()) == [0.6, 0.6]
    assert line.get_color() == style.METHOD_COLORS["paper"]
    assert "paper: ~60 %" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert ax.get_legend()._loc == 0  # "best": off the data


def test_band_draws_a_line_and_an_optional_band():
    fig, ax = plt.subplots()
    style.band(ax, [0, 1, 2], [0.1, 0.2, 0.3], [0.01, float("nan"), 0.02], label="x", color=style.color("spo"))
    style.band(ax, [0, 1, 2], [0.1, 0.2, 0.3], label="y")
    assert len(ax.get_lines()) == 2 and len(ax.collections) == 1


def test_every_plot_helper_takes_data_and_an_axes():
    import importlib

    for name in ("degenerate", "tracking", "variance", "sampling", "sync", "runs"):
        mod = importlib.import_module(f"spo_lab.teaching.{name}")
        plots = [n for n in mod.__all__ if n.startswith("plot_")]
        assert plots, name
        for n in plots:
            params = inspect.signature(getattr(mod, n)).parameters
            first = next(iter(params))
            assert first not in ("ax", "axes", "eps", "p", "group_sizes"), f"{name}.{n} must take its data first"
            target = "ax" if "ax" in params else "axes"  # axes: a helper that draws several panels
            assert params[target].kind is inspect.Parameter.KEYWORD_ONLY, f"{name}.{n}"


def _imports(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ("." * node.level) + (node.module or "")
            yield base
            yield from (f"{base}.{a.name}" for a in node.names)


def test_the_library_never_imports_teaching():
    """teaching/ imports the library, never the reverse (the report's figures, figures.py, draw with its style)."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "teaching" or rel.as_posix() == "figures.py":
            continue
        offenders += [f"{rel}: {m}" for m in _imports(path) if "teaching" in m]
    assert not offenders
    for old in ("simulate.py", "plotting.py", "notebook.py"):
        assert not (PACKAGE / old).exists(), f"spo_lab/{old} moved to spo_lab/teaching/"


def test_one_palette_for_every_figure():
    """Colours are written down once, in spo_lab/palette.py; every figure (evaluation's pass@k included) uses it."""
    import re

    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "palette.py":
            continue
        offenders += [f"{path.relative_to(PACKAGE)}: {m}" for m in re.findall(r"[\"']#[0-9A-Fa-f]{6}[\"']", path.read_text())]
    assert not offenders, offenders
