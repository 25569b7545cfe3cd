"""The tiny reproduction: SPO vs GRPO on the bundled Qwen3, tuned alike, several seeds, one command.

    python -m spo_lab.experiment                 # the main job: SPO and GRPO x 3 seeds on the test split
    python -m spo_lab.experiment --sweep         # the learning-rate sweep behind TUNED_LR (validation split)
    python -m spo_lab.experiment --quick         # a 1-2 minute smoke version
    python -m spo_lab.experiment --runs spo,grpo,rloo --seeds 5 --steps 600 --out results/big
    python -m spo_lab.experiment --tool-job      # SPO and GRPO with the Python tool (arith_tool) -> results/tiny-tool

The comparison is meant to be fair:

- **equal budget**: every run generates ``responses_per_step`` = 64 responses per step (SPO: 64
  prompts x 1; GRPO: 8 prompts x 8) for the same number of steps, with the same PPO settings;
- **equal tuning**: each method runs at its own best learning rate (:data:`TUNED_LR`), chosen by the
  same sweep (:data:`SWEEP`: the same grid, steps and seed for each method) on the *validation* split;
  the main job evaluates on the *test* split, which nothing was tuned on;
- **seed noise measured**: the paired per-seed difference SPO - GRPO (seed k of each; they share the
  warm start and the evaluation's random numbers) with a 95 % t-interval, and each method's gain over
  the warm start the same way;
- **cost both ways**: SPO's offline pass (n0 samples of every training prompt before step 1) is
  counted in ``responses_incl_init`` and in the wall time "incl. init", and time-to-accuracy is
  reported with and without it.

Held-out accuracy is avg@k: the mean reward of ``eval_samples`` = 8 samples per prompt at the training
temperature, over the 500 test prompts (greedy accuracy beside it), overall and per level.

Runs go two at a time (one torch thread each) under ``OUT/runs/<run>/seed<k>/``; a live overall bar
counts the steps of all runs (and the prompts of the offline pass), one line is printed per finished
run. Then the job writes ``OUT/summary.json`` (everything, machine-readable), ``OUT/summary.md`` and
the figures ``OUT/*.png`` through :mod:`spo_lab.report` and :mod:`spo_lab.figures`; this module is
the run registry (:data:`RUNS`) and the runner. ``python scripts/update_readme.py`` copies the tables
into the README. Finished runs keep their metrics and final model, not their optimiser
checkpoints (``--keep-checkpoints`` keeps them).

Scale: a ~1 M-parameter model on 2- to 4-digit addition, a few hundred steps on a CPU -- the code
paths and the direction of the effects, not the paper's numbers (see the README's table).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from .report import (ablation_markdown, load_results, results_markdown, sweep_markdown, tool_markdown,
                     write_ablation_report, write_report, write_sweep_report, write_tool_report)
from .errors import cli_main
from .keys import GREEDY_ACC, SAMPLED_ACC
from .models import DEFAULT_MODEL_DIR
from .tasks import arith_tool
from .train import Config, train

RUNS: dict[str, dict] = {
    "spo": {},
    "grpo": {"algo": "grpo"},
    "spo-uniform": {"sampling": "uniform"},
    "spo-no-init": {"offline_init": False},
    "spo-n0-0": {"offline_init": False},  # the official no-data start, Beta(0.5, 0.5): n0 = 0
    "spo-n0-1": {"n0": 1},
    "spo-n0-2": {"n0": 2},
    "spo-const-rho": {"rho_mode": "constant"},  # rho = --rho-constant (official ablation value 0.875)
    "spo-no-norm": {"adv_norm": "none"},  # A = r - v, not normalised over the batch
    "spo-paper-init": {"init_mode": "paper"},  # alpha0 = N0 k / n0 instead of the official Jeffreys form
    "spo-kl-clock": {"rho_mode": "kl-clock"},
    "spo-no-baseline": {"baseline": "none"},
    "dr_grpo": {"algo": "dr_grpo"},
    "rloo": {"algo": "rloo"},
    "reinforce": {"algo": "reinforce"},
}
"""Named configurations: overrides of :class:`spo_lab.train.Config`."""

STEPS = 300
COMMON = dict(steps=STEPS, eval_every=75, eval_samples=8, temperature=1.0, responses_per_step=64, offline_seed=0)
"""Settings shared by every run of the job (the rest are Config's defaults). ``offline_seed=0``: SPO's offline
pass depends on the initial policy and the data, not on the RL seed, so every seed starts from the same pass,
computed once and cached -- as the official recipe computes its offline values once -- and each run still
counts its cost."""

SWEEP = dict(runs=("spo", "grpo"), lrs=(5e-5, 1e-4, 2e-4, 4e-4), seeds=1, split="validation")
"""The learning-rate sweep: the same grid, seed and steps for each method, on the validation split."""

TUNED_LR: dict[str, float] = {"spo": 1e-4, "grpo": 1e-4}
"""Each method's best lr in :data:`SWEEP` (``python -m spo_lab.experiment --sweep`` prints it); the
ablations take their method's: ``spo-*`` SPO's, the group methods and REINFORCE GRPO's."""

MAIN = dict(runs=("spo", "spo-n0-0", "grpo"), seeds=3, steps=STEPS)
"""The main job: SPO as the official recipe runs it, SPO without the offline pass (n0 = 0, the cheapest setting
that kept SPO's gain in the ablation job), and GRPO."""
QUICK = dict(runs=("spo", "grpo"), seeds=2, steps=30)
ABLATIONS = dict(runs=("spo", "spo-n0-0", "spo-n0-1", "spo-n0-2", "spo-const-rho", "spo-uniform", "spo-no-norm",
                       "spo-paper-init", "grpo"), seeds=3, steps=STEPS)
"""The ablation job (``--ablations``): SPO as in the main job, one arm per component removed or changed, GRPO for
reference; the main job's settings, seeds and held-out evaluation. ``spo``, ``spo-n0-0`` and ``grpo`` are the main
job's own runs, reused when ``results/tiny`` holds them with the same settings."""
ARM_LABELS: dict[str, str] = {
    "spo": "SPO, official (n0 = 8)",
    "spo-n0-0": "n0 = 0: no offline pass, Beta(0.5, 0.5)", "spo-n0-1": "n0 = 1", "spo-n0-2": "n0 = 2",
    "spo-const-rho": "constant rho = 0.875", "spo-uniform": "uniform sampling", "spo-no-norm": "no batch normalisation",
    "spo-paper-init": "paper init (N0 k / n0)", "grpo": "GRPO (G = 8)",
}
"""What each ablation arm changes, in words (tables and figures)."""

TOOL_JOB = dict(runs=("spo-n0-0", "grpo"), seeds=3, steps=40)
"""The tool job (``--tool-job``): SPO and GRPO, equal responses per step, on the tool task, each at its tuned lr.
SPO runs without the offline pass (n0 = 0, the main job's cheaper setting, as good as the official n0 = 8 in the
ablation job): with tool turns its 8 x 2,000 responses would cost far more than the 40 training steps."""
TOOL_SETTINGS = dict(task="arith_tool", model=str(DEFAULT_MODEL_DIR.parent / "tiny-qwen3-tool"), tool="python",
                     max_new_tokens=arith_tool.MAX_NEW_TOKENS, max_tool_chars=64, tool_timeout_s=10.0, tool_memory_mb=512, eval_every=20,
                     eval_samples=4)
"""What the tool job changes in :data:`COMMON`: the task, its cold-started policy, the tool (outputs cut at 64
characters: the tiny model's context is 64 tokens; 10 s and 512 MiB per call are plenty for a product), and a
cheaper evaluation (avg@4 on the 200 test prompts every 20 steps: every sampled tool call runs in the sandbox; the
training batch's tool-call rate is logged every step)."""


def lr_for(name: str) -> float:
    """The tuned learning rate of a run name: its own, else its method's (see :data:`TUNED_LR`)."""
    if name in TUNED_LR:
        return TUNED_LR[name]
    return TUNED_LR["spo"] if name.startswith("spo") else TUNED_LR["grpo"]


def reuse_runs(configs: list[Config], source: Path, out: Path) -> list[Config]:
    """Copy the finished runs under ``source/runs`` whose settings equal a config's into ``out/runs``; return
    the configs still to train. Settings are compared field by field, except where a run writes and how it
    logs (:data:`spo_lab.run_folder.RESUME_MAY_CHANGE` but ``steps`` and ``eval_every``); a field the saved run
    does not have (added since) must be at its default. Nothing is reused from a run that did not finish."""
    import shutil

    from .run_folder import RESUME_MAY_CHANGE

    defaults = asdict(Config())
    ignore = (set(RESUME_MAY_CHANGE) - {"steps", "eval_every"}) | {"data_fingerprint"}
    todo = []
    for c in configs:
        rel = Path(c.out).relative_to(out)
        src, dst = Path(source) / rel, Path(c.out)
        saved = json.loads((src / "config.json").read_text()) if (src / "config.json").is_file() else None
        new = asdict(c)
        same = saved is not None and all(saved.get(k, defaults[k]) == v for k, v in new.items() if k not in ignore)
        done = same and (src / "final_model").is_dir() and _last_step(src / "metrics.jsonl") == c.steps
        if not done or src.resolve() == dst.resolve():
            todo.append(c)
            continue
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst)
        print(f"reused {src} (same settings, finished)", flush=True)
    return todo


