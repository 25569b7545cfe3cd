"""The KL-adaptive value tracker: one Beta posterior per prompt (SPO paper, Sec. 3.1-3.3).

SPO replaces GRPO's per-group baseline with a *persistent* estimate of each prompt's success
probability V(x) = E_y[r(x, y)] under the current policy. The estimate is a Beta posterior

    v(x) = alpha / (alpha + beta),        N(x) = alpha + beta   (its effective sample count),

updated after every reward r in [0, 1] observed for x with a discount rho in (0, 1):

    alpha <- rho * alpha + r,             beta <- rho * beta + (1 - r).

Written as an exponential moving average this is the *adaptive* EMA

    v <- v + (r - v) / (rho * N + 1),     N <- rho * N + 1,

so the tracker's memory is about 1 / (1 - rho) observations once N has settled. The discount
shrinks when the policy has moved a lot since x was last seen (Sec. 3.2):

    rho(x) = clip(2 ** (-D(x) / D_half), rho_min, rho_max),

with the official constants D_half = 0.06, rho_min = 0.875 (a window of 8 observations) and
rho_max = 0.96 (a window of 25). How D(x) is measured is the trainer's business (it needs the
policy); this module only turns a D into a rho and applies updates.

Prompts are integer ids 0 .. num_prompts - 1. All state lives in two float64 tensors, so one update
of a batch is a handful of vectorised ops even with millions of prompts.
"""

from __future__ import annotations

from collections import deque

import torch
from torch import Tensor

__all__ = ["rho_from_d", "rho_from_kl", "ValueTracker"]

# Official constants of the authors' recipe (the SPO paper).
D_HALF = 0.06
RHO_MIN = 0.875
RHO_MAX = 0.96


def rho_from_d(
    d, *, d_half: float = D_HALF, rho_min: float = RHO_MIN, rho_max: float = RHO_MAX
) -> Tensor:
    """Discount rho = clip(2 ** (-D / d_half), rho_min, rho_max), elementwise (Sec. 3.2).

    ``d`` is D(x) >= 0 per prompt (any shape): how far the policy moved since x was last seen (the
    paper's KL; the official code's mean |delta log pi|, see :mod:`spo_lab.divergence`). D = d_half
    halves the old evidence, D = 0 keeps the most memory (rho_max). Returns float64 of ``d``'s shape.
    """
    kl = torch.as_tensor(d, dtype=torch.float64)
    if not 0.0 < rho_min <= rho_max < 1.0:
        raise ValueError(f"need 0 < rho_min <= rho_max < 1, got rho_min={rho_min}, rho_max={rho_max}")
    if d_half <= 0:
        raise ValueError(f"d_half must be > 0, got {d_half}")
    if torch.isnan(kl).any() or (kl < 0).any():
        raise ValueError("D must be non-negative and not NaN")
    return torch.exp2(-kl / d_half).clamp(rho_min, rho_max)


rho_from_kl = rho_from_d  # the old name (D is the paper's KL), kept for one release


