"""The Hugging Face rollout engine: ``transformers``' ``model.generate`` on the trainer's own model.

It shares the policy object with the trainer (CPU or one GPU), so ``sync_weights`` has nothing to
copy. Slower than vLLM on a GPU, but exact and dependency-free: the default on a laptop CPU. See
:mod:`spo_lab.engines.base` for the protocol and the layout of :class:`Rollouts`.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from .base import Rollouts, Turn, build_rollouts, cut_turn, encode_prompts, turn_budgets

__all__ = ["HFEngine"]


class HFEngine:
    """Rollout engine on ``transformers``' ``model.generate`` (CPU or one GPU).

    Sampling is pure ancestral sampling at the given temperature (top-k and top-p off), so the
    returned log-probs are exactly those of the distribution the policy-gradient theorem needs.
    The engine shares the trainer's model object, so ``sync_weights`` has nothing to do. Prompts go
    to the model's device; the returned :class:`Rollouts` are on the CPU.
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
        return encode_prompts(self.tokenizer, prompts)

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
        device = next(self.model.parameters()).device
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
        out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen_cfg)
        self.model.train(was_training)

        logits = torch.stack(out.logits, dim=1).float().cpu() / (1.0 if greedy else temperature)
        resp = out.sequences[:, ids.shape[1] :].cpu()
        logp = torch.log_softmax(logits, dim=-1).gather(-1, resp.unsqueeze(-1)).squeeze(-1)
        return build_rollouts(tok, prompt_ids=ids, prompt_mask=mask, response_ids=resp, logprobs=logp, n=n)

    @torch.no_grad()
    def continue_tokens(
        self, prefixes: list[list[int]], *, max_new_tokens: int | list[int], temperature: float = 1.0,
        greedy: bool = False, top_k: int = 0, top_p: float = 1.0, stop: str | None = None,
    ) -> list:
        """Continue each token sequence of ``prefixes`` (no padding) by one turn, in one batched call.

        A row ends at <eos>, at the token that completes ``stop`` in the decoded text of its new tokens
        (that token is kept), or after its own ``max_new_tokens`` (an int for all rows, or one per row).
        Returns one :class:`~spo_lab.engines.base.Turn` per prefix: the new token ids, their log-probs under
        the temperature-scaled distribution (untruncated, exactly as :meth:`generate`), and why it ended.
        The prefixes are left-padded into one batch; positions count real tokens only, as in
        :meth:`generate`, so the log-probs are those :func:`spo_lab.models.token_logprobs` gives on the
        whole sequence. A row is stopped by decoding the tail of its new tokens after each step (any
        tokenizer; ``transformers``' own ``stop_strings`` needs a vocabulary that can spell "abcdef");
        the batch runs on until every row has ended, and :func:`~spo_lab.engines.base.cut_turn` cuts each
        row exactly.
        """

        budgets, turns, rows = turn_budgets(prefixes, max_new_tokens, temperature=temperature, greedy=greedy)
        if not rows:
            return turns
        tok = self.tokenizer
        P = max(len(prefixes[r]) for r in rows)
        ids = torch.full((len(rows), P), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), P), dtype=torch.long)
        for i, r in enumerate(rows):
            p = prefixes[r]
            ids[i, P - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, P - len(p) :] = 1
        device = next(self.model.parameters()).device
        sampling = {} if greedy else {"temperature": temperature, "top_k": top_k, "top_p": top_p}
        gen_cfg = GenerationConfig(
            do_sample=not greedy, **sampling, max_new_tokens=max(budgets[r] for r in rows),
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, return_dict_in_generate=True,
            output_logits=True,
        )
        criteria = StoppingCriteriaList([_StopString(tok, stop, P)]) if stop else None
        was_training = self.model.training
        self.model.eval()
        out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen_cfg,
                                  stopping_criteria=criteria)
        self.model.train(was_training)

        new = out.sequences[:, P:].cpu()
        scale = 1.0 if greedy else temperature
        logp = torch.stack([torch.log_softmax(step.float().cpu() / scale, dim=-1).gather(-1, new[:, t : t + 1])
                            .squeeze(-1) for t, step in enumerate(out.logits)], dim=1)
        for i, r in enumerate(rows):
            row = new[i].tolist()
            k, reason = cut_turn(tok, row, stop, budget=budgets[r])
            turns[r] = Turn(row[:k], logp[i, :k].tolist(), reason)
        return turns


class _StopString(StoppingCriteria):
    """Ends a row once ``stop`` appears in the decoded text of its last few new tokens (those after
    position ``start``): enough tokens to spell the stop string even one byte per token, plus a margin."""

    def __init__(self, tokenizer, stop: str, start: int):
        self.tokenizer, self.stop, self.start = tokenizer, stop, start
        self.window = 4 * len(stop.encode("utf-8")) + 4
        self.done: set[int] = set()

    def __call__(self, input_ids: Tensor, scores, **kwargs) -> Tensor:
        tail = input_ids[:, self.start :][:, -self.window :].tolist()
        for i, row in enumerate(tail):
            if i not in self.done and self.stop in self.tokenizer.decode(
                    row, skip_special_tokens=False, clean_up_tokenization_spaces=False):
                self.done.add(i)
        return torch.tensor([i in self.done for i in range(len(tail))], dtype=torch.bool, device=input_ids.device)
