"""The tiny reproduction: SPO vs GRPO (and ablations) on the bundled Qwen3, several seeds, one command.

    python -m spo_lab.experiment                 # the main job, <= 15 min on 2 CPU cores
    python -m spo_lab.experiment --quick         # a 1-2 minute smoke version
    python -m spo_lab.experiment --runs spo,grpo,rloo --seeds 5 --steps 400 --out results/big

Every run generates the same number of responses per step (SPO: 64 prompts x 1; group methods:
8 prompts x 8) with the same learning rate and PPO settings: the comparison is tuned for neither
side. Runs go two at a time (one torch thread each) and write their metrics under ``OUT/runs/``;
then this script writes ``OUT/summary.md`` (mean +- std over seeds) and the figures ``OUT/*.png``.

What it demonstrates: the code paths and the qualitative effects (degenerate groups, advantage
variance, the curriculum) at a scale where a run takes a minute. It is not the paper's experiment:
a 1 M-parameter model on 2-digit-to-4-digit addition, a few hundred steps, no tools.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

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

MAIN = dict(runs=("spo", "grpo", "spo-uniform", "spo-no-init"), seeds=3, steps=150)
QUICK = dict(runs=("spo", "grpo"), seeds=2, steps=30)


def run_configs(names, seeds: int, steps: int, out: Path, **overrides) -> list[Config]:
    """One Config per (run name, seed), writing to ``out/runs/<name>/seed<k>``."""
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        raise ValueError(f"unknown runs {unknown}; known: {sorted(RUNS)}")
    # The job owns out/runs/: running it again replaces the runs it made before (each run folder is
    # replaced whole; see spo_lab.run_folder), it never mixes old and new rows.
    base = Config(steps=steps, progress=False, save_model=True, num_threads=1, cache_dir=str(out / "cache"),
                  overwrite=True)
    return [
        replace(base, **RUNS[name], **overrides, seed=seed, out=str(out / "runs" / name / f"seed{seed}"))
        for name in names
        for seed in range(seeds)
    ]


def _run_one(cfg: Config) -> tuple[str, float]:
    t0 = time.perf_counter()
    train(cfg)
    return cfg.out, time.perf_counter() - t0


def run_all(configs: list[Config], workers: int = 2) -> None:
    """Train every config, ``workers`` at a time, printing one line as each finishes."""
    ctx = mp.get_context("spawn")  # fresh interpreters: no torch state shared between runs
    with ctx.Pool(workers) as pool:
        for i, (out, secs) in enumerate(pool.imap_unordered(_run_one, configs), 1):
            last = pd.read_json(Path(out) / "metrics.jsonl", lines=True).iloc[-1]
            print(f"[{i}/{len(configs)}] {Path(out).parent.name:<16} {Path(out).name:<6} {secs:5.0f} s   "
                  f"held-out greedy acc {last['eval/greedy_acc']:.3f}", flush=True)


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


def _mean_std(x: pd.Series, fmt: str = "{:.3f}") -> str:
    x = x.dropna()
    if x.empty:
        return "-"
    return (fmt + " ± " + fmt).format(x.mean(), x.std(ddof=1) if len(x) > 1 else 0.0)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run: final accuracy, cost, degenerate share, advantage variance, time (mean ± std over seeds)."""
    rows = []
    for run, d in df.groupby("run", sort=False):
        per_seed = []
        for _, s in d.groupby("seed"):
            ev = s.dropna(subset=["eval/greedy_acc"])
            train_rows = s[s.step > 0]
            first, last = train_rows.head(10), train_rows.tail(10)
            per_seed.append({
                "acc0": ev["eval/greedy_acc"].iloc[0], "acc": ev["eval/greedy_acc"].iloc[-1],
                "sacc": ev["eval/sampled_acc"].iloc[-1],
                "responses": train_rows["responses"].iloc[-1],
                "responses_incl_init": train_rows["responses_incl_init"].iloc[-1],
                "deg_first": first.get("grpo/degenerate_frac", pd.Series(dtype=float)).mean(),
                "deg_last": last.get("grpo/degenerate_frac", pd.Series(dtype=float)).mean(),
                "zero_adv": train_rows["adv/zero_frac"].mean(),
                "var_ratio": (train_rows["adv/raw_var"] / train_rows["reward/var"].where(train_rows["reward/var"] > 0)).mean(),
                "sec_per_step": train_rows.filter(like="time/").drop(columns=["time/eval"], errors="ignore").sum(axis=1).mean(),
            })
        p = pd.DataFrame(per_seed)
        rows.append({
            "run": run, "seeds": len(p),
            "held-out greedy acc (start)": _mean_std(p.acc0), "held-out greedy acc (end)": _mean_std(p.acc),
            "held-out sampled acc (end)": _mean_std(p.sacc),
            "training responses": f"{int(p.responses.mean()):,}",
            "responses incl. offline init": f"{int(p.responses_incl_init.mean()):,}",
            "degenerate groups, first 10 -> last 10 steps": (
                "-" if p.deg_first.isna().all() else f"{p.deg_first.mean():.2f} -> {p.deg_last.mean():.2f}"),
            "share of |A| < 1e-4": _mean_std(p.zero_adv, "{:.2f}"),
            "var(r - b) / var(r)": _mean_std(p.var_ratio, "{:.2f}"),
            "s / step (excl. eval)": _mean_std(p.sec_per_step, "{:.2f}"),
        })
    return pd.DataFrame(rows)


