"""SPO's state across steps, in one object any loop can drive (the SPO paper).

The trainer (:mod:`spo_lab.train`) uses it, and so can anything else that produces rewards for
prompt ids -- an asynchronous collector, a multi-GPU launcher, an adapter for another trainer:

    spo = SPO(num_prompts=P, batch_size=B)                 # official constants by default
    spo.init_from_counts(successes, trials)                # offline pass, Sec. 3.3 (optional)
    for step in ...:
        ids = spo.draw()                                   # prioritised draw, Sec. 3.6 (before generation)
        b = spo.baselines(ids)                             # v(x) read BEFORE this step's rewards
        ... generate one response per id, score rewards r ...
        adv = spo.advantages(r, b)                         # (r - b) normalised over the batch, Sec. 3.4
        ... policy update with adv ...
        spo.observe(ids, r, D)                             # tracker update with rho(D), Sec. 3.1-3.2

D, how far the policy moved since each prompt was last seen, needs the policy, so it is measured
outside (:mod:`spo_lab.divergence`) and passed in; ``D=None`` means rho = rho_max (constant rho).
Everything here is torch and the core modules only. ``SPO`` follows the trainer's
:class:`spo_lab.algorithms.Algorithm` protocol (``group`` = 1), as the group methods do.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import keys
from .advantages import spo_advantages
from .sampler import PrioritizedSampler, excluded_pool, uniform_draw
from .tracker import ValueTracker

__all__ = ["SPO"]


class SPO:
    """The value tracker, the prioritised sampler and the advantage rule, with one state_dict.

    Args:
        num_prompts: P, the size of the training prompt set (ids are 0..P-1).
        batch_size: prompts per draw (B; one response each).
        rho_min, rho_max, d_half: the KL-adaptive discount (official 0.875, 0.96, 0.06).
        baseline: ``"tracker"`` (SPO) or ``"none"`` (ablation: v = 0; the tracker still learns).
        prioritized: draw with weights sqrt(v(1-v)) / N^gamma + eps (official), or uniformly without
            replacement (ablation) from ``generator``.
        eps, gamma, thompson: the sampler's weight floor, count exponent, and true Thompson draws.
        rho_constant: discount every update by this constant instead of rho(D) (the constant-rho ablation;
            the official recipe's ablation value is 0.875). None: rho(D), or rho_max without D.
        normalize: normalise advantages over the batch (official); False is the no-normalisation ablation
            (A = r - b as it is).
        seed: seed of the prioritised sampler's own generator.
        generator: draws of the uniform ablation (None: :meth:`draw` is unavailable then, and the
            caller draws). The trainer passes its own generator, which also shuffles mini-batches.
    """

    group = 1
    """responses per prompt: SPO is single-stream"""

    def __init__(self, num_prompts: int, batch_size: int, *, rho_min: float = 0.875, rho_max: float = 0.96,
                 d_half: float = 0.06, baseline: str = "tracker", prioritized: bool = True, eps: float = 0.05,
                 gamma: float = 0.0, thompson: bool = False, seed: int = 0,
                 generator: torch.Generator | None = None, rho_constant: float | None = None,
                 normalize: bool = True):
        if baseline not in ("tracker", "none"):
            raise ValueError(f"baseline must be 'tracker' or 'none', got {baseline!r}")
        self.baseline, self.batch_size, self.generator = baseline, batch_size, generator
        self.rho_constant, self.normalize = rho_constant, normalize
        self._last: dict[str, float] = {}  # the latest step's diagnostics, for stats()
        self.tracker = ValueTracker(num_prompts, rho_min=rho_min, rho_max=rho_max, d_half=d_half)
        self.sampler = None
        if prioritized:
            self.sampler = PrioritizedSampler(self.tracker, batch_size, eps=eps, gamma=gamma, thompson=thompson,
                                              generator=torch.Generator().manual_seed(seed))

    @property
    def num_prompts(self) -> int:
        return self.tracker.num_prompts

    def init_from_counts(self, successes, trials, mode: str = "jeffreys") -> None:
        """Offline initialisation from k successes in n trials per prompt (Sec. 3.3; see the tracker)."""
        self.tracker.init_from_counts(successes, trials, mode=mode)

    def draw(self, n: int | None = None, exclude=None) -> Tensor:
        """``[n]`` (default ``[B]``) distinct prompt ids: prioritised (weights sqrt(v (1 - v)) + eps), or
        uniform; never one of the ids ``exclude`` (prompts still in flight, for asynchronous collection)."""
        pool = excluded_pool(self.num_prompts, exclude)
        if self.sampler is not None:
            return self.sampler.sample(pool, n)
        if self.generator is None:
            raise RuntimeError("this SPO state was built with prioritized=False and no generator: draw prompts "
                               "uniformly yourself, or pass generator=")
        return uniform_draw(self.num_prompts, self.batch_size if n is None else n, self.generator, pool)

    def values(self, ids=None) -> Tensor:
        """The tracker's current value estimates v(x) (float64)."""
        return self.tracker.values(ids)

    def baselines(self, ids) -> Tensor:
        """The baseline of each row: v(x) read now, before this step's rewards (zeros for baseline='none')."""
        v = self.tracker.values(ids)
        self._last = {keys.SAMPLED_V_MEAN: float(v.mean())} if len(v) else {}
        return v if self.baseline == "tracker" else torch.zeros_like(v)

    def advantages(self, rewards, baselines) -> tuple[Tensor, Tensor]:
        """``(A_tilde, A)``: the batch-normalised advantage the loss uses and the raw r - b (diagnostics).

        With ``normalize=False`` (ablation) the loss gets A itself."""
        rewards = torch.as_tensor(rewards, dtype=torch.float64)
        raw = rewards - baselines
        return (spo_advantages(rewards, baselines) if self.normalize else raw.clone()), raw

    def observe(self, ids, rewards, D=None) -> Tensor:
        """Fold this step's rewards into the tracker with rho = clip(2^(-D / D_half)); returns rho per row.

        Call AFTER the policy update (the baseline of this step was read before it).
        """
        if self.rho_constant is not None and D is None:
            rho = self.tracker.update(ids, rewards, rho=self.rho_constant)
        else:
            rho = self.tracker.update(ids, rewards, D)
        self._last |= {keys.RHO_MEAN: float(rho.mean()), keys.RHO_MIN: float(rho.min()),
                       keys.D_MEAN: float(D.mean()) if D is not None else 0.0,
                       keys.D_MAX: float(D.max()) if D is not None else 0.0}
        return rho

    def stats(self) -> dict[str, float | list]:
        """Tracker diagnostics for the logs: the latest step's rho and D (mean, extreme) and the mean
        value of the prompts it drew, then the tracker's mean effective count, mean value and a 10-bin
        value histogram."""
        v = self.tracker.values()
        return {**self._last, keys.N_EFF_MEAN: float(self.tracker.n_eff().mean()), keys.V_MEAN: float(v.mean()),
                keys.VALUE_HIST: torch.histc(v.float(), bins=10, min=0, max=1).int().tolist()}

    def state_dict(self) -> dict:
        sd = {"tracker": self.tracker.state_dict()}
        if self.sampler is not None:
            sd["sampler"] = self.sampler.state_dict()
        return sd

    def load_state_dict(self, sd: dict) -> None:
        self.tracker.load_state_dict(sd["tracker"])
        if self.sampler is not None:
            self.sampler.load_state_dict(sd["sampler"])
            self.sampler.refresh()

    def __repr__(self) -> str:
        return (f"SPO(num_prompts={self.num_prompts}, baseline={self.baseline!r}, "
                f"prioritized={self.sampler is not None}, tracker={self.tracker!r})")
