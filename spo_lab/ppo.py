"""The policy update: one PPO epoch over shuffled mini-batches, with gradient accumulation for memory.

Two settings that look alike and must not be confused:

- ``mini_batches`` is part of the ALGORITHM: the step's R rollouts are shuffled and split into that
  many mini-batches, and each mini-batch is one optimiser step (official: 8 at full scale). The
  first mini-batch's ratio is exactly 1; the later ones see a policy the earlier ones moved, which is
  where the PPO clip and the dual clip start to act.
- ``micro_batch_rows`` is MEMORY: how many rows go through one forward/backward. A mini-batch larger
  than that is processed in micro-batches whose gradients add up before the optimiser step, and the
  token-mean loss divides by the whole mini-batch's token count (not each micro-batch's), so the
  update is the same, to float rounding, whatever ``micro_batch_rows`` is (a test checks it).
  0 means "the whole mini-batch in one pass".

Several processes (:mod:`spo_lab.distributed`): every process holds the global batch and draws the
same split; each takes a contiguous share of every mini-batch, its loss divided by the WHOLE
mini-batch's token (or row) count, and the gradients are summed across processes before clipping
and the optimiser step: the update of one process, to float rounding (a test checks it).

nanochat's ``chat_rl.py`` and nano-aha-moment accumulate the same way. The loss itself is
:func:`spo_lab.loss.policy_loss` (clip-higher, dual-clip, token-mean; Sec. 3.5 of the SPO paper).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .distributed import ONE, World
from .loss import policy_loss
from .models import token_logprobs

__all__ = ["PPOSettings", "ppo_update", "logprob_fn", "trainable"]


@dataclass(frozen=True)
class PPOSettings:
    """What one policy update needs to know, and nothing else (official values in brackets)."""

    mini_batches: int = 8
    """optimiser steps per RL step, one epoch over the shuffled rollouts [8]"""
    micro_batch_rows: int = 0
    """rows per forward/backward (gradient accumulation); 0 = the whole mini-batch"""
    clip_low: float = 0.2
    """ratio clipped below at 1 - clip_low [0.2]"""
    clip_high: float = 0.28
    """ratio clipped above at 1 + clip_high, "clip-higher" [0.28]"""
    dual_clip: float = 10.0
    """dual-clip bound c for negative advantages, 0 = off [10]"""
    loss_agg: str = "token-mean"
    """token-mean | seq-mean-token-mean | seq-mean-token-sum [token-mean]"""
    kl_coef: float = 0.0
    """k3 KL-to-reference weight [0: no KL term]"""
    max_grad_norm: float = 1.0
    """gradient clipping norm [1.0]"""
    temperature: float = 1.0
    """the sampling temperature: log-probs are those of the temperature-scaled distribution [1.0]"""

    def rows_per_pass(self, rows: int) -> int:
        """Rows per forward pass for a batch of ``rows`` (also what D's re-scoring uses)."""
        mini = max(1, rows // self.mini_batches)
        return min(self.micro_batch_rows, mini) if self.micro_batch_rows else mini


def trainable(model) -> list[torch.nn.Parameter]:
    """The parameters the optimiser updates (all of them, or a LoRA adapter's)."""
    return [p for p in model.parameters() if p.requires_grad]


def logprob_fn(model, temperature: float, rows: int) -> Callable[..., Tensor]:
    """``fn(prompt_ids, prompt_mask, response_ids, response_mask) -> [R, T]`` log-probs under ``model``
    now, without gradients, ``rows`` rows per forward pass (the D estimators' scoring callable)."""

    @torch.no_grad()
    def fn(*batch: Tensor) -> Tensor:
        return torch.cat([token_logprobs(model, *(t[i : i + rows] for t in batch), temperature=temperature)
                          for i in range(0, batch[0].shape[0], rows)])

    return fn


def ppo_update(model, optimizer, rollouts, advantages: Tensor, ppo: PPOSettings, generator: torch.Generator,
               ref_model=None, world: World = ONE) -> dict[str, float]:
    """One PPO epoch: ``ppo.mini_batches`` optimiser steps over a random split of the rollouts.

    Args:
        model: the policy (train mode is set here and unset at the end).
        optimizer: its optimiser; one ``step()`` per mini-batch.
        rollouts: ``[R, ...]`` :class:`~spo_lab.engines.base.Rollouts`; the loss applies where
            ``loss_mask`` is 1, attention uses ``response_mask``.
        advantages: ``[R]`` one scalar per response.
        ppo: the settings (see :class:`PPOSettings`).
        generator: draws the mini-batch split.
        ref_model: the frozen reference policy for the optional KL term.
        world: the processes sharing the update (:mod:`spo_lab.distributed`); each holds the same
            ``rollouts`` and ``generator`` state and takes its share of every mini-batch.

    Returns:
        The loss statistics of :func:`~spo_lab.loss.policy_loss` and ``grad_norm``, averaged over the
        mini-batches.
    """
    model.train()
    device = next(model.parameters()).device
    order = torch.randperm(len(rollouts), generator=generator)
    stats: dict[str, float] = {}
    for chunk in order.chunk(ppo.mini_batches):
        mine = world.share(chunk)  # this process's rows of the mini-batch: all of them in one process
        whole = None if world.size == 1 else (float(rollouts.loss_mask[chunk].sum()), len(chunk))
        mb = rollouts.select(mine).to(device)
        st = world.sum_stats(_accumulate(model, mb, advantages[mine].float().to(device), ppo, ref_model, whole))
        world.all_reduce_grads(trainable(model))  # SUM: each share is already divided by the whole mini-batch
        st["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(trainable(model), ppo.max_grad_norm,
                                                               error_if_nonfinite=True))
        optimizer.step()
        for k, v in st.items():
            stats[k] = stats.get(k, 0.0) + v / ppo.mini_batches
    model.eval()
    return stats


def _accumulate(model, mb, adv: Tensor, ppo: PPOSettings, ref_model, total=None) -> dict[str, float]:
    """Gradients of one mini-batch's loss, a micro-batch at a time; returns the mini-batch's stats.

    ``total``: ``(tokens, rows)`` of the whole mini-batch when ``mb`` is one process's share of it."""
    model.zero_grad(set_to_none=True)
    rows = ppo.micro_batch_rows or max(len(mb), 1)
    whole = total is None and rows >= len(mb)  # one pass: the loss normalises itself, as without accumulation
    tokens, n = total if total is not None else (float(mb.loss_mask.sum()), len(mb))
    share = {} if whole else {"total_tokens": tokens, "total_rows": n}
    stats: dict[str, float] = {}
    for i in range(0, len(mb), rows):
        part = mb if whole else mb.select(torch.arange(i, min(i + rows, len(mb)), device=adv.device))
        a = adv if whole else adv[i : i + rows]
        args = (part.prompt_ids, part.prompt_mask, part.response_ids, part.response_mask)
        logp = token_logprobs(model, *args, temperature=ppo.temperature)
        ref = None
        if ref_model is not None:
            with torch.no_grad():
                ref = token_logprobs(ref_model, *args, temperature=ppo.temperature)
        loss, st = policy_loss(logp, part.logprobs, a, part.loss_mask, clip_low=ppo.clip_low,
                               clip_high=ppo.clip_high, dual_clip=ppo.dual_clip or None, agg=ppo.loss_agg,
                               ref_logp=ref, kl_coef=ppo.kl_coef, **share)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {float(loss)}; stats {st}")
        loss.backward()
        for k, v in st.items():
            stats[k] = stats.get(k, 0.0) + v
    return stats
