"""Train a policy with SPO -- or GRPO and its variants, at the same response budget -- in one loop.

Read this file top to bottom: it is the algorithm. One step is

    prompts -> rollouts -> rewards -> advantages -> loss -> optimiser -> tracker update

SPO (Xu & Ding, arXiv 2509.13232) draws ONE response per prompt and baselines it with a persistent
per-prompt value tracker (spo_lab.tracker), normalises advantages over the whole batch
(spo_lab.advantages), and picks prompts where the learning signal is largest (spo_lab.sampler).
GRPO draws G responses per prompt and baselines each against its group. Both generate
``responses_per_step`` responses per step: SPO from B prompts, the group methods from B / G.

The loop takes its parts by name -- a task (``--task arith|math``, :mod:`spo_lab.tasks`), a rollout
engine (``--engine hf|vllm``, :mod:`spo_lab.engines`) and a policy (``--model``, ``--device``,
``--dtype``, ``--lora-rank``, :mod:`spo_lab.models`) -- or as objects (``train(cfg, task=..., engine=...)``).
SPO's own state (tracker, sampler, advantage rule) is :class:`spo_lab.spo.SPO`; D(x) comes from
:mod:`spo_lab.divergence`; the offline pass from :mod:`spo_lab.offline`.

What this simplifies compared with the official verl recipe: one process, one PPO epoch over a few
mini-batches, no tools, no sequence packing. It runs the bundled ~1 M-parameter Qwen3 on a laptop
CPU in minutes; the same loop takes a real checkpoint path, a GPU and vLLM.

    python -m spo_lab.train --algo spo --steps 300 --seed 0 --out runs/spo-s0
    python -m spo_lab.train --algo grpo --group-size 8 --steps 300 --seed 0 --out runs/grpo-s0
    python -m spo_lab.train --task arith --engine hf --model data/tiny-qwen3 --device cpu --dtype float32
    python -m spo_lab.train --help          # every option, with its one-line description

Outputs in ``--out``: ``config.json``, ``metrics.jsonl`` (one JSON object per step, loadable with
``pandas.read_json(path, lines=True)``), ``checkpoint.pt`` (resume with ``--resume``; removed at the
end with ``--no-keep-checkpoints``) and the final policy in ``final_model/``.
"""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import inspect
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm  # plain bars: tqdm.auto warns (with a local path) in notebooks without ipywidgets
from transformers.utils import logging as hf_logging

from .advantages import grpo_advantages, rloo_advantages
from .divergence import KLClock, ResponseCache
from .engines import ENGINES, build_engine
from .engines.base import Rollouts
from .evaluate import accuracy
from .loss import AGG_MODES, policy_loss
from .metrics import degenerate_mask
from .models import DEFAULT_MODEL_DIR, DTYPES, LoraSpec, load_policy, model_fingerprint, resolve_device, token_logprobs
from .offline import import_official_values, offline_counts
from .run_folder import RunFolder
from .sampler import sample_without_replacement
from .spo import SPO
from .tasks import TASKS, get_task

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
    """rollout engine: hf (transformers generate, shares the model) | vllm (needs vLLM)"""
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
    # ------------------------------------------------------------------ optimisation
    lr: float = 5e-5
    """AdamW learning rate (constant)"""
    weight_decay: float = 0.01
    """AdamW weight decay (official 0.01)"""
    max_grad_norm: float = 1.0
    """gradient clipping norm (official 1.0)"""
    mini_batches: int = 2
    """PPO mini-batches per step (one epoch; official 8)"""
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
    """kl (official |dlogp| estimator) | kl-clock (cheaper estimator) | constant (rho = rho_max)"""
    rho_min: float = 0.875
    """lower discount clip (window 8)"""
    rho_max: float = 0.96
    """upper discount clip (window 25); the constant rho of rho_mode=constant"""
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
    cache_dir: str = "runs/cache"
    """where the offline-init counts are cached and reused"""
    save_model: bool = True
    """write the final policy to out/final_model"""
    keep_checkpoints: bool = True
    """keep checkpoint.pt once the run has finished (what --resume needs to extend it with more --steps)"""
    progress: bool = True
    """show a tqdm progress bar"""

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
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            bad("device", "must be auto, cpu, cuda or cuda:N")
        if self.offline_seed < -1:
            bad("offline_seed", "must be >= 0, or -1 for --seed")
        for name in ("steps", "eval_max_prompts", "save_every", "lora_rank"):
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
        if self.responses_per_step % self.mini_batches:
            bad("mini_batches", f"must divide --responses-per-step={self.responses_per_step}")
        if self.resume and self.overwrite:
            bad("overwrite", "cannot be combined with --resume")

    # derived at run time
    @property
    def group(self) -> int:
        """Responses per prompt: G for the group methods, 1 for SPO and REINFORCE."""
        return self.group_size if self.algo in GROUP_ALGOS else 1

    @property
    def prompts_per_step(self) -> int:
        return self.responses_per_step // self.group


