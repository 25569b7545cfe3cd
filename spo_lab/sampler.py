"""Prioritised prompt sampling: an adaptive curriculum from the tracker (SPO paper Sec. 3.6).

A prompt's learning signal is largest where its success probability v is near 1/2: the reward's
standard deviation sqrt(v (1 - v)) is the typical |advantage| it can produce. SPO therefore draws the
batch with probability proportional to

    w(x) = sqrt(v(x) (1 - v(x))) / N(x) ** gamma + eps,

where eps = 0.05 keeps every prompt reachable (solved or hopeless prompts are re-checked now and
then) and the official code uses gamma = 0 (no count penalty). The batch is drawn WITHOUT
replacement, before generation, from the whole prompt set or from a candidate pool.

The official README calls this Thompson sampling, but the code uses the posterior mean v. The option
``thompson=True`` is the real thing: v is drawn from Beta(alpha, beta) per prompt at every draw.
"""

from __future__ import annotations

import itertools
import math
from typing import Iterator

import torch
from torch import Tensor
from torch.utils.data import Sampler

from .tracker import ValueTracker

__all__ = ["priority_weights", "PrioritizedSampler", "sample_without_replacement", "SumTree", "excluded_pool",
           "uniform_draw"]


def priority_weights(values, *, eps: float = 0.05, n_eff=None, gamma: float = 0.0) -> Tensor:
    """w = sqrt(v (1 - v)) / n_eff ** gamma + eps, elementwise (Sec. 3.6).

    Args:
        values: ``[P]`` success probabilities in [0, 1].
        eps: floor that keeps every prompt reachable (official 0.05); must be > 0.
        n_eff: ``[P]`` effective counts N = alpha + beta; needed only when gamma != 0.
        gamma: count penalty exponent (official 0).
    """
    v = torch.as_tensor(values, dtype=torch.float64)
    if torch.isnan(v).any() or (v < 0).any() or (v > 1).any():
        raise ValueError("values must lie in [0, 1] (no NaN)")
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be finite and > 0 so that every prompt can be drawn, got {eps}")
    spread = torch.sqrt(v * (1.0 - v))
    if gamma != 0.0:
        if n_eff is None:
            raise ValueError("gamma != 0 needs n_eff")
        n = torch.as_tensor(n_eff, dtype=torch.float64)
        if n.shape != v.shape or (n <= 0).any():
            raise ValueError("n_eff must be positive and have the shape of values")
        spread = spread / n**gamma
    return spread + eps


def sample_without_replacement(weights: Tensor, k: int, generator=None) -> Tensor:
    """Draw k distinct indices, sequentially proportional to ``weights`` (Plackett-Luce).

    Same law as ``torch.multinomial(weights, k, replacement=False)`` but computed as a single
    "exponential race" (Efraimidis & Spirakis): index i gets key log(U_i) / w_i with U_i uniform, and
    the k largest keys win. One pass of uniforms and a top-k, with no limit on the number of
    categories (torch.multinomial stops at 2**24), so it stays fast at ten million prompts.
    """
    w = torch.as_tensor(weights)
    if w.dim() != 1 or not torch.isfinite(w).all() or (w <= 0).any():
        raise ValueError("weights must be a 1-D tensor of finite, positive numbers")
    if not torch.isfinite(w.to(torch.float64).sum()):
        raise ValueError("the weights' sum is not finite (overflow): scale the weights down")
    if not 0 <= k <= w.numel():
        raise ValueError(f"cannot draw {k} distinct items from {w.numel()} candidates")
    u = torch.rand(w.numel(), generator=generator, dtype=torch.float64)
    keys = torch.log(u) / w.to(torch.float64)
    return torch.topk(keys, k, sorted=True).indices

def excluded_pool(num_prompts: int, exclude=None) -> Tensor | None:
    """The ids ``0 .. num_prompts-1`` not in ``exclude`` (ascending), or None when nothing is excluded."""
    if exclude is None or len(exclude) == 0:
        return None
    keep = torch.ones(num_prompts, dtype=torch.bool)
    keep[torch.as_tensor(list(exclude) if not isinstance(exclude, Tensor) else exclude, dtype=torch.long)] = False
    return keep.nonzero().squeeze(1)


def uniform_draw(num_prompts: int, k: int, generator, pool: Tensor | None = None) -> Tensor:
    """``k`` distinct ids drawn uniformly from all prompts, or from the candidate ids ``pool``."""
    if pool is None:
        return sample_without_replacement(torch.ones(num_prompts), k, generator)
    if k > pool.numel():
        raise ValueError(f"cannot draw {k} distinct ids from a pool of {pool.numel()}")
    return pool[sample_without_replacement(torch.ones(pool.numel()), k, generator)]


