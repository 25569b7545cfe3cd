"""Micro-benchmark of the SPO bookkeeping at scale: ValueTracker.update and PrioritizedSampler.sample.

Not a test. Builds a tracker over many prompts (10 million by default, far beyond DAPO-Math's ~14k,
to show the per-step cost does not grow with the prompt set), then times, after a warm-up:

  (a) update      tracker.update(ids, rewards, kl) for a batch of random ids (with repeats, as drawn)
  (b) sample      sampler.sample() drawing batch-size distinct ids from the whole prompt set
  (c) update+sample   one SPO step's worth of bookkeeping: sample, then update the sampled ids
  (d) cold sample     PrioritizedSampler(...) built fresh + its first sample(): a full pass over
                      every prompt's weight (what a sampler without incremental state pays each step)
  (e) pool sample     sample(pool) from a random candidate pool (the official recipe uses 14,000)

Prints median and p90 wall time in ms per operation, and the torch thread count.

    python benchmarks/bench_tracker.py                       # 10M prompts, batch 1024, 20 repeats
    python benchmarks/bench_tracker.py --num-prompts 14000 --thompson
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch


from spo_lab.sampler import PrioritizedSampler
from spo_lab.tracker import ValueTracker


def percentile(xs, q):
    xs = sorted(xs)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def bench(fn, repeats, warmup, setup=None):
    """Run fn() warmup + repeats times; return per-call milliseconds of the timed repeats."""
    times = []
    for i in range(warmup + repeats):
        arg = setup() if setup is not None else None
        t0 = time.perf_counter()
        fn(arg) if setup is not None else fn()
        dt = (time.perf_counter() - t0) * 1e3
        if i >= warmup:
            times.append(dt)
    return times


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-prompts", type=int, default=10_000_000, help="size of the prompt set")
    ap.add_argument("--batch", type=int, default=1024, help="ids per update / per sample")
    ap.add_argument("--repeats", type=int, default=20, help="timed repeats per measurement")
    ap.add_argument("--warmup", type=int, default=3, help="untimed warm-up calls per measurement")
    ap.add_argument("--cold-repeats", type=int, default=5, help="timed repeats of the cold sample (d)")
    ap.add_argument("--pool", type=int, default=14_000, help="candidate pool size for (e); 0 skips it")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave torch's default)")
    ap.add_argument("--thompson", action="store_true", help="use Thompson draws in the sampler")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    P, B = args.num_prompts, args.batch
    g = torch.Generator().manual_seed(args.seed)

    t0 = time.perf_counter()
    tracker = ValueTracker(P)
    # a realistic spread of values: offline pass with n0 = 8 (Jeffreys init, as the official code)
    trials = torch.full((P,), 8, dtype=torch.long)
    succ = torch.randint(0, 9, (P,), generator=g)
    tracker.init_from_counts(succ, trials)
    del trials, succ
    build_s = time.perf_counter() - t0

    sampler = PrioritizedSampler(tracker, B, thompson=args.thompson, generator=torch.Generator().manual_seed(args.seed + 1))

    def random_batch(_=None):
        ids = torch.randint(0, P, (B,), generator=g)
        rewards = (torch.rand(B, generator=g) < 0.4).to(torch.float64)
        kl = torch.rand(B, generator=g, dtype=torch.float64) * 0.1
        return ids, rewards, kl

    results = {}
    results["(a) update"] = bench(lambda a: tracker.update(*a), args.repeats, args.warmup, setup=random_batch)
    results["(b) sample"] = bench(sampler.sample, args.repeats, args.warmup)

    def step(_=None):
        ids = sampler.sample()
        rewards = (torch.rand(B, generator=g) < 0.4).to(torch.float64)
        kl = torch.rand(B, generator=g, dtype=torch.float64) * 0.1
        tracker.update(ids, rewards, kl)

    results["(c) update+sample"] = bench(step, args.repeats, args.warmup)

    def cold(_=None):
        s = PrioritizedSampler(tracker, B, thompson=args.thompson, generator=torch.Generator().manual_seed(7))
        s.sample()

    results["(d) cold sample (new sampler)"] = bench(cold, args.cold_repeats, 1)

    if args.pool:
        pool_size = min(args.pool, P)

        def make_pool(_=None):
            return torch.randperm(P, generator=g)[:pool_size] if P <= 2_000_000 else torch.randint(
                0, P, (pool_size,), generator=g
            ).unique()

        if pool_size >= B:
            results[f"(e) sample(pool of ~{pool_size})"] = bench(
                lambda pool: sampler.sample(pool), args.repeats, args.warmup, setup=make_pool
            )

    print("spo_lab tracker/sampler benchmark")
    print(f"  torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}")
    print(f"  torch threads: {torch.get_num_threads()} (interop {torch.get_num_interop_threads()}), "
          f"cpu count: {os.cpu_count()}")
    print(f"  prompts: {P:,}  batch: {B}  repeats: {args.repeats} (warm-up {args.warmup})  "
          f"thompson: {args.thompson}")
    print(f"  tracker build + init_from_counts: {build_s * 1e3:.1f} ms "
          f"(alpha+beta: {2 * P * 8 / 2**20:.0f} MiB)")
    width = max(len(k) for k in results)
    print(f"  {'operation':<{width}}  {'median ms':>10}  {'p90 ms':>10}  {'n':>3}")
    for name, ts in results.items():
        print(f"  {name:<{width}}  {statistics.median(ts):>10.3f}  {percentile(ts, 0.9):>10.3f}  {len(ts):>3}")
    v = tracker.values()
    print(f"  sanity: values in [{v.min().item():.4f}, {v.max().item():.4f}], mean {v.mean().item():.4f}")


if __name__ == "__main__":
    main()
