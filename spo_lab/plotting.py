"""Every plot of spo_lab: training curves from ``metrics.jsonl`` and the figures of the simulations.

Conventions, shared by all helpers:

- each takes an optional ``ax`` (a new small figure is made if None) and returns that Axes;
- axes carry units ("responses", "seconds per step", "fraction of samples"), curves a legend;
- several seeds are averaged per x value, with a band of +-1 standard deviation over seeds;
- :func:`paper_line` draws the paper's number beside ours as a dashed grey line labelled "paper: ...".

Training helpers take a *long* DataFrame: the trainer's metrics rows (``pandas.read_json(path,
lines=True)``, see :mod:`spo_lab.train`) concatenated over runs, with two added columns ``run``
(str) and ``seed`` (int).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

__all__ = [
    "paper_line",
    "plot_learning_curves",
    "plot_metric",
    "plot_phase_times",
    "plot_value_histograms",
    "plot_pass_at_k",
    "plot_degenerate_probability",
    "plot_degenerate_fraction",
    "plot_success_histograms",
    "plot_tracking_trace",
    "plot_rho_trace",
    "plot_tracking_error",
    "plot_window_formula",
    "plot_advantage_variance",
    "plot_advantage_variance_over_training",
    "plot_priority_weights",
    "plot_sampler_signal",
    "plot_drawn_p",
    "plot_rollout_timeline",
    "plot_sync_barrier",
]

FIGSIZE = (5.0, 3.2)
X_LABELS = {
    "responses": "training responses generated",
    "responses_incl_init": "responses generated, incl. the offline init pass",
    "step": "training step",
}
PHASES = ("sample", "generate", "score", "update", "tracker", "eval")


def _log_y_plain(ax):
    """Log-scaled y axis with plain tick labels (1, 2, 5, 10, ...) instead of powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _ax(ax, figsize=FIGSIZE):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def paper_line(ax, value, label):
    """Dashed grey horizontal line at ``value``, labelled "paper: <label>" in the legend. Returns ax."""
    ax.axhline(value, color="0.4", linestyle="--", linewidth=1.0, label=f"paper: {label}")
    return ax


