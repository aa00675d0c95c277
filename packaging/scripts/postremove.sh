#!/bin/sh
# vllm-nodeagent post-remove (deb postrm and rpm %postun share this file).
# deb: $1 = remove | purge | upgrade | ...;  rpm: $1 = 0 (erase) | >= 1 (upgrade).
# purge (deb only): delete state and cache. A journal of originals that could not be reverted at
# removal is kept (and reported): it is the only record of the host's original settings.
# The "vllm" user is left in place (its files may live outside the package's directories).
set -e

case "${1:-}" in
    purge)
        if [ -f /var/lib/vllm-nodeagent/originals.json ]; then
            echo "vllm-nodeagent: keeping unreverted /var/lib/vllm-nodeagent/originals.json" >&2
            find /var/lib/vllm-nodeagent -mindepth 1 -maxdepth 1 ! -name originals.json -exec rm -rf {} +
        else
            rm -rf /var/lib/vllm-nodeagent
        fi
        rm -rf /var/cache/vllm-nodeagent /opt/vllm-nodeagent
        ;;
    remove|0)
        rm -rf /opt/vllm-nodeagent/venv
        ;;
esac

if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
exit 0
