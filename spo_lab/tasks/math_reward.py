"""Binary rewards for competition maths: is the last ``\\boxed{...}`` of a completion the gold answer?

Two checkers, both returning 1.0 or 0.0:

- :func:`math_reward` (default of :class:`spo_lab.tasks.math.MathTask`): the forgiving one. The LAST
  ``\\boxed{...}`` (also ``\\boxed {...}`` and ``\\fbox{...}``; nested braces handled) is compared
  with the gold answer by mathematical equality. Plain numbers (integers, decimals, ``\\frac{a}{b}``,
  ``a/b``) are compared exactly with :class:`fractions.Fraction` in this process, no subprocess;
  anything else goes to ``math_verify.parse`` / ``math_verify.verify`` (both sides wrapped in
  ``\\boxed{}``) in a separate worker PROCESS with a hard wall-clock timeout: math-verify's own
  timeouts use ``SIGALRM``, which only works in a main thread, and an expression such as
  ``10^{10^{10^{10}}}`` can keep sympy busy for minutes. A check that runs past ``timeout`` scores
  0, its worker is killed and replaced. Results (timeouts included) are memoised per
  (answer, gold) pair, so a policy that repeats a pathological answer pays the timeout once.
- :func:`math_dapo_reward`: **the official recipe's strict checker**, a re-implementation of verl's
  ``verl/utils/reward_score/math_dapo.py`` as the SPO recipe calls it (``spo_retool.compute_score``:
  ``math_dapo.compute_score(..., strict_box_verify=True)``, -1 mapped to 0, and 0 unless the
  response holds exactly one ``</think>``). Strict mode looks only at the last 100 characters,
  takes the last ``\\boxed{`` there and requires its content to equal the gold string exactly.

Neither raises on any input: a non-string, empty, huge or malformed completion scores 0.0. (The
symbolic path raises :class:`ImportError` if ``math-verify`` is not installed: an environment
problem, not an input.) :func:`score_batch` scores many pairs at once, plain numbers inline and the
rest concurrently on a small pool of worker processes shared by every caller and thread.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import re
import subprocess
import sys
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from numbers import Rational

__all__ = [
    "math_reward", "math_dapo_reward", "score_batch", "last_boxed", "normalize_answer", "extract_answer",
    "SymbolicPool", "default_pool", "MAX_ANSWER_CHARS",
]

log = logging.getLogger(__name__)

MAX_ANSWER_CHARS = 1000
"""A boxed answer or gold longer than this is only compared as a normalised string (never parsed)."""

# ----------------------------------------------------------------------------- extraction
_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")


def last_boxed(text) -> str | None:
    """The content of the LAST ``\\boxed{...}`` / ``\\boxed {...}`` / ``\\fbox{...}`` in ``text``.

    Nested braces are matched; the last opener decides, so an unbalanced (truncated) last box gives
    None even when an earlier box is complete. None also for non-strings and text without a box.
    """
    if not isinstance(text, str):
        return None
    last = None
    for last in _BOX_OPEN.finditer(text):
        pass
    if last is None:
        return None
    depth, start = 1, last.end()
    for i in range(start, len(text)):
        c = text[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start:i].strip()
    return None


_TEXT_CMD = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox|operatorname)\s*\{([^{}]*)\}")
_UNIT_WORDS = re.compile(r"^[A-Za-z][A-Za-z\s.\-^0-9{}]*$")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")


def normalize_answer(answer) -> str:
    """A canonical string for an answer (used for the fast path and as the maj@k voting key).

    Removes ``$``, ``\\left``/``\\right``, thin spaces, ``\\displaystyle``, degree signs, ``\\%`` and
    spaces; ``\\dfrac``/``\\tfrac`` -> ``\\frac``; drops a trailing unit or word in ``\\text{}``/
    ``\\mathrm{}`` after a number (``5 \\text{ cm}`` -> ``5``) and unwraps a lone ``\\text{yes}``;
    drops a one-letter ``x =`` prefix, a trailing full stop and thousands separators
    (``1,000`` -> ``1000``). Plain numbers become their reduced fraction (``0.5``, ``\\frac{2}{4}``
    -> ``1/2``; ``4/2`` -> ``2``).
    """
    if not isinstance(answer, str):
        if isinstance(answer, Rational) and not isinstance(answer, bool):
            return str(Fraction(answer))
        return ""
    s = answer.strip()
    s = s.strip("$").strip()
    for old, new in (("\\left", ""), ("\\right", ""), ("\\displaystyle", ""), ("\\dfrac", "\\frac"),
                     ("\\tfrac", "\\frac"), ("^{\\circ}", ""), ("^\\circ", ""), ("\\%", ""), ("%", ""),
                     ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\:", ""), ("\\ ", " "), ("{,}", ","),
                     ("\\$", "")):
        s = s.replace(old, new)
    # a trailing unit / word after some maths: "5 \text{ cm}" -> "5"
    m = re.fullmatch(r"(.*?\S)\s*\\(?:text|textrm|mathrm|mbox)\s*\{([^{}]*)\}\s*", s, flags=re.S)
    if m and _UNIT_WORDS.match(m.group(2).strip() or "x"):
        s = m.group(1)
    s = _TEXT_CMD.sub(lambda mm: mm.group(1), s)
    s = re.sub(r"^[A-Za-z]\s*=\s*(?=\S)", "", s)
    s = re.sub(r"\s+", "", s).rstrip(".")
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    f = as_fraction(s)
    return str(f) if f is not None else s


_INT = re.compile(r"[+-]?\d+")
_DEC = re.compile(r"[+-]?(\d+\.\d*|\.\d+)")
_FRAC = re.compile(r"([+-]?)\\frac\{([+-]?\d+)\}\{([+-]?\d+)\}")
_SLASH = re.compile(r"([+-]?\d+)/([+-]?\d+)")


def as_fraction(s: str) -> Fraction | None:
    """``s`` (already normalised, no spaces) as an exact Fraction if it is a plain number, else None."""
    if not s or len(s) > 400:
        return None
    try:
        if _INT.fullmatch(s):
            return Fraction(int(s))
        if _DEC.fullmatch(s):
            return Fraction(s)
        m = _FRAC.fullmatch(s) or _SLASH.fullmatch(s)
        if m:
            sign, num, den = ("", *m.groups()) if m.re is _SLASH else m.groups()
            if int(den) == 0:
                return None
            f = Fraction(int(num), int(den))
            return -f if sign == "-" else f
    except (ValueError, ZeroDivisionError):
        return None
    return None


def extract_answer(completion) -> str | None:
    """The normalised last boxed answer of ``completion`` (the maj@k voting key), or None."""
    box = last_boxed(completion)
    return None if box is None else normalize_answer(box)


def _gold_text(gold) -> str | None:
    if isinstance(gold, Rational) and not isinstance(gold, bool):
        return str(gold)
    if not isinstance(gold, str):
        return None
    inner = last_boxed(gold) if "\\boxed" in gold or "\\fbox" in gold else None
    return (inner if inner is not None else gold).strip()


def _fast(completion, gold) -> tuple[float | None, tuple[str, str] | None]:
    """(score, None) when decidable here; (None, (pred, gold)) when a symbolic check is needed."""
    g = _gold_text(gold)
    pred = last_boxed(completion)
    if g is None or pred is None or not g or not pred:
        return 0.0, None
    pn, gn = normalize_answer(pred), normalize_answer(g)
    if pn == gn:
        return 1.0, None
    pf, gf = as_fraction(pn), as_fraction(gn)
    if pf is not None and gf is not None:
        return float(pf == gf), None
    if len(pred) > MAX_ANSWER_CHARS or len(g) > MAX_ANSWER_CHARS:
        return 0.0, None
    return None, (pred, g)


# ----------------------------------------------------------------------------- worker processes
# Runs in a fresh interpreter (``python -I -c``): stdout is the reply channel, so anything the
# libraries print is sent to stderr (discarded). Each stage also has math-verify's own SIGALRM
# timeout (this is the worker's main thread), so most slow checks end without a kill.
_WORKER_SOURCE = r"""
import json, os, sys
sys.path[:0] = json.loads(sys.argv[1])
out = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
try:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), resource.RLIM_INFINITY))
except Exception:
    pass
