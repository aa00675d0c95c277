#!/usr/bin/env bash
# Issue 23 on the lent H200: time to serve — bytecode (vllm.bytecode), the serving-stack warm-up, its overlap with
# vLLM's start, and the compile caches across starts. READ-ONLY for GPU settings: nothing here changes persistence,
# clocks, power, compute or MIG mode; `apply` runs only `--only vllm.bytecode`; configs carry no settings section.
# The one kernel knob touched is the page cache drop (`sync; echo 3 > /proc/sys/vm/drop_caches`), no setting.
#
# From the root of the tree the device tool sends, one stage per call, calls back to back (the machine keeps /tmp
# for ~30 s between calls). G is the carried folder made by ../shared/gpu/build-vllm-carry.sh G plus G/deps (the
# agent's wheels for Python 3.12: `pip download --no-deps ... -d G/deps structlog sdnotify
# nvidia-ml-py py-cpuinfo psutil`; psutil for time_to_serve.py, not the agent); stage 1 carries G/c1 and G/deps, stage 2 G/c2, stage 3 G/c3:
#   bash tests/gpu/tts_h200.sh 1 G   pieces 1/3, agent deps, user vllm, the 8B-shaped random model
#   bash tests/gpu/tts_h200.sh 2 G   pieces 2/3
#   bash tests/gpu/tts_h200.sh 3 G   pieces 3/3, install vLLM; bytecode before/after `apply --only vllm.bytecode`
#                                    (doctor, .py hashes, versions); an untimed first start; round 1
#   bash tests/gpu/tts_h200.sh 4 G   CASES4 (rounds 2 and 3, interleaved the other ways)
#   bash tests/gpu/tts_h200.sh 5 G   CASES5 (the compiled case, first and second start; more rounds if time)
# DRY=1: the stand-in vLLM instead (tests/standin_vllm.py), no vLLM pieces, a tiny model: the CPU machine's
# end-to-end check of this script before any device time is spent.
set -uo pipefail
stage=${1:?usage: tts_h200.sh STAGE CARRYDIR}
G=$(cd "${2:?carry dir}" && pwd)
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 VUSER VPY
T0=$SECONDS
REPO=$(pwd)
DRY=${DRY:-}
MODEL=${MODEL:-/var/tmp/llama8b}
PY=${PY:-$(python3 -c 'import sys; print(sys.executable)')}
VPY=${VPY:-$PY}          # the interpreter vLLM runs on (DRY: one the stand-in's user can execute)
PORT=${PORT:-8000}
CACHE=${CACHE:-/var/cache/vllm-nodeagent}   # [agent] cache_dir: compile caches live under CACHE/VUSER
VUSER=${VUSER:-vllm}     # DRY: nobody (no account is created on the CPU machine)
export PYTHONPATH="/tmp/asite:$REPO"
AGENT=("$PY" -m vllm_nodeagent.cli --log-format json)
CFG=/tmp/tts-cfgs
say() { echo "$*" | tee -a "$OUT/summary.txt"; }

