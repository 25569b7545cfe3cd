"""Tests for spo_lab.tracker: the per-prompt Beta value tracker and the KL-adaptive discount.

Reference: the SPO paper (arXiv 2509.13232).
"""
from __future__ import annotations

import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import spo_lab
from spo_lab.tracker import ValueTracker, rho_from_kl

F64 = torch.float64


def t64(x):
    return torch.as_tensor(x, dtype=F64)


def ids_t(x):
    return torch.as_tensor(x, dtype=torch.long)


# --------------------------------------------------------------------------- rho_from_kl


def test_reexports():
    assert spo_lab.ValueTracker is ValueTracker
    assert spo_lab.rho_from_kl is rho_from_kl


def test_rho_kl_zero_is_rho_max():
    rho = rho_from_kl(t64([0.0]))
    assert isinstance(rho, torch.Tensor)
    assert rho.item() == pytest.approx(0.96, abs=1e-12)


def test_rho_huge_kl_is_rho_min():
    rho = rho_from_kl(t64([1e6, 5.0, 1.0]))
    torch.testing.assert_close(rho, t64([0.875, 0.875, 0.875]), rtol=0, atol=1e-12)


def test_rho_interior_value():
    # 2 ** (-kl / 0.06) = 0.9  <=>  kl = 0.06 * log2(1 / 0.9)
    kl = 0.06 * math.log2(1 / 0.9)
    rho = rho_from_kl(t64([kl]))
    assert rho.item() == pytest.approx(0.9, abs=1e-12)


def test_rho_elementwise_and_shape():
    kl = t64([0.0, 0.06 * math.log2(1 / 0.9), 0.06, 10.0, 0.001])
    rho = rho_from_kl(kl)
    assert rho.shape == kl.shape
    expected = [0.96, 0.9, 0.875, 0.875, min(0.96, 2 ** (-0.001 / 0.06))]
    # 0.06 -> 2**-1 = 0.5 -> clipped up to 0.875; 0.001 -> 0.988.. -> clipped down to 0.96
    torch.testing.assert_close(rho, t64(expected), rtol=0, atol=1e-12)


def test_rho_custom_constants():
    # d_half = 0.1, kl = 0.1 -> 0.5, inside [0.4, 0.99]
    rho = rho_from_kl(t64([0.1, 0.0, 10.0]), d_half=0.1, rho_min=0.4, rho_max=0.99)
    torch.testing.assert_close(rho, t64([0.5, 0.99, 0.4]), rtol=0, atol=1e-12)


@given(st.lists(st.floats(min_value=0.0, max_value=100.0), min_size=1, max_size=20))
def test_rho_always_within_bounds_and_monotone(kls):
    kl = t64(sorted(kls))
    rho = rho_from_kl(kl)
    assert torch.all(rho >= 0.875 - 1e-12) and torch.all(rho <= 0.96 + 1e-12)
    assert torch.all(rho[1:] <= rho[:-1] + 1e-15)  # non-increasing in kl


# --------------------------------------------------------------------------- construction


def test_construction_prior_and_dtype():
    tr = ValueTracker(5)
    assert tr.alpha.dtype == F64 and tr.beta.dtype == F64
    assert tr.alpha.shape == (5,) and tr.beta.shape == (5,)
    torch.testing.assert_close(tr.alpha, torch.full((5,), 0.5, dtype=F64))
    torch.testing.assert_close(tr.beta, torch.full((5,), 0.5, dtype=F64))
    torch.testing.assert_close(tr.values(), torch.full((5,), 0.5, dtype=F64))
    torch.testing.assert_close(tr.n_eff(), torch.full((5,), 1.0, dtype=F64))


def test_custom_prior_values_and_n_eff_subset():
    tr = ValueTracker(4, prior_alpha=1.0, prior_beta=3.0)
    torch.testing.assert_close(tr.values(), torch.full((4,), 0.25, dtype=F64))
    torch.testing.assert_close(tr.n_eff(ids_t([0, 3])), t64([4.0, 4.0]))
    torch.testing.assert_close(tr.values(ids_t([2])), t64([0.25]))


# --------------------------------------------------------------------------- init_from_counts


