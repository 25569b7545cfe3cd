"""The figures of a job's report, drawn from the trainer's metrics and a summary (:mod:`spo_lab.report`).

One style for every figure: :mod:`spo_lab.teaching.style` (one colour per method, human labels,
dpi >= 120 here, seed bands, the paper's number beside ours where one exists). Each function takes
the data and a folder and returns the file name it wrote; :func:`main_job_figures` draws all of the
main job's.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .teaching import runs as run_figures
from .teaching import style
from .keys import DEGENERATE_FRAC, GREEDY_ACC, NOT_STEP, RESPONSES, RESPONSES_INCL_INIT, SAMPLED_ACC

__all__ = ["main_job_figures", "sweep_figure", "ablation_figure", "accuracy_figure", "offline_cost_figure", "per_level_figure",
           "paired_difference_figure", "degenerate_figure", "phase_time_figure", "tool_figures"]

AVG_LABEL = "held-out accuracy, avg@8 at T = 1"


def _save(fig, root: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(Path(root) / name, dpi=max(style.DPI, 120))
    plt.close(fig)
    return name


def _warm_start(ax, value: float) -> None:
    ax.axhline(value, color=style.METHOD_COLORS["initial"], linestyle=":", linewidth=1, label="warm start")


def main_job_figures(root: Path, df: pd.DataFrame, summary: dict) -> list[str]:
    """The main job's figures (file names in ``root``), from its metrics ``df`` and ``summary``."""
    from .report import PAPER

    style.apply()
    made = [accuracy_figure(root, df, summary), offline_cost_figure(root, df, summary)]
    made += [n for n in (per_level_figure(root, summary), paired_difference_figure(root, summary),
                         degenerate_figure(root, df, PAPER["degenerate_share_start"])) if n]
    made.append(phase_time_figure(root, df))
    return made


def _start(summary: dict) -> dict:
    return summary["runs"][next(iter(summary["runs"]))]


def accuracy_figure(root: Path, df: pd.DataFrame, summary: dict) -> str:
    """avg@8 and greedy against training responses, seed bands, the warm start marked."""
    start = _start(summary)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, y, key in ((axes[0], SAMPLED_ACC, "start_avg"), (axes[1], GREEDY_ACC, "start_greedy")):
        run_figures.plot_learning_curves(df, y=y, x=RESPONSES, ax=ax)
        _warm_start(ax, start[key]["mean"])
        style.legend(ax)
    axes[0].set_ylabel(AVG_LABEL)
    fig.suptitle(f"held-out test prompts; mean ± std over {len(start['seeds'])} seeds", fontsize="medium")
    return _save(fig, root, "accuracy_vs_responses.png")


def offline_cost_figure(root: Path, df: pd.DataFrame, summary: dict) -> str:
    """The same with the offline pass's cost counted: against responses and wall time incl. init."""
    from .report import offline_seconds, train_seconds

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    run_figures.plot_learning_curves(df, y=SAMPLED_ACC, x=RESPONSES_INCL_INIT, ax=axes[0])
    w = []
    for _, s in df.groupby(["run", "seed"]):
        s = s.sort_values("step").copy()
        s["minutes_incl_init"] = (train_seconds(s) + offline_seconds(s)) / 60
        w.append(s)
    for run, g in pd.concat(w).dropna(subset=[SAMPLED_ACC]).groupby("run", sort=True):
        stats = g.groupby("step").agg(x=("minutes_incl_init", "mean"), mean=(SAMPLED_ACC, "mean"),
                                      std=(SAMPLED_ACC, "std"))
        style.band(axes[1], stats.x.to_numpy(), stats["mean"].to_numpy(), stats["std"].to_numpy(), label=run,
                   color=style.color(run), marker="o", markersize=3)
    axes[1].set_xlabel("wall minutes incl. the offline init pass (1 CPU thread)")
    for ax in axes:
        ax.set_ylabel(AVG_LABEL)
        _warm_start(ax, _start(summary)["start_avg"]["mean"])
        style.legend(ax)
    fig.suptitle("the offline pass counted: SPO samples every training prompt n0 = 8 times before step 1",
                 fontsize="medium")
    return _save(fig, root, "accuracy_incl_offline_init.png")


def per_level_figure(root: Path, summary: dict) -> str | None:
    """Per level: the warm start and each method's final avg@8, seed std as error bars (None without levels)."""
    runs, start = list(summary["runs"]), _start(summary)
    levels = sorted({k.split("/", 1)[1] for k in summary["runs"][runs[0]] if k.startswith("final_avg/")},
                    key=lambda s: (len(s), s))
    if not levels:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.8))
    width, x = 0.8 / (len(runs) + 1), np.arange(len(levels))
    ax.bar(x, [start[f"start_avg/{lv}"]["mean"] for lv in levels], width, label="warm start",
           color=style.METHOD_COLORS["initial"])
    for i, run in enumerate(runs, 1):
        e = summary["runs"][run]
        ax.bar(x + i * width, [e[f"final_avg/{lv}"]["mean"] for lv in levels], width,
               yerr=[e[f"final_avg/{lv}"]["std"] or 0 for lv in levels], label=run, color=style.color(run), capsize=2)
    ax.set_xticks(x + width * len(runs) / 2, [lv.replace("level=", "level ") for lv in levels])
    ax.set_ylabel(AVG_LABEL)
    ax.set_title("after training, per difficulty level (error bars: std over seeds)", fontsize="medium")
    style.legend(ax)
    return _save(fig, root, "accuracy_per_level.png")


