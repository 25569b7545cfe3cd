"""Sampled evaluation of a trained policy: unbiased pass@k and maj@k curves (SPO_SPEC Sec. 4, 6).

The paper evaluates each benchmark problem with 32 samples at temperature 0.6, top_p 0.95,
top_k 20 and reports maj@32, avg@32 and pass@k curves. Here the same protocol runs on the held-out
addition prompts:

    answers, correct = sample_answers(engine, problems, n=32)
    curves = pass_and_maj_curves(answers, correct, ks=(1, 2, 4, 8, 16, 32))

pass@k uses the unbiased estimator of :func:`spo_lab.metrics.pass_at_k` on all n samples (not k
fresh ones); maj@k votes within disjoint blocks of k samples (:func:`spo_lab.metrics.maj_at_k`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .metrics import maj_at_k, pass_at_k
from .task import parse_answer

__all__ = ["sample_answers", "pass_and_maj_curves", "PAPER_EVAL"]

PAPER_EVAL = dict(temperature=0.6, top_p=0.95, top_k=20)
"""The paper's evaluation sampling settings."""


@torch.no_grad()
def sample_answers(engine, problems, n: int = 32, *, temperature: float = 0.6, top_p: float = 0.95,
                   top_k: int = 20, max_new_tokens: int = 8, batch: int = 1024, seed: int = 0):
    """n sampled answers per problem.

    Returns:
        ``(answers, correct)``: an object array ``[problems, n]`` of parsed integers (None when a
        completion does not parse) and a bool array ``[problems, n]``. Sampling runs on a forked RNG
        seeded by ``seed``, so evaluation leaves the caller's random stream untouched.
    """
    answers = np.empty((len(problems), n), dtype=object)
    per = max(1, batch // n)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for s in range(0, len(problems), per):
            chunk = problems[s : s + per]
            r = engine.generate([p.prompt for p in chunk], n, temperature=temperature, top_p=top_p,
                                top_k=top_k, max_new_tokens=max_new_tokens)
            answers[s : s + len(chunk)] = np.array([parse_answer(t) for t in r.texts], dtype=object).reshape(-1, n)
    truth = np.array([int(p.answer) for p in problems], dtype=object)[:, None]
    correct = answers == truth
    return answers, correct.astype(bool)


def pass_and_maj_curves(answers, correct, ks=(1, 2, 4, 8, 16, 32)) -> pd.DataFrame:
    """One row per k: mean pass@k over problems, maj@k, and avg@n (the plain sample accuracy)."""
    correct = np.asarray(correct, dtype=bool)
    n = correct.shape[1]
    c = correct.sum(axis=1)
    rows = [{"k": k, "pass@k": float(np.mean(pass_at_k(n, c, k))), "maj@k": maj_at_k(answers, correct, k)}
            for k in ks if k <= n]
    out = pd.DataFrame(rows)
    out["avg@n"] = float(correct.mean())
    return out
