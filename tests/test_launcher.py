"""serving.plan (pure binding rules), vLLM argument checks (static table + the subprocess probe against a fake
vllm package), `launch --dry-run --json`, and doctor_checks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from fakehost import real_accounts
from jsoncontract import check

from vllm_nodeagent.config import VllmConfig
from vllm_nodeagent.host import Host
from vllm_nodeagent.serving import args as vllm_args
from vllm_nodeagent.serving import checks as serving_checks
from vllm_nodeagent.serving import state as serving_state
from vllm_nodeagent.serving.env import LaunchError, RunAs, child_env, resolve_user
from vllm_nodeagent.serving.plan import plan
from vllm_nodeagent.topology import Gpu, NumaNode, Topology

REPO = Path(__file__).resolve().parent.parent
WHO = RunAs("vllm", 999, 999, [999], "/var/lib/vllm", switch=True)
NUMACTL = "/usr/bin/numactl"


def two_socket() -> Topology:
    nodes = [NumaNode(0, list(range(0, 8)), 1 << 30), NumaNode(1, list(range(8, 16)), 1 << 30)]
    gpus = [
        Gpu(
            i,
            f"0000:{i:02x}:00.0",
            0 if i < 2 else 1,
            list(range(0, 8)) if i < 2 else list(range(8, 16)),
            "H100",
            "nvml",
        )
        for i in range(4)
    ]
    return Topology(nodes, gpus, [], [])


def cfg(**kw: object) -> VllmConfig:
    base: dict[str, object] = {"model": "org/model", "args": ["--port", "8000"]}
    base.update(kw)
    return VllmConfig(**base)  # type: ignore[arg-type]


def test_gpus_on_one_node_bind_with_numactl() -> None:
    p = plan(cfg(gpus=[2, 3]), two_socket(), run_as=WHO, numactl=NUMACTL)
    assert p.argv[:3] == [NUMACTL, "--cpunodebind=1", "--membind=1"]
    assert p.argv[3:] == ["vllm", "serve", "org/model", "--port", "8000"]
    assert p.env["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert p.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert p.numa_nodes == [1] and p.cpus == list(range(8, 16)) and p.binding == "numactl"
    assert p.mempolicy == "bind:1"


def test_span_uses_vllm_numa_bind_nodes_when_the_parser_has_it() -> None:
    p = plan(cfg(gpus=[3, 0, 2]), two_socket(), run_as=WHO, numactl=NUMACTL, vllm_numa_bind=lambda: True)
    assert p.argv[0] == "vllm"  # no outer numactl: vLLM would skip its own binding under one
    i = p.argv.index("--numa-bind-nodes")
    assert "--numa-bind" in p.argv
    assert p.argv[i + 1 : i + 4] == ["1", "0", "1"]  # CUDA_VISIBLE_DEVICES order
    assert p.env["CUDA_VISIBLE_DEVICES"] == "3,0,2"
    assert p.env["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"
    assert p.binding == "vllm"


def test_span_without_the_flag_binds_the_union_and_pins_workers() -> None:
    asked: list[bool] = []

    def no() -> bool:
        asked.append(True)
        return False

    p = plan(cfg(), two_socket(), run_as=WHO, numactl=NUMACTL, vllm_numa_bind=no)
    assert asked
    assert p.argv[:3] == [NUMACTL, "--cpunodebind=0,1", "--membind=0,1"]
    assert p.binding == "numactl+pin"
    assert p.pin == {0: list(range(8)), 1: list(range(8)), 2: list(range(8, 16)), 3: list(range(8, 16))}


def test_one_node_never_asks_vllm() -> None:
    def boom() -> bool:
        raise AssertionError("probe must not run when GPUs share a node")

    plan(cfg(gpus=[0, 1]), two_socket(), run_as=WHO, numactl=NUMACTL, vllm_numa_bind=boom)


def test_nodes_override_on_a_gpu_less_host() -> None:
    topo = Topology([NumaNode(0, [0, 1], 1), NumaNode(1, [2, 3], 1)], [], [], [])
    p = plan(cfg(nodes=[1]), topo, run_as=WHO, numactl=NUMACTL)
    assert p.argv[:3] == [NUMACTL, "--cpunodebind=1", "--membind=1"]
    assert "CUDA_VISIBLE_DEVICES" not in p.env
    assert p.cpus == [2, 3]
    with pytest.raises(LaunchError, match="NUMA node 7 not found"):
        plan(cfg(nodes=[7]), topo, run_as=WHO, numactl=NUMACTL)


def test_policies() -> None:
    topo = two_socket()
    p = plan(cfg(numa="interleave"), topo, run_as=WHO, numactl=NUMACTL)
    assert p.argv[:3] == [NUMACTL, "--cpunodebind=0,1", "--interleave=0,1"]
    p = plan(cfg(numa="preferred", gpus=[1]), topo, run_as=WHO, numactl=NUMACTL)
    assert p.argv[:3] == [NUMACTL, "--cpunodebind=0", "--preferred=0"]
    with pytest.raises(LaunchError, match="preferred takes one node"):
        plan(cfg(numa="preferred"), topo, run_as=WHO, numactl=NUMACTL)
    p = plan(cfg(numa="none"), topo, run_as=WHO, numactl=NUMACTL)
    assert p.argv[0] == "vllm" and p.binding == "none" and p.numa_nodes == []


def test_unknown_gpu_is_an_error() -> None:
    with pytest.raises(LaunchError, match="GPU index 9 not found"):
        plan(cfg(gpus=[9]), two_socket(), run_as=WHO, numactl=NUMACTL)


def test_child_env_is_clean() -> None:
    src = {"HOME": "/root", "NOTIFY_SOCKET": "/run/x", "CUDA_CACHE_PATH": "/c", "SECRET": "s", "LANG": "en_US.UTF-8"}
    env = child_env(cfg(env={"HF_HOME": "/hf"}, command=["/opt/venv/bin/vllm", "serve"]), WHO, [1], src)
    assert env["HOME"] == "/var/lib/vllm" and env["USER"] == "vllm"
    assert "NOTIFY_SOCKET" not in env and "SECRET" not in env
    assert env["CUDA_CACHE_PATH"] == "/c" and env["HF_HOME"] == "/hf" and env["LANG"] == "en_US.UTF-8"
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert "TORCHINDUCTOR_CACHE_DIR" not in env  # no cache dir given: nothing invented


def test_child_env_cache_dirs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    me = RunAs("me", os.getuid(), os.getgid(), [], str(home), switch=False)
    env = child_env(cfg(), me, [], {"TRITON_CACHE_DIR": "/x"}, cache_dir="/var/cache/v/me")
    assert env["HOME"] == str(home) and "XDG_CACHE_HOME" not in env  # a usable home is kept (HF cache there)
    assert env["TORCHINDUCTOR_CACHE_DIR"] == "/var/cache/v/me/torchinductor"
    assert env["VLLM_CACHE_ROOT"] == "/var/cache/v/me/vllm"
    assert env["TRITON_CACHE_DIR"] == "/var/cache/v/me/triton"  # not passed through from the agent's env
    env = child_env(cfg(env={"VLLM_CACHE_ROOT": "/op"}), WHO, [], {}, cache_dir="/c")  # /var/lib/vllm: absent
    assert env["HOME"] == "/c" and env["XDG_CACHE_HOME"] == "/c/.cache"
    assert env["VLLM_CACHE_ROOT"] == "/op"  # the operator's [vllm] env wins


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_prepare_cache_dir_owned_by_the_user_and_refuses_links(tmp_path: Path) -> None:
    from vllm_nodeagent.serving.env import prepare_cache_dir

    who = resolve_user("nobody", Host("/"))
    path = prepare_cache_dir(Host(tmp_path), "/var/cache/vna", who)
    st = os.stat(path)
    assert path == str(tmp_path / "var/cache/vna/nobody")
    assert (st.st_uid, st.st_mode & 0o777) == (who.uid, 0o700)
    assert prepare_cache_dir(Host(tmp_path), "/var/cache/vna", who) == path  # idempotent
    os.rmdir(path)
    os.symlink("/etc", path)
    with pytest.raises(LaunchError, match="not a directory"):
        prepare_cache_dir(Host(tmp_path), "/var/cache/vna", who)
    assert os.stat("/etc").st_uid == 0


# -- vLLM argument checks ---------------------------------------------------------------------------------------
def test_static_findings() -> None:
    found = vllm_args.static_findings(["--speculative_model=x", "--enforce-eager", "--swap-space", "4", "--port", "1"])
    assert [(f.flag, f.kind) for f in found] == [
        ("--speculative-model", "removed"),
        ("--enforce-eager", "risky"),
        ("--swap-space", "removed"),
    ]


def test_resolve_python_from_shebang(tmp_path: Path) -> None:
    direct = tmp_path / "vllm"
    direct.write_text(f"#!{sys.executable}\nprint()\n")
    direct.chmod(0o755)
    assert vllm_args.resolve_python([str(direct), "serve"]) == (sys.executable, "")
    via_env = tmp_path / "vllm2"
    via_env.write_text("#!/usr/bin/env python3\n")
    via_env.chmod(0o755)
    interp, _ = vllm_args.resolve_python([str(via_env)], path_env=os.path.dirname(sys.executable))
    assert interp and os.path.basename(interp).startswith("python")
    binary = tmp_path / "vllm3"
    binary.write_bytes(b"\x7fELF")
    binary.chmod(0o755)
    interp, why = vllm_args.resolve_python([str(binary)])
    assert interp == "" and "no #! line" in why
    assert vllm_args.resolve_python(["no-such-vllm-cmd"], path_env=str(tmp_path))[1].endswith("not found on PATH")


FAKE_CLI_ARGS = """
def make_arg_parser(parser):
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--speculative-config")
    parser.add_argument("--numa-bind", action="store_true")
    parser.add_argument("--numa-bind-nodes", type=int, nargs="+")
    return parser
