"""The competition-maths task of the paper: DAPO-Math-17k to train, five AIME-style benchmarks to test.

the SPO paper: the official run trains Qwen3-8B on ``open-r1/DAPO-Math-17k-Processed`` (config
``en``, ~14.1k prompts), the answer in ``\\boxed{}`` and a binary reward, and reports maj@32 on
AIME 24 (``Maxwell-Jia/AIME_2024``), AIME 25 (``yentinglin/aime_2025``), BeyondAIME
(``ByteDance-Seed/BeyondAIME``), BRUMO 25 (``MathArena/brumo_2025``) and HMMT 25
(``MathArena/hmmt_feb_2025``). Everything is read through the real ``datasets`` library:
``datasets.load_dataset(hub_id, config, split=...)`` on a connected machine, or the same call on a
local folder laid out like the hub repository, ``load_dataset("parquet"|"json"|"csv",
data_files=...)`` for a single file, ``load_from_disk`` for a ``save_to_disk`` folder. Any loader
takes a local path in place of the hub id (``data/math-fixtures`` holds small synthetic stand-ins
in each dataset's exact schema).

Training rows come in three schemas, told apart by their columns:

- processed (``open-r1/DAPO-Math-17k-Processed``): ``prompt`` (str), ``solution`` (the answer),
  ``data_source``, ``source_prompt``, ``ability``, ``reward_model``, ``extra_info``;
- raw (``BytedTsinghua-SIA/DAPO-Math-17k``, ~1.79 M rows, mostly repeats): ``prompt`` as a chat
  list ``[{"role", "content"}]``, ``reward_model = {"ground_truth", "style"}``,
  ``extra_info = {"index"}``, ``data_source``, ``ability``;
- generic: ``problem`` and ``answer`` (plus optional ``source``).

DAPO's prompts wrap the problem in an instruction to end with ``Answer: $Answer``; it is removed
(:func:`strip_dapo_instruction`) so every problem is keyed by its bare text: the id is
``content_id(problem, answer)``, rows with an id already seen are dropped and counted
(:class:`DedupStats`), so the processed and the raw set give the same ids.

Prompts (:func:`format_prompt`): ``style="boxed"`` (default) asks to reason step by step and put the
final answer in ``\\boxed{}``; ``style="official"`` reproduces the SPO recipe (``spo_retool.py``):
the DAPO prompt as stored (wrapper included) plus ``"\\nThe answer format must be:
\\boxed{'The final answer goes here.'}"``; ``style="tool"`` (the trainer's ``--tool python``) puts the
recipe's tool instruction (:data:`TOOL_INSTRUCTION`, paraphrased) before the problem, and its reward scores
only the answer after the reasoning (:func:`tool_answer_text`). The user message goes through the tokenizer's chat
template (``add_generation_prompt=True``, ``enable_thinking=thinking`` for Qwen3); a tokenizer
without a chat template (the bundled tiny Qwen3) gets a plain ``Problem: ... Solution:`` text.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from .arith_tool import TOOL_TAGS
from .base import Problem, content_id
from .math_reward import extract_answer, math_dapo_extract, math_dapo_reward, score_batch

__all__ = [
    "MathTask", "MathRow", "DedupStats", "BENCHMARKS", "TRAIN_SOURCES", "load_training_rows",
    "load_benchmark", "load_benchmark_rows", "format_prompt", "strip_dapo_instruction", "load_hf",
]

log = logging.getLogger(__name__)

TRAIN_SOURCES = {"dapo": "open-r1/DAPO-Math-17k-Processed", "dapo-raw": "BytedTsinghua-SIA/DAPO-Math-17k"}
"""Short names for the training sets; any other string is a hub id or a local path."""


@dataclass(frozen=True)
class BenchmarkSpec:
    hub_id: str
    split: str
    problem: str
    answer: str
    id: str | None  # the benchmark's own id column, kept in meta; None: the row number


BENCHMARKS: dict[str, BenchmarkSpec] = {
    "aime24": BenchmarkSpec("Maxwell-Jia/AIME_2024", "train", "Problem", "Answer", "ID"),
    "aime25": BenchmarkSpec("yentinglin/aime_2025", "train", "problem", "answer", "id"),
    "beyondaime": BenchmarkSpec("ByteDance-Seed/BeyondAIME", "test", "problem", "answer", None),
    "brumo25": BenchmarkSpec("MathArena/brumo_2025", "train", "problem", "answer", "problem_idx"),
    "hmmt25": BenchmarkSpec("MathArena/hmmt_feb_2025", "train", "problem", "answer", "problem_idx"),
}
"""The paper's five test sets: name -> hub id, split and the columns used."""

