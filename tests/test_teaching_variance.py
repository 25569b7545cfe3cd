"""Notebook 04's simulations and figures (spo_lab.teaching.variance), and every number the notebook shows.

Each test named test_nb04_* checks a claim of a notebook 04 cell. Sizes are the notebook's default
profile unless a test says otherwise; every simulation here runs in a few seconds. Figures are checked
for human axis labels, a legend placed off the data and dpi >= 110 (``_check_figure``).
"""

from __future__ import annotations

import functools

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from figure_checks import check_figure as _check_figure, legend_labels as _legend_labels  # noqa: E402
from spo_lab import grpo_advantages, rloo_advantages, spo_advantages  # noqa: E402
from spo_lab.teaching import degenerate, style, variance  # noqa: E402

torch.set_num_threads(1)

RAW, NORM = variance.STAGES


# ====================================================================== sections 1-3: by hand
def test_nb04_hand_made_advantages():
    r = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
    v = torch.tensor([0.9, 0.1, 0.5, 0.2, 0.6])
    assert round(float((r - v).mean()), 4) == 0.14
    assert [round(a, 4) for a in spo_advantages(r, v).tolist()] == [-0.0739, -0.4434, 0.6651, 1.2193, -1.3671]
    assert [round(a, 4) for a in spo_advantages(r, torch.zeros(5)).tolist()] == [0.7303, -1.0954, 0.7303, 0.7303, -1.0954]


def test_nb04_group_mean_square_and_g1_trap():
    g = torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0])
    grpo = grpo_advantages(g, 8)
    assert float((grpo**2).mean()) == pytest.approx(7 / 8, abs=1e-5)
    assert (round(float(grpo[0]), 4), round(float(grpo[1]), 4)) == (2.4749, -0.3536)
    dr = grpo_advantages(g, 8, scale="none")
    assert torch.allclose(rloo_advantages(g, 8), dr * 8 / 7)
    assert grpo_advantages(torch.tensor([1.0, 0.0, 1.0]), 1).tolist() == [0.0, 0.0, 0.0]
    # every non-degenerate group has sum of squares G - 1, whatever its success rate
    for k in range(1, 8):
        a = grpo_advantages(torch.tensor([1.0] * k + [0.0] * (8 - k)), 8)
        assert float((a**2).sum()) == pytest.approx(7.0, abs=1e-4)


# ====================================================================== section 4: the in-sample shrinkage
def test_nb04_one_prompt_monte_carlo_matches_the_formulas():
    """The notebook's cell: p = 0.3, G = 8, 100,000 groups from torch seed 0."""
    p, g = 0.3, 8
    gen = torch.Generator().manual_seed(0)
    r = (torch.rand(100_000 * g, generator=gen, dtype=torch.float64) < p).double()
    oracle, group, loo = r - p, grpo_advantages(r, g, scale="none"), rloo_advantages(r, g)
    q = p * (1 - p)
    assert float((group**2).mean()) == pytest.approx((g - 1) / g * q, abs=2e-3)  # below the oracle's q
    assert float((loo**2).mean()) == pytest.approx(g / (g - 1) * q, abs=2e-3)  # above it
    assert float((group**2).mean()) < float((oracle**2).mean()) < float((loo**2).mean())
    assert variance.signal_share(oracle, r, p) == pytest.approx(1.0)
    assert variance.signal_share(group, r, p) == pytest.approx((g - 1) / g, abs=5e-3)
    assert variance.signal_share(loo, r, p) == pytest.approx(variance.signal_share(group, r, p), abs=1e-9)


def test_signal_share_is_scale_free_and_nan_without_spread():
    rng = np.random.default_rng(0)
    p = rng.random(500)
    r = (rng.random(500) < p).astype(float)
    a = r - 0.5 * p
    s = variance.signal_share(a, r, p)
    assert 0 < s < 1
    assert variance.signal_share(3.0 * a - 7.0, r, p) == pytest.approx(s)
    assert np.isnan(variance.signal_share(np.zeros(5), np.ones(5), np.full(5, 0.5)))
    assert np.isnan(variance.signal_share([1.0], [1.0], [0.5]))


