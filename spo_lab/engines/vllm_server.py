"""Rollouts from a running ``vllm serve``: the :class:`~spo_lab.engines.base.RolloutEngine` protocol over
vLLM's OpenAI-compatible HTTP API, so trainer processes (on one machine or several) share rollout servers.

    # the server (vLLM's CUDA build on GPUs, or its CPU build), LoRA enabled, adapters loadable at run time:
    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve Qwen/Qwen3-0.6B --enable-lora --max-lora-rank 32 \\
        --logprobs-mode processed_logprobs --generation-config vllm --port 8000
    # the trainer (LoRA only, see below):
    python -m spo_lab.train --engine vllm-server --engine-url http://localhost:8000 --lora-rank 32 ...

The engine needs only the standard library (``urllib``); vLLM is not imported on the trainer's side.
Written against vLLM 0.32's server and tested with its CPU build (``tests/test_vllm_server.py``, run by
``scripts/ci_vllm.sh``).

What it relies on, and why:

* **Requests.** ``POST /v1/completions`` with the prompt as token ids (tokenised here with the policy's
  tokenizer, exactly as ``HFEngine`` does), ``logprobs: 0`` (the sampled token's log-prob) and
  ``return_token_ids: true`` (the sampled ids themselves; no detokenise/retokenise round trip). One request
  per prompt with ``n`` responses, sent concurrently (``max_concurrency``) so the server batches them.
  Responses are decoded here. Each request stops at the tokenizer's <eos> only (``stop_token_ids``), and
  every sampling setting (temperature, top-k/top-p off, penalties off) is sent explicitly, so server-side
  defaults cannot change the distribution.
* **Log-probs of the temperature-scaled distribution.** The server returns the log-probs its sampler
  computed: by default vLLM's ``raw_logprobs`` (before temperature), which are wrong for the PPO ratio at
  any temperature but 1. The server must be started with ``--logprobs-mode processed_logprobs`` (the
  offline engine sets the same option, see :mod:`spo_lab.engines.vllm`); the API cannot report the mode,
  so this engine cannot check it: the trainer's first-step ratio (``loss/ratio_mean`` ~ 1) shows it.
* **Server defaults.** ``--generation-config vllm`` keeps the checkpoint's ``generation_config.json`` from
  capping new tokens or adding stop tokens. A response cut short of ``max_new_tokens`` without <eos>, or
  stopped at a token other than <eos>, raises an error that says so.
* **Seeds.** Each request carries a seed from the engine's ``seed``, one draw from torch's global CPU
  generator per call and the prompt's position (vLLM gives the k-th of the n responses seed + k), so a
  run is reproducible under ``torch.manual_seed`` as with the other engines, as long as the server is
  the same (batch composition on a GPU server may still change the floating-point rounding).
* **Weight sync (LoRA only).** :meth:`VLLMServerEngine.sync_weights` writes the adapter with peft's
  ``save_pretrained`` under ``sync_dir`` and loads it with ``POST /v1/load_lora_adapter`` under a fresh
  name per policy version (``<prefix>-v<k>``, a random prefix per engine, so several trainer processes
  can share one server); later requests name that adapter as their ``model``, and the previous one is
  unloaded (``/v1/unload_lora_adapter``) and its folder removed. The server needs
  ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` and ``--enable-lora`` with ``--max-lora-rank`` >= the policy's
  rank, and must read ``sync_dir``: the same machine, or a filesystem both see (``sync_dir``, or ``TMPDIR``
  for the default temporary folder). **Full-weight sync is not supported through the server**: vLLM's
  HTTP API has no route for new full weights in 0.32; use ``--lora-rank`` or the in-process
  ``--engine vllm``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import socket
import tempfile
import urllib.error
import urllib.request
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

from ..errors import UserError
from ..models import is_lora
from .base import Rollouts, Turn, build_rollouts, cut_turn, encode_prompts, turn_budgets

__all__ = ["VLLMServerEngine", "ServerError", "ServerUnreachable", "ServerTimeout", "API_KEY_ENV"]

API_KEY_ENV = "VLLM_API_KEY"
"""The bearer token sent to the server when set (the variable ``vllm serve`` itself reads for ``--api-key``)."""

# every sampling setting the server could otherwise take from its defaults (its generation config)
_PLAIN = {"repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0, "min_p": 0.0}


class ServerError(UserError):
    """The vLLM server refused a request, or answered something this engine cannot use."""


class ServerUnreachable(ServerError, ConnectionError):
    """No server answers at the URL."""


class ServerTimeout(ServerError, TimeoutError):
    """The server did not answer within the engine's timeout."""


