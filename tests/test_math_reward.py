"""The math rewards: hand-made cases, the adversarial list, the hard timeout, threads and processes."""

from __future__ import annotations

import multiprocessing
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("math_verify")

from spo_lab.tasks import math_reward as mr  # noqa: E402
from spo_lab.tasks.math_reward import (  # noqa: E402
    extract_answer, last_boxed, math_dapo_reward, math_reward, normalize_answer, score_batch,
)


@pytest.fixture(scope="module", autouse=True)
def warm_pool():
    """Start one math-verify worker up front, so timings below measure checks, not sympy imports."""
    assert math_reward("\\boxed{\\sqrt{4}}", "2") == 1.0


@pytest.mark.parametrize("text, box", [
    ("", None), ("no box here", None), ("\\boxed{5}", "5"), ("a \\boxed{3} b \\boxed{7} c", "7"),
    ("\\boxed {12}", "12"), ("\\fbox{12}", "12"), ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{1}{\\sqrt{2}}"),
    ("\\boxed{3} and then \\boxed{4", None),  # the last box is unbalanced: no answer
    ("\\boxed{ 42 }.", "42"), (None, None), (42, None),
])
def test_last_boxed(text, box):
    assert last_boxed(text) == box


@pytest.mark.parametrize("answer, canon", [
    ("42", "42"), ("042", "42"), ("-3", "-3"), ("0.5", "1/2"), ("\\frac{2}{4}", "1/2"), ("\\dfrac{1}{2}", "1/2"),
    ("-\\frac{3}{6}", "-1/2"), ("\\frac{-3}{6}", "-1/2"), ("4/2", "2"), ("1,000", "1000"), ("$5$", "5"),
    ("5 \\text{ cm}", "5"), ("90^\\circ", "90"), ("x = 7", "7"), ("50\\%", "50"), ("\\text{yes}", "yes"),
    ("\\left( 1, 2 \\right)", "(1,2)"), ("2\\sqrt{3}", "2\\sqrt{3}"),
])
def test_normalize_answer(answer, canon):
    assert normalize_answer(answer) == canon


@pytest.mark.parametrize("completion, gold, expected", [
    ("so \\boxed{204}", "204", 1.0),
    ("so \\boxed{205}", "204", 0.0),
    ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
    ("\\boxed{0.5}", "\\frac{1}{2}", 1.0),
    ("\\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}", 1.0),
    ("\\boxed{\\tfrac34}", "0.75", 1.0),  # shorthand \frac34 goes to math-verify
    ("\\boxed{5 \\text{ cm}}", "5", 1.0),
    ("The length is \\boxed{5\\,\\mathrm{cm}}.", "5", 1.0),
    ("\\boxed{1,000}", "1000", 1.0),
    ("\\boxed{2\\sqrt{3}}", "\\sqrt{12}", 1.0),
    ("\\boxed{\\frac{1+\\sqrt{5}}{2}}", "\\frac{\\sqrt{5}+1}{2}", 1.0),
    ("\\boxed{20\\pi}", "20\\pi", 1.0),
    ("\\boxed{1+x}", "x+1", 1.0),
    ("\\boxed{x+2}", "x+1", 0.0),
    ("\\boxed{\\frac{1}{3}}", "0.333", 0.0),
    ("first \\boxed{7}, finally \\boxed{9}", "9", 1.0),
    ("first \\boxed{9}, finally \\boxed{7}", "9", 0.0),
    ("\\boxed{9", "9", 0.0),
    ("\\boxed{}", "9", 0.0),
    ("", "9", 0.0),
    ("the answer is 9", "9", 0.0),
    ("\\boxed{9}", "\\boxed{9}", 1.0),  # a boxed gold is unwrapped
    ("\\boxed{9}", 9, 1.0),  # an integer gold is accepted
])
def test_math_reward_cases(completion, gold, expected):
    assert math_reward(completion, gold) == expected


@pytest.mark.parametrize("bad", [None, 5, 3.5, b"\\boxed{5}", ["\\boxed{5}"], {"a": 1}, object()])
def test_non_string_inputs_score_zero(bad):
    assert math_reward(bad, "5") == 0.0
    assert math_reward("\\boxed{5}", bad if not isinstance(bad, int) else None) == 0.0
    assert math_dapo_reward(bad, "5") == 0.0
    assert extract_answer(bad) is None


def test_huge_inputs_are_fast():
    t = time.perf_counter()
    assert math_reward("x" * 5_000_000 + "\\boxed{5}", "5") == 1.0
    assert math_reward("\\boxed{" + "1" * 5000 + "}", "1" * 5000) == 1.0  # only compared as strings
    assert math_reward("\\boxed{" + "(" * 100_000 + "}", "5") == 0.0
    assert math_reward("{" * 200_000 + "\\boxed{" + "{" * 200_000, "5") == 0.0
    assert time.perf_counter() - t < 10.0


@pytest.mark.parametrize("expr", ["10^{10^{10^{10}}}", "9^{9^{9^{9}}}", "(10^{100000})!"])
def test_pathological_expressions_end_within_the_timeout(expr):
    t = time.perf_counter()
    assert math_reward(f"\\boxed{{{expr}}}", "5", timeout=3.0) == 0.0
    assert time.perf_counter() - t < 3.0 + 2.0


