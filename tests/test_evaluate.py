"""Sampled evaluation: shapes, determinism, and curves consistent with the metric definitions."""

from __future__ import annotations

import numpy as np

from spo_lab.tasks import arith as task
from spo_lab.evaluate import pass_and_maj_curves, sample_answers
from spo_lab.metrics import pass_at_k
from spo_lab.engines import HFEngine
from spo_lab.models import load_policy


def test_sample_answers_and_curves(toy):
    model, tok = load_policy(toy / "model")
    problems = task.load_problems("test", toy / "data")[:6]
    answers, correct = sample_answers(HFEngine(model, tok), task.ArithTask(), problems, n=8, temperature=1.5, seed=3)
    assert answers.shape == correct.shape == (6, 8) and correct.dtype == bool
    again, _ = sample_answers(HFEngine(model, tok), task.ArithTask(), problems, n=8, temperature=1.5, seed=3)
    assert (answers == again).all()  # seeded
    for i, p in enumerate(problems):  # correctness is the exact answer check
        assert all(correct[i, j] == (answers[i, j] == int(p.answer)) for j in range(8))
    curves = pass_and_maj_curves(answers, correct, ks=(1, 2, 4, 8, 16))
    assert curves.k.tolist() == [1, 2, 4, 8]  # k > n is left out
    assert np.isclose(curves["pass@k"].iloc[0], correct.mean())  # pass@1 = avg@n
    assert (np.diff(curves["pass@k"]) >= -1e-12).all()


def test_curves_on_hand_made_samples():
    answers = np.array([[5, 5, 3, 3], [1, 2, 2, 9]], dtype=object)
    correct = np.array([[True, True, False, False], [False, True, True, False]])
    curves = pass_and_maj_curves(answers, correct, ks=(1, 2, 4)).set_index("k")
    assert curves.loc[1, "pass@k"] == 0.5
    assert np.isclose(curves.loc[2, "pass@k"], np.mean([pass_at_k(4, 2, 2)] * 2))
    # k = 4: problem 0 ties 5 vs 3 -> the first seen (5, correct); problem 1: 2 wins (correct)
    assert curves.loc[4, "maj@k"] == 1.0
    # k = 2, blocks [5,5] [3,3] -> 1, 0 ; [1,2] tie -> 1 (wrong), [2,9] tie -> 2 (right) -> 0.5
    assert curves.loc[2, "maj@k"] == 0.5