# ====================================================================== training curves
def _seed_band(df: pd.DataFrame, x: str, y: str, hue: str, ax, band, smooth: int = 1):
    """Mean over seeds of y against x for each hue level, with an optional +-1 std band."""
    d = df[df[y].notna()].copy()
    if d.empty:
        raise ValueError(f"no rows with a value for {y!r}")
    if "seed" not in d.columns:
        d["seed"] = 0
    if smooth > 1:
        d = d.sort_values(x)
        d[y] = d.groupby([hue, "seed"])[y].transform(lambda s: s.rolling(smooth, min_periods=1).mean())
    for name, g in d.groupby(hue, sort=True):
        stats = g.groupby(x)[y].agg(["mean", "std", "count"]).sort_index()
        n_seeds = g["seed"].nunique()
        line, = ax.plot(stats.index, stats["mean"], label=f"{name} ({n_seeds} seed{'s' if n_seeds != 1 else ''})")
        if band == "std" and n_seeds > 1:
            sd = stats["std"].fillna(0.0)
            ax.fill_between(stats.index, stats["mean"] - sd, stats["mean"] + sd, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel(X_LABELS.get(x, x))
    ax.set_ylabel(y)
    ax.legend(fontsize="small")
    return ax


def plot_learning_curves(df, *, y="eval/greedy_acc", x="responses", hue="run", ax=None, band="std"):
    """Held-out metric against training budget: mean over seeds, +-1 std band (over seeds) per run.

    Args:
        df: long metrics DataFrame (columns ``run``, ``seed``, x, y); only rows where y is not null
            are used (evaluation rows).
        y: the metric column, e.g. ``"eval/greedy_acc"`` or ``"eval/sampled_acc"``.
        x: ``"responses"`` (equal budget), ``"responses_incl_init"`` (SPO's offline pass counted) or
            ``"step"``.
        hue: the column that names a curve.
        band: ``"std"`` for the seed band, None for the mean only.
    """
    if x not in X_LABELS:
        raise ValueError(f"x must be one of {tuple(X_LABELS)}, got {x!r}")
    if band not in ("std", None):
        raise ValueError(f"band must be 'std' or None, got {band!r}")
    ax = _seed_band(df, x, y, hue, _ax(ax), band)
    if y.endswith("_acc"):
        ax.set_ylabel(f"{y} (fraction correct)")
    return ax


def plot_metric(df, y, *, x="step", hue="run", ax=None, smooth=1):
    """Any per-step metric against x, smoothed by a rolling mean of ``smooth`` rows per seed first.

    The rolling mean (window ``smooth``, ``min_periods=1``) runs over each (run, seed) series in x
    order, then seeds are averaged and a +-1 std band is drawn.
    """
    if int(smooth) != smooth or smooth < 1:
        raise ValueError(f"smooth must be a positive integer, got {smooth!r}")
    ax = _seed_band(df, x, y, hue, _ax(ax), "std", smooth=int(smooth))
    if smooth > 1:
        ax.set_title(f"rolling mean over {int(smooth)} steps", fontsize="small")
    return ax


def plot_phase_times(df, *, ax=None):
    """Where does a step's time go? Mean seconds per training step of each ``time/*`` phase, per run.

    Per (run, seed): sum of the phase's seconds over all rows / number of training steps (rows with
    step > 0), so evaluation, which runs every few steps, is amortised; then the mean over seeds.
    Stacked bars, one per run.
    """
    ax = _ax(ax)
    d = df.copy()
    if "seed" not in d.columns:
        d["seed"] = 0
    cols = [f"time/{p}" for p in PHASES if f"time/{p}" in d.columns]
    cols += sorted(c for c in d.columns if c.startswith("time/") and c not in cols)
    if not cols:
        raise ValueError("no time/* columns")
    per_seed = []
    for (run, seed), g in d.groupby(["run", "seed"], sort=True):
        n = max(int((g["step"] > 0).sum()), 1)
        per_seed.append({"run": run, **{c: g[c].fillna(0).sum() / n for c in cols}})
    table = pd.DataFrame(per_seed).groupby("run", sort=True)[cols].mean()
    bottom = np.zeros(len(table))
    for c in cols:
        ax.bar(table.index.astype(str), table[c].to_numpy(), bottom=bottom, label=c.removeprefix("time/"))
        bottom += table[c].to_numpy()
    ax.set_ylabel("seconds per training step")
    ax.set_xlabel("run")
    ax.legend(fontsize="small", title="phase", title_fontsize="small")
    return ax


def plot_value_histograms(df_one_run, *, ax=None):
    """Heatmap of the tracker's values over training: column ``tracker/value_hist`` against step.

    Each row of the metrics holds 10 counts of prompts with v in [0, 0.1), ..., [0.9, 1]. Counts are
    averaged over seeds if several are present and shown as the fraction of prompts per bin.
    """
    ax = _ax(ax)
    d = df_one_run[df_one_run["tracker/value_hist"].notna()]
    if d.empty:
        raise ValueError("no tracker/value_hist rows (an SPO run is needed)")
    hist = d.groupby("step")["tracker/value_hist"].apply(lambda s: np.mean(np.stack([np.asarray(h, float) for h in s]), axis=0))
    steps = hist.index.to_numpy()
    h = np.stack(hist.to_numpy())
    frac = h / h.sum(axis=1, keepdims=True)
    bins = h.shape[1]
    # step edges: midpoints between logged steps
    s = steps.astype(float)
    edges = np.concatenate([[s[0] - 0.5], (s[1:] + s[:-1]) / 2, [s[-1] + 0.5]]) if len(s) > 1 else np.array([s[0] - 0.5, s[0] + 0.5])
    mesh = ax.pcolormesh(edges, np.linspace(0, 1, bins + 1), frac.T, cmap="viridis", shading="flat")
    ax.figure.colorbar(mesh, ax=ax, label="fraction of prompts")
    ax.set_xlabel("training step")
    ax.set_ylabel("tracker value v")
    return ax


def plot_pass_at_k(table, *, ax=None, reference=None):
    """pass@k against k (log2 axis), one curve per run with a +-std band.

    Args:
        table: columns run, k, mean, std (std may be NaN for one seed).
        reference: optional comparison -- a DataFrame with columns run, k, mean drawn dashed as
            "paper: <run>", or a {label: value} dict / a single float drawn with :func:`paper_line`.
    """
    ax = _ax(ax)
    for run, g in table.groupby("run", sort=True):
        g = g.sort_values("k")
        line, = ax.plot(g["k"], g["mean"], marker="o", markersize=3, label=str(run))
        if "std" in g.columns and g["std"].notna().any():
            sd = g["std"].fillna(0.0)
            ax.fill_between(g["k"], g["mean"] - sd, g["mean"] + sd, color=line.get_color(), alpha=0.2, linewidth=0)
    if isinstance(reference, pd.DataFrame):
        for run, g in reference.groupby("run", sort=True):
            g = g.sort_values("k")
            ax.plot(g["k"], g["mean"], linestyle="--", color="0.4", marker=".", label=f"paper: {run}")
    elif isinstance(reference, dict):
        for label, value in reference.items():
            paper_line(ax, value, label)
    elif reference is not None:
        paper_line(ax, float(reference), "reference")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (samples per problem)")
    ax.set_ylabel("pass@k (fraction of problems)")
    ax.legend(fontsize="small")
    return ax


# ====================================================================== simulations: degenerate groups
def plot_degenerate_probability(group_sizes=(2, 4, 8, 16), *, ax=None):
    """P(degenerate | p, G) = p^G + (1 - p)^G against p, one curve per G (SPO_SPEC Sec. 2)."""
    from .metrics import degenerate_probability

    ax = _ax(ax)
    p = np.linspace(0, 1, 201)
    for g in group_sizes:
        ax.plot(p, degenerate_probability(p, g), label=f"G = {g}")
    ax.set_xlabel("prompt success probability p")
    ax.set_ylabel("P(all G rewards equal)")
    ax.legend(fontsize="small")
    return ax


def plot_degenerate_fraction(df, *, ax=None, paper=True):
    """Degenerate share over (simulated) training: expected lines, one sampled batch per step as dots.

    ``df`` from :func:`spo_lab.simulate.degenerate_groups`. With ``paper=True`` the paper's reported
    range for GRPO with G = 8 (~60 % at the start, over 80 % later) is drawn as two dashed lines.
    """
    ax = _ax(ax)
    for g, d in df.groupby("G", sort=True):
        line, = ax.plot(d["step"], d["expected"], label=f"G = {g} expected")
        ax.plot(d["step"], d["sampled"], ".", markersize=2, alpha=0.5, color=line.get_color())
    if paper:
        paper_line(ax, 0.6, "~60 % at start (G = 8)")
        ax.axhline(0.8, color="0.4", linestyle=":", linewidth=1.0, label="paper: >80 % later (G = 8)")
    ax.set_xlabel("simulated training step")
    ax.set_ylabel("fraction of samples in\ndegenerate groups")
    ax.set_ylim(0, 1)
    ax.legend(fontsize="x-small", ncol=2)
    return ax


def plot_success_histograms(logits, steps, *, ax=None, bins=20):
    """Histograms of the prompts' success probability p = sigmoid(z) at a few steps of a trajectory."""
    from .simulate import sigmoid

    ax = _ax(ax)
    edges = np.linspace(0, 1, bins + 1)
    for t in steps:
        ax.hist(sigmoid(logits[t]), bins=edges, histtype="step", density=False, label=f"step {t}")
    ax.set_xlabel("prompt success probability p")
    ax.set_ylabel("number of prompts")
    ax.legend(fontsize="small")
    return ax


# ====================================================================== simulations: the tracker
def plot_tracking_trace(results, prompt=0, *, ax=None, max_steps=None):
    """One prompt's true p and the tracker values v of several trackers, over visits.

    ``results`` maps a label to a :class:`spo_lab.simulate.TrackResult` (all on the same trajectory).
    """
    ax = _ax(ax, figsize=(6.0, 3.2))
    first = next(iter(results.values()))
    t = np.arange(first.p.shape[0] if max_steps is None else min(max_steps, first.p.shape[0]))
    ax.plot(t, first.p[t, prompt], color="black", linewidth=2, label="true p")
    for label, res in results.items():
        ax.plot(t, res.v[t, prompt], linewidth=1, label=label)
    ax.set_xlabel("visit of the prompt")
    ax.set_ylabel("success probability")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize="x-small")
    return ax


