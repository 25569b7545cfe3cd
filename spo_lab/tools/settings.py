"""The Python tool's settings, as every command line takes them: which engine they build, how they are checked.

``python -m spo_lab.train`` and ``python -m spo_lab.evaluate`` take the same ``--tool``, ``--max-turns``,
``--max-tool-chars``, ``--tool-timeout-s``, ``--tool-memory-mb``, ``--tool-waive`` and ``--tool-workers`` flags
(:class:`spo_lab.config.Config` declares them, with their help); the functions here read them from any object
that has those attributes (a :class:`~spo_lab.config.Config`, or a command line's parsed arguments).
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import UserError
from ..models import DEFAULT_MODEL_DIR
from ..tasks import task_class
from .latency import InjectedLatency, parse_latency

__all__ = ["tool_mode", "check_tool_settings", "build_tool_engine", "tool_task_kwargs", "tool_cache_suffix"]


def tool_mode(cfg) -> str:
    """``python`` or ``none``; ``--tool auto`` is ``python`` for a task that needs the tool (``needs_tool``: arith_tool)."""
    if cfg.tool != "auto":
        return cfg.tool
    return "python" if getattr(task_class(cfg.task), "needs_tool", False) else "none"


def check_tool_settings(cfg, bad) -> None:
    """The tool flags of :meth:`Config.validate` (``bad(name, why)`` raises the ValueError naming the flag)."""
    from .sandbox import WAIVABLE

    if cfg.tool not in ("auto", "none", "python"):
        bad("tool", "must be one of ('auto', 'none', 'python')")
    for name, low in (("max_turns", 1), ("max_tool_chars", 2), ("tool_memory_mb", 32), ("tool_workers", 0)):
        if getattr(cfg, name) < low:
            bad(name, f"must be >= {low}")
    if not (math.isfinite(cfg.tool_timeout_s) and cfg.tool_timeout_s > 0):
        bad("tool_timeout_s", "must be a finite number > 0")
    names = {n.strip() for n in cfg.tool_waive.split(",") if n.strip()}
    if names != {"all"} and not names <= set(WAIVABLE):
        bad("tool_waive", f"must be 'all' or names from {WAIVABLE}")
    try:
        parse_latency(cfg.tool_latency)
    except ValueError as err:
        bad("tool_latency", str(err).replace(f"latency {cfg.tool_latency!r}: ", "is not valid: "))
    if cfg.tool_latency != "none" and tool_mode(cfg) != "python":
        bad("tool_latency", "needs the tool (--tool python)")
    if cfg.task == "arith_tool" and Path(cfg.model).resolve() == DEFAULT_MODEL_DIR.resolve():
        bad("model", "is the addition model, whose tokenizer has no tool tags: --task arith_tool needs "
                     f"--model {DEFAULT_MODEL_DIR.parent / 'tiny-qwen3-tool'}")


def build_tool_engine(cfg, engine, *, announce: bool = True, command: str = "spo_lab.train"):
    """``engine`` as it is with the tool off; with ``--tool python`` a :class:`spo_lab.tools.ToolEngine` around it,
    running code in a :class:`spo_lab.tools.PythonSandbox` built from the ``--tool-*`` flags, whose protections
    are printed (``announce``). A protection this machine cannot give is a UserError naming ``--tool-waive`` of
    ``command`` (the command line whose flags ``cfg`` holds)."""
    from . import PythonSandbox, ToolEngine
    from .sandbox import SandboxUnavailable

    if tool_mode(cfg) != "python" or isinstance(engine, ToolEngine):
        return engine
    waive = {n.strip() for n in cfg.tool_waive.split(",") if n.strip()}
    try:
        box = PythonSandbox(timeout_s=cfg.tool_timeout_s, memory_mb=cfg.tool_memory_mb,
                            allow_missing="all" if waive == {"all"} else waive)
    except SandboxUnavailable as err:
        raise UserError(f"{err}\nWith {command}, waive them with --tool-waive "
                        f"{','.join(err.missing)}") from None
    if announce:
        print(box.describe(), flush=True)
    if cfg.tool_latency != "none":  # a slow environment, simulated: labelled injected wherever it is reported
        box = InjectedLatency(box, cfg.tool_latency, seed=cfg.seed)
        if announce:
            print(f"injected tool latency: {cfg.tool_latency} per call, capped at {cfg.tool_timeout_s} s", flush=True)
    return ToolEngine(engine, box, max_turns=cfg.max_turns, max_tool_chars=cfg.max_tool_chars,
                      tool_workers=cfg.tool_workers or None)


def tool_task_kwargs(cfg) -> dict:
    """What the task is built with when the tool is on: its class's ``tool_kwargs`` (math: the tool prompt)."""
    return dict(getattr(task_class(cfg.task), "tool_kwargs", {})) if tool_mode(cfg) == "python" else {}


def tool_cache_suffix(cfg) -> str:
    """Part of the offline pass's cache key: a pass with the tool is not a pass without ('' with the tool off)."""
    if tool_mode(cfg) != "python":
        return ""
    return f"+tool(turns={cfg.max_turns},chars={cfg.max_tool_chars})"
