"""One figure style for every plot of spo_lab: colours, axis labels, legends, the paper's reference line.

Conventions shared by all plot helpers of :mod:`spo_lab.teaching`:

- each takes the data to draw (a DataFrame or an array made by a compute function), an optional
  ``ax`` (a new figure at :data:`DPI` is made if None), and returns that Axes;
- one colour per method everywhere (:data:`METHOD_COLORS`): SPO is always the same blue, GRPO the
  same vermillion, whether the curve is a training run, a simulated estimator or a sampler;
- axes carry human labels with units (:data:`LABELS`, :func:`label`), never a raw metric key;
- legends sit where they hide the least data (``loc="best"``, a translucent frame: :func:`legend`);
- the paper's number is drawn beside ours as a grey dashed line labelled "paper: ..." (:func:`paper_line`).
"""

from __future__ import annotations

import matplotlib as mpl
import numpy as np

from .. import keys as k
from ..palette import ALIASES, DPI, FALLBACK_COLORS, FIGSIZE, METHOD_COLORS, OTHER_COLORS, PHASE_COLOR_LIST

__all__ = [
    "DPI",
    "FIGSIZE",
    "METHOD_COLORS",
    "OTHER_COLORS",
    "ALIASES",
    "LABELS",
    "PHASES",
    "PHASE_COLORS",
    "apply",
    "color",
    "colors",
    "label",
    "legend",
    "paper_line",
    "band",
    "seed_band",
]

# Phases of one training step, in order (the trainer's time/* keys), then evaluation and the offline pass.
PHASES = (*k.PHASES, "eval", "offline_init")
PHASE_COLORS = dict(zip(PHASES, PHASE_COLOR_LIST))

# Human axis labels, with units, for every key a plot helper is called with (the keys: spo_lab.keys).
LABELS: dict[str, str] = {
    # x axes of training runs
    k.STEP: "training step",
    k.RESPONSES: "training responses generated",
    k.RESPONSES_INCL_INIT: "responses generated, incl. the offline init pass",
    k.TOKENS: "training tokens generated",
    # held-out evaluation
    k.GREEDY_ACC: "held-out accuracy, greedy (fraction correct)",
    k.SAMPLED_ACC: "held-out accuracy, sampled (fraction correct)",
    # the training batch
    k.REWARD_MEAN: "training reward (fraction correct)",
    k.REWARD_VAR: "training reward variance (per batch)",
    k.ADV_RAW_VAR: "advantage variance before normalisation (per batch)",
    k.ADV_VAR: "advantage variance after normalisation (per batch)",
    k.ADV_VAR_NONDEGENERATE: "advantage variance in non-degenerate groups (per batch)",
    k.ADV_ZERO_FRAC: "zero-advantage samples (fraction)",
    k.DEGENERATE_FRAC: "degenerate groups (fraction)",
    k.TRUNCATED_FRAC: "truncated responses (fraction)",
    k.sampled_mean("level"): "difficulty level of the sampled prompts (mean)",
    k.SAMPLED_V_MEAN: "tracker value v of the sampled prompts (mean)",
    # the value tracker
    k.RHO_MEAN: "discount rho applied (batch mean)",
    k.RHO_MIN: "discount rho applied (batch minimum)",
    k.D_MEAN: "policy divergence D (nats, batch mean)",
    k.D_MAX: "policy divergence D (nats, batch maximum)",
    k.N_EFF_MEAN: "tracker window N (observations, mean over prompts)",
    k.V_MEAN: "tracker value v (mean over prompts)",
    k.VALUE_HIST: "tracker value v",
    # the loss
    k.LOSS + "pg_loss": "policy-gradient loss (per token)",
    k.LOSS + "clipfrac": "clipped tokens (fraction)",
    k.LOSS + "dual_clipfrac": "dual-clipped tokens (fraction)",
    k.LOSS + "approx_kl": "KL to the rollout policy (nats per token)",
    k.LOSS + "ratio_mean": "importance ratio (mean per token)",
    k.LOSS + "kl_ref": "KL to the reference policy (nats per token)",
    # time
    **{k.time_key(p): f"{p} time (seconds per step)" for p in PHASES},
    # evaluation tables
    "pass@k": "pass@k (fraction of problems)",
    "maj@k": "maj@k (fraction of problems)",
    "k": "k (samples per problem)",
    # simulations
    "signal_std": "mean sqrt(p (1 - p)) of the batch\n(reward standard deviation)",
    "abs_adv": "mean E|r - v| of the batch\n(expected |advantage|)",
    "informative": "drawn prompts with a non-degenerate\nG = 8 group (expected fraction)",
    "mean_p": "mean success probability p of the batch",
}


