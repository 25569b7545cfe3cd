"""Figures of training runs (spo_lab.teaching.runs) on real metrics rows, and the summaries behind them.

Training plots get real ``metrics.jsonl`` rows from 3-step runs of the trainer on the ``toy`` model
(tests/conftest.py); the summaries are also checked on small hand-made rows. Figures are checked for
human axis labels, a legend placed off the data and dpi >= 110 (``_check_figure``).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from figure_checks import check_figure as _check_figure, legend_labels as _legend_labels  # noqa: E402
from spo_lab.teaching import runs, style  # noqa: E402

torch.set_num_threads(1)


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


# ====================================================================== summaries (hand-made rows)
def _rows():
    """Two seeds of "spo" and one of "grpo", steps 0-3, evaluation at steps 0 and 3."""
    rows = []
    for run, seed, acc, offset in (("spo", 0, 0.5, 0.0), ("spo", 1, 0.7, 0.1), ("grpo", 0, 0.4, 0.2)):
        for step in range(4):
            rows.append({"run": run, "seed": seed, "step": step, "responses": 16 * step,
                         "reward/mean": offset + 0.1 * step, "eval/greedy_acc": acc + 0.01 * step if step in (0, 3) else None,
                         "time/generate": 1.0 if step else 0.0, "time/update": 0.5 if step else 0.0,
                         "tracker/value_hist": [seed + 1, 0, 0, 3, 0, 0, 0, 0, 0, 0] if run == "spo" else None})
    return pd.DataFrame(rows)


def test_seed_summary_means_over_seeds():
    s = runs.seed_summary(_rows(), "eval/greedy_acc", x="step")
    assert list(s.columns) == ["run", "step", "mean", "std", "count", "n_seeds"]
    spo = s[s.run == "spo"].set_index("step")
    assert spo.loc[0, "mean"] == pytest.approx(0.6) and spo.loc[3, "mean"] == pytest.approx(0.63)
    assert spo.loc[0, "std"] == pytest.approx(np.std([0.5, 0.7], ddof=1)) and (spo["n_seeds"] == 2).all()
    assert s[s.run == "grpo"]["std"].isna().all() and (s[s.run == "grpo"]["n_seeds"] == 1).all()
    smooth = runs.seed_summary(_rows(), "reward/mean", smooth=2).query("run == 'grpo'")
    assert smooth["mean"].tolist() == pytest.approx([0.2, 0.25, 0.35, 0.45])
    with pytest.raises(ValueError, match="no rows"):
        runs.seed_summary(_rows().assign(**{"eval/greedy_acc": None}), "eval/greedy_acc")


def test_phase_times_amortise_over_training_steps():
    t = runs.phase_times(_rows())
    assert list(t.columns) == ["time/generate", "time/update"] and list(t.index) == ["grpo", "spo"]
    assert t.loc["spo", "time/generate"] == pytest.approx(1.0) and t.loc["grpo", "time/update"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="time"):
        runs.phase_times(_rows().drop(columns=["time/generate", "time/update"]))


def test_value_histogram_fractions_sum_to_one():
    f = runs.value_histogram_fractions(_rows()[lambda d: d.run == "spo"])
    assert list(f.index) == [0, 1, 2, 3] and f.shape[1] == 10
    np.testing.assert_allclose(f.sum(axis=1), 1.0)
    assert f.iloc[0, 0] == pytest.approx(1.5 / 4.5)  # mean over seeds of 1 and 2, out of 1.5 + 3
    with pytest.raises(ValueError, match="SPO"):
        runs.value_histogram_fractions(_rows()[lambda d: d.run == "grpo"])


def test_hand_made_rows_plot_with_method_colours():
    ax = _check_figure(runs.plot_learning_curves(_rows(), x="step"))
    assert ax.get_ylabel() == style.label("eval/greedy_acc")
    colours = {line.get_label(): line.get_color() for line in ax.get_lines()}
    assert colours == {"grpo (1 seed)": style.color("grpo"), "spo (2 seeds)": style.color("spo")}


# ====================================================================== training plots (real rows)
@pytest.mark.parametrize("x", ["responses", "responses_incl_init", "step"])
def test_learning_curves_mean_and_seed_band(metrics, x):
    ax = _check_figure(runs.plot_learning_curves(metrics, y="eval/greedy_acc", x=x))
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
        runs.plot_learning_curves(metrics, x="tokens")


def test_plot_metric_smooths_per_seed_before_averaging(metrics):
    ax = _check_figure(runs.plot_metric(metrics, "reward/mean", smooth=2))
    spo = metrics[(metrics.run == "spo") & metrics["reward/mean"].notna()].sort_values("step")
    smoothed = spo.groupby("seed")["reward/mean"].transform(lambda s: s.rolling(2, min_periods=1).mean())
    expected = smoothed.groupby(spo["step"]).mean().to_numpy()
    np.testing.assert_allclose(ax.get_lines()[1].get_ydata(), expected)


def test_plot_metric_on_an_existing_axes(metrics):
    fig, ax = plt.subplots()
    assert runs.plot_metric(metrics[metrics.run == "grpo"], "group/degenerate_frac", ax=ax) is ax
    assert _check_figure(ax, new_figure=False).get_ylabel() == "degenerate groups (fraction)"


def test_phase_times_stack_every_phase(metrics):
    ax = _check_figure(runs.plot_phase_times(metrics))
    shown = {label.split(":")[0] for label in _legend_labels(ax)}
    assert {"sample", "generate", "reward", "update", "tracker", "eval"} <= shown
    # a phase too thin to see as a band states its milliseconds in the legend
    thin = [label for label in _legend_labels(ax) if "too thin" in label]
    assert all(" ms " in label for label in thin)
    # bar heights per run add up to the mean seconds per training step
    grpo = metrics[metrics.run == "grpo"]
    total = grpo.filter(like="time/").fillna(0).to_numpy().sum() / (grpo.step > 0).sum()
    heights = [p.get_height() for p in ax.patches if p.get_x() < 0.5]  # first bar = grpo (sorted)
    assert sum(heights) == pytest.approx(total)


def test_value_histograms(metrics):
    ax = _check_figure(runs.plot_value_histograms(metrics[metrics.run == "spo"]))
    assert ax.get_ylim() == (0.0, 1.0)
    with pytest.raises(ValueError):
        runs.plot_value_histograms(metrics[metrics.run == "grpo"].assign(**{"tracker/value_hist": None}))


def test_variance_ratio_puts_the_paper_line_in_the_spo_panel():
    rows = [{"run": run, "seed": seed, "step": step, "reward/var": 0.24, "adv/raw_var": raw}
            for run, raw in (("spo", 0.19), ("grpo", 0.12)) for seed in (0, 1) for step in range(1, 6)]
    axes = runs.plot_variance_ratio(pd.DataFrame(rows), smooth=2)
    for ax in axes:
        _check_figure(ax, new_figure=False)
    assert any(label.startswith("paper:") for label in _legend_labels(axes[0]))
    assert not any(label.startswith("paper:") for label in _legend_labels(axes[1]))
    assert _legend_labels(axes[1]) == ["grpo (2 seeds)"] and "spo (2 seeds)" in _legend_labels(axes[0])
    spo_line = next(line for line in axes[0].get_lines() if line.get_label().startswith("spo"))
    assert spo_line.get_ydata() == pytest.approx([0.19 / 0.24] * 5)


def test_pass_at_k_with_reference():
    table = pd.DataFrame({"run": ["spo"] * 3 + ["grpo"] * 3, "k": [1, 2, 4] * 2,
                          "mean": [0.2, 0.3, 0.4, 0.1, 0.2, 0.3], "std": [0.01] * 6})
    ax = _check_figure(runs.plot_pass_at_k(table, reference=table.assign(mean=table["mean"] + 0.1)))
    assert ax.get_xscale() == "log"
    assert "paper: spo" in _legend_labels(ax)
    ax = runs.plot_pass_at_k(table, reference={"SPO avg@32": 0.56})
    assert "paper: SPO avg@32" in _legend_labels(ax)


def test_pass_at_k_colours_the_initial_policy():
    table = pd.DataFrame({"run": ["initial", "spo", "grpo"], "k": [1, 1, 1], "mean": [0.2, 0.3, 0.25], "std": np.nan})
    ax = _check_figure(runs.plot_pass_at_k(table))
    colours = {line.get_label(): line.get_color() for line in ax.get_lines()}
    assert colours["initial"] == style.color("initial") != colours["spo"]


def test_every_plot_helper_is_tested_here():
    import inspect

    source = inspect.getsource(inspect.getmodule(test_every_plot_helper_is_tested_here))
    missing = [n for n in runs.__all__ if n.startswith("plot_") and f"runs.{n}(" not in source]
    assert not missing
