"""The tiny reproduction: SPO vs GRPO on the bundled Qwen3, tuned alike, several seeds, one command.

    python -m spo_lab.experiment                 # the main job: SPO and GRPO x 3 seeds on the test split
    python -m spo_lab.experiment --sweep         # the learning-rate sweep behind TUNED_LR (validation split)
    python -m spo_lab.experiment --quick         # a 1-2 minute smoke version
    python -m spo_lab.experiment --readme        # rewrite the README's results tables from the summaries
    python -m spo_lab.experiment --runs spo,grpo,rloo --seeds 5 --steps 600 --out results/big

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
the figures ``OUT/*.png``. Finished runs keep their metrics and final model, not their optimiser
checkpoints (``--keep-checkpoints`` keeps them).

Scale: a ~1 M-parameter model on 2- to 4-digit addition, a few hundred steps on a CPU -- the code
paths and the direction of the effects, not the paper's numbers (see the README's table).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import re
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from .train import Config, train

RUNS: dict[str, dict] = {
    "spo": {},
    "grpo": {"algo": "grpo"},
    "spo-uniform": {"sampling": "uniform"},
    "spo-no-init": {"offline_init": False},
    "spo-const-rho": {"rho_mode": "constant"},
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

MAIN = dict(runs=("spo", "grpo"), seeds=3, steps=STEPS)
QUICK = dict(runs=("spo", "grpo"), seeds=2, steps=30)

PAPER = {
    "degenerate_share_start": 0.6,
    "note": "Qwen3-8B on DAPO-Math-17k; SPO vs GRPO +3.4 points maj@32 averaged over five benchmarks",
    "maj32_gain_points": 3.4,
}
"""The paper's reference numbers shown beside ours (the SPO paper): their scale, not a target."""

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
         20: 2.086, 25: 2.060, 30: 2.042}
"""Two-sided 95 % quantiles of Student's t by degrees of freedom (1.96 beyond 30)."""


def lr_for(name: str) -> float:
    """The tuned learning rate of a run name: its own, else its method's (see :data:`TUNED_LR`)."""
    if name in TUNED_LR:
        return TUNED_LR[name]
    return TUNED_LR["spo"] if name.startswith("spo") else TUNED_LR["grpo"]


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
                last = pd.read_json(Path(out) / "metrics.jsonl", lines=True).dropna(subset=["eval/sampled_acc"]).iloc[-1]
                line = (f"[{i}/{len(configs)}] {Path(out).parent.name:<16} {Path(out).name:<6} {secs:5.0f} s   "
                        f"held-out avg acc {last['eval/sampled_acc']:.3f}, greedy {last['eval/greedy_acc']:.3f}")
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


# ====================================================================== results
def load_results(root) -> pd.DataFrame:
    """All metrics rows under ``root/runs/<run>/seed<k>/metrics.jsonl`` with columns run and seed."""
    frames = []
    for path in sorted(Path(root).glob("runs/*/seed*/metrics.jsonl")):
        df = pd.read_json(path, lines=True)
        df.insert(0, "seed", int(path.parent.name.removeprefix("seed")))
        df.insert(0, "run", path.parent.parent.name)
        frames.append(df)
    if not frames:
        raise FileNotFoundError(f"no runs/*/seed*/metrics.jsonl under {root}")
    return pd.concat(frames, ignore_index=True)


def mean_ci(x) -> dict:
    """Mean, sample std, n and the 95 % t-interval of the mean (NaN interval for n < 2)."""
    x = np.asarray([v for v in x if v is not None and not math.isnan(v)], dtype=float)
    n = len(x)
    if n == 0:
        return {"mean": None, "std": None, "n": 0, "ci95": [None, None]}
    mean = float(x.mean())
    if n < 2:
        return {"mean": mean, "std": None, "n": 1, "ci95": [None, None]}
    std = float(x.std(ddof=1))
    df = n - 1
    t = T_975.get(df) or (1.96 if df > 30 else T_975[max(k for k in T_975 if k <= df)])
    half = t * std / math.sqrt(n)
    return {"mean": mean, "std": std, "n": n, "ci95": [mean - half, mean + half]}


NOT_STEP = ("time/eval", "time/offline_init")
"""The trainer's time/* columns that are not part of a training step: evaluation and the offline pass."""


