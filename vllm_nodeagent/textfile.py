"""Where the metrics textfile goes (``[agent] metrics_textfile``): light, so doctor's check of the directory does
not import the daemon."""

from __future__ import annotations

from vllm_nodeagent.host import Host

FILE_NAME = "vllm_nodeagent.prom"
DEBIAN_DIR = "/var/lib/prometheus/node-exporter"  # Debian/Ubuntu prometheus-node-exporter's built-in default
GENERIC_DIR = "/var/lib/node_exporter/textfile_collector"  # upstream docs and RHEL-likes


def default_textfile(host: Host) -> str:
    """Where this distro's node_exporter reads textfiles: Debian and its derivatives (ID or ID_LIKE names debian)
    use ``DEBIAN_DIR``, everyone else ``GENERIC_DIR``; read from /etc/os-release under the root."""
    text = host.read_or("/etc/os-release") or host.read_or("/usr/lib/os-release") or ""
    ids: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() in ("ID", "ID_LIKE"):
            ids.update(value.strip().strip("\"'").split())
    return f"{DEBIAN_DIR if 'debian' in ids else GENERIC_DIR}/{FILE_NAME}"


def resolve_textfile(host: Host, configured: str) -> str:
    """``[agent] metrics_textfile``: "" = off, "auto" = this distro's directory, else the path given."""
    return default_textfile(host) if configured == "auto" else configured
