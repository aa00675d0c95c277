"""Issue 23 on the lent H200: learn the serving stack's resident pages now (prewarm/learned.py), as the daemon does
at READY. The harness stops the daemon right after its first completion, before the daemon's learning thread (a
walk of the environment and a mincore of each file: 1.5 s there) is done; run this just after such a start, while
its pages are still cached.   PYTHONPATH=/tmp/asite:. python3 tests/gpu/learn_now.py CONFIG"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from vllm_nodeagent.config import parse_config
from vllm_nodeagent.host import Host
from vllm_nodeagent.prewarm.learned import learn_pages
from vllm_nodeagent.prewarm.stack import config_stack


def main() -> int:
    cfg = parse_config(Path(sys.argv[1]).read_text(), sys.argv[1])
    t = time.monotonic()
    stack, errors = config_stack(cfg, Host("/"), every_library=True)
    t1 = time.monotonic()
    print("stack files", len(stack), errors[:2], "walk s", round(t1 - t, 2))
    print("learned", learn_pages(Host("/"), cfg.agent.state_dir, stack), "s", round(time.monotonic() - t1, 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