def test_init_jeffreys_hand_values():
    tr = ValueTracker(3)
    tr.init_from_counts(ids_t([3, 0, 8]), ids_t([8, 8, 8]))  # default mode = jeffreys
    n0 = 1 / (1 - 0.875)  # = 8
    exp_alpha = [n0 * 3.5 / 9, n0 * 0.5 / 9, n0 * 8.5 / 9]
    exp_beta = [n0 * 5.5 / 9, n0 * 8.5 / 9, n0 * 0.5 / 9]
    torch.testing.assert_close(tr.alpha, t64(exp_alpha), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(tr.beta, t64(exp_beta), rtol=1e-12, atol=1e-12)
    # N = N0 * (n + 1) / (n + 1) = N0 = 8 for every prompt
    torch.testing.assert_close(tr.n_eff(), t64([8.0, 8.0, 8.0]), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(tr.values(), t64([3.5 / 9, 0.5 / 9, 8.5 / 9]), rtol=1e-12, atol=1e-12)


def test_init_jeffreys_explicit_mode_and_custom_rho_min():
    tr = ValueTracker(2, rho_min=0.75)  # N0 = 4
    tr.init_from_counts(ids_t([1, 2]), ids_t([4, 2]), mode="jeffreys")
    torch.testing.assert_close(tr.alpha, t64([4 * 1.5 / 5, 4 * 2.5 / 3]), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(tr.beta, t64([4 * 3.5 / 5, 4 * 0.5 / 3]), rtol=1e-12, atol=1e-12)


def test_init_paper_hand_values():
    tr = ValueTracker(3)
    tr.init_from_counts(ids_t([3, 0, 8]), ids_t([8, 8, 8]), mode="paper")
    torch.testing.assert_close(tr.alpha, t64([3.0, 0.0, 8.0]), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(tr.beta, t64([5.0, 8.0, 0.0]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["jeffreys", "paper"])
def test_init_zero_trials_keep_prior(mode):
    # The official pitfall: prompts without offline data must not get weight 0 forever.
    tr = ValueTracker(3, prior_alpha=0.3, prior_beta=0.7)
    tr.init_from_counts(ids_t([0, 2, 0]), ids_t([0, 4, 0]), mode=mode)
    assert tr.alpha[0].item() == pytest.approx(0.3) and tr.beta[0].item() == pytest.approx(0.7)
    assert tr.alpha[2].item() == pytest.approx(0.3) and tr.beta[2].item() == pytest.approx(0.7)
    assert tr.alpha[1].item() != pytest.approx(0.3)
    assert torch.all(tr.n_eff() > 0)


@pytest.mark.parametrize(
    "succ, trials",
    [
        ([3, 9, 0], [8, 8, 8]),  # k > n
        ([-1, 0, 0], [8, 8, 8]),  # negative successes
        ([0, 0, 0], [8, -2, 8]),  # negative trials
        ([1, 1], [8, 8]),  # wrong length
        ([1, 1, 1], [8, 8, 8, 8]),  # wrong length
    ],
)
def test_init_bad_counts_raise(succ, trials):
    tr = ValueTracker(3)
    with pytest.raises(ValueError):
        tr.init_from_counts(ids_t(succ), ids_t(trials))


def test_init_unknown_mode_raises():
    tr = ValueTracker(2)
    with pytest.raises(ValueError):
        tr.init_from_counts(ids_t([1, 1]), ids_t([2, 2]), mode="laplace")


# --------------------------------------------------------------------------- update


def test_update_hand_values_default_kl():
    tr = ValueTracker(3)
    rho = tr.update(ids_t([0, 2]), t64([1.0, 0.0]))
    torch.testing.assert_close(rho.to(F64), t64([0.96, 0.96]), rtol=0, atol=1e-12)
    # alpha <- 0.96 * 0.5 + r ; beta <- 0.96 * 0.5 + (1 - r)
    torch.testing.assert_close(tr.alpha, t64([1.48, 0.5, 0.48]), rtol=0, atol=1e-12)
    torch.testing.assert_close(tr.beta, t64([0.48, 0.5, 1.48]), rtol=0, atol=1e-12)


def test_update_hand_values_with_kl():
    tr = ValueTracker(2)
    kl = t64([0.06 * math.log2(1 / 0.9), 100.0])
    rho = tr.update(ids_t([0, 1]), t64([1.0, 1.0]), kl=kl)
    torch.testing.assert_close(rho.to(F64), t64([0.9, 0.875]), rtol=0, atol=1e-12)
    torch.testing.assert_close(tr.alpha, t64([0.9 * 0.5 + 1, 0.875 * 0.5 + 1]), rtol=0, atol=1e-12)
    torch.testing.assert_close(tr.beta, t64([0.9 * 0.5, 0.875 * 0.5]), rtol=0, atol=1e-12)


def test_update_custom_rho_max_used_for_no_kl():
    tr = ValueTracker(1, rho_max=0.9, rho_min=0.5)
    rho = tr.update(ids_t([0]), t64([0.0]))
    assert rho.item() == pytest.approx(0.9)
    assert tr.alpha.item() == pytest.approx(0.45) and tr.beta.item() == pytest.approx(1.45)


def test_update_non_binary_reward():
    tr = ValueTracker(1)
    tr.update(ids_t([0]), t64([0.3]))
    assert tr.alpha.item() == pytest.approx(0.96 * 0.5 + 0.3, abs=1e-12)
    assert tr.beta.item() == pytest.approx(0.96 * 0.5 + 0.7, abs=1e-12)


def test_update_accepts_float32_rewards_and_kl():
    tr = ValueTracker(2)
    tr.update(ids_t([0, 1]), torch.tensor([1.0, 0.0]), kl=torch.tensor([0.0, 0.0]))
    assert tr.alpha.dtype == F64
    torch.testing.assert_close(tr.alpha, t64([1.48, 0.48]), rtol=0, atol=1e-7)


def test_update_empty_batch_is_noop():
    tr = ValueTracker(3)
    rho = tr.update(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=F64))
    assert rho.numel() == 0
    torch.testing.assert_close(tr.alpha, torch.full((3,), 0.5, dtype=F64))


@pytest.mark.parametrize("rho_kl", [0.0, 0.06 * math.log2(1 / 0.9), 5.0])
@pytest.mark.parametrize("reward", [0.0, 1.0, 0.37])
def test_ema_identity(rho_kl, reward):
    # v_new = v + (r - v) / (rho * N + 1)
    tr = ValueTracker(4)
    tr.init_from_counts(ids_t([1, 5, 0, 7]), ids_t([3, 9, 2, 7]))
    g = torch.Generator().manual_seed(0)
    tr.update(ids_t([0, 1, 2, 3]), torch.rand(4, generator=g, dtype=F64))  # arbitrary state
    v, n = tr.values().clone(), tr.n_eff().clone()
    rho = tr.update(ids_t([0, 1, 2, 3]), t64([reward] * 4), kl=t64([rho_kl] * 4)).to(F64)
    expected = v + (reward - v) / (rho * n + 1)
    torch.testing.assert_close(tr.values(), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(tr.n_eff(), rho * n + 1, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kl, limit", [(None, 25.0), (1000.0, 8.0)])
def test_n_eff_converges_to_window(kl, limit):
    tr = ValueTracker(2)
    g = torch.Generator().manual_seed(1)
    for _ in range(600):
        r = (torch.rand(2, generator=g) < 0.3).to(F64)
        tr.update(ids_t([0, 1]), r, kl=None if kl is None else t64([kl, kl]))
    torch.testing.assert_close(tr.n_eff(), t64([limit, limit]), rtol=0, atol=1e-6)
    assert torch.all((tr.values() > 0) & (tr.values() < 1))


def test_value_tracks_constant_reward_rate():
    # Alternating 1, 0, 0, 0 gives a long-run value near 0.25.
    tr = ValueTracker(1)
    for t in range(400):
        tr.update(ids_t([0]), t64([1.0 if t % 4 == 0 else 0.0]))
    assert 0.18 < tr.values().item() < 0.32


def _sequential(tr, ids, rewards, kl):
    rhos = []
    for i in range(len(ids)):
        k = None if kl is None else kl[i : i + 1]
        rhos.append(tr.update(ids[i : i + 1], rewards[i : i + 1], kl=k).to(F64))
    return torch.cat(rhos) if rhos else torch.zeros(0, dtype=F64)


def test_duplicate_ids_equal_sequential_updates_hand():
    ids = ids_t([3, 1, 3, 3, 2, 1])
    rewards = t64([1.0, 0.0, 0.0, 1.0, 0.5, 1.0])
    kl = t64([0.0, 0.01, 1.0, 0.06 * math.log2(1 / 0.9), 0.02, 0.0])  # different kl per duplicate
    a, b = ValueTracker(5), ValueTracker(5)
    rho_a = a.update(ids, rewards, kl=kl).to(F64)
    rho_b = _sequential(b, ids, rewards, kl)
    torch.testing.assert_close(rho_a, rho_b, rtol=0, atol=1e-14)
    torch.testing.assert_close(a.alpha, b.alpha, rtol=0, atol=1e-12)
    torch.testing.assert_close(a.beta, b.beta, rtol=0, atol=1e-12)
    # spelled out for prompt 3: rho 0.96, 0.875, 0.9 in that order
    al, be = 0.5, 0.5
    for rho, r in [(0.96, 1.0), (0.875, 0.0), (0.9, 1.0)]:
        al, be = rho * al + r, rho * be + (1 - r)
    assert a.alpha[3].item() == pytest.approx(al, abs=1e-12)
    assert a.beta[3].item() == pytest.approx(be, abs=1e-12)
    # the order matters: a reversed order gives a different state (so the test can fail)
    c = ValueTracker(5)
    c.update(ids.flip(0), rewards.flip(0), kl=kl.flip(0))
    assert not torch.allclose(c.alpha[3], a.alpha[3])


def test_duplicate_ids_no_kl():
    ids = ids_t([0] * 10)
    rewards = t64([1, 0, 1, 1, 0, 0, 0, 1, 1, 1])
    a, b = ValueTracker(1), ValueTracker(1)
    a.update(ids, rewards)
    _sequential(b, ids, rewards, None)
    torch.testing.assert_close(a.alpha, b.alpha, rtol=0, atol=1e-12)
    torch.testing.assert_close(a.beta, b.beta, rtol=0, atol=1e-12)
    # nothing lost: N = sum_{t} 0.96**t + 0.96**10 * 1
    assert a.n_eff().item() == pytest.approx(sum(0.96**t for t in range(10)) + 0.96**10, abs=1e-12)


_update_batches = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=5),
        st.one_of(st.sampled_from([0.0, 1.0]), st.floats(min_value=0.0, max_value=1.0)),
        st.floats(min_value=0.0, max_value=2.0),
    ),
    min_size=0,
    max_size=12,
)


@settings(max_examples=40, deadline=None)
@given(st.lists(_update_batches, min_size=1, max_size=6), st.booleans())
def test_property_batch_equals_sequential_and_values_in_unit_interval(batches, use_kl):
    a, b = ValueTracker(6), ValueTracker(6)
    for batch in batches:
        ids = ids_t([x[0] for x in batch])
        rewards = t64([x[1] for x in batch])
        kl = t64([x[2] for x in batch]) if use_kl else None
        rho_a = a.update(ids, rewards, kl=kl).to(F64)
        rho_b = _sequential(b, ids, rewards, kl)
        torch.testing.assert_close(rho_a, rho_b, rtol=0, atol=1e-14)
        assert torch.all((rho_a >= 0.875 - 1e-12) & (rho_a <= 0.96 + 1e-12))
    torch.testing.assert_close(a.alpha, b.alpha, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a.beta, b.beta, rtol=1e-12, atol=1e-12)
    v = a.values()
    assert torch.all(torch.isfinite(v))
    assert torch.all((v > 0) & (v < 1))
    assert torch.all(a.alpha > 0) and torch.all(a.beta > 0)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.sampled_from([0.0, 1.0]), min_size=1, max_size=80),
    st.integers(min_value=0, max_value=8),
)
def test_property_values_strictly_inside_after_jeffreys_init(rewards, k):
    tr = ValueTracker(1)
    tr.init_from_counts(ids_t([k]), ids_t([8]))
    for r in rewards:
        tr.update(ids_t([0]), t64([r]), kl=t64([0.5]))
        v = tr.values().item()
        assert 0.0 < v < 1.0


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "ids, rewards, kl",
    [
        ([0, 1], [1.0], None),  # shape mismatch ids / rewards
        ([0], [1.0, 0.0], None),
        ([0, 1], [1.0, 0.0], [0.0]),  # shape mismatch kl
        ([0, 1], [1.0, 1.5], None),  # reward > 1
        ([0, 1], [-0.1, 1.0], None),  # reward < 0
        ([0, 1], [float("nan"), 1.0], None),  # NaN reward
        ([0, -1], [1.0, 1.0], None),  # negative id
        ([0, 4], [1.0, 1.0], None),  # id == num_prompts
        ([0, 100], [1.0, 1.0], None),  # id > num_prompts
        ([0, 1], [1.0, 0.0], [0.0, float("nan")]),  # NaN kl
        ([0, 1], [1.0, 0.0], [0.0, -0.01]),  # negative kl
    ],
)
def test_update_bad_input_raises_and_leaves_state(ids, rewards, kl):
    tr = ValueTracker(4)
    tr.update(ids_t([0, 1, 2]), t64([1.0, 0.0, 1.0]))
    alpha, beta = tr.alpha.clone(), tr.beta.clone()
    with pytest.raises(ValueError):
        tr.update(ids_t(ids), t64(rewards), kl=None if kl is None else t64(kl))
    # validation happens before any mutation
    torch.testing.assert_close(tr.alpha, alpha, rtol=0, atol=0)
    torch.testing.assert_close(tr.beta, beta, rtol=0, atol=0)


