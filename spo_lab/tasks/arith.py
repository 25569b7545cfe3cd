"""The arithmetic task: multi-digit addition with graded difficulty and a binary reward.

SPO (the SPO paper) needs a prompt set x, a policy that answers with one response y, and a
verifiable reward r(x, y) in {0, 1}. The paper trains on competition maths; here the "maths" is
column addition written as plain text, small enough for a 1 M-parameter model on a laptop CPU:

    prompt  "347+58="        completion  "405"  (then the end-of-sequence token)

What makes the task useful for SPO is its *spread* of difficulty. A level fixes how many digits
each operand has; the more digits (and, within a level, the more carries) the harder the sum is
for a small model that writes the answer most-significant digit first:

    level  operand digits   example              distinct prompts
      1      2 + 1           "47+5="                    1,800
      2      2 + 2           "47+85="                   8,100
      3      3 + 2           "347+58="                162,000
      4      3 + 3           "347+958="               810,000
      5      4 + 3           "3470+958="           ~1.6e7
      6      4 + 4           "3470+9581="          ~8.1e7
      7      5 + 4           "34702+9581="         ~1.6e9
      8      5 + 5           "34702+95813="        ~8.1e9

Operands of d >= 2 digits are uniform over [10^(d-1), 10^d - 1] (no leading zeros); a one-digit
operand is uniform over [0, 9]. The operand order is shuffled, so "5+47=" and "47+5=" both occur.
``LEVEL_WEIGHTS`` is the mixture of the bundled RL prompt sets (``data/arith``): levels 2-6, equally
weighted. The bundled tiny model (:mod:`spo_lab.tiny_model`) was warm-started on levels 1-6 and stopped
early, so every level of the RL sets is learnable from the start (0 < p for almost every prompt):
level 2 is mostly solved and levels 3-6 are in between. Levels 7-8 -- longer than anything the warm
start saw, p = 0 for every prompt -- exist for experiments but are left out of the bundled sets: they
would add degenerate groups and no learning. Measured numbers are in ``data/tiny-qwen3/BUILD.md``.

The prompt space is split in two halves by content hash (``prompt_pool``): RL train/test prompts
come from the ``"rl"`` half, warm-start prompts from the ``"warmup"`` half, so they never overlap.

Reward rule (``parse_answer``): after optional leading whitespace the completion must start with
an integer in canonical decimal form -- an optional ``-`` and ASCII digits, no leading zeros
(``"0"`` itself is fine, ``"-0"`` and ``"+5"`` are not); whatever follows the integer is ignored
(``"405 =)"`` parses as 405, ``"4051"`` as 4051). Anything else parses as ``None`` and earns
reward 0.

:class:`ArithTask` puts all this behind the task protocol of :mod:`spo_lab.tasks.base` (problems
carry ``meta = {"level": ..., "n_carries": ...}``; metrics are broken down by ``level``).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from dataclasses import fields as fields_of
from pathlib import Path
from typing import Any

from ..errors import UserError, shorten
from .base import content_id

__all__ = [
    "ArithTask",
    "LEVELS",
    "LEVEL_WEIGHTS",
    "DEFAULT_DATA_DIR",
    "AdditionProblem",
    "Problem",
    "problem_id",
    "count_carries",
    "make_problem",
    "sample_problem",
    "prompt_pool",
    "generate_problems",
    "save_problems",
    "load_problems",
    "data_folder",
    "parse_answer",
    "reward",
]

LEVELS: dict[int, tuple[int, ...]] = {
    1: (2, 1),
    2: (2, 2),
    3: (3, 2),
    4: (3, 3),
    5: (4, 3),
    6: (4, 4),
    7: (5, 4),
    8: (5, 5),
}
"""Difficulty level -> number of digits of each operand."""

LEVEL_WEIGHTS: dict[int, float] = {2: 0.2, 3: 0.2, 4: 0.2, 5: 0.2, 6: 0.2}
"""Mixture of levels in the bundled train / validation / test sets (levels 2-6, equal weights)."""

DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent.parent / "data" / "arith"
"""Where ``scripts/build_tiny_model.py`` writes ``train.jsonl``, ``validation.jsonl`` and ``test.jsonl``."""

SPLITS = ("train", "validation", "test")
"""The bundled splits: train for RL, validation for choosing settings, test for the final table only."""
POOLS = ("rl", "warmup")

# Longest integer parse_answer accepts; also keeps int() far below Python's 4300-digit limit.
MAX_ANSWER_DIGITS = 64
_LEADING_INTEGER = re.compile(r"\s*(-?[0-9]+)")
_CANONICAL_INTEGER = re.compile(r"0|-?[1-9][0-9]*")


@dataclass(frozen=True)
class AdditionProblem:
    """One addition prompt and its verified answer (the task protocol's problem, with the addition's fields).

    Attributes:
        id: ``problem_id(prompt)``, a stable content hash (12 hex characters).
        prompt: The text the model continues, e.g. ``"347+58="``.
        answer: The true sum in canonical decimal form, e.g. ``"405"``.
        level: Difficulty level, a key of ``LEVELS``.
        operands: The summands in prompt order, e.g. ``(347, 58)``.
        n_digits: Digits of the longest operand.
        n_carries: Columns of the written addition that produce a carry (see ``count_carries``).
    """

    id: str
    prompt: str
    answer: str
    level: int
    operands: tuple[int, ...]
    n_digits: int
    n_carries: int

    @property
    def meta(self) -> dict[str, Any]:
        """Metadata of the task protocol: the difficulty level and the carry count."""
        return {"level": self.level, "n_carries": self.n_carries}


def problem_id(prompt: str) -> str:
    """Stable id of a prompt: the first 12 hex characters of sha1(prompt as UTF-8).

    Unlike Python's ``hash()`` it does not change between processes (no salt).
    """
    return content_id(prompt)


def count_carries(operands: Iterable[int]) -> int:
    """Number of columns in the written addition of non-negative ``operands`` that carry.

    Column c (units first) carries when the sum of its digits plus the incoming carry is >= 10.
    Example: 347 + 58 carries in the units (7+8) and the tens (1+4+5), so the count is 2.
    """
    operands = list(operands)
    if any(x < 0 for x in operands):
        raise ValueError(f"operands must be non-negative, got {operands}")
    carries, carry = 0, 0
    while any(operands) or carry:
        column = carry + sum(x % 10 for x in operands)
        carry = column // 10
        carries += carry > 0
        operands = [x // 10 for x in operands]
    return carries


Problem = AdditionProblem  # the old name, kept for one release (spo_lab.tasks.Problem is the protocol's)


def make_problem(operands: Iterable[int], level: int) -> AdditionProblem:
    """Build the ``Problem`` for ``operands[0] + operands[1] + ...`` with all fields filled in."""
    operands = tuple(int(x) for x in operands)
    prompt = "+".join(str(x) for x in operands) + "="
    return AdditionProblem(
        id=problem_id(prompt),
        prompt=prompt,
        answer=str(sum(operands)),
        level=level,
        operands=operands,
        n_digits=max(len(str(x)) for x in operands),
        n_carries=count_carries(operands),
    )


def _random_operand(rng: random.Random, n_digits: int) -> int:
    """Uniform integer with exactly ``n_digits`` digits (0-9 for a single digit)."""
    low = 0 if n_digits == 1 else 10 ** (n_digits - 1)
    return rng.randint(low, 10**n_digits - 1)


def sample_problem(rng: random.Random, level: int) -> AdditionProblem:
    """Draw one problem of ``level``: operands with the level's digit counts, in shuffled order."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level}; known levels: {sorted(LEVELS)}")
    digits = list(LEVELS[level])
    rng.shuffle(digits)
    return make_problem([_random_operand(rng, d) for d in digits], level)