def apply(dpi: int = DPI) -> None:
    """Matplotlib defaults for figures made outside the helpers (``plt.subplots`` in a notebook)."""
    mpl.rcParams.update({
        "figure.dpi": dpi,
        "savefig.dpi": dpi,
        "figure.figsize": FIGSIZE,
        "font.size": 9,
        "legend.framealpha": 0.85,
        "legend.fontsize": "small",
    })


def _lookup(name):
    """The colour :func:`color` documents, or None for a name it does not know."""
    name = str(name)
    key = ALIASES.get(name, name)
    if key in METHOD_COLORS:
        return METHOD_COLORS[key]
    if key in OTHER_COLORS:
        return OTHER_COLORS[key]
    prefixes = [m for m in METHOD_COLORS if name.startswith((m + "-", m + " "))]
    return METHOD_COLORS[max(prefixes, key=len)] if prefixes else None


def color(name) -> str:
    """The colour of a method, reference or simulated curve; a fallback colour for unknown names.

    Looked up in :data:`METHOD_COLORS` and :data:`OTHER_COLORS`, through :data:`ALIASES`, and by the
    longest method name that ``name`` starts with followed by "-" or " " (``"grpo-toy"`` -> grpo).
    Unknown names get the first fallback colour; use :func:`colors` to keep a figure's curves distinct.
    """
    return _lookup(name) or FALLBACK_COLORS[0]


def colors(names) -> dict:
    """Distinct colours for the curves of one figure: :func:`color` of each name, in order.

    A name whose colour is unknown, or already taken by an earlier name of the same figure, gets the
    next unused fallback colour.
    """
    out, used = {}, set()
    spare = [*FALLBACK_COLORS, *(f"C{i}" for i in range(10))]
    for name in names:
        c = _lookup(name)
        if c is None or c in used:
            c = next(x for x in spare if x not in used)
        out[name] = c
        used.add(c)
    return out


def label(key: str) -> str:
    """The human axis label (with units) of a metric key; never the raw key itself.

    Keys missing from :data:`LABELS` are spelled out: ``"time/foo"`` -> "foo time (seconds per step)",
    ``"loss/foo_bar"`` -> "loss: foo bar".
    """
    if key in LABELS:
        return LABELS[key]
    if key.startswith("time/"):
        return f"{key.removeprefix('time/')} time (seconds per step)"
    return key.replace("/", ": ").replace("_", " ")


def _ax(ax=None, figsize=FIGSIZE):
    """``ax``, or the Axes of a new figure at :data:`DPI` with a constrained layout."""
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=figsize, dpi=DPI, layout="constrained")
    return ax


def legend(ax, **kw):
    """A legend that covers as little data as possible: best position, translucent frame, small font."""
    opts = {"loc": "best", "framealpha": 0.85, "fontsize": "small"}
    opts.update(kw)
    return ax.legend(**opts)


def paper_line(ax, value, label, *, linestyle="--"):
    """Grey horizontal line at ``value``, labelled "paper: <label>" in the legend. Returns ax."""
    ax.axhline(value, color=METHOD_COLORS["paper"], linestyle=linestyle, linewidth=1.0, label=f"paper: {label}")
    return ax


def band(ax, x, mean, std=None, *, label=None, color=None, alpha=0.2, **line_kw):
    """A line through ``mean`` with a shaded +-``std`` band (no band if std is None). Returns the line."""
    line, = ax.plot(x, mean, label=label, color=color, **line_kw)
    if std is not None:
        mean, sd = np.asarray(mean, dtype=float), np.nan_to_num(np.asarray(std, dtype=float))
        ax.fill_between(x, mean - sd, mean + sd, color=line.get_color(), alpha=alpha, linewidth=0)
    return line


def seed_band(ax, summary, *, x: str, hue: str = "run", band_std: bool = True):
    """Draw a seed summary: per ``hue`` level the mean over seeds against x, +-1 std band over seeds.

    ``summary`` has columns hue, x, mean, std, n_seeds (as made by
    :func:`spo_lab.teaching.runs.seed_summary`). The band is drawn only for levels with more than one
    seed. Curves are labelled "<name> (<n> seeds)" and coloured with :func:`colors`. Returns ax.
    """
    names = sorted(summary[hue].unique(), key=str)
    palette = colors(names)
    for name in names:
        g = summary[summary[hue] == name].sort_values(x)
        n_seeds = int(g["n_seeds"].iloc[0])
        std = g["std"].to_numpy() if band_std and n_seeds > 1 else None
        band(ax, g[x].to_numpy(), g["mean"].to_numpy(), std, color=palette[name],
             label=f"{name} ({n_seeds} seed{'s' if n_seeds != 1 else ''})")
    return ax


def log_y_plain(ax):
    """Log-scaled y axis with plain tick labels (1, 2, 5, 10, ...) instead of powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
