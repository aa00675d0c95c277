#!/usr/bin/env bash
# Issue 17 on the lent GPU machine: the agent starts real vLLM 0.26.0 (as an unprivileged user, under the GPU's
# node binding), and prewarm's worth is measured in time to serve. READ-ONLY for GPU settings: nothing here
# changes persistence mode, clocks, power, compute or MIG mode, and `apply` is never run (the `run` daemon gets a
# config with no settings section, so it applies nothing). The one kernel knob touched is the page cache drop
# (`sync; echo 3 > /proc/sys/vm/drop_caches`), which changes no setting.
#
# Usage, from the root of the tree the device tool sends, one stage per call, calls back to back (the machine
# keeps /tmp for ~30 s between calls):
#   bash G/code/tests/gpu/run_vllm_on_gpu.sh STAGE G
# G is the carried folder: G/code (this branch's tree), G/deps (agent wheels + numactl/vmtouch debs), and per
# stage the vLLM pieces of ../shared/gpu/build-vllm-carry.sh: stage 1 carries G/c1, stage 2 G/c2, stage 3 G/c3.
#   1  pieces 1/3; host facts (loader path, memory); user; the 8B-shaped random model; NVML recording
#   2  pieces 2/3; NVML recording and doctor (etc/config.toml) before vLLM ever ran
#   3  pieces 3/3, install vLLM; part 1 + part 2 round 1 (cold, prewarmed, in_start) with the checks
#   4  round 2 (interleaved the other way) + vLLM's own prefetch strategy
#   5  without --enforce-eager through `run` (torch.compile + CUDA graphs: EXTEND_TIMEOUT while loading)
#   6  the issue-7 recording again (tests/gpu/run_on_gpu.sh: NVML, doctor, stand-in launch, prewarm benchmark)
# The re-run of 2026-11-25 (fixture h100-2026-11-25-vllm-r2: (c) after the prewarm fix, doctor before the first
# launch after the scratch-cache fix) uses stages 1, 2, then:
#   7  pieces 3/3, install vLLM; doctor before vLLM ever ran (its vllm.args probe); a warm-up start (vLLM's first
#      start fills its own caches: no timed case pays that); round 1 (cold, prewarmed, in_start); checks on the
#      warm-up and in_start
#   8  one more round, SUB names the results (r2b, r2c, ...), ROUND its number, CASES8 the order
# Results land in $OUT (at most 8 files come back).
set -uo pipefail
stage=${1:?usage: run_vllm_on_gpu.sh STAGE CARRYDIR}
G=$(cd "${2:?carry dir}" && pwd)
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$SECONDS
MODEL=/var/tmp/llama8b
say() { echo "$*" | tee -a "$OUT/summary.txt"; }

# The code under test is this branch's tree, carried (the tool sends the session's checkout, not this branch).
rm -rf /tmp/code && cp -a "$G/code" /tmp/code
PY=$(python3 -c 'import sys; print(sys.executable)')
AGENT=("$PY" -m vllm_nodeagent.cli --log-format json)

