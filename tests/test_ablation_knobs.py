"""The switches the ablation job turns: a constant rho of its own (the official ablation's 0.875, not the upper
clip), advantages without batch normalisation, and the arms of ``python -m spo_lab.experiment --ablations``."""

from __future__ import annotations

import pytest
import torch

from spo_lab import experiment as ex
from spo_lab.spo import SPO
from spo_lab.tracker import ValueTracker
from spo_lab.train import Config, build_algorithm


def test_a_constant_rho_is_its_own_setting_with_the_official_value():
    assert Config().rho_constant == 0.875 and Config().rho_constant != Config().rho_max
    algo = build_algorithm(Config(rho_mode="constant"), 100, torch.Generator().manual_seed(0))
    rho = algo.observe(torch.tensor([0, 1]), torch.tensor([1.0, 0.0]), None)
    assert torch.equal(rho, torch.full((2,), 0.875, dtype=torch.float64))
    algo = build_algorithm(Config(rho_mode="constant", rho_constant=0.9), 100, torch.Generator().manual_seed(0))
    assert algo.observe(torch.tensor([3]), torch.tensor([1.0]), None).item() == 0.9
    # the KL-adaptive default is untouched: no D means rho_max, D sets rho(D)
    algo = build_algorithm(Config(), 100, torch.Generator().manual_seed(0))
    assert algo.observe(torch.tensor([0]), torch.tensor([1.0]), None).item() == 0.96
    with pytest.raises(ValueError, match="--rho-constant"):
        Config(rho_constant=1.0).validate()


def test_the_tracker_takes_a_constant_rho_exactly():
    t = ValueTracker(3)
    t.update(torch.tensor([0, 0]), torch.tensor([1.0, 0.0]), rho=0.5)
    assert t.alpha[0].item() == pytest.approx(0.5 * (0.5 * 0.5 + 1.0)) and t.beta[0].item() == pytest.approx(0.5 * 0.5 * 0.5 + 1.0)
    with pytest.raises(TypeError):
        t.update(torch.tensor([1]), torch.tensor([1.0]), torch.tensor([0.1]), rho=0.9)
    with pytest.raises(ValueError):
        t.update(torch.tensor([1]), torch.tensor([1.0]), rho=1.5)


def test_advantages_without_batch_normalisation_are_r_minus_v():
    r, b = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64), torch.tensor([0.5, 0.25, 0.9, 0.1], dtype=torch.float64)
    raw_spo = SPO(10, 4, normalize=False)
    adv, raw = raw_spo.advantages(r, b)
    assert torch.equal(adv, r - b) and torch.equal(raw, r - b)
    adv_n, _ = SPO(10, 4).advantages(r, b)
    assert adv_n.mean().abs() < 1e-12 and abs(adv_n.std().item() - 1) < 1e-6
    assert not build_algorithm(Config(adv_norm="none"), 100, torch.Generator()).normalize
    with pytest.raises(ValueError, match="--adv-norm"):
        Config(adv_norm="group").validate()


def test_every_ablation_arm_is_a_valid_config_that_differs_from_spo_in_one_place():
    base = ex.run_configs(["spo"], 1, 10, __import__("pathlib").Path("/tmp/x"))[0]
    for name in ex.ABLATIONS["runs"]:
        cfg = ex.run_configs([name], 1, 10, __import__("pathlib").Path("/tmp/x"))[0]
        cfg.validate()
        changed = {k for k in vars(cfg) if getattr(cfg, k) != getattr(base, k) and k not in ("out",)}
        assert name in ex.ARM_LABELS
        if name == "spo":
            assert not changed
        elif name == "grpo":
            assert changed == {"algo"}
        else:
            assert len(changed) == 1, (name, changed)