def prompt_pool(prompt: str) -> str:
    """The half of the prompt space a prompt belongs to: ``"rl"`` or ``"warmup"``.

    The split is by the parity of the content hash (``problem_id``), like a hash-based dataset
    split: the RL train and test sets are drawn from the ``"rl"`` half and the supervised warm
    start from the ``"warmup"`` half, so they are disjoint for every seed and level mixture.
    """
    return "warmup" if int(problem_id(prompt), 16) % 2 else "rl"


def generate_problems(
    n: int,
    seed: int,
    *,
    level_weights: Mapping[int, float] | None = None,
    pool: str = "rl",
    exclude: Iterable[str] = (),
) -> list[AdditionProblem]:
    """Draw ``n`` distinct problems from one ``pool``, deterministically for a given ``seed``.

    Each problem's level is drawn from ``level_weights`` (default ``LEVEL_WEIGHTS``), then its
    operands from ``sample_problem``. A prompt outside ``pool`` (see ``prompt_pool``), already
    drawn, or listed in ``exclude`` (prompt strings, e.g. another split) is rejected and redrawn,
    so splits built with ``exclude`` are disjoint. Uses its own ``random.Random(seed)``; the
    global random state is untouched.

    Raises ValueError when the levels cannot supply ``n`` new prompts (e.g. asking for 5,000
    problems of level 1, whose 1,800 prompts are split between the two pools).
    """
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; expected one of {POOLS}")
    weights = dict(LEVEL_WEIGHTS if level_weights is None else level_weights)
    unknown = set(weights) - set(LEVELS)
    if unknown:
        raise ValueError(f"unknown levels {sorted(unknown)}; known levels: {sorted(LEVELS)}")
    rng = random.Random(seed)
    levels, probs = list(weights), list(weights.values())
    seen = set(exclude)
    problems: list[AdditionProblem] = []
    max_draws = 100 * n + 1000
    for _ in range(max_draws):
        if len(problems) == n:
            break
        problem = sample_problem(rng, rng.choices(levels, probs)[0])
        if prompt_pool(problem.prompt) == pool and problem.prompt not in seen:
            seen.add(problem.prompt)
            problems.append(problem)
    if len(problems) < n:
        raise ValueError(f"found only {len(problems)} new distinct prompts of {n} requested")
    return problems


