from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vllm_nodeagent.host.parse import (
    ParseError,
    format_cpulist,
    normalize_pci_bus_id,
    parse_bracket_list,
    parse_cpulist,
    parse_cpumask,
    parse_interrupts_for,
    parse_meminfo,
    parse_sysctl_vector,
)

cpu_sets = st.sets(st.integers(min_value=0, max_value=4095), max_size=300)


@given(cpu_sets)
def test_cpulist_round_trips(cpus: set[int]) -> None:
    assert parse_cpulist(format_cpulist(cpus)) == sorted(cpus)


@given(cpu_sets)
def test_cpulist_format_is_canonical(cpus: set[int]) -> None:
    text = format_cpulist(cpus)
    # no range of length one written as "a-a", and ranges never touch
    for part in filter(None, text.split(",")):
        if "-" in part:
            lo, hi = map(int, part.split("-"))
            assert lo < hi


@given(cpu_sets)
def test_cpumask_agrees_with_cpulist(cpus: set[int]) -> None:
    value = sum(1 << c for c in cpus)
    words = max(1, max(cpus, default=0) // 32 + 1)
    mask = ",".join(f"{(value >> (32 * w)) & 0xFFFFFFFF:08x}" for w in reversed(range(words)))
    assert parse_cpumask(mask) == sorted(cpus)


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("0-3,8-11", [0, 1, 2, 3, 8, 9, 10, 11]),
        ("", []),
        ("5", [5]),
        ("0-11:2/4", [0, 1, 4, 5, 8, 9]),
        (" 1,1,0 \n", [0, 1]),
    ],
)
def test_cpulist_examples(text: str, cpus: list[int]) -> None:
    assert parse_cpulist(text) == cpus


@pytest.mark.parametrize("text", ["a", "3-1", "1-", "0-3:0/1", "0-7:2", "1,,2", "-1"])
def test_cpulist_rejects(text: str) -> None:
    with pytest.raises(ParseError):
        parse_cpulist(text)


NAMES = ["none", "mq-deadline", "kyber", "bfq", "always", "madvise", "never", "defer+madvise"]


@given(st.lists(st.sampled_from(NAMES), min_size=1, max_size=6, unique=True), st.data())
def test_bracket_list_finds_current(names: list[str], data: st.DataObject) -> None:
    pick = data.draw(st.integers(min_value=0, max_value=len(names) - 1))
    text = " ".join(f"[{n}]" if i == pick else n for i, n in enumerate(names))
    current, offered = parse_bracket_list(text)
    assert current == names[pick]
    assert offered == names


def test_bracket_list_without_current_and_double_current() -> None:
    assert parse_bracket_list("none mq-deadline") == (None, ["none", "mq-deadline"])
    with pytest.raises(ParseError):
        parse_bracket_list("[none] [bfq]")


@given(
    st.dictionaries(
        st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,12}", fullmatch=True),
        st.integers(min_value=0, max_value=2**40),
        min_size=1,
        max_size=20,
    )
)
def test_meminfo_round_trips_kb(values: dict[str, int]) -> None:
    text = "\n".join(f"{k}:{' ' * 8}{v} kB" for k, v in values.items())
    assert parse_meminfo(text) == {k: v * 1024 for k, v in values.items()}


def test_meminfo_node_form_and_counts() -> None:
    text = "Node 1 MemTotal:       1024 kB\nNode 1 HugePages_Total:     4\n"
    assert parse_meminfo(text) == {"MemTotal": 1024 * 1024, "HugePages_Total": 4}
    with pytest.raises(ParseError):
        parse_meminfo("garbage line")


@given(st.lists(st.integers(min_value=0, max_value=2**62), min_size=1, max_size=4))
def test_sysctl_vector_tabs_or_spaces(values: list[int]) -> None:
    assert parse_sysctl_vector("\t".join(map(str, values))) == values
    assert parse_sysctl_vector(" ".join(map(str, values))) == values


def test_sysctl_vector_rejects_words() -> None:
    with pytest.raises(ParseError):
        parse_sysctl_vector("cubic")


@pytest.mark.parametrize(
    ("raw", "norm"),
    [("00000000:17:00.0", "0000:17:00.0"), ("0000:9A:00.0", "0000:9a:00.0"), ("00000001:00:06.0", "0001:00:06.0")],
)
def test_pci_bus_id_normalised(raw: str, norm: str) -> None:
    assert normalize_pci_bus_id(raw) == norm


def test_pci_bus_id_rejects() -> None:
    with pytest.raises(ParseError):
        normalize_pci_bus_id("17:00")


def test_interrupts_by_name() -> None:
    text = (
        "           CPU0       CPU1\n 24:  1  2  PCI-MSI 1-edge  nvidia\n 25: 0 0 PCI-MSI eth0-rx-0\n"
        " 26: 0 0 PCI-MSI eth01\nNMI: 0 0 Non-maskable interrupts\n"
    )
    # "eth0-rx-0" is one of eth0's queues; "eth01" is another interface
    assert parse_interrupts_for(text, ["eth0"]) == [25]
    assert parse_interrupts_for(text, ["nvidia"]) == [24]
