#!/bin/sh
# vllm-nodeagent pre-remove (deb prerm and rpm %preun share this file).
# deb: $1 = remove | upgrade | deconfigure | failed-upgrade;  rpm: $1 = 0 (erase) | >= 1 (upgrade).
# On removal, while the agent is still installed: stop + disable both units, then put back the host
# settings it changed (`vllm-nodeagent revert`, only if originals are journaled), then drop the venv.
# On upgrade: nothing (the new package's post-install restarts a running service).
set -e

case "${1:-}" in
    remove|deconfigure|0) ;;
    *) exit 0 ;;
esac

if [ -d /run/systemd/system ]; then
    systemctl stop vllm-nodeagent-serve.service vllm-nodeagent.service || true
fi
# Disabling only removes symlinks, which works without a running systemd too.
if command -v systemctl >/dev/null 2>&1; then
    systemctl --no-reload disable vllm-nodeagent-serve.service vllm-nodeagent.service >/dev/null 2>&1 || true
fi

if [ -f /var/lib/vllm-nodeagent/originals.json ] && [ -x /opt/vllm-nodeagent/venv/bin/vllm-nodeagent ]; then
    echo "vllm-nodeagent: reverting host settings from /var/lib/vllm-nodeagent/originals.json" >&2
    if ! /opt/vllm-nodeagent/venv/bin/vllm-nodeagent revert; then
        echo "vllm-nodeagent: WARNING: revert failed; the journal is kept in /var/lib/vllm-nodeagent" >&2
    fi
fi

rm -rf /opt/vllm-nodeagent/venv
exit 0
