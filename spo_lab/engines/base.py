"""Rollouts and the engine protocol: how the trainer asks any generation backend for responses.

The trainer talks to a *rollout engine* through two methods:

    engine.generate(prompts, n, *, temperature, max_new_tokens, greedy=False, top_k=0, top_p=1.0) -> Rollouts
    engine.sync_weights(model)      # after every optimiser step: sample from the updated policy

``generate`` returns, for every prompt, n responses laid out consecutively (prompt i's responses
are rows i*n .. i*n + n - 1), with their token ids, masks and the sampling policy's log-probs.
Backends: :class:`spo_lab.engines.hf.HFEngine` (Hugging Face ``generate``, shares the trainer's
model) and :class:`spo_lab.engines.vllm.VLLMEngine` (vLLM, its own copy of the weights).

Sequences are laid out as ``[left-padded prompt | response right-padded after <eos>]``; position
ids count real tokens only, so a padded prompt sees the same positions as an unpadded one.
Engines know nothing of tasks or of the trainer.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["Rollouts", "RolloutEngine", "seeded", "encode_prompts"]


@dataclass
class Rollouts:
    """A batch of R = len(prompts) * n sampled responses (CPU tensors unless moved with ``to``).

    Attributes:
        prompt_ids: ``[R, P]`` left-padded prompt tokens.       prompt_mask: ``[R, P]`` 1 = real token.
        response_ids: ``[R, T]`` generated tokens, padded after the first <eos>.
        response_mask: ``[R, T]`` 1 for generated tokens up to and including <eos>.
        logprobs: ``[R, T]`` float32 log-prob of each generated token under the sampling
            distribution (temperature applied, no top-k / top-p truncation), 0 where the mask is 0.
        texts: R decoded completions (special tokens dropped), what the reward function reads.
        truncated: ``[R]`` bool, True where no <eos> came within max_new_tokens.
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor
    logprobs: Tensor
    texts: list[str] = field(default_factory=list)
    truncated: Tensor | None = None

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    @property
    def num_tokens(self) -> int:
        """Generated tokens that count (up to and including <eos>)."""
        return int(self.response_mask.sum())

    def select(self, idx) -> "Rollouts":
        """The sub-batch of rows ``idx`` (a sequence or 1-D tensor of row indices)."""
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.response_ids.device)
        pick = lambda t: t.index_select(0, idx)  # noqa: E731
        return Rollouts(
            prompt_ids=pick(self.prompt_ids),
            prompt_mask=pick(self.prompt_mask),
            response_ids=pick(self.response_ids),
            response_mask=pick(self.response_mask),
            logprobs=pick(self.logprobs),
            texts=[self.texts[i] for i in idx.tolist()],
            truncated=None if self.truncated is None else pick(self.truncated),
        )

    def to(self, device) -> "Rollouts":
        """The same rollouts with every tensor on ``device``."""
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Rollouts(mv(self.prompt_ids), mv(self.prompt_mask), mv(self.response_ids), mv(self.response_mask),
                        mv(self.logprobs), list(self.texts), mv(self.truncated))


def encode_prompts(tokenizer, prompts: list[str]) -> tuple[Tensor, Tensor]:
    """Left-padded ``(ids, mask)`` of shape ``[len(prompts), P]``; no special tokens added (every engine)."""
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]


@runtime_checkable
class RolloutEngine(Protocol):
    """What the trainer needs from a generation backend (see the module docstring)."""

    def generate(
        self, prompts: list[str], n: int = 1, *, temperature: float = 1.0, max_new_tokens: int = 8,
        greedy: bool = False, top_k: int = 0, top_p: float = 1.0,
    ) -> Rollouts: ...

    def sync_weights(self, model) -> None:
        """Make the engine sample from ``model``'s current weights (a no-op when they are shared)."""


@contextmanager
def seeded(seed: int, device=None):
    """Run the body on a forked torch RNG seeded with ``seed``; the caller's random stream is untouched.

    Forks the CPU generator and, when ``device`` is a CUDA device, that device's generator too (HF
    ``generate`` samples on the model's device). Used for evaluation and the offline pass, so doing
    more or fewer of them never changes a training run.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield
