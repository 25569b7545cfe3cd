"""Evaluation and diagnosis metrics: pass@k, maj@k, degenerate groups (the SPO paper).

pass@k, the unbiased estimator (Chen et al. 2021) from n samples of which c are correct:

    pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{j=0}^{k-1} (1 - c / (n - j)),

computed in log space as a sum of log1p terms, so it stays exact where the binomials overflow.

Degenerate groups: a GRPO group of G responses whose rewards are all equal has zero advantage for
every member. With success probability p, P(degenerate) = p^G + (1 - p)^G.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

__all__ = ["pass_at_k", "maj_at_k", "degenerate_probability", "degenerate_mask", "degenerate_fraction"]


def pass_at_k(n, c, k):
    """Unbiased pass@k from ``n`` samples with ``c`` correct, vectorised over arrays of n and c.

    Args:
        n, c: integers or integer arrays (broadcast together), 0 <= c <= n.
        k: integer, 1 <= k <= n.

    Returns:
        float for scalar input, else an ndarray of n and c's broadcast shape.
    """
    n_arr, c_arr = np.broadcast_arrays(np.asarray(n, dtype=np.int64), np.asarray(c, dtype=np.int64))
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if (c_arr < 0).any() or (c_arr > n_arr).any():
        raise ValueError("need 0 <= c <= n")
    if (n_arr < k).any():
        raise ValueError(f"k={k} exceeds the number of samples n={int(n_arr.min())}")
    j = np.arange(int(k), dtype=np.float64)
    nn = n_arr[..., None].astype(np.float64)
    cc = c_arr[..., None].astype(np.float64)
    # every k-subset contains a correct sample once n - c < k; mask those to avoid log1p(-1) = -inf
    sure = n_arr - c_arr < k
    frac = np.where(sure[..., None], 0.0, cc / (nn - j))
    log_miss = np.log1p(-frac).sum(axis=-1)
    out = np.where(sure, 1.0, -np.expm1(log_miss))
    return float(out) if out.ndim == 0 else out


def _majority_correct(answers, correct) -> bool:
    """Is the majority answer among these samples correct? Ties: the tied answer seen first wins."""
    counts = Counter(answers)
    top = max(counts.values())
    winner = next(a for a in answers if counts[a] == top)
    return bool(next(ok for a, ok in zip(answers, correct) if a == winner))


def maj_at_k(answers, correct, k: int) -> float:
    """Majority-vote accuracy with k samples, averaged over disjoint subsets and problems.

    Args:
        answers: ``[problems, n]`` hashable final answers (e.g. parsed integers; None for unparsable
            completions, which then vote as one more answer, like the official evaluation).
        correct: ``[problems, n]`` booleans, sample j of problem i correct.
        k: votes per majority, 1 <= k <= n.

    For each problem the n samples are cut into floor(n / k) DISJOINT consecutive blocks of k (samples
    left over are not used); in each block the most frequent answer wins, ties going to the tied
    answer that occurs first in the block; the block scores 1 if that answer's samples are correct.
    maj@k = mean over blocks, then over problems. Deterministic: no resampling.
    """
    correct = np.asarray(correct, dtype=bool)
    if correct.ndim != 2:
        raise ValueError(f"correct must be [problems, n], got shape {correct.shape}")
    answers = [list(row) for row in answers]
    if len(answers) != correct.shape[0] or any(len(r) != correct.shape[1] for r in answers):
        raise ValueError("answers and correct must have the same [problems, n] shape")
    n = correct.shape[1]
    if int(k) != k or not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n={n}, got k={k!r}")
    per_problem = []
    for row_a, row_c in zip(answers, correct):
        blocks = [
            _majority_correct(row_a[s : s + k], row_c[s : s + k]) for s in range(0, n - k + 1, k)
        ]
        per_problem.append(np.mean(blocks))
    return float(np.mean(per_problem)) if per_problem else float("nan")


def degenerate_probability(p, group_size: int):
    """P(all G rewards equal) = p^G + (1 - p)^G for binary rewards with success probability p."""
    if int(group_size) != group_size or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
    p_arr = np.asarray(p, dtype=np.float64)
    if np.isnan(p_arr).any() or (p_arr < 0).any() or (p_arr > 1).any():
        raise ValueError("p must lie in [0, 1]")
    out = p_arr**group_size + (1.0 - p_arr) ** group_size
    return float(out) if out.ndim == 0 else out


def degenerate_mask(rewards, group_size: int):
    """``[B / G]`` bool: True for each group (consecutive block of G rewards) whose rewards are all equal.

    The one definition of a degenerate group used everywhere in spo_lab (advantages, trainer logs,
    simulations). Raises ValueError when the rewards do not split into non-empty groups of G.
    """
    r = torch.as_tensor(rewards).reshape(-1)
    if int(group_size) != group_size or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
    if r.numel() == 0 or r.numel() % group_size:
        raise ValueError(
            f"{r.numel()} rewards cannot be split into non-empty groups of {group_size}"
        )
    g = r.reshape(-1, group_size)
    return (g == g[:, :1]).all(dim=1)


def degenerate_fraction(rewards, group_size: int) -> float:
    """Measured share of groups (consecutive blocks of G rewards) whose rewards are all equal.

    Groups are equal-sized, so this is also the share of samples that sit in a degenerate group.
    """
    return float(degenerate_mask(rewards, group_size).float().mean())
