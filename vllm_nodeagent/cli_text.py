"""The operator-facing text of the command line: DESCRIPTION, EXIT_STATUS and, per command, its summary, what it
does for an operator and examples. The same text makes --help (cli.py) and the man page (manpage.py), so the two
cannot disagree."""

from __future__ import annotations

DESCRIPTION = """\
Tunes a GPU server for vLLM and keeps it tuned: discovers the GPU/NUMA topology, applies host settings
(sysctls, transparent hugepages, block scheduler, CPU governor, NVIDIA persistence, IRQs) with every original
journaled for revert, prewarms model files into the page cache, and launches vLLM under the NUMA binding of its
GPUs. Start with `doctor`: it changes nothing and says what apply would do."""

EXIT_STATUS = """\
exit status (every command):
  0    ok (apply --dry-run: nothing to do)
  1    a setting or check failed (doctor: a FAIL; with --strict, a WARN too)
  2    usage or config error (one line naming the file, line, key and value)
  3    host or state fault: not root, the state dir or journal unusable, the journal lock not obtained
  4    internal error (a bug: VLLM_NODEAGENT_DEBUG=1 adds the traceback; please report it)
  5    apply --dry-run: changes pending
  130  interrupted"""

# Per command: (one-line summary, what it does for an operator, examples). The same text makes --help and the
# man page (vllm_nodeagent/manpage.py), so the two cannot disagree.
COMMANDS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "topology": (
        "show the GPU/NUMA/NIC/disk map",
        "Which NUMA node and CPUs each GPU, NIC and disk is local to, the CPUs this process may use (online, "
        "affinity, cgroup cpuset) and what was left out and why. NVML when it answers, sysfs otherwise. Read-only.",
        ("vllm-nodeagent topology", "vllm-nodeagent topology --json | jq '.gpus[0]'"),
    ),
    "doctor": (
        "audit settings and readiness (read-only)",
        "Every configured setting (current vs what apply would write) and the readiness checks (/dev/shm, limits, "
        "storage, GPU health, driver stack, P2P): pass, warn, fail or skip, each with a fix you can paste. Changes "
        "no setting.",
        (
            "vllm-nodeagent doctor",
            "vllm-nodeagent doctor --config /etc/vllm-nodeagent/config.toml --strict",
            "vllm-nodeagent doctor --only sysctl thp gpu.xid --wide",
            "vllm-nodeagent doctor --json | jq '.checks[] | select(.status == \"fail\")'",
            "vllm-nodeagent --root /srv/snapshot doctor",
            "vllm-nodeagent doctor --slurm   # as Slurm's HealthCheckProgram (docs/slurm.md)",
        ),
    ),
    "apply": (
        "apply and verify the configured settings",
        "Writes each setting that does not hold (floors never lower a host already above), after journaling its "
        "original durably, then reads it back. --dry-run shows what would be written and writes nothing.",
        (
            "vllm-nodeagent apply --dry-run",
            "sudo vllm-nodeagent apply",
            "sudo vllm-nodeagent apply --only sysctl thp.enabled",
        ),
    ),
    "revert": (
        "restore what apply wrote",
        "For every journaled setting: puts the original back where the live value is still what the agent wrote; "
        "a value someone changed since is left as is and reported. Then clears the journal. Needs no config.",
        (
            "vllm-nodeagent revert --dry-run",
            "sudo vllm-nodeagent revert",
            "sudo vllm-nodeagent revert --forget sysctl.vm.max_map_count",
        ),
    ),
    "journal": (
        "what apply wrote, when, and whether it still holds",
        "journal show: every journaled setting with its original, what the agent wrote and when, and whether the "
        "live value is still that (revert would restore it) or someone changed it since. Read-only.",
        ("vllm-nodeagent journal show", "vllm-nodeagent journal show --json | jq '.entries[]'"),
    ),
    "prewarm": (
        "read model files into the page cache",
        "Reads files, directories or Hugging Face model ids (from the offline cache) into the page cache at disk "
        "speed within a memory budget and reports how much is resident (cachestat/mincore).",
        (
            "vllm-nodeagent prewarm /models/llama-3-8b",
            "vllm-nodeagent prewarm --budget 64G meta-llama/Llama-3.1-8B-Instruct",
            "vllm-nodeagent prewarm --lock --budget 0.5 /models/m   # hold the pages until Ctrl-C",
        ),
    ),
    "launch": (
        "run vLLM under the NUMA binding of its GPUs (foreground)",
        "Starts the [vllm] command as its unprivileged user under the numactl binding that matches its GPUs and "
        "supervises it in the foreground. --dry-run prints the plan (argv, binding, environment) and starts nothing.",
        ("vllm-nodeagent launch --dry-run", "vllm-nodeagent launch --dry-run --json --gpus 2,3"),
    ),
    "run": (
        "the daemon (what vllm-nodeagent.service starts)",
        'Applies the settings (or, with [agent] mode = "audit", only verifies them), then watches drift, exports '
        "metrics and, in the single layout, prewarms and supervises vLLM. Type=notify: STATUS= says what it does.",
        ("systemctl start vllm-nodeagent", "vllm-nodeagent run --layout split"),
    ),
    "serve": (
        "vLLM's own unit: prewarm, launch, READY when serving",
        "What vllm-nodeagent-serve.service starts, as user vllm: prewarm, launch vLLM under the binding, READY=1 "
        "once it passed the readiness gate; exits when vLLM fails so systemd restarts it.",
        ("systemctl start vllm-nodeagent-serve", "vllm-nodeagent serve --configured && echo configured"),
    ),
    "reload": (
        "make the running daemon re-read its config, and wait",
        "The units' ExecReload=: SIGHUP to the daemon (PID, else $MAINPID), then wait until it has the new config "
        "in force (and a vLLM restarted for it passed the readiness gate) or refused it; exit 2 names the config "
        "error, the daemon keeps the old config. Reads no config itself.",
        ("systemctl reload vllm-nodeagent", "vllm-nodeagent reload 1234   # a daemon started by hand"),
    ),
}
