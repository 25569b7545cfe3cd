"""Run profiles and the memory estimate: arithmetic only, no model is loaded."""

from __future__ import annotations

import json
import math
import warnings

import pytest

from spo_lab.profiles import (
    PROFILES, QWEN3, MemoryWarning, apply_profile, check_fits, describe, estimate_memory, get_arch, main,
)
from spo_lab.train import Config

# Published parameter counts of Qwen/Qwen3-{0.6B,1.7B,4B,8B}.
PUBLISHED = {"Qwen3-0.6B": 596_049_920, "Qwen3-1.7B": 1_720_574_976, "Qwen3-4B": 4_022_468_096,
             "Qwen3-8B": 8_190_735_360}
KW = dict(responses_per_step=64, mini_batches=16, max_prompt_tokens=512, max_new_tokens=1024,
          gpu_memory_gb=79.1)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_architectures_reproduce_the_published_parameter_counts(name):
    assert QWEN3[name].n_params == PUBLISHED[name]
    assert get_arch(f"Qwen/{name}") is get_arch(f"/models/{name}/") is QWEN3[name]


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError, match="Qwen3-8B"):
        get_arch("Llama-3-8B")


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_profile_builds_a_valid_config(name):
    cfg = apply_profile(name)
    assert isinstance(cfg, Config)
    cfg.validate()
    for k, v in PROFILES[name].overrides.items():
        assert getattr(cfg, k) == v
    assert PROFILES[name].description and "\n" not in PROFILES[name].description


def test_overrides_apply_and_are_validated():
    assert apply_profile("colab", steps=7, seed=3).steps == 7
    with pytest.raises(ValueError, match="mini-batches"):
        apply_profile("colab", mini_batches=7)  # does not divide 64
    with pytest.raises(ValueError, match="not Config fields"):
        apply_profile("colab", no_such_field=1)


@pytest.mark.parametrize("bad", ["nope", "Colab"])
def test_unknown_profile_lists_the_known_ones(bad):
    with pytest.raises(ValueError) as e:
        apply_profile(bad)
    assert all(n in str(e.value) for n in PROFILES)
    with pytest.raises(ValueError, match="known profiles: colab"):
        describe(bad)


def test_main_rejects_unknown_names(capsys):
    assert main(["nope"]) == 2
    assert "known profiles" in capsys.readouterr().err


@pytest.mark.parametrize("engine", ["vllm", "hf"])
@pytest.mark.parametrize("lora", [0, 16])
def test_components_add_up(engine, lora):
    e = estimate_memory("Qwen3-1.7B", lora_rank=lora, engine=engine, **KW)
    static = e.weights_gb + e.grads_gb + e.optimizer_gb + e.engine_gb + e.overhead_gb
    phase = max(e.activations_gb + e.logits_gb, e.scoring_gb, e.generate_gb)
    assert math.isclose(e.total_gb, static + phase)
    assert all(v >= 0 for v in (e.weights_gb, e.grads_gb, e.optimizer_gb, e.activations_gb, e.logits_gb))
    assert (e.engine_gb > 0) == (engine == "vllm") and (e.generate_gb > 0) == (engine == "hf")
    assert e.kv_cache_gb <= e.engine_gb


def test_vllm_sleep_frees_the_engine_during_the_update_only():
    kw = dict(KW, lora_rank=64, vllm_gpu_memory_utilization=0.6)
    awake, asleep = estimate_memory("Qwen3-8B", **kw), estimate_memory("Qwen3-8B", vllm_sleep=True, **kw)
    state = asleep.weights_gb + asleep.grads_gb + asleep.optimizer_gb + asleep.overhead_gb
    phases = (asleep.activations_gb + asleep.logits_gb, asleep.engine_gb + asleep.scoring_gb, asleep.engine_gb)
    assert math.isclose(asleep.total_gb, state + max(phases))
    assert asleep.total_gb < awake.total_gb and asleep.engine_gb == awake.engine_gb


def test_static_terms_follow_the_stated_byte_counts():
    n = QWEN3["Qwen3-8B"].n_params
    full = estimate_memory("Qwen3-8B", dtype_bytes=2, **KW)
    assert math.isclose(full.weights_gb * 2**30, 2 * n) and math.isclose(full.optimizer_gb * 2**30, 4 * n)
    master = estimate_memory("Qwen3-8B", dtype_bytes=2, fp32_master=True, **KW)
    assert math.isclose((master.grads_gb + master.optimizer_gb) * 2**30, 12 * n)


def test_lora_needs_far_less_optimizer_memory_than_full_fine_tuning():
    full = estimate_memory("Qwen3-8B", lora_rank=0, **KW)
    lora = estimate_memory("Qwen3-8B", lora_rank=64, **KW)
    assert lora.optimizer_gb < full.optimizer_gb / 20 and lora.grads_gb < full.grads_gb / 10
    assert lora.trainable < full.trainable / 20
    assert math.isclose(lora.weights_gb, full.weights_gb, rel_tol=0.1)  # the base weights are still there


