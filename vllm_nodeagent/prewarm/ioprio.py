"""The I/O priority of a reader thread: ioprio_set(2) on the calling thread, so that a read beside vLLM's start
yields the disk to vLLM's own reads (the block schedulers that order by class: mq-deadline since Linux 5.14, bfq;
``none`` and kyber ignore it, and so do reads the page cache already holds).

    set_thread_io_priority("idle") -> None     # raises OSError (EINVAL, EPERM, ENOSYS) or ValueError

"low" is best-effort at its lowest level (7): it still gets its share, behind every default reader. "idle" is
served only when no other class waits (mq-deadline ages it in after 10 s, so it never starves outright).
"""

from __future__ import annotations

import ctypes
import os

from vllm_nodeagent.prewarm.libc import errno_error, libc

__all__ = ["IO_PRIORITIES", "set_thread_io_priority", "thread_io_priority"]

_CLASS_SHIFT = 13
_CLASS_BE, _CLASS_IDLE = 2, 3
_WHO_PROCESS = 1  # with who = 0: the calling thread (the kernel's task, not the thread group)
IO_PRIORITIES = {"low": (_CLASS_BE << _CLASS_SHIFT) | 7, "idle": _CLASS_IDLE << _CLASS_SHIFT}
# (ioprio_set, ioprio_get) by machine, for a 64-bit process: the syscalls have no libc wrapper. The generic
# table (aarch64, riscv64, loongarch64) numbers them 30/31.
_SYSCALLS = {
    "x86_64": (251, 252),
    "aarch64": (30, 31),
    "riscv64": (30, 31),
    "loongarch64": (30, 31),
    "ppc64le": (273, 274),
    "ppc64": (273, 274),
    "s390x": (282, 283),
}
# A 32-bit process (its own table, whatever uname says of the kernel): i386 and ARM EABI.
_SYSCALLS_32 = {"x86_64": (289, 290), "i686": (289, 290), "i386": (289, 290), "armv7l": (314, 315)}


def _numbers() -> tuple[int, int]:
    machine = os.uname().machine
    table = _SYSCALLS if ctypes.sizeof(ctypes.c_void_p) == 8 else _SYSCALLS_32
    if machine not in table:
        raise OSError(38, f"ioprio_set: not known for this machine ({machine})")  # ENOSYS
    return table[machine]


def set_thread_io_priority(name: str) -> None:
    """Give the calling thread the I/O priority ``name`` (a key of IO_PRIORITIES)."""
    if name not in IO_PRIORITIES:
        raise ValueError(f"unknown I/O priority {name!r}: expected one of {sorted(IO_PRIORITIES)}")
    number, _ = _numbers()
    if (
        libc().syscall(
            ctypes.c_long(number), ctypes.c_int(_WHO_PROCESS), ctypes.c_int(0), ctypes.c_int(IO_PRIORITIES[name])
        )
        != 0
    ):
        raise errno_error("ioprio_set")


def thread_io_priority() -> int:
    """The calling thread's raw ioprio value (class << 13 | level; 0 = none set: from its CPU nice)."""
    _, number = _numbers()
    value = int(libc().syscall(ctypes.c_long(number), ctypes.c_int(_WHO_PROCESS), ctypes.c_int(0)))
    if value < 0:
        raise errno_error("ioprio_get")
    return value
