"""Shared pytest configuration: a small, deadline-free, derandomised hypothesis profile, so the
suite stays fast and deterministic on a 2-core CPU box."""
from __future__ import annotations

import os

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
