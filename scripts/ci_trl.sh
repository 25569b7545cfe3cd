#!/usr/bin/env bash
# CI for SPO inside TRL (spo_lab.integrations.trl): build (or refresh) .venv-trl with this repo and its `test` and
# `trl` extras (trl==1.16.0), then run tests/test_trl_integration.py in it for real. SPO_REQUIRE_TRL=1 makes a
# missing TRL fail instead of skip. TRL is never installed in the default .venv.
#   bash scripts/ci_trl.sh         # the first time: a venv of its own (install time in the README's "SPO in TRL")
#   bash scripts/ci_trl.sh -k save # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${TRL_VENV:-.venv-trl}
PY="$VENV/bin/python"

[ -x "$PY" ] || python3 -m venv "$VENV"
"$PY" -m pip install -q -e ".[test,trl]"
"$PY" -c "import trl, transformers, torch, spo_lab.integrations.trl
print('trl', trl.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
SPO_REQUIRE_TRL=1 OMP_NUM_THREADS=1 "$PY" -m pytest tests/test_trl_integration.py -q -p no:cacheprovider "$@"
