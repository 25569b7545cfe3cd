"""The offline pass that initialises SPO's value tracker (the SPO paper): cached, sharded, and in the
official recipe's file format.

Before training, n0 responses per training prompt are drawn from the initial policy and scored;
prompt x's k successes out of n0 give the tracker its prior (``SPO.init_from_counts``). The pass
is the price of a warm tracker: n0 x P responses, which at small scale can exceed the whole
training budget, so the trainer counts it separately (``responses_incl_init``).

Three ways to get ``(successes, trials)``, float64 ``[P]`` each (k and n per prompt):

- :func:`offline_counts` -- one call, the whole pass, cached as one file by content (what the trainer uses):

      succ, trials = offline_counts(engine, task, problems, n0=8, temperature=1.0, max_new_tokens=8,
                                    seed=0, model_key=model_fingerprint(model), cache_dir="runs/cache")

- :func:`offline_pass` -- the same pass at scale: written shard by shard (atomic writes), so a killed
  pass resumes where it stopped, and it returns exactly what :func:`offline_counts` returns for the
  same inputs (same chunks, same random stream: each shard stores the RNG state it ended with).
- :func:`import_official_values` / :func:`export_official_values` -- the official recipe's file.

The official format (verl-recipe ``spo/``; read from the recipe's code, see the two functions) is one
JSON object ``{prompt text: [score, score, ...]}``, written by ``estimate_offline_values/
merge_offline_values.py`` (n = 8 validation samples per prompt at T = 0.6, top_p 0.95, top_k 20, at
most 8 scores kept per prompt) and read by ``spo_ray_trainer.py``. A prompt's key is the text of its
first user message, stripped (``raw_prompt[0]["content"].strip()``): for the math recipe the DAPO
prompt plus ``"\\nThe answer format must be: \\boxed{'The final answer goes here.'}"``, not the
chat-templated text. :func:`official_prompt_key` recovers that text from a :class:`Problem`.

The engine and task are used only through their protocols (:mod:`spo_lab.engines.base`,
:mod:`spo_lab.tasks.base`). The cache key covers the model (a cheap fingerprint, see
:func:`spo_lab.models.model_fingerprint`), every problem's id, prompt and answer text, the task,
n0, the sampling settings and the seed: change any of them and the pass runs again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .engines.base import seeded
from .tasks.base import problems_fingerprint

__all__ = ["offline_counts", "offline_cache_key", "offline_pass", "official_prompt_key", "export_official_values",
           "import_official_values", "ImportStats"]

log = logging.getLogger(__name__)


def offline_cache_key(task_name: str, problems, *, model_key: str, n0: int, temperature: float,
                      max_new_tokens: int, seed: int) -> str:
    """16 hex characters identifying one offline pass: model, data content, task and settings."""
    fp = hashlib.sha1()
    fp.update(json.dumps([model_key, task_name, problems_fingerprint(problems), n0, temperature,
                          max_new_tokens, seed]).encode())
    return fp.hexdigest()[:16]


def _score_chunk(engine, task, chunk, n0: int, temperature: float, max_new_tokens: int, sampling: dict):
    """``[len(chunk), n0]`` float64 rewards: n0 samples per problem, scored by the task."""
    r = engine.generate([p.prompt for p in chunk], n0, temperature=temperature, max_new_tokens=max_new_tokens,
                        **sampling)
    rew = torch.tensor(task.reward(r.texts, [p for p in chunk for _ in range(n0)]), dtype=torch.float64)
    return rew.view(-1, n0)


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def offline_counts(engine, task, problems, *, n0: int, temperature: float, max_new_tokens: int, seed: int,
                   model_key: str, cache_dir: str | Path | None = None, batch: int = 512, device=None,
                   progress: bool = False, on_chunk=None, info: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(successes, trials)``, float64 ``[P]``: k successes out of n0 samples per problem (Sec. 3.3).

    The pass samples on its own seeded RNG (:func:`spo_lab.engines.base.seeded`), so a run that reads
    the cache and one that computes it continue with the same random stream. With ``cache_dir`` the
    counts are stored there as ``offline-<key>.pt`` (written atomically; parallel runs may race),
    together with the seconds the pass took, so a run that reads the cache can still count its cost.

    ``on_chunk(n)`` is called after each generation chunk with the number of prompts it covered (a
    progress hook). ``info``, when given, is filled with ``seconds`` (the pass's wall time when it was
    computed) and ``cached`` (whether this call read it from the cache).
    """
    if n0 < 1:
        raise ValueError(f"n0 must be >= 1, got {n0}")
    path = None
    if cache_dir is not None:
        key = offline_cache_key(getattr(task, "name", type(task).__name__), problems, model_key=model_key, n0=n0,
                                temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
        path = Path(cache_dir) / f"offline-{key}.pt"
        blob = torch.load(path, weights_only=True) if path.exists() else None
        if isinstance(blob, dict):  # an older file without the pass's time is computed again, not guessed
            succ, trials, seconds = blob["succ"], blob["trials"], blob["seconds"]
            if info is not None:
                info.update(seconds=float(seconds), cached=True)
            if succ.shape != (len(problems),):
                raise ValueError(f"offline cache {path} holds {succ.shape[0]} prompts, expected {len(problems)}; "
                                 "delete it")
            return succ, trials
    t0 = time.perf_counter()
    succ = torch.zeros(len(problems), dtype=torch.float64)
    per = max(1, batch // n0)
    with seeded(seed + 10_000, device):
        for s in tqdm(range(0, len(problems), per), desc="offline init", disable=not progress, leave=False):
            chunk = problems[s : s + per]
            succ[s : s + len(chunk)] = _score_chunk(engine, task, chunk, n0, temperature, max_new_tokens, {}).sum(1)
            if on_chunk is not None:
                on_chunk(len(chunk))
    trials = torch.full_like(succ, float(n0))
    seconds = time.perf_counter() - t0
    if info is not None:
        info.update(seconds=seconds, cached=False)
    if path is not None:
        _atomic_save({"succ": succ, "trials": trials, "seconds": seconds}, path)
    return succ, trials


# ----------------------------------------------------------------------------- the sharded pass
def _rng_state(device) -> dict:
    dev = torch.device(device) if device is not None else torch.device("cpu")
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None}


def _set_rng_state(state: dict, device) -> None:
    torch.set_rng_state(state["cpu"])
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], dev)


