"""Named run profiles for real Qwen3 models, with a GPU-memory estimate printed before anything loads.

    python -m spo_lab.profiles          # every profile, its estimate and the card it is sized for
    python -m spo_lab.profiles colab    # one profile: settings, memory breakdown, check against this GPU
    torchrun --nproc_per_node 8 -m spo_lab.profiles gpu80x8 --train   # a profile sized for 8 GPUs, one process each
    cfg = spo_lab.profiles.apply_profile("colab", steps=100)   # a validated spo_lab.train.Config

A profile is a dict of :class:`spo_lab.train.Config` overrides, ``engine_kwargs`` for the vLLM engine
(:func:`apply_profile` puts each in the Config field ``vllm_<name>``, e.g. ``vllm_gpu_memory_utilization``)
and ``estimate_kwargs`` (what the Config does not say but memory depends on: the prompt length, ...).

The memory model (:func:`estimate_memory`) is arithmetic on the published architecture, not a
measurement. Units are GiB (2**30 bytes, what torch reports). Accuracy: weights, gradients and optimizer
state within ~5%; the vLLM term is what vLLM reserves (utilisation x card); activations and logits
within a factor of ~1.5 either way (allocator fragmentation, kernel workspaces and padding move them).
Checked against peak RSS on a CPU (fp32, random-init Qwen3-0.6B-shaped models with 2-8 layers, one
token_logprobs forward + backward): activations + logits came out 1.03-1.34x the measurement, never below;
the bf16 GPU path (an extra fp32 copy of the logits) and vLLM are not measured.
Read the total as +-30%: a verdict with less than ~15% headroom is a "maybe", found out by running.

Several processes (``torchrun``, :mod:`spo_lab.distributed`; ``processes`` below, one GPU each) are data
parallel: every GPU holds a full replica of the weights, gradients and AdamW state (nothing is sharded),
and what shrinks is the per-GPU work -- each process generates R / N of the responses, trains on 1 / N
of every mini-batch and scores 1 / N of D's rows. So N GPUs buy speed and a larger global batch, not
room for a larger model: a state that does not fit one GPU needs sharded training (FSDP), which
spo_lab does not do. The GPU numbers here are estimates until a GPU run measures them.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import warnings
from dataclasses import dataclass, field

GiB = 2**30
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class QwenArch:
    """The numbers of a Qwen3 ``config.json`` that memory depends on."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int = 151936
    tied: bool = True

    @property
    def n_params(self) -> int:
        """Parameter count: attention (q, k, v, o), SwiGLU MLP, 2 RMSNorms + q/k-norms per layer, embeddings."""
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        layer = h * q + 2 * h * kv + q * h + 3 * h * self.intermediate + 2 * h + 2 * self.head_dim
        return self.layers * layer + self.vocab * h * (1 if self.tied else 2) + h

    def lora_params(self, rank: int) -> int:
        """A LoRA adapter of rank r on q, k, v, o, gate, up, down (LoraSpec's default): r * (in + out) each."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return rank * self.layers * ((h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h))

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


# From the models' config.json files as published on the Hugging Face hub (Qwen/Qwen3-*). Their parameter
# counts (n_params) reproduce the published totals exactly: 596,049,920 / 1,720,574,976 / 4,022,468,096 /
# 8,190,735,360 (tests/test_profiles.py checks). Qwen3-8B is the only one without tied embeddings.
QWEN3 = {
    "Qwen3-0.6B": QwenArch("Qwen3-0.6B", 1024, 28, 16, 8, 128, 3072),
    "Qwen3-1.7B": QwenArch("Qwen3-1.7B", 2048, 28, 16, 8, 128, 6144),
    "Qwen3-4B": QwenArch("Qwen3-4B", 2560, 36, 32, 8, 128, 9728),
    "Qwen3-8B": QwenArch("Qwen3-8B", 4096, 36, 32, 8, 128, 12288, tied=False),
}


def get_arch(model) -> QwenArch:
    """A QwenArch as it is, or the one of a name / hub id / local path ending in a known model's name."""
    if isinstance(model, QwenArch):
        return model
    tail = str(model).rstrip("/").split("/")[-1].lower()
    for key, arch in QWEN3.items():
        if tail in (key.lower(), key.lower() + "-base"):
            return arch
    raise ValueError(f"no architecture known for model {model!r}; known: {sorted(QWEN3)} (or pass a QwenArch)")


