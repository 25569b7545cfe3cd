"""How far has the policy moved since a prompt was last seen? The D(x) behind the tracker's rho.

The tracker discounts old evidence by rho(x) = clip(2 ** (-D(x) / D_half), rho_min, rho_max)
(the SPO paper). The paper defines D(x) as the KL divergence between the current policy and the
one that last updated x's entry; it needs the policy, so it lives here, not in the tracker.

Both estimators are called once per step AFTER the policy update and BEFORE the tracker update,
``d = estimator.observe(logprob_fn, row_ids, rollouts)`` (measure D for this step's rows, then
remember what the next visit needs), with a *log-prob callable* for the just-updated policy,

    logprob_fn(prompt_ids, prompt_mask, response_ids, response_mask) -> [R, T] token log-probs

(the trainer passes :func:`spo_lab.models.token_logprobs` bound to its model and temperature), so
this module needs torch only: no model class, no engine. ``rollouts`` is any object with the fields
of :class:`spo_lab.engines.base.Rollouts`. The mean runs over ``loss_mask``, the tokens the policy
sampled; the official recipe averages over the attention mask, which differs only when a tool wrote
tokens into the response (its output is then left out here: it is not the policy's choice).

The two estimators:

- :class:`ResponseCache` -- the official estimator. For each prompt it keeps the last response
  sampled for it and that response's token log-probs under the policy right after the update of
  the step in which it was sampled. At the next visit the stored response is re-scored under the
  just-updated policy and D(x) = mean over its tokens of |log pi_stored - log pi_now|. First visit:
  D = 0 (rho = rho_max). Cost: one forward pass per step over up to 2B responses (the stored ones of
  prompts seen before, and the new ones) and O(P * T) stored tokens.
- :class:`KLClock` -- a CHEAPER estimator, not the official one. A global clock advances every step
  by the mean |log pi_before - log pi_after| of that step's own responses across the update; D(x)
  is the clock's advance since x's last visit. Cost: a forward pass over B responses per step and
  one float per prompt. It sums per-step movements, so it over-estimates the total movement when
  successive updates partly cancel.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["ResponseCache", "KLClock", "LogprobFn", "mean_abs_logp_diff", "last_occurrence"]

LogprobFn = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
"""logprob_fn(prompt_ids, prompt_mask, response_ids, response_mask) -> [R, T] log-probs under the current policy."""

ScoreFn = LogprobFn  # the old name, kept for one release


def mean_abs_logp_diff(a: Tensor, b: Tensor, mask: Tensor) -> Tensor:
    """Per response: sum_t |a_t - b_t| m_t / sum_t m_t, shape ``[R]`` (0 for empty responses).

    Masked positions are dropped by selection (``where``), not multiplied by 0: a -inf log-prob at a
    padded position would otherwise turn the sum into NaN.
    """
    m = mask.bool()
    diff = torch.where(m, (a - b).abs(), torch.zeros((), dtype=a.dtype))
    return diff.sum(dim=1) / m.to(a.dtype).sum(dim=1).clamp(min=1.0)


def last_occurrence(ids: Tensor) -> Tensor:
    """Row indices ``[U]`` of the last row of each distinct id in ``ids [R]`` (ascending).

    Indexed writes with repeated indices (``store[ids] = rows``) leave it to torch which row wins; on
    several threads it is not the last one, and fields of different rows can mix. Writers use this
    to keep exactly one row, the last, per id.
    """
    uniq, inverse = torch.unique(ids, return_inverse=True)
    rows = torch.arange(len(ids), device=ids.device)
    last = torch.full((len(uniq),), -1, dtype=torch.long, device=ids.device)
    return last.scatter_reduce(0, inverse, rows, reduce="amax").sort().values


class ResponseCache:
    """The official D(x) estimator: stored last response per prompt, re-scored at the next visit.

    Args:
        num_prompts: P.
        prompt_len, max_new_tokens: widths of the stored prompt and response token arrays.
        pad_id: token used for padding.
    """

    FIELDS = ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "loss_mask", "logprobs", "has")

    def __init__(self, num_prompts: int, prompt_len: int, max_new_tokens: int, pad_id: int):
        self.prompt_ids = torch.full((num_prompts, prompt_len), pad_id, dtype=torch.long)
        self.prompt_mask = torch.zeros((num_prompts, prompt_len), dtype=torch.long)
        self.response_ids = torch.full((num_prompts, max_new_tokens), pad_id, dtype=torch.long)
        self.response_mask = torch.zeros((num_prompts, max_new_tokens), dtype=torch.long)
        self.loss_mask = torch.zeros((num_prompts, max_new_tokens), dtype=torch.long)
        self.logprobs = torch.zeros((num_prompts, max_new_tokens), dtype=torch.float32)
        self.has = torch.zeros(num_prompts, dtype=torch.bool)
        self.pad_id = pad_id

    @torch.no_grad()
    def observe(self, logprob_fn: LogprobFn, ids: Tensor, rollouts) -> Tensor:
        """D for each row of this step's batch; then store this step's responses. Call after the update.

        Args:
            logprob_fn: log-probs under the just-updated policy (see the module docstring).
            ids: ``[R]`` prompt ids of the rollout rows. A prompt may appear in several rows (several
                responses per prompt): every such row gets the D of the prompt's stored response, and
                the prompt's LAST row is the one stored, as "the last response sampled for x".
            rollouts: this step's rollouts.

        Returns:
            ``[R]`` float64 divergences (0 for prompts seen for the first time).
        """
        ids = torch.as_tensor(ids, dtype=torch.long)
        old_rows = self.has[ids].nonzero().squeeze(1)  # prompts seen before; a first visit has D = 0
        seen = ids[old_rows]
        # One forward pass scores both the stored responses of the rows that have one (re-scored) and
        # all the new ones (their log-probs right after the update, stored for the next visit).
        p_ids = torch.cat([self._fit(self.prompt_ids[seen], rollouts.prompt_ids), rollouts.prompt_ids])
        p_mask = torch.cat([self._fit(self.prompt_mask[seen], rollouts.prompt_mask, 0), rollouts.prompt_mask])
        t = max(self.response_ids.shape[1], rollouts.response_ids.shape[1])
        r_ids = torch.cat([_pad_right(self.response_ids[seen], t, self.pad_id),
                           _pad_right(rollouts.response_ids, t, self.pad_id)])
        r_mask = torch.cat([_pad_right(self.response_mask[seen], t, 0), _pad_right(rollouts.response_mask, t, 0)])
        logp = logprob_fn(p_ids, p_mask, r_ids, r_mask).float().cpu()
        k = len(seen)
        stored_now, new_now = logp[:k], logp[k:]
        d = torch.zeros(len(ids), dtype=torch.float64)
        d[old_rows] = mean_abs_logp_diff(_pad_right(self.logprobs[seen], t, 0.0), stored_now,
                                         _pad_right(self.loss_mask[seen], t, 0)).double()
        self._store(ids, rollouts, new_now)
        return d

    def divergence(self, logprob_fn: LogprobFn, ids: Tensor, rollouts) -> Tensor:
        """The old name of :meth:`observe` (it measures AND stores), kept for one release."""
        return self.observe(logprob_fn, ids, rollouts)

    def _store(self, ids: Tensor, rollouts, logp_now: Tensor) -> None:
        keep = last_occurrence(ids)  # exactly one row per prompt: its last
        ids, t = ids[keep], self.response_ids.shape[1]
        self.prompt_ids[ids] = self._fit(rollouts.prompt_ids[keep], self.prompt_ids[:1])
        self.prompt_mask[ids] = self._fit(rollouts.prompt_mask[keep], self.prompt_mask[:1], 0)
        self.response_ids[ids] = _pad_right(rollouts.response_ids[keep], t, self.pad_id)[:, :t]
        self.response_mask[ids] = _pad_right(rollouts.response_mask[keep], t, 0)[:, :t]
        self.loss_mask[ids] = _pad_right(rollouts.loss_mask[keep], t, 0)[:, :t]
        self.logprobs[ids] = _pad_right(logp_now[keep], t, 0.0)[:, :t]
        self.has[ids] = True

    def _fit(self, x: Tensor, like: Tensor, pad=None) -> Tensor:
        """Left-pad or left-trim ``x [R, *]`` to ``like``'s width (prompts are left-padded)."""
        pad = self.pad_id if pad is None else pad
        w = like.shape[1]
        if x.shape[1] >= w:
            return x[:, x.shape[1] - w :]
        return torch.cat([x.new_full((x.shape[0], w - x.shape[1]), pad), x], dim=1)

    def state_dict(self) -> dict:
        return {k: getattr(self, k).clone() for k in self.FIELDS}

    def load_state_dict(self, sd: dict) -> None:
        for k, v in sd.items():
            setattr(self, k, v.clone())
        if "loss_mask" not in sd:  # a checkpoint from before tools: every attended token was trained on
            self.loss_mask = self.response_mask.clone()