STYLES = ("boxed", "official", "tool")
"""Prompt styles (:func:`format_prompt`)."""

DAPO_PREFIX = ("Solve the following math problem step by step. The last line of your response should be of "
               "the form Answer: $Answer (without quotes) where $Answer is the answer to the problem.")
DAPO_SUFFIX = 'Remember to put your answer on its own line after "Answer:".'
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
OFFICIAL_ANSWER_FORMAT = "\nThe answer format must be: \\boxed{'The final answer goes here.'}"
TOOL_INSTRUCTION = (
    "Solve the problem below, reasoning step by step. When a computation is easier in code, you may write a "
    "complete, self-contained Python program between <code> and </code>. It runs in a sandbox that remembers "
    "nothing between calls, and what it prints comes back to you between <interpreter> and </interpreter>. Use "
    "the tool where it helps, not for every step. End with the final answer within \\boxed{}, after your "
    "reasoning and outside any code.\n\nProblem: ")
"""``style="tool"``: the recipe's instruction for tool use (ReTool), in our own words, put before the problem."""


@dataclass(frozen=True)
class MathRow:
    """One problem before templating: ``id = content_id(problem, answer)``; ``raw_prompt`` is the
    prompt text as the dataset stores it (DAPO's instruction wrapper included)."""

    id: str
    problem: str
    answer: str
    source: str
    raw_prompt: str
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DedupStats:
    """How many rows were read, kept, skipped for a missing problem or answer, and dropped as
    repeats of an earlier (problem, answer)."""

    rows: int
    kept: int
    missing: int = 0

    @property
    def dropped(self) -> int:
        return self.rows - self.kept - self.missing


# ----------------------------------------------------------------------------- reading
class DataColumnError(UserError, KeyError):
    """A data file without the columns its schema needs: a KeyError (a missing key) that reads as a message."""

    __str__ = BaseException.__str__  # KeyError's own would quote the whole message


