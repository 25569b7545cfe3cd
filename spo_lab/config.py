"""The run's settings: :class:`Config`, every flag of ``python -m spo_lab.train`` with its default and help.

A field's docstring is its ``--help`` (:func:`field_docs`); :meth:`Config.validate` checks every setting and
names the flag of a bad one. The command lines that share flags with training (``python -m spo_lab.evaluate``'s
tool flags) read them from here.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
from dataclasses import dataclass

from .engines import ENGINES
from .loss import AGG_MODES
from .models import DEFAULT_MODEL_DIR, DTYPES
from .ppo import PPOSettings
from .tasks import TASKS
from .tools.settings import check_tool_settings

__all__ = ["ALGOS", "GROUP_ALGOS", "Config", "field_docs"]

ALGOS = ("spo", "grpo", "dr_grpo", "rloo", "reinforce")
GROUP_ALGOS = ("grpo", "dr_grpo", "rloo")


@dataclass
class Config:
    # ------------------------------------------------------------------ experiment
    algo: str = "spo"
    """spo | grpo | dr_grpo (no std scaling) | rloo (leave-one-out) | reinforce (no baseline)"""
    steps: int = 300
    """policy updates to run"""
    seed: int = 0
    """seed of every random draw (prompts, sampling, mini-batches, offline pass)"""
    out: str = "runs/spo-seed0"
    """output folder: config, metrics.jsonl, checkpoint, final model"""
    # ------------------------------------------------------------------ parts: task, policy, engine
    task: str = "arith"
    """task name: arith (graded addition, bundled) | math (DAPO-Math + benchmarks)"""
    data_dir: str = ""
    """the task's data: a folder, file or hub id ('' = the task's default, for arith the bundled data/arith)"""
    eval_split: str = "test"
    """held-out split evaluated during training"""
    model: str = str(DEFAULT_MODEL_DIR)
    """Hugging Face model folder or hub id (e.g. Qwen/Qwen3-0.6B on a machine that can download)"""
    engine: str = "hf"
    """rollout engine: hf (transformers generate, shares the model) | vllm (needs vLLM) | vllm-server (a running vllm serve)
    | vllm-async (vLLM's AsyncLLM, one request at a time, for --collector async)"""
    engine_url: str = ""
    """base URL of the `vllm serve` to sample from, e.g. http://localhost:8000 (--engine vllm-server only; LoRA only)"""
    device: str = "auto"
    """cpu | cuda | auto (cuda when available)"""
    dtype: str = "auto"
    """float32 | bfloat16 | float16 | auto (float32 on CPU, bf16 on GPUs that have it, else fp16)"""
    lora_rank: int = 0
    """LoRA adapter rank (0 = train the full model)"""
    lora_alpha: int = 32
    """LoRA scaling numerator (update = alpha / rank * B A)"""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass (long responses on a GPU)"""
    vllm_gpu_memory_utilization: float = 0.0
    """share of the GPU vLLM may take, weights + KV cache (0 = the engine's default; --engine vllm only)"""
    vllm_max_model_len: int = 0
    """longest prompt + response vLLM reserves KV cache for (0 = the model's maximum; --engine vllm only)"""
    vllm_sleep: bool = False
    """put vLLM to sleep during each update, freeing its GPU memory for the trainer (CUDA; --engine vllm only)"""
    num_threads: int = 1
    """torch CPU threads (1 keeps runs bit-reproducible and lets two runs share 2 cores)"""
    # ------------------------------------------------------------------ response budget
    responses_per_step: int = 64
    """responses generated per step, the same for every algorithm"""
    group_size: int = 8
    """G of the group methods (they draw responses_per_step / G prompts); SPO always uses 1"""
    temperature: float = 1.0
    """sampling temperature for training rollouts"""
    max_new_tokens: int = 8
    """response length cap"""
    # ------------------------------------------------------------------ Python tool (ReTool-style turns, spo_lab.tools)
    tool: str = "auto"
    """none | python (responses may run <code> blocks in a sandbox) | auto (python for a task that needs it: arith_tool)"""
    max_turns: int = 8
    """most assistant turns per response with the tool (the recipe: 8)"""
    max_tool_chars: int = 256
    """tool output longer than this many characters is cut in the middle (the recipe: 256)"""
    tool_timeout_s: float = 30.0
    """wall-clock limit of one tool call, seconds (the recipe: 30)"""
    tool_memory_mb: int = 1024
    """address-space limit of the tool's processes, MiB (the recipe: 1024)"""
    tool_waive: str = ""
    """sandbox protections to run without, comma-separated (e.g. network_namespace), or all ('' = none waived)"""
    tool_workers: int = 0
    """tool calls run at once (threads waiting on sandbox processes; 0 = the CPU count, at most 8)"""
    tool_latency: str = "none"
    """INJECTED wait before every tool call: none | fixed:S | exponential:MEAN | lognormal:MU,SIGMA (slow tools, spo_lab.tools.latency)"""
    # ------------------------------------------------------------------ optimisation
    lr: float = 5e-5
    """AdamW learning rate (constant)"""
    weight_decay: float = 0.01
    """AdamW weight decay (official 0.01)"""
    max_grad_norm: float = 1.0
    """gradient clipping norm (official 1.0)"""
    mini_batches: int = 2
    """PPO mini-batches per step = optimiser steps per step (one epoch; official 8)"""
    micro_batch_rows: int = 0
    """rows per forward/backward pass, gradients accumulated over a mini-batch (memory only; 0 = whole mini-batch)"""
    clip_low: float = 0.2
    """ratio clip 1 - clip_low"""
    clip_high: float = 0.28
    """ratio clip 1 + clip_high ("clip-higher")"""
    dual_clip: float = 10.0
    """dual-clip bound c for negative advantages (0 disables)"""
    loss_agg: str = "token-mean"
    """token-mean | seq-mean-token-mean | seq-mean-token-sum"""
    kl_coef: float = 0.0
    """k3 KL-to-initial-policy penalty weight (official: 0, off)"""
    # ------------------------------------------------------------------ SPO options
    baseline: str = "tracker"
    """tracker | none (ablation: v = 0)"""
    rho_mode: str = "kl"
    """kl (official |dlogp| estimator) | kl-clock (cheaper estimator) | constant (rho = --rho-constant)"""
    rho_min: float = 0.875
    """lower discount clip (window 8)"""
    rho_max: float = 0.96
    """upper discount clip (window 25)"""
    rho_constant: float = 0.875
    """the discount of --rho-mode constant (the official ablation's rho.value: 0.875, the lower clip)"""
    adv_norm: str = "batch"
    """batch (official: advantages normalised over the whole batch) | none (ablation: A = r - v as it is)"""
    d_half: float = 0.06
    """divergence that halves the tracker's memory"""
    offline_init: bool = True
    """initialise the tracker from n0 samples per prompt of the initial policy"""
    n0: int = 8
    """offline samples per prompt (official 8)"""
    offline_seed: int = -1
    """seed of the offline pass (-1 = --seed; one fixed value lets runs of several seeds share one cached pass)"""
    offline_values: str = ""
    """official-format offline values ({prompt text: [scores]}) to use instead of the pass ('' = run it)"""
    init_mode: str = "jeffreys"
    """jeffreys (official code) | paper"""
    sampling: str = "prioritized"
    """prioritized | uniform (SPO only; the group methods always sample uniformly)"""
    priority_eps: float = 0.05
    """weight floor eps"""
    priority_gamma: float = 0.0
    """count penalty exponent (official 0)"""
    thompson: bool = False
    """draw v ~ Beta(alpha, beta) for the weights (true Thompson sampling; not official)"""
    # ------------------------------------------------------------------ logging and persistence
    eval_every: int = 25
    """held-out evaluation every k steps (and at steps 0 and the last)"""
    eval_max_prompts: int = 0
    """evaluate on the first k held-out prompts (0 = all)"""
    eval_samples: int = 1
    """samples per held-out prompt at --temperature: eval/sampled_acc is their mean (avg@k); greedy is one"""
    save_every: int = 50
    """checkpoint every k steps (0 = only at the end)"""
    resume: bool = False
    """continue the run in --out from its last checkpoint (settings that change the run are refused)"""
    overwrite: bool = False
    """start afresh in an --out that holds another run, removing its results first"""
    cache_dir: str = ""
    """where the offline-init counts are cached and reused ('' = the per-user cache folder, $SPO_LAB_CACHE_DIR)"""
    save_model: bool = True
    """write the final policy to out/final_model"""
    keep_checkpoints: bool = True
    """keep checkpoint.pt once the run has finished (what --resume needs to extend it with more --steps)"""
    progress: bool = True
    """show a tqdm progress bar"""
    sample_rows: int = 16
    """training rows written to samples.jsonl at every evaluation step (prompt, completion, reward, advantage)"""
    # ------------------------------------------------------------------ collection (spo_lab.collector)
    collector: str = "sync"
    """sync (draw, generate the batch, wait for all of it) | async (trajectories in flight; batches of the first finished)"""
    max_staleness: int = 1
    """--collector async: the most policy versions a trained response may be behind (0 = the sync run, bit for bit)"""
    max_in_flight: int = 0
    """--collector async: most trajectories running at once (0 = responses per step x (max staleness + 1))"""
    collect_timeout_s: float = 600.0
    """--collector async: stop with an error when no trajectory finishes for this long (a stuck generation or tool)"""

    def validate(self) -> None:
        """Check every setting; ValueError naming the flag (``--field-name``) otherwise."""
        def bad(name, why):
            raise ValueError(f"--{name.replace('_', '-')} {why}, got {getattr(self, name)!r}")

        def one_of(name, allowed):
            if getattr(self, name) not in allowed:
                bad(name, f"must be one of {tuple(allowed)}")

        one_of("algo", ALGOS)
        one_of("task", TASKS)
        one_of("engine", ENGINES)
        one_of("dtype", (*DTYPES, "auto"))
        one_of("loss_agg", AGG_MODES)
        one_of("baseline", ("tracker", "none"))
        one_of("rho_mode", ("kl", "kl-clock", "constant"))
        one_of("sampling", ("prioritized", "uniform"))
        one_of("init_mode", ("jeffreys", "paper"))
        one_of("adv_norm", ("batch", "none"))
        if not (math.isfinite(self.rho_constant) and 0 < self.rho_constant < 1):
            bad("rho_constant", "must be in (0, 1)")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            bad("device", "must be auto, cpu, cuda or cuda:N")
        if self.offline_seed < -1:
            bad("offline_seed", "must be >= 0, or -1 for --seed")
        for name in ("steps", "eval_max_prompts", "save_every", "lora_rank", "micro_batch_rows", "sample_rows"):
            if getattr(self, name) < 0:
                bad(name, "must be >= 0")
        for name in ("responses_per_step", "group_size", "max_new_tokens", "mini_batches", "n0", "eval_every",
                     "num_threads", "lora_alpha", "eval_samples"):
            if getattr(self, name) < 1:
                bad(name, "must be >= 1")
        for name in ("temperature", "lr", "max_grad_norm", "d_half", "priority_eps"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                bad(name, "must be a finite number > 0")
        for name in ("weight_decay", "clip_low", "clip_high", "kl_coef", "priority_gamma", "dual_clip"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                bad(name, "must be a finite number >= 0")
        if self.clip_low >= 1:
            bad("clip_low", "must be < 1 (the ratio is clipped below at 1 - clip_low)")
        if self.dual_clip and self.dual_clip <= 1:
            bad("dual_clip", "must be > 1 (or 0 to disable)")
        if not (0 <= self.vllm_gpu_memory_utilization < 1):
            bad("vllm_gpu_memory_utilization", "must be in [0, 1)")
        if self.vllm_max_model_len < 0:
            bad("vllm_max_model_len", "must be >= 0")
        if self.vllm_sleep and self.engine != "vllm":
            bad("vllm_sleep", "needs --engine vllm")
        one_of("collector", ("sync", "async"))
        if self.collector == "async" and self.vllm_sleep:
            bad("vllm_sleep", "cannot be used with --collector async (the collector samples during the update)")
        for name in ("max_staleness", "max_in_flight"):
            if getattr(self, name) < 0:
                bad(name, "must be >= 0")
        if not (math.isfinite(self.collect_timeout_s) and self.collect_timeout_s > 0):
            bad("collect_timeout_s", "must be a finite number > 0")
        if bool(self.engine_url) != (self.engine == "vllm-server"):
            bad("engine_url", "is required with --engine vllm-server and refused with any other engine")
        if self.engine == "vllm-server" and not self.lora_rank:
            bad("lora_rank", "must be > 0 with --engine vllm-server (the server takes LoRA adapters, not full weights)")
        if not 0 < self.rho_min <= self.rho_max < 1:
            bad("rho_min", f"and --rho-max must satisfy 0 < rho_min <= rho_max < 1 (rho_max={self.rho_max})")
        g = self.group
        if self.responses_per_step % g:
            raise ValueError(
                f"equal response budget: --responses-per-step={self.responses_per_step} must be a "
                f"multiple of --group-size={g} for {self.algo}"
            )
        if self.algo in GROUP_ALGOS and self.group < 2:
            bad("group_size", f"must be >= 2 for {self.algo} (with G = 1 every advantage is 0)")
        if self.algo == "spo" and self.responses_per_step < 2:
            bad("responses_per_step", "must be >= 2 for spo (advantages are normalised over the batch: one "
                                      "response has advantage 0)")
        if self.responses_per_step % self.mini_batches:
            bad("mini_batches", f"must divide --responses-per-step={self.responses_per_step}")
        if self.resume and self.overwrite:
            bad("overwrite", "cannot be combined with --resume")
        check_tool_settings(self, bad)

    # derived at run time
    @property
    def group(self) -> int:
        """Responses per prompt: G for the group methods, 1 for SPO and REINFORCE."""
        return self.group_size if self.algo in GROUP_ALGOS else 1

    @property
    def prompts_per_step(self) -> int:
        return self.responses_per_step // self.group

    @property
    def ppo(self) -> PPOSettings:
        """The settings of the policy update (:func:`spo_lab.ppo.ppo_update`)."""
        return PPOSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(PPOSettings)})


def field_docs(cls) -> dict[str, str]:
    """The docstring written under each dataclass field (CleanRL style) -> argparse help."""
    docs, body = {}, ast.parse(inspect.getsource(cls)).body[0].body
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = str(nxt.value.value)
    return docs
