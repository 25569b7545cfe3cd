"""The barrier, measured on a real collector: usable responses per second, group-synchronous vs single-stream.

Not a test. Times the collection of the same number of usable responses with the same engine (HF, the
tiny tool model), task (``arith_tool``), Python sandbox and latencies in four modes
(:mod:`spo_lab.teaching.collection`): ``group_sync`` (G = 8, wait for the group), ``single_sync`` (wait
for the batch), ``single_async`` (B trajectories always in flight, no barrier) and
``single_overprovisioned`` (start 2B, keep the first B, as the paper's simulation). The asynchronous mode
keeps its staleness bound (``--max-staleness``, 2 as in the training comparison): a slow trajectory is waited
for at its deadline, never left behind; ``single_async_unbounded`` drops the bound, to show what it costs. Here
batches follow each other with no update in between, so a bound counted in batches binds much harder than in
training (where an update separates them): ``benchmarks/async_training.py`` measures that. Latency is the real
generation and sandbox time plus an optional INJECTED wait per tool call drawn from a named
heavy-tailed law (``--latency``, see :mod:`spo_lab.tools.latency`), standing for the slow environments
the paper has in mind. Modes run in turn, ``--repeats`` rounds, so a change in machine load hits all
alike; medians are reported. The rate is the steady state's: the batches after the first (after the first K for
the bounded asynchronous mode, whose first K batches pay for no straggler; see
:func:`spo_lab.teaching.collection.measure_collection`); the rate from the start is kept beside it. Prints
responses per second per mode and the ratios to ``group_sync``, with the paper's simulated 4.34x beside them, and
where the time went; writes it all to ``--json``.

    python benchmarks/bench_async.py --quick
    python benchmarks/bench_async.py --latency lognormal:-1.6,1.0 --json results/bench_async/lognormal.json
    python benchmarks/bench_async.py --sweep 0,0.5,1.0,1.5 --json results/bench_async/sweep.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch

from spo_lab.engines.hf import HFEngine
from spo_lab.models import load_policy
from spo_lab.tasks import get_task
from spo_lab.teaching.collection import MODES, PAPER_RATIO, measure_collection
from spo_lab.tools import PythonSandbox, ToolEngine
from spo_lab.tools.latency import InjectedLatency, parse_latency

ROOT = Path(__file__).resolve().parents[1]


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a small run (B 16, 4 batches, 1 repeat) to check the path")
    ap.add_argument("--latency", default="lognormal:-1.6,1.0",
                    help="injected wait per tool call: none | fixed:S | exponential:MEAN | lognormal:MU,SIGMA "
                         "(default lognormal:-1.6,1.0: median 0.2 s, sigma 1)")
    ap.add_argument("--sweep", default="", help="comma-separated lognormal sigmas (MU of --latency kept): one "
                                                "measurement per sigma, for throughput against latency spread")
    ap.add_argument("--json", default="", help="write the results here")
    ap.add_argument("--model", default=str(ROOT / "data" / "tiny-qwen3-tool"))
    ap.add_argument("--task", default="arith_tool")
    ap.add_argument("--batch", type=int, default=32, help="usable responses per batch (B)")
    ap.add_argument("--batches", type=int, default=12, help="batches per mode and round (the steady-state rate "
                    "leaves out the first, or the first K for single_async)")
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-staleness", type=int, default=2, help="single_async's bound, as in training")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--tool-timeout-s", type=float, default=10.0)
    ap.add_argument("--num-threads", type=int, default=1)
    ap.add_argument("--sandbox-uid", type=int, default=65534, help="uid (and gid) the sandbox drops to when run as "
                    "root; its process limit is shared with every other sandbox of that uid on the machine")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timelines", action="store_true", help="keep every unit's spans in the JSON (Gantt charts)")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.batches, args.repeats = 16, max(4, args.max_staleness + 2), 1
    parse_latency(args.latency)  # a bad spec fails here, naming the forms
    return args


def measure(args, engine, policy, task, problems, latency: str) -> dict:
    runs = {m: [] for m in MODES}
    for r in range(args.repeats):
        for mode in MODES:  # in turn: machine load hits every mode alike
            engine.sandbox = InjectedLatency(engine.sandbox.sandbox, latency, seed=args.seed + r,
                                             cap_s=args.tool_timeout_s)
            runs[mode].append(measure_collection(mode, engine, policy, task, problems, batch=args.batch,
                                                 batches=args.batches, group=args.group,
                                                 max_new_tokens=args.max_new_tokens, seed=args.seed + r,
                                                 max_staleness=args.max_staleness))
    modes = {}
    for mode, rs in runs.items():
        med = {k: statistics.median(x[k] for x in rs) for k in rs[0] if isinstance(rs[0][k], (int, float))}
        med["runs"] = [{k: v for k, v in x.items() if k != "timeline"} for x in rs]
        if args.timelines:
            med["timeline"] = rs[0]["timeline"]
        modes[mode] = med
    base = modes["group_sync"]["responses_per_s"]
    ratios = {m: modes[m]["responses_per_s"] / base for m in MODES}
    return {"latency": latency, "latency_injected": latency != "none", "modes": modes, "ratio_to_group_sync": ratios}


def report(res: dict) -> None:
    print(f"\ninjected tool latency: {res['latency']} (INJECTED on top of real generation and sandbox time)")
    print(f"{'mode':<24}{'responses/s':>12}{'x group_sync':>14}{'from start':>12}{'gen busy':>10}{'tool only':>11}"
          f"{'idle':>7}{'aborted':>9}{'stale max':>11}")
    for m in MODES:
        r = res["modes"][m]
        print(f"{m:<24}{r['responses_per_s']:>12.2f}{res['ratio_to_group_sync'][m]:>14.2f}{r['responses_per_s_whole']:>12.2f}"
              f"{r['generate_busy']:>10.0%}{r['tool_only']:>11.0%}{r['idle']:>7.0%}{r['aborted']:>9.0f}"
              f"{r['staleness_max']:>11.0f}")
    print("responses/s: steady state (the first batch, or the first K for single_async, left out); from start: "
          "over the whole run, which flatters a pipelined mode (what is in flight at the end is never waited for)")
    for m in MODES:
        first = res["modes"][m]["runs"][0]
        if first.get("aborted_per_level"):
            print(f"  {m} aborted of admitted per level (first round): " + ", ".join(
                f"{k} {v} of {first['admitted_per_level'].get(k, '?')}" for k, v in first["aborted_per_level"].items()))
    g = res["modes"]["group_sync"]
    if "nondegenerate_per_s" in g:
        print(f"group_sync, responses in non-degenerate groups only: {g['nondegenerate_per_s']:.2f}/s")
    print(f"the paper's simulation (24 samples, 48 started): {PAPER_RATIO:.2f}x")


def main(argv=None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.num_threads)
    policy, tok = load_policy(args.model, dtype="float32", device="cpu")
    task = get_task(args.task, tokenizer=tok)
    problems = task.load("train")
    sandbox = PythonSandbox(timeout_s=args.tool_timeout_s, memory_mb=512, uid=args.sandbox_uid, gid=args.sandbox_uid)
    print("sandbox protections:", sandbox.protections(), file=sys.stderr)
    engine = ToolEngine(HFEngine(policy, tok), InjectedLatency(sandbox, "none"), max_turns=8, max_tool_chars=256,
                        tool_workers=args.batch * 2)
    engine.generate([problems[0].prompt], 1, max_new_tokens=8)  # warm-up
    out = {"machine": {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor(),
                       "cores": torch.get_num_threads()},
           "settings": {k: v for k, v in vars(args).items() if k != "json"} | {"model": Path(args.model).name},
           "paper_ratio": PAPER_RATIO}  # the model by name: no machine paths in committed results
    if args.sweep:
        name, params = parse_latency(args.latency)
        mu = params[0] if name == "lognormal" else 0.0
        out["sweep"] = []
        for sigma in (float(s) for s in args.sweep.split(",")):
            res = measure(args, engine, policy, task, problems, f"lognormal:{mu},{sigma}")
            report(res)
            out["sweep"].append({"sigma": sigma, **res})
        out |= out["sweep"][-1]
    else:
        res = measure(args, engine, policy, task, problems, args.latency)
        report(res)
        out |= res
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
