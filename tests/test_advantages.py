"""Tests for spo_lab.advantages: SPO global normalisation and the GRPO / Dr.GRPO / RLOO baselines.

Reference: the SPO paper (arXiv 2509.13232).
"""
from __future__ import annotations

import math
import statistics

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import spo_lab
from spo_lab.advantages import grpo_advantages, rloo_advantages, spo_advantages

F64 = torch.float64


def t64(x):
    return torch.as_tensor(x, dtype=F64)


def test_reexports():
    assert spo_lab.spo_advantages is spo_advantages
    assert spo_lab.grpo_advantages is grpo_advantages
    assert spo_lab.rloo_advantages is rloo_advantages


# --------------------------------------------------------------------------- SPO


def test_spo_hand_values():
    r = t64([1.0, 0.0, 1.0, 0.0])
    b = t64([0.5, 0.5, 0.5, 0.5])
    # A = +-0.5, mean 0, unbiased std = sqrt(4 * 0.25 / 3) = sqrt(1/3)
    s = math.sqrt(1 / 3)
    expected = t64([0.5, -0.5, 0.5, -0.5]) / (s + 1e-8)
    out = spo_advantages(r, b)
    assert out.shape == r.shape
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_spo_hand_values_asymmetric_baselines():
    r = t64([1.0, 0.0, 1.0])
    b = t64([0.2, 0.6, 0.9])
    a = [0.8, -0.6, 0.1]
    m = sum(a) / 3
    s = statistics.stdev(a)
    expected = t64([(x - m) / (s + 1e-8) for x in a])
    torch.testing.assert_close(spo_advantages(r, b), expected, rtol=1e-10, atol=1e-10)


def test_spo_custom_eps():
    r = t64([1.0, 0.0])
    b = t64([0.0, 0.0])
    # A = [1, 0]; mean 0.5; unbiased std = sqrt(0.5)
    s = math.sqrt(0.5)
    torch.testing.assert_close(
        spo_advantages(r, b, eps=1.0), t64([0.5 / (s + 1), -0.5 / (s + 1)]), rtol=1e-12, atol=1e-12
    )


def test_spo_single_element_is_zero_not_nan():
    out = spo_advantages(t64([1.0]), t64([0.3]))
    assert out.shape == (1,)
    assert torch.all(torch.isfinite(out))
    torch.testing.assert_close(out, t64([0.0]))


@pytest.mark.parametrize("value", [0.0, 1.0])
@pytest.mark.parametrize("baseline", [0.0, 0.3, 0.7])
def test_spo_zero_spread_is_finite_zero(value, baseline):
    r = t64([value] * 6)
    b = t64([baseline] * 6)
    out = spo_advantages(r, b)
    assert torch.all(torch.isfinite(out))
    torch.testing.assert_close(out, torch.zeros(6, dtype=F64), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "reward, baseline, n",
    [(1.0, 0.1, 5), (1.0, 0.1, 3), (0.9, 0.0, 3), (0.9, 0.0, 7), (1.0, 0.3, 7), (0.0, 0.7, 6), (0.1, 0.0, 8)],
)
def test_spo_zero_spread_float32(reward, baseline, n):
    # A = r - b is constant, so the advantage must be ~0 even when float32 rounding makes
    # A - mean(A) a few ulps instead of exactly 0 (std ~ 1e-8 is not "spread").
    r = torch.full((n,), reward, dtype=torch.float32)
    b = torch.full((n,), baseline, dtype=torch.float32)
    out = spo_advantages(r, b)
    assert torch.all(torch.isfinite(out))
    assert out.abs().max().item() < 1e-3, out


