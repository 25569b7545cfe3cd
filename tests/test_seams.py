"""The seams are real: a task, an engine and an algorithm defined here, not in the library, train; every
method goes through the Algorithm protocol; and the package's import graph points one way
(teaching/experiments -> train -> parts -> core)."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pandas as pd
import pytest
import torch

from spo_lab.engines.base import Rollouts
from spo_lab.tasks.base import Problem, content_id
from spo_lab.train import ALGOS, Config, train

PKG = Path(__file__).resolve().parent.parent / "spo_lab"


# ====================================================================== a toy task and a toy engine
class RepeatTask:
    """Repeat the digits of the prompt: prompt "407=", answer "407"; reward 1 for an exact echo."""

    name = "repeat"
    breakdown_key = "length"

    def __init__(self, n_train=64, n_test=16):
        rng = random.Random(0)
        def make(n):
            out = []
            while len(out) < n:
                digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 3)))
                out.append(Problem(content_id(digits + "="), digits + "=", digits, {"length": len(digits)}))
            return out
        self.splits = {"train": make(n_train), "test": make(n_test)}
        self.scored: list[int] = []

    def load(self, split):
        return self.splits[split]

    def reward(self, completions, problems):
        self.scored.append(len(completions))
        return [float(c.strip() == p.answer) for c, p in zip(completions, problems, strict=True)]

    def extract(self, completion):
        return completion.strip() or None


class LoopEngine:
    """Ancestral sampling written out token by token (no ``generate``): the protocol, nothing more."""

    def __init__(self, tokenizer):
        self.tok, self.model, self.syncs = tokenizer, None, 0

    def sync_weights(self, model):
        self.model, self.syncs = model, self.syncs + 1

    @torch.no_grad()
    def generate(self, prompts, n=1, *, temperature=1.0, max_new_tokens=8, greedy=False, top_k=0, top_p=1.0):
        enc = self.tok(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
        p_ids, p_mask = enc["input_ids"].repeat_interleave(n, 0), enc["attention_mask"].repeat_interleave(n, 0)
        ids, mask = p_ids, p_mask
        R, eos, pad = p_ids.shape[0], self.tok.eos_token_id, self.tok.pad_token_id
        done = torch.zeros(R, dtype=torch.bool)
        out_ids, out_mask, out_logp = [], [], []
        for _ in range(max_new_tokens):
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1].float()
            logp = torch.log_softmax(logits / (1.0 if greedy else temperature), -1)
            nxt = logp.argmax(-1) if greedy else torch.multinomial(logp.exp(), 1).squeeze(-1)
            live = ~done
            out_ids.append(torch.where(live, nxt, torch.full_like(nxt, pad)))
            out_mask.append(live.long())
            out_logp.append(torch.where(live, logp.gather(-1, nxt[:, None]).squeeze(-1), torch.zeros(R)))
            done |= nxt == eos
            ids = torch.cat([ids, out_ids[-1][:, None]], 1)
            mask = torch.cat([mask, out_mask[-1][:, None]], 1)
        r_ids, r_mask = torch.stack(out_ids, 1), torch.stack(out_mask, 1)
        texts = self.tok.batch_decode(r_ids * r_mask + pad * (1 - r_mask), skip_special_tokens=True)
        return Rollouts(prompt_ids=p_ids, prompt_mask=p_mask, response_ids=r_ids, response_mask=r_mask,
                        logprobs=torch.stack(out_logp, 1), texts=texts, truncated=~done,
                        prompt_index=torch.arange(len(prompts)).repeat_interleave(n))


@pytest.mark.parametrize("algo", ALGOS)
def test_a_task_and_an_engine_from_outside_the_library_train(toy, tmp_path, algo):
    from spo_lab.models import load_policy

    _, tok = load_policy(toy / "model")
    task, engine = RepeatTask(), LoopEngine(tok)
    cfg = Config(algo=algo, model=str(toy / "model"), out=str(tmp_path / algo), cache_dir=str(tmp_path / "cache"),
                 steps=2, responses_per_step=16, group_size=4, n0=2, eval_every=1, progress=False, save_model=False,
                 lr=1e-3, max_new_tokens=4)
    out = train(cfg, task=task, engine=engine)
    df = pd.read_json(out / "metrics.jsonl", lines=True)
    assert df.step.tolist() == [0, 1, 2]
    assert df[df.step > 0].responses.tolist() == [16, 32]
    assert engine.syncs == 1 + 2  # once at setup, then after every step's update
    assert 16 in task.scored  # the trainer scored through the task's own reward
    # per-group metrics come from the task's metadata, not from a hard-coded field
    assert "sampled/length_mean" in df and any(c.startswith("eval/greedy_acc/length=") for c in df.columns)
    if algo == "spo":
        assert df["responses_incl_init"].iloc[-1] == 32 + 2 * 64  # the offline pass ran through the toy engine


class HalfBaseline:
    """A toy method written here: uniform draws of 8 prompts, 2 responses each, baseline 0.5, no memory."""

    group = 2

    def __init__(self, num_prompts):
        self.num_prompts, self.gen, self.seen = num_prompts, torch.Generator().manual_seed(0), []

    def draw(self):
        return torch.randperm(self.num_prompts, generator=self.gen)[:8]

    def baselines(self, row_ids):
        return torch.full((len(row_ids),), 0.5, dtype=torch.float64)

    def advantages(self, rewards, baselines):
        raw = torch.as_tensor(rewards, dtype=torch.float64) - baselines
        return raw, raw

    def observe(self, row_ids, rewards, d=None):
        self.seen.append((row_ids.clone(), torch.as_tensor(rewards).clone(), d))

    def stats(self):
        return {"toy/observed_steps": len(self.seen)}

    def state_dict(self):
        return {}

    def load_state_dict(self, sd):
        pass


def test_an_algorithm_from_outside_the_library_trains(toy, tmp_path):
    from spo_lab.algorithms import Algorithm
    from spo_lab.models import load_policy

    _, tok = load_policy(toy / "model")
    task, engine, algo = RepeatTask(), LoopEngine(tok), HalfBaseline(64)
    assert isinstance(algo, Algorithm)
    cfg = Config(algo="grpo", group_size=2, model=str(toy / "model"), out=str(tmp_path / "toy"), steps=3,
                 responses_per_step=16, eval_every=3, progress=False, save_model=False, lr=1e-3, max_new_tokens=4)
    out = train(cfg, task=task, engine=engine, algorithm=algo)
    df = pd.read_json(out / "metrics.jsonl", lines=True)
    assert df["toy/observed_steps"].dropna().tolist() == [1, 2, 3]
    assert [len(ids) for ids, _, _ in algo.seen] == [16, 16, 16]
    assert all(d is None for *_, d in algo.seen)  # no D estimator for an outside method
    assert all(ids.view(-1, 2).unique(dim=1).shape[1] == 1 for ids, _, _ in algo.seen)  # a prompt's 2 rows together
    samples = [__import__("json").loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {3} and all(s["baseline"] == 0.5 for s in samples)


def test_the_training_step_has_no_method_specific_branch():
    """train_step reads the same for every method: no algo name, no isinstance, no SPO or group attribute."""
    import inspect

    from spo_lab.train import train_step

    import re

    src = inspect.getsource(train_step)
    for word in (r"\bspo\b", r"\bgrpo\b", r"\bisinstance\b", r"cfg\.algo\b", r"\bGroupBaseline\b", r"\bSPO\b"):
        assert not re.search(word, src, flags=re.I), word


def test_every_builtin_method_follows_the_protocol():
    from spo_lab.algorithms import Algorithm
    from spo_lab.train import build_algorithm

    for algo in ALGOS:
        a = build_algorithm(Config(algo=algo), 5000, torch.Generator().manual_seed(0))
        assert isinstance(a, Algorithm), algo
        ids = a.draw()
        assert len(ids) * a.group == 64 and len(set(ids.tolist())) == len(ids)


# ====================================================================== the import graph
CORE = {"tracker", "advantages", "sampler", "loss", "metrics", "divergence"}
LEAVES = {"keys", "paths", "errors", "palette"}  # names and helpers every layer may use: standard library (and platformdirs)
PARTS = {"spo", "algorithms", "ppo", "offline", "run_folder", "models", "tiny_model", "evaluate", "engines", "tasks",
         "tools", "distributed", "collector", "config"}
RANK = {**{m: 0 for m in CORE | LEAVES}, "__init__": 0, **{m: 1 for m in PARTS}, "train": 2, "experiment": 3,
        "report": 3, "figures": 3, "teaching": 3, "profiles": 3, "integrations": 3}
THIRD_PARTY_OK_IN_CORE = {"numpy", "torch"}


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        yield ".".join(rel.parts), path


def _imports(name: str, path: Path):
    """(absolute spo_lab submodule or top-level package) for every import in the file."""
    pkg_parts = name.split(".")[:-1] if not name.endswith("__init__") else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg_parts[: len(pkg_parts) - node.level + 1]
                mod = ".".join(["spo_lab", *base, *([node.module] if node.module else [])])
                if node.module is None:
                    for a in node.names:
                        yield f"{mod}.{a.name}"
                else:
                    yield mod
            else:
                yield node.module


def _top(spo_mod: str) -> str:
    parts = spo_mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_import_arrows_point_one_way():
    bad = []
    for name, path in _modules():
        me = name.split(".")[0]
        for imp in _imports(name, path):
            if imp.startswith("spo_lab"):
                other = _top(imp)
                if other == me:
                    continue
                if RANK[other] > RANK[me]:
                    bad.append(f"{name} imports {imp}")
                if me == "engines" and other == "tools":
                    bad.append(f"{name} imports {imp}: the tool engine wraps engines, never the reverse")
                if me == "engines" and other == "tasks" or me == "tasks" and other == "engines":
                    bad.append(f"{name} imports {imp}: engines and tasks know nothing of each other")
                if me in ("engines", "tasks", "models") and other in ("spo", "offline", "evaluate"):
                    bad.append(f"{name} imports {imp}")
            elif me in CORE or name == "__init__":
                root = imp.split(".")[0]
                if root not in THIRD_PARTY_OK_IN_CORE and root not in __import__("sys").stdlib_module_names:
                    bad.append(f"core module {name} imports {imp}")
    assert not bad, "\n".join(bad)


def test_every_module_has_a_rank():
    assert {n.split(".")[0] for n, _ in _modules()} <= set(RANK)


# ====================================================================== functions a reader can hold in view
def _code_lines(src: str, node) -> int:
    """Lines of code of a function: its lines minus blank ones, comments and the docstring."""
    import io
    import tokenize

    doc = None
    if node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant) \
            and isinstance(node.body[0].value.value, str):
        doc = range(node.body[0].lineno, node.body[0].end_lineno + 1)
    lines = set()
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    for t in tokenize.generate_tokens(io.StringIO(src).readline):
        if t.type in skip:
            continue
        lines |= {ln for ln in range(t.start[0], t.end[0] + 1)
                  if node.lineno <= ln <= node.end_lineno and not (doc and ln in doc)}
    return len(lines)


def test_no_function_is_longer_than_80_lines_and_the_step_fits_60():
    long = []
    for name, path in _modules():
        src = path.read_text()
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _code_lines(src, node) > 80:
                long.append(f"{name}.{node.name}: {_code_lines(src, node)} lines")
    assert not long, long
    src = (PKG / "train.py").read_text()
    step = next(n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.FunctionDef) and n.name == "train_step")
    assert _code_lines(src, step) <= 60


def test_help_shows_no_machine_path():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "spo_lab.train", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert str(PKG.parent) not in out and "data/tiny-qwen3, bundled" in out
