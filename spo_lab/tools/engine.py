"""Tool-integrated rollouts: a rollout engine that lets the policy run Python between its turns.

    from spo_lab.tools import PythonSandbox, ToolEngine

    engine = ToolEngine(HFEngine(model, tok), PythonSandbox(timeout_s=30, memory_mb=1024), max_turns=8)
    ro = engine.generate(prompts, n=8, temperature=1.0, max_new_tokens=8192)   # -> Rollouts, as any engine
    engine.tool_metrics()        # {"tool/calls_mean": ..., ...}: this call's tool statistics

:class:`ToolEngine` wraps any engine that can continue a token sequence up to a stop string (the
``continue_tokens`` method of :class:`~spo_lab.engines.hf.HFEngine` and
:class:`~spo_lab.engines.vllm.VLLMEngine`) and is itself a rollout engine (``generate``,
``sync_weights``), so the trainer, the offline pass and the evaluation use it unchanged.

The loop (the ReTool format of the SPO recipe)
----------------------------------------------
* A turn samples until the policy writes ``</code>`` (kept in the response), <eos>, or the response
  budget ends. ``max_new_tokens`` is the budget of the whole response: every turn and every tool
  output together, so a response never exceeds it.
* A turn that ended with ``</code>`` is a tool call: the code between the last ``<code>`` before it and
  the ``</code>`` (a Markdown python fence inside is stripped) runs in the sandbox, never in this
  process. Its output comes back as ``<interpreter>\\n{output}\\n</interpreter>\\n\\n``, the output cut
  in the middle past ``max_tool_chars`` characters (first half, :data:`CUT_MARKER`, last half), encoded
  without special tokens (the text of a special token in the output stays text) and appended to the
  same response as tokens: no chat role, no new message. Those tokens are attended to by every later
  turn (``response_mask`` 1) but were not sampled by the policy: ``loss_mask`` 0 and log-prob 0, so no
  loss, entropy or KL term is ever computed on them.
* The response ends at <eos>; when the budget is spent; when a tool output would reach the budget
  (the output is dropped, as in the recipe); after ``max_turns`` turns (the last turn's code is not
  run); or when a turn ended with ``</code>`` but holds no ``<code>`` (nothing to run).
* A tool failure is data: the sandbox's own output says so for a timeout, a kill or a crash (the
  traceback), and a failure of the tool layer itself (the sandbox could not start, or raised) becomes
  the fixed :data:`~spo_lab.tools.sandbox.SANDBOX_ERROR_MESSAGE`. Nothing the code does raises here.
* Rows finish independently. Each turn samples all rows still running in one batched call, then runs
  that turn's tool calls concurrently (a thread pool; the work is in the sandbox's child processes), so
  one slow call does not hold up the others.

Rows that end without <eos> (budget, dropped tool output, turn limit, a stray ``</code>``) are
``truncated``, as with any engine: ``truncated`` means "no <eos>".

Tool statistics
---------------
After every :meth:`ToolEngine.generate` call, :attr:`ToolEngine.last_stats` holds per-row tensors in the
order of the returned rows, and :meth:`ToolEngine.tool_metrics` their means under ``tool/`` keys. The
offline pass and the evaluation call ``generate`` too, so read them right after the call they describe.

The continuation protocol
-------------------------
An inner engine provides::

    continue_tokens(prefixes: list[list[int]], *, max_new_tokens: int | list[int], temperature: float,
                    greedy: bool, top_k: int, top_p: float, stop: str | None) -> list[Turn]

For each prefix (token ids the model conditions on, no padding) it samples a continuation and returns a
:class:`Turn`: the new token ids, each one's log-prob under the temperature-scaled distribution
(untruncated, as ``generate`` computes them) and why it ended. :func:`cut_turn` makes the end exact
for every backend: the turn keeps the tokens up to and including the one that completes the first
occurrence of the stop string (or the first <eos>), whatever the backend generated after it.
"""

