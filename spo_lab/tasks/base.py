"""What the trainer needs from a task: problems to load and a reward to score completions.

A *task* is anything with

    task.name                       short name, e.g. "arith" or "math"
    task.load(split)                -> list of problems (split: "train", "validation", "test", ...)
    task.reward(completions, problems) -> list of rewards in [0, 1], one per completion (TRL's reward callables)
    task.extract(completion)        -> the final answer a completion gives (hashable), or None
    task.breakdown_key              a metadata key to break metrics down by ("level", "source"), or None

and a *problem* is anything with ``id`` (a stable content id), ``prompt`` (the exact text the
policy continues), ``answer`` (the reference answer, a string) and ``meta`` (a mapping of free-form
metadata such as a difficulty level or the benchmark it came from). :class:`Problem` is the plain
container; a task may use a richer class with the same four attributes (the arithmetic task does).

Tasks know nothing of engines or the trainer: a reward is a plain function of the text, like the
reward callables of TRL. ``extract`` is what maj@k votes over (:mod:`spo_lab.metrics`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["Problem", "Task", "content_id", "problems_fingerprint", "breakdown_key", "breakdown_values"]


@dataclass(frozen=True)
class Problem:
    """One prompt with its reference answer.

    Attributes:
        id: stable content id (see :func:`content_id`), the key of the tracker's entry.
        prompt: the exact text given to the policy (after any chat template).
        answer: reference answer as a string.
        meta: free-form metadata (level, source, ...), used for per-group metrics.
    """

    id: str
    prompt: str
    answer: str
    meta: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Task(Protocol):
    """The task protocol (see the module docstring)."""

    name: str
    breakdown_key: str | None

    def load(self, split: str) -> list: ...

    def reward(self, completions: Sequence[str], problems: Sequence) -> list[float]: ...

    def extract(self, completion: str) -> Hashable | None: ...


def breakdown_key(task) -> str | None:
    """The metadata key a task's metrics are broken down by (``breakdown_key``; ``group_key``, its old
    name, still read for one release), or None. Not the G of GRPO's groups."""
    return getattr(task, "breakdown_key", getattr(task, "group_key", None))


def breakdown_values(task, problems) -> list[float] | None:
    """Each problem's value of the task's breakdown key (e.g. its level), or None when the task has no key or a
    problem lacks a numeric value for it."""
    key = breakdown_key(task)
    if key and all(isinstance(p.meta.get(key), (int, float)) for p in problems):
        return [float(p.meta[key]) for p in problems]
    return None


def content_id(*parts: str, length: int = 12) -> str:
    """A stable id from content: the first ``length`` hex characters of sha1 over ``parts``.

    Unlike Python's ``hash()`` it does not change between processes. With one part this is
    ``sha1(part)``, the arithmetic task's historical ``problem_id``.
    """
    h = hashlib.sha1(parts[0].encode("utf-8")) if len(parts) == 1 else hashlib.sha1(
        json.dumps(list(parts), ensure_ascii=False).encode("utf-8"))
    return h.hexdigest()[:length]


def problems_fingerprint(problems: Sequence) -> str:
    """sha1 over every problem's (id, prompt, answer), in order: changes when any text changes."""
    h = hashlib.sha1()
    for p in problems:
        h.update(json.dumps([p.id, p.prompt, p.answer], ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()
