"""The tool task: multiplications a ~1 M-parameter policy cannot do in its head, but can with Python.

The task on which a tiny model learns to use the tool. The bundled addition model (:mod:`spo_lab.tasks.arith`)
writes sums digit by digit; a product of two- and three-digit numbers is far beyond it. With the ReTool
format of the SPO recipe (:mod:`spo_lab.tools.engine`) it can instead copy the operands into code and the
interpreter's output into its answer::

    prompt      "347*58="
    direct      "20126"                                                    (then <eos>)
    with tool   "<code>347*58</code><interpreter>\\n20126\\n\\n</interpreter>\\n\\n20126"  (then <eos>)

The interpreter part is written by the tool, not sampled (``loss_mask`` 0 in the rollouts).

Levels fix the operands' digit counts (operand order shuffled, no leading zeros):

    level  digits   example       distinct prompts
      1    2 x 1    "47*6="              1,620
      2    2 x 2    "47*85="             8,100
      3    3 x 2    "347*58="          162,000
      4    3 x 3    "347*958="         810,000

The bundled sets (``data/arith-tool``: 2,000 train, 200 validation, 200 test prompts, levels equally
weighted, disjoint) are written by ``python scripts/build_tiny_model.py --target tool``, which also
builds the policy that starts RL on them, ``data/tiny-qwen3-tool`` (see its ``BUILD.md``). Prompts are
drawn from the "rl" half of the prompt space (content hash, as :func:`spo_lab.tasks.arith.prompt_pool`);
the cold start's problems from the other half.

Reward rule (:func:`final_answer`): the answer is what follows the *last* ``</interpreter>`` of the
response (the whole response when the tool was never called). It must start with the product as a
canonical integer (:func:`spo_lab.tasks.arith.parse_answer`) and contain none of the four tool tags: a
number inside a code block or an interpreter output is not an answer, and a response that ends inside a
tool turn (code never closed, or an output dropped at the length limit) earns 0. Calling the tool is
never required: a correct direct answer earns 1 like a correct answer after a tool call.

The task also reads what a response did (:func:`called_tool`: an interpreter output came back) so the
evaluation can report the tool-call rate and accuracy with and without a call (:func:`tool_breakdown`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import fields as fields_of
from pathlib import Path
from typing import Any

from ..errors import UserError, shorten
from .arith import parse_answer, prompt_pool, save_problems  # noqa: F401 (JSON lines of any problem dataclass)
from .base import content_id

__all__ = ["ArithToolTask", "MulProblem", "LEVELS", "LEVEL_WEIGHTS", "DEFAULT_DATA_DIR", "SPLITS", "TOOL_TAGS", "MAX_NEW_TOKENS",
           "make_problem", "sample_problem", "generate_problems", "save_problems", "load_problems",
           "final_answer", "called_tool", "reward", "tool_breakdown"]

LEVELS: dict[int, tuple[int, int]] = {1: (2, 1), 2: (2, 2), 3: (3, 2), 4: (3, 3)}
"""Difficulty level -> digits of the two factors."""

LEVEL_WEIGHTS: dict[int, float] = {1: 0.25, 2: 0.25, 3: 0.25, 4: 0.25}
"""Mixture of levels in the bundled train / validation / test sets."""

DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent.parent / "data" / "arith-tool"
"""Where ``scripts/build_tiny_model.py --target tool`` writes the three splits."""

SPLITS = ("train", "validation", "test")
TOOL_TAGS = ("<code>", "</code>", "<interpreter>", "</interpreter>")
"""The four tags of the ReTool format; none may appear in a final answer."""
MAX_NEW_TOKENS = 40
"""A response's token budget on this task (training and evaluation): room for a call, its output and the answer."""
_LAST_OUTPUT_END = "</interpreter>"


@dataclass(frozen=True)
class MulProblem:
    """One multiplication prompt (the task protocol's problem, with the product's fields).

    Attributes:
        id: ``content_id(prompt)``. prompt: e.g. ``"347*58="``. answer: the product, canonical decimal.
        level: a key of ``LEVELS``. operands: the factors in prompt order. n_digits: digits of the longer factor.
    """

    id: str
    prompt: str
    answer: str
    level: int
    operands: tuple[int, ...]
    n_digits: int

    @property
    def meta(self) -> dict[str, Any]:
        return {"level": self.level}


