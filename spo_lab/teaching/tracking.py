"""A value tracker that follows non-stationary prompts (notebook 03): simulations and figures.

Each prompt is a Bernoulli bandit whose success probability p = sigmoid(z) moves along a stated
trajectory of logits; the library's :class:`~spo_lab.tracker.ValueTracker` follows it, with a
constant discount rho or the D-adaptive rho = clip(2^(-D / 0.06), 0.875, 0.96).

Paper claim illustrated: the official clip interval [0.875, 0.96] -- tracker windows of 8 to 25
observations -- is where a fixed window's noise-plus-lag error is smallest, and the D-adaptive rule
lands near the best fixed window without being told how fast the policy moves.

What is simplified: the trajectory of p is *exogenous* (written down before the simulation), so
these numbers isolate the tracker and are not training results. :class:`_Follower` (the tracker plus
the stored log-probs of the official D(x) estimator) is shared with :mod:`.variance` and
:mod:`.sampling`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..tracker import ValueTracker
from . import style
from .degenerate import sigmoid

__all__ = [
    "bandit_logits",
    "ramp_logits",
    "TrackResult",
    "track",
    "tracking_mse",
    "tracking_error_sweep",
    "ema_tracking_mse",
    "optimal_window",
    "window_formula_curves",
    "plot_tracking_trace",
    "plot_rho_trace",
    "plot_tracking_error",
    "plot_window_formula",
]

OFFICIAL_WINDOWS = (8, 25)
"""1 / (1 - rho) at the official clip interval rho in [0.875, 0.96]"""


def _log_sigmoid(z):
    """log sigmoid(z) = -log(1 + exp(-z)), stable for large |z|."""
    return -np.logaddexp(0.0, -z)


# ====================================================================== simulations
def bandit_logits(
    num_prompts: int = 400,
    steps: int = 400,
    *,
    start_std: float = 1.5,
    drift: float = 0.2,
    switch_prob: float = 0.02,
    jump_prob: float = 0.005,
    jump_size: float = 2.0,
    seed: int = 0,
) -> np.ndarray:
    """Independent non-stationary Bernoulli bandits: one success logit per prompt and visit.

    Model (time counts visits of the prompt; every prompt is visited once per step):

        z(0) ~ Normal(0, start_std**2)
        z(t+1) = z(t) + drift * m(t) * eps(t) + J(t) * jump_size * eta(t),    eps, eta ~ Normal(0, 1)

    m(t) in {0, 1} is a two-state Markov chain (each step it flips with probability ``switch_prob``;
    half the prompts start "moving"): calm stretches where p stands still alternate with stretches of
    learning where z random-walks with step sd ``drift``. J(t) ~ Bernoulli(``jump_prob``) adds rare
    large jumps (a skill suddenly acquired or lost). A tracker with a fixed window must compromise
    between the calm stretches (a long window averages noise away) and the moving ones and jumps
    (a short window lags less); a D-adaptive rho can do both.

    Returns:
        float64 array ``[steps + 1, num_prompts]``.
    """
    rng = np.random.default_rng(seed)
    z = np.empty((steps + 1, num_prompts))
    z[0] = rng.normal(0.0, start_std, num_prompts)
    moving = rng.random(num_prompts) < 0.5
    for t in range(steps):
        moving ^= rng.random(num_prompts) < switch_prob
        jump = rng.random(num_prompts) < jump_prob
        z[t + 1] = z[t] + drift * moving * rng.normal(size=num_prompts) + jump * rng.normal(0.0, jump_size, num_prompts)
    return z


def ramp_logits(num_prompts: int = 400, steps: int = 400, *, p_start: float = 0.3, slope: float = 0.001) -> np.ndarray:
    """Logits of success probabilities rising linearly: p(t) = p_start + slope * t (identical prompts).

    The drift case of :func:`ema_tracking_mse` (a constant change ``slope`` per visit), used to
    check the simulated tracker against the formula. Requires p to stay inside (0, 1).
    """
    p = p_start + slope * np.arange(steps + 1)
    if p.min() <= 0 or p.max() >= 1:
        raise ValueError("p_start + slope * t must stay inside (0, 1)")
    z = np.log(p) - np.log1p(-p)
    return np.repeat(z[:, None], num_prompts, axis=1)


class _Follower:
    """A ValueTracker plus what the official D(x) estimator stores per prompt (simulation plumbing).

    The "policy" of prompt i at step t is Bernoulli(sigmoid(z_i(t))); a response is its outcome y.
    The official code's estimator of D, applied to this one-token policy: keep the last sampled y with
    its log-prob under the policy right after that step's update; at the next visit, after the
    update, D = |log pi_now(y) - log pi_stored(y)|. ``divergence="kl"`` uses the paper's definition
    instead, KL(Bernoulli(p_stored) || Bernoulli(p_now)); ``"none"`` gives D = 0 (rho = rho_max).
    """

    def __init__(self, z0, *, rho=None, divergence="logprob", n0=8, rng=None):
        if divergence not in ("logprob", "kl", "none"):
            raise ValueError(f"divergence must be 'logprob', 'kl' or 'none', got {divergence!r}")
        num_prompts = len(z0)
        if rho is None:
            self.tracker = ValueTracker(num_prompts)
        else:  # a constant discount: clip interval collapsed to one point
            self.tracker = ValueTracker(num_prompts, rho_min=rho, rho_max=rho)
        self.divergence = divergence if rho is None else "none"
        if n0 > 0:  # offline pass: n0 samples per prompt from the initial policy (Sec. 3.3)
            k = rng.binomial(n0, sigmoid(z0))
            self.tracker.init_from_counts(torch.as_tensor(k, dtype=torch.float64), torch.full((num_prompts,), float(n0), dtype=torch.float64))
        self.has = np.zeros(num_prompts, dtype=bool)
        self.y = np.zeros(num_prompts, dtype=bool)
        self.z = np.zeros(num_prompts)

    def values(self, ids) -> np.ndarray:
        return self.tracker.values(torch.as_tensor(ids)).numpy()

    def update(self, ids, rewards, z_after) -> np.ndarray:
        """Fold ``rewards`` of prompts ``ids`` in; z_after = logits after this step's policy update."""
        ids = np.asarray(ids)
        kl = None
        if self.divergence != "none":
            z_old, z_new, y = self.z[ids], z_after[ids], self.y[ids]
            if self.divergence == "logprob":
                lp_old = np.where(y, _log_sigmoid(z_old), _log_sigmoid(-z_old))
                lp_new = np.where(y, _log_sigmoid(z_new), _log_sigmoid(-z_new))
                d = np.abs(lp_new - lp_old)
            else:
                p_old = sigmoid(z_old)
                d = p_old * (_log_sigmoid(z_old) - _log_sigmoid(z_new)) + (1 - p_old) * (_log_sigmoid(-z_old) - _log_sigmoid(-z_new))
                d = np.maximum(d, 0.0)
            kl = torch.as_tensor(np.where(self.has[ids], d, 0.0))
        rho = self.tracker.update(torch.as_tensor(ids), torch.as_tensor(rewards, dtype=torch.float64), kl=kl)
        self.has[ids], self.y[ids], self.z[ids] = True, np.asarray(rewards) > 0.5, z_after[ids]
        return rho.numpy()