def test_spo_float32_supported():
    r = torch.tensor([1.0, 0.0, 1.0, 1.0])
    b = torch.tensor([0.5, 0.5, 0.25, 0.75])
    out = spo_advantages(r, b)
    ref = spo_advantages(r.double(), b.double())
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_spo_no_baseline_ablation_equals_reward_whitening():
    r = t64([1.0, 0.0, 0.0, 1.0, 1.0])
    out = spo_advantages(r, torch.zeros(5, dtype=F64))
    m, s = r.mean(), r.std(unbiased=True)
    torch.testing.assert_close(out, (r - m) / (s + 1e-8), rtol=1e-12, atol=1e-12)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([0.0, 1.0]), st.floats(min_value=0.0, max_value=1.0)),
        min_size=2,
        max_size=64,
    )
)
def test_property_spo_mean_zero_std_one(pairs):
    r = t64([p[0] for p in pairs])
    b = t64([p[1] for p in pairs])
    a = r - b
    assume(a.std(unbiased=True).item() > 1e-3)
    out = spo_advantages(r, b)
    assert torch.all(torch.isfinite(out))
    assert abs(out.mean().item()) < 1e-9
    assert out.std(unbiased=True).item() == pytest.approx(1.0, abs=1e-4)
    # order preserved: a larger raw advantage never gets a smaller normalised one
    order = torch.argsort(a)
    assert torch.all(out[order][1:] >= out[order][:-1] - 1e-12)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=0, max_size=3), st.floats(0.0, 1.0))
def test_property_spo_never_nan(baselines, r):
    r = t64([r] * len(baselines))
    out = spo_advantages(r, t64(baselines))
    assert out.shape == r.shape
    assert torch.all(torch.isfinite(out))


# --------------------------------------------------------------------------- GRPO


REWARDS = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_grpo_group_scale_hand_values():
    r = t64(REWARDS)
    out = grpo_advantages(r, 4)  # default scale="group", eps=1e-6
    # group 1: mean .25, A = [.75, -.25, -.25, -.25], unbiased std = 0.5
    # group 2: degenerate -> zeros; group 3: mean .5, std = sqrt(1/3)
    s3 = math.sqrt(1 / 3)
    expected = [0.75 / 0.500001, -0.25 / 0.500001, -0.25 / 0.500001, -0.25 / 0.500001]
    expected += [0.0] * 4
    expected += [0.5 / (s3 + 1e-6)] * 2 + [-0.5 / (s3 + 1e-6)] * 2
    assert out.shape == r.shape
    torch.testing.assert_close(out, t64(expected), rtol=1e-9, atol=1e-9)


def test_grpo_none_scale_hand_values():
    out = grpo_advantages(t64(REWARDS), 4, scale="none")
    expected = [0.75, -0.25, -0.25, -0.25] + [0.0] * 4 + [0.5, 0.5, -0.5, -0.5]
    torch.testing.assert_close(out, t64(expected), rtol=1e-12, atol=1e-12)


def test_grpo_batch_scale_hand_values():
    out = grpo_advantages(t64(REWARDS), 4, scale="batch")
    sb = statistics.stdev(REWARDS)  # batch std of the rewards, unbiased
    centred = [0.75, -0.25, -0.25, -0.25] + [0.0] * 4 + [0.5, 0.5, -0.5, -0.5]
    expected = [c / (sb + 1e-6) for c in centred]
    torch.testing.assert_close(out, t64(expected), rtol=1e-9, atol=1e-9)


