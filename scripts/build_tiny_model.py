"""Build the bundled task data and the warm-started tiny Qwen3 policy, deterministically from a seed.

    python scripts/build_tiny_model.py --seed 0 --out data        # ~3-4 minutes on 2 CPU cores

writes

    data/arith/{train,validation,test}.jsonl        the RL prompt sets (5,000 / 500 / 500, disjoint)
    data/tiny-qwen3/                                 model + tokenizer in Hugging Face format
    data/tiny-qwen3/BUILD.md                         this command and the warm-start numbers

What it does, and what it simplifies:

1. Draws the train, validation and held-out test prompts from ``spo_lab.tasks.arith.LEVEL_WEIGHTS``
   (levels 2-6): validation is for choosing settings (the learning-rate sweep), test for the final table.
2. Builds the character tokenizer and a ~1 M-parameter ``Qwen3ForCausalLM`` (``spo_lab.tiny_model``).
3. Warm start: supervised fine-tuning on ``prompt + answer + <eos>`` (cross-entropy on the answer
   and <eos> tokens only) on a fresh stream of levels 1-6 problems from the "warmup" half of the
   prompt space (``spo_lab.tasks.arith.prompt_pool``), so no train or test prompt is ever seen. The paper
   starts RL from an instruction-tuned Qwen3-8B; here SFT stands in for that, and it is *stopped
   early on purpose* (``--sft-steps``): RL should start from partial competence on every level of
   the RL sets. (Levels 7-8, five-digit operands, are longer than anything in the warm start: p = 0,
   which is why the RL sets leave them out.)
4. Measures that start: greedy accuracy on the test prompts, and each train prompt's success rate
   p estimated from 16 samples at temperature 1.0 (sampled exactly as the trainer samples: left-
   padded batches, ``do_sample=True, temperature=1.0, top_k=0, top_p=1.0``). From p it reports
   GRPO's expected degenerate-group share at G = 8, mean over prompts of p^8 + (1 - p)^8
   (the SPO paper; the paper reports ~60 % at the start of training).

The tool target (a tiny model that learns to call a Python tool)::

    python scripts/build_tiny_model.py --target tool --seed 0 --out data --threads 1   # after the default target; 3-6 min

writes ``data/arith-tool/{train,validation,test}.jsonl`` (multiplication, :mod:`spo_lab.tasks.arith_tool`)
and ``data/tiny-qwen3-tool/``: the addition model above with a tokenizer that also knows ``*``, the
newline and the four ReTool tags ``<code>``, ``</code>``, ``<interpreter>``, ``</interpreter>`` (ordinary,
non-special tokens: they stay in decoded text, where the reward reads them), cold-started ReTool style by
a short supervised phase (``--tool-sft-steps``) on a mix of direct answers and tool-calling traces. A trace
is ``<code>a*b</code>`` + the interpreter output + the product; its interpreter output is what the real
sandbox (:class:`spo_lab.tools.PythonSandbox`) printed for that code, formatted as the tool engine formats
it, and has no loss (labels -100), as in ReTool. ``--tool-share`` of the cold-start problems are traces,
so the policy starts out calling the tool on part of the prompts; its direct answers to products are
mostly wrong, which leaves RL room to grow. It measures the start with the real tool loop
(:class:`spo_lab.tools.ToolEngine`) on the test prompts and writes ``data/tiny-qwen3-tool/BUILD.md``.

Results are deterministic for a given seed and thread count (``--threads``, default 2) on one
machine; another thread count or CPU can change floating-point summation order, and the warm start
is sensitive to that: SFT sits on a loss plateau for ~1,000 steps, then learns column addition
within a few hundred steps, and where it stands at the end depends on when that jump happened.
For another seed, check BUILD.md and adjust ``--sft-steps`` if the start is far from the target.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from transformers import GenerationConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spo_lab.tasks.arith import (  # noqa: E402
    LEVELS,
    Problem,
    generate_problems,
    prompt_pool,
    reward,
    sample_problem,
    save_problems,
)
from spo_lab.tiny_model import build_tiny_model, build_tokenizer, tiny_qwen3_config  # noqa: E402

N_TRAIN, N_VALIDATION, N_TEST = 5000, 500, 500
MAX_NEW_TOKENS = 8
G = 8  # GRPO group size for the degenerate-share estimate
# The warm start sees more short sums than the RL prompt sets do (a mild curriculum): the model
# first has to discover column addition, which it does far sooner on two-digit operands. It never
# sees levels 7-8.
SFT_LEVEL_WEIGHTS = {1: 0.25, 2: 0.25, 3: 0.20, 4: 0.10, 5: 0.10, 6: 0.10}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0, help="seed for data, init, SFT and evaluation")
    p.add_argument("--out", type=Path, default=Path("data"), help="writes <out>/arith, <out>/tiny-qwen3")
    # SFT warm start
    p.add_argument("--sft-steps", type=int, default=1600, help="SFT steps; fewer = weaker start")
    p.add_argument("--batch-size", type=int, default=64, help="SFT problems per step")
    p.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate")
    p.add_argument("--warmup-steps", type=int, default=50, help="linear lr warm-up steps")
    # measurement
    p.add_argument("--samples", type=int, default=16, help="samples per train prompt to estimate p")
    p.add_argument("--gen-batch", type=int, default=1024, help="sequences per generate() call")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (fixes float order)")
    # the tool target
    p.add_argument("--target", choices=("addition", "tool"), default="addition",
                   help="addition: data/arith + data/tiny-qwen3; tool: data/arith-tool + data/tiny-qwen3-tool "
                        "(cold-started from <out>/tiny-qwen3)")
    p.add_argument("--tool-sft-steps", type=int, default=250, help="cold-start SFT steps of the tool target")
    p.add_argument("--tool-lr", type=float, default=2e-3, help="peak AdamW lr of the tool cold start")
    p.add_argument("--tool-share", type=float, default=0.3, help="share of cold-start problems that are tool traces")
    p.add_argument("--tool-pool", type=int, default=1500, help="distinct tool traces (their outputs from the sandbox)")
    return p.parse_args()


# ----------------------------------------------------------------------------------------------
# Supervised warm start
# ----------------------------------------------------------------------------------------------
def sft_batch(problems: list[Problem], tokenizer) -> dict[str, torch.Tensor]:
    """Right-padded ``prompt + answer + <eos>`` ids; labels are -100 except on answer and <eos>.

    Right padding keeps every sequence's positions starting at 0, as in left-padded generation
    (where ``generate`` derives positions from the attention mask).
    """
    rows, labels = [], []
    for problem in problems:
        prompt = tokenizer.encode(problem.prompt, add_special_tokens=False)
        target = tokenizer.encode(problem.answer, add_special_tokens=False) + [tokenizer.eos_token_id]
        rows.append(prompt + target)
        labels.append([-100] * len(prompt) + target)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    return {
        "input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in rows]),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
        "labels": torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels]),
    }


def sft(model, tokenizer, args) -> None:
    """AdamW on the answer-token cross-entropy over a fresh stream of "warmup"-pool problems."""
    rng = random.Random(args.seed + 2)
    levels, weights = list(SFT_LEVEL_WEIGHTS), list(SFT_LEVEL_WEIGHTS.values())

    def draw() -> Problem:
        while True:
            problem = sample_problem(rng, rng.choices(levels, weights)[0])
            if prompt_pool(problem.prompt) == "warmup":
                return problem

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    decay_start = int(0.75 * args.sft_steps)

    def lr_factor(step: int) -> float:
        """Warm-up, stable, decay: linear ramp, flat, then linear down to 10 % over the last 25 %."""
        ramp = min(1.0, (step + 1) / args.warmup_steps)
        if step < decay_start:
            return ramp
        return ramp * max(0.1, 1.0 - 0.9 * (step - decay_start) / (args.sft_steps - decay_start))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    model.train()
    for step in range(args.sft_steps):
        batch = sft_batch([draw() for _ in range(args.batch_size)], tokenizer)
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if step % 50 == 0 or step == args.sft_steps - 1:
            print(f"sft step {step:4d}  loss {loss.item():.4f}", flush=True)
    model.eval()


# ----------------------------------------------------------------------------------------------
# Measurement of the warm start
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def complete(model, tokenizer, prompts: list[str], *, do_sample: bool, batch: int) -> list[str]:
    """One completion per prompt from left-padded batched ``generate`` (special tokens removed)."""
    sampling = dict(temperature=1.0, top_k=0, top_p=1.0) if do_sample else {}
    completions = []
    for start in range(0, len(prompts), batch):
        enc = tokenizer(prompts[start : start + batch], return_tensors="pt", padding=True)
        out = model.generate(
            **enc,
            do_sample=do_sample,
            max_new_tokens=MAX_NEW_TOKENS,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **sampling,
        )
        completions += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return completions


def success_rates(model, tokenizer, problems: list[Problem], args) -> list[float]:
    """Each problem's p, the share of ``args.samples`` temperature-1.0 samples with reward 1."""
    repeated = [p for p in problems for _ in range(args.samples)]
    completions = complete(model, tokenizer, [p.prompt for p in repeated], do_sample=True, batch=args.gen_batch)
    rewards = [reward(c, p.answer) for c, p in zip(completions, repeated)]
    return [sum(rewards[i : i + args.samples]) / args.samples for i in range(0, len(rewards), args.samples)]


