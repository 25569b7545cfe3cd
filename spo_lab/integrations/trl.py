"""SPO in Hugging Face TRL: ``SPOConfig`` and ``SPOTrainer``, a ``GRPOTrainer`` that trains with SPO.

A TRL user switches from GRPO to SPO (Xu & Ding, arXiv 2509.13232) by changing the two class names:

    from trl import GRPOConfig, GRPOTrainer                       # before
    from spo_lab.integrations.trl import SPOConfig, SPOTrainer    # after

    trainer = SPOTrainer(model="Qwen/Qwen3-0.6B", reward_funcs=my_reward, train_dataset=dataset,
                         args=SPOConfig(output_dir="qwen3-spo", per_device_train_batch_size=64))
    trainer.train()

What changes. One response per prompt (``num_generations=1``, which ``GRPOConfig`` refuses): a generation
batch of B responses covers B prompts. The prompts of each batch are drawn by SPO's prioritised sampler
(weights sqrt(v (1 - v)) + eps, Sec. 3.6), the baseline of a response is its prompt's tracker value v(x)
read before the batch's rewards, and the advantage is (r - v) normalised over the whole global batch
(Sec. 3.4). After the policy updates that use a batch, its rewards are folded into the per-prompt Beta
tracker with rho from D(x), measured as :mod:`spo_lab.divergence` measures it (the official stored-response
estimator by default). Before training, an offline pass samples ``spo_n0`` responses per training prompt
from the initial policy (Sec. 3.3): ``spo_n0`` x (training prompts) extra responses, counted and logged.
The tracker is :class:`spo_lab.spo.SPO`, the same object ``spo_lab.train`` drives.

What does not change: reward functions (called as TRL calls them; their weighted sum must lie in [0, 1],
the tracker's range), datasets (map-style ``datasets.Dataset``; a ``spo_prompt_id`` column is added),
generation (transformers, vLLM server or colocate), PEFT, tools, the loss (``loss_type``, clipping, ``beta``),
logging and checkpoints. TRL's loop stays synchronous: a batch is scored, trained on and folded in only
when its slowest response is done, so the batch barrier stays; SPO's throughput gain from dropping it
needs an asynchronous collector, which TRL's loop is not.

How, in TRL 1.16 (each method wraps TRL's and calls it; no TRL method body is copied):

- ``SPOConfig.__post_init__`` runs ``GRPOConfig``'s checks with a stand-in of 2 generations, then sets 1.
- ``_generate_and_score_completions`` first folds the previous batch into the tracker, then draws the
  batch's prompt ids (the same on every process: every process holds the same tracker and sampler
  generator), reads the baselines, hands this process's slice of the drawn rows to TRL, and replaces
  TRL's group advantages (all 0 with one response per prompt) with SPO's, keeping this process's slice
  as TRL does. The draw happens here, when the batch is generated, and not in ``_get_train_sampler``:
  accelerate's DataLoader fetches one batch ahead, so a sampler would draw before the previous batch's
  rewards reach the tracker. TRL's own sampler still feeds the DataLoader (its rows are replaced), so
  TRL's step, epoch and resume accounting are unchanged.
- ``_calculate_rewards`` returns the rewards of every process's rows, gathered; the wrapper reads their
  weighted sum and checks the gathered ``spo_prompt_id`` column against the draw.
- ``_save_checkpoint`` / ``_load_optimizer_and_scheduler`` save and restore ``spo_state.pt`` in each
  checkpoint: the tracker, the sampler's generator, D's stored responses and the pending (not yet folded)
  batch. A resumed run folds that batch under the restored weights, which are the weights it would have
  been folded under.
- D(x) needs the updated policy: one no-grad forward over the stored and new responses, split over the
  processes and gathered (every process calls it), at the start of the next generation and after ``train``.

Tested with TRL 1.16.0 on CPU, in one process and in two (gloo), transformers generation, full fine-tuning:
``tests/test_trl_integration.py``. PEFT, vLLM generation, GPUs, DeepSpeed and FSDP were not run by the tests.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

try:
    from datasets import Dataset
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
    from trl import GRPOConfig, GRPOTrainer
except ImportError as err:  # the default environment has no TRL
    raise ImportError(f"spo_lab.integrations.trl needs TRL ({err}): install the `trl` extra, "
                      f"pip install -e \".[trl]\" (trl==1.16.0), preferably in a venv of its own "
                      f"(bash scripts/ci_trl.sh builds .venv-trl)") from err

from .. import keys
from ..divergence import KLClock, ResponseCache
from ..engines.base import seeded
from ..models import token_logprobs
from ..spo import SPO

__all__ = ["SPOConfig", "SPOTrainer", "ID_COLUMN", "STATE_FILE", "TRL_VERSION"]

TRL_VERSION = "1.16.0"
"""the TRL release the ``trl`` extra pins and the tests run against"""
ID_COLUMN = "spo_prompt_id"
"""dataset column added by SPOTrainer: the row's index, the prompt's id in the tracker"""
STATE_FILE = "spo_state.pt"
"""SPO's state inside each TRL checkpoint folder"""