def paired_difference_figure(root: Path, summary: dict) -> str | None:
    """Each method minus the baseline method, seed by seed, with the mean and its 95 % interval."""
    bases = [k for k in summary if k.startswith("vs_")]
    if not bases:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2))
    labels = []
    for base in bases:
        b = {r["seed"]: r for r in summary["runs"][base[3:]]["per_seed"]}
        for j, (run, dd) in enumerate(summary[base].items()):
            for k, metric in enumerate(("avg", "greedy")):
                y = len(labels)
                labels.append(f"{run} - {base[3:]}\n{'avg@8' if metric == 'avg' else 'greedy'}")
                key = "final_avg" if metric == "avg" else "final_greedy"
                diffs = [r[key] - b[r["seed"]][key] for r in summary["runs"][run]["per_seed"] if r["seed"] in b]
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
    return _save(fig, root, "paired_difference.png")


def degenerate_figure(root: Path, df: pd.DataFrame, paper_start: float) -> str | None:
    """The group methods' degenerate groups over training, with the paper's share at the start."""
    deg = df[df[DEGENERATE_FRAC].notna()] if DEGENERATE_FRAC in df else df.iloc[:0]
    if deg.empty:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6))
    run_figures.plot_metric(deg, DEGENERATE_FRAC, smooth=10, ax=ax)
    style.paper_line(ax, paper_start, f"~{paper_start:.1f} at the start (Qwen3-8B)")
    ax.set_ylim(0, 1)
    style.legend(ax)
    return _save(fig, root, "degenerate_fraction.png")


def phase_time_figure(root: Path, df: pd.DataFrame) -> str:
    """Where a training step's time goes, per method (evaluation and the offline pass excluded)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    run_figures.plot_phase_times(df.drop(columns=list(NOT_STEP), errors="ignore"), ax=ax)
    ax.set_title("seconds per training step, evaluation excluded (1 CPU thread)", fontsize="medium")
    return _save(fig, root, "phase_times.png")


def sweep_figure(root: Path, sweep: dict) -> str:
    """Final validation avg@8 against the learning rate, one line per method."""
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
    return _save(fig, root, "sweep.png")


def ablation_figure(root: Path, summary: dict) -> str:
    """Per arm: its gain over the warm start, and its difference from full SPO, with 95 % intervals over seeds."""
    style.apply()
    runs = list(summary["runs"])
    labels = [summary.get("labels", {}).get(r, r) for r in runs]
    panels = [("gain over the warm start", lambda r: summary["runs"][r]["gain_avg"]),
              ("difference from full SPO, paired by seed", lambda r: summary.get("vs_spo", {}).get(r, {}).get("avg"))]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(runs) + 1.6), sharey=True)
    for ax, (title, get) in zip(axes, panels):
        for y, run in enumerate(runs):
            c = get(run)
            if not c or c["mean"] is None:
                continue
            lo, hi = c["ci95"]
            err = None if lo is None else [[c["mean"] - lo], [hi - c["mean"]]]
            ax.barh(y, c["mean"], color=style.color(run), alpha=0.85)
            if err is not None:
                ax.errorbar(c["mean"], y, xerr=err, fmt="none", color="black", capsize=3, linewidth=1)
        ax.axvline(0, color=style.METHOD_COLORS["paper"], linewidth=1)
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("held-out accuracy, avg@8 at T = 1 (fraction)")
    axes[0].set_yticks(range(len(runs)), labels)
    axes[0].invert_yaxis()
    fig.suptitle(f"ablations: mean and 95 % interval over {len(summary['runs'][runs[0]]['seeds'])} seeds",
                 fontsize="medium")
    return _save(fig, root, "ablations.png")


# ====================================================================== the tool job
def tool_figures(root: Path, df: pd.DataFrame, summary: dict) -> list[str]:
    """The tool job's figures: held-out accuracy (avg@k, greedy), and tool use (call rate, accuracy with and
    without a call), each against training responses with seed bands."""
    from .report import TOOL_KEYS

    style.apply()
    k, seeds = summary["settings"]["eval_samples"], len(_start(summary)["seeds"])
    start = _start(summary)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, y, key, name in ((axes[0], SAMPLED_ACC, "start_avg", f"held-out accuracy, avg@{k} at T = 1"),
                             (axes[1], GREEDY_ACC, "start_greedy", "held-out accuracy, greedy")):
        run_figures.plot_learning_curves(df, y=y, x=RESPONSES, ax=ax)
        _warm_start(ax, start[key]["mean"])
        ax.set_ylabel(name)
        style.legend(ax)
    fig.suptitle(f"multiplication with a Python tool, tiny Qwen3 (~1 M parameters); mean ± std over {seeds} seeds",
                 fontsize="medium")
    made = [_save(fig, root, "tool_accuracy.png")]
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    if "tool/call_rate" in df:
        run_figures.plot_metric(df[df.step > 0], "tool/call_rate", x=RESPONSES, ax=axes[0], smooth=3)
    axes[0].set_ylabel("share of training responses\nthat call the tool")
    for ax, name, label in ((axes[1], "call_rate", "share of held-out responses\nthat call the tool"),
                            (axes[2], "acc_with_tool", "held-out accuracy of responses\nwith a tool call"),
                            (axes[3], "acc_without_tool", "held-out accuracy of responses\nwithout one")):
        if TOOL_KEYS[name] in df and df[TOOL_KEYS[name]].notna().any():
            run_figures.plot_learning_curves(df, y=TOOL_KEYS[name], x=RESPONSES, ax=ax)
        ax.set_ylabel(label)
    for ax in axes:
        ax.set_ylim(-0.02, 1.02)
        style.legend(ax)
    fig.suptitle(f"tool use: every training step (rolling mean of 3), and the held-out avg@{k} samples; mean ± std "
                 f"over {seeds} seeds", fontsize="medium")
    made.append(_save(fig, root, "tool_use.png"))
    return made
