"""spo_lab: Single-stream Policy Optimization (SPO, arXiv 2509.13232), small, tested and readable.

The algorithm's pieces, one concept per module:

- :mod:`spo_lab.tracker`    -- per-prompt Beta value tracker with a KL-adaptive discount (Sec. 3.1-3.3)
- :mod:`spo_lab.advantages` -- SPO's globally normalised advantage and the group baselines (Sec. 3.4)
- :mod:`spo_lab.sampler`    -- prioritised prompt sampling, the adaptive curriculum (Sec. 3.6)
- :mod:`spo_lab.loss`       -- the PPO clipped surrogate with clip-higher and dual-clip (Sec. 3.5)
- :mod:`spo_lab.metrics`    -- pass@k, maj@k, degenerate-group probability, mask and fraction
- :mod:`spo_lab.divergence` -- D(x), how far the policy moved since x was seen (Sec. 3.2)

Above the core (each imports only what is below it):

- :mod:`spo_lab.spo`        -- SPO's state across steps, reusable by any loop or launcher
- :mod:`spo_lab.algorithms` -- the protocol every method follows; GRPO, Dr. GRPO, RLOO, REINFORCE
- :mod:`spo_lab.ppo`        -- the PPO update: mini-batches (the algorithm), micro-batches (memory)
- :mod:`spo_lab.offline`    -- the offline pass that initialises the tracker (Sec. 3.3), cached by content
- :mod:`spo_lab.engines`    -- rollout engines (Hugging Face ``generate``, vLLM), one protocol
- :mod:`spo_lab.tasks`      -- tasks (arithmetic, math), one protocol
- :mod:`spo_lab.models`     -- loading the policy (full or LoRA, device, dtype) and scoring its tokens
- :mod:`spo_lab.tools`      -- the Python tool: a sandbox for policy-written code
- :mod:`spo_lab.train`      -- ``Config``, the step (``train_step``) and the loop, top to bottom
- :mod:`spo_lab.evaluate`   -- sampled evaluation: accuracy, pass@k, maj@k through the task's reward
- :mod:`spo_lab.experiment` -- the tiny reproduction (main job): run registry and runner
- :mod:`spo_lab.report`, :mod:`spo_lab.figures` -- its statistics, tables and figures
- :mod:`spo_lab.teaching`   -- simulations and figures for the notebooks

Leaves any layer may use: :mod:`spo_lab.keys` (the names of what a run logs), :mod:`spo_lab.palette`
(the colours of every figure), :mod:`spo_lab.paths` (the per-user cache folder), :mod:`spo_lab.errors`
(expected errors, printed as one line by the command lines).

The model-facing parts import transformers and are imported from their own modules, so
``import spo_lab`` stays light (torch and numpy only).
"""

from .advantages import grpo_advantages, rloo_advantages, spo_advantages
from .loss import policy_loss
from .metrics import degenerate_fraction, degenerate_mask, degenerate_probability, maj_at_k, pass_at_k
from .sampler import PrioritizedSampler, priority_weights
from .tracker import ValueTracker, rho_from_d, rho_from_kl

__version__ = "0.1.0"

__all__ = [
    "ValueTracker",
    "rho_from_d",
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
    "degenerate_mask",
]
