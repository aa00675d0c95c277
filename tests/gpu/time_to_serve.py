#!/usr/bin/env python3
"""Issue 17 on the GPU machine: the agent starts real vLLM; time to serve with and without prewarm; part-1 checks.

One call runs CASES in the order given (interleave rounds by listing them so). Each case starts from a cold page
cache (``sync`` + ``3 > /proc/sys/vm/drop_caches``, residency then read with cachestat/mincore):

  warmup      ``launch`` with the page cache as it is (not dropped): vLLM's first start on a fresh machine fills
              its own caches (init engine ~25 s instead of ~4 s); run it first so no timed case pays that
  cold        drop the cache, ``vllm-nodeagent launch``
  prewarmed   drop the cache, ``vllm-nodeagent prewarm`` (timed), then ``launch``
  in_start    drop the cache, ``vllm-nodeagent serve`` (the serve unit's main process, run as the vLLM user the
              way systemd would: its own config copy, RUNTIME_DIRECTORY, NOTIFY_SOCKET) with a [prewarm]
              section: it prewarms, then starts vLLM
  vllm_prefetch  drop the cache, ``launch`` with vLLM's own ``--safetensors-load-strategy prefetch``
  compiled    like cold but through the root daemon (``run --layout single``) and without ``--enforce-eager``
              (torch.compile + CUDA graphs)

Issue 23 (``--cfg-dir DIR``: DIR/cfg-<name>.toml, every case through the root daemon ``run --layout single``):

  warm            the page cache as the previous case left it (a warm restart)
  cold            drop the cache; no [prewarm]
  warmup_full     drop the cache; [prewarm] stack + weights, all before vLLM starts (overlap = false)
  warmup_overlap  drop the cache; [prewarm] overlap = true (what it did on the day of the run: see its fixture)
  warmup_default  the same config since the weights wait: the stack beside vLLM's start, the weights once its API
                  server's imports are done (its engine process started), then the compile caches
  weights_overlap the same with [prewarm] stack = false (the weights only)
  warmup_learned  drop the cache; [prewarm] stack_learned = true: the pages a serving vLLM had resident, first
  weights_idle    as weights_overlap with [prewarm] io_priority = "idle" (weights_low: "low")
  warm_debug      a warm restart with VLLM_LOGGING_LEVEL=DEBUG (warm_importtime: PYTHONPROFILEIMPORTTIME=1)
  compiled_first  drop the cache and vLLM/torch/triton's compile caches; no --enforce-eager; the default warm-up
  compiled_second the same again, caches kept (what a restart or reboot sees)

Each log line is stamped with its arrival time here (``[t=12.345] ...``), so ``phases`` splits the start into
imports (agent start → vLLM's first log line; → the EngineCore's), weights, engine init, compile, health, gate.

For each: agent start → READY=1 on a NOTIFY_SOCKET this script binds (every sd_notify message is kept with its
time), then one completion sent at once (time to first completion), vLLM's own timings from its log, and with
``--checks`` the part-1 facts while it serves (process tree, uid, binding, environment, NVML's compute processes
per bus id, torch's bus id under the worker's own environment, the GPU device files each vLLM process holds
open with the bus id the driver gives their minor, doctor); ``--checks-on`` names the cases that get them.
Then SIGTERM to the agent: its exit status, every vLLM process gone, the GPU's memory back (NVML), the port free.

    python3 tests/gpu/time_to_serve.py --out DIR --model MODEL_DIR --launch-cfg A.toml --run-cfg B.toml \
        --compiled-cfg C.toml --prefetch-cfg D.toml --cases cold,prewarmed,in_start [--checks]

Writes DIR/results.jsonl (one object per case) and DIR/logs/<case>-<n>.log (the agent's and vLLM's output).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Optional

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, REPO)

AGENT = [sys.executable, "-m", "vllm_nodeagent.cli", "--log-format", "json"]
NOTIFY = "/tmp/tts-notify.sock"

# vLLM 0.26's own timing lines (vllm/model_executor/model_loader/default_loader.py, v1/worker/gpu_model_runner.py,
# v1/engine/core.py, compilation/monitor.py) and the checkpoint/RAM line of weight_utils.py.
VLLM_PATTERNS = {
    "weights_s": r"Loading weights took ([\d.]+) seconds",
    "model_load_gib": r"Model loading took ([\d.]+) GiB",
    "model_load_s": r"Model loading took [\d.]+ GiB(?: memory)? and ([\d.]+) seconds",
    "init_engine_s": r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+)",
    "compile_s": r"torch\.compile took ([\d.]+) s in total",
    "graph_capture_s": r"Graph capturing finished in ([\d.]+) secs",
    "checkpoint_gib": r"Checkpoint size: ([\d.]+) GiB",
    "available_ram_gib": r"Available RAM: ([\d.]+) GiB",
}


def vllm_timings(text: str) -> dict[str, float]:
    """The last value of each of vLLM's timing lines found in ``text`` (a log), as floats."""
    out: dict[str, float] = {}
    for key, pat in VLLM_PATTERNS.items():
        found = re.findall(pat, text)
        if found:
            out[key] = float(found[-1])
    return out