# ====================================================================== the config
@dataclass
class SPOConfig(GRPOConfig):
    """``GRPOConfig`` with one generation per prompt and SPO's settings (official defaults, SPO_SPEC Sec. 3).

    Every ``GRPOConfig`` field keeps its meaning and default, except ``num_generations`` (1) and
    ``num_generations_eval`` (1 when unset). ``generation_batch_size`` (by default
    ``per_device_train_batch_size * processes * steps_per_generation``) is the number of prompts, and of
    responses, per generation; TRL's own checks run with a stand-in of 2 generations, so it must be even.
    """

    num_generations: int | None = field(default=1, metadata={
        "help": "Responses per prompt: SPO samples one; its baseline is the prompt's tracker value, not a group."})
    spo_baseline: str = field(default="tracker", metadata={
        "help": "tracker (SPO) | none (ablation: v = 0; the tracker still learns and drives the sampler)"})
    spo_rho_mode: str = field(default="kl", metadata={
        "help": "D(x) for rho: kl (official stored-response estimator) | kl-clock (cheaper) | constant (rho_max)"})
    spo_rho_min: float = field(default=0.875, metadata={"help": "lower clip of the discount rho (window 8)"})
    spo_rho_max: float = field(default=0.96, metadata={"help": "upper clip of rho (window 25), constant rho's value"})
    spo_d_half: float = field(default=0.06, metadata={"help": "divergence D that halves the tracker's memory"})
    spo_sampling: str = field(default="prioritized", metadata={
        "help": "prioritized (weights sqrt(v(1-v)) / N^gamma + eps) | uniform (ablation), without replacement"})
    spo_priority_eps: float = field(default=0.05, metadata={"help": "sampling weight floor eps"})
    spo_priority_gamma: float = field(default=0.0, metadata={"help": "count penalty exponent gamma (official 0)"})
    spo_thompson: bool = field(default=False, metadata={
        "help": "draw v ~ Beta(alpha, beta) for the weights (true Thompson sampling; not official)"})
    spo_offline_init: bool = field(default=True, metadata={
        "help": "before training, initialise the tracker from spo_n0 responses per prompt of the initial policy"})
    spo_n0: int = field(default=8, metadata={"help": "offline responses per training prompt (official 8)"})
    spo_init_mode: str = field(default="jeffreys", metadata={"help": "jeffreys (official code) | paper"})
    spo_seed: int | None = field(default=None, metadata={
        "help": "seed of SPO's draws, the same on every process (None: seed + 1, as spo_lab.train)"})

    def __post_init__(self):
        self._check_spo_fields()
        if self.num_generations_eval is None:
            self.num_generations_eval = 1
        self.num_generations = 2  # a stand-in for GRPOConfig's checks, which refuse fewer than 2 generations
        try:
            super().__post_init__()
        except ValueError as err:
            if "divisible by num_generations" in str(err):
                raise ValueError(f"SPOConfig: the generation batch must be even ({err})") from err
            raise
        finally:
            self.num_generations = 1

    def _check_spo_fields(self) -> None:
        def one_of(name, allowed):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

        if self.num_generations != 1:
            raise ValueError(f"SPO samples one response per prompt: num_generations must be 1, got "
                             f"{self.num_generations} (for groups, use trl.GRPOConfig)")
        if self.remove_unused_columns:
            raise ValueError(f"remove_unused_columns must be False: the {ID_COLUMN} column carries the prompt ids")
        one_of("spo_baseline", ("tracker", "none"))
        one_of("spo_rho_mode", ("kl", "kl-clock", "constant"))
        one_of("spo_sampling", ("prioritized", "uniform"))
        one_of("spo_init_mode", ("jeffreys", "paper"))
        if not 0 < self.spo_rho_min <= self.spo_rho_max < 1:
            raise ValueError(f"need 0 < spo_rho_min <= spo_rho_max < 1, got {self.spo_rho_min}, {self.spo_rho_max}")
        for name in ("spo_d_half", "spo_priority_eps"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)!r}")
        if self.spo_n0 < 1:
            raise ValueError(f"spo_n0 must be >= 1, got {self.spo_n0}")