try:
    import logging
    logging.disable(logging.CRITICAL)
    from math_verify import parse, verify
except BaseException as e:
    out.write(json.dumps({"ready": False, "error": repr(e)}) + "\n"); out.flush(); sys.exit(0)
out.write(json.dumps({"ready": True}) + "\n"); out.flush()
golds = {}
for line in sys.stdin:
    ok = False
    try:
        req = json.loads(line)
        t = max(1, int(req["alarm"]))
        g = golds.get(req["gold"])
        if g is None:
            g = parse("\\boxed{" + req["gold"] + "}", parsing_timeout=t)
            if len(golds) >= 4096:
                golds.clear()
            golds[req["gold"]] = g
        p = parse("\\boxed{" + req["pred"] + "}", parsing_timeout=t)
        ok = bool(g) and bool(p) and bool(verify(g, p, timeout_seconds=t))
    except BaseException:
        ok = False
    out.write(json.dumps({"ok": ok}) + "\n"); out.flush()
"""

_WORKER_MEMORY_BYTES = 4 << 30


class _Worker:
    """One ``math_verify`` subprocess speaking one JSON line per request on stdin/stdout."""

    def __init__(self):
        # the parent's import path, minus any folder with a math.py that would shadow the stdlib
        paths = [p for p in sys.path if p and not os.path.exists(os.path.join(p, "math.py"))]
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _WORKER_SOURCE, json.dumps(paths), str(_WORKER_MEMORY_BYTES)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.lines: queue.Queue = queue.Queue()
        self.ready = False
        threading.Thread(target=self._pump, daemon=True, name="math-verify-reader").start()

    def _pump(self):
        try:
            for line in self.proc.stdout:
                self.lines.put(line)
        except (OSError, ValueError):
            pass
        self.lines.put(None)

    def _get(self, timeout: float):
        line = self.lines.get(timeout=timeout)
        if line is None:
            raise EOFError("math-verify worker exited")
        return json.loads(line)

    def check(self, pred: str, gold: str, timeout: float, startup_timeout: float = 120.0) -> bool:
        """True/False; raises queue.Empty on timeout, EOFError if the worker died."""
        if not self.ready:
            msg = self._get(startup_timeout)
            if not msg.get("ready"):
                raise ImportError(
                    f"math-verify is needed for symbolic answer checking but could not be imported "
                    f"by {sys.executable}: {msg.get('error')}. Install it: pip install 'math-verify>=0.8'")
            self.ready = True
        alarm = max(1, int(timeout / 3))  # three stages (parse gold, parse pred, verify)
        self.proc.stdin.write((json.dumps({"pred": pred, "gold": gold, "alarm": alarm}) + "\n").encode())
        self.proc.stdin.flush()
        return bool(self._get(timeout).get("ok"))

    def kill(self):
        try:
            self.proc.kill()
            self.proc.wait(timeout=10)
        except Exception:  # pragma: no cover - already gone
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except Exception:  # pragma: no cover
                pass


class SymbolicPool:
    """Up to ``size`` math-verify worker processes shared by all threads (thread-safe).

    :meth:`check` borrows an idle worker (starting one if fewer than ``size`` exist, else waiting),
    sends one comparison and waits at most ``timeout`` seconds for the answer; on a timeout or a
    crash the worker is killed and replaced and the check scores False. A worker's start-up
    (importing sympy, ~1-2 s) is not counted in ``timeout``.
    """

    def __init__(self, size: int = 2):
        self.size = max(1, int(size))
        self._idle: queue.LifoQueue = queue.LifoQueue()
        self._lock = threading.Lock()
        self._alive = 0
        self.timeouts = 0  # checks that ran past their timeout (the worker was killed)

    def grow(self, size: int) -> None:
        with self._lock:
            self.size = max(self.size, int(size))

    def _acquire(self) -> _Worker:
        while True:
            try:
                return self._idle.get_nowait()
            except queue.Empty:
                pass
            with self._lock:
                if self._alive < self.size:
                    self._alive += 1
                    try:
                        return _Worker()
                    except BaseException:
                        self._alive -= 1
                        raise
            try:  # wait for a worker to come back; re-check now and then in case one was lost
                return self._idle.get(timeout=1.0)
            except queue.Empty:
                continue

    def check(self, pred: str, gold: str, timeout: float = 5.0) -> bool:
        worker = self._acquire()
        try:
            ok = worker.check(pred, gold, timeout)
        except ImportError:
            worker.kill()
            with self._lock:
                self._alive -= 1
            raise
        except BaseException as e:  # timeout (queue.Empty), crash (EOFError, OSError), bad reply
            if isinstance(e, queue.Empty):
                with self._lock:
                    self.timeouts += 1
            worker.kill()
            try:
                worker = _Worker()
            except BaseException:
                with self._lock:
                    self._alive -= 1
                log.exception("could not restart a math-verify worker")
                return False
            ok = False
        self._idle.put(worker)
        return ok

    def close(self) -> None:
        """Kill the idle workers (busy ones are killed by their own timeout path or at exit)."""
        while True:
            try:
                w = self._idle.get_nowait()
            except queue.Empty:
                break
            w.kill()
            with self._lock:
                self._alive -= 1


_POOL: SymbolicPool | None = None
_POOL_LOCK = threading.Lock()


def default_pool(workers: int | None = None) -> SymbolicPool:
    """The process-wide pool (created on first use; ``workers`` can only grow it). Default size 2."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = SymbolicPool(workers or 2)
            atexit.register(_POOL.close)
        elif workers:
            _POOL.grow(workers)
        return _POOL


