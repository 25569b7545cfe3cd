"""Every plotting helper runs on the data it is meant for and labels its axes.

Training plots get real ``metrics.jsonl`` rows from 3-step runs of the trainer on the ``toy`` model
(tests/conftest.py); simulation plots get the simulations' own outputs at a small size.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from spo_lab import plotting  # noqa: E402
from spo_lab import simulate as sim  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def metrics(toy, tmp_path_factory):
    """Long metrics of SPO (2 seeds) and GRPO (1 seed), 3 steps each, with run and seed columns."""
    from spo_lab.train import Config, train

    root = tmp_path_factory.mktemp("plot_runs")
    frames = []
    for run, seed, extra in (("spo", 0, {}), ("spo", 1, {}), ("grpo", 0, {"algo": "grpo"})):
        cfg = Config(model=str(toy / "model"), data_dir=str(toy / "data"), out=str(root / f"{run}{seed}"),
                     cache_dir=str(root / "cache"), steps=3, responses_per_step=16, group_size=4, n0=2,
                     eval_every=2, progress=False, save_model=False, lr=1e-3, seed=seed, **extra)
        df = pd.read_json(train(cfg) / "metrics.jsonl", lines=True)
        df.insert(0, "seed", seed)
        df.insert(0, "run", run)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def _labelled(ax):
    assert ax.get_xlabel() and ax.get_ylabel()
    return ax


def _legend_labels(ax):
    leg = ax.get_legend()
    return [t.get_text() for t in leg.get_texts()] if leg else []


# ====================================================================== training plots
@pytest.mark.parametrize("x", ["responses", "responses_incl_init", "step"])
def test_learning_curves_mean_and_seed_band(metrics, x):
    ax = _labelled(plotting.plot_learning_curves(metrics, y="eval/greedy_acc", x=x))
    labels = _legend_labels(ax)
    assert labels == ["grpo (1 seed)", "spo (2 seeds)"]
    # one line per run, through the evaluation rows only (steps 0, 2, 3)
    for line in ax.get_lines():
        assert len(line.get_xdata()) == 3
    spo = metrics[(metrics.run == "spo") & metrics["eval/greedy_acc"].notna()]
    expected = spo.groupby(x)["eval/greedy_acc"].mean().to_numpy()
    np.testing.assert_allclose(ax.get_lines()[1].get_ydata(), expected)
    assert len(ax.collections) == 1  # the band: SPO only (GRPO has one seed)


def test_learning_curves_reject_unknown_x(metrics):
    with pytest.raises(ValueError, match="x must be"):
        plotting.plot_learning_curves(metrics, x="tokens")


def test_plot_metric_smooths_per_seed_before_averaging(metrics):
    ax = _labelled(plotting.plot_metric(metrics, "reward/mean", smooth=2))
    spo = metrics[(metrics.run == "spo") & metrics["reward/mean"].notna()].sort_values("step")
    smoothed = spo.groupby("seed")["reward/mean"].transform(lambda s: s.rolling(2, min_periods=1).mean())
    expected = smoothed.groupby(spo["step"]).mean().to_numpy()
    np.testing.assert_allclose(ax.get_lines()[1].get_ydata(), expected)


def test_plot_metric_on_an_existing_axes(metrics):
    fig, ax = plt.subplots()
    assert plotting.plot_metric(metrics[metrics.run == "grpo"], "grpo/degenerate_frac", ax=ax) is ax


def test_phase_times_stack_every_phase(metrics):
    ax = _labelled(plotting.plot_phase_times(metrics))
    assert {"sample", "generate", "score", "update", "tracker", "eval"} <= set(_legend_labels(ax))
    # bar heights per run add up to the mean seconds per training step
    grpo = metrics[metrics.run == "grpo"]
    total = grpo.filter(like="time/").fillna(0).to_numpy().sum() / (grpo.step > 0).sum()
    heights = [p.get_height() for p in ax.patches if p.get_x() < 0.5]  # first bar = grpo (sorted)
    assert sum(heights) == pytest.approx(total)


def test_value_histograms(metrics):
    ax = _labelled(plotting.plot_value_histograms(metrics[metrics.run == "spo"]))
    assert ax.get_ylim() == (0.0, 1.0)
    with pytest.raises(ValueError):
        plotting.plot_value_histograms(metrics[metrics.run == "grpo"].assign(**{"tracker/value_hist": None}))


def test_pass_at_k_with_reference():
    table = pd.DataFrame({"run": ["spo"] * 3 + ["grpo"] * 3, "k": [1, 2, 4] * 2,
                          "mean": [0.2, 0.3, 0.4, 0.1, 0.2, 0.3], "std": [0.01] * 6})
    ax = _labelled(plotting.plot_pass_at_k(table, reference=table.assign(mean=table["mean"] + 0.1)))
    assert ax.get_xscale() == "log"
    assert "paper: spo" in _legend_labels(ax)
    ax = plotting.plot_pass_at_k(table, reference={"SPO avg@32": 0.56})
    assert "paper: SPO avg@32" in _legend_labels(ax)


def test_paper_line():
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], label="ours")
    assert plotting.paper_line(ax, 0.6, "~60 %") is ax
    ax.legend()
    line = ax.get_lines()[-1]
    assert line.get_linestyle() == "--" and list(line.get_ydata()) == [0.6, 0.6]
    assert "paper: ~60 %" in _legend_labels(ax)


# ====================================================================== simulation plots
def test_simulation_plots_run_and_label():
    z = sim.drifting_population(100, 10, seed=0)
    _labelled(plotting.plot_degenerate_probability())
    _labelled(plotting.plot_degenerate_fraction(sim.degenerate_groups(z, (4, 8), sample_prompts=16)))
    _labelled(plotting.plot_success_histograms(z, [0, 10]))
    zb = sim.bandit_logits(20, 30, seed=0)
    res = {"a": sim.track(zb, rho=0.9), "b": sim.track(zb)}
    _labelled(plotting.plot_tracking_trace(res, 0))
    _labelled(plotting.plot_rho_trace(res, 0))
    _labelled(plotting.plot_tracking_error(sim.tracking_error_sweep(zb, rhos=(0.8, 0.9), burn_in=5)))
    _labelled(plotting.plot_window_formula())
    av = sim.advantage_variance(z, batch=32, group_size=8)
    _labelled(plotting.plot_advantage_variance(sim.summarise_advantage_variance(av, burn_in=2)))
    _labelled(plotting.plot_advantage_variance_over_training(av))
    _labelled(plotting.plot_priority_weights())
    sr = sim.sampler_signal(z, batch=8, strategies=("uniform", "prioritized"), snapshot_steps=[5])
    _labelled(plotting.plot_sampler_signal(sr.per_step))
    _labelled(plotting.plot_drawn_p(sr.draws, step=5))
    assert plotting.plot_drawn_p(sr.draws).get_title().startswith("pooled")
    rng = np.random.default_rng(0)
    _labelled(plotting.plot_rollout_timeline(rng.lognormal(size=24), rng.lognormal(size=48), 8, 24))
    ax = _labelled(plotting.plot_sync_barrier(sim.sync_barrier_sweep([0.5, 1.0], trials=50)))
    assert any(lbl.startswith("paper: 4.35x") for lbl in _legend_labels(ax))


def test_every_public_helper_is_tested_here():
    import inspect

    source = inspect.getsource(inspect.getmodule(test_every_public_helper_is_tested_here))
    missing = [name for name in plotting.__all__ if f"plotting.{name}(" not in source]
    assert not missing
