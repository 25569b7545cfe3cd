"""Shared pytest configuration: the `toy` model-and-data fixture, and a small, deadline-free, derandomised hypothesis profile, so the
suite stays fast and deterministic on a 2-core CPU box."""
from __future__ import annotations

import os

import pytest

try:
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "spo_lab",
        max_examples=40,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "spo_lab"))
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    pass


@pytest.fixture(scope="session")
def toy(tmp_path_factory):
    """An untrained tiny Qwen3 (hidden 32, 1 layer) and 120 train / 30 test problems on disk."""
    from spo_lab.tasks import arith as task
    from spo_lab.tiny_model import build_tiny_model, build_tokenizer, tiny_qwen3_config

    root = tmp_path_factory.mktemp("toy")
    tok = build_tokenizer()
    model = build_tiny_model(tiny_qwen3_config(tok, hidden_size=32, num_hidden_layers=1, intermediate_size=64), seed=0)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    train_set = task.generate_problems(120, seed=1, level_weights={1: 0.5, 2: 0.5})
    test_set = task.generate_problems(30, seed=2, level_weights={1: 0.5, 2: 0.5}, exclude=[p.prompt for p in train_set])
    (root / "data").mkdir()
    task.save_problems(train_set, root / "data" / "train.jsonl")
    task.save_problems(test_set, root / "data" / "test.jsonl")
    return root


@pytest.fixture(autouse=True)
def _close_figures():
    """Close every matplotlib figure a test opened (the teaching tests draw many)."""
    yield
    if "matplotlib.pyplot" in __import__("sys").modules:
        import matplotlib.pyplot as plt

        plt.close("all")