def _stamp(proc: subprocess.Popen[bytes], log: Any, t0: float) -> None:
    """Copy the child's output to the log, each line prefixed with its arrival time since ``t0``."""
    assert proc.stdout is not None
    for line in iter(proc.stdout.readline, b""):
        log.write(b"[t=%.3f] " % (time.monotonic() - t0) + line)
        log.flush()


_AT = re.compile(r"^\[t=([\d.]+)\] (.*)$")


def _first_at(text: str, pattern: str) -> Optional[float]:
    rx = re.compile(pattern)
    for line in text.splitlines():
        m = _AT.match(line)
        if m and rx.search(m.group(2)):
            return float(m.group(1))
    return None


def phases(text: str, ready_s: Optional[float]) -> dict[str, Optional[float]]:
    """Seconds since the agent's start at which each phase ended, from the stamped log; and the durations.
    vllm_started: the agent's event; api_first_log: vLLM's first log line (its API server imported);
    engine_first_log: the EngineCore's first line (the engine process imported); then vLLM's own timings."""
    at = {
        "vllm_started": _first_at(text, r'"event": "vllm_started"'),
        "prewarm_stack_done": _first_at(text, r'(?=.*"event": "prewarm_done")(?=.*"part": "stack")'),
        "prewarm_weights_begin": _first_at(text, r'"event": "prewarm_weights_begin"'),
        "prewarm_done": _first_at(text, r'(?=.*"event": "prewarm_done")(?=.*"part": "(all|weights)")'),
        "api_first_log": _first_at(text, r"^(\(APIServer pid=\d+\) )?(INFO|WARNING|DEBUG) \d\d-\d\d "),
        "engine_first_log": _first_at(text, r"^\(EngineCore(_\d+)? pid=\d+\) (INFO|WARNING|DEBUG) "),
        "weights_done": _first_at(text, r"Loading weights took"),
        "model_loaded": _first_at(text, r"Model loading took"),
        "engine_ready": _first_at(text, r"init engine \(profile, create kv cache, warmup model\) took"),
        "healthy": _first_at(text, r'"event": "vllm_health_ok"'),
        "ready": ready_s,
    }

    def gap(a: str, b: str) -> Optional[float]:
        x, y = at.get(a), at.get(b)
        return round(y - x, 2) if x is not None and y is not None else None

    out: dict[str, Optional[float]] = {f"at_{k}": (round(v, 2) if v is not None else None) for k, v in at.items()}
    out.update(
        {
            "agent_before_start_s": at["vllm_started"],
            "api_import_s": gap("vllm_started", "api_first_log"),
            "engine_import_s": gap("api_first_log", "engine_first_log"),
            "to_weights_done_s": gap("engine_first_log", "weights_done"),
            "engine_init_s": gap("model_loaded", "engine_ready"),
            "to_health_s": gap("engine_ready", "healthy"),
            "gate_s": gap("healthy", "ready"),
        }
    )
    return out