def save_problems(problems: Iterable[AdditionProblem], path: str | Path) -> None:
    """Write problems as JSON lines (one object per problem, keys as in ``Problem``)."""
    with open(path, "w", encoding="utf-8") as f:
        for problem in problems:
            f.write(json.dumps(asdict(problem)) + "\n")


def data_folder(data: str | Path | None) -> Path:
    """The folder of an arith data set: ``data`` itself, or the folder of a split file given instead.

    The arith data are one folder of ``train.jsonl`` / ``validation.jsonl`` / ``test.jsonl``; a path to
    one of those files (``--data-dir data/arith/train.jsonl``) stands for its folder, so every split
    comes from beside it. Any other file is refused with a UserError saying what the folder must hold.
    """
    if data is None or str(data) == "":
        return DEFAULT_DATA_DIR
    p = Path(data).expanduser()
    if p.is_file():
        if p.name in {f"{s}.jsonl" for s in SPLITS}:
            return p.parent
        raise UserError(f"arith data {str(p)!r} is a file; the arith task reads a folder holding "
                        f"{', '.join(s + '.jsonl' for s in SPLITS)} (a path to one of those files stands for "
                        "its folder): put the problems in a folder as train.jsonl and pass that folder")
    return p


def load_problems(split: str, data_dir: str | Path | None = None) -> list[AdditionProblem]:
    """Load ``train``, ``validation`` or ``test`` problems from ``<data_dir>/<split>.jsonl``, checking every line.

    ``data_dir`` defaults to ``DEFAULT_DATA_DIR`` (the repository's ``data/arith``); a path to one of
    the split files stands for its folder (:func:`data_folder`). The order of the file is kept; the
    trainer addresses prompts by their position in this list.

    Each line must be a JSON object with exactly the fields of :class:`Problem`; its ``id`` must be
    ``problem_id(prompt)``, its prompt the operands joined by ``+`` and its answer their sum in
    canonical form; its level's digit counts must be those of the operands (``LEVELS``). A duplicate
    prompt, or a prompt shared with an earlier split of the same folder (validation with train; test
    with train or validation), is an error. Every error is a UserError naming the file and the line,
    and quotes what it found cut to about 200 characters (a bad 1 MB line is not echoed in full).
    """
    if split not in SPLITS:
        raise UserError(f"unknown split {shorten(split, 80)}; the arith task's splits are {SPLITS}")
    folder = data_folder(data_dir)
    path = folder / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no {split} problems at {path}; an arith data folder holds "
                                f"{', '.join(s + '.jsonl' for s in SPLITS)} (`python scripts/build_tiny_model.py "
                                "--seed 0 --out data` writes the bundled ones)")
    fields = [f.name for f in fields_of(AdditionProblem)]
    problems, first_line = [], {}
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            where = f"{path}:{n}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise UserError(f"{where}: not UTF-8 text ({err.reason} at byte {err.start})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{where}: not valid JSON ({err.msg} at column {err.colno}; the line is "
                                f"{len(line)} characters: {shorten(line.rstrip(), 120)})") from None
            except ValueError as err:  # e.g. an integer longer than Python's 4300-digit limit
                raise UserError(f"{where}: not readable ({shorten(str(err), 120)})") from None
            if not isinstance(row, dict):
                raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
            for key in fields:
                if key not in row:
                    raise UserError(f"{where}: missing field {key!r}")
            for key in row:
                if key not in fields:
                    raise UserError(f"{where}: unknown field {shorten(key, 80)} (fields: {fields})")
            problems.append(_checked_problem(row, where))
            prompt = problems[-1].prompt
            if prompt in first_line:
                raise UserError(f"{where}: duplicate prompt {shorten(prompt)} (first on line {first_line[prompt]})")
            first_line[prompt] = n
    for other in SPLITS[: SPLITS.index(split)]:  # held-out prompts must not be trained (or tuned) on
        if not (folder / f"{other}.jsonl").is_file():
            continue
        other_prompts = {p.prompt for p in load_problems(other, folder)}
        for p in problems:
            if p.prompt in other_prompts:
                raise UserError(f"{path}:{first_line[p.prompt]}: prompt {shorten(p.prompt)} is also in "
                                f"{other}.jsonl (the splits must be disjoint)")
    return problems