_CACHE: OrderedDict = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 65536


def _symbolic(pred: str, gold: str, timeout: float, pool: SymbolicPool) -> float:
    key = (pred, gold)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    score = 1.0 if pool.check(pred, gold, timeout) else 0.0
    with _CACHE_LOCK:
        _CACHE[key] = score
        if len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return score


# ----------------------------------------------------------------------------- public rewards
def math_reward(completion, gold, *, timeout: float = 5.0) -> float:
    """1.0 if the last boxed answer of ``completion`` equals ``gold`` mathematically, else 0.0.

    Plain numbers are decided exactly in-process; other answers by math-verify in a worker process,
    0.0 after ``timeout`` seconds. Never raises on any input and never hangs (see module docstring).
    """
    try:
        score, job = _fast(completion, gold)
        if job is None:
            return score
        return _symbolic(job[0], job[1], float(timeout), default_pool())
    except ImportError:
        raise
    except Exception:  # pragma: no cover - defensive: a reward must not kill a training run
        log.exception("math_reward failed; scoring 0")
        return 0.0


def score_batch(completions: Sequence, golds: Sequence, *, timeout: float = 5.0,
                workers: int | None = None) -> list[float]:
    """:func:`math_reward` for each ``(completion, gold)`` pair, symbolic checks in parallel.

    Plain-number pairs are scored inline; the distinct remaining pairs are checked concurrently on
    the shared worker pool (``workers`` processes at most; default 2). Safe to call from many
    threads at once: they share the pool and the memo.
    """
    if len(completions) != len(golds):
        raise ValueError(f"{len(completions)} completions but {len(golds)} golds")
    scores: list[float | None] = []
    jobs: dict[tuple[str, str], list[int]] = {}
    for i, (c, g) in enumerate(zip(completions, golds)):
        try:
            s, job = _fast(c, g)
        except Exception:  # pragma: no cover - defensive
            s, job = 0.0, None
        scores.append(s)
        if job is not None:
            jobs.setdefault(job, []).append(i)
    if jobs:
        pool = default_pool(workers)
        n = max(1, min(len(jobs), workers or pool.size))
        run = lambda job: _symbolic(job[0], job[1], float(timeout), pool)  # noqa: E731
        if n == 1:
            results = [run(job) for job in jobs]
        else:
            with ThreadPoolExecutor(max_workers=n, thread_name_prefix="math-reward") as ex:
                results = list(ex.map(run, jobs))
        for job, r in zip(jobs, results):
            for i in jobs[job]:
                scores[i] = r
    return [float(s) for s in scores]