def _last_step(path: Path) -> int | None:
    try:
        return json.loads(path.read_text().splitlines()[-1])["step"]
    except (OSError, IndexError, ValueError, KeyError):
        return None


def run_configs(names, seeds: int, steps: int, out: Path, **overrides) -> list[Config]:
    """One Config per (run name, seed), writing to ``out/runs/<name>/seed<k>``, at the tuned lr.

    ``overrides`` replace any Config field for every run (e.g. ``lr=1e-4``, ``eval_split="validation"``).
    """
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        raise ValueError(f"unknown runs {unknown}; known: {sorted(RUNS)}")
    # The job owns out/runs/: running it again replaces the runs it made before (each run folder is
    # replaced whole; see spo_lab.run_folder), it never mixes old and new rows.
    base = Config(**{**COMMON, "steps": steps}, progress=False, save_model=True, keep_checkpoints=False,
                  num_threads=1, cache_dir=str(Path(out) / "cache"), overwrite=True)
    # seed-major order: the first worker computes the shared offline pass while the second trains a
    # group method, so no two workers compute the same pass at once
    return [
        replace(base, **{"lr": lr_for(name), **RUNS[name], **overrides}, seed=seed,
                out=str(Path(out) / "runs" / name / f"seed{seed}"))
        for seed in range(seeds)
        for name in names
    ]


