"""A stand-in ``vllm`` package for tests that need none: the few names :mod:`spo_lab.engines.vllm` imports."""

from __future__ import annotations

import importlib
import sys
import types


def vllm_engine_module(monkeypatch, *, LLM, SamplingParams=object, TokensPrompt=dict, on_cpu: bool = True):
    """Install a stand-in ``vllm`` (``LLM``, ``SamplingParams``, ``TokensPrompt``, ``LoRARequest``, the platform)
    and return a fresh :mod:`spo_lab.engines.vllm` bound to it; the real modules (or their absence) come back
    when the test ends."""
    mods = {name: types.ModuleType(name) for name in ("vllm", "vllm.inputs", "vllm.lora", "vllm.lora.request",
                                                      "vllm.platforms")}
    mods["vllm"].LLM, mods["vllm"].SamplingParams = LLM, SamplingParams
    mods["vllm.inputs"].TokensPrompt = TokensPrompt
    mods["vllm.lora.request"].LoRARequest = object
    mods["vllm.platforms"].current_platform = types.SimpleNamespace(is_cpu=lambda: on_cpu)
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    # record the real engine module (or its absence) so the undo puts it back, then import a copy bound to the fakes
    monkeypatch.setitem(sys.modules, "spo_lab.engines.vllm", types.ModuleType("spo_lab.engines.vllm"))
    del sys.modules["spo_lab.engines.vllm"]
    return importlib.import_module("spo_lab.engines.vllm")
