"""Train a policy with SPO -- or GRPO and its variants, at the same response budget -- in one loop.

Read this file top to bottom: it is the algorithm. One step, :func:`train_step`, is

    draw prompts -> baselines -> rollouts -> rewards -> advantages -> PPO update -> D and tracker -> weight sync

and ``print(inspect.getsource(train_step))`` shows all of it on one screen. The method is an
:class:`spo_lab.algorithms.Algorithm` (``draw``, ``baselines``, ``advantages``, ``observe``): the step
never asks which one it runs. The file's parts, in order: ``Config`` (every setting, one line of
help each), the metric keys and phase names, :class:`Run` (the parts of a run), :func:`train_step`,
the loop (:func:`train`), :func:`setup`, checkpoints, and the command line.

SPO (Xu & Ding, arXiv 2509.13232) draws ONE response per prompt and baselines it with a persistent
per-prompt value tracker (spo_lab.tracker), normalises advantages over the whole batch
(spo_lab.advantages), and picks prompts where the learning signal is largest (spo_lab.sampler).
GRPO draws G responses per prompt and baselines each against its group. Both generate
``responses_per_step`` responses per step: SPO from B prompts, the group methods from B / G.

The loop takes its parts by name -- a task (``--task arith|math``, :mod:`spo_lab.tasks`), a rollout
engine (``--engine hf|vllm``, :mod:`spo_lab.engines`) and a policy (``--model``, ``--device``,
``--dtype``, ``--lora-rank``, :mod:`spo_lab.models`) -- or as objects (``train(cfg, task=..., engine=...)``).
SPO's own state (tracker, sampler, advantage rule) is :class:`spo_lab.spo.SPO`, the group methods'
:class:`spo_lab.algorithms.GroupBaseline`; D(x) comes from :mod:`spo_lab.divergence`; the offline pass
from :mod:`spo_lab.offline`; the PPO update from :mod:`spo_lab.ppo` (``--mini-batches`` is the
algorithm, ``--micro-batch-rows`` the memory).

What this simplifies compared with the official verl recipe: one PPO epoch over a few mini-batches,
no sequence packing, data parallelism without sharded model state. It runs the bundled ~1 M-parameter
Qwen3 on a laptop CPU in minutes; the same loop takes a real checkpoint path, a GPU and vLLM, and
runs as N processes under ``torchrun`` with the same flags: the same global batch and method state,
each process generating its share (:mod:`spo_lab.distributed`; one process runs exactly as before).

    python -m spo_lab.train --algo spo --steps 300 --seed 0 --out runs/spo-s0
    python -m spo_lab.train --algo grpo --group-size 8 --steps 300 --seed 0 --out runs/grpo-s0
    python -m spo_lab.train --task arith --engine hf --model data/tiny-qwen3 --device cpu --dtype float32
    python -m spo_lab.train --help          # every option, with its one-line description
    torchrun --standalone --nproc_per_node 2 -m spo_lab.train --algo spo --steps 300 --out runs/spo-dp2

Outputs in ``--out``: ``config.json``, ``metrics.jsonl`` (one JSON object per step, loadable with
``pandas.read_json(path, lines=True)``), ``samples.jsonl`` (at every evaluation step, the first
``--sample-rows`` rows of that step's training batch: prompt, completion, reward, baseline,
advantage), ``checkpoint.pt`` (resume with ``--resume``; removed at the end with
``--no-keep-checkpoints``) and the final policy in ``final_model/``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import inspect
import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm  # plain bars: tqdm.auto warns (with a local path) in notebooks without ipywidgets
from transformers.utils import logging as hf_logging

from .algorithms import Algorithm, GroupBaseline
from .collector import AsyncCollector
from .distributed import ONE, World, init_world, state_checksum
from .divergence import KLClock, ResponseCache
from .engines import build_engine
from .engines.base import Rollouts
from .keys import (ADV_RAW_VAR, ADV_VAR, ADV_VAR_NONDEGENERATE, ADV_ZERO_FRAC, DEGENERATE_FRAC, EVAL_TIME,
                   GREEDY_ACC, NOT_STEP, OFFLINE_TIME, PHASES, RESPONSES, RESPONSES_INCL_INIT, REWARD_MEAN,
                   REWARD_VAR, SAMPLED_ACC, STEP, TOKENS, TRUNCATED_FRAC, sampled_mean, time_key)
from .evaluate import accuracy
from .metrics import degenerate_mask
from .models import (DEFAULT_MODEL_DIR, LoraSpec, check_context_length, load_policy, model_fingerprint,
                     resolve_device)
from .offline import import_official_values, offline_counts
from .paths import user_cache_dir
from .ppo import PPOSettings, logprob_fn, ppo_update, trainable
from .errors import UserError, cli_main
from .run_folder import RunFolder, check_writable, failpoint
from .spo import SPO
from .tasks import breakdown_key, get_task, task_class
from .tasks.base import breakdown_values, problems_fingerprint
from .config import ALGOS, GROUP_ALGOS, Config, field_docs  # noqa: F401 (ALGOS, GROUP_ALGOS: public here too)
from .tools.settings import (build_tool_engine, check_tool_settings, tool_cache_suffix, tool_mode,  # noqa: F401
                             tool_task_kwargs)





# ====================================================================== what a step logs (names: spo_lab.keys)
COLLECTOR_FILE = "collector.json"
"""``--collector async``: trajectories admitted, finished, consumed, aborted at the end (per level), staleness histogram."""
SAMPLES_FILE = "samples.jsonl"
"""Per evaluation step, the first ``--sample-rows`` rows of that step's training batch (see :func:`train`)."""