def plot_tracking_error(table, *, ax=None, band=(8, 25)):
    """Tracking MSE against the effective window W = 1 / (1 - rho) (log axis).

    ``table`` from :func:`spo_lab.simulate.tracking_error_sweep`: constant-rho trackers as a line,
    adaptive ones as stars at their mean window. The official clip range of windows (8 to 25) is shaded.
    """
    ax = _ax(ax)
    const = table[table["method"] == "constant"].sort_values("window")
    ax.plot(const["window"], const["mse"], "o-", label="constant rho")
    for _, row in table[table["method"] != "constant"].iterrows():
        ax.plot([row["window"]], [row["mse"]], "*", markersize=12, label=f"{row['method']}, mean rho {row['rho']:.3f}")
    if band is not None:
        ax.axvspan(*band, color="0.85", zorder=0, label=f"official window range {band[0]}-{band[1]}")
    ax.set_xscale("log")
    ax.set_xlabel("effective window 1 / (1 - rho) (observations)")
    ax.set_ylabel("tracking MSE (v - p)^2")
    ax.legend(fontsize="x-small")
    return ax


def plot_window_formula(p=0.5, drifts=(0.002, 0.005, 0.01, 0.02), *, ax=None):
    """The analytic noise-plus-lag error of :func:`spo_lab.simulate.ema_tracking_mse` against W."""
    from .simulate import ema_tracking_mse

    ax = _ax(ax)
    w = np.geomspace(1, 200, 400)
    for d in drifts:
        mse = ema_tracking_mse(p, 1 - 1 / w, d)
        line, = ax.plot(w, mse, label=f"drift {d:g} per visit")
        i = int(np.argmin(mse))
        ax.plot(w[i], mse[i], "o", color=line.get_color())
    ax.axvspan(8, 25, color="0.85", zorder=0, label="official window range 8-25")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("effective window W = 1 / (1 - rho) (observations)")
    ax.set_ylabel(f"MSE at p = {p:g}")
    ax.legend(fontsize="x-small")
    return ax


