"""The journal never loses to the agent itself (issue 22.4) and says what it holds (issue 26.9).

- Entries are as large as apply can write them: 4096 cpufreq policies with one set differently, 1024 IRQs of one
  device, and a setting of MAX_MEMBERS members journal and revert; one member more is refused before anything is
  touched (not-changed), never journaled and then refused at revert.
- A damaged journal is kept beside it under a new timestamped name each time: a second one keeps the first.
- An entry this agent cannot restore (unknown family, a path gone) is reported `unrestorable`, kept, and revert
  exits 0 once the rest is restored; `revert --forget ID` drops it, keeping its line in a `.forgotten` copy.
- `journal show` and `revert --dry-run` say what holds and what revert would do, and change nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import requires_root
from fakehost import FakeHost, SysfsHost

from vllm_nodeagent import cli
from vllm_nodeagent.commands.apply import render_outcome
from vllm_nodeagent.host import Host, HostError
from vllm_nodeagent.settings import engine
from vllm_nodeagent.settings.base import MAX_MEMBERS
from vllm_nodeagent.settings.cpu import CPUFREQ_DIR, CpuGovernor
from vllm_nodeagent.settings.journal import JOURNAL_NAME, MAX_VALUE_CHARS, Journal, JournalError

STATE = "/var/lib/vllm-nodeagent"
CONFIG = f"""
[agent]
state_dir = "{STATE}"
[sysctl]
"vm.max_map_count" = 262144
"vm.swappiness" = {{ value = 60, mode = "exact" }}
[block]
devices = ["nvme*"]
scheduler = "mq-deadline"
[cpu]
governor = "performance"
[irq]
irqbalance = "ignore"
affinity = true
"""


def small_host(root: Path, policies: int = 4, irqs: tuple[int, ...] = (40, 41)) -> FakeHost:
    h = FakeHost(root)
    h.cpus(4)
    h.numa_node(0, [0, 1, 2, 3], 1024)
    h.gpu("0000:17:00.0", 0, [0, 1], irqs=irqs)
    h.block("nvme0n1", "[none] mq-deadline kyber", False, "0000:5e:00.0")
    h.block("nvme1n1", "[none] mq-deadline kyber", False, "0000:dc:00.0")
    h.cpufreq(policies, "powersave")
    h.default_sysctls()
    h.sysctl("vm.swappiness", "60")
    return h


def run(root: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    cfg = root / "cfg.toml"
    cfg.write_text(CONFIG)
    cfg.chmod(0o600)
    rc = cli.main(["--root", str(root), "--config", str(cfg), *args], host_cls=SysfsHost)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def kernel_files(root: Path) -> dict[str, bytes]:
    """Every host file but the state dir and the config (a kernel attribute reads back without its newline)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes().rstrip(b"\n")
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink() and not p.relative_to(root).as_posix().startswith(("var/", "cfg"))
    }


def state_files(root: Path) -> dict[str, bytes]:
    state = root / STATE.lstrip("/")
    return {p.name: p.read_bytes() for p in sorted(state.iterdir()) if p.name != "lock"} if state.exists() else {}


def journal_lines(root: Path) -> list[str]:
    return (root / STATE.lstrip("/") / JOURNAL_NAME).read_text().splitlines()


def by_id(out: str) -> dict[str, dict[str, str]]:
    return {r["id"]: r for r in json.loads(out)["results"]}


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    return small_host(tmp_path / "root")


