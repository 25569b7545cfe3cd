"""Why SPO wins, in numbers: the usable learning signal per generated response, from logged runs (notebook 06).

At an equal budget of responses, a method's usable signal per response is the product of three shares,
each read from the trainer's metrics rows (:mod:`spo_lab.keys`) of a finished run:

    usable signal per response = signal share  x  non-degenerate share  x  distinct prompts per response

- **signal share**: the fraction of the advantage's variance that is the response's own surprise
  r - p (notebook 04, ``corr(A, r - p)^2``). For a group-mean baseline it is (G - 1) / G exactly
  (the group mean holds the response itself). For SPO it is E[p(1-p)] / E[(r - v)^2]: the tracker's
  error E[(p - v)^2] is the rest. The true p of a real prompt is unknown and SPO sees one response per
  prompt, so E[p(1-p)] is borrowed from the group runs of the same job at the same steps: a group of G
  gives E[(r - mean_g)^2] = (G - 1) / G E[p(1-p)] (``adv/raw_var``), an unbiased within-prompt noise
  of uniformly drawn prompts. SPO's prioritised draw prefers prompts with a larger p(1-p), so this
  borrowed noise is on the low side and SPO's share on the low side too (capped at 1).
- **non-degenerate share**: the samples whose advantage is not exactly 0, ``1 - adv/zero_frac``
  (GRPO: the samples outside degenerate groups; SPO: all of them, as v is never exactly 0 or 1).
- **distinct prompts per response**: prompts_per_step / responses_per_step, 1 / G for a group
  method and 1 for SPO -- how many different prompts (independent gradient directions) a response buys.

Each factor is averaged over the training steps of a run (ratio of means for the signal share),
then over seeds.
"""

from __future__ import annotations

import pandas as pd

from .. import keys as k

__all__ = ["usable_signal"]

COLUMNS = ("signal share", "non-degenerate share", "distinct prompts per response", "usable signal per response")


def usable_signal(df: pd.DataFrame, group_size: dict, *, noise_from: str = "grpo") -> pd.DataFrame:
    """Signal share x non-degenerate share x distinct prompts per response, per run (mean over seeds).

    Args:
        df: long metrics DataFrame (columns ``run``, ``seed``, ``step`` and the trainer's
            ``reward/var``, ``adv/raw_var``, ``adv/zero_frac``), e.g. :func:`spo_lab.report.load_results`.
        group_size: run name -> responses per prompt (1 for SPO, G for a group method); runs not
            named are left out.
        noise_from: the group run whose within-group noise E[p(1-p)] = G / (G - 1) adv/raw_var is
            borrowed, per seed and step, for the signal share of the single-response runs.

    Returns:
        DataFrame indexed by run with the columns of :data:`COLUMNS`, plus ``vs <noise_from>``
        (usable signal per response relative to that run) and ``seeds``.
    """
    if noise_from not in group_size or group_size[noise_from] < 2:
        raise ValueError(f"noise_from={noise_from!r} must name a group run (G >= 2) in group_size")
    steps = df[(df[k.STEP] > 0) & df["run"].isin(list(group_size))]
    g_noise = group_size[noise_from]
    noise = steps[steps["run"] == noise_from].set_index(["seed", k.STEP])[k.ADV_RAW_VAR] * g_noise / (g_noise - 1)
    if noise.empty:
        raise ValueError(f"no training rows of {noise_from!r} to borrow the within-prompt noise from")
    rows = []
    for (run, seed), d in steps.groupby(["run", "seed"], sort=True):
        g = int(group_size[run])
        if g > 1:
            share = (g - 1) / g  # the group mean's in-sample shrinkage: exact, whatever p is
        else:
            d_idx = d.set_index(["seed", k.STEP])
            both = d_idx.index.intersection(noise.index)
            if not len(both):
                raise ValueError(f"{run} seed {seed} shares no steps with {noise_from} seed {seed}")
            share = min(1.0, float(noise.loc[both].mean() / d_idx.loc[both, k.ADV_RAW_VAR].mean()))
        nondeg = 1.0 - float(d[k.ADV_ZERO_FRAC].mean())
        rows.append({"run": run, "seed": seed, "signal share": share, "non-degenerate share": nondeg,
                     "distinct prompts per response": 1.0 / g})
    per_seed = pd.DataFrame(rows)
    per_seed["usable signal per response"] = (per_seed["signal share"] * per_seed["non-degenerate share"]
                                              * per_seed["distinct prompts per response"])
    out = per_seed.groupby("run", sort=True)[list(COLUMNS)].mean()
    out[f"vs {noise_from}"] = out["usable signal per response"] / out.loc[noise_from, "usable signal per response"]
    out["seeds"] = per_seed.groupby("run", sort=True)["seed"].nunique()
    return out
