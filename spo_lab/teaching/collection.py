"""The barrier, measured: collection throughput of a real collector in four modes (notebook 08,
``benchmarks/bench_async.py``).

The same engine, task, tool sandbox and injected latencies in every mode; only the scheduling differs:

- ``group_sync``: groups of G = 8 (B / G prompts), the batch waits for every member of every group;
- ``single_sync``: B prompts, one response each, the batch waits for all of them;
- ``single_async``: B trajectories always in flight; a batch is the first B to finish, and a finished
  trajectory's slot is refilled at once (no barrier, :class:`~spo_lab.collector.AsyncCollector`), under the
  trainer's staleness bound (``max_staleness``, 2 by default): a trajectory must be in a batch at most that
  many batches after the one it was started for, so a slow one is waited for at its deadline rather than
  left behind (without a bound, the fast trajectories would be taken and the slow ones never, which is faster
  only by being biased);
- ``single_overprovisioned``: the paper's simulation: 2B started, the first B kept, the rest aborted;
- ``single_async_unbounded``: ``single_async`` without the staleness bound, what a collector that never
  waits would deliver: the slow trajectories pile up in flight (counted as aborted when collection stops).

Collection only: no update runs between batches (the weights stay the same), but the version still advances
after every batch, so the asynchronous mode's staleness bound binds as in training. Usable responses are the responses handed over in batches; for the group
mode also those in groups whose rewards are not all equal (the rest have zero advantage).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..algorithms import GroupBaseline
from ..collector import AsyncCollector
from ..metrics import degenerate_mask
from ..tasks.base import breakdown_values

__all__ = ["MODES", "MODE_LABELS", "PAPER_RATIO", "measure_collection", "busy_fractions", "plot_collection_timeline",
           "plot_throughput_sweep"]

MODES = ("group_sync", "single_sync", "single_async", "single_overprovisioned", "single_async_unbounded")
PAPER_RATIO = 486.0 / 112.0
"""The paper's simulated speed-up of single-stream over group-synchronous collection (486 s vs 112 s)."""