def _mix_seed(*parts: int) -> int:
    """A 62-bit seed from integers (sha256); vLLM adds the response's index for n > 1, which stays in int64."""
    h = hashlib.sha256(b"/".join(str(int(p)).encode() for p in parts)).digest()
    return int.from_bytes(h[:8], "little") >> 2


def _server_message(raw: bytes) -> str:
    """The message of a vLLM error body (``{"error": {"message": ...}}`` or ``{"detail": ...}``), else the text."""
    text = raw.decode("utf-8", "replace").strip()
    try:
        body = json.loads(text)
    except ValueError:
        return text[:1000] or "(empty body)"
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])[:1000]
        if "detail" in body:
            return str(body["detail"])[:1000]
    return text[:1000]


def _http(url: str, method: str, path: str, body: dict | None, *, api_key: str | None, timeout_s: float):
    """One request to the server at ``url``; the decoded JSON answer (or its text). Failures: :class:`ServerError`."""
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method, headers=headers)
    where = f"the vLLM server at {url} (--engine-url)"
    late = f"{where} did not answer {method} {path} within {timeout_s:g} s"
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as err:
        raise ServerError(f"{where} answered {method} {path} with HTTP {err.code}: "
                          f"{_server_message(err.read())}") from None
    except (TimeoutError, socket.timeout):
        raise ServerTimeout(late) from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, (TimeoutError, socket.timeout)):
            raise ServerTimeout(late) from None
        raise ServerUnreachable(f"cannot reach {where}: {err.reason}; start it with `vllm serve` (README, "
                                "'Several processes') or fix --engine-url") from None
    except ConnectionError as err:  # the server closed the connection mid-answer
        raise ServerUnreachable(f"{where} dropped the connection on {method} {path}: {err}") from None
    text = raw.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def _release(url: str, api_key: str | None, live: list[str], sync_dir: Path | None) -> None:
    """Unload the adapter still served (best effort, 5 s at most) and remove the engine's own sync folder."""
    for name in live:
        try:
            _http(url, "POST", "/v1/unload_lora_adapter", {"lora_name": name}, api_key=api_key, timeout_s=5.0)
        except ServerError:  # the server may be gone already
            pass
    live.clear()
    if sync_dir is not None:
        shutil.rmtree(sync_dir, ignore_errors=True)


