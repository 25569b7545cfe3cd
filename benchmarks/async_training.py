"""SPO trained with ``--collector async`` beside ``--collector sync``: held-out accuracy at equal responses, and wall time.

Not a test. Both arms use the tool job's settings (``spo_lab.experiment.TOOL_SETTINGS``: the ``arith_tool``
task, the cold-started ``data/tiny-qwen3-tool``, the Python tool), SPO at its tuned lr, the same number of
responses per step and of steps, the same INJECTED tool latency (``--latency``, default lognormal:-1.6,1.0:
median 0.2 s per call, sigma 1, standing for a slow environment) and the same tool concurrency. Per seed the two
arms run at the same time, one thread each, so a change in machine load hits both alike. Reports per arm the
held-out avg@k at the start and the end (mean and 95 % t-interval over seeds), the paired difference
async - sync, the training wall time (the step's phases; evaluation and the offline pass excluded) and the
paired ratio sync / async, the same for the whole run's logged time (evaluation included: tool calls already
running go on while the collector is paused for it), and the staleness the async arm trained at. Writes ``summary.json`` and
``summary.md`` to ``--out``.

    python benchmarks/async_training.py                   # 3 seeds x 60 steps -> results/tiny-async
    python benchmarks/async_training.py --quick           # 1 seed x 4 steps -> results/quick-async
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from spo_lab.experiment import COMMON, TOOL_SETTINGS, lr_for, run_all
from spo_lab.keys import ASYNC_STALENESS_MEAN, RESPONSES, SAMPLED_ACC, STEP
from spo_lab.report import async_markdown, load_results, mean_ci, train_seconds
from spo_lab.train import Config

ARMS = {"spo-sync": {"collector": "sync"}, "spo-async": {"collector": "async"}}


def configs(args) -> list[Config]:
    out = []
    for seed in range(args.seeds):
        for arm, kw in ARMS.items():
            c = Config(**{**COMMON, **TOOL_SETTINGS, **kw, "algo": "spo", "lr": lr_for("spo"), "seed": seed,
                          "steps": args.steps, "max_staleness": args.max_staleness, "tool_latency": args.latency,
                          "tool_workers": args.tool_workers, "out": str(Path(args.out) / "runs" / arm / f"seed{seed}"),
                          "progress": False, "save_model": False, "keep_checkpoints": False, "overwrite": True})
            c.validate()
            out.append(c)
    return out


def summarize(df: pd.DataFrame, args) -> dict:
    rows = []
    for (arm, seed), s in df.groupby(["run", "seed"]):
        s = s.sort_values(STEP)
        ev = s.dropna(subset=[SAMPLED_ACC])
        rows.append({"arm": arm, "seed": seed, "start": float(ev[SAMPLED_ACC].iloc[0]),
                     "end": float(ev[SAMPLED_ACC].iloc[-1]), "responses": int(s[RESPONSES].max()),
                     "train_s": float(train_seconds(s).iloc[-1]),
                     "total_s": float(s[[c for c in s.columns if c.startswith("time/")]].fillna(0).to_numpy().sum()),
                     "staleness_mean": float(s[ASYNC_STALENESS_MEAN].mean()) if ASYNC_STALENESS_MEAN in s else 0.0})
    t = pd.DataFrame(rows)
    a, b = (t[t.arm == k].set_index("seed").sort_index() for k in ("spo-async", "spo-sync"))
    arms = {k: {"start": mean_ci(g.start), "end": mean_ci(g.end), "gain": mean_ci(g.end - g.start),
                "train_s": mean_ci(g.train_s), "total_s": mean_ci(g.total_s), "responses": int(g.responses.iloc[0])} for k, g in (("spo-sync", b), ("spo-async", a))}
    hist: dict[str, int] = {}
    for f in sorted(Path(args.out).glob("runs/spo-async/seed*/collector.json")):
        for k, v in json.loads(f.read_text())["staleness_hist"].items():
            hist[k] = hist.get(k, 0) + v
    curves = {f"{arm}/seed{seed}": {"responses": ev[RESPONSES].astype(int).tolist(), "avg": ev[SAMPLED_ACC].tolist(),
                                   "train_s": train_seconds(s).loc[ev.index].tolist()}
              for (arm, seed), s in df.groupby(["run", "seed"]) for ev in [s.sort_values(STEP).dropna(subset=[SAMPLED_ACC])]}
    return {"settings": {k: v for k, v in vars(args).items() if k not in ("quick", "report_only")}, "arms": arms,
            "per_seed": rows,
            "staleness_hist": hist, "curves": curves,
            "async_minus_sync_end": mean_ci(a.end - b.end), "sync_over_async_train_time": mean_ci(b.train_s / a.train_s),
            "sync_over_async_total_time": mean_ci(b.total_s / a.total_s),
            "async_staleness_mean": float(a.staleness_mean.mean())}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--max-staleness", type=int, default=2)
    ap.add_argument("--latency", default="lognormal:-1.6,1.0")
    ap.add_argument("--tool-workers", type=int, default=8, help="per arm; the two arms of a seed run side by side and "
                    "share the sandbox uid's process limit (16 concurrent calls at the default 32)")
    ap.add_argument("--out", default="results/tiny-async")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.out = 1, 4, "results/quick-async" if args.out == "results/tiny-async" else args.out
    t0 = time.perf_counter()
    if not args.report_only:
        run_all(configs(args), workers=2, progress=False)
    summary = summarize(load_results(args.out), args)
    if not args.report_only:
        summary["wall_seconds"] = time.perf_counter() - t0
    Path(args.out, "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    Path(args.out, "summary.md").write_text(async_markdown(summary) + "\n")
    print(async_markdown(summary))


if __name__ == "__main__":
    main()