# --- the journal takes what apply writes, at any host size -----------------------------------------------------
def test_4096_policies_one_set_differently_revert_restores_every_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 22: the governor's original ("policy0=powersave ... policy7=schedutil ...", ~80 kB) was over the
    journal's 65,536-character string cap: revert refused the agent's own entry, and every policy stayed changed."""
    h = small_host(tmp_path / "root", policies=4096)
    h.write(f"{CPUFREQ_DIR}/policy7/scaling_governor", "schedutil")
    before = kernel_files(h.root)
    rc, out, _ = run(h.root, capsys, "apply", "--json")
    assert rc == 0 and by_id(out)["cpu.governor"]["status"] == "changed"
    assert len(by_id(out)["cpu.governor"]["previous"]) > 65536
    assert (h.root / f"{CPUFREQ_DIR.lstrip('/')}/policy7/scaling_governor").read_text().strip() == "performance"
    rc, out, _ = run(h.root, capsys, "revert", "--json")
    assert rc == 0, out
    assert by_id(out)["cpu.governor"]["status"] == "restored"
    assert kernel_files(h.root) == before  # all 4096, policy7's schedutil included
    assert not (h.root / STATE.lstrip("/") / JOURNAL_NAME).exists()


def test_1024_irqs_of_one_device_revert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 22: 1024 IRQs made the irq entry's "irqs" parameter ~5 kB, over the 4096-character parameter cap."""
    h = small_host(tmp_path / "root", irqs=tuple(range(1000, 2024)))
    h.write("/proc/irq/1500/smp_affinity_list", "2-3")  # one vector set differently before apply
    before = kernel_files(h.root)
    rc, out, _ = run(h.root, capsys, "apply", "--json")
    assert rc == 0 and by_id(out)["irq.gpu0.affinity"]["status"] == "changed"
    rc, out, _ = run(h.root, capsys, "revert", "--json")
    assert rc == 0 and by_id(out)["irq.gpu0.affinity"]["status"] == "restored", out
    assert kernel_files(h.root) == before


class MemoryHost(Host):
    """cpufreq files in memory (a fake for speed: the refusal happens before any write); the journal itself goes
    to the real state dir under the root."""

    def __init__(self, root: Path, values: dict[str, str]) -> None:
        super().__init__(root)
        self.values = values

    def read(self, host_path: str) -> str:
        if host_path.startswith(CPUFREQ_DIR):
            if host_path not in self.values:
                raise HostError("read", host_path, FileNotFoundError(2, "No such file or directory"))
            return self.values[host_path]
        return super().read(host_path)

    def write(self, host_path: str, value: str) -> None:
        self.values[host_path] = value


def governors(count: int) -> dict[str, str]:
    values = {f"{CPUFREQ_DIR}/policy{p}/scaling_governor": "powersave" for p in range(count)}
    values[f"{CPUFREQ_DIR}/policy{count - 1}/scaling_governor"] = "schedutil"
    return values


