"""The main job: its runner (spo_lab.experiment), statistics and tables (spo_lab.report) and README blocks,
on synthetic rows and a toy run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spo_lab import experiment as ex
from spo_lab import report as rp

ROOT = Path(__file__).resolve().parent.parent


def test_mean_ci_uses_the_t_quantile():
    d = rp.mean_ci([1.0, 2.0, 3.0])
    assert d["mean"] == 2.0 and d["std"] == 1.0 and d["n"] == 3
    half = 4.30265273 / math.sqrt(3)  # t(0.975, 2) (4.303 in printed tables)
    assert d["ci95"] == pytest.approx([2 - half, 2 + half], rel=1e-9)
    assert rp.mean_ci([0.5])["ci95"] == [None, None]
    assert rp.mean_ci([])["mean"] is None
    assert rp.mean_ci([1.0] * 41)["ci95"] == [1.0, 1.0]
    wide = rp.mean_ci([0.0, 1.0] * 20)  # 40 values: t(0.975, 39) = 2.0227, not the normal 1.96
    assert wide["ci95"][1] - wide["mean"] == pytest.approx(2.0226909 * wide["std"] / math.sqrt(40), rel=1e-6)


def _rows(run, seed, accs, *, deg=None, offline=0.0):
    """Synthetic metrics rows: evaluation at steps 0, 10, 20 with the given avg accuracies, 1 s per step."""
    rows = []
    for step in range(0, 21):
        r = {"run": run, "seed": seed, "step": step, "responses": 64 * step,
             "responses_incl_init": 64 * step + (40 if offline else 0), "reward/mean": 0.5}
        if step:
            r.update({"time/generate": 0.25, "time/update": 0.75})
            if deg is not None:
                r["group/degenerate_frac"] = deg
        else:
            r["time/eval"] = 3.0
            if offline:
                r["time/offline_init"] = offline
        if step % 10 == 0:
            a = accs[step // 10]
            r.update({"eval/sampled_acc": a, "eval/greedy_acc": a + 0.1,
                      "eval/sampled_acc/level=2": a + 0.2, "eval/greedy_acc/level=2": a + 0.3})
            r.update({"adv/raw_var": 0.1 if run == "spo" else 0.05, "reward/var": 0.2})
        rows.append(r)
    return rows


@pytest.fixture
def synthetic():
    rows = []
    for seed, (s, g) in enumerate([(0.05, 0.01), (0.07, 0.02), (0.06, 0.0)]):
        rows += _rows("spo", seed, [0.6, 0.6 + s / 2, 0.6 + s], offline=120.0)
        rows += _rows("grpo", seed, [0.6, 0.6 + g, 0.6 + g], deg=0.4)
    return pd.DataFrame(rows)


def test_summary_pairs_seeds_and_times_the_target(synthetic):
    s = rp.summarize_runs(synthetic)
    d = s["vs_grpo"]["spo"]["avg"]
    diffs = [0.04, 0.05, 0.06]
    assert d["mean"] == pytest.approx(np.mean(diffs)) and d["n"] == 3
    assert d["ci95"][0] == pytest.approx(0.05 - 4.302653 * 0.01 / math.sqrt(3))
    assert s["runs"]["spo"]["gain_avg"]["mean"] == pytest.approx(0.06)
    assert s["runs"]["grpo"]["degenerate_first10"]["mean"] == pytest.approx(0.4)
    assert s["runs"]["spo"]["final_avg/level=2"]["mean"] == pytest.approx(0.86)
    tta = s["time_to_accuracy"]
    assert tta["target_avg"] == pytest.approx(0.61)  # GRPO's final mean: the lower of the two
    # SPO reaches 0.61 at step 10 in every seed (0.625, 0.635, 0.63); GRPO at step 10 or 20
    assert tta["spo"]["step"] == 10 and tta["spo"]["minutes"] == pytest.approx(10 / 60)
    assert tta["spo"]["minutes_incl_init"] == pytest.approx((10 + 120) / 60)
    assert tta["spo"]["responses_incl_init"] == 640 + 40
    assert [x["reached"] for x in tta["grpo"]["per_seed"]] == [True, True, False]
    assert tta["grpo"]["step"] is None and tta["grpo"]["seeds_reached"] == 2
    md = rp.results_markdown({**s, "settings": {"responses_per_step": 64, "steps": 20, "temperature": 1.0,
                                                  "eval_prompts": 500, "eval_samples": 8, "eval_every": 10},
                              "runs": {k: {**v, "lr": 1e-4} for k, v in s["runs"].items()}})
    assert "| spo | 0.600 ± 0.000 | 0.660 ± 0.010 | +0.060 [" in md
    assert "**spo - grpo, paired by seed** (seeds [0, 1, 2]): avg@8 +0.050 [" in md
    assert "(paper, Qwen3-8B at the start of training: ~0.6)" in md
    json.dumps(s, allow_nan=False)  # plain JSON


def test_readme_blocks_are_rewritten_from_the_summaries(tmp_path, synthetic, monkeypatch):
    monkeypatch.setattr(rp, "README_BLOCKS", {k: rp.README_BLOCKS[k] for k in
                                              ("tiny-results", "tiny-sweep", "paper-vs-ours", "tiny-ablations")})
    s = rp.summarize_runs(synthetic)
    s["settings"] = {"responses_per_step": 64, "steps": 20, "temperature": 1.0, "eval_prompts": 500,
                     "eval_samples": 8, "eval_every": 10}
    for run in s["runs"]:
        s["runs"][run]["lr"] = 2e-4
    (tmp_path / "results" / "tiny").mkdir(parents=True)
    (tmp_path / "results" / "tiny" / "summary.json").write_text(json.dumps(s))
    sweep = {"steps": 20, "eval_samples": 8, "eval_prompts": 500, "eval_split": "validation", "seeds": [0],
             "start_avg": 0.6, "methods": {"spo": {"lrs": {"0.0001": 0.62, "0.0002": 0.64}, "best_lr": 2e-4}}}
    (tmp_path / "results" / "tiny-sweep").mkdir(parents=True)
    (tmp_path / "results" / "tiny-sweep" / "summary.json").write_text(json.dumps(sweep))
    abl = rp.summarize_runs(synthetic, baseline="grpo", target_run="grpo")
    abl["vs_spo"] = rp.summarize_runs(synthetic, baseline="spo")["vs_spo"]
    abl |= {"settings": {**s["settings"], "eval_split": "test"}, "labels": ex.ARM_LABELS, "paper_finding": "(paper)"}
    for run in abl["runs"]:
        abl["runs"][run]["lr"] = 1e-4
    (tmp_path / "results" / "tiny-ablations").mkdir(parents=True)
    (tmp_path / "results" / "tiny-ablations" / "summary.json").write_text(json.dumps(abl))
    readme = ("intro\n<!-- tiny-results:start -->\nold\n<!-- tiny-results:end -->\nmid\n<!-- tiny-sweep:start -->\n"
              "<!-- tiny-sweep:end -->\n<!-- paper-vs-ours:start -->\n<!-- paper-vs-ours:end -->\n"
              "<!-- tiny-ablations:start -->\n<!-- tiny-ablations:end -->\n")
    out = rp.readme_text(readme, tmp_path)
    assert out.startswith("intro\n<!-- tiny-results:start -->\n") and "old" not in out
    assert rp.results_markdown(s) in out and rp.sweep_markdown(sweep) in out and rp.ablation_markdown(abl) in out
    assert "**0.640**" in out and rp.readme_text(out, tmp_path) == out  # idempotent
    paper = rp.paper_markdown(s)
    assert paper in out and "| advantage variance before normalisation / reward variance | SPO ~0.5 | SPO 0.50, GRPO 0.25 |" in paper
    assert "+5.0 [" in paper  # SPO - GRPO in points, with its interval
    with pytest.raises(ValueError, match="no <!-- tiny-results:start -->"):
        rp.readme_text("nothing here", tmp_path)


def test_the_readme_shows_exactly_the_committed_summaries():
    """README, results/tiny/summary.json and results/tiny-sweep/summary.json agree (scripts/update_readme.py)."""
    readme = (ROOT / "README.md").read_text()
    assert rp.readme_text(readme, ROOT) == readme, "run `python -m spo_lab.experiment --readme`"
    summary = json.loads((ROOT / "results" / "tiny" / "summary.json").read_text())
    md = (ROOT / "results" / "tiny" / "summary.md").read_text()
    assert rp.results_markdown(summary) in md
    for name in summary["figures"]:
        assert (ROOT / "results" / "tiny" / name).is_file(), name
    # the main job ran each method at the lr its sweep chose
    sweep = json.loads((ROOT / "results" / "tiny-sweep" / "summary.json").read_text())
    for run, m in sweep["methods"].items():
        assert ex.TUNED_LR[run] == m["best_lr"] == summary["runs"][run]["lr"]


def test_run_configs_use_each_methods_tuned_lr_and_drop_checkpoints(tmp_path):
    cfgs = ex.run_configs(["spo", "grpo", "spo-uniform", "rloo"], 2, 5, tmp_path)
    lrs = {(Path(c.out).parent.name, c.seed): c.lr for c in cfgs}
    assert lrs[("spo", 1)] == lrs[("spo-uniform", 0)] == ex.TUNED_LR["spo"]
    assert lrs[("grpo", 0)] == lrs[("rloo", 1)] == ex.TUNED_LR["grpo"]
    assert all(not c.keep_checkpoints and c.eval_samples == 8 and c.steps == 5 for c in cfgs)
    assert ex.run_configs(["spo"], 1, 5, tmp_path, lr=1e-3)[0].lr == 1e-3
    with pytest.raises(ValueError, match="unknown runs"):
        ex.run_configs(["nope"], 1, 5, tmp_path)


def test_a_toy_job_end_to_end(toy, tmp_path):
    """Two runs x 2 seeds through the worker pool, then summary.json, summary.md and the figures."""
    from PIL import Image

    cfgs = ex.run_configs(["spo", "grpo"], 2, 2, tmp_path, model=str(toy / "model"), data_dir=str(toy / "data"),
                          responses_per_step=16, group_size=4, n0=2, eval_every=1, eval_samples=2)
    ex.run_all(cfgs, workers=2, progress=False)
    df = rp.load_results(tmp_path)
    assert sorted(df.groupby(["run", "seed"]).step.max().to_dict().items()) == [
        (("grpo", 0), 2), (("grpo", 1), 2), (("spo", 0), 2), (("spo", 1), 2)]
    assert not list(tmp_path.glob("runs/*/*/checkpoint*.pt"))  # finished runs keep no optimiser state
    s = rp.write_report(tmp_path, df, wall_seconds=1.0)
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(s))
    assert s["settings"]["eval_prompts"] == 30 and s["settings"]["eval_samples"] == 2
    assert rp.results_markdown(s) in (tmp_path / "summary.md").read_text()
    assert {"accuracy_vs_responses.png", "paired_difference.png", "degenerate_fraction.png"} <= set(s["figures"])
    for name in s["figures"]:
        with Image.open(tmp_path / name) as im:
            assert im.info["dpi"][0] >= 110
    # the same runs as the two arms of an ablation report: every arm against SPO and GRPO, cost both ways
    a = rp.write_ablation_report(tmp_path, df, ex.ARM_LABELS)
    assert a["time_to_accuracy"]["target_is"] == "grpo's final mean avg@k" and "spo" in a["vs_grpo"]
    assert a["vs_spo"]["grpo"]["avg"]["n"] == 2 and a["figures"][0] == "ablations.png"
    assert "accuracy_incl_offline_init.png" in a["figures"]  # every arm against responses incl. the offline pass
    md = (tmp_path / "summary.md").read_text()
    assert rp.ablation_markdown(a) in md and ex.ARM_LABELS["grpo"] in md and "baseline estimation" in md
    # a later ablation job copies finished runs with the same settings instead of training them again
    again = tmp_path / "again"
    todo = ex.reuse_runs(ex.run_configs(["spo", "grpo"], 2, 2, again, model=str(toy / "model"),
                                        data_dir=str(toy / "data"), responses_per_step=16, group_size=4, n0=2,
                                        eval_every=1, eval_samples=2), tmp_path, again)
    assert todo == [] and len(list(again.glob("runs/*/seed*/metrics.jsonl"))) == 4
    longer = ex.run_configs(["spo"], 1, 3, again, model=str(toy / "model"), data_dir=str(toy / "data"),
                            responses_per_step=16, group_size=4, n0=2, eval_every=1, eval_samples=2)
    assert ex.reuse_runs(longer, tmp_path, again) == longer  # other settings (3 steps): trained, not copied
