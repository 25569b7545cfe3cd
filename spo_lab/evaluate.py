"""Sampled evaluation of a policy through its task's own reward: accuracy, pass@k and maj@k, and the paper's
benchmark protocol as a command line.

Entry points:

- :func:`accuracy` -- what the trainer logs every ``eval_every`` steps: greedy and one-sample accuracy
  on held-out problems, overall and per metadata group (the task's ``breakdown_key``, e.g. level).
- :func:`sample_answers` + :func:`pass_and_maj_curves` -- the paper's protocol (the SPO paper):
  n samples per problem at temperature 0.6, top_p 0.95, top_k 20, then maj@k, avg@n and unbiased
  pass@k curves.

      answers, correct = sample_answers(engine, task, problems, n=32)
      curves = pass_and_maj_curves(answers, correct, ks=(1, 2, 4, 8, 16, 32))

- ``python -m spo_lab.evaluate`` (:func:`main`) -- the five benchmarks end to end; every sample kept in
  ``samples.jsonl``, tables with bootstrap intervals and the paper's numbers in ``summary.json`` /
  ``summary.md``, the curves in ``pass_at_k.png``; resumable per benchmark (the same command again skips
  what is done; other settings on the same ``--out`` are refused unless ``--overwrite`` starts afresh).
  Every option is checked when parsed and the model path, ``--out`` and the data before anything loads, so
  a bad command fails in a second and leaves nothing behind:

      python -m spo_lab.evaluate --model PATH --task math --benchmarks aime24,aime25,beyondaime,brumo25,hmmt25 \\
          --n 32 --temperature 0.6 --top-p 0.95 --top-k 20 --max-new-tokens 8192 --engine vllm --out runs/eval

Metrics, per benchmark of P problems with n samples each, c_i of them correct for problem i:

- avg@n = mean_i c_i / n (plain sample accuracy; the expected avg@k for every k);
- pass@k = mean_i [1 - C(n - c_i, k) / C(n, k)], the unbiased estimator (:func:`spo_lab.metrics.pass_at_k`),
  from all n samples, not k fresh ones;
- maj@k = the most frequent extracted answer is correct, in DISJOINT consecutive blocks of k samples
  (floor(n / k) blocks per problem; ties to the answer seen first; :func:`spo_lab.metrics.maj_at_k`);
- 95 % intervals: percentile bootstrap over problems (resampled with replacement, ``--bootstrap``
  resamples, seeded); the average over benchmarks resamples each benchmark independently.

With the Python tool (``--tool python``, or ``--tool auto``, the default, for a task that needs it:
``arith_tool``) the engine is the trainer's :class:`spo_lab.tools.ToolEngine` around the sampling engine, its
sandbox built from the same ``--tool-*`` flags as ``python -m spo_lab.train`` (its protections printed at the
start); the math task then takes its tool prompt and reward rules (``--style tool``). Every sample keeps its
number of tool calls, and each benchmark reports its tool-call rate and its accuracy with and without a call.
A task that needs the tool is refused without it (``--tool none``), and so is ``--style tool`` without the tool:
its responses would be scored by rules written for another protocol.

Correctness is ``task.reward`` (> 0.5) and the voted answer ``task.extract``: nothing here re-implements a
task's answer check. Sampling runs on a forked, seeded RNG (:func:`spo_lab.engines.base.seeded`), so
evaluating never changes a training run's random stream; each benchmark has its own seed (derived from
``--seed`` and its name), so skipping or resuming one never changes another.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .engines.base import seeded
from .errors import UserError, cli_main
from .metrics import maj_at_k, pass_at_k
from .tasks.base import breakdown_key

__all__ = ["accuracy", "sample_answers", "sample_completions", "pass_and_maj_curves", "PAPER_EVAL", "PAPER_MAJ32",
           "PAPER_AVG32_MEAN", "powers_of_two", "benchmark_metrics", "summarize", "evaluate_benchmarks",
           "check_args", "remove_results", "tool_use", "tool_config", "TOOL_FLAGS", "main"]

PAPER_EVAL = dict(temperature=0.6, top_p=0.95, top_k=20)
"""The paper's evaluation sampling settings."""

PAPER_MAJ32 = {
    "aime24": {"grpo": 83.3, "spo": 84.0}, "aime25": {"grpo": 72.1, "spo": 76.5},
    "beyondaime": {"grpo": 45.6, "spo": 46.9}, "brumo25": {"grpo": 56.7, "spo": 64.0},
    "hmmt25": {"grpo": 44.2, "spo": 47.5}, "average": {"grpo": 60.4, "spo": 63.8},
}
"""The paper's maj@32 (percent) of Qwen3-8B trained with GRPO and with SPO (the SPO paper): THEIR model's
result, set beside ours for scale, never a target for a different model."""

PAPER_AVG32_MEAN = {"grpo": 55.7, "spo": 56.0}
"""The paper's avg@32 (percent), averaged over the five benchmarks, Qwen3-8B (the SPO paper)."""

PAPER_LABEL = "paper's Qwen3-8B result"