def _train_seconds(s: pd.DataFrame) -> pd.Series:
    """Cumulative wall seconds of training (all time/* phases except :data:`NOT_STEP`)."""
    cols = [c for c in s.columns if c.startswith("time/") and c not in NOT_STEP]
    per_step = s[cols].fillna(0).sum(axis=1).where(s.step > 0, 0.0)
    return per_step.cumsum()


def _offline_seconds(s: pd.DataFrame) -> float:
    """The offline pass's wall time logged in a run's step-0 row (0 for a run without one)."""
    logged = s["time/offline_init"].dropna() if "time/offline_init" in s else pd.Series(dtype=float)
    return float(logged.iloc[0]) if len(logged) else 0.0


def _mean_or_none(rows: pd.DataFrame, col: str) -> float | None:
    """Mean of a column over rows, None where the column is absent or empty (e.g. GRPO metrics of SPO)."""
    return float(rows[col].mean()) if col in rows and rows[col].notna().any() else None


def per_seed_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, seed): start and final held-out accuracy, per level, cost and diagnostics."""
    rows = []
    for (run, seed), s in df.groupby(["run", "seed"], sort=False):
        s = s.sort_values("step").reset_index(drop=True)
        ev = s.dropna(subset=["eval/sampled_acc"])
        tr = s[s.step > 0]
        first, last = tr.head(10), tr.tail(10)
        offline_s = _offline_seconds(s)
        row = {
            "run": run, "seed": int(seed), "steps": int(s.step.max()),
            "start_avg": ev["eval/sampled_acc"].iloc[0], "final_avg": ev["eval/sampled_acc"].iloc[-1],
            "start_greedy": ev["eval/greedy_acc"].iloc[0], "final_greedy": ev["eval/greedy_acc"].iloc[-1],
            "responses": int(tr["responses"].iloc[-1]), "responses_incl_init": int(tr["responses_incl_init"].iloc[-1]),
            "train_seconds": float(_train_seconds(s).iloc[-1]), "offline_seconds": offline_s,
            "eval_seconds": float(s.get("time/eval", pd.Series(dtype=float)).fillna(0).sum()),
            "reward_first10": float(first["reward/mean"].mean()), "reward_last10": float(last["reward/mean"].mean()),
            "degenerate_first10": _mean_or_none(first, "grpo/degenerate_frac"),
            "degenerate_last10": _mean_or_none(last, "grpo/degenerate_frac"),
            "sec_per_step": float(_train_seconds(s).iloc[-1] / max(len(tr), 1)),
            # advantage variance before normalisation over the batch's reward variance (steps with spread)
            "var_ratio": (float((tr["adv/raw_var"] / tr["reward/var"].where(tr["reward/var"] > 0)).mean())
                          if {"adv/raw_var", "reward/var"} <= set(tr.columns) else None),
        }
        for col in ev.columns:  # per level: eval/sampled_acc/level=3 -> final_avg/level=3
            m = re.fullmatch(r"eval/(sampled|greedy)_acc/(.+)", col)
            if m:
                name = "avg" if m.group(1) == "sampled" else "greedy"
                row[f"start_{name}/{m.group(2)}"] = ev[col].iloc[0]
                row[f"final_{name}/{m.group(2)}"] = ev[col].iloc[-1]
        rows.append(row)
    return pd.DataFrame(rows)


def time_to_accuracy(df: pd.DataFrame, target: float, runs) -> dict:
    """Per run and seed: the first evaluation at which avg@k >= ``target``, in steps, responses (excl. and
    incl. the offline pass) and wall minutes (excl. and incl.). None where a seed never reaches it."""
    out = {}
    for run in runs:
        seeds = []
        for seed, s in df[df.run == run].groupby("seed"):
            s = s.sort_values("step").reset_index(drop=True)
            secs = _train_seconds(s)
            offline_s = _offline_seconds(s)
            hit = s[s["eval/sampled_acc"].notna() & (s["eval/sampled_acc"] >= target)]
            if hit.empty:
                seeds.append({"seed": int(seed), "reached": False})
                continue
            i = hit.index[0]
            seeds.append({"seed": int(seed), "reached": True, "step": int(s.step[i]), "responses": int(s.responses[i]),
                          "responses_incl_init": int(s.responses_incl_init[i]),
                          "minutes": float(secs[i] / 60), "minutes_incl_init": float((secs[i] + offline_s) / 60)})
        reached = [x for x in seeds if x["reached"]]
        agg = {"seeds_reached": len(reached), "seeds": len(seeds), "per_seed": seeds}
        for k in ("step", "responses", "responses_incl_init", "minutes", "minutes_incl_init"):
            agg[k] = float(np.mean([x[k] for x in reached])) if len(reached) == len(seeds) and reached else None
        out[run] = agg
    return out


def summarize_runs(df: pd.DataFrame, *, baseline: str = "grpo") -> dict:
    """Everything the report shows, as plain JSON-ready values (see :func:`write_report`)."""
    table = per_seed_table(df)
    runs = list(dict.fromkeys(table.run))
    summary: dict = {"runs": {}, "paper": PAPER}
    for run in runs:
        t = table[table.run == run].sort_values("seed")
        entry = {"seeds": t.seed.tolist(), "per_seed": json.loads(t.to_json(orient="records"))}
        for col in t.columns:
            if col not in ("run", "seed") and pd.api.types.is_numeric_dtype(t[col]):
                entry[col] = mean_ci(t[col].tolist())
        entry["gain_avg"] = mean_ci((t.final_avg - t.start_avg).tolist())  # paired per seed
        entry["gain_greedy"] = mean_ci((t.final_greedy - t.start_greedy).tolist())
        summary["runs"][run] = entry
    # paired differences run - baseline, seed by seed
    if baseline in summary["runs"]:
        b = table[table.run == baseline].set_index("seed")
        summary["vs_" + baseline] = {}
        for run in runs:
            if run == baseline:
                continue
            t = table[table.run == run].set_index("seed")
            common = sorted(set(t.index) & set(b.index))
            summary["vs_" + baseline][run] = {
                "seeds": common,
                "avg": mean_ci([t.final_avg[s] - b.final_avg[s] for s in common]),
                "greedy": mean_ci([t.final_greedy[s] - b.final_greedy[s] for s in common]),
            }
    # time to accuracy: the accuracy every method reaches by the end, on average
    finals = {run: summary["runs"][run]["final_avg"]["mean"] for run in runs}
    target = min(finals.values())
    summary["time_to_accuracy"] = {"target_avg": target, "target_is": "the lowest final mean avg@k of the runs",
                                   **time_to_accuracy(df, target, runs)}
    return summary


def _fmt_ci(d: dict, scale: float = 1.0, digits: int = 3, sign: bool = False) -> str:
    if d["mean"] is None:
        return "-"
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    if d["ci95"][0] is None:
        return f.format(d["mean"] * scale)
    return f"{f.format(d['mean'] * scale)} [{f.format(d['ci95'][0] * scale)}, {f.format(d['ci95'][1] * scale)}]"


def _fmt_sd(d: dict, digits: int = 3) -> str:
    if d["mean"] is None:
        return "-"
    return f"{d['mean']:.{digits}f}" + ("" if d["std"] is None else f" ± {d['std']:.{digits}f}")


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run, for reading in a notebook: accuracy (mean ± std over seeds), cost, diagnostics."""
    s = summarize_runs(df)
    rows = []
    for run, e in s["runs"].items():
        deg = e.get("degenerate_first10", {})
        rows.append({
            "run": run, "seeds": len(e["seeds"]),
            "held-out avg acc (start)": _fmt_sd(e["start_avg"]), "held-out avg acc (end)": _fmt_sd(e["final_avg"]),
            "gain over start [95% CI]": _fmt_ci(e["gain_avg"], sign=True),
            "held-out greedy acc (start)": _fmt_sd(e["start_greedy"]),
            "held-out greedy acc (end)": _fmt_sd(e["final_greedy"]),
            "training responses": f"{int(e['responses']['mean']):,}",
            "responses incl. offline init": f"{int(e['responses_incl_init']['mean']):,}",
            "degenerate groups, first 10 -> last 10 steps": (
                "-" if not deg or deg["mean"] is None else
                f"{deg['mean']:.2f} -> {e['degenerate_last10']['mean']:.2f}"),
            "s / step (excl. eval)": _fmt_sd(e["sec_per_step"], 2),
        })
    return pd.DataFrame(rows)