def test_expected_raw_formulas():
    p = np.array([0.1, 0.1, 0.5, 0.5])
    q = float((p * (1 - p)).mean())
    e = variance.expected_raw(p, 8, v=p + 0.1 * np.array([1, -1, 1, -1]))
    assert list(e.index) == list(variance.RAW)
    assert e.loc["reward r", "variance"] == pytest.approx(q + p.var())
    assert e.loc["oracle: r - p"].tolist() == pytest.approx([q, 1.0])
    assert e.loc["SPO: r - v", "variance"] == pytest.approx(q + 0.01)
    assert e.loc["group mean: r - mean_g"].tolist() == pytest.approx([7 / 8 * q, 7 / 8])
    assert e.loc["leave-one-out: r - mean_-i"].tolist() == pytest.approx([8 / 7 * q, 7 / 8])
    assert "SPO: r - v" not in variance.expected_raw(p, 8).index


def test_nb04_variance_decomposition_two_prompts():
    p = np.array([0.05, 0.95])
    within, spread = (p * (1 - p)).mean(), p.var()
    assert (round(within, 4), round(spread, 4)) == (0.0475, 0.2025)
    assert round(within / (within + spread), 3) == 0.19


# ====================================================================== sections 5-6: the same batches
DEFAULT, CI = (2000, 200, 256, 20), (500, 60, 128, 10)  # the notebook's num_prompts, steps, batch, burn_in


@functools.lru_cache(maxsize=None)
def _same_batch(num_prompts, steps, batch, burn_in):
    sb = variance.same_batch_seeds(num_prompts, steps, seeds=range(3), batch=batch, group_size=8, keep_from=burn_in)
    return (num_prompts, steps, batch, burn_in), sb, variance.summarise_same_batch(sb, burn_in=burn_in)


@pytest.fixture(params=[DEFAULT, CI], ids=["default", "ci"])
def same_batch(request):
    return _same_batch(*request.param)


def test_nb04_same_batch_before_normalisation(same_batch):
    """Section 5: the group mean's variance below the oracle's, leave-one-out's above, both with share (G-1)/G;
    SPO's r - v a fraction of the raw reward's variance (paper: about half), between the oracle and r."""
    (_, _, _, burn_in), sb, s = same_batch
    raw = s.loc[RAW]
    assert list(raw.index) == list(variance.RAW)
    assert (raw["n_seeds"] == 3).all()
    var, share = raw["variance"], raw["signal_share"]
    assert var["group mean: r - mean_g"] < var["oracle: r - p"] < var["leave-one-out: r - mean_-i"]
    assert var["oracle: r - p"] < var["SPO: r - v"] < var["reward r"]
    assert raw.loc["SPO: r - v", "ratio_to_reward"] < 0.6
    assert share["oracle: r - p"] == pytest.approx(1.0)
    assert share["group mean: r - mean_g"] == pytest.approx(7 / 8, abs=0.02)
    assert share["leave-one-out: r - mean_-i"] == pytest.approx(share["group mean: r - mean_g"], abs=1e-9)
    assert share["reward r"] < share["SPO: r - v"] < 1
    # the formulas of expected_raw describe the measured numbers
    np.testing.assert_allclose(raw["variance"], raw["formula_variance"], rtol=0.05)
    np.testing.assert_allclose(raw["signal_share"], raw["formula_share"], atol=0.02)
    # the ordering holds in every seed, not only on average
    per_seed = sb.per_step[(sb.per_step.step >= burn_in) & (sb.per_step.stage == RAW)]
    m = per_seed.groupby(["seed", "estimator"])["variance"].mean().unstack()
    assert (m["group mean: r - mean_g"] < m["oracle: r - p"]).all()


def test_nb04_spo_share_below_the_group_mean_here():
    """Section 5's third point, for the default profile's population (the committed outputs): the tracker lags the
    drift, so SPO's signal share falls below the group mean's in every seed."""
    (_, _, _, burn_in), sb, _ = _same_batch(*DEFAULT)
    rows = sb.per_step[(sb.per_step.step >= burn_in) & (sb.per_step.stage == RAW)]
    m = rows.groupby(["seed", "estimator"])["signal_share"].mean().unstack()
    assert (m["SPO: r - v"] < m["group mean: r - mean_g"]).all()


