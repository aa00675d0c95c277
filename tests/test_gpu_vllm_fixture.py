"""Replays the real-vLLM runs on the lent H100 (tests/gpu/h100-2026-11-25-vllm and its re-run -r2, issue 17)
without a GPU.

What was recorded there — the launch plan, each vLLM process's binding and environment, the GPU NVML showed
each vLLM process on, torch's bus id in the worker's own environment, the loader's view of the driver
libraries, vLLM 0.26's own log lines — is fed back through the agent's code: a change that would plan, check or
parse differently from what the real machine showed fails here.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from nvml_double import NvmlDouble

from vllm_nodeagent.config import load_config
from vllm_nodeagent.host import Host
from vllm_nodeagent.nvml import Nvml
from vllm_nodeagent.serving import driver_libs
from vllm_nodeagent.serving.binding import binding_mismatches
from vllm_nodeagent.serving.env import RunAs
from vllm_nodeagent.serving.plan import plan
from vllm_nodeagent.topology import discover

GPU = Path(__file__).parent / "gpu"
RUN = GPU / "h100-2026-11-25-vllm"
RUN2 = GPU / "h100-2026-11-25-vllm-r2"  # the re-run: (c) after the prewarm fix, doctor before the first launch
RUNS = (RUN, RUN2)
H100 = GPU / "h100-2026-11-25"  # the same machine kind's sysfs, recorded by issue 7


def _module(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, GPU / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def rows(run: Path = RUN) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines() if line.strip()]


def all_rows() -> list[tuple[Path, dict[str, Any]]]:
    return [(run, r) for run in RUNS for r in rows(run)]


def _bus(bus_id: str) -> tuple[int, int, int, int]:
    """NVML's 00000000:00:06.0, sysfs's 0000:00:06.0 and torch's 00000000:00:06.0 as one comparable value."""
    dom, bus, rest = bus_id.split(":")
    dev, fn = rest.split(".")
    return int(dom, 16), int(bus, 16), int(dev, 16), int(fn, 16)


def _replayed_plan(tmp_path: Path) -> Any:
    """The plan the agent makes for the recorded config on the replayed H100 (as the recorded vllm user)."""
    dry = json.loads((RUN / "launch-dry-run.json").read_text())
    env = dry["env"]
    cmd = dry["argv"][3:6]  # numactl --cpunodebind=0 --membind=0 | python -m module
    cfg_text = (
        f'[vllm]\ncommand = {json.dumps(cmd)}\nmodel = "/var/tmp/llama8b"\n'
        f'args = {json.dumps(dry["argv"][8:])}\nuser = "vllm"\n[vllm.env]\n'
        + "".join(
            f'{k} = "{env[k]}"\n'
            for k in (
                "PYTHONPATH",
                "LD_LIBRARY_PATH",
                "VLLM_USE_FLASHINFER_SAMPLER",
                "HF_HUB_OFFLINE",
                "VLLM_NO_USAGE_STATS",
            )
        )
    )
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(cfg_text)
    cfg_path.chmod(0o600)
    cfg = load_config(str(cfg_path), None).vllm
    assert cfg is not None
    topo = discover(Host(H100 / "root"), Nvml.open(lambda: NvmlDouble.from_file(H100 / "nvml.json")))
    who = RunAs("vllm", 999, 999, [999, 44], env["HOME"], switch=True)
    return (
        dry,
        topo,
        plan(cfg, topo, run_as=who, numactl=dry["argv"][0], source_env={}, cache_dir="/var/cache/vllm-nodeagent/vllm"),
    )