def summarise(ps: list[float]) -> dict[str, float]:
    """Share with p = 0, share with p = 1, mean p and the expected GRPO degenerate share at G."""
    n = len(ps)
    return {
        "n": n,
        "p0": sum(p == 0 for p in ps) / n,
        "p1": sum(p == 1 for p in ps) / n,
        "mean_p": sum(ps) / n,
        "degenerate": sum(p**G + (1 - p) ** G for p in ps) / n,
    }


def histogram(ps: list[float], bins: int = 10) -> list[int]:
    """Counts of p in [0, 0.1), [0.1, 0.2), ..., [0.9, 1.0]."""
    counts = [0] * bins
    for p in ps:
        counts[min(int(p * bins), bins - 1)] += 1
    return counts


def report(args, n_params, seconds, greedy, ps, train) -> str:
    """The BUILD.md text: command, settings, timings and the warm-start numbers as measured."""
    by_level_p, by_level_greedy = defaultdict(list), defaultdict(list)
    for problem, p in zip(train, ps):
        by_level_p[problem.level].append(p)
    for level, correct in greedy:
        by_level_greedy[level].append(correct)
    overall = summarise(ps)
    greedy_acc = sum(c for _, c in greedy) / len(greedy)
    hist = histogram(ps)
    lines = [
        "# tiny-qwen3: how this checkpoint was built",
        "",
        "```",
        f"python scripts/build_tiny_model.py --seed {args.seed} --out {args.out} --sft-steps {args.sft_steps} "
        f"--batch-size {args.batch_size} --lr {args.lr} --warmup-steps {args.warmup_steps} "
        f"--samples {args.samples} --threads {args.threads}",
        "```",
        "",
        f"- Model: `Qwen3ForCausalLM`, {n_params:,} parameters (tied embeddings), character tokenizer.",
        f"- Warm start: {args.sft_steps} SFT steps x {args.batch_size} problems, AdamW peak lr {args.lr}, "
        f"{args.warmup_steps} warm-up steps, flat, then linear decay to 10 % over the last 25 % of steps, "
        f"on levels {sorted(SFT_LEVEL_WEIGHTS)} only (weights {SFT_LEVEL_WEIGHTS}).",
        f"- Time on {args.threads} CPU thread(s): SFT {seconds['sft']:.0f} s, evaluation {seconds['eval']:.0f} s, "
        f"whole build {seconds['total']:.0f} s (wall clock; a shared machine makes this vary).",
        f"- torch {torch.__version__}; numbers below are as measured by this build.",
        "",
        "## Held-out greedy accuracy (test split)",
        "",
        f"Overall: {greedy_acc:.3f} on {len(greedy)} prompts.",
        "",
        "| level | operand digits | prompts | greedy accuracy |",
        "|---|---|---|---|",
    ]
    for level in sorted(by_level_greedy):
        acc = by_level_greedy[level]
        lines.append(f"| {level} | {'+'.join(map(str, LEVELS[level]))} | {len(acc)} | {sum(acc) / len(acc):.3f} |")
    lines += [
        "",
        f"## Per-prompt success rate p on the train prompts ({args.samples} samples each, temperature 1.0)",
        "",
        f"Mean p {overall['mean_p']:.3f}; share with p = 0: {overall['p0']:.3f}; share with p = 1: "
        f"{overall['p1']:.3f}; expected GRPO degenerate share at G = {G}, mean(p^{G} + (1-p)^{G}): "
        f"**{overall['degenerate']:.3f}** (paper: ~0.6 at the start of training).",
        "",
        "| p bin | " + " | ".join(f"[{i / 10:.1f},{(i + 1) / 10:.1f}{']' if i == 9 else ')'}" for i in range(10)) + " |",
        "|---|" + "---|" * 10,
        "| prompts | " + " | ".join(str(c) for c in hist) + " |",
        "",
        "| level | prompts | mean p | share p = 0 | share p = 1 | degenerate share (G = 8) |",
        "|---|---|---|---|---|---|",
    ]
    for level in sorted(by_level_p):
        s = summarise(by_level_p[level])
        lines.append(
            f"| {level} | {s['n']} | {s['mean_p']:.3f} | {s['p0']:.3f} | {s['p1']:.3f} | {s['degenerate']:.3f} |"
        )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# The tool target: data/arith-tool and data/tiny-qwen3-tool