@dataclass
class TrackResult:
    """Output of :func:`track`: arrays ``[T, P]`` over visits t = 0 .. T-1 and prompts."""

    p: np.ndarray
    """true success probability at each visit"""
    v: np.ndarray
    """the tracker's value read BEFORE that visit's reward (the baseline SPO would use)"""
    rho: np.ndarray
    """discount applied when that visit's reward was folded in"""
    rewards: np.ndarray
    """the sampled Bernoulli rewards"""


def track(logits: np.ndarray, *, rho: float | None = None, divergence: str = "logprob", n0: int = 8, seed: int = 0) -> TrackResult:
    """Follow every prompt of a trajectory with a :class:`~spo_lab.tracker.ValueTracker`.

    At visit t (t = 0 .. T-1) each prompt i yields r ~ Bernoulli(sigmoid(z_i(t))); the value
    v_i(t) is read before the update (as SPO's baseline is), then the reward is folded in with

        alpha <- rho alpha + r,    beta <- rho beta + (1 - r),

    rho constant (``rho`` given: the tracker's clip interval is [rho, rho]) or D-adaptive
    (``rho=None``: rho = clip(2^(-D / 0.06), 0.875, 0.96) with D from ``divergence``, see
    :class:`_Follower`; the policy after visit t's update is z(t + 1)). The tracker starts from an
    offline pass of ``n0`` samples at z(0) (Jeffreys form, N0 = 1 / (1 - rho_min), which is
    1 / (1 - rho) for a constant rho).

    Returns:
        :class:`TrackResult` with arrays ``[T, P]``, T = ``logits.shape[0] - 1``.
    """
    z = np.asarray(logits, dtype=np.float64)
    steps, num_prompts = z.shape[0] - 1, z.shape[1]
    rng = np.random.default_rng(seed)
    p = sigmoid(z[:-1])
    rewards = (rng.random(p.shape) < p).astype(np.float64)
    follower = _Follower(z[0], rho=rho, divergence=divergence, n0=n0, rng=np.random.default_rng(seed + 1))
    ids = np.arange(num_prompts)
    v = np.empty_like(p)
    rhos = np.empty_like(p)
    for t in range(steps):
        v[t] = follower.values(ids)
        rhos[t] = follower.update(ids, rewards[t], z[t + 1])
    return TrackResult(p=p, v=v, rho=rhos, rewards=rewards)


