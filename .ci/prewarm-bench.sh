#!/usr/bin/env bash
# Prewarm benchmark (not part of CI's test command): vllm-nodeagent prewarm vs vmtouch -t, dd, fio.
# Needs root (drop_caches) and ~4 GiB free under /var/tmp; runs in < 5 min. Usage: .ci/prewarm-bench.sh [--rounds N]
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
if ! command -v vmtouch >/dev/null || ! command -v fio >/dev/null; then
    apt-cache policy vmtouch fio
    apt-get install -y -q vmtouch fio
fi
PY=${PYTHON:-python3}
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
"$PY" -c 'import structlog' 2>/dev/null || "$PY" -m pip install -q structlog tomli
exec "$PY" bench/prewarm.py "$@"
