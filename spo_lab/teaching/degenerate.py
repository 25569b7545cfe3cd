"""Degenerate GRPO groups on a drifting prompt population (notebook 02): simulations and figures.

The language model is replaced by the one quantity the claim depends on: each prompt's success
probability p = sigmoid(z), moved along a stated trajectory of logits z. The degenerate-group
metrics are the library's (:func:`~spo_lab.metrics.degenerate_probability`,
:func:`~spo_lab.metrics.degenerate_fraction`); nothing here re-implements them.

Paper claim illustrated: GRPO's share of degenerate groups (all G rewards equal, zero advantage)
grows during training, from ~60 % to over 80 % of the samples.

What is simplified: the trajectory of p is *exogenous* -- written down before the simulation, it does
not react to which prompts were sampled or to the advantages computed. That is what lets the claim
be looked at on its own; it is also why none of these numbers is a training result. The same
population (:func:`drifting_population`) drives the simulations of notebooks 03-05.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..metrics import degenerate_fraction, degenerate_probability
from . import style

__all__ = [
    "sigmoid",
    "drifting_population",
    "degenerate_groups",
    "degenerate_probability_curves",
    "success_probabilities",
    "plot_degenerate_probability",
    "plot_degenerate_fraction",
    "plot_success_histograms",
]


def sigmoid(z):
    """p = 1 / (1 + exp(-z)), elementwise, for arrays of logits."""
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


# ====================================================================== simulations
def drifting_population(
    num_prompts: int = 2000,
    steps: int = 200,
    *,
    logit_mean: float = 0.5,
    logit_std: float = 4.8,
    lr: float = 0.05,
    train_group_size: int = 8,
    noise: float = 0.05,
    seed: int = 0,
) -> np.ndarray:
    """Logits of a prompt population that learns only where its GRPO groups carry signal.

    Model (a caricature of GRPO training, in logit space z, with p = sigmoid(z)):

        z_i(0)   ~ Normal(logit_mean, logit_std**2)
        z_i(t+1) = z_i(t) + lr * (1 - P_deg(p_i(t), G)) + noise * eps,    eps ~ Normal(0, 1)

    where P_deg(p, G) = p^G + (1 - p)^G (:func:`~spo_lab.metrics.degenerate_probability`) with
    G = ``train_group_size``. A prompt improves only in proportion to the chance that its group of
    G carries a learning signal, so prompts near p = 0 or 1 move slowly. The population therefore
    *polarises*: the band in between is pushed to "solved". Near-hopeless prompts are not frozen:
    those with p of a few percent still get a signal now and then and creep upwards (some of them past
    p = 0.5 within 200 steps), so the lowest histogram bin empties slowly while the very hardest stay put.

    The defaults are chosen, not fitted, so that the expected degenerate share at G = 8 starts near
    the paper's ~60 % (arXiv 2509.13232); the rise that follows is this model's consequence.

    Returns:
        float64 array ``[steps + 1, num_prompts]``: row t holds the logits after t steps.
    """
    if num_prompts < 1 or steps < 0:
        raise ValueError("need num_prompts >= 1 and steps >= 0")
    rng = np.random.default_rng(seed)
    z = np.empty((steps + 1, num_prompts))
    z[0] = rng.normal(logit_mean, logit_std, num_prompts)
    for t in range(steps):
        signal = 1.0 - degenerate_probability(sigmoid(z[t]), train_group_size)
        z[t + 1] = z[t] + lr * signal + noise * rng.normal(size=num_prompts)
    return z


def degenerate_groups(
    logits: np.ndarray,
    group_sizes=(2, 4, 8, 16),
    *,
    sample_prompts: int = 128,
    seed: int = 0,
) -> pd.DataFrame:
    """Expected and sampled share of degenerate GRPO groups at every step of a population trajectory.

    For each step t and group size G:

    - expected = mean_i P_deg(p_i(t), G) = mean_i [p_i^G + (1 - p_i)^G] over all prompts, i.e. the
      share of a uniformly drawn batch's samples that sit in an all-equal group (zero advantage);
    - sampled  = :func:`~spo_lab.metrics.degenerate_fraction` of one simulated batch: ``sample_prompts``
      prompts drawn uniformly without replacement, G Bernoulli(p_i) rewards each.

    Illustrates the paper's observation that GRPO's degenerate share grows during training (from
    ~60 % to over 80 % of samples): as prompts get solved, more groups are all-correct.

    Args:
        logits: ``[T + 1, P]`` trajectory (e.g. from :func:`drifting_population`).
        group_sizes: the G values to report.
        sample_prompts: prompts per simulated batch (at most P).

    Returns:
        DataFrame with columns step, G, expected, sampled, mean_p.
    """
    p_all = sigmoid(logits)
    steps, num_prompts = p_all.shape
    sample_prompts = min(sample_prompts, num_prompts)
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(steps):
        p = p_all[t]
        ids = rng.choice(num_prompts, sample_prompts, replace=False)
        for g in group_sizes:
            rewards = rng.random((sample_prompts, g)) < p[ids, None]
            rows.append({
                "step": t,
                "G": int(g),
                "expected": float(degenerate_probability(p, g).mean()),
                "sampled": degenerate_fraction(torch.from_numpy(rewards.reshape(-1)), g),
                "mean_p": float(p.mean()),
            })
    return pd.DataFrame(rows)


def degenerate_probability_curves(group_sizes=(2, 4, 8, 16), *, points: int = 201) -> pd.DataFrame:
    """P(degenerate | p, G) = p^G + (1 - p)^G on a grid of p in [0, 1], for each G.

    Returns:
        long DataFrame with columns G, p, probability (``points`` rows per G).
    """
    p = np.linspace(0.0, 1.0, points)
    return pd.concat(
        [pd.DataFrame({"G": int(g), "p": p, "probability": degenerate_probability(p, g)}) for g in group_sizes],
        ignore_index=True,
    )


def success_probabilities(logits: np.ndarray, steps) -> pd.DataFrame:
    """The prompts' success probabilities p = sigmoid(z) at a few steps of a trajectory.

    Returns:
        long DataFrame with columns step, p (one row per prompt and requested step).
    """
    z = np.asarray(logits, dtype=np.float64)
    return pd.concat([pd.DataFrame({"step": int(t), "p": sigmoid(z[t])}) for t in steps], ignore_index=True)


# ====================================================================== figures
def _sequential(n: int):
    """n colours of one sequential colour map: for ordered values such as G or the step."""
    import matplotlib as mpl

    cmap = mpl.colormaps["viridis"]
    return [cmap(x) for x in np.linspace(0.0, 0.85, max(n, 1))]


def plot_degenerate_probability(curves: pd.DataFrame, *, ax=None):
    """P(all G rewards equal) against p, one curve per G, from :func:`degenerate_probability_curves`."""
    ax = style._ax(ax)
    groups = sorted(curves["G"].unique())
    for g, c in zip(groups, _sequential(len(groups))):
        d = curves[curves["G"] == g]
        ax.plot(d["p"], d["probability"], color=c, label=f"G = {g}")
    ax.set_xlabel("prompt success probability p")
    ax.set_ylabel("P(all G rewards equal)\n(probability)")
    style.legend(ax)
    return ax


def plot_degenerate_fraction(df: pd.DataFrame, *, ax=None, paper=True):
    """Degenerate share over (simulated) training: expected lines, one sampled batch per step as dots.

    ``df`` from :func:`degenerate_groups`. With ``paper=True`` the paper's reported range for GRPO
    with G = 8 (~60 % at the start, over 80 % later) is drawn as two grey lines.
    """
    ax = style._ax(ax)
    groups = sorted(df["G"].unique())
    for g, c in zip(groups, _sequential(len(groups))):
        d = df[df["G"] == g]
        ax.plot(d["step"], d["expected"], color=c, label=f"G = {g} expected")
        ax.plot(d["step"], d["sampled"], ".", markersize=2, alpha=0.5, color=c)
    if paper:
        style.paper_line(ax, 0.6, "~60 % at start (G = 8)")
        style.paper_line(ax, 0.8, ">80 % later (G = 8)", linestyle=":")
    ax.set_xlabel("simulated training step")
    ax.set_ylabel("samples in degenerate groups\n(fraction)")
    ax.set_ylim(0, 1)
    style.legend(ax, fontsize="x-small", ncol=2)
    return ax


def plot_success_histograms(probs: pd.DataFrame, *, ax=None, bins=20):
    """Histograms of the prompts' success probability p at a few steps, from :func:`success_probabilities`."""
    ax = style._ax(ax)
    edges = np.linspace(0, 1, bins + 1)
    steps = sorted(probs["step"].unique())
    for t, c in zip(steps, _sequential(len(steps))):
        ax.hist(probs.loc[probs["step"] == t, "p"], bins=edges, histtype="step", color=c, linewidth=1.5,
                label=f"step {t}")
    ax.set_xlabel("prompt success probability p")
    ax.set_ylabel("prompts (count)")
    style.legend(ax)
    return ax