from __future__ import annotations

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..engines.base import STOP_REASONS, Rollouts, Turn, _decode, cut_turn, encode_prompts  # noqa: F401 (re-exported)
from .sandbox import SANDBOX_ERROR_MESSAGE

__all__ = [
    "ToolEngine",
    "Trajectory",
    "trajectory_stats",
    "trajectory_rollouts",
    "Turn",
    "cut_turn",
    "extract_code",
    "format_tool_output",
    "CODE_OPEN",
    "CODE_CLOSE",
    "CUT_MARKER",
    "STOP_REASONS",
]

CODE_OPEN, CODE_CLOSE = "<code>", "</code>"
INTERPRETER_OPEN, INTERPRETER_CLOSE = "<interpreter>", "</interpreter>"
#: What replaces the middle of a tool output longer than ``max_tool_chars`` characters.
CUT_MARKER = "...(truncated)..."

_FENCE_OPEN = re.compile(r"^```[ \t]*(?:python|py)?[ \t]*\n?", re.IGNORECASE)
_FENCE_CLOSE = re.compile(r"\n?```[ \t]*$")


# ====================================================================== the format
def extract_code(turn_text: str) -> str | None:
    """The code of a turn that ended with ``</code>``: between the last ``<code>`` before the first
    ``</code>`` and that ``</code>``, a Markdown fence (```python ... ```) stripped; None if there is
    no complete block."""
    end = turn_text.find(CODE_CLOSE)
    if end < 0:
        return None
    start = turn_text.rfind(CODE_OPEN, 0, end)
    if start < 0:
        return None
    code = turn_text[start + len(CODE_OPEN) : end].strip()
    code = _FENCE_CLOSE.sub("", _FENCE_OPEN.sub("", code))
    return code.strip()


def format_tool_output(text: str, max_chars: int | None) -> str:
    """``<interpreter>\\n{text}\\n</interpreter>\\n\\n``, ``text`` longer than ``max_chars`` characters cut
    in the middle: its first ``max_chars // 2`` characters, :data:`CUT_MARKER`, its last ``max_chars // 2``."""
    if max_chars is not None and len(text) > max_chars:
        half = max_chars // 2
        text = text[:half] + CUT_MARKER + text[len(text) - half :]
    return f"{INTERPRETER_OPEN}\n{text}\n{INTERPRETER_CLOSE}\n\n"


@dataclass
class _ToolCall:
    text: str
    error: bool
    seconds: float


def _call(sandbox, code: str) -> _ToolCall:
    """Run ``code`` in the sandbox; every failure, the tool layer's own included, is a result."""
    t0 = time.monotonic()
    try:
        r = sandbox.run(code)
        output = r.output if isinstance(r.output, str) else str(r.output)
        failed = (getattr(r, "sandbox_error", None) is not None or bool(getattr(r, "timed_out", False))
                  or getattr(r, "exit_code", None) != 0)
        if getattr(r, "sandbox_error", None) is not None:
            output = SANDBOX_ERROR_MESSAGE
        seconds = float(getattr(r, "seconds", time.monotonic() - t0))
        return _ToolCall(output, failed, seconds)
    except Exception:  # the tool layer itself failed: a fixed message for the policy, never an exception
        return _ToolCall(SANDBOX_ERROR_MESSAGE, True, time.monotonic() - t0)


@dataclass(eq=False)
class Trajectory:
    """One response under construction: the prompt's tokens, the response's tokens so far (the policy's
    turns and the tool's outputs), their log-probs, which of them the policy sampled, and its tool counts."""

    prompt: list[int]
    budget: int  # tokens the whole response may hold
    resp: list[int] = field(default_factory=list)
    logp: list[float] = field(default_factory=list)
    policy: list[int] = field(default_factory=list)  # 1 where the policy sampled the token, 0 for tool output
    turns: int = 0
    calls: int = 0
    errors: int = 0
    tool_tokens: int = 0
    seconds: float = 0.0  # sandbox wall time
    dropped: bool = False  # ended by a tool output that would reach the budget
    max_turns: bool = False  # ended by the turn limit
    done: bool = False

    @property
    def prefix(self) -> list[int]:
        return self.prompt + self.resp

    @property
    def room(self) -> int:
        return self.budget - len(self.resp)


