"""Notebook 08's simulations and figures (spo_lab.teaching.sync), and every number the notebook shows.

Each test named test_nb08_* checks a claim of a notebook 08 cell. Sizes are the notebook's default
profile unless a test says otherwise; every simulation here runs in about a second. Figures are checked
for human axis labels, a legend placed off the data and dpi >= 110 (``_check_figure``).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from figure_checks import check_figure as _check_figure, legend_labels as _legend_labels  # noqa: E402
from spo_lab.teaching import sync  # noqa: E402


# ====================================================================== notebook 08: synchronisation barriers
def test_nb08_hand_made_barrier():
    lat = np.array([1.0, 1.2, 0.8, 6.0, 0.9, 1.1, 1.3, 0.7])
    assert sync.group_sync_time(lat, 4) == 6.0
    assert sync.group_sync_time(lat, 4, keep_groups=1) == 1.3
    assert sync.single_stream_time(lat, 4) == 1.0


@pytest.mark.parametrize("dist", ["lognormal", "pareto"])
def test_nb08_latencies_have_the_stated_median(dist):
    lat = sync.rollout_latencies(200_000, dist=dist, tail=2.0, median=3.0, rng=0)
    assert np.median(lat) == pytest.approx(3.0, rel=0.02)


def test_nb08_speedup_above_one_and_growing_with_the_tail():
    logn = sync.sync_barrier_sweep([0.25, 0.5, 0.75, 1.0, 1.25, 1.5], trials=500, seed=0)
    assert (logn.ratio > 1).all() and (np.diff(logn.ratio) > 0).all()
    assert (logn.ratio > logn.ratio_first).all() and (logn.ratio_first > 1).all()
    par = sync.sync_barrier_sweep([1.5, 2.0, 2.5, 3.0, 5.0, 10.0], dist="pareto", trials=500, seed=0)
    assert (par.ratio > 1).all() and (np.diff(par.ratio) < 0).all()  # smaller alpha = heavier tail
    # steady stream: B E[L] / M
    assert logn.steady_stream.iloc[0] == pytest.approx(24 * np.exp(0.25**2 / 2) / 48)


@pytest.mark.parametrize("trials", [4000, 500])  # default, ci
def test_nb08_matching_tail_reproduces_the_paper_ratio(trials):
    target = sync.PAPER_GROUP_SECONDS / sync.PAPER_SINGLE_SECONDS
    assert round(target, 2) == 4.34 and sync.PAPER_SPEEDUP == 4.35
    kw = dict(trials=trials, seed=0)
    sigma = sync.matching_tail(target, dist="lognormal", **kw)
    alpha = sync.matching_tail(target, dist="pareto", **kw)
    assert 0.6 < sigma < 0.8 and 2.0 < alpha < 3.0
    assert sync.sync_barrier_sweep([sigma], **kw).ratio.iloc[0] == pytest.approx(target, rel=1e-3)
    assert sync.sync_barrier_sweep([alpha], dist="pareto", **kw).ratio.iloc[0] == pytest.approx(target, rel=1e-3)


def test_nb08_discarding_degenerate_groups_costs_extra_rounds():
    kw = dict(trials=2000, seed=0)
    plain = sync.sync_barrier_sweep([0.7], **kw).iloc[0]
    filtered = sync.sync_barrier_sweep([0.7], usable_prob=0.4, **kw).iloc[0]
    assert filtered.group_sync > 2 * plain.group_sync  # ~ 1 / 0.4 rounds on average, each a barrier
    assert filtered.single_stream == pytest.approx(plain.single_stream)


def test_nb08_bad_arguments():
    with pytest.raises(ValueError):
        sync.group_sync_time(np.ones(7), 4)
    with pytest.raises(ValueError):
        sync.rollout_latencies(3, dist="weibull")
    with pytest.raises(ValueError):
        sync.sync_barrier_sweep([1.0], batch=24, pool=16)


def test_rollout_timeline_of_a_hand_made_trial():
    groups = np.array([1.0, 1.2, 0.8, 6.0, 0.9, 1.1, 1.3, 0.7])
    pool = np.array([0.5, 3.0, 0.6, 0.4, 9.0, 0.7, 2.0, 0.55])
    tl = sync.rollout_timeline(groups, pool, group_size=4, batch=4)
    assert tl.group_done == 6.0 and tl.single_done == 0.6
    r = tl.rollouts
    assert r[r.lane == "groups"]["group"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert r[r.lane == "groups"]["used"].all()
    assert r[r.lane == "pool"]["used"].tolist() == [True, False, True, True, False, False, False, True]


# ====================================================================== figures
def test_plots_draw_the_data_they_are_given():
    rng = np.random.default_rng(0)
    tl = sync.rollout_timeline(rng.lognormal(size=24), rng.lognormal(size=48), 8, 24)
    ax = _check_figure(sync.plot_rollout_timeline(tl))
    assert len(ax.patches) == 24 + 48
    assert _legend_labels(ax) == [f"group-wise done: {tl.group_done:.1f}", f"first 24 of 48: {tl.single_done:.1f}"]
    ax = _check_figure(sync.plot_sync_barrier(sync.sync_barrier_sweep([0.5, 1.0], trials=50)))
    assert any(lbl.startswith("paper: 4.35x") for lbl in _legend_labels(ax))
    _check_figure(sync.plot_sync_barrier(sync.sync_barrier_sweep([2.0, 3.0], dist="pareto", trials=50)))


def test_every_plot_helper_is_tested_here():
    import inspect

    source = inspect.getsource(inspect.getmodule(test_every_plot_helper_is_tested_here))
    missing = [n for n in sync.__all__ if n.startswith("plot_") and f"sync.{n}(" not in source]
    assert not missing