@dataclass
class MemoryEstimate:
    """Peak GPU memory of one spo_lab training process, in GiB; see :func:`estimate_memory`."""

    model: str
    params: int
    trainable: int
    weights_gb: float
    grads_gb: float
    optimizer_gb: float
    engine_gb: float
    overhead_gb: float
    activations_gb: float
    logits_gb: float
    scoring_gb: float
    generate_gb: float
    kv_cache_gb: float
    kv_tokens: int
    rows_per_forward: int
    engine_sleeps: bool = False
    assumptions: list[str] = field(default_factory=list)

    @property
    def static_gb(self) -> float:
        """Held all run long: weights, gradients, optimizer state, CUDA overhead, the vLLM reservation
        (unless vLLM sleeps during the update: then it is part of the other phases)."""
        return (self.weights_gb + self.grads_gb + self.optimizer_gb + self.overhead_gb
                + (0.0 if self.engine_sleeps else self.engine_gb))

    @property
    def transient_gb(self) -> float:
        """The largest phase on top: a training mini-batch, the D re-scoring pass, or generation."""
        awake = self.engine_gb if self.engine_sleeps else 0.0  # vLLM is awake only while generating
        return max(self.activations_gb + self.logits_gb, self.scoring_gb, self.generate_gb + awake)

    @property
    def total_gb(self) -> float:
        return self.static_gb + self.transient_gb

    def table(self) -> str:
        rows = [("weights (policy, incl. adapter)", self.weights_gb), ("gradients", self.grads_gb),
                ("optimizer (AdamW states)", self.optimizer_gb), ("vLLM engine reservation", self.engine_gb),
                ("CUDA context + allocator slack", self.overhead_gb),
                (f"activations, {self.rows_per_forward} rows/forward", self.activations_gb),
                ("logits + fp32 log-softmax", self.logits_gb), ("D re-scoring pass (no grad)", self.scoring_gb),
                ("HF generate: KV cache + logits", self.generate_gb), ("peak = static + max(phase)", self.total_gb)]
        lines = [f"{self.model}: {self.params / 1e9:.2f} B params, {self.trainable / 1e6:,.1f} M trainable"]
        lines += [f"  {k:<36}{v:8.2f} GiB" for k, v in rows]
        lines[-1] += "  (+-30%)"
        if self.engine_gb:
            lines.append(f"  (vLLM KV cache inside its reservation ~{self.kv_cache_gb:.1f} GiB = "
                         f"{self.kv_tokens:,} tokens)")
        lines += [f"  - {a}" for a in self.assumptions]
        return "\n".join(lines)

    __str__ = table