def test_grpo_custom_eps():
    out = grpo_advantages(t64([1.0, 0.0]), 2, eps=1.0)
    s = math.sqrt(0.5)
    torch.testing.assert_close(out, t64([0.5 / (s + 1), -0.5 / (s + 1)]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_degenerate_groups_are_zero(scale):
    r = t64([1.0] * 4 + [0.0] * 4)
    out = grpo_advantages(r, 4, scale=scale)
    assert torch.all(torch.isfinite(out))
    torch.testing.assert_close(out, torch.zeros(8, dtype=F64), rtol=0, atol=1e-9)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("value, g", [(0.9, 3), (0.1, 7), (0.3, 5), (0.7, 6)])
def test_grpo_degenerate_non_binary_float32_groups_are_zero(scale, value, g):
    # a degenerate group (all rewards equal) must give 0 for every member, also for float32
    # partial-credit rewards whose group mean is not exactly representable
    r = torch.cat([torch.full((g,), value), torch.tensor([1.0] + [0.0] * (g - 1))])
    out = grpo_advantages(r, g, scale=scale)
    assert torch.all(torch.isfinite(out))
    assert out[:g].abs().max().item() < 1e-6, out[:g]


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("n", [1, 3])
def test_grpo_group_size_one_gives_zeros(scale, n):
    r = t64([1.0, 0.0, 1.0][:n])
    out = grpo_advantages(r, 1, scale=scale)
    assert torch.all(torch.isfinite(out))
    torch.testing.assert_close(out, torch.zeros(n, dtype=F64), rtol=0, atol=0)


@pytest.mark.parametrize("n, g", [(7, 4), (5, 2), (3, 8)])
def test_grpo_length_not_multiple_raises(n, g):
    with pytest.raises(ValueError):
        grpo_advantages(torch.zeros(n, dtype=F64), g)


@pytest.mark.parametrize("scale", ["std", "Group", ""])
def test_grpo_unknown_scale_raises(scale):
    with pytest.raises(ValueError):
        grpo_advantages(t64([1.0, 0.0]), 2, scale=scale)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=2, max_value=8).flatmap(
        lambda g: st.tuples(
            st.just(g),
            st.lists(st.sampled_from([0.0, 1.0]), min_size=g, max_size=6 * g).map(
                lambda xs, g=g: xs[: (len(xs) // g) * g]
            ),
        )
    ),
    st.sampled_from(["group", "batch", "none"]),
)
def test_property_grpo_group_means_zero(gr, scale):
    g, rewards = gr
    out = grpo_advantages(t64(rewards), g, scale=scale)
    assert torch.all(torch.isfinite(out))
    groups = out.view(-1, g)
    torch.testing.assert_close(groups.mean(dim=1), torch.zeros(groups.shape[0], dtype=F64), rtol=0, atol=1e-9)
    # degenerate groups are exactly the zero-advantage groups
    raw = t64(rewards).view(-1, g)
    degenerate = (raw == raw[:, :1]).all(dim=1)
    assert torch.all(groups[degenerate] == 0)
    if scale == "group":
        nd = ~degenerate
        if nd.any():
            stds = groups[nd].std(dim=1, unbiased=True)
            torch.testing.assert_close(stds, torch.ones_like(stds), rtol=0, atol=1e-4)


# --------------------------------------------------------------------------- RLOO


def test_rloo_hand_values():
    r = t64([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.5, 0.0])
    out = rloo_advantages(r, 4)
    expected = [1.0, -1 / 3, -1 / 3, -1 / 3, 1 - 1.5 / 3, 1 - 1.5 / 3, 0.5 - 2 / 3, 0 - 2.5 / 3]
    assert out.shape == r.shape
    torch.testing.assert_close(out, t64(expected), rtol=1e-12, atol=1e-12)


def test_rloo_group_of_two():
    out = rloo_advantages(t64([1.0, 0.0, 1.0, 1.0]), 2)
    torch.testing.assert_close(out, t64([1.0, -1.0, 0.0, 0.0]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("g", [1, 0])
def test_rloo_group_size_below_two_raises(g):
    with pytest.raises(ValueError):
        rloo_advantages(t64([1.0, 0.0]), g)


def test_rloo_length_not_multiple_raises():
    with pytest.raises(ValueError):
        rloo_advantages(t64([1.0, 0.0, 1.0]), 2)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=2, max_value=8).flatmap(
        lambda g: st.tuples(
            st.just(g),
            st.lists(st.floats(0.0, 1.0), min_size=g, max_size=5 * g).map(
                lambda xs, g=g: xs[: (len(xs) // g) * g]
            ),
        )
    )
)
def test_property_rloo_is_rescaled_group_centering(gr):
    g, rewards = gr
    r = t64(rewards)
    out = rloo_advantages(r, g)
    centred = grpo_advantages(r, g, scale="none")
    torch.testing.assert_close(out, centred * g / (g - 1), rtol=1e-9, atol=1e-9)