# ====================================================================== one batch's evidence for the tracker
@dataclass
class _Evidence:
    """A generation batch's rows, gathered from every process: what the tracker folds in after the update.

    The field names are those of :class:`spo_lab.engines.base.Rollouts` that the D estimators read.
    """

    ids: Tensor  # [R] prompt ids
    rewards: Tensor  # [R] float64
    prompt_ids: Tensor  # [R, P] left-padded
    prompt_mask: Tensor
    response_ids: Tensor  # [R, T] right-padded
    response_mask: Tensor
    loss_mask: Tensor  # response_mask * TRL's tool_mask: the tokens the policy sampled
    logprobs: Tensor | None = None  # [R, T] before the update (the kl-clock estimator only)

    def state_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


# ====================================================================== the trainer
class SPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` that trains with SPO; every argument is ``GRPOTrainer``'s (see the module docstring).

    Args (besides TRL's):
        args: an :class:`SPOConfig` (default: ``SPOConfig("<model name>-SPO")``).
        offline_counts: ``(successes [P], trials [P])`` to initialise the tracker from instead of running the
            offline pass (e.g. counts saved from an earlier pass with :meth:`offline_pass`).

    Attributes: ``spo`` (the :class:`spo_lab.spo.SPO` state), ``d_estimator`` (None for constant rho),
    ``offline_counts`` (the counts the tracker started from, if any), ``offline_responses`` and
    ``offline_seconds`` (what the offline pass generated, and its wall time).
    """

    def __init__(self, model, reward_funcs=None, args: SPOConfig | None = None, train_dataset=None, *more,
                 offline_counts=None, **kwargs):
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "model")
            args = SPOConfig(f"{str(name).rstrip('/').split('/')[-1]}-SPO")
        if not isinstance(args, SPOConfig):
            raise TypeError(f"SPOTrainer needs an SPOConfig, got {type(args).__name__}")
        super().__init__(model, reward_funcs, args, _with_prompt_ids(train_dataset), *more, **kwargs)
        num_prompts, seed = len(self.train_dataset), args.seed + 1 if args.spo_seed is None else args.spo_seed
        self._uniform_generator = torch.Generator().manual_seed(seed)  # the uniform ablation's draws
        self.spo = SPO(num_prompts, args.generation_batch_size, rho_min=args.spo_rho_min, rho_max=args.spo_rho_max,
                       d_half=args.spo_d_half, baseline=args.spo_baseline,
                       prioritized=args.spo_sampling == "prioritized", eps=args.spo_priority_eps,
                       gamma=args.spo_priority_gamma, thompson=args.spo_thompson, seed=seed,
                       generator=self._uniform_generator)
        self.d_estimator = {"kl": lambda: ResponseCache(num_prompts, 1, 1, self._tokenizer.pad_token_id),
                            "kl-clock": lambda: KLClock(num_prompts), "constant": lambda: None}[args.spo_rho_mode]()
        self.offline_counts, self.offline_responses, self.offline_seconds = offline_counts, 0, 0.0
        self._pending: _Evidence | None = None  # the last batch, folded in once its updates are done
        self._batch: dict | None = None  # the batch being generated: its ids, then its gathered rewards
        self._spo_ready = offline_counts is not None or not args.spo_offline_init
        if offline_counts is not None:
            self.spo.init_from_counts(*offline_counts, mode=args.spo_init_mode)

    # ------------------------------------------------------------------ training
    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """TRL's ``train``, after the offline pass (unless resuming, or counts were given) and followed by
        folding the last batch into the tracker."""
        if not resume_from_checkpoint and not self._spo_ready:
            self.offline_counts = self.offline_pass()
            self.spo.init_from_counts(*self.offline_counts, mode=self.args.spo_init_mode)
        self._spo_ready = True
        out = super().train(resume_from_checkpoint, *args, **kwargs)
        self.fold_pending()
        return out

    def _generate_and_score_completions(self, inputs):
        if not self.model.training:  # evaluation: TRL's own, the tracker is left alone
            return super()._generate_and_score_completions(inputs)
        self.fold_pending()  # the previous batch: every update that used it is done
        ids = self.spo.draw()  # [B] the whole generation batch, the same on every process
        baselines = self.spo.baselines(ids)  # read BEFORE this batch's rewards
        n, rank = len(inputs), self.accelerator.process_index
        if n * self.accelerator.num_processes != len(ids):
            raise RuntimeError(f"TRL handed {n} rows to each of {self.accelerator.num_processes} processes for a "
                               f"generation batch of {len(ids)}")
        mine = slice(rank * n, (rank + 1) * n)  # TRL's process slice: rows are gathered in process order
        inputs = [self.train_dataset[i] for i in ids[mine].tolist()]  # the drawn prompts replace the loader's
        self._batch = {"ids": ids}
        try:
            out = super()._generate_and_score_completions(inputs)
            rewards = self._batch["rewards"]  # [B] gathered by _calculate_rewards
        finally:
            self._batch = None
        adv, adv_raw = self.spo.advantages(rewards, baselines)  # normalised over the global batch
        out["advantages"] = adv[mine].to(out["advantages"])
        self._logs["advantages"].extend(adv.tolist())  # the completions table shows SPO's, not TRL's zeros
        self._pending = self._evidence(ids, rewards, out)
        self._log_spo({keys.SAMPLED_V_MEAN: float(self.spo.values(ids).mean()), keys.ADV_RAW_VAR: _var(adv_raw),
                       keys.REWARD_MEAN: float(rewards.mean())})
        return out

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self._batch is not None:  # a training batch: keep its rewards, checking the rows' order
            local = torch.tensor([x[ID_COLUMN] for x in inputs], device=self.accelerator.device)
            if not torch.equal(self.accelerator.gather(local).cpu(), self._batch["ids"]):
                raise RuntimeError("the gathered prompt ids differ from the drawn ones: TRL changed how rows are "
                                   "split over processes or gathered")
            self._batch["rewards"] = self._weighted_sum(rewards_per_func)
        return rewards_per_func

    def _weighted_sum(self, rewards_per_func: Tensor) -> Tensor:
        """``[R]`` float64: the reward of each row, sum_k w_k r_k as TRL logs it; must lie in [0, 1]."""
        if torch.isnan(rewards_per_func).all(dim=1).any():
            raise ValueError("every reward function returned None for some completion: SPO needs a reward per row")
        w = self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
        r = (rewards_per_func * w).nansum(dim=1).double().cpu()
        if (r < 0).any() or (r > 1).any():
            raise ValueError(f"SPO's tracker needs rewards in [0, 1]; the weighted reward ranges over "
                             f"[{float(r.min()):g}, {float(r.max()):g}] (rescale the reward functions or weights)")
        return r

    # ------------------------------------------------------------------ the tracker update
    def fold_pending(self) -> None:
        """Fold the last generated batch into the tracker: D(x) under the current policy, then
        alpha <- rho alpha + r, beta <- rho beta + (1 - r). Collective: every process calls it."""
        ev, self._pending = self._pending, None
        if ev is None:
            return
        t0 = time.perf_counter()
        d = None
        if isinstance(self.d_estimator, ResponseCache):
            ev = _fit_to_cache(self.d_estimator, ev)
        if self.d_estimator is not None:
            d = self.d_estimator.observe(self._logprobs_everywhere, ev.ids, ev)
        rho = self.spo.observe(ev.ids, ev.rewards, d)
        self._log_spo({keys.RHO_MEAN: float(rho.mean()), keys.RHO_MIN: float(rho.min()),
                       keys.D_MEAN: float(d.mean()) if d is not None else 0.0,
                       keys.D_MAX: float(d.max()) if d is not None else 0.0,
                       keys.N_EFF_MEAN: float(self.spo.tracker.n_eff().mean()),
                       keys.V_MEAN: float(self.spo.values().mean()),
                       keys.time_key("tracker"): time.perf_counter() - t0})

    def _evidence(self, ids: Tensor, rewards: Tensor, out: dict) -> _Evidence:
        """This batch's rows from every process (padded to common widths), on the CPU."""
        pad = self._tokenizer.pad_token_id
        loss_mask = out["completion_mask"] * out["tool_mask"] if "tool_mask" in out else out["completion_mask"]
        ev = _Evidence(ids=ids, rewards=rewards, prompt_ids=self._gather_rows(out["prompt_ids"], pad, left=True),
                       prompt_mask=self._gather_rows(out["prompt_mask"], 0, left=True),
                       response_ids=self._gather_rows(out["completion_ids"], pad, left=False),
                       response_mask=self._gather_rows(out["completion_mask"], 0, left=False),
                       loss_mask=self._gather_rows(loss_mask, 0, left=False))
        if isinstance(self.d_estimator, KLClock):  # it compares log-probs before and after the update
            ev.logprobs = self._logprobs_everywhere(ev.prompt_ids, ev.prompt_mask, ev.response_ids, ev.response_mask)
        return ev

    def _gather_rows(self, x: Tensor, pad: int, *, left: bool) -> Tensor:
        x = self.accelerator.pad_across_processes(x, dim=1, pad_index=pad, pad_first=left)
        return self.accelerator.gather(x).cpu()

    @torch.no_grad()
    def _logprobs_everywhere(self, prompt_ids, prompt_mask, response_ids, response_mask) -> Tensor:
        """``[N, T]`` log-probs under the current policy of N rows that every process holds alike: each process
        scores its share (``per_device_train_batch_size`` rows per forward), then all shares are gathered."""
        rows = (prompt_ids, prompt_mask, response_ids, response_mask)
        n, width = prompt_ids.shape[0], response_ids.shape[1]
        share = -(-n // self.accelerator.num_processes)
        mine = [t[self.accelerator.process_index * share:][:share] for t in rows]
        step = self.args.per_device_train_batch_size
        model, was_training = self.model, self.model.training
        model.eval()  # no dropout: D compares log-probs, not samples
        try:
            parts = [token_logprobs(model, *(t[i:i + step] for t in mine), temperature=self.args.temperature).float()
                     for i in range(0, len(mine[0]), step)]
        finally:
            model.train(was_training)
        dev = self.accelerator.device
        local = torch.cat(parts) if parts else torch.zeros(0, width, device=dev)
        local = torch.cat([local, local.new_zeros(share - len(local), width)])  # equal shapes for the gather
        return self.accelerator.gather(local)[:n].cpu()

    def _log_spo(self, values: dict) -> None:
        for k, v in values.items():
            self._metrics["train"][f"spo/{k}"].append(v)

    # ------------------------------------------------------------------ the offline pass (Sec. 3.3)
    @torch.no_grad()
    def offline_pass(self) -> tuple[Tensor, Tensor]:
        """``spo_n0`` responses per training prompt from the current policy, generated and scored as training
        does (TRL's ``_generate`` and ``_calculate_rewards``), the prompts split over the processes.

        Returns ``(successes, trials)``, float64 ``[P]``: the summed rewards and ``spo_n0``, per prompt.
        Costs ``spo_n0 * P`` responses, counted in ``offline_responses``. Runs on a forked torch RNG seeded
        with ``seed`` (+ the process index), so the training run's random stream is the same with or without
        it. Collective: every process calls it.
        """
        n0, num_prompts = self.args.spo_n0, len(self.train_dataset)
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        per_call = max(1, self.args.generation_batch_size // world // n0)  # prompts per process per call
        successes = torch.zeros(num_prompts, dtype=torch.float64)
        t0, was_training, eval_generations = time.perf_counter(), self.model.training, self.num_generations_eval
        self.model.eval()  # TRL's eval mode: nothing is added to the training counters or metrics
        self.num_generations_eval = 1
        try:
            with seeded(self.args.seed + rank, self.accelerator.device):
                for start in range(0, num_prompts, per_call * world):
                    block = torch.arange(start, min(start + per_call * world, num_prompts))
                    slots = [block[j * per_call:][:per_call].tolist() for j in range(world)]
                    slots = [s + [s[0] if s else 0] * (per_call - len(s)) for s in slots]  # equal rows everywhere
                    rows = [self.train_dataset[i] for i in slots[rank] for _ in range(n0)]
                    prompts = [x["prompt"] for x in rows]
                    _, completion_ids, _, completions, *_ = self._generate(prompts)  # TRL's 8-tuple
                    r = self._weighted_sum(self._calculate_rewards(rows, prompts, completions, completion_ids))
                    r = r.view(world, per_call, n0).sum(-1)
                    for j in range(world):  # padding slots repeat an id of their block: count each id once
                        real = block[j * per_call:][:per_call]
                        successes[real] = r[j, : len(real)]
        finally:
            self.model.train(was_training)
            self.num_generations_eval = eval_generations
            self._metrics["eval"].clear()  # _generate logged the pass as evaluation
        self.offline_responses, self.offline_seconds = n0 * num_prompts, time.perf_counter() - t0
        self._log_spo({"offline_responses": self.offline_responses, keys.OFFLINE_TIME: self.offline_seconds})
        return successes, torch.full((num_prompts,), float(n0), dtype=torch.float64)

    # ------------------------------------------------------------------ checkpoints
    def spo_state_dict(self) -> dict:
        """Everything SPO needs to continue: tracker, sampler and uniform generators, D's memory, pending batch."""
        return {"spo": self.spo.state_dict(), "uniform_generator": self._uniform_generator.get_state(),
                "divergence": self.d_estimator.state_dict() if self.d_estimator is not None else None,
                "pending": self._pending.state_dict() if self._pending is not None else None,
                "offline_responses": self.offline_responses}

    def load_spo_state_dict(self, sd: dict) -> None:
        self.spo.load_state_dict(sd["spo"])
        self._uniform_generator.set_state(sd["uniform_generator"])
        if self.d_estimator is not None:
            self.d_estimator.load_state_dict(sd["divergence"])
        self._pending = _Evidence(**sd["pending"]) if sd["pending"] is not None else None
        self.offline_responses = sd["offline_responses"]
        self._spo_ready = True

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:  # one copy: every process holds the same state
            folder = os.path.join(self._get_output_dir(trial=trial),
                                  f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            torch.save(self.spo_state_dict(), os.path.join(folder, STATE_FILE))

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            path = os.path.join(checkpoint, STATE_FILE)
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path} is missing: the checkpoint was not written by SPOTrainer")
            self.load_spo_state_dict(torch.load(path, weights_only=True))


# ====================================================================== helpers
def _with_prompt_ids(dataset):
    """The dataset with the column ``spo_prompt_id`` = row index (the prompt's id in the tracker)."""
    if not isinstance(dataset, Dataset):
        raise TypeError(f"SPOTrainer needs a map-style datasets.Dataset as train_dataset (the tracker keeps one "
                        f"entry per row), got {type(dataset).__name__}")
    if ID_COLUMN in dataset.column_names:
        if dataset[ID_COLUMN] != list(range(len(dataset))):
            raise ValueError(f"the dataset's {ID_COLUMN} column must be the row index 0..{len(dataset) - 1}")
        return dataset
    return dataset.add_column(ID_COLUMN, list(range(len(dataset))))


def _fit_to_cache(cache: ResponseCache, ev: _Evidence) -> _Evidence:
    """Widen the response cache to hold this batch, and left-pad the batch's prompts to the cache's width.

    A TRL run knows neither width in advance (prompts are tokenised, maybe chat-templated, by TRL), so the
    cache starts 1 token wide and grows with the widest prompt and response seen; the batch, padded to the
    cache's width, is stored without cutting a token."""
    sd = cache.state_dict()
    p_width = max(sd["prompt_ids"].shape[1], ev.prompt_ids.shape[1])
    r_width = max(sd["response_ids"].shape[1], ev.response_ids.shape[1])
    for name, pad, left in (("prompt_ids", cache.pad_id, True), ("prompt_mask", 0, True),
                            ("response_ids", cache.pad_id, False), ("response_mask", 0, False),
                            ("loss_mask", 0, False), ("logprobs", 0.0, False)):
        sd[name] = _pad(sd[name], p_width if name.startswith("prompt") else r_width, pad, left)
    cache.load_state_dict(sd)
    return dataclasses.replace(ev, prompt_ids=_pad(ev.prompt_ids, p_width, cache.pad_id, True),
                               prompt_mask=_pad(ev.prompt_mask, p_width, 0, True))


def _pad(x: Tensor, width: int, value, left: bool) -> Tensor:
    if x.shape[1] >= width:
        return x
    fill = x.new_full((x.shape[0], width - x.shape[1]), value)
    return torch.cat([fill, x] if left else [x, fill], dim=1)


def _var(x: Tensor) -> float:
    return float(x.double().var()) if x.numel() > 1 else 0.0