def agent_events(text: str) -> list[dict[str, Any]]:
    """The agent's JSON log lines (structlog, one object per line) among vLLM's own output."""
    events = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and '"event"' in line:
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


# -- host facts ------------------------------------------------------------------------------------------------
def meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo", encoding="ascii") as fh:
        for line in fh:
            k, _, v = line.partition(":")
            parts = v.split()
            if parts:
                out[k] = int(parts[0]) * (1024 if len(parts) > 1 else 1)
    return {k: out[k] for k in ("MemTotal", "MemFree", "MemAvailable", "Cached") if k in out}


def model_files(model: str) -> list[str]:
    return sorted(os.path.join(model, f) for f in os.listdir(model) if f.endswith(".safetensors"))


def resident(files: list[str]) -> tuple[int, int]:
    from vllm_nodeagent.prewarm.residency import Residency

    r = Residency()
    got = total = 0
    for p in files:
        res, size = r.bytes_path(p)
        got += res
        total += size
    return got, total


def drop_caches() -> None:
    """The kernel's own page-cache drop (root); nothing else on the host is changed. TTS_NO_DROP=1 (the CPU
    machine's dry run of the harness, shared with others): nothing is dropped."""
    if os.environ.get("TTS_NO_DROP"):
        return
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w", encoding="ascii") as fh:
        fh.write("3")


def nvml_state() -> list[dict[str, Any]]:
    """Per GPU: bus id, uuid, memory used, compute processes (Get calls only)."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []  # no GPU here (a dry run of this script against the stand-in)
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            procs = pynvml.nvmlDeviceGetComputeRunningProcesses(h)
            out.append(
                {
                    "index": i,
                    "bus_id": pynvml.nvmlDeviceGetPciInfo(h).busId,
                    "uuid": pynvml.nvmlDeviceGetUUID(h),
                    "used_mib": mem.used // (1 << 20),
                    "procs": [{"pid": p.pid, "used_mib": (p.usedGpuMemory or 0) // (1 << 20)} for p in procs],
                }
            )
        return out
    finally:
        pynvml.nvmlShutdown()


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def agent_json(cfg: str, *cmd: str, timeout: float = 300) -> tuple[int, Any, str]:
    p = subprocess.run([*AGENT, "--config", cfg, *cmd], capture_output=True, text=True, timeout=timeout, check=False)
    try:
        data = json.loads(p.stdout)
    except ValueError:
        data = None
    return p.returncode, data, p.stderr[-3000:]


# -- the notify socket -----------------------------------------------------------------------------------------
class NotifyLog:
    """Binds NOTIFY_SOCKET and keeps every datagram with its time since ``t0``."""

    def __init__(self, path: str, t0: float) -> None:
        if os.path.exists(path):
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.t0 = t0
        self.msgs: list[tuple[float, str]] = []
        self.ready_at: Optional[float] = None
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            t = time.monotonic() - self.t0
            text = data.decode(errors="replace")
            self.msgs.append((round(t, 3), text))
            if "READY=1" in text.split("\n") and self.ready_at is None:
                self.ready_at = t

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.sock.close()


def completion(port: int, model: str, timeout: float = 120) -> tuple[bool, str]:
    body = json.dumps({"model": model, "prompt": "The quick brown fox", "max_tokens": 16, "temperature": 0})
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data = json.loads(resp.read())
        return True, json.dumps({"text": data["choices"][0]["text"], "usage": data.get("usage")})
    except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
        return False, f"{type(exc).__name__}: {exc}"


# -- part 1: what the serving vLLM looks like --------------------------------------------------------------------
def _environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as fh:
        items = fh.read().split(b"\0")
    env = {}
    for it in items:
        k, sep, v = it.partition(b"=")
        if sep:
            env[k.decode(errors="replace")] = v.decode(errors="replace")
    return env


def nvidia_minors(proc: str = "/proc/driver/nvidia/gpus") -> dict[int, str]:
    """Device minor -> bus id, from the driver's own /proc/driver/nvidia/gpus/<bus>/information."""
    out: dict[int, str] = {}
    for bus in sorted(os.listdir(proc)) if os.path.isdir(proc) else []:
        try:
            with open(os.path.join(proc, bus, "information"), encoding="ascii", errors="replace") as fh:
                m = re.search(r"^Device Minor:\s*(\d+)", fh.read(), re.M)
        except OSError:
            continue
        if m:
            out[int(m.group(1))] = bus
    return out


