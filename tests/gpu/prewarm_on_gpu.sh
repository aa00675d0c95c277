#!/usr/bin/env bash
# Issue 18: the prewarm tables on the lent GPU machine (the reader prewarm picks for that disk vs dd and
# vmtouch, then the reader designs against each other). Touches no GPU setting. Needs root (drop_caches).
# Usage (repo root, on the GPU machine): bash tests/gpu/prewarm_on_gpu.sh OUTDIR
# e.g. through the device tool:  run(command="bash tests/gpu/prewarm_on_gpu.sh $OUT", carry=[".whl", ".debs"])
# Expects the carried wheels in .whl/ and vmtouch's .deb in .debs/, as tests/gpu/run_on_gpu.sh does
# (that machine has no network; fio is not installed there).
set -uo pipefail
out=${1:?usage: prewarm_on_gpu.sh OUTDIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$(pwd)"
if ! command -v vmtouch >/dev/null; then
    mkdir -p /tmp/debroot && for d in .debs/*.deb; do dpkg-deb -x "$d" /tmp/debroot; done
    install -m 755 /tmp/debroot/usr/bin/vmtouch /usr/local/bin/
fi
{ date -u; uname -r; nproc; df -h /var/tmp; } > "$out/host.txt"
bench=(python3 bench/prewarm.py --no-install --files 4 --size-gib 2 --dir /var/tmp/vna-bench)
# 1. tools, 3 rounds interleaved: the goal is prewarm >= 1.0x the best other reader in every round
timeout 300 "${bench[@]}" --rounds 3 > "$out/prewarm-tools.txt" 2>&1
# 2. designs, in-process: does the reader picked for this disk win here too?
timeout 240 "${bench[@]}" --rounds 3 --designs --only picked "sendfile t8 seg256M 8M seq" \
    "sendfile t6 seg256M 64M seq" "sendfile t1 whole 64M seq" "pread t1 whole buf8M seq (dd-like)" \
    > "$out/prewarm-designs.txt" 2>&1
rm -rf /var/tmp/vna-bench
grep -E "^storage|^\|" "$out/prewarm-tools.txt" "$out/prewarm-designs.txt"
