"""Tests for the arithmetic task: answer parsing, reward, ids, generation and the bundled splits."""

from __future__ import annotations

import json
import random

import pytest

from spo_lab.tasks.arith import (
    DEFAULT_DATA_DIR,
    LEVEL_WEIGHTS,
    LEVELS,
    Problem,
    count_carries,
    generate_problems,
    load_problems,
    make_problem,
    parse_answer,
    problem_id,
    prompt_pool,
    reward,
    sample_problem,
    save_problems,
)

# ---------------------------------------------------------------------------------------------
# parse_answer / reward
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("405", 405),
        (" 405", 405),  # leading whitespace is skipped
        ("\n\t405", 405),
        ("405 ", 405),  # whatever follows the integer is ignored ...
        ("405=", 405),
        ("405<eos>", 405),
        ("405+1", 405),
        ("4051", 4051),  # ... but a longer integer is a different integer
        ("0", 0),
        ("-12", -12),  # a sign is allowed, the task itself only has sums >= 0
        ("", None),
        ("   ", None),
        ("=405", None),
        ("abc", None),
        ("0405", None),  # leading zeros are not canonical
        ("00", None),
        ("-0", None),
        ("+405", None),
        ("- 5", None),
        ("٤٠٥", None),  # Arabic-Indic digits are not ASCII digits
        ("４０５", None),  # nor are full-width digits
        ("1" * 65, None),  # longer than MAX_ANSWER_DIGITS
    ],
)
def test_parse_answer(completion, expected):
    assert parse_answer(completion) == expected


@pytest.mark.parametrize(
    "completion, answer, expected",
    [
        ("405", "405", 1.0),
        ("405 junk", "405", 1.0),
        ("406", "405", 0.0),
        ("4050", "405", 0.0),
        ("0405", "405", 0.0),
        ("", "405", 0.0),
        ("é405", "405", 0.0),
        ("0", "0", 1.0),
    ],
)
def test_reward(completion, answer, expected):
    assert reward(completion, answer) == expected


def test_reward_never_raises_on_odd_input():
    for completion in ["\x00", "🙂", "9" * 10_000, "-", "\u200b405", None, 405]:
        assert reward(completion, "405") in (0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# ids and problem construction
# ---------------------------------------------------------------------------------------------


def test_problem_id_is_a_stable_content_hash():
    # sha1("347+58=") starts with these 12 hex characters in every process (no hash salt)
    assert problem_id("347+58=") == "b9494d02caa5"
    assert problem_id("347+58=") != problem_id("58+347=")
    assert len(problem_id("")) == 12


@pytest.mark.parametrize(
    "operands, carries", [((347, 58), 2), ((12, 3), 0), ((999, 1), 3), ((5, 5), 1), ((0, 0), 0)]
)
def test_count_carries(operands, carries):
    assert count_carries(operands) == carries


def test_make_problem_fills_every_field():
    problem = make_problem((347, 58), level=3)
    assert problem == Problem(
        id=problem_id("347+58="),
        prompt="347+58=",
        answer="405",
        level=3,
        operands=(347, 58),
        n_digits=3,
        n_carries=2,
    )


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_sample_problem_respects_the_level(level):
    rng = random.Random(level)
    for _ in range(50):
        problem = sample_problem(rng, level)
        digits = sorted(len(str(x)) for x in problem.operands)
        assert digits == sorted(LEVELS[level])
        assert int(problem.answer) == sum(problem.operands)
        assert reward(problem.answer, problem.answer) == 1.0


def test_unknown_level_is_rejected():
    with pytest.raises(ValueError, match="unknown level"):
        sample_problem(random.Random(0), 99)
    with pytest.raises(ValueError, match="unknown levels"):
        generate_problems(5, seed=0, level_weights={99: 1.0})


# ---------------------------------------------------------------------------------------------
# generate_problems
# ---------------------------------------------------------------------------------------------


def test_generate_problems_is_deterministic_and_distinct():
    first = generate_problems(300, seed=7)
    assert first == generate_problems(300, seed=7)
    assert first != generate_problems(300, seed=8)
    assert len({p.prompt for p in first}) == 300
    assert {p.level for p in first} <= set(LEVEL_WEIGHTS)


def test_generate_problems_does_not_touch_global_random_state():
    random.seed(123)
    expected = random.random()
    random.seed(123)
    generate_problems(20, seed=0)
    assert random.random() == expected


def test_generate_problems_pools_and_exclude():
    rl = generate_problems(200, seed=0)
    warmup = generate_problems(200, seed=0, pool="warmup")
    assert all(prompt_pool(p.prompt) == "rl" for p in rl)
    assert all(prompt_pool(p.prompt) == "warmup" for p in warmup)
    other = generate_problems(200, seed=0, exclude=[p.prompt for p in rl])
    assert not {p.prompt for p in other} & {p.prompt for p in rl}
    with pytest.raises(ValueError, match="unknown pool"):
        generate_problems(1, seed=0, pool="train")


def test_generate_problems_fails_loudly_when_a_level_runs_out():
    # level 1 has 1,800 prompts in all, about half of them in the "rl" pool
    with pytest.raises(ValueError, match="distinct prompts"):
        generate_problems(1000, seed=0, level_weights={1: 1.0})


def test_save_and_load_round_trip(tmp_path):
    problems = generate_problems(30, seed=3)
    save_problems(problems, tmp_path / "train.jsonl")
    assert load_problems("train", tmp_path) == problems


def test_load_problems_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown split"):
        load_problems("valid", tmp_path)
    with pytest.raises(FileNotFoundError, match="build_tiny_model.py"):
        load_problems("test", tmp_path)


@pytest.mark.parametrize("split, earlier", [("validation", "train"), ("test", "train"), ("test", "validation")])
def test_a_prompt_shared_between_splits_is_an_error(tmp_path, split, earlier):
    problems = generate_problems(20, seed=5)
    save_problems(problems[:10], tmp_path / f"{earlier}.jsonl")
    save_problems([*problems[10:], problems[3]], tmp_path / f"{split}.jsonl")
    with pytest.raises(ValueError, match=rf"{split}.jsonl:11: .* also in {earlier}.jsonl"):
        load_problems(split, tmp_path)


# ---------------------------------------------------------------------------------------------
# the bundled data/arith splits
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def splits():
    return {name: load_problems(name) for name in ("train", "validation", "test")}


def test_bundled_splits_are_valid_and_disjoint(splits):
    train, validation, test = splits["train"], splits["validation"], splits["test"]
    assert (len(train), len(validation), len(test)) == (5000, 500, 500)
    every = train + validation + test
    for problem in every:
        assert problem.id == problem_id(problem.prompt)
        assert problem.answer == str(sum(problem.operands))
        assert problem.prompt == "+".join(map(str, problem.operands)) + "="
        assert prompt_pool(problem.prompt) == "rl"
    assert len({p.id for p in every}) == 6000  # ids unique, within and across splits
    # every split covers exactly the levels of LEVEL_WEIGHTS (2-6: all learnable from the warm start)
    for problems in (train, validation, test):
        assert {p.level for p in problems} == set(LEVEL_WEIGHTS) == {2, 3, 4, 5, 6}


def test_bundled_files_have_the_documented_fields():
    with open(DEFAULT_DATA_DIR / "train.jsonl", encoding="utf-8") as f:
        first = json.loads(f.readline())
    assert {"id", "prompt", "answer", "level", "operands", "n_digits", "n_carries"} <= set(first)
