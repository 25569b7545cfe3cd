"""Baselines compared on the same rewards (notebook 04): simulation, summaries and figures.

Every step of a simulated run draws ONE batch of rewards laid out as GRPO lays it out (B / G prompts,
G responses each) and computes every baseline on those same rewards:

    reward r                       no baseline
    oracle: r - p                  the prompt's true success probability (the best baseline possible)
    SPO: r - v                     the library's :class:`~spo_lab.tracker.ValueTracker`, read before the step
    group mean: r - mean_g         GRPO's (and Dr. GRPO's) baseline, before GRPO's std scaling
    leave-one-out: r - mean_-i     RLOO's baseline, the mean of the G - 1 other rewards

and then each method's normalisation: SPO's over the whole batch (:func:`~spo_lab.advantages.spo_advantages`),
GRPO's per group (:func:`~spo_lab.advantages.grpo_advantages`). The tracker is fed by SPO's own
single-stream batches (B prompts, one response each), as in training; its value v does not depend on
the compared batch's rewards.

Two numbers per estimator and step:

- ``variance``: the batch variance of the advantage (unbiased, over the B samples);
- ``signal_share``: corr(A, r - p)^2, the share of the advantage's variance that is the response's own
  surprise r - p, the part that carries the policy gradient. The rest is baseline noise. It does not
  change when A is multiplied by a number or shifted, so it can be compared across normalisations.

Why the group mean looks better than it is: r_i - mean_g = (G-1)/G (r_i - p) - 1/G sum_{j != i} (r_j - p).
The baseline contains r_i itself, so it shrinks the signal by (G - 1) / G and adds the siblings' noise:
E[(r - mean_g)^2] = (G - 1) / G p (1 - p), *below* the oracle's p (1 - p), with signal share (G - 1) / G.

What is simplified: the trajectory of p is *exogenous* (:func:`~spo_lab.teaching.degenerate.drifting_population`),
so these numbers isolate the estimators and are not training results.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..advantages import grpo_advantages, rloo_advantages, spo_advantages
from ..metrics import degenerate_fraction, degenerate_mask
from . import style
from .degenerate import drifting_population, sigmoid
from .tracking import _Follower

__all__ = [
    "RAW",
    "NORMALISED",
    "STAGES",
    "SameBatch",
    "signal_share",
    "expected_raw",
    "same_batch_baselines",
    "same_batch_seeds",
    "summarise_same_batch",
    "plot_same_batch",
    "plot_normalised_histogram",
]

RAW = ("reward r", "oracle: r - p", "SPO: r - v", "group mean: r - mean_g", "leave-one-out: r - mean_-i")
"""the baselines compared before any normalisation, in display order"""
NORMALISED = ("SPO: (r - v) normalised over the batch", "GRPO: (r - mean_g) / std_g",
              "GRPO, non-degenerate groups only")
"""each method's advantage after its own normalisation, in display order"""
STAGES = ("before normalisation", "after normalisation")

# One colour per method (spo_lab.teaching.style): the group mean is GRPO's baseline, leave-one-out RLOO's.
_COLORS = {
    "reward r": style.color("reward r"),
    "oracle: r - p": style.color("oracle"),
    "SPO: r - v": style.color("spo"),
    "group mean: r - mean_g": style.color("grpo"),
    "leave-one-out: r - mean_-i": style.color("rloo"),
    NORMALISED[0]: style.color("spo"),
    NORMALISED[1]: style.color("grpo"),
    NORMALISED[2]: style.color("grpo"),
}


# ====================================================================== formulas
def signal_share(adv, r, p) -> float:
    """corr(adv, r - p)^2 over a batch: the share of the advantage's variance that is the surprise r - p.

    1 for the oracle baseline; unchanged by any normalisation of the form a * adv + b (a != 0). NaN if
    either side has no spread.
    """
    a = np.asarray(adv, dtype=np.float64)
    s = np.asarray(r, dtype=np.float64) - np.asarray(p, dtype=np.float64)
    if len(a) < 2 or a.std() == 0 or s.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, s)[0, 1] ** 2)