def gpu_files_open(pid: int) -> list[str]:
    """The per-GPU device files (/dev/nvidia<N>) the process holds open: the kernel's view of which GPU it uses."""
    found = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    for fd in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if re.fullmatch(r"/dev/nvidia\d+", target):
            found.add(target)
    return sorted(found)


TORCH_BUS = (
    "import json, torch; p = torch.cuda.get_device_properties(0); "
    "print(json.dumps({'count': torch.cuda.device_count(), 'uuid': str(p.uuid), "
    "'bus': '%08X:%02X:%02X.0' % (getattr(p, 'pci_domain_id', 0), getattr(p, 'pci_bus_id', -1), "
    "getattr(p, 'pci_device_id', -1))}))"
)


def serving_facts(agent_pid: int, cfg: str, plan: dict[str, Any], topo: dict[str, Any]) -> dict[str, Any]:
    import psutil

    from vllm_nodeagent.host.proc import Procfs
    from vllm_nodeagent.serving.binding import process_binding

    facts: dict[str, Any] = {}
    procs = []
    for c in psutil.Process(agent_pid).children(recursive=True):
        try:
            env = _environ(c.pid)
            b = process_binding(Procfs(), c.pid)
            procs.append(
                {
                    "pid": c.pid,
                    "ppid": c.ppid(),
                    "uids": list(c.uids()),
                    "name": c.name(),
                    "cmd": " ".join(c.cmdline())[:160],
                    "cpus": b["cpus"],
                    "mems": b["mems"],
                    "mempolicy": b["mempolicy"],
                    "CUDA_VISIBLE_DEVICES": env.get("CUDA_VISIBLE_DEVICES"),
                    "CUDA_DEVICE_ORDER": env.get("CUDA_DEVICE_ORDER"),
                    "HOME": env.get("HOME"),
                    "LD_LIBRARY_PATH": env.get("LD_LIBRARY_PATH"),
                    "gpu_files": gpu_files_open(c.pid),
                }
            )
        except (psutil.Error, OSError):
            continue
    facts["procs"] = procs
    minors = nvidia_minors()
    facts["nvidia_minor_bus"] = {str(k): v for k, v in minors.items()}
    facts["gpu_files_by_bus_id"] = {
        minors.get(int(f[len("/dev/nvidia") :]), f): [q["pid"] for q in procs if f in q["gpu_files"]]
        for f in sorted({f for q in procs for f in q["gpu_files"]})
    }
    gpus = nvml_state()
    facts["nvml"] = gpus
    vpids = {p["pid"] for p in procs}
    on_gpu = {g["bus_id"]: [q["pid"] for q in g["procs"] if q["pid"] in vpids] for g in gpus}
    facts["vllm_pids_by_bus_id"] = on_gpu
    planned = [g["pci_bus_id"] for g in topo["gpus"] if g["index"] in plan["gpus"]]
    facts["planned_bus_ids"] = planned
    # torch's view, in the exact environment (and as the uid) of the process NVML shows on the GPU
    worker = next((pid for pids in on_gpu.values() for pid in pids), None)
    if worker is not None:
        env = _environ(worker)
        st = os.stat(f"/proc/{worker}")
        p = subprocess.run(
            [sys.executable, "-c", TORCH_BUS],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            user=st.st_uid,
            group=st.st_gid,
            check=False,
            cwd="/",
        )
        facts["torch_in_worker_env"] = {
            "pid": worker,
            "uid": st.st_uid,
            "rc": p.returncode,
            "out": p.stdout.strip(),
            "err": p.stderr.strip()[-500:],
        }
    rc, doc, err = agent_json(cfg, "doctor", "--json")
    facts["doctor_rc"] = rc
    facts["doctor"] = [c for c in (doc or {}).get("checks", []) if c["id"].startswith(("vllm", "nvml", "topology"))]
    if doc is None:
        facts["doctor_err"] = err
    return facts