def tracking_mse(result: TrackResult, burn_in: int = 50) -> float:
    """Tracking error mean_{t >= burn_in, i} (v_i(t) - p_i(t))^2 of a :class:`TrackResult`."""
    return float(((result.v[burn_in:] - result.p[burn_in:]) ** 2).mean())


def tracking_error_sweep(
    logits: np.ndarray,
    rhos=(0.5, 0.75, 0.8, 0.875, 0.9, 0.93, 0.96, 0.98, 0.99),
    divergences=("logprob", "kl"),
    *,
    burn_in: int = 50,
    n0: int = 8,
    seed: int = 0,
) -> pd.DataFrame:
    """Tracking MSE of constant-rho trackers and of D-adaptive trackers on the same trajectory.

    All variants see the same rewards (same ``seed``). For a constant rho the effective window is
    W = 1 / (1 - rho) observations; for an adaptive tracker the table reports the mean rho it used
    and W = 1 / (1 - mean rho).

    Illustrates the choice of the official clip interval [0.875, 0.96], i.e. windows of 8 to 25:
    on a trajectory with calm and moving stretches, the error is U-shaped in W, and the adaptive
    rule lands near the best fixed window without being told the drift speed.

    Returns:
        DataFrame with columns method ("constant" or "adaptive (<divergence>)"), rho, window, mse.
    """
    rows = []
    for r in rhos:
        res = track(logits, rho=r, n0=n0, seed=seed)
        rows.append({"method": "constant", "rho": float(r), "window": 1.0 / (1.0 - r), "mse": tracking_mse(res, burn_in)})
    for d in divergences:
        res = track(logits, rho=None, divergence=d, n0=n0, seed=seed)
        mean_rho = float(res.rho[burn_in:].mean())
        rows.append({"method": f"adaptive ({d})", "rho": mean_rho, "window": 1.0 / (1.0 - mean_rho), "mse": tracking_mse(res, burn_in)})
    return pd.DataFrame(rows)