@contextmanager
def phase(metrics: dict, name: str):
    """Time the body into ``metrics["time/<name>"]`` (seconds); the step's names are :data:`spo_lab.keys.PHASES`."""
    t0 = time.perf_counter()
    yield
    metrics[time_key(name)] = time.perf_counter() - t0


@contextmanager
def engine_asleep(engine, asleep: bool):
    """Colocated vLLM on one GPU (``--vllm-sleep``): the engine hands its memory to the body and wakes after."""
    if asleep:
        engine.sleep()
    try:
        yield
    finally:
        if asleep:
            engine.wake_up()


# ====================================================================== the parts of a run
@dataclass
class Run:
    """Everything a step reads, built once by :func:`setup`, and the counters the steps advance."""

    cfg: Config
    policy: torch.nn.Module
    tokenizer: object
    optimizer: torch.optim.Optimizer
    engine: object  # spo_lab.engines.RolloutEngine
    task: object  # spo_lab.tasks.Task
    problems: list  # the training prompts; a prompt's id is its index here
    eval_problems: list
    algo: Algorithm
    d_estimator: object | None  # spo_lab.divergence.ResponseCache | KLClock | None
    ppo: PPOSettings
    gen: torch.Generator  # mini-batch splits (and the group methods' draws)
    logprob_fn: Callable  # log-probs under the current policy, for D (each process scores its share)
    ref_model: torch.nn.Module | None = None
    breakdown: torch.Tensor | None = None  # [P] a numeric metadata value per prompt (e.g. level), logged per step
    start: int = 0
    responses: int = 0
    tokens: int = 0
    offline_responses: int = 0
    offline_info: dict = dataclasses.field(default_factory=dict)
    world: World = ONE  # the processes training together (spo_lab.distributed); ONE: this process alone
    lock: object = dataclasses.field(default_factory=threading.RLock)  # the method's state, when a collector shares it
    update_gen: torch.Generator | None = None  # the update's mini-batch splits when a collector's thread draws
    # from gen while the trainer updates (--collector async, --max-staleness >= 1); None: gen, as in the synchronous loop


@dataclass
class Batch:
    """One step's training batch, for the samples log: rollouts ``[R]`` and per-row rewards, baselines, advantages."""

    rollouts: Rollouts
    rewards: torch.Tensor
    baselines: torch.Tensor  # what each reward was compared against: tracker value, group mean, or 0
    advantages: torch.Tensor