def test_nb04_after_normalisation(same_batch):
    """Section 6: SPO's variance exactly 1 and its share unchanged; GRPO's set by the rule, (G-1)/G x live share."""
    (_, _, _, burn_in), sb, s = same_batch
    norm = s.loc[NORM]
    assert list(norm.index) == list(variance.NORMALISED)
    spo, grpo, live = variance.NORMALISED
    assert norm.loc[spo, "variance"] == pytest.approx(1.0, abs=1e-6)  # 1 up to the 1e-8 added to the std
    assert norm.loc[spo, "signal_share"] == pytest.approx(s.loc[(RAW, "SPO: r - v"), "signal_share"], abs=1e-9)
    assert 0.875 < norm.loc[live, "variance"] < 0.95
    assert np.isnan(norm.loc[live, "signal_share"])
    kept = sb.per_step[(sb.per_step.step >= burn_in) & (sb.per_step.estimator == "reward r")]
    deg = kept["degenerate_frac"].mean()
    assert norm.loc[grpo, "variance"] == pytest.approx(7 / 8 * (1 - deg), abs=0.01)
    assert norm.loc[grpo, "signal_share"] < s.loc[(RAW, "group mean: r - mean_g"), "signal_share"]
    # histogram data: SPO never exactly 0, GRPO exactly 0 on its degenerate groups
    a = sb.advantages
    assert set(a.estimator) == {spo, grpo} and (a.step >= burn_in).all()
    assert (a.loc[a.estimator == spo, "advantage"] != 0).all()
    assert (a.loc[a.estimator == grpo, "advantage"] == 0).mean() == pytest.approx(deg, abs=0.01)


def test_all_degenerate_groups_leave_no_group_signal():
    """Every prompt solved: every GRPO group is degenerate, its advantages 0 and its share undefined."""
    z = np.full((4, 64), 50.0)  # p = 1 for every prompt
    res = variance.same_batch_baselines(z, batch=32, group_size=8, seed=0)
    df = res.per_step
    assert list(df[df.stage == RAW].estimator.unique()) == list(variance.RAW)
    assert (df.degenerate_frac == 1.0).all()
    grpo = df[df.estimator.isin(["group mean: r - mean_g", variance.NORMALISED[1]])]
    assert (grpo["variance"] == 0.0).all() and grpo["signal_share"].isna().all()
    assert df[df.estimator == variance.NORMALISED[2]]["variance"].isna().all()
    assert res.advantages.empty


def test_same_batch_rejects_a_ragged_batch():
    with pytest.raises(ValueError, match="multiple of group_size"):
        variance.same_batch_baselines(np.zeros((3, 100)), batch=30, group_size=8)


# ====================================================================== figures
def test_plots_draw_the_data_they_are_given():
    sb = variance.same_batch_seeds(200, 12, seeds=(0, 1), batch=64, group_size=8, keep_from=2)
    summary = variance.summarise_same_batch(sb, burn_in=2)
    axes = variance.plot_same_batch(summary)
    for ax in axes:
        _check_figure(ax)
    raw = summary.loc[RAW]
    np.testing.assert_allclose([p.get_height() for p in axes[0].patches], raw["variance"])
    np.testing.assert_allclose([p.get_height() for p in axes[1].patches], raw["signal_share"])
    spo_bar = axes[0].patches[list(raw.index).index("SPO: r - v")]
    assert spo_bar.get_facecolor()[:3] == pytest.approx(matplotlib.colors.to_rgb(style.color("spo")))
    grpo_bar = axes[0].patches[list(raw.index).index("group mean: r - mean_g")]
    assert grpo_bar.get_facecolor()[:3] == pytest.approx(matplotlib.colors.to_rgb(style.color("grpo")))
    assert "2 seeds" in axes[0].get_xlabel()

    ax = _check_figure(variance.plot_normalised_histogram(sb.advantages))
    labels = _legend_labels(ax)
    assert len(labels) == 3 and labels[0].startswith(variance.NORMALISED[0]) and "none is exactly 0" in labels[0]
    assert labels[1].startswith(variance.NORMALISED[1]) and "exactly 0" in labels[2]
    # GRPO's exact zeros are a bar of their own, as a share of all its samples (not left out of the figure)
    grpo = sb.advantages.loc[sb.advantages["estimator"] == variance.NORMALISED[1], "advantage"].to_numpy()
    zero_bar = [p for p in ax.patches if p.get_hatch()]
    assert len(zero_bar) == 1 and zero_bar[0].get_height() == pytest.approx((grpo == 0).mean())


def test_every_plot_helper_is_tested_here():
    import inspect

    source = inspect.getsource(inspect.getmodule(test_every_plot_helper_is_tested_here))
    missing = [n for n in variance.__all__ if n.startswith("plot_") and f"variance.{n}(" not in source]
    assert not missing
