#!/usr/bin/env bash
# CI part: the VM test bed (tests/vm, docs/vm-testbed.md). Root on Debian 12, from nothing:
# installs qemu/debootstrap, builds the .deb, makes a venv with pytest and a pinned ansible-core,
# then runs `pytest -m vm tests/vm`. Exits non-zero on any failure.
#
# Environment: VLLM_NODEAGENT_VM_ACCEL=auto|kvm|tcg (default auto: KVM tried once, bounded, then TCG),
#   VLLM_NODEAGENT_VM_CACHE (default /var/cache/vllm-nodeagent-vm: the base image, kept between runs),
#   VM_PYTEST_ARGS (extra pytest arguments, e.g. "-k ansible").
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
t0=$(date +%s)
log() { printf '[vm.sh %s] %s\n' "$(date +%T)" "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    echo "vm.sh: needs root (debootstrap, qemu, mkfs of a root filesystem)" >&2
    exit 2
fi

# 1. host tools
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v ssh >/dev/null || need+=(openssh-client)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    log "apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${need[@]}" ca-certificates
fi

# 2. the package under test
if [ -f packaging/Makefile ]; then
    log "make -C packaging deb"
    make -C packaging deb
    VLLM_NODEAGENT_DEB=$(find "$repo/packaging/out" -maxdepth 1 -name '*.deb' -printf '%T@ %p\n' | sort -n | tail -n1 | cut -d' ' -f2-)
    export VLLM_NODEAGENT_DEB
    log "package: $VLLM_NODEAGENT_DEB"
fi

# 3. test runner + Ansible (pinned), in a venv of their own
venv=$repo/.venv-vm
if [ ! -x "$venv/bin/ansible-playbook" ] || [ ! -x "$venv/bin/pytest" ]; then
    log "creating $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "pytest==8.3.5" "ansible-core==2.17.14"
fi
export PATH="$venv/bin:$PATH"
export ANSIBLE_PLAYBOOK="$venv/bin/ansible-playbook"

# 4. the bed
log "pytest -m vm tests/vm"
rc=0
# shellcheck disable=SC2086  # VM_PYTEST_ARGS is a list of words on purpose
"$venv/bin/python" -m pytest -m vm tests/vm --confcutdir=tests/vm -p no:cacheprovider -rA ${VM_PYTEST_ARGS:-} || rc=$?
log "VM suite wall time: $(( $(date +%s) - t0 )) s (rc=$rc)"
exit "$rc"