def trajectory_stats(trajs: list[Trajectory]) -> dict[str, Tensor]:
    """Per-row tool statistics of ``trajs`` (what :attr:`ToolEngine.last_stats` holds)."""
    stats = {k: torch.tensor([getattr(t, k) for t in trajs], dtype=torch.long)
             for k in ("turns", "calls", "errors", "tool_tokens")}
    stats |= {k: torch.tensor([getattr(t, k) for t in trajs], dtype=torch.bool) for k in ("dropped", "max_turns")}
    stats["seconds"] = torch.tensor([t.seconds for t in trajs], dtype=torch.float64)
    return stats


def check_sampling(temperature: float, greedy: bool, max_new_tokens: int) -> None:
    """The argument checks of every ``generate``."""
    if not greedy and temperature <= 0:
        raise ValueError("temperature must be > 0 when sampling (use greedy=True for argmax)")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")


# ====================================================================== the engine
class ToolEngine:
    """A rollout engine whose responses may call a Python tool (see the module docstring).

    Args:
        engine: the inner engine (HF or vLLM): it samples the policy's turns with ``continue_tokens``,
            and its ``tokenizer`` encodes prompts and tool outputs.
        sandbox: runs the code (:class:`~spo_lab.tools.sandbox.PythonSandbox` or any object whose
            ``run(code)`` returns ``output``, ``exit_code``, ``timed_out``, ``seconds``, ``sandbox_error``).
        max_turns: most assistant turns per response (the recipe: 8); the last one's code is not run.
        max_tool_chars: tool output longer than this many characters is cut in the middle (the recipe:
            256); None keeps it whole (the sandbox caps it anyway).
        tool_workers: concurrent sandbox calls in one turn (default: the CPU count, at most 8; 1 when
            the sandbox protects itself by killing every process of its uid after a call, which would
            kill the other calls).
    """

    def __init__(self, engine, sandbox, max_turns: int = 8, max_tool_chars: int | None = 256, *,
                 tool_workers: int | None = None):
        if not callable(getattr(engine, "continue_tokens", None)):
            raise TypeError(f"{type(engine).__name__} cannot continue a token sequence (no continue_tokens "
                            "method): ToolEngine needs HFEngine, VLLMEngine or an engine with that method")
        if getattr(engine, "tokenizer", None) is None:
            raise TypeError(f"{type(engine).__name__} has no tokenizer attribute")
        if not callable(getattr(sandbox, "run", None)):
            raise TypeError("the sandbox needs a run(code) method")
        if int(max_turns) < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        if max_tool_chars is not None and int(max_tool_chars) < 2:
            raise ValueError(f"max_tool_chars must be >= 2 or None, got {max_tool_chars}")
        self.engine, self.sandbox = engine, sandbox
        self.max_turns = int(max_turns)
        self.max_tool_chars = None if max_tool_chars is None else int(max_tool_chars)
        if tool_workers is None:
            sweeps = False
            try:
                sweeps = bool(sandbox.protections().get("orphan_sweep", False))
            except Exception:
                pass
            tool_workers = 1 if sweeps else max(1, min(8, os.cpu_count() or 1))
        if int(tool_workers) < 1:
            raise ValueError(f"tool_workers must be >= 1, got {tool_workers}")
        self.tool_workers = int(tool_workers)
        self.last_stats: dict[str, Tensor] = {}

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def __getattr__(self, name):  # sleep, wake_up, close, encode_prompts ...: the inner engine's
        if name in ("engine", "sandbox") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.engine, name)

    def sync_weights(self, model) -> None:
        self.engine.sync_weights(model)

    # ------------------------------------------------------------------ statistics
    def tool_metrics(self) -> dict[str, float]:
        """Means over the rows of the last :meth:`generate` call, under ``tool/`` keys (empty before one):
        ``turns_mean``, ``calls_mean``, ``errors_mean``, ``seconds_mean`` (sandbox wall time per row),
        ``tokens_mean`` (tool-output tokens per row), ``call_rate`` (share of rows with a tool call),
        ``dropped_frac`` (rows ended by a tool output that would pass the budget), ``max_turns_frac``
        (rows ended by the turn limit)."""
        s = self.last_stats
        if not s:
            return {}
        mean = lambda t: float(t.double().mean())  # noqa: E731
        return {"tool/turns_mean": mean(s["turns"]), "tool/calls_mean": mean(s["calls"]),
                "tool/errors_mean": mean(s["errors"]), "tool/seconds_mean": mean(s["seconds"]),
                "tool/tokens_mean": mean(s["tool_tokens"]), "tool/call_rate": mean(s["calls"] > 0),
                "tool/dropped_frac": mean(s["dropped"]), "tool/max_turns_frac": mean(s["max_turns"])}

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self, prompts: list[str], n: int = 1, *, temperature: float = 1.0, max_new_tokens: int = 8,
        greedy: bool = False, top_k: int = 0, top_p: float = 1.0,
    ) -> Rollouts:
        """n responses per prompt (rows i*n .. i*n+n-1 answer prompt i), each up to ``max_new_tokens``
        tokens in all (turns and tool outputs together); see the module docstring and :class:`Rollouts`.

        All rows advance in lockstep: one batched turn for every row still running, then that turn's
        tool calls together. (:class:`spo_lab.collector.AsyncCollector` drives the same
        :class:`Trajectory` steps without the lockstep.)"""
        if n < 1 or not prompts:
            raise ValueError("need at least one prompt and n >= 1")
        check_sampling(temperature, greedy, max_new_tokens)
        p_ids, p_mask = encode_prompts(self.tokenizer, prompts)
        p_ids, p_mask = p_ids.repeat_interleave(n, dim=0), p_mask.repeat_interleave(n, dim=0)
        trajs = [self.start(row[m.bool()].tolist(), max_new_tokens) for row, m in zip(p_ids, p_mask)]
        sampling = dict(temperature=temperature, greedy=greedy, top_k=top_k, top_p=top_p)
        active = trajs
        while active:
            codes = [(t, c) for t, c in zip(active, self.next_turns(active, **sampling)) if c is not None]
            if not codes:
                break
            results = self._run_tools([c for _, c in codes])
            active = [t for (t, _), res in zip(codes, results) if self.take_tool_result(t, res)]
        self.last_stats = trajectory_stats(trajs)
        return self.rollouts(trajs, p_ids, p_mask, n)

    # ------------------------------------------------------------------ one trajectory's steps
    def start(self, prompt_ids: list[int], max_new_tokens: int) -> "Trajectory":
        """A new trajectory for the prompt tokens ``prompt_ids`` (no padding), ``max_new_tokens`` in all."""
        return Trajectory(list(prompt_ids), int(max_new_tokens))

    def next_turns(self, trajs: list["Trajectory"], **sampling) -> list[str | None]:
        """One batched turn for each of ``trajs`` (none finished); returns per trajectory the code its
        turn asks to run, or None when the trajectory has finished (see :meth:`take_turn`)."""
        turns = self.engine.continue_tokens([t.prefix for t in trajs], max_new_tokens=[t.room for t in trajs],
                                            stop=CODE_CLOSE, **sampling)
        if len(turns) != len(trajs):
            raise RuntimeError(f"continue_tokens returned {len(turns)} turns for {len(trajs)} prefixes")
        return [self.take_turn(t, turn) for t, turn in zip(trajs, turns)]

    def take_turn(self, traj: "Trajectory", turn: Turn) -> str | None:
        """Append a sampled turn; return the code to run, or None (and mark ``traj.done``) when the
        trajectory ends: <eos>, the budget spent, the turn limit, or a ``</code>`` with no ``<code>``."""
        ids, lps = list(turn.token_ids)[: traj.room], [float(x) for x in turn.logprobs][: traj.room]
        traj.resp += ids
        traj.logp += lps
        traj.policy += [1] * len(ids)
        traj.turns += 1
        code = None
        if turn.stop_reason == "stop" and traj.room > 0:
            if traj.turns >= self.max_turns:
                traj.max_turns = True
            else:
                code = extract_code(_decode(self.tokenizer, ids))
        traj.done = code is None
        return code

    def run_tool(self, code: str) -> "_ToolCall":
        """Run one tool call in the sandbox (in a sandbox process; never raises)."""
        return _call(self.sandbox, code)

    def take_tool_result(self, traj: "Trajectory", res: "_ToolCall") -> bool:
        """Append a tool call's output as interpreter tokens (``loss_mask`` 0); False (and ``traj.done``)
        when the output would reach the budget and is dropped, as in the recipe."""
        traj.calls += 1
        traj.errors += int(res.error)
        traj.seconds += res.seconds
        out = self.tokenizer.encode(format_tool_output(res.text, self.max_tool_chars), add_special_tokens=False,
                                    split_special_tokens=True)
        if len(traj.resp) + len(out) >= traj.budget:
            traj.dropped = traj.done = True
            return False
        traj.resp += out
        traj.logp += [0.0] * len(out)
        traj.policy += [0] * len(out)
        traj.tool_tokens += len(out)
        return True

    def _run_tools(self, codes: list[str]) -> list[_ToolCall]:
        workers = min(self.tool_workers, len(codes))
        if workers <= 1:
            return [self.run_tool(c) for c in codes]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="spo-tool") as pool:
            return list(pool.map(self.run_tool, codes))

    def rollouts(self, trajs: list["Trajectory"], p_ids: Tensor, p_mask: Tensor, n: int = 1) -> Rollouts:
        """:class:`Rollouts` of finished trajectories; ``p_ids`` / ``p_mask`` ``[R, P]`` their left-padded prompts."""
        return trajectory_rollouts(self.tokenizer, trajs, p_ids, p_mask, n)


