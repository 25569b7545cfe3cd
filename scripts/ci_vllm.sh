#!/usr/bin/env bash
# CI for the vLLM rollout engine: build (or refresh) .venv-vllm with vLLM's CPU build, then run
# tests/test_vllm_engine.py (and the tool engine's vLLM tests) in it for real. SPO_REQUIRE_VLLM=1 makes a missing vLLM fail instead of skip.
#   bash scripts/ci_vllm.sh        # ~6 min from scratch on 2 busy cores (install), ~3 min with the venv built
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_vllm_cpu.sh
SPO_REQUIRE_VLLM=1 .venv-vllm/bin/python -m pytest tests/test_vllm_engine.py -q -p no:cacheprovider "$@"
# the tool loop's turn continuation on vLLM (continue_tokens), checked against HFEngine
SPO_REQUIRE_VLLM=1 .venv-vllm/bin/python -m pytest tests/test_tool_engine.py -k vllm -q -p no:cacheprovider