def write_report(root: Path, df: pd.DataFrame, wall_seconds: float | None = None) -> str:
    """Write summary.md and the figures; return the markdown."""
    from .teaching import runs as run_figures  # matplotlib only when figures are made

    table = summarize(df)
    figures = {
        "accuracy_vs_responses.png": lambda ax: run_figures.plot_learning_curves(df, y="eval/greedy_acc", x="responses", ax=ax),
        "accuracy_vs_responses_incl_init.png": lambda ax: run_figures.plot_learning_curves(df, y="eval/greedy_acc", x="responses_incl_init", ax=ax),
        "zero_advantage_fraction.png": lambda ax: run_figures.plot_metric(df, "adv/zero_frac", smooth=10, ax=ax),
        "degenerate_fraction.png": lambda ax: run_figures.plot_metric(df[df.run.str.contains("grpo|rloo")], "grpo/degenerate_frac", smooth=10, ax=ax),
        "advantage_variance.png": lambda ax: run_figures.plot_metric(df, "adv/raw_var", smooth=10, ax=ax),
        "phase_times.png": lambda ax: run_figures.plot_phase_times(df, ax=ax),
    }
    if "tracker/value_hist" in df and (df.run == "spo").any():
        figures["tracker_value_histogram.png"] = lambda ax: run_figures.plot_value_histograms(df[(df.run == "spo") & (df.seed == 0)], ax=ax)
    import matplotlib.pyplot as plt

    for name, draw in figures.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        draw(ax)
        fig.tight_layout()
        fig.savefig(root / name, dpi=120)
        plt.close(fig)
    cfg = json.loads(next(root.glob("runs/*/seed0/config.json")).read_text())
    md = [
        "# spo_lab tiny reproduction: results",
        "",
        f"Bundled ~1 M-parameter Qwen3, graded addition task, {cfg['responses_per_step']} responses per step for every "
        f"run, lr {cfg['lr']}, {int(df.step.max())} steps, temperature {cfg['temperature']}. Mean ± std over seeds. "
        "Accuracy is on the 500 held-out prompts.",
        "",
        table.to_markdown(index=False),
        "",
        *[f"![{n}]({n})" for n in figures],
    ]
    if wall_seconds is not None:
        md.insert(3, f"Whole job: {wall_seconds / 60:.1f} min wall time.")
    text = "\n".join(md) + "\n"
    (root / "summary.md").write_text(text)
    return text


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"smoke version: {QUICK}")
    ap.add_argument("--runs", help=f"comma-separated names from {sorted(RUNS)} (default {','.join(MAIN['runs'])})")
    ap.add_argument("--seeds", type=int, help=f"seeds per run (default {MAIN['seeds']})")
    ap.add_argument("--steps", type=int, help=f"steps per run (default {MAIN['steps']})")
    ap.add_argument("--workers", type=int, default=2, help="runs trained at the same time (one thread each)")
    ap.add_argument("--out", default=None, help="results folder (default results/tiny or results/quick)")
    ap.add_argument("--report-only", action="store_true", help="rewrite summary and figures from existing runs")
    args = ap.parse_args(argv)
    plan = QUICK if args.quick else MAIN
    names = args.runs.split(",") if args.runs else list(plan["runs"])
    seeds, steps = args.seeds or plan["seeds"], args.steps or plan["steps"]
    root = Path(args.out or ("results/quick" if args.quick else "results/tiny"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if not args.report_only:
        configs = run_configs(names, seeds, steps, root)
        print(f"{len(configs)} runs ({', '.join(names)} x {seeds} seeds x {steps} steps) -> {root}", flush=True)
        run_all(configs, args.workers)
    print(write_report(root, load_results(root), None if args.report_only else time.perf_counter() - t0))
    print(f"figures and summary.md in {root}")


if __name__ == "__main__":
    main()