def test_a_setting_of_max_members_journals_and_reverts_on_a_fake_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The limit itself: MAX_MEMBERS policies (twice Linux's NR_CPUS ceiling), the last one set differently."""
    h = small_host(tmp_path / "root", policies=MAX_MEMBERS)
    h.write(f"{CPUFREQ_DIR}/policy{MAX_MEMBERS - 1}/scaling_governor", "schedutil")
    before = kernel_files(h.root)
    rc, out, _ = run(h.root, capsys, "apply", "--json")
    assert rc == 0 and by_id(out)["cpu.governor"]["status"] == "changed"
    rc, out, _ = run(h.root, capsys, "revert", "--json")
    assert rc == 0 and by_id(out)["cpu.governor"]["status"] == "restored", out
    assert kernel_files(h.root) == before


def test_one_member_more_is_refused_before_anything_is_touched(tmp_path: Path) -> None:
    count = MAX_MEMBERS + 1
    values = governors(count)
    host = MemoryHost(tmp_path, dict(values))
    t = CpuGovernor(host, "performance", paths={p.split("/")[-2]: p for p in values})
    journal = Journal(host, STATE)
    o = engine.apply_one(t, journal)
    assert o.status == engine.NOT_CHANGED and o.message.startswith("not journaled: revert could not rebuild it")
    assert f"{count} policies, more than the {MAX_MEMBERS}" in o.message
    assert host.values == values and journal.entries() == {}  # nothing touched, nothing journaled


def test_a_value_that_would_not_load_back_is_refused_by_record(tmp_path: Path) -> None:
    journal = Journal(Host(tmp_path), STATE)
    journal.record("sysctl.vm.swappiness", "sysctl", {"name": "vm.swappiness"}, "60", "10")
    before = (tmp_path / STATE.lstrip("/") / JOURNAL_NAME).read_bytes()
    with pytest.raises(JournalError, match=f"at most {MAX_VALUE_CHARS} characters"):
        journal.record("sysctl.vm.x", "sysctl", {"name": "vm.x"}, "1" * (MAX_VALUE_CHARS + 1), "2")
    assert (tmp_path / STATE.lstrip("/") / JOURNAL_NAME).read_bytes() == before
    assert list(journal.entries()) == ["sysctl.vm.swappiness"] and journal.problems == []


# --- damaged journals keep their evidence --------------------------------------------------------------------
def damage(root: Path, id: str) -> str:
    lines = journal_lines(root)
    i = next(n for n, line in enumerate(lines) if f'"{id}"' in line)
    lines[i] = lines[i].replace('"original"', '"origin"')  # a missing key: the entry is skipped
    (root / STATE.lstrip("/") / JOURNAL_NAME).write_text("\n".join(lines) + "\n")
    return lines[i]


def test_a_second_damaged_journal_keeps_the_first_evidence(host: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 22: every damaged journal was copied to the one originals.json.damaged, so the second overwrote the
    first."""
    state = host.root / STATE.lstrip("/")
    state.mkdir(parents=True)
    (state / f"{JOURNAL_NAME}.damaged").write_text("left by an older release\n")
    (state / f"{JOURNAL_NAME}.damaged").chmod(0o600)
    assert run(host.root, capsys, "apply")[0] == 0
    first = damage(host.root, "sysctl.vm.max_map_count")
    rc, out, _ = run(host.root, capsys, "revert")
    assert rc == 1 and out.startswith("failed") and "bad entry skipped" in out
    assert run(host.root, capsys, "apply")[0] == 0
    second = damage(host.root, "block.nvme0n1.scheduler")
    rc, out, _ = run(host.root, capsys, "revert")
    assert rc == 1
    copies = sorted(p for p in state.iterdir() if p.name.startswith(f"{JOURNAL_NAME}.damaged."))
    assert len(copies) == 2, copies
    assert first in copies[0].read_text() and second not in copies[0].read_text()
    assert second in copies[1].read_text()
    assert all(c.name[len(JOURNAL_NAME) + len(".damaged.") :][:8].isdigit() for c in copies)  # 20261202T0603..Z
    assert oct(copies[1].stat().st_mode & 0o777) == "0o600"
    assert (state / f"{JOURNAL_NAME}.damaged").read_text() == "left by an older release\n"


# --- what cannot be restored is reported, kept, and forgotten on request ----------------------------------------
UNKNOWN_LINE = {
    "id": "gpu.0.power_limit",
    "family": "gpu_power",  # a family of a newer release (issue 27's), after a downgrade
    "params": {"index": "0"},
    "original": "700000",
    "written": "500000",
    "recorded_at": 1795629040.5,
}


def test_unknown_family_is_reported_revert_exits_0_and_forget_drops_it(
    host: FakeHost, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 22: an entry of an unknown family stayed in the journal for ever and every revert exited 1."""
    before = kernel_files(host.root)
    assert run(host.root, capsys, "apply")[0] == 0
    path = host.root / STATE.lstrip("/") / JOURNAL_NAME
    with path.open("a") as f:
        f.write(json.dumps(UNKNOWN_LINE) + "\n")
    for _ in range(2):  # the second revert: only the unknown entry is left, reported the same, still exit 0
        rc, out, _ = run(host.root, capsys, "revert")
        assert rc == 0, out
        line = next(x for x in out.splitlines() if "gpu.0.power_limit" in x)
        assert line.startswith("unrestorable  gpu.0.power_limit  (original 700000)")
        assert "unknown family 'gpu_power'" in line and "vllm-nodeagent revert --forget gpu.0.power_limit" in line
        assert kernel_files(host.root) == before
        assert [json.loads(x)["id"] for x in journal_lines(host.root)[1:]] == ["gpu.0.power_limit"]

    rc, _, err = run(host.root, capsys, "revert", "--forget", "gpu.0.power_limit", "no.such.id")
    assert rc == 2 and "'no.such.id' is not in the journal" in err and "nothing dropped" in err
    assert [json.loads(x)["id"] for x in journal_lines(host.root)[1:]] == ["gpu.0.power_limit"]

    rc, out, _ = run(host.root, capsys, "revert", "--forget", "gpu.0.power_limit", "--json")
    assert rc == 0
    [r] = json.loads(out)["results"]
    assert r["status"] == "forgotten" and r["desired"] == "700000"
    assert render_outcome(
        engine.Outcome(r["id"], r["status"], r["current"], r["desired"], r["detail"] or "", r["previous"])
    ).startswith("forgotten    gpu.0.power_limit  (original 700000)  (dropped")
    assert not path.exists()  # the journal held only that entry: now empty, removed (durably: fsynced dir)
    [kept] = [p for p in path.parent.iterdir() if p.name.startswith(f"{JOURNAL_NAME}.forgotten.")]
    assert json.loads(kept.read_text().splitlines()[1]) == {**UNKNOWN_LINE, "written_at": None}
    assert kept.name in r["detail"]
    rc, out, _ = run(host.root, capsys, "revert")
    assert rc == 0 and out.startswith("nothing to revert")


def test_a_path_gone_is_unrestorable_the_rest_restored_exit_0(
    host: FakeHost, capsys: pytest.CaptureFixture[str]
) -> None:
    """A device removed since apply (its scheduler file gone) and one of a GPU's IRQs freed: revert restored
    nothing of that entry and exited 1, every time."""
    assert run(host.root, capsys, "apply")[0] == 0
    shutil.rmtree(host.root / "sys/devices/pci0000:00/0000:dc:00.0")
    (host.root / "sys/block/nvme1n1").unlink()
    shutil.rmtree(host.root / "proc/irq/41")
    rc, out, _ = run(host.root, capsys, "revert", "--json")
    assert rc == 0, out
    results = by_id(out)
    assert results["block.nvme1n1.scheduler"]["status"] == "unrestorable"
    assert "does not exist" in results["block.nvme1n1.scheduler"]["detail"]
    irq = results["irq.gpu0.affinity"]
    assert irq["status"] == "unrestorable" and "1 of 2 gone (41)" in irq["detail"]
    assert (host.root / "proc/irq/40/smp_affinity_list").read_text().strip() == "0-255"  # the rest restored
    assert results["block.nvme0n1.scheduler"]["status"] == results["cpu.governor"]["status"] == "restored"
    assert sorted(json.loads(x)["id"] for x in journal_lines(host.root)[1:]) == [
        "block.nvme1n1.scheduler",
        "irq.gpu0.affinity",
    ]


# --- journal show, revert --dry-run ----------------------------------------------------------------------------
def test_journal_show_says_what_holds_and_changes_nothing(host: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(host.root, capsys, "journal", "show")
    assert rc == 0 and out.startswith("the journal is empty")
    assert run(host.root, capsys, "apply")[0] == 0
    host.write("/proc/sys/vm/max_map_count", "300000")  # someone else, since apply
    host.write(f"{CPUFREQ_DIR}/policy2/scaling_governor", "powersave")
    shutil.rmtree(host.root / "proc/irq/41")
    with (host.root / STATE.lstrip("/") / JOURNAL_NAME).open("a") as f:
        f.write(json.dumps(UNKNOWN_LINE) + "\n")
    kernel, state = kernel_files(host.root), state_files(host.root)

    rc, out, _ = run(host.root, capsys, "journal", "show", "--json")
    assert rc == 0
    doc = json.loads(out)
    assert doc["journal"] == f"{STATE}/{JOURNAL_NAME}" and doc["problems"] == []
    rows = {e["id"]: e for e in doc["entries"]}
    assert {i: e["state"] for i, e in rows.items()} == {
        "sysctl.vm.max_map_count": "changed",
        "sysctl.vm.swappiness": "untouched",
        "block.nvme0n1.scheduler": "holds",
        "block.nvme1n1.scheduler": "holds",
        "cpu.governor": "changed",
        "irq.gpu0.affinity": "gone",
        "gpu.0.power_limit": "unknown",
    }
    assert "unknown family 'gpu_power'" in rows["gpu.0.power_limit"]["detail"]
    mmc = rows["sysctl.vm.max_map_count"]
    assert (mmc["original"], mmc["written"], mmc["live"]) == ("65530", "262144", "300000")
    assert mmc["written_at"].endswith("Z") and mmc["written_at"] >= mmc["recorded_at"]
    assert rows["sysctl.vm.swappiness"]["written_at"] is None
    assert "1 of 4 changed: policy2" in rows["cpu.governor"]["detail"]
    assert "1 of 2 gone: 41" in rows["irq.gpu0.affinity"]["detail"]

    rc, out, _ = run(host.root, capsys, "journal", "show")
    lines = {line.split()[1]: line for line in out.splitlines()}
    assert lines["sysctl.vm.max_map_count"].startswith(
        "changed     sysctl.vm.max_map_count  65530 → 262144, now 300000"
    )
    assert " written 20" in lines["sysctl.vm.max_map_count"]
    assert lines["sysctl.vm.swappiness"].startswith("untouched   sysctl.vm.swappiness  60  recorded 20")
    assert lines["block.nvme0n1.scheduler"].startswith("holds       block.nvme0n1.scheduler  none → mq-deadline")

    damage(host.root, "sysctl.vm.swappiness")
    state = state_files(host.root)
    rc, out, _ = run(host.root, capsys, "journal", "show")
    assert rc == 1 and out.startswith("damaged     ") and "bad entry skipped" in out
    assert kernel_files(host.root) == kernel and state_files(host.root) == state  # read-only: no .damaged copy


def test_revert_dry_run_says_what_revert_does_and_changes_nothing(
    host: FakeHost, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(host.root, capsys, "apply")[0] == 0
    host.write("/proc/sys/vm/max_map_count", "300000")  # someone else's: revert leaves it
    with (host.root / STATE.lstrip("/") / JOURNAL_NAME).open("a") as f:
        f.write(json.dumps(UNKNOWN_LINE) + "\n")
    kernel, state = kernel_files(host.root), state_files(host.root)
    rc, out, _ = run(host.root, capsys, "revert", "--dry-run", "--json")
    assert rc == 0
    planned = {i: r["status"] for i, r in by_id(out).items()}
    assert planned == {
        "sysctl.vm.max_map_count": "left",
        "sysctl.vm.swappiness": "untouched",
        "block.nvme0n1.scheduler": "would-restore",
        "block.nvme1n1.scheduler": "would-restore",
        "cpu.governor": "would-restore",
        "irq.gpu0.affinity": "would-restore",
        "gpu.0.power_limit": "unrestorable",
    }
    assert kernel_files(host.root) == kernel and state_files(host.root) == state
    rc, text, _ = run(host.root, capsys, "revert", "--dry-run")
    assert rc == 0 and "would-restore  block.nvme0n1.scheduler  mq-deadline → none" in text
    assert kernel_files(host.root) == kernel and state_files(host.root) == state

    rc, out, _ = run(host.root, capsys, "revert", "--json")
    done = {i: r["status"] for i, r in by_id(out).items()}
    assert rc == 0 and done == {i: "restored" if s == "would-restore" else s for i, s in planned.items()}


def test_revert_dry_run_exit_1_when_revert_would_fail(host: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(host.root, capsys, "apply")[0] == 0
    damage(host.root, "sysctl.vm.max_map_count")
    state = state_files(host.root)
    rc, out, _ = run(host.root, capsys, "revert", "--dry-run")
    assert rc == 1 and out.startswith("failed       journal") and state_files(host.root) == state


# --- journals of earlier releases -----------------------------------------------------------------------------
def old_release_host(root: Path) -> FakeHost:
    """The tree tests/journals/v{1,3}-small.json were written on (OLD_CONFIG applied by that release's CLI)."""
    h = FakeHost(root)
    h.cpus(4)
    h.numa_node(0, [0, 1, 2, 3], 1024)
    h.gpu("0000:17:00.0", 0, [0, 1], irqs=(40, 41))
    h.block("nvme0n1", "[none] mq-deadline kyber", False, "0000:5e:00.0")
    h.cpufreq(4, "powersave")
    h.write(f"{CPUFREQ_DIR}/policy1/scaling_governor", "schedutil")
    h.write("/proc/irq/41/smp_affinity_list", "2-3")
    h.default_sysctls()
    h.sysctl("vm.swappiness", "60")
    h.thp("[always] madvise never", "always defer defer+madvise [madvise] never")
    return h


OLD_CONFIG = f"""
[agent]
state_dir = "{STATE}"
[sysctl]
"vm.max_map_count" = 262144
"net.ipv4.tcp_rmem" = "4096 87380 134217728"
[thp]
enabled = "madvise"
[block]
devices = ["nvme*"]
scheduler = "mq-deadline"
[cpu]
governor = "performance"
[irq]
irqbalance = "ignore"
affinity = true
"""


@pytest.mark.parametrize(
    ("fixture", "state"),
    [
        # 9145655 (format 1: one JSON document, no "written"): revert restores unconditionally
        ("v1-small.json", "legacy"),
        # d44b197 (format 3, before written_at): reads as written at the time it was recorded
        ("v3-small.json", "holds"),
    ],
)
def test_journals_of_earlier_releases_show_and_revert(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, fixture: str, state: str
) -> None:
    h = old_release_host(tmp_path / "root")
    before = kernel_files(h.root)
    monkeypatch.setattr(sys.modules[__name__], "CONFIG", OLD_CONFIG)
    assert run(h.root, capsys, "apply")[0] == 0  # the host as that release left it
    (h.root / STATE.lstrip("/") / JOURNAL_NAME).write_text((Path(__file__).parent / "journals" / fixture).read_text())
    rc, out, _ = run(h.root, capsys, "journal", "show", "--json")
    rows = json.loads(out)["entries"]
    assert rc == 0 and len(rows) == 6 and {r["state"] for r in rows} == {state}
    assert all(r["written_at"] is None and r["recorded_at"].startswith("2026-12-02T") for r in rows)
    rc, out, _ = run(h.root, capsys, "revert", "--json")
    assert rc == 0 and {r["status"] for r in json.loads(out)["results"]} == {"restored"}, out
    assert kernel_files(h.root) == before


# --- on the real kernel ----------------------------------------------------------------------------------------
@pytest.mark.realhost
@requires_root
def test_apply_show_dry_run_revert_on_the_real_kernel(tmp_path: Path) -> None:
    paths = ("/proc/sys/vm/max_map_count", "/proc/sys/net/core/wmem_max")
    before = {p: Path(p).read_text().strip() for p in paths}
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[agent]\nstate_dir = "{tmp_path}/state"\n[sysctl]\n"vm.max_map_count" = '
        f'{int(before[paths[0]]) + 4096}\n"net.core.wmem_max" = {int(before[paths[1]]) + 1}\n'
    )
    cfg.chmod(0o600)
    base = [sys.executable, "-m", "vllm_nodeagent.cli", "--config", str(cfg), "--log-format", "json"]

    def agent(*args: str) -> tuple[int, str]:
        res = subprocess.run([*base, *args], capture_output=True, text=True, check=False, env=os.environ)
        assert "Traceback" not in res.stderr
        return res.returncode, res.stdout

    try:
        rc, _ = agent("apply")
        assert rc == 0
        changed = {p: Path(p).read_text().strip() for p in paths}
        assert changed != before
        rc, out = agent("journal", "show", "--json")
        assert rc == 0
        rows = {e["id"]: e for e in json.loads(out)["entries"]}
        assert {e["state"] for e in rows.values()} == {"holds"}
        assert rows["sysctl.vm.max_map_count"]["original"] == before[paths[0]]
        rc, out = agent("revert", "--dry-run", "--json")
        assert rc == 0 and {r["status"] for r in json.loads(out)["results"]} == {"would-restore"}
        assert {p: Path(p).read_text().strip() for p in paths} == changed  # the dry run changed nothing
        rc, out = agent("revert", "--json")
        assert rc == 0 and {r["status"] for r in json.loads(out)["results"]} == {"restored"}
        assert {p: Path(p).read_text().strip() for p in paths} == before
    finally:
        for p, v in before.items():
            Path(p).write_text(v)
