"""Time per policy update: spo_lab's GRPO and SPO steps vs TRL's GRPOTrainer, same model, prompts and budget.

Not a test. Every setup trains the bundled tiny Qwen3 (``data/tiny-qwen3``, fp32, CPU, one torch thread)
on the bundled arithmetic prompts with 64 responses per step, temperature 1.0 and at most 8 new tokens:

  grpo          spo_lab.train, algo=grpo: 8 prompts x 8 responses
  spo-kl        spo_lab.train, algo=spo, rho_mode=kl: 64 prompts x 1 (the official D estimator)
  spo-kl-clock  spo_lab.train, algo=spo, rho_mode=kl-clock: 64 prompts x 1 (the cheaper estimator)
  trl           trl.GRPOTrainer with its defaults (gradient checkpointing on): 8 prompts x 8
  trl-no-gc     the same with gradient_checkpointing=False

A step of ours is the sum of the ``time/*`` columns of ``metrics.jsonl`` except ``time/eval``: choosing
prompts, generation, rewards and advantages, the update, the tracker update and the engine sync. The SPO
rows start from the offline pass (n0 = 8 samples per training prompt), as by default; it runs once before
the first round, into a cache that every SPO run reads, and is not part of any step. A TRL step is timed
with a TrainerCallback from ``on_step_begin`` to ``on_step_end`` (generation, rewards, the loss, the
backward pass and the optimiser step); per_device_train_batch_size = generation_batch_size = 64, so each
optimiser step generates 64 completions (num_generations = 8) and makes one update over them.
TRL's defaults otherwise, except bf16=False (fp32, as ours) and use_cpu=True.

Each of ``--rounds`` rounds runs every setup for ``--steps`` steps in a fresh process, one after the other
(the starting setup rotates from round to round), so a change in machine load hits all of them alike; the
first ``--warmup`` steps of each run are dropped. Prints the median ms per step of each setup, the ratios
(each computed within a round, then the median over rounds) and where our steps spend their time.

TRL is not a dependency of spo_lab: it comes with the ``bench`` extra, in a venv of its own.

    python3 -m venv .venv-bench && .venv-bench/bin/pip install -e ".[bench]" && .venv-bench/bin/python benchmarks/bench_step_time.py
    .venv-bench/bin/python benchmarks/bench_step_time.py --rounds 5 --steps 30
    .venv/bin/python benchmarks/bench_step_time.py --smoke        # 1 round x 3 steps, grpo and spo-kl only, no TRL
    .venv/bin/python benchmarks/bench_step_time.py --smoke --offline-cache runs/cache   # reuse the offline pass
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESPONSES = 64  # responses per step, every setup
GROUP = 8  # responses per prompt of the GRPO setups
TEMPERATURE = 1.0
MAX_NEW_TOKENS = 8
TRL_VERSION = "1.16.0"  # the version the bench extra pins
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # every worker: one thread, no network

# setup -> (label, prompts x responses, spo_lab Config fields | None for TRL)
SETUPS = {
    "grpo": ("GRPO (ours)", f"{RESPONSES // GROUP} x {GROUP}", {"algo": "grpo", "group_size": GROUP}),
    "spo-kl": ("SPO, rho_mode=kl (ours)", f"{RESPONSES} x 1", {"algo": "spo", "rho_mode": "kl"}),
    "spo-kl-clock": ("SPO, rho_mode=kl-clock (ours)", f"{RESPONSES} x 1", {"algo": "spo", "rho_mode": "kl-clock"}),
    "trl": ("TRL GRPOTrainer (defaults: grad. ckpt on)", f"{RESPONSES // GROUP} x {GROUP}", None),
    "trl-no-gc": ("TRL GRPOTrainer, grad. ckpt off", f"{RESPONSES // GROUP} x {GROUP}", None),
}
OURS = [k for k, v in SETUPS.items() if v[2] is not None]
TRL = [k for k, v in SETUPS.items() if v[2] is None]
# (label, numerator, denominator): each ratio is taken within a round, then the median over rounds
RATIOS = [
    ("SPO(kl) / GRPO(ours)", "spo-kl", "grpo"),
    ("SPO(kl-clock) / GRPO(ours)", "spo-kl-clock", "grpo"),
    ("GRPO(ours) / TRL", "grpo", "trl"),
    ("SPO(kl) / TRL", "spo-kl", "trl"),
    ("GRPO(ours) / TRL(no grad. ckpt)", "grpo", "trl-no-gc"),
    ("SPO(kl) / TRL(no grad. ckpt)", "spo-kl", "trl-no-gc"),
]


# ====================================================================== workers (one fresh process per run)
def ours_config(setup: str, args, out: str, cache_dir: str, steps: int):
    from spo_lab.train import Config

    return Config(
        **SETUPS[setup][2], steps=steps, seed=args.seed, out=out, model=args.model, device="cpu", dtype="float32",
        num_threads=1, responses_per_step=RESPONSES, temperature=TEMPERATURE, max_new_tokens=MAX_NEW_TOKENS,
        eval_every=steps + 1, eval_max_prompts=8,  # the evaluations at steps 0 and N are left out of the steps
        save_every=0, save_model=False, progress=False, cache_dir=cache_dir,  # offline_init stays on (default)
    )


def run_ours(setup: str, args) -> dict:
    """Train ``args.steps`` steps with spo_lab.train; per-step ms from the time/* columns of metrics.jsonl."""
    import torch

    from spo_lab.keys import NOT_STEP  # time/* columns that are not part of a step
    from spo_lab.train import train

    out = train(ours_config(setup, args, args.run_dir, args.cache_dir, args.steps))
    rows = [json.loads(line) for line in open(Path(out) / "metrics.jsonl")]
    rows = [r for r in rows if r["step"] >= 1]  # the step-0 row is the initial evaluation only
    parts = [{k[5:]: v * 1e3 for k, v in r.items() if k.startswith("time/") and k not in NOT_STEP} for r in rows]
    return {"step_ms": [sum(p.values()) for p in parts], "parts_ms": parts, "threads": torch.get_num_threads()}


def run_offline_pass(args) -> dict:
    """Fill the offline-init cache that every SPO run reads, by a zero-step SPO run.

    Returns the pass's responses and seconds (None when the cache already held it).
    """
    import torch

    from spo_lab.models import load_tokenizer
    from spo_lab.tasks import get_task
    from spo_lab.train import train

    before = set(Path(args.cache_dir).glob("offline-*.pt"))
    cfg = ours_config("spo-kl", args, args.run_dir, args.cache_dir, 0)
    train(cfg)
    new = sorted(set(Path(args.cache_dir).glob("offline-*.pt")) - before)
    seconds = float(torch.load(new[0], weights_only=True)["seconds"]) if new else None
    prompts = len(get_task(cfg.task, tokenizer=load_tokenizer(cfg.model)).load("train"))
    return {"seconds": seconds, "responses": cfg.n0 * prompts}


def run_trl(setup: str, args) -> dict:
    """Train ``args.steps`` optimiser steps with trl.GRPOTrainer; a callback times each one."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from spo_lab.models import load_tokenizer
    from spo_lab.tasks import get_task
    from spo_lab.tasks.arith import reward

    tok = load_tokenizer(args.model)  # the tokenizer our trainer uses (left padding, <pad>)
    problems = get_task("arith", tokenizer=tok).load("train")
    dataset = Dataset.from_list([{"prompt": p.prompt, "answer": p.answer} for p in problems])

    scored = []  # completions per reward call: one call per generation batch

    def arith_reward(completions, answer, **kwargs):  # TRL passes the dataset's other columns by name
        scored.append(len(completions))
        return [reward(c, a) for c, a in zip(completions, answer)]

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.ms, self.t0 = [], None

        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.ms.append((time.perf_counter() - self.t0) * 1e3)

    config = GRPOConfig(
        output_dir=args.run_dir, max_steps=args.steps, seed=args.seed, report_to="none", use_cpu=True,
        bf16=False,  # TRL defaults to bf16 autocast; every setup here runs in fp32
        per_device_train_batch_size=RESPONSES, generation_batch_size=RESPONSES,  # -> steps_per_generation = 1
        num_generations=GROUP, max_completion_length=MAX_NEW_TOKENS, temperature=TEMPERATURE,
        disable_tqdm=True, **({"gradient_checkpointing": False} if setup == "trl-no-gc" else {}),
    )
    timer = StepTimer()
    trainer = GRPOTrainer(model=args.model, reward_funcs=arith_reward, args=config, train_dataset=dataset,
                          processing_class=tok, callbacks=[timer])
    trainer.train()
    return {"step_ms": timer.ms, "threads": torch.get_num_threads(), "scored": scored,
            "grad_ckpt": bool(getattr(trainer.model, "is_gradient_checkpointing", False)),
            "grad_accum": config.gradient_accumulation_steps, "steps_per_generation": config.steps_per_generation}


def worker(args) -> None:
    import torch

    torch.set_num_threads(1)
    if args.worker == "offline-pass":
        res = run_offline_pass(args)
    elif args.worker in TRL:
        res = run_trl(args.worker, args)
    else:
        res = run_ours(args.worker, args)
    Path(args.worker_out).write_text(json.dumps(res))


# ====================================================================== the driver
def spawn(setup: str, args, root: Path, cache_dir: Path, tag: str) -> dict:
    """Run one setup in a fresh Python process; its result dict (the worker's output is shown only on failure)."""
    run_dir, res_file = root / f"{tag}-{setup}", root / f"{tag}-{setup}.json"
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", setup, "--worker-out", str(res_file),
           "--run-dir", str(run_dir), "--cache-dir", str(cache_dir), "--steps", str(args.steps),
           "--seed", str(args.seed), "--model", args.model]
    proc = subprocess.run(cmd, env={**os.environ, **ENV}, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise RuntimeError(f"{setup} failed (exit {proc.returncode}); its output ends with:\n{tail}")
    shutil.rmtree(run_dir, ignore_errors=True)
    return json.loads(res_file.read_text())


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="rounds; every setup runs once per round")
    ap.add_argument("--steps", type=int, default=20, help="training steps per run")
    ap.add_argument("--warmup", type=int, default=3, help="first steps of each run left out")
    ap.add_argument("--setups", default=",".join(SETUPS), help=f"comma-separated subset of {','.join(SETUPS)}")
    ap.add_argument("--model", default="", help="model folder (default: the bundled tiny Qwen3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--offline-cache", default="",
                    help="folder for the SPO offline-pass cache, kept and reused (default: a temporary folder)")
    ap.add_argument("--smoke", action="store_true",
                    help="1 round x 3 steps (1 warm-up), grpo and spo-kl only: checks the script, not the speed")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one setup in this process
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.model:
        from spo_lab.models import DEFAULT_MODEL_DIR

        args.model = str(DEFAULT_MODEL_DIR)
    if args.worker:
        return worker(args)
    if args.smoke:
        args.rounds, args.steps, args.warmup, args.setups = 1, 3, 1, "grpo,spo-kl"
    setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    unknown = sorted(set(setups) - set(SETUPS))
    if unknown:
        ap.error(f"unknown setups {unknown}; known: {list(SETUPS)}")
    if not 0 <= args.warmup < args.steps:
        ap.error(f"--warmup must be in [0, --steps) (got {args.warmup}, steps {args.steps})")

    import torch
    import transformers

    trl_ok = importlib.util.find_spec("trl") is not None
    if not trl_ok and any(s in TRL for s in setups):
        print(f"trl is not importable in this environment ({sys.executable}): the TRL rows are skipped.\n"
              f"Install the 'bench' extra (trl=={TRL_VERSION}) in a venv of its own:\n"
              f'    python3 -m venv .venv-bench && .venv-bench/bin/pip install -e ".[bench]" && '
              f".venv-bench/bin/python benchmarks/bench_step_time.py\n")
        setups = [s for s in setups if s not in TRL]
        if not setups:
            return
    print(f"step time, {RESPONSES} responses per step, T={TEMPERATURE}, max {MAX_NEW_TOKENS} new tokens, fp32 CPU | "
          f"model {args.model}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, trl {version('trl')} | "
          f"python {platform.python_version()}, {platform.machine()}, cpu count {os.cpu_count()}")
    if trl_ok and version("trl") != TRL_VERSION:
        print(f"note: the bench extra pins trl=={TRL_VERSION}; these TRL rows use {version('trl')}")
    print(f"{args.rounds} rounds x {len(setups)} setups, {args.steps} steps per run, first {args.warmup} dropped; "
          f"every run in a fresh process, OMP_NUM_THREADS=1")

    root = Path(tempfile.mkdtemp(prefix="bench_step_time-"))
    cache_dir = Path(args.offline_cache) if args.offline_cache else root / "offline-cache"
    ms = {s: [] for s in setups}  # setup -> one list of kept step times per round
    parts = {s: [] for s in setups}  # our setups: per-step time of each part
    threads, trl_info = set(), {}
    try:
        if any(s.startswith("spo") for s in setups):
            off = spawn("offline-pass", args, root, cache_dir, "init")
            took = f"{off['seconds']:.1f} s" if off["seconds"] is not None else f"read from the cache in {cache_dir}"
            print(f"SPO offline pass (n0 x prompts = {off['responses']} responses): {took}, once, before round 1; "
                  f"every SPO run reads it from the cache. Not part of a step: excluded from every step time")
        for r in range(args.rounds):
            order = setups[r % len(setups):] + setups[: r % len(setups)]  # the starting setup rotates
            for s in order:
                res = spawn(s, args, root, cache_dir, f"r{r}")
                kept = res["step_ms"][args.warmup:]
                ms[s].append(kept)
                parts[s] += res.get("parts_ms", [])[args.warmup:]
                threads.add(res["threads"])
                if s in TRL:
                    trl_info[s] = res
                print(f"  round {r + 1}/{args.rounds}  {s:<13} median {statistics.median(kept):8.1f} ms/step "
                      f"over {len(kept)} steps", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"\ntorch threads in every worker: {', '.join(map(str, sorted(threads)))}")
    for s, res in trl_info.items():
        print(f"{s}: gradient checkpointing {'on' if res['grad_ckpt'] else 'off'}, per_device_train_batch_size "
              f"{RESPONSES}, gradient_accumulation_steps {res['grad_accum']}, steps_per_generation "
              f"{res['steps_per_generation']}; {len(res['scored'])} reward calls of "
              f"{'/'.join(map(str, sorted(set(res['scored']))))} completions over {len(res['step_ms'])} steps")
    print("\n| setup | prompts x responses | median ms/step | round medians (ms) | steps timed |")
    print("|---|---|---:|---|---:|")
    for s in setups:
        pooled = [x for run in ms[s] for x in run]
        rounds = ", ".join(f"{statistics.median(run):.0f}" for run in ms[s])
        print(f"| {SETUPS[s][0]} | {SETUPS[s][1]} | {statistics.median(pooled):.1f} | {rounds} | {len(pooled)} |")

    ratios = [(label, a, b) for label, a, b in RATIOS if a in ms and b in ms]
    if ratios:
        print("\n| ratio of step times | median over rounds | per round |")
        print("|---|---:|---|")
        for label, a, b in ratios:
            per = [statistics.median(x) / statistics.median(y) for x, y in zip(ms[a], ms[b])]
            print(f"| {label} | {statistics.median(per):.2f} | {', '.join(f'{v:.2f}' for v in per)} |")

    ours = [s for s in setups if s in OURS]
    if ours:
        names = list(parts[ours[0]][0])
        print("\nwhere our steps spend their time (median ms per part; time/eval and the offline pass excluded):")
        print("| setup | " + " | ".join(names) + " |")
        print("|---|" + "---:|" * len(names))
        for s in ours:
            print(f"| {SETUPS[s][0]} | " + " | ".join(f"{statistics.median(p[k] for p in parts[s]):.1f}"
                                                     for k in names) + " |")


if __name__ == "__main__":
    main()
