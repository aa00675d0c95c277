"""Issue 23 on the lent H200: the learned stack pages read *beside* vLLM's start, by a root process of its own that
waits for the API server's process to appear, while the daemon runs with ``stack = false``; ROUNDS starts in turn.
   PYTHONPATH=/tmp/asite:. python3 tests/gpu/learned_beside.py STATE_DIR ROUNDS"""

from __future__ import annotations

import subprocess
import sys
import time

from vllm_nodeagent.host import Host
from vllm_nodeagent.prewarm.learned import learned_pages
from vllm_nodeagent.prewarm.reader import LEARNED_READER
from vllm_nodeagent.prewarm.warm import prewarm

API_SERVER = ["pgrep", "-f", "vllm.entrypoints.openai.api_server"]


def running() -> bool:
    return subprocess.run(API_SERVER, capture_output=True).returncode == 0


def main() -> int:
    for _ in range(int(sys.argv[2])):
        while not running():
            time.sleep(0.02)
        t = time.monotonic()
        files, _stale = learned_pages(Host("/"), sys.argv[1])
        r = prewarm([], host=Host("/"), budget_bytes=None, stack=files, reader=LEARNED_READER)
        print("beside: read", r.read_bytes, "of", r.total_bytes, "in", round(time.monotonic() - t, 2), "s", flush=True)
        while running():
            time.sleep(0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