def trajectory_rollouts(tok, trajs: list[Trajectory], p_ids: Tensor, p_mask: Tensor, n: int = 1) -> Rollouts:
    """:class:`Rollouts` of finished trajectories (rows ``i*n .. i*n+n-1`` answer prompt i); ``p_ids`` /
    ``p_mask`` ``[R, P]`` their left-padded prompts. ``truncated``: no <eos> sampled by the policy at the end."""
    R = len(trajs)
    T = max(1, max(len(t.resp) for t in trajs))
    ids = torch.full((R, T), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((R, T), dtype=torch.long)
    loss_mask = torch.zeros((R, T), dtype=torch.long)
    lp = torch.zeros((R, T), dtype=torch.float32)
    for r, t in enumerate(trajs):
        k = len(t.resp)
        if k:
            ids[r, :k] = torch.tensor(t.resp, dtype=torch.long)
            mask[r, :k] = 1
            loss_mask[r, :k] = torch.tensor(t.policy, dtype=torch.long)
            lp[r, :k] = torch.tensor(t.logp, dtype=torch.float32)
    if not bool(torch.isfinite(lp).all()):
        raise ValueError("the engine returned a non-finite log-prob for a sampled token")
    ended_eos = torch.tensor([bool(t.resp) and t.resp[-1] == tok.eos_token_id and t.policy[-1] == 1 for t in trajs])
    return Rollouts(
        prompt_ids=p_ids, prompt_mask=p_mask, response_ids=ids, response_mask=mask, loss_mask=loss_mask,
        logprobs=lp, texts=tok.batch_decode(ids, skip_special_tokens=True), truncated=~ended_eos,
        prompt_index=torch.arange(R // n).repeat_interleave(n),
    )