def expected_raw(p, group_size: int, v=None) -> pd.DataFrame:
    """What each baseline's variance and signal share should be, from the prompts' p (and v), per sample.

    With q = mean p (1 - p) over the batch's samples and G = ``group_size``:

        reward r           variance q + Var(p)          share q / (q + Var(p))
        oracle: r - p      q                            1
        SPO: r - v         q + Var(p - v)               q / (q + Var(p - v))     (needs ``v``)
        group mean         (G - 1) / G q                (G - 1) / G
        leave-one-out      G / (G - 1) q                (G - 1) / G

    Expectations over the rewards, for the prompts given (one entry per sample, as laid out in the batch).

    Returns:
        DataFrame indexed by estimator (:data:`RAW` order) with columns variance, signal_share.
    """
    p = np.asarray(p, dtype=np.float64)
    g = int(group_size)
    q = float((p * (1 - p)).mean())

    def share(noise):  # q / (q + noise); undefined (NaN) when there is no surprise at all
        return q / (q + noise) if q > 0 else np.nan

    rows = {"reward r": (q + p.var(), share(p.var())), "oracle: r - p": (q, share(0.0))}
    if v is not None:
        e = float((p - np.asarray(v, dtype=np.float64)).var())
        rows["SPO: r - v"] = (q + e, share(e))
    rows["group mean: r - mean_g"] = ((g - 1) / g * q, (g - 1) / g if q > 0 else np.nan)
    rows["leave-one-out: r - mean_-i"] = (g / (g - 1) * q if g > 1 else np.nan, (g - 1) / g if q > 0 else np.nan)
    df = pd.DataFrame(rows, index=["variance", "signal_share"]).T
    df.index.name = "estimator"
    return df


# ====================================================================== simulation
@dataclass
class SameBatch:
    """Output of :func:`same_batch_baselines` / :func:`same_batch_seeds`."""

    per_step: pd.DataFrame
    """long table: seed, step, stage, estimator, variance, signal_share, degenerate_frac, and (before
    normalisation) formula_variance, formula_share from :func:`expected_raw` on that batch's p and v"""
    advantages: pd.DataFrame
    """normalised advantages of the kept steps: seed, step, estimator (:data:`NORMALISED`[:2]), advantage"""