# ----------------------------------------------------------------------------------------------
N_TOOL_TRAIN, N_TOOL_VALIDATION, N_TOOL_TEST = 2000, 200, 200
TOOL_MAX_NEW_TOKENS = 40  # the longest trace (3 x 3 digits) is 29 tokens
TOOL_SAMPLES = 4  # sampled responses per test prompt in BUILD.md


def build_tool_tokenizer():
    """The character tokenizer plus ``*`` and the newline (every character its own token, newlines too) and
    the four ReTool tags as ordinary added tokens; the ids of the addition tokenizer are kept."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from spo_lab.tasks.arith_tool import TOOL_TAGS
    from spo_lab.tiny_model import CHARS, SPECIAL_TOKENS

    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *CHARS, "*", "\n"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>",
                                  padding_side="left", clean_up_tokenization_spaces=False, model_max_length=64)
    tok.add_tokens(list(TOOL_TAGS))  # special_tokens=False: decoded text keeps them
    return tok


def tool_traces(problems, timeout_s: float = 10.0) -> dict[str, str]:
    """prompt -> the interpreter text of ``<code>a*b</code>``, as :class:`~spo_lab.tools.ToolEngine` appends it,
    with the output the real sandbox printed (every call checked: a failed call stops the build)."""
    from concurrent.futures import ThreadPoolExecutor

    from spo_lab.tools import PythonSandbox
    from spo_lab.tools.engine import format_tool_output

    box = PythonSandbox(timeout_s=timeout_s, memory_mb=512)
    codes = [p.prompt.removesuffix("=") for p in problems]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(box.run, codes))
    out = {}
    for p, r in zip(problems, results):
        if r.exit_code != 0 or r.output.strip() != p.answer:
            raise RuntimeError(f"the sandbox gave {r.output!r} (exit {r.exit_code}) for {p.prompt}")
        out[p.prompt] = format_tool_output(r.output, 256)
    return out


def tool_sft_row(problem, tokenizer, interpreter: str | None) -> tuple[list[int], list[int]]:
    """(ids, labels) of one cold-start example: ``prompt + answer + <eos>`` (direct) or ``prompt + <code>..</code>
    + interpreter + answer + <eos>`` (a trace); labels -100 on the prompt and the interpreter output."""
    enc = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    prompt = enc(problem.prompt)
    tail = enc(problem.answer) + [tokenizer.eos_token_id]
    if interpreter is None:
        return prompt + tail, [-100] * len(prompt) + tail
    code, tool = enc(f"<code>{problem.prompt.removesuffix('=')}</code>"), enc(interpreter)
    return prompt + code + tool + tail, [-100] * len(prompt) + code + [-100] * len(tool) + tail


def tool_sft(model, tokenizer, traces: dict, pool: list, args) -> None:
    """AdamW on the policy tokens of a stream of "warmup"-half problems: ``--tool-share`` of them traces
    (drawn from ``pool``, whose outputs are in ``traces``), the rest direct answers."""
    from spo_lab.tasks.arith_tool import LEVEL_WEIGHTS, sample_problem

    rng = random.Random(args.seed + 5)
    levels = list(LEVEL_WEIGHTS)

    def draw():
        if rng.random() < args.tool_share:
            p = rng.choice(pool)
            return tool_sft_row(p, tokenizer, traces[p.prompt])
        while True:
            p = sample_problem(rng, rng.choice(levels))
            if prompt_pool(p.prompt) == "warmup":
                return tool_sft_row(p, tokenizer, None)

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.tool_lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 20) * max(
        0.1, 1.0 - 0.9 * s / args.tool_sft_steps))
    model.train()
    for step in range(args.tool_sft_steps):
        rows = [draw() for _ in range(args.batch_size)]
        width = max(len(ids) for ids, _ in rows)
        pad = tokenizer.pad_token_id
        batch = {"input_ids": torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows]),
                 "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows]),
                 "labels": torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])}
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        sched.step()
        if step % 25 == 0 or step == args.tool_sft_steps - 1:
            print(f"tool sft step {step:4d}  loss {loss.item():.4f}", flush=True)
    model.eval()


def measure_tool_start(model, tokenizer, test, seed: int) -> dict:
    """Greedy and sampled (T = 1, :data:`TOOL_SAMPLES` per prompt) responses through the real tool loop on the
    test prompts: accuracy, tool-call rate and accuracy with / without a call, overall and per level."""
    from spo_lab.engines.hf import HFEngine
    from spo_lab.tasks.arith_tool import reward as tool_reward
    from spo_lab.tasks.arith_tool import tool_breakdown
    from spo_lab.tools import PythonSandbox, ToolEngine

    engine = ToolEngine(HFEngine(model, tokenizer), PythonSandbox(timeout_s=10, memory_mb=512))
    out = {}
    torch.manual_seed(seed)
    for name, greedy, n in (("greedy", True, 1), ("sampled", False, TOOL_SAMPLES)):
        r = engine.generate([p.prompt for p in test], n, temperature=1.0, max_new_tokens=TOOL_MAX_NEW_TOKENS,
                            greedy=greedy)
        rows = [p for p in test for _ in range(n)]
        rewards = [tool_reward(t, p.answer) for t, p in zip(r.texts, rows)]
        out[name] = {"all": {"acc": sum(rewards) / len(rewards), **tool_breakdown(r.texts, rewards)}}
        for level in sorted({p.level for p in test}):
            idx = [i for i, p in enumerate(rows) if p.level == level]
            texts, rw = [r.texts[i] for i in idx], [rewards[i] for i in idx]
            out[name][level] = {"acc": sum(rw) / len(rw), **tool_breakdown(texts, rw)}
        out[name]["example"] = r.texts[0]
    return out


def tool_report(args, seconds: dict, start: dict, n_params: int, tokenizer) -> str:
    """BUILD.md of the tool checkpoint: the command, the cold start and the measured start."""
    from spo_lab.tasks.arith_tool import LEVELS as TOOL_LEVELS

    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = ["# tiny-qwen3-tool: how this checkpoint was built", "", "```",
             f"python scripts/build_tiny_model.py --target tool --seed {args.seed} --out {args.out} "
             f"--tool-sft-steps {args.tool_sft_steps} --tool-lr {args.tool_lr} --tool-share {args.tool_share} "
             f"--tool-pool {args.tool_pool} --batch-size {args.batch_size} --threads {args.threads}", "```", "",
             f"- Model: `Qwen3ForCausalLM`, {n_params:,} parameters, started from `{args.out}/tiny-qwen3` (its "
             f"embedding grown to {len(tokenizer)} tokens: `*`, the newline and the four tool tags, ordinary tokens).",
             f"- Cold start: {args.tool_sft_steps} SFT steps x {args.batch_size} multiplications (levels "
             f"{sorted(TOOL_LEVELS)}, equal weights, the \"warmup\" half of the prompt space), AdamW peak lr "
             f"{args.tool_lr}, linear decay to 10 %; {args.tool_share:.0%} of the rows are tool traces drawn from "
             f"{args.tool_pool} distinct ones (outputs from the real sandbox; no loss on the interpreter tokens), "
             "the rest direct answers.",
             f"- Time on {args.threads} CPU thread(s): sandbox outputs {seconds['traces']:.0f} s, SFT "
             f"{seconds['sft']:.0f} s, measurement {seconds['eval']:.0f} s (wall clock, a shared machine).",
             f"- torch {torch.__version__}; numbers below are as measured by this build.", "",
             f"## The start RL sees (test split, {N_TOOL_TEST} prompts, the real tool loop, "
             f"max {TOOL_MAX_NEW_TOKENS} new tokens)", "",
             "| level | factor digits | greedy acc | greedy tool-call rate | sampled acc (T = 1) | "
             "sampled tool-call rate | sampled acc with a call | without |", "|---|---|---|---|---|---|---|---|"]
    g, s = start["greedy"], start["sampled"]
    for level in ["all", *sorted(k for k in g if isinstance(k, int))]:
        digits = "all" if level == "all" else " x ".join(map(str, TOOL_LEVELS[level]))
        lines.append(f"| {level} | {digits} | {f(g[level]['acc'])} | {f(g[level]['call_rate'])} | "
                     f"{f(s[level]['acc'])} | {f(s[level]['call_rate'])} | {f(s[level]['acc_with_tool'])} | "
                     f"{f(s[level]['acc_without_tool'])} |")
    lines += ["", f"Sampled at T = 1: {TOOL_SAMPLES} responses per prompt. One sampled response, as decoded:", "",
              "```", repr(s["example"]), "```"]
    return "\n".join(lines) + "\n"


def build_tool(args) -> None:
    """The tool target: data, tokenizer, the grown model, traces, cold start, measurement, save."""
    from transformers import Qwen3ForCausalLM

    from spo_lab.tasks import arith_tool

    t0, seconds = time.time(), {}
    train = arith_tool.generate_problems(N_TOOL_TRAIN, seed=args.seed)
    validation = arith_tool.generate_problems(N_TOOL_VALIDATION, seed=args.seed + 3, exclude=[p.prompt for p in train])
    test = arith_tool.generate_problems(N_TOOL_TEST, seed=args.seed + 1,
                                        exclude=[p.prompt for p in train + validation])
    data_dir, model_dir = args.out / "arith-tool", args.out / "tiny-qwen3-tool"
    data_dir.mkdir(parents=True, exist_ok=True)
    model_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("validation", validation), ("test", test)):
        arith_tool.save_problems(rows, data_dir / f"{name}.jsonl")

    tokenizer = build_tool_tokenizer()
    model = Qwen3ForCausalLM.from_pretrained(args.out / "tiny-qwen3")
    torch.manual_seed(args.seed)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.config.vocab_size = len(tokenizer)
    pool = arith_tool.generate_problems(args.tool_pool, seed=args.seed + 4, pool="warmup")
    start = time.time()
    traces = tool_traces(pool)
    seconds["traces"] = time.time() - start
    start = time.time()
    tool_sft(model, tokenizer, traces, pool, args)
    seconds["sft"] = time.time() - start
    start = time.time()
    measured = measure_tool_start(model, tokenizer, test, args.seed)
    seconds["eval"] = time.time() - start
    model.generation_config = GenerationConfig(max_new_tokens=TOOL_MAX_NEW_TOKENS, do_sample=False,
                                               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    seconds["total"] = time.time() - t0
    text = tool_report(args, seconds, measured, sum(p.numel() for p in model.parameters()), tokenizer)
    digest = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    text += (f"\nWeights: sha256 `{digest}` of model.safetensors; a rebuild with the same command on the same "
             "machine gives the same file.\n")
    (model_dir / "BUILD.md").write_text(text)
    print(text)



def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.target == "tool":
        build_tool(args)
        return
    build_start = time.time()

    # ---- data: fixed RL prompt sets, disjoint by construction --------------------------------
    train = generate_problems(N_TRAIN, seed=args.seed)
    validation = generate_problems(N_VALIDATION, seed=args.seed + 3, exclude=[p.prompt for p in train])
    test = generate_problems(N_TEST, seed=args.seed + 1, exclude=[p.prompt for p in train + validation])
    data_dir, model_dir = args.out / "arith", args.out / "tiny-qwen3"
    data_dir.mkdir(parents=True, exist_ok=True)
    model_dir.mkdir(parents=True, exist_ok=True)
    save_problems(train, data_dir / "train.jsonl")
    save_problems(validation, data_dir / "validation.jsonl")
    save_problems(test, data_dir / "test.jsonl")

    # ---- model and warm start ----------------------------------------------------------------
    tokenizer = build_tokenizer()
    model = build_tiny_model(tiny_qwen3_config(tokenizer), seed=args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"Qwen3ForCausalLM with {n_params:,} parameters")
    seconds = {}
    start = time.time()
    sft(model, tokenizer, args)
    seconds["sft"] = time.time() - start

    # ---- measure the starting point RL will see ----------------------------------------------
    start = time.time()
    torch.manual_seed(args.seed)
    greedy_completions = complete(model, tokenizer, [p.prompt for p in test], do_sample=False, batch=args.gen_batch)
    greedy = [(p.level, reward(c, p.answer)) for p, c in zip(test, greedy_completions)]
    ps = success_rates(model, tokenizer, train, args)
    seconds["eval"] = time.time() - start

    # ---- save ----------------------------------------------------------------------------------
    model.generation_config = GenerationConfig(
        max_new_tokens=MAX_NEW_TOKENS,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    seconds["total"] = time.time() - build_start
    text = report(args, n_params, seconds, greedy, ps, train)
    (model_dir / "BUILD.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
