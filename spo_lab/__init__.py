"""spo_lab: Single-stream Policy Optimization (SPO, arXiv 2509.13232), small, tested and readable.

The algorithm's pieces, one concept per module:

- :mod:`spo_lab.tracker`    -- per-prompt Beta value tracker with a KL-adaptive discount (Sec. 3.1-3.3)
- :mod:`spo_lab.advantages` -- SPO's globally normalised advantage and the group baselines (Sec. 3.4)
- :mod:`spo_lab.sampler`    -- prioritised prompt sampling, the adaptive curriculum (Sec. 3.6)
- :mod:`spo_lab.loss`       -- the PPO clipped surrogate with clip-higher and dual-clip (Sec. 3.5)
- :mod:`spo_lab.metrics`    -- pass@k, maj@k, degenerate-group probability and fraction

The model-facing parts (task, tiny model, rollout engine, trainer) import transformers and are
imported from their own modules, so ``import spo_lab`` stays light.
"""

from .advantages import grpo_advantages, rloo_advantages, spo_advantages
from .loss import policy_loss
from .metrics import degenerate_fraction, degenerate_probability, maj_at_k, pass_at_k
from .sampler import PrioritizedSampler, priority_weights
from .tracker import ValueTracker, rho_from_kl

__version__ = "0.1.0"

__all__ = [
    "ValueTracker",
    "rho_from_kl",
    "spo_advantages",
    "grpo_advantages",
    "rloo_advantages",
    "PrioritizedSampler",
    "priority_weights",
    "policy_loss",
    "pass_at_k",
    "maj_at_k",
    "degenerate_probability",
    "degenerate_fraction",
]