# ====================================================================== simulations: advantages
def plot_advantage_variance(summary, *, ax=None):
    """Bar chart of the mean per-step advantage variance of each estimator.

    ``summary`` from :func:`spo_lab.simulate.summarise_advantage_variance`. The paper's statement
    "SPO's advantage variance ~ half the raw reward's" is drawn as a dashed line at Var(r) / 2.
    """
    ax = _ax(ax, figsize=(6.0, 3.2))
    names = list(summary.index)
    ax.bar(range(len(names)), summary["variance"].to_numpy(), color=[f"C{i}" for i in range(len(names))])
    ax.set_xticks(range(len(names)), [n.replace(" (", "\n(") for n in names], fontsize="x-small")
    if "reward r" in summary.index:
        paper_line(ax, 0.5 * summary.loc["reward r", "variance"], "SPO ~ half of Var(r)")
    ax.set_ylabel("advantage variance per batch")
    ax.set_xlabel("estimator (mean over steps)")
    ax.legend(fontsize="x-small")
    return ax


def plot_advantage_variance_over_training(df, *, ax=None, smooth=5):
    """Per-step advantage variance of each estimator against the (simulated) step, rolling-mean smoothed."""
    ax = _ax(ax, figsize=(6.0, 3.2))
    for name, d in df.groupby("estimator", sort=False):
        d = d.sort_values("step")
        ax.plot(d["step"], d["variance"].rolling(smooth, min_periods=1).mean(), label=name)
    ax.set_yscale("log")
    ax.set_xlabel("simulated training step")
    ax.set_ylabel(f"variance (rolling mean, {smooth} steps)")
    ax.legend(fontsize="x-small")
    return ax


# ====================================================================== simulations: sampling
def plot_priority_weights(eps=0.05, *, ax=None):
    """The curriculum's weight w(v) = sqrt(v (1 - v)) + eps and the GRPO-8 signal chance 1 - P_deg(v, 8)."""
    from .metrics import degenerate_probability
    from .sampler import priority_weights

    ax = _ax(ax)
    v = np.linspace(0, 1, 201)
    ax.plot(v, priority_weights(v, eps=eps).numpy(), label=f"w(v) = sqrt(v(1-v)) + {eps:g}")
    ax.plot(v, 1 - degenerate_probability(v, 8), "--", label="1 - P_deg(v, G = 8)")
    ax.set_xlabel("value v (success probability)")
    ax.set_ylabel("weight / probability")
    ax.legend(fontsize="small")
    return ax


def plot_sampler_signal(per_step, y="signal_std", *, ax=None, smooth=5):
    """A per-step sampler metric (from :func:`spo_lab.simulate.sampler_signal`) for each strategy."""
    labels = {
        "signal_std": "mean sqrt(p(1-p)) of the batch",
        "abs_adv": "mean E|r - v| of the batch",
        "informative": "share of drawn prompts with\na non-degenerate G=8 group (expected)",
        "mean_p": "mean p of the batch",
    }
    ax = _ax(ax)
    for name, d in per_step.groupby("strategy", sort=False):
        d = d.sort_values("step")
        ax.plot(d["step"], d[y].rolling(smooth, min_periods=1).mean(), label=name)
    ax.set_xlabel("simulated training step")
    ax.set_ylabel(labels.get(y, y))
    ax.legend(fontsize="small")
    return ax


