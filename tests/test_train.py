"""Fast end-to-end checks of the trainer on a tiny untrained Qwen3 and a small generated task."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from spo_lab.divergence import KLClock, ResponseCache
from spo_lab.engines import HFEngine
from spo_lab.models import load_policy, token_logprobs
from spo_lab.train import ALGOS, Config, parse_args, train


def small_cfg(toy: Path, out: Path, **kw) -> Config:
    base = dict(model=str(toy / "model"), data_dir=str(toy / "data"), out=str(out), cache_dir=str(out.parent / "cache"),
                steps=3, responses_per_step=16, group_size=4, n0=2, eval_every=2, progress=False, save_model=False,
                lr=1e-3)
    base.update(kw)
    return Config(**base)


def read_metrics(out: Path) -> pd.DataFrame:
    return pd.read_json(out / "metrics.jsonl", lines=True)


@pytest.mark.parametrize("algo", ALGOS)
def test_each_algorithm_trains_at_equal_response_budget(toy, tmp_path, algo):
    cfg = small_cfg(toy, tmp_path / algo, algo=algo)
    before = {k: v.clone() for k, v in load_policy(cfg.model)[0].state_dict().items()}
    out = train(cfg)
    df = read_metrics(out)
    steps = df[df.step > 0]
    # same number of responses per step for every algorithm
    assert steps.responses.tolist() == [16, 32, 48]
    assert {"reward/mean", "adv/var", "adv/raw_var", "adv/zero_frac", "loss/clipfrac", "loss/approx_kl",
            "time/generate", "time/update", "sampled/level_mean"} <= set(df.columns)
    assert df["eval/greedy_acc"].notna().sum() == 3  # steps 0, 2 and the last
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    changed = [k for k, v in ck["model"].items() if not torch.equal(v, before[k])]
    assert changed, "no weight changed"
    if algo in ("grpo", "dr_grpo", "rloo"):
        assert steps["group/degenerate_frac"].between(0, 1).all()
    if algo == "spo":
        assert {"tracker/rho_mean", "tracker/D_mean", "tracker/n_eff_mean", "tracker/value_hist"} <= set(df.columns)
        assert steps["tracker/rho_mean"].between(0.875, 0.96).all()
        assert steps.responses_incl_init.iloc[0] == 16 + 2 * 120  # the offline pass is counted


def test_resume_reproduces_an_uninterrupted_run(toy, tmp_path):
    full = train(small_cfg(toy, tmp_path / "full", steps=4, save_every=2))
    part = small_cfg(toy, tmp_path / "part", steps=2, save_every=2)
    train(part)
    # the interrupted run is continued to 4 steps from its step-2 checkpoint
    resumed = train(small_cfg(toy, tmp_path / "part", steps=4, save_every=2, resume=True))
    a, b = read_metrics(full), read_metrics(resumed)
    keep = [c for c in a.columns if not c.startswith("time/")]
    pd.testing.assert_frame_equal(a[keep], b[keep])
    ca = torch.load(full / "checkpoint.pt", weights_only=False)
    cb = torch.load(resumed / "checkpoint.pt", weights_only=False)
    assert torch.equal(ca["algorithm"]["tracker"]["alpha"], cb["algorithm"]["tracker"]["alpha"])
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])


def test_checkpoint_restores_tracker_state(toy, tmp_path):
    out = train(small_cfg(toy, tmp_path / "r", steps=2))
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    from spo_lab.tracker import ValueTracker

    t = ValueTracker(120)
    t.load_state_dict(ck["algorithm"]["tracker"])
    assert torch.equal(t.alpha, ck["algorithm"]["tracker"]["alpha"]) and not torch.allclose(t.alpha, torch.full((120,), 0.5, dtype=torch.float64))


def test_unequal_budget_and_bad_options_are_rejected():
    with pytest.raises(ValueError, match="multiple of --group-size"):
        Config(algo="grpo", responses_per_step=60, group_size=8).validate()
    with pytest.raises(ValueError, match="--group-size must be >= 2"):
        Config(algo="grpo", group_size=1).validate()
    with pytest.raises(ValueError, match="algo"):
        Config(algo="ppo").validate()
    with pytest.raises(ValueError, match="--rho-mode"):
        Config(rho_mode="fast").validate()


def test_cli_parses_every_field():
    cfg = parse_args(["--algo", "grpo", "--steps", "7", "--no-offline-init", "--lr", "1e-4"])
    assert (cfg.algo, cfg.steps, cfg.offline_init, cfg.lr) == ("grpo", 7, False, 1e-4)


def test_engine_logprobs_equal_a_fresh_forward_pass(toy):
    model, tok = load_policy(toy / "model")
    engine = HFEngine(model, tok)
    torch.manual_seed(0)
    r = engine.generate(["1+2=", "34+56=", "7+80="], 3, temperature=0.7, max_new_tokens=6)
    assert r.response_ids.shape[0] == 9 and len(r.texts) == 9
    fresh = token_logprobs(model, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask, temperature=0.7)
    torch.testing.assert_close(fresh, r.logprobs, atol=1e-5, rtol=0)
    assert (r.logprobs[r.response_mask == 0] == 0).all()


def test_engine_samples_from_the_full_softmax(toy):
    """Empirical first-token frequencies match softmax(logits / T): no hidden top-k or top-p."""
    model, tok = load_policy(toy / "model")
    engine = HFEngine(model, tok)
    torch.manual_seed(0)
    r = engine.generate(["1+2="] * 4000, 1, temperature=1.5, max_new_tokens=1)
    ids, mask = engine.encode_prompts(["1+2="])
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=ids, attention_mask=mask).logits[0, -1] / 1.5, -1)
    freq = torch.bincount(r.response_ids[:, 0], minlength=probs.numel()).double() / 4000
    assert (freq - probs.double()).abs().max() < 0.03
    assert (freq > 0).sum() > 10  # a top-k of 50 would not show here, but rare tokens do appear


def test_divergence_estimators(toy):
    model, tok = load_policy(toy / "model")
    engine = HFEngine(model, tok)
    torch.manual_seed(0)
    r = engine.generate(["1+2=", "34+56="], 1, max_new_tokens=6)
    ids = torch.tensor([0, 1])
    cache, clock = ResponseCache(5, 8, 6, tok.pad_token_id), KLClock(5)

    def score(*batch):
        return token_logprobs(model, *batch)

    assert cache.observe(score, ids, r).tolist() == [0.0, 0.0]  # first visit
    assert clock.observe(score, ids, r).tolist() == [0.0, 0.0]
    # unchanged policy: the stored response scores the same -> D = 0
    assert cache.observe(score, ids, r).abs().max() < 1e-5
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    d = cache.observe(score, ids, r)
    assert (d > 1e-3).all()
    d_clock = clock.observe(score, ids, r)  # clock moved by this step's movement
    assert (d_clock > 1e-3).all()


def test_metrics_file_is_valid_json_lines(toy, tmp_path):
    out = train(small_cfg(toy, tmp_path / "j", steps=2, algo="grpo"))
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line)  # strict JSON: no NaN / Infinity tokens
        assert "NaN" not in line and "Infinity" not in line


def test_a_lora_run_trains_the_adapter_only_and_its_final_model_loads_back(toy, tmp_path):
    from spo_lab.models import is_lora

    out = train(small_cfg(toy, tmp_path / "lora", steps=2, lora_rank=4, save_model=True))
    assert (out / "final_model" / "adapter_config.json").is_file()
    model, tok = load_policy(out / "final_model")  # base model from adapter_config.json + the adapter
    assert is_lora(model) and not any(p.requires_grad for p in model.parameters())
    base, _ = load_policy(toy / "model")
    changed = [n for n, p in model.named_parameters() if "lora_B" in n and p.abs().sum() > 0]
    assert changed, "the adapter did not move"
    # only adapter weights are trained: the base weights inside the adapter model equal the checkpoint's
    base_sd = base.state_dict()
    for n, p in model.named_parameters():
        if "lora_" not in n:
            key = n.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(p, base_sd[key]), n


def test_divergence_of_a_batch_mixing_first_and_repeat_visits(toy):
    model, tok = load_policy(toy / "model")
    engine = HFEngine(model, tok)
    torch.manual_seed(1)
    cache = ResponseCache(6, 8, 6, tok.pad_token_id)

    def score(*batch):
        return token_logprobs(model, *batch)

    cache.observe(score, torch.tensor([0, 1]), engine.generate(["1+2=", "34+56="], 1, max_new_tokens=6))
    stored = {k: v[[0]].clone() for k, v in cache.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    d = cache.observe(score, torch.tensor([4, 0]), engine.generate(["7+8=", "1+2="], 1, max_new_tokens=6))
    assert d[0] == 0  # prompt 4: first visit
    with torch.no_grad():  # prompt 0: its stored response re-scored under the moved policy
        now = token_logprobs(model, stored["prompt_ids"], stored["prompt_mask"], stored["response_ids"],
                             stored["response_mask"])
    m = stored["response_mask"].double()
    expected = ((stored["logprobs"].double() - now.double()).abs() * m).sum() / m.sum()
    assert d[1] > 1e-3 and abs(float(d[1]) - float(expected)) < 1e-6
    assert cache.has[[0, 1, 4]].all() and not cache.has[[2, 3, 5]].any()


def test_a_finished_run_can_drop_its_checkpoints_and_then_refuses_to_resume(toy, tmp_path):
    from spo_lab.run_folder import RunFolderError

    out = train(small_cfg(toy, tmp_path / "f", steps=2, save_every=1, keep_checkpoints=False))
    assert not (out / "checkpoint.pt").exists() and not (out / "checkpoint.prev.pt").exists()
    assert (out / "FINISHED").read_text().startswith("finished at step 2")
    with pytest.raises(RunFolderError, match="cannot be resumed or extended"):
        train(small_cfg(toy, tmp_path / "f", steps=4, resume=True))
    assert read_metrics(out).step.max() == 2  # nothing was lost or restarted
    again = train(small_cfg(toy, tmp_path / "f", steps=1, overwrite=True))  # --overwrite starts afresh
    assert read_metrics(again).step.max() == 1 and (again / "checkpoint.pt").exists()
    assert not (again / "FINISHED").exists()


def test_avg_at_k_evaluation_progress_hooks_and_offline_cost(toy, tmp_path):
    rows, chunks = [], []
    out = train(small_cfg(toy, tmp_path / "k", steps=2, eval_samples=3), on_step=rows.append,
                on_offline_chunk=chunks.append)
    df = read_metrics(out)
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert sum(chunks) == 120  # every training prompt of the offline pass
    ev = df.dropna(subset=["eval/sampled_acc"])
    n_test = 30
    for v in ev["eval/sampled_acc"]:  # a mean over 3 samples of each of the 30 prompts
        assert abs(v * 3 * n_test - round(v * 3 * n_test)) < 1e-9
    assert {"eval/sampled_acc/level=1", "eval/sampled_acc/level=2"} <= set(df.columns)
    assert df.loc[0, "time/offline_init"] > 0 and df.loc[0, "time/eval"] > 0
    # a second run reads the pass from the cache, and still reports what it cost
    again = train(small_cfg(toy, tmp_path / "k2", steps=1, eval_samples=3))
    assert read_metrics(again).loc[0, "time/offline_init"] == df.loc[0, "time/offline_init"]
    with pytest.raises(ValueError, match="--eval-samples must be >= 1"):
        Config(eval_samples=0).validate()
