"""Notebook 04's simulations and figures (spo_lab.teaching.variance), and every number the notebook shows.

Each test named test_nb04_* checks a claim of a notebook 04 cell. Sizes are the notebook's default
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
from spo_lab import grpo_advantages, rloo_advantages, spo_advantages  # noqa: E402
from spo_lab.teaching import degenerate, style, variance  # noqa: E402

torch.set_num_threads(1)


# ====================================================================== notebook 04: advantages
def test_nb04_hand_made_advantages():
    r = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
    v = torch.tensor([0.9, 0.1, 0.5, 0.2, 0.6])
    assert [round(a, 4) for a in spo_advantages(r, v).tolist()] == [-0.0739, -0.4434, 0.6651, 1.2193, -1.3671]
    assert [round(a, 4) for a in spo_advantages(r, torch.zeros(5)).tolist()] == [0.7303, -1.0954, 0.7303, 0.7303, -1.0954]


def test_nb04_group_mean_square_and_g1_trap():
    g = torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0])
    grpo = grpo_advantages(g, 8)
    assert float((grpo**2).mean()) == pytest.approx(7 / 8, abs=1e-5)
    assert round(float(grpo[0]), 4) == 2.4749
    dr = grpo_advantages(g, 8, scale="none")
    assert torch.allclose(rloo_advantages(g, 8), dr * 8 / 7)
    assert grpo_advantages(torch.tensor([1.0, 0.0, 1.0]), 1).tolist() == [0.0, 0.0, 0.0]
    # every non-degenerate group has sum of squares G - 1, whatever its success rate
    for k in range(1, 8):
        a = grpo_advantages(torch.tensor([1.0] * k + [0.0] * (8 - k)), 8)
        assert float((a**2).sum()) == pytest.approx(7.0, abs=1e-4)


def test_nb04_variance_decomposition_two_prompts():
    p = np.array([0.05, 0.95])
    within, spread = (p * (1 - p)).mean(), p.var()
    assert (round(within, 4), round(spread, 4)) == (0.0475, 0.2025)
    assert round(within / (within + spread), 3) == 0.19


@pytest.mark.parametrize("num_prompts, steps, batch, burn_in", [(2000, 200, 256, 20), (500, 60, 128, 10)])
def test_nb04_variance_ordering(num_prompts, steps, batch, burn_in):
    """Paper: SPO's advantage variance ~ half the raw reward's; GRPO's over non-degenerate samples the highest."""
    z = degenerate.drifting_population(num_prompts, steps, seed=0)
    av = variance.advantage_variance(z, batch=batch, group_size=8, seed=0)
    s = variance.summarise_advantage_variance(av, burn_in=burn_in)
    assert list(s.index) == ["reward r", "oracle: r - p", "SPO: r - v", "GRPO (all samples)", "GRPO (non-degenerate)"]
    assert s.loc["SPO: r - v", "ratio_to_reward"] < 0.6  # at most about half
    assert s.loc["oracle: r - p", "variance"] < s.loc["SPO: r - v", "variance"] < s.loc["reward r", "variance"]
    assert s["variance"].idxmax() == "GRPO (non-degenerate)"
    assert 0.8 < s.loc["GRPO (non-degenerate)", "variance"] < 1.0  # ~ (G - 1) / G, slightly above with ddof = 1
    # over all samples GRPO's variance is the non-degenerate one diluted by the zeros of degenerate groups
    rows = av[av.estimator == "GRPO (all samples)"]
    assert rows["degenerate_frac"].between(0, 1).all()


def test_nb04_all_degenerate_groups_leave_no_grpo_signal():
    """Every prompt solved: every GRPO group is degenerate (spo_lab.metrics' definition), all advantages 0."""
    z = np.full((4, 64), 50.0)  # p = 1 for every prompt
    av = variance.advantage_variance(z, batch=32, group_size=8, seed=0)
    assert list(av.estimator.unique()) == list(variance.ESTIMATORS)
    grpo = av[av.estimator == "GRPO (all samples)"]
    assert (grpo["degenerate_frac"] == 1.0).all() and (grpo["variance"] == 0.0).all()
    assert av[av.estimator == "GRPO (non-degenerate)"]["variance"].isna().all()


# ====================================================================== figures
def test_plots_draw_the_data_they_are_given():
    z = degenerate.drifting_population(100, 10, seed=0)
    av = variance.advantage_variance(z, batch=32, group_size=8)
    summary = variance.summarise_advantage_variance(av, burn_in=2)
    ax = _check_figure(variance.plot_advantage_variance(summary))
    np.testing.assert_allclose([p.get_height() for p in ax.patches], summary["variance"])
    assert ax.patches[2].get_facecolor()[:3] == pytest.approx(matplotlib.colors.to_rgb(style.color("spo")))
    assert any(lbl.startswith("paper: SPO ~ half") for lbl in _legend_labels(ax))
    ax = _check_figure(variance.plot_advantage_variance_over_training(av))
    assert _legend_labels(ax) == list(variance.ESTIMATORS)


def test_every_plot_helper_is_tested_here():
    import inspect

    source = inspect.getsource(inspect.getmodule(test_every_plot_helper_is_tested_here))
    missing = [n for n in variance.__all__ if n.startswith("plot_") and f"variance.{n}(" not in source]
    assert not missing