class KLClock:
    """The cheaper D(x) estimator (labelled as such): accumulated batch-level movement since x's visit."""

    def __init__(self, num_prompts: int):
        self.clock = 0.0
        self.last_seen = torch.full((num_prompts,), float("nan"), dtype=torch.float64)

    @torch.no_grad()
    def observe(self, logprob_fn: LogprobFn, ids: Tensor, rollouts) -> Tensor:
        """Advance the clock by this step's movement and return D per row (0 on a first visit).

        ``rollouts.logprobs`` were taken before the update; they are re-scored with ``logprob_fn``.
        """
        ids = torch.as_tensor(ids, dtype=torch.long)
        now = logprob_fn(rollouts.prompt_ids, rollouts.prompt_mask, rollouts.response_ids,
                         rollouts.response_mask).cpu()
        step_move = mean_abs_logp_diff(rollouts.logprobs, now.float(), rollouts.loss_mask).mean()
        self.clock += float(step_move)
        d = (self.clock - self.last_seen[ids]).nan_to_num(0.0)
        self.last_seen[ids] = self.clock
        return d

    def divergence(self, logprob_fn: LogprobFn, ids: Tensor, rollouts) -> Tensor:
        """The old name of :meth:`observe`, kept for one release."""
        return self.observe(logprob_fn, ids, rollouts)

    def state_dict(self) -> dict:
        return {"clock": self.clock, "last_seen": self.last_seen.clone()}

    def load_state_dict(self, sd: dict) -> None:
        self.clock, self.last_seen = float(sd["clock"]), sd["last_seen"].clone()


def _pad_right(x: Tensor, width: int, value) -> Tensor:
    if x.shape[1] >= width:
        return x
    return torch.cat([x, x.new_full((x.shape[0], width - x.shape[1]), value)], dim=1)
