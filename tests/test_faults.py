"""The trust core under faults (issue #13): each class of fault asserts the message, the exit code, and that the
host and the journal are intact.

The tmpfs sweep mounts a real tmpfs (root only) as the state dir of a fake host tree, so "full" is the kernel's
ENOSPC and short writes, not a simulation.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest
from conftest import requires_root
from fakehost import FakeHost, SysfsHost

from vllm_nodeagent import cli
from vllm_nodeagent.commands.apply import render_outcome
from vllm_nodeagent.config import SysctlSetting
from vllm_nodeagent.settings import engine, restore
from vllm_nodeagent.settings.journal import JOURNAL_NAME, Journal, JournalError
from vllm_nodeagent.settings.sysctl import Sysctl

STATE = "/var/lib/vllm-nodeagent"
PAGE = os.sysconf("SC_PAGE_SIZE")
CONFIG = f"""
[agent]
state_dir = "{STATE}"
[sysctl]
"vm.max_map_count" = 262144
"net.core.rmem_max" = 134217728
"net.core.wmem_max" = 134217728
"net.ipv4.tcp_rmem" = "4096 87380 134217728"
"net.ipv4.tcp_wmem" = "4096 65536 134217728"
"vm.swappiness" = {{ value = 10, mode = "exact" }}
[cpu]
governor = "performance"
[irq]
irqbalance = "ignore"
affinity = true
"""


def small_host(root: Path) -> FakeHost:
    h = FakeHost(root)
    h.cpus(4)
    h.numa_node(0, [0, 1], 1024)
    h.numa_node(1, [2, 3], 1024)
    h.gpu("0000:17:00.0", 0, [0, 1], irqs=(40, 41))
    h.gpu("0000:65:00.0", 1, [2, 3], irqs=(50,))
    h.cpufreq(4, "powersave")
    h.default_sysctls()
    h.sysctl("vm.swappiness", "60")
    return h


def snapshot(root: Path) -> dict[str, bytes]:
    """Every host file except the state dir and the config, byte for byte (a kernel attribute reads back with a
    trailing newline whatever was written: compared without it)."""
    state = root / STATE.lstrip("/")
    return {
        str(p.relative_to(root)): p.read_bytes().rstrip(b"\n")
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink() and state not in p.parents and p.name != "cfg.toml"
    }


def run(root: Path, capsys: pytest.CaptureFixture[str], *args: str, config: str = CONFIG) -> tuple[int, str, str]:
    cfg = root / "cfg.toml"
    cfg.write_text(config)
    cfg.chmod(0o600)
    rc = cli.main(["--root", str(root), "--config", str(cfg), *args], host_cls=SysfsHost)
    out, err = capsys.readouterr()
    return rc, out, err


def results(out: str) -> dict[str, dict[str, str]]:
    return {r["id"]: r for r in json.loads(out)["results"]}


def journal_file(root: Path) -> Path:
    return root / STATE.lstrip("/") / JOURNAL_NAME


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    return small_host(tmp_path / "root")


# --- class 1: torn journal ---------------------------------------------------------------------------------
@pytest.fixture
def tmpfs_state(host: FakeHost) -> Iterator[Callable[[int], Path]]:
    """mount(pages): a real tmpfs of that size as the host's state dir; unmounted whatever happens."""
    mounted: list[Path] = []
    target = host.root / STATE.lstrip("/")
    target.mkdir(parents=True, exist_ok=True)

    def mount(pages: int) -> Path:
        while mounted:
            subprocess.run(["umount", str(mounted.pop())], check=True)
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={pages * PAGE},mode=0700", "tmpfs", str(target)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        mounted.append(target)
        return target

    yield mount
    while mounted:
        subprocess.run(["umount", str(mounted.pop())], check=True)