def same_batch_baselines(
    logits: np.ndarray,
    *,
    batch: int = 256,
    group_size: int = 8,
    divergence: str = "logprob",
    n0: int = 8,
    seed: int = 0,
    keep_from: int | None = None,
) -> SameBatch:
    """Every baseline, and each method's normalisation, on the same batch of rewards at every step.

    Step t (p = sigmoid(logits[t])):

    1. the compared batch: B / G prompts drawn uniformly without replacement, G rewards
       r ~ Bernoulli(p) each, laid out as consecutive groups (B = ``batch``, G = ``group_size``);
    2. SPO's tracker value v of those prompts is read (before this step's update);
    3. every estimator of :data:`RAW` and :data:`NORMALISED` is computed on those rewards;
    4. SPO's own training batch (B prompts, one response each) is drawn and folded into the tracker
       with the policy after the step, logits[t + 1] (D-adaptive rho from ``divergence``). The
       tracker starts from an offline pass of ``n0`` samples per prompt (Jeffreys form).

    Normalised advantages of steps >= ``keep_from`` are kept for histograms (none if None).
    """
    z = np.asarray(logits, dtype=np.float64)
    steps, num_prompts = z.shape[0] - 1, z.shape[1]
    g = int(group_size)
    if batch % g or batch > num_prompts:
        raise ValueError("batch must be a multiple of group_size and at most the number of prompts")
    rng = np.random.default_rng(seed)
    follower = _Follower(z[0], divergence=divergence, n0=n0, rng=np.random.default_rng(seed + 1))
    rows, kept = [], []
    for t in range(steps):
        p_all = sigmoid(z[t])
        ids = np.repeat(rng.choice(num_prompts, batch // g, replace=False), g)
        p = p_all[ids]
        r = (rng.random(batch) < p).astype(np.float64)
        v = follower.values(ids)
        rt = torch.from_numpy(r)
        mean_g = np.repeat(r.reshape(-1, g).mean(axis=1), g)
        raw = {
            "reward r": r,
            "oracle: r - p": r - p,
            "SPO: r - v": r - v,
            "group mean: r - mean_g": r - mean_g,
            "leave-one-out: r - mean_-i": rloo_advantages(rt, g).numpy() if g > 1 else np.full(batch, np.nan),
        }
        live = ~degenerate_mask(rt, g).repeat_interleave(g).numpy()
        spo = spo_advantages(rt, torch.from_numpy(v)).numpy()
        grpo = grpo_advantages(rt, g, scale="group").numpy()
        # the non-degenerate subset gets a variance only: a share over a subset chosen by the rewards
        # themselves would not be comparable with the shares over the whole batch
        norm = {NORMALISED[0]: (spo, signal_share(spo, r, p)), NORMALISED[1]: (grpo, signal_share(grpo, r, p)),
                NORMALISED[2]: (grpo[live], float("nan"))}
        deg = degenerate_fraction(rt, g)
        formula = expected_raw(p, g, v)
        for name, a in raw.items():
            rows.append({"step": t, "stage": STAGES[0], "estimator": name, "variance": _var(a),
                         "signal_share": signal_share(a, r, p), "formula_variance": formula.loc[name, "variance"],
                         "formula_share": formula.loc[name, "signal_share"], "degenerate_frac": deg})
        for name, (a, share) in norm.items():
            rows.append({"step": t, "stage": STAGES[1], "estimator": name, "variance": _var(a),
                         "signal_share": share, "degenerate_frac": deg})
        if keep_from is not None and t >= keep_from:
            for name, a in ((NORMALISED[0], spo), (NORMALISED[1], grpo)):
                kept.append(pd.DataFrame({"step": t, "estimator": name, "advantage": a.astype(np.float32)}))
        # SPO's own single-stream batch feeds the tracker, with the policy after this step
        own = rng.choice(num_prompts, batch, replace=False)
        follower.update(own, (rng.random(batch) < p_all[own]).astype(np.float64), z[t + 1])
    per_step = pd.DataFrame(rows)
    per_step.insert(0, "seed", seed)
    adv = pd.concat(kept, ignore_index=True) if kept else pd.DataFrame(columns=["step", "estimator", "advantage"])
    adv.insert(0, "seed", seed)
    return SameBatch(per_step=per_step, advantages=adv)


def same_batch_seeds(num_prompts: int, steps: int, seeds=(0, 1, 2), **kw) -> SameBatch:
    """:func:`same_batch_baselines` on a fresh :func:`~spo_lab.teaching.degenerate.drifting_population`
    per seed (the population and the draws both change with the seed); results stacked."""
    out = [same_batch_baselines(drifting_population(num_prompts, steps, seed=s), seed=s, **kw) for s in seeds]
    return SameBatch(per_step=pd.concat([o.per_step for o in out], ignore_index=True),
                     advantages=pd.concat([o.advantages for o in out], ignore_index=True))


def _var(a) -> float:
    a = np.asarray(a, dtype=np.float64)
    return float(np.var(a, ddof=1)) if len(a) > 1 else float("nan")


def summarise_same_batch(res: SameBatch | pd.DataFrame, burn_in: int = 20) -> pd.DataFrame:
    """Mean over steps >= burn_in per seed, then mean and standard deviation over seeds.

    Returns:
        DataFrame indexed by (stage, estimator) in display order, with columns variance, variance_sd,
        ratio_to_reward (before normalisation: variance / the raw reward's), signal_share,
        signal_share_sd, formula_variance, formula_share (:func:`expected_raw`, mean over the same
        batches; NaN after normalisation), n_seeds (the sd columns are NaN with one seed).
    """
    df = res.per_step if isinstance(res, SameBatch) else res
    cols = [c for c in ("variance", "signal_share", "formula_variance", "formula_share") if c in df.columns]
    per_seed = df[df.step >= burn_in].groupby(["stage", "estimator", "seed"])[cols].mean()
    aggs = dict(variance=("variance", "mean"), variance_sd=("variance", "std"),
                signal_share=("signal_share", "mean"), signal_share_sd=("signal_share", "std"))
    aggs.update({c: (c, "mean") for c in cols if c.startswith("formula_")})
    out = per_seed.groupby(["stage", "estimator"]).agg(**aggs, n_seeds=("variance", "size"))
    order = [(STAGES[0], e) for e in RAW] + [(STAGES[1], e) for e in NORMALISED]
    out = out.reindex([o for o in order if o in out.index])
    reward = out["variance"].get((STAGES[0], "reward r"), np.nan)
    out.insert(2, "ratio_to_reward", np.where(out.index.get_level_values("stage") == STAGES[0],
                                              out["variance"] / reward, np.nan))
    return out


# ====================================================================== figures
def plot_same_batch(summary: pd.DataFrame, *, axes=None, group_size: int = 8):
    """Two panels over the same batches: the advantage variance before normalisation, and the signal share.

    ``summary`` from :func:`summarise_same_batch`; error bars are +-1 sd over seeds. Panel 1 marks the
    group-mean formula (G - 1) / G x the oracle's variance; panel 2 marks (G - 1) / G. Returns the two Axes.
    """
    if axes is None:
        import matplotlib.pyplot as plt

        _, axes = plt.subplots(1, 2, figsize=(8.4, 3.4), dpi=style.DPI, layout="constrained")
    raw = summary.loc[STAGES[0]]
    names = list(raw.index)
    n_seeds = int(raw["n_seeds"].min())
    x = np.arange(len(names))
    ticks = [n.replace(": ", ":\n") for n in names]
    for ax, col, ylabel in ((axes[0], "variance", "advantage variance per batch,\nbefore normalisation (reward$^2$)"),
                            (axes[1], "signal_share", "signal share corr(A, r - p)$^2$\n(fraction of the variance)")):
        sd = raw[f"{col}_sd"].to_numpy() if n_seeds > 1 else None
        ax.bar(x, raw[col], yerr=sd, capsize=3, color=[_COLORS[n] for n in names])
        ax.set_xticks(x, ticks, fontsize="x-small")
        ax.set_ylabel(ylabel)
        ax.set_xlabel(f"baseline, same rewards (mean over steps, {n_seeds} seed{'s' if n_seeds != 1 else ''})")
    g = int(group_size)
    if "oracle: r - p" in raw.index:
        axes[0].axhline((g - 1) / g * raw.loc["oracle: r - p", "variance"], color="0.3", linestyle=":", linewidth=1,
                        label=f"({g}-1)/{g} x oracle variance")
    axes[1].axhline((g - 1) / g, color="0.3", linestyle=":", linewidth=1, label=f"({g}-1)/{g}")
    axes[1].set_ylim(0, 1.05)
    for ax in axes:
        style.legend(ax, fontsize="x-small")
    return axes


def plot_normalised_histogram(advantages: pd.DataFrame, *, ax=None, limit: float = 6.0, width: float = 0.2):
    """Histogram of each method's advantage after its own normalisation, as a share of its samples per bin.

    ``advantages`` from :attr:`SameBatch.advantages`. Every bar is a share of *all* the method's
    samples: exact zeros (GRPO's degenerate groups) are drawn as their own hatched bar at 0, with their
    share in the legend, and the other values in bins of ``width``; values beyond +-``limit`` are
    counted in the end bins. Log y axis, so the zero bar and the thin tails fit on one figure.
    """
    ax = style._ax(ax, figsize=(6.0, 3.4))
    edges = np.arange(-limit, limit + width / 2, width)
    clipped = False
    for name in NORMALISED[:2]:
        a = advantages.loc[advantages["estimator"] == name, "advantage"].to_numpy(dtype=np.float64)
        if not len(a):
            continue
        zero = a == 0
        clipped |= bool((np.abs(a) > limit).any())
        nonzero = np.clip(a[~zero], -limit, limit)
        ax.hist(nonzero, bins=edges, weights=np.full(len(nonzero), 1.0 / len(a)), histtype="step",
                linewidth=1.5, color=_COLORS[name],
                label=f"{name}: values != 0" + ("" if zero.any() else " (none is exactly 0)"))
        if zero.any():
            ax.bar([0.0], [zero.mean()], width=width, color="none", edgecolor=_COLORS[name], hatch="///",
                   linewidth=1.5, label=f"{name}: exactly 0, {zero.mean():.0%} of its samples")
    ax.set_yscale("log")
    ax.set_xlabel("advantage after the method's own normalisation (standard units)"
                  + (f"\nvalues beyond +-{limit:g} counted in the end bins" if clipped else ""))
    ax.set_ylabel(f"share of all samples per bin\n(bin width {width:g}, log scale)")
    style.legend(ax, fontsize="x-small")
    return ax