def test_gradient_checkpointing_lowers_activations():
    off = estimate_memory("Qwen3-4B", gradient_checkpointing=False, **KW)
    on = estimate_memory("Qwen3-4B", gradient_checkpointing=True, **KW)
    assert on.activations_gb < off.activations_gb / 5
    assert on.logits_gb == off.logits_gb  # the logits are not checkpointed


def test_logits_dominate_long_responses_and_shrink_with_smaller_mini_batches():
    e = estimate_memory("Qwen3-0.6B", gradient_checkpointing=True, **KW)
    assert e.logits_gb > 3 * e.activations_gb
    half = estimate_memory("Qwen3-0.6B", gradient_checkpointing=True, **{**KW, "mini_batches": 32})
    assert math.isclose(half.logits_gb, e.logits_gb / 2)


def test_profile_estimates_against_their_cards():
    colab, gpu80, full, paper = (PROFILES[n].estimate() for n in ("colab", "gpu80", "gpu80-full", "paper"))
    assert colab.total_gb < 16 and colab.total_gb < PROFILES["colab"].gpu_memory_gb
    for e in (gpu80, full):
        assert e.total_gb < 80 and e.total_gb < PROFILES["gpu80"].gpu_memory_gb
    assert paper.total_gb > 80
    assert not PROFILES["paper"].fits_single_gpu and "scale-out" in PROFILES["paper"].notes
    assert all(PROFILES[n].fits_single_gpu for n in ("colab", "gpu80", "gpu80-full"))
    assert colab.kv_tokens > 1536  # vLLM can hold at least one prompt + response


def test_paper_profile_has_the_official_settings():
    cfg = apply_profile("paper")
    assert (cfg.model, cfg.lora_rank, cfg.responses_per_step, cfg.max_new_tokens, cfg.lr, cfg.mini_batches,
            cfg.temperature) == ("Qwen/Qwen3-8B", 0, 1024, 8192, 1e-6, 8, 1.0)
    assert cfg.algo == "spo" and cfg.prompts_per_step == 1024
    assert apply_profile("paper", algo="grpo").prompts_per_step == 128


def test_check_fits_verdicts():
    e = estimate_memory("Qwen3-0.6B", lora_rank=32, **KW)
    assert check_fits(e, 1000).startswith("fits")
    with pytest.warns(MemoryWarning):
        assert check_fits(e, e.total_gb / 0.95).startswith("TIGHT")
    with pytest.warns(MemoryWarning):
        assert check_fits(e, e.total_gb / 2).startswith("DOES NOT FIT")
    with pytest.raises(MemoryError):
        check_fits(e, e.total_gb / 2, strict=True)


def test_check_fits_without_a_gpu_returns_a_message(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        msg = check_fits(PROFILES["paper"].estimate())
    assert "no CUDA GPU" in msg


def test_describe_and_main_print_the_breakdown(capsys):
    text = describe("colab")
    for word in ("Qwen/Qwen3-0.6B", "gpu_memory_utilization", "logits", "optimizer", "peak", "LoRA"):
        assert word in text
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in PROFILES)
    assert main(["gpu80"]) == 0 and "Qwen3-8B" in capsys.readouterr().out


def test_train_from_a_profile_on_the_command_line(toy, tmp_path, capsys):
    """`python -m spo_lab.profiles NAME --train ...`: the memory check first, the profile as defaults,
    flags after --train on top (here the colab profile pointed at the tiny model, task and CPU)."""
    from spo_lab import profiles

    out = tmp_path / "run"
    code = profiles.main(["colab", "--train", "--model", str(toy / "model"), "--task", "arith", "--data-dir",
                          str(toy / "data"), "--engine", "hf", "--device", "cpu", "--dtype", "float32",
                          "--no-gradient-checkpointing", "--steps", "1", "--responses-per-step", "8",
                          "--mini-batches", "2", "--max-new-tokens", "4", "--eval-max-prompts", "8", "--out", str(out),
                          "--no-progress", "--vllm-gpu-memory-utilization", "0", "--vllm-max-model-len", "0"])
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.index("profile colab") < printed.index("wrote")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["lora_rank"] == profiles.PROFILES["colab"].overrides["lora_rank"]  # from the profile
    assert cfg["steps"] == 1 and cfg["engine"] == "hf"  # from the flags


def test_a_vllm_server_engine_takes_no_generation_memory_on_the_trainers_gpu():
    from spo_lab.profiles import estimate_memory

    kw = dict(lora_rank=64, responses_per_step=64, mini_batches=8, max_new_tokens=2048)
    server = estimate_memory("Qwen/Qwen3-8B", engine="vllm-server", **kw)
    hf = estimate_memory("Qwen/Qwen3-8B", engine="hf", **kw)
    colocated = estimate_memory("Qwen/Qwen3-8B", engine="vllm", **kw)
    assert server.engine_gb == server.generate_gb == 0 and hf.generate_gb > 0 and colocated.engine_gb > 0
    assert server.total_gb <= hf.total_gb and server.total_gb < colocated.total_gb
    assert any("vllm serve" in n for n in server.assumptions)
