"""Tests for spo_lab.metrics: unbiased pass@k, maj@k, and GRPO degenerate-group measures.

Reference: the SPO paper (arXiv 2509.13232).
"""
from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import spo_lab
from spo_lab.metrics import degenerate_fraction, degenerate_probability, maj_at_k, pass_at_k


def test_reexports():
    assert spo_lab.pass_at_k is pass_at_k
    assert spo_lab.maj_at_k is maj_at_k
    assert spo_lab.degenerate_probability is degenerate_probability
    assert spo_lab.degenerate_fraction is degenerate_fraction


# --------------------------------------------------------------------------- pass@k


def brute_pass_at_k(n, c, k):
    """Average over every k-subset of n samples (the first c correct) of 'any correct'."""
    flags = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(flags[i] for i in s) for s in subsets) / len(subsets)


def exact_pass_at_k(n, c, k):
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


def test_pass_at_k_hand_values():
    assert pass_at_k(2, 1, 1) == pytest.approx(0.5)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 7, 4) == 1.0  # n - c < k: every subset contains a correct sample
    assert pass_at_k(32, 4, 1) == pytest.approx(4 / 32)


def test_pass_at_k_scalar_returns_float():
    out = pass_at_k(8, 3, 2)
    assert isinstance(out, float)
    assert not isinstance(out, np.ndarray)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_brute_force(n):
    for c in range(0, n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_vectorised():
    n = np.array([8, 8, 16, 5, 3])
    c = np.array([0, 3, 5, 5, 1])
    out = pass_at_k(n, c, 2)
    assert isinstance(out, np.ndarray)
    assert out.shape == (5,)
    expected = [exact_pass_at_k(int(a), int(b), 2) for a, b in zip(n, c)]
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    # 2-D arrays keep their shape
    out2 = pass_at_k(n[:4].reshape(2, 2), c[:4].reshape(2, 2), 1)
    assert out2.shape == (2, 2)
    np.testing.assert_allclose(out2.ravel(), c[:4] / n[:4], rtol=1e-12)


def test_pass_at_k_vectorised_broadcast_scalar_n():
    c = np.arange(0, 33)
    out = pass_at_k(32, c, 8)
    expected = [exact_pass_at_k(32, int(x), 8) for x in c]
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "n, c, k",
    [(10**6, 1, 1), (10**6, 3, 7), (10**6, 10, 1000), (10**5, 1, 99_999), (2000, 1000, 1000), (10**6, 1, 10)],
)
def test_pass_at_k_large_n_exact(n, c, k):
    expected = exact_pass_at_k(n, c, k)
    got = pass_at_k(n, c, k)
    assert math.isfinite(got)
    assert got == pytest.approx(expected, rel=1e-10, abs=0), (got, expected)


def test_pass_at_k_tiny_probability_not_lost_to_cancellation():
    assert pass_at_k(10**6, 1, 1) == pytest.approx(1e-6, rel=1e-12)
    assert pass_at_k(10**9, 1, 1) == pytest.approx(1e-9, rel=1e-9)


