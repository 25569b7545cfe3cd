"""The tool task (arith_tool), its bundled checkpoint, the trainer's --tool flags and the math task with the tool."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from spo_lab.models import DEFAULT_MODEL_DIR
from spo_lab.tasks import get_task
from spo_lab.tasks import arith_tool as at
from spo_lab.errors import UserError
from spo_lab.train import Config, build_tool_engine, tool_mode

ROOT = Path(__file__).resolve().parent.parent
TOOL_MODEL = ROOT / "data" / "tiny-qwen3-tool"
TAGS = ("<code>", "</code>", "<interpreter>", "</interpreter>")


# ---------------------------------------------------------------------------------------------
# the reward: the answer after the last interpreter output, no tool tags in it, the tool never required
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("completion, expected", [
    ("20126", 1.0),  # a direct answer counts
    (" 20126 and more", 1.0),
    ("<code>347*58</code><interpreter>\n20126\n\n</interpreter>\n\n20126", 1.0),
    ("<code>1</code><interpreter>\n1\n\n</interpreter>\n\n<code>347*58</code><interpreter>\n20126\n\n</interpreter>\n\n"
     "20126", 1.0),
    ("<code>347*58</code><interpreter>\n20126\n\n</interpreter>\n\n", 0.0),  # the number only inside the output
    ("<code>347*58</code><interpreter>\n20126\n", 0.0),  # ended inside the tool output
    ("<code>20126</code>", 0.0),  # inside code
    ("20126<code>347*58</code>", 0.0),  # a tool turn after the answer: the response never left the tool
    ("<code>347*58</code><interpreter>\n20126\n\n</interpreter>\n\n20126<code>1</code>", 0.0),
    ("<code>347*58</code><interpreter>\n20126\n\n</interpreter>\n\n20127", 0.0),
    ("020126", 0.0), ("", 0.0),
])
def test_reward_reads_the_answer_after_the_last_interpreter_output(completion, expected):
    assert at.reward(completion, "20126") == expected
    task = get_task("arith_tool")
    problem = at.make_problem([347, 58], 3)
    assert problem.prompt == "347*58=" and problem.answer == "20126"
    assert task.reward([completion], [problem]) == [expected]


def test_tool_breakdown_counts_calls_and_accuracy_with_and_without():
    texts = ["<code>6*7</code><interpreter>\n42\n\n</interpreter>\n\n42", "41", "42",
             "<code>6*7</code><interpreter>\n42\n\n</interpreter>\n\n"]
    rewards = [at.reward(t, "42") for t in texts]
    assert rewards == [1.0, 0.0, 1.0, 0.0]
    assert at.tool_breakdown(texts, rewards) == {"call_rate": 0.5, "acc_with_tool": 0.5, "acc_without_tool": 0.5}
    assert at.tool_breakdown(["42"], [1.0])["acc_with_tool"] is None
    assert not at.called_tool("<interpreter>42</code>")  # an interpreter tag the policy wrote itself is no call


# ---------------------------------------------------------------------------------------------
# the bundled data
# ---------------------------------------------------------------------------------------------
def test_bundled_splits_are_disjoint_levelled_products():
    task = get_task("arith_tool")
    splits = {s: task.load(s) for s in ("train", "validation", "test")}
    assert [len(v) for v in splits.values()] == [2000, 200, 200]
    prompts = [{p.prompt for p in v} for v in splits.values()]
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
    for p in splits["test"]:
        a, b = p.operands
        assert p.answer == str(a * b) and sorted(map(len, map(str, (a, b)))) == sorted(at.LEVELS[p.level])
    assert {p.level for p in splits["train"]} == set(at.LEVELS) and task.breakdown_key == "level"


def test_a_wrong_product_in_the_data_is_refused_with_file_and_line(tmp_path):
    for split in ("train", "validation", "test"):
        shutil.copy(at.DEFAULT_DATA_DIR / f"{split}.jsonl", tmp_path)
    lines = (tmp_path / "test.jsonl").read_text().splitlines()
    row = json.loads(lines[3])
    row["answer"] = str(int(row["answer"]) + 1)
    lines[3] = json.dumps(row)
    (tmp_path / "test.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"test.jsonl:4: answer"):
        at.load_problems("test", tmp_path)
    (tmp_path / "validation.jsonl").write_text((tmp_path / "train.jsonl").read_text().splitlines()[0] + "\n")
    with pytest.raises(UserError, match="also in train.jsonl"):
        at.load_problems("validation", tmp_path)


# ---------------------------------------------------------------------------------------------
# the bundled checkpoint
# ---------------------------------------------------------------------------------------------
def test_tool_tokenizer_knows_the_four_tags_as_ordinary_tokens():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TOOL_MODEL)
    text = "347*58=<code>347*58</code><interpreter>\n20126\n\n</interpreter>\n\n20126"
    ids = tok.encode(text, add_special_tokens=False)
    tokens = tok.convert_ids_to_tokens(ids)
    assert all(tokens.count(t) == 1 for t in TAGS) and len(ids) == 32 and tok.unk_token_id not in ids
    assert tok.decode(ids + [tok.eos_token_id], skip_special_tokens=True) == text  # the tags survive decoding
    assert not set(TAGS) & set(tok.all_special_tokens)
    addition = AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)
    assert tok.encode("347+58=", add_special_tokens=False) == addition.encode("347+58=", add_special_tokens=False)


def test_tool_checkpoint_is_small_and_its_build_is_recorded():
    size = sum(f.stat().st_size for f in TOOL_MODEL.iterdir())
    assert size < 5_000_000
    build = (TOOL_MODEL / "BUILD.md").read_text()
    assert "python scripts/build_tiny_model.py --target tool --seed 0 --out data" in build
    assert "sha256" in build  # the build's own fingerprint of the weights, checked below
    digest = hashlib.sha256((TOOL_MODEL / "model.safetensors").read_bytes()).hexdigest()
    assert digest in build


def _build_script():
    from scripts_module import load_script

    return load_script("build_tiny_model")


def test_the_build_scripts_tokenizer_is_the_bundled_one_and_traces_train_no_interpreter_token():
    from transformers import AutoTokenizer

    build = _build_script()
    tok, saved = build.build_tool_tokenizer(), AutoTokenizer.from_pretrained(TOOL_MODEL)
    assert tok.get_vocab() == saved.get_vocab()
    problem = at.make_problem([347, 58], 3)
    interpreter = "<interpreter>\n20126\n\n</interpreter>\n\n"
    ids, labels = build.tool_sft_row(problem, tok, interpreter)
    text = tok.decode(ids)
    assert text == "347*58=<code>347*58</code>" + interpreter + "20126<eos>"
    trained = tok.decode([i for i, lab in zip(ids, labels) if lab != -100])
    assert trained == "<code>347*58</code>20126<eos>"  # no loss on the prompt or the interpreter output
    ids, labels = build.tool_sft_row(problem, tok, None)
    assert tok.decode([i for i, lab in zip(ids, labels) if lab != -100]) == "20126<eos>"


@pytest.fixture(scope="module")
def tool_engine():
    from spo_lab.engines.hf import HFEngine
    from spo_lab.models import load_policy

    policy, tok = load_policy(str(TOOL_MODEL), device="cpu", dtype="float32")
    policy.eval()
    cfg = Config(task="arith_tool", model=str(TOOL_MODEL), tool_timeout_s=10, tool_memory_mb=512)
    return build_tool_engine(cfg, HFEngine(policy, tok), announce=False)


def test_the_start_calls_the_tool_on_part_of_the_prompts_and_the_tool_helps(tool_engine):
    """At the start, sampled at T = 1: some responses call the tool, some do not, and a call pays off."""
    problems = get_task("arith_tool").load("test")[:48]
    torch.manual_seed(0)
    r = tool_engine.generate([p.prompt for p in problems], 4, temperature=1.0, max_new_tokens=40)
    rows = [p for p in problems for _ in range(4)]
    rewards = [at.reward(t, p.answer) for t, p in zip(r.texts, rows)]
    b = at.tool_breakdown(r.texts, rewards)
    assert 0.1 < b["call_rate"] < 0.9, b
    assert b["acc_with_tool"] > b["acc_without_tool"] + 0.3, b
    calls = tool_engine.last_stats["calls"]
    assert [at.called_tool(t) for t in r.texts] == (calls > 0).tolist()  # read from the text as the engine counts
    assert all(bool(r.loss_mask[i].sum() < r.response_mask[i].sum()) == bool(calls[i]) for i in range(len(calls)))
    assert tool_engine.tool_metrics()["tool/call_rate"] == pytest.approx(b["call_rate"])


# ---------------------------------------------------------------------------------------------
# the trainer's tool settings
# ---------------------------------------------------------------------------------------------
def test_tool_is_on_for_arith_tool_and_off_for_the_main_job():
    assert tool_mode(Config(task="arith_tool", model=str(TOOL_MODEL))) == "python"
    assert tool_mode(Config()) == "none" and tool_mode(Config(tool="python")) == "python"
    assert tool_mode(Config(task="arith_tool", model=str(TOOL_MODEL), tool="none")) == "none"
    engine = object()
    assert build_tool_engine(Config(), engine) is engine  # the main job's engine is untouched


@pytest.mark.parametrize("field, value, flag", [
    ("tool", "bash", "--tool "), ("max_turns", 0, "--max-turns"), ("max_tool_chars", 1, "--max-tool-chars"),
    ("tool_timeout_s", 0.0, "--tool-timeout-s"), ("tool_memory_mb", 8, "--tool-memory-mb"),
    ("tool_waive", "network_namespace,seccomp", "--tool-waive"),
])
def test_bad_tool_settings_name_their_flag(field, value, flag):
    with pytest.raises(ValueError, match=flag):
        Config(**{field: value}).validate()
    Config(tool_waive="network_namespace, pid_namespace").validate()
    Config(tool_waive="all").validate()


def _small_tool_data(folder: Path, train: int = 24, held_out: int = 8) -> Path:
    """The first rows of the bundled arith_tool splits (disjoint, as the originals)."""
    folder.mkdir()
    for split, rows in (("train", train), ("validation", held_out), ("test", held_out)):
        lines = (at.DEFAULT_DATA_DIR / f"{split}.jsonl").read_text().splitlines()[:rows]
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_spos_offline_pass_runs_through_the_tool_engine_with_its_own_cache_key(tmp_path, monkeypatch):
    """SPO's offline pass (n0 samples per training prompt, Sec. 3.3) samples with the tool when the run does: the
    ToolEngine makes the responses, part of them call the tool, the counts come out, and the pass is cached under a
    key of its own (the same run without the tool computes and caches another pass, never reads this one)."""
    import spo_lab.train as train_module
    from spo_lab.offline import offline_cache_key
    from spo_lab.tools import ToolEngine

    seen = []
    real = train_module.offline_counts

    def recording(engine, task, problems, **kw):
        succ, trials = real(engine, task, problems, **kw)
        seen.append({"tool_engine": isinstance(engine, ToolEngine), "model_key": kw["model_key"], "kw": kw,
                     "problems": problems, "task": task.name, "succ": succ, "trials": trials,
                     "metrics": engine.tool_metrics() if isinstance(engine, ToolEngine) else {}})
        return succ, trials

    monkeypatch.setattr(train_module, "offline_counts", recording)
    data, cache = _small_tool_data(tmp_path / "data"), tmp_path / "cache"
    common = dict(task="arith_tool", model=str(TOOL_MODEL), algo="spo", n0=4, responses_per_step=8, steps=1,
                  eval_every=1, eval_max_prompts=4, eval_samples=1, max_new_tokens=40, data_dir=str(data),
                  cache_dir=str(cache), progress=False, save_model=False, tool_timeout_s=10, tool_memory_mb=512)
    train_module.train(Config(**common, out=str(tmp_path / "with-tool")))
    tool_pass = seen[-1]
    assert tool_pass["tool_engine"] and tool_pass["task"] == "arith_tool" and len(tool_pass["problems"]) == 24
    succ, trials = tool_pass["succ"], tool_pass["trials"]
    assert trials.tolist() == [4.0] * 24 and ((0 <= succ) & (succ <= 4)).all() and succ.sum() > 0
    # one chunk (24 prompts x 4 < the pass's batch): the engine's statistics are the whole pass's
    assert 0 < tool_pass["metrics"]["tool/call_rate"] < 1 and tool_pass["metrics"]["tool/tokens_mean"] > 0

    train_module.train(Config(**common, tool="none", out=str(tmp_path / "without")))
    plain = seen[-1]
    assert not plain["tool_engine"] and plain["metrics"] == {}
    suffix = "+tool(turns=8,chars=256)"
    assert tool_pass["model_key"] == plain["model_key"] + suffix  # same weights, the tool's settings in the key

    def cache_file(p):
        k = p["kw"]
        key = offline_cache_key(p["task"], p["problems"], model_key=p["model_key"], n0=k["n0"],
                                temperature=k["temperature"], max_new_tokens=k["max_new_tokens"], seed=k["seed"])
        return f"offline-{key}.pt"

    assert cache_file(tool_pass) != cache_file(plain)
    assert sorted(f.name for f in cache.glob("offline-*.pt")) == sorted([cache_file(tool_pass), cache_file(plain)])


def test_arith_tool_with_the_addition_model_is_refused():
    with pytest.raises(ValueError, match="--model .*tiny-qwen3-tool"):
        Config(task="arith_tool").validate()


def test_a_short_tool_run_logs_tool_use(tmp_path, capsys):
    from spo_lab.train import train

    cfg = Config(task="arith_tool", model=str(TOOL_MODEL), algo="grpo", group_size=4, responses_per_step=16, steps=2,
                 eval_every=2, eval_max_prompts=12, eval_samples=2, max_new_tokens=40, out=str(tmp_path / "run"),
                 progress=False, save_model=False, tool_timeout_s=10, tool_memory_mb=512, lr=3e-4)
    out = train(cfg)
    assert "sandbox: python -I" in capsys.readouterr().out  # the protections, printed at the start
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"tool/call_rate", "tool/calls_mean", "tool/tokens_mean"} <= set(rows[1])
    assert {"eval_tool/call_rate", "eval/sampled_acc/level=4"} <= set(rows[0]) and "eval_tool/call_rate" in rows[-1]
    assert json.loads((out / "config.json").read_text())["tool"] == "auto"


# ---------------------------------------------------------------------------------------------
# maths with the tool
# ---------------------------------------------------------------------------------------------
def test_math_tool_prompt_and_reward_rules():
    from spo_lab.tasks.math import TOOL_INSTRUCTION, format_prompt, tool_answer_text

    prompt = format_prompt("What is 2+2?", style="tool")
    assert prompt.startswith(TOOL_INSTRUCTION) and prompt.endswith("Problem: What is 2+2?\nSolution:")
    assert prompt.count("Problem:") == 1
    assert all(tag in TOOL_INSTRUCTION for tag in TAGS)
    good = "Let me compute.<code>print(2+2)</code><interpreter>\n4\n\n</interpreter>\n\nSo \\boxed{4}"
    assert tool_answer_text(good) == "\n\nSo \\boxed{4}"
    assert tool_answer_text("<code>print(4)</code><interpreter>\n\\boxed{4}\n") is None
    assert tool_answer_text("\\boxed{4}<code>1</code>") is None
    assert tool_answer_text("a</think>\\boxed{4}", thinking=True) == "\\boxed{4}"
    assert tool_answer_text("a</think>b</think>\\boxed{4}", thinking=True) is None
    assert tool_answer_text("a</think><code>x</code>\\boxed{4}", thinking=True) is None


def test_math_task_with_the_tool_scores_only_the_answer_part():
    from spo_lab.tasks.base import Problem
    from spo_lab.tasks.math import MathTask

    task = MathTask(style="tool", reward="math_dapo")
    p = Problem("x", "q", "4")
    texts = ["<code>print(4)</code><interpreter>\n4\n\n</interpreter>\n\nThe answer is \\boxed{4}",
             "<code>print('\\\\boxed{4}')</code><interpreter>\n\\boxed{4}\n\n</interpreter>\n\n",
             "\\boxed{4}"]
    assert task.reward(texts, [p] * 3) == [1.0, 0.0, 1.0]
    assert task.extract(texts[1]) is None and task.extract(texts[0]) == "4"
    assert MathTask.tool_kwargs == {"style": "tool"}


def test_math_with_the_tool_trains_on_the_fixtures(tmp_path):
    """The paper's setting in miniature: the math task's tool prompt, the ToolEngine, the sandbox and a PPO step
    on the tiny tool model (its context widened for the long prompts; rotary positions have no weights)."""
    pytest.importorskip("datasets")
    from spo_lab.train import train

    model = tmp_path / "tiny-tool-long"
    shutil.copytree(TOOL_MODEL, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 1024}))
    cfg = Config(task="math", tool="python", model=str(model), data_dir=str(ROOT / "data" / "math-fixtures" /
                 "DAPO-Math-17k-Processed"), eval_split="validation", algo="grpo", group_size=2, responses_per_step=4,
                 steps=1, eval_every=1, eval_max_prompts=2, max_new_tokens=24, max_turns=3, out=str(tmp_path / "run"),
                 progress=False, save_model=False, tool_timeout_s=10, tool_memory_mb=512,
                 cache_dir=str(tmp_path / "cache"))
    out = train(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 1 and "tool/turns_mean" in rows[-1] and "eval_tool/call_rate" in rows[-1]
    sample = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    assert "<code>" in sample["prompt"] and "<interpreter>" in sample["prompt"]  # the tool instruction


def test_the_qwen3_tool_profile_fits_one_80gb_gpu():
    from spo_lab.profiles import PROFILES, apply_profile

    cfg = apply_profile("gpu80-tool")
    assert (cfg.task, cfg.tool, cfg.max_turns, cfg.max_tool_chars, cfg.engine) == ("math", "python", 8, 256, "vllm")
    assert tool_mode(cfg) == "python" and "Qwen3" in cfg.model
    assert PROFILES["gpu80-tool"].estimate().total_gb < PROFILES["gpu80-tool"].gpu_memory_gb


def test_the_tool_report_pairs_seeds_and_reads_tool_use_start_to_end():
    import pandas as pd

    from spo_lab.report import summarize_tool_runs, tool_markdown, tool_summary_markdown

    rows = []
    for run, end in (("spo-n0-0", 0.9), ("grpo", 0.8)):
        for seed in range(3):
            for step, rate in ((0, 0.25), (20, 0.5), (40, end)):
                rows.append({"run": run, "seed": seed, "step": step, "responses": 64 * step,
                             "responses_incl_init": 64 * step, "eval/sampled_acc": rate * 0.8 + 0.01 * seed,
                             "eval/greedy_acc": 0.5, "eval_tool/call_rate": rate, "eval_tool/acc_with_tool": 0.8,
                             "eval_tool/acc_without_tool": 0.0 if step == 0 else None, "reward/mean": rate,
                             "reward/var": 0.1, "adv/raw_var": 0.1, "time/generate": 1.0})
    summary = summarize_tool_runs(pd.DataFrame(rows))
    tool = summary["runs"]["spo-n0-0"]["tool"]
    assert tool["start_call_rate"]["mean"] == 0.25 and tool["final_call_rate"]["mean"] == pytest.approx(0.9)
    assert tool["gain_call_rate"]["mean"] == pytest.approx(0.65) and tool["final_acc_without_tool"]["n"] == 0
    assert summary["vs_grpo"]["spo-n0-0"]["avg"]["mean"] == pytest.approx(0.08)
    summary["settings"] = {"eval_samples": 4, "responses_per_step": 64, "steps": 40, "eval_prompts": 200,
                           "eval_split": "test", "temperature": 1.0, "max_turns": 8}
    for e in summary["runs"].values():
        e["lr"] = 1e-4
    md = tool_markdown(summary)
    assert "| spo-n0-0 | 0.250 ± 0.000 | 0.900 ± 0.000 | +0.650" in md and "0.000 -> -" in md

    # summary.md says the job's departures from the recipe plainly, before the tables (the README's block)
    summary["settings"]["max_tool_chars"], summary["figures"] = 64, ["tool_use.png"]
    page = tool_summary_markdown(summary, 60.0)
    assert "Tool outputs are cut at 64 characters, not at the recipe's 256" in page
    assert "SPO runs only as `spo-n0-0` (no offline pass: n0 = 0" in page and "n0 = 8) is not part of this job" in page
    table = tool_markdown(summary)
    assert page.index("SPO runs only") < page.index(table) and "SPO runs only" not in table
    assert "Whole job: 1.0 min" in page and page.endswith("![tool_use.png](tool_use.png)\n")
    summary["settings"]["max_tool_chars"] = 256
    summary["runs"] = {"spo" if r == "spo-n0-0" else r: e for r, e in summary["runs"].items()}
    page = tool_summary_markdown(summary)
    assert "cut at" not in page and "SPO runs only" not in page  # the recipe's cut and the official arm: nothing to say


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
