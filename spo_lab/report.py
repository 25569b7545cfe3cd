"""The report of a set of runs: statistics over seeds, tables, markdown, and the files a job writes.

Reads what the trainer wrote (``OUT/runs/<run>/seed<k>/metrics.jsonl``, the keys named in
:mod:`spo_lab.train` and :mod:`spo_lab.evaluate`) and turns it into plain JSON-ready numbers
(:func:`summarize_runs`), markdown (:func:`results_markdown`, :func:`paper_markdown`,
:func:`sweep_markdown`) and, with :mod:`spo_lab.figures`, a folder's ``summary.json``,
``summary.md`` and figures (:func:`write_report`). Nothing here trains; :mod:`spo_lab.experiment`
runs the jobs, and ``scripts/update_readme.py`` copies the tables into the README.

Statistics: a 95 % interval over seeds is Student's t (``scipy.stats.t``) on the per-seed values; a
comparison between two methods pairs seed k of one with seed k of the other (they share the warm
start and the evaluation's random numbers).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from .figures import main_job_figures, sweep_figure
from .keys import (ADV_RAW_VAR, DEGENERATE_FRAC, EVAL_TIME, GREEDY_ACC, NOT_STEP, OFFLINE_TIME, RESPONSES,
                    RESPONSES_INCL_INIT, REWARD_MEAN, REWARD_VAR, SAMPLED_ACC)

__all__ = ["PAPER", "load_results", "mean_ci", "per_seed_table", "time_to_accuracy", "summarize_runs", "runs_table",
           "results_markdown", "paper_markdown", "sweep_markdown", "write_report", "write_sweep_report",
           "README_BLOCKS", "readme_text", "train_seconds", "offline_seconds", "write_ablation_report",
           "ablation_markdown", "async_markdown", "collection_markdown", "summarize_tool_runs", "tool_markdown", "write_tool_report"]

PAPER = {
    "degenerate_share_start": 0.6,
    "note": "Qwen3-8B on DAPO-Math-17k; SPO vs GRPO +3.4 points maj@32 averaged over five benchmarks",
    "maj32_gain_points": 3.4,
}
"""The paper's reference numbers shown beside ours (the SPO paper): their scale, not a target."""

# ====================================================================== statistics
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
    """Mean, sample std, n and the 95 % t-interval of the mean, mean +- t(0.975, n - 1) std / sqrt(n)
    (``scipy.stats.t``; no interval for n < 2). None and NaN values are left out."""
    x = np.asarray([v for v in x if v is not None and not math.isnan(v)], dtype=float)
    n = len(x)
    if n == 0:
        return {"mean": None, "std": None, "n": 0, "ci95": [None, None]}
    mean = float(x.mean())
    if n < 2:
        return {"mean": mean, "std": None, "n": 1, "ci95": [None, None]}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "n": n, "ci95": [mean - half, mean + half]}


def train_seconds(s: pd.DataFrame) -> pd.Series:
    """Cumulative wall seconds of training (all time/* phases except :data:`NOT_STEP`)."""
    cols = [c for c in s.columns if c.startswith("time/") and c not in NOT_STEP]
    per_step = s[cols].fillna(0).sum(axis=1).where(s.step > 0, 0.0)
    return per_step.cumsum()


def offline_seconds(s: pd.DataFrame) -> float:
    """The offline pass's wall time logged in a run's step-0 row (0 for a run without one)."""
    logged = s[OFFLINE_TIME].dropna() if OFFLINE_TIME in s else pd.Series(dtype=float)
    return float(logged.iloc[0]) if len(logged) else 0.0


def _mean_or_none(rows: pd.DataFrame, col: str) -> float | None:
    """Mean of a column over rows, None where the column is absent or empty (e.g. GRPO metrics of SPO)."""
    return float(rows[col].mean()) if col in rows and rows[col].notna().any() else None


