"""Rollouts: sampling responses from the policy and scoring their log-probs.

The trainer talks to a *rollout engine* through one method,

    engine.generate(prompts, n, temperature=..., max_new_tokens=..., greedy=False) -> Rollouts

which returns, for every prompt, n responses laid out consecutively (prompt i's responses are rows
i*n .. i*n + n - 1), with their token ids, masks and the sampling policy's log-probs. This module has
the Hugging Face ``generate`` backend; a vLLM backend implements the same method (and
``sync_weights``) without the trainer changing.

Sequences are laid out as ``[left-padded prompt | response right-padded after <eos>]``; position ids
count real tokens only, so a padded prompt sees the same positions as an unpadded one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor
from transformers import GenerationConfig

__all__ = ["Rollouts", "RolloutEngine", "HFEngine", "token_logprobs"]


@dataclass
class Rollouts:
    """A batch of R = len(prompts) * n sampled responses.

    Attributes:
        prompt_ids: ``[R, P]`` left-padded prompt tokens.       prompt_mask: ``[R, P]`` 1 = real token.
        response_ids: ``[R, T]`` generated tokens, padded after the first <eos>.
        response_mask: ``[R, T]`` 1 for generated tokens up to and including <eos>.
        logprobs: ``[R, T]`` log-prob of each generated token under the sampling distribution
            (temperature applied), 0 where the mask is 0.
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
        idx = torch.as_tensor(idx, dtype=torch.long)
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


class RolloutEngine(Protocol):
    """What the trainer needs from a generation backend."""

    def generate(
        self, prompts: list[str], n: int, *, temperature: float, max_new_tokens: int, greedy: bool = False
    ) -> Rollouts: ...

    def sync_weights(self, model) -> None:
        """Make the engine sample from ``model``'s current weights (no-op when they are shared)."""


def token_logprobs(
    model, prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor, response_mask: Tensor,
    *, temperature: float = 1.0,
) -> Tensor:
    """log pi(y_t | x, y_<t) for every response token, by one forward pass over prompt + response.

    Shapes: prompt ``[R, P]``, response ``[R, T]`` -> ``[R, T]`` (0 where response_mask is 0).
    Logits are divided by ``temperature`` first, as in sampling, so the result is the log-prob of
    the distribution the tokens were drawn from.
    """
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)
    attn = torch.cat([prompt_mask, response_mask], dim=1)
    position_ids = (attn.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attn, position_ids=position_ids).logits
    p = prompt_ids.shape[1]
    logits = logits[:, p - 1 : -1].float() / temperature  # position t predicts token t + 1
    logp = torch.log_softmax(logits, dim=-1).gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)
    return logp * response_mask.to(logp.dtype)


class HFEngine:
    """Rollout engine on ``transformers``' ``model.generate`` (CPU or one GPU).

    Sampling is pure ancestral sampling at the given temperature (top-k and top-p off), so the
    returned log-probs are exactly those of the distribution the policy-gradient theorem needs.
    The engine shares the trainer's model object, so ``sync_weights`` has nothing to do.
    """

    def __init__(self, model, tokenizer):
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer needs a pad token and an eos token")
        if tokenizer.padding_side != "left":
            raise ValueError("batched generation needs tokenizer.padding_side == 'left'")
        self.model, self.tokenizer = model, tokenizer

    def sync_weights(self, model) -> None:
        self.model = model

    def encode_prompts(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """Left-padded ``(ids, mask)`` of shape ``[len(prompts), P]``; no special tokens added."""
        enc = self.tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
        return enc["input_ids"], enc["attention_mask"]

    @torch.no_grad()
    def generate(
        self, prompts: list[str], n: int = 1, *, temperature: float = 1.0, max_new_tokens: int = 8,
        greedy: bool = False, top_k: int = 0, top_p: float = 1.0,
    ) -> Rollouts:
        """n responses per prompt (rows i*n .. i*n+n-1 belong to prompt i); see :class:`Rollouts`.

        ``top_k`` / ``top_p`` truncate the sampling distribution, for evaluation protocols only
        (the paper evaluates with top_k 20, top_p 0.95): the returned log-probs stay those of the
        untruncated temperature-scaled distribution, so never train on truncated samples.
        """
        if n < 1 or not prompts:
            raise ValueError("need at least one prompt and n >= 1")
        if not greedy and temperature <= 0:
            raise ValueError("temperature must be > 0 when sampling (use greedy=True for argmax)")
        ids, mask = self.encode_prompts(prompts)
        ids, mask = ids.repeat_interleave(n, dim=0), mask.repeat_interleave(n, dim=0)
        tok = self.tokenizer
        # top_k=0 and top_p=1.0 switch the truncations off explicitly: left unset, transformers would
        # fall back to the checkpoint's generation_config or its global default top_k=50.
        sampling = {} if greedy else {"temperature": temperature, "top_k": top_k, "top_p": top_p}
        gen_cfg = GenerationConfig(
            do_sample=not greedy, **sampling, max_new_tokens=max_new_tokens, eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id, return_dict_in_generate=True, output_logits=True,
        )
        was_training = self.model.training
        self.model.eval()
        out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_cfg)
        self.model.train(was_training)

        resp = out.sequences[:, ids.shape[1] :]
        is_eos = resp == tok.eos_token_id
        # tokens up to and including the first <eos>; everything after it is padding
        after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
        resp_mask = (~after_eos).long()
        resp = resp.masked_fill(after_eos, tok.pad_token_id)
        logits = torch.stack(out.logits, dim=1).float() / (1.0 if greedy else temperature)
        logp = torch.log_softmax(logits, dim=-1).gather(-1, resp.unsqueeze(-1)).squeeze(-1)
        logp = logp * resp_mask
        texts = tok.batch_decode(resp * resp_mask + tok.pad_token_id * (1 - resp_mask), skip_special_tokens=True)
        return Rollouts(
            prompt_ids=ids, prompt_mask=mask, response_ids=resp, response_mask=resp_mask,
            logprobs=logp, texts=texts, truncated=~is_eos.any(dim=1),
        )
