"""The asynchronous collector (``--collector async``, :mod:`spo_lab.collector`): the staleness bound,
the tracker's rules, the group barrier, stuck work, the bound-0 run equal to the synchronous one, and
a run killed with trajectories in flight."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_tool_engine import tool_tokenizer
from test_train import small_cfg

from spo_lab.algorithms import GroupBaseline
from spo_lab.collector import AsyncCollector
from spo_lab.engines.base import Turn, cut_turn
from spo_lab.spo import SPO
from spo_lab.tools import ToolEngine
from spo_lab.train import Config, train

ROOT = Path(__file__).resolve().parents[1]


# ====================================================================== a scripted tool world
@dataclass
class Result:
    output: str
    exit_code: int | None = 0
    timed_out: bool = False
    seconds: float = 0.0
    sandbox_error: str | None = None


class SleepSandbox:
    """``run(code)``: sleeps ``float(code)`` seconds (the latency of a tool call) and prints 'ok'."""

    def __init__(self):
        self.live = 0
        self.most_live = 0
        self._lock = threading.Lock()

    def protections(self):
        return {}

    def run(self, code: str) -> Result:
        with self._lock:
            self.live += 1
            self.most_live = max(self.most_live, self.live)
        t0 = time.monotonic()
        time.sleep(float(code))
        with self._lock:
            self.live -= 1
        return Result("ok", seconds=time.monotonic() - t0)


class OneCallEngine:
    """An inner engine whose every response makes one tool call, ``<code>{delay}</code>``, then ends:
    the delay of prompt ``p{i}`` is ``delays[i]`` (the policy's text is scripted, its latency real)."""

    def __init__(self, tok, delays: list[float]):
        self.tokenizer, self.delays = tok, delays
        self.batches: list[int] = []

    def sync_weights(self, model) -> None:
        pass

    def continue_tokens(self, prefixes, *, max_new_tokens, temperature, greedy=False, top_k=0, top_p=1.0, stop=None):
        self.batches.append(len(prefixes))
        out = []
        for p, b in zip(prefixes, max_new_tokens):
            text = self.tokenizer.decode(p)
            i = int(text[1 : text.index(":")])
            script = "ok<eos>" if "</interpreter>" in text else f"<code>{self.delays[i]}</code>"
            ids = self.tokenizer.encode(script, add_special_tokens=False)
            k, why = cut_turn(self.tokenizer, ids, stop, budget=b)
            out.append(Turn(ids[:k], [-0.5] * k, why))
        return out


def tool_collector(algo, delays, *, K, B, in_flight=0, timeout_s=30.0, overprovision=1):
    tok = tool_tokenizer()
    sandbox = SleepSandbox()
    engine = ToolEngine(OneCallEngine(tok, delays), sandbox, tool_workers=64)
    prompts = [f"p{i}:" for i in range(len(delays))]
    col = AsyncCollector(engine, None, algo, prompts, batch_units=B, max_staleness=K, max_in_flight=in_flight,
                         max_new_tokens=64, timeout_s=timeout_s, overprovision=overprovision)
    return col, sandbox


class Recording(SPO):
    """SPO that checks the tracker's rules: no prompt drawn while its earlier draw's evidence is out,
    and every prompt's evidence in the order of the versions that produced it."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.out: set[int] = set()
        self.violations: list[str] = []

    def draw(self, n=None, exclude=None):
        ids = super().draw(n, exclude)
        twice = self.out & set(ids.tolist())
        if twice:
            self.violations.append(f"drawn while out: {sorted(twice)}")
        self.out |= set(ids.tolist())
        return ids

    def observe(self, row_ids, rewards, d=None):
        self.out -= set(row_ids.tolist())
        return super().observe(row_ids, rewards, d)


def drive(col, algo, steps: int, update_s: float = 0.0):
    """A trainer without a model: take a batch, 'update', fold in rewards of 1, sync."""
    seen = []
    for step in range(steps):
        ro, base, info = col.next_batch(step)
        seen.append((ro, base, info))
        time.sleep(update_s)
        with col.lock:
            algo.observe(ro.prompt_index, torch.ones(len(ro), dtype=torch.float64))
        col.sync_weights(None)
    return seen


# ====================================================================== the rules
@pytest.mark.parametrize("K", [1, 2])
def test_staleness_is_bounded_by_pacing_and_nothing_is_dropped(K):
    rng = random.Random(0)
    delays = [round(rng.lognormvariate(-4.0, 1.2), 4) for _ in range(40)]  # heavy-tailed tool latency
    algo = Recording(40, 4, seed=0)
    col, _ = tool_collector(algo, delays, K=K, B=4)
    try:
        seen = drive(col, algo, 10, update_s=0.01)
    finally:
        counts = col.close()
    stale = [step - v for step, (ro, _, _) in enumerate(seen) for v in ro.policy_version.tolist()]
    assert max(stale) <= K and min(stale) >= 0
    assert any(s > 0 for s in stale)  # the collector did work ahead: it is asynchronous
    assert all(info["async/staleness_max"] <= K for _, _, info in seen)
    assert algo.violations == []
    assert counts["consumed"] == 40 and counts["admitted"] == counts["consumed"] + counts.get("aborted", 0)
    assert sum(counts["staleness_hist"].values()) == 40


def test_baselines_are_read_at_draw_and_rows_come_in_version_order():
    delays = [0.001] * 12
    algo = Recording(12, 3, seed=0)
    col, _ = tool_collector(algo, delays, K=1, B=3)
    try:
        for step in range(6):
            ro, base, _ = col.next_batch(step)
            assert ro.policy_version.tolist() == sorted(ro.policy_version.tolist())
            # the tracker has not seen these rows' evidence yet, and the baselines were read before it changed
            assert torch.equal(base, algo.values(ro.prompt_index)) or step > 0
            with col.lock:
                algo.observe(ro.prompt_index, torch.ones(len(ro), dtype=torch.float64))
            col.sync_weights(None)
    finally:
        col.close()
    assert algo.violations == []


def test_a_group_is_usable_only_when_all_its_members_finished():
    delays = [0.001] * 8
    algo = GroupBaseline("grpo", 4, 8, 2, generator=torch.Generator().manual_seed(0))
    col, _ = tool_collector(algo, delays, K=1, B=2)
    try:
        seen = drive(col, algo, 4)
    finally:
        col.close()
    for ro, _, _ in seen:
        assert len(ro) == 8
        ids = ro.prompt_index.view(2, 4)
        assert bool((ids == ids[:, :1]).all())  # each unit: 4 consecutive rows of one prompt, all finished
        assert not bool(ro.truncated.any())


def test_slow_tool_calls_run_concurrently_and_turns_are_batched():
    delays = [0.2] * 8
    algo = SPO(8, 8, seed=0)
    col, sandbox = tool_collector(algo, delays, K=0, B=8)
    try:
        t0 = time.monotonic()
        col.next_batch(0)
        took = time.monotonic() - t0
    finally:
        col.close()
    assert sandbox.most_live == 8 and took < 8 * 0.2  # eight 0.2 s calls overlapped
    assert col.engine.engine.batches[0] == 8  # the first turns of all eight in one batched call


def test_a_stuck_tool_stops_the_collector_with_an_error_not_a_hang():
    algo = SPO(4, 2, seed=0)
    col, _ = tool_collector(algo, [30.0] * 4, K=0, B=2, timeout_s=0.5)
    t0 = time.monotonic()
    try:
        with pytest.raises(RuntimeError, match="finished no trajectory in 0 s|finished no trajectory"):
            col.next_batch(0)
    finally:
        col.close()
    assert time.monotonic() - t0 < 5


class StuckEngine(OneCallEngine):
    """A generation that never returns (until released): a hung inference server, say."""

    def __init__(self, tok, n):
        super().__init__(tok, [0.0] * n)
        self.release = threading.Event()

    def continue_tokens(self, prefixes, **kw):
        self.release.wait()
        return super().continue_tokens(prefixes, **kw)


@pytest.mark.parametrize("K", [0, 1])
def test_a_stuck_generation_stops_the_collector_with_an_error_not_a_hang(K):
    inner = StuckEngine(tool_tokenizer(), 4)
    col = AsyncCollector(ToolEngine(inner, SleepSandbox()), None, SPO(4, 2, seed=0), [f"p{i}:" for i in range(4)],
                         batch_units=2, max_staleness=K, max_new_tokens=64, timeout_s=0.5)
    t0 = time.monotonic()
    try:
        with pytest.raises(RuntimeError, match="finished no trajectory"):
            col.next_batch(0)
        assert time.monotonic() - t0 < 3
        counts = col.close()  # does not wait for the hung call past the collector's time limit
        assert time.monotonic() - t0 < 5 and counts["aborted"] == counts["admitted"] == 2 * (K + 1)
    finally:
        inner.release.set()


def test_overprovisioned_batches_keep_the_first_finished_and_count_the_rest():
    delays = [0.01] * 4 + [2.0] * 4
    algo = SPO(8, 4, prioritized=False, generator=torch.Generator().manual_seed(0), seed=0)
    col, _ = tool_collector(algo, delays, K=0, B=4, overprovision=2)
    try:
        ro, _, _ = col.next_batch(0)
    finally:
        counts = col.close()
    assert sorted(ro.prompt_index.tolist()) == [0, 1, 2, 3]  # the four fast ones
    assert counts["aborted"] == 4


def test_an_error_in_the_collector_thread_reaches_the_trainer():
    class Broken(OneCallEngine):
        def continue_tokens(self, *a, **kw):
            raise ValueError("engine exploded")

    tok = tool_tokenizer()
    col = AsyncCollector(ToolEngine(Broken(tok, [0.0] * 4), SleepSandbox()), None, SPO(4, 2, seed=0),
                         [f"p{i}:" for i in range(4)], batch_units=2, max_staleness=0, max_new_tokens=32)
    try:
        with pytest.raises(RuntimeError, match="engine exploded"):
            col.next_batch(0)
    finally:
        col.close()


# ====================================================================== the trainer
def _same_run(a: Path, b: Path) -> None:
    ma, mb = (pd.read_json(p / "metrics.jsonl", lines=True) for p in (a, b))
    cols = [c for c in ma.columns if not c.startswith(("time/", "async/")) and c != "tool/seconds_mean"]  # wall times
    pd.testing.assert_frame_equal(ma[cols], mb[cols], check_exact=True)
    wa, wb = (torch.load(p / "checkpoint.pt", weights_only=False)["model"] for p in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("algo", ["spo", "grpo"])
def test_bound_zero_is_the_synchronous_run_bit_for_bit(toy, tmp_path, algo):
    kw = dict(algo=algo, steps=4, eval_every=2, num_threads=1)
    sync = train(small_cfg(toy, tmp_path / "sync", **kw))
    asy = train(small_cfg(toy, tmp_path / "async", collector="async", max_staleness=0, **kw))
    _same_run(sync, asy)
    counts = json.loads((asy / "collector.json").read_text())
    assert counts["consumed"] == counts["admitted"] == 4 * (16 // (1 if algo == "spo" else 4))


def test_bound_zero_is_the_synchronous_run_bit_for_bit_with_the_tool(tmp_path):
    from test_tool_task import TOOL_MODEL

    kw = dict(task="arith_tool", model=str(TOOL_MODEL), max_new_tokens=40, max_tool_chars=64, tool_timeout_s=10,
              tool_memory_mb=512, tool_workers=16, responses_per_step=16, steps=3, eval_every=3, eval_max_prompts=8,
              eval_samples=1, offline_init=False, progress=False, save_model=False, num_threads=1, lr=3e-4,
              keep_checkpoints=True, cache_dir=str(tmp_path / "cache"))
    sync = train(Config(out=str(tmp_path / "sync"), **kw))
    asy = train(Config(out=str(tmp_path / "async"), collector="async", max_staleness=0, **kw))
    _same_run(sync, asy)  # the tool/* metrics included
    assert "tool/call_rate" in pd.read_json(asy / "metrics.jsonl", lines=True).columns


def test_an_async_run_trains_with_staleness_within_its_bound(toy, tmp_path):
    out = train(small_cfg(toy, tmp_path / "a", steps=5, collector="async", max_staleness=2, num_threads=1))
    df = pd.read_json(out / "metrics.jsonl", lines=True)
    steps = df[df.step > 0]
    assert steps.responses.tolist() == [16, 32, 48, 64, 80]
    assert steps["async/staleness_max"].max() <= 2
    counts = json.loads((out / "collector.json").read_text())
    assert counts["consumed"] == 80 and counts["admitted"] == 80 + counts.get("aborted", 0)


def _run(cfg: Config, failpoint: str = "") -> subprocess.CompletedProcess:
    code = f"import json; from spo_lab.train import Config, train; train(Config(**json.loads({json.dumps(json.dumps(cfg.__dict__))})))"
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, "SPO_LAB_FAILPOINT": failpoint}, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_a_run_killed_with_trajectories_in_flight_resumes_without_loss_or_double_count(toy, tmp_path):
    cfg = small_cfg(toy, tmp_path / "k", steps=6, save_every=2, collector="async", max_staleness=2, num_threads=1)
    killed = _run(cfg, "step-rank0:3")  # SIGKILL after the 3rd step, with the next batches in flight
    assert killed.returncode == -9, killed.stderr[-2000:]
    before = pd.read_json(Path(cfg.out) / "metrics.jsonl", lines=True)
    last = before[before.step > 0].iloc[-1]  # the collector had work admitted beyond the batch it handed over
    assert last["async/in_flight"] + last["async/finished_waiting"] > 0
    cfg.resume = True
    done = _run(cfg)
    assert done.returncode == 0, done.stderr[-2000:]
    df = pd.read_json(Path(cfg.out) / "metrics.jsonl", lines=True)
    assert df.step.tolist() == [0, 1, 2, 3, 4, 5, 6]  # every step once: step 3 (killed before its checkpoint) redone
    assert df[df.step > 0].responses.tolist() == [16 * s for s in range(1, 7)]
    assert (df[df.step > 0]["async/aborted"] == 0).all()  # pacing: nothing thrown away while the run goes on
    counts = json.loads((Path(cfg.out) / "collector.json").read_text())
    assert counts["consumed"] == 4 * 16  # the resumed process trained on steps 3..6 only: nothing counted twice


# ====================================================================== injected latency and the measured barrier
def test_latency_specs_parse_and_draws_are_capped_and_counted():
    from spo_lab.tools.latency import InjectedLatency, parse_latency

    assert parse_latency("lognormal:-1.6,1.0") == ("lognormal", (-1.6, 1.0))
    assert parse_latency("none") == ("none", ())
    for bad in ("gauss:1", "lognormal:1", "fixed:-1", "exponential:x", "lognormal:0,nan"):
        with pytest.raises(ValueError, match="latency"):
            parse_latency(bad)
    lat = InjectedLatency(SleepSandbox(), "lognormal:3,2", seed=0, cap_s=0.05)  # median 20 s, capped at 0.05
    r = lat.run("0")
    assert 0.05 <= r.seconds < 1 and lat.injected_s == pytest.approx(0.05) and lat.calls == 1
    a, b = InjectedLatency(SleepSandbox(), "exponential:1", seed=3), InjectedLatency(SleepSandbox(), "exponential:1", seed=3)
    assert [a.draw() for _ in range(5)] == [b.draw() for _ in range(5)]


@dataclass
class _P:
    prompt: str


class _Task:
    def reward(self, texts, rows):
        return [1.0] * len(texts)


def test_without_the_barrier_a_slow_trajectory_does_not_hold_up_the_batches():
    from spo_lab.teaching.collection import measure_collection

    delays = [1.5 if i % 4 == 0 else 0.01 for i in range(16)]  # every fourth prompt's tool call is a straggler
    tok = tool_tokenizer()
    problems = [_P(f"p{i}:") for i in range(16)]
    res = {}
    for mode in ("single_sync", "single_async"):
        engine = ToolEngine(OneCallEngine(tok, delays), SleepSandbox(), tool_workers=16)
        res[mode] = measure_collection(mode, engine, None, _Task(), problems, batch=4, batches=4, group=2,
                                       max_new_tokens=64, seed=0)
    sync, asy = res["single_sync"], res["single_async"]
    assert sync["responses"] == asy["responses"] == 16
    slow = [u for u in sync["timeline"] if u["prompt"] % 4 == 0]
    assert slow, "no straggler was drawn (pick another seed)"
    late = [u for u in sync["timeline"] if u["batch"] == slow[0]["batch"]]
    assert all(u["handed"] >= slow[0]["finished"] >= 1.5 for u in late)  # its batch waited for it
    # without the barrier, the batches before a straggler's deadline went out while it was still running;
    # the staleness bound (2) then waits for it: it is trained on, late but not left behind
    first = min((u for u in asy["timeline"] if u["prompt"] % 4 == 0), key=lambda u: u["seq"], default=None)
    assert first is not None and first["batch"] - first["version"] <= 2
    early = [u for u in asy["timeline"] if u["batch"] < first["batch"]]
    assert early and all(u["handed"] < first["finished"] for u in early)


# ====================================================================== a streaming engine (submit per request)
class Streamer:
    """A per-request engine (the ``submit`` protocol of vLLM's AsyncLLM engine): each request finishes
    on its own timer (``delays[prompt]``) and calls back from another thread; its weights' version is the
    number of ``sync_weights`` calls, written into the text it returns."""

    def __init__(self, tok, delays):
        self.tokenizer, self.delays, self.version, self.model = tok, delays, 0, None
        self.submitted = 0

    def sync_weights(self, model) -> None:
        self.version += 1

    def continue_tokens(self, prefixes, *, max_new_tokens, temperature=1.0, greedy=False, top_k=0, top_p=1.0,
                        stop=None):
        out, done = [None] * len(prefixes), [threading.Event() for _ in prefixes]
        for i, (p, b) in enumerate(zip(prefixes, max_new_tokens)):
            self.submit(p, max_new_tokens=b, stop=stop, on_done=lambda t, i=i: (out.__setitem__(i, t), done[i].set()))
        for e in done:
            e.wait()
        return out

    def submit(self, prefix, *, max_new_tokens, temperature=1.0, greedy=False, stop=None, on_done, on_error=None):
        self.submitted += 1
        text = self.tokenizer.decode(prefix)
        i = int(text[1 : text.index(":")])
        if stop and "</interpreter>" not in text:
            script = f"<code>{self.delays[i]}</code>"
        else:
            script = f"v{self.version}<eos>"
        ids = self.tokenizer.encode(script, add_special_tokens=False)
        k, why = cut_turn(self.tokenizer, ids, stop, budget=max_new_tokens)
        threading.Timer(self.delays[i], on_done, args=(Turn(ids[:k], [-0.5] * k, why),)).start()


@pytest.mark.parametrize("tools", [False, True])
def test_a_streaming_engine_hands_back_responses_in_completion_order(tools):
    tok = tool_tokenizer()
    delays = [0.5 if i % 2 else 0.01 for i in range(16)]  # odd prompts are slow
    streamer = Streamer(tok, delays)
    engine = ToolEngine(streamer, SleepSandbox(), tool_workers=16) if tools else streamer
    algo = Recording(16, 4, seed=0)
    col = AsyncCollector(engine, None, algo, [f"p{i}:" for i in range(16)], batch_units=4, max_staleness=1,
                         max_new_tokens=64, timeout_s=30)
    try:
        seen = drive(col, algo, 4)
    finally:
        col.close()
    first = seen[0][0]
    assert sum(int(p) % 2 == 0 for p in first.prompt_index.tolist()) >= 3  # the fast ones came first
    for step, (ro, _, info) in enumerate(seen):
        assert info["async/staleness_max"] <= 1
        for text, v in zip(ro.texts, ro.policy_version.tolist()):
            assert f"v{v}" in text or f"v{v + 1}" in text  # sampled with the adapter of its version (or the next turn's)
        assert bool((ro.loss_mask.sum(1) > 0).all()) and not bool(ro.truncated.any())
        if tools:
            assert all("<interpreter>" in t for t in ro.texts)
    assert algo.violations == []