def load_hf(source: str | Path, *, config: str | None = None, split: str = "train", cache_dir: str | None = None):
    """A ``datasets.Dataset`` from a hub id or a local path (file, repo-like folder, save_to_disk folder).

    A local folder with a sub-folder named ``config`` is read from there (the hub repos keep each
    config in its own folder: ``en/train-00000-of-00001.parquet``).
    """
    import datasets

    p = Path(source).expanduser()
    if p.is_file():
        kind = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}.get(p.suffix.lower())
        if kind is None:
            raise UserError(f"{p}: unsupported file type {p.suffix!r}; use .parquet, .jsonl, .json or .csv")
        call = lambda: datasets.load_dataset(kind, data_files={split: str(p)}, split=split, cache_dir=cache_dir)  # noqa: E731
    elif p.is_dir() and ((p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists()):
        def call():
            ds = datasets.load_from_disk(str(p))
            return ds[split] if isinstance(ds, datasets.DatasetDict) else ds
    elif p.is_dir():
        folder = p / config if config and (p / config).is_dir() else p
        call = lambda: datasets.load_dataset(str(folder), split=split, cache_dir=cache_dir)  # noqa: E731
    elif str(source).startswith((".", "/", "~")) or p.suffix in (".parquet", ".jsonl", ".json", ".csv"):
        raise FileNotFoundError(f"no such file or folder: {source}")
    else:
        call = lambda: datasets.load_dataset(str(source), config, split=split, cache_dir=cache_dir)  # noqa: E731
    try:
        return call()
    except ConnectionError as e:
        raise ConnectionError(f"could not reach the Hugging Face hub for {source!r}; pass a local path "
                              f"(a folder or a .parquet/.jsonl file) instead. ({e})") from e
    except ValueError as e:  # e.g. an unknown split or config
        raise UserError(f"could not load {source} (config={config}, split={split}): {e}") from e


def _require(ds, columns: Iterable[str], where) -> None:
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise DataColumnError(f"{where}: missing column(s) {missing}; the file has columns {ds.column_names}")


def _rows(ds, columns: Sequence[str], batch_size: int = 20_000):
    """Dicts with only ``columns``, streamed in batches (the raw DAPO set has 1.79 M rows)."""
    for batch in ds.select_columns(list(columns)).iter(batch_size=batch_size):
        for values in zip(*(batch[c] for c in columns)):
            yield dict(zip(columns, values))


def strip_dapo_instruction(text: str) -> str:
    """The bare problem inside a DAPO prompt (its ``Answer:`` instruction wrapper removed, if present)."""
    t = text.strip()
    if t.startswith(DAPO_PREFIX):
        t = t[len(DAPO_PREFIX):]
    if t.endswith(DAPO_SUFFIX):
        t = t[: -len(DAPO_SUFFIX)]
    return t.strip()


def _user_content(prompt) -> str | None:
    """The text of a chat prompt's first user message (None if it has none)."""
    if isinstance(prompt, str):
        return prompt
    for message in prompt or []:
        if isinstance(message, Mapping) and message.get("role", "user") == "user":
            return message.get("content")
    return None


def load_training_rows(source: str | Path = "dapo", *, config: str | None = None, split: str = "train",
                       cache_dir: str | None = None) -> tuple[list[MathRow], DedupStats]:
    """Read a training set (processed, raw or generic schema) and drop repeated (problem, answer) rows.

    ``source``: ``"dapo"``, ``"dapo-raw"``, a hub id or a local path. ``config``: the processed set's
    ``"en"`` (the paper's; the default for it and for a local folder with an ``en/`` sub-folder),
    ``"cn"`` or ``"all"``; passed as is to any other hub id; ignored for ``"dapo-raw"``. Returns the
    rows in first-seen order and the :class:`DedupStats` (also logged).
    """
    where = TRAIN_SOURCES.get(str(source), source)
    if config is None and (where == TRAIN_SOURCES["dapo"] or Path(where).is_dir()):
        config = "en"
    if where == TRAIN_SOURCES["dapo-raw"]:
        config = None
    ds = load_hf(where, config=config, split=split, cache_dir=cache_dir)
    cols = set(ds.column_names)
    if "solution" in cols and "prompt" in cols:  # processed
        need, get = ["prompt", "solution"], lambda r: (r["prompt"], r["solution"])
    elif "reward_model" in cols and "prompt" in cols:  # raw
        need, get = ["prompt", "reward_model"], lambda r: (_user_content(r["prompt"]), (r["reward_model"] or {}).get("ground_truth"))
    elif "problem" in cols and "answer" in cols:  # generic
        need, get = ["problem", "answer"], lambda r: (r["problem"], r["answer"])
    else:
        raise DataColumnError(f"{where}: cannot tell the schema; need columns (prompt, solution) [processed], "
                       f"(prompt, reward_model) [raw] or (problem, answer); the file has {ds.column_names}")
    extra = [c for c in ("data_source", "source", "extra_info") if c in cols]
    seen: set[str] = set()
    seen_raw: set[tuple[str, str]] = set()  # cheap first filter: the raw set repeats rows verbatim
    out: list[MathRow] = []
    n = missing = 0
    for r in _rows(ds, need + extra):
        n += 1
        raw_prompt, answer = get(r)
        if raw_prompt is None or answer is None:
            missing += 1
            continue
        raw_prompt, answer = str(raw_prompt), str(answer).strip()
        if (raw_prompt, answer) in seen_raw:
            continue
        seen_raw.add((raw_prompt, answer))
        problem = strip_dapo_instruction(raw_prompt)
        pid = content_id(problem, answer)
        if pid in seen:
            continue
        seen.add(pid)
        info = r.get("extra_info") if isinstance(r.get("extra_info"), Mapping) else {}
        src = str(r.get("data_source") or r.get("source") or "train")
        out.append(MathRow(pid, problem, answer, src, raw_prompt,
                           {"source": src, **({"index": info["index"]} if info.get("index") is not None else {})}))
    stats = DedupStats(rows=n, kept=len(out), missing=missing)
    log.info("%s: %d rows, %d unique (problem, answer), %d duplicates dropped, %d without problem or answer",
             where, n, stats.kept, stats.dropped, missing)
    return out, stats


def load_benchmark_rows(name: str, *, path: str | Path | None = None, cache_dir: str | None = None) -> list[dict]:
    """One benchmark in the common schema: dicts with ``id``, ``problem``, ``answer`` (str), ``source``.

    ``id`` is ``content_id(problem, answer)``; ``orig_id`` keeps the benchmark's own id. ``path``
    replaces the hub id with a local copy.
    """
    if name not in BENCHMARKS:
        raise UserError(f"unknown benchmark {name!r}; known benchmarks: {sorted(BENCHMARKS)}")
    spec = BENCHMARKS[name]
    where = path if path is not None else spec.hub_id
    ds = load_hf(where, split=spec.split, cache_dir=cache_dir)
    need = [spec.problem, spec.answer] + ([spec.id] if spec.id else [])
    _require(ds, need, where)
    out = []
    for i, r in enumerate(_rows(ds, need)):
        problem, answer = str(r[spec.problem]).strip(), str(r[spec.answer]).strip()
        out.append({"id": content_id(problem, answer), "problem": problem, "answer": answer, "source": name,
                    "orig_id": str(r[spec.id]) if spec.id else str(i)})
    return out


# ----------------------------------------------------------------------------- prompts
def _has_chat_template(tokenizer) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def format_prompt(problem: str, *, tokenizer=None, thinking: bool = False, style: str = "boxed",
                  raw_prompt: str | None = None) -> str:
    """The exact text the policy continues (see the module docstring for the two styles).

    With a chat template: ``tokenizer.apply_chat_template([{"role": "user", "content": msg}],
    tokenize=False, add_generation_prompt=True, enable_thinking=thinking)``. Without one:
    ``"Problem: {msg}\\nSolution:"`` (``"{msg}\\nSolution:"`` for the tool style, whose text already says
    ``Problem:``).
    """
    if style == "boxed":
        msg = f"{problem}\n\n{BOXED_INSTRUCTION}"
    elif style == "official":
        msg = (raw_prompt if raw_prompt is not None else problem) + OFFICIAL_ANSWER_FORMAT
    elif style == "tool":
        msg = TOOL_INSTRUCTION + problem
    else:
        raise UserError(f"unknown prompt style {style!r}; known styles: {list(STYLES)}")
    if _has_chat_template(tokenizer):
        return tokenizer.apply_chat_template([{"role": "user", "content": msg}], tokenize=False,
                                             add_generation_prompt=True, enable_thinking=thinking)
    return f"{msg}\nSolution:" if style == "tool" else f"Problem: {msg}\nSolution:"  # the tool's text names the problem


def tool_answer_text(completion, *, thinking: bool = False) -> str | None:
    """The part of a tool-using response that may hold its final answer, by the recipe's rules, or None (reward 0).

    After the reasoning: in thinking mode the text after the response's one ``</think>`` (none, or two, is
    None), otherwise the text after the last ``</interpreter>`` (the whole response without a tool call). A
    tool tag in that part is None: an answer inside code or a tool output does not count, and a response
    that ended inside a tool turn has no answer.
    """
    if not isinstance(completion, str):
        return None
    if thinking:
        if completion.count("</think>") != 1:
            return None
        tail = completion.split("</think>", 1)[1]
    else:
        cut = completion.rfind("</interpreter>")
        tail = completion if cut < 0 else completion[cut + len("</interpreter>"):]
    return None if any(tag in tail for tag in TOOL_TAGS) else tail


def load_benchmark(name: str, *, path: str | Path | None = None, tokenizer=None, thinking: bool = False,
                   style: str = "boxed", cache_dir: str | None = None) -> list[Problem]:
    """A benchmark as :class:`~spo_lab.tasks.base.Problem` s with ``meta = {"source": name, "orig_id": ...}``."""
    return [Problem(r["id"], format_prompt(r["problem"], tokenizer=tokenizer, thinking=thinking, style=style),
                    r["answer"], {"source": name, "orig_id": r["orig_id"]})
            for r in load_benchmark_rows(name, path=path, cache_dir=cache_dir)]


# ----------------------------------------------------------------------------- the task
def _holdout_rank(pid: str) -> str:
    return hashlib.sha1(("spo_lab/math/validation:" + pid).encode("utf-8")).hexdigest()


class MathTask:
    """DAPO-Math training problems, a held-out validation slice and the paper's benchmarks.

    Args:
        data: the training set: ``"dapo"`` (processed, the paper's; also when None), ``"dapo-raw"``, a hub
            id or a local path (the trainer's ``--data-dir``).
        tokenizer: applies its chat template to every prompt (None or no template: plain text).
        thinking: Qwen3 thinking mode (``enable_thinking``); with ``reward="math_dapo"`` it also
            turns on the recipe's exactly-one-``</think>`` rule.
        config: the processed set's config, ``"en"`` (paper; what None means), ``"cn"`` or ``"all"``.
        reward: ``"math-verify"`` (:func:`~spo_lab.tasks.math_reward.math_reward`, default) or
            ``"math_dapo"`` (the official recipe's strict checker).
        validation_size: problems held out of ``train`` as ``validation``: the ones with the
            smallest sha1 of their id, so the split is deterministic and independent of row order.
            An int, or a fraction in (0, 1); at most half the rows.
        test: benchmark name(s) that ``load("test")`` returns, concatenated (default all five).
        benchmark_paths: name -> local path, replacing the hub ids.
        style: prompt style, ``"boxed"``, ``"official"`` or ``"tool"`` (:func:`format_prompt`); ``"tool"`` also
            scores only the answer after the reasoning, with no tool tags in it (:func:`tool_answer_text`).
        timeout, workers: for the math-verify checker (:func:`~spo_lab.tasks.math_reward.score_batch`).

    ``load(split)``: ``"train"``, ``"validation"``, ``"test"`` or a benchmark name. Problems carry
    ``meta["source"]`` (the benchmark name, or the training row's ``data_source``), the
    ``breakdown_key`` of per-group metrics. ``dedup_stats`` says how many training rows were repeats.
    """

    name = "math"
    breakdown_key = "source"
    group_key = breakdown_key  # the old name, kept for one release
    splits = ("train", "validation", "test", *BENCHMARKS)
    tool_kwargs = {"style": "tool"}
    """What the trainer builds the task with under ``--tool python``: the tool prompt and its reward rules."""
    """What ``load`` accepts: checked against ``--eval-split`` before the model loads."""

    def __init__(self, data: str | Path | None = "dapo", *, tokenizer=None, thinking: bool = False, config: str | None = None,
                 reward: str = "math-verify", validation_size: int | float = 256,
                 test: str | Sequence[str] = tuple(BENCHMARKS), benchmark_paths: Mapping[str, str | Path] | None = None,
                 style: str = "boxed", timeout: float = 5.0, workers: int | None = None,
                 cache_dir: str | None = None):
        if reward not in ("math-verify", "math_dapo"):
            raise UserError(f"unknown reward {reward!r}; known rewards: ['math-verify', 'math_dapo']")
        if reward == "math-verify" and importlib.util.find_spec("math_verify") is None:
            raise ImportError("reward='math-verify' needs the math-verify package: pip install 'math-verify>=0.8'")
        if style not in STYLES:
            raise UserError(f"unknown prompt style {style!r}; known styles: {list(STYLES)}")
        tests = [test] if isinstance(test, str) else list(test)
        for b in [*tests, *(benchmark_paths or {})]:
            if b not in BENCHMARKS:
                raise UserError(f"unknown benchmark {b!r}; known benchmarks: {sorted(BENCHMARKS)}")
        if isinstance(validation_size, bool) or not isinstance(validation_size, (int, float)) or not (
                isinstance(validation_size, int) and validation_size >= 0 or 0 < validation_size < 1):
            raise UserError(f"validation_size must be an int >= 0 or a fraction in (0, 1), got {validation_size!r}")
        self.source, self.config, self.checker, self.style = data or "dapo", config, reward, style
        self.tokenizer, self.thinking, self.timeout, self.workers = tokenizer, thinking, timeout, workers
        self.validation_size, self.test, self.cache_dir = validation_size, tests, cache_dir
        self.benchmark_paths = dict(benchmark_paths or {})
        self.dedup_stats: DedupStats | None = None
        self._splits: dict[str, list[MathRow]] | None = None

    def prompt(self, row: MathRow) -> str:
        return format_prompt(row.problem, tokenizer=self.tokenizer, thinking=self.thinking, style=self.style,
                             raw_prompt=row.raw_prompt)

    def _train_splits(self) -> dict[str, list[MathRow]]:
        if self._splits is None:
            rows, self.dedup_stats = load_training_rows(self.source, config=self.config, cache_dir=self.cache_dir)
            k = self.validation_size if isinstance(self.validation_size, int) else round(self.validation_size * len(rows))
            if k > len(rows) // 2:
                log.warning("validation_size %s > half of %d rows; using %d", self.validation_size, len(rows), len(rows) // 2)
                k = len(rows) // 2
            held = set(sorted((r.id for r in rows), key=_holdout_rank)[:k])
            self._splits = {"train": [r for r in rows if r.id not in held],
                            "validation": [r for r in rows if r.id in held]}
        return self._splits

    def load(self, split: str) -> list[Problem]:
        if split in ("train", "validation"):
            return [Problem(r.id, self.prompt(r), r.answer, dict(r.meta)) for r in self._train_splits()[split]]
        names = self.test if split == "test" else [split] if split in BENCHMARKS else None
        if names is None:
            raise UserError(f"unknown split {split!r}; known splits: ['train', 'validation', 'test', "
                             f"{', '.join(repr(b) for b in BENCHMARKS)}]")
        out: list[Problem] = []
        for b in names:
            out += load_benchmark(b, path=self.benchmark_paths.get(b), tokenizer=self.tokenizer,
                                  thinking=self.thinking, style=self.style, cache_dir=self.cache_dir)
        return out

    def reward(self, completions: Sequence[str], problems: Sequence) -> list[float]:
        """Binary rewards, one per completion (``problems[i].answer`` is the gold answer)."""
        if len(completions) != len(problems):
            raise ValueError(f"{len(completions)} completions but {len(problems)} problems")
        golds = [p.answer for p in problems]
        if self.style == "tool":  # the answer after the reasoning, no tool tags in it; the rest scores that part
            tails = [tool_answer_text(c, thinking=self.thinking) for c in completions]
            keep = [i for i, t in enumerate(tails) if t is not None]
            scored = (MathTask.reward(self._untooled(), [tails[i] for i in keep], [problems[i] for i in keep])
                      if keep else [])
            out = [0.0] * len(completions)
            for i, r in zip(keep, scored):
                out[i] = r
            return out
        if self.checker == "math_dapo":
            return [math_dapo_reward(c, g, require_think_close=self.thinking) for c, g in zip(completions, golds)]
        return score_batch(completions, golds, timeout=self.timeout, workers=self.workers)

    score = reward  # the old name, kept for one release

    def _untooled(self) -> "MathTask":
        """This task's checker on the answer part alone (the ``</think>`` rule already applied by the tool rules)."""
        twin = object.__new__(MathTask)
        twin.__dict__.update(self.__dict__, style="boxed", thinking=False)
        return twin

    def extract(self, completion: str) -> Hashable | None:
        """The final answer maj@k votes over: the normalised last boxed answer (math-verify reward) or
        the recipe's strict extraction (math_dapo); None without one (with the tool: from the answer part only)."""
        if self.style == "tool":
            completion = tool_answer_text(completion, thinking=self.thinking)
            if completion is None:
                return None
        if self.checker == "math_dapo":
            return math_dapo_extract(completion)
        return extract_answer(completion)