# ====================================================================== running, with live progress
def _run_one(job) -> tuple[str, float]:
    cfg, queue = job
    t0 = time.perf_counter()
    train(cfg, on_step=lambda row: queue.put(("step", 1)) if row["step"] > 0 else None,
          on_offline_chunk=lambda n: queue.put(("offline", n)))
    return cfg.out, time.perf_counter() - t0


def _offline_passes(configs: list[Config]) -> int:
    """Prompts the offline passes of ``configs`` sample, counting a pass shared by several runs once."""
    from .tasks import get_task

    passes = {(c.model, c.task, c.data_dir, c.n0, c.temperature, c.max_new_tokens,
               c.seed if c.offline_seed < 0 else c.offline_seed)
              for c in configs if c.algo == "spo" and c.offline_init and not c.offline_values}
    return sum(len(get_task(task, data=data or None).load("train")) for _, task, data, *_ in passes)


def run_all(configs: list[Config], workers: int = 2, progress: bool = True) -> None:
    """Train every config, ``workers`` at a time, with an overall bar and one line per finished run.

    The overall bar counts training steps over all runs; a second bar counts the prompts of SPO's
    offline pass (a run that reads it from the cache skips it). Worker errors are re-raised here.
    """
    ctx = mp.get_context("spawn")  # fresh interpreters: no torch state shared between runs
    manager = ctx.Manager()
    queue = manager.Queue()
    total_steps = sum(c.steps for c in configs)
    offline_total = _offline_passes(configs)
    bars = {"step": tqdm(total=total_steps, desc="all runs (steps)", disable=not progress, position=0,
                         dynamic_ncols=True)}
    if offline_total:
        bars["offline"] = tqdm(total=offline_total, desc="offline init (prompts)", disable=not progress,
                               position=1, dynamic_ncols=True)
    def pump():  # the workers' progress messages -> the bars, until "stop"
        while (msg := queue.get()) != "stop":
            bars[msg[0]].update(msg[1])

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        with ctx.Pool(workers) as pool:
            for i, (out, secs) in enumerate(pool.imap_unordered(_run_one, [(c, queue) for c in configs]), 1):
                last = pd.read_json(Path(out) / "metrics.jsonl", lines=True).dropna(subset=[SAMPLED_ACC]).iloc[-1]
                line = (f"[{i}/{len(configs)}] {Path(out).parent.name:<16} {Path(out).name:<6} {secs:5.0f} s   "
                        f"held-out avg acc {last[SAMPLED_ACC]:.3f}, greedy {last[GREEDY_ACC]:.3f}")
                if progress:
                    tqdm.write(line)
                else:
                    print(line, flush=True)
    finally:
        queue.put("stop")
        reader.join(timeout=5)
        for bar in bars.values():
            bar.close()
        manager.shutdown()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"smoke version: {QUICK}")
    ap.add_argument("--sweep", action="store_true", help=f"the learning-rate sweep {SWEEP} -> results/tiny-sweep")
    ap.add_argument("--ablations", action="store_true", help="the ablation job: SPO with one component removed or "
                    "changed per arm, GRPO for reference, 3 seeds -> results/tiny-ablations")
    ap.add_argument("--tool-job", action="store_true", help="SPO and GRPO with the Python tool on the arith_tool "
                    "task, 3 seeds -> results/tiny-tool")
    ap.add_argument("--runs", help=f"comma-separated names from {sorted(RUNS)} (default {','.join(MAIN['runs'])})")
    ap.add_argument("--seeds", type=int, help=f"seeds per run (default {MAIN['seeds']})")
    ap.add_argument("--steps", type=int, help=f"steps per run (default {MAIN['steps']})")
    ap.add_argument("--workers", type=int, default=2, help="runs trained at the same time (one thread each)")
    ap.add_argument("--out", default=None, help="results folder (default results/tiny, results/tiny-sweep or results/quick)")
    ap.add_argument("--keep-checkpoints", action="store_true", help="keep each finished run's checkpoint.pt")
    ap.add_argument("--no-progress", action="store_true", help="plain lines instead of progress bars")
    ap.add_argument("--report-only", action="store_true", help="rewrite summary and figures from existing runs")
    ap.add_argument("--main-job", default="results/tiny", help="with --ablations: the main job's folder, whose "
                    "finished runs with the same settings are copied instead of trained again")
    args = ap.parse_args(argv)
    for flag in ("seeds", "steps", "workers"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            ap.error(f"--{flag} must be >= 1, got {v}")
    if args.sweep + args.ablations + args.tool_job > 1:
        ap.error("--sweep, --ablations and --tool-job are separate jobs: run one at a time")
    plan = QUICK if args.quick else ABLATIONS if args.ablations else TOOL_JOB if args.tool_job else MAIN
    seeds, steps = args.seeds or (SWEEP["seeds"] if args.sweep else plan["seeds"]), args.steps or plan["steps"]
    names = args.runs.split(",") if args.runs else list(SWEEP["runs"] if args.sweep else plan["runs"])
    default_out = ("results/quick" if args.quick else "results/tiny-sweep" if args.sweep else
                   "results/tiny-ablations" if args.ablations else "results/tiny-tool" if args.tool_job else "results/tiny")
    root = Path(args.out or default_out)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.sweep:
        configs = []
        for lr in SWEEP["lrs"]:
            for c in run_configs(names, seeds, steps, root, lr=lr, eval_split=SWEEP["split"],
                                 keep_checkpoints=args.keep_checkpoints):
                run = Path(c.out).parent.name
                configs.append(replace(c, out=str(root / "runs" / f"{run}-lr{lr:g}" / Path(c.out).name)))
    else:
        tool = TOOL_SETTINGS if args.tool_job else {}
        configs = run_configs(names, seeds, steps, root, keep_checkpoints=args.keep_checkpoints, **tool)
    if args.ablations and not args.report_only:  # the main job's spo and grpo runs are arms of this job too
        configs = reuse_runs(configs, Path(args.main_job), root)
    if not args.report_only:
        print(f"{len(configs)} runs ({', '.join(names)} x {seeds} seeds x {steps} steps"
              f"{' x lrs ' + str(SWEEP['lrs']) if args.sweep else ''}) -> {root}", flush=True)
        run_all(configs, args.workers, progress=not args.no_progress)
    df = load_results(root)
    if args.sweep:
        sweep = write_sweep_report(root, df, order=SWEEP["runs"])
        print(sweep_markdown(sweep))
        print("best lr per method: " + ", ".join(f"{r} {m['best_lr']:g}" for r, m in sweep["methods"].items()))
    elif args.tool_job:
        summary = write_tool_report(root, df, None if args.report_only else time.perf_counter() - t0)
        print(tool_markdown(summary))
    elif args.ablations:
        summary = write_ablation_report(root, df, ARM_LABELS, None if args.report_only else time.perf_counter() - t0)
        print(ablation_markdown(summary))
    else:
        summary = write_report(root, df, None if args.report_only else time.perf_counter() - t0)
        print(results_markdown(summary))
    print(f"summary.json, summary.md and figures in {root}")


if __name__ == "__main__":
    cli_main(main)  # expected errors (bad flags, a bad run folder): one line, exit 2; --debug: the traceback