# ====================================================================== one step
def train_step(run: Run, step: int) -> tuple[dict, Batch]:
    """One RL step: draw -> baselines -> generate, then :func:`learn`: reward -> advantages -> update ->
    D, tracker -> sync.

    ``step`` counts the updates made so far (the policy version that samples this step). Returns the
    step's metrics row (without ``step``) and its batch.
    """
    algo, cfg, world, m = run.algo, run.cfg, run.world, {}
    with phase(m, "sample"):
        ids = algo.draw()  # ids [B]: the prompts of this step (the same in every process: one state, one stream)
        row_ids = ids.repeat_interleave(algo.group)  # row_ids [R = B * G]: a prompt's G responses are consecutive
        baselines = algo.baselines(row_ids)  # [R], read BEFORE this step's rewards: the baseline must not see y
    with phase(m, "generate"):
        mine = world.share(ids)  # this process's prompts: all B alone, a contiguous share of them in several
        rollouts = run.engine.generate([run.problems[i].prompt for i in mine.tolist()], algo.group,
                                       temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
        rollouts = rollouts.tagged(mine, algo.group, policy_version=step)  # rows -> prompt ids, weights' version
    return learn(run, m, rollouts, baselines)


def async_train_step(run: Run, step: int) -> tuple[dict, Batch]:
    """One step of ``--collector async``: the batch is the first B prompts' responses to finish
    (:mod:`spo_lab.collector`: drawn, their baselines read and sampled while earlier steps trained),
    then the same :func:`learn`. ``time/generate`` is the time the step waited for its batch."""
    m = {}
    with phase(m, "generate"):
        rollouts, baselines, collected = run.engine.next_batch(step)  # tagged rows [R], baselines [R] read at draw
    m, batch = learn(run, m, rollouts, baselines)
    return m | collected, batch


def learn(run: Run, m: dict, rollouts: Rollouts, baselines: torch.Tensor) -> tuple[dict, Batch]:
    """The step after collection: reward -> advantages -> update -> D, tracker -> sync.

    ``rollouts``: this process's rows ``[R_mine]``, tagged with prompt ids; ``baselines``: ``[R]`` of the
    whole batch, read when the prompts were drawn. Fills the metrics row ``m``; returns it and the batch."""
    algo, cfg, world = run.algo, run.cfg, run.world
    with phase(m, "reward"):
        rows = [run.problems[i] for i in rollouts.prompt_index.tolist()]
        rewards = torch.tensor(run.task.reward(rollouts.texts, rows), dtype=torch.float64)  # the task's check
        rollouts, rewards = world.gather_batch(rollouts, rewards, pad_id=run.tokenizer.pad_token_id)  # all R rows
        adv, adv_raw = algo.advantages(rewards, baselines)  # [R] normalised, and r - baseline before it
    row_ids = rollouts.prompt_index  # [R] the prompt of each row
    with engine_asleep(run.engine, cfg.vllm_sleep):  # colocated vLLM frees its memory for update and D
        with phase(m, "update"):
            split_gen = run.gen if run.update_gen is None else run.update_gen
            loss_stats = ppo_update(run.policy, run.optimizer, rollouts, adv, run.ppo, split_gen, run.ref_model, world)
        with phase(m, "tracker"):  # AFTER the update: D measures how far it moved the policy
            d = run.d_estimator.observe(run.logprob_fn, row_ids, rollouts) if run.d_estimator else None
            with run.lock:  # an asynchronous collector reads the tracker while we write it
                algo.observe(row_ids, rewards, d)  # [R] evidence folded into the tracker (a no-op for groups)
    with phase(m, "sync"):
        run.engine.sync_weights(run.policy)  # the next step samples the updated policy
    run.responses, run.tokens = run.responses + len(rollouts), run.tokens + rollouts.num_tokens
    m |= step_metrics(run, rollouts, rewards, adv, adv_raw, loss_stats)
    return m, Batch(rollouts, rewards, rewards - adv_raw, adv)


def step_metrics(run: Run, rollouts: Rollouts, rewards, adv, adv_raw, loss_stats: dict) -> dict:
    """The metrics row of one step (see the module constants for the keys)."""
    m = {
        RESPONSES: run.responses, RESPONSES_INCL_INIT: run.responses + run.offline_responses, TOKENS: run.tokens,
        REWARD_MEAN: float(rewards.mean()), REWARD_VAR: _var(rewards),
        ADV_RAW_VAR: _var(adv_raw), ADV_VAR: _var(adv), ADV_ZERO_FRAC: float((adv.abs() < 1e-4).double().mean()),
        TRUNCATED_FRAC: float(rollouts.truncated.double().mean()),
        **{f"loss/{k}": v for k, v in loss_stats.items()}, **run.algo.stats(),
        **(run.engine.tool_metrics() if hasattr(run.engine, "tool_metrics") else {}),  # a ToolEngine's tool/* means
    }
    if run.breakdown is not None:  # e.g. sampled/level_mean: how hard the drawn prompts are
        m[sampled_mean(breakdown_key(run.task))] = float(run.breakdown[rollouts.prompt_index].mean())
    g = run.algo.group
    if g > 1:  # groups of G: how many are degenerate (all rewards equal, every advantage 0)
        deg = degenerate_mask(rewards, g)
        m[DEGENERATE_FRAC] = float(deg.double().mean())
        nondeg = adv.view(-1, g)[~deg].reshape(-1)
        m[ADV_VAR_NONDEGENERATE] = _var(nondeg) if nondeg.numel() > 1 else None
    return m


def _var(x: torch.Tensor) -> float:
    return float(x.double().var(unbiased=True)) if x.numel() > 1 else 0.0


# ====================================================================== the loop
def train(cfg: Config, *, task=None, engine=None, algorithm: Algorithm | None = None, on_step=None,
          on_offline_chunk=None) -> Path:
    """Run ``cfg.steps`` steps; returns the output folder. See the module docstring.

    ``task``, ``engine`` and ``algorithm`` replace the ones ``cfg`` names: any objects that follow the
    protocols of :mod:`spo_lab.tasks.base`, :mod:`spo_lab.engines.base` and :mod:`spo_lab.algorithms`.
    ``on_step(row)`` is called with each step's metrics row once it is written, and
    ``on_offline_chunk(n)`` after each chunk of n prompts of the offline pass (progress hooks).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process calls this with the same ``cfg`` and its own
    ``engine`` (if any); only rank 0 writes ``cfg.out`` and calls the hooks (:mod:`spo_lab.distributed`).
    """
    cfg.validate()
    world = init_world()
    try:
        folder = RunFolder(cfg.out)  # one run per folder, see spo_lab.run_folder; rank 0 holds it
        with folder if world.rank == 0 else nullcontext(folder):
            run = setup(cfg, folder, task=task, engine=engine, algorithm=algorithm,
                        on_offline_chunk=on_offline_chunk if world.rank == 0 else None, world=world)
            return _loop(run, folder, on_step)
    finally:
        world.close()


def _loop(run: Run, folder: RunFolder, on_step) -> Path:
    cfg, main = run.cfg, run.world.rank == 0  # only rank 0 writes the run folder (None: the others' logs)
    log = folder.open_metrics(keep_until_step=run.start if run.start else None) if main else None
    samples = _open_samples(folder.path / SAMPLES_FILE, run.start) if main else None
    if main:
        folder.write_config(run_settings(cfg, run.problems))
    bar = tqdm(range(run.start, cfg.steps), desc=f"{cfg.algo} s{cfg.seed}", disable=not (cfg.progress and main),
               initial=run.start, total=cfg.steps)
    if run.start == 0:  # the starting point of every learning curve; the offline pass's cost is counted here
        row = {STEP: 0, RESPONSES: 0, RESPONSES_INCL_INIT: run.offline_responses}
        with phase(row, "eval"):
            row |= evaluate_policy(run, 0)
        if "seconds" in run.offline_info:  # its wall time when it was computed, also when read from the cache
            row[OFFLINE_TIME] = run.offline_info["seconds"]
        _emit(folder, log, row, on_step)
    step_fn = async_train_step if isinstance(run.engine, AsyncCollector) else train_step
    try:
        _steps(run, folder, bar, step_fn, log, samples, on_step)
    finally:
        if isinstance(run.engine, AsyncCollector):  # what was in flight is aborted, and counted
            counts = run.engine.close()
            if main:
                (folder.path / COLLECTOR_FILE).write_text(json.dumps(counts, indent=1) + "\n")
    if not main:
        return folder.path
    log.close()
    samples.close()
    if not cfg.keep_checkpoints:  # a finished run: its metrics and final model are the results
        folder.remove_checkpoints(cfg.steps)
    if cfg.save_model:
        run.policy.save_pretrained(folder.path / "final_model")
        run.tokenizer.save_pretrained(folder.path / "final_model")
    return folder.path


def _steps(run: Run, folder: RunFolder, bar, step_fn, log, samples, on_step) -> None:
    cfg = run.cfg
    for step in bar:
        m, batch = step_fn(run, step)
        run.world.check_same(lambda: state_checksum([run.algo.state_dict(), run.gen.get_state()]),
                             "the method's state (tracker, sampler, draws)")
        failpoint(f"step-rank{run.world.rank}")  # testing hook: a process that dies after a step
        m = {STEP: step + 1} | m
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            with phase(m, "eval"):
                m |= evaluate_policy(run, step + 1)
            bar.set_postfix(reward=f"{m[REWARD_MEAN]:.2f}", greedy=f"{m[GREEDY_ACC]:.3f}")
            _write_samples(samples, run, step + 1, batch)
        _emit(folder, log, m, on_step)
        if (cfg.save_every and (step + 1) % cfg.save_every == 0) or step + 1 == cfg.steps:
            with run.lock:  # the tracker and sampler as of this step boundary
                save_checkpoint(run, folder, step + 1)


def _emit(folder: RunFolder, log, row: dict, on_step) -> None:
    if log is None:  # not rank 0
        return
    folder.append(log, row)
    if on_step is not None:
        on_step(row)


def evaluate_policy(run: Run, step: int) -> dict:
    """Held-out accuracy (``eval/*``) on its own seeded RNG: evaluating never changes the run.

    Several processes each evaluate a contiguous share of the held-out prompts; the means are
    combined weighted by the prompts behind each one."""
    cfg, world = run.cfg, run.world
    mine = world.share(run.eval_problems)
    task = _ToolEvalTask(run.task) if tool_mode(cfg) == "python" else run.task  # + tool-call rate, acc with/without
    with run.engine.paused() if isinstance(run.engine, AsyncCollector) else nullcontext():  # its own seeded RNG
        out = accuracy(run.engine, task, mine, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                       seed=world.seed(cfg.seed * 1_000_003 + step), device=next(run.policy.parameters()).device,
                       samples=cfg.eval_samples) if mine or world.size == 1 else {}
    if task is not run.task and mine:
        out |= task.breakdown()
    return world.weighted_means(out, _eval_weights(run.task, mine, out))


def _eval_weights(task, problems, out: dict) -> dict:
    """How many problems stand behind each mean of :func:`spo_lab.evaluate.accuracy`'s ``out``."""
    key = breakdown_key(task)
    groups = Counter(f"{key}={p.meta.get(key)}" for p in problems)  # the ``.../<key>=<value>`` means
    return {k: groups[k.split("/", 2)[2]] if k.count("/") > 1 else len(problems) for k in out}


def _open_samples(path: Path, start: int):
    """The samples log, opened for appending; rows written after the checkpoint we resume from are dropped."""
    keep = []
    if start and path.exists():
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= start:
                    keep.append(line + "\n")
            except (ValueError, KeyError):  # a torn last line from a kill
                pass
    path.write_text("".join(keep))
    return path.open("a")


def _write_samples(f, run: Run, step: int, b: Batch) -> None:
    """The first ``--sample-rows`` rows of the step's batch: what the policy wrote and what it was worth."""
    if f is None:  # not rank 0
        return
    for r in range(min(run.cfg.sample_rows, len(b.rollouts))):
        i = int(b.rollouts.prompt_index[r])
        f.write(json.dumps({
            "step": step, "prompt_id": run.problems[i].id, "prompt_index": i, "prompt": run.problems[i].prompt,
            "completion": b.rollouts.texts[r], "reward": float(b.rewards[r]), "baseline": float(b.baselines[r]),
            "advantage": float(b.advantages[r]), "truncated": bool(b.rollouts.truncated[r]),
            "policy_version": int(b.rollouts.policy_version[r]),
        }, ensure_ascii=False) + "\n")
    f.flush()


# ====================================================================== set-up: policy, task, engine, method
def setup(cfg: Config, folder: RunFolder, *, task=None, engine=None, algorithm: Algorithm | None = None,
          on_offline_chunk=None, world: World = ONE) -> Run:
    """Build every part of a run (or of a resumed run) in ``folder``; nothing here trains.

    With several processes (``world``) every process builds the same parts; rank 0 claims the folder."""
    torch.set_num_threads(cfg.num_threads)
    if not cfg.progress or world.rank:  # also silence transformers' own loading / saving bars
        hf_logging.disable_progress_bar()
    _check_before_loading(cfg, folder, task, world)  # a bad folder, path or split costs a second, not a model load
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # what the model draws as it is built (a LoRA adapter's init): the same everywhere
    device = resolve_device(world.device(cfg.device))
    lora = LoraSpec(r=cfg.lora_rank, alpha=cfg.lora_alpha) if cfg.lora_rank > 0 else None
    policy, tokenizer = load_policy(cfg.model, dtype=cfg.dtype, device=device, lora=lora,
                                    gradient_checkpointing=cfg.gradient_checkpointing)
    if world.rank:  # the engine's sampling stream: each process its own (rank 0 and one process go on with the above)
        torch.manual_seed(world.seed(cfg.seed))
    task = task if task is not None else get_task(cfg.task, data=cfg.data_dir or None, tokenizer=tokenizer,
                                                  **tool_task_kwargs(cfg))
    problems, eval_problems = task.load("train"), task.load(cfg.eval_split)
    if cfg.eval_max_prompts:
        eval_problems = eval_problems[: cfg.eval_max_prompts]
    for source, rows in (("the train split", problems), (f"the {cfg.eval_split} split", eval_problems)):
        check_context_length(policy, tokenizer, rows, cfg.max_new_tokens, source=source,
                             max_len=cfg.vllm_max_model_len or None)
    ck = _claim(cfg, folder, problems, world)  # before anything is written or computed
    if cfg.prompts_per_step > len(problems):
        raise UserError(f"--responses-per-step {cfg.responses_per_step} = {cfg.prompts_per_step} prompts per step "
                        f"exceeds the {len(problems)} training prompts")
    if engine is None:
        engine = _build_engine(cfg, policy, tokenizer, world)
    engine = build_tool_engine(cfg, engine, announce=world.rank == 0)  # --tool python: ToolEngine around it
    engine.sync_weights(policy)  # the engine samples from the policy as loaded
    gen = torch.Generator().manual_seed(cfg.seed)  # mini-batch splits (and the group methods' draws)
    ppo = cfg.ppo
    run = Run(cfg=cfg, policy=policy, tokenizer=tokenizer, engine=engine, task=task, problems=problems,
              eval_problems=eval_problems, ppo=ppo, gen=gen,
              optimizer=torch.optim.AdamW(trainable(policy), lr=cfg.lr, weight_decay=cfg.weight_decay),
              algo=algorithm if algorithm is not None else build_algorithm(cfg, len(problems), gen),
              d_estimator=build_d_estimator(cfg, problems, tokenizer) if algorithm is None else None,
              logprob_fn=world.sharded(logprob_fn(policy, cfg.temperature, ppo.rows_per_pass(cfg.responses_per_step))),
              ref_model=copy.deepcopy(policy).eval() if cfg.kl_coef > 0 else None,
              breakdown=_breakdown(task, problems), world=world)
    if ck is not None:
        _restore(run, ck)
    elif isinstance(run.algo, SPO) and cfg.offline_init:
        _offline_init(run, on_offline_chunk)
    policy.eval()
    if cfg.collector == "async":
        run.engine = start_collector(run)
    return run


def start_collector(run: Run) -> AsyncCollector:
    """``--collector async``: the run samples through an :class:`~spo_lab.collector.AsyncCollector` around its
    engine (which still serves the evaluation and the offline pass, the collector paused meanwhile)."""
    cfg = run.cfg
    if run.world.size > 1:
        raise UserError("--collector async runs in one process; with several processes use --collector sync")
    if cfg.max_staleness > 0:  # the collector's thread draws from run.gen meanwhile: the update gets a stream of its own
        run.update_gen = torch.Generator().manual_seed(cfg.seed + 1_000_003)
    return AsyncCollector(run.engine, run.policy, run.algo, [p.prompt for p in run.problems],
                          batch_units=cfg.prompts_per_step, max_staleness=cfg.max_staleness,
                          max_in_flight=cfg.max_in_flight, temperature=cfg.temperature,
                          max_new_tokens=cfg.max_new_tokens, start_version=run.start,
                          timeout_s=cfg.collect_timeout_s, breakdown=run.breakdown, lock=run.lock,
                          turn_level=cfg.max_staleness > 0)  # K = 0: the synchronous run's own calls, bit for bit


def _claim(cfg: Config, folder: RunFolder, problems, world: World) -> dict | None:
    """:func:`_claim_folder` on rank 0; the other processes share its verdict and read the same checkpoint."""
    ck, refusal = None, None
    if world.rank == 0:
        try:
            ck = _claim_folder(cfg, folder, problems)
        except UserError as err:
            if world.size == 1:
                raise
            refusal = err
    resumed, why = world.broadcast((ck is not None, None if refusal is None else str(refusal)))
    if why is not None:  # every process stops with rank 0's reason
        raise refusal if refusal is not None else UserError(why)
    return folder.load_checkpoint() if resumed and world.rank else ck


def _claim_folder(cfg: Config, folder: RunFolder, problems) -> dict | None:
    """Check what resuming or overwriting ``--out`` means before anything is written; the checkpoint or None."""
    settings = run_settings(cfg, problems)
    ck = folder.load_checkpoint() if cfg.resume else None
    if cfg.resume and (ck is not None or (folder.path / "config.json").exists()):
        folder.check_resume(settings, defaults=dataclasses.asdict(Config()))  # a refused resume changes nothing
    if ck is None:  # a new run (or a resume of a run killed before its first checkpoint)
        folder.start_fresh(overwrite=cfg.overwrite or cfg.resume)
    return ck


def _check_before_loading(cfg: Config, folder: RunFolder, task, world: World = ONE) -> None:
    """What can be refused before anything loads: nothing to resume, an unknown split, an unwritable cache,
    more processes than prompts per step. The folder is rank 0's to check; every process checks the rest."""
    if cfg.resume and world.rank == 0:
        folder.check_resumable()
    if cfg.prompts_per_step < world.size:
        raise UserError(f"{world.size} processes need at least one prompt each per step: --responses-per-step "
                        f"{cfg.responses_per_step} gives {cfg.prompts_per_step} prompts per step")
    splits = getattr(task if task is not None else task_class(cfg.task), "splits", None)
    if splits is not None and cfg.eval_split not in splits:
        raise UserError(f"--eval-split must be one of the {cfg.task if task is None else 'given'} task's splits "
                        f"{tuple(splits)}, got {cfg.eval_split!r}")
    if cfg.algo == "spo" and cfg.offline_init and not cfg.offline_values:
        check_writable(cfg.cache_dir or user_cache_dir("offline"), "--cache-dir")


def run_settings(cfg: Config, problems) -> dict:
    """What ``config.json`` records: every setting, and the training data's content fingerprint (a
    resume on changed data -- another file at the same path, the same prompts shuffled -- is refused)."""
    return dataclasses.asdict(cfg) | {"data_fingerprint": problems_fingerprint(problems)}


def build_algorithm(cfg: Config, num_prompts: int, generator: torch.Generator) -> Algorithm:
    """The method ``cfg.algo`` names: :class:`SPO`, or a :class:`GroupBaseline` for the group methods."""
    if cfg.algo == "spo":
        return SPO(num_prompts, cfg.prompts_per_step, rho_min=cfg.rho_min, rho_max=cfg.rho_max, d_half=cfg.d_half,
                   baseline=cfg.baseline, prioritized=cfg.sampling == "prioritized", eps=cfg.priority_eps,
                   gamma=cfg.priority_gamma, thompson=cfg.thompson, seed=cfg.seed + 1, generator=generator,
                   rho_constant=cfg.rho_constant if cfg.rho_mode == "constant" else None,
                   normalize=cfg.adv_norm == "batch")
    return GroupBaseline(cfg.algo, cfg.group, num_prompts, cfg.prompts_per_step, generator=generator)


def build_d_estimator(cfg: Config, problems, tokenizer):
    """SPO's D(x) estimator for ``--rho-mode`` (official stored-response, or the cheaper clock), else None."""
    if cfg.algo != "spo" or cfg.rho_mode == "constant":
        return None
    if cfg.rho_mode == "kl-clock":
        return KLClock(len(problems))
    width = max(len(tokenizer(p.prompt, add_special_tokens=False)["input_ids"]) for p in problems)
    return ResponseCache(len(problems), width, cfg.max_new_tokens, tokenizer.pad_token_id)


def _build_engine(cfg: Config, policy, tokenizer, world: World = ONE):
    vllm_kwargs = {} if cfg.engine not in ("vllm", "vllm-async") else {
        k: v for k, v in (("gpu_memory_utilization", cfg.vllm_gpu_memory_utilization),
                          ("max_model_len", cfg.vllm_max_model_len), ("enable_sleep_mode", cfg.vllm_sleep)) if v}
    if cfg.engine == "vllm-server":
        vllm_kwargs = {"url": cfg.engine_url}
    if cfg.engine == "vllm" and world.size > 1:  # one colocated vLLM per process, on its own GPU (torchrun's)
        vllm_kwargs["external_launcher"] = (world.rank, world.local_rank)
    return build_engine(cfg.engine, model=policy, tokenizer=tokenizer, model_path=cfg.model, dtype=cfg.dtype,
                        seed=world.seed(cfg.seed), **vllm_kwargs)


def _breakdown(task, problems) -> torch.Tensor | None:
    """``[P]`` the task's numeric metadata value (e.g. level) per prompt, or None."""
    values = breakdown_values(task, problems)
    return None if values is None else torch.tensor(values, dtype=torch.float64)


def _offline_init(run: Run, on_offline_chunk=None) -> None:
    """Initialise SPO's tracker from n0 samples per prompt (Sec. 3.3), imported or sampled (cached)."""
    cfg, spo = run.cfg, run.algo
    if cfg.offline_values:  # a missing prompt is an error, never weight 0
        succ, trials = import_official_values(cfg.offline_values, run.problems, missing="error", max_scores=cfg.n0)
        run.offline_responses = int(trials.sum())  # generated elsewhere, still part of the cost
    else:  # with several processes each samples (and caches) a contiguous share of the prompts
        world = run.world
        succ, trials = offline_counts(run.engine, run.task, world.share(run.problems), n0=cfg.n0,
                                      temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                                      device=next(run.policy.parameters()).device,
                                      seed=world.seed(cfg.seed if cfg.offline_seed < 0 else cfg.offline_seed),
                                      model_key=model_fingerprint(run.policy) + tool_cache_suffix(cfg),
                                      cache_dir=cfg.cache_dir or user_cache_dir("offline"),
                                      progress=cfg.progress and world.rank == 0, on_chunk=on_offline_chunk,
                                      info=run.offline_info)
        succ, trials = world.gather(succ, len(run.problems)), world.gather(trials, len(run.problems))
        run.offline_responses = cfg.n0 * len(run.problems)
    spo.init_from_counts(succ, trials, mode=cfg.init_mode)


# ====================================================================== the Python tool (opt-in: --tool)


class _ToolEvalTask:
    """The run's task, keeping the texts and rewards of its last ``reward`` call: the evaluation's sampled
    responses, from which :meth:`breakdown` gives the tool-call rate and the accuracy with and without a call."""

    def __init__(self, task):
        self.task, self.last = task, ([], [])

    def __getattr__(self, name):
        return getattr(self.task, name)

    def reward(self, completions, problems):
        rewards = self.task.reward(completions, problems)
        self.last = (list(completions), list(rewards))
        return rewards

    def breakdown(self) -> dict:
        from .tasks.arith_tool import tool_breakdown

        b = tool_breakdown(*self.last)
        return {f"{TOOL_EVAL_PREFIX}/{k}": v for k, v in b.items() if v is not None}


TOOL_EVAL_PREFIX = "eval_tool"
"""Held-out keys of a tool run: ``eval_tool/call_rate``, ``eval_tool/acc_with_tool``, ``eval_tool/acc_without_tool``
(the avg@k samples of each evaluation)."""


# ====================================================================== checkpoints
def save_checkpoint(run: Run, folder: RunFolder, step: int) -> None:
    """Tensors and plain values only: loadable with ``weights_only=True``.

    Several processes: every process checks that its weights and D's memory equal rank 0's and hands
    over its sampling stream; rank 0 writes the one checkpoint (``rank_rng``: every process's stream)."""
    world, device = run.world, next(run.policy.parameters()).device
    d_state = run.d_estimator.state_dict if run.d_estimator is not None else dict
    world.check_same(lambda: state_checksum([run.policy.state_dict(), d_state()]), "the weights or D's memory")
    rank_rng = world.gather_objects(_sampling_rng(device)) if world.size > 1 else None
    if world.rank:
        return
    state = {"model": run.policy.state_dict(), "optimizer": run.optimizer.state_dict(),
             "rng": _rng_states(run.gen, next(run.policy.parameters()).device), "step": step,
             "responses": run.responses, "tokens": run.tokens, "offline_responses": run.offline_responses,
             "algorithm": run.algo.state_dict()}
    if run.d_estimator is not None:
        state["divergence"] = run.d_estimator.state_dict()
    if rank_rng is not None:
        state["rank_rng"] = rank_rng
    folder.save_checkpoint(state)


def _restore(run: Run, ck: dict) -> None:
    """Continue from a checkpoint: weights, optimiser, every RNG, the method's state and D's memory.

    The offline pass is not run again: the checkpoint's tracker already holds what it gave."""
    run.policy.load_state_dict(ck["model"])
    run.optimizer.load_state_dict(ck["optimizer"])
    _set_rng_states(ck["rng"], run.gen, next(run.policy.parameters()).device)
    run.algo.load_state_dict(ck["algorithm"] if "algorithm" in ck else ck.get("spo", {}))
    if run.d_estimator is not None:
        run.d_estimator.load_state_dict(ck["divergence"])
    run.start, run.responses, run.tokens = ck["step"], ck["responses"], ck["tokens"]
    if "offline_responses" in ck:
        run.offline_responses = ck["offline_responses"]
    elif isinstance(run.algo, SPO) and run.cfg.offline_init:  # a checkpoint from before this field: count it again
        run.offline_responses = run.cfg.n0 * len(run.problems)
    if run.world.size > 1:
        _restore_sampling_rng(run, ck)
    run.engine.sync_weights(run.policy)  # ... and sample from the resumed weights


def _sampling_rng(device: torch.device) -> dict:
    """This process's own random stream (the engine samples from it): torch's CPU generator, and CUDA's."""
    return {"torch": torch.get_rng_state()} | ({"cuda": torch.cuda.get_rng_state(device)} if device.type == "cuda"
                                                else {})


def _restore_sampling_rng(run: Run, ck: dict) -> None:
    """Each process's saved stream on as many processes as saved; on another number, streams from (seed, step)."""
    world, device, saved = run.world, next(run.policy.parameters()).device, ck.get("rank_rng")
    if saved is not None and len(saved) == world.size:
        torch.set_rng_state(saved[world.rank]["torch"])
        if device.type == "cuda" and "cuda" in saved[world.rank]:
            torch.cuda.set_rng_state(saved[world.rank]["cuda"], device)
    elif world.rank:  # rank 0 continues the checkpoint's own stream
        torch.manual_seed(world.seed(run.cfg.seed * 1_000_003 + ck["step"]))


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


def _shown(default) -> str:
    """A default as ``--help`` shows it: a path inside the installed package relative to it (no machine paths)."""
    root = DEFAULT_MODEL_DIR.parent.parent
    if isinstance(default, str) and default.startswith(str(root) + "/"):
        return f"{Path(default).relative_to(root)}, bundled"
    return repr(default) if default == "" else str(default)


def parse_args(argv=None, cls=Config, defaults: dict | None = None):
    """Build an argparse parser from a config dataclass: ``--field-name value`` for every field.

    ``defaults`` replaces the dataclass defaults of some fields (a named profile, see spo_lab.profiles).
    """
    defaults = defaults or {}
    docs = field_docs(cls)
    parser = argparse.ArgumentParser(description=(inspect.getmodule(cls).__doc__ or "").split("\n")[0])
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=defaults.get(f.name, f.default),
                                help=docs.get(f.name))
        else:
            typ = {"int": int, "float": float, "str": str}.get(f.type, f.type)
            default = defaults.get(f.name, f.default)
            parser.add_argument(flag, type=typ, default=default,
                                help=f"{docs.get(f.name, '')} (default: {_shown(default)})".replace("%", "%%"))
    cfg = cls(**vars(parser.parse_args(argv)))
    try:  # every setting is checked before anything loads, and the error names the flag
        cfg.validate()
    except ValueError as err:
        parser.error(str(err))
    return cfg


def main(argv=None) -> None:
    cfg = parse_args(argv)
    out = train(cfg)
    if os.environ.get("RANK", "0") == "0":  # under torchrun: once, not once per process
        print(f"wrote {out}")


if __name__ == "__main__":
    cli_main(main)  # expected errors (flags, data, files, run folders): one line, exit 2; --debug: the traceback