def ema_tracking_mse(p, rho, drift=0.0):
    """Steady-state error E[(v_before - p)^2] of a constant-rho tracker: noise plus lag.

    Once N = 1 / (1 - rho), the tracker is the EMA v <- rho v + (1 - rho) r. For a fixed p its
    variance is the sum of a geometric series,

        Var(v) = (1 - rho)^2 p (1 - p) / (1 - rho^2) = p (1 - p) (1 - rho) / (1 + rho) = p (1 - p) / (2W - 1),

    with W = 1 / (1 - rho). If p rises by ``drift`` per visit, the EMA lags by drift * rho / (1 - rho)
    and the value read before a visit misses one more step: a bias of drift / (1 - rho) = drift * W.
    Hence (for small drift, treating p(1 - p) as constant over a window)

        MSE(W) = p (1 - p) / (2W - 1) + (drift * W)^2.

    Vectorised over arrays (numpy broadcasting). Returns a float or an ndarray.
    """
    p, rho, drift = (np.asarray(a, dtype=np.float64) for a in (p, rho, drift))
    w = 1.0 / (1.0 - rho)
    out = p * (1.0 - p) / (2.0 * w - 1.0) + (drift * w) ** 2
    return float(out) if out.ndim == 0 else out


def optimal_window(p, drift):
    """The window W minimising :func:`ema_tracking_mse` (numerically, W >= 1).

    For W >> 1 the minimum is near W* = (p (1 - p) / (4 drift^2))^(1/3); at p = 1/2 a drift of one
    percentage point per visit gives W* ~ 8.5 and 0.2 points give W* ~ 25 -- the official clip range.
    """
    w = np.geomspace(1.0, 1e4, 20001)
    mse = ema_tracking_mse(np.asarray(p, dtype=np.float64)[..., None], 1.0 - 1.0 / w, np.asarray(drift, dtype=np.float64)[..., None])
    out = w[np.argmin(mse, axis=-1)]
    return float(out) if np.ndim(out) == 0 else out


def window_formula_curves(p=0.5, drifts=(0.002, 0.005, 0.01, 0.02), *, windows=None) -> pd.DataFrame:
    """:func:`ema_tracking_mse` (noise + lag) against the window W = 1 / (1 - rho), for each drift.

    Args:
        p: the success probability the formula is evaluated at.
        drifts: changes of p per visit, one curve each.
        windows: the W grid (default 400 points from 1 to 200, log-spaced).

    Returns:
        long DataFrame with columns p, drift, window, mse, optimal (True on each curve's minimum).
    """
    w = np.geomspace(1, 200, 400) if windows is None else np.asarray(windows, dtype=np.float64)
    frames = []
    for d in drifts:
        mse = ema_tracking_mse(p, 1 - 1 / w, d)
        frames.append(pd.DataFrame({"p": float(p), "drift": float(d), "window": w, "mse": mse,
                                    "optimal": np.arange(len(w)) == int(np.argmin(mse))}))
    return pd.concat(frames, ignore_index=True)


# ====================================================================== figures
def _window_band(ax, band=OFFICIAL_WINDOWS):
    ax.axvspan(*band, color="0.9", zorder=0, label=f"official window range {band[0]}-{band[1]}")


def _trace_colors(results):
    return style.colors(list(results))


