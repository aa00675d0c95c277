"""The ground floor: the only code that touches the OS (files, /proc, accounts, subprocesses).

``files`` is the seam for host paths under ``--root`` (safe open, atomic replace, checked directories);
everything else in the agent stands on this package. ``Host`` and ``HostError`` are re-exported here because
every module names them.
"""

from vllm_nodeagent.host.errors import HostError
from vllm_nodeagent.host.files import Host

__all__ = ["Host", "HostError"]
