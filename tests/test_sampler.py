"""Tests for spo_lab.sampler: priority weights and the prioritised without-replacement sampler.

Reference: the SPO paper (arXiv 2509.13232). The statistical tests use fixed seeds (so they are deterministic)
and loose thresholds (about 1e-4 false-alarm level each), so any correct implementation passes.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Sampler

import spo_lab
from spo_lab.sampler import PrioritizedSampler, priority_weights
from spo_lab.tracker import ValueTracker

F64 = torch.float64
Z = 3.72  # one-sided normal quantile for p = 1e-4


def t64(x):
    return torch.as_tensor(x, dtype=F64)


def ids_t(x):
    return torch.as_tensor(x, dtype=torch.long)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def tracker_with_values(values, n=10, **kw):
    """A tracker whose posterior means are exactly `values` (multiples of 1/n), via paper init."""
    tr = ValueTracker(len(values), **kw)
    k = [round(v * n) for v in values]
    tr.init_from_counts(ids_t(k), ids_t([n] * len(values)), mode="paper")
    torch.testing.assert_close(tr.values(), t64([kk / n for kk in k]))
    return tr


def chi2_critical(df, z=Z):
    """Wilson-Hilferty approximation of the upper chi-square quantile (no scipy needed)."""
    c = 2.0 / (9.0 * df)
    return df * (1.0 - c + z * math.sqrt(c)) ** 3


def chi2_stat(counts, probs, n):
    return sum((c - n * p) ** 2 / (n * p) for c, p in zip(counts, probs))


def pl_inclusion_and_sets(w, k):
    """Exact Plackett-Luce (sequential without-replacement) law for a tiny weight vector."""
    w = [float(x) for x in w]
    incl = [0.0] * len(w)
    sets = {}
    for perm in itertools.permutations(range(len(w)), k):
        p, rest = 1.0, sum(w)
        for i in perm:
            p *= w[i] / rest
            rest -= w[i]
        for i in perm:
            incl[i] += p
        key = tuple(sorted(perm))
        sets[key] = sets.get(key, 0.0) + p
    return incl, sets


def test_reexports():
    assert spo_lab.priority_weights is priority_weights
    assert spo_lab.PrioritizedSampler is PrioritizedSampler


# --------------------------------------------------------------------------- priority_weights


def test_priority_weights_hand_values():
    v = t64([0.0, 0.5, 1.0, 0.1, 0.3])
    w = priority_weights(v)
    expected = [0.05, 0.55, 0.05, 0.3 + 0.05, math.sqrt(0.21) + 0.05]
    torch.testing.assert_close(w.to(F64), t64(expected), rtol=1e-12, atol=1e-12)


def test_priority_weights_eps_and_gamma():
    v = t64([0.5, 0.5, 0.2])
    n = t64([4.0, 100.0, 1.0])
    w = priority_weights(v, eps=0.01, n_eff=n, gamma=0.5)
    expected = [0.5 / 2 + 0.01, 0.5 / 10 + 0.01, 0.4 + 0.01]
    torch.testing.assert_close(w.to(F64), t64(expected), rtol=1e-12, atol=1e-12)
    # gamma = 0 ignores n_eff
    w0 = priority_weights(v, eps=0.01, n_eff=n, gamma=0.0)
    torch.testing.assert_close(w0.to(F64), t64([0.51, 0.51, 0.41]), rtol=1e-12, atol=1e-12)
    # gamma = 1
    w1 = priority_weights(v, eps=0.001, n_eff=n, gamma=1.0)
    torch.testing.assert_close(w1.to(F64), t64([0.126, 0.006, 0.401]), rtol=1e-12, atol=1e-12)


@given(
    st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=30),
    st.floats(min_value=1e-3, max_value=1.0),
    st.floats(min_value=0.0, max_value=2.0),
    st.floats(min_value=1.0, max_value=1000.0),
)
def test_property_weights_at_least_eps(vals, eps, gamma, n_eff):
    v = t64(vals)
    w = priority_weights(v, eps=eps, n_eff=torch.full_like(v, n_eff), gamma=gamma)
    assert w.shape == v.shape
    assert torch.all(torch.isfinite(w))
    assert torch.all(w >= eps - 1e-12)
    assert torch.all(w <= 0.5 + eps + 1e-12)
    # symmetric in v <-> 1 - v
    w_flip = priority_weights(1 - v, eps=eps, n_eff=torch.full_like(v, n_eff), gamma=gamma)
    torch.testing.assert_close(w, w_flip, rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------- basic sampling


def test_sampler_is_torch_sampler():
    s = PrioritizedSampler(ValueTracker(10), 3, generator=gen(0))
    assert isinstance(s, Sampler)


def test_sample_distinct_in_range():
    tr = tracker_with_values([0.1 * (i % 11) for i in range(50)])
    s = PrioritizedSampler(tr, 20, generator=gen(0))
    for _ in range(30):
        ids = s.sample()
        assert isinstance(ids, torch.Tensor) and ids.dtype == torch.long
        assert ids.shape == (20,)
        assert len(set(ids.tolist())) == 20
        assert ids.min().item() >= 0 and ids.max().item() < 50


def test_sample_full_batch_is_permutation():
    s = PrioritizedSampler(ValueTracker(7), 7, generator=gen(1))
    assert sorted(s.sample().tolist()) == list(range(7))


def test_sample_respects_pool():
    tr = tracker_with_values([0.5] * 5 + [0.0] * 25)  # highest weights lie OUTSIDE the pool
    pool = ids_t([7, 11, 12, 20, 29, 3])
    s = PrioritizedSampler(tr, 4, generator=gen(2))
    for _ in range(50):
        ids = s.sample(pool)
        assert len(set(ids.tolist())) == 4
        assert set(ids.tolist()) <= set(pool.tolist())
    # keyword form and batch == pool size
    s6 = PrioritizedSampler(tr, 6, generator=gen(3))
    assert sorted(s6.sample(pool=pool).tolist()) == sorted(pool.tolist())


def test_batch_larger_than_candidates_raises():
    tr = ValueTracker(5)
    with pytest.raises(ValueError):
        PrioritizedSampler(tr, 6, generator=gen(0)).sample()
    s = PrioritizedSampler(tr, 3, generator=gen(0))
    with pytest.raises(ValueError):
        s.sample(pool=ids_t([0, 1]))


# --------------------------------------------------------------------------- statistical laws


def draw_counts(sampler, n, num_prompts, pool=None):
    """Run n draws; return (inclusion counts per id, Counter of sorted id tuples)."""
    incl = [0] * num_prompts
    sets = {}
    for _ in range(n):
        ids = sampler.sample() if pool is None else sampler.sample(pool)
        ids = ids.tolist()
        assert len(set(ids)) == len(ids) == sampler.batch_size
        for i in ids:
            incl[i] += 1
        key = tuple(sorted(ids))
        sets[key] = sets.get(key, 0) + 1
    return incl, sets


def assert_close_freq(count, n, p, what=""):
    sd = math.sqrt(max(p * (1 - p), 1e-12) / n)
    assert abs(count / n - p) < 5 * sd + 1e-12, (what, count / n, p)


def assert_sets_chi2(set_counts, set_probs, n):
    """Chi-square over unordered sets, pooling cells with expected count < 10."""
    cells_p, cells_c, pool_p, pool_c = [], [], 0.0, 0
    for key, prob in sorted(set_probs.items(), key=lambda kv: kv[1]):
        if n * prob < 10:
            pool_p += prob
            pool_c += set_counts.get(key, 0)
        else:
            cells_p.append(prob)
            cells_c.append(set_counts.get(key, 0))
    if pool_p > 0:
        cells_p.append(pool_p)
        cells_c.append(pool_c)
    assert set(set_counts) <= set(set_probs)
    stat = chi2_stat(cells_c, cells_p, n)
    assert stat < chi2_critical(len(cells_p) - 1), (stat, cells_c, [n * q for q in cells_p])


def test_frequencies_match_weights_batch_one():
    values = [0.0, 0.5, 0.1, 1.0, 0.3]
    tr = tracker_with_values(values)
    w = [math.sqrt(v * (1 - v)) + 0.05 for v in values]
    p = [x / sum(w) for x in w]
    s = PrioritizedSampler(tr, 1, generator=gen(123))
    n = 2000
    counts, _ = draw_counts(s, n, 5)
    stat = chi2_stat(counts, p, n)
    assert stat < chi2_critical(4), (counts, [n * q for q in p], stat)
    assert counts[1] == max(counts)  # the prompt with v = 0.5 is the favourite


def test_pl_helper_matches_torch_multinomial():
    # self-check of the exact enumeration against torch's own without-replacement law
    w = torch.tensor([0.55, 0.05, 0.35, 0.45, 0.2], dtype=F64)
    incl, sets = pl_inclusion_and_sets(w.tolist(), 2)
    n = 40000
    draws = torch.multinomial(w.expand(n, 5), 2, replacement=False, generator=gen(5))
    emp = torch.bincount(draws.flatten(), minlength=5)
    for i in range(5):
        assert_close_freq(emp[i].item(), n, incl[i], i)
    assert sum(sets.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("k", [2, 3])
def test_inclusion_and_set_frequencies_match_plackett_luce(k):
    values = [0.5, 0.3, 0.1, 0.0, 0.2, 0.4]
    tr = tracker_with_values(values)
    w = [math.sqrt(v * (1 - v)) + 0.05 for v in values]
    incl, sets = pl_inclusion_and_sets(w, k)
    s = PrioritizedSampler(tr, k, generator=gen(7 + k))
    n = 1200
    incl_counts, set_counts = draw_counts(s, n, len(values))
    for i in range(len(values)):
        assert_close_freq(incl_counts[i], n, incl[i], i)
    assert_sets_chi2(set_counts, sets, n)


def test_pool_frequencies_match_plackett_luce_within_pool():
    values = [0.5, 0.0, 0.3, 1.0, 0.1, 0.5, 0.2, 0.9]
    tr = tracker_with_values(values)
    pool = ids_t([1, 2, 4, 6, 7])
    w_pool = [math.sqrt(values[i] * (1 - values[i])) + 0.05 for i in pool.tolist()]
    incl_local, sets_local = pl_inclusion_and_sets(w_pool, 2)
    ids = pool.tolist()
    sets = {tuple(sorted(ids[j] for j in key)): p for key, p in sets_local.items()}
    s = PrioritizedSampler(tr, 2, generator=gen(13))
    n = 1500
    incl_counts, set_counts = draw_counts(s, n, len(values), pool=pool)
    for j, i in enumerate(ids):
        assert_close_freq(incl_counts[i], n, incl_local[j], i)
    for i in set(range(len(values))) - set(ids):
        assert incl_counts[i] == 0
    assert_sets_chi2(set_counts, sets, n)


def test_larger_prompt_set_matches_torch_multinomial():
    # 37 prompts (odd sizes exercise any tree padding), batch of 10, vs torch.multinomial Monte Carlo
    g = gen(17)
    k_succ = torch.randint(0, 11, (37,), generator=g)
    tr = ValueTracker(37)
    tr.init_from_counts(k_succ, torch.full((37,), 10), mode="paper")
    w = priority_weights(tr.values()).to(F64)
    ref = torch.multinomial(w.expand(100000, 37), 10, replacement=False, generator=gen(18))
    p_ref = torch.bincount(ref.flatten(), minlength=37).double() / 100000
    s = PrioritizedSampler(tr, 10, generator=gen(19))
    n = 600
    incl, _ = draw_counts(s, n, 37)
    for i in range(37):
        p = p_ref[i].item()
        sd = math.sqrt(p * (1 - p) * (1 / n + 1 / 100000))
        assert abs(incl[i] / n - p) < 5 * sd, (i, incl[i] / n, p)


def test_not_uniform_without_replacement():
    # uniform weights would give the pair {0, 1} with probability 1/6; prioritisation favours v = 0.5
    tr = tracker_with_values([0.5, 0.5, 0.0, 1.0])
    s = PrioritizedSampler(tr, 2, generator=gen(11))
    n = 800
    _, set_counts = draw_counts(s, n, 4)
    _, sets = pl_inclusion_and_sets([0.55, 0.55, 0.05, 0.05], 2)
    assert_close_freq(set_counts.get((0, 1), 0), n, sets[(0, 1)])
    assert set_counts.get((0, 1), 0) / n > 0.7


def _expected_batch_one(tr, eps=0.05):
    w = priority_weights(tr.values(), eps=eps).to(F64)
    return (w / w.sum()).tolist()


def _assert_batch_one_law(s, tr, n=1000):
    p = _expected_batch_one(tr)
    counts, _ = draw_counts(s, n, tr.num_prompts)
    cells = [(c, q) for c, q in zip(counts, p)]
    stat = chi2_stat([c for c, _ in cells], [q for _, q in cells], n)
    assert stat < chi2_critical(len(p) - 1), (counts, [n * q for q in p])


def test_sampler_reads_current_tracker_state():
    tr = ValueTracker(3)  # uniform at first
    s = PrioritizedSampler(tr, 1, generator=gen(17))
    s.sample()  # a first draw under the old state must not freeze the weights
    tr.init_from_counts(ids_t([0, 5, 10]), ids_t([10, 10, 10]), mode="paper")  # v = 0, .5, 1
    n = 600
    c1 = sum(s.sample().item() == 1 for _ in range(n))
    assert_close_freq(c1, n, 0.55 / 0.65)
    # and after ordinary updates: prompt 1 becomes solved, prompt 0 becomes 50/50
    for t in range(60):
        tr.update(ids_t([1, 0]), t64([1.0, float(t % 2)]))
    _assert_batch_one_law(s, tr, n=600)
    assert tr.values()[0].item() == pytest.approx(0.5, abs=0.05)


def test_sampler_sees_many_small_updates_between_draws():
    tr = tracker_with_values([0.5, 0.5, 0.5, 0.5, 0.5])
    s = PrioritizedSampler(tr, 1, generator=gen(83))
    s.sample()
    for _ in range(100):  # more separate mutations than any short change log would keep
        tr.update(ids_t([0]), t64([1.0]))
        tr.update(ids_t([3]), t64([0.0]))
    _assert_batch_one_law(s, tr, n=800)


def test_sampler_sees_direct_writes_to_alpha_beta():
    # .alpha / .beta are public tensors; editing them (in place or by rebinding) must be seen
    tr = tracker_with_values([0.5, 0.5, 0.5, 0.5])
    s = PrioritizedSampler(tr, 1, generator=gen(89))
    s.sample()
    tr.alpha[0] = 1e-3  # v_0 -> ~0 (weight ~ eps)
    tr.beta[1] = 1e-3  # v_1 -> ~1
    _assert_batch_one_law(s, tr, n=600)
    s.sample()
    tr.alpha = torch.full((4,), 5.0, dtype=F64)
    tr.beta = t64([1e-3, 5.0, 5.0, 1e-3])
    _assert_batch_one_law(s, tr, n=600)


def test_sampler_sees_load_state_dict():
    tr = tracker_with_values([0.5, 0.5, 0.5, 0.5])
    s = PrioritizedSampler(tr, 1, generator=gen(97))
    s.sample()
    other = tracker_with_values([0.0, 1.0, 0.5, 0.0])
    tr.load_state_dict(other.state_dict())
    _assert_batch_one_law(s, tr, n=600)


def test_eps_is_used_by_sampler():
    tr = tracker_with_values([0.0, 0.5])
    for eps, p_first in [(0.05, 0.05 / 0.6), (1.0, 1.0 / 2.5)]:
        s = PrioritizedSampler(tr, 1, eps=eps, generator=gen(19))
        n = 800
        f = sum(s.sample().item() == 0 for _ in range(n))
        assert_close_freq(f, n, p_first, eps)


def test_gamma_is_used_by_sampler():
    # same value 0.5, but N_eff = 1 (prior) vs 100 (paper init with rho_min = 0.99)
    tr = ValueTracker(2, rho_min=0.99, rho_max=0.995)
    tr.init_from_counts(ids_t([0, 5]), ids_t([0, 10]), mode="paper")
    torch.testing.assert_close(tr.n_eff(), t64([1.0, 100.0]))
    n = 500
    for gamma, p0 in [(0.0, 0.5), (0.5, 0.55 / 0.65)]:
        s = PrioritizedSampler(tr, 1, gamma=gamma, generator=gen(23))
        f = sum(s.sample().item() == 0 for _ in range(n))
        assert_close_freq(f, n, p0, gamma)
        f_pool = sum(s.sample(ids_t([0, 1])).item() == 0 for _ in range(n))
        assert_close_freq(f_pool, n, p0, ("pool", gamma))


# --------------------------------------------------------------------------- Thompson


def test_thompson_changes_law():
    # Same posterior mean 0.5; prompt 0 has a wide Beta(.5, .5), prompt 1 a narrow Beta(50, 50).
    # Posterior-mean sampling: 50 / 50. Thompson: the wide one often draws v near 0 or 1, so its
    # weight is lower: P(pick 1) = E[w1 / (w0 + w1)] = 0.617 (Monte Carlo, 2e6 draws).
    tr = ValueTracker(2, rho_min=0.99, rho_max=0.995)
    tr.init_from_counts(ids_t([0, 5]), ids_t([0, 10]), mode="paper")
    n = 600
    mean_s = PrioritizedSampler(tr, 1, generator=gen(29))
    th_s = PrioritizedSampler(tr, 1, thompson=True, generator=gen(29))
    f_mean = sum(mean_s.sample().item() == 1 for _ in range(n))
    f_th = sum(th_s.sample().item() == 1 for _ in range(n))
    assert_close_freq(f_mean, n, 0.5)
    assert_close_freq(f_th, n, 0.617)
    assert f_th / n > 0.55


def test_thompson_changes_draws_but_stays_in_pool():
    tr = ValueTracker(40)
    tr.init_from_counts(ids_t([(i * 3) % 9 for i in range(40)]), ids_t([8] * 40))
    pool = ids_t(list(range(5, 35, 2)))
    a = PrioritizedSampler(tr, 6, generator=gen(31))
    b = PrioritizedSampler(tr, 6, thompson=True, generator=gen(31))
    seq_a = [a.sample(pool).tolist() for _ in range(20)]
    seq_b = [b.sample(pool).tolist() for _ in range(20)]
    assert seq_a != seq_b
    for ids in seq_b:
        assert len(set(ids)) == 6 and set(ids) <= set(pool.tolist())
    for _ in range(10):  # and without a pool
        ids = b.sample().tolist()
        assert len(set(ids)) == 6 and all(0 <= i < 40 for i in ids)


def test_thompson_reproducible_with_generator():
    tr = ValueTracker(30)
    tr.init_from_counts(ids_t([i % 9 for i in range(30)]), ids_t([8] * 30))
    a = PrioritizedSampler(tr, 5, thompson=True, generator=gen(37))
    b = PrioritizedSampler(tr, 5, thompson=True, generator=gen(37))
    for _ in range(10):
        assert torch.equal(a.sample(), b.sample())


def test_thompson_does_not_consume_global_rng():
    tr = ValueTracker(30)
    s = PrioritizedSampler(tr, 5, thompson=True, generator=gen(38))
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    s.sample()
    s.sample(ids_t(list(range(10))))
    assert torch.equal(torch.rand(3), expected)


def test_thompson_handles_paper_init_with_zero_alpha_or_beta():
    # paper-mode init of an all-fail / all-pass prompt gives alpha = 0 or beta = 0 exactly;
    # Thompson draws must still return valid distinct ids (no NaN weights, no crash).
    tr = tracker_with_values([0.0, 1.0, 0.5, 0.2, 0.0])
    s = PrioritizedSampler(tr, 3, thompson=True, generator=gen(41))
    for _ in range(20):
        ids = s.sample().tolist()
        assert len(set(ids)) == 3 and all(0 <= i < 5 for i in ids)


# --------------------------------------------------------------------------- reproducibility / state


def test_generator_reproducibility():
    tr = tracker_with_values([0.1 * (i % 11) for i in range(40)])
    a = PrioritizedSampler(tr, 8, generator=gen(43))
    b = PrioritizedSampler(tr, 8, generator=gen(43))
    c = PrioritizedSampler(tr, 8, generator=gen(44))
    sa = [a.sample().tolist() for _ in range(10)]
    sb = [b.sample().tolist() for _ in range(10)]
    sc = [c.sample().tolist() for _ in range(10)]
    assert sa == sb
    assert sa != sc


def test_sampler_state_dict_round_trip():
    tr = tracker_with_values([0.1 * (i % 11) for i in range(40)])
    a = PrioritizedSampler(tr, 8, generator=gen(47))
    for _ in range(3):
        a.sample()
    sd = a.state_dict()
    expected = [a.sample().tolist() for _ in range(5)]
    b = PrioritizedSampler(tr, 8, generator=gen(999))
    b.load_state_dict(sd)
    assert [b.sample().tolist() for _ in range(5)] == expected


def test_sampler_state_dict_round_trip_thompson():
    tr = ValueTracker(20)
    tr.init_from_counts(ids_t([i % 9 for i in range(20)]), ids_t([8] * 20))
    a = PrioritizedSampler(tr, 4, thompson=True, generator=gen(53))
    a.sample()
    sd = a.state_dict()
    expected = [a.sample().tolist() for _ in range(5)]
    b = PrioritizedSampler(tr, 4, thompson=True, generator=gen(0))
    b.load_state_dict(sd)
    assert [b.sample().tolist() for _ in range(5)] == expected


# --------------------------------------------------------------------------- DataLoader protocol


def test_iteration_yields_lists_and_is_finite_with_num_batches():
    tr = ValueTracker(12)
    s = PrioritizedSampler(tr, 4, num_batches=3, generator=gen(59))
    batches = list(s)
    assert len(batches) == 3
    for b in batches:
        assert isinstance(b, list) and len(b) == 4
        assert len(set(int(i) for i in b)) == 4
        assert all(0 <= int(i) < 12 for i in b)


def test_default_iteration_is_infinite():
    s = PrioritizedSampler(ValueTracker(6), 2, generator=gen(61))
    batches = list(itertools.islice(iter(s), 50))
    assert len(batches) == 50
    assert all(len(set(int(i) for i in b)) == 2 for b in batches)


def test_dataloader_batch_sampler():
    data = [f"prompt-{i}" for i in range(10)]
    tr = tracker_with_values([0.5, 0.0, 1.0, 0.3, 0.7, 0.5, 0.1, 0.9, 0.4, 0.6])
    s = PrioritizedSampler(tr, 3, num_batches=4, generator=gen(67))
    loader = DataLoader(data, batch_sampler=s, collate_fn=list)
    batches = list(loader)
    assert len(batches) == 4
    for b in batches:
        assert len(b) == 3 and len(set(b)) == 3
        assert set(b) <= set(data)
    # a second epoch gives another 4 batches
    assert len(list(loader)) == 4


def test_dataloader_default_collate_tensor_dataset():
    ds = torch.utils.data.TensorDataset(torch.arange(10) * 10)
    s = PrioritizedSampler(ValueTracker(10), 5, num_batches=2, generator=gen(71))
    out = list(DataLoader(ds, batch_sampler=s))
    assert len(out) == 2
    for (x,) in out:
        assert x.shape == (5,)
        assert len(set(x.tolist())) == 5 and all(v % 10 == 0 for v in x.tolist())


def test_iteration_reads_current_state():
    tr = ValueTracker(3)
    s = PrioritizedSampler(tr, 1, generator=gen(73))
    it = iter(s)
    next(it)
    tr.init_from_counts(ids_t([0, 5, 10]), ids_t([10, 10, 10]), mode="paper")
    n = 600
    f = sum(int(next(it)[0]) == 1 for _ in range(n))
    assert_close_freq(f, n, 0.55 / 0.65)


def test_refresh_picks_up_writes_that_bypass_torch():
    tracker = ValueTracker(12)
    sampler = PrioritizedSampler(tracker, 1, eps=0.05, generator=torch.Generator().manual_seed(0))
    sampler.sample()
    tracker.alpha.numpy()[:] = 1e-9  # v ~ 0 everywhere (weight eps) ...
    tracker.alpha.numpy()[3] = tracker.beta[3].item()  # ... except prompt 3 (v = 1/2)
    sampler.refresh()
    draws = torch.stack([sampler.sample() for _ in range(2000)]).flatten()
    expected = (0.5 + 0.05) / (0.5 + 0.05 + 11 * 0.05)
    assert abs(float((draws == 3).double().mean()) - expected) < 0.04
