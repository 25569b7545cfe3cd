"""Notebook 02's simulations and figures (spo_lab.teaching.degenerate), and every number the notebook shows.

Each test named test_nb02_* checks a claim of a notebook 02 cell. Sizes are the notebook's default
profile unless a test says otherwise; every simulation here runs in about a second. Figures are checked
for human axis labels, a legend placed off the data and dpi >= 110 (``_check_figure``).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from figure_checks import check_figure as _check_figure, legend_labels as _legend_labels  # noqa: E402
from spo_lab import degenerate_fraction, degenerate_probability, grpo_advantages  # noqa: E402
from spo_lab.teaching import degenerate  # noqa: E402

torch.set_num_threads(1)


# ====================================================================== notebook 02: degenerate groups
def test_nb02_equal_group_has_zero_advantage():
    r = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    adv = grpo_advantages(r, 4)
    assert adv[:4].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert [round(a, 4) for a in adv[4:].tolist()] == [-0.5, 1.5, -0.5, -0.5]
    assert degenerate_fraction(r, 4) == 0.5


@pytest.mark.parametrize(
    "p, g, expected",
    [(0.5, 8, 0.0078), (0.1, 8, 0.4305), (0.9, 8, 0.4305), (0.05, 8, 0.6634), (0.05, 16, 0.4401), (0.5, 2, 0.5)],
)
def test_nb02_degenerate_probability_table(p, g, expected):
    """the SPO paper: G = 8 -> 0.8 % at p = 0.5, 43 % at 0.1 or 0.9, 66 % at 0.05."""
    assert round(degenerate_probability(p, g), 4) == expected


def test_nb02_minimum_is_at_one_half():
    p = np.linspace(0, 1, 1001)
    for g in (2, 4, 8, 16):
        d = degenerate_probability(p, g)
        assert p[np.argmin(d)] == pytest.approx(0.5)
        assert d.min() == pytest.approx(2.0 ** (1 - g))


@pytest.mark.parametrize("num_prompts, steps", [(2000, 200), (500, 60)])  # default and ci profiles
def test_nb02_population_starts_near_paper_share_and_rises(num_prompts, steps):
    z = degenerate.drifting_population(num_prompts, steps, seed=0)
    assert z.shape == (steps + 1, num_prompts)
    df = degenerate.degenerate_groups(z, (2, 4, 8, 16), sample_prompts=64, seed=0)
    g8 = df[df.G == 8].set_index("step")["expected"]
    assert 0.55 < g8.iloc[0] < 0.65  # chosen to start at the paper's ~60 %
    assert g8.iloc[-1] > g8.iloc[0] + 0.05  # rises as prompts get solved
    if steps >= 200:
        assert g8.iloc[-1] > 0.8  # the paper's ">80 %" is reached in the default profile
    # a larger group always lowers the share, at every step
    wide = df.pivot(index="step", columns="G", values="expected")
    assert (np.diff(wide.to_numpy(), axis=1) < 0).all()
    # the sampled batches scatter around the population average
    for g, d in df.groupby("G"):
        assert abs(d["sampled"].mean() - d["expected"].mean()) < 0.03


def test_nb02_population_is_seeded():
    assert np.array_equal(degenerate.drifting_population(50, 5, seed=3), degenerate.drifting_population(50, 5, seed=3))
    assert not np.array_equal(degenerate.drifting_population(50, 5, seed=3), degenerate.drifting_population(50, 5, seed=4))


def test_probability_curves_are_the_library_formula():
    curves = degenerate.degenerate_probability_curves((2, 8), points=11)
    assert list(curves.columns) == ["G", "p", "probability"] and len(curves) == 22
    for g, d in curves.groupby("G"):
        np.testing.assert_allclose(d["probability"], degenerate_probability(d["p"].to_numpy(), g))
        assert d.loc[d["probability"].idxmin(), "p"] == pytest.approx(0.5)


def test_success_probabilities_are_sigmoids_of_the_chosen_steps():
    z = degenerate.drifting_population(30, 4, seed=0)
    probs = degenerate.success_probabilities(z, [0, 4])
    assert list(probs.columns) == ["step", "p"] and len(probs) == 60
    np.testing.assert_allclose(probs.loc[probs.step == 4, "p"], 1 / (1 + np.exp(-z[4])))
    assert degenerate.sigmoid(0.0) == 0.5


# ====================================================================== figures
def test_plots_draw_the_data_they_are_given():
    z = degenerate.drifting_population(100, 10, seed=0)
    curves = degenerate.degenerate_probability_curves((2, 4, 8, 16))
    ax = _check_figure(degenerate.plot_degenerate_probability(curves))
    assert _legend_labels(ax) == ["G = 2", "G = 4", "G = 8", "G = 16"]
    np.testing.assert_allclose(ax.get_lines()[2].get_ydata(), curves.loc[curves.G == 8, "probability"])
    ax = _check_figure(degenerate.plot_degenerate_fraction(degenerate.degenerate_groups(z, (4, 8), sample_prompts=16)))
    assert {"paper: ~60 % at start (G = 8)", "paper: >80 % later (G = 8)"} <= set(_legend_labels(ax))
    ax = _check_figure(degenerate.plot_success_histograms(degenerate.success_probabilities(z, [0, 10])))
    assert _legend_labels(ax) == ["step 0", "step 10"]


def test_every_plot_helper_is_tested_here():
    import inspect

    source = inspect.getsource(inspect.getmodule(test_every_plot_helper_is_tested_here))
    missing = [n for n in degenerate.__all__ if n.startswith("plot_") and f"degenerate.{n}(" not in source]
    assert not missing