def test_hard_timeout_kills_the_worker_and_the_pool_recovers():
    pool = mr.default_pool()
    before = pool.timeouts
    t = time.perf_counter()
    # timeout 0.5 s is below math-verify's own 1 s alarm: only the outer kill can end this check
    assert math_reward("\\boxed{2^{2^{2^{2^{2^{2}}}}}+3}", "7", timeout=0.5) == 0.0
    assert time.perf_counter() - t < 0.5 + 1.5
    assert pool.timeouts == before + 1
    assert math_reward("\\boxed{\\sqrt{9}}", "3") == 1.0  # a replacement worker took over
    # a timed-out answer is memoised: asking again costs nothing
    t = time.perf_counter()
    assert math_reward("\\boxed{2^{2^{2^{2^{2^{2}}}}}+3}", "7", timeout=0.5) == 0.0
    assert time.perf_counter() - t < 0.1


def test_many_threads_share_the_pool_without_hanging():
    # 40 distinct symbolic checks plus 1,960 in-process ones, from 16 threads at once
    pairs = [(f"\\boxed{{\\sqrt{{{k * k}}}}}", str(k) if k % 2 else str(k + 1)) for k in range(2, 42)]
    pairs += [(f"\\boxed{{{k}}}", str(k if k % 3 else k + 1)) for k in range(1960)]
    expected = [float(k % 2 == 1) for k in range(2, 42)] + [float(k % 3 != 0) for k in range(1960)]
    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=16) as ex:
        got = list(ex.map(lambda p: math_reward(*p), pairs))
    wall = time.perf_counter() - t
    assert got == expected
    print(f"{len(pairs)} math_reward calls from 16 threads: {wall:.2f} s")
    assert wall < 45


def test_score_batch_matches_math_reward_and_is_thread_safe():
    comps = ["\\boxed{\\frac{1}{2}}", "\\boxed{3}", "none", "\\boxed{\\sqrt{50}}", "\\boxed{5\\sqrt{2}}", "\\boxed{x^2}"]
    golds = ["0.5", "4", "1", "5\\sqrt{2}", "\\sqrt{50}", "x^{2}"]
    expected = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    assert score_batch(comps, golds) == expected
    results = []
    threads = [threading.Thread(target=lambda: results.append(score_batch(comps, golds, workers=2))) for _ in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert results == [expected] * 6
    assert score_batch([], []) == []
    with pytest.raises(ValueError, match="2 completions but 1 golds"):
        score_batch(["a", "b"], ["1"])


def test_works_inside_a_daemon_worker_process():
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as p:  # pool workers are daemonic: they may not fork multiprocessing children
        got = p.starmap(math_reward, [("\\boxed{\\sqrt{16}}", "4"), ("\\boxed{7}", "7"), ("\\boxed{x}", "y")])
    assert got == [1.0, 1.0, 0.0]


def test_extract_answer_is_a_voting_key():
    assert extract_answer("\\boxed{\\frac{1}{2}}") == extract_answer("so \\boxed{0.5}.") == "1/2"
    assert extract_answer("\\boxed{5 \\text{ cm}}") == extract_answer("\\boxed{5}") == "5"
    assert extract_answer("no answer") is None


# ----------------------------------------------------------------------------- math_dapo (verl)
@pytest.mark.parametrize("completion, gold, expected", [
    ("\\boxed{34}", "34", 1.0),
    ("lots of text " * 50 + "\\boxed{34}", "34", 1.0),
    ("\\boxed{34}" + " padding" * 20, "34", 0.0),  # the box is outside the last 100 characters
    ("\\boxed{3} then \\boxed{34}", "34", 1.0),
    ("\\boxed{34} then \\boxed{3}", "34", 0.0),
    ("\\boxed {34}", "34", 0.0),  # strict: only the literal "\boxed{"
    ("\\fbox{34}", "34", 0.0),
    ("\\boxed{5 \\text{ cm}}", "5", 0.0),  # strict: no normalisation at all
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", 1.0),
    ("\\boxed{\\frac{1}{2}}", "0.5", 0.0),
    ("\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}", 0.0),
    ("\\boxed{ 34}", "34", 0.0),
    ("\\boxed{34", "34", 0.0),
    ("", "34", 0.0),
    ("\\boxed{34}", 34, 1.0),
])
def test_math_dapo_strict(completion, gold, expected):
    assert math_dapo_reward(completion, gold) == expected


def test_math_dapo_think_rule_and_minerva_mode():
    assert math_dapo_reward("<think>hmm</think>\\boxed{7}", "7", require_think_close=True) == 1.0
    assert math_dapo_reward("\\boxed{7}", "7", require_think_close=True) == 0.0
    assert math_dapo_reward("</think></think>\\boxed{7}", "7", require_think_close=True) == 0.0
    minerva = lambda c, g: math_dapo_reward(c, g, strict_box_verify=False)  # noqa: E731
    assert minerva("work...\nAnswer: 1,000 dollars", "1000") == 1.0
    assert minerva("Answer: $\\frac{1}{2}$", "\\frac12") == 1.0
    assert minerva("Answer: x = 5", "5") == 1.0
    assert minerva("Answer: 5 square feet", "5") == 1.0
    assert minerva("\\boxed{5}", "5") == 0.0  # Minerva mode reads "Answer:", not boxes
    assert mr.dapo_normalize_final_answer("\\text{(B)}") == "(B)"
    assert mr.dapo_normalize_final_answer("\\sqrt2") == "\\sqrt{2}"