class SumTree:
    """Binary tree of partial sums over non-negative weights: O(log P) updates and draws, vectorised.

    ``levels[0]`` holds the weights (padded with zeros to even length), ``levels[l + 1][i]`` the sum
    of ``levels[l][2i]`` and ``levels[l][2i + 1]``; the last level is the total. Updating a batch of
    leaves recomputes only their ancestors (parents are re-summed from their children, so rounding
    errors never accumulate); a batch of draws descends all levels at once.
    """

    def __init__(self, weights: Tensor):
        level = torch.as_tensor(weights, dtype=torch.float64).clone()
        if level.dim() != 1 or level.numel() == 0 or (level < 0).any() or not torch.isfinite(level).all():
            raise ValueError("weights must be a non-empty 1-D tensor of finite, non-negative numbers")
        self.size = level.numel()
        self.levels = []
        while True:
            if level.numel() % 2 and level.numel() > 1:
                level = torch.cat([level, level.new_zeros(1)])
            self.levels.append(level)
            if level.numel() == 1:
                break
            level = level.view(-1, 2).sum(dim=1)
        if not torch.isfinite(self.levels[-1]).all():
            raise ValueError("the weights' sum is not finite (overflow): scale the weights down")

    @property
    def total(self) -> float:
        return float(self.levels[-1][0])

    def update(self, idx: Tensor, weights: Tensor) -> None:
        """Set leaves ``idx`` to ``weights`` (idx may repeat: the last write wins, as in indexing)."""
        weights = weights.to(torch.float64)
        if (weights < 0).any() or not torch.isfinite(weights).all():
            raise ValueError("weights must be finite and non-negative")
        self.levels[0][idx] = weights
        for lower, upper in zip(self.levels[:-1], self.levels[1:]):
            idx = torch.unique(idx // 2)
            upper[idx] = lower[2 * idx] + lower[2 * idx + 1]
        if not torch.isfinite(self.levels[-1]).all():
            raise ValueError("the weights' sum is not finite (overflow): scale the weights down")

    def draw(self, m: int, generator=None) -> Tensor:
        """m independent leaf indices, each with probability weight / total (WITH replacement)."""
        u = torch.rand(m, generator=generator, dtype=torch.float64) * self.total
        idx = torch.zeros(m, dtype=torch.long)
        for lower in reversed(self.levels[:-1]):
            left, right = lower[2 * idx], lower[2 * idx + 1]
            go_right = (u >= left) & (right > 0)
            u = torch.where(go_right, u - left, u)
            idx = 2 * idx + go_right.long()
        return idx

    def draw_distinct(self, k: int, generator=None) -> Tensor:
        """k distinct leaves with the law of sequential draws without replacement (Plackett-Luce).

        Drawing with replacement and keeping first occurrences in order is exactly that law: given
        the items seen so far, the next new one is proportional to weight among the unseen ones.
        Unless the weights are concentrated on few leaves, repeats are rare and one round suffices.
        """
        if not 0 <= k <= self.size or (k > 0 and self.total <= 0):
            raise ValueError(f"cannot draw {k} distinct items from {self.size} candidates")
        out = torch.empty(0, dtype=torch.long)
        for rounds in itertools.count():
            if out.numel() >= k:
                break
            if rounds == 64 and k > int((self.levels[0] > 0).sum()):  # checked only when stuck
                raise ValueError(f"only {int((self.levels[0] > 0).sum())} items have weight > 0; cannot draw {k}")
            cand = torch.cat([out, self.draw(2 * k, generator)])
            uniq, inverse = torch.unique(cand, return_inverse=True)
            first = torch.full((uniq.numel(),), cand.numel(), dtype=torch.long)
            first.scatter_reduce_(0, inverse, torch.arange(cand.numel()), reduce="amin")
            out = cand[first.sort().values][:k]
        return out


class PrioritizedSampler(Sampler[list]):
    """Draws batches of distinct prompt ids with probability proportional to :func:`priority_weights`.

    The weights are recomputed from the tracker's current state at every draw, so the curriculum
    follows learning. Also a ``torch.utils.data.Sampler`` for ``DataLoader(ds, batch_sampler=...)``:
    iterating yields one batch (a list of ids) per step, forever unless ``num_batches`` is given.

    Args:
        tracker: the :class:`~spo_lab.tracker.ValueTracker` whose values drive the weights.
        batch_size: prompts per draw (B).
        eps, gamma: see :func:`priority_weights`.
        thompson: draw v ~ Beta(alpha, beta) per prompt instead of using the posterior mean
            (a true Thompson-sampling variant; not what the official code does).
        generator: torch.Generator for reproducible draws (a fresh unseeded one if None).
        num_batches: length of iteration when used as a batch sampler (None: infinite).

    The tree sees every change made through the tracker's methods and any in-place torch write to
    ``tracker.alpha`` / ``tracker.beta``; writes that bypass torch's version counter (through
    ``.numpy()`` or ``.data``) are invisible to it: call :meth:`refresh` after those.
    """

    def __init__(
        self,
        tracker: ValueTracker,
        batch_size: int,
        *,
        eps: float = 0.05,
        gamma: float = 0.0,
        thompson: bool = False,
        generator: torch.Generator | None = None,
        num_batches: int | None = None,
    ):
        super().__init__()
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if batch_size > tracker.num_prompts:
            raise ValueError(f"batch_size {batch_size} exceeds the {tracker.num_prompts} prompts")
        if not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be finite and > 0, got {eps}")
        self.tracker = tracker
        self.batch_size = int(batch_size)
        self.eps, self.gamma, self.thompson = float(eps), float(gamma), bool(thompson)
        if generator is None:
            generator = torch.Generator()
            generator.seed()
        self.generator = generator
        self.num_batches = num_batches
        self._tree: SumTree | None = None  # weights of all prompts, kept in step with the tracker
        self._tree_version = -1

    def weights(self, ids=None) -> Tensor:
        """Current weights of ``ids`` (all prompts if None); Thompson draws are fresh each call."""
        if self.thompson:
            v = self._thompson_values(ids)
        else:
            v = self.tracker.values(ids)
        n = self.tracker.n_eff(ids) if self.gamma != 0.0 else None
        return priority_weights(v, eps=self.eps, n_eff=n, gamma=self.gamma)

    def sample(self, pool=None, k: int | None = None) -> Tensor:
        """Draw ``k`` (default ``batch_size``) distinct ids, from all prompts or from the candidate ids ``pool``.

        Without a pool and without Thompson draws, the weights of all prompts live in a
        :class:`SumTree` refreshed only for the prompts the tracker changed since the last draw, so a
        draw costs O(batch_size log P) rather than a pass over all P prompts.
        """
        k = self.batch_size if k is None else int(k)
        if pool is None:
            if self.thompson:  # fresh Beta draws for every prompt: inherently a full pass
                return sample_without_replacement(self.weights(), k, self.generator)
            return self._synced_tree().draw_distinct(k, self.generator)
        pool = self.tracker.check_ids(pool)
        if torch.unique(pool).numel() != pool.numel():
            raise ValueError("pool must not contain duplicate ids")
        if k > pool.numel():
            raise ValueError(f"cannot draw {k} distinct ids from a pool of {pool.numel()}")
        pick = sample_without_replacement(self.weights(pool), k, self.generator)
        return pool[pick]

    def __iter__(self) -> Iterator[list]:
        i = 0
        while self.num_batches is None or i < self.num_batches:
            yield self.sample().tolist()
            i += 1

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("an infinite PrioritizedSampler has no length; pass num_batches")
        return self.num_batches

    def refresh(self) -> None:
        """Forget the cached weights; the next draw recomputes them for every prompt."""
        self._tree = None

    def _synced_tree(self) -> SumTree:
        changed = None if self._tree is None else self.tracker.changed_since(self._tree_version)
        if changed is None:
            self._tree = SumTree(self.weights())
        elif changed.numel():
            changed = torch.unique(changed)
            self._tree.update(changed, self.weights(changed))
        self._tree_version = self.tracker.version
        return self._tree

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, sd: dict) -> None:
        self.generator.set_state(sd["generator"])

    def _thompson_values(self, ids) -> Tensor:
        a = self.tracker.alpha if ids is None else self.tracker.alpha[self.tracker.check_ids(ids)]
        b = self.tracker.beta if ids is None else self.tracker.beta[self.tracker.check_ids(ids)]
        a, b = a.clamp(min=1e-6), b.clamp(min=1e-6)  # "paper" init can leave alpha or beta at 0
        # torch's gamma sampler takes no generator: seed a forked global RNG from ours instead,
        # so draws are reproducible and the caller's global RNG stream is left untouched.
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            x, y = torch._standard_gamma(a), torch._standard_gamma(b)
        return (x / (x + y)).nan_to_num(0.5).clamp(0.0, 1.0)
