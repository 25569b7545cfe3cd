"""Pure simulations behind notebooks 02-05 and 08: no model, seeded, seconds on a laptop CPU.

Each simulation isolates one claim of the SPO paper (Xu & Ding, arXiv 2509.13232) and replaces the
language model by the one quantity the claim depends on: each prompt's success probability
p = sigmoid(z), moved along a stated trajectory of logits z. The SPO pieces themselves are the
library's (:class:`~spo_lab.tracker.ValueTracker`, :func:`~spo_lab.advantages.grpo_advantages`,
:class:`~spo_lab.sampler.PrioritizedSampler`, :func:`~spo_lab.sampler.priority_weights`,
:func:`~spo_lab.metrics.degenerate_probability`, :func:`~spo_lab.metrics.degenerate_fraction`);
nothing here re-implements them.

    simulation                       paper claim it illustrates                        notebook
    drifting_population              (the shared prompt population)                    02-05
    degenerate_groups                GRPO's degenerate share grows, ~60 % -> >80 %      02
    bandit_logits, track, tracking_* KL-adaptive rho, windows of 8 to 25                03
    advantage_variance               Var(r - v) ~ half Var(r); GRPO's is the highest    04
    sampler_signal                   prioritised sampling draws where the signal is    05
    sync_barrier_sweep               486 s group-wise vs 112 s single-stream (4.35x)   08

What is simplified, everywhere: the trajectory of p is *exogenous* -- it is written down before the
simulation and does not react to which prompts were sampled or to the advantages computed. That is
what lets each claim be looked at on its own; it is also why none of these numbers is a training
result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .advantages import grpo_advantages
from .metrics import degenerate_fraction, degenerate_probability
from .sampler import PrioritizedSampler, priority_weights, sample_without_replacement
from .tracker import ValueTracker

__all__ = [
    "sigmoid",
    "drifting_population",
    "degenerate_groups",
    "bandit_logits",
    "ramp_logits",
    "TrackResult",
    "track",
    "tracking_mse",
    "tracking_error_sweep",
    "ema_tracking_mse",
    "optimal_window",
    "advantage_variance",
    "summarise_advantage_variance",
    "SamplerResult",
    "sampler_signal",
    "rollout_latencies",
    "group_sync_time",
    "single_stream_time",
    "sync_barrier_sweep",
    "matching_tail",
    "PAPER_GROUP_SECONDS",
    "PAPER_SINGLE_SECONDS",
    "PAPER_SPEEDUP",
]

# The paper's agentic-throughput simulation (SPO_SPEC Sec. 5): 24 samples collected group-wise took
# 486 s; the first 24 of 48 independent rollouts took 112 s. 486 / 112 = 4.34; the paper states 4.35x
# (presumably from unrounded times).
PAPER_GROUP_SECONDS = 486.0
PAPER_SINGLE_SECONDS = 112.0
PAPER_SPEEDUP = 4.35


def sigmoid(z):
    """p = 1 / (1 + exp(-z)), elementwise, for arrays of logits."""
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def _log_sigmoid(z):
    """log sigmoid(z) = -log(1 + exp(-z)), stable for large |z|."""
    return -np.logaddexp(0.0, -z)


# ====================================================================== 1. the prompt population
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
    G carries a learning signal; solved and hopeless prompts stand (almost) still. The population therefore
    *polarises*: the band in between is pushed to "solved" while hopeless prompts stay hopeless.

    The defaults are chosen, not fitted, so that the expected degenerate share at G = 8 starts near
    the paper's ~60 % (SPO_SPEC Sec. 2); the rise that follows is this model's consequence.

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


# ====================================================================== 2. a tracker that follows
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
    (a short window lags less); a KL-adaptive rho can do both.

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
    Official estimator (SPO_SPEC Sec. 3.2) applied to this one-token policy: keep the last sampled
    y with its log-prob under the policy right after that step's update; at the next visit, after the
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

    rho constant (``rho`` given: the tracker's clip interval is [rho, rho]) or KL-adaptive
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
    """Tracking MSE of constant-rho trackers and of KL-adaptive trackers on the same trajectory.

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


# ====================================================================== 3. advantage variance
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
        groups = g_r.view(-1, group_size)
        live = ~(groups == groups[:, :1]).all(dim=1).repeat_interleave(group_size)
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
    order = ["reward r", "oracle: r - p", "SPO: r - v", "GRPO (all samples)", "GRPO (non-degenerate)"]
    m = df[df.step >= burn_in].groupby("estimator")["variance"].mean()
    m = m.reindex([o for o in order if o in m.index])
    return pd.DataFrame({"variance": m, "ratio_to_reward": m / m["reward r"]})


# ====================================================================== 4. prioritised sampling
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
    KL-adaptive rho, offline start of n0 samples). Strategies:

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


# ====================================================================== 5. synchronisation barriers
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
    SPO_SPEC, so ``matching_tail`` finds where this model meets that ratio.

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
