"""Tests for the character tokenizer, the tiny Qwen3 builder and the bundled checkpoint."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3ForCausalLM

from spo_lab.tasks.arith import load_problems, parse_answer, reward
from spo_lab.models import DEFAULT_MODEL_DIR, load_policy
from spo_lab.tiny_model import (
    CHARS,
    SPECIAL_TOKENS,
    build_tiny_model,
    build_tokenizer,
    tiny_qwen3_config,
)

MAX_NEW_TOKENS = 8


def greedy(model, tokenizer, prompts: list[str]) -> list[str]:
    """Greedy completions of a left-padded batch, special tokens removed."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, do_sample=False, max_new_tokens=MAX_NEW_TOKENS)
    return tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.fixture(scope="module")
def policy():
    return load_policy()


# ---------------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------------


def test_tokenizer_is_one_token_per_character():
    tokenizer = build_tokenizer()
    text = "347+58= 1-0"
    ids = tokenizer(text)["input_ids"]  # default call: no special tokens are added
    assert len(ids) == len(text)
    assert tokenizer.convert_ids_to_tokens(ids) == list(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == [0, 1, 2]
    assert len(tokenizer) == len(SPECIAL_TOKENS) + len(CHARS)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer.bos_token_id is None


def test_tokenizer_maps_unknown_characters_to_unk_and_drops_specials_on_decode():
    tokenizer = build_tokenizer()
    one, two = tokenizer.convert_tokens_to_ids(["1", "2"])
    assert tokenizer("1é2")["input_ids"] == [one, tokenizer.unk_token_id, two]
    ids = tokenizer("405")["input_ids"] + [tokenizer.eos_token_id, tokenizer.pad_token_id]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "405"


def test_tokenizer_pads_on_the_left():
    batch = build_tokenizer()(["1+2=", "347+58="], padding=True)
    assert batch["input_ids"][0][:3] == [0, 0, 0]
    assert batch["attention_mask"] == [[0, 0, 0, 1, 1, 1, 1], [1] * 7]


def test_tokenizer_survives_save_and_auto_load(tmp_path):
    build_tokenizer().save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.padding_side == "left"
    assert loaded("347+58=")["input_ids"] == build_tokenizer()("347+58=")["input_ids"]


# ---------------------------------------------------------------------------------------------
# builder
# ---------------------------------------------------------------------------------------------


def small_config():
    return tiny_qwen3_config(build_tokenizer(), hidden_size=32, num_hidden_layers=1, intermediate_size=64)


def test_builder_is_deterministic_for_a_seed():
    first, again, other = (build_tiny_model(small_config(), seed=s) for s in (0, 0, 1))
    for (name, a), b in zip(first.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, c) for a, c in zip(first.parameters(), other.parameters()))


def test_default_config_is_a_small_qwen3_with_tied_embeddings():
    config = tiny_qwen3_config(build_tokenizer())
    assert config.model_type == "qwen3"
    assert config.tie_word_embeddings
    assert config.head_dim * config.num_attention_heads == config.hidden_size
    model = build_tiny_model(config, seed=0)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 3e6


def test_load_policy_round_trip(tmp_path):
    model = build_tiny_model(small_config(), seed=0)
    model.save_pretrained(tmp_path)
    build_tokenizer().save_pretrained(tmp_path)
    loaded, tokenizer = load_policy(tmp_path)
    assert not loaded.training
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    assert tokenizer.padding_side == "left"


# ---------------------------------------------------------------------------------------------
# the bundled checkpoint (data/tiny-qwen3)
# ---------------------------------------------------------------------------------------------


def test_bundled_checkpoint_loads_offline_with_the_auto_classes(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL_DIR)
    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)
    assert isinstance(model, Qwen3ForCausalLM)
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert (DEFAULT_MODEL_DIR / "BUILD.md").is_file()


def test_bundled_model_answers_easy_prompts_greedily(policy):
    # BUILD.md reports greedy accuracy above 0.9 on the level-2 test prompts; check a slice of that claim
    model, tokenizer = policy
    easy = [p for p in load_problems("test") if p.level == 2][:20]
    assert len(easy) == 20
    completions = greedy(model, tokenizer, [p.prompt for p in easy])
    assert all(parse_answer(c) is not None for c in completions)
    assert sum(reward(c, p.answer) for c, p in zip(completions, easy)) >= 16


def test_batched_left_padded_generation_matches_one_by_one(policy):
    model, tokenizer = policy
    prompts = ["47+5=", "3+68=", "347+58=", "12+345=", "3470+958=", "9581+3470=", "34702+95813=", "1+99="]
    batched = greedy(model, tokenizer, prompts)
    single = [greedy(model, tokenizer, [p])[0] for p in prompts]
    assert batched == single
