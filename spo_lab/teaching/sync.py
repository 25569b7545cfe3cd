"""Group synchronisation barriers vs a single stream of rollouts (notebook 08): simulations and figures.

Rollout latencies are drawn i.i.d. from a stated heavy-tailed law. A GRPO group is usable only when
its slowest member has finished; SPO needs no group, so every finished rollout is usable at once.

Paper claim illustrated: in the paper's agentic-throughput simulation, 24 samples collected
group-wise took 486 s and the first 24 of 48 independent rollouts 112 s (4.35x).

What is simplified: the latency law is chosen (the paper does not state one); :func:`matching_tail`
finds where it meets the paper's ratio.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import style

__all__ = [
    "PAPER_GROUP_SECONDS",
    "PAPER_SINGLE_SECONDS",
    "PAPER_SPEEDUP",
    "rollout_latencies",
    "group_sync_time",
    "single_stream_time",
    "sync_barrier_sweep",
    "matching_tail",
    "RolloutTimeline",
    "rollout_timeline",
    "plot_rollout_timeline",
    "plot_sync_barrier",
]

# The paper's agentic-throughput simulation (arXiv 2509.13232): 24 samples collected group-wise took
# 486 s; the first 24 of 48 independent rollouts took 112 s. 486 / 112 = 4.34; the paper states 4.35x
# (presumably from unrounded times).
PAPER_GROUP_SECONDS = 486.0
PAPER_SINGLE_SECONDS = 112.0
PAPER_SPEEDUP = 4.35


# ====================================================================== simulations
def rollout_latencies(shape, *, dist: str = "lognormal", tail: float = 1.0, median: float = 1.0, rng=None) -> np.ndarray:
    """Independent rollout latencies with a stated heavy-tailed law, scaled to a given median.

    - ``"lognormal"``: L = median * exp(tail * Z), Z ~ Normal(0, 1); ``tail`` = sigma, the larger the
      heavier (mean = median * exp(sigma^2 / 2)).
    - ``"pareto"``: L = x_m * U^(-1 / tail), U ~ Uniform(0, 1), x_m = median / 2^(1 / tail); ``tail`` =
      the shape alpha, the SMALLER the heavier (infinite variance for alpha <= 2, infinite mean for
      alpha <= 1).

    Why heavy tails: an agentic rollout's time is a product of many factors (turns, tool calls,
    response lengths), so a few rollouts take many times the median.

    Returns:
        float64 array of the given shape.
    """
    rng = np.random.default_rng(rng)
    if dist == "lognormal":
        return median * np.exp(tail * rng.standard_normal(shape))
    if dist == "pareto":
        if tail <= 0:
            raise ValueError("the Pareto shape alpha must be > 0")
        xm = median / 2.0 ** (1.0 / tail)
        return xm * (1.0 - rng.random(shape)) ** (-1.0 / tail)
    raise ValueError(f"dist must be 'lognormal' or 'pareto', got {dist!r}")


def group_sync_time(latencies, group_size: int, *, keep_groups: int | None = None) -> np.ndarray:
    """Time until ``keep_groups`` whole groups have finished, all rollouts started at time 0.

    ``latencies [..., n]`` are laid out as consecutive groups of G = ``group_size``. A group is
    usable only when its slowest member is done (its advantages need the whole group):
    T_group = max over its G latencies; the batch waits for the k-th fastest group
    (k = ``keep_groups``; default all n / G groups, i.e. the slowest of all n rollouts).

    Returns:
        array of shape ``latencies.shape[:-1]``.
    """
    lat = np.asarray(latencies, dtype=np.float64)
    n = lat.shape[-1]
    if n % group_size:
        raise ValueError(f"{n} rollouts do not split into groups of {group_size}")
    done = lat.reshape(*lat.shape[:-1], n // group_size, group_size).max(axis=-1)
    k = n // group_size if keep_groups is None else int(keep_groups)
    if not 1 <= k <= n // group_size:
        raise ValueError(f"keep_groups must be in [1, {n // group_size}]")
    return np.sort(done, axis=-1)[..., k - 1]


def single_stream_time(latencies, batch: int) -> np.ndarray:
    """Time until the first ``batch`` of the started rollouts have finished: the batch-th order statistic.

    SPO needs no group, so every finished rollout is usable at once; starting M > B rollouts and
    keeping the first B cuts off the slow tail.
    """
    lat = np.asarray(latencies, dtype=np.float64)
    if not 1 <= batch <= lat.shape[-1]:
        raise ValueError(f"batch must be in [1, {lat.shape[-1]}]")
    return np.partition(lat, batch - 1, axis=-1)[..., batch - 1]


def _group_sync_with_filter(lat_rounds: np.ndarray, group_size: int, usable_prob: float, rng) -> np.ndarray:
    """Rounds of B rollouts (B / G groups) until B / G non-degenerate groups are collected."""
    trials, rounds, b = lat_rounds.shape
    need = b // group_size
    usable = rng.random((trials, rounds, need)) < usable_prob
    got = np.cumsum(usable.sum(-1), axis=1)
    round_time = lat_rounds.max(-1)
    finished = got >= need
    if not finished[:, -1].all():
        raise RuntimeError("not enough rounds simulated; raise max_rounds")
    last = finished.argmax(axis=1)  # first round at which enough groups are usable
    mask = np.arange(rounds)[None, :] <= last[:, None]
    return (round_time * mask).sum(axis=1)


def sync_barrier_sweep(
    tails,
    *,
    dist: str = "lognormal",
    batch: int = 24,
    group_size: int = 8,
    pool: int = 48,
    trials: int = 2000,
    median: float = 1.0,
    usable_prob: float = 1.0,
    max_rounds: int = 40,
    seed: int = 0,
) -> pd.DataFrame:
    """Collection time of one batch, group-synchronous vs single-stream, over a sweep of the tail.

    Latency model: i.i.d. :func:`rollout_latencies` (``dist``, ``tail``, ``median``); all rollouts of a
    round start together on enough workers. Per trial:

    - group_sync: B / G groups of G (B rollouts) started; time = the slowest rollout
      (:func:`group_sync_time`). With ``usable_prob`` < 1, each group is kept only with that
      probability (dynamic sampling that discards degenerate groups), and rounds repeat until B / G
      groups are kept: time = sum of the round times.
    - group_first: pool / G groups started, the first B / G groups to finish are kept.
    - single_stream: ``pool`` rollouts started, the first B to finish are kept
      (:func:`single_stream_time`); every sample is usable.
    - steady_stream: a continuously refilled pool of ``pool`` workers produces pool / E[L] samples per
      unit time (renewal theory), so B samples take B E[L] / pool on average (no rollout cancelled).

    Reports means over trials and ratio = group_sync / single_stream (a ratio of means). The paper's
    simulation: 486 s vs 112 s (4.35x) for B = 24, G = 8, pool = 48; its latency law is not given in
    the paper, so ``matching_tail`` finds where this model meets that ratio.

    Note that single_stream STARTS twice as many rollouts: the other pool - B either continue into
    the next batch (an asynchronous system) or are cancelled (wasted compute). The gain is wall-clock.

    Returns:
        DataFrame with columns dist, tail, group_sync, group_first, single_stream, steady_stream,
        ratio, ratio_first, mean_latency.
    """
    if batch % group_size or pool % group_size or pool < batch:
        raise ValueError("batch and pool must be multiples of group_size, and pool >= batch")
    rows = []
    for tail in tails:
        # separate streams: the pool's latencies do not depend on how many rounds the groups needed
        rng, pool_rng = np.random.default_rng([seed, 0]), np.random.default_rng([seed, 1])
        if usable_prob >= 1.0:
            g_time = group_sync_time(rollout_latencies((trials, batch), dist=dist, tail=tail, median=median, rng=rng), group_size)
        else:
            lat = rollout_latencies((trials, max_rounds, batch), dist=dist, tail=tail, median=median, rng=rng)
            g_time = _group_sync_with_filter(lat, group_size, usable_prob, rng)
        pool_lat = rollout_latencies((trials, pool), dist=dist, tail=tail, median=median, rng=pool_rng)
        first_groups = group_sync_time(pool_lat, group_size, keep_groups=batch // group_size)
        s_time = single_stream_time(pool_lat, batch)
        if dist == "lognormal":
            mean_l = median * np.exp(tail**2 / 2)
        else:
            mean_l = median / 2.0 ** (1.0 / tail) * tail / (tail - 1.0) if tail > 1 else np.inf
        rows.append({
            "dist": dist,
            "tail": float(tail),
            "group_sync": float(g_time.mean()),
            "group_first": float(first_groups.mean()),
            "single_stream": float(s_time.mean()),
            "steady_stream": batch * mean_l / pool,
            "ratio": float(g_time.mean() / s_time.mean()),
            "ratio_first": float(first_groups.mean() / s_time.mean()),
            "mean_latency": float(mean_l),
        })
    return pd.DataFrame(rows)


def matching_tail(target: float = PAPER_GROUP_SECONDS / PAPER_SINGLE_SECONDS, *, dist: str = "lognormal", lo=None, hi=None, iters: int = 40, **kw) -> float:
    """The tail parameter at which :func:`sync_barrier_sweep`'s ratio equals ``target`` (bisection).

    The same ``seed`` gives the same underlying uniforms / normals for every tail value (common random
    numbers), so the simulated ratio is a smooth monotone function of the tail and bisection is
    exact for the given seed and number of trials. Increasing in sigma (lognormal), decreasing in
    alpha (Pareto). Default target: the paper's 486 / 112.
    """
    if dist == "lognormal":
        lo, hi, increasing = (0.01 if lo is None else lo), (3.0 if hi is None else hi), True
    else:
        lo, hi, increasing = (1.05 if lo is None else lo), (50.0 if hi is None else hi), False

    def ratio(x):
        return float(sync_barrier_sweep([x], dist=dist, **kw)["ratio"].iloc[0])

    if (ratio(lo) - target) * (ratio(hi) - target) > 0:
        raise ValueError(f"target ratio {target} not bracketed by tail in [{lo}, {hi}]")
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if (ratio(mid) < target) == increasing:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@dataclass
class RolloutTimeline:
    """Output of :func:`rollout_timeline`: one trial of both collection schemes, ready to draw."""

    rollouts: pd.DataFrame
    """one row per rollout: lane ("groups" or "pool"), group (index in its lane's groups, -1 in the
    pool), latency, used (True if the batch waits for / keeps this rollout)"""
    group_size: int
    batch: int
    group_done: float
    """time at which the group-wise batch is ready (:func:`group_sync_time`)"""
    single_done: float
    """time at which the first ``batch`` of the pool are done (:func:`single_stream_time`)"""


def rollout_timeline(group_latencies, pool_latencies, group_size: int, batch: int) -> RolloutTimeline:
    """One trial: B rollouts in groups of G (all of them used) and a pool of M, of which the first B are kept."""
    g = np.asarray(group_latencies, dtype=np.float64)
    m = np.asarray(pool_latencies, dtype=np.float64)
    single_done = float(single_stream_time(m, batch))
    rollouts = pd.concat([
        pd.DataFrame({"lane": "groups", "group": np.arange(len(g)) // group_size, "latency": g, "used": True}),
        pd.DataFrame({"lane": "pool", "group": -1, "latency": m, "used": m <= single_done}),
    ], ignore_index=True)
    return RolloutTimeline(rollouts=rollouts, group_size=int(group_size), batch=int(batch),
                           group_done=float(group_sync_time(g, group_size)), single_done=single_done)


# ====================================================================== figures
def plot_rollout_timeline(timeline: RolloutTimeline, *, ax=None):
    """One trial drawn as horizontal bars: B rollouts in groups (top) and a pool of M (bottom).

    ``timeline`` from :func:`rollout_timeline`. The group-wise batch is ready when its slowest
    rollout finishes; the single-stream batch when the B-th of the M pooled rollouts finishes. Both
    finish lines are marked; pooled rollouts that are not needed are grey.
    """
    ax = style._ax(ax, figsize=(6.0, 3.6))
    r = timeline.rollouts
    g, m = r[r["lane"] == "groups"], r[r["lane"] == "pool"]
    grpo, spo = style.color("grpo"), style.color("spo")
    y = 0
    for grp, lat in zip(g["group"], g["latency"]):
        ax.barh(y, lat, height=0.8, color=grpo, alpha=0.9 if grp % 2 == 0 else 0.5)  # alternate shades: groups
        y += 1
    y += 1
    for lat, used in zip(m["latency"], m["used"]):
        ax.barh(y, lat, height=0.8, color=spo if used else "0.85")
        y += 1
    ax.axvline(timeline.group_done, color=grpo, linestyle="--", label=f"group-wise done: {timeline.group_done:.1f}")
    ax.axvline(timeline.single_done, color=spo, linestyle="--",
               label=f"first {timeline.batch} of {len(m)}: {timeline.single_done:.1f}")
    ax.set_yticks([len(g) / 2, len(g) + 1 + len(m) / 2],
                  [f"{len(g)} rollouts\n(groups of {timeline.group_size})", f"pool of {len(m)}"], fontsize="small")
    ax.invert_yaxis()
    ax.set_ylabel("rollouts (one bar each)")
    ax.set_xlabel("time (multiples of the median rollout latency)")
    style.legend(ax)
    return ax


def plot_sync_barrier(table, *, ax=None, paper=True):
    """Speed-up of single-stream over group-synchronous collection against the latency tail parameter.

    ``table`` from :func:`sync_barrier_sweep`: the ratio of mean collection times (group_sync /
    single_stream, and group_first / single_stream). The paper's 4.35x is drawn as a grey dashed line.
    """
    ax = style._ax(ax)
    dist = table["dist"].iloc[0]
    ax.plot(table["tail"], table["ratio"], "o-", color=style.color("grpo"), label="group-wise B / single-stream")
    if "ratio_first" in table.columns:
        ax.plot(table["tail"], table["ratio_first"], "s--", color=style.color("grpo"), alpha=0.6,
                label="first B/G of M/G groups / single-stream")
    if paper:
        style.paper_line(ax, PAPER_SPEEDUP, f"{PAPER_SPEEDUP}x (486 s vs 112 s)")
    ax.set_xlabel("lognormal sigma (heavier ->)" if dist == "lognormal" else "Pareto shape alpha (<- heavier)")
    ax.set_ylabel("speed-up of single-stream\n(ratio of mean collection times)")
    style.log_y_plain(ax)
    style.legend(ax, fontsize="x-small")
    return ax
