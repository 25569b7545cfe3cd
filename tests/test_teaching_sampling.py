"""Notebook 05's simulations and figures (spo_lab.teaching.sampling), and every number the notebook shows.

Each test named test_nb05_* checks a claim of a notebook 05 cell. Sizes are the notebook's default
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
from spo_lab import PrioritizedSampler, ValueTracker, degenerate_probability, priority_weights  # noqa: E402
from spo_lab.teaching import degenerate, sampling, style  # noqa: E402

torch.set_num_threads(1)


# ====================================================================== notebook 05: prioritised sampling
def test_nb05_weights_table():
    v = torch.tensor([0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0], dtype=torch.float64)
    w = priority_weights(v)
    assert w.numpy().round(4).tolist() == [0.05, 0.1495, 0.2679, 0.35, 0.483, 0.55, 0.483, 0.35, 0.05]
    assert float(w[5] / w[0]) == pytest.approx(11.0)


def test_nb05_jeffreys_start_keeps_hopeless_prompts_heavy():
    t = ValueTracker(1)
    t.init_from_counts(torch.tensor([0.0]), torch.tensor([8.0]))
    v = t.values()
    assert round(v.item(), 4) == 0.0556
    assert round(priority_weights(v).item(), 4) == 0.2791
    assert round(priority_weights(v).item() / 0.55, 3) == 0.507  # half of a prompt at v = 1/2
    expected = {5: 0.2274, 10: 0.1953, 25: 0.1417, 50: 0.1003, 100: 0.0674}
    for n in range(1, 101):
        t.update([0], [0.0])
        if n in expected:
            assert round(priority_weights(t.values()).item(), 4) == expected[n]


def test_nb05_without_replacement_draw_frequencies():
    toy = ValueTracker(6)
    toy.init_from_counts(torch.tensor([0.0, 2, 4, 6, 8, 4]), torch.full((6,), 8.0))
    sampler = PrioritizedSampler(toy, batch_size=2, generator=torch.Generator().manual_seed(0))
    counts = np.zeros(6)
    for _ in range(4000):
        ids = sampler.sample().numpy()
        assert len(set(ids)) == 2
        counts[ids] += 1
    w = sampler.weights().numpy()
    assert np.abs(counts / 4000 - 2 * w / w.sum()).max() < 0.03


@pytest.mark.parametrize("num_prompts, steps, batch", [(2000, 200, 64), (500, 60, 32)])  # default, ci
def test_nb05_prioritized_draws_more_signal_than_uniform(num_prompts, steps, batch):
    z = degenerate.drifting_population(num_prompts, steps, seed=0)
    res = sampling.sampler_signal(z, batch=batch, strategies=("uniform", "prioritized", "thompson", "oracle"),
                             snapshot_steps=[steps // 2], seed=0)
    m = res.per_step.groupby("strategy")[["signal_std", "abs_adv", "informative"]].mean()
    assert m.loc["prioritized", "signal_std"] > 1.05 * m.loc["uniform", "signal_std"]
    assert m.loc["thompson", "signal_std"] > m.loc["uniform", "signal_std"]
    assert m.loc["oracle", "signal_std"] > m.loc["prioritized", "signal_std"]
    assert m.loc["prioritized", "informative"] > m.loc["uniform", "informative"]
    assert len(res.draws) == 4 * batch and set(res.draws.step) == {steps // 2}


def test_nb05_unknown_strategy_is_rejected():
    with pytest.raises(ValueError, match="strategy"):
        sampling.sampler_signal(degenerate.drifting_population(20, 2), batch=4, strategies=("greedy",))


def test_priority_weight_curves_are_the_library_formulas():
    curves = sampling.priority_weight_curves(eps=0.05, group_size=8, points=11)
    assert list(curves.columns) == ["v", "weight", "signal_chance", "eps", "G"] and len(curves) == 11
    np.testing.assert_allclose(curves["weight"], priority_weights(torch.tensor(curves["v"].to_numpy()), eps=0.05).numpy())
    np.testing.assert_allclose(curves["signal_chance"], 1 - degenerate_probability(curves["v"].to_numpy(), 8))
    assert curves.loc[curves.v == 0.5, "weight"].item() == pytest.approx(0.55)


# ====================================================================== figures
def test_plots_draw_the_data_they_are_given():
    z = degenerate.drifting_population(100, 10, seed=0)
    ax = _check_figure(sampling.plot_priority_weights(sampling.priority_weight_curves()))
    assert _legend_labels(ax) == ["w(v) = sqrt(v(1-v)) + 0.05", "1 - P_deg(v, G = 8)"]
    sr = sampling.sampler_signal(z, batch=8, strategies=("uniform", "prioritized"), snapshot_steps=[5])
    ax = _check_figure(sampling.plot_sampler_signal(sr.per_step))
    colours = {line.get_label(): line.get_color() for line in ax.get_lines()}
    assert colours == {"uniform": style.color("spo-uniform"), "prioritized": style.color("spo")}
    for y in ("abs_adv", "informative", "mean_p"):
        _check_figure(sampling.plot_sampler_signal(sr.per_step, y))
    _check_figure(sampling.plot_drawn_p(sr.draws, step=5))
    assert sampling.plot_drawn_p(sr.draws).get_title().startswith("pooled")


def test_every_plot_helper_is_tested_here():
    import inspect

    source = inspect.getsource(inspect.getmodule(test_every_plot_helper_is_tested_here))
    missing = [n for n in sampling.__all__ if n.startswith("plot_") and f"sampling.{n}(" not in source]
    assert not missing
