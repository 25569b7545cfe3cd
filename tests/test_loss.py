"""Tests for spo_lab.loss.policy_loss: PPO clip-higher + dual-clip surrogate and its aggregations.

Reference: the SPO paper (arXiv 2509.13232). Hand-computed values, autograd gradients per token class
(unclipped / clipped / dual-clipped / masked), and a slow per-token reference implementation.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import spo_lab
from spo_lab.loss import policy_loss

F64 = torch.float64
AGGS = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"]


def t64(x):
    return torch.as_tensor(x, dtype=F64)


def reference_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28, dual_clip=10.0, agg="token-mean",
                   ref_logp=None, kl_coef=0.0):
    """Deliberately naive per-token loops (plain Python floats)."""
    B, T = len(logp), len(logp[0])
    per_tok = [[0.0] * T for _ in range(B)]
    k3 = [[0.0] * T for _ in range(B)]
    for b in range(B):
        for t in range(T):
            a = adv[b][t] if isinstance(adv[b], (list, tuple)) else adv[b]
            lr = max(-20.0, min(20.0, logp[b][t] - old[b][t]))
            ratio = math.exp(lr)
            l1 = -a * ratio
            l2 = -a * min(max(ratio, 1 - clip_low), 1 + clip_high)
            lc = max(l1, l2)
            if dual_clip is not None and a < 0:
                lc = min(lc, -a * dual_clip)
            per_tok[b][t] = lc
            if ref_logp is not None:
                d = ref_logp[b][t] - logp[b][t]
                k3[b][t] = math.exp(d) - d - 1

    def aggregate(x):
        if agg == "token-mean":
            num = sum(x[b][t] * mask[b][t] for b in range(B) for t in range(T))
            return num / sum(mask[b][t] for b in range(B) for t in range(T))
        seqs = []
        for b in range(B):
            s = sum(x[b][t] * mask[b][t] for t in range(T))
            if agg == "seq-mean-token-mean":
                s /= sum(mask[b])
            seqs.append(s)
        return sum(seqs) / B

    loss = aggregate(per_tok)
    kl = aggregate(k3) if ref_logp is not None else None
    if kl is not None:
        loss += kl_coef * kl
    return loss, kl


def test_reexport():
    assert spo_lab.policy_loss is policy_loss


# --------------------------------------------------------------------------- hand values


def test_ratio_one_loss_is_minus_masked_mean_advantage():
    logp = t64([[-1.0, -2.0, -0.5], [-0.3, -0.7, -9.0]])
    mask = t64([[1, 1, 1], [1, 1, 0]])
    adv = t64([0.5, -2.0])
    loss, stats = policy_loss(logp, logp.clone(), adv, mask)
    # token-mean: -(3 * 0.5 + 2 * (-2)) / 5 = 0.5
    assert loss.item() == pytest.approx(0.5, abs=1e-12)
    assert stats["clipfrac"] == pytest.approx(0.0)
    assert stats["dual_clipfrac"] == pytest.approx(0.0)
    assert stats["approx_kl"] == pytest.approx(0.0, abs=1e-12)


def test_agg_modes_hand_values_ragged_mask():
    # ratio = 1 everywhere -> per-token loss = -A
    logp = torch.zeros(2, 3, dtype=F64)
    adv = t64([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = t64([[1, 1, 0], [1, 0, 0]])
    expected = {
        "token-mean": -(1 + 2 + 4) / 3,
        "seq-mean-token-mean": (-(1 + 2) / 2 + -4 / 1) / 2,
        "seq-mean-token-sum": (-(1 + 2) + -4) / 2,
    }
    for agg, val in expected.items():
        loss, _ = policy_loss(logp, logp.clone(), adv, mask, agg=agg)
        assert loss.item() == pytest.approx(val, abs=1e-12), agg


def test_default_agg_is_token_mean():
    logp = torch.zeros(2, 3, dtype=F64)
    adv = t64([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = t64([[1, 1, 0], [1, 0, 0]])
    loss, _ = policy_loss(logp, logp.clone(), adv, mask)
    assert loss.item() == pytest.approx(-7 / 3, abs=1e-12)


def test_hand_example_every_token_class():
    # one row per case, one token each (token-mean over 6 tokens)
    ratios = [1.1, 1.5, 0.5, 0.5, 1.5, 20.0]
    advs = [2.0, 2.0, 2.0, -1.0, -1.0, -1.0]
    # per-token losses by the formula:
    #  A=2, r=1.1 unclipped      -> -2.2
    #  A=2, r=1.5 clipped high   -> -2 * 1.28 = -2.56
    #  A=2, r=0.5 (pessimistic)  -> max(-1.0, -1.6) = -1.0 (unclipped)
    #  A=-1, r=0.5 clipped low   -> max(0.5, 0.8) = 0.8
    #  A=-1, r=1.5 unclipped     -> max(1.5, 1.28) = 1.5 (dual bound 10 inactive)
    #  A=-1, r=20 dual-clipped   -> min(20, 10) = 10
    per_tok = [-2.2, -2.56, -1.0, 0.8, 1.5, 10.0]
    logp = t64([[math.log(r)] for r in ratios])
    old = torch.zeros(6, 1, dtype=F64)
    mask = torch.ones(6, 1, dtype=F64)
    loss, stats = policy_loss(logp, old, t64(advs), mask)
    assert loss.item() == pytest.approx(sum(per_tok) / 6, abs=1e-12)
    # clip active (L2 > L1) on the 2nd and 4th token; dual clip on the 6th
    assert stats["clipfrac"] == pytest.approx(2 / 6, abs=1e-9)
    assert stats["approx_kl"] == pytest.approx(-sum(math.log(r) for r in ratios) / 6, abs=1e-9)
    # without dual clip the last token contributes 20
    loss_nd, stats_nd = policy_loss(logp, old, t64(advs), mask, dual_clip=None)
    assert loss_nd.item() == pytest.approx((sum(per_tok) - 10 + 20) / 6, abs=1e-12)
    assert stats_nd["dual_clipfrac"] == pytest.approx(0.0)


def test_dual_clipfrac_all_negative_advantages():
    # all A < 0 so "fraction of tokens" is unambiguous
    ratios = [[20.0, 1.0, 15.0, 0.5]]
    logp = t64([[math.log(r) for r in ratios[0]]])
    loss, stats = policy_loss(logp, torch.zeros_like(logp), t64([-1.0]), torch.ones_like(logp))
    assert stats["dual_clipfrac"] == pytest.approx(2 / 4, abs=1e-9)
    assert stats["clipfrac"] == pytest.approx(1 / 4, abs=1e-9)  # ratio 0.5 < 0.8 with A < 0
    assert loss.item() == pytest.approx((10 + 1 + 10 + 0.8) / 4, abs=1e-12)


def test_custom_clip_bounds():
    logp = t64([[math.log(1.15)], [math.log(0.85)]])
    old = torch.zeros(2, 1, dtype=F64)
    mask = torch.ones(2, 1, dtype=F64)
    loss, stats = policy_loss(logp, old, t64([1.0, -1.0]), mask, clip_low=0.1, clip_high=0.1)
    # A=1, r=1.15 -> clipped at 1.1 -> -1.1 ; A=-1, r=0.85 -> clipped at 0.9 -> 0.9
    assert loss.item() == pytest.approx((-1.1 + 0.9) / 2, abs=1e-12)
    assert stats["clipfrac"] == pytest.approx(1.0)


def test_custom_dual_clip_constant():
    logp = t64([[math.log(4.0)]])
    loss, stats = policy_loss(logp, torch.zeros_like(logp), t64([-2.0]), torch.ones_like(logp), dual_clip=3.0)
    assert loss.item() == pytest.approx(6.0, abs=1e-12)
    assert stats["dual_clipfrac"] == pytest.approx(1.0)


def test_masked_tokens_do_not_matter():
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(3, 5, generator=g, dtype=F64)
    old = -torch.rand(3, 5, generator=g, dtype=F64)
    adv = torch.randn(3, generator=g, dtype=F64)
    mask = t64([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    for agg in AGGS:
        base, s1 = policy_loss(logp, old, adv, mask, agg=agg)
        wild = logp.clone()
        wild[mask == 0] = 50.0  # garbage where the mask is 0 (ratio would overflow without the mask)
        other, s2 = policy_loss(wild, old, adv, mask, agg=agg)
        assert torch.isfinite(other)
        assert other.item() == pytest.approx(base.item(), abs=1e-12), agg
        assert s2["clipfrac"] == pytest.approx(s1["clipfrac"])
        assert s2["approx_kl"] == pytest.approx(s1["approx_kl"])


def test_bool_mask_accepted():
    logp = torch.zeros(2, 3, dtype=F64)
    adv = t64([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    loss, _ = policy_loss(logp, logp.clone(), adv, mask)
    assert loss.item() == pytest.approx(-7 / 3, abs=1e-12)


def test_log_ratio_clamped_to_20():
    logp = t64([[100.0, 0.0]])
    old = t64([[0.0, 0.0]])
    mask = t64([[1, 0]])
    loss, _ = policy_loss(logp, old, t64([-1.0]), mask, dual_clip=None)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(math.exp(20.0), rel=1e-9)
    loss2, _ = policy_loss(-logp, old, t64([1.0]), mask)  # ratio exp(-20), A > 0 -> -exp(-20)
    assert loss2.item() == pytest.approx(-math.exp(-20.0), rel=1e-6)


def test_stats_are_floats():
    logp = -torch.rand(2, 4, dtype=F64)
    loss, stats = policy_loss(logp, logp + 0.1, t64([1.0, -1.0]), torch.ones(2, 4, dtype=F64))
    assert loss.dim() == 0
    for key in ["clipfrac", "dual_clipfrac", "approx_kl"]:
        assert key in stats
        assert isinstance(stats[key], float), key
    assert stats["approx_kl"] == pytest.approx(0.1, abs=1e-12)
    assert "kl_ref" not in stats or stats["kl_ref"] is None or isinstance(stats["kl_ref"], float)


# --------------------------------------------------------------------------- gradients


def _grad(logp_vals, old_vals, adv, mask_vals, **kw):
    logp = t64(logp_vals).clone().requires_grad_(True)
    loss, _ = policy_loss(logp, t64(old_vals), adv, t64(mask_vals), **kw)
    loss.backward()
    return loss, logp.grad


def test_gradients_per_token_class_token_mean():
    ratios = [1.1, 1.5, 0.5, 0.5, 1.5, 20.0, 1.0]
    advs = [2.0, 2.0, 2.0, -1.0, -1.0, -1.0, 0.7]
    logp = [[math.log(r), 0.3] for r in ratios]  # 2nd token of every row masked out
    old = [[0.0, -0.4] for _ in ratios]
    mask = [[1, 0] for _ in ratios]
    _, grad = _grad(logp, old, t64(advs), mask)
    S = 7.0
    expected_first = [
        -2.0 * 1.1 / S,  # unclipped
        0.0,  # clipped high (A > 0, ratio > 1.28)
        -2.0 * 0.5 / S,  # A > 0, ratio < 0.8: the unclipped branch is the max -> gradient flows
        0.0,  # clipped low (A < 0, ratio < 0.8)
        1.0 * 1.5 / S,  # A < 0, ratio 1.5 < dual bound -> unclipped
        0.0,  # dual-clipped
        -0.7 * 1.0 / S,  # ratio 1
    ]
    torch.testing.assert_close(grad[:, 0], t64(expected_first), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad[:, 1], torch.zeros(7, dtype=F64), rtol=0, atol=0)


def test_gradient_dual_clip_disabled_flows():
    _, grad = _grad([[math.log(20.0)]], [[0.0]], t64([-1.0]), [[1]], dual_clip=None)
    assert grad.item() == pytest.approx(20.0, rel=1e-9)


@pytest.mark.parametrize("agg", AGGS)
def test_gradients_normaliser_per_agg(agg):
    # unclipped tokens only: d loss / d logp = -A * ratio / normaliser
    ratios = [[1.1, 0.9, 1.2], [1.05, 1.0, 0.95]]
    logp = [[math.log(r) for r in row] for row in ratios]
    old = [[0.0] * 3, [0.0] * 3]
    mask = [[1, 1, 1], [1, 0, 0]]
    adv = t64([0.5, -1.5])
    _, grad = _grad(logp, old, adv, mask, agg=agg)
    expected = torch.zeros(2, 3, dtype=F64)
    for b in range(2):
        n_b = sum(mask[b])
        for t in range(3):
            if not mask[b][t]:
                continue
            norm = {"token-mean": 4.0, "seq-mean-token-mean": 2.0 * n_b, "seq-mean-token-sum": 2.0}[agg]
            expected[b, t] = -adv[b].item() * ratios[b][t] / norm
    torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-12)


def test_no_gradient_to_old_logp_or_advantages_needed():
    logp = t64([[-0.2, -0.1]]).requires_grad_(True)
    old = t64([[-0.25, -0.1]])
    adv = t64([1.0]).requires_grad_(False)
    loss, _ = policy_loss(logp, old, adv, torch.ones(1, 2, dtype=F64))
    loss.backward()
    assert logp.grad is not None and torch.all(torch.isfinite(logp.grad))


# --------------------------------------------------------------------------- KL to reference


@pytest.mark.parametrize("agg", AGGS)
def test_kl_ref_k3_estimator(agg):
    logp = t64([[-1.0, -0.5, -2.0], [-0.3, -0.2, -0.1]])
    old = logp.clone()
    ref = t64([[-1.2, -0.4, -2.0], [-0.1, -0.9, -5.0]])
    mask = t64([[1, 1, 1], [1, 1, 0]])
    adv = t64([1.0, -1.0])
    L = logp.tolist()
    R = ref.tolist()
    M = mask.tolist()
    base, _ = policy_loss(logp, old, adv, mask, agg=agg)
    with_kl, stats = policy_loss(logp, old, adv, mask, agg=agg, ref_logp=ref, kl_coef=0.5)
    exp_loss, exp_kl = reference_loss(L, old.tolist(), adv.tolist(), M, agg=agg, ref_logp=R, kl_coef=0.5)
    assert stats["kl_ref"] == pytest.approx(exp_kl, abs=1e-12)
    assert with_kl.item() == pytest.approx(exp_loss, abs=1e-12)
    assert with_kl.item() - base.item() == pytest.approx(0.5 * exp_kl, abs=1e-12)
    # reported but not added when kl_coef = 0
    zero, stats0 = policy_loss(logp, old, adv, mask, agg=agg, ref_logp=ref)
    assert zero.item() == pytest.approx(base.item(), abs=1e-12)
    assert stats0["kl_ref"] == pytest.approx(exp_kl, abs=1e-12)


def test_kl_ref_hand_value_single_token():
    # d = ref - logp = 0.5 -> k3 = e^0.5 - 0.5 - 1
    logp = t64([[-1.0]])
    loss, stats = policy_loss(logp, logp.clone(), t64([0.0]), t64([[1]]), ref_logp=t64([[-0.5]]), kl_coef=2.0)
    k3 = math.exp(0.5) - 1.5
    assert stats["kl_ref"] == pytest.approx(k3, abs=1e-12)
    assert loss.item() == pytest.approx(2.0 * k3, abs=1e-12)


# --------------------------------------------------------------------------- reference cross-check


@settings(max_examples=30, deadline=None)
@given(
    st.integers(min_value=1, max_value=4),
    st.integers(min_value=1, max_value=5),
    st.integers(min_value=0, max_value=2**31 - 1),
    st.sampled_from(AGGS),
    st.sampled_from([10.0, None, 3.0]),
    st.booleans(),
)
def test_property_matches_reference(B, T, seed, agg, dual_clip, token_adv):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=g, dtype=F64) * 3
    old = logp + torch.randn(B, T, generator=g, dtype=F64) * 0.6
    adv = torch.randn(B, T, generator=g, dtype=F64) if token_adv else torch.randn(B, generator=g, dtype=F64)
    mask = (torch.rand(B, T, generator=g) < 0.7).to(F64)
    mask[:, 0] = 1.0  # no empty sequence
    loss, stats = policy_loss(logp, old, adv, mask, agg=agg, dual_clip=dual_clip)
    exp, _ = reference_loss(logp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), agg=agg, dual_clip=dual_clip)
    assert loss.item() == pytest.approx(exp, rel=1e-9, abs=1e-12)
    assert 0.0 <= stats["clipfrac"] <= 1.0
    assert 0.0 <= stats["dual_clipfrac"] <= 1.0
    mk = mask.bool()
    assert stats["approx_kl"] == pytest.approx((old - logp)[mk].mean().item(), abs=1e-12)


def test_broadcast_sequence_advantages_equal_token_advantages():
    g = torch.Generator().manual_seed(3)
    logp = -torch.rand(3, 4, generator=g, dtype=F64)
    old = logp + 0.3 * torch.randn(3, 4, generator=g, dtype=F64)
    adv = torch.randn(3, generator=g, dtype=F64)
    mask = t64([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    for agg in AGGS:
        a, sa = policy_loss(logp, old, adv, mask, agg=agg)
        b, sb = policy_loss(logp, old, adv[:, None].expand(3, 4).clone(), mask, agg=agg)
        assert a.item() == pytest.approx(b.item(), abs=1e-12)
        assert sa["clipfrac"] == pytest.approx(sb["clipfrac"])


def test_float32_inputs():
    logp = torch.tensor([[-0.5, -0.4]], requires_grad=True)
    loss, stats = policy_loss(logp, torch.tensor([[-0.5, -0.5]]), torch.tensor([1.0]), torch.ones(1, 2))
    loss.backward()
    assert torch.isfinite(loss) and torch.all(torch.isfinite(logp.grad))
    assert loss.item() == pytest.approx(-(1.0 + math.exp(0.1)) / 2, rel=1e-5)


# --------------------------------------------------------------------------- bad input


def _ok():
    return torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2), torch.ones(2, 3)


@pytest.mark.parametrize(
    "which, shape",
    [
        ("old", (2, 4)),
        ("old", (3, 3)),
        ("mask", (2, 2)),
        ("mask", (3,)),
        ("adv", (3,)),
        ("adv", (2, 4)),
        ("logp", (2, 3, 1)),
        ("ref", (2, 2)),
    ],
)
def test_shape_mismatch_raises(which, shape):
    logp, old, adv, mask = _ok()
    ref = None
    if which == "old":
        old = torch.zeros(shape)
    elif which == "mask":
        mask = torch.ones(shape)
    elif which == "adv":
        adv = torch.zeros(shape)
    elif which == "logp":
        logp = torch.zeros(shape)
    elif which == "ref":
        ref = torch.zeros(shape)
    with pytest.raises(ValueError):
        policy_loss(logp, old, adv, mask, ref_logp=ref, kl_coef=0.1 if ref is not None else 0.0)


@pytest.mark.parametrize("agg", ["mean", "token_mean", "sum", ""])
def test_unknown_agg_raises(agg):
    logp, old, adv, mask = _ok()
    with pytest.raises(ValueError):
        policy_loss(logp, old, adv, mask, agg=agg)