def _load_shard(path: Path, key: str):
    """The shard's stored dict when it exists, is readable and carries ``key``; else None."""
    if not path.exists():
        return None
    try:
        blob = torch.load(path, weights_only=True)
    except Exception as e:  # a torn or foreign file: recompute it
        log.warning("offline shard %s unreadable (%s); recomputing it", path, e)
        return None
    if not isinstance(blob, dict) or blob.get("key") != key:
        log.warning("offline shard %s belongs to other inputs; recomputing it", path)
        return None
    return blob


def offline_pass(engine, task, problems, *, n0: int, temperature: float, max_new_tokens: int, seed: int,
                 model_key: str, out_dir: str | Path, shard_size: int = 4096, batch: int = 512, device=None,
                 top_k: int = 0, top_p: float = 1.0, progress: bool = False, return_scores: bool = False):
    """The offline pass of :func:`offline_counts`, resumable: per-prompt results written shard by shard.

    Problems are cut into shards of ``shard_size`` (rounded up to a multiple of the generation chunk,
    ``max(1, batch // n0)`` problems, so the engine sees exactly the batches :func:`offline_counts`
    gives it). Shard i is ``<out_dir>/offline-<key>/shard-<i>.pt``, written atomically (temp file +
    ``os.replace``), holding the shard's ``[m, n0]`` rewards, its per-prompt success counts and the
    torch RNG state (CPU, and the CUDA device's when sampling there) at the shard's end. A shard that
    exists and carries its key (the pass key, the shard's range and problems, the chunking, the device
    type) is read instead of sampled, and its RNG state restored, so a killed pass resumes and any mix
    of computed and read shards gives the same numbers as one uninterrupted run -- and, with top_k 0
    and top_p 1.0 (the defaults, the trainer's settings), the same as :func:`offline_counts`, bit for
    bit (exactly so on a CPU; CUDA kernels themselves may not be bitwise deterministic).

    ``top_k`` / ``top_p`` truncate the sampling distribution; the official recipe's offline estimate
    samples with its validation settings (T = 0.6, top_p 0.95, top_k 20, n = 8; ``eval.sh``).

    Returns:
        ``(successes, trials)``, float64 ``[P]`` (trials = n0 everywhere), plus the rewards
        ``[P, n0]`` float64 as a third item with ``return_scores=True``.
    """
    if n0 < 1:
        raise ValueError(f"n0 must be >= 1, got {n0}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    per = max(1, batch // n0)
    size = -(-shard_size // per) * per
    sampling = {} if (top_k, top_p) == (0, 1.0) else {"top_k": top_k, "top_p": top_p}
    name = getattr(task, "name", type(task).__name__)
    key = offline_cache_key(name, problems, model_key=model_key, n0=n0, temperature=temperature,
                            max_new_tokens=max_new_tokens, seed=seed)
    if sampling:
        key = hashlib.sha1(json.dumps([key, top_k, top_p]).encode()).hexdigest()[:16]
    root = Path(out_dir) / f"offline-{key}"
    root.mkdir(parents=True, exist_ok=True)
    manifest = {"task": name, "prompts": len(problems), "n0": n0, "temperature": temperature, "top_k": top_k,
                "top_p": top_p, "max_new_tokens": max_new_tokens, "seed": seed, "model_key": model_key,
                "shard_size": size, "chunk": per, "shards": -(-len(problems) // size)}
    tmp = root / f"manifest.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, root / "manifest.json")
    dev_type = torch.device(device).type if device is not None else "cpu"

    P = len(problems)
    rewards = torch.zeros(P, n0, dtype=torch.float64)
    succ = torch.zeros(P, dtype=torch.float64)
    read = 0
    with seeded(seed + 10_000, device):
        starts = range(0, P, size)
        for i, s in enumerate(tqdm(starts, desc="offline shards", disable=not progress, leave=False)):
            e = min(s + size, P)
            shard = problems[s:e]
            skey = hashlib.sha1(json.dumps([key, i, s, e, per, dev_type, problems_fingerprint(shard)]).encode())
            skey = skey.hexdigest()[:16]
            path = root / f"shard-{i:05d}.pt"
            blob = _load_shard(path, skey)
            if blob is not None and blob["rewards"].shape == (e - s, n0):
                rewards[s:e], succ[s:e] = blob["rewards"], blob["successes"]
                _set_rng_state(blob["rng"], device)
                read += 1
                continue
            for c in range(s, e, per):
                chunk = problems[c : min(c + per, e)]
                rew = _score_chunk(engine, task, chunk, n0, temperature, max_new_tokens, sampling)
                rewards[c : c + len(chunk)] = rew
                succ[c : c + len(chunk)] = rew.sum(1)
            _atomic_save({"key": skey, "start": s, "stop": e, "rewards": rewards[s:e].clone(),
                          "successes": succ[s:e].clone(), "rng": _rng_state(device)}, path)
    log.info("offline pass %s: %d shards, %d read from disk, %d sampled", root, len(starts), read, len(starts) - read)
    trials = torch.full_like(succ, float(n0))
    return (succ, trials, rewards) if return_scores else (succ, trials)


# ----------------------------------------------------------------------------- the official file format
_CHAT_USER = re.compile(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", re.S)


def official_prompt_key(problem) -> str:
    """The key the official recipe files a prompt under: its first user message's text, stripped.

    The recipe's trainer looks prompts up by ``raw_prompt[0]["content"].strip()``. A problem's
    ``prompt`` is the final, templated text, so the message is recovered from it: ``meta["user_content"]``
    when a task provides it; else the first ``<|im_start|>user\\n ... <|im_end|>`` block of a Qwen
    (ChatML) template; else the whole prompt (a task without a chat template, e.g. arith), stripped.
    The recipe's merge script instead cuts decoded prompts at ``"user\\n"`` and ``"\\nassistant"``; the
    two agree unless a message itself contains those strings. Pass ``key=`` to the import / export
    functions for any other mapping.
    """
    meta = getattr(problem, "meta", None) or {}
    if isinstance(meta.get("user_content"), str):
        return meta["user_content"].strip()
    m = _CHAT_USER.search(problem.prompt)
    return (m.group(1) if m else problem.prompt).strip()


@dataclass(frozen=True)
class ImportStats:
    """What :func:`import_official_values` matched: problems found in the file (``matched``), problems
    absent or with an empty score list (``missing``, given the prior or an error), file entries that
    match no problem (``extra``), and prompts whose scores were subsampled to ``max_scores``."""

    problems: int
    matched: int
    missing: int
    extra: int
    subsampled: int


def _json_number(x: float):
    return int(x) if float(x).is_integer() else float(x)


def export_official_values(path: str | Path, problems, successes=None, trials=None, *, scores=None,
                           key=official_prompt_key) -> dict:
    """Write offline values in the official format, ``{prompt text: [score, ...]}`` (JSON, indent 2).

    Give either ``scores`` -- per-sample rewards, one sequence per problem (e.g. the ``[P, n0]`` third
    output of :func:`offline_pass`) -- or ``successes`` and ``trials`` (integral k and n per problem),
    written as k ones then n - k zeros (the order of samples is not kept; the official reader only sums
    them). Problems with no samples (n = 0) are left out and counted, never written as an empty list:
    the official reader would count an empty list as n0 failures. Two problems with the same key cannot
    both be written (the format keys by text): that is an error. Written atomically.

    Returns:
        ``{"written": prompts written, "omitted": prompts left out for having no samples}``.
    """
    if scores is None:
        if successes is None or trials is None:
            raise ValueError("give either scores, or successes and trials")
        k = torch.as_tensor(successes, dtype=torch.float64).reshape(-1).tolist()
        n = torch.as_tensor(trials, dtype=torch.float64).reshape(-1).tolist()
        if len(k) != len(problems) or len(n) != len(problems):
            raise ValueError(f"{len(problems)} problems but {len(k)} successes and {len(n)} trials")
        if any(not (float(a).is_integer() and float(b).is_integer() and 0 <= a <= b) for a, b in zip(k, n)):
            raise ValueError("successes and trials must be integers with 0 <= k <= n; pass per-sample scores "
                             "for non-binary rewards")
        rows = [[1] * int(a) + [0] * int(b - a) for a, b in zip(k, n)]
    else:
        rows = [[_json_number(v) for v in torch.as_tensor(r, dtype=torch.float64).reshape(-1).tolist()]
                for r in scores]
        if len(rows) != len(problems):
            raise ValueError(f"{len(problems)} problems but {len(rows)} rows of scores")
    out: dict[str, list] = {}
    omitted = 0
    for p, r in zip(problems, rows):
        text = key(p)
        if text in out:
            raise ValueError(f"two problems share the official key {text[:80]!r}; the format keys prompts by "
                             "text and cannot hold both")
        if not r:
            omitted += 1
            continue
        out[text] = r
    if omitted:
        warnings.warn(f"{omitted} of {len(problems)} prompts have no offline samples and were left out of {path}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=2, ensure_ascii=False)
    os.replace(tmp, path)
    return {"written": len(out), "omitted": omitted}


def import_official_values(path: str | Path, problems, *, missing: str = "error", key=official_prompt_key,
                           max_scores: int | None = None, binarize: bool = True, seed: int = 0,
                           return_stats: bool = False):
    """Read an official offline-values file into ``(successes, trials)``, float64 ``[P]``, in ``problems`` order.

    Follows the official reader (``spo_ray_trainer.py``): each score counts as a success when > 0
    (``binarize=True``; the recipe's raw scores may be 0/1 or math_dapo's -1/+1), and a prompt with more
    than ``max_scores`` scores (the recipe's ``offline_N`` = 8) keeps a random subset of that size
    (seeded here). Two deliberate differences: trials is the number of scores kept, where the recipe
    divides by ``offline_N`` even for prompts with fewer scores (counting the absent ones as failures);
    and a problem that is absent from the file (or has an empty list) is never silently given weight 0,
    as the recipe's sampler does (``prompt2weight.get(p, 0.0)``):

    - ``missing="error"`` (default): a UserError (a ValueError) naming how many are missing and one example;
    - ``missing="prior"``: trials 0 for them, which :meth:`ValueTracker.init_from_counts` maps to its
      prior alpha = beta = 0.5 (a warning says how many).

    Entries of the file that match no problem are counted (warning; ``ImportStats.extra``), not an error.
    With ``binarize=False`` scores are summed as they are and must lie in [0, 1].
    Returns ``(successes, trials)``, plus :class:`ImportStats` with ``return_stats=True``.
    """
    from .errors import UserError  # every error below is about the file the user gave: one readable line

    if missing not in ("error", "prior"):
        raise ValueError(f"missing must be 'error' or 'prior', got {missing!r}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise UserError(f"offline values file {path} does not exist") from None
    except OSError as err:
        raise UserError(f"offline values file {path} cannot be read ({err.strerror or err})") from None
    except json.JSONDecodeError as err:
        raise UserError(f"offline values file {path} is not valid JSON ({err.msg} at line {err.lineno}, "
                        f"column {err.colno}); expected {{prompt text: [scores...]}}") from None
    except ValueError as err:  # bad UTF-8, or a number beyond Python's digit limit
        raise UserError(f"offline values file {path} is not readable ({type(err).__name__}: "
                        f"{str(err)[:120]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object {{prompt text: [scores...]}}, got {type(data).__name__}")
    rng = np.random.default_rng(seed)
    P = len(problems)
    succ = torch.zeros(P, dtype=torch.float64)
    trials = torch.zeros(P, dtype=torch.float64)
    keys = [key(p) for p in problems]
    absent: list[int] = []
    subsampled = 0
    for i, k in enumerate(keys):
        vals = data.get(k)
        if not vals:
            absent.append(i)
            continue
        if not isinstance(vals, list) or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                             or math.isnan(v) for v in vals):
            raise UserError(f"{path}: scores of {k[:80]!r} must be a list of numbers, got {vals!r:.120}")
        if max_scores is not None and len(vals) > max_scores:
            vals = [vals[j] for j in sorted(rng.choice(len(vals), size=max_scores, replace=False))]
            subsampled += 1
        if binarize:
            s = float(sum(v > 0 for v in vals))
        else:
            if any(v < 0 or v > 1 for v in vals):
                raise UserError(f"{path}: scores of {k[:80]!r} outside [0, 1] with binarize=False")
            s = float(sum(vals))
        succ[i], trials[i] = s, float(len(vals))
    wanted = set(keys)
    extra = sum(1 for k in data if k not in wanted)
    if absent:
        ex = problems[absent[0]]
        msg = (f"{len(absent)} of {P} prompts are missing from {path} (or have no scores), e.g. problem "
               f"{getattr(ex, 'id', absent[0])} keyed {keys[absent[0]][:80]!r}")
        if missing == "error":
            raise UserError(msg + "; pass missing='prior' to start them from the tracker's prior (alpha = beta = 0.5)")
        warnings.warn(msg + "; they start from the tracker's prior (alpha = beta = 0.5)")
    if extra:
        warnings.warn(f"{extra} entries of {path} match none of the {P} problems (ignored)")
    stats = ImportStats(problems=P, matched=P - len(absent), missing=len(absent), extra=extra, subsampled=subsampled)
    log.info("imported offline values from %s: %s", path, stats)
    return (succ, trials, stats) if return_stats else (succ, trials)