def estimate_memory(
    model, *, lora_rank: int = 0, dtype_bytes: int = 2, responses_per_step: int = 64, mini_batches: int = 1,
    max_prompt_tokens: int = 512, max_new_tokens: int = 1024, gradient_checkpointing: bool = False,
    engine: str = "vllm", vllm_gpu_memory_utilization: float = 0.5, gpu_memory_gb: float = 80.0,
    rows_per_forward: int | None = None, score_passes: int = 2, fp32_master: bool = False,
    ref_model: bool = False, overhead_gb: float = 0.75, vllm_sleep: bool = False, processes: int = 1,
) -> MemoryEstimate:
    """Estimate the peak memory of ``spo_lab.train`` on one GPU (policy and vLLM colocated).

    N = parameters, b = ``dtype_bytes``, R = responses generated on this GPU (``responses_per_step`` /
    ``processes``: each data-parallel process generates its share), r = rows (responses) per forward =
    responses_per_step / (mini_batches x processes) unless ``rows_per_forward`` says otherwise, s = P + T
    (prompt + response tokens, every row padded to the caps: the worst case), V = vocab, L = layers,
    h = hidden, I = intermediate. The model state below is per GPU whatever ``processes`` is (replicas).

    - weights = N b (+ a frozen reference copy when ``ref_model``), plus the LoRA adapter in fp32 (peft
      upcasts adapters of bf16/fp16 models: ``autocast_adapter_dtype=True``).
    - grads + optimizer: torch AdamW keeps exp_avg and exp_avg_sq in the *parameter's* dtype and there is
      no fp32 master copy in spo_lab, so full fine-tuning costs N b (grads) + 2 N b (states); LoRA costs
      n 4 + 2 n 4 for its n fp32 adapter parameters. ``fp32_master`` instead counts the mixed-precision
      layout of the official verl/FSDP recipe: 4 + 8 bytes per trainable parameter, plus an fp32 copy.
    - activations (one mini-batch forward + backward, bf16/fp16 unless b = 4): per token per layer about
      8h + 7 q + 6 kv + 4I elements (q = heads * head_dim, kv = kv_heads * head_dim: the RMSNorm fp32
      upcasts, q/k/v before and after q/k-norm and RoPE, attention output, SwiGLU's gate, up, act and
      product; SDPA attention stores no s^2 scores) times L; with gradient checkpointing only each
      layer's input (h per token per layer) plus one layer's full set. Plus the padding mask transformers
      builds for SDPA, r s^2 booleans, which SDPA turns into an additive mask (1 + b bytes per entry).
    - logits (:func:`spo_lab.models.token_logprobs`): the model's logits for every position, r s V b,
      plus k fp32 tensors of r T V 4 bytes: k = 2 for bf16/fp16 (the float copy and its division by the
      temperature, at the forward peak; the backward holds about as much), k = 1.5 for fp32 (``.float()``
      is free). With Qwen's 152k vocab this term dominates: 0.57 GiB per fp32 copy per 1k-token row.
    - D re-scoring (``rho_mode="kl"``: the stored and the new response of each prompt, ``score_passes`` x R
      rows, no grad): assumed chunked to r rows per forward, r s V b + 2 r T V 4 (a note gives the cost
      of one unchunked forward).
    - vLLM (``engine="vllm"``): it reserves ``vllm_gpu_memory_utilization`` x the card for its own
      weights copy, KV cache and workspace (~1 GiB assumed); the KV cache is what is left. With
      ``vllm_sleep`` (``Config.vllm_sleep``) vLLM frees it from the update until after the D re-scoring
      pass and holds it only while generating (and syncing). ``engine="hf"``
      instead holds, while generating all R responses at once, a KV cache of R s 2 L kv b bytes and
      every step's fp32 logits (``output_logits``), R T V 4 bytes.
    - overhead: CUDA context, cuBLAS workspace, allocator slack: ``overhead_gb``.

    Peak = weights + grads + optimizer + vLLM + overhead + max(activations + logits, re-scoring, HF KV);
    with ``vllm_sleep``: weights + grads + optimizer + overhead + max(activations + logits, re-scoring,
    vLLM + HF KV).
    """
    a = get_arch(model)
    b = dtype_bytes
    P, T = max_prompt_tokens, max_new_tokens
    s = P + T
    R = -(-responses_per_step // processes)
    r = rows_per_forward or max(1, responses_per_step // (mini_batches * processes))
    n, V, L, h = a.n_params, a.vocab, a.layers, a.hidden
    q, kv = a.heads * a.head_dim, a.kv_heads * a.head_dim
    notes = []
    if lora_rank:
        trainable = a.lora_params(lora_rank)
        weights, grads, optim = n * b + trainable * 4, trainable * 4, trainable * 8
        notes.append(f"LoRA r={lora_rank} on q,k,v,o,gate,up,down in fp32: 4 B weight + 4 B grad + 8 B AdamW each")
    elif fp32_master:
        trainable, weights, grads, optim = n, n * (b + 4), n * 4, n * 8
        notes.append("full fine-tuning, mixed precision: fp32 master + grads + AdamW (16 B/param) + a compute copy")
    else:
        trainable, weights, grads, optim = n, n * b, n * b, 2 * n * b
        notes.append(f"full fine-tuning, torch AdamW states in the parameter dtype ({b} B): {4 * b} B/param")
    weights += n * b if ref_model else 0
    per_layer = 8 * h + 7 * q + 6 * kv + 4 * a.intermediate
    act = r * s * ((L * h + per_layer) if gradient_checkpointing else L * per_layer) * b + r * s * s * (1 + b)
    logits = r * s * V * b + (2 if b < 4 else 1.5) * r * T * V * 4
    scoring = r * (s * V * b + 2 * T * V * 4) if score_passes else 0
    if score_passes:
        notes.append(f"D re-scoring chunked to {r} rows per forward; all {score_passes * R} rows in one forward "
                     f"would need {score_passes * R * (s * V * b + 2 * T * V * 4) / GiB:,.0f} GiB")
    if engine == "vllm-server":  # the server's GPUs hold the rollouts' weights and KV cache
        engine_b, kv_cache, kv_tokens, generate = 0, 0.0, 0, 0
        notes.append("rollouts from a vllm serve on other GPUs (--engine vllm-server): no generation memory here")
    elif engine in ("vllm", "vllm-async"):
        engine_b = vllm_gpu_memory_utilization * gpu_memory_gb * GiB
        kv_cache = max(0.0, engine_b - n * b - 1.0 * GiB)
        kv_tokens = int(kv_cache // a.kv_bytes_per_token(b))
        generate = 0
        notes.append(f"vLLM gpu_memory_utilization={vllm_gpu_memory_utilization} of a {gpu_memory_gb:g} GiB card; "
                     f"its KV cache holds ~{kv_tokens // s} responses of {s} tokens at once (of {R})")
        if kv_tokens < s:
            notes.append(f"TOO SMALL: vLLM's KV cache cannot hold one {s}-token sequence; raise the utilisation")
    else:
        engine_b, kv_cache, kv_tokens = 0, 0.0, 0
        generate = R * s * a.kv_bytes_per_token(b) + R * T * V * 4
    notes.append(f"{r} rows/forward x ({P} prompt + {T} response tokens), every row padded to the caps")
    if processes > 1:
        notes.append(f"data parallel over {processes} GPUs: each holds a full replica of the weights, gradients and "
                     f"AdamW state, generates {R} of the {responses_per_step} responses and trains on 1/{processes} "
                     "of every mini-batch")
    return MemoryEstimate(
        model=a.name, params=n, trainable=trainable, weights_gb=weights / GiB, grads_gb=grads / GiB,
        optimizer_gb=optim / GiB, engine_gb=engine_b / GiB, overhead_gb=overhead_gb, activations_gb=act / GiB,
        logits_gb=logits / GiB, scoring_gb=scoring / GiB, generate_gb=generate / GiB, kv_cache_gb=kv_cache / GiB,
        kv_tokens=kv_tokens, rows_per_forward=r, engine_sleeps=vllm_sleep and engine == "vllm", assumptions=notes)


def estimate_config(cfg, *, gpu_memory_gb: float = 80.0, dtype_bytes: int | None = None, processes: int = 1,
                    **kwargs) -> MemoryEstimate:
    """:func:`estimate_memory` for a :class:`spo_lab.train.Config` (``dtype="auto"`` counts 2 bytes: a GPU),
    run as ``processes`` data-parallel processes of one GPU each."""
    kw = dict(lora_rank=cfg.lora_rank, responses_per_step=cfg.responses_per_step, mini_batches=cfg.mini_batches,
              rows_per_forward=cfg.ppo.rows_per_pass(cfg.responses_per_step // processes), processes=processes,
              max_new_tokens=cfg.max_new_tokens, gradient_checkpointing=cfg.gradient_checkpointing,
              engine=cfg.engine, ref_model=cfg.kl_coef > 0, vllm_sleep=getattr(cfg, "vllm_sleep", False),
              vllm_gpu_memory_utilization=getattr(cfg, "vllm_gpu_memory_utilization", 0) or 0.5,
              score_passes={"kl": 2, "kl-clock": 1}.get(cfg.rho_mode, 0) if cfg.algo == "spo" else 0)
    kw.update(kwargs)
    b = dtype_bytes or _DTYPE_BYTES.get(cfg.dtype, 2)
    return estimate_memory(cfg.model, dtype_bytes=b, gpu_memory_gb=gpu_memory_gb, **kw)


class MemoryWarning(UserWarning):
    """The estimate exceeds (or nearly fills) the GPU."""


def detect_gpu() -> tuple[str, float] | None:
    """(name, total GiB) of cuda:0, or None without a usable CUDA GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    p = torch.cuda.get_device_properties(0)
    return p.name, p.total_memory / GiB


def check_fits(estimate: MemoryEstimate, device_total_gb: float | None = None, *, strict: bool = False) -> str:
    """Compare an estimate with a card; returns a one-line verdict.

    ``device_total_gb`` None: the detected cuda:0 (``torch.cuda.get_device_properties``); on a machine
    without a GPU the verdict says so and nothing is checked. Above 85% of the card a
    :class:`MemoryWarning` is issued ("tight": the estimate is +-30%); above 100% too, and with
    ``strict=True`` that raises ``MemoryError`` instead.
    """
    name = f"a {device_total_gb or 0:g} GiB card"
    if device_total_gb is None:
        gpu = detect_gpu()
        if gpu is None:
            return f"no CUDA GPU here (CPU only): nothing to check against ({estimate.total_gb:.1f} GiB estimated)"
        name, device_total_gb = f"{gpu[0]} ({gpu[1]:.1f} GiB)", gpu[1]
    frac = estimate.total_gb / device_total_gb
    msg = f"{estimate.total_gb:.1f} GiB estimated on {name}: {frac:.0%} of it"
    if frac > 1:
        msg = "DOES NOT FIT: " + msg
        if strict:
            raise MemoryError(msg)
        warnings.warn(msg, MemoryWarning, stacklevel=2)
    elif frac > 0.85:
        msg = "TIGHT (may not fit, the estimate is +-30%): " + msg
        warnings.warn(msg, MemoryWarning, stacklevel=2)
    else:
        msg = "fits: " + msg
    return msg


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    overrides: dict
    gpu_memory_gb: float
    """the card it is sized for, GiB as torch reports it (a "16 GB" T4: 14.7; an 80 GB A100/H100: 79.1)"""
    notes: str = ""
    engine_kwargs: dict = field(default_factory=dict)
    """vLLM settings, set as the Config fields ``vllm_<key>`` (``build_engine("vllm", ..., **engine_kwargs)``)"""
    estimate_kwargs: dict = field(default_factory=dict)
    fits_single_gpu: bool = True
    """each process's state fits its GPU (False: the state itself needs sharding across GPUs)"""
    processes: int = 1
    """GPUs it is sized for, one data-parallel process each (``torchrun --nproc_per_node``)"""

    def estimate(self, gpu_memory_gb: float | None = None) -> MemoryEstimate:
        cfg = apply_profile(self.name)
        return estimate_config(cfg, gpu_memory_gb=gpu_memory_gb or self.gpu_memory_gb, processes=self.processes,
                               **self.estimate_kwargs)


_MATH = dict(task="math", engine="vllm", device="cuda", algo="spo", temperature=1.0, save_every=25)
PROFILES: dict[str, Profile] = {p.name: p for p in [
    Profile(
        "colab", "Qwen3-0.6B + LoRA r32 on a free Colab T4 (16 GB, fp16), vLLM colocated, 1k-token responses",
        dict(_MATH, model="Qwen/Qwen3-0.6B", dtype="auto", lora_rank=32, lora_alpha=64, gradient_checkpointing=True,
             responses_per_step=64, max_new_tokens=1024, lr=1e-5, mini_batches=8, micro_batch_rows=2, steps=200,
             offline_init=False, eval_every=25, eval_max_prompts=60, out="runs/colab-spo"),
        gpu_memory_gb=14.7, engine_kwargs=dict(gpu_memory_utilization=0.35, max_model_len=1536),
        estimate_kwargs=dict(max_prompt_tokens=512),
        notes="T4 has no bf16, so dtype auto is fp16 (use float32 if losses go non-finite: 0.6B fits). "
              "lr 1e-5: LoRA wants ~10x the full fine-tuning lr (1e-6). micro_batch_rows 2 = 2 responses per "
              "forward (the 152k-vocab logits cost ~1.6 GiB per 1k-token row), gradients accumulated over each of "
              "the official 8 mini-batches: memory fitted without changing the algorithm. offline_init off: its 8 x 14.1k "
              "DAPO prompts would take hours on a T4 (or pass offline_values). Qwen3-1.7B (vLLM at 0.45): ~15 GiB "
              "here, ~13 at one response per forward: too tight. Pass max_model_len to vLLM: Qwen3's 40960 "
              "default needs more KV cache than 0.35 x 14.7 GiB leaves."),
    Profile(
        "gpu80", "Qwen3-8B + LoRA r64 on one 80 GB GPU (A100/H100, bf16), vLLM colocated, 2k-token responses",
        dict(_MATH, model="Qwen/Qwen3-8B", dtype="bfloat16", lora_rank=64, lora_alpha=128,
             gradient_checkpointing=True, responses_per_step=64, max_new_tokens=2048, lr=1e-5, mini_batches=8,
             micro_batch_rows=4,
             steps=300, eval_every=25, out="runs/gpu80-spo"),
        gpu_memory_gb=79.1, engine_kwargs=dict(gpu_memory_utilization=0.3, max_model_len=3072),
        estimate_kwargs=dict(max_prompt_tokens=1024),
        notes="micro_batch_rows 4: 4 responses per forward (logits ~3.2 GiB per 2k-token row), the official 8 "
              "mini-batches. vLLM keeps its own 15 GiB copy of "
              "the weights; its KV cache holds ~a quarter of the batch at once. vllm_sleep frees vLLM during the update "
              "but not during the D re-scoring pass after it, so it buys little room here. The offline init (8 x 14.1k "
              "prompts) takes hours; it is cached in cache_dir. Alternative: gpu80-full."),
    Profile(
        "gpu80-tool", "Qwen3-8B + LoRA r64 with the Python tool (ReTool, <= 8 turns) on one 80 GB GPU, vLLM colocated",
        dict(_MATH, model="Qwen/Qwen3-8B", dtype="bfloat16", lora_rank=64, lora_alpha=128,
             gradient_checkpointing=True, responses_per_step=64, max_new_tokens=3072, lr=1e-5, mini_batches=8,
             micro_batch_rows=2, tool="python", max_turns=8, max_tool_chars=256, tool_timeout_s=30.0,
             tool_memory_mb=1024, offline_init=False, steps=300, eval_every=25, eval_max_prompts=60,
             out="runs/gpu80-tool-spo"),
        gpu_memory_gb=79.1, engine_kwargs=dict(gpu_memory_utilization=0.3, max_model_len=4096),
        estimate_kwargs=dict(max_prompt_tokens=1024),
        notes="The recipe's tool loop (spo_lab.tools): the math task's tool prompt and reward rules (the answer after "
              "the reasoning, no tool tags in it), code run in the process sandbox with the recipe's limits (30 s, "
              "1 GiB, outputs cut to 256 characters), 8 turns. vLLM continues each request's own tokens across turns. "
              "The response budget counts tool outputs too (3k here, the recipe's 8k needs more memory: micro_batch_rows "
              "1 and a larger max_model_len). The sandbox runs on this machine's CPUs, one process per call, calls of a "
              "turn in parallel. offline_init off: 8 x 14.1k prompts with tool turns take hours (or pass "
              "offline_values). A machine without namespaces (many containers) refuses to start: read the error, "
              "then --tool-waive the protections you accept to lose."),
    Profile(
        "gpu80-full", "Qwen3-1.7B full fine-tuning (fp32 weights + AdamW) on one 80 GB GPU, vLLM colocated",
        dict(_MATH, model="Qwen/Qwen3-1.7B", dtype="float32", lora_rank=0, gradient_checkpointing=True,
             responses_per_step=64, max_new_tokens=2048, lr=1e-6, mini_batches=8, micro_batch_rows=2, steps=300,
             eval_every=25, out="runs/gpu80-full-spo"),
        gpu_memory_gb=79.1, engine_kwargs=dict(gpu_memory_utilization=0.3, max_model_len=3072),
        estimate_kwargs=dict(max_prompt_tokens=1024),
        notes="float32 on purpose: spo_lab's AdamW works on the parameters as loaded, and with bf16 weights an "
              "update of lr 1e-6 is far below bf16's resolution (~1e-4 at |w| ~ 0.02) and rounds away. fp32 "
              "costs 16 B/param (27 GiB for 1.7B) and makes vLLM run fp32 too (slower; spo_lab has one dtype "
              "for both). micro_batch_rows 2: 2 responses per forward, the official 8 mini-batches."),
    Profile(
        "paper", "the official SPO run (the SPO paper): Qwen3-8B full fine-tuning, 1024 x 1 responses of <= 8192",
        dict(_MATH, model="Qwen/Qwen3-8B", dtype="bfloat16", lora_rank=0, gradient_checkpointing=True,
             responses_per_step=1024, group_size=8, max_new_tokens=8192, lr=1e-6, mini_batches=8, micro_batch_rows=1,
             weight_decay=0.01, n0=8, steps=300, out="runs/paper-spo"),
        gpu_memory_gb=79.1, fits_single_gpu=False, engine_kwargs=dict(max_model_len=10240),
        estimate_kwargs=dict(max_prompt_tokens=2048, fp32_master=True),
        notes="needs a sharded scale-out: the official verl recipe shards fp32 master weights, grads and AdamW "
              "(16 B/param, 122 GiB for 8B) over 8+ GPUs with FSDP and micro-batches each mini-batch, as "
              "micro_batch_rows 1 does here (a 128-row mini-batch in one forward would need terabytes of logits). "
              "spo_lab's data parallelism (torchrun) splits the batch but replicates that state on every GPU, so "
              "full fine-tuning of 8B does not fit; gpu80x8 runs this batch with LoRA on 8 GPUs. The paper's tool "
              "(ReTool, 8 turns): --tool python, as gpu80-tool does on one GPU. GRPO: group_size 8 = 128 prompts x 8."),
    Profile(
        "gpu80x8", "the paper's batch (1024 x 1 responses of <= 8192) with Qwen3-8B + LoRA r64 on 8 x 80 GB GPUs",
        dict(_MATH, model="Qwen/Qwen3-8B", dtype="bfloat16", lora_rank=64, lora_alpha=128,
             gradient_checkpointing=True, responses_per_step=1024, group_size=8, max_new_tokens=8192, lr=1e-5,
             mini_batches=8, micro_batch_rows=1, n0=8, steps=300, eval_every=25, out="runs/gpu80x8-spo"),
        gpu_memory_gb=79.1, processes=8, engine_kwargs=dict(gpu_memory_utilization=0.35, max_model_len=10240),
        estimate_kwargs=dict(max_prompt_tokens=2048),
        notes="torchrun --nproc_per_node 8 -m spo_lab.profiles gpu80x8 --train: one process and one colocated vLLM per "
              "GPU; each generates 128 responses and trains on 16 rows of each of the 8 mini-batches, one row per "
              "forward (a 10k-token row's logits take ~12 GiB). vLLM's KV cache holds ~8 of a GPU's 128 sequences at "
              "once: generation is the step's bottleneck. The offline init (8 x 14.1k prompts) is split across the "
              "8 processes; each process's vLLM runs on its own GPU through vLLM's external_launcher executor. Estimated, "
              "not measured: no GPU run exists yet (README, Several processes). Several nodes: the same per GPU."),
]}


def _profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; known profiles: {', '.join(PROFILES)}")
    return PROFILES[name]


def apply_profile(name: str, **overrides):
    """The validated :class:`spo_lab.train.Config` of profile ``name``, with ``overrides`` on top.

    An ``engine_kwargs`` entry is set too when Config has a field of that name (or ``vllm_`` + name).
    """
    from .train import Config

    p = _profile(name)
    fields = {f.name for f in dataclasses.fields(Config)}
    kw = {f: v for k, v in p.engine_kwargs.items() for f in (k, f"vllm_{k}") if f in fields}
    kw.update(p.overrides, **overrides)
    if set(kw) - fields:
        raise ValueError(f"not Config fields: {sorted(set(kw) - fields)}")
    cfg = Config(**kw)
    cfg.validate()
    return cfg


def describe(name: str, device_total_gb: float | None = None) -> str:
    """The profile, its memory estimate and the check against ``device_total_gb`` (default: this GPU)."""
    p = _profile(name)
    est = p.estimate(device_total_gb)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MemoryWarning)
        here = check_fits(est, device_total_gb)
        sized = check_fits(est, p.gpu_memory_gb)
    over = ", ".join(f"{k}={v!r}" for k, v in p.overrides.items())
    lines = [f"profile {p.name}: {p.description}", f"  Config overrides: {over}",
             f"  vLLM settings (Config vllm_* fields): {p.engine_kwargs}", f"  notes: {p.notes}", est.table(),
             f"  sized for {p.gpu_memory_gb:g} GiB: {sized}", f"  this machine: {here}"]
    if p.processes > 1:
        lines.append(f"  per GPU, {p.processes} GPUs: torchrun --nproc_per_node {p.processes} (data parallel, one "
                     "process per GPU, the state replicated)")
    if not p.fits_single_gpu:
        lines.append("  one GPU per process: no -- the model state itself needs sharding across GPUs (FSDP), which "
                     "spo_lab's data parallelism does not do")
    return "\n".join(lines)


def summary() -> str:
    """One line per profile: GiB of the model state (weights + grads + AdamW), vLLM, the peak phase, total."""
    head = (f"{'profile':<11}{'model':<11}{'train':<9}{'state':>7}{'vLLM':>7}{'phase':>7}{'total':>7}"
            f"{'card':>7}  verdict")
    out = [head, "-" * len(head)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MemoryWarning)
        for p in PROFILES.values():
            e = p.estimate()
            mode = f"LoRA r{p.overrides['lora_rank']}" if p.overrides.get("lora_rank") else "full"
            verdict = check_fits(e, p.gpu_memory_gb).split(":")[0] + ("" if p.fits_single_gpu else " (sharding)")
            card = f"{p.processes}x{p.gpu_memory_gb:g}" if p.processes > 1 else f"{p.gpu_memory_gb:.1f}"
            out.append(f"{p.name:<11}{e.model:<11}{mode:<9}{e.weights_gb + e.grads_gb + e.optimizer_gb:>7.1f}"
                       f"{e.engine_gb:>7.1f}{e.transient_gb:>7.1f}{e.total_gb:>7.1f}{card:>7}  {verdict}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """``python -m spo_lab.profiles [NAME ...]``: the summary table, or the named profiles in full.

    ``python -m spo_lab.profiles NAME --train [--flag value ...]`` prints the profile and its memory check,
    then trains with it: the profile's settings are the defaults of ``python -m spo_lab.train``'s flags, and
    any flag given after ``--train`` overrides them.
    """
    argv = sys.argv[1:] if argv is None else argv
    if "--train" in argv:
        i = argv.index("--train")
        names, train_argv = argv[:i], argv[i + 1 :]
        if len(names) != 1:
            print("usage: python -m spo_lab.profiles NAME --train [train flags]", file=sys.stderr)
            return 2
        from .train import parse_args, train

        name = _profile(names[0]).name
        first = os.environ.get("RANK", "0") == "0"  # under torchrun: printed once, not once per process
        if first:
            print(describe(name), flush=True)  # before anything loads
        defaults = dataclasses.asdict(apply_profile(name))
        out = train(parse_args(train_argv, defaults=defaults))
        if first:
            print(f"wrote {out}")
        return 0
    if any(a in ("-h", "--help") for a in argv):
        print(f"usage: python -m spo_lab.profiles [{'|'.join(PROFILES)}] ...   (add --train [flags] to train)")
        return 0
    try:
        names = [_profile(a).name for a in argv]
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    if not names:
        print(summary() + "\n\nGiB; `python -m spo_lab.profiles NAME` for the breakdown and its assumptions.")
        return 0
    print("\n\n".join(describe(n) for n in names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
