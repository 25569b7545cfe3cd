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
import dataclasses
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["Rollouts", "RolloutEngine", "build_rollouts", "concat_rollouts", "seeded", "encode_prompts", "Turn", "cut_turn", "turn_budgets", "STOP_REASONS"]


@dataclass(kw_only=True)
class Rollouts:
    """A batch of R sampled responses (CPU tensors unless moved with ``to``). Keyword-only: a field is
    never filled by position, so adding one cannot shift the others.

    Attributes:
        prompt_ids: ``[R, P]`` left-padded prompt tokens.       prompt_mask: ``[R, P]`` 1 = real token.
        response_ids: ``[R, T]`` generated tokens, padded after the first <eos>.
        response_mask: ``[R, T]`` the attention mask of the response: 1 for every token the model sees,
            up to and including <eos> (a tool's output included).
        loss_mask: ``[R, T]`` 1 where the policy loss applies: the tokens the policy itself sampled.
            Equal to ``response_mask`` unless a tool wrote some of the tokens (those are 0: attended to,
            never trained on). The loss, the D estimators and :attr:`num_tokens` use it.
        logprobs: ``[R, T]`` float32 log-prob of each generated token under the sampling
            distribution (temperature applied, no top-k / top-p truncation), 0 where the mask is 0.
        texts: R decoded completions (special tokens dropped), what the reward function reads.
        truncated: ``[R]`` bool, True where no <eos> came within max_new_tokens.
        prompt_index: ``[R]`` long, which prompt each row answers. From an engine: the position of the
            prompt in the list given to ``generate`` (rows ``i*n .. i*n+n-1`` answer prompt i); the
            trainer relabels it with the prompts' ids in the training set (:meth:`tagged`).
        policy_version: ``[R]`` long, the number of policy updates applied to the weights that sampled
            the row (0 = the initial policy; the trainer sets it with :meth:`tagged`).
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor
    logprobs: Tensor
    texts: list[str]
    truncated: Tensor
    prompt_index: Tensor
    loss_mask: Tensor | None = None
    policy_version: Tensor | None = None

    def __post_init__(self) -> None:
        if self.loss_mask is None:
            self.loss_mask = self.response_mask.clone()
        if self.policy_version is None:
            self.policy_version = torch.zeros(len(self), dtype=torch.long, device=self.response_ids.device)
        R, T = self.response_ids.shape
        shapes = {"response_mask": (R, T), "loss_mask": (R, T), "logprobs": (R, T), "truncated": (R,),
                  "prompt_index": (R,), "policy_version": (R,), "prompt_mask": tuple(self.prompt_ids.shape)}
        for name, want in shapes.items():
            if tuple(getattr(self, name).shape) != want:
                raise ValueError(f"Rollouts.{name} has shape {tuple(getattr(self, name).shape)}, expected {want}")
        if self.prompt_ids.dim() != 2 or self.prompt_ids.shape[0] != R:
            raise ValueError(f"Rollouts.prompt_ids has shape {tuple(self.prompt_ids.shape)}, expected ({R}, P)")
        if len(self.texts) != R:
            raise ValueError(f"Rollouts.texts has {len(self.texts)} entries for {R} rows")
        if bool((self.loss_mask.bool() & ~self.response_mask.bool()).any()):
            raise ValueError("Rollouts.loss_mask is 1 where response_mask is 0: a trained token must be attended to")

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    @property
    def num_tokens(self) -> int:
        """Tokens the policy sampled and is trained on (``loss_mask``: up to and including <eos>)."""
        return int(self.loss_mask.sum())

    def select(self, idx) -> "Rollouts":
        """The sub-batch of rows ``idx`` (a sequence or 1-D tensor of row indices)."""
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.response_ids.device)
        rows = idx.tolist()
        return self._map(lambda t: t.index_select(0, idx), texts=[self.texts[i] for i in rows])

    def to(self, device) -> "Rollouts":
        """The same rollouts with every tensor on ``device``."""
        return self._map(lambda t: t.to(device), texts=list(self.texts))

    def tagged(self, prompt_ids: Tensor, n: int, policy_version: int) -> "Rollouts":
        """Relabel rows with the ids of the prompts they answer and the version of the weights that sampled them.

        ``prompt_ids[i]`` is the id of the i-th prompt given to ``generate``; ``n`` responses each. Checks
        that the engine kept the layout (rows ``i*n .. i*n+n-1`` answer prompt i) instead of trusting it.
        """
        prompt_ids = torch.as_tensor(prompt_ids, dtype=torch.long)
        expected = torch.arange(len(prompt_ids)).repeat_interleave(n)
        if not torch.equal(self.prompt_index.cpu(), expected):
            raise ValueError(f"the engine returned rows out of the protocol's order (prompt i's {n} responses "
                             "must be rows i*n .. i*n+n-1)")
        return dataclasses.replace(self, prompt_index=prompt_ids[self.prompt_index.cpu()],
                                   policy_version=torch.full((len(self),), int(policy_version), dtype=torch.long))

    def _map(self, fn, texts: list[str]) -> "Rollouts":
        kw = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return Rollouts(**{k: (v if k == "texts" else fn(v)) for k, v in kw.items()} | {"texts": texts})


def concat_rollouts(parts: list[Rollouts], pad_id: int) -> Rollouts:
    """The rows of ``parts`` in order, as one :class:`Rollouts`: prompts left-padded and responses
    right-padded with ``pad_id`` to the widest part (mask 0, log-prob 0 there). Parts of one width are
    joined as they are, so the rows of one batched call come back bit for bit."""
    if not parts:
        raise ValueError("nothing to concatenate")
    P = max(p.prompt_ids.shape[1] for p in parts)
    T = max(p.response_ids.shape[1] for p in parts)

    def left(t: Tensor, fill) -> Tensor:
        return torch.nn.functional.pad(t, (P - t.shape[1], 0), value=fill)

    def right(t: Tensor, fill) -> Tensor:
        return torch.nn.functional.pad(t, (0, T - t.shape[1]), value=fill)

    cat = lambda f, pad, fill: torch.cat([pad(getattr(p, f), fill) for p in parts])  # noqa: E731
    return Rollouts(
        prompt_ids=cat("prompt_ids", left, pad_id), prompt_mask=cat("prompt_mask", left, 0),
        response_ids=cat("response_ids", right, pad_id), response_mask=cat("response_mask", right, 0),
        loss_mask=cat("loss_mask", right, 0), logprobs=cat("logprobs", right, 0.0),
        texts=[t for p in parts for t in p.texts], truncated=torch.cat([p.truncated for p in parts]),
        prompt_index=torch.cat([p.prompt_index for p in parts]),
        policy_version=torch.cat([p.policy_version for p in parts]),
    )


def build_rollouts(tokenizer, *, prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor,
                   logprobs: Tensor, n: int, lengths: Tensor | None = None) -> Rollouts:
    """The one place that turns an engine's raw output into :class:`Rollouts` (every engine calls it).

    Args:
        tokenizer: gives the <eos> and pad ids and decodes the texts.
        prompt_ids, prompt_mask: ``[R, P]`` the left-padded prompts, each repeated n times.
        response_ids: ``[R, T]`` the sampled tokens, anything after a row's end.
        logprobs: ``[R, T]`` their log-probs under the sampling distribution.
        n: responses per prompt (rows ``i*n .. i*n+n-1`` answer prompt i).
        lengths: ``[R]`` tokens each row really generated (None: all T; rows stop early at <eos>).

    Everything after a row's first <eos> (or past its length) becomes padding: pad id, mask 0,
    log-prob 0 (selected with ``where``, so a -inf log-prob of a padded position cannot become NaN).
    """
    R, T = response_ids.shape
    if logprobs.shape != (R, T) or prompt_ids.shape[0] != R or prompt_mask.shape != prompt_ids.shape:
        raise ValueError(f"engine output shapes disagree: response_ids {tuple(response_ids.shape)}, logprobs "
                         f"{tuple(logprobs.shape)}, prompt_ids {tuple(prompt_ids.shape)}")
    if R % n:
        raise ValueError(f"{R} rows are not a whole number of groups of n = {n}")
    generated = (torch.ones(R, T, dtype=torch.bool) if lengths is None
                 else torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1))  # False past a row's last token
    is_eos = (response_ids == tokenizer.eos_token_id) & generated
    after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0  # tokens up to and including the first <eos> stay
    mask = (generated & ~after_eos).long()
    response_ids = response_ids.masked_fill(mask == 0, tokenizer.pad_token_id)
    logprobs = torch.where(mask.bool(), logprobs.float(), 0.0)
    if not bool(torch.isfinite(logprobs).all()):
        raise ValueError("the engine returned a non-finite log-prob for a sampled token")
    return Rollouts(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids, response_mask=mask,
        logprobs=logprobs, texts=tokenizer.batch_decode(response_ids, skip_special_tokens=True),
        truncated=~is_eos.any(dim=1), prompt_index=torch.arange(R // n).repeat_interleave(n),
    )


def encode_prompts(tokenizer, prompts: list[str]) -> tuple[Tensor, Tensor]:
    """Left-padded ``(ids, mask)`` of shape ``[len(prompts), P]``; no special tokens added (every engine)."""
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]


# ---------------------------------------------------------------------- continuing a sequence by one turn
#: Why a turn ended: the stop string, <eos>, or its token budget.
STOP_REASONS = ("stop", "eos", "length")


@dataclass(frozen=True)
class Turn:
    """One continuation of a prefix: ``token_ids`` sampled, their ``logprobs`` (temperature-scaled,
    untruncated), and ``stop_reason``: ``"stop"`` (ends with the tokens that complete the stop string),
    ``"eos"`` (ends with <eos>) or ``"length"`` (its token budget ran out)."""

    token_ids: list[int]
    logprobs: list[float]
    stop_reason: str

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(f"a turn has {len(self.token_ids)} tokens and {len(self.logprobs)} log-probs")
        if self.stop_reason not in STOP_REASONS:
            raise ValueError(f"stop_reason must be one of {STOP_REASONS}, got {self.stop_reason!r}")


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def turn_budgets(prefixes, max_new_tokens, *, temperature: float, greedy: bool):
    """The checks every engine's ``continue_tokens`` makes, and ``(budgets, turns, rows)``: each prefix's token
    budget, an empty ``"length"`` turn per prefix to fill, and the rows with a budget left to generate."""
    R = len(prefixes)
    budgets = [int(max_new_tokens)] * R if isinstance(max_new_tokens, int) else [int(b) for b in max_new_tokens]
    if len(budgets) != R:
        raise ValueError(f"{len(budgets)} budgets for {R} prefixes")
    if not greedy and temperature <= 0:
        raise ValueError("temperature must be > 0 when sampling (use greedy=True for argmax)")
    if any(len(p) == 0 for p in prefixes):
        raise ValueError("every prefix needs at least one token")
    return budgets, [Turn([], [], "length") for _ in range(R)], [r for r in range(R) if budgets[r] > 0]


def cut_turn(tokenizer, token_ids: list[int], stop: str | None, *, budget: int) -> tuple[int, str]:
    """Where a sampled continuation ends, exactly, and why: ``(k, reason)``, keep ``token_ids[:k]``.

    The end is the first of: the first <eos> (kept; ``"eos"``), the token that completes the first
    occurrence of ``stop`` in the decoded text (kept, with whatever else that token holds; ``"stop"``),
    or ``budget`` tokens (``"length"``). A batched backend may generate past a row's end; this cut is
    exact at a token boundary whatever came after. Only the continuation is searched: a stop string
    that would start in the prefix does not count.
    """
    ids = list(token_ids[:budget])
    eos = tokenizer.eos_token_id
    k_eos = ids.index(eos) + 1 if eos in ids else None
    head = ids[:k_eos] if k_eos is not None else ids
    k_stop = None
    if stop and stop in _decode(tokenizer, head):
        lo, hi = 1, len(head)  # the smallest k with stop in decode(head[:k]): the token completing it
        while lo < hi:
            mid = (lo + hi) // 2
            if stop in _decode(tokenizer, head[:mid]):
                hi = mid
            else:
                lo = mid + 1
        k_stop = lo
    if k_stop is not None:
        return k_stop, "stop"
    if k_eos is not None:
        return k_eos, "eos"
    return len(ids), "length"


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