@torch.no_grad()
def accuracy(engine, task, problems, *, temperature: float, max_new_tokens: int, seed: int, device=None,
             prefix: str = "eval", samples: int = 1) -> dict[str, float]:
    """Greedy accuracy and avg@``samples`` (at ``temperature``) over ``problems``, overall and per group.

    avg@k is the mean reward over k samples per problem, then over problems: an unbiased estimate of
    the expected one-sample accuracy, with less noise than one sample. Keys: ``{prefix}/greedy_acc``,
    ``{prefix}/sampled_acc`` (the avg@k), and ``{prefix}/greedy_acc/{key}={value}`` (likewise sampled)
    for each value of the task's ``breakdown_key`` metadata, when it has one.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    prompts = [p.prompt for p in problems]
    key = breakdown_key(task)
    out: dict[str, float] = {}
    with seeded(seed, device):
        for name, greedy, n in (("greedy", True, 1), ("sampled", False, samples)):
            r = engine.generate(prompts, n, temperature=temperature, max_new_tokens=max_new_tokens, greedy=greedy)
            rows = [p for p in problems for _ in range(n)]  # engine rows: each problem's n responses in a row
            scores = torch.tensor(task.reward(r.texts, rows), dtype=torch.float64).view(len(problems), n).mean(1)
            out[f"{prefix}/{name}_acc"] = float(scores.mean())
            if key:
                groups: dict = defaultdict(list)
                for p, s in zip(problems, scores.tolist()):
                    groups[p.meta.get(key)].append(s)
                for g in sorted(groups, key=str):
                    out[f"{prefix}/{name}_acc/{key}={g}"] = float(np.mean(groups[g]))
    return out


@torch.no_grad()
def sample_completions(engine, task, problems, n: int = 32, *, temperature: float = 0.6, top_p: float = 0.95,
                       top_k: int = 20, max_new_tokens: int = 8, batch: int = 1024, seed: int = 0, device=None):
    """n sampled completions per problem, scored and parsed by the task.

    Generation goes in chunks of ``max(1, batch // n)`` problems (``batch`` responses per engine call).
    Returns a dict of ``[problems, n]`` arrays: ``texts`` (object), ``answers`` (object,
    ``task.extract``, None when a completion gives none), ``rewards`` (float64, ``task.reward``) and
    ``truncated`` (bool, no <eos> within ``max_new_tokens``; False where the engine does not say); with a
    :class:`spo_lab.tools.ToolEngine` also ``tool_calls`` (int, the tool calls that ran in each response).
    """
    if n < 1:
        raise ValueError(f"n (samples per problem) must be >= 1, got {n}")
    P = len(problems)
    out = {"texts": np.empty((P, n), dtype=object), "answers": np.empty((P, n), dtype=object),
           "rewards": np.zeros((P, n)), "truncated": np.zeros((P, n), dtype=bool)}
    tool = _is_tool_engine(engine)
    if tool:
        out["tool_calls"] = np.zeros((P, n), dtype=np.int64)
    per = max(1, batch // n)
    with seeded(seed, device):
        for s in range(0, P, per):
            chunk = problems[s : s + per]
            r = engine.generate([p.prompt for p in chunk], n, temperature=temperature, top_p=top_p,
                                top_k=top_k, max_new_tokens=max_new_tokens)
            rows = slice(s, s + len(chunk))
            out["texts"][rows] = np.array(list(r.texts), dtype=object).reshape(-1, n)
            out["answers"][rows] = np.array([task.extract(t) for t in r.texts], dtype=object).reshape(-1, n)
            scores = task.reward(r.texts, [p for p in chunk for _ in range(n)])
            out["rewards"][rows] = np.asarray(scores, dtype=np.float64).reshape(-1, n)
            if r.truncated is not None:
                out["truncated"][rows] = r.truncated.numpy().astype(bool).reshape(-1, n)
            if tool:  # the ToolEngine's statistics of the call just made, one per returned row
                out["tool_calls"][rows] = engine.last_stats["calls"].numpy().astype(np.int64).reshape(-1, n)
    return out


def _is_tool_engine(engine) -> bool:
    from .tools import ToolEngine

    return isinstance(engine, ToolEngine)


def sample_answers(engine, task, problems, n: int = 32, *, temperature: float = 0.6, top_p: float = 0.95,
                   top_k: int = 20, max_new_tokens: int = 8, batch: int = 1024, seed: int = 0, device=None):
    """n sampled answers per problem (:func:`sample_completions` without the texts).

    Returns:
        ``(answers, correct)``: an object array ``[problems, n]`` of extracted answers
        (``task.extract``; None when a completion gives none) and a bool array ``[problems, n]``
        (``task.reward`` > 0.5).
    """
    s = sample_completions(engine, task, problems, n, temperature=temperature, top_p=top_p, top_k=top_k,
                           max_new_tokens=max_new_tokens, batch=batch, seed=seed, device=device)
    return s["answers"], s["rewards"] > 0.5


def pass_and_maj_curves(answers, correct, ks=(1, 2, 4, 8, 16, 32)) -> pd.DataFrame:
    """One row per k: mean pass@k over problems, maj@k, and avg@n (the plain sample accuracy)."""
    correct = np.asarray(correct, dtype=bool)
    n = correct.shape[1]
    c = correct.sum(axis=1)
    rows = [{"k": k, "pass@k": float(np.mean(pass_at_k(n, c, k))), "maj@k": maj_at_k(answers, correct, k)}
            for k in ks if k <= n]
    out = pd.DataFrame(rows)
    out["avg@n"] = float(correct.mean())
    return out


# ============================================================================ tables with intervals
def powers_of_two(n: int) -> list[int]:
    """1, 2, 4, ... up to n (inclusive when n is a power of two)."""
    return [2**j for j in range(int(np.log2(n)) + 1)] if n >= 1 else []


def _per_problem(answers, correct, ks) -> dict[str, np.ndarray]:
    """Every metric's per-problem value, ``[P]`` each: its benchmark value is the mean over problems."""
    correct = np.asarray(correct, dtype=bool)
    n, c = correct.shape[1], correct.sum(axis=1)
    out = {f"avg@{n}": c / n}
    for k in ks:
        out[f"maj@{k}"] = np.array([maj_at_k([a], [ok], k) for a, ok in zip(answers, correct)])
    for k in ks:
        out[f"pass@{k}"] = np.asarray(pass_at_k(n, c, k), dtype=np.float64).reshape(-1)
    return out


def benchmark_metrics(answers, correct, ks=None, *, resamples: int = 2000, seed: int = 0):
    """Point values and 95 % percentile-bootstrap intervals over problems.

    Returns ``(table, boot)``: ``table[metric] = {"value", "lo", "hi"}`` (fractions in [0, 1]) for
    avg@n, maj@k and pass@k (k in ``ks``, default the powers of two <= n), and ``boot[metric]``, the
    ``[resamples]`` bootstrap means (to combine benchmarks into an average with an interval).
    """
    if resamples < 1:
        raise ValueError(f"resamples (bootstrap) must be >= 1, got {resamples}")
    correct = np.asarray(correct, dtype=bool)
    P, n = correct.shape
    vals = _per_problem(answers, correct, powers_of_two(n) if ks is None else ks)
    idx = np.random.default_rng(seed).integers(0, P, size=(resamples, P))
    table, boot = {}, {}
    for m, v in vals.items():
        boot[m] = v[idx].mean(axis=1)
        lo, hi = np.percentile(boot[m], [2.5, 97.5])
        table[m] = {"value": float(v.mean()), "lo": float(lo), "hi": float(hi)}
    return table, boot


def _read_samples(path: Path) -> list[dict]:
    """The rows of a samples file; a torn last line (a killed write) is dropped."""
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _arrays(rows: list[dict]):
    """``(answers, correct)`` ``[P, n]`` from one benchmark's sample rows (ordered by problem, sample)."""
    P, n = 1 + max(r["problem"] for r in rows), 1 + max(r["sample"] for r in rows)
    answers, correct = np.empty((P, n), dtype=object), np.zeros((P, n), dtype=bool)
    seen = np.zeros((P, n), dtype=bool)
    for r in rows:
        answers[r["problem"], r["sample"]], correct[r["problem"], r["sample"]] = r["answer"], r["correct"]
        seen[r["problem"], r["sample"]] = True
    if not seen.all():
        raise ValueError(f"benchmark {rows[0]['benchmark']}: {int((~seen).sum())} of {P * n} samples missing")
    return answers, correct


def summarize(samples_path, *, benchmarks=None, resamples: int = 2000, seed: int = 0, settings=None) -> dict:
    """The ``summary.json`` content, recomputed from a ``samples.jsonl`` file alone.

    ``benchmarks`` fixes the order (default: first appearance). Holds per-benchmark tables
    (:func:`benchmark_metrics`), their average when there are several and they share n (macro mean, as
    the paper's "Average" column; interval from the independent per-benchmark bootstraps), and the
    paper's numbers (:data:`PAPER_MAJ32`, :data:`PAPER_AVG32_MEAN`) as fractions, labelled as its
    Qwen3-8B result. Samples made with the tool (rows with ``tool_calls``) add each benchmark's ``tool`` use
    (:func:`tool_use`).
    """
    by: dict[str, list] = defaultdict(list)
    for r in _read_samples(Path(samples_path)):
        by[r["benchmark"]].append(r)
    names = [b for b in (benchmarks or list(by)) if b in by]
    out = {"settings": settings or {}, "unit": "fraction of problems, in [0, 1]",
           "bootstrap": {"resamples": resamples, "seed": seed, "interval": "95% percentile bootstrap, problems "
                         "resampled with replacement; each benchmark on its own stream derived from the seed"},
           "maj_definition": "majority answer correct, over disjoint consecutive blocks of k samples, ties to the "
                             "answer seen first", "benchmarks": {}}
    boots = {}
    for b in names:
        answers, correct = _arrays(by[b])
        table, boots[b] = benchmark_metrics(answers, correct, resamples=resamples, seed=_bench_seed(seed, b))
        out["benchmarks"][b] = {"problems": int(correct.shape[0]), "n": int(correct.shape[1]), "metrics": table}
        if all("tool_calls" in r for r in by[b]):
            out["benchmarks"][b]["tool"] = tool_use(by[b])
    if len(names) > 1 and len({out["benchmarks"][b]["n"] for b in names}) == 1:
        avg = {}
        for m in out["benchmarks"][names[0]]["metrics"]:
            mean = np.mean([boots[b][m] for b in names], axis=0)
            lo, hi = np.percentile(mean, [2.5, 97.5])
            avg[m] = {"value": float(np.mean([out["benchmarks"][b]["metrics"][m]["value"] for b in names])),
                      "lo": float(lo), "hi": float(hi)}
        out["average"] = {"benchmarks": names, "metrics": avg}
    out["paper"] = {"label": f"{PAPER_LABEL} (the SPO paper), not this model's",
                    "maj@32": {b: {m: v / 100 for m, v in d.items()} for b, d in PAPER_MAJ32.items()},
                    "avg@32_mean_over_benchmarks": {m: v / 100 for m, v in PAPER_AVG32_MEAN.items()}}
    return out


def tool_use(rows: list[dict]) -> dict:
    """A benchmark's tool use from its sample rows (each with ``tool_calls`` and ``correct``): ``call_rate``
    (share of responses with a tool call that ran), ``calls_mean`` (calls per response), ``acc_with_tool`` and
    ``acc_without_tool`` (share correct among the responses with and without a call; None where there are none)
    -- the trainer's ``eval_tool/*`` held-out keys, over every sample."""
    calls = np.array([r["tool_calls"] for r in rows], dtype=np.int64)
    correct = np.array([r["correct"] for r in rows], dtype=bool)
    used = calls > 0
    mean = lambda x: float(x.mean()) if x.size else None  # noqa: E731
    return {"responses": int(calls.size), "call_rate": float(used.mean()), "calls_mean": float(calls.mean()),
            "acc_with_tool": mean(correct[used]), "acc_without_tool": mean(correct[~used])}


def _tool_lines(summary: dict) -> list[str]:
    """The tool-use table of ``summary.md`` (nothing when the samples were made without the tool)."""
    rows = {b: d["tool"] for b, d in summary["benchmarks"].items() if "tool" in d}
    if not rows:
        return []
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = ["", "## Tool use", "", "Responses with a tool call that ran (percent), calls per response, and the "
             "percent correct among responses with and without a call (every sample).", "",
             "| benchmark | responses | tool-call rate | calls per response | correct with a call | "
             "correct without |", "|---|---|---|---|---|---|"]
    for b, t in rows.items():
        lines.append(f"| {b} | {t['responses']} | {pct(t['call_rate'])} | {t['calls_mean']:.2f} | "
                     f"{pct(t['acc_with_tool'])} | {pct(t['acc_without_tool'])} |")
    return lines


def _paper_ref(summary: dict, b: str):
    """The paper's maj@32 pair for row ``b`` (a benchmark, or "average" when it averages exactly the paper's
    five benchmarks); None for anything else."""
    paper = summary["paper"]["maj@32"]
    if b == "average" and set(summary.get("average", {}).get("benchmarks", [])) != set(paper) - {"average"}:
        return None
    return paper.get(b)


def _pct(d) -> str:
    return f"{100 * d['value']:.1f} [{100 * d['lo']:.1f}, {100 * d['hi']:.1f}]"


def summary_markdown(summary: dict) -> str:
    """``summary.md``: an overview (ours beside the paper's maj@32) and one table per benchmark, in percent."""
    s = summary["settings"]
    rows = {**summary["benchmarks"], **({"average": summary["average"]} if "average" in summary else {})}
    any_ref = any(_paper_ref(summary, b) for b in rows)
    note = (f" The last two columns are the **{PAPER_LABEL}** (maj@32, the SPO paper), another model trained "
            "for the paper, set beside ours for scale only." + (f" Here n = {s['n']}: our maj@{s['n']} is not a "
                                                                "maj@32." if s.get("n", 32) != 32 else ""))
    lines = [f"# Evaluation of `{s.get('model', '?')}`", "",
             ", ".join(f"{k} {v}" for k, v in s.items() if k != "model"), "",
             f"Percent of problems; in brackets a 95 % percentile-bootstrap interval over problems "
             f"({summary['bootstrap']['resamples']} resamples, seed {summary['bootstrap']['seed']}). maj@k: "
             f"{summary['maj_definition']}. pass@k: the unbiased estimator from all n samples."
             + (note if any_ref else ""), ""]
    head = None
    for b, d in rows.items():
        n = d.get("n") or next(iter(summary["benchmarks"].values()))["n"]
        if head is None:
            head = ["benchmark", "problems", f"avg@{n}", f"maj@{n}", f"pass@{n}"] + (
                [f"{PAPER_LABEL}: GRPO maj@32", f"{PAPER_LABEL}: SPO maj@32"] if any_ref else [])
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        m, p = d["metrics"], _paper_ref(summary, b)
        probs = d.get("problems", sum(summary["benchmarks"][x]["problems"] for x in d.get("benchmarks", [])))
        ref = [f"{100 * p['grpo']:.1f}", f"{100 * p['spo']:.1f}"] if p else ["-", "-"] if any_ref else []
        lines.append("| " + " | ".join([b, str(probs)] + [_pct(m[k]) if k in m else "-" for k in
                                                          (f"avg@{n}", f"maj@{n}", f"pass@{n}")] + ref) + " |")
    for b, d in rows.items():
        ks = sorted({int(k.split("@")[1]) for k in d["metrics"] if not k.startswith("avg")})
        lines += ["", f"## {b}", "", "| k | pass@k | maj@k |", "|---|---|---|"]
        lines += [f"| {k} | {_pct(d['metrics'][f'pass@{k}'])} | {_pct(d['metrics'][f'maj@{k}'])} |" for k in ks]
        avg = next(k for k in d["metrics"] if k.startswith("avg@"))
        lines += ["", f"{avg}: {_pct(d['metrics'][avg])}"]
        if p := _paper_ref(summary, b):
            lines.append(f"{PAPER_LABEL}, maj@32: GRPO {100 * p['grpo']:.1f}, SPO {100 * p['spo']:.1f}")
            if b == "average":
                q = summary["paper"]["avg@32_mean_over_benchmarks"]
                lines.append(f"{PAPER_LABEL}, avg@32: GRPO {100 * q['grpo']:.1f}, SPO {100 * q['spo']:.1f}")
    lines += _tool_lines(summary)
    return "\n".join(lines) + "\n"


def plot_benchmark_pass_at_k(summary: dict, path) -> None:
    """``pass_at_k.png``: one panel per benchmark (and the average), pass@k and maj@k with 95 % bands, and the
    paper's maj@32 (its Qwen3-8B result) as labelled markers at k = 32; one legend below the panels."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, safe in any process

    from .palette import DPI, METHOD_COLORS, OTHER_COLORS

    # the one palette: SPO's and GRPO's colours as in every other figure; the curves in neutral colours
    colors = {"pass": OTHER_COLORS["oracle"], "maj": METHOD_COLORS["spo-no-init"], "grpo": METHOD_COLORS["grpo"],
              "spo": METHOD_COLORS["spo"]}
    rows = {**summary["benchmarks"], **({"average": summary["average"]} if "average" in summary else {})}
    ncols = min(3, len(rows))
    nrows = -(-len(rows) // ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows), dpi=max(DPI, 120))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    handles = {}
    for ax, (b, d) in zip(axes, rows.items()):
        m = d["metrics"]
        for kind, color, style in (("pass", colors["pass"], "-"), ("maj", colors["maj"], "--")):
            ks = sorted(int(k.split("@")[1]) for k in m if k.startswith(f"{kind}@"))
            v = np.array([[m[f"{kind}@{k}"][f] for f in ("value", "lo", "hi")] for k in ks]) * 100
            label = "pass@k (this model)" if kind == "pass" else "maj@k (this model)"
            handles[label] = ax.plot(ks, v[:, 0], style, marker="o", ms=3.5, color=color, label=label)[0]
            ax.fill_between(ks, v[:, 1], v[:, 2], color=color, alpha=0.18, lw=0)
        ref = _paper_ref(summary, b)
        if ref:
            for meth, marker in (("grpo", "s"), ("spo", "D")):
                label = f"{PAPER_LABEL}: {meth.upper()} maj@32"
                handles[label] = ax.plot([32], [100 * ref[meth]], marker, ms=7,
                                         color=colors[meth], mec="black", mew=0.6, label=label, ls="none")[0]
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks + ([32] if 32 not in ks and ref else []))
        ax.xaxis.set_major_formatter("{x:.0f}")
        ax.set_ylim(-3, 103)
        ax.set_title(f"{b} ({d.get('problems', len(d.get('benchmarks', [])))} "
                     f"{'problems' if 'problems' in d else 'benchmarks'})", fontsize=10)
        ax.set_xlabel("samples per problem, k")
        ax.set_ylabel("problems solved (%)")
        ax.grid(alpha=0.3, lw=0.6)
    for ax in axes[len(rows):]:
        ax.set_visible(False)
    from matplotlib.patches import Patch

    handles["shaded: 95 % bootstrap interval over problems"] = Patch(color=METHOD_COLORS["paper"], alpha=0.3, lw=0)
    per_row = len(handles) if ncols >= 3 else ncols
    legend_h = 0.2 + 0.2 * -(-len(handles) // per_row)  # inches under the panels, off the data
    fig.set_size_inches(4.2 * ncols, 3.2 * nrows + legend_h)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=per_row, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, legend_h / (3.2 * nrows + legend_h), 1, 1))
    fig.savefig(path, dpi=120, bbox_inches="tight")


# ============================================================================ the benchmark run
def _bench_seed(seed: int, name: str) -> int:
    return int(hashlib.sha1(f"{seed}/{name}".encode()).hexdigest()[:12], 16)


def _jsonable(a):
    return a if a is None or isinstance(a, (str, int, float, bool)) else str(a)


def _write_rows(path: Path, rows: list[dict], mode: str) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if mode == "replace":
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    else:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


RESULT_FILES = ("samples.jsonl", "run.json", "summary.json", "summary.md", "pass_at_k.png")
"""What an evaluation writes into ``--out`` (and ``--overwrite`` removes)."""


def _run_settings(out: Path, settings, **sampling) -> dict:
    """Everything that decides the samples; a UserError when ``out`` holds samples made with other values.

    A ``run.json`` without samples (a run that failed before its first benchmark finished) is simply
    replaced: there is nothing in the folder its settings would be mixed with.
    """
    settings = {**(settings or {}), **sampling}
    run = Path(out) / "run.json"
    if run.exists() and _read_samples(Path(out) / "samples.jsonl"):
        try:
            old = json.loads(run.read_text())
        except ValueError:
            old = {}
        if old != settings:
            diff = {k: (old.get(k), settings.get(k)) for k in sorted({*old, *settings})
                    if old.get(k) != settings.get(k)}
            raise UserError(f"{out} holds samples made with other settings (was, now: {diff}); use another --out, "
                            "or --overwrite to remove them and start afresh")
    return settings


def remove_results(out: Path) -> list[str]:
    """Delete what an evaluation wrote into ``out`` (``RESULT_FILES`` and torn temporary files); the names removed."""
    removed = []
    for name in RESULT_FILES:
        if (Path(out) / name).is_file():
            (Path(out) / name).unlink()
            removed.append(name)
    for tmp in Path(out).glob("*.tmp"):
        tmp.unlink()
    return removed


def evaluate_benchmarks(engine, task, benchmarks: dict, out, *, n: int = 32, temperature: float = 0.6,
                        top_p: float = 0.95, top_k: int = 20, max_new_tokens: int = 8192, seed: int = 0,
                        batch: int = 256, device=None, resamples: int = 2000, settings=None, log=print) -> dict:
    """Sample, keep, score and report ``benchmarks`` (name -> problems) into the folder ``out``.

    Writes ``samples.jsonl`` (one row per sample: benchmark, problem index and id, sample index,
    completion, extracted answer, gold answer, reward, correct, truncated; with a
    :class:`spo_lab.tools.ToolEngine`, the response's tool calls), ``summary.json``,
    ``summary.md`` and ``pass_at_k.png``. A benchmark whose n samples per problem are all already in
    ``samples.jsonl`` (same problem ids) is not sampled again; incomplete ones are redone. Settings are
    kept in ``run.json``: resuming with other settings is an error (use another ``out``).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = _run_settings(out, settings, n=n, temperature=temperature, top_p=top_p, top_k=top_k,
                             max_new_tokens=max_new_tokens, seed=seed, batch=batch)
    (out / "run.json").write_text(json.dumps(settings, indent=2))
    path = out / "samples.jsonl"
    have: dict[str, list] = defaultdict(list)
    for r in _read_samples(path):
        have[r["benchmark"]].append(r)
    keep = []
    for b, problems in benchmarks.items():
        done = {(r["problem"], r["problem_id"], r["sample"]) for r in have.get(b, [])}
        want = {(i, p.id, j) for i, p in enumerate(problems) for j in range(n)}
        if done == want and len(have[b]) == len(want):
            log(f"{b}: {len(problems)} problems x {n} samples already in {path}; skipped")
            keep += have.pop(b)
    for b in list(have):  # partial benchmarks are redone; other benchmarks' samples stay
        if b not in benchmarks:
            keep += have.pop(b)
    _write_rows(path, keep, "replace")
    complete = {r["benchmark"] for r in keep}
    for b, problems in benchmarks.items():
        if b in complete:
            continue
        log(f"{b}: sampling {len(problems)} problems x {n}")
        s = sample_completions(engine, task, problems, n, temperature=temperature, top_p=top_p, top_k=top_k,
                               max_new_tokens=max_new_tokens, batch=batch, seed=_bench_seed(seed, b), device=device)
        rows = [{"benchmark": b, "problem": i, "problem_id": p.id, "sample": j, "completion": s["texts"][i, j],
                 "answer": _jsonable(s["answers"][i, j]), "gold": p.answer, "reward": float(s["rewards"][i, j]),
                 "correct": bool(s["rewards"][i, j] > 0.5), "truncated": bool(s["truncated"][i, j]),
                 **({"tool_calls": int(s["tool_calls"][i, j])} if "tool_calls" in s else {})}
                for i, p in enumerate(problems) for j in range(n)]
        _write_rows(path, rows, "append")
    summary = summarize(path, benchmarks=list(benchmarks), resamples=resamples, seed=seed, settings=settings)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(summary_markdown(summary))
    plot_benchmark_pass_at_k(summary, out / "pass_at_k.png")
    return summary


def _benchmark_paths(names, bdir, pairs) -> dict:
    """name -> local path: ``--benchmark-path NAME=PATH`` first, then ``DIR/<hub repo name>`` or ``DIR/<name>``."""
    from .tasks.math import BENCHMARKS

    paths = dict(p.split("=", 1) for p in pairs or [])
    for b in names:
        if b in paths or bdir is None:
            continue
        tried = [Path(bdir) / BENCHMARKS[b].hub_id.split("/")[-1], Path(bdir) / b] if b in BENCHMARKS else []
        found = [t for t in tried if t.exists()]
        if not found:
            raise FileNotFoundError(f"benchmark {b}: none of {[str(t) for t in tried]} exists (--benchmark-dir)")
        paths[b] = str(found[0])
    return paths


def check_args(args) -> list[str]:
    """Check every option of the command line; UserError naming the flag otherwise. Returns the benchmark names.

    Nothing is loaded or written here: a bad option costs a second and leaves ``--out`` as it was.
    """
    import math

    from .models import DTYPES
    from .tasks import TASKS

    def bad(flag, why):
        raise UserError(f"{flag} {why}, got {getattr(args, flag[2:].replace('-', '_'))!r}")

    if args.task not in TASKS:
        bad("--task", f"must be one of {tuple(TASKS)}")
    meaning_of_0 = {"--limit": " (0 = every problem)", "--top-k": " (0 = no top-k)"}
    for flag, low in (("--n", 1), ("--batch", 1), ("--bootstrap", 1), ("--limit", 0), ("--top-k", 0), ("--seed", 0)):
        if getattr(args, flag[2:].replace("-", "_")) < low:
            bad(flag, f"must be >= {low}{meaning_of_0.get(flag, '')}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        bad("--max-new-tokens", "must be >= 1")
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        bad("--temperature", "must be a finite number > 0 (the evaluation samples; greedy decoding is not offered)")
    if not (math.isfinite(args.top_p) and 0 < args.top_p <= 1):
        bad("--top-p", "must be in (0, 1] (1 = no top-p)")
    if args.device not in ("auto", "cpu", "cuda") and not args.device.startswith("cuda:"):
        bad("--device", "must be auto, cpu, cuda or cuda:N")
    if args.dtype not in (*DTYPES, "auto"):
        bad("--dtype", f"must be one of {(*DTYPES, 'auto')}")
    if args.style not in (None, "boxed", "official", "tool"):
        bad("--style", "must be boxed, official or tool")
    _check_tool_args(args)
    if args.reward not in ("math-verify", "math_dapo"):
        bad("--reward", "must be math-verify or math_dapo")
    if not args.out.strip():
        raise UserError("--out is empty: give a folder (an empty path would write into the working directory)")
    flag = "--benchmarks" if args.benchmarks or args.task == "math" else "--split"
    names = (args.benchmarks.split(",") if args.benchmarks else
             ["aime24", "aime25", "beyondaime", "brumo25", "hmmt25"] if args.task == "math" else args.split.split(","))
    names = [b.strip() for b in names]
    module, cls = TASKS[args.task].split(":")
    known = getattr(getattr(importlib.import_module(module), cls), "splits", None)
    for b in names:
        if not b or (known is not None and b not in known):
            raise UserError(f"{flag}: unknown name {b!r} for the {args.task} task; known: {', '.join(known or [])}")
        if names.count(b) > 1:
            raise UserError(f"{flag} names {b!r} twice")
    for pair in args.benchmark_path:
        name, eq, path = pair.partition("=")
        if not eq or not name or not path:
            raise UserError(f"--benchmark-path must be NAME=PATH, got {pair!r}")
        if known is not None and name not in known:
            raise UserError(f"--benchmark-path {pair!r}: unknown benchmark {name!r}; known: {', '.join(known)}")
    return names


TOOL_FLAGS = ("tool", "max_turns", "max_tool_chars", "tool_timeout_s", "tool_memory_mb", "tool_waive", "tool_workers")
"""The trainer's tool settings (:class:`spo_lab.config.Config` fields) this command line takes as flags, with the
trainer's defaults and help: ``--tool``, ``--max-turns``, ``--max-tool-chars``, ``--tool-timeout-s``,
``--tool-memory-mb``, ``--tool-waive``, ``--tool-workers``. (``--tool-latency``, an injected wait, is training's.)"""

TOOL_SAMPLE_SETTINGS = ("tool", "max_turns", "max_tool_chars", "tool_timeout_s", "tool_memory_mb")
"""The tool settings that decide the samples (kept in ``run.json`` when the tool is on)."""


def tool_config(args) -> argparse.Namespace:
    """The parsed command line as the tool's settings functions read a config (:mod:`spo_lab.tools.settings`:
    ``tool_mode``, ``check_tool_settings``, ``build_tool_engine``): the model resolved to
    its default, no injected latency."""
    from .models import DEFAULT_MODEL_DIR

    return argparse.Namespace(**{**vars(args), "model": str(args.model or DEFAULT_MODEL_DIR), "tool_latency": "none"})


def _tool_on(args) -> bool:
    from .tools.settings import tool_mode

    return tool_mode(tool_config(args)) == "python"


def math_style(args) -> str:
    """The math prompt style: ``--style`` as given, else ``tool`` with the tool on and ``boxed`` without."""
    return args.style or ("tool" if _tool_on(args) else "boxed")


def _check_tool_args(args) -> None:
    """The tool flags, checked as the trainer checks them (UserError naming the flag), and the two refusals: a
    task that needs the tool evaluated without it, and the math tool style (or another style with the tool)."""
    from .tasks import task_class
    from .tools.settings import check_tool_settings

    cfg = tool_config(args)

    def bad(name, why):
        raise UserError(f"--{name.replace('_', '-')} {why}, got {getattr(cfg, name)!r}")

    check_tool_settings(cfg, bad)
    on = _tool_on(args)
    if not on and getattr(task_class(args.task), "needs_tool", False):
        raise UserError(f"--tool {args.tool}: the {args.task} task is evaluated with the Python tool (its policy "
                        "was trained to call it, and its answers after a tool call are what it is scored on); use "
                        "--tool python or --tool auto")
    if args.task == "math" and args.style is not None and on != (args.style == "tool"):
        raise UserError(f"--style {args.style} needs the tool: add --tool python" if not on else
                        f"--style {args.style} with --tool python: with the tool the math task's prompt and reward "
                        "rules are --style tool's (the default with the tool)")


def check_out(out: Path, *, overwrite: bool, settings: dict, sampling: dict) -> None:
    """``--out`` must be a folder that is not a model and holds no samples of other settings (unless ``overwrite``)."""
    from .run_folder import model_files

    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file, not a folder")
    found = model_files(out)
    if found:
        raise UserError(f"--out {out} holds a model ({', '.join(found[:4])}); evaluation results need their own folder")
    if not overwrite:
        _run_settings(out, settings, **sampling)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m spo_lab.evaluate`` (checked further by :func:`check_args`)."""
    p = argparse.ArgumentParser(prog="python -m spo_lab.evaluate",
                                description="Sampled benchmark evaluation (the SPO paper): maj@k, avg@n, "
                                "pass@k with bootstrap intervals, beside the paper's Qwen3-8B numbers.")
    a = p.add_argument
    a("--model", default=None, help="model folder or hub id (default: the bundled tiny Qwen3); for a training "
      "run, its RUN/final_model")
    a("--task", default="math", help="task name: math (the five benchmarks) | arith | arith_tool (with the tool)")
    a("--benchmarks", default=None, help="comma list (math default: aime24,aime25,beyondaime,brumo25,hmmt25)")
    a("--split", default="test", help="comma list of splits to evaluate for a task without benchmarks")
    a("--benchmark-dir", default=None, help="folder with local benchmark copies, DIR/<hub repo name> or DIR/<name>")
    a("--benchmark-path", action="append", default=[], metavar="NAME=PATH", help="one benchmark's local copy")
    a("--data", default=None, help="the task's data (arith folder; math training source, unused here)")
    a("--limit", type=int, default=0, help="first k problems of each benchmark (0 = all)")
    a("--n", type=int, default=32, help="samples per problem (>= 1)")
    a("--temperature", type=float, default=PAPER_EVAL["temperature"], help="sampling temperature (> 0)")
    a("--top-p", type=float, default=PAPER_EVAL["top_p"], help="nucleus sampling, in (0, 1] (1 = off)")
    a("--top-k", type=int, default=PAPER_EVAL["top_k"], help="top-k sampling (0 = off)")
    a("--max-new-tokens", type=int, default=None, help="default: 8192 for math (the paper's); otherwise 40 with "
      "the tool (the tool job's), 8 without")
    a("--engine", default="hf", choices=["hf", "vllm"])
    a("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    a("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    a("--seed", type=int, default=0, help="seed of the sampling and of the bootstrap (>= 0)")
    a("--batch", type=int, default=256, help="responses per engine call")
    a("--thinking", action=argparse.BooleanOptionalAction, default=False, help="Qwen3 thinking mode (math)")
    a("--style", default=None, help="math prompt style: boxed | official | tool (default: tool with the tool on, "
      "boxed otherwise)")
    a("--reward", default="math-verify", help="math checker: math-verify | math_dapo")
    a("--cache-dir", default=None, help="datasets cache folder (math)")
    a("--bootstrap", type=int, default=2000, help="bootstrap resamples for the 95 %% intervals (>= 1)")
    _add_tool_flags(p)
    a("--out", required=True, help="output folder (resumable)")
    a("--overwrite", action="store_true", help="remove the evaluation results already in --out and start afresh")
    a("--debug", action="store_true", help="show the traceback of an expected error (also SPO_LAB_DEBUG=1)")
    return p


def _add_tool_flags(p: argparse.ArgumentParser) -> None:
    """:data:`TOOL_FLAGS` as ``python -m spo_lab.train`` declares them (type, default and help from its Config)."""
    import dataclasses

    from .config import Config, field_docs

    docs, fields = field_docs(Config), {f.name: f for f in dataclasses.fields(Config)}
    g = p.add_argument_group("the Python tool", "as in training (python -m spo_lab.train)")
    for name in TOOL_FLAGS:
        f = fields[name]
        g.add_argument("--" + name.replace("_", "-"), type={"int": int, "float": float, "str": str}[f.type],
                       default=f.default, help=f"{docs[name]} (default: {f.default!r})".replace("%", "%%"))


def main(argv=None) -> dict:
    """``python -m spo_lab.evaluate``: see the module docstring; ``--help`` lists every option."""
    p = build_parser()
    args = p.parse_args(argv)
    try:  # every option checked before anything loads, and the error names the flag
        names = check_args(args)
    except UserError as err:
        p.error(str(err))

    from .engines import build_engine
    from .models import (DEFAULT_MODEL_DIR, check_context_length, check_model_path, is_adapter_folder, load_policy,
                         resolve_device)
    from .run_folder import check_writable
    from .tasks import get_task

    from .tools.settings import build_tool_engine, tool_task_kwargs

    model_path = str(args.model or DEFAULT_MODEL_DIR)
    out = Path(args.out)
    device = resolve_device(args.device)
    math_task = args.task == "math"
    tool_cfg, tool = tool_config(args), _tool_on(args)
    max_new = args.max_new_tokens or (8192 if math_task else _tool_job_budget() if tool else 8)
    settings = {"model": model_path, "task": args.task, "engine": args.engine, "device": device.type,
                "dtype": args.dtype,
                **({"thinking": args.thinking, "style": math_style(args), "reward": args.reward} if math_task else {}),
                **({k: getattr(args, k) for k in TOOL_SAMPLE_SETTINGS} | {"tool": "python"} if tool else {})}
    sampling = dict(n=args.n, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                    max_new_tokens=max_new, seed=args.seed, batch=args.batch)
    # fail before loading anything: the model path, --out, and (a task without a tokenizer) the data
    check_model_path(model_path)
    check_out(out, overwrite=args.overwrite, settings=settings, sampling=sampling)
    task = benchmarks = None
    if not math_task:  # its prompts need no tokenizer: read and check the data now
        task = get_task(args.task, data=args.data, **tool_task_kwargs(tool_cfg))
        benchmarks = {b: task.load(b)[: args.limit or None] for b in names}
    check_writable(out, "--out")
    if args.overwrite and (removed := remove_results(out)):
        print(f"--overwrite: removed {', '.join(removed)} from {out}")
    # vLLM loads a full checkpoint itself; a LoRA adapter folder needs the policy here to hot-load it
    lora_folder = is_adapter_folder(model_path)
    model, tok = (load_policy(model_path, dtype=args.dtype, device=device) if args.engine == "hf" or lora_folder
                  else (None, None))
    engine = build_engine(args.engine, model=model, tokenizer=tok, model_path=model_path, dtype=args.dtype,
                          seed=args.seed)
    if lora_folder:
        engine.sync_weights(model)
    tok = tok or engine.tokenizer  # vLLM loads the policy and its tokenizer itself
    # with the tool: the trainer's ToolEngine around the engine, the sandbox's protections printed
    engine = build_tool_engine(tool_cfg, engine, announce=True, command="spo_lab.evaluate")
    if math_task:
        kw = dict(thinking=args.thinking, style=math_style(args), reward=args.reward, cache_dir=args.cache_dir,
                  benchmark_paths=_benchmark_paths(names, args.benchmark_dir, args.benchmark_path))
        task = get_task(args.task, data=args.data, tokenizer=tok, **kw)
        benchmarks = {b: task.load(b)[: args.limit or None] for b in names}
    limits = model if model is not None else _model_config(model_path)
    for b, problems in benchmarks.items():
        if not problems:
            raise UserError(f"benchmark {b} has no problems")
        if limits is not None:
            check_context_length(limits, tok, problems, max_new, source=f"benchmark {b}")
    summary = evaluate_benchmarks(engine, task, benchmarks, out, **sampling, device=device,
                                  resamples=args.bootstrap, settings=settings)
    print(summary_markdown(summary))
    return summary


def _tool_job_budget() -> int:
    """``--max-new-tokens`` default of a task other than math with the tool: the tool job's response budget
    (:data:`spo_lab.tasks.arith_tool.MAX_NEW_TOKENS`), room for a call, its output and the answer."""
    from .tasks.arith_tool import MAX_NEW_TOKENS

    return MAX_NEW_TOKENS


def _model_config(model_path: str):
    """The model's config (for its context length) when the engine loaded the weights itself; None if unreadable."""
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(model_path, trust_remote_code=False)
    except Exception:  # noqa: BLE001 - the engine has loaded the model; its own limit then applies
        return None


if __name__ == "__main__":
    cli_main(main)