setup_agent() {
    mkdir -p /tmp/asite
    if [ -z "$DRY" ] && [ ! -d /tmp/asite/structlog ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/asite "$G"/deps/*.whl || return 1
    fi
    [ "$VUSER" = vllm ] || return 0
    getent group vllm >/dev/null || groupadd --system vllm
    getent passwd vllm >/dev/null || useradd --system --gid vllm --home-dir /var/lib/vllm-nodeagent/home \
        --no-create-home --shell /usr/sbin/nologin vllm
    for g in video render; do getent group $g >/dev/null && usermod -a -G $g vllm; done
    mkdir -p /var/lib/vllm-nodeagent/home && chown vllm:vllm /var/lib/vllm-nodeagent/home
}

stop_leftovers() {
    local f=/tmp/vna-state/vllm.pid p
    [ -f "$f" ] || return 0
    p=$(cat "$f"); [ -n "$p" ] && kill -KILL -- "-$p" 2>/dev/null && say "killed leftover vLLM group $p"
    rm -f "$f"
}

write_configs() {  # plain (no prewarm), full (all before the start), overlap (the default), weights, learned, compiled,
                  # weights_idle/_low (the weights' read beside the start at a lower I/O class), plain_debug/_importtime
    mkdir -p "$CFG"
    local ldp=${LD_LIBRARY_PATH:-} cmd args pyp
    if [ -n "$DRY" ]; then
        cmd="\"$VPY\", \"$REPO/tests/standin_vllm.py\", \"--load-seconds\", \"3\", \"--served-model-name\", \"llama8b-random\""
        args="\"--port\", \"$PORT\""; pyp=""
    else
        cmd="\"$PY\", \"-m\", \"vllm.entrypoints.openai.api_server\""
        args='"--port", "'$PORT'", "--served-model-name", "llama8b-random", "--max-model-len", "4096", "--gpu-memory-utilization", "0.85"'
        pyp=/tmp/site
    fi
    mk() {  # name, extra args, [prewarm] body or ""
        {
            printf '[agent]\nstate_dir = "/tmp/vna-state"\ncache_dir = "%s"\nmetrics_textfile = ""\nlog_format = "json"\n' "$CACHE"
            [ -n "$3" ] && printf '[prewarm]\nmemory_budget_fraction = 0.9\n%s\n' "$3"
            printf '[vllm]\ncommand = [%s]\nmodel = "%s"\nargs = [%s%s]\nuser = "%s"\nnuma = "none"\n' \
                "$cmd" "$MODEL" "$args" "$2" "$VUSER"
            printf 'health_url = "http://127.0.0.1:%s/health"\nstart_timeout_s = 900\nstop_timeout_s = 60\n' "$PORT"
            printf '[vllm.env]\nPYTHONPATH = "%s"\nLD_LIBRARY_PATH = "%s"\n' "$pyp" "$ldp"
            printf 'VLLM_USE_FLASHINFER_SAMPLER = "0"\nHF_HUB_OFFLINE = "1"\nVLLM_NO_USAGE_STATS = "1"\n'
        } > "$CFG/cfg-$1.toml"
        chmod 600 "$CFG/cfg-$1.toml"
    }
    local eager=', "--enforce-eager"'
    [ -n "$DRY" ] && eager=""
    mk plain "$eager" ""
    mk full "$eager" "overlap = false"
    mk overlap "$eager" "overlap = true"
    mk weights "$eager" $'overlap = true\nstack = false\nio_priority = "default"'   # as recorded before io_priority
    mk learned "$eager" $'overlap = true\nstack_learned = true'
    mk weights_idle "$eager" $'overlap = true\nstack = false\nio_priority = "idle"'
    mk weights_low "$eager" $'overlap = true\nstack = false\nio_priority = "low"'
    # warm restarts that say where the time goes: vLLM's debug log (both processes); every import's time
    mk plain_debug "$eager" ""
    printf 'VLLM_LOGGING_LEVEL = "DEBUG"\n' >> "$CFG/cfg-plain_debug.toml"
    mk plain_importtime "$eager" ""
    printf 'PYTHONPROFILEIMPORTTIME = "1"\n' >> "$CFG/cfg-plain_importtime.toml"
    mk compiled "$( [ -n "$DRY" ] || echo ', "--max-num-seqs", "32"')" "overlap = true"
    # with vLLM's one-artifact AOT load (its default from torch 2.12 on): measured 2026-12-03, not the agent's default
    mk compiled_mega "$( [ -n "$DRY" ] || echo ', "--max-num-seqs", "32"')" "overlap = true"
    printf 'VLLM_USE_MEGA_AOT_ARTIFACT = "1"\n' >> "$CFG/cfg-compiled_mega.toml"
}

tts() {  # OUTSUB, then time_to_serve.py's flags
    local sub=$1; shift
    "$PY" "$REPO/tests/gpu/time_to_serve.py" --out "$OUT/$sub" --model "$MODEL" --cfg-dir "$CFG" --serve-user "$VUSER" --port "$PORT" --cache-dir "$CACHE" "$@" 2>&1 \
        | tee -a "$OUT/tts-console.txt"
}

pack_logs() {  # at most 8 files come back: one archive of the logs, the results beside it
    [ -d "$OUT/$1/logs" ] || return 0
    tar -C "$OUT/$1" -czf "$OUT/$1-logs.tar.gz" logs && rm -rf "$OUT/$1/logs"
    mv "$OUT/$1/results.jsonl" "$OUT/$1-results.jsonl" 2>/dev/null; rmdir "$OUT/$1" 2>/dev/null
}

pack_small() {  # at most 8 files come back: the small reports of a stage in one archive
    local small
    small=$(cd "$OUT" && ls apply-* bytecode* doctor-* host-facts.txt model.json 2>/dev/null)
    [ -n "$small" ] || return 0
    (cd "$OUT" && tar -czf "reports-$1.tar.gz" $small && rm -f $small)
}

bytecode_report() {  # LABEL: doctor's vllm.bytecode, hashes of every .py on the path, versions, as the vLLM user
    local label=$1 t=$SECONDS
    "${AGENT[@]}" --config "$CFG/cfg-plain.toml" doctor --json > "$OUT/doctor-$label.json" 2>/dev/null
    "$PY" - "$OUT/doctor-$label.json" "$label" "$((SECONDS - t))" >> "$OUT/bytecode.jsonl" <<'PY'
import hashlib, json, os, subprocess, sys
doc = json.load(open(sys.argv[1]))
check = next((c for c in doc["checks"] if c["id"] == "vllm.bytecode"), None)
VUSER, VPY = os.environ["VUSER"], os.environ["VPY"]
info = subprocess.run([VPY, "-c", "import json, sys; print(json.dumps(sys.path))"], user=VUSER,
                      env={"PYTHONPATH": os.environ.get("VLLM_PYTHONPATH", ""), "PATH": "/usr/bin:/bin"},
                      capture_output=True, text=True, cwd="/")
paths = [p for p in json.loads(info.stdout) if os.path.isdir(p)]
h, n, seen = hashlib.sha256(), 0, set()
for top in paths:
    for d, dirs, files in os.walk(top):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(d, f)
            if f.endswith(".py") and p not in seen:
                seen.add(p); n += 1
                h.update(p.encode()); h.update(open(p, "rb").read())
ver = subprocess.run([VPY, "-c", "import importlib.metadata as m; print(m.version('vllm'), m.version('torch'))"],
                     user=VUSER, env={"PYTHONPATH": os.environ.get("VLLM_PYTHONPATH", ""), "PATH": "/usr/bin:/bin"},
                     capture_output=True, text=True, cwd="/")
print(json.dumps({"label": sys.argv[2], "doctor_s": int(sys.argv[3]), "check": check, "py_files": n,
                  "py_sha256": h.hexdigest(), "versions": ver.stdout.strip(), "paths": paths}))
PY
    say "bytecode $label: $(tail -1 "$OUT/bytecode.jsonl" | "$PY" -c 'import json,sys; d=json.load(sys.stdin); c=d["check"] or {}; print(c.get("status"), c.get("current"), "|", d["py_files"], "py", d["py_sha256"][:16], "|", d["versions"])')"
}

case $stage in
1)
    [ -n "$DRY" ] || { mkdir -p /tmp/v && cp "$G"/c1/* /tmp/v/; }
    setup_agent || { say "agent deps failed"; exit 1; }
    say "== stage 1 $(date -u +%FT%TZ) host $(hostname) $(uname -r) tree $(git -C "$REPO" log --oneline -1 2>/dev/null | cut -c1-60)"
    { nvidia-smi --query-gpu=name,pci.bus_id,driver_version,memory.total --format=csv 2>&1; nproc; head -3 /proc/meminfo
      "$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, torch.__file__)' 2>&1
      stat -c '%U %a %n' /opt /opt/torch /opt/torch/.venv 2>&1; } > "$OUT/host-facts.txt"
    if [ -z "$DRY" ]; then  # the VM's RAM grows as it is used: touch it once so the page cache can hold 16 GB
        "$PY" -c '
import numpy as np, time
def mem(k):
    return next(int(l.split()[1]) / 2**20 for l in open("/proc/meminfo") if l.startswith(k + ":"))
t = time.monotonic(); bufs = []
while mem("MemTotal") < 80 and len(bufs) < 24 and time.monotonic() - t < 60 and mem("MemAvailable") > 6:
    bufs.append(np.ones(4 << 30, np.uint8))
print("MemTotal after touching", round(mem("MemTotal"), 1), "GiB")' 2>&1 | tee -a "$OUT/host-facts.txt"
        rm -rf "$MODEL"
        "$PY" "$REPO/tests/gpu/make_random_llama.py" "$MODEL" --layers 32 2>&1 | tail -1 | tee "$OUT/model.json"
    else
        mkdir -p "$MODEL" && head -c 8000000 /dev/urandom > "$MODEL/model.safetensors" && echo '{}' > "$MODEL/config.json"
    fi
    chmod -R a+rX "$MODEL"; sync
    say "stage 1 done in $((SECONDS - T0)) s"
    ;;
2)
    [ -f /tmp/v/xpart.aa ] || { say "machine replaced: start again from stage 1"; exit 9; }
    cp "$G"/c2/* /tmp/v/
    say "stage 2 done in $((SECONDS - T0)) s"
    ;;
3)
    setup_agent || exit 1
    if [ -z "$DRY" ]; then
        [ -f /tmp/v/xpart.ab ] || { say "machine replaced: start again from stage 1"; exit 9; }
        cp "$G"/c3/deps/*.whl /tmp/v/
        bash "$( [ -f "$G"/c3/install.sh ] && echo "$G"/c3/install.sh || echo "$G"/install.sh)" 2>&1 | tail -2 | tee -a "$OUT/summary.txt"
        chmod -R a+rX /tmp/site   # NOT compiled here: that is the agent's vllm.bytecode step now
        export VLLM_PYTHONPATH=/tmp/site
    fi
    say "== stage 3 $(date -u +%FT%TZ) vLLM unpacked after $((SECONDS - T0)) s"
    write_configs; stop_leftovers
    bytecode_report before
    t=$SECONDS
    "${AGENT[@]}" --config "$CFG/cfg-plain.toml" apply --only vllm.bytecode > "$OUT/apply-bytecode.txt" 2> "$OUT/apply-bytecode.err"
    say "apply --only vllm.bytecode: exit $? in $((SECONDS - t)) s: $(cat "$OUT/apply-bytecode.txt")"
    cp /tmp/vna-state/bytecode.json "$OUT/bytecode-state.json" 2>/dev/null
    bytecode_report after
    t=$SECONDS
    "${AGENT[@]}" --config "$CFG/cfg-plain.toml" apply --only vllm.bytecode > "$OUT/apply-bytecode-2.txt" 2>&1
    say "apply again (environment unchanged): exit $? in $((SECONDS - t)) s: $(head -1 "$OUT/apply-bytecode-2.txt")"
    # vLLM's first start on a fresh machine fills its own caches: untimed (no row counts it)
    tts r1 --cases "${CASES3:-warmup,warm,cold,warmup_full,warmup_overlap}" --timeout 400 \
        --budget-s $(( ${BUDGET3:-480} - (SECONDS - T0) ))
    stop_leftovers; pack_logs r1; pack_small 3
    say "stage 3 done in $((SECONDS - T0)) s"
    ;;
4|5)
    [ -n "$DRY" ] || [ -d /tmp/site/vllm ] || { say "machine replaced"; exit 9; }
    setup_agent || exit 1
    export VLLM_PYTHONPATH=/tmp/site
    write_configs; stop_leftovers
    if [ "$stage" = 4 ]; then cases=${CASES4:-warmup_overlap,warm,warmup_full,cold,cold,warmup_overlap,warm,warmup_full}
    else cases=${CASES5:-compiled_first,compiled_second,warm,cold,warmup_overlap,warmup_full}; fi
    say "== stage $stage $(date -u +%FT%TZ) cases $cases"
    TTS_ROUND_BASE=${ROUND_BASE:-0} tts "r$stage" --cases "$cases" --timeout 400 \
        --budget-s $(( ${BUDGET:-480} - (SECONDS - T0) ))
    stop_leftovers; pack_logs "r$stage"
    say "stage $stage done in $((SECONDS - T0)) s"
    ;;
*) echo "unknown stage $stage"; exit 2 ;;
esac
