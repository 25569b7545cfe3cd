"""The update and the rollouts it reads: memory is not the algorithm, loss_mask is the loss's mask,
Rollouts say what each row is, and D's memory keeps exactly one row per prompt."""

from __future__ import annotations

import copy

import pytest
import torch

from spo_lab.divergence import ResponseCache, last_occurrence, mean_abs_logp_diff
from spo_lab.engines import HFEngine
from spo_lab.engines.base import Rollouts
from spo_lab.loss import policy_loss
from spo_lab.models import load_policy, token_logprobs
from spo_lab.ppo import PPOSettings, ppo_update


@pytest.fixture(scope="module")
def batch(toy):
    """The toy policy and 24 of its sampled responses (6 prompts x 4) with advantages."""
    model, tok = load_policy(toy / "model")
    torch.manual_seed(0)
    ro = HFEngine(model, tok).generate(["1+2=", "34+56=", "7+8=", "12+30=", "5+5=", "99+1="], 4,
                                       temperature=1.0, max_new_tokens=6)
    adv = torch.randn(len(ro), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return model, ro, adv


def _update(model, ro, adv, **settings):
    m = copy.deepcopy(model)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    stats = ppo_update(m, opt, ro, adv, PPOSettings(**settings), torch.Generator().manual_seed(3))
    return m, stats


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
@pytest.mark.parametrize("rows", [1, 5, 12])
def test_micro_batch_rows_leave_the_update_the_same(batch, agg, rows):
    """Gradient accumulation over micro-batches = one pass over the mini-batch, to float rounding."""
    model, ro, adv = batch
    whole, s_whole = _update(model, ro, adv, mini_batches=2, loss_agg=agg)
    micro, s_micro = _update(model, ro, adv, mini_batches=2, micro_batch_rows=rows, loss_agg=agg)
    for (n, a), b in zip(whole.named_parameters(), micro.parameters()):
        assert torch.allclose(a, b, atol=2e-6, rtol=1e-5), n
    assert not torch.equal(next(whole.parameters()), next(model.parameters()))  # it did move
    for k in s_whole:
        assert s_micro[k] == pytest.approx(s_whole[k], rel=1e-4, abs=1e-6), k


def test_mini_batches_are_the_algorithm(batch):
    """More mini-batches = more optimiser steps: a different update (unlike micro_batch_rows)."""
    model, ro, adv = batch
    one, _ = _update(model, ro, adv, mini_batches=1)
    four, stats = _update(model, ro, adv, mini_batches=4)
    assert not torch.allclose(next(one.parameters()), next(four.parameters()))
    assert stats["ratio_mean"] != 1.0  # later mini-batches see a policy the earlier ones moved


def test_rows_per_pass_is_the_memory_setting():
    assert PPOSettings(mini_batches=8).rows_per_pass(64) == 8
    assert PPOSettings(mini_batches=8, micro_batch_rows=2).rows_per_pass(64) == 2
    assert PPOSettings(mini_batches=8, micro_batch_rows=100).rows_per_pass(64) == 8


def test_tokens_outside_loss_mask_get_no_gradient_and_do_not_count(batch):
    """A tool's output: attended to (response_mask 1), never trained on (loss_mask 0)."""
    model, ro, adv = batch
    tool = ro.response_mask.clone()
    tool[:, 1:3] = 0  # pretend tokens 1-2 of every row came from a tool
    masked = Rollouts(**{**vars(ro), "loss_mask": ro.response_mask * tool})
    assert masked.num_tokens == int((ro.response_mask * tool).sum()) < ro.num_tokens
    logp = token_logprobs(model, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask)
    logp = logp.detach().requires_grad_(True)
    loss, _ = policy_loss(logp, ro.logprobs, adv.float(), masked.loss_mask)
    loss.backward()
    assert logp.grad[:, 1:3].abs().sum() == 0 and logp.grad.abs().sum() > 0
    # the update ignores what sits at those positions: change their old log-probs, same weights
    junk = Rollouts(**{**vars(masked), "logprobs": torch.where(tool.bool(), ro.logprobs, ro.logprobs - 3.0)})
    a, _ = _update(model, masked, adv, mini_batches=2)
    b, _ = _update(model, junk, adv, mini_batches=2)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_rollouts_are_keyword_only_and_check_their_shapes(batch):
    _, ro, _ = batch
    fields = vars(ro)
    with pytest.raises(TypeError):
        Rollouts(*fields.values())  # positional construction: refused
    with pytest.raises(ValueError, match="prompt_index"):
        Rollouts(**{**fields, "prompt_index": ro.prompt_index[:-1]})
    with pytest.raises(ValueError, match="texts"):
        Rollouts(**{**fields, "texts": ro.texts[:-1]})
    with pytest.raises(ValueError, match="loss_mask is 1 where response_mask is 0"):
        Rollouts(**{**fields, "loss_mask": torch.ones_like(ro.response_mask)})
    assert torch.equal(ro.loss_mask, ro.response_mask) and ro.policy_version.eq(0).all()
    assert ro.prompt_index.tolist() == [i for i in range(6) for _ in range(4)]
    tagged = ro.tagged(torch.tensor([40, 41, 42, 43, 44, 45]), 4, policy_version=7)
    assert tagged.prompt_index.tolist() == [40 + i for i in range(6) for _ in range(4)]
    assert tagged.policy_version.eq(7).all()
    sub = tagged.select([5, 0])
    assert sub.prompt_index.tolist() == [41, 40] and sub.texts == [ro.texts[5], ro.texts[0]]
    shuffled = Rollouts(**{**fields, "prompt_index": ro.prompt_index.flip(0)})
    with pytest.raises(ValueError, match="out of the protocol's order"):
        shuffled.tagged(torch.arange(6), 4, policy_version=0)


def test_mean_abs_logp_diff_masks_by_selection():
    """-inf at a padded position (masked out) must not turn D into NaN, as it did with multiplication."""
    a = torch.tensor([[-1.0, -2.0, float("-inf")]])
    b = torch.tensor([[-1.5, -2.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    d = mean_abs_logp_diff(a, b, mask)
    assert torch.isfinite(d).all() and d.item() == pytest.approx(0.25)


def test_last_occurrence_keeps_each_ids_last_row():
    ids = torch.tensor([3, 1, 3, 2, 1, 3])
    assert last_occurrence(ids).tolist() == [3, 4, 5]


def test_response_cache_stores_each_prompts_last_row_on_several_threads(batch):
    """1,024 rows with repeated prompts and 2 threads: every stored row is the id's LAST row, whole."""
    model, ro, _ = batch
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gen = torch.Generator().manual_seed(5)
        pick = torch.randint(0, len(ro), (1024,), generator=gen)
        big = ro.select(pick)
        ids = torch.randint(0, 300, (1024,), generator=gen)  # ~3.4 rows per prompt
        cache = ResponseCache(300, ro.prompt_ids.shape[1], ro.response_ids.shape[1], 0)

        def logprob_fn(*b):  # a stand-in policy: log-prob = -(token id), so rows are told apart by value
            return -b[2].float() * b[3]

        cache.observe(logprob_fn, ids, big)
        for i in ids.unique().tolist():
            last = int((ids == i).nonzero().max())
            for name in ("prompt_ids", "response_ids", "response_mask", "loss_mask"):
                assert torch.equal(getattr(cache, name)[i], getattr(big, name)[last]), (i, name)
            assert torch.equal(cache.logprobs[i], logprob_fn(*(t[[last]] for t in (
                big.prompt_ids, big.prompt_mask, big.response_ids, big.response_mask)))[0])
        # the next visit with the policy unchanged: D = 0 for every row of every stored prompt
        d = cache.observe(logprob_fn, ids, big)
        assert d.abs().max() == 0
    finally:
        torch.set_num_threads(threads)