def _collector(mode: str, engine, prompts, batch: int, group: int, max_new_tokens: int, seed: int, timeout_s: float,
               max_staleness: int, breakdown=None):
    gen = torch.Generator().manual_seed(seed)
    P = len(prompts)
    if mode == "group_sync":
        algo, K, over = GroupBaseline("grpo", group, P, batch // group, generator=gen), 0, 1
    else:
        algo = GroupBaseline("reinforce", 1, P, batch, generator=gen)
        K, over = {"single_sync": (0, 1), "single_async": (max_staleness, 1), "single_overprovisioned": (0, 2),
                   "single_async_unbounded": (10**9, 1)}[mode]
    return AsyncCollector(engine, None, algo, prompts, batch_units=batch // algo.group, max_staleness=K,
                          max_in_flight=batch * over, max_new_tokens=max_new_tokens, overprovision=over,
                          timeout_s=timeout_s, breakdown=breakdown)


def warmup_batches(mode: str, max_staleness: int) -> int:
    """Batches left out of the steady-state rate at the start: the bounded asynchronous mode's K (the batches
    that pay for no straggler admitted before the start), 1 for every other mode (start-up costs)."""
    return max(1, max_staleness) if mode == "single_async" else 1


def measure_collection(mode: str, engine, policy, task, problems, *, batch: int = 32, batches: int = 4,
                       group: int = 8, max_new_tokens: int = 64, seed: int = 0, timeout_s: float = 600.0,
                       max_staleness: int = 2) -> dict:
    """Collect ``batches`` batches of ``batch`` usable responses in ``mode``; what it took.

    Returns ``responses_per_s``, the steady-state rate: the responses of the batches after the first
    :func:`warmup_batches` ones, over the wall time between their hand-overs. A short run from the start
    flatters a pipelined mode: what is in flight when collection stops is never waited for, and with a
    staleness bound K the stragglers admitted in the last K versions are exactly what the next batches
    would have had to wait for; after the first K batches, every batch in the window pays for the
    stragglers of one admission version. Also ``responses_per_s_whole`` (from the start to the last
    batch), ``seconds``, ``responses``, ``window_batches``, for the group mode ``nondegenerate_per_s``,
    the collector's counts (``aborted``: started and thrown away, also per difficulty level where the task
    has one), ``staleness_mean`` / ``staleness_max`` of the rows handed over, the busy fractions of :func:`busy_fractions`, and the per-unit ``timeline`` (admission,
    finish, hand-over, generation and tool spans; seconds from the start).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if batch % group:
        raise ValueError(f"batch {batch} must be a multiple of the group size {group}")
    warmup = warmup_batches(mode, max_staleness)
    if batches < warmup + 2:
        raise ValueError(f"batches must be at least {warmup + 2} for {mode} (its first {warmup} are start-up and "
                         f"the rate needs two more hand-overs), got {batches}")
    levels = breakdown_values(task, problems)  # to count admitted and aborted units per level
    breakdown = None if levels is None else torch.tensor(levels, dtype=torch.float64)
    col = _collector(mode, engine, [p.prompt for p in problems], batch, group, max_new_tokens, seed, timeout_s,
                     max_staleness, breakdown)
    t0 = time.monotonic()
    responses = nondeg = 0
    handed = []  # (seconds since the collector started, responses so far) at each hand-over
    try:
        for b in range(batches):
            ro, _, _ = col.next_batch(b)
            responses += len(ro)
            handed.append((time.monotonic() - col.t0, responses))
            if mode == "group_sync":
                r = torch.tensor(task.reward(ro.texts, [problems[i] for i in ro.prompt_index.tolist()]))
                nondeg += int((~degenerate_mask(r, group)).sum()) * group
            col.sync_weights(policy)  # the same weights: collection only
        seconds = time.monotonic() - col.t0
    finally:
        counts = col.close()
    timeline = col.timeline()
    (ta, ra), (tb, rb) = handed[warmup - 1], handed[-1]
    out = {"mode": mode, "seconds": seconds, "responses": responses, "responses_per_s": (rb - ra) / (tb - ta),
           "responses_per_s_whole": responses / seconds, "window_batches": batches - warmup,
           "wall_from_first_request_s": time.monotonic() - t0, "aborted": counts.get("aborted", 0),
           **{f"{what}_per_level": {k.split("/", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith(what + "/")}
              for what in ("aborted", "admitted")},
           **_staleness(counts["staleness_hist"]),
           "admitted": counts.get("admitted", 0), **busy_fractions(timeline, seconds), "timeline": timeline}
    if mode == "group_sync":
        out["nondegenerate_per_s"] = nondeg / seconds
    return out


def _staleness(hist: dict) -> dict:
    """Mean and largest staleness (batches between a row's admission and the batch that took it) of the handed rows."""
    n = sum(hist.values())
    return {"staleness_mean": sum(int(k) * v for k, v in hist.items()) / max(n, 1),
            "staleness_max": max((int(k) for k in hist), default=0)}


def _union(spans) -> float:
    total, end = 0.0, -np.inf
    for a, b in sorted(spans):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def busy_fractions(timeline: list[dict], seconds: float) -> dict:
    """Where the wall time went (handed-over units only): the share with a generation call running
    (``generate_busy``), with only tool calls running (``tool_only``), and with neither (``idle``)."""
    gen = [(a, b) for u in timeline for _, what, a, b in u["spans"] if what == "gen"]
    tool = [(a, b) for u in timeline for _, what, a, b in u["spans"] if what == "tool"]
    g, either = _union(gen), _union(gen + tool)
    return {"generate_busy": g / seconds, "tool_only": (either - g) / seconds, "idle": 1 - either / seconds}


def plot_collection_timeline(result: dict, *, ax=None, max_rows: int = 48, title: str | None = None):
    """A Gantt chart of one measured collection: a row per trajectory (first ``max_rows`` by admission),
    its generation turns and tool calls as bars, a tick where its batch was handed over."""
    import matplotlib.pyplot as plt

    from ..palette import OTHER_COLORS as COLORS

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.2), layout="constrained")
    units = sorted(result["timeline"], key=lambda u: u["seq"])
    row = 0
    for u in units:
        members = sorted({m for m, *_ in u["spans"]}) or [0]
        for m in members:
            if row >= max_rows:
                break
            for mm, what, a, b in u["spans"]:
                if mm == m:
                    ax.barh(row, b - a, left=a, height=0.8,
                            color=COLORS["generate"] if what == "gen" else COLORS["tool"], linewidth=0)
            ax.plot([u["handed"]], [row], marker="|", color=COLORS["handover"], markersize=6)
            row += 1
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the collector started")
    ax.set_ylabel("trajectory (by admission)")
    ax.set_title(title or result["mode"], fontsize="medium")
    from matplotlib.patches import Patch
    from matplotlib.lines import Line2D

    ax.legend(handles=[Patch(color=COLORS["generate"], label="generation turn (batched)"),
                       Patch(color=COLORS["tool"], label="tool call (sandbox + injected wait)"),
                       Line2D([], [], color=COLORS["handover"], marker="|", linestyle="", label="handed to the trainer")],
              fontsize="x-small", loc="lower right")
    return ax


MODE_LABELS = {"group_sync": "group-synchronous (G = 8)", "single_sync": "single-stream, synchronous",
               "single_async": "single-stream, asynchronous (staleness <= 2)",
               "single_overprovisioned": "single-stream, 2B started", "single_async_unbounded": "asynchronous, no bound"}


def plot_throughput_sweep(sweep: list[dict], *, ax=None):
    """Usable responses per second against the injected latency's sigma, one line per mode (a benchmark's
    ``sweep`` list), with the paper's simulated ratio as text."""
    import matplotlib.pyplot as plt

    from ..palette import FALLBACK_COLORS, METHOD_COLORS

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2), layout="constrained")
    colors = {"group_sync": METHOD_COLORS["grpo"], "single_async": METHOD_COLORS["spo"],
              "single_sync": FALLBACK_COLORS[0], "single_overprovisioned": FALLBACK_COLORS[4],
              "single_async_unbounded": FALLBACK_COLORS[6]}
    xs = [s["sigma"] for s in sweep]
    for mode in MODES:
        ax.plot(xs, [s["modes"][mode]["responses_per_s"] for s in sweep], marker="o", color=colors[mode],
                label=MODE_LABELS[mode])
    ax.set_xlabel("sigma of the injected lognormal tool latency (heavier ->)")
    ax.set_ylabel("usable responses / s")
    ax.legend(fontsize="x-small")
    return ax
