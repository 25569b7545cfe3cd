"""VLLMServerEngine (``--engine vllm-server``): rollouts from a running ``vllm serve`` over HTTP.

Two parts:

* Against a fake server (standard library ``http.server``, runs everywhere): the requests the engine sends,
  how it turns answers into :class:`Rollouts`, its errors (unreachable URL, timeout, HTTP error with the
  server's message, a server that caps new tokens) and the adapter names of LoRA weight sync.
* Against a real ``vllm serve`` (vLLM's CPU build, started by ``scripts/ci_vllm.sh`` on the bundled tiny
  Qwen3): greedy texts and log-probs equal to HFEngine's, LoRA sync, the trainer end to end. These run only
  when ``SPO_VLLM_SERVER_URL`` names the server; without it they skip.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from spo_lab.engines import ENGINES, build_engine
from spo_lab.engines.base import Rollouts
from spo_lab.engines.hf import HFEngine
from spo_lab.engines.vllm_server import ServerError, ServerTimeout, ServerUnreachable, VLLMServerEngine
from spo_lab.errors import UserError
from spo_lab.models import DEFAULT_MODEL_DIR, LoraSpec, load_policy, load_tokenizer, token_logprobs
from spo_lab.train import Config

URL_ENV = "SPO_VLLM_SERVER_URL"
ROOT = DEFAULT_MODEL_DIR.parent.parent
EOS, PAD = 1, 0


# ====================================================================== a fake vLLM server
class FakeServer:
    """``GET /v1/models``, ``POST /v1/completions`` (answered by ``complete(body)``) and the LoRA routes; every
    request is recorded as ``(path, body)``; ``delay`` seconds before answering; ``fail`` = (code, body)."""

    def __init__(self):
        self.requests: list[tuple[str, dict | None]] = []
        self.delay, self.fail = 0.0, None
        self.complete = lambda body: _answer([([6, EOS], [-0.5, -0.25], "stop")] * body["n"])
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _reply(self, code: int, payload) -> None:
                raw = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self):
                fake.requests.append((self.path, None))
                self._reply(200, {"object": "list", "data": [  # another process's adapter is listed too
                    {"id": "spo-0000-v1", "object": "model", "parent": "tiny"}, {"id": "tiny", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/v1/load_lora_adapter":  # the adapter is on disk when the server is asked to load it
                    body["_saved"] = (Path(body["lora_path"]) / "adapter_config.json").exists()
                fake.requests.append((self.path, body))
                time.sleep(fake.delay)
                if fake.fail is not None:
                    return self._reply(*fake.fail)
                if self.path == "/v1/completions":
                    return self._reply(200, fake.complete(body))
                self._reply(200, f"Success: {self.path}")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def posts(self, path: str) -> list[dict]:
        return [b for p, b in self.requests if p == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _answer(choices) -> dict:
    """A completions answer: ``choices`` of (token_ids, logprobs, finish_reason), as vLLM 0.32 lays it out."""
    return {"object": "text_completion", "model": "tiny", "choices": [
        {"index": k, "text": "", "finish_reason": reason, "token_ids": ids,
         "logprobs": {"tokens": [f"token_id:{t}" for t in ids], "token_logprobs": lps, "top_logprobs": None}}
        for k, (ids, lps, reason) in enumerate(choices)]}


@pytest.fixture
def fake():
    server = FakeServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(DEFAULT_MODEL_DIR)


# ====================================================================== requests and answers
def test_generate_sends_token_ids_and_builds_rollouts(fake, tok):
    fake.complete = lambda body: _answer([([6, EOS], [-0.5, -0.25], "stop"), ([7, 8, 9], [-1.0, -2.0, -3.0], "length")])
    eng = VLLMServerEngine(fake.url + "/v1/", tok, seed=3)  # a trailing /v1 is accepted
    assert eng.url == fake.url and eng.base_model == "tiny"
    torch.manual_seed(0)
    ro = eng.generate(["1+2=", "12+3="], 2, temperature=0.7, max_new_tokens=3)
    bodies = sorted(fake.posts("/v1/completions"), key=lambda b: len(b["prompt"]))  # sent concurrently: any order
    assert [b["prompt"] for b in bodies] == [tok(p, add_special_tokens=False)["input_ids"] for p in ("1+2=", "12+3=")]
    for b in bodies:
        assert b["model"] == "tiny" and b["n"] == 2 and b["max_tokens"] == 3 and b["logprobs"] == 0
        assert b["return_token_ids"] is True and b["stop_token_ids"] == [EOS]
        assert (b["temperature"], b["top_k"], b["top_p"], b["repetition_penalty"], b["min_p"]) == (0.7, 0, 1.0, 1.0, 0.0)
    assert bodies[0]["seed"] != bodies[1]["seed"]
    assert isinstance(ro, Rollouts) and len(ro) == 4 and ro.prompt_index.tolist() == [0, 0, 1, 1]
    assert ro.response_ids.tolist() == [[6, EOS, PAD], [7, 8, 9]] * 2
    assert ro.response_mask.tolist() == [[1, 1, 0], [1, 1, 1]] * 2
    assert ro.logprobs.tolist() == [[-0.5, -0.25, 0.0], [-1.0, -2.0, -3.0]] * 2
    assert ro.truncated.tolist() == [False, True] * 2 and ro.texts == ["3", "456"] * 2
    assert ro.prompt_mask[0].tolist() == [0, 1, 1, 1, 1] and ro.prompt_mask[2].tolist() == [1] * 5  # left padding

    torch.manual_seed(0)  # seeds follow torch's generator: the same stream, the same requests
    eng.generate(["1+2=", "12+3="], 2, temperature=0.7, max_new_tokens=3)
    again = sorted(fake.posts("/v1/completions")[2:], key=lambda b: len(b["prompt"]))
    assert [b["seed"] for b in again] == [b["seed"] for b in bodies]
    eng.generate(["1+2="], 2, greedy=True, max_new_tokens=3)
    greedy = fake.posts("/v1/completions")[-1]
    assert greedy["temperature"] == 0.0 and "seed" not in greedy


def test_continue_tokens_stops_at_the_string_and_cuts_exactly(fake, tok):
    fake.complete = lambda body: _answer([([4, 13, 5, 6], [-0.1, -0.2, -0.3, -0.4], "stop")])
    eng = VLLMServerEngine(fake.url, tok)
    turns = eng.continue_tokens([[4, 15], [5, 15]], max_new_tokens=[4, 0], temperature=1.0, stop="+")
    body, = fake.posts("/v1/completions")  # the prefix with no budget left is not sent
    assert body["prompt"] == [4, 15] and body["max_tokens"] == 4
    assert body["stop"] == ["+"] and body["include_stop_str_in_output"] is True
    assert (turns[0].token_ids, turns[0].logprobs, turns[0].stop_reason) == ([4, 13], [-0.1, -0.2], "stop")
    assert (turns[1].token_ids, turns[1].stop_reason) == ([], "length")


# ====================================================================== errors: clear, and never a hang
def test_an_unreachable_url_names_the_flag(tok):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ServerUnreachable, match=r"cannot reach the vLLM server at http://127.0.0.1:\d+ \(--engine-url\)"):
        VLLMServerEngine(f"http://127.0.0.1:{port}", tok, timeout_s=5)
    with pytest.raises(UserError, match="--engine-url must be the vLLM server's base URL"):
        VLLMServerEngine("localhost:8000", tok)


def test_a_slow_server_times_out(fake, tok):
    eng = VLLMServerEngine(fake.url, tok, timeout_s=0.5)
    fake.delay = 3.0
    t0 = time.perf_counter()
    with pytest.raises(ServerTimeout, match=r"did not answer POST /v1/completions within 0.5 s"):
        eng.generate(["1+2="], 1, max_new_tokens=2)
    assert time.perf_counter() - t0 < 2.5


def test_http_errors_carry_the_servers_message(fake, tok):
    eng = VLLMServerEngine(fake.url, tok)
    fake.fail = (400, {"error": {"message": "This model's maximum context length is 64 tokens.", "type": "BadRequestError",
                                 "code": 400}})
    with pytest.raises(ServerError, match=r"HTTP 400: This model's maximum context length is 64 tokens"):
        eng.generate(["1+2="], 1, max_new_tokens=200)
    fake.fail = None
    fake.complete = lambda body: _answer([([6, 7], [-0.5, -0.5], "length")])  # 2 of 4 tokens: a server-side cap
    with pytest.raises(ServerError, match="--generation-config vllm"):
        eng.generate(["1+2="], 1, max_new_tokens=4)
    fake.complete = lambda body: _answer([([6, 7], [-0.5, -0.5], "stop")])  # stopped, but not at <eos>
    with pytest.raises(ServerError, match="other than <eos>"):
        eng.generate(["1+2="], 1, max_new_tokens=4)


# ====================================================================== LoRA weight sync
def test_lora_sync_loads_a_fresh_adapter_per_version_and_unloads_the_last(fake, tok, tmp_path):
    model, _ = load_policy(DEFAULT_MODEL_DIR, lora=LoraSpec(r=2))
    eng = VLLMServerEngine(fake.url, tok, sync_dir=tmp_path / "sync")
    for _ in range(3):
        eng.sync_weights(model)
    loads, unloads = fake.posts("/v1/load_lora_adapter"), fake.posts("/v1/unload_lora_adapter")
    names = [b["lora_name"] for b in loads]
    assert names == [f"{eng.adapter_prefix}-v{k}" for k in (1, 2, 3)] and all(b["_saved"] for b in loads)
    assert [b["lora_name"] for b in unloads] == names[:2] and eng.adapter == names[2]
    assert sorted(p.name for p in (tmp_path / "sync").iterdir()) == [names[2]]  # the unloaded folders are gone
    eng.generate(["1+2="], 1, max_new_tokens=2)
    assert fake.posts("/v1/completions")[-1]["model"] == names[2]  # requests name the current adapter
    assert VLLMServerEngine(fake.url, tok).adapter_prefix != eng.adapter_prefix  # engines sharing a server never clash
    eng.close()
    assert fake.posts("/v1/unload_lora_adapter")[-1]["lora_name"] == names[2] and eng.adapter is None

    with pytest.raises(ServerError, match="LoRA adapters only"):
        eng.sync_weights(load_policy(DEFAULT_MODEL_DIR)[0])
    fake.fail = (404, {"detail": "Not Found"})  # a server started without runtime LoRA updating
    with pytest.raises(ServerError, match="HTTP 404: Not Found.*VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"):
        eng.sync_weights(model)


def test_the_trainer_flags(fake):
    assert "vllm-server" in ENGINES
    Config(engine="vllm-server", engine_url=fake.url, lora_rank=4).validate()
    with pytest.raises(ValueError, match="--engine-url is required with --engine vllm-server"):
        Config(engine="vllm-server", lora_rank=4).validate()
    with pytest.raises(ValueError, match="--engine-url .*refused with any other engine"):
        Config(engine="hf", engine_url=fake.url).validate()
    with pytest.raises(ValueError, match="--lora-rank must be > 0 with --engine vllm-server"):
        Config(engine="vllm-server", engine_url=fake.url).validate()
    model, tok = load_policy(DEFAULT_MODEL_DIR, lora=LoraSpec(r=2))
    eng = build_engine("vllm-server", model=model, tokenizer=tok, model_path=str(DEFAULT_MODEL_DIR), url=fake.url, seed=5)
    assert isinstance(eng, VLLMServerEngine) and eng.seed == 5
    eng.close()


# ====================================================================== a real `vllm serve` (scripts/ci_vllm.sh)
MAX_NEW = 8


@pytest.fixture(scope="module")
def server_url():
    url = os.environ.get(URL_ENV)
    if not url:
        if os.environ.get("SPO_REQUIRE_VLLM") == "1":
            pytest.fail(f"SPO_REQUIRE_VLLM=1 but no vLLM server: set {URL_ENV}")
        pytest.skip(f"no vLLM server: set {URL_ENV} (scripts/ci_vllm.sh starts one)")
    return url


@pytest.fixture(scope="module")
def policy():
    return load_policy(DEFAULT_MODEL_DIR)


def _prompts(k: int = 64) -> list[str]:
    return [json.loads(line)["prompt"] for line in (ROOT / "data" / "arith" / "test.jsonl").open()][:k]


def _greedy(eng, prompts=None):
    return eng.generate(prompts or _prompts(), 1, greedy=True, max_new_tokens=MAX_NEW)


def test_real_server_greedy_and_logprobs_match_hf(server_url, policy):
    from test_vllm_engine import _assert_same_greedy

    model, tok = policy
    with VLLMServerEngine(server_url, tok, seed=0) as eng:
        hf, sv = _greedy(HFEngine(model, tok)), _greedy(eng)
        _assert_same_greedy(hf, sv, model)
        print(f"\ngreedy: {sum(a == b for a, b in zip(hf.texts, sv.texts))}/{len(hf)} texts equal")
        for temperature in (1.0, 0.7):
            ro = eng.generate(_prompts(32), 2, temperature=temperature, max_new_tokens=MAX_NEW)
            ref = token_logprobs(model, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask,
                                 temperature=temperature)
            diff = (ro.logprobs - ref).abs().max().item()
            print(f"T={temperature}: max |logprob - HF| = {diff:.2e} over {ro.num_tokens} tokens")
            assert ro.num_tokens > len(ro) and diff < 1e-4
        raw = token_logprobs(model, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask)
        assert (ro.logprobs - raw).abs().max().item() > 1e-2  # the server returns processed (scaled) log-probs
        kw = dict(temperature=1.0, max_new_tokens=MAX_NEW)
        torch.manual_seed(11)
        a = eng.generate(_prompts(16), 4, **kw)
        torch.manual_seed(11)
        b = eng.generate(_prompts(16), 4, **kw)
        assert torch.equal(a.response_ids, b.response_ids) and len(set(a.texts)) > 16
        turns = eng.continue_tokens([tok(p, add_special_tokens=False)["input_ids"] for p in _prompts(16)],
                                    max_new_tokens=MAX_NEW, greedy=True)
        assert [t.token_ids for t in turns] == [t.token_ids for t in HFEngine(model, tok).continue_tokens(
            [tok(p, add_special_tokens=False)["input_ids"] for p in _prompts(16)], max_new_tokens=MAX_NEW, greedy=True)]


def test_real_server_lora_sync_follows_the_policy(server_url):
    from test_vllm_engine import _assert_same_greedy, _sft_steps

    model, tok = load_policy(DEFAULT_MODEL_DIR, lora=LoraSpec(r=4))
    with VLLMServerEngine(server_url, tok, seed=0) as eng:
        before = _greedy(HFEngine(model, tok))
        eng.sync_weights(model)  # a fresh adapter (B = 0): still the base model
        _assert_same_greedy(before, _greedy(eng), model)
        for target in ("1", "22"):
            _sft_steps(model, tok, _prompts(16), target=target)
            after = _greedy(HFEngine(model, tok))
            assert sum(a != b for a, b in zip(before.texts, after.texts)) >= 8  # the policy moved
            eng.sync_weights(model)
            _assert_same_greedy(after, _greedy(eng), model)
            ro = eng.generate(_prompts(16), 2, temperature=0.7, max_new_tokens=MAX_NEW)
            ref = token_logprobs(model, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask,
                                 temperature=0.7)
            diff = (ro.logprobs - ref).abs().max().item()
            print(f"\nLoRA v{eng.syncs}: max |logprob - HF| = {diff:.2e}")
            assert diff < 1e-4
            before = after
        served = {m["id"] for m in eng._call("GET", "/v1/models")["data"]}
        assert eng.adapter in served and f"{eng.adapter_prefix}-v1" not in served  # the old versions were unloaded


@pytest.mark.parametrize("processes", [1, 2])
def test_real_server_trains_spo(server_url, tmp_path, processes):
    """`python -m spo_lab.train --engine vllm-server` end to end, alone and as 2 torchrun processes sharing the
    server (each its own adapter names): the trainer's first-mini-batch ratio is ~1, every step logged once."""
    import pandas as pd

    out = tmp_path / "run"
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
              if processes > 1 else [sys.executable, "-m"])
    cmd = [*launch, "spo_lab.train", "--engine", "vllm-server", "--engine-url", server_url,
           "--lora-rank", "4", "--steps", "2", "--responses-per-step", "32", "--eval-every", "2",
           "--eval-max-prompts", "32", "--no-offline-init", "--no-progress", "--no-save-model", "--out", str(out),
           "--cache-dir", str(tmp_path / "cache")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = pd.read_json(out / "metrics.jsonl", lines=True)
    steps = df[df.step > 0]
    assert df.step.tolist() == [0, 1, 2] and steps.responses.tolist() == [32, 64]  # the global batch, once per step
    assert steps["loss/ratio_mean"].between(0.98, 1.02).all()