def test_update_error_message_is_informative():
    tr = ValueTracker(4)
    with pytest.raises(ValueError) as exc:
        tr.update(ids_t([7]), t64([1.0]))
    assert len(str(exc.value)) > 10


# --------------------------------------------------------------------------- state_dict


def _trained_tracker(n=7, seed=0):
    tr = ValueTracker(n, rho_min=0.8, rho_max=0.95, d_half=0.1)
    tr.init_from_counts(ids_t([1, 0, 3, 2, 8, 0, 5][:n]), ids_t([2, 0, 8, 4, 8, 0, 5][:n]))
    g = torch.Generator().manual_seed(seed)
    for _ in range(5):
        ids = torch.randint(0, n, (6,), generator=g)
        tr.update(ids, torch.rand(6, generator=g, dtype=F64), kl=torch.rand(6, generator=g, dtype=F64) * 0.2)
    return tr


def test_state_dict_round_trip_exact():
    tr = _trained_tracker()
    sd = tr.state_dict()
    fresh = ValueTracker(7, rho_min=0.8, rho_max=0.95, d_half=0.1)
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.alpha, tr.alpha) and torch.equal(fresh.beta, tr.beta)
    assert fresh.alpha.dtype == F64 and fresh.beta.dtype == F64
    assert torch.equal(fresh.values(), tr.values())
    # both continue identically
    ids, r, kl = ids_t([0, 3, 3, 6]), t64([1.0, 0.0, 1.0, 0.2]), t64([0.01, 0.0, 0.3, 0.05])
    torch.testing.assert_close(tr.update(ids, r, kl=kl), fresh.update(ids, r, kl=kl), rtol=0, atol=0)
    assert torch.equal(fresh.alpha, tr.alpha) and torch.equal(fresh.beta, tr.beta)


def test_state_dict_survives_torch_save():
    tr = _trained_tracker(seed=3)
    buf = io.BytesIO()
    torch.save(tr.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf)
    fresh = ValueTracker(7, rho_min=0.8, rho_max=0.95, d_half=0.1)
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.alpha, tr.alpha) and torch.equal(fresh.beta, tr.beta)


def test_loaded_tracker_does_not_share_storage():
    tr = _trained_tracker()
    sd = tr.state_dict()
    fresh = ValueTracker(7, rho_min=0.8, rho_max=0.95, d_half=0.1)
    fresh.load_state_dict(sd)
    before = tr.alpha.clone()
    fresh.update(ids_t([0, 1, 2]), t64([1.0, 1.0, 1.0]))
    assert torch.equal(tr.alpha, before), "updating the loaded tracker changed the original"


def test_state_dict_wrong_size_raises():
    sd = _trained_tracker().state_dict()
    with pytest.raises(ValueError):
        ValueTracker(8).load_state_dict(sd)
    with pytest.raises(ValueError):
        ValueTracker(3).load_state_dict(sd)
