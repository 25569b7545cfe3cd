"""Tools the policy can call during a rollout.

    from spo_lab.tools import PythonSandbox

- :mod:`spo_lab.tools.sandbox` -- :class:`PythonSandbox`: policy-written Python in a fresh, limited,
  isolated process per call (namespaces where the machine allows them; see its docstring).
"""

from __future__ import annotations

from .sandbox import PythonSandbox, SandboxResult, SandboxUnavailable

__all__ = ["PythonSandbox", "SandboxResult", "SandboxUnavailable"]
