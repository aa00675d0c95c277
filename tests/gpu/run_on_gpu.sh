#!/usr/bin/env bash
# Issue 7: prove discovery, doctor, prewarm and launch on the lent GPU machine. READ-ONLY on the GPU:
# nothing here changes persistence mode, clocks, power, compute or MIG mode, and `apply` is never run.
# Usage (repo root, on the GPU machine): bash tests/gpu/run_on_gpu.sh OUTDIR
# Expects carried wheels in .whl/ (structlog, sdnotify) and Debian debs in .debs/
# (numactl, libnuma1, vmtouch): that machine has no network.
set -uo pipefail
out=${1:?usage: run_on_gpu.sh OUTDIR}
mkdir -p "$out"
repo=$(pwd)
summary="$out/summary.txt"
say() { echo "$*" | tee -a "$summary"; }
export PYTHONUNBUFFERED=1

python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$repo"
mkdir -p /tmp/debroot
for d in .debs/*.deb; do dpkg-deb -x "$d" /tmp/debroot; done
install -m 755 /tmp/debroot/usr/bin/numactl /tmp/debroot/usr/bin/vmtouch /usr/local/bin/
cp -a /tmp/debroot/usr/lib/x86_64-linux-gnu/libnuma.so.1* /usr/local/lib/ && ldconfig
agent=(python3 -m vllm_nodeagent.cli --log-format json)

say "== host"
{ uname -a; python3 --version; nvidia-smi; nvidia-smi -q; } > "$out/host.txt" 2>&1
nvidia-smi topo -m > "$out/nvidia-smi-topo.txt" 2>&1
cat "$out/nvidia-smi-topo.txt" | tee -a "$summary"
numactl --hardware | tee -a "$summary"

say "== NVML recording (Get calls only)"
python3 tests/gpu/record_nvml.py > "$out/nvml.json" && head -c 600 "$out/nvml.json" | tee -a "$summary"; echo

say "== sysfs snapshot"
rm -rf /tmp/snap && python3 tests/gpu/snapshot_sysfs.py /tmp/snap && tar -C /tmp/snap -czf "$out/sysfs.tar.gz" . \
    && say "snapshot files: $(find /tmp/snap | wc -l)"

say "== topology (5 cold processes, seconds each)"
for i in 1 2 3 4 5; do
    s=$(date +%s.%N); "${agent[@]}" topology --json > "$out/topology.json" 2> "$out/topology.err"; rc=$?
    e=$(date +%s.%N); say "run $i: rc=$rc $(python3 -c "print(round($e-$s,3))") s"
done
"${agent[@]}" topology | tee -a "$summary"
python3 - "$out" <<'PY' | tee -a "$summary"
import json, sys, time
from vllm_nodeagent.host import Host
from vllm_nodeagent.nvml import Nvml
from vllm_nodeagent.topology import discover
t0 = time.perf_counter(); n = Nvml.open(); t1 = time.perf_counter()
topo = discover(Host("/"), n); t2 = time.perf_counter(); n.close()
t3 = time.perf_counter(); n = Nvml.open(); t4 = time.perf_counter(); discover(Host("/"), n); t5 = time.perf_counter(); n.close()
print(f"nvmlInit cold {t1-t0:.3f}s, discover {t2-t1:.3f}s; nvmlInit warm {t4-t3:.3f}s, discover {t5-t4:.3f}s")
import pynvml; t6 = time.perf_counter(); import importlib
print("warnings:", topo.warnings)
PY

say "== three views of each GPU's NUMA affinity"
python3 - "$out" <<'PY' | tee -a "$summary"
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
topo = json.loads((out / "topology.json").read_text())
lines = (out / "nvidia-smi-topo.txt").read_text().splitlines()
header = next(l for l in lines if "CPU Affinity" in l)
for g in topo["gpus"]:
    dev = pathlib.Path("/sys/bus/pci/devices") / g["pci_bus_id"]
    sys_node = (dev / "numa_node").read_text().strip(); sys_cpus = (dev / "local_cpulist").read_text().strip()
    row = next((l for l in lines if l.startswith(f"GPU{g['index']}")), "")
    cols = row.split()
    print(f"GPU{g['index']} {g['pci_bus_id']} agent: node {g['numa_node']} cpus "
          f"{g['local_cpus'][0]}-{g['local_cpus'][-1]} (source {g['source']}) | sysfs: numa_node {sys_node} "
          f"local_cpulist {sys_cpus} | nvidia-smi: CPU Affinity {cols[-3]} NUMA Affinity {cols[-2]}")
    if sys_node == "-1":
        print("  explained: firmware gives no proximity (numa_node -1); the agent resolves it through local_cpulist "
              "and NVML's memory affinity, as nvidia-smi's NUMA Affinity column does; its 'GPU NUMA ID' N/A is the GPU's own "
              "node, which only coherent (Grace) platforms have")
PY

say "== doctor (read-only; values before/after compared)"
snap() { for f in /proc/sys/vm/max_map_count /proc/sys/net/core/rmem_max /proc/sys/net/ipv4/tcp_rmem \
        /sys/kernel/mm/transparent_hugepage/enabled; do echo "$f $(cat $f)"; done
        nvidia-smi --query-gpu=persistence_mode,clocks.applications.graphics,power.limit,compute_mode --format=csv,noheader; }
snap > /tmp/before.txt
"${agent[@]}" --config etc/config.toml doctor --json > "$out/doctor.json" 2> "$out/doctor.err"; say "doctor exit $?"
"${agent[@]}" --config etc/config.toml doctor | tee -a "$summary"
snap > /tmp/after.txt
if cmp -s /tmp/before.txt /tmp/after.txt; then say "read-only: host unchanged by doctor"; else say "CHANGED"; diff /tmp/before.txt /tmp/after.txt | tee -a "$summary"; fi
s=$(date +%s.%N); "${agent[@]}" --config etc/config.toml doctor --json >/dev/null 2>&1; e=$(date +%s.%N)
say "doctor wall: $(python3 -c "print(round($e-$s,3))") s"

say "== launch: stand-in under numactl, as user nobody"
install -m 755 tests/standin_vllm.py /tmp/standin_vllm.py
rm -f /tmp/standin.jsonl; touch /tmp/standin.jsonl; chmod 666 /tmp/standin.jsonl
cat > /tmp/launch.toml <<TOML
[agent]
state_dir = "/tmp/vna-state"
[vllm]
command = ["/usr/bin/env", "python3", "/tmp/standin_vllm.py"]
model = "stand-in/model"
args = ["--port", "18123", "--record", "/tmp/standin.jsonl", "--workers", "1", "--load-seconds", "1"]
numa = "bind"
user = "nobody"
health_url = "http://127.0.0.1:18123/health"
start_timeout_s = 60
TOML
chmod 600 /tmp/launch.toml
"${agent[@]}" --config /tmp/launch.toml launch --dry-run --json | tee "$out/launch-dry-run.json" | tee -a "$summary"
"${agent[@]}" --config /tmp/launch.toml launch > "$out/launch.log" 2>&1 &
lp=$!
for _ in $(seq 60); do grep -q '"role": "worker"' /tmp/standin.jsonl 2>/dev/null && break; sleep 1; done
sleep 2
cat /tmp/standin.jsonl >> "$out/launch-standin.jsonl"
python3 - <<'PY' | tee -a "$summary"
import json
for line in open("/tmp/standin.jsonl"):
    r = json.loads(line)
    print(r["role"], "pid", r["pid"], "uid", r["uid"], "Cpus_allowed_list", r.get("Cpus_allowed_list"),
          "Mems_allowed_list", r.get("Mems_allowed_list"), "CUDA_VISIBLE_DEVICES", r["env"].get("CUDA_VISIBLE_DEVICES"))
PY
kill -TERM $lp; wait $lp; say "launch exit after SIGTERM: $?"
tail -5 "$out/launch.log" >> "$summary"

say "== prewarm benchmark (vs dd and vmtouch; fio is not on that machine)"
df -h /var/tmp | tee -a "$summary"
timeout 420 python3 bench/prewarm.py --no-install --files 4 --size-gib 2 --rounds 3 --dir /var/tmp/vna-bench 2>&1 \
    | tee "$out/prewarm-bench.txt" | tail -25 | tee -a "$summary"
rm -rf /var/tmp/vna-bench
say "== done"
# At most 8 files come back: keep summary.txt and doctor.json beside one archive of everything.
tar -C "$out" -czf /tmp/results.tar.gz . && mkdir -p /tmp/keep && mv "$out/summary.txt" "$out/doctor.json" /tmp/keep/ \
    && rm -rf "${out:?}"/* && mv /tmp/keep/* /tmp/results.tar.gz "$out/"
