#!/bin/sh
# vllm-nodeagent post-install (deb postinst and rpm %post share this file).
# deb: $1 = configure [old-version] | abort-*;  rpm: $1 = 1 (install) | >= 2 (upgrade).
# Creates the "vllm" user, the state directories and the venv; reloads systemd; on upgrade restarts
# the host agent (vllm-nodeagent.service) if it was running, never vLLM's unit. Never enables a service
# on install: the operator does. The one exception is the upgrade from the single-unit layout (see 5.).
set -e

case "${1:-}" in
    configure) if [ -n "${2:-}" ]; then action=upgrade; else action=install; fi ;;
    abort-upgrade|abort-remove|abort-deconfigure) action=upgrade ;;
    1) action=install ;;
    *[!0-9]*|'') action=install ;;
    *) action=upgrade ;;
esac

# 1. the unprivileged user vLLM runs as
if ! getent passwd vllm >/dev/null; then
    if command -v systemd-sysusers >/dev/null 2>&1; then
        systemd-sysusers /usr/lib/sysusers.d/vllm-nodeagent.conf
    else
        getent group vllm >/dev/null || groupadd --system vllm
        useradd --system --gid vllm --home-dir /var/lib/vllm-nodeagent/home --no-create-home \
            --shell /usr/sbin/nologin --comment "vLLM inference server (vllm-nodeagent)" vllm
    fi
fi
# GPUs whose device nodes are not world-accessible are usually group video/render.
for group in video render; do
    if getent group "$group" >/dev/null && ! id -nG vllm | tr ' ' '\n' | grep -qx "$group"; then
        usermod -a -G "$group" vllm
    fi
done

# 2. state directories (the unit's StateDirectory= also creates the top one)
if command -v systemd-tmpfiles >/dev/null 2>&1; then
    systemd-tmpfiles --create /usr/lib/tmpfiles.d/vllm-nodeagent.conf
else
    install -d -m 0755 -o root -g root /var/lib/vllm-nodeagent
    install -d -m 0750 -o vllm -g vllm /var/lib/vllm-nodeagent/hf /var/lib/vllm-nodeagent/home
fi

# The serve unit (User=vllm) reads the config: root-owned, group vllm, not world-readable. An operator's
# own group choice is kept.
config=/etc/vllm-nodeagent/config.toml
if [ -f "$config" ] && [ "$(stat -c %G "$config")" = root ]; then
    chgrp vllm "$config"
fi

# 3. the venv, built with this host's python3 from the shipped wheelhouse
/opt/vllm-nodeagent/libexec/mkvenv

# 4. from the single-unit layout (vLLM a child of the root agent) to two units: an upgraded install whose
# agent is enabled and serves [vllm] as user vllm gets vllm-nodeagent-serve.service enabled, so it keeps
# serving without the operator doing anything (vLLM restarts once, in its new unit).
migrate=no
if [ "$action" = upgrade ] && command -v systemctl >/dev/null 2>&1 \
    && systemctl is-enabled --quiet vllm-nodeagent.service 2>/dev/null \
    && ! systemctl is-enabled --quiet vllm-nodeagent-serve.service 2>/dev/null \
    && /usr/bin/vllm-nodeagent serve --configured >/dev/null 2>&1; then
    echo "vllm-nodeagent: moving vLLM into vllm-nodeagent-serve.service (two-unit layout)" >&2
    systemctl --no-reload enable vllm-nodeagent-serve.service
    migrate=yes
fi

# 5. systemd (only where it runs; chroots and containers have none). Only the host agent restarts:
# a running vllm-nodeagent-serve.service (and its vLLM) is left alone.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    if [ "$action" = upgrade ]; then
        systemctl try-restart vllm-nodeagent.service || true
        if [ "$migrate" = yes ] && systemctl is-active --quiet vllm-nodeagent.service; then
            systemctl start --no-block vllm-nodeagent-serve.service || true
        fi
    fi
fi
exit 0
