"""The palette of every spo_lab figure: one colour per method, the same in every plot.

Standard library only, so any layer can draw with it: the notebooks' style module
(:mod:`spo_lab.teaching.style`, which adds labels, legends and plot helpers) re-exports it, and
:func:`spo_lab.evaluate.plot_benchmark_pass_at_k` colours the paper's markers with it.
"""

from __future__ import annotations

__all__ = ["DPI", "FIGSIZE", "METHOD_COLORS", "OTHER_COLORS", "ALIASES", "FALLBACK_COLORS", "PHASE_COLOR_LIST"]

DPI = 110
FIGSIZE = (5.0, 3.2)

# One colour per method (the run names of spo_lab.experiment.RUNS), colour-blind-safe where possible:
# SPO and its ablations in blues/greens, the group methods in oranges/reds/purples, references in greys.
METHOD_COLORS: dict[str, str] = {
    "spo": "#0072B2",  # blue
    "spo-uniform": "#56B4E9",  # sky blue
    "spo-no-init": "#009E73",  # bluish green
    "spo-const-rho": "#9467BD",  # purple
    "spo-kl-clock": "#17BECF",  # cyan
    "spo-no-baseline": "#BCBD22",  # olive
    "spo-n0-1": "#66C2A5",  # light teal
    "spo-n0-2": "#1B7837",  # dark green
    "spo-no-norm": "#A6CEE3",  # no normalisation
    "spo-paper-init": "#B2DF8A",  # pale green
    "grpo": "#D55E00",  # vermillion
    "dr_grpo": "#E69F00",  # orange
    "rloo": "#CC79A7",  # reddish purple
    "reinforce": "#8C564B",  # brown
    "initial": "#4D4D4D",  # dark grey: the warm-start policy before any training
    "paper": "#999999",  # light grey, always dashed: a number reported in the paper
}

# Curves of the simulations that are not a method of their own.
OTHER_COLORS: dict[str, str] = {
    "oracle": "#000000",  # the truth: true p, the oracle baseline r - p, the oracle sampler
    "thompson": "#AA4499",  # prioritised sampling with v drawn from Beta(alpha, beta)
    "generate": "#332288",  # indigo: a generation turn of the measured collector
    "tool": "#DDCC77",  # sand: a tool call (sandbox and injected wait)
    "handover": "#882255",  # wine: a batch handed to the trainer
}

# Other names of the same method or reference: each gets the colour of the name it maps to.
ALIASES: dict[str, str] = {
    "warm start": "initial",
    "init": "initial",
    "true p": "oracle",
    "oracle: r - p": "oracle",
    # simulated estimators and samplers that ARE a method's rule
    "SPO: r - v": "spo",
    "prioritized": "spo",
    "adaptive (logprob)": "spo",
    "uniform": "spo-uniform",
    "spo-n0-0": "spo-no-init",  # the same run: no offline pass
    "constant rho": "spo-const-rho",
    "reward r": "spo-no-baseline",  # A = r: no baseline
    "GRPO (all samples)": "grpo",
    "GRPO (non-degenerate)": "grpo",
}

# Colours for curves that match nothing above, given in order within one figure.
FALLBACK_COLORS = ("#332288", "#882255", "#DDCC77", "#CC6677", "#44AA99", "#6699CC", "#661100", "#999933")

# Bar colours of a step's phases, in the order of spo_lab.keys.PHASES, then evaluation and the offline pass.
PHASE_COLOR_LIST = ("#56B4E9", "#E69F00", "#009E73", "#0072B2", "#CC79A7", "#F0E442", "#999999", "#4D4D4D")
