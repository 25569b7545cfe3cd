"""Tools the policy can call during a rollout.

    from spo_lab.tools import PythonSandbox, ToolEngine

- :mod:`spo_lab.tools.sandbox` -- :class:`PythonSandbox`: policy-written Python in a fresh, limited,
  isolated process per call (namespaces where the machine allows them; see its docstring).
- :mod:`spo_lab.tools.engine` -- :class:`ToolEngine`: a rollout engine around any engine (HF, vLLM)
  whose responses call the sandbox between turns, ReTool style; tool output is attended to and never
  trained on (``loss_mask`` 0).
"""

from __future__ import annotations

from .engine import ToolEngine, Turn
from .sandbox import PythonSandbox, SandboxResult, SandboxUnavailable

__all__ = ["PythonSandbox", "SandboxResult", "SandboxUnavailable", "ToolEngine", "Turn"]
