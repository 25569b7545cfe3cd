"""Advantage estimators: SPO's tracker baseline with global normalisation, and the group baselines.

Every function returns ONE scalar per response (shape ``[B]``); the loss broadcasts it to every
generated token of that response.

SPO (paper Sec. 3.4):
    A_i = r_i - v(x_i)                 with v read BEFORE this step's rewards are folded in, so the
                                       baseline does not depend on y_i and the gradient stays unbiased;
    A~_i = (A_i - mean_B A) / (std_B A + eps)     over the whole batch, unbiased std (B - 1).

GRPO and its variants (the SPO paper), rewards laid out as consecutive groups of G:
    GRPO      A_i = (r_i - mean_g r) / (std_g r + eps)
    Dr. GRPO  A_i =  r_i - mean_g r                    (scale="none")
    batch     A_i = (r_i - mean_g r) / (std_B r + eps)  (TRL's scale_rewards="batch")
    RLOO      A_i =  r_i - mean of the other G - 1 rewards of the group
"""

from __future__ import annotations

import torch
from torch import Tensor

from .metrics import degenerate_mask

__all__ = ["spo_advantages", "grpo_advantages", "rloo_advantages"]


def _as_rewards(rewards, name: str = "rewards") -> Tensor:
    r = torch.as_tensor(rewards)
    if not r.is_floating_point():
        r = r.to(torch.float32)
    if r.dim() != 1:
        raise ValueError(f"{name} must be 1-D [B], got shape {tuple(r.shape)}")
    if not torch.isfinite(r).all():
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return r


def spo_advantages(rewards, baselines, *, eps: float = 1e-8) -> Tensor:
    """SPO advantage: A = r - b, normalised over the whole batch (Sec. 3.4).

    Args:
        rewards: ``[B]`` rewards of this step.
        baselines: ``[B]`` tracker values v(x) read before this step's update (zeros for the
            "no baseline" ablation).
        eps: added to the std.

    Returns:
        ``[B]``: (A - mean A) / (std_unbiased A + eps). With B < 2 the std is undefined and the
        result is A - mean A (all zeros); zero spread gives zeros. Never NaN for finite input.
    """
    r = _as_rewards(rewards)
    b = _as_rewards(baselines, "baselines").to(r.dtype)
    if b.shape != r.shape:
        raise ValueError(f"rewards {tuple(r.shape)} and baselines {tuple(b.shape)} differ in shape")
    a = (r - b).double()  # float64: a float32 mean of equal values can miss them by an ulp
    if a.numel() < 2 or bool(a.max() == a.min()):  # no spread: nothing to learn, exactly 0
        return torch.zeros_like(r)
    return ((a - a.mean()) / (a.std(unbiased=True) + eps)).to(r.dtype)


def _groups(rewards, group_size: int) -> Tensor:
    r = _as_rewards(rewards)
    if int(group_size) != group_size or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
    if r.numel() % group_size:
        raise ValueError(
            f"{r.numel()} rewards cannot be split into groups of {group_size}: rewards must be laid "
            f"out as consecutive groups, so their number must be a multiple of group_size"
        )
    return r.reshape(-1, group_size)


def grpo_advantages(rewards, group_size: int, *, scale: str = "group", eps: float = 1e-6) -> Tensor:
    """Group-relative advantage (GRPO and variants).

    Args:
        rewards: ``[B]`` with B = (number of prompts) x group_size, each prompt's G responses consecutive.
        group_size: G.
        scale: ``"group"`` (GRPO: divide by the group's unbiased std + eps), ``"batch"`` (divide by the
            unbiased std of all B rewards + eps) or ``"none"`` (Dr. GRPO: no division).

    Returns:
        ``[B]``. A degenerate group (all rewards equal) gets exactly 0 for every member.
        With G = 1 the group mean IS the reward, so every advantage is 0 and nothing is learned: the
        G = 1 trap of running a group-baseline trainer single-stream (use :func:`spo_advantages`).
    """
    g = _groups(rewards, group_size)
    dtype, g = g.dtype, g.double()  # float64, and degenerate groups set to exactly 0 (not an ulp off)
    degenerate = degenerate_mask(g, group_size).unsqueeze(1)
    centred = torch.where(degenerate, 0.0, g - g.mean(dim=1, keepdim=True))
    if scale == "none":
        out = centred
    elif scale == "group":
        std = g.std(dim=1, unbiased=True, keepdim=True) if group_size > 1 else torch.zeros_like(g)
        out = centred / (std + eps)
    elif scale == "batch":
        std = g.std(unbiased=True) if g.numel() > 1 else torch.zeros((), dtype=g.dtype)
        out = centred / (std + eps)
    else:
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    return out.reshape(-1).to(dtype)


def rloo_advantages(rewards, group_size: int) -> Tensor:
    """Leave-one-out baseline: A_i = r_i - (sum_g r - r_i) / (G - 1). Needs G >= 2.

    Equals G / (G - 1) times the Dr. GRPO advantage; unbiased because r_i's own reward is left out.
    """
    if group_size < 2:
        raise ValueError(f"RLOO needs group_size >= 2 (a leave-one-out mean of 0 others), got {group_size}")
    g = _groups(rewards, group_size)
    others = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
    return (g - others).reshape(-1)
