"""The policy: load a causal LM (full fine-tuning or a peft LoRA adapter) and score its responses.

    model, tokenizer = load_policy("Qwen/Qwen3-0.6B", dtype="bfloat16", device="cuda", lora=LoraSpec(r=32))
    logp = token_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask, temperature=1.0)

``load_policy`` reads any Hugging Face causal LM checkpoint, a local folder or a hub id, with the
Auto classes, safetensors only and never ``trust_remote_code``. The bundled tiny Qwen3
(``data/tiny-qwen3``, :mod:`spo_lab.tiny_model`) is loaded the same way. ``token_logprobs`` is the
trainer's scoring of a policy: the per-token log-probs the PPO ratio and the D(x) estimators use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["DEFAULT_MODEL_DIR", "LoraSpec", "load_policy", "resolve_device", "resolve_dtype", "token_logprobs",
           "is_lora", "is_adapter_folder", "base_model_path", "load_tokenizer", "model_fingerprint"]

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "data" / "tiny-qwen3"
"""The bundled warm-started tiny Qwen3, written by ``scripts/build_tiny_model.py``."""

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoraSpec:
    """A LoRA adapter to train instead of the full model (peft ``LoraConfig``)."""

    r: int = 16
    """adapter rank"""
    alpha: int = 32
    """scaling numerator: the update is (alpha / r) * B A"""
    dropout: float = 0.0
    """dropout on the adapter input"""
    target_modules: list[str] | str = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                                      "gate_proj", "up_proj", "down_proj"])
    """module names to adapt ("all-linear" for every linear layer but the output head)"""


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` -> cuda if available else cpu; anything else as given (``"cuda"`` without a GPU is an error)."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but torch sees no CUDA GPU (use --device cpu)")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None``/``"auto"`` -> float32 on CPU; bfloat16 on a GPU that supports it, else float16."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)} or 'auto', got {dtype!r}")
    return DTYPES[dtype]


def load_policy(
    path: str | Path | None = None, *, dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu",
    lora: LoraSpec | None = None, gradient_checkpointing: bool = False,
):
    """Load ``(model, tokenizer)``: a full causal LM, or the same wrapped with a fresh LoRA adapter.

    Args:
        path: a local model folder or a hub id (``"Qwen/Qwen3-0.6B"``; needs the hub or its cache).
            Defaults to the bundled tiny Qwen3.
        dtype: ``"float32" | "bfloat16" | "float16" | "auto"`` or a torch dtype (default: auto, see
            :func:`resolve_dtype`).
        device: ``"cpu" | "cuda" | "auto"`` or a torch device.
        lora: when given, the base weights are frozen and a peft LoRA adapter is trained.
        gradient_checkpointing: recompute activations in the backward pass (long responses).

    Returns the model in eval mode and its tokenizer, padding on the left (batched generation).
    Only safetensors weights are read and no code from the checkpoint is run. A folder holding a saved
    LoRA adapter (``adapter_config.json``, what a ``--lora-rank`` run writes to ``final_model/``) loads
    its base model with the adapter on top (trainable only when ``lora`` is given).
    """
    from transformers import AutoModelForCausalLM

    if path is None:
        path = DEFAULT_MODEL_DIR
    path_s = str(path)
    looks_local = path_s.startswith((".", "/", "~")) or Path(path_s).exists() or path_s.count("/") != 1
    if looks_local and not Path(path_s).expanduser().is_dir():
        hint = " (rebuild the bundled one with `python scripts/build_tiny_model.py --seed 0 --out data`)" \
            if Path(path_s).resolve() == DEFAULT_MODEL_DIR else ""
        raise FileNotFoundError(f"model folder {path_s!r} does not exist; pass a model folder or a hub id "
                                f"such as 'Qwen/Qwen3-0.6B'{hint}")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if is_adapter_folder(path_s):  # a trained LoRA adapter (what a LoRA run saves): its base model plus the adapter
        return _load_adapter(Path(path_s).expanduser(), dtype=dt, device=dev, trainable=lora is not None,
                             gradient_checkpointing=gradient_checkpointing)
    model = AutoModelForCausalLM.from_pretrained(path_s, dtype=dt, use_safetensors=True, trust_remote_code=False)
    tokenizer = load_tokenizer(path_s)
    model.to(dev)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        if gradient_checkpointing:
            model.enable_input_require_grads()
        cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                         target_modules=lora.target_modules, task_type="CAUSAL_LM", bias="none")
        model = get_peft_model(model, cfg)
    return model.eval(), tokenizer


def load_tokenizer(path: str | Path):
    """The tokenizer of a checkpoint, padding on the left (batched generation), with a pad token.

    Qwen3 has a pad token; for checkpoints with only ``<eos>``, ``<eos>`` pads (masked out everywhere).
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def is_adapter_folder(path: str | Path) -> bool:
    """True for a folder holding a saved peft adapter (``adapter_config.json``), not a full checkpoint."""
    return (Path(path).expanduser() / "adapter_config.json").is_file()


