"""The environment files agree with each other, and the CPU environment stays CPU-only."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parent.parent


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _reqs(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        if line.startswith("spo_lab[") or line.startswith("-e"):
            continue
        r = Requirement(line)
        out[r.name.lower()] = str(r.specifier)
    return out


def test_environment_yml_matches_pyproject():
    proj = _pyproject()["project"]
    extras = proj["optional-dependencies"]
    expected = _reqs(proj["dependencies"] + extras["notebooks"] + extras["test"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert _reqs(pip_section) == expected
    assert "-e ." in pip_section


def test_cpu_environment_pins_torch_and_keeps_vllm_optional():
    proj = _pyproject()["project"]
    deps = _reqs(proj["dependencies"])
    assert deps["torch"] == "==2.13.0"  # an unpinned torch pulls a multi-GB CUDA build
    everything_but_gpu = [d for k, v in proj["optional-dependencies"].items() if k != "gpu" for d in v]
    assert "vllm" not in _reqs(proj["dependencies"] + everything_but_gpu)
    assert "vllm" in _reqs(proj["optional-dependencies"]["gpu"])


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line for line in ci.splitlines() if "pytest" in line).strip()
    assert command in readme