# ====================================================================== report: markdown, figures, README
def results_markdown(summary: dict) -> str:
    """The results tables (markdown) of a main-job summary: what summary.md and the README show."""
    st = summary["settings"]
    runs = summary["runs"]
    lrs = ", ".join(f"{r} {e['lr']:g}" for r, e in runs.items())
    lines = [
        f"{st['responses_per_step']} responses per step for every run, {st['steps']} steps, temperature "
        f"{st['temperature']}, each method at its own tuned lr ({lrs}); "
        f"{len(next(iter(runs.values()))['seeds'])} seeds. Held-out: the {st['eval_prompts']} test prompts, "
        f"avg@{st['eval_samples']} = mean accuracy of {st['eval_samples']} samples per prompt at T = "
        f"{st['temperature']}; greedy beside it. Intervals are 95 % t-intervals over seeds.",
        "",
        "| run | avg@8 start | avg@8 end | gain [95% CI] | greedy start | greedy end | greedy gain [95% CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    for run, e in runs.items():
        lines.append(f"| {run} | {_fmt_sd(e['start_avg'])} | {_fmt_sd(e['final_avg'])} | "
                     f"{_fmt_ci(e['gain_avg'], sign=True)} | {_fmt_sd(e['start_greedy'])} | "
                     f"{_fmt_sd(e['final_greedy'])} | {_fmt_ci(e['gain_greedy'], sign=True)} |")
    for base in [k for k in summary if k.startswith("vs_")]:
        for run, d in summary[base].items():
            lines += ["", f"**{run} - {base[3:]}, paired by seed** (seeds {d['seeds']}): avg@8 "
                          f"{_fmt_ci(d['avg'], sign=True)}, greedy {_fmt_ci(d['greedy'], sign=True)}."]
    levels = sorted({k.split("/", 1)[1] for e in runs.values() for k in e if k.startswith("final_avg/")},
                    key=lambda s: (len(s), s))
    if levels:
        lines += ["", "Per level, avg@8 (mean over seeds), start -> end:", "",
                  "| run | " + " | ".join(levels) + " |", "|---|" + "---|" * len(levels)]
        for run, e in runs.items():
            lines.append(f"| {run} | " + " | ".join(
                f"{e[f'start_avg/{lv}']['mean']:.3f} -> {e[f'final_avg/{lv}']['mean']:.3f}" for lv in levels) + " |")
    tta = summary["time_to_accuracy"]
    lines += ["", f"Cost, and time to reach avg@8 {tta['target_avg']:.3f} ({tta['target_is']}; first evaluation "
                  f"at or above it, evaluations every {st['eval_every']} steps). Wall times are this machine's, "
                  "one CPU thread per run, and vary between machines and runs:", "",
              "| run | responses | incl. offline init | s / step | offline init (min) | seeds reaching target | "
              "responses to target | incl. init | minutes to target | incl. init |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for run, e in runs.items():
        t = tta[run]

        def g(k, fmt="{:,.0f}"):
            return "-" if t[k] is None else fmt.format(t[k])

        lines.append(f"| {run} | {e['responses']['mean']:,.0f} | {e['responses_incl_init']['mean']:,.0f} | "
                     f"{e['sec_per_step']['mean']:.2f} | {e['offline_seconds']['mean'] / 60:.1f} | "
                     f"{t['seeds_reached']}/{t['seeds']} | {g('responses')} | {g('responses_incl_init')} | "
                     f"{g('minutes', '{:.1f}')} | {g('minutes_incl_init', '{:.1f}')} |")
    deg = [(run, e["degenerate_first10"]) for run, e in runs.items() if e.get("degenerate_first10", {}).get("mean") is not None]
    for run, d in deg:
        lines += ["", f"{run}'s degenerate groups (all 8 rewards equal) in its first 10 steps: {d['mean']:.2f} of groups "
                      f"(paper, Qwen3-8B at the start of training: ~{PAPER['degenerate_share_start']:.1f})."]
    return "\n".join(lines) + "\n"


def paper_markdown(summary: dict) -> str:
    """Paper vs spo_lab, claim by claim: the paper's number, ours from a main-job summary, and the scale of each."""
    runs = summary["runs"]
    spo, grpo = runs.get("spo"), runs.get("grpo")
    if spo is None or grpo is None:
        raise ValueError("the paper table needs an spo and a grpo run")
    d = summary["vs_grpo"]["spo"]
    deg = grpo["degenerate_first10"]["mean"], grpo["degenerate_last10"]["mean"]
    ratio = spo["sec_per_step"]["mean"] / grpo["sec_per_step"]["mean"]
    rows = [
        ("GRPO's degenerate groups (G = 8)", "~60 % of samples at the start, > 80 % later",
         f"{deg[0]:.0%} in the first 10 steps -> {deg[1]:.0%} in the last 10 (mean over seeds)",
         "the warm start sets the start: its expected share is in data/tiny-qwen3/BUILD.md"),
        ("advantage variance before normalisation / reward variance", "SPO ~0.5",
         f"SPO {spo['var_ratio']['mean']:.2f}, GRPO {grpo['var_ratio']['mean']:.2f}",
         "GRPO's r - group mean is (G-1)/G p(1-p) by construction, below even r - p (notebook 4)"),
        ("held-out accuracy, SPO - GRPO", "+3.4 points maj@32, average of 5 benchmarks (+0.3 avg@32)",
         f"{_fmt_ci(d['avg'], 100, 1, True)} points avg@8, {_fmt_ci(d['greedy'], 100, 1, True)} greedy "
         f"(95 % CI, {len(d['seeds'])} seeds)", "500 test prompts of addition; a ~1 M-parameter model"),
        ("accuracy gain over the starting policy", "(not reported as such)",
         f"SPO {_fmt_ci(spo['gain_avg'], 100, 1, True)}, GRPO {_fmt_ci(grpo['gain_avg'], 100, 1, True)} points avg@8",
         f"{summary['settings']['steps']} steps x {summary['settings']['responses_per_step']} responses"),
        ("pass@k", "SPO's curve above GRPO's at every k", "notebook 7 prints both, with bands over seeds",
         "the main job's final policies, T = 0.6"),
        ("throughput", "4.35x faster collection in a simulated agentic setting (no group barrier)",
         f"SPO step {ratio:.2f}x GRPO's on a CPU (the official D estimator's extra forward pass); "
         "notebook 8 simulates the barrier", "responses of a few tokens: no stragglers to wait for"),
    ]
    lines = ["| claim | paper (Qwen3-8B, DAPO-Math-17k) | spo_lab, tiny reproduction | scale of ours |",
             "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {e} |" for a, b, c, e in rows]
    return "\n".join(lines) + "\n"


def sweep_markdown(sweep: dict) -> str:
    """The sweep table: final validation avg@8 per method and lr, the best marked."""
    lrs = sorted({float(lr) for m in sweep["methods"].values() for lr in m["lrs"]})
    lines = [f"Validation split ({sweep['eval_prompts']} prompts), avg@{sweep['eval_samples']} after {sweep['steps']} "
             f"steps, seed {', '.join(map(str, sweep['seeds']))}; start {sweep['start_avg']:.3f}.", "",
             "| run | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | best |", "|---|" + "---|" * (len(lrs) + 1)]
    for run, m in sweep["methods"].items():
        cells = []
        for lr in lrs:
            v = m["lrs"].get(f"{lr:g}")
            cells.append("-" if v is None else (f"**{v:.3f}**" if f"{lr:g}" == f"{m['best_lr']:g}" else f"{v:.3f}"))
        lines.append(f"| {run} | " + " | ".join(cells) + f" | {m['best_lr']:g} |")
    return "\n".join(lines) + "\n"


def _figures(root: Path, df: pd.DataFrame, summary: dict) -> list[str]:
    """The talk-ready figures of the main job; returns their file names."""
    import matplotlib.pyplot as plt

    from .teaching import runs as run_figures
    from .teaching import style

    style.apply()
    made = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(root / name, dpi=max(style.DPI, 120))
        plt.close(fig)
        made.append(name)

    d = df.copy()
    start = summary["runs"][next(iter(summary["runs"]))]
    # 1. learning curves: avg@8 and greedy against training responses, seed bands, warm start marked
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, y, key in ((axes[0], "eval/sampled_acc", "start_avg"), (axes[1], "eval/greedy_acc", "start_greedy")):
        run_figures.plot_learning_curves(d, y=y, x="responses", ax=ax)
        ax.axhline(start[key]["mean"], color=style.METHOD_COLORS["initial"], linestyle=":", linewidth=1,
                   label="warm start")
        style.legend(ax)
    axes[0].set_ylabel("held-out accuracy, avg@8 at T = 1")
    fig.suptitle(f"held-out test prompts; mean ± std over {len(start['seeds'])} seeds", fontsize="medium")
    save(fig, "accuracy_vs_responses.png")
    # 2. the same with the offline pass's cost counted: responses and wall time incl. init
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    run_figures.plot_learning_curves(d, y="eval/sampled_acc", x="responses_incl_init", ax=axes[0])
    w = []
    for (run, seed), s in d.groupby(["run", "seed"]):
        s = s.sort_values("step").copy()
        s["minutes_incl_init"] = (_train_seconds(s) + _offline_seconds(s)) / 60
        w.append(s)
    w = pd.concat(w)
    for run, g in w.dropna(subset=["eval/sampled_acc"]).groupby("run", sort=True):
        stats = g.groupby("step").agg(x=("minutes_incl_init", "mean"), mean=("eval/sampled_acc", "mean"),
                                      std=("eval/sampled_acc", "std"))
        style.band(axes[1], stats.x.to_numpy(), stats["mean"].to_numpy(), stats["std"].to_numpy(), label=run,
                   color=style.color(run), marker="o", markersize=3)
    axes[1].set_xlabel("wall minutes incl. the offline init pass (1 CPU thread)")
    for ax in axes:
        ax.set_ylabel("held-out accuracy, avg@8 at T = 1")
        ax.axhline(start["start_avg"]["mean"], color=style.METHOD_COLORS["initial"], linestyle=":", linewidth=1,
                   label="warm start")
        style.legend(ax)
    fig.suptitle("the offline pass counted: SPO samples every training prompt n0 = 8 times before step 1",
                 fontsize="medium")
    save(fig, "accuracy_incl_offline_init.png")
    # 3. per level: start vs end for each method, seed std as error bars
    runs = list(summary["runs"])
    levels = sorted({k.split("/", 1)[1] for k in summary["runs"][runs[0]] if k.startswith("final_avg/")},
                    key=lambda s: (len(s), s))
    if levels:
        fig, ax = plt.subplots(figsize=(7, 3.8))
        width = 0.8 / (len(runs) + 1)
        x = np.arange(len(levels))
        ax.bar(x, [start[f"start_avg/{lv}"]["mean"] for lv in levels], width, label="warm start",
               color=style.METHOD_COLORS["initial"])
        for i, run in enumerate(runs, 1):
            e = summary["runs"][run]
            ax.bar(x + i * width, [e[f"final_avg/{lv}"]["mean"] for lv in levels], width,
                   yerr=[e[f"final_avg/{lv}"]["std"] or 0 for lv in levels], label=run, color=style.color(run),
                   capsize=2)
        ax.set_xticks(x + width * len(runs) / 2, [lv.replace("level=", "level ") for lv in levels])
        ax.set_ylabel("held-out accuracy, avg@8 at T = 1")
        ax.set_title("after training, per difficulty level (error bars: std over seeds)", fontsize="medium")
        style.legend(ax)
        save(fig, "accuracy_per_level.png")
    # 4. paired differences SPO - GRPO per seed, with the interval
    for base in [k for k in summary if k.startswith("vs_")]:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        labels = []
        for j, (run, dd) in enumerate(summary[base].items()):
            for k, metric in enumerate(("avg", "greedy")):
                y = j * 2 + k
                labels.append(f"{run} - {base[3:]}\n{'avg@8' if metric == 'avg' else 'greedy'}")
                t = summary["runs"][run]["per_seed"]
                b = {r["seed"]: r for r in summary["runs"][base[3:]]["per_seed"]}
                key = "final_avg" if metric == "avg" else "final_greedy"
                diffs = [r[key] - b[r["seed"]][key] for r in t if r["seed"] in b]
                ax.scatter(diffs, [y] * len(diffs), color=style.color(run), zorder=3,
                           label="one seed" if y == 0 else None)
                c = dd[metric]
                if c["ci95"][0] is not None:
                    ax.errorbar(c["mean"], y, xerr=[[c["mean"] - c["ci95"][0]], [c["ci95"][1] - c["mean"]]],
                                fmt="D", color="black", capsize=4, label="mean, 95% CI" if y == 0 else None)
        ax.axvline(0, color=style.METHOD_COLORS["paper"], linewidth=1)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_ylim(-0.7, len(labels) - 0.3)
        ax.set_xlabel("difference in held-out accuracy (fraction), paired by seed")
        style.legend(ax)
        save(fig, "paired_difference.png")
    # 5. GRPO's degenerate groups, with the paper's start
    deg = d[d["grpo/degenerate_frac"].notna()] if "grpo/degenerate_frac" in d else d.iloc[:0]
    if not deg.empty:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        run_figures.plot_metric(deg, "grpo/degenerate_frac", smooth=10, ax=ax)
        style.paper_line(ax, PAPER["degenerate_share_start"], "~0.6 at the start (Qwen3-8B)")
        ax.set_ylim(0, 1)
        style.legend(ax)
        save(fig, "degenerate_fraction.png")
    # 6. where a step's time goes
    fig, ax = plt.subplots(figsize=(6, 3.6))
    run_figures.plot_phase_times(d.drop(columns=list(NOT_STEP), errors="ignore"), ax=ax)
    ax.set_title("seconds per training step, evaluation excluded (1 CPU thread)", fontsize="medium")
    save(fig, "phase_times.png")
    return made


def _sweep_figure(root: Path, sweep: dict) -> str:
    import matplotlib.pyplot as plt

    from .teaching import style

    style.apply()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for run, m in sweep["methods"].items():
        lrs = sorted(m["lrs"], key=float)
        ax.plot([float(x) for x in lrs], [m["lrs"][x] for x in lrs], marker="o", color=style.color(run), label=run)
    ax.axhline(sweep["start_avg"], color=style.METHOD_COLORS["initial"], linestyle=":", label="warm start")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (AdamW, constant)")
    ax.set_ylabel("validation accuracy, avg@8 at T = 1")
    ax.set_title(f"after {sweep['steps']} steps, one seed per point", fontsize="medium")
    style.legend(ax)
    fig.tight_layout()
    fig.savefig(root / "sweep.png", dpi=max(style.DPI, 120))
    plt.close(fig)
    return "sweep.png"


def _settings(root: Path) -> dict:
    cfg = json.loads(next(Path(root).glob("runs/*/seed*/config.json")).read_text())
    from .tasks import get_task

    n_eval = len(get_task(cfg["task"], data=cfg["data_dir"] or None).load(cfg["eval_split"]))
    if cfg["eval_max_prompts"]:
        n_eval = min(n_eval, cfg["eval_max_prompts"])
    return {k: cfg[k] for k in ("steps", "responses_per_step", "temperature", "eval_samples", "eval_every",
                                "eval_split", "group_size", "max_new_tokens", "n0")} | {"eval_prompts": n_eval}


def write_report(root: Path, df: pd.DataFrame, wall_seconds: float | None = None, figures: bool = True) -> dict:
    """Write ``summary.json``, ``summary.md`` and the figures of a main job; return the summary."""
    root = Path(root)
    summary = summarize_runs(df)
    summary["settings"] = _settings(root)
    for run in summary["runs"]:
        summary["runs"][run]["lr"] = json.loads(next((root / "runs" / run).glob("seed*/config.json")).read_text())["lr"]
    if wall_seconds is not None:
        summary["wall_minutes"] = wall_seconds / 60
    names = _figures(root, df, summary) if figures else []
    summary["figures"] = names
    (root / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n")
    md = ["# spo_lab tiny reproduction: results", "",
          "Written by `python -m spo_lab.experiment` from `summary.json` in this folder.", ""]
    if wall_seconds is not None:
        md += [f"Whole job: {wall_seconds / 60:.1f} min wall time.", ""]
    md += [results_markdown(summary), *[f"![{n}]({n})" for n in names]]
    (root / "summary.md").write_text("\n".join(md) + "\n")
    return summary


def write_sweep_report(root: Path, df: pd.DataFrame) -> dict:
    """Summarise a sweep (runs named ``<run>-lr<lr>``): best lr per method by final validation avg@8."""
    root = Path(root)
    methods: dict = {}
    starts = []
    for (name, _seed), s in df.groupby(["run", "seed"]):
        m = re.fullmatch(r"(.+)-lr(.+)", name)
        if not m:
            continue
        ev = s.sort_values("step").dropna(subset=["eval/sampled_acc"])
        starts.append(ev["eval/sampled_acc"].iloc[0])
        methods.setdefault(m.group(1), {}).setdefault(f"{float(m.group(2)):g}", []).append(ev["eval/sampled_acc"].iloc[-1])
    st = _settings(root)
    sweep = {"steps": st["steps"], "eval_samples": st["eval_samples"], "eval_prompts": st["eval_prompts"],
             "eval_split": st["eval_split"], "seeds": sorted(df.seed.unique().tolist()), "start_avg": float(np.mean(starts)),
             "methods": {}}
    for run in [r for r in SWEEP["runs"] if r in methods] + [r for r in methods if r not in SWEEP["runs"]]:
        lrs = {lr: float(np.mean(v)) for lr, v in methods[run].items()}
        best = max(lrs, key=lambda k: lrs[k])
        sweep["methods"][run] = {"lrs": lrs, "best_lr": float(best)}
    sweep["figure"] = _sweep_figure(root, sweep)
    (root / "summary.json").write_text(json.dumps(sweep, indent=1, allow_nan=False) + "\n")
    (root / "summary.md").write_text("# spo_lab learning-rate sweep\n\n" + sweep_markdown(sweep) + "\n![sweep](sweep.png)\n")
    return sweep


README_BLOCKS = {"tiny-results": ("results/tiny/summary.json", results_markdown),
                 "tiny-sweep": ("results/tiny-sweep/summary.json", sweep_markdown),
                 "paper-vs-ours": ("results/tiny/summary.json", paper_markdown)}
"""README blocks (between ``<!-- name:start -->`` and ``<!-- name:end -->``) and what writes them."""


def readme_text(readme: str, root: Path) -> str:
    """``readme`` with every block of :data:`README_BLOCKS` rewritten from its summary.json under ``root``."""
    for name, (rel, render) in README_BLOCKS.items():
        path = Path(root) / rel
        begin, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        if begin not in readme or end not in readme:
            raise ValueError(f"README has no {begin} ... {end} block")
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run the command that writes it first")
        body = render(json.loads(path.read_text()))
        readme = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: f"{begin}\n{body}{end}", readme,
                        flags=re.S)
    return readme


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"smoke version: {QUICK}")
    ap.add_argument("--sweep", action="store_true", help=f"the learning-rate sweep {SWEEP} -> results/tiny-sweep")
    ap.add_argument("--readme", action="store_true", help="rewrite the README's result blocks from the summaries")
    ap.add_argument("--runs", help=f"comma-separated names from {sorted(RUNS)} (default {','.join(MAIN['runs'])})")
    ap.add_argument("--seeds", type=int, help=f"seeds per run (default {MAIN['seeds']})")
    ap.add_argument("--steps", type=int, help=f"steps per run (default {MAIN['steps']})")
    ap.add_argument("--workers", type=int, default=2, help="runs trained at the same time (one thread each)")
    ap.add_argument("--out", default=None, help="results folder (default results/tiny, results/tiny-sweep or results/quick)")
    ap.add_argument("--keep-checkpoints", action="store_true", help="keep each finished run's checkpoint.pt")
    ap.add_argument("--no-progress", action="store_true", help="plain lines instead of progress bars")
    ap.add_argument("--report-only", action="store_true", help="rewrite summary and figures from existing runs")
    args = ap.parse_args(argv)
    for flag in ("seeds", "steps", "workers"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            ap.error(f"--{flag} must be >= 1, got {v}")
    root_dir = Path(__file__).resolve().parent.parent
    if args.readme:
        path = root_dir / "README.md"
        path.write_text(readme_text(path.read_text(), root_dir))
        print(f"rewrote the result blocks of {path}")
        return
    plan = QUICK if args.quick else MAIN
    seeds, steps = args.seeds or (SWEEP["seeds"] if args.sweep else plan["seeds"]), args.steps or plan["steps"]
    names = args.runs.split(",") if args.runs else list(SWEEP["runs"] if args.sweep else plan["runs"])
    root = Path(args.out or ("results/quick" if args.quick else "results/tiny-sweep" if args.sweep else "results/tiny"))
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
        configs = run_configs(names, seeds, steps, root, keep_checkpoints=args.keep_checkpoints)
    if not args.report_only:
        print(f"{len(configs)} runs ({', '.join(names)} x {seeds} seeds x {steps} steps"
              f"{' x lrs ' + str(SWEEP['lrs']) if args.sweep else ''}) -> {root}", flush=True)
        run_all(configs, args.workers, progress=not args.no_progress)
    df = load_results(root)
    if args.sweep:
        sweep = write_sweep_report(root, df)
        print(sweep_markdown(sweep))
        print("best lr per method: " + ", ".join(f"{r} {m['best_lr']:g}" for r, m in sweep["methods"].items()))
    else:
        summary = write_report(root, df, None if args.report_only else time.perf_counter() - t0)
        print(results_markdown(summary))
    print(f"summary.json, summary.md and figures in {root}")


if __name__ == "__main__":
    main()
