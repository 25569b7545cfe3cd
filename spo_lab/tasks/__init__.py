"""Tasks: the problems a policy is trained on and the reward that scores its completions.

    from spo_lab.tasks import get_task
    task = get_task("arith")                    # graded addition, the bundled tiny reproduction
    task = get_task("math", source="dapo")      # DAPO-Math-17k + the five AIME-style benchmarks
    task = get_task("arith_tool")               # multiplication, with the Python tool (data/tiny-qwen3-tool)

Every task follows the protocol of :mod:`spo_lab.tasks.base`; the trainer picks one by name
(``--task``), or takes any object with the same methods (``train(cfg, task=...)``).
"""

from __future__ import annotations

import importlib

from .base import Problem, Task, breakdown_key, content_id, problems_fingerprint

__all__ = ["Problem", "Task", "content_id", "problems_fingerprint", "TASKS", "get_task", "task_class", "breakdown_key"]

TASKS: dict[str, str] = {
    "arith": "spo_lab.tasks.arith:ArithTask",
    "math": "spo_lab.tasks.math:MathTask",
    "arith_tool": "spo_lab.tasks.arith_tool:ArithToolTask",
}
"""Task name -> ``module:class``; imported on first use (the math task needs ``datasets``)."""


def task_class(name: str) -> type:
    """The class registered as ``name`` (not built: its class attributes, e.g. ``splits``, need no data)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def get_task(name: str, **kwargs) -> Task:
    """Build the task registered as ``name`` with its keyword arguments (e.g. ``data_dir=``)."""
    return task_class(name)(**kwargs)