def per_seed_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, seed): start and final held-out accuracy, per level, cost and diagnostics."""
    rows = []
    for (run, seed), s in df.groupby(["run", "seed"], sort=False):
        s = s.sort_values("step").reset_index(drop=True)
        ev = s.dropna(subset=[SAMPLED_ACC])
        tr = s[s.step > 0]
        first, last = tr.head(10), tr.tail(10)
        offline_s = offline_seconds(s)
        row = {
            "run": run, "seed": int(seed), "steps": int(s.step.max()),
            "start_avg": ev[SAMPLED_ACC].iloc[0], "final_avg": ev[SAMPLED_ACC].iloc[-1],
            "start_greedy": ev[GREEDY_ACC].iloc[0], "final_greedy": ev[GREEDY_ACC].iloc[-1],
            "responses": int(tr[RESPONSES].iloc[-1]), "responses_incl_init": int(tr[RESPONSES_INCL_INIT].iloc[-1]),
            "train_seconds": float(train_seconds(s).iloc[-1]), "offline_seconds": offline_s,
            "eval_seconds": float(s.get(EVAL_TIME, pd.Series(dtype=float)).fillna(0).sum()),
            "reward_first10": float(first[REWARD_MEAN].mean()), "reward_last10": float(last[REWARD_MEAN].mean()),
            "degenerate_first10": _mean_or_none(first, DEGENERATE_FRAC),
            "degenerate_last10": _mean_or_none(last, DEGENERATE_FRAC),
            "sec_per_step": float(train_seconds(s).iloc[-1] / max(len(tr), 1)),
            # advantage variance before normalisation over the batch's reward variance (steps with spread)
            "var_ratio": (float((tr[ADV_RAW_VAR] / tr[REWARD_VAR].where(tr[REWARD_VAR] > 0)).mean())
                          if {ADV_RAW_VAR, REWARD_VAR} <= set(tr.columns) else None),
        }
        for col in ev.columns:  # per level: eval/sampled_acc/level=3 -> final_avg/level=3
            for name, key in (("avg", SAMPLED_ACC), ("greedy", GREEDY_ACC)):
                if not col.startswith(key + "/"):
                    continue
                group = col.removeprefix(key + "/")
                row[f"start_{name}/{group}"] = ev[col].iloc[0]
                row[f"final_{name}/{group}"] = ev[col].iloc[-1]
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
            secs = train_seconds(s)
            offline_s = offline_seconds(s)
            hit = s[s[SAMPLED_ACC].notna() & (s[SAMPLED_ACC] >= target)]
            if hit.empty:
                seeds.append({"seed": int(seed), "reached": False})
                continue
            i = hit.index[0]
            seeds.append({"seed": int(seed), "reached": True, "step": int(s.step[i]), "responses": int(s[RESPONSES][i]),
                          "responses_incl_init": int(s[RESPONSES_INCL_INIT][i]),
                          "minutes": float(secs[i] / 60), "minutes_incl_init": float((secs[i] + offline_s) / 60)})
        reached = [x for x in seeds if x["reached"]]
        agg = {"seeds_reached": len(reached), "seeds": len(seeds), "per_seed": seeds}
        for k in ("step", "responses", "responses_incl_init", "minutes", "minutes_incl_init"):
            agg[k] = float(np.mean([x[k] for x in reached])) if len(reached) == len(seeds) and reached else None
        out[run] = agg
    return out


def summarize_runs(df: pd.DataFrame, *, baseline: str = "grpo", target_run: str | None = None) -> dict:
    """Everything the report shows, as plain JSON-ready values (see :func:`write_report`).

    ``baseline``: the run every other run is compared with, seed by seed (``vs_<baseline>``). Time to
    accuracy is measured to ``target_run``'s final mean avg@k, or (None) to the lowest final mean of all runs.
    """
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
    target = finals[target_run] if target_run in finals else min(finals.values())
    what = f"{target_run}'s final mean avg@k" if target_run in finals else "the lowest final mean avg@k of the runs"
    summary["time_to_accuracy"] = {"target_avg": target, "target_is": what, **time_to_accuracy(df, target, runs)}
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


def runs_table(df: pd.DataFrame) -> pd.DataFrame:
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



# ====================================================================== markdown
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
         "the barrier itself: simulated, then measured on the asynchronous collector with a tool (notebook 8, "
         "README's asynchronous-collection section)", "addition responses of a few tokens: no stragglers to wait for"),
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



# ====================================================================== the files a job writes
def write_ablation_report(root: Path, df: pd.DataFrame, labels: dict[str, str], wall_seconds: float | None = None,
                          figures: bool = True) -> dict:
    """The ablation job's ``summary.json``, ``summary.md`` and figure: every arm against full SPO and against
    GRPO (paired by seed), its cost with and without the offline pass, and time to GRPO's final accuracy."""
    from .figures import ablation_figure

    root = Path(root)
    summary = summarize_runs(df, baseline="grpo", target_run="grpo")
    order = [r for r in labels if r in summary["runs"]] + [r for r in summary["runs"] if r not in labels]
    summary["runs"] = {r: summary["runs"][r] for r in order}  # the arms in the order of ``labels``
    if "spo" in summary["runs"]:
        summary["vs_spo"] = summarize_runs(df, baseline="spo")["vs_spo"]
    summary["settings"] = _settings(root)
    summary["labels"] = {run: labels.get(run, run) for run in summary["runs"]}
    summary["paper_finding"] = ("the paper's ablations: SPO's gains stem from its baseline estimation and its "
                                "advantage normalisation (Qwen3-8B; stated qualitatively)")
    for run in summary["runs"]:
        summary["runs"][run]["lr"] = json.loads(next((root / "runs" / run).glob("seed*/config.json")).read_text())["lr"]
    if wall_seconds is not None:
        summary["wall_minutes"] = wall_seconds / 60
    summary["figures"] = [ablation_figure(root, summary), *main_job_figures(root, df, summary)] if figures else []
    (root / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n")
    md = ["# spo_lab ablations: which part of SPO does the work, and at what cost", "",
          "Written by `python -m spo_lab.experiment --ablations` from `summary.json` in this folder.", ""]
    if wall_seconds is not None:
        md += [f"Whole job: {wall_seconds / 60:.1f} min wall time.", ""]
    md += [ablation_markdown(summary), *[f"![{n}]({n})" for n in summary["figures"]]]
    (root / "summary.md").write_text("\n".join(md) + "\n")
    return summary


def ablation_markdown(summary: dict) -> str:
    """The ablation table: per arm, held-out avg@8 and its gain, paired differences, and the cost both ways."""
    st, runs, tta = summary["settings"], summary["runs"], summary["time_to_accuracy"]
    lrs = ", ".join(sorted({f"{e['lr']:g}" for e in runs.values()}))
    lines = [
        f"{st['responses_per_step']} responses per step, {st['steps']} steps, {len(next(iter(runs.values()))['seeds'])} "
        f"seeds per arm, each at lr {lrs}; held-out avg@"
        f"{st['eval_samples']} on the {st['eval_prompts']} {st['eval_split']} prompts. Differences are paired by seed; "
        "intervals are 95 % t-intervals over seeds. Cost counts SPO's offline pass (n0 samples of every training "
        f"prompt); the target is {tta['target_is']} ({tta['target_avg']:.3f}).", "",
        "| arm | avg@8 end | gain over warm start | vs SPO | vs GRPO | greedy end | greedy vs SPO | "
        "responses incl. offline pass | responses to target (incl. pass) | seeds reaching it |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for run, e in runs.items():
        t = tta[run]
        vs_spo = summary.get("vs_spo", {}).get(run, {}).get("avg")
        vs_grpo = summary.get("vs_grpo", {}).get(run, {}).get("avg")
        g_spo = summary.get("vs_spo", {}).get(run, {}).get("greedy")
        to = ("-" if t["responses"] is None else f"{t['responses']:,.0f} ({t['responses_incl_init']:,.0f})")
        lines.append(f"| {summary['labels'].get(run, run)} | {_fmt_sd(e['final_avg'])} | "
                     f"{_fmt_ci(e['gain_avg'], sign=True)} | {'-' if vs_spo is None else _fmt_ci(vs_spo, sign=True)} | "
                     f"{'-' if vs_grpo is None else _fmt_ci(vs_grpo, sign=True)} | {_fmt_sd(e['final_greedy'])} | "
                     f"{'-' if g_spo is None else _fmt_ci(g_spo, sign=True)} | "
                     f"{e['responses_incl_init']['mean']:,.0f} | {to} | {t['seeds_reached']}/{t['seeds']} |")
    lines += ["", "Learning curves of every arm against training responses and against responses incl. the offline "
                  "pass, avg@8 and greedy: the figures beside this summary.", "",
              f"Beside ours, {summary['paper_finding']}."]
    return "\n".join(lines) + "\n"


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
    names = main_job_figures(root, df, summary) if figures else []
    summary["figures"] = names
    (root / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n")
    md = ["# spo_lab tiny reproduction: results", "",
          "Written by `python -m spo_lab.experiment` from `summary.json` in this folder.", ""]
    if wall_seconds is not None:
        md += [f"Whole job: {wall_seconds / 60:.1f} min wall time.", ""]
    md += [results_markdown(summary), *[f"![{n}]({n})" for n in names]]
    (root / "summary.md").write_text("\n".join(md) + "\n")
    return summary


def write_sweep_report(root: Path, df: pd.DataFrame, order=("spo", "grpo")) -> dict:
    """Summarise a sweep (runs named ``<run>-lr<lr>``): best lr per method by final validation avg@8.

    ``order``: methods listed first, in this order (the rest follow as found)."""
    root = Path(root)
    methods: dict = {}
    starts = []
    for (name, _seed), s in df.groupby(["run", "seed"]):
        m = re.fullmatch(r"(.+)-lr(.+)", name)
        if not m:
            continue
        ev = s.sort_values("step").dropna(subset=[SAMPLED_ACC])
        starts.append(ev[SAMPLED_ACC].iloc[0])
        methods.setdefault(m.group(1), {}).setdefault(f"{float(m.group(2)):g}", []).append(ev[SAMPLED_ACC].iloc[-1])
    st = _settings(root)
    sweep = {"steps": st["steps"], "eval_samples": st["eval_samples"], "eval_prompts": st["eval_prompts"],
             "eval_split": st["eval_split"], "seeds": sorted(df.seed.unique().tolist()), "start_avg": float(np.mean(starts)),
             "methods": {}}
    for run in [r for r in order if r in methods] + [r for r in methods if r not in order]:
        lrs = {lr: float(np.mean(v)) for lr, v in methods[run].items()}
        best = max(lrs, key=lambda k: lrs[k])
        sweep["methods"][run] = {"lrs": lrs, "best_lr": float(best)}
    sweep["figure"] = sweep_figure(root, sweep)
    (root / "summary.json").write_text(json.dumps(sweep, indent=1, allow_nan=False) + "\n")
    (root / "summary.md").write_text("# spo_lab learning-rate sweep\n\n" + sweep_markdown(sweep) + "\n![sweep](sweep.png)\n")
    return sweep


# ====================================================================== the tool job
TOOL_KEYS = {"call_rate": "eval_tool/call_rate", "acc_with_tool": "eval_tool/acc_with_tool",
             "acc_without_tool": "eval_tool/acc_without_tool"}
"""The held-out tool metrics a ``--tool python`` run logs at each evaluation (:mod:`spo_lab.train`), by short name."""


def tool_per_seed(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, seed): tool-call rate and accuracy with / without a call at the first and last evaluation
    (NaN where no response of that kind was sampled)."""
    rows = []
    for (run, seed), s in df.groupby(["run", "seed"], sort=False):
        ev = s.sort_values("step").dropna(subset=[SAMPLED_ACC])
        row = {"run": run, "seed": int(seed)}
        for name, key in TOOL_KEYS.items():
            col = ev[key] if key in ev else pd.Series([np.nan] * len(ev))
            row[f"start_{name}"], row[f"final_{name}"] = float(col.iloc[0]), float(col.iloc[-1])
        rows.append(row)
    return pd.DataFrame(rows)


def summarize_tool_runs(df: pd.DataFrame) -> dict:
    """:func:`summarize_runs` (accuracy start -> end, gains, SPO - GRPO paired by seed), and per run ``tool``:
    the tool-call rate and the accuracy with and without a call, start and end, with 95 % t-intervals over seeds,
    and the change of the call rate paired by seed."""
    summary = summarize_runs(df)
    table = tool_per_seed(df)
    for run, e in summary["runs"].items():
        t = table[table.run == run].sort_values("seed")
        e["tool"] = {c: mean_ci(t[c].tolist()) for c in t.columns if c not in ("run", "seed")}
        e["tool"]["gain_call_rate"] = mean_ci((t.final_call_rate - t.start_call_rate).tolist())
    return summary


RECIPE_MAX_TOOL_CHARS = 256
"""Where the SPO recipe cuts a tool output (characters); the trainer's ``--max-tool-chars`` default."""


def _tool_job_differences(st: dict, runs: dict) -> list[str]:
    """The tool job's departures from the recipe, said plainly: a shorter tool-output cut, and which SPO arms ran."""
    said = []
    chars = st.get("max_tool_chars")
    if chars is not None and chars != RECIPE_MAX_TOOL_CHARS:
        said.append(f"Tool outputs are cut at {chars} characters, not at the recipe's {RECIPE_MAX_TOOL_CHARS} (the "
                    "tiny model's context is 64 tokens).")
    spo = [r for r in runs if r.startswith("spo")]
    if spo and "spo" not in spo:
        arms = []
        for r in spo:
            n0 = re.fullmatch(r"spo-n0-(\d+)", r)
            arms.append(f"`{r}`" + ("" if not n0 else " (no offline pass: n0 = 0, every prompt's tracker starts "
                                              "from Beta(0.5, 0.5))" if n0[1] == "0" else f" (n0 = {n0[1]})"))
        said.append(f"SPO runs only as {' and '.join(arms)}: the official SPO arm (offline pass with n0 = 8) is not "
                    "part of this job.")
    return [" ".join(said), ""] if said else []


def tool_markdown(summary: dict) -> str:
    """The tool job's tables: accuracy start -> end, tool-call rate, accuracy with / without a call, the paired
    difference and the cost."""
    st, runs = summary["settings"], summary["runs"]
    k = st["eval_samples"]
    lrs = ", ".join(sorted({f"{e['lr']:g}" for e in runs.values()}))
    lines = [
        f"Task `arith_tool` (multiplication, 2 x 1 to 3 x 3 digits) from `data/tiny-qwen3-tool`, the Python tool "
        f"on (ReTool format, <= {st.get('max_turns', 8)} turns). {st['responses_per_step']} responses per step for "
        f"every run, {st['steps']} steps, lr {lrs} for every run; "
        f"{len(next(iter(runs.values()))['seeds'])} seeds. Held-out: the {st['eval_prompts']} {st['eval_split']} "
        f"prompts, avg@{k} at T = {st['temperature']}, greedy beside it; the tool columns are over the avg@{k} "
        "samples. Intervals are 95 % t-intervals over seeds.", "",
        f"| run | avg@{k} start | avg@{k} end | gain [95% CI] | greedy start | greedy end | greedy gain [95% CI] |",
        "|---|---|---|---|---|---|---|"]
    for run, e in runs.items():
        lines.append(f"| {run} | {_fmt_sd(e['start_avg'])} | {_fmt_sd(e['final_avg'])} | "
                     f"{_fmt_ci(e['gain_avg'], sign=True)} | {_fmt_sd(e['start_greedy'])} | "
                     f"{_fmt_sd(e['final_greedy'])} | {_fmt_ci(e['gain_greedy'], sign=True)} |")
    lines += ["", "| run | tool-call rate start | end | change [95% CI] | accuracy with a call, start -> end | "
                  "without a call, start -> end |", "|---|---|---|---|---|---|"]
    for run, e in runs.items():
        t = e["tool"]
        lines.append(f"| {run} | {_fmt_sd(t['start_call_rate'])} | {_fmt_sd(t['final_call_rate'])} | "
                     f"{_fmt_ci(t['gain_call_rate'], sign=True)} | {_fmt_sd(t['start_acc_with_tool'])} -> "
                     f"{_fmt_sd(t['final_acc_with_tool'])} | {_fmt_sd(t['start_acc_without_tool'])} -> "
                     f"{_fmt_sd(t['final_acc_without_tool'])} |")
    for run, d in summary.get("vs_grpo", {}).items():
        lines += ["", f"**{run} - grpo, paired by seed** (seeds {d['seeds']}): avg@{k} {_fmt_ci(d['avg'], sign=True)}, "
                      f"greedy {_fmt_ci(d['greedy'], sign=True)}."]
    levels = sorted({c.split("/", 1)[1] for e in runs.values() for c in e if c.startswith("final_avg/")})
    if levels:
        lines += ["", f"Per level, avg@{k} (mean over seeds), start -> end:", "",
                  "| run | " + " | ".join(levels) + " |", "|---|" + "---|" * len(levels)]
        for run, e in runs.items():
            lines.append(f"| {run} | " + " | ".join(
                f"{e[f'start_avg/{lv}']['mean']:.3f} -> {e[f'final_avg/{lv}']['mean']:.3f}" for lv in levels) + " |")
    lines += ["", "| run | responses | incl. offline init | s / step (this machine, one thread) | offline init (min) |",
              "|---|---|---|---|---|"]
    for run, e in runs.items():
        lines.append(f"| {run} | {e['responses']['mean']:,.0f} | {e['responses_incl_init']['mean']:,.0f} | "
                     f"{e['sec_per_step']['mean']:.2f} | {e['offline_seconds']['mean'] / 60:.1f} |")
    return "\n".join(lines) + "\n"


def write_tool_report(root: Path, df: pd.DataFrame, wall_seconds: float | None = None, figures: bool = True) -> dict:
    """The tool job's ``summary.json``, ``summary.md`` and figures (accuracy and tool use against responses)."""
    from .figures import tool_figures

    root = Path(root)
    summary = summarize_tool_runs(df)
    cfg = json.loads(next(root.glob("runs/*/seed*/config.json")).read_text())
    summary["settings"] = _settings(root) | {k: cfg[k] for k in ("task", "model", "max_turns", "max_tool_chars", "lr")}
    for run in summary["runs"]:
        summary["runs"][run]["lr"] = json.loads(next((root / "runs" / run).glob("seed*/config.json")).read_text())["lr"]
    if wall_seconds is not None:
        summary["wall_minutes"] = wall_seconds / 60
    summary["figures"] = tool_figures(root, df, summary) if figures else []
    summary["settings"]["model"] = Path(summary["settings"]["model"]).name  # no machine paths in the summary
    (root / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n")
    (root / "summary.md").write_text(tool_summary_markdown(summary, wall_seconds))
    return summary


def tool_summary_markdown(summary: dict, wall_seconds: float | None = None) -> str:
    """The tool job's ``summary.md``: the job's departures from the recipe (tool-output cut, SPO arms), said
    before the tables (:func:`tool_markdown`, also the README's block), and the figures."""
    md = ["# spo_lab with a Python tool: the tiny model learns to call it", "",
          "Written by `python -m spo_lab.experiment --tool-job` from `summary.json` in this folder.", ""]
    if wall_seconds is not None:
        md += [f"Whole job: {wall_seconds / 60:.1f} min wall time.", ""]
    md += [*_tool_job_differences(summary["settings"], summary["runs"]), tool_markdown(summary),
           *[f"![{n}]({n})" for n in summary["figures"]]]
    return "\n".join(md) + "\n"


def async_markdown(s: dict) -> str:
    """The asynchronous-collector training comparison (``benchmarks/async_training.py``'s summary.json) as markdown."""
    st = s["settings"]
    lines = [f"SPO on arith_tool, {st['seeds']} seeds x {st['steps']} steps, injected tool latency "
             f"`{st['latency']}` per call, max staleness {st['max_staleness']}; mean [95 % t-interval over seeds]", "",
             "| collector | held-out avg@4 start | end | gain | training wall s (evaluation excluded) | whole run s |",
             "|---|---|---|---|---|---|"]
    for k in ("spo-sync", "spo-async"):
        a = s["arms"][k]
        lines.append(f"| {k.removeprefix('spo-')} | {_fmt_ci(a['start'])} | {_fmt_ci(a['end'])} | "
                     f"{_fmt_ci(a['gain'], sign=True)} | {_fmt_ci(a['train_s'], digits=0)} | "
                     f"{_fmt_ci(a['total_s'], digits=0)} |")
    lines += ["", f"async - sync, final avg@4 (paired by seed): {_fmt_ci(s['async_minus_sync_end'], sign=True)}; "
              f"sync / async training time (paired): {_fmt_ci(s['sync_over_async_train_time'], digits=2)}x, "
              f"whole run {_fmt_ci(s['sync_over_async_total_time'], digits=2)}x; "
              f"mean staleness of the async arm's training rows: {s['async_staleness_mean']:.2f} versions", ""]
    return "\n".join(lines)


def collection_markdown(b: dict) -> str:
    """``benchmarks/bench_async.py``'s JSON as markdown: usable responses per second per mode, ratios, where the time went."""
    st = b["settings"]
    lines = [f"{st['batches']} batches of {st['batch']} usable responses per mode, median of {st['repeats']} rounds, "
             f"injected tool latency `{b['latency']}` per call; responses / s in the steady state (the first batch "
             f"left out, the first {st['max_staleness']} for single_async), and from the start beside it", "",
             "| mode | responses / s | x group_sync | from the start | generating | only tools running | idle | aborted "
             "| staleness max |", "|---|---|---|---|---|---|---|---|---|"]
    for m, r in b["modes"].items():
        lines.append(f"| {m} | {r['responses_per_s']:.2f} | {b['ratio_to_group_sync'][m]:.2f} | "
                     f"{r['responses_per_s_whole']:.2f} | {r['generate_busy']:.0%} | {r['tool_only']:.0%} | "
                     f"{r['idle']:.0%} | {r['aborted']:.0f} | {r['staleness_max']:.0f} |")
    lines.append("")
    for m, r in b["modes"].items():
        aborted, admitted = r["runs"][0].get("aborted_per_level"), r["runs"][0].get("admitted_per_level", {})
        if aborted:
            lines.append(f"- {m}, aborted of admitted per level (first round): " + ", ".join(
                f"{k} {v} of {admitted[k]} ({v / admitted[k]:.0%})" if admitted.get(k) else f"{k} {v}"
                for k, v in aborted.items()))
    lines += ["", f"The paper's simulation (24 samples, 48 rollouts started): {b['paper_ratio']:.2f}x.", ""]
    return "\n".join(lines)


README_BLOCKS = {"tiny-results": ("results/tiny/summary.json", results_markdown),
                 "tiny-sweep": ("results/tiny-sweep/summary.json", sweep_markdown),
                 "paper-vs-ours": ("results/tiny/summary.json", paper_markdown),
                 "tiny-ablations": ("results/tiny-ablations/summary.json", ablation_markdown),
                 "tiny-tool": ("results/tiny-tool/summary.json", tool_markdown),
                 "async-collection": ("results/bench_async/bench.json", collection_markdown),
                 "async-training": ("results/tiny-async/summary.json", async_markdown)}
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