setup_agent() {  # the agent's own deps (not in the image) and numactl/vmtouch from Debian debs
    mkdir -p /tmp/asite /tmp/debroot
    [ -d /tmp/asite/structlog ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/asite \
        "$G"/deps/*.whl || return 1
    if ! command -v numactl >/dev/null; then
        for d in "$G"/deps/*.deb; do dpkg-deb -x "$d" /tmp/debroot; done
        install -m 755 /tmp/debroot/usr/bin/numactl /tmp/debroot/usr/bin/vmtouch /usr/local/bin/
        cp -a /tmp/debroot/usr/lib/x86_64-linux-gnu/libnuma.so.1* /usr/local/lib/ && ldconfig
    fi
    export PYTHONPATH="/tmp/asite:/tmp/code"
}

stop_leftovers() {  # a vLLM left by a killed call runs on in its own session: end it by the agent's pid file
    for f in /tmp/vna-state/vllm.pid /run/vllm-nodeagent-serve/vllm.pid; do
        [ -f "$f" ] || continue
        p=$(cat "$f"); [ -n "$p" ] && kill -KILL -- "-$p" 2>/dev/null && say "killed leftover vLLM group $p"
        rm -f "$f"
    done
}

write_configs() {  # one config per case family; no settings section anywhere: `run` applies nothing
    local ldp=${LD_LIBRARY_PATH:-}
    local common_args='"--port", "8000", "--served-model-name", "llama8b-random", "--max-model-len", "4096", "--gpu-memory-utilization", "0.85"'
    mk() {  # name, extra args (toml list items), extra sections
        cat > "/tmp/cfg-$1.toml" <<TOML
[agent]
state_dir = "/tmp/vna-state"
metrics_textfile = ""
log_format = "json"
$3
[vllm]
command = ["$PY", "-m", "vllm.entrypoints.openai.api_server"]
model = "$MODEL"
args = [$common_args$2]
user = "vllm"
numa = "bind"
health_url = "http://127.0.0.1:8000/health"
start_timeout_s = 900
stop_timeout_s = 60

[vllm.env]
PYTHONPATH = "/tmp/site"
LD_LIBRARY_PATH = "$ldp"
VLLM_USE_FLASHINFER_SAMPLER = "0"
HF_HUB_OFFLINE = "1"
VLLM_NO_USAGE_STATS = "1"
TOML
        chmod 600 "/tmp/cfg-$1.toml"
    }
    # [prewarm] in the launch config only sets the budget of `vllm-nodeagent prewarm` (launch never prewarms)
    local pw='[prewarm]
memory_budget_fraction = 0.9'
    mk launch ', "--enforce-eager"' "$pw"
    mk run ', "--enforce-eager"' "$pw"
    mk prefetch ', "--enforce-eager", "--safetensors-load-strategy", "prefetch"' ""
    mk compiled ', "--max-num-seqs", "32"' ""
    mk noldp ', "--enforce-eager"' ""
    sed -i '/^LD_LIBRARY_PATH = /d' /tmp/cfg-noldp.toml   # what a config without the pass-through looks like
}

tts() {  # time_to_serve.py with the configs; args: OUTSUB, then its own flags
    local sub=$1; shift
    "$PY" /tmp/code/tests/gpu/time_to_serve.py --out "$OUT/$sub" --model "$MODEL" \
        --launch-cfg /tmp/cfg-launch.toml --run-cfg /tmp/cfg-run.toml --prefetch-cfg /tmp/cfg-prefetch.toml \
        --compiled-cfg /tmp/cfg-compiled.toml "$@" 2>&1 | tee -a "$OUT/tts-console.txt"
}

pack_logs() {  # at most 8 files come back: one archive of the logs, small files beside it
    [ -d "$OUT/$1/logs" ] || return 0
    tar -C "$OUT/$1" -czf "$OUT/$1-logs.tar.gz" logs && rm -rf "$OUT/$1/logs"
    mv "$OUT/$1/results.jsonl" "$OUT/$1-results.jsonl" 2>/dev/null; rmdir "$OUT/$1" 2>/dev/null
}

case $stage in
1)
    mkdir -p /tmp/v && cp "$G"/c1/* /tmp/v/
    setup_agent || { say "agent deps failed"; exit 1; }
    say "== stage 1 $(date -u +%FT%TZ) host $(hostname) $(uname -r)"
    {
        echo "## python"; echo "$PY"; "$PY" -c 'import torch, sys; print(sys.version.split()[0], "torch", torch.__version__)'
        echo "## nvidia-smi"; nvidia-smi --query-gpu=name,pci.bus_id,driver_version,memory.total,memory.used,persistence_mode,compute_mode --format=csv
        echo "## meminfo (start)"; head -5 /proc/meminfo; nproc; df -h /var/tmp /tmp
        echo "## LD_LIBRARY_PATH of the shell the tool gives"; echo "${LD_LIBRARY_PATH:-<unset>}"
        echo "## ld.so.conf"; cat /etc/ld.so.conf /etc/ld.so.conf.d/*.conf 2>&1
        echo "## ldconfig -p: driver libraries in the loader cache"; ldconfig -p | grep -E 'libcuda\.so|libnvidia-ml\.so' || echo "(none)"
        echo "## where they are"; ls -l /usr/local/nvidia/lib64/libcuda.so* /usr/local/nvidia/lib64/libnvidia-ml.so* 2>&1 | head
        echo "## dlopen under a clean environment (what the agent gives vLLM without [vllm.env] LD_LIBRARY_PATH)"
        env -i PATH=/usr/bin:/bin "$PY" -c 'import ctypes
for n in ("libcuda.so.1", "libnvidia-ml.so.1"):
    try:
        ctypes.CDLL(n); print(n, "loads")
    except OSError as e:
        print(n, "FAILS:", e)'
        echo "## the same with the shell's LD_LIBRARY_PATH"
        env -i PATH=/usr/bin:/bin LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}" "$PY" -c 'import ctypes; ctypes.CDLL("libcuda.so.1"); print("libcuda.so.1 loads")' 2>&1
        echo "## compilers (torch.compile/triton need one)"; command -v gcc cc nvcc
        echo "## /proc/sys/vm/drop_caches writable"; ls -l /proc/sys/vm/drop_caches
    } > "$OUT/host-facts.txt" 2>&1
    # the loader's view, for the fixture's replay of doctor's vllm.driver_libs check
    "$PY" - > "$OUT/ldso.json" <<'PY'
import ctypes, glob, json, os, subprocess, sys
sys.path.insert(0, "/tmp/code")
from vllm_nodeagent.serving import driver_libs
from vllm_nodeagent.host import Host
files = {p: open(p).read() for p in ["/etc/ld.so.conf", *sorted(glob.glob("/etc/ld.so.conf.d/*"))] if os.path.isfile(p)}
ldp = os.environ.get("LD_LIBRARY_PATH", "")
cands = [d for d in ldp.split(":") if d] + driver_libs.ld_so_conf_dirs(Host("/")) + list(driver_libs.DEFAULT_DIRS)
where = {lib: [d for d in dict.fromkeys(cands) if os.path.exists(os.path.join(d, lib))] for lib in driver_libs.DRIVER_LIBS}
def dlopen(env):
    code = "import ctypes,json,sys\nout={}\nfor n in sys.argv[1:]:\n  try:\n    ctypes.CDLL(n); out[n]='loads'\n  except OSError as e:\n    out[n]=str(e)\nprint(json.dumps(out))"
    return json.loads(subprocess.run([sys.executable, "-c", code, *driver_libs.DRIVER_LIBS], env=env, capture_output=True, text=True).stdout)
clean = {"PATH": "/usr/bin:/bin"}
v_clean = driver_libs.check(Host("/"), {}, os.environ)
v_ldp = driver_libs.check(Host("/"), {"LD_LIBRARY_PATH": ldp}, os.environ)
print(json.dumps({"ld_library_path": ldp, "conf_files": files, "lib_dirs": where,
                  "dlopen_clean_env": dlopen(clean), "dlopen_with_ld_library_path": dlopen(dict(clean, LD_LIBRARY_PATH=ldp)),
                  "check_clean_env": v_clean.__dict__, "check_with_vllm_env_ldp": v_ldp.__dict__}, indent=1))
PY
    # The VM's RAM starts small and grows as it is used (MemTotal follows): touch memory once so the page cache
    # can hold the 16 GB checkpoint, and record what MemTotal does.
    "$PY" - <<'PY' 2>&1 | tee -a "$OUT/host-facts.txt"
import numpy as np, time
def mem(key):
    for line in open("/proc/meminfo"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 2**20
t = time.monotonic(); before = mem("MemTotal"); bufs = []
while mem("MemTotal") < 80 and len(bufs) < 24 and time.monotonic() - t < 60:
    for _ in range(20):  # never push the VM into the OOM killer: wait for it to grow first
        if mem("MemAvailable") > 6:
            break
        time.sleep(0.5)
    else:
        print("## memory: MemAvailable stayed under 6 GiB: MemTotal does not grow here"); break
    bufs.append(np.ones(4 << 30, np.uint8))
grown = mem("MemTotal"); del bufs; time.sleep(1)
print(f"## memory: MemTotal {before:.1f} GiB at start, {grown:.1f} GiB after touching, "
      f"{mem('MemTotal'):.1f} GiB after freeing ({time.monotonic()-t:.0f}s)")
PY
    getent group vllm >/dev/null || groupadd --system vllm
    getent passwd vllm >/dev/null || useradd --system --gid vllm --home-dir /var/lib/vllm-nodeagent/home \
        --no-create-home --shell /usr/sbin/nologin vllm   # as packaging/scripts/postinstall.sh does
    for g in video render; do getent group $g >/dev/null && usermod -a -G $g vllm; done
    # vllm-nodeagent-serve.service's StateDirectory= creates this home (owned by vllm): do what it does
    mkdir -p /var/lib/vllm-nodeagent/home && chown vllm:vllm /var/lib/vllm-nodeagent/home && chmod 750 /var/lib/vllm-nodeagent/home
    say "user: $(id vllm)"
    memt=$(awk '/MemTotal/ {print int($2/1048576)}' /proc/meminfo)
    layers=32; [ "$memt" -lt 48 ] && layers=$(( memt * 32 / 80 ))  # keep the checkpoint under ~40% of RAM
    rm -rf "$MODEL"
    "$PY" /tmp/code/tests/gpu/make_random_llama.py "$MODEL" --layers "$layers" 2>&1 | tee "$OUT/model.json"
    chmod -R a+rX "$MODEL"; sync
    ls -l "$MODEL" | tee -a "$OUT/summary.txt"
    "$PY" /tmp/code/tests/gpu/record_nvml.py > "$OUT/nvml.json" 2>&1
    say "stage 1 done in $((SECONDS - T0)) s"
    ;;
2)
    [ -f /tmp/v/xpart.aa ] || { say "machine replaced: start again from stage 1"; exit 9; }
    cp "$G"/c2/* /tmp/v/
    setup_agent || exit 1
    say "== stage 2 $(date -u +%FT%TZ)"
    # what the NVML recorder and doctor (today's checks) say on this host, read-only, before vLLM ever ran
    "$PY" /tmp/code/tests/gpu/record_nvml.py > "$OUT/nvml-issue16.json" 2> "$OUT/nvml-issue16.err"
    (cd /tmp/code && "${AGENT[@]}" --config etc/config.toml doctor --json > "$OUT/doctor-etc-config.json" 2>&1)
    say "doctor (etc/config.toml) exit $?"
    (cd /tmp/code && "${AGENT[@]}" --config etc/config.toml doctor 2>&1 | tee -a "$OUT/summary.txt" | tail -3)
    say "stage 2 done in $((SECONDS - T0)) s"
    ;;
6)
    # the issue-7 recording (NVML, doctor, stand-in launch, prewarm benchmark) with this branch's agent
    setup_agent || exit 1
    mkdir -p /tmp/code/.whl /tmp/code/.debs && cp "$G"/deps/*.whl /tmp/code/.whl/ && cp "$G"/deps/*.deb /tmp/code/.debs/
    (cd /tmp/code && bash tests/gpu/run_on_gpu.sh "$OUT/issue7") > "$OUT/issue7-console.txt" 2>&1
    say "run_on_gpu.sh exit $? after $((SECONDS - T0)) s"
    ;;
3)
    [ -f /tmp/v/xpart.ab ] || { say "machine replaced: start again from stage 1"; exit 9; }
    cp "$G"/c3/deps/*.whl /tmp/v/
    setup_agent || exit 1
    say "== stage 3 $(date -u +%FT%TZ)"
    bash "$G"/c3/install.sh 2>&1 | tail -3 | tee -a "$OUT/summary.txt"
    # vLLM's user cannot write /tmp/site: compile the bytecode once, as root, or every start compiles it again
    "$PY" -m compileall -q -j 16 /tmp/site >/dev/null 2>&1
    chmod -R a+rX /tmp/site
    say "vLLM installed and compiled after $((SECONDS - T0)) s"
    write_configs
    stop_leftovers
    "${AGENT[@]}" --config /tmp/cfg-launch.toml launch --dry-run --json > "$OUT/launch-dry-run.json" 2> "$OUT/launch-dry-run.err"
    say "dry-run exit $?"
    # the clean environment without [vllm.env] LD_LIBRARY_PATH: doctor's verdict, and what torch says in it
    "${AGENT[@]}" --config /tmp/cfg-noldp.toml doctor --json > "$OUT/doctor-noldp.json" 2>/dev/null
    for c in noldp launch; do
        "${AGENT[@]}" --config /tmp/cfg-$c.toml launch --dry-run --json 2>/dev/null | "$PY" -c '
import json, os, subprocess, sys
plan = json.load(sys.stdin)
r = subprocess.run([sys.argv[1], "-c", "import torch; print(torch.cuda.is_available(), torch.cuda.device_count())"],
                   env=plan["env"], user="vllm", capture_output=True, text=True, cwd="/")
print(sys.argv[2], "LD_LIBRARY_PATH" in plan["env"], "torch.cuda.is_available():", r.stdout.strip(), r.stderr.strip()[-300:])' "$PY" "$c" 2>&1 | tee -a "$OUT/summary.txt"
    done
    tts p2r1 --cases "${CASES3:-cold,prewarmed,in_start}" --checks --timeout 300 --budget-s $(( 430 - (SECONDS - T0) ))
    stop_leftovers
    pack_logs p2r1
    say "stage 3 done in $((SECONDS - T0)) s"
    ;;
4)
    [ -d /tmp/site/vllm ] || { say "machine replaced"; exit 9; }
    setup_agent || exit 1
    write_configs; stop_leftovers
    say "== stage 4 $(date -u +%FT%TZ)"
    TTS_ROUND_BASE=1 tts p2r2 --cases "${CASES4:-in_start,prewarmed,cold,vllm_prefetch}" --timeout 300 \
        --budget-s $(( 440 - (SECONDS - T0) ))
    stop_leftovers
    pack_logs p2r2
    say "stage 4 done in $((SECONDS - T0)) s"
    ;;
5)
    [ -d /tmp/site/vllm ] || { say "machine replaced"; exit 9; }
    setup_agent || exit 1
    write_configs; stop_leftovers
    say "== stage 5 $(date -u +%FT%TZ)"
    tts p1c --cases "${CASES5:-compiled}" --checks --timeout 540 --budget-s 60
    stop_leftovers
    pack_logs p1c
    say "stage 5 done in $((SECONDS - T0)) s"
    ;;
7)
    [ -f /tmp/v/xpart.ab ] || { say "machine replaced: start again from stage 1"; exit 9; }
    cp "$G"/c3/deps/*.whl /tmp/v/
    setup_agent || exit 1
    say "== stage 7 $(date -u +%FT%TZ)"
    bash "$G"/c3/install.sh 2>&1 | tail -3 | tee -a "$OUT/summary.txt"
    "$PY" -m compileall -q -j 16 /tmp/site >/dev/null 2>&1
    chmod -R a+rX /tmp/site
    say "vLLM installed and compiled after $((SECONDS - T0)) s"
    write_configs
    stop_leftovers
    # doctor before vLLM ever ran: no cache dir yet (launch creates it), so its probe must use a scratch one
    say "before doctor: $(ls -d /var/cache/vllm-nodeagent 2>&1 | tail -1); scratch dirs: $(ls -d /tmp/vllm-nodeagent-probe-* 2>/dev/null | wc -l)"
    t=$SECONDS
    "${AGENT[@]}" --config /tmp/cfg-launch.toml doctor --json > "$OUT/doctor-first.json" 2> "$OUT/doctor-first.err"
    say "doctor before the first launch: exit $? in $((SECONDS - t)) s; $("$PY" -c '
import json, sys
print([(c["id"], c["status"], c["current"], c["hint"]) for c in json.load(open(sys.argv[1]))["checks"] if c["id"] == "vllm.args"])' "$OUT/doctor-first.json" 2>&1)"
    say "after doctor: $(ls -d /var/cache/vllm-nodeagent 2>&1 | tail -1); scratch dirs left: $(ls -d /tmp/vllm-nodeagent-probe-* 2>/dev/null | wc -l)"
    tts r2a --cases "${CASES7:-warmup,cold,prewarmed,in_start}" --checks-on warmup,in_start --timeout 300 \
        --budget-s $(( ${BUDGET7:-470} - (SECONDS - T0) ))
    stop_leftovers
    pack_logs r2a
    say "stage 7 done in $((SECONDS - T0)) s"
    ;;
8)
    [ -d /tmp/site/vllm ] || { say "machine replaced"; exit 9; }
    setup_agent || exit 1
    write_configs; stop_leftovers
    say "== stage 8 ${SUB:=r2b} round ${ROUND:=2} $(date -u +%FT%TZ)"
    TTS_ROUND_BASE=$((ROUND - 1)) tts "$SUB" --cases "${CASES8:-in_start,prewarmed,cold}" --timeout 300 \
        --checks-on "${CHECKS8:-}" --budget-s $(( ${BUDGET8:-440} - (SECONDS - T0) ))
    stop_leftovers
    pack_logs "$SUB"
    say "stage 8 done in $((SECONDS - T0)) s"
    ;;
*) echo "unknown stage $stage"; exit 2 ;;
esac