@pytest.mark.parametrize("n, c, k", [(5, 2, 6), (1, 0, 2), (5, 6, 2), (3, 4, 1)])
def test_pass_at_k_bad_input_raises(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_pass_at_k_bad_input_in_array_raises():
    with pytest.raises(ValueError):
        pass_at_k(np.array([8, 4]), np.array([2, 5]), 2)  # c > n in one entry
    with pytest.raises(ValueError):
        pass_at_k(np.array([8, 4]), np.array([2, 1]), 5)  # k > n in one entry


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=1, max_value=200).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n))))
def test_property_pass_at_k_monotone_and_bounded(nc):
    n, c = nc
    ks = list(range(1, n + 1)) if n <= 40 else sorted({1, 2, 3, 5, 8, 13, n // 3, n // 2, n - 1, n})
    vals = [pass_at_k(n, c, k) for k in ks]
    for v in vals:
        assert 0.0 <= v <= 1.0
    for a, b in zip(vals, vals[1:]):
        assert b >= a - 1e-12
    assert vals[0] == pytest.approx(c / n, abs=1e-12)
    assert vals[-1] == (1.0 if c > 0 else 0.0) or vals[-1] == pytest.approx(1.0 if c > 0 else 0.0)
    if c < n:  # monotone in c as well
        k = ks[len(ks) // 2]
        assert pass_at_k(n, c + 1, k) >= pass_at_k(n, c, k) - 1e-12


# --------------------------------------------------------------------------- maj@k


def reference_maj_at_k(answers, correct, k):
    scores = []
    for ans, cor in zip(answers, correct):
        per = []
        for j in range(len(ans) // k):
            block = list(range(j * k, (j + 1) * k))
            counts, first = {}, {}
            for i in block:
                counts[ans[i]] = counts.get(ans[i], 0) + 1
                first.setdefault(ans[i], i)
            best = max(counts.values())
            winner = min((a for a in counts if counts[a] == best), key=lambda a: first[a])
            per.append(float(cor[first[winner]]))
        scores.append(sum(per) / len(per))
    return sum(scores) / len(scores)


def test_maj_at_k_hand_clear_majority():
    answers = [["a", "b", "a", "c"]]
    correct = [[True, False, True, False]]
    assert maj_at_k(answers, correct, 4) == pytest.approx(1.0)
    assert isinstance(maj_at_k(answers, correct, 4), float)
    # k = 1: plain accuracy
    assert maj_at_k(answers, correct, 1) == pytest.approx(0.5)


def test_maj_at_k_majority_wrong():
    answers = [["7", "3", "3", "3", "7"]]
    correct = [[True, False, False, False, True]]
    assert maj_at_k(answers, correct, 5) == pytest.approx(0.0)


def test_maj_at_k_tie_first_seen_wins():
    # 2-2 tie: the answer seen first among the k samples wins
    assert maj_at_k([["x", "y", "y", "x"]], [[False, True, True, False]], 4) == pytest.approx(0.0)
    assert maj_at_k([["y", "x", "x", "y"]], [[True, False, False, True]], 4) == pytest.approx(1.0)
    # pairs: [x, y] -> x (wrong), [y, x] -> y (right)
    assert maj_at_k([["x", "y", "y", "x"]], [[False, True, True, False]], 2) == pytest.approx(0.5)
    # three-way tie 1-1-1, correct answer last -> wrong
    assert maj_at_k([[1, 2, 3]], [[False, False, True]], 3) == pytest.approx(0.0)
    assert maj_at_k([[3, 2, 1]], [[True, False, False]], 3) == pytest.approx(1.0)


def test_maj_at_k_tie_is_not_decided_by_sorting():
    # lexicographic or hash order would pick "a"; first-seen picks "z"
    assert maj_at_k([["z", "a"]], [[True, False]], 2) == pytest.approx(1.0)
    assert maj_at_k([["z", "a", "a", "z"]], [[True, False, False, True]], 4) == pytest.approx(1.0)


def test_maj_at_k_disjoint_subsets_and_leftover_ignored():
    # n = 5, k = 2 -> subsets (0,1), (2,3); sample 4 ignored
    answers = [["a", "a", "b", "c", "d"]]
    correct = [[True, True, False, False, True]]
    # (a, a) -> right; (b, c) tie -> b wrong; => 0.5
    assert maj_at_k(answers, correct, 2) == pytest.approx(0.5)


def test_maj_at_k_average_over_problems():
    answers = [["a", "a", "b", "b"], ["q", "r", "r", "r"], ["m", "n", "o", "m"]]
    correct = [[True, True, False, False], [True, False, False, False], [False, True, False, False]]
    # problem 0: k=4 tie a/b -> a (right) = 1 ; problem 1: r (wrong) = 0 ; problem 2: m (wrong) = 0
    assert maj_at_k(answers, correct, 4) == pytest.approx(1 / 3)
    # k=2: p0 (a,a)=1,(b,b)=0 -> .5; p1 (q,r) tie q=1,(r,r)=0 -> .5; p2 (m,n)->m=0, (o,m)->o=0 -> 0
    assert maj_at_k(answers, correct, 2) == pytest.approx((0.5 + 0.5 + 0.0) / 3)


def test_maj_at_k_numpy_inputs():
    answers = np.array([[1, 2, 2, 3], [4, 4, 5, 5]])
    correct = np.array([[False, True, True, False], [False, False, True, True]])
    assert maj_at_k(answers, correct, 4) == pytest.approx(0.5)
    assert maj_at_k(answers, correct, 2) == pytest.approx(reference_maj_at_k(answers.tolist(), correct.tolist(), 2))


def test_maj_at_k_none_answers_are_hashable_values():
    # unparsable answers (None) are just another answer value
    answers = [[None, None, "5", "5", None]]
    correct = [[False, False, True, True, False]]
    assert maj_at_k(answers, correct, 5) == pytest.approx(0.0)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=1, max_value=4),
    st.integers(min_value=1, max_value=10),
    st.integers(min_value=1, max_value=10),
    st.data(),
)
def test_property_maj_at_k_matches_reference(problems, n, k, data):
    k = min(k, n)
    answers, correct = [], []
    for _ in range(problems):
        gold = data.draw(st.integers(0, 3))
        row = data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
        answers.append(row)
        correct.append([a == gold for a in row])
    got = maj_at_k(answers, correct, k)
    assert 0.0 <= got <= 1.0
    assert got == pytest.approx(reference_maj_at_k(answers, correct, k), abs=1e-12)
    if k == 1:
        assert got == pytest.approx(float(np.mean(correct)), abs=1e-12)


# --------------------------------------------------------------------------- degenerate groups


def test_degenerate_probability_hand_values():
    assert degenerate_probability(0.5, 8) == pytest.approx(2 * 0.5**8)  # 0.78 %
    assert degenerate_probability(0.1, 8) == pytest.approx(0.9**8 + 0.1**8)  # ~43 %
    assert degenerate_probability(0.9, 8) == pytest.approx(0.9**8 + 0.1**8)
    assert degenerate_probability(0.05, 8) == pytest.approx(0.95**8 + 0.05**8)  # ~66 %
    assert degenerate_probability(0.0, 8) == pytest.approx(1.0)
    assert degenerate_probability(1.0, 4) == pytest.approx(1.0)
    assert degenerate_probability(0.3, 1) == pytest.approx(1.0)  # G = 1: always degenerate
    assert degenerate_probability(0.5, 8) == pytest.approx(0.0078125)
    assert round(degenerate_probability(0.1, 8), 2) == 0.43
    assert round(degenerate_probability(0.05, 8), 2) == 0.66


def test_degenerate_probability_array():
    p = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    out = degenerate_probability(p, 2)
    np.testing.assert_allclose(np.asarray(out, dtype=float), p**2 + (1 - p) ** 2, rtol=1e-12)


def test_degenerate_fraction_hand_values():
    r = torch.tensor([1.0, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0])
    assert degenerate_fraction(r, 4) == pytest.approx(2 / 3)
    assert 0.0 <= float(degenerate_fraction(r, 4)) <= 1.0
    assert degenerate_fraction(r, 2) == pytest.approx(5 / 6)  # (1,1)(1,1)(0,1)(0,0)(0,0)(0,0)
    assert degenerate_fraction(r, 12) == pytest.approx(0.0)
    assert degenerate_fraction(r, 1) == pytest.approx(1.0)


def test_degenerate_fraction_non_binary_rewards():
    r = torch.tensor([0.5, 0.5, 0.5, 0.25, 0.0, 0.0])
    assert degenerate_fraction(r, 2) == pytest.approx(2 / 3)
    assert degenerate_fraction(r, 3) == pytest.approx(0.5)  # (.5,.5,.5) equal, (.25,0,0) not


@pytest.mark.parametrize("n, g", [(7, 2), (5, 4), (3, 8)])
def test_degenerate_fraction_not_multiple_raises(n, g):
    with pytest.raises(ValueError):
        degenerate_fraction(torch.zeros(n), g)


def test_degenerate_fraction_statistically_matches_probability():
    g = torch.Generator().manual_seed(0)
    p, G, groups = 0.1, 8, 20000
    r = (torch.rand(groups * G, generator=g) < p).float()
    frac = degenerate_fraction(r, G)
    expected = degenerate_probability(p, G)
    assert abs(frac - expected) < 5 * math.sqrt(expected * (1 - expected) / groups)