def test_plan_replayed_on_the_h100_topology_is_what_launch_ran(tmp_path: Path) -> None:
    dry, _, p = _replayed_plan(tmp_path)
    assert p.argv == dry["argv"]
    # (HOME is left out: it depends on whether the user's home exists on the machine replaying this)
    for key in (
        "CUDA_VISIBLE_DEVICES",
        "CUDA_DEVICE_ORDER",
        "PYTHONPATH",
        "LD_LIBRARY_PATH",
        "TORCHINDUCTOR_CACHE_DIR",
        "TRITON_CACHE_DIR",
        "VLLM_CACHE_ROOT",
    ):
        assert p.env[key] == dry["env"][key], key
    assert (p.binding, p.numa_nodes, p.cpus, p.gpus) == (dry["binding"], dry["numa_nodes"], dry["cpus"], dry["gpus"])


@pytest.mark.parametrize(
    "run,row",
    [(run, r) for run, r in all_rows() if r.get("serving")],
    ids=lambda x: x.name if isinstance(x, Path) else f"{x['case']}-{x['n']}",
)
def test_every_real_vllm_process_is_bound_and_on_the_planned_gpu(
    tmp_path: Path, run: Path, row: dict[str, Any]
) -> None:
    dry, topo, p = _replayed_plan(tmp_path)
    if run == RUN2:
        assert row["plan"]["argv"] == dry["argv"]  # the re-run launched what the first run's dry run planned
    procs = row["serving"]["procs"]
    assert {q["name"] for q in procs} >= {"python3", "VLLM::EngineCore"}  # API server, its helper, the engine
    assert all(q["uids"][0] == 999 for q in procs)  # the unprivileged vllm user, never root
    assert binding_mismatches(p, procs) == []  # doctor's live check, on what /proc said there
    wrong = [dict(procs[0], mempolicy="default"), *procs[1:]]
    assert binding_mismatches(p, wrong) != []  # and the same check does catch an unbound process
    planned = {_bus(g.pci_bus_id) for g in topo.gpus if g.index in p.gpus}
    on_gpu = {_bus(b) for b, pids in row["serving"]["vllm_pids_by_bus_id"].items() if pids}
    assert on_gpu == planned  # NVML: the vLLM engine's pid runs on the plan's GPU, and on no other
    torch_view = json.loads(row["serving"]["torch_in_worker_env"]["out"])
    assert {_bus(torch_view["bus"])} == planned and torch_view["count"] == len(p.gpus)
    api = next(q for q in procs if "api_server" in q["cmd"])
    assert (api["CUDA_VISIBLE_DEVICES"], api["CUDA_DEVICE_ORDER"]) == ("0", "PCI_BUS_ID")
    doctor = {c["id"]: c["status"] for c in row["serving"]["doctor"]}
    assert doctor["vllm.binding"] == doctor["vllm.args"] == doctor["vllm.driver_libs"] == "pass"
    if "gpu_files_by_bus_id" in row["serving"]:  # the re-run: /dev/nvidiaN each vLLM process held, by the driver
        held = row["serving"]["gpu_files_by_bus_id"]
        assert {_bus(b) for b, pids in held.items() if pids} == planned
        engine = [q["pid"] for q in procs if q["name"] == "VLLM::EngineCore"]
        assert engine and set(engine) <= {pid for pids in held.values() for pid in pids}


