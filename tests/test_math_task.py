"""The math task: every loader on its fixture through ``datasets``, dedup, splits, prompts, scoring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

datasets = pytest.importorskip("datasets")
pytest.importorskip("math_verify")

from spo_lab.tasks import Task, content_id, get_task  # noqa: E402
from spo_lab.tasks.math import (  # noqa: E402
    BENCHMARKS, DAPO_PREFIX, MathTask, format_prompt, load_benchmark, load_benchmark_rows, load_hf,
    load_training_rows, strip_dapo_instruction,
)

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "data" / "math-fixtures"
PROCESSED, RAW = FIX / "DAPO-Math-17k-Processed", FIX / "DAPO-Math-17k"
PATHS = {"aime24": FIX / "AIME_2024", "aime25": FIX / "aime_2025", "beyondaime": FIX / "BeyondAIME",
         "brumo25": FIX / "brumo_2025", "hmmt25": FIX / "hmmt_feb_2025"}

CHAT = [{"content": "string", "role": "string"}]
REWARD, EXTRA = {"ground_truth": "string", "style": "string"}, {"index": "string"}
# The real datasets' schemas (column -> type), as the fixtures must reproduce them.
SCHEMAS = {
    PROCESSED / "en": {"prompt": "string", "solution": "string", "data_source": "string", "source_prompt": CHAT,
                       "ability": "string", "reward_model": REWARD, "extra_info": EXTRA},
    RAW: {"data_source": "string", "prompt": CHAT, "ability": "string", "reward_model": REWARD, "extra_info": EXTRA},
    PATHS["aime24"]: {"ID": "string", "Problem": "string", "Solution": "string", "Answer": "int64"},
    PATHS["aime25"]: {"id": "int64", "problem": "string", "answer": "string"},
    PATHS["beyondaime"]: {"problem": "string", "answer": "string"},
    PATHS["brumo25"]: {"problem_idx": "int64", "problem": "string", "answer": "string", "problem_type": ["string"]},
    PATHS["hmmt25"]: {"problem_idx": "int64", "problem": "string", "answer": "string", "problem_type": ["string"]},
}


def _plain(feature):
    """A datasets feature as plain data: "string", ["string"], {"field": ...}, [{"field": ...}]."""
    if isinstance(feature, dict):
        return {k: _plain(v) for k, v in feature.items()}
    if isinstance(feature, datasets.List):
        return [_plain(feature.feature)]
    return feature.dtype


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("hf-cache"))


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ROOT / "data" / "tiny-qwen3")
    assert not getattr(tok, "chat_template", None)  # the bundled tiny model has none
    return tok


@pytest.fixture(scope="module")
def chat_tokenizer():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ROOT / "data" / "tiny-qwen3")
    tok.chat_template = (  # Qwen3's shape: thinking off pre-fills an empty <think> block
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n"
        "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}")
    return tok


@pytest.mark.parametrize("folder", list(SCHEMAS), ids=lambda p: p.name)
def test_fixtures_have_the_real_schemas(folder, cache):
    split = "test" if folder == PATHS["beyondaime"] else "train"
    ds = load_hf(folder, split=split, cache_dir=cache)
    assert {k: _plain(v) for k, v in ds.features.items()} == SCHEMAS[folder]
    assert list(ds.features) == list(SCHEMAS[folder])  # same column order too
    assert 6 <= len(ds) <= 12


def test_fixtures_are_small():
    assert sum(f.stat().st_size for f in FIX.rglob("*") if f.is_file()) < 200_000
    assert (FIX / "README.md").read_text().lower().count("synthetic") >= 1


@pytest.mark.parametrize("config, n", [("en", 8), ("cn", 3), ("all", 11)])
def test_processed_loader(config, n, cache):
    rows, stats = load_training_rows(PROCESSED, config=config, cache_dir=cache)
    assert (len(rows), stats.rows, stats.kept, stats.dropped) == (n, n, n, 0)
    for r in rows:
        assert r.id == content_id(r.problem, r.answer)
        assert not r.problem.startswith("Solve the following") and "Answer:" not in r.problem
        assert r.raw_prompt.startswith(DAPO_PREFIX) and r.source == r.meta["source"] == "math_dapo"
        assert r.meta["index"]
    first = {"en": ("What is the sum of the first 20 positive odd integers?", "400"),
             "cn": ("求 $1+2+\\cdots+100$ 的值。", "5050")}
    assert (rows[0].problem, rows[0].answer) == first["cn" if config == "cn" else "en"]


def test_raw_loader_deduplicates_and_matches_processed_ids(cache):
    en, _ = load_training_rows(PROCESSED, config="en", cache_dir=cache)
    for where in (RAW, RAW / "data" / "dapo-math-17k.parquet"):  # the repo folder or the bare file
        rows, stats = load_training_rows(where, cache_dir=cache)
        assert (stats.rows, stats.kept, stats.dropped) == (10, 6, 4)
        assert [r.id for r in rows] == [r.id for r in en[:6]]  # first-seen order, same content ids
        assert len({r.id for r in rows}) == 6


def test_generic_jsonl_and_save_to_disk(tmp_path, cache):
    path = tmp_path / "mine.jsonl"
    items = [{"problem": "1+1?", "answer": "2"}, {"problem": "2+2?", "answer": "4"}, {"problem": "1+1?", "answer": "2"},
             {"problem": "1+1?", "answer": "3"},  # same problem, other answer: a different item
             {"problem": "3+3?", "answer": None}]  # no answer: skipped and counted
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    rows, stats = load_training_rows(path, cache_dir=cache)
    assert [(r.problem, r.answer) for r in rows] == [("1+1?", "2"), ("2+2?", "4"), ("1+1?", "3")]
    assert (stats.rows, stats.kept, stats.dropped, stats.missing) == (5, 3, 1, 1) and rows[0].source == "train"
    saved = tmp_path / "saved"
    load_hf(PATHS["hmmt25"], cache_dir=cache).save_to_disk(str(saved))
    assert load_benchmark_rows("hmmt25", path=saved, cache_dir=cache) == load_benchmark_rows(
        "hmmt25", path=PATHS["hmmt25"], cache_dir=cache)


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_benchmark_loaders(name, cache):
    rows = load_benchmark_rows(name, path=PATHS[name], cache_dir=cache)
    assert len(rows) == 6
    for r in rows:
        assert set(r) == {"id", "problem", "answer", "source", "orig_id"}
        assert r["source"] == name and isinstance(r["answer"], str) and r["answer"]
        assert r["id"] == content_id(r["problem"], r["answer"])
    probs = load_benchmark(name, path=PATHS[name], cache_dir=cache)
    assert [p.id for p in probs] == [r["id"] for r in rows]
    assert all(p.meta["source"] == name and p.prompt.endswith("Solution:") for p in probs)


def test_benchmark_answers_and_ids(cache):
    aime24 = load_benchmark_rows("aime24", path=PATHS["aime24"], cache_dir=cache)
    assert (aime24[0]["answer"], aime24[0]["orig_id"]) == ("9", "2024-I-1")  # int64 Answer -> "9"
    hmmt = load_benchmark_rows("hmmt25", path=PATHS["hmmt25"], cache_dir=cache)
    assert hmmt[0]["answer"] == "\\frac{1+\\sqrt{5}}{2}" and hmmt[0]["orig_id"] == "1"
    assert load_benchmark_rows("beyondaime", path=PATHS["beyondaime"], cache_dir=cache)[2]["orig_id"] == "2"


def test_clear_errors(tmp_path, cache):
    with pytest.raises(ValueError, match=r"unknown benchmark 'aime23'.*'aime24', 'aime25', 'beyondaime'"):
        load_benchmark_rows("aime23")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"problem": "x", "solution": "y"}) + "\n")
    with pytest.raises(KeyError, match=r"bad\.jsonl.*missing column\(s\) \['answer'\]"):
        load_benchmark_rows("beyondaime", path=bad, cache_dir=cache)
    with pytest.raises(KeyError, match=r"bad\.jsonl: cannot tell the schema"):
        load_training_rows(bad, cache_dir=cache)
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_training_rows(tmp_path / "missing.parquet")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_hf(Path(__file__))
    with pytest.raises(ValueError, match="Unknown split"):
        load_hf(PATHS["beyondaime"], split="train", cache_dir=cache)
    with pytest.raises(ValueError, match="unknown reward"):
        MathTask(PROCESSED, reward="exact")
    with pytest.raises(ValueError, match="unknown benchmark 'aime26'"):
        MathTask(PROCESSED, test=["aime24", "aime26"])
    with pytest.raises(ValueError, match="validation_size"):
        MathTask(PROCESSED, validation_size=-1)
    with pytest.raises(ValueError, match="unknown prompt style"):
        format_prompt("x", style="chat")
    with pytest.raises(ValueError, match=r"unknown split 'dev'.*'validation'"):
        _task(cache).load("dev")


def _task(cache, **kw):
    kw = {"validation_size": 3, "benchmark_paths": PATHS, "cache_dir": cache, **kw}
    return MathTask(PROCESSED, **kw)


def test_task_protocol_and_splits(cache):
    task = _task(cache)
    assert isinstance(task, Task) and task.name == "math" and task.breakdown_key == "source"
    train, val = task.load("train"), task.load("validation")
    assert (len(train), len(val)) == (5, 3) and task.dedup_stats.dropped == 0
    assert not {p.id for p in train} & {p.id for p in val}
    assert [p.id for p in _task(cache).load("validation")] == [p.id for p in val]  # deterministic
    assert len(_task(cache, validation_size=0.25).load("validation")) == 2
    assert len(_task(cache, validation_size=100).load("validation")) == 4  # capped at half the rows
    test = task.load("test")
    assert len(test) == 30 and {p.meta["source"] for p in test} == set(BENCHMARKS)
    assert [p.meta["source"] for p in task.load("hmmt25")] == ["hmmt25"] * 6
    assert {p.meta["source"] for p in _task(cache, test="brumo25").load("test")} == {"brumo25"}
    assert isinstance(get_task("math", data=str(PROCESSED), benchmark_paths=PATHS), MathTask)


def test_task_scores_and_extracts(cache):
    task = _task(cache)
    test = task.load("test")
    right = [f"Reasoning.\n\n\\boxed{{{p.answer}}}" for p in test]
    assert task.reward(right, test) == [1.0] * 30
    wrong = ["\\boxed{0}"] * 29 + ["no box"]
    assert task.reward(wrong, test) == [0.0] * 30
    assert task.extract("\\boxed{\\dfrac{2}{4}}") == task.extract("\\boxed{0.5}") == "1/2"
    assert task.extract("nothing") is None
    with pytest.raises(ValueError):
        task.reward(["a"], test[:2])
    strict = _task(cache, reward="math_dapo", thinking=True)
    probs = strict.load("brumo25")  # answers like \frac{1}{2}: strict wants the exact string
    assert strict.reward(["<think>..</think>\\boxed{\\frac{1}{2}}", "\\boxed{\\sqrt{3}}"], probs[:2]) == [1.0, 0.0]
    assert strict.reward(["<think>..</think>\\boxed{0.5}"], probs[:1]) == [0.0]
    assert strict.extract("x \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"


def test_prompt_templates(tokenizer, chat_tokenizer):
    plain = format_prompt("What is 1+1?")
    assert plain == "Problem: What is 1+1?\n\nPlease reason step by step, and put your final answer within \\boxed{}.\nSolution:"
    assert format_prompt("What is 1+1?", tokenizer=tokenizer) == plain  # no chat template: plain text
    on = format_prompt("What is 1+1?", tokenizer=chat_tokenizer, thinking=True)
    off = format_prompt("What is 1+1?", tokenizer=chat_tokenizer, thinking=False)
    assert on.startswith("<|im_start|>user\nWhat is 1+1?\n\nPlease reason step by step")
    assert on.endswith("<|im_start|>assistant\n") and off.endswith("<think>\n\n</think>\n\n")
    raw = DAPO_PREFIX + "\n\nWhat is 1+1?\n\nRemember to put your answer on its own line after \"Answer:\"."
    assert strip_dapo_instruction(raw) == "What is 1+1?"
    official = format_prompt("What is 1+1?", style="official", raw_prompt=raw)
    assert official == f"Problem: {raw}\nThe answer format must be: \\boxed{{'The final answer goes here.'}}\nSolution:"


def test_task_prompts_use_the_tokenizer(chat_tokenizer, cache):
    task = _task(cache, tokenizer=chat_tokenizer, thinking=False)
    p = task.load("train")[0]
    assert p.prompt.startswith("<|im_start|>user\n") and p.prompt.endswith("</think>\n\n")
    official = _task(cache, tokenizer=chat_tokenizer, thinking=True, style="official").load("train")[0]
    assert DAPO_PREFIX in official.prompt and "The answer format must be: \\boxed{" in official.prompt
    assert official.id == p.id  # the id depends on the content, not on the template