# ----------------------------------------------------------------------------- math_dapo (verl)
def _dapo_last_boxed_only_string(s: str) -> str | None:
    """verl's ``last_boxed_only_string``: from the last ``\\boxed{`` to its matching brace."""
    idx = s.rfind("\\boxed{")
    if idx < 0:
        return None
    depth = 0
    for i in range(idx, len(s)):
        if s[i] == "{":
            depth += 1
        elif s[i] == "}":
            depth -= 1
            if depth == 0:
                return s[idx:i + 1]
    return None


_DAPO_REPLACE = (("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), ("\\ ", ""), (" ", ""), ("mbox", "text"),
                 (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}"))
_DAPO_DROP = ("square", "ways", "integers", "dollars", "mph", "inches", "hours", "km", "units", "\\ldots", "sue",
              "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm", "pounds", "meters", "meals",
              "edges", "students", "childrentickets", "multiples", "\\text{s}", "\\text{.}", "\\text{\ns}",
              "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}", "\\mathrm{th}", "^\\circ", "^{\\circ}", "\\;",
              ",\\!", "{,}", '"', "\\dots")


def dapo_normalize_final_answer(ans: str) -> str:
    """verl ``math_dapo.normalize_final_answer`` (Minerva/lm-eval-harness normalisation), same steps:
    keep the text after the last ``=``; the fixed substitutions and removals above; keep the first
    ``$...$``; unwrap ``\\text{}``, ``\\textbf{}``, ``\\overline{}``, ``\\boxed{}``; ``\\fracab`` ->
    ``\\frac{a}{b}``, ``\\sqrta`` -> ``\\sqrt{a}``; drop ``$``; ``1,000`` -> ``1000``; strip."""
    ans = ans.split("=")[-1]
    for old, new in _DAPO_REPLACE:
        ans = ans.replace(old, new)
    for old in _DAPO_DROP:
        ans = ans.replace(old, "")
    ans = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", ans)
    for cmd in ("text", "textbf", "overline"):
        ans = re.sub(r"(\\" + cmd + r"\{)(.*?)(\})", "\\2", ans)
    ans = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", ans)
    ans = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", ans)
    ans = re.sub(r"(sqrt)([^{])", "sqrt{\\2}", ans)
    ans = ans.replace("$", "")
    if ans.replace(",", "").isdigit():
        ans = ans.replace(",", "")
    return ans.strip()


def math_dapo_extract(completion: str, *, strict_box_verify: bool = True) -> str | None:
    """The prediction verl's math_dapo compares: strict -> the last ``\\boxed{}`` content in the last
    100 of the last 300 characters; otherwise the normalised text after the last ``Answer:``."""
    if not isinstance(completion, str):
        return None
    tail = completion[-300:]
    if strict_box_verify:
        box = _dapo_last_boxed_only_string(tail[-100:])
        return None if box is None else box[len("\\boxed{"):-1]
    found = re.findall(r"(?i)Answer\s*:\s*([^\n]+)", tail)
    return dapo_normalize_final_answer(found[-1] if found else "[INVALID]")


def math_dapo_reward(completion, gold, *, strict_box_verify: bool = True,
                     require_think_close: bool = False) -> float:
    """The official recipe's strict checker (verl ``math_dapo``), 1.0 / 0.0.

    ``strict_box_verify=True`` (what the SPO recipe uses): the last ``\\boxed{...}`` within the
    last 100 characters must equal ``gold`` character for character (no normalisation). ``False``:
    verl's Minerva mode, the last ``Answer: ...`` line and ``gold`` both normalised by
    :func:`dapo_normalize_final_answer`. ``require_think_close``: the SPO recipe's format rule for
    thinking mode, 0 unless the completion holds exactly one ``</think>``. Never raises.
    """
    try:
        if not isinstance(completion, str) or not isinstance(gold, (str, int)) or isinstance(gold, bool):
            return 0.0
        gold = str(gold)
        if require_think_close and completion.count("</think>") != 1:
            return 0.0
        pred = math_dapo_extract(completion, strict_box_verify=strict_box_verify)
        if pred is None:
            return 0.0
        target = gold if strict_box_verify else dapo_normalize_final_answer(gold)
        return float(pred == target)
    except Exception:  # pragma: no cover - defensive
        return 0.0
