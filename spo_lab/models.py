"""The policy: load a causal LM (full fine-tuning or a peft LoRA adapter) and score its responses.

    model, tokenizer = load_policy("Qwen/Qwen3-0.6B", dtype="bfloat16", device="cuda", lora=LoraSpec(r=32))
    logp = token_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask, temperature=1.0)

``load_policy`` reads any Hugging Face causal LM checkpoint, a local folder or a hub id, with the
Auto classes, safetensors only and never ``trust_remote_code``. The bundled tiny Qwen3
(``data/tiny-qwen3``, :mod:`spo_lab.tiny_model`) is loaded the same way. ``token_logprobs`` is the
trainer's scoring of a policy: the per-token log-probs the PPO ratio and the D(x) estimators use.

A model path that cannot work is refused before anything heavy loads, with a
:class:`~spo_lab.errors.UserError` naming the folder or file (:func:`check_model_path`): a training
run folder (its policy is in ``final_model/``), a folder without tokenizer files, a corrupt
safetensors file. :func:`check_context_length` refuses prompts that, with ``max_new_tokens``, do not
fit the model's positions -- before a 1 MB prompt tries to allocate tens of GB.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .errors import UserError, shorten

__all__ = ["DEFAULT_MODEL_DIR", "LoraSpec", "load_policy", "resolve_device", "resolve_dtype", "token_logprobs",
           "is_lora", "is_adapter_folder", "base_model_path", "load_tokenizer", "model_fingerprint",
           "check_model_path", "check_context_length", "context_limit", "TOKENIZER_FILES"]

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "data" / "tiny-qwen3"
"""The bundled warm-started tiny Qwen3, written by ``scripts/build_tiny_model.py``."""

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model",
                   "vocab.txt")
"""Any one of these makes a folder's tokenizer loadable; without them transformers builds an empty one."""


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
        raise UserError(f"--device {str(device)!r} asked for, but torch sees no CUDA GPU (use --device cpu)")
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
        raise UserError(f"--dtype must be one of {sorted(DTYPES)} or 'auto', got {dtype!r}")
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
    local = check_model_path(path_s)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if is_adapter_folder(path_s):  # a trained LoRA adapter (what a LoRA run saves): its base model plus the adapter
        return _load_adapter(Path(path_s).expanduser(), dtype=dt, device=dev, trainable=lora is not None,
                             gradient_checkpointing=gradient_checkpointing)
    try:
        model = AutoModelForCausalLM.from_pretrained(path_s, dtype=dt, use_safetensors=True, trust_remote_code=False)
    except Exception as err:
        if local:  # name the corrupt weights file, if that is what failed
            _check_safetensors(Path(path_s).expanduser(), err)
        raise
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
    if len(tokenizer) == 0:
        raise UserError(f"the tokenizer of {path} is empty (no tokenizer files there?); copy the tokenizer "
                        "files of the model it was trained from into the folder")
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_model_path(path: str | Path) -> bool:
    """Refuse a model path that cannot load, before anything heavy loads; True for a local folder.

    UserError (FileNotFoundError for a missing folder) naming the folder when it is: missing; a
    training run folder (``config.json`` + ``metrics.jsonl`` or ``final_model/``: its policy is in
    ``final_model/``); a folder with neither weights nor an adapter; a full model without tokenizer files
    (transformers would build an empty tokenizer that fails deep inside generation). A string like
    ``"Qwen/Qwen3-0.6B"`` that is not a local path is a hub id and passes (False).
    """
    path_s = str(path)
    p = Path(path_s).expanduser()
    looks_local = path_s.startswith((".", "/", "~")) or p.exists() or path_s.count("/") != 1
    if not looks_local:
        return False
    if not p.is_dir():
        hint = " (rebuild the bundled one with `python scripts/build_tiny_model.py --seed 0 --out data`)" \
            if p.resolve() == DEFAULT_MODEL_DIR else ""
        if p.exists():
            raise UserError(f"model folder {path_s!r} is a file; pass the folder that holds config.json, the "
                            "weights and the tokenizer")
        raise FileNotFoundError(f"model folder {path_s!r} does not exist; pass a model folder or a hub id "
                                f"such as 'Qwen/Qwen3-0.6B'{hint}")
    if (p / "config.json").is_file() and ((p / "metrics.jsonl").exists() or (p / "final_model").is_dir()) \
            and not any(p.glob("*.safetensors")):
        final = p / "final_model"
        where = (f"use {final}" if final.is_dir() else
                 f"this run saved no final_model/ (its checkpoint is {p / 'checkpoint.pt'})")
        raise UserError(f"{path_s} is a training run folder, not a model: its trained policy is in final_model/; "
                        f"{where}")
    if is_adapter_folder(p):
        return True
    if not (p / "config.json").is_file() or not (any(p.glob("*.safetensors")) or any(p.glob("*.bin"))):
        raise UserError(f"model folder {path_s!r} holds no model (config.json and *.safetensors weights); pass a "
                        "Hugging Face model folder or a hub id such as 'Qwen/Qwen3-0.6B'")
    if not any((p / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(f"model folder {path_s!r} has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...); "
                        "copy the tokenizer of the model it was trained from into it (tokenizer.save_pretrained)")
    return True


def _check_safetensors(folder: Path, err: Exception) -> None:
    """After a failed load: UserError naming the first ``*.safetensors`` file whose header cannot be read."""
    from safetensors import safe_open

    for f in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as st:
                for name in st.keys():  # noqa: SIM118 - safe_open has no __iter__
                    st.get_slice(name)
        except Exception as bad:  # noqa: BLE001 - any failure to read means corrupt
            raise UserError(f"{f} is corrupt or truncated ({type(bad).__name__}: {str(bad)[:200]}); re-copy or "
                            "re-save the model") from err


def context_limit(model_or_config, max_len: int | None = None) -> int | None:
    """The longest prompt + response the model takes: its ``max_position_embeddings`` (or the like).

    ``model_or_config``: a model (its ``.config``), a transformers config or a dict. ``max_len`` (e.g.
    vLLM's ``max_model_len``) lowers it. None when the config states no limit.
    """
    config = getattr(model_or_config, "config", model_or_config)
    get = config.get if isinstance(config, dict) else lambda k: getattr(config, k, None)
    limits = [v for k in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
              if isinstance(v := get(k), int) and v > 0][:1]
    if max_len:
        limits.append(int(max_len))
    return min(limits) if limits else None


def check_context_length(model_or_config, tokenizer, prompts: Sequence, max_new_tokens: int, *,
                         source: str = "the prompts", max_len: int | None = None) -> int | None:
    """UserError when the longest prompt plus ``max_new_tokens`` exceeds the model's context.

    ``prompts``: problems (their ``.prompt``) or strings, tokenised as the engines do
    (``add_special_tokens=False``). The error names the longest prompt's position in ``source`` and
    its id, its length in tokens and the limit. Returns the longest prompt's length (None: no prompts).
    Beyond ``max_position_embeddings`` a model computes garbage, or allocates memory for a sequence it
    cannot process; refusing here costs one tokenizer pass.
    """
    limit = context_limit(model_or_config, max_len)
    if not prompts:
        return None
    texts = [p if isinstance(p, str) else p.prompt for p in prompts]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    i = max(range(len(lengths)), key=lengths.__getitem__)
    if limit is not None and lengths[i] + max_new_tokens > limit:
        pid = "" if isinstance(prompts[i], str) else f" (id {getattr(prompts[i], 'id', '?')})"
        raise UserError(f"prompt {i}{pid} of {source} is {lengths[i]} tokens long; with --max-new-tokens "
                        f"{max_new_tokens} that is {lengths[i] + max_new_tokens} tokens, more than the model's "
                        f"context of {limit} (max_position_embeddings); shorten or drop that prompt, or lower "
                        f"--max-new-tokens (prompt starts {shorten(texts[i][:80], 100)})")
    return lengths[i]


def is_adapter_folder(path: str | Path) -> bool:
    """True for a folder holding a saved peft adapter (``adapter_config.json``), not a full checkpoint."""
    return (Path(path).expanduser() / "adapter_config.json").is_file()


def _load_adapter(folder: Path, *, dtype, device, trainable: bool, gradient_checkpointing: bool):
    """``(model, tokenizer)`` for a saved peft adapter: the base model named in adapter_config.json + the adapter."""
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
