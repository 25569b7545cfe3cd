"""The variance of the advantage each estimator feeds the loss (notebook 04): simulation and figures.

At equal responses per step, on the drifting population of :mod:`.degenerate`: SPO's single
response per prompt baselined by the library's :class:`~spo_lab.tracker.ValueTracker`, GRPO's
groups (:func:`~spo_lab.advantages.grpo_advantages`), the raw reward and an oracle baseline.

Paper claim illustrated: SPO's advantage variance is about half the raw reward's, and GRPO's over
the samples of non-degenerate groups is the highest.

What is simplified: the trajectory of p is *exogenous* (written down before the simulation), so
these numbers isolate the estimators and are not training results.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..advantages import grpo_advantages
from ..metrics import degenerate_fraction, degenerate_mask
from . import style
from .degenerate import sigmoid
from .tracking import _Follower

__all__ = [
    "ESTIMATORS",
    "advantage_variance",
    "summarise_advantage_variance",
    "plot_advantage_variance",
    "plot_advantage_variance_over_training",
]

ESTIMATORS = ("reward r", "oracle: r - p", "SPO: r - v", "GRPO (all samples)", "GRPO (non-degenerate)")
"""the estimators :func:`advantage_variance` reports, in display order"""


# ====================================================================== simulation
def advantage_variance(
    logits: np.ndarray,
    *,
    batch: int = 256,
    group_size: int = 8,
    divergence: str = "logprob",
    n0: int = 8,
    seed: int = 0,
) -> pd.DataFrame:
    """Per-step variance of the advantage each estimator would feed the loss, at equal responses.

    Each step t, with B = ``batch`` responses:

    - SPO: B prompts drawn uniformly without replacement, one response r ~ Bernoulli(p) each. The
      tracker's v is read first (it has followed every earlier visit, from an offline start of n0
      samples), then updated after the step with the policy z(t + 1), KL-adaptive rho.
      Reported: Var(r) ("reward r"), Var(r - v) ("SPO: r - v", SPO's advantage before the global
      normalisation),
      and Var(r - p) ("oracle: r - p", the best baseline possible, = mean p(1 - p) in expectation).
    - GRPO: B / G prompts drawn uniformly, G responses each; A from
      :func:`~spo_lab.advantages.grpo_advantages` (group std scaling). Reported over all B samples
      ("GRPO (all samples)") and over the samples of non-degenerate groups only
      ("GRPO (non-degenerate)").

    Variances are unbiased sample variances over the batch. Why the ranking: with v close to p,
    Var(r - v) ~ E[p (1 - p)] + E[(v - p)^2] while Var(r) = E[p (1 - p)] + Var(p), so the baseline
    removes the between-prompt spread Var(p), large in a polarised population. A std-scaled group
    advantage has mean square (G - 1) / G within every non-degenerate group, whatever p is.
    Illustrates the paper's statement that SPO's advantage variance is about half the raw reward's,
    and that GRPO's over non-degenerate samples is the highest.

    Returns:
        long DataFrame with columns step, estimator, variance (plus degenerate_frac per step, in
        rows of estimator "GRPO (all samples)").
    """
    z = np.asarray(logits, dtype=np.float64)
    steps, num_prompts = z.shape[0] - 1, z.shape[1]
    if batch % group_size or batch > num_prompts:
        raise ValueError("batch must be a multiple of group_size and at most the number of prompts")
    rng = np.random.default_rng(seed)
    follower = _Follower(z[0], divergence=divergence, n0=n0, rng=np.random.default_rng(seed + 1))
    rows = []
    for t in range(steps):
        p = sigmoid(z[t])
        ids = rng.choice(num_prompts, batch, replace=False)
        r = (rng.random(batch) < p[ids]).astype(np.float64)
        v = follower.values(ids)
        follower.update(ids, r, z[t + 1])
        g_ids = np.repeat(rng.choice(num_prompts, batch // group_size, replace=False), group_size)
        g_r = torch.from_numpy((rng.random(batch) < p[g_ids]).astype(np.float64))
        adv = grpo_advantages(g_r, group_size, scale="group")
        live = ~degenerate_mask(g_r, group_size).repeat_interleave(group_size)
        deg = degenerate_fraction(g_r, group_size)
        for name, x in (
            ("reward r", r),
            ("oracle: r - p", r - p[ids]),
            ("SPO: r - v", r - v),
            ("GRPO (all samples)", adv.numpy()),
            ("GRPO (non-degenerate)", adv[live].numpy()),
        ):
            row = {"step": t, "estimator": name, "variance": float(np.var(x, ddof=1)) if len(x) > 1 else np.nan}
            if name == "GRPO (all samples)":
                row["degenerate_frac"] = deg
            rows.append(row)
    return pd.DataFrame(rows)


def summarise_advantage_variance(df: pd.DataFrame, burn_in: int = 20) -> pd.DataFrame:
    """Mean per-step variance of each estimator over steps >= burn_in, and its ratio to Var(r).

    Returns:
        DataFrame indexed by estimator with columns variance, ratio_to_reward, in a fixed order.
    """
    order = ESTIMATORS
    m = df[df.step >= burn_in].groupby("estimator")["variance"].mean()
    m = m.reindex([o for o in order if o in m.index])
    return pd.DataFrame({"variance": m, "ratio_to_reward": m / m["reward r"]})


# ====================================================================== figures
def _estimator_style(name: str) -> dict:
    """Colour of the estimator's method; GRPO over non-degenerate samples dashed / hatched."""
    return {"color": style.color(name), "dashed": name == "GRPO (non-degenerate)"}


def plot_advantage_variance(summary, *, ax=None):
    """Bar chart of the mean per-step advantage variance of each estimator.

    ``summary`` from :func:`summarise_advantage_variance`. The paper's statement "SPO's advantage
    variance ~ half the raw reward's" is drawn as a grey dashed line at Var(r) / 2.
    """
    ax = style._ax(ax, figsize=(6.0, 3.2))
    names = list(summary.index)
    for i, name in enumerate(names):
        s = _estimator_style(name)
        ax.bar(i, summary.loc[name, "variance"], color=s["color"], hatch="//" if s["dashed"] else None,
               edgecolor="white" if s["dashed"] else None)
    ax.set_xticks(range(len(names)), [n.replace(" (", "\n(") for n in names], fontsize="x-small")
    if "reward r" in summary.index:
        style.paper_line(ax, 0.5 * summary.loc["reward r", "variance"], "SPO ~ half of Var(r)")
    ax.set_ylabel("advantage variance per batch\n(squared reward units)")
    ax.set_xlabel("estimator (mean over simulated steps)")
    style.legend(ax, fontsize="x-small")
    return ax


def plot_advantage_variance_over_training(df, *, ax=None, smooth=5):
    """Per-step advantage variance of each estimator against the (simulated) step, rolling-mean smoothed.

    ``df`` from :func:`advantage_variance`.
    """
    ax = style._ax(ax, figsize=(6.0, 3.2))
    for name, d in df.groupby("estimator", sort=False):
        d = d.sort_values("step")
        s = _estimator_style(name)
        ax.plot(d["step"], d["variance"].rolling(smooth, min_periods=1).mean(), color=s["color"],
                linestyle="--" if s["dashed"] else "-", label=name)
    ax.set_yscale("log")
    ax.set_xlabel("simulated training step")
    ax.set_ylabel(f"advantage variance per batch\n(rolling mean over {smooth} steps)")
    style.legend(ax, fontsize="x-small")
    return ax
