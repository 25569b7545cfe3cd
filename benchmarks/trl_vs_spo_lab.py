"""Does SPO inside TRL learn like spo_lab's own SPO? TRL's SPOTrainer and GRPOTrainer beside spo_lab's main job.

Not a test. Trains the bundled tiny Qwen3 (``data/tiny-qwen3``, fp32, CPU, one torch thread) on the bundled arithmetic
prompts (5,000 training prompts) with the settings of spo_lab's main job (``results/tiny``, ``python -m
spo_lab.experiment``) carried over to TRL 1.16:

  spo-trl   spo_lab.integrations.trl.SPOTrainer: 64 prompts x 1 response per step; offline pass n0 = 8
  grpo-trl  trl.GRPOTrainer: 8 prompts x 8 responses per step (its group-std advantages)
  spo-ours, grpo-ours  spo_lab.train itself, the same settings: step time only (``--no-eval``)

All: 64 responses per step, temperature 1.0, at most 8 new tokens, lr 1e-4 constant (the main job's tuned lr for
both methods), AdamW weight decay 0.01, gradient clipping 1.0, two optimiser steps per step (``steps_per_generation
= 2``, as the main job's two PPO mini-batches), clip 0.2 / 0.28 and dual clip 10 (TRL's ``delta``), no KL, fp32,
gradient checkpointing off. Held-out evaluation exactly as the main job's: the 500 test prompts, avg@8 at T = 1 and
greedy, with :func:`spo_lab.evaluate.accuracy` and the main job's evaluation seeds (``seed * 1_000_003 + step``), at
step 0 and every ``--eval-every`` steps. The SPO offline pass runs once (seed 0's run) and every SPO run starts from
its counts, as the main job's ``offline_seed = 0``.

A TRL step's time is its two optimiser steps (generation, rewards, SPO's draw, advantages and tracker update, the
loss and the optimiser), timed by a TrainerCallback; a spo_lab step's is the sum of its ``time/*`` phases, as in
``benchmarks/bench_step_time.py``; evaluations and the offline pass are left out of both.
Each run is a fresh process, one after the other. spo_lab's own numbers are read from the main job's run folders
(``results/tiny/runs/<method>/seed<k>/metrics.jsonl``) when they are on this machine, else its summary's start and
end. TRL comes with the ``trl`` extra, in a venv of its own:

    bash scripts/ci_trl.sh                                                # builds .venv-trl
    .venv-trl/bin/python benchmarks/trl_vs_spo_lab.py                      # 2 seeds x 150 steps
    .venv-trl/bin/python benchmarks/trl_vs_spo_lab.py --smoke              # 1 seed x 4 steps, 50 eval prompts
    .venv-trl/bin/python benchmarks/trl_vs_spo_lab.py --seeds 1 --steps 20 --rounds 3 --no-eval \
        --methods spo-trl,grpo-trl,spo-ours,grpo-ours                      # step time only, beside spo_lab's

With ``--rounds`` every run is repeated, the methods taking turns (the first one rotates from round to round), so
that a change in machine load hits them alike; each step-time ratio is taken within a round, then the median.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESPONSES, GROUP, MAX_NEW, TEMPERATURE, LR, MINI_BATCHES = 64, 8, 8, 1.0, 1e-4, 2
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
       "HF_DATASETS_OFFLINE": "1"}
METHODS = {"spo-trl": ("SPO, SPOTrainer (TRL)", "spo"), "grpo-trl": ("GRPO, GRPOTrainer (TRL)", "grpo"),
           "spo-ours": ("SPO, spo_lab.train", "spo"), "grpo-ours": ("GRPO, spo_lab.train", "grpo")}
"""run name -> (label, the main job's method). The ``-ours`` runs time spo_lab's own steps (``--no-eval`` only: their
accuracy is the main job's)."""
RATIOS = [("SPOTrainer / GRPOTrainer", "spo-trl", "grpo-trl"), ("SPO / GRPO, spo_lab", "spo-ours", "grpo-ours"),
          ("SPOTrainer / spo_lab SPO", "spo-trl", "spo-ours"), ("GRPOTrainer / spo_lab GRPO", "grpo-trl", "grpo-ours")]


# ====================================================================== one run (a fresh process)
def run_ours(method: str, args) -> dict:
    """``args.steps`` steps of spo_lab.train at the main job's settings; per-step ms from metrics.jsonl's time/*."""
    from spo_lab.keys import NOT_STEP
    from spo_lab.train import Config, train

    cfg = Config(algo=METHODS[method][1], steps=args.steps, seed=args.seed, out=args.run_dir, device="cpu",
                 dtype="float32", num_threads=1, responses_per_step=RESPONSES, temperature=TEMPERATURE,
                 max_new_tokens=MAX_NEW, lr=LR, mini_batches=MINI_BATCHES, eval_every=args.steps + 1,
                 eval_max_prompts=8, save_every=0, save_model=False, progress=False)  # offline pass: the user cache
    rows = [json.loads(line) for line in (train(cfg) / "metrics.jsonl").read_text().splitlines()]
    step_ms = [1e3 * sum(v for k, v in r.items() if k.startswith("time/") and k not in NOT_STEP)
               for r in rows if r["step"] >= 1]
    return {"method": method, "seed": args.seed, "evals": [], "step_ms": step_ms, "eval_s": [], "offline_s": None,
            "offline_responses": 0}


def run(method: str, args) -> dict:
    if method.endswith("-ours"):
        return run_ours(method, args)
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from spo_lab.engines import HFEngine
    from spo_lab.evaluate import accuracy
    from spo_lab.integrations.trl import SPOConfig, SPOTrainer
    from spo_lab.models import DEFAULT_MODEL_DIR, load_tokenizer
    from spo_lab.tasks import get_task

    torch.set_num_threads(1)
    tok = load_tokenizer(DEFAULT_MODEL_DIR)
    task = get_task("arith", tokenizer=tok)
    problems, held_out = task.load("train"), task.load("test")[: args.eval_prompts or None]
    dataset = Dataset.from_list([{"prompt": p.prompt, "answer": p.answer, "row": i} for i, p in enumerate(problems)])

    def arith_reward(completions, row, **kwargs):
        return task.reward(completions, [problems[i] for i in row])

    evals, step_ms, eval_s = [], [], []

    class Measure(TrainerCallback):
        """Times each optimiser step; evaluates after every ``eval_every`` steps of 64 responses."""

        def on_step_begin(self, targs, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, targs, state, control, model=None, **kw):
            step_ms.append((time.perf_counter() - self.t0) * 1e3)
            if not args.no_eval and state.global_step % (MINI_BATCHES * args.eval_every) == 0:
                evaluate(model, state.global_step // MINI_BATCHES)

    def evaluate(model, step):
        t0, was_training = time.perf_counter(), model.training
        model.eval()
        acc = accuracy(HFEngine(model, tok), task, held_out, temperature=TEMPERATURE, max_new_tokens=MAX_NEW,
                       seed=args.seed * 1_000_003 + step, samples=8)
        model.train(was_training)
        evals.append({"step": step, "avg": acc["eval/sampled_acc"], "greedy": acc["eval/greedy_acc"]})
        eval_s.append(time.perf_counter() - t0)

    common = dict(output_dir=args.run_dir, max_steps=MINI_BATCHES * args.steps, seed=args.seed, report_to="none",
                  use_cpu=True, bf16=False, gradient_checkpointing=False, disable_tqdm=True, save_strategy="no",
                  logging_steps=MINI_BATCHES * args.eval_every, per_device_train_batch_size=RESPONSES // MINI_BATCHES,
                  steps_per_generation=MINI_BATCHES, max_completion_length=MAX_NEW, temperature=TEMPERATURE,
                  learning_rate=LR, lr_scheduler_type="constant", weight_decay=0.01, max_grad_norm=1.0,
                  epsilon=0.2, epsilon_high=0.28, delta=10.0, beta=0.0, loss_type="dapo")
    kw = dict(model=str(DEFAULT_MODEL_DIR), reward_funcs=arith_reward, train_dataset=dataset, processing_class=tok,
              callbacks=[Measure()])
    given = None
    if method == "spo-trl":  # the first SPO run makes the offline pass; the others start from its counts
        given = torch.load(args.counts, weights_only=True) if Path(args.counts).exists() else None
        trainer = SPOTrainer(args=SPOConfig(**common, spo_n0=8), offline_counts=given, **kw)
    else:
        trainer = GRPOTrainer(args=GRPOConfig(**common, num_generations=GROUP), **kw)
    if not args.no_eval:
        evaluate(trainer.model, 0)
    trainer.train()
    offline_s = None
    if method == "spo-trl" and given is None:
        torch.save(trainer.offline_counts, args.counts)
        offline_s = trainer.offline_seconds
    per_step = [a + b for a, b in zip(step_ms[::MINI_BATCHES], step_ms[1::MINI_BATCHES])]
    return {"method": method, "seed": args.seed, "evals": evals, "step_ms": per_step, "eval_s": eval_s,
            "offline_s": offline_s, "offline_responses": 8 * len(problems) if method == "spo-trl" else 0}


# ====================================================================== spo_lab's main job, for comparison
def main_job(method: str, seed: int, steps: list[int]) -> dict:
    """``{step: (avg, greedy)}`` of spo_lab's main-job run, at the given steps where its folder is here."""
    path = ROOT / "results" / "tiny" / "runs" / method / f"seed{seed}" / "metrics.jsonl"
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row["step"] in steps and "eval/sampled_acc" in row:
                out[row["step"]] = (row["eval/sampled_acc"], row["eval/greedy_acc"])
    else:
        summary = json.loads((ROOT / "results" / "tiny" / "summary.json").read_text())
        for r in summary["runs"][method]["per_seed"]:
            if r["seed"] == seed:
                out = {0: (r["start_avg"], r["start_greedy"]), r["steps"]: (r["final_avg"], r["final_greedy"])}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=2, help="seeds 0..k-1")
    ap.add_argument("--steps", type=int, default=150, help="steps of 64 responses per run")
    ap.add_argument("--eval-every", type=int, default=75, help="evaluate every k steps (and at 0)")
    ap.add_argument("--eval-prompts", type=int, default=0, help="first k held-out prompts (0 = all 500)")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    ap.add_argument("--rounds", type=int, default=1, help="repeat every run, the methods taking turns")
    ap.add_argument("--no-eval", action="store_true", help="no held-out evaluation: step time only")
    ap.add_argument("--warmup", type=int, default=3, help="first steps of each run left out of the step times")
    ap.add_argument("--json", default="", help="also write every run's result to this file")
    ap.add_argument("--smoke", action="store_true", help="1 seed x 4 steps, evaluations at 0, 2, 4 on 50 prompts")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    for name in ("--seed", "--run-dir", "--counts", "--worker-out"):
        ap.add_argument(name, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.seed, args.eval_prompts = int(args.seed), int(args.eval_prompts)
        Path(args.worker_out).write_text(json.dumps(run(args.worker, args)))
        return
    if args.smoke:
        args.seeds, args.steps, args.eval_every, args.eval_prompts, args.warmup = 1, 4, 2, 50, 1
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if any(m.endswith("-ours") for m in methods) and not args.no_eval:
        ap.error("the -ours runs time spo_lab's steps only: add --no-eval (their accuracy is the main job's)")
    results, root = [], Path(tempfile.mkdtemp(prefix="trl_vs_spo_lab-"))
    counts = root / "offline_counts.pt"
    print(f"{args.seeds} seeds x {methods}, {args.steps} steps of {RESPONSES} responses, eval every {args.eval_every} "
          f"on {args.eval_prompts or 500} held-out prompts (avg@8, greedy); one process per run, OMP_NUM_THREADS=1")
    try:
        for rnd, seed in ((r, s) for r in range(args.rounds) for s in range(args.seeds)):
            for method in methods[rnd % len(methods):] + methods[: rnd % len(methods)]:  # the first one rotates
                out = root / f"{method}-{seed}-{rnd}.json"
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, "--seed", str(seed), "--run-dir",
                       str(root / f"{method}-{seed}-{rnd}"), "--counts", str(counts), "--worker-out", str(out),
                       "--steps", str(args.steps), "--eval-every", str(args.eval_every),
                       "--eval-prompts", str(args.eval_prompts)] + (["--no-eval"] if args.no_eval else [])
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, env={**os.environ, **ENV}, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise RuntimeError(f"{method} seed {seed} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
                res = json.loads(out.read_text()) | {"round": rnd}
                results.append(res)
                print(f"  {method} seed {seed}: {time.perf_counter() - t0:.0f} s wall; "
                      + "".join(f"step {e['step']} avg@8 {e['avg']:.4f} greedy {e['greedy']:.3f}; "
                                for e in res["evals"])
                      + f"median {statistics.median(res['step_ms'][args.warmup:]):.0f} ms/step"
                      + (f"; offline pass {res['offline_s']:.0f} s" if res["offline_s"] else ""), flush=True)
    finally:  # run folders, checkpoints, the offline counts
        shutil.rmtree(root, ignore_errors=True)
    report(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def report(results: list[dict], args) -> None:
    times = {}
    for r in results:  # per round and seed: {method: median ms per step}
        times.setdefault((r["round"], r["seed"]), {})[r["method"]] = statistics.median(r["step_ms"][args.warmup:])
    print(f"\nmedian ms per step of {RESPONSES} responses (first {args.warmup} steps of each run dropped):")
    for (rnd, seed), t in sorted(times.items()):
        print(f"  round {rnd} seed {seed}: " + ", ".join(f"{m} {v:.0f}" for m, v in t.items()))
    for label, a, b in RATIOS:  # each ratio within a round, then the median over rounds
        ratios = [t[a] / t[b] for t in times.values() if a in t and b in t]
        if ratios:
            print(f"{label}: {statistics.median(ratios):.2f} (median of {len(ratios)} per-round ratios: "
                  + ", ".join(f"{x:.2f}" for x in ratios) + ")")
    if args.no_eval:
        return
    steps = sorted({e["step"] for r in results for e in r["evals"]})
    print("\nheld-out avg@8 (greedy), per seed; spo_lab = the main job's run of the same method and seed")
    print("| method | seed | " + " | ".join(f"step {s}" for s in steps) + " | spo_lab, same steps | median ms/step |")
    print("|---|---:|" + "---:|" * len(steps) + "---|---:|")
    for r in results:
        ev = {e["step"]: e for e in r["evals"]}
        ours = main_job(METHODS[r["method"]][1], r["seed"], steps)
        mine = " | ".join(f"{ev[s]['avg']:.3f} ({ev[s]['greedy']:.3f})" if s in ev else "" for s in steps)
        theirs = ", ".join(f"{s}: {a:.3f} ({g:.3f})" for s, (a, g) in sorted(ours.items()))
        print(f"| {METHODS[r['method']][0]} | {r['seed']} | {mine} | {theirs} "
              f"| {statistics.median(r['step_ms'][args.warmup:]):.0f} |")
    for method in sorted({r["method"] for r in results}):
        rs = [r for r in results if r["method"] == method]
        gains = [r["evals"][-1]["avg"] - r["evals"][0]["avg"] for r in rs]
        print(f"{METHODS[method][0]}: avg@8 gain from step 0 to {rs[0]['evals'][-1]['step']}, per seed "
              + ", ".join(f"{g:+.3f}" for g in gains) + f"; mean {statistics.mean(gains):+.3f}")
    off = [r for r in results if r["offline_s"]]
    if off:
        print(f"SPO offline pass: {off[0]['offline_responses']} responses in {off[0]['offline_s']:.0f} s (once, "
              f"shared by every SPO run; not in the step times)")


if __name__ == "__main__":
    main()
