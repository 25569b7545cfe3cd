"""What prioritised sampling draws, and how much learning signal it carries (notebook 05).

Each strategy keeps its own library :class:`~spo_lab.tracker.ValueTracker`, fed only by the prompts
it drew; the curriculum is the library's (:class:`~spo_lab.sampler.PrioritizedSampler`,
:func:`~spo_lab.sampler.priority_weights`), on the drifting population of :mod:`.degenerate`.

Paper claim illustrated: prioritised sampling with weights sqrt(v (1 - v)) + eps (Sec. 3.6) draws
the prompts whose rewards still vary, i.e. where the learning signal is.

What is simplified: the trajectory of p is *exogenous*: sampling changes what the tracker knows and
what is drawn, not how the prompts learn, so this measures the curriculum's aim, not its effect.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..metrics import degenerate_probability
from ..sampler import PrioritizedSampler, priority_weights, sample_without_replacement
from . import style
from .degenerate import sigmoid
from .tracking import _Follower

__all__ = [
    "SamplerResult",
    "sampler_signal",
    "priority_weight_curves",
    "plot_priority_weights",
    "plot_sampler_signal",
    "drawn_p_shares",
    "plot_drawn_p",
]


# ====================================================================== simulation
@dataclass
class SamplerResult:
    """Output of :func:`sampler_signal`."""

    per_step: pd.DataFrame
    """columns step, strategy, signal_std, abs_adv, informative, mean_p"""
    draws: pd.DataFrame
    """columns step, strategy, p: the true p of every prompt drawn at the snapshot steps"""


def sampler_signal(
    logits: np.ndarray,
    *,
    batch: int = 64,
    strategies=("uniform", "prioritized", "thompson"),
    divergence: str = "logprob",
    n0: int = 8,
    eps: float = 0.05,
    snapshot_steps=(),
    seed: int = 0,
) -> SamplerResult:
    """Which prompts does each sampling strategy draw, and how much learning signal do they carry?

    Each strategy keeps its own tracker, fed only by the prompts it drew (one response each,
    D-adaptive rho, offline start of n0 samples). Strategies:

    - ``"uniform"``: B distinct prompts, all equally likely;
    - ``"prioritized"``: :class:`~spo_lab.sampler.PrioritizedSampler`, B distinct prompts with
      probability proportional to w = sqrt(v (1 - v)) + eps (posterior mean v, official);
    - ``"thompson"``: the same with v drawn from Beta(alpha, beta) (not the official behaviour);
    - ``"oracle"``: the same weights computed from the TRUE p (:func:`~spo_lab.sampler.priority_weights`),
      an upper bound for what a perfect tracker would let the curriculum do.

    Reported per step, averaged over the drawn batch and computed with the TRUE p (the tracker only
    decides who is drawn):

    - signal_std = mean sqrt(p (1 - p)), the reward's standard deviation, i.e. the typical |A|;
    - abs_adv = mean E|r - v| = mean [p (1 - v) + (1 - p) v], the expected |advantage| before
      normalisation with the tracker's baseline;
    - informative = mean [1 - P_deg(p, 8)], the share of drawn prompts whose GRPO group of 8 would
      not be degenerate;
    - mean_p.

    The trajectory is exogenous: sampling changes what the tracker knows and what is drawn, not how
    the prompts learn, so this measures the curriculum's aim, not its effect on training.
    Illustrates the paper's prioritised sampling (Sec. 3.6).
    """
    z = np.asarray(logits, dtype=np.float64)
    steps, num_prompts = z.shape[0] - 1, z.shape[1]
    snapshot_steps = set(int(s) for s in snapshot_steps)
    rows, draws = [], []
    for si, strategy in enumerate(strategies):
        rng = np.random.default_rng(seed)
        follower = _Follower(z[0], divergence=divergence, n0=n0, rng=np.random.default_rng(seed + 1))
        gen = torch.Generator().manual_seed(seed + 2)
        if strategy in ("prioritized", "thompson"):
            sampler = PrioritizedSampler(follower.tracker, batch, eps=eps, thompson=strategy == "thompson", generator=gen)
        elif strategy not in ("uniform", "oracle"):
            raise ValueError(f"unknown strategy {strategy!r}")
        for t in range(steps):
            p = sigmoid(z[t])
            if strategy == "uniform":
                ids = sample_without_replacement(torch.ones(num_prompts), batch, gen).numpy()
            elif strategy == "oracle":
                ids = sample_without_replacement(priority_weights(torch.from_numpy(p), eps=eps), batch, gen).numpy()
            else:
                ids = sampler.sample().numpy()
            v = follower.values(ids)
            pi = p[ids]
            r = (rng.random(batch) < pi).astype(np.float64)
            follower.update(ids, r, z[t + 1])
            rows.append({
                "step": t,
                "strategy": strategy,
                "signal_std": float(np.sqrt(pi * (1 - pi)).mean()),
                "abs_adv": float((pi * (1 - v) + (1 - pi) * v).mean()),
                "informative": float((1 - degenerate_probability(pi, 8)).mean()),
                "mean_p": float(pi.mean()),
            })
            if t in snapshot_steps:
                draws.extend({"step": t, "strategy": strategy, "p": float(x)} for x in pi)
    return SamplerResult(per_step=pd.DataFrame(rows), draws=pd.DataFrame(draws, columns=["step", "strategy", "p"]))


def priority_weight_curves(eps: float = 0.05, group_size: int = 8, *, points: int = 201) -> pd.DataFrame:
    """The curriculum's weight and GRPO's signal chance on a grid of values v in [0, 1].

    - weight = w(v) = sqrt(v (1 - v)) + eps (:func:`~spo_lab.sampler.priority_weights`);
    - signal_chance = 1 - P_deg(v, G), the chance that a GRPO group of G at success probability v
      is not degenerate (:func:`~spo_lab.metrics.degenerate_probability`).

    Returns:
        DataFrame with columns v, weight, signal_chance, eps, G.
    """
    v = np.linspace(0.0, 1.0, points)
    return pd.DataFrame({
        "v": v,
        "weight": priority_weights(v, eps=eps).numpy(),
        "signal_chance": 1.0 - degenerate_probability(v, group_size),
        "eps": float(eps),
        "G": int(group_size),
    })


# ====================================================================== figures
def plot_priority_weights(curves: pd.DataFrame, *, ax=None):
    """w(v) = sqrt(v (1 - v)) + eps and the GRPO signal chance 1 - P_deg(v, G), from :func:`priority_weight_curves`."""
    ax = style._ax(ax)
    eps, g = curves["eps"].iloc[0], int(curves["G"].iloc[0])
    ax.plot(curves["v"], curves["weight"], color=style.color("prioritized"), label=f"w(v) = sqrt(v(1-v)) + {eps:g}")
    ax.plot(curves["v"], curves["signal_chance"], "--", color=style.color("grpo"), label=f"1 - P_deg(v, G = {g})")
    ax.set_xlabel("value v (success probability)")
    ax.set_ylabel("sampling weight w(v) /\nprobability of a non-degenerate group")
    style.legend(ax)
    return ax


def plot_sampler_signal(per_step, y="signal_std", *, ax=None, smooth=5):
    """A per-step sampler metric (``per_step`` of :func:`sampler_signal`) for each strategy."""
    ax = style._ax(ax)
    strategies = list(dict.fromkeys(per_step["strategy"]))
    palette = style.colors(strategies)
    for name in strategies:
        d = per_step[per_step["strategy"] == name].sort_values("step")
        ax.plot(d["step"], d[y].rolling(smooth, min_periods=1).mean(), color=palette[name], label=name)
    ax.set_xlabel("simulated training step")
    ax.set_ylabel(style.label(y))
    style.legend(ax)
    return ax


def drawn_p_shares(draws, *, step=None, bins=10) -> pd.DataFrame:
    """Share of each strategy's drawn prompts per bin of their true p (rows: bins by lower edge; columns: strategies).

    ``draws`` of :func:`sampler_signal`; one snapshot ``step``, or all snapshot steps pooled (``step=None``).
    """
    d = draws if step is None else draws[draws["step"] == step]
    edges = np.linspace(0, 1, bins + 1)
    out = {}
    for name in dict.fromkeys(d["strategy"]):
        counts, _ = np.histogram(d.loc[d["strategy"] == name, "p"], bins=edges)
        out[name] = counts / counts.sum()
    return pd.DataFrame(out, index=pd.Index(np.round(edges[:-1], 6), name="p from"))


def plot_drawn_p(draws, *, step=None, ax=None, bins=10, relative_to=None):
    """Distribution of the true p of the prompts each strategy drew, on a linear axis.

    ``draws`` of :func:`sampler_signal`; one snapshot ``step``, or all snapshot steps pooled
    (``step=None``). With ``relative_to`` (a strategy name) each strategy's share per bin is divided
    by that strategy's share, so "draws twice as often from this band" reads as 2 (that strategy is
    the flat line at 1).
    """
    ax = style._ax(ax)
    shares = drawn_p_shares(draws, step=step, bins=bins)
    edges = np.linspace(0, 1, bins + 1)
    palette = style.colors(list(shares.columns))
    for name in shares.columns:
        y = shares[name].to_numpy()
        if relative_to is not None:
            y = y / shares[relative_to].to_numpy()
        ax.stairs(y, edges, linewidth=1.5, color=palette[name], label=name)
    ax.set_xlabel("true success probability p of the drawn prompt")
    if relative_to is None:
        ax.set_ylabel("share of drawn prompts (fraction)")
        ax.set_ylim(bottom=0)
    else:
        ax.set_ylabel(f"share of drawn prompts\nrelative to {relative_to} (ratio)")
        ax.axhline(1.0, color="0.5", linewidth=0.8, linestyle=":")
    n_steps = (draws if step is None else draws[draws["step"] == step])["step"].nunique()
    ax.set_title(f"simulated step {step}" if step is not None else f"pooled over {n_steps} snapshot steps", fontsize="small")
    style.legend(ax)
    return ax