def _load_adapter(folder: Path, *, dtype, device, trainable: bool, gradient_checkpointing: bool):
    """``(model, tokenizer)`` for a saved peft adapter: the base model named in adapter_config.json + the adapter."""
    import json

    from peft import PeftModel

    config = folder / "adapter_config.json"
    base_path = json.loads(config.read_text()).get("base_model_name_or_path")
    if not base_path:
        raise ValueError(f"{config} names no base_model_name_or_path: cannot load the adapter's base model")
    base, tokenizer = load_policy(base_path, dtype=dtype, device=device, gradient_checkpointing=gradient_checkpointing)
    model = PeftModel.from_pretrained(base, str(folder), is_trainable=trainable)
    if (folder / "tokenizer_config.json").is_file():  # the trainer saves the tokenizer beside the adapter
        tokenizer = load_tokenizer(folder)
    return model.eval(), tokenizer


def base_model_path(model, default: str) -> str:
    """The checkpoint a vLLM engine should load for ``model``: a LoRA policy's base model, else ``default``."""
    if is_lora(model):
        return next(iter(model.peft_config.values())).base_model_name_or_path or default
    return default


def is_lora(model) -> bool:
    """True for a peft model (only the adapter is trained and synced)."""
    return hasattr(model, "peft_config")


def token_logprobs(
    model, prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor, response_mask: Tensor,
    *, temperature: float = 1.0,
) -> Tensor:
    """log pi(y_t | x, y_<t) for every response token, by one forward pass over prompt + response.

    Shapes: prompt ``[R, P]``, response ``[R, T]`` -> float32 ``[R, T]`` on the model's device (0 where
    response_mask is 0). Logits are divided by ``temperature`` first, as in sampling, so the result is
    the log-prob of the distribution the tokens were drawn from. Inputs may live on any device.
    """
    dev = next(model.parameters()).device
    input_ids = torch.cat([prompt_ids, response_ids], dim=1).to(dev)
    attn = torch.cat([prompt_mask, response_mask], dim=1).to(dev)
    position_ids = (attn.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attn, position_ids=position_ids, use_cache=False).logits
    p = prompt_ids.shape[1]
    logits = logits[:, p - 1 : -1].float() / temperature  # position t predicts token t + 1
    logp = torch.log_softmax(logits, dim=-1).gather(-1, response_ids.to(dev).unsqueeze(-1)).squeeze(-1)
    return logp * response_mask.to(dev, logp.dtype)


def model_fingerprint(model, values_per_tensor: int = 64) -> str:
    """A cheap content fingerprint of a model's weights (for cache keys), O(parameters count) not O(size).

    sha1 over every tensor's name, shape and dtype plus its first and last ``values_per_tensor`` values
    (read as float32, so bf16 works, copied to the CPU). Two checkpoints that differ only strictly
    inside a tensor's middle would collide; different trainings, seeds or models never do in practice.
    """
    import hashlib

    h = hashlib.sha1()
    for name, t in model.state_dict().items():
        flat = t.detach().reshape(-1)
        k = values_per_tensor
        probe = torch.cat([flat[:k], flat[-k:]]) if flat.numel() > 2 * k else flat
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(probe.float().cpu().numpy().tobytes())
    return h.hexdigest()