class ValueTracker:
    """Per-prompt Beta(alpha, beta) value estimates with a KL-adaptive discount.

    Args:
        num_prompts: size of the prompt set; prompts are ids ``0 .. num_prompts - 1``.
        rho_min, rho_max, d_half: the discount schedule of :func:`rho_from_d`.
        prior_alpha, prior_beta: state of a prompt never seen (official fallback 0.5 / 0.5,
            i.e. v = 0.5 with the weight of one observation).

    Attributes:
        alpha, beta: float64 tensors of shape ``[num_prompts]``.
    """

    def __init__(
        self,
        num_prompts: int,
        *,
        rho_min: float = RHO_MIN,
        rho_max: float = RHO_MAX,
        d_half: float = D_HALF,
        prior_alpha: float = 0.5,
        prior_beta: float = 0.5,
    ):
        if int(num_prompts) != num_prompts or num_prompts < 1:
            raise ValueError(f"num_prompts must be a positive integer, got {num_prompts!r}")
        if prior_alpha <= 0 or prior_beta <= 0:
            raise ValueError("prior_alpha and prior_beta must be > 0")
        rho_from_d(0.0, d_half=d_half, rho_min=rho_min, rho_max=rho_max)  # validates the schedule
        self.num_prompts = int(num_prompts)
        self.rho_min, self.rho_max, self.d_half = float(rho_min), float(rho_max), float(d_half)
        self.alpha = torch.full((self.num_prompts,), float(prior_alpha), dtype=torch.float64)
        self.beta = torch.full((self.num_prompts,), float(prior_beta), dtype=torch.float64)
        # Change log for readers that cache per-prompt quantities (the sampler's sum tree): version
        # counts mutations; _changes[-j] = ids touched by mutation version - j + 1, None = all of them.
        self.version = 0
        self._changes: deque = deque(maxlen=64)
        self._stamp = (self.alpha, self.alpha._version, self.beta, self.beta._version)

    # ------------------------------------------------------------------ reading
    def values(self, ids=None) -> Tensor:
        """v = alpha / (alpha + beta) for ``ids`` (all prompts if None); float64."""
        if ids is None:
            return self.alpha / (self.alpha + self.beta)
        ids = self.check_ids(ids)
        a, b = self.alpha[ids], self.beta[ids]
        return a / (a + b)

    def n_eff(self, ids=None) -> Tensor:
        """Effective number of observations N = alpha + beta for ``ids`` (all if None)."""
        if ids is None:
            return self.alpha + self.beta
        ids = self.check_ids(ids)
        return self.alpha[ids] + self.beta[ids]

    def rho(self, d) -> Tensor:
        """This tracker's discount for divergence(s) D (see :func:`rho_from_d`)."""
        return rho_from_d(d, d_half=self.d_half, rho_min=self.rho_min, rho_max=self.rho_max)

    # ------------------------------------------------------------------ writing
    def init_from_counts(self, successes, trials, mode: str = "jeffreys") -> None:
        """Initialise every prompt from an offline pass: k successes out of n samples (Sec. 3.3).

        With N0 = 1 / (1 - rho_min) (= 8 with the official rho_min):

        - ``"jeffreys"`` (official code): alpha = N0 (k + 1/2) / (n + 1), beta = N0 (n - k + 1/2) / (n + 1)
        - ``"paper"``: alpha = N0 k / n, beta = N0 (n - k) / n

        Prompts with n = 0 keep their current state (the prior), in both modes, so a prompt missing
        from the offline pass is still sampled (the official code silently gave it weight 0).
        Note the "paper" form gives v = 0 or 1 exactly for prompts that were always failed or always
        solved; their alpha (or beta) is 0 until the first update adds evidence.
        """
        k = torch.as_tensor(successes, dtype=torch.float64)
        n = torch.as_tensor(trials, dtype=torch.float64)
        if k.shape != (self.num_prompts,) or n.shape != (self.num_prompts,):
            raise ValueError(
                f"successes and trials must both have shape ({self.num_prompts},), "
                f"got {tuple(k.shape)} and {tuple(n.shape)}"
            )
        if torch.isnan(k).any() or torch.isnan(n).any() or (k < 0).any() or (k > n).any():
            raise ValueError("need 0 <= successes <= trials (and no NaN)")
        n0 = 1.0 / (1.0 - self.rho_min)
        seen = n > 0
        if mode == "jeffreys":
            alpha = n0 * (k + 0.5) / (n + 1)
            beta = n0 * (n - k + 0.5) / (n + 1)
        elif mode == "paper":
            safe_n = n.clamp(min=1)
            alpha = n0 * k / safe_n
            beta = n0 * (n - k) / safe_n
        else:
            raise ValueError(f"mode must be 'jeffreys' or 'paper', got {mode!r}")
        self.alpha = torch.where(seen, alpha, self.alpha)
        self.beta = torch.where(seen, beta, self.beta)
        self._record_change(None)

    def update(self, ids, rewards, d=None, *, kl=None, rho=None) -> Tensor:
        """Fold one reward per element into its prompt's posterior; return the rho used.

        Args:
            ids: integer prompt ids, shape ``[B]``. Duplicates are allowed and are applied one after
                another in the order given, exactly as B single updates would be (a vectorised
                scatter would silently keep only one of them).
            rewards: shape ``[B]``, each in [0, 1] (non-binary rewards use the same update).
            d: D(x) per element, shape ``[B]``; None means D = 0, i.e. rho = rho_max.
            kl: the old name of ``d``, kept for one release.
            rho: a constant discount for every element instead of rho(D) (the constant-rho ablation; the
                official recipe's ``rho.value``, 0.875 by default); not combined with ``d``.

        Returns:
            float64 tensor ``[B]``: the discount applied for each element.
        """
        ids = self.check_ids(ids)
        r = torch.as_tensor(rewards, dtype=torch.float64).reshape(-1)
        if r.shape != ids.shape:
            raise ValueError(f"rewards has {r.numel()} elements but ids has {ids.numel()}")
        if torch.isnan(r).any() or (r < 0).any() or (r > 1).any():
            raise ValueError("rewards must lie in [0, 1] (no NaN)")
        if kl is not None and d is not None:
            raise TypeError("give d (or its old name kl), not both")
        kl = d if d is not None else kl
        if rho is not None:
            if kl is not None:
                raise TypeError("give a constant rho or D, not both")
            if not 0.0 < float(rho) < 1.0:
                raise ValueError(f"a constant rho must lie in (0, 1), got {rho}")
            rho = torch.full_like(r, float(rho))
        elif kl is None:
            rho = torch.full_like(r, self.rho_max)
        else:
            kl = torch.as_tensor(kl, dtype=torch.float64).reshape(-1)
            if kl.shape != ids.shape:
                raise ValueError(f"D has {kl.numel()} elements but ids has {ids.numel()}")
            rho = self.rho(kl)
        if ids.numel() == 0:
            return rho
        # Round j applies the j-th occurrence of every id: ids are unique within a round, so a plain
        # indexed assignment is exact, and rounds run in order. Rounds = the largest multiplicity
        # (1 in the usual case of distinct prompts), so this stays vectorised.
        for sel in _occurrence_rounds(ids):
            i, rr, p = ids[sel], r[sel], rho[sel]
            self.alpha[i] = p * self.alpha[i] + rr
            self.beta[i] = p * self.beta[i] + (1.0 - rr)
        self._record_change(ids)
        return rho

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict:
        return {
            "alpha": self.alpha.clone(),
            "beta": self.beta.clone(),
            "rho_min": self.rho_min,
            "rho_max": self.rho_max,
            "d_half": self.d_half,
        }

    def load_state_dict(self, sd: dict) -> None:
        alpha = torch.as_tensor(sd["alpha"], dtype=torch.float64)
        beta = torch.as_tensor(sd["beta"], dtype=torch.float64)
        if alpha.shape != (self.num_prompts,) or beta.shape != (self.num_prompts,):
            raise ValueError(
                f"state has {alpha.numel()} prompts, this tracker has {self.num_prompts}"
            )
        self.alpha, self.beta = alpha.clone(), beta.clone()
        self._record_change(None)
        self.rho_min = float(sd.get("rho_min", self.rho_min))
        self.rho_max = float(sd.get("rho_max", self.rho_max))
        self.d_half = float(sd.get("d_half", self.d_half))

    def changed_since(self, version: int):
        """Ids mutated after ``version`` (a tensor, possibly with repeats), or None if unknown/all."""
        behind = self.version - version
        if not self._stamp_matches():  # alpha/beta were written directly, not through a method
            return None
        if behind < 0 or behind > len(self._changes):
            return None
        if behind == 0:
            return torch.empty(0, dtype=torch.long)
        recent = list(self._changes)[-behind:]
        if any(c is None for c in recent):
            return None
        return torch.cat(recent)

    # ------------------------------------------------------------------ helpers
    def _record_change(self, ids) -> None:
        self.version += 1
        self._changes.append(None if ids is None else ids.clone())
        self._stamp = (self.alpha, self.alpha._version, self.beta, self.beta._version)

    def _stamp_matches(self) -> bool:
        # torch bumps a tensor's _version on every in-place write, which reveals direct edits.
        a, av, b, bv = self._stamp
        return a is self.alpha and b is self.beta and a._version == av and b._version == bv

    def check_ids(self, ids) -> Tensor:
        """``ids`` as a flat int64 tensor; ValueError unless integers in [0, num_prompts)."""
        ids = torch.as_tensor(ids)
        if ids.is_floating_point() or ids.dtype == torch.bool:
            raise ValueError(f"ids must be integers, got dtype {ids.dtype}")
        ids = ids.reshape(-1).long()
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.num_prompts):
            raise ValueError(
                f"ids must lie in [0, {self.num_prompts}), got range "
                f"[{int(ids.min())}, {int(ids.max())}]"
            )
        return ids

    def __repr__(self) -> str:
        return (
            f"ValueTracker(num_prompts={self.num_prompts}, rho_min={self.rho_min}, "
            f"rho_max={self.rho_max}, d_half={self.d_half})"
        )


def _occurrence_rounds(ids: Tensor) -> list[Tensor]:
    """Split positions of ``ids`` into rounds where round j holds each id's j-th occurrence."""
    uniq, inverse, counts = torch.unique(ids, return_inverse=True, return_counts=True)
    if uniq.numel() == ids.numel():
        return [torch.arange(ids.numel())]
    # occurrence rank of each position among equal ids, in input order
    order = torch.argsort(inverse, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    rank_sorted = torch.arange(ids.numel()) - starts.repeat_interleave(counts)
    rank = torch.empty_like(rank_sorted)
    rank[order] = rank_sorted
    return [torch.nonzero(rank == j).flatten() for j in range(int(counts.max()))]