@requires_root
def test_tmpfs_sweep_full_to_ample_apply_then_revert(
    host: FakeHost, tmpfs_state: Callable[[int], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A state fs of every size from full to ample: a setting is changed only once its original is on disk;
    revert then leaves the host byte-for-byte as it began."""
    # Many IRQs per GPU make the journal span several pages, so the sweep also meets part-journaled states.
    host.gpu("0000:31:00.0", 0, [0, 1], irqs=tuple(range(100, 228)))
    host.gpu("0000:71:00.0", 1, [2, 3], irqs=tuple(range(300, 428)))
    original = snapshot(host.root)
    seen_not_changed = False
    seen_partial = False
    pages = 1
    while True:
        state = tmpfs_state(pages)
        if pages == 1:
            # Full: a filler takes the one page, so not even the first journal write fits.
            (state / "filler").write_bytes(b"x" * PAGE)
        rc, out, err = run(host.root, capsys, "apply", "--json")
        res = results(out)
        assert "Traceback" not in err
        statuses = {r["status"] for r in res.values()}
        assert statuses <= {"changed", "not-changed", "ok"}, (pages, res)
        refused = [r for r in res.values() if r["status"] == "not-changed"]
        for r in refused:
            assert "cannot write the journal" in r["detail"] and "No space left" in r["detail"], r
        assert rc == (1 if refused else 0)
        # Every setting not changed is exactly as it was; every setting changed has its original in the journal.
        entries = Journal(SysfsHost(host.root), STATE).entries() if journal_file(host.root).exists() else {}
        for r in res.values():
            if r["status"] == "changed":
                assert entries[r["id"]].original.split() == (r["previous"] or "").split()
        seen_not_changed |= bool(refused)
        seen_partial |= bool(refused) and len(refused) < len(res)
        rc, out, err = run(host.root, capsys, "revert")
        assert rc == 0 and "Traceback" not in err, (pages, out, err)
        assert snapshot(host.root) == original, f"host not restored with a {pages}-page state fs"
        assert not journal_file(host.root).exists()
        if not refused and pages > 1:
            break  # ample: everything was journaled and changed
        pages += 1
        assert pages < 64, "apply never had room"
    assert seen_not_changed and seen_partial and pages >= 3


# --- class 2: revert restores only what the agent wrote -----------------------------------------------------
def test_revert_leaves_a_value_the_operator_changed_since(host: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    host.sysctl("vm.max_map_count", "300000")  # already above the floor: found compliant, never written
    host.sysctl("net.core.rmem_max", "212992")
    rc, out, _ = run(host.root, capsys, "apply")
    assert rc == 0
    assert "changed      sysctl.net.core.rmem_max  212992 → 134217728" in out
    # The operator raises both by hand afterwards.
    host.sysctl("vm.max_map_count", "8249672")
    host.sysctl("net.core.rmem_max", "268435456")
    rc, out, _ = run(host.root, capsys, "revert")
    assert rc == 0
    assert (host.root / "proc/sys/vm/max_map_count").read_text().strip() == "8249672"
    assert (host.root / "proc/sys/net/core/rmem_max").read_text().strip() == "268435456"
    assert "untouched    sysctl.vm.max_map_count" in out
    assert "left         sysctl.net.core.rmem_max  268435456  (changed by someone else since apply" in out
    assert "left as is" in out
    # Settings the agent wrote and nobody touched are restored, with what was overwritten shown.
    assert "restored     sysctl.vm.swappiness  10 → 60" in out
    assert not journal_file(host.root).exists()


def test_drift_reapply_keeps_the_first_original_and_revert_restores_it(host: FakeHost) -> None:
    h = SysfsHost(host.root)
    journal = Journal(h, STATE)
    t = Sysctl.from_setting(h, SysctlSetting("vm.max_map_count", "262144", "floor"))
    host.sysctl("vm.max_map_count", "300000")
    assert engine.apply_one(t, journal).status == engine.OK  # found compliant
    host.sysctl("vm.max_map_count", "1000")  # drift
    o = engine.apply_one(t, journal)
    assert (o.status, o.previous, o.current) == (engine.CHANGED, "1000", "262144")
    entry = journal.entries()["sysctl.vm.max_map_count"]
    assert (entry.original, entry.written) == ("300000", "262144")  # the drift is not an original
    [r] = restore.revert(h, journal)
    assert r.status == engine.RESTORED and r.previous == "262144"
    assert (host.root / "proc/sys/vm/max_map_count").read_text().strip() == "300000"


# --- class 3: a damaged journal ----------------------------------------------------------------------------
def applied(host: FakeHost, capsys: pytest.CaptureFixture[str]) -> list[str]:
    rc, _, _ = run(host.root, capsys, "apply")
    assert rc == 0
    return journal_file(host.root).read_text().splitlines()


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda e: {k: v for k, v in e.items() if k != "original"}, id="missing-key"),
        pytest.param(lambda e: {**e, "original": 65530}, id="int-for-string"),
        pytest.param(lambda e: {**e, "params": {"name": [[[[1]]]]}}, id="nested-params"),
        pytest.param(lambda e: "[" * 100000 + "]" * 100000, id="recursion-bomb"),
        pytest.param(lambda e: {**e, "family": "file", "params": {"path": "/etc/shadow"}}, id="file-write-primitive"),
        pytest.param(lambda e: {**e, "params": {"name": "vm.../../../etc/passwd"}}, id="path-escape"),
        pytest.param(lambda e: {**e, "id": "sysctl.kernel.modprobe"}, id="id-not-its-params"),
    ],
)
def test_bad_journal_entry_is_skipped_and_the_rest_restored(
    host: FakeHost, capsys: pytest.CaptureFixture[str], damage: Callable[[dict[str, object]], object]
) -> None:
    before = snapshot(host.root)
    lines = applied(host, capsys)
    bad_index = next(i for i, line in enumerate(lines) if '"sysctl.vm.max_map_count"' in line)
    bad = damage(json.loads(lines[bad_index]))
    lines[bad_index] = bad if isinstance(bad, str) else json.dumps(bad)
    journal_file(host.root).write_text("\n".join(lines) + "\n")
    rc, out, err = run(host.root, capsys, "revert")
    first = out.splitlines()[0]
    if '"family": "file"' in lines[bad_index]:
        # An unknown family (a newer release's, or this hostile one) is reported and kept for `revert --forget`;
        # it is not a failure: revert exits 0 once the rest is restored.
        assert rc == 0 and first.startswith("unrestorable  sysctl.vm.max_map_count  (original 65530)")
        assert "unknown family 'file'" in first
        assert "revert --forget sysctl.vm.max_map_count" in first
        assert list(Journal(SysfsHost(host.root), STATE).entries()) == ["sysctl.vm.max_map_count"]
    else:
        assert rc == 1 and "Traceback" not in err
        assert first.startswith("failed       ") and ("bad entry skipped" in first or "not restorable" in first)
        assert not journal_file(host.root).exists()  # the damaged line is kept in a .damaged copy, not here
    after = snapshot(host.root)
    # Everything but the damaged entry's setting is back; that one is left as the agent set it.
    assert after["proc/sys/vm/max_map_count"] == b"262144"
    before.pop("proc/sys/vm/max_map_count")
    after.pop("proc/sys/vm/max_map_count")
    assert after == before
    assert not (host.root / "etc/shadow").exists()


def test_the_daemon_drift_tick_survives_a_recursion_bomb(host: FakeHost) -> None:
    h = SysfsHost(host.root)
    journal = Journal(h, STATE)
    t = Sysctl.from_setting(h, SysctlSetting("vm.max_map_count", "262144", "floor"))
    engine.apply_one(t, journal)
    with journal_file(host.root).open("a") as f:
        f.write("[" * 200000 + "\n")
    assert engine.drift([t], journal) == []
    assert journal.problems and "nested too deeply" in journal.problems[0]


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o722])
def test_group_or_world_writable_state_is_refused(
    host: FakeHost, capsys: pytest.CaptureFixture[str], mode: int
) -> None:
    applied(host, capsys)
    state = host.root / STATE.lstrip("/")
    target = state if mode != 0o722 else journal_file(host.root)
    target.chmod(mode if target == state else 0o622)
    before = snapshot(host.root)
    journal_before = journal_file(host.root).read_bytes()
    rc, out, err = run(host.root, capsys, "revert")
    assert rc == 3 and "Traceback" not in err and out == ""
    assert err.count("\n") == 1 and "refusing a group- or world-writable" in err and "chmod go-w" in err
    assert snapshot(host.root) == before and journal_file(host.root).read_bytes() == journal_before


def test_journal_owned_by_another_user_is_refused(host: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    if os.geteuid() != 0:
        pytest.skip("ownership is only checked when running as root")
    applied(host, capsys)
    os.chown(journal_file(host.root), 65534, 65534)
    rc, _, err = run(host.root, capsys, "revert")
    assert rc == 3 and "not owned by root" in err and "uid 65534" in err


def test_journal_that_is_not_ours_refuses_to_guess(host: FakeHost) -> None:
    journal_file(host.root).parent.mkdir(parents=True, mode=0o700)
    journal_file(host.root).write_text("{not json")
    with pytest.raises(JournalError, match="not a journal of this agent"):
        Journal(SysfsHost(host.root), STATE).entries()


# --- class 4: values the setting cannot take -----------------------------------------------------------------
def test_minus_five_as_int_and_as_string_are_the_same_value() -> None:
    from vllm_nodeagent.config import parse_config

    as_int = parse_config("[sysctl]\n'kernel.perf_event_paranoid' = { value = -1, mode = 'exact' }", "c")
    as_str = parse_config("[sysctl]\n'kernel.perf_event_paranoid' = { value = '-1', mode = 'exact' }", "c")
    assert as_int.sysctl == as_str.sysctl


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"lots"', "vm.max_map_count takes integers (the kernel has 65530), not 'lots'"),
        ('"1 2"', "vm.max_map_count takes 1 integer field(s)"),
    ],
)
def test_value_the_sysctl_cannot_take_is_refused_before_the_journal(
    host: FakeHost, capsys: pytest.CaptureFixture[str], value: str, message: str
) -> None:
    before = snapshot(host.root)
    rc, out, err = run(
        host.root, capsys, "apply", config=f"[agent]\nstate_dir = '{STATE}'\n[sysctl]\n'vm.max_map_count' = {value}\n"
    )
    assert rc == 1 and "Traceback" not in err
    assert out.startswith("not-changed  sysctl.vm.max_map_count  65530  (") and message in out
    assert snapshot(host.root) == before and not journal_file(host.root).exists()


def test_tcp_triple_with_two_fields_is_refused(host: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(host.root)
    rc, out, _ = run(
        host.root,
        capsys,
        "apply",
        config=f"[agent]\nstate_dir = '{STATE}'\n[sysctl]\n'net.ipv4.tcp_rmem' = '4096 87380'\n",
    )
    assert rc == 1 and "takes 3 integer field(s) (the kernel has 4096 131072 6291456), got 2" in out
    assert snapshot(host.root) == before and not journal_file(host.root).exists()


def test_unknown_sysctl_fails_apply_and_doctor_strict(host: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = f"[agent]\nstate_dir = '{STATE}'\n[sysctl]\n'vm.max_map_cuont' = 262144\n"
    rc, out, _ = run(host.root, capsys, "apply", config=cfg)
    assert rc == 1 and "not-changed  sysctl.vm.max_map_cuont" in out and "no such sysctl" in out
    rc, out, _ = run(host.root, capsys, "doctor", "--json", "--strict", config=cfg)
    check = next(c for c in json.loads(out)["checks"] if c["id"] == "sysctl.vm.max_map_cuont")
    assert rc == 1 and check["status"] == "warn" and "check the name" in check["hint"]


def test_doctor_hint_shows_what_apply_would_write_and_the_config(
    host: FakeHost, capsys: pytest.CaptureFixture[str]
) -> None:
    host.sysctl("net.ipv4.tcp_rmem", "4096\t262144\t6291456")  # the default field is above the floor's
    cfg = f"[agent]\nstate_dir = '{STATE}'\n[sysctl]\n'net.ipv4.tcp_rmem' = '4096 87380 134217728'\n"
    _, out, _ = run(host.root, capsys, "doctor", "--json", config=cfg)
    check = next(c for c in json.loads(out)["checks"] if c["id"] == "sysctl.net.ipv4.tcp_rmem")
    assert check["fix"]["note"] == "by hand: sysctl -w 'net.ipv4.tcp_rmem=4096 262144 134217728'"
    assert check["desired"] == "4096 262144 134217728"
    assert (
        check["fix"]["command"][-6:]
        == [
            *("--root", str(host.root), "--config", str(host.root / "cfg.toml")),
            *("apply", "--only", "sysctl.net.ipv4.tcp_rmem"),
        ][-6:]
    )


@pytest.fixture
def real_tcp_rmem() -> Iterator[str]:
    path = "/proc/sys/net/ipv4/tcp_rmem"
    before = Path(path).read_text()
    yield before
    Path(path).write_text(before)


@pytest.mark.realhost
@requires_root
def test_half_applied_vector_is_rolled_back_on_the_real_kernel(real_tcp_rmem: str, tmp_path: Path) -> None:
    """The kernel takes "a b" for a 3-field sysctl silently, changing 2 fields: apply must put it back."""
    from vllm_nodeagent.host import Host

    class Unchecked(Sysctl):  # as if the field-count check were missing: the rollback is the second line
        def invalid(self, current: str) -> str:
            return ""

    first, second, _ = (int(x) for x in real_tcp_rmem.split())
    t = Unchecked(Host("/"), "net.ipv4.tcp_rmem", f"{first + 1} {second + 1}", "exact")
    o = engine.apply_one(t, Journal(Host("/"), str(tmp_path / "state")))
    assert o.status == engine.FAILED and "half-applied" in o.message
    assert Path("/proc/sys/net/ipv4/tcp_rmem").read_text() == real_tcp_rmem
    checked = Sysctl(Host("/"), "net.ipv4.tcp_rmem", f"{first + 1} {second + 1}", "exact")
    o = engine.apply_one(checked, Journal(Host("/"), str(tmp_path / "state2")))
    assert o.status == engine.NOT_CHANGED and "takes 3 integer field(s)" in o.message
    assert Path("/proc/sys/net/ipv4/tcp_rmem").read_text() == real_tcp_rmem


# --- class 5: no tracebacks ----------------------------------------------------------------------------------
def one_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("vllm-nodeagent:")]
    assert len(lines) == 1, err
    return lines[0]


def as_nobody(argv: list[str]) -> tuple[int, str, str]:
    """cli.main in a forked child that dropped to uid/gid 65534 (the interpreter itself is not readable there)."""
    import importlib
    import io
    import sys

    for name in ("vllm_nodeagent.commands.apply", "vllm_nodeagent.commands.revert", "vllm_nodeagent.topology"):
        importlib.import_module(name)  # before the fork: the child may not read the venv

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        out, err = io.StringIO(), io.StringIO()
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            sys.stdout, sys.stderr = out, err
            code = cli.main(argv)
        finally:
            os.write(w, json.dumps([code, out.getvalue(), err.getvalue()]).encode())
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    os.waitpid(pid, 0)
    code, out, err = json.loads(data)
    return code, out, err


@requires_root
def test_apply_and_revert_as_non_root(tmp_path: Path) -> None:
    import shutil
    import tempfile

    where = Path(tempfile.mkdtemp(prefix="faults-nonroot-"))
    try:
        where.chmod(0o755)
        cfg = where / "c.toml"
        cfg.write_text(f"[agent]\nstate_dir = '{where}/state'\n[sysctl]\n'vm.max_map_count' = 262144\n")
        cfg.chmod(0o644)
        before = Path("/proc/sys/vm/max_map_count").read_text()
        for command in ("apply", "revert"):
            rc, out, err = as_nobody(["--config", str(cfg), command])
            line = one_line(err)
            assert rc == 3 and "run it as root" in line and f"sudo vllm-nodeagent {command}" in line
            assert out == ""
        assert Path("/proc/sys/vm/max_map_count").read_text() == before and not (where / "state").exists()
    finally:
        shutil.rmtree(where)


def test_state_dir_that_is_a_file(host: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    state = host.root / STATE.lstrip("/")
    state.parent.mkdir(parents=True)
    state.write_text("not a dir")
    before = snapshot(host.root)
    for command in ("apply", "revert"):
        rc, out, err = run(host.root, capsys, command)
        assert rc == 3 and out == ""
        assert one_line(err) == (
            f"vllm-nodeagent: {command}: {STATE}: the state dir is not a directory; set [agent] state_dir"
        )
    assert snapshot(host.root) == before and state.read_text() == "not a dir"


@requires_root
@pytest.mark.parametrize("how", ["ro-tmpfs", "ro-bind"])
def test_read_only_state_dir(host: FakeHost, capsys: pytest.CaptureFixture[str], how: str) -> None:
    state = host.root / STATE.lstrip("/")
    if how == "ro-tmpfs":
        state.mkdir(parents=True, mode=0o700)
        mounts = [["mount", "-t", "tmpfs", "-o", "ro,size=64k,mode=0700", "tmpfs", str(state)]]
    else:
        applied(host, capsys)  # a journal exists: revert must leave it and the host as they are
        mounts = [["mount", "--bind", str(state), str(state)], ["mount", "-o", "remount,bind,ro", str(state)]]
    done = 0
    try:
        for m in mounts:
            proc = subprocess.run(m, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                pytest.skip(f"cannot mount here: {proc.stderr.strip()}")
            done += 1
        before = snapshot(host.root)
        journal_before = journal_file(host.root).read_bytes() if how == "ro-bind" else None
        for command in ("apply", "revert"):
            rc, out, err = run(host.root, capsys, command)
            assert rc == 3 and out == ""
            assert f"{STATE}: cannot use the state dir: Read-only file system" in one_line(err)
        assert snapshot(host.root) == before
        if journal_before is not None:
            assert journal_file(host.root).read_bytes() == journal_before
    finally:
        if done:
            subprocess.run(["umount", str(state)], check=True)


def test_config_symlink_loop(host: FakeHost, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    loop = tmp_path / "loop.toml"
    loop.symlink_to(loop)
    for command in ("doctor", "apply", "revert", "topology"):
        rc = cli.main(["--root", str(host.root), "--config", str(loop), command], host_cls=SysfsHost)
        out, err = capsys.readouterr()
        assert rc == 2 and out == ""
        assert one_line(err) == f"vllm-nodeagent: config error: {loop}: cannot read: Too many levels of symbolic links"


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ("/sys/devices/system/node/node0/cpulist", "garbage!"),
        ("/sys/devices/system/node/node0/meminfo", "Node 0 MemTotal: lots kB"),
        ("/sys/devices/pci0000:00/0000:17:00.0/local_cpulist", "x-y"),
    ],
)
def test_malformed_sysfs_text_is_not_the_end_of_any_command(
    host: FakeHost, capsys: pytest.CaptureFixture[str], path: str, text: str
) -> None:
    host.write(path, text)
    for command in ("topology", "doctor", "apply", "revert"):
        rc, _, err = run(host.root, capsys, command)
        assert "Traceback" not in err and rc in (0, 1), (command, rc, err)


def test_link_loop_in_sys_block(host: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    host.block("sda", "mq-deadline [bfq] none", True)
    (host.root / "sys/block/sda").unlink()
    (host.root / "sys/block/sda").symlink_to("/sys/block/sda")
    cfg = f"[agent]\nstate_dir = '{STATE}'\n[block]\ndevices = ['sd*']\nscheduler = 'none'\n"
    for command in ("topology", "doctor", "apply"):
        rc, _, err = run(host.root, capsys, command, config=cfg)
        assert "Traceback" not in err and rc in (0, 1), (command, rc, err)


# --- class 6: waits and hangs ---------------------------------------------------------------------------------
def test_lock_wait_names_the_holder_and_gives_up(
    host: FakeHost, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import fcntl

    from vllm_nodeagent.settings import journal as journal_mod

    monkeypatch.setattr(journal_mod, "LOCK_TIMEOUT_S", 0.3)
    state = host.root / STATE.lstrip("/")
    state.mkdir(parents=True, mode=0o700)
    before = snapshot(host.root)
    fd = os.open(state / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another holder: a separate open file description, as another process has
        os.write(fd, b"4242\n")
        for command in ("apply", "revert"):
            rc, out, err = run(host.root, capsys, command)
            assert rc == 3 and out == "" and "Traceback" not in err
            waiting, gave_up = err.splitlines()
            # The kernel says who holds the flock (this process), not the stale pid written in the file.
            assert waiting == (
                f"vllm-nodeagent: waiting for {STATE}/lock, held by pid {os.getpid()} (giving up after 0.3 s)"
            )
            assert gave_up.startswith(
                f"vllm-nodeagent: {command}: {STATE}/lock is held by pid {os.getpid()}; gave up after 0.3 s"
            )
    finally:
        os.close(fd)
    assert snapshot(host.root) == before and not journal_file(host.root).exists()


def test_systemctl_that_hangs_fails_the_setting_not_the_caller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm_nodeagent.host import Host
    from vllm_nodeagent.settings import irqbalance
    from vllm_nodeagent.settings.base import TunableError

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "systemctl").write_text("#!/bin/sh\nexec /bin/sleep 30\n")
    (fake / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", str(fake))
    monkeypatch.setattr(irqbalance, "SYSTEMCTL_TIMEOUT_S", 0.3)
    with pytest.raises(TunableError, match=r"systemctl disable irqbalance.service: no answer in 0.3 s"):
        irqbalance.Irqbalance(Host("/")).write("inactive/disabled")


def test_daemon_component_failure_is_logged_and_the_others_go_on(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from vllm_nodeagent import log
    from vllm_nodeagent.config import Config
    from vllm_nodeagent.context import Context
    from vllm_nodeagent.daemon.host_keeper import HostKeeper
    from vllm_nodeagent.daemon.loop import Loop

    log.configure("json", stream=sys.stderr)
    ctx = Context(host=SysfsHost(host.root), config=Config(path="t"), config_arg=None, log_format="json")
    loop = Loop(ctx)
    host_keeper = HostKeeper(loop)
    loop.add(host_keeper)
    ran: list[str] = []

    def broken_drift() -> None:
        raise RuntimeError("a bug in drift")

    monkeypatch.setattr(host_keeper, "_drift", broken_drift)
    monkeypatch.setattr(host_keeper, "_readiness", lambda: ran.append("readiness"))
    monkeypatch.setattr(loop.metrics, "write", lambda: ran.append("metrics"))
    loop.tick(loop.clock())
    assert ran == ["readiness", "metrics"]
    [event] = [json.loads(line) for line in capsys.readouterr().err.splitlines() if '"component_failed"' in line]
    assert event["component"] == "settings" and event["error"] == "RuntimeError: a bug in drift"
    assert "Traceback (most recent call last)" in event["traceback"] and "broken_drift" in event["traceback"]


# --- class 7: output that misleads ----------------------------------------------------------------------------
def test_result_lines_are_plain_and_elided() -> None:
    long = "x" * 500
    line = render_outcome(engine.Outcome("sysctl.a.b", engine.CHANGED, "4096\t87380\t" + long, "1", previous=None))
    assert line.startswith("changed      sysctl.a.b  - → 4096 87380 xxx") and line.endswith("…")
    assert "\t" not in line and "None" not in line and "'" not in line and len(line) < 120
    line = render_outcome(engine.Outcome("thp.enabled", engine.FAILED, None, "madvise", "EINVAL\n(x)"))
    assert line == "failed       thp.enabled  (wants madvise)  (EINVAL (x))"


def test_apply_prints_each_result_once_and_logs_nothing(host: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(host.root, capsys, "apply")
    assert rc == 0 and err == ""
    assert out.count("sysctl.vm.max_map_count") == 1
    assert "changed      sysctl.vm.max_map_count  65530 → 262144\n" in out
    assert "changed      sysctl.net.ipv4.tcp_rmem  4096 131072 6291456 → 4096 131072 134217728  (" in out


def test_launch_plan_error_is_one_plain_line(host: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(
        host.root,
        capsys,
        "launch",
        "--dry-run",
        "--gpus",
        "7",
        config=f"[agent]\nstate_dir = '{STATE}'\n[vllm]\nmodel = 'm'\n",
    )
    assert rc == 1 and out == ""
    line = one_line(err)
    assert line.startswith("vllm-nodeagent: launch: ") and "{" not in line


@pytest.mark.parametrize(
    ("command", "says"),
    [
        ("/nonexistent/vllm", "cannot start vLLM: /nonexistent/vllm: No such file or directory"),
        ("/bin/false", "ended before it was ready: exit status 1"),
    ],
)
def test_launch_start_failure_is_one_plain_line(
    host: FakeHost,
    capsys: pytest.CaptureFixture[str],
    command: str,
    says: str,
) -> None:
    """A vLLM that cannot start, or dies while loading, ends `launch` with one plain line (not only log events)."""
    host.accounts("nobody")
    rc, out, err = run(
        host.root,
        capsys,
        "--log-format",
        "json",
        "launch",
        config=f"[agent]\nstate_dir = '{STATE}'\n[vllm]\nmodel = 'm'\nuser = 'nobody'\n"
        f"command = ['{command}', 'serve']\nstart_timeout_s = 30\nnuma = 'none'\n",
    )
    assert rc == 1 and out == ""
    line = one_line(err)
    assert line.startswith("vllm-nodeagent: launch: ") and says in line, line


# --- a bug: still one line, exit 4, the traceback only on request ------------------------------------------------
def test_a_bug_is_one_line_and_exit_4_without_a_traceback(
    host: FakeHost,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from vllm_nodeagent import topology

    def broken_discover(*_: object, **__: object) -> topology.Topology:
        raise RuntimeError("a bug in\ndiscovery")

    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    monkeypatch.setattr(topology, "discover", broken_discover)
    rc, out, err = run(host.root, capsys, "topology")
    assert rc == 4 and out == ""
    assert "Traceback" not in err
    assert one_line(err) == (
        "vllm-nodeagent: topology: internal error: RuntimeError: a bug in discovery (a bug; "
        "rerun with VLLM_NODEAGENT_DEBUG=1 for the traceback, please report it)"
    )

    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    rc, out, err = run(host.root, capsys, "topology")
    assert rc == 4 and out == ""
    assert err.startswith("Traceback (most recent call last):") and "in broken_discover" in err
    assert err.splitlines()[-1].startswith("vllm-nodeagent: topology: internal error: RuntimeError: a bug in")