def stop_and_check(proc: subprocess.Popen[bytes], vpids: list[int], port: int, baseline_mib: int) -> dict[str, Any]:
    import psutil

    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    out: dict[str, Any] = {"agent_exit": rc, "stop_s": round(time.monotonic() - t0, 2)}
    left = [p for p in vpids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    out["vllm_left"] = left
    # GPU memory: poll (driver teardown is asynchronous) for at most 20 s
    for _ in range(80):
        st = nvml_state()
        used = sum(g["used_mib"] for g in st)
        if not any(g["procs"] for g in st) and used <= baseline_mib + 64:
            break
        time.sleep(0.25)
    out["gpu_after"] = [{"bus_id": g["bus_id"], "used_mib": g["used_mib"], "procs": g["procs"]} for g in st]
    out["gpu_free_s"] = round(time.monotonic() - t0, 2)
    out["gpu_baseline_mib"] = baseline_mib
    out["port_free"] = not port_open(port)
    return out


# -- one case --------------------------------------------------------------------------------------------------
def serve_as_unit(
    a: argparse.Namespace, cfg: str, argv: list[str], env: dict[str, str]
) -> tuple[list[str], dict[str, str], dict[str, Any]]:
    """``serve`` as the serve unit runs it: as the vLLM user, reading a private copy of the config
    (LoadCredential), with RUNTIME_DIRECTORY (the pid file doctor reads) and the user's HOME."""
    import pwd
    import shutil

    pw = pwd.getpwnam(a.serve_user)
    runtime = "/run/vllm-nodeagent-serve"
    os.makedirs(runtime, exist_ok=True)
    os.chown(runtime, pw.pw_uid, pw.pw_gid)
    cred = os.path.join(runtime, "config.toml")
    shutil.copyfile(cfg, cred)
    os.chown(cred, pw.pw_uid, pw.pw_gid)
    os.chmod(cred, 0o400)
    cache = "/var/cache/vllm-nodeagent/" + pw.pw_name  # CacheDirectory=vllm-nodeagent/vllm
    os.makedirs(cache, exist_ok=True)
    os.chown(cache, pw.pw_uid, pw.pw_gid)
    argv = [a if a != cfg else cred for a in argv]
    env = dict(env, RUNTIME_DIRECTORY=runtime, HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name)
    groups = sorted(set(os.getgrouplist(pw.pw_name, pw.pw_gid)))
    return argv, env, {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": groups, "cwd": "/"}


TTS23 = {  # issue 23: case -> (config name, drop the page cache, clear the compile caches)
    # vLLM's first start on a fresh machine: untimed. From a cold page cache: the harness itself has just read
    # every .py (the hashes) and doctor every .pyc header, and what this start has resident at READY is what the
    # agent learns for the next warm-ups (prewarm/learned.py).
    "warmup": ("overlap", True, False),
    "warm": ("plain", False, False),
    "cold": ("plain", True, False),
    "warmup_full": ("full", True, False),
    "warmup_overlap": ("overlap", True, False),
    "warmup_default": ("overlap", True, False),  # the same config as warmup_overlap, after the weights moved
    # [prewarm] stack = false: only the weights, after the imports, at the daemon's own I/O class
    "weights_overlap": ("weights", True, False),
    # [prewarm] stack_learned = true: the stack's learned pages before vLLM starts, then as weights_overlap. Run on
    # 2026-12-03 (6127aa3) with that behaviour in the "overlap" config, before it became a switch (off by default)
    "warmup_learned": ("learned", True, False),
    # [prewarm] io_priority: the weights' read beside vLLM's start behind vLLM's own reads (mq-deadline)
    "weights_idle": ("weights_idle", True, False),
    "weights_low": ("weights_low", True, False),
    # warm restarts with vLLM's debug log / PYTHONPROFILEIMPORTTIME=1: where the time goes, not how long
    "warm_debug": ("plain_debug", False, False),
    "warm_importtime": ("plain_importtime", False, False),
    "compiled_first": ("compiled", True, True),
    "compiled_second": ("compiled", True, False),
    "compiled_first_mega": ("compiled_mega", True, True),  # [vllm.env] VLLM_USE_MEGA_AOT_ARTIFACT = "1"
    "compiled_second_mega": ("compiled_mega", True, False),
}
COMPILE_CACHES = ("vllm", "torchinductor", "triton")


def run_case(case: str, n: int, a: argparse.Namespace, topo: dict[str, Any]) -> dict[str, Any]:
    if a.cfg_dir:
        return run_case23(case, n, a)
    cfg = {
        "warmup": a.launch_cfg,
        "cold": a.launch_cfg,
        "prewarmed": a.launch_cfg,
        "in_start": a.run_cfg,
        "vllm_prefetch": a.prefetch_cfg,
        "compiled": a.compiled_cfg,
    }[case]
    mode = {"in_start": "serve", "compiled": "run"}.get(case, "launch")
    files = model_files(a.model)
    r: dict[str, Any] = {"case": case, "n": n, "mode": mode, "config": os.path.basename(cfg)}
    if case != "warmup":
        drop_caches()
    res, total = resident(files)
    r["model_bytes"] = total
    r["resident_after_drop"] = round(res / total, 4)
    r["mem_before"] = meminfo()
    if case == "prewarmed":
        t = time.monotonic()
        rc, data, err = agent_json(cfg, "prewarm", "--json", timeout=600)
        r["prewarm_wall_s"] = round(time.monotonic() - t, 2)
        r["prewarm_rc"] = rc
        if data:
            r["prewarm"] = {
                k: data.get(k)
                for k in ("files", "total_bytes", "read_bytes", "seconds", "gbps", "resident_after_bytes", "skipped")
            }
        else:
            r["prewarm_err"] = err
    res, _ = resident(files)
    r["resident_at_start"] = round(res / total, 4)
    base = nvml_state()
    baseline = sum(g["used_mib"] for g in base)
    plan = json.loads(
        subprocess.run(
            [*AGENT, "--config", cfg, "launch", "--dry-run", "--json"],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        ).stdout
        or "{}"
    )
    r["plan"] = {k: plan.get(k) for k in ("argv", "gpus", "binding", "cpus", "numa_nodes", "user")}
    r["plan_env"] = {k: v for k, v in (plan.get("env") or {}).items() if k != "PATH"}
    os.makedirs(os.path.join(a.out, "logs"), exist_ok=True)
    logpath = os.path.join(a.out, "logs", f"{case}-{n}.log")
    env = dict(os.environ, NOTIFY_SOCKET=NOTIFY, PYTHONUNBUFFERED="1")
    argv = [*AGENT, "--config", cfg, mode] + (["--layout", "single"] if mode == "run" else [])
    as_user: dict[str, Any] = {}
    if mode == "serve":  # what vllm-nodeagent-serve.service does: User=vllm, a private config copy, a runtime dir
        argv, env, as_user = serve_as_unit(a, cfg, argv, env)
    t0 = time.monotonic()
    notify = NotifyLog(NOTIFY, t0)
    if as_user:
        os.chown(NOTIFY, as_user["user"], as_user["group"])  # the unit's user sends sd_notify
    with open(logpath, "wb") as log:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL, **as_user
        )
        stamper = threading.Thread(target=_stamp, args=(proc, log, t0), daemon=True)
        stamper.start()
        deadline = t0 + a.timeout
        while notify.ready_at is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        r["ready_s"] = round(notify.ready_at, 2) if notify.ready_at is not None else None
        if r["ready_s"] is None:
            r["failed"] = f"no READY=1 (agent exit {proc.poll()}) within {a.timeout}s"
        else:
            ok, what = completion(a.port, a.served_name)
            r["first_completion_s"] = round(time.monotonic() - t0, 2)
            r["completion_ok"], r["completion"] = ok, what
        vpids: list[int] = []
        try:
            import psutil

            vpids = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        except Exception:
            vpids = []
        r["vllm_pids"] = vpids
        checks = a.checks or case in a.checks_on.split(",")
        if checks and r["ready_s"] is not None:
            r["serving"] = serving_facts(proc.pid, cfg, plan, topo)
        r["stop"] = stop_and_check(proc, vpids, a.port, baseline)
        stamper.join(10)
    notify.close()
    r["notify"] = notify.msgs
    ext = [t for t, m in notify.msgs if "EXTEND_TIMEOUT_USEC=" in m]
    r["extend_timeout_count"] = len(ext)
    r["extend_max_gap_s"] = round(max((b - a_ for a_, b in zip(ext, ext[1:])), default=0.0), 2)
    with open(logpath, encoding="utf-8", errors="replace") as fh:
        text = fh.read()
    r["vllm"] = vllm_timings(text)
    r["phases"] = phases(text, r.get("ready_s"))
    ev = agent_events(re.sub(r"^\[t=[\d.]+\] ", "", text, flags=re.M))
    keep = (
        "prewarm_done",
        "vllm_started",
        "vllm_healthy",
        "ready",
        "vllm_args_ok",
        "vllm_args_unchecked",
        "vllm_binding",
        "vllm_binding_mismatch",
        "vllm_stopped",
        "vllm_failed_start",
        "vllm_start_failed",
        "daemon_started",
        "smoke_ok",
        "smoke_failed",
        "vllm_ready",
        "readiness",
    )
    r["agent_events"] = [
        {k: v for k, v in e.items() if k not in ("level",)}
        for e in ev
        if e.get("event") in keep or any(w in str(e.get("event")) for w in ("smoke", "ready", "probe", "prewarm"))
    ]
    r["mem_after"] = meminfo()
    return r


def run_case23(case: str, n: int, a: argparse.Namespace) -> dict[str, Any]:
    """One issue-23 case through the root daemon, timed agent start → READY=1; the phases from the stamped log."""
    import shutil

    name, drop, clear = TTS23[case]
    cfg = os.path.join(a.cfg_dir, f"cfg-{name}.toml")
    files = model_files(a.model)
    r: dict[str, Any] = {"case": case, "n": n, "mode": "run", "config": os.path.basename(cfg)}
    if clear:
        user_cache = os.path.join(a.cache_dir, a.serve_user)
        r["cleared"] = [d for d in COMPILE_CACHES if os.path.isdir(os.path.join(user_cache, d))]
        for d in r["cleared"]:
            shutil.rmtree(os.path.join(user_cache, d))
    if drop:
        drop_caches()
    res, total = resident(files)
    r["model_bytes"] = total
    r["resident_at_start"] = round(res / total, 4) if total else None
    r["mem_before"] = meminfo()
    base = nvml_state()
    baseline = sum(g["used_mib"] for g in base)
    os.makedirs(os.path.join(a.out, "logs"), exist_ok=True)
    logpath = os.path.join(a.out, "logs", f"{case}-{n}.log")
    env = dict(os.environ, NOTIFY_SOCKET=NOTIFY, PYTHONUNBUFFERED="1")
    argv = [*AGENT, "--config", cfg, "run", "--layout", "single"]
    t0 = time.monotonic()
    notify = NotifyLog(NOTIFY, t0)
    with open(logpath, "wb") as log:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL
        )
        stamper = threading.Thread(target=_stamp, args=(proc, log, t0), daemon=True)
        stamper.start()
        deadline = t0 + a.timeout
        while notify.ready_at is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        r["ready_s"] = round(notify.ready_at, 2) if notify.ready_at is not None else None
        if r["ready_s"] is None:
            r["failed"] = f"no READY=1 (agent exit {proc.poll()}) within {a.timeout}s"
        else:
            ok, what = completion(a.port, a.served_name)
            r["first_completion_s"] = round(time.monotonic() - t0, 2)
            r["completion_ok"], r["completion"] = ok, what
        try:
            import psutil

            vpids = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        except Exception:
            vpids = []
        r["vllm_pids"] = vpids
        r["stop"] = stop_and_check(proc, vpids, a.port, baseline)
        stamper.join(10)
    notify.close()
    r["notify"] = notify.msgs
    with open(logpath, encoding="utf-8", errors="replace") as fh:
        text = fh.read()
    r["vllm"] = vllm_timings(text)
    r["phases"] = phases(text, r.get("ready_s"))
    plain = re.sub(r"^\[t=[\d.]+\] ", "", text, flags=re.M)
    r["agent_events"] = [
        {k: v for k, v in e.items() if k != "level"}
        for e in agent_events(plain)
        if any(w in str(e.get("event")) for w in ("prewarm", "vllm_started", "health", "smoke", "ready", "setting"))
    ]
    r["mem_after"] = meminfo()
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--launch-cfg", default="")
    ap.add_argument("--run-cfg", default="")
    ap.add_argument("--cfg-dir", default="", help="issue 23: DIR/cfg-{plain,full,overlap,compiled}.toml")
    ap.add_argument("--cache-dir", default="/var/cache/vllm-nodeagent", help="[agent] cache_dir of those configs")
    ap.add_argument("--compiled-cfg", default="")
    ap.add_argument("--prefetch-cfg", default="")
    ap.add_argument("--cases", required=True, help="comma-separated, run in this order")
    ap.add_argument("--checks", action="store_true", help="part-1 facts while serving (costs ~10 s a case)")
    ap.add_argument("--checks-on", default="", help="comma-separated cases that get the checks (without --checks)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--served-name", default="llama8b-random")
    ap.add_argument("--serve-user", default="vllm", help="the user `serve` runs as (the serve unit's User=)")
    ap.add_argument("--timeout", type=float, default=420)
    ap.add_argument("--budget-s", type=float, default=0, help="skip cases that would start after this many s")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    topo = json.loads(
        subprocess.run(
            [*AGENT, "--config", a.launch_cfg or os.path.join(a.cfg_dir, "cfg-plain.toml"), "topology", "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    t_start = time.monotonic()
    counts: dict[str, int] = {}
    for case in [c for c in a.cases.split(",") if c]:
        if a.budget_s and time.monotonic() - t_start > a.budget_s:
            print(f"== {case}: skipped, the call's time budget ({a.budget_s:.0f}s) is spent", flush=True)
            continue
        counts[case] = counts.get(case, 0) + 1
        n = int(os.environ.get("TTS_ROUND_BASE", "0")) + counts[case]
        print(f"== {case} #{n}", flush=True)
        r = run_case(case, n, a, topo)
        with open(os.path.join(a.out, "results.jsonl"), "a", encoding="utf-8") as fh:
            fh.write(json.dumps(r) + "\n")
        short = {
            k: r.get(k)
            for k in (
                "case",
                "n",
                "resident_at_start",
                "prewarm_wall_s",
                "ready_s",
                "first_completion_s",
                "completion_ok",
                "failed",
            )
        }
        short.update({k: r["vllm"].get(k) for k in ("weights_s", "model_load_s", "init_engine_s", "compile_s")})
        short.update({k: v for k, v in r.get("phases", {}).items() if not k.startswith("at_")})
        short.update({k: r["stop"].get(k) for k in ("agent_exit", "stop_s", "vllm_left", "gpu_free_s", "port_free")})
        print(json.dumps(short), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
