"""Sampled evaluation of a policy through its task's own reward: accuracy, pass@k and maj@k.

Two entry points:

- :func:`accuracy` -- what the trainer logs every ``eval_every`` steps: greedy and one-sample accuracy
  on held-out problems, overall and per metadata group (the task's ``group_key``, e.g. level).
- :func:`sample_answers` + :func:`pass_and_maj_curves` -- the paper's protocol (SPO_SPEC Sec. 4, 6):
  n samples per problem at temperature 0.6, top_p 0.95, top_k 20, then maj@k, avg@n and unbiased
  pass@k curves.

    answers, correct = sample_answers(engine, task, problems, n=32)
    curves = pass_and_maj_curves(answers, correct, ks=(1, 2, 4, 8, 16, 32))

Correctness is ``task.score`` and the voted answer ``task.extract``: nothing here re-implements a
task's answer check. pass@k uses the unbiased estimator of :func:`spo_lab.metrics.pass_at_k` on all
n samples (not k fresh ones); maj@k votes within disjoint blocks of k samples
(:func:`spo_lab.metrics.maj_at_k`). Sampling runs on a forked, seeded RNG
(:func:`spo_lab.engines.base.seeded`), so evaluating never changes a training run's random stream.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd
import torch

from .engines.base import seeded
from .metrics import maj_at_k, pass_at_k

__all__ = ["accuracy", "sample_answers", "pass_and_maj_curves", "PAPER_EVAL"]

PAPER_EVAL = dict(temperature=0.6, top_p=0.95, top_k=20)
"""The paper's evaluation sampling settings."""


@torch.no_grad()
def accuracy(engine, task, problems, *, temperature: float, max_new_tokens: int, seed: int, device=None,
             prefix: str = "eval") -> dict[str, float]:
    """Greedy and one-sample (at ``temperature``) accuracy over ``problems``, overall and per group.

    Keys: ``{prefix}/greedy_acc``, ``{prefix}/sampled_acc``, and ``{prefix}/greedy_acc/{key}={value}``
    (likewise sampled) for each value of the task's ``group_key`` metadata, when it has one.
    """
    prompts = [p.prompt for p in problems]
    key = getattr(task, "group_key", None)
    out: dict[str, float] = {}
    with seeded(seed, device):
        for name, greedy in (("greedy", True), ("sampled", False)):
            r = engine.generate(prompts, 1, temperature=temperature, max_new_tokens=max_new_tokens, greedy=greedy)
            scores = torch.tensor(task.score(r.texts, problems), dtype=torch.float64)
            out[f"{prefix}/{name}_acc"] = float(scores.mean())
            if key:
                groups: dict = defaultdict(list)
                for p, s in zip(problems, scores.tolist()):
                    groups[p.meta.get(key)].append(s)
                for g in sorted(groups, key=str):
                    out[f"{prefix}/{name}_acc/{key}={g}"] = float(np.mean(groups[g]))
    return out


@torch.no_grad()
def sample_answers(engine, task, problems, n: int = 32, *, temperature: float = 0.6, top_p: float = 0.95,
                   top_k: int = 20, max_new_tokens: int = 8, batch: int = 1024, seed: int = 0, device=None):
    """n sampled answers per problem.

    Returns:
        ``(answers, correct)``: an object array ``[problems, n]`` of extracted answers
        (``task.extract``; None when a completion gives none) and a bool array ``[problems, n]``
        (``task.score`` > 0.5).
    """
    answers = np.empty((len(problems), n), dtype=object)
    correct = np.zeros((len(problems), n), dtype=bool)
    per = max(1, batch // n)
    with seeded(seed, device):
        for s in range(0, len(problems), per):
            chunk = problems[s : s + per]
            r = engine.generate([p.prompt for p in chunk], n, temperature=temperature, top_p=top_p,
                                top_k=top_k, max_new_tokens=max_new_tokens)
            answers[s : s + len(chunk)] = np.array([task.extract(t) for t in r.texts], dtype=object).reshape(-1, n)
            scores = task.score(r.texts, [p for p in chunk for _ in range(n)])
            correct[s : s + len(chunk)] = (np.asarray(scores, dtype=np.float64) > 0.5).reshape(-1, n)
    return answers, correct


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