def _events(row: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [e for e in row["agent_events"] if e["event"] == name]


@pytest.mark.parametrize("row", [r for r in rows(RUN2) if r["case"] == "in_start"], ids=lambda r: str(r["n"]))
def test_prewarm_in_start_read_the_checkpoint_the_kernel_hid_from_the_vllm_user(row: dict[str, Any]) -> None:
    """(c) of the re-run: `serve` as uid 999 could not see the root-owned checkpoint's residency, read it in full."""
    (hidden,) = _events(row, "prewarm.residency_hidden")
    (done,) = _events(row, "prewarm.done")
    assert hidden["uid"] == 999 and hidden["files"] == done["files"]
    assert done["resident_before_bytes"] == 0 < row["model_bytes"] <= done["resident_after_bytes"]
    assert "hidden for" in done["method"] and row["resident_at_start"] == 0.0
    report = _module("tts_report")
    assert report.prewarm_s(row) is not None and report.prewarm_s(row) > 1  # STATUS=prewarming lasted, not 0.2 s


def test_doctor_before_the_first_launch_agrees_with_the_launch_probe() -> None:
    """Before vLLM ever ran, doctor's probe (a scratch cache dir) gave the verdict launch's own probe and doctor
    while serving gave later: same vLLM version, pass."""
    first = {c["id"]: c for c in json.loads((RUN2 / "doctor-first.json").read_text())["checks"]}
    assert first["vllm.args"]["status"] == "pass"
    probe = [json.loads(line) for line in (RUN2 / "doctor-first.err").read_text().splitlines() if line.strip()]
    assert [(e["event"], e["uid"]) for e in probe] == [("vllm_probe_ran", 999)]
    warmup = next(r for r in rows(RUN2) if r["case"] == "warmup")
    (launch_probe,) = _events(warmup, "vllm_probe_ran")
    (ok,) = _events(warmup, "vllm_args_ok")
    assert probe[0]["version"] == launch_probe["version"] == ok["version"]
    assert first["vllm.args"]["current"] == f"vLLM {ok['version']}"
    serving = {c["id"]: c for c in warmup["serving"]["doctor"]}
    assert (serving["vllm.args"]["status"], serving["vllm.args"]["current"]) == ("pass", first["vllm.args"]["current"])


def test_vllm_timings_parse_the_recorded_vllm_026_logs() -> None:
    tts = _module("time_to_serve")
    for run, r in all_rows():
        text = (run / "logs" / f"{r['case']}-{r['n']}.txt").read_text()
        assert tts.vllm_timings(text) == r["vllm"], f"{r['case']}-{r['n']}"
        assert {"weights_s", "model_load_s", "init_engine_s"} <= set(r["vllm"])


def test_driver_libs_check_agrees_with_the_real_loader(tmp_path: Path) -> None:
    """The H100's /etc/ld.so.conf and where its driver libraries are, rebuilt: the check's verdict for vLLM's clean
    environment must match what dlopen did there (both loaded: the image registers /usr/local/nvidia/lib64)."""
    rec = json.loads((RUN / "ldso.json").read_text())
    for path, text in rec["conf_files"].items():
        (tmp_path / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path.lstrip("/")).write_text(text)
    for lib, dirs in rec["lib_dirs"].items():
        for d in dirs:
            (tmp_path / d.lstrip("/")).mkdir(parents=True, exist_ok=True)
            (tmp_path / d.lstrip("/") / lib).write_text("")
    host = Host(tmp_path)
    loads = all(v == "loads" for v in rec["dlopen_clean_env"].values())
    v = driver_libs.check(host, {}, {"LD_LIBRARY_PATH": rec["ld_library_path"]})
    assert (v.status == "pass") == loads
    assert v.__dict__ == rec["check_clean_env"]
    # the same host without the ld.so.conf.d entry: only the agent's LD_LIBRARY_PATH names the directory
    for name in list(rec["conf_files"]):
        if "/usr/local/nvidia/lib64" in rec["conf_files"][name] and name != "/etc/ld.so.conf":
            (tmp_path / name.lstrip("/")).unlink()
    for d in ("/lib", "/usr/lib"):
        for lib in driver_libs.DRIVER_LIBS:
            (tmp_path / d.lstrip("/") / lib).unlink(missing_ok=True)
    v = driver_libs.check(host, {}, {"LD_LIBRARY_PATH": rec["ld_library_path"]})
    assert v.status == "fail" and 'LD_LIBRARY_PATH = "/usr/local/nvidia/lib' in v.hint


@pytest.mark.parametrize("run", RUNS, ids=lambda r: r.name)
def test_the_fixture_readme_table_is_what_the_results_say(run: Path) -> None:
    report = _module("tts_report")
    assert report.table(rows(run)) in (run / "README.md").read_text()
