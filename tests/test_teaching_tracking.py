"""Notebook 03's simulations and figures (spo_lab.teaching.tracking), and every number the notebook shows.

Each test named test_nb03_* checks a claim of a notebook 03 cell. Sizes are the notebook's default
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
from spo_lab import ValueTracker, rho_from_kl  # noqa: E402
from spo_lab.teaching import tracking  # noqa: E402
from spo_lab.teaching.degenerate import sigmoid  # noqa: E402

torch.set_num_threads(1)


# ====================================================================== notebook 03: the value tracker
def test_nb03_ema_identity_and_window():
    t = ValueTracker(1)
    for r in [1.0, 1.0, 0.0, 1.0, 1.0]:
        v, n = t.values()[0].item(), t.n_eff()[0].item()
        predicted = v + (r - v) / (0.96 * n + 1)
        t.update([0], [r])
        assert t.values()[0].item() == pytest.approx(predicted, abs=1e-12)
        assert t.n_eff()[0].item() == pytest.approx(0.96 * n + 1)
    assert round(t.values()[0].item(), 4) == 0.7552
    for _ in range(300):
        t.update([0], [1.0])
    assert t.n_eff()[0].item() == pytest.approx(25.0, abs=1e-3)


def test_nb03_rho_table():
    rho = rho_from_kl(torch.tensor([0.0, 0.002, 0.005, 0.008, 0.0116, 0.03, 0.06, 0.5], dtype=torch.float64))
    assert rho.numpy().round(4).tolist() == [0.96, 0.96, 0.9439, 0.9117, 0.875, 0.875, 0.875, 0.875]
    window = 1 / (1 - rho)
    assert window.min() == pytest.approx(8.0) and window.max() == pytest.approx(25.0)


def test_nb03_optimal_window_matches_official_range():
    """Drift of 1 point per visit -> W* ~ 9; 0.2 points -> W* ~ 25 (the 8-25 clip range)."""
    w = tracking.optimal_window(0.5, np.array([0.001, 0.002, 0.005, 0.01, 0.02]))
    assert w.round(1).tolist() == [40.0, 25.3, 13.9, 8.9, 5.7]
    approx = (0.25 / (4 * np.array([0.002, 0.01]) ** 2)) ** (1 / 3)
    assert approx.round(1).tolist() == [25.0, 8.5]


def test_nb03_formula_terms():
    # no drift: the EMA's variance p(1-p)(1-rho)/(1+rho)
    assert tracking.ema_tracking_mse(0.5, 0.96) == pytest.approx(0.25 * 0.04 / 1.96)
    # pure lag: drift * W squared
    assert tracking.ema_tracking_mse(0.0, 0.9, 0.01) == pytest.approx((0.01 * 10) ** 2)


@pytest.mark.parametrize("rho", [0.875, 0.93, 0.96])
def test_nb03_ramp_simulation_matches_formula(rho):
    ramp = tracking.ramp_logits(400, 400, p_start=0.3, slope=0.001)
    res = tracking.track(ramp, rho=rho, seed=0)
    b = 100
    simulated = ((res.v[b:] - res.p[b:]) ** 2).mean()
    formula = tracking.ema_tracking_mse(res.p[b:, 0], rho, 0.001).mean()
    assert simulated == pytest.approx(formula, rel=0.05)


def test_nb03_track_reads_value_before_the_update():
    z = tracking.bandit_logits(5, 10, seed=1)
    res = tracking.track(z, rho=0.9, seed=2)
    # replay by hand: same offline start, same rewards
    t = ValueTracker(5, rho_min=0.9, rho_max=0.9)
    k = np.random.default_rng(3).binomial(8, sigmoid(z[0]))
    t.init_from_counts(torch.tensor(k, dtype=torch.float64), torch.full((5,), 8.0, dtype=torch.float64))
    for step in range(10):
        np.testing.assert_allclose(res.v[step], t.values().numpy())
        t.update(torch.arange(5), torch.tensor(res.rewards[step]))
    assert (res.rho == 0.9).all()


@pytest.mark.parametrize("num_prompts, steps, burn_in", [(400, 400, 50), (100, 150, 30)])  # default, ci
def test_nb03_tracking_error_is_u_shaped_and_adaptive_is_competitive(num_prompts, steps, burn_in):
    z = tracking.bandit_logits(num_prompts, steps, seed=0)
    table = tracking.tracking_error_sweep(z, burn_in=burn_in, seed=0)
    const = table[table.method == "constant"].set_index("rho")
    best = const["mse"].idxmin()
    assert 8 <= 1 / (1 - best) <= 25  # the best fixed window lies in the official range
    assert const.loc[0.5, "mse"] > 2 * const["mse"].min()  # too short: noise
    assert const.loc[0.99, "mse"] > 2 * const["mse"].min()  # too long: lag
    adaptive = table.set_index("method")
    assert adaptive.loc["adaptive (logprob)", "mse"] <= const["mse"].min()
    assert 0.875 <= adaptive.loc["adaptive (logprob)", "rho"] <= 0.96
    # the KL variant sees a smaller D, so it stays closer to rho_max
    assert adaptive.loc["adaptive (kl)", "rho"] > adaptive.loc["adaptive (logprob)", "rho"]


def test_nb03_adaptive_rho_reacts_to_a_jump():
    z = np.zeros((41, 1))
    z[21:] = 3.0  # one jump after visit 20
    res = tracking.track(z, rho=None, divergence="logprob", seed=0)
    assert res.rho[0, 0] == pytest.approx(0.96)  # first visit: D = 0
    assert res.rho[20, 0] == pytest.approx(0.875)  # the update right after the jump
    assert res.rho[30, 0] == pytest.approx(0.96)  # calm again


def test_window_formula_curves_mark_the_optimum():
    curves = tracking.window_formula_curves(0.5, (0.002, 0.01))
    assert set(curves.columns) == {"p", "drift", "window", "mse", "optimal"}
    for d, g in curves.groupby("drift"):
        np.testing.assert_allclose(g["mse"], tracking.ema_tracking_mse(0.5, 1 - 1 / g["window"].to_numpy(), d))
        best = g[g.optimal]
        assert len(best) == 1
        # the grid's minimum is the numeric optimum to within the grid spacing (1.3 %)
        assert best["window"].iloc[0] == pytest.approx(tracking.optimal_window(0.5, d), rel=0.02)
    assert len(tracking.window_formula_curves(0.5, (0.01,), windows=[2, 8, 32])) == 3


# ====================================================================== figures
def test_plots_draw_the_data_they_are_given():
    zb = tracking.bandit_logits(20, 30, seed=0)
    res = {"a": tracking.track(zb, rho=0.9), "b": tracking.track(zb)}
    ax = _check_figure(tracking.plot_tracking_trace(res, 0))
    assert _legend_labels(ax) == ["true p", "a", "b"]
    assert len({line.get_color() for line in ax.get_lines()}) == 3
    _check_figure(tracking.plot_rho_trace(res, 0))
    ax = _check_figure(tracking.plot_tracking_error(tracking.tracking_error_sweep(zb, rhos=(0.8, 0.9), burn_in=5)))
    assert "official window range 8-25" in _legend_labels(ax)
    curves = tracking.window_formula_curves(0.5, (0.002, 0.005, 0.01, 0.02))
    ax = _check_figure(tracking.plot_window_formula(curves))
    assert ax.get_ylabel().startswith("tracking MSE at p = 0.5")
    assert len(ax.get_lines()) == 8  # a curve and its optimum per drift


def test_every_plot_helper_is_tested_here():
    import inspect

    source = inspect.getsource(inspect.getmodule(test_every_plot_helper_is_tested_here))
    missing = [n for n in tracking.__all__ if n.startswith("plot_") and f"tracking.{n}(" not in source]
    assert not missing