"""


PERMISSIVE_CLI_ARGS = """
def make_arg_parser(parser):
    parser.parse_args = lambda args=None, ns=None: parser.parse_known_args(args, ns)[0]
    return parser
"""


def fake_vllm_site(base: Path, home: str = "entrypoints/openai", cli_args: str = FAKE_CLI_ARGS) -> str:
    """A fake ``vllm`` package whose serve parser lives at ``vllm/<home>/cli_args.py``; world-readable (the probe
    may run as nobody). Returns the directory for PYTHONPATH."""
    site = base / "site"
    pkg = site / "vllm"
    (pkg / home).mkdir(parents=True)
    (pkg / "utils").mkdir()
    (pkg / "__init__.py").write_text('__version__ = "0.99.0"\n')
    for d in [pkg / "entrypoints", *(pkg / home).parents]:
        if d.is_relative_to(pkg / "entrypoints"):
            (d / "__init__.py").write_text("")
    (pkg / home / "__init__.py").write_text("")
    (pkg / home / "cli_args.py").write_text(textwrap.dedent(cli_args))
    (pkg / "utils" / "__init__.py").write_text("")
    (pkg / "utils" / "argparse_utils.py").write_text(
        "import argparse\nclass FlexibleArgumentParser(argparse.ArgumentParser):\n    pass\n"
    )
    for d in site.rglob("*"):
        d.chmod(0o755 if d.is_dir() else 0o644)
    site.chmod(0o755)
    return str(site)


def fake_vllm(tmp_path: Path, home: str = "entrypoints/openai") -> dict[str, str]:
    return {"PYTHONPATH": fake_vllm_site(tmp_path, home), "PATH": os.environ.get("PATH", "")}


@pytest.mark.parametrize("home", ["entrypoints/openai", "entrypoints/launchers", "entrypoints/serve/v2"])
def test_probe_with_vllms_own_parser(tmp_path: Path, home: str) -> None:
    env = fake_vllm(tmp_path, home)  # the known homes, and one the probe has to search for
    ok = vllm_args.probe(sys.executable, ["--port", "9000"], env=env)
    assert ok.available and ok.error == "" and ok.version == "0.99.0", ok
    assert ok.parser == "vllm." + home.replace("/", ".") + ".cli_args"
    assert ok.accepts_flag("--numa-bind-nodes")
    bad = vllm_args.probe(sys.executable, ["--port", "9000", "--speculative-model", "x"], env=env)
    assert bad.available and "--speculative-model" in bad.error


def test_probe_without_vllm_is_a_skip_with_reason(tmp_path: Path) -> None:
    r = vllm_args.probe(sys.executable, ["--port", "1"], env={"PATH": "/usr/bin", "PYTHONPATH": str(tmp_path)})
    assert not r.available and "not importable" in r.reason
    assert not r.accepts_flag("--numa-bind-nodes")


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_probe_runs_as_the_vllm_user_never_root(tmp_path: Path) -> None:
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 that nobody can execute")
    base = Path(tempfile.mkdtemp(prefix="vna-probe-"))
    try:
        base.chmod(0o755)
        site = fake_vllm_site(base)
        # vLLM's own code (its package __init__) records who imported it
        (base / "w").mkdir(mode=0o777)
        (base / "w").chmod(0o777)
        marker = base / "w" / "uid"
        init = Path(site) / "vllm" / "__init__.py"
        init.write_text(init.read_text() + f"import os\nopen({str(marker)!r}, 'w').write(str(os.getuid()))\n")
        who = resolve_user("nobody", Host("/"))
        r = vllm_args.probe(python, ["--port", "1"], env={"PATH": "/usr/bin", "PYTHONPATH": site}, run_as=who)
        assert r.available and r.error == "", r
        assert r.uid == who.uid != 0
        assert marker.read_text() == str(who.uid)
        assert marker.stat().st_uid == who.uid  # what vLLM creates belongs to its user, not root
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- the CLI ------------------------------------------------------------------------------------------------------
def run_cli(
    args: list[str],
    tmp_path: Path,
    config: str,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    cfg_file = tmp_path / "config.toml"
    cfg_file.write_text(config)
    cfg_file.chmod(0o600)
    root = tmp_path / "root"
    node = root / "sys/devices/system/node/node0"
    node.mkdir(parents=True, exist_ok=True)
    (node / "cpulist").write_text("0-1\n")
    if not (root / "etc/passwd").exists():  # a test's own accounts stay; else root and the machine's nobody
        real_accounts(root, "nobody")
    full = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "vllm_nodeagent.cli",
            "--root",
            str(root),
            "--config",
            str(cfg_file),
            "--log-format",
            "json",
            *args,
        ],
        capture_output=True,
        text=True,
        env=full,
        timeout=60,
    )


@pytest.mark.skipif(not shutil.which("numactl"), reason="numactl not installed")
def test_launch_dry_run_json(tmp_path: Path) -> None:
    conf = textwrap.dedent(f"""
        [vllm]
        command = ["{sys.executable}", "-m", "vllm.entrypoints.openai.api_server"]
        model = "org/m"
        args = ["--enforce-eager"]
        nodes = [0]
        user = "root"
        """)
    r = run_cli(["launch", "--dry-run", "--json"], tmp_path, conf)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) >= {"argv", "env", "numa_nodes", "cpus"}
    assert out["argv"][1:3] == ["--cpunodebind=0", "--membind=0"] and out["argv"][0].endswith("numactl")
    assert out["argv"][-3:] == ["--model", "org/m", "--enforce-eager"]
    assert out["numa_nodes"] == [0] and out["cpus"] == "0-1" and out["cpus_count"] == 2
    check(out, "launch")
    assert out["env"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert "vllm_arg_risky" in r.stderr  # --enforce-eager is logged


def test_launch_with_nothing_to_launch_is_a_usage_error(tmp_path: Path) -> None:
    r = run_cli(["launch", "--dry-run"], tmp_path, '[vllm]\nmodel = ""\n')
    assert r.returncode == 2 and r.stderr.startswith("vllm-nodeagent: launch: nothing to launch: set [vllm] model")
    assert r.stderr.count("\n") == 1  # one plain line, not a JSON log event


def test_launch_rejects_args_vllm_refuses(tmp_path: Path) -> None:
    env = fake_vllm(tmp_path)
    conf = textwrap.dedent(f"""
        [vllm]
        command = ["{sys.executable}", "-m", "vllm.entrypoints.openai.api_server"]
        model = "org/m"
        args = ["--swap-space", "4"]
        numa = "none"
        user = "root"
        [vllm.env]
        PYTHONPATH = "{env["PYTHONPATH"]}"
        """)
    r = run_cli(["launch", "--dry-run", "--json"], tmp_path, conf)
    assert r.returncode == 1
    assert "rejects [vllm] args" in r.stderr and "--swap-space" in r.stderr


def test_doctor_checks(tmp_path: Path) -> None:
    from vllm_nodeagent.config import AgentConfig, Config
    from vllm_nodeagent.context import Context

    state = tmp_path / "state"
    state.mkdir()
    vcfg = VllmConfig(
        model="m", user="root", args=["--speculative-model", "x"], command=[sys.executable, "-c", ""], nodes=[0]
    )
    ctx = Context(Host("/"), Config(path="t", agent=AgentConfig(state_dir=str(state)), vllm=vcfg), None, "json")
    topo = Topology([NumaNode(0, sorted(os.sched_getaffinity(0)), 1)], [], [], [])
    checks = {c.id: c.to_json() for c in serving_checks.doctor_checks(ctx, topo)}
    assert checks["vllm.user"]["status"] == "warn"  # root
    assert checks["vllm.args.speculative-model"]["status"] == "fail"
    assert checks["vllm.args"]["status"] == "skip" and "not importable" in checks["vllm.args"]["hint"]
    assert checks["vllm.binding"]["status"] == "skip"
    # A live process bound as planned passes; one without the binding fails.
    numactl = shutil.which("numactl")
    if numactl:
        for cmd, want in (
            ([numactl, "--cpunodebind=0", "--membind=0", "sleep", "30"], "pass"),
            (["sleep", "30"], "fail"),
        ):
            proc = subprocess.Popen(cmd)
            try:
                (state / "vllm.pid").write_text(f"{proc.pid}\n")
                import time

                for _ in range(100):  # until numactl has exec'd sleep
                    if Path(f"/proc/{proc.pid}/exe").resolve().name == "sleep":
                        break
                    time.sleep(0.02)
                got = {c.id: c.to_json() for c in serving_checks.doctor_checks(ctx, topo)}["vllm.binding"]
                assert got["status"] == want, got
            finally:
                proc.kill()
                proc.wait()


def test_doctor_reads_the_daemons_plan_instead_of_replanning(tmp_path: Path) -> None:
    """binding = "vllm" (vLLM binds its own workers): a re-plan with defaults would expect numactl and FAIL."""
    from vllm_nodeagent.config import AgentConfig, Config
    from vllm_nodeagent.context import Context

    state = tmp_path / "state"
    state.mkdir()
    vcfg = VllmConfig(model="m", user="root", command=[sys.executable, "-c", ""], nodes=[0])
    ctx = Context(Host("/"), Config(path="t", agent=AgentConfig(state_dir=str(state)), vllm=vcfg), None, "json")
    topo = Topology([NumaNode(0, sorted(os.sched_getaffinity(0)), 1)], [], [], [])
    proc = subprocess.Popen(["sleep", "30"])  # unbound, like vLLM's API server under --numa-bind
    try:
        (state / "vllm.pid").write_text(f"{proc.pid}\n")
        replanned = {c.id: c.to_json() for c in serving_checks.doctor_checks(ctx, topo)}["vllm.binding"]
        if shutil.which("numactl"):
            assert replanned["status"] == "fail" and "re-plan" in replanned["desired"]
        chosen = plan(cfg(nodes=[0]), topo, run_as=WHO, numactl=NUMACTL)
        chosen.binding, chosen.mempolicy = "vllm", "default"
        chosen.uid = os.getuid()  # the plan records who vLLM runs as: doctor audits only that process
        serving_state.write_plan_file(str(state), chosen, proc.pid)
        got = {c.id: c.to_json() for c in serving_checks.doctor_checks(ctx, topo)}["vllm.binding"]
        assert got["status"] == "pass" and "binding vllm, from the daemon's plan" in got["desired"], got
        assert "env" not in json.loads((state / serving_state.PLAN_FILE).read_text())  # no secrets on disk
        serving_state.write_plan_file(str(state), chosen, proc.pid + 1)  # another pid's plan is not ours
        assert serving_state.read_plan_file(str(state), proc.pid) is None
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_doctor_probe_before_the_first_launch_gets_a_scratch_cache(tmp_path: Path) -> None:
    """Seen on the H100: before the first launch the cache dir does not exist, vLLM's import tries to create it as
    the vLLM user and fails, and doctor's vllm.args said SKIP while launch's probe passed. Doctor creates nothing,
    so the probe runs with a scratch cache dir that is gone afterwards."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 that nobody can execute")
    base = Path(tempfile.mkdtemp(prefix="vna-doctor-probe-"))
    try:
        base.chmod(0o755)
        site = fake_vllm_site(base)
        init = Path(site) / "vllm" / "__init__.py"  # vLLM creates its cache root at import, as the real one does
        init.write_text(init.read_text() + "import os\nos.makedirs(os.environ['VLLM_CACHE_ROOT'], exist_ok=True)\n")
        conf = textwrap.dedent(f"""
            [agent]
            cache_dir = "/var/cache/vna-test"
            [vllm]
            command = ["{python}", "-m", "vllm.entrypoints.openai.api_server"]
            model = "org/m"
            user = "nobody"
            [vllm.env]
            PYTHONPATH = "{site}"
            """)
        before = set(Path(tempfile.gettempdir()).glob("vllm-nodeagent-probe-*"))
        r = run_cli(["doctor", "--json"], base, conf)
        checks = {c["id"]: c for c in json.loads(r.stdout)["checks"]}
        assert checks["vllm.args"]["status"] == "pass", checks["vllm.args"]
        assert not (base / "root" / "var/cache/vna-test").exists()  # doctor created no cache dir
        assert set(Path(tempfile.gettempdir()).glob("vllm-nodeagent-probe-*")) == before  # the scratch is gone
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_probe_that_hangs_is_a_one_line_skip(tmp_path: Path) -> None:
    """The probe goes through the one subprocess helper: a hung interpreter costs the timeout and one line."""
    hang = tmp_path / "python"
    hang.write_text("#!/bin/sh\nexec sleep 30\n")
    hang.chmod(0o755)
    r = vllm_args.probe(str(hang), ["--port", "1"], env={"PATH": "/usr/bin:/bin"}, timeout=0.5)
    assert not r.available and r.reason.startswith("python -c ") and r.reason.endswith("no answer in 0.5 s (killed)")
    assert "\n" not in r.reason and len(r.reason) < 120