def plot_drawn_p(draws, *, step=None, ax=None, bins=10):
    """Distribution of the true p of the prompts each strategy drew, as shares of its draws.

    ``draws`` from :func:`spo_lab.simulate.sampler_signal`; one snapshot ``step``, or all snapshot
    steps pooled (``step=None``).
    """
    ax = _ax(ax)
    d = draws if step is None else draws[draws["step"] == step]
    edges = np.linspace(0, 1, bins + 1)
    for name, g in d.groupby("strategy", sort=False):
        ax.hist(g["p"], bins=edges, weights=np.full(len(g), 1.0 / len(g)), histtype="step", linewidth=1.5, label=name)
    ax.set_xlabel("true success probability p of the drawn prompt")
    ax.set_ylabel("share of drawn prompts (log)")
    ax.set_yscale("log")
    n_steps = d["step"].nunique()
    ax.set_title(f"simulated step {step}" if step is not None else f"pooled over {n_steps} snapshot steps", fontsize="small")
    ax.legend(fontsize="small")
    return ax


# ====================================================================== simulations: throughput
def plot_rollout_timeline(group_latencies, pool_latencies, group_size, batch, *, ax=None):
    """One trial drawn as horizontal bars: B rollouts in groups (top) and a pool of M (bottom).

    The group-wise batch is ready when its slowest rollout finishes; the single-stream batch when the
    B-th of the M pooled rollouts finishes. Both finish lines are marked.
    """
    from .simulate import group_sync_time, single_stream_time

    ax = _ax(ax, figsize=(6.0, 3.6))
    g = np.asarray(group_latencies, dtype=float)
    m = np.asarray(pool_latencies, dtype=float)
    t_group = float(group_sync_time(g, group_size))
    t_single = float(single_stream_time(m, batch))
    y = 0
    for i, lat in enumerate(g):
        ax.barh(y, lat, height=0.8, color=f"C{i // group_size}", alpha=0.8)
        y += 1
    y += 1
    cutoff = np.sort(m)[batch - 1]
    for lat in m:
        ax.barh(y, lat, height=0.8, color="C7" if lat <= cutoff else "0.85")
        y += 1
    ax.axvline(t_group, color="C3", linestyle="--", label=f"group-wise done: {t_group:.1f}")
    ax.axvline(t_single, color="C2", linestyle="--", label=f"first {batch} of {len(m)}: {t_single:.1f}")
    ax.set_yticks([len(g) / 2, len(g) + 1 + len(m) / 2], [f"{len(g)} rollouts\n(groups of {group_size})", f"pool of {len(m)}"], fontsize="small")
    ax.invert_yaxis()
    ax.set_ylabel("rollouts (one bar each)")
    ax.set_xlabel("time (units of the median rollout latency)")
    ax.legend(fontsize="small", loc="lower right")
    return ax


def plot_sync_barrier(table, *, ax=None, paper=True):
    """Speed-up of single-stream over group-synchronous collection against the latency tail parameter.

    ``table`` from :func:`spo_lab.simulate.sync_barrier_sweep`: the ratio of mean collection times
    (group_sync / single_stream, and group_first / single_stream). The paper's 4.35x is drawn dashed.
    """
    from .simulate import PAPER_SPEEDUP

    ax = _ax(ax)
    dist = table["dist"].iloc[0]
    ax.plot(table["tail"], table["ratio"], "o-", label="group-wise B / single-stream")
    if "ratio_first" in table.columns:
        ax.plot(table["tail"], table["ratio_first"], "s--", label="first B/G of M/G groups / single-stream")
    if paper:
        paper_line(ax, PAPER_SPEEDUP, f"{PAPER_SPEEDUP}x (486 s vs 112 s)")
    ax.set_xlabel("lognormal sigma (heavier ->)" if dist == "lognormal" else "Pareto shape alpha (<- heavier)")
    ax.set_ylabel("speed-up (ratio of mean times)")
    _log_y_plain(ax)
    ax.legend(fontsize="x-small")
    return ax


def plot_rho_trace(results, prompt=0, *, ax=None, max_steps=None):
    """The discount rho each tracker applied at every visit of one prompt (same trajectory).

    ``results`` maps a label to a :class:`spo_lab.simulate.TrackResult`; the official clip
    interval [0.875, 0.96] bounds the KL-adaptive trackers.
    """
    ax = _ax(ax, figsize=(6.0, 2.4))
    first = next(iter(results.values()))
    t = np.arange(first.rho.shape[0] if max_steps is None else min(max_steps, first.rho.shape[0]))
    for label, res in results.items():
        ax.plot(t, res.rho[t, prompt], linewidth=1, label=label)
    ax.set_xlabel("visit of the prompt")
    ax.set_ylabel("discount rho applied")
    ax.legend(fontsize="x-small")
    return ax