def _checked_problem(row: dict, where: str) -> AdditionProblem:
    """A AdditionProblem from a JSON row whose id, prompt, answer, level and derived fields agree (UserError otherwise)."""
    ops = row["operands"]
    if not (isinstance(ops, list) and len(ops) >= 2 and all(type(x) is int and x >= 0 for x in ops)):
        raise UserError(f"{where}: operands must be a list of >= 2 non-negative integers, got {shorten(ops)}")
    level = row["level"]
    if type(level) is not int or level not in LEVELS:
        raise UserError(f"{where}: unknown level {shorten(level, 40)}; known levels: {sorted(LEVELS)}")
    digits = sorted((len(str(x)) for x in ops), reverse=True)
    if digits != sorted(LEVELS[level], reverse=True):
        raise UserError(f"{where}: level {level} means operands of {LEVELS[level]} digits, but the operands "
                        f"{shorten(ops, 120)} have {tuple(digits)}")
    if not isinstance(row["answer"], str) or not _CANONICAL_INTEGER.fullmatch(row["answer"]):
        raise UserError(f"{where}: answer {shorten(row['answer'])} is not a canonical integer")
    expected = make_problem(ops, level)
    if row["prompt"] != expected.prompt:
        raise UserError(f"{where}: prompt {shorten(row['prompt'])} does not match the operands {shorten(ops, 120)}")
    if row["answer"] != expected.answer:
        raise UserError(f"{where}: answer {shorten(row['answer'])} is not the sum of {ops} ({expected.answer})")
    if row["id"] != expected.id:
        raise UserError(f"{where}: id {shorten(row['id'], 60)} does not match the prompt's content id {expected.id!r}")
    if (row["n_digits"], row["n_carries"]) != (expected.n_digits, expected.n_carries):
        raise UserError(f"{where}: n_digits / n_carries {shorten(row['n_digits'], 40)}, "
                        f"{shorten(row['n_carries'], 40)} disagree with the operands "
                        f"({expected.n_digits}, {expected.n_carries})")
    return expected


def parse_answer(completion: str) -> int | None:
    """The integer a completion starts with, or ``None`` when it does not start with one.

    Rule: skip leading whitespace, then read ``-?[0-9]+`` greedily; the rest is ignored. The
    number must be canonical -- no leading zeros (``"0"`` is fine, ``"07"`` and ``"-0"`` are
    not), no ``+`` sign, ASCII digits only, at most ``MAX_ANSWER_DIGITS`` digits -- otherwise the
    completion is malformed and the result is ``None``.

    >>> parse_answer("405"), parse_answer(" 405=junk"), parse_answer("0405"), parse_answer("")
    (405, 405, None, None)
    """
    match = _LEADING_INTEGER.match(completion)
    if match is None:
        return None
    text = match.group(1)
    digits = text.lstrip("-")
    if len(digits) > MAX_ANSWER_DIGITS or (digits.startswith("0") and text != "0"):
        return None
    return int(text)


def reward(completion: str, answer: str) -> float:
    """Binary verifiable reward: 1.0 iff ``parse_answer(completion) == int(answer)``, else 0.0.

    ``completion`` is the generated text after the prompt with special tokens removed; any string
    is accepted (a non-string completion earns 0.0). ``answer`` is a ``Problem.answer``.
    """
    if not isinstance(completion, str):
        return 0.0
    parsed = parse_answer(completion)
    return float(parsed is not None and parsed == int(answer))


class ArithTask:
    """Graded addition behind the task protocol (:mod:`spo_lab.tasks.base`).

    Args:
        data: folder with ``train.jsonl`` / ``validation.jsonl`` / ``test.jsonl`` (default: the bundled
            ``data/arith``), or one of those files, which stands for its folder.
        tokenizer: accepted for the protocol's sake and unused: prompts are plain text, no template.
    """

    name = "arith"
    breakdown_key = "level"
    group_key = breakdown_key  # the old name, kept for one release
    splits = SPLITS
    """What ``load`` accepts: checked against ``--eval-split`` before the model loads."""

    def __init__(self, data: str | Path | None = None, *, tokenizer=None):
        self.data_dir = data_folder(data)

    def load(self, split: str) -> list[AdditionProblem]:
        return load_problems(split, self.data_dir)

    def reward(self, completions, problems) -> list[float]:
        """1.0 where a completion's answer is the sum, else 0.0; one per completion."""
        return [reward(c, p.answer) for c, p in zip(completions, problems, strict=True)]

    score = reward  # the old name, kept for one release

    def extract(self, completion: str) -> int | None:
        return parse_answer(completion) if isinstance(completion, str) else None

    def __repr__(self) -> str:
        return f"ArithTask(data_dir={str(self.data_dir)!r})"
