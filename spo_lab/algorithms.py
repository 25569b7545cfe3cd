"""One protocol for every method: what the training step asks of SPO, GRPO and the rest.

The step (:func:`spo_lab.train.train_step`) never asks which method it runs. It calls

    ids = algo.draw()                              # [B] prompt ids for this step
    row_ids = ids.repeat_interleave(algo.group)    # [R = B * G] one per response
    b = algo.baselines(row_ids)                    # [R] read BEFORE this step's rewards
    ... generate G responses per prompt, reward them: r [R] ...
    adv, adv_raw = algo.advantages(r, b)           # [R] what the loss uses, and before normalising
    ... policy update ...
    algo.observe(row_ids, r, d)                    # fold the evidence in (d: D(x) per row, or None)
    algo.stats()                                   # diagnostics for the log

Two implementations:

- :class:`spo_lab.spo.SPO` -- one response per prompt (G = 1), a persistent per-prompt value
  tracker as the baseline, batch-normalised advantages, prioritised (or uniform) drawing.
- :class:`GroupBaseline` -- GRPO and its variants: G responses per prompt baselined against their
  own group, uniform drawing, no state across steps (``observe`` does nothing). ``reinforce`` is the
  no-baseline reference (G = 1, A = r).

Any object with these members plugs into the trainer (``train(cfg, algorithm=...)``); a test
defines a toy one in the test file.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from .advantages import grpo_advantages, rloo_advantages
from .sampler import excluded_pool, uniform_draw

__all__ = ["Algorithm", "GroupBaseline", "GROUP_METHODS"]

GROUP_METHODS = ("grpo", "dr_grpo", "rloo", "reinforce")
"""The methods :class:`GroupBaseline` implements."""


@runtime_checkable
class Algorithm(Protocol):
    """What the training step needs from a method (see the module docstring)."""

    group: int
    """responses per drawn prompt (G; 1 for SPO)"""

    def draw(self, n: int | None = None, exclude=None) -> Tensor:
        """``[n]`` (default ``[B]``) distinct prompt ids, none of them in ``exclude`` (ids in flight)."""

    def baselines(self, row_ids: Tensor) -> Tensor:
        """``[R]`` float64 baseline of each row, read before the step's rewards."""

    def advantages(self, rewards: Tensor, baselines: Tensor) -> tuple[Tensor, Tensor]:
        """``(A, A_raw)``, both ``[R]``: the advantage the loss uses and the one before normalisation."""

    def observe(self, row_ids: Tensor, rewards: Tensor, d: Tensor | None = None):
        """Fold the step's rewards in, after the policy update (``d``: D(x) per row, or None)."""

    def stats(self) -> dict:
        """Diagnostics for the metrics row (may be empty)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, sd: dict) -> None: ...


class GroupBaseline:
    """GRPO, Dr. GRPO, RLOO and REINFORCE: the group's own rewards are the baseline.

    ===========  ==========================================  ==================================
    method       advantage of response i in its group         reference
    ===========  ==========================================  ==================================
    grpo         (r_i - mean(r)) / (std(r) + eps)             DeepSeekMath
    dr_grpo      r_i - mean(r)   (no std scaling)             Dr. GRPO
    rloo         r_i - mean of the other G - 1                Ahmadian et al.
    reinforce    r_i   (no baseline, G = 1)                   Williams
    ===========  ==========================================  ==================================

    Args:
        method: one of :data:`GROUP_METHODS`.
        group: G, responses per prompt (forced to 1 for reinforce; >= 2 for the others).
        num_prompts: P, the training set's size.
        batch_size: prompts drawn per step (B; R = B * G responses).
        generator: draws the prompts, uniformly without replacement. The trainer shares its own
            generator here (it also shuffles the mini-batches), so the draws of a seeded run are
            those of every earlier release.
    """

    def __init__(self, method: str, group: int, num_prompts: int, batch_size: int, *,
                 generator: torch.Generator | None = None):
        if method not in GROUP_METHODS:
            raise ValueError(f"method must be one of {GROUP_METHODS}, got {method!r}")
        group = 1 if method == "reinforce" else group
        if method != "reinforce" and group < 2:
            raise ValueError(f"{method} needs a group of G >= 2 responses (with G = 1 every advantage is 0)")
        if not 1 <= batch_size <= num_prompts:
            raise ValueError(f"batch_size must be in [1, {num_prompts}], got {batch_size}")
        self.method, self.group, self.num_prompts, self.batch_size = method, group, num_prompts, batch_size
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def draw(self, n: int | None = None, exclude=None) -> Tensor:
        return uniform_draw(self.num_prompts, self.batch_size if n is None else n, self.generator,
                            excluded_pool(self.num_prompts, exclude))

    def baselines(self, row_ids: Tensor) -> Tensor:
        """Zeros: a group method has no baseline before the rewards; it comes from them in :meth:`advantages`."""
        return torch.zeros(len(row_ids), dtype=torch.float64)

    def advantages(self, rewards: Tensor, baselines: Tensor) -> tuple[Tensor, Tensor]:
        """``(A, r - group mean)``; for reinforce ``(r, r)``. ``baselines`` is unused (zeros)."""
        rewards = torch.as_tensor(rewards, dtype=torch.float64)
        if self.method == "reinforce":
            return rewards.clone(), rewards.clone()
        centred = grpo_advantages(rewards, self.group, scale="none")
        if self.method == "grpo":
            return grpo_advantages(rewards, self.group, scale="group"), centred
        if self.method == "dr_grpo":
            return centred, centred
        return rloo_advantages(rewards, self.group), centred

    def observe(self, row_ids: Tensor, rewards: Tensor, d: Tensor | None = None) -> None:
        """Nothing to remember: every group starts from scratch."""

    def stats(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, sd: dict) -> None:
        pass

    def __repr__(self) -> str:
        return f"GroupBaseline({self.method!r}, group={self.group}, batch_size={self.batch_size})"
