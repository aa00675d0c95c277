#!/usr/bin/env bash
# Issue 16: record, READ-ONLY, what doctor's readiness checks see on the lent GPU machine, as a fixture.
# Nothing here changes the GPU or the host: NVML Get calls only, file copies, and doctor (which never writes).
# Usage (repo root, on the GPU machine): bash tests/gpu/record_readiness.sh OUTDIR
set -uo pipefail
out=${1:?usage: record_readiness.sh OUTDIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then  # the carried wheels run_on_gpu.sh uses (that machine has no network)
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
python3 -c "import pynvml" 2>/dev/null || { echo "pynvml (nvidia-ml-py) missing"; exit 1; }
python3 tests/gpu/record_nvml.py > "$out/nvml.json" && echo "nvml.json: $(wc -c < "$out/nvml.json") bytes"
rm -rf /tmp/snap && python3 tests/gpu/snapshot_sysfs.py /tmp/snap && tar -C /tmp/snap -czf "$out/root.tar.gz" .
# the kernel log's NVIDIA lines only (Xid/SXid and the driver banner), as the Xid check reads them
python3 - "$out/kmsg.txt" <<'PY'
import os, sys
fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK); lines = []
while True:
    try:
        rec = os.read(fd, 8192).decode("utf-8", "replace")
    except BlockingIOError:
        break
    except BrokenPipeError:
        continue
    if "NVRM" in rec or "SXid" in rec or "Linux version" in rec:
        lines.append(rec.rstrip("\n"))
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
print(f"kmsg.txt: {len(lines)} NVIDIA/kernel lines")
PY
df -B1 --output=size,avail /dev/shm > "$out/dev-shm.txt"
{ nvidia-smi -q -d ROW_REMAPPER,ECC,PERFORMANCE,PCIE,COMPUTE 2>&1; nvidia-smi topo -p2p r 2>&1; } > "$out/nvidia-smi-q.txt"
s=$(date +%s.%N)
python3 -m vllm_nodeagent.cli --log-format json --config etc/config.toml doctor --json > "$out/doctor.json" 2> "$out/doctor.err"
rc=$?; e=$(date +%s.%N)
echo "doctor exit $rc, $(python3 -c "print(round($e-$s,3))") s"
python3 -m vllm_nodeagent.cli --config etc/config.toml doctor 2>&1 | tail -45
