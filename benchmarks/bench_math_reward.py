"""How long 10,000 calls of the math reward take from a pool of threads, pathological answers included.

Not a test. Builds ``--calls`` (completion, gold) pairs the way an RL batch looks: most boxed answers
plain integers (decided in-process), some fractions / decimals (also in-process), a share of
symbolic answers (``\\sqrt{k}``, ``2\\sqrt{k}``, ``k\\pi``, ``x+k``: sent to the math-verify worker
processes; every one distinct unless ``--repeat-symbolic``), a few completions without a box, and
``--pathological`` answers such as ``\\boxed{10^{10^{10^{10}}}}`` that keep a symbolic checker busy
for minutes without a hard timeout. Then calls ``math_reward`` once per pair from ``--threads``
threads and prints the wall time, calls per second, how many checks went to the workers and how
many of them were stopped by the timeout.

    python benchmarks/bench_math_reward.py                      # 10,000 calls, 16 threads, 2 workers
    python benchmarks/bench_math_reward.py --batch              # the same pairs through score_batch
    python benchmarks/bench_math_reward.py --symbolic-share 0 --calls 100000
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import time
from concurrent.futures import ThreadPoolExecutor

from spo_lab.tasks import math_reward as mr

PATHOLOGICAL = ["10^{10^{10^{10}}}", "9^{9^{9^{9}}}", "(10^{100000})!", "2^{2^{2^{2^{2^{2}}}}}", "7^{7^{7^{7}}}-1"]


def make_pairs(n: int, symbolic_share: float, pathological: int, repeat_symbolic: bool, seed: int):
    rng = random.Random(seed)
    pairs = []
    for i in range(n - pathological):
        u = rng.random()
        k = rng.randint(2, 999)
        if u < symbolic_share:  # symbolic: half right, half wrong
            j = rng.randint(0, 9) if repeat_symbolic else i
            gold, pred = [(f"\\sqrt{{{j + 2}}}", f"\\sqrt{{{j + 2}}}"), (f"2\\sqrt{{{j + 2}}}", f"\\sqrt{{{4 * (j + 2)}}}"),
                          (f"{j + 1}\\pi", f"\\pi \\cdot {j + 1}"), (f"x+{j}", f"{j}+x+1")][i % 4]
        elif u < symbolic_share + 0.15:  # fractions and decimals, decided in-process
            gold, pred = f"\\frac{{{k}}}{{{2 * k}}}", rng.choice(["0.5", "\\dfrac{1}{2}", "0.25"])
        else:  # plain integers
            gold, pred = str(k), str(k if rng.random() < 0.5 else k + 1)
        text = f"Reasoning ... so the answer is $\\boxed{{{pred}}}$." if rng.random() > 0.03 else "I give up."
        pairs.append((text, gold))
    for j in range(pathological):
        pairs.insert(rng.randrange(len(pairs) + 1), (f"\\boxed{{{PATHOLOGICAL[j % len(PATHOLOGICAL)]}}}", str(j + 5)))
    return pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2, help="math-verify worker processes")
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--symbolic-share", type=float, default=0.1)
    ap.add_argument("--pathological", type=int, default=5)
    ap.add_argument("--repeat-symbolic", action="store_true", help="only 10 distinct symbolic answers (memo hits)")
    ap.add_argument("--batch", action="store_true", help="one score_batch call instead of per-pair calls")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    pairs = make_pairs(args.calls, args.symbolic_share, args.pathological, args.repeat_symbolic, args.seed)
    pool = mr.default_pool(args.workers)
    t = time.perf_counter()
    mr.math_reward("\\boxed{\\sqrt{4}}", "2")  # start the first worker (import sympy) outside the timing
    warm = time.perf_counter() - t
    n_symbolic = sum(mr._fast(c, g)[1] is not None for c, g in pairs)
    timeouts0 = pool.timeouts

    t = time.perf_counter()
    if args.batch:
        scores = mr.score_batch([c for c, _ in pairs], [g for _, g in pairs], timeout=args.timeout, workers=args.workers)
    else:
        with ThreadPoolExecutor(max_workers=args.threads) as ex:
            scores = list(ex.map(lambda p: mr.math_reward(p[0], p[1], timeout=args.timeout), pairs))
    wall = time.perf_counter() - t

    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, {args.workers} worker processes, "
          f"{'score_batch' if args.batch else f'{args.threads} threads calling math_reward'}, timeout {args.timeout} s")
    print(f"first worker start-up (not timed below): {warm:.2f} s")
    print(f"{len(pairs):,} calls: {wall:.2f} s wall, {len(pairs) / wall:,.0f} calls/s, mean reward {sum(scores) / len(scores):.3f}")
    print(f"  symbolic checks sent to workers: {n_symbolic:,} (incl. {args.pathological} pathological); "
          f"stopped by the timeout: {pool.timeouts - timeouts0}")


if __name__ == "__main__":
    main()
