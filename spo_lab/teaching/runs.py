"""Figures of training runs, from the trainer's metrics rows (notebooks 01, 02, 04, 06, 07 and the main job).

The helpers take a *long* DataFrame: the trainer's metrics rows (``pandas.read_json(path,
lines=True)``, see :mod:`spo_lab.train`) concatenated over runs, with two added columns ``run``
(str) and ``seed`` (int) -- what :func:`spo_lab.teaching.notebook.short_run` returns.

The summaries behind the figures are plain functions returning DataFrames (:func:`seed_summary`,
:func:`phase_times`, :func:`value_histogram_fractions`); each plot helper applies one of them to the
rows it is given and draws the result. Several seeds are averaged per x value, with a band of +-1
standard deviation over seeds; curves are coloured per method (:mod:`.style`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import keys as k
from . import style

__all__ = [
    "X_AXES",
    "seed_summary",
    "phase_times",
    "value_histogram_fractions",
    "plot_learning_curves",
    "plot_metric",
    "plot_phase_times",
    "plot_value_histograms",
    "plot_variance_ratio",
    "plot_pass_at_k",
]

X_AXES = (k.RESPONSES, k.RESPONSES_INCL_INIT, k.STEP)
"""the training budgets a learning curve can be drawn against"""


# ====================================================================== summaries
def seed_summary(df: pd.DataFrame, y: str, *, x: str = "step", hue: str = "run", smooth: int = 1) -> pd.DataFrame:
    """Mean and standard deviation over seeds of ``y`` at each x, per ``hue`` level.

    Only rows where y is not null are used. With ``smooth`` > 1, a rolling mean (window ``smooth``,
    ``min_periods=1``) first runs over each (hue, seed) series in x order. A missing ``seed`` column
    counts as one seed.

    Returns:
        DataFrame with columns hue, x, mean, std (NaN for one seed), count, n_seeds (per hue level).
    """
    d = df[df[y].notna()].copy()
    if d.empty:
        raise ValueError(f"no rows with a value for {y!r}")
    if "seed" not in d.columns:
        d["seed"] = 0
    if smooth > 1:
        d = d.sort_values(x)
        d[y] = d.groupby([hue, "seed"])[y].transform(lambda s: s.rolling(smooth, min_periods=1).mean())
    stats = d.groupby([hue, x])[y].agg(["mean", "std", "count"]).reset_index()
    stats["n_seeds"] = stats[hue].map(d.groupby(hue)["seed"].nunique())
    return stats.sort_values([hue, x], ignore_index=True)


def phase_times(df: pd.DataFrame) -> pd.DataFrame:
    """Mean seconds per training step of each ``time/*`` phase, per run.

    Per (run, seed): the phase's seconds summed over all rows / the number of training steps (rows
    with step > 0), so evaluation, which runs every few steps, is amortised; then the mean over seeds.

    Returns:
        DataFrame indexed by run (sorted), one column per ``time/*`` key, the trainer's phases first.
    """
    d = df.copy()
    if "seed" not in d.columns:
        d["seed"] = 0
    cols = [k.time_key(p) for p in style.PHASES if k.time_key(p) in d.columns]
    cols += sorted(c for c in d.columns if c.startswith("time/") and c not in cols)
    if not cols:
        raise ValueError("no time/* columns")
    per_seed = []
    for (run, _seed), g in d.groupby(["run", "seed"], sort=True):
        n = max(int((g["step"] > 0).sum()), 1)
        per_seed.append({"run": run, **{c: g[c].fillna(0).sum() / n for c in cols}})
    return pd.DataFrame(per_seed).groupby("run", sort=True)[cols].mean()


def value_histogram_fractions(df_one_run: pd.DataFrame) -> pd.DataFrame:
    """The tracker's value histogram (``tracker/value_hist``) at each logged step, as fractions of prompts.

    Each metrics row holds 10 counts of prompts with v in [0, 0.1), ..., [0.9, 1]. Counts are averaged
    over seeds if several are present, then divided by their sum.

    Returns:
        DataFrame indexed by step, one column per bin (named by its lower edge), rows summing to 1.
    """
    d = df_one_run[df_one_run[k.VALUE_HIST].notna()]
    if d.empty:
        raise ValueError("no tracker/value_hist rows (an SPO run is needed)")
    hist = d.groupby(k.STEP)[k.VALUE_HIST].apply(lambda s: np.mean(np.stack([np.asarray(h, float) for h in s]), axis=0))
    h = np.stack(hist.to_numpy())
    bins = h.shape[1]
    return pd.DataFrame(h / h.sum(axis=1, keepdims=True), index=hist.index,
                        columns=np.round(np.linspace(0.0, 1.0, bins + 1)[:-1], 6))


# ====================================================================== figures
def plot_learning_curves(df, *, y=k.GREEDY_ACC, x=k.RESPONSES, hue="run", ax=None, band="std"):
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
    if x not in X_AXES:
        raise ValueError(f"x must be one of {X_AXES}, got {x!r}")
    if band not in ("std", None):
        raise ValueError(f"band must be 'std' or None, got {band!r}")
    ax = style._ax(ax)
    style.seed_band(ax, seed_summary(df, y, x=x, hue=hue), x=x, hue=hue, band_std=band == "std")
    ax.set_xlabel(style.label(x))
    ax.set_ylabel(style.label(y))
    style.legend(ax)
    return ax


def plot_metric(df, y, *, x="step", hue="run", ax=None, smooth=1):
    """Any per-step metric against x, smoothed by a rolling mean of ``smooth`` rows per seed first.

    The rolling mean (window ``smooth``, ``min_periods=1``) runs over each (run, seed) series in x
    order, then seeds are averaged and a +-1 std band is drawn (:func:`seed_summary`).
    """
    if int(smooth) != smooth or smooth < 1:
        raise ValueError(f"smooth must be a positive integer, got {smooth!r}")
    ax = style._ax(ax)
    style.seed_band(ax, seed_summary(df, y, x=x, hue=hue, smooth=int(smooth)), x=x, hue=hue)
    ax.set_xlabel(style.label(x))
    ax.set_ylabel(style.label(y))
    if smooth > 1:
        ax.set_title(f"rolling mean over {int(smooth)} steps", fontsize="small")
    style.legend(ax)
    return ax


def plot_phase_times(df, *, ax=None):
    """Where does a step's time go? Stacked bars of :func:`phase_times`, one bar per run.

    Phases too short to see as a band (sampling the prompts, scoring, syncing weights: milliseconds)
    carry their seconds per step, per run, in the legend, so no phase is invisible.
    """
    ax = style._ax(ax)
    table = phase_times(df)
    bottom = np.zeros(len(table))
    total = table.sum(axis=1).to_numpy()
    for c in table.columns:
        phase = c.removeprefix("time/")
        values = table[c].to_numpy()
        name = phase
        if (values < 0.02 * total).all():  # thinner than ~2 % of every bar: state it in numbers
            name = f"{phase}: " + " / ".join(f"{v * 1e3:.1f}" for v in values) + " ms (too thin to see)"
        ax.bar(table.index.astype(str), values, bottom=bottom, label=name, color=style.PHASE_COLORS.get(phase))
        bottom += values
    ax.set_ylabel("seconds per training step")
    ax.set_xlabel("training run (" + " / ".join(table.index.astype(str)) + ")")
    ax.set_ylim(0, 1.45 * float(total.max()))  # room for the legend above the bars
    style.legend(ax, title="phase", title_fontsize="small", fontsize="x-small")
    return ax


def plot_value_histograms(df_one_run, *, ax=None):
    """Heatmap of the tracker's values over training: :func:`value_histogram_fractions` against step.

    With the official offline start from n0 = 8 samples every prompt begins at one of the nine values
    (k + 0.5) / 9, k = 0..8: none lies in [0.4, 0.5) (0.389 and 0.5 are its neighbours), so that bin
    starts empty and fills only as updates move values into it; the figure says so in its title.
    """
    ax = style._ax(ax)
    frac = value_histogram_fractions(df_one_run)
    s = frac.index.to_numpy().astype(float)
    # step edges: midpoints between logged steps
    edges = np.concatenate([[s[0] - 0.5], (s[1:] + s[:-1]) / 2, [s[-1] + 0.5]]) if len(s) > 1 else np.array([s[0] - 0.5, s[0] + 0.5])
    mesh = ax.pcolormesh(edges, np.linspace(0, 1, frac.shape[1] + 1), frac.to_numpy().T, cmap="viridis", shading="flat")
    ax.figure.colorbar(mesh, ax=ax, label="prompts in the bin (fraction)")
    ax.set_xlabel("training step")
    ax.set_ylabel("tracker value v")
    return ax


def plot_variance_ratio(df, *, paper=0.5, smooth=10, axes=None, group_runs=("grpo",)):
    """Var(advantage before normalisation) / Var(reward) per step: SPO's runs and the group runs side by side.

    The paper's "about half" is a statement about SPO's r - v, so its reference line is drawn in the SPO
    panel only; the group runs' r - mean_g (smaller by construction, notebook 04) get their own panel.
    Returns the two Axes.
    """
    if axes is None:
        import matplotlib.pyplot as plt

        _, axes = plt.subplots(1, 2, figsize=(11, 3.4), dpi=style.DPI, sharey=True, layout="constrained")
    ratio = df.assign(ratio=df[k.ADV_RAW_VAR] / df[k.REWARD_VAR].where(df[k.REWARD_VAR] > 0))
    ratio = ratio[ratio["ratio"].notna()]
    single = ratio[~ratio["run"].isin(group_runs)]
    groups = ratio[ratio["run"].isin(group_runs)]
    for ax, part, title in ((axes[0], single, "SPO: Var(r - v) / Var(r)"),
                            (axes[1], groups, "GRPO: Var(r - group mean) / Var(r)")):
        if not part.empty:
            plot_metric(part, "ratio", smooth=smooth, ax=ax)
        ax.set_title(f"{title}, rolling mean over {smooth} steps", fontsize="small")
        ax.set_xlabel(style.label(k.STEP))
        ax.set_ylabel("advantage variance before normalisation\n/ reward variance (ratio)")
    if paper is not None:
        style.paper_line(axes[0], paper, f"SPO ~ {paper:g} (Qwen3-8B)")
        style.legend(axes[0])
    return axes


def plot_pass_at_k(table, *, ax=None, reference=None):
    """pass@k against k (log2 axis), one curve per run with a +-std band.

    Args:
        table: columns run, k, mean, std (std may be NaN for one seed).
        reference: optional comparison -- a DataFrame with columns run, k, mean drawn dashed as
            "paper: <run>", or a {label: value} dict / a single float drawn with :func:`~.style.paper_line`.
    """
    ax = style._ax(ax)
    runs = sorted(table["run"].unique(), key=str)
    palette = style.colors(runs)
    for run in runs:
        g = table[table["run"] == run].sort_values("k")
        std = g["std"].to_numpy() if "std" in g.columns and g["std"].notna().any() else None
        style.band(ax, g["k"].to_numpy(), g["mean"].to_numpy(), std, label=str(run), color=palette[run],
                   marker="o", markersize=3)
    if isinstance(reference, pd.DataFrame):
        for run, g in reference.groupby("run", sort=True):
            g = g.sort_values("k")
            ax.plot(g["k"], g["mean"], linestyle="--", color=style.METHOD_COLORS["paper"], marker=".", label=f"paper: {run}")
    elif isinstance(reference, dict):
        for label, value in reference.items():
            style.paper_line(ax, value, label)
    elif reference is not None:
        style.paper_line(ax, float(reference), "reference")
    ax.set_xscale("log", base=2)
    ax.set_xlabel(style.label("k"))
    ax.set_ylabel(style.label("pass@k"))
    style.legend(ax)
    return ax
