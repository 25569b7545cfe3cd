"""The seams are real: a task and an engine defined here, not in the library, train with every algorithm;
and the package's import graph points one way (teaching/experiments -> train -> parts -> core)."""

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
    group_key = "length"

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

    def score(self, completions, problems):
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
        return Rollouts(p_ids, p_mask, r_ids, r_mask, torch.stack(out_logp, 1), texts, ~done)


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


# ====================================================================== the import graph
CORE = {"tracker", "advantages", "sampler", "loss", "metrics", "divergence"}
PARTS = {"spo", "offline", "run_folder", "models", "tiny_model", "evaluate", "engines", "tasks"}
RANK = {**{m: 0 for m in CORE}, "__init__": 0, **{m: 1 for m in PARTS}, "train": 2, "experiment": 3, "teaching": 3,
        "profiles": 3}
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