def make_problem(operands: Iterable[int], level: int) -> MulProblem:
    """The problem ``a*b=`` with its product, id and digit count filled in."""
    ops = tuple(int(x) for x in operands)
    prompt = "*".join(str(x) for x in ops) + "="
    product = 1
    for x in ops:
        product *= x
    return MulProblem(content_id(prompt), prompt, str(product), level, ops, max(len(str(x)) for x in ops))


def sample_problem(rng: random.Random, level: int) -> MulProblem:
    """Factors with the level's digit counts (uniform, no leading zeros), in shuffled order."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level}; known levels: {sorted(LEVELS)}")
    digits = list(LEVELS[level])
    rng.shuffle(digits)
    return make_problem([rng.randint(10 ** (d - 1), 10**d - 1) for d in digits], level)


def generate_problems(n: int, seed: int, *, level_weights: Mapping[int, float] | None = None, pool: str = "rl",
                      exclude: Iterable[str] = ()) -> list[MulProblem]:
    """``n`` distinct problems of one half of the prompt space (``"rl"`` or ``"warmup"``), none in
    ``exclude``; deterministic for a seed (its own ``random.Random``)."""
    weights = dict(LEVEL_WEIGHTS if level_weights is None else level_weights)
    rng, seen, out = random.Random(seed), set(exclude), []
    levels, probs = list(weights), list(weights.values())
    for _ in range(100 * n + 1000):
        if len(out) == n:
            return out
        p = sample_problem(rng, rng.choices(levels, probs)[0])
        if prompt_pool(p.prompt) == pool and p.prompt not in seen:
            seen.add(p.prompt)
            out.append(p)
    if len(out) < n:
        raise ValueError(f"found only {len(out)} new distinct prompts of {n} requested")
    return out


def _checked(row: Any, where: str) -> MulProblem:
    """The problem a JSON row describes, when every field agrees with its operands (UserError otherwise)."""
    names = [f.name for f in fields_of(MulProblem)]
    if not isinstance(row, dict) or sorted(row) != sorted(names):
        raise UserError(f"{where}: expected a JSON object with exactly the fields {names}, got {shorten(row)}")
    ops, level = row["operands"], row["level"]
    if not (isinstance(ops, list) and len(ops) == 2 and all(type(x) is int and x > 0 for x in ops)):
        raise UserError(f"{where}: operands must be two positive integers, got {shorten(ops)}")
    if type(level) is not int or level not in LEVELS:
        raise UserError(f"{where}: unknown level {shorten(level, 40)}; known levels: {sorted(LEVELS)}")
    if sorted(len(str(x)) for x in ops) != sorted(LEVELS[level]):
        raise UserError(f"{where}: level {level} means factors of {LEVELS[level]} digits, got {ops}")
    expected = make_problem(ops, level)
    for key in ("prompt", "answer", "id", "n_digits"):
        if row[key] != getattr(expected, key):
            raise UserError(f"{where}: {key} {shorten(row[key], 60)} does not match the operands {ops} "
                            f"(expected {getattr(expected, key)!r})")
    return expected


def load_problems(split: str, data_dir: str | Path | None = None) -> list[MulProblem]:
    """``<data_dir>/<split>.jsonl`` (default ``data/arith-tool``), every line checked; the splits must be
    disjoint (a prompt of an earlier split in a later one is an error). Errors name the file and line."""
    if split not in SPLITS:
        raise UserError(f"unknown split {shorten(split, 80)}; the arith_tool task's splits are {SPLITS}")
    folder = DEFAULT_DATA_DIR if data_dir in (None, "") else Path(data_dir).expanduser()
    if folder.is_file() and folder.name in {f"{s}.jsonl" for s in SPLITS}:
        folder = folder.parent
    path = folder / f"{split}.jsonl"
    if not path.is_file():
        raise UserError(f"no {split} problems at {path}; `python scripts/build_tiny_model.py --target tool` "
                        "writes the bundled ones")
    problems, seen = [], set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise UserError(f"{path}:{n}: not valid JSON: {shorten(line, 120)}") from None
        p = _checked(row, f"{path}:{n}")
        if p.prompt in seen:
            raise UserError(f"{path}:{n}: duplicate prompt {p.prompt!r}")
        seen.add(p.prompt)
        problems.append(p)
    for other in SPLITS[: SPLITS.index(split)]:
        if (folder / f"{other}.jsonl").is_file():
            shared = seen & {p.prompt for p in load_problems(other, folder)}
            if shared:
                raise UserError(f"{path}: prompt {sorted(shared)[0]!r} is also in {other}.jsonl (the splits must "
                                "be disjoint)")
    return problems


# ====================================================================== the reward
def final_answer(completion: str) -> int | None:
    """The integer a response answers with: after its last ``</interpreter>`` (or the whole response
    without one), leading whitespace skipped, a canonical integer (:func:`spo_lab.tasks.arith.parse_answer`);
    None when that part holds a tool tag (a response that ended inside a tool turn) or no integer.

    >>> final_answer("<code>6*7</code><interpreter>\\n42\\n\\n</interpreter>\\n\\n42"), final_answer("42")
    (42, 42)
    >>> final_answer("<code>print(42)</code><interpreter>\\n42\\n"), final_answer("<code>42</code>")
    (None, None)
    """
    if not isinstance(completion, str):
        return None
    cut = completion.rfind(_LAST_OUTPUT_END)
    tail = completion if cut < 0 else completion[cut + len(_LAST_OUTPUT_END):]
    if any(tag in tail for tag in TOOL_TAGS):
        return None
    return parse_answer(tail)


_TOOL_RAN = "</code><interpreter>\n"


def called_tool(completion: str) -> bool:
    """Whether the response holds a tool call that ran: an interpreter output right after a ``</code>``. Only the
    tool engine writes that (a turn ends at ``</code>``, and the next token is the engine's); an ``<interpreter>``
    the policy samples itself is no call."""
    return isinstance(completion, str) and _TOOL_RAN in completion


def reward(completion: str, answer: str) -> float:
    """1.0 iff :func:`final_answer` is the product, else 0.0 (with or without a tool call)."""
    parsed = final_answer(completion)
    return float(parsed is not None and parsed == int(answer))


def tool_breakdown(completions: Sequence[str], rewards: Sequence[float]) -> dict[str, float | None]:
    """Share of responses that called the tool, and the mean reward of those that did and did not
    (None where there are none): ``call_rate``, ``acc_with_tool``, ``acc_without_tool``."""
    calls = [called_tool(c) for c in completions]
    with_tool = [r for r, c in zip(rewards, calls, strict=True) if c]
    without = [r for r, c in zip(rewards, calls) if not c]
    mean = lambda xs: float(sum(xs) / len(xs)) if xs else None  # noqa: E731
    return {"call_rate": sum(calls) / len(calls) if calls else 0.0, "acc_with_tool": mean(with_tool),
            "acc_without_tool": mean(without)}


class ArithToolTask:
    """Multiplication with an optional Python tool, behind the task protocol (:mod:`spo_lab.tasks.base`).

    Args:
        data: folder with ``train.jsonl`` / ``validation.jsonl`` / ``test.jsonl`` (default ``data/arith-tool``).
        tokenizer: unused (prompts are plain text, no template).
    """

    name = "arith_tool"
    breakdown_key = "level"
    splits = SPLITS
    needs_tool = True
    """Run with ``--tool python`` (the trainer turns it on for this task): the policy was cold-started on it."""

    def __init__(self, data: str | Path | None = None, *, tokenizer=None):
        self.data_dir = DEFAULT_DATA_DIR if data in (None, "") else Path(data)

    def load(self, split: str) -> list[MulProblem]:
        return load_problems(split, self.data_dir)

    def reward(self, completions, problems) -> list[float]:
        """1.0 where the final answer (after the last interpreter output) is the product, else 0.0."""
        return [reward(c, p.answer) for c, p in zip(completions, problems, strict=True)]

    def extract(self, completion: str) -> int | None:
        return final_answer(completion)

    def __repr__(self) -> str:
        return f"ArithToolTask(data_dir={str(self.data_dir)!r})"