# ====================================================================== the pieces of a step
def group_advantages(cfg: Config, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages of the non-SPO algorithms, and the pre-normalisation advantage for diagnostics."""
    if cfg.algo == "reinforce":
        return rewards.clone(), rewards.clone()
    centred = grpo_advantages(rewards, cfg.group, scale="none")
    if cfg.algo == "grpo":
        return grpo_advantages(rewards, cfg.group, scale="group"), centred
    if cfg.algo == "dr_grpo":
        return centred, centred
    return rloo_advantages(rewards, cfg.group), centred


def ppo_update(cfg, model, optimizer, rollouts: Rollouts, adv: torch.Tensor, gen: torch.Generator, ref_model=None):
    """One PPO epoch over ``cfg.mini_batches`` shuffled mini-batches; returns averaged stats."""
    model.train()
    device = next(model.parameters()).device
    order = torch.randperm(len(rollouts), generator=gen)
    stats_sum: dict[str, float] = {}
    for chunk in order.chunk(cfg.mini_batches):
        mb = rollouts.select(chunk).to(device)
        logp = token_logprobs(model, mb.prompt_ids, mb.prompt_mask, mb.response_ids, mb.response_mask,
                              temperature=cfg.temperature)
        ref = None
        if ref_model is not None:
            with torch.no_grad():
                ref = token_logprobs(ref_model, mb.prompt_ids, mb.prompt_mask, mb.response_ids,
                                     mb.response_mask, temperature=cfg.temperature)
        loss, st = policy_loss(
            logp, mb.logprobs, adv[chunk].float().to(device), mb.response_mask, clip_low=cfg.clip_low,
            clip_high=cfg.clip_high, dual_clip=cfg.dual_clip or None, agg=cfg.loss_agg,
            ref_logp=ref, kl_coef=cfg.kl_coef,
        )
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {float(loss)}; stats {st}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        st["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(_trainable(model), cfg.max_grad_norm,
                                                               error_if_nonfinite=True))
        optimizer.step()
        for k, v in st.items():
            stats_sum[k] = stats_sum.get(k, 0.0) + v / cfg.mini_batches
    model.eval()
    return stats_sum


def _trainable(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


# ====================================================================== the training loop
def train(cfg: Config, *, task=None, engine=None, on_step=None, on_offline_chunk=None) -> Path:
    """Run ``cfg.steps`` steps; returns the output folder. See the module docstring.

    ``task`` and ``engine`` replace the ones ``cfg.task`` / ``cfg.engine`` name: any objects that
    follow the protocols of :mod:`spo_lab.tasks.base` and :mod:`spo_lab.engines.base`.
    ``on_step(row)`` is called with each step's metrics row once it is written, and
    ``on_offline_chunk(n)`` after each chunk of n prompts of the offline pass (progress hooks).
    """
    cfg.validate()
    folder = RunFolder(cfg.out)  # one run per folder, see spo_lab.run_folder
    with folder:
        return _train(cfg, folder, task, engine, on_step, on_offline_chunk)


def _train(cfg: Config, folder: RunFolder, task, engine, on_step=None, on_offline_chunk=None) -> Path:
    torch.set_num_threads(cfg.num_threads)
    if not cfg.progress:  # also silence transformers' own loading / saving bars
        hf_logging.disable_progress_bar()
    out = folder.path
    settings = dataclasses.asdict(cfg)
    if cfg.resume:
        folder.check_extendable()
    ck = folder.load_checkpoint() if cfg.resume else None
    if cfg.resume and (ck is not None or (out / "config.json").exists()):
        folder.check_resume(settings)  # before anything is written: a refused resume changes nothing
    if ck is None:  # a new run (or a resume of a run killed before its first checkpoint)
        folder.start_fresh(overwrite=cfg.overwrite or cfg.resume)

    # ---------------------------------------------------------------- setup: policy, task, engine, state
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    lora = LoraSpec(r=cfg.lora_rank, alpha=cfg.lora_alpha) if cfg.lora_rank > 0 else None
    model, tokenizer = load_policy(cfg.model, dtype=cfg.dtype, device=device, lora=lora,
                                   gradient_checkpointing=cfg.gradient_checkpointing)
    if task is None:
        task = get_task(cfg.task, data=cfg.data_dir or None, tokenizer=tokenizer)
    train_set, test_set = task.load("train"), task.load(cfg.eval_split)
    if cfg.eval_max_prompts:
        test_set = test_set[: cfg.eval_max_prompts]
    P = len(train_set)
    if cfg.prompts_per_step > P:
        raise ValueError(f"{cfg.prompts_per_step} prompts per step exceed the {P} training prompts")
    if engine is None:
        vllm_kwargs = {} if cfg.engine != "vllm" else {
            k: v for k, v in (("gpu_memory_utilization", cfg.vllm_gpu_memory_utilization),
                              ("max_model_len", cfg.vllm_max_model_len), ("enable_sleep_mode", cfg.vllm_sleep)) if v}
        engine = build_engine(cfg.engine, model=model, tokenizer=tokenizer, model_path=cfg.model, dtype=cfg.dtype,
                              seed=cfg.seed, **vllm_kwargs)
    engine.sync_weights(model)  # the engine samples from the policy as loaded
    ref_model = copy.deepcopy(model).eval() if cfg.kl_coef > 0 else None
    optimizer = torch.optim.AdamW(_trainable(model), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)  # prompt draws of uniform sampling, mini-batch order
    key = getattr(task, "group_key", None)  # a numeric metadata key (e.g. level) is logged per step
    group_vals = None
    if key and all(isinstance(p.meta.get(key), (int, float)) for p in train_set):
        group_vals = torch.tensor([p.meta[key] for p in train_set], dtype=torch.float64)

    spo = divergence = None
    offline_responses, offline_info = 0, {}
    if cfg.algo == "spo":
        spo = SPO(P, cfg.prompts_per_step, rho_min=cfg.rho_min, rho_max=cfg.rho_max, d_half=cfg.d_half,
                  baseline=cfg.baseline, prioritized=cfg.sampling == "prioritized", eps=cfg.priority_eps,
                  gamma=cfg.priority_gamma, thompson=cfg.thompson, seed=cfg.seed + 1)
        if cfg.offline_init and cfg.offline_values:  # a missing prompt is an error, never weight 0
            succ, trials = import_official_values(cfg.offline_values, train_set, missing="error", max_scores=cfg.n0)
            spo.init_from_counts(succ, trials, mode=cfg.init_mode)
            offline_responses = int(trials.sum())  # generated elsewhere, still part of the cost
        elif cfg.offline_init:
            succ, trials = offline_counts(engine, task, train_set, n0=cfg.n0, temperature=cfg.temperature,
                                          max_new_tokens=cfg.max_new_tokens, device=device,
                                          seed=cfg.seed if cfg.offline_seed < 0 else cfg.offline_seed,
                                          model_key=model_fingerprint(model), cache_dir=cfg.cache_dir,
                                          progress=cfg.progress, on_chunk=on_offline_chunk, info=offline_info)
            spo.init_from_counts(succ, trials, mode=cfg.init_mode)
            offline_responses = cfg.n0 * P
        if cfg.rho_mode == "kl":
            width = max(len(tokenizer(p.prompt, add_special_tokens=False)["input_ids"]) for p in train_set)
            divergence = ResponseCache(P, width, cfg.max_new_tokens, tokenizer.pad_token_id)
        elif cfg.rho_mode == "kl-clock":
            divergence = KLClock(P)

    rows = cfg.responses_per_step // cfg.mini_batches  # the update's rows per forward: the memory it was sized for

    @torch.no_grad()
    def score(*batch):  # log-probs of responses under the current policy, for D(x), a mini-batch at a time
        return torch.cat([token_logprobs(model, *(t[i : i + rows] for t in batch), temperature=cfg.temperature)
                          for i in range(0, batch[0].shape[0], rows)])

    start, responses, tokens = 0, 0, 0
    if ck is not None:
        model.load_state_dict(ck["model"]), optimizer.load_state_dict(ck["optimizer"])
        _set_rng_states(ck["rng"], gen, device)
        for obj, name in ((spo, "spo"), (divergence, "divergence")):
            if obj is not None:
                obj.load_state_dict(ck[name])
        start, responses, tokens = ck["step"], ck["responses"], ck["tokens"]
        engine.sync_weights(model)  # ... and from the resumed weights
    log = folder.open_metrics(keep_until_step=start if ck is not None else None)
    folder.write_config(settings)
    model.eval()

    def evaluate(step: int) -> dict:  # on its own seeded RNG: evaluating never changes the run
        return accuracy(engine, task, test_set, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                        seed=cfg.seed * 1_000_003 + step, device=device, samples=cfg.eval_samples)

    def save_checkpoint(step: int) -> None:  # tensors and plain values only: loadable with weights_only=True
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": _rng_states(gen, device),
                 "step": step, "responses": responses, "tokens": tokens}
        for obj, name in ((spo, "spo"), (divergence, "divergence")):
            if obj is not None:
                state[name] = obj.state_dict()
        folder.save_checkpoint(state)

    bar = tqdm(range(start, cfg.steps), desc=f"{cfg.algo} s{cfg.seed}", disable=not cfg.progress,
               initial=start, total=cfg.steps)
    if start == 0:  # the starting point of every learning curve; the offline pass's cost is counted here
        t0 = time.perf_counter()
        row = {"step": 0, "responses": 0, "responses_incl_init": offline_responses, **evaluate(0)}
        row["time/eval"] = time.perf_counter() - t0
        if "seconds" in offline_info:  # its wall time when it was computed, also when read from the cache
            row["time/offline_init"] = offline_info["seconds"]
        folder.append(log, row)
        if on_step is not None:
            on_step(row)
    for step in bar:
        m: dict = {"step": step + 1}
        t0 = time.perf_counter()
        # ------------------------------------------------------------ 1. choose prompts
        if spo is not None and spo.sampler is not None:
            ids = spo.draw()  # prioritised: weights sqrt(v (1 - v)) + eps, before generation
        else:  # uniform, without replacement
            ids = sample_without_replacement(torch.ones(P), cfg.prompts_per_step, gen)
        row_ids = ids.repeat_interleave(cfg.group)  # each prompt's G responses are consecutive
        if spo is not None:  # read v BEFORE this step's rewards: the baseline must not see y
            v_before, baselines = spo.values(row_ids), spo.baselines(row_ids)
        t1 = time.perf_counter()
        # ------------------------------------------------------------ 2. rollouts
        batch = [train_set[i] for i in row_ids.tolist()]
        rollouts = engine.generate([train_set[i].prompt for i in ids.tolist()], cfg.group,
                                   temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
        t2 = time.perf_counter()
        # ------------------------------------------------------------ 3. rewards (the task's own check)
        rewards = torch.tensor(task.score(rollouts.texts, batch), dtype=torch.float64)
        # ------------------------------------------------------------ 4. advantages
        if spo is not None:  # (r - v) normalised over the whole batch
            adv, adv_raw = spo.advantages(rewards, baselines)
        else:  # group baselines
            adv, adv_raw = group_advantages(cfg, rewards)
        t3 = time.perf_counter()
        # ------------------------------------------------------------ 5. loss and optimiser
        if cfg.vllm_sleep:  # colocated on one GPU: vLLM hands its memory to the update and D's re-scoring
            engine.sleep()
        loss_stats = ppo_update(cfg, model, optimizer, rollouts, adv, gen, ref_model)
        t4 = time.perf_counter()
        # ------------------------------------------------------------ 6. tracker update (after the policy update)
        if spo is not None:
            D = divergence.divergence(score, row_ids, rollouts) if divergence is not None else None
            rho = spo.observe(row_ids, rewards, D)
            m.update({"tracker/rho_mean": float(rho.mean()), "tracker/rho_min": float(rho.min()),
                      "tracker/D_mean": float(D.mean()) if D is not None else 0.0,
                      "tracker/D_max": float(D.max()) if D is not None else 0.0,
                      **spo.stats(), "sampled/v_mean": float(v_before.mean())})
        t5 = time.perf_counter()
        # ------------------------------------------------------------ 7. the engine samples the updated policy next
        if cfg.vllm_sleep:
            engine.wake_up()
        engine.sync_weights(model)
        t_sync = time.perf_counter() - t5
        responses += len(rollouts)
        tokens += rollouts.num_tokens
        # ------------------------------------------------------------ metrics
        m.update({
            "responses": responses, "responses_incl_init": responses + offline_responses, "tokens": tokens,
            "reward/mean": float(rewards.mean()), "reward/var": _var(rewards),
            "adv/raw_var": _var(adv_raw), "adv/var": _var(adv),
            "adv/zero_frac": float((adv.abs() < 1e-4).double().mean()),
            "truncated_frac": float(rollouts.truncated.double().mean()),
            **{f"loss/{k}": v for k, v in loss_stats.items()},
            "time/sample": t1 - t0, "time/generate": t2 - t1, "time/score": t3 - t2,
            "time/update": t4 - t3, "time/tracker": t5 - t4, "time/sync": t_sync,
        })
        if group_vals is not None:
            m[f"sampled/{key}_mean"] = float(group_vals[row_ids].mean())
        if cfg.group > 1:
            deg = degenerate_mask(rewards, cfg.group)
            m["grpo/degenerate_frac"] = float(deg.double().mean())
            nondeg = adv.view(-1, cfg.group)[~deg].reshape(-1)
            m["adv/var_nondegenerate"] = _var(nondeg) if nondeg.numel() > 1 else None
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            t6 = time.perf_counter()
            m.update(evaluate(step + 1))
            m["time/eval"] = time.perf_counter() - t6
            bar.set_postfix(reward=f"{m['reward/mean']:.2f}", greedy=f"{m['eval/greedy_acc']:.3f}")
        folder.append(log, m)
        if (cfg.save_every and (step + 1) % cfg.save_every == 0) or step + 1 == cfg.steps:
            save_checkpoint(step + 1)
        if on_step is not None:
            on_step(m)
    log.close()
    if not cfg.keep_checkpoints:  # a finished run: its metrics and final model are the results
        folder.remove_checkpoints(cfg.steps)
    if cfg.save_model:
        model.save_pretrained(out / "final_model")
        tokenizer.save_pretrained(out / "final_model")
    return out


def _var(x: torch.Tensor) -> float:
    return float(x.double().var(unbiased=True)) if x.numel() > 1 else 0.0


def _rng_states(gen: torch.Generator, device: torch.device) -> dict:
    """Every random stream of the run, as tensors and plain values (no numpy objects: weights_only loads)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"gen": gen.get_state(), "torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_states(state: dict, gen: torch.Generator, device: torch.device) -> None:
    gen.set_state(state["gen"]), torch.set_rng_state(state["torch"]), random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# ====================================================================== command line
def _field_docs(cls) -> dict[str, str]:
    """The docstring written under each dataclass field (CleanRL style) -> argparse help."""
    docs, body = {}, ast.parse(inspect.getsource(cls)).body[0].body
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = str(nxt.value.value)
    return docs


def parse_args(argv=None, cls=Config, defaults: dict | None = None):
    """Build an argparse parser from a config dataclass: ``--field-name value`` for every field.

    ``defaults`` replaces the dataclass defaults of some fields (a named profile, see spo_lab.profiles).
    """
    defaults = defaults or {}
    docs = _field_docs(cls)
    parser = argparse.ArgumentParser(description=(inspect.getmodule(cls).__doc__ or "").split("\n")[0])
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=defaults.get(f.name, f.default),
                                help=docs.get(f.name))
        else:
            typ = {"int": int, "float": float, "str": str}.get(f.type, f.type)
            parser.add_argument(flag, type=typ, default=defaults.get(f.name, f.default),
                                help=f"{docs.get(f.name, '')} (default: %(default)s)")
    cfg = cls(**vars(parser.parse_args(argv)))
    try:  # every setting is checked before anything loads, and the error names the flag
        cfg.validate()
    except ValueError as err:
        parser.error(str(err))
    return cfg


def main(argv=None) -> None:
    cfg = parse_args(argv)
    out = train(cfg)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