class VLLMServerEngine:
    """Rollout engine on a running ``vllm serve`` (see the module docstring for the server's flags).

    Args:
        url: the server's base URL, e.g. ``http://localhost:8000`` (a trailing ``/v1`` is accepted).
        tokenizer: the policy's tokenizer (left padding, pad and eos tokens): prompts are tokenised and
            responses decoded with it.
        seed: mixed into every request's seed.
        model: the served model's name (default: the first base model ``GET /v1/models`` lists).
        timeout_s: seconds to wait for any one answer (a whole completion request included) before
            :class:`ServerTimeout`; never a hang.
        max_concurrency: requests in flight at once (the server batches them).
        sync_dir: where adapters are written for the server to load (default: a fresh temporary folder,
            removed by :meth:`close`); the server must be able to read it.
        api_key: bearer token (default: ``$VLLM_API_KEY`` if set).
    """

    def __init__(self, url: str, tokenizer, *, seed: int = 0, model: str | None = None, timeout_s: float = 600.0,
                 max_concurrency: int = 128, sync_dir: str | Path | None = None, api_key: str | None = None):
        if not url or "://" not in url:
            raise UserError(f"--engine-url must be the vLLM server's base URL, like http://localhost:8000, got {url!r}")
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer needs a pad token and an eos token")
        if tokenizer.padding_side != "left":
            raise ValueError("batched generation needs tokenizer.padding_side == 'left'")
        url = url.rstrip("/")
        self.url = url[: -len("/v1")] if url.endswith("/v1") else url
        self.tokenizer, self.seed = tokenizer, int(seed)
        self.timeout_s, self.max_concurrency = float(timeout_s), max(1, int(max_concurrency))
        self.api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
        listed = self._call("GET", "/v1/models")
        # base models only: loaded adapters are listed too, with their base model as "parent"
        served = [m.get("id") for m in (listed.get("data", []) if isinstance(listed, dict) else []) if not m.get("parent")]
        if model is None and not served:
            raise ServerError(f"the vLLM server at {self.url} lists no model (GET /v1/models)")
        self.base_model = model if model is not None else served[0]
        self.adapter: str | None = None  # the adapter the requests name; None: the base model
        self.adapter_prefix = f"spo-{secrets.token_hex(4)}"
        self._own_sync_dir = sync_dir is None
        self.sync_dir = Path(tempfile.mkdtemp(prefix="spo-vllm-server-")) if sync_dir is None else Path(sync_dir)
        self.sync_dir.mkdir(parents=True, exist_ok=True)
        self.calls = self.syncs = 0
        self._live: list[str] = []  # the adapter the server holds for this engine (unloaded by close or at exit)
        self._finalizer = weakref.finalize(self, _release, self.url, self.api_key, self._live,
                                           self.sync_dir if self._own_sync_dir else None)

    # ------------------------------------------------------------------------------------------ HTTP
    def _call(self, method: str, path: str, body: dict | None = None):
        """One request; the decoded JSON answer (or its text). Every failure is a :class:`ServerError`."""
        return _http(self.url, method, path, body, api_key=self.api_key, timeout_s=self.timeout_s)

    def _complete_all(self, bodies: list[dict]) -> list[dict]:
        """``POST /v1/completions`` for every body, concurrently; the answers in order."""
        model = self.adapter or self.base_model
        bodies = [{"model": model, **b} for b in bodies]
        if len(bodies) == 1:
            return [self._call("POST", "/v1/completions", bodies[0])]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(bodies))) as pool:
            return list(pool.map(lambda b: self._call("POST", "/v1/completions", b), bodies))

    def _sampling(self, *, greedy: bool, temperature: float, top_k: int, top_p: float) -> dict:
        if greedy:
            return {"temperature": 0.0, "top_k": 0, "top_p": 1.0, **_PLAIN}
        return {"temperature": float(temperature), "top_k": int(top_k) if top_k > 0 else 0, "top_p": float(top_p),
                **_PLAIN}

    def _choices(self, answer, n: int, max_tokens: int, stop: str | None = None) -> list[tuple[list[int], list[float]]]:
        """``(token_ids, logprobs)`` of each of the answer's n choices, checked."""
        choices = sorted(answer.get("choices", []) if isinstance(answer, dict) else [], key=lambda c: c.get("index", 0))
        if len(choices) != n:
            raise ServerError(f"the vLLM server at {self.url} returned {len(choices)} completions for n = {n}")
        out, eos = [], self.tokenizer.eos_token_id
        for c in choices:
            ids = c.get("token_ids")
            lps = (c.get("logprobs") or {}).get("token_logprobs")
            if ids is None or lps is None or len(ids) != len(lps) or any(x is None for x in lps):
                raise ServerError(f"the vLLM server at {self.url} returned no token ids or log-probs for a completion "
                                  "(needs vLLM >= 0.10: return_token_ids)")
            reason = c.get("finish_reason")
            if reason == "length" and len(ids) < max_tokens:
                raise ServerError(f"the vLLM server at {self.url} stopped a completion after {len(ids)} of "
                                  f"{max_tokens} tokens: start it with --generation-config vllm (the checkpoint's "
                                  "generation config caps new tokens) and a --max-model-len that fits")
            if reason == "stop" and not stop and (not ids or ids[-1] != eos):
                raise ServerError(f"the vLLM server at {self.url} stopped a completion at a token other than <eos> "
                                  f"({ids[-1:] or 'none'}): start it with --generation-config vllm")
            out.append(([int(t) for t in ids], [float(x) for x in lps]))
        return out

    # ------------------------------------------------------------------------------------------ generation
    def encode_prompts(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """Left-padded ``(ids, mask)`` of shape ``[len(prompts), P]``; no special tokens added."""
        return encode_prompts(self.tokenizer, prompts)

    def generate(
        self, prompts: list[str], n: int = 1, *, temperature: float = 1.0, max_new_tokens: int = 8,
        greedy: bool = False, top_k: int = 0, top_p: float = 1.0,
    ) -> Rollouts:
        """n responses per prompt (rows i*n .. i*n+n-1 belong to prompt i), laid out as the other engines do.

        Log-probs: the server's (temperature-scaled with ``--logprobs-mode processed_logprobs``); with top-k
        / top-p on (evaluation only) they are those of the truncated distribution, as with ``--engine vllm``.
        """
        if n < 1 or not prompts:
            raise ValueError("need at least one prompt and n >= 1")
        if not greedy and temperature <= 0:
            raise ValueError("temperature must be > 0 when sampling (use greedy=True for argmax)")
        tok = self.tokenizer
        ids, mask = self.encode_prompts(prompts)
        draw = int(torch.randint(0, 2**62, (1,)).item())
        sampling = self._sampling(greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p)
        bodies = [{"prompt": row[m.bool()].tolist(), "n": int(n), "max_tokens": int(max_new_tokens), "logprobs": 0,
                   "return_token_ids": True, "stop_token_ids": [tok.eos_token_id], "skip_special_tokens": False,
                   **sampling, **({} if greedy else {"seed": _mix_seed(self.seed, draw, i)})}
                  for i, (row, m) in enumerate(zip(ids, mask))]
        answers = self._complete_all(bodies)
        self.calls += 1
        rows = [c for a in answers for c in self._choices(a, n, int(max_new_tokens))]
        lengths = torch.tensor([len(t) for t, _ in rows])
        T = max(1, int(lengths.max()))
        resp = torch.full((len(rows), T), tok.pad_token_id, dtype=torch.long)
        logp = torch.zeros((len(rows), T), dtype=torch.float32)
        for r, (t_ids, lps) in enumerate(rows):
            resp[r, : len(t_ids)] = torch.tensor(t_ids, dtype=torch.long)
            logp[r, : len(t_ids)] = torch.tensor(lps, dtype=torch.float32)
        return build_rollouts(tok, prompt_ids=ids.repeat_interleave(n, 0), prompt_mask=mask.repeat_interleave(n, 0),
                              response_ids=resp, logprobs=logp, n=n, lengths=lengths)

    def continue_tokens(
        self, prefixes: list[list[int]], *, max_new_tokens: int | list[int], temperature: float = 1.0,
        greedy: bool = False, top_k: int = 0, top_p: float = 1.0, stop: str | None = None,
    ) -> list:
        """Continue each token sequence of ``prefixes`` by one turn; the contract of
        :meth:`spo_lab.engines.hf.HFEngine.continue_tokens`. One request per prefix (its token ids as the
        prompt: the server's prefix cache reuses the earlier turns), ``stop`` as the server's stop string
        (kept in the output), then :func:`~spo_lab.engines.base.cut_turn` cuts every row exactly."""
        budgets, turns, rows = turn_budgets(prefixes, max_new_tokens, temperature=temperature, greedy=greedy)
        if not rows:
            return turns
        draw = int(torch.randint(0, 2**62, (1,)).item())
        sampling = self._sampling(greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p)
        extra = {"stop": [stop], "include_stop_str_in_output": True} if stop else {}
        bodies = [{"prompt": [int(t) for t in prefixes[r]], "n": 1, "max_tokens": budgets[r], "logprobs": 0,
                   "return_token_ids": True, "stop_token_ids": [self.tokenizer.eos_token_id],
                   "skip_special_tokens": False, **sampling, **extra,
                   **({} if greedy else {"seed": _mix_seed(self.seed, draw, i)})}
                  for i, r in enumerate(rows)]
        answers = self._complete_all(bodies)
        for r, a in zip(rows, answers):
            t_ids, lps = self._choices(a, 1, budgets[r], stop)[0]
            k, reason = cut_turn(self.tokenizer, t_ids, stop, budget=budgets[r])
            turns[r] = Turn(t_ids[:k], lps[:k], reason)
        return turns

    # ------------------------------------------------------------------------------------------ weight sync
    def sync_weights(self, model) -> None:
        """Serve ``model``'s current LoRA adapter: save it, load it under a fresh name, unload the previous one.

        Only a peft LoRA policy can be synced through the server (the server keeps the base weights it was
        started with, which must be the policy's base model); a full model raises :class:`ServerError`.
        """
        if not is_lora(model):
            raise ServerError("--engine vllm-server syncs LoRA adapters only: a full-weight policy cannot be sent to a "
                              "vLLM server (train with --lora-rank R, or use --engine vllm for full fine-tuning)")
        self.syncs += 1
        name = f"{self.adapter_prefix}-v{self.syncs}"
        path = self.sync_dir / name
        model.save_pretrained(str(path))
        try:
            self._call("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path.resolve())})
        except ServerError as err:
            shutil.rmtree(path, ignore_errors=True)
            if "404" in str(err) or "405" in str(err):
                raise ServerError(f"{err} (start the server with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and "
                                  "--enable-lora)") from None
            raise
        old, self.adapter = self.adapter, name
        self._live[:] = [name]
        if old is not None:
            self._call("POST", "/v1/unload_lora_adapter", {"lora_name": old})
            shutil.rmtree(self.sync_dir / old, ignore_errors=True)

    # ------------------------------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Unload this engine's adapter from the server (best effort) and remove the sync folder it created.
        Runs by itself when the engine is garbage-collected or the process exits (the trainer never calls it)."""
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer()
        self.adapter = None

    def __enter__(self) -> "VLLMServerEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