def plot_tracking_trace(results, prompt=0, *, ax=None, max_steps=None, faint=()):
    """One prompt's true p and the tracker values v of several trackers, over visits.

    ``results`` maps a label to a :class:`TrackResult` (all on the same trajectory). Labels in
    ``faint`` are drawn thin and translucent behind the others, so a very noisy tracker (a window of
    2 jumps between 0 and 1) does not hide the ones the figure is about.
    """
    ax = style._ax(ax, figsize=(6.0, 3.2))
    first = next(iter(results.values()))
    t = np.arange(first.p.shape[0] if max_steps is None else min(max_steps, first.p.shape[0]))
    ax.plot(t, first.p[t, prompt], color=style.color("true p"), linewidth=2, label="true p", zorder=4)
    palette = _trace_colors(results)
    for label, res in results.items():
        if label in faint:
            ax.plot(t, res.v[t, prompt], linewidth=0.6, alpha=0.3, color=palette[label], label=f"{label} (faint)",
                    zorder=1)
        else:
            ax.plot(t, res.v[t, prompt], linewidth=1.4, color=palette[label], label=label, zorder=3)
    ax.set_xlabel("visit of the prompt (count)")
    ax.set_ylabel("success probability\n(true p, tracker value v)")
    ax.set_ylim(-0.02, 1.02)
    style.legend(ax, fontsize="x-small")
    return ax


def plot_rho_trace(results, prompt=0, *, ax=None, max_steps=None):
    """The discount rho each tracker applied at every visit of one prompt (same trajectory).

    ``results`` maps a label to a :class:`TrackResult`; the official clip interval [0.875, 0.96]
    bounds the adaptive trackers.
    """
    ax = style._ax(ax, figsize=(6.0, 2.4))
    first = next(iter(results.values()))
    t = np.arange(first.rho.shape[0] if max_steps is None else min(max_steps, first.rho.shape[0]))
    palette = _trace_colors(results)
    for label, res in results.items():
        ax.plot(t, res.rho[t, prompt], linewidth=1, color=palette[label], label=label)
    ax.set_xlabel("visit of the prompt (count)")
    ax.set_ylabel("discount rho applied\n(per visit)")
    style.legend(ax, fontsize="x-small")
    return ax


def plot_tracking_error(table, *, ax=None, band=OFFICIAL_WINDOWS):
    """Tracking MSE against the effective window W = 1 / (1 - rho) (log axis).

    ``table`` from :func:`tracking_error_sweep`: constant-rho trackers as a line, adaptive ones as
    stars at their mean window. The official range of windows (8 to 25) is shaded.
    """
    ax = style._ax(ax)
    const = table[table["method"] == "constant"].sort_values("window")
    ax.plot(const["window"], const["mse"], "o-", color=style.color("constant rho"), label="constant rho")
    adaptive = table[table["method"] != "constant"]
    palette = style.colors(["constant rho", *adaptive["method"]])
    for _, row in adaptive.iterrows():
        ax.plot([row["window"]], [row["mse"]], "*", markersize=12, color=palette[row["method"]],
                label=f"{row['method']}, mean rho {row['rho']:.3f}")
    if band is not None:
        _window_band(ax, band)
    ax.set_xscale("log")
    ax.set_xlabel("effective window 1 / (1 - rho) (observations)")
    ax.set_ylabel("tracking error: mean (v - p)^2\n(squared probability)")
    style.legend(ax, fontsize="x-small")
    return ax


def plot_window_formula(curves, *, ax=None, band=OFFICIAL_WINDOWS):
    """The analytic noise-plus-lag error against W, one curve per drift, its minimum as a dot.

    ``curves`` from :func:`window_formula_curves`.
    """
    ax = style._ax(ax)
    drifts = list(dict.fromkeys(curves["drift"]))
    palette = style.colors([f"drift {d:g} per visit" for d in drifts])
    for d in drifts:
        g = curves[curves["drift"] == d]
        name = f"drift {d:g} per visit"
        ax.plot(g["window"], g["mse"], color=palette[name], label=name)
        best = g[g["optimal"]]
        ax.plot(best["window"], best["mse"], "o", color=palette[name])
    if band is not None:
        _window_band(ax, band)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("effective window W = 1 / (1 - rho) (observations)")
    p = ", ".join(f"{x:g}" for x in dict.fromkeys(curves["p"]))
    ax.set_ylabel(f"tracking MSE at p = {p}\n(squared probability)")
    style.legend(ax, fontsize="x-small")
    return ax
