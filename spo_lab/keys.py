"""The names of what a run logs, defined once: the metric keys of ``metrics.jsonl`` and the step's phases.

The trainer (:mod:`spo_lab.train`) and the evaluator (:mod:`spo_lab.evaluate`) write rows with these
keys; every reader -- the report (:mod:`spo_lab.report`), the figures, the notebooks' plot helpers
and their axis labels (:mod:`spo_lab.teaching.style`), the benchmarks -- imports them from here
instead of spelling the strings again. Standard library only, so importing it costs nothing.
"""

from __future__ import annotations

# ---------------------------------------------------------------------- counters (x axes)
STEP = "step"
"""updates made so far (0: the row of the starting policy)"""
RESPONSES = "responses"
"""training responses generated so far"""
RESPONSES_INCL_INIT = "responses_incl_init"
"""the same, plus the responses of SPO's offline initialisation pass"""
TOKENS = "tokens"
"""training tokens generated so far (the policy's own: ``loss_mask``)"""

# ---------------------------------------------------------------------- the training batch of a step
REWARD_MEAN, REWARD_VAR = "reward/mean", "reward/var"
ADV_RAW_VAR, ADV_VAR = "adv/raw_var", "adv/var"
"""advantage variance before and after normalisation"""
ADV_ZERO_FRAC = "adv/zero_frac"
ADV_VAR_NONDEGENERATE = "adv/var_nondegenerate"
DEGENERATE_FRAC = "group/degenerate_frac"
"""share of groups (G > 1) whose rewards are all equal: every advantage 0 (GRPO, Dr. GRPO, RLOO)"""
TRUNCATED_FRAC = "truncated_frac"
SAMPLED_V_MEAN = "sampled/v_mean"
"""SPO: the tracker's mean value over the prompts drawn this step"""


def sampled_mean(meta_key: str) -> str:
    """The mean of a task's numeric metadata over the drawn prompts, e.g. ``sampled/level_mean``."""
    return f"sampled/{meta_key}_mean"


# ---------------------------------------------------------------------- SPO's tracker
RHO_MEAN, RHO_MIN = "tracker/rho_mean", "tracker/rho_min"
D_MEAN, D_MAX = "tracker/D_mean", "tracker/D_max"
N_EFF_MEAN, V_MEAN, VALUE_HIST = "tracker/n_eff_mean", "tracker/v_mean", "tracker/value_hist"

# ---------------------------------------------------------------------- the update (policy_loss's stats)
LOSS = "loss/"
"""prefix of :func:`spo_lab.loss.policy_loss`'s statistics and ``grad_norm``"""

# ---------------------------------------------------------------------- held-out evaluation
SAMPLED_ACC = "eval/sampled_acc"
"""avg@k: mean reward of ``eval_samples`` samples per held-out prompt at the training temperature"""
GREEDY_ACC = "eval/greedy_acc"
"""greedy accuracy on the held-out prompts; both also per metadata group: ``eval/greedy_acc/level=3``"""

# ---------------------------------------------------------------------- asynchronous collection (--collector async)
ASYNC_STALENESS_MEAN, ASYNC_STALENESS_MAX = "async/staleness_mean", "async/staleness_max"
"""how many policy versions the batch's rows are behind the trainer (0 = sampled by the current weights)"""
ASYNC_IN_FLIGHT = "async/in_flight"
"""trajectories still running when the batch was handed over"""
ASYNC_FINISHED_WAITING = "async/finished_waiting"
"""units finished but left for a later batch when the batch was handed over"""
ASYNC_WAIT_DUE = "async/wait_s"
"""seconds the trainer waited for the batch"""
ASYNC_ABORTED = "async/aborted"
"""units (prompt + its G trajectories) started and thrown away since the previous batch; with the staleness
bound met by pacing this stays 0 until the run ends, whose aborts (per difficulty level) are in collector.json"""

# ---------------------------------------------------------------------- time
PHASES = ("sample", "generate", "reward", "update", "tracker", "sync")
"""The timed phases of a training step, in order; each is logged as ``time/<phase>`` (seconds)."""
EVAL_TIME, OFFLINE_TIME = "time/eval", "time/offline_init"
NOT_STEP = (EVAL_TIME, OFFLINE_TIME)
"""``time/*`` columns that are not part of a training step: evaluation and the offline pass."""


def time_key(phase: str) -> str:
    """``time/<phase>``."""
    return f"time/{phase}"
