"""The usable-signal decomposition of notebook 06 (spo_lab.teaching.signal), on hand-made metrics rows."""

import pandas as pd
import pytest

from spo_lab import keys
from spo_lab.teaching.signal import COLUMNS, usable_signal


def _rows(run, seed, raw_var, zero_frac, steps=(1, 2)):
    return [{"run": run, "seed": seed, keys.STEP: s, keys.ADV_RAW_VAR: raw_var, keys.ADV_ZERO_FRAC: zero_frac}
            for s in (0, *steps)]


def test_the_three_factors_and_their_product():
    # GRPO G = 4: raw var 0.15 -> within-prompt noise E[p(1-p)] = 4/3 * 0.15 = 0.2; half its samples degenerate.
    # SPO: Var(r - v) = 0.25 -> signal share 0.2 / 0.25 = 0.8, no zero advantages.
    df = pd.DataFrame(_rows("grpo", 0, 0.15, 0.5) + _rows("spo", 0, 0.25, 0.0))
    out = usable_signal(df, {"spo": 1, "grpo": 4})
    assert list(out.columns[:4]) == list(COLUMNS)
    assert out.loc["grpo", "signal share"] == pytest.approx(0.75)
    assert out.loc["grpo", "non-degenerate share"] == pytest.approx(0.5)
    assert out.loc["grpo", "distinct prompts per response"] == pytest.approx(0.25)
    assert out.loc["grpo", "usable signal per response"] == pytest.approx(0.75 * 0.5 * 0.25)
    assert out.loc["spo", "signal share"] == pytest.approx(0.8)
    assert out.loc["spo", "usable signal per response"] == pytest.approx(0.8)
    assert out.loc["spo", "vs grpo"] == pytest.approx(0.8 / (0.75 * 0.5 * 0.25))
    assert out.loc["grpo", "vs grpo"] == pytest.approx(1.0)


def test_the_noise_is_paired_by_seed_and_step_and_the_share_capped_at_one():
    df = pd.DataFrame(_rows("grpo", 0, 0.30, 0.0) + _rows("grpo", 1, 0.15, 0.0)
                      + _rows("spo", 0, 0.20, 0.0) + _rows("spo", 1, 0.20, 0.0))
    out = usable_signal(df, {"spo": 1, "grpo": 2})
    # seed 0: noise 2 * 0.30 = 0.6 > 0.2 -> capped at 1; seed 1: 0.3 / 0.2 -> capped too
    assert out.loc["spo", "signal share"] == pytest.approx(1.0)
    df.loc[(df.run == "grpo") & (df.seed == 1), keys.ADV_RAW_VAR] = 0.05  # noise 0.1 -> share 0.5
    assert usable_signal(df, {"spo": 1, "grpo": 2}).loc["spo", "signal share"] == pytest.approx(0.75)
    assert usable_signal(df, {"spo": 1, "grpo": 2}).loc["spo", "seeds"] == 2


def test_needs_a_group_run_to_borrow_the_noise_from():
    df = pd.DataFrame(_rows("spo", 0, 0.2, 0.0))
    with pytest.raises(ValueError, match="group run"):
        usable_signal(df, {"spo": 1})
    with pytest.raises(ValueError, match="no training rows"):
        usable_signal(df, {"spo": 1, "grpo": 8})


def test_on_the_committed_main_job():
    from pathlib import Path

    from spo_lab import report

    root = Path(__file__).resolve().parent.parent / "results" / "tiny"
    if not list(root.glob("runs/*/seed*/metrics.jsonl")):
        pytest.skip("the main job's runs are not here")
    out = usable_signal(report.load_results(root), {"spo": 1, "grpo": 8})
    assert out.loc["grpo", "signal share"] == pytest.approx(7 / 8)
    assert 0 < out.loc["grpo", "non-degenerate share"] < 1 and out.loc["spo", "non-degenerate share"] > 0.99
    assert 0.5 < out.loc["spo", "signal share"] <= 1
    assert out.loc["spo", "vs grpo"] > 1
