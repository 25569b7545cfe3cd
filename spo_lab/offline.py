"""The offline pass that initialises SPO's value tracker (SPO_SPEC Sec. 3.3), cached by content.

Before training, n0 responses per training prompt are drawn from the initial policy and scored;
prompt x's k successes out of n0 give the tracker its prior (``SPO.init_from_counts``). The pass
is the price of a warm tracker: n0 x P responses, which at small scale can exceed the whole
training budget, so the trainer counts it separately (``responses_incl_init``).

    succ, trials = offline_counts(engine, task, problems, n0=8, temperature=1.0, max_new_tokens=8,
                                  seed=0, model_key=model_fingerprint(model), cache_dir="runs/cache")

The engine and task are used only through their protocols (:mod:`spo_lab.engines.base`,
:mod:`spo_lab.tasks.base`). The cache key covers the model (a cheap fingerprint, see
:func:`spo_lab.models.model_fingerprint`), every problem's id, prompt and answer text, the task,
n0, the sampling settings and the seed: change any of them and the pass runs again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from tqdm import tqdm

from .engines.base import seeded
from .tasks.base import problems_fingerprint

__all__ = ["offline_counts", "offline_cache_key"]


def offline_cache_key(task_name: str, problems, *, model_key: str, n0: int, temperature: float,
                      max_new_tokens: int, seed: int) -> str:
    """16 hex characters identifying one offline pass: model, data content, task and settings."""
    fp = hashlib.sha1()
    fp.update(json.dumps([model_key, task_name, problems_fingerprint(problems), n0, temperature,
                          max_new_tokens, seed]).encode())
    return fp.hexdigest()[:16]


def offline_counts(engine, task, problems, *, n0: int, temperature: float, max_new_tokens: int, seed: int,
                   model_key: str, cache_dir: str | Path | None = None, batch: int = 512, device=None,
                   progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(successes, trials)``, float64 ``[P]``: k successes out of n0 samples per problem (Sec. 3.3).

    The pass samples on its own seeded RNG (:func:`spo_lab.engines.base.seeded`), so a run that reads
    the cache and one that computes it continue with the same random stream. With ``cache_dir`` the
    counts are stored there as ``offline-<key>.pt`` (written atomically; parallel runs may race).
    """
    if n0 < 1:
        raise ValueError(f"n0 must be >= 1, got {n0}")
    path = None
    if cache_dir is not None:
        key = offline_cache_key(getattr(task, "name", type(task).__name__), problems, model_key=model_key, n0=n0,
                                temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
        path = Path(cache_dir) / f"offline-{key}.pt"
        if path.exists():
            succ, trials = torch.load(path, weights_only=True)
            if succ.shape != (len(problems),):
                raise ValueError(f"offline cache {path} holds {succ.shape[0]} prompts, expected {len(problems)}; "
                                 "delete it")
            return succ, trials
    succ = torch.zeros(len(problems), dtype=torch.float64)
    per = max(1, batch // n0)
    with seeded(seed + 10_000, device):
        for s in tqdm(range(0, len(problems), per), desc="offline init", disable=not progress, leave=False):
            chunk = problems[s : s + per]
            r = engine.generate([p.prompt for p in chunk], n0, temperature=temperature, max_new_tokens=max_new_tokens)
            rew = torch.tensor(task.score(r.texts, [p for p in chunk for _ in range(n0)]), dtype=torch.float64)
            succ[s : s + len(chunk)] = rew.view(-1, n0).sum(1)
    trials = torch.full_like(succ, float(n0))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save((succ, trials), tmp)
        os.replace(tmp, path)
    return succ, trials
