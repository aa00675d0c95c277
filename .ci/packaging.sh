#!/usr/bin/env bash
# CI part: systemd unit, deb/rpm packages and the Ansible role (issue 5).
# Runs as root on a fresh Debian 12 machine (no GPU; systemd need not be PID 1). Installs what it
# needs, builds both packages, lints them, installs/upgrades/removes/purges the .deb on this
# machine, then applies the Ansible role for real (connection local) twice and asserts the
# second run changes nothing. Leaves the machine without the package. ~3-5 min on 2 cores.
# Env: PKG_CI_SKIP_APT=1 skips apt-get (tools already present).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
out=packaging/out
unit=systemd/vllm-nodeagent.service
serve_unit=systemd/vllm-nodeagent-serve.service
# The fleet view (docs/fleet.md): shipped for the Prometheus and Grafana hosts to copy
rules_dst=/usr/share/vllm-nodeagent/prometheus/vllm-nodeagent.rules.yml
dashboard_dst=/usr/share/vllm-nodeagent/grafana/vllm-nodeagent.json
fleet_files=("$rules_dst" "$dashboard_dst")
ANSIBLE_CORE_VERSION=2.18.19
ANSIBLE_LINT_VERSION=25.12.2
ANSIBLE_COMPAT_VERSION=26.10.0
PYTEST_VERSION=8.4.2
EXPOSURE_THRESHOLD=50   # systemd-analyze's 0-100 scale: 50 = "exposure 5.0"
SERVE_EXPOSURE_THRESHOLD=30   # vLLM's own unit runs model code: "exposure 3.0" at most
t0=$(date +%s)

step() { printf '\n=== [packaging %3ss] %s\n' "$(($(date +%s) - t0))" "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
check_stat() {  # path  expected "mode owner group"
    local got
    got=$(stat -c '%a %U %G' "$1") || fail "$1 missing"
    [ "$got" = "$2" ] || fail "$1: mode/owner '$got', expected '$2'"
}
pkg_installed() { dpkg-query -W -f='${Status}' vllm-nodeagent 2>/dev/null | grep -q 'install ok installed'; }
cleanup() { if pkg_installed || dpkg-query -W vllm-nodeagent >/dev/null 2>&1; then dpkg --purge vllm-nodeagent >/dev/null 2>&1 || true; fi; }
trap cleanup EXIT

step "tools"
if [ "${PKG_CI_SKIP_APT:-0}" != 1 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 update -qq
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends \
        python3 python3-venv python3-apt lintian rpm shellcheck systemd numactl ca-certificates >/dev/null
    # promtool (package prometheus) checks the shipped rule file; the package starts a service on install: a
    # policy-rc.d that denies starts for this install, where the machine has none (as .ci/run does)
    if ! command -v promtool >/dev/null; then
        deny_start=""
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d && deny_start=1
        fi
        apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends prometheus >/dev/null
        if [ -n "$deny_start" ]; then rm -f /usr/sbin/policy-rc.d; fi
    fi
fi

step "shellcheck"
shellcheck .ci/packaging.sh packaging/build.sh
shellcheck -s sh packaging/scripts/*.sh packaging/files/vllm-nodeagent packaging/files/mkvenv

step "systemd unit: security exposure (threshold $EXPOSURE_THRESHOLD) and forbidden settings"
for bad in ProtectKernelTunables PrivateDevices MemoryDenyWriteExecute ProtectClock DeviceAllow DevicePolicy \
           ProtectProc ProcSubset PrivateUsers; do
    if grep -Eq "^[[:space:]]*$bad=" "$unit"; then fail "$unit sets $bad= (breaks /proc/sys, /sys, /dev/nvidia* or JIT)"; fi
done
systemd-analyze security --offline=yes --no-pager "$unit" | tail -1
systemd-analyze security --offline=yes --threshold="$EXPOSURE_THRESHOLD" "$unit" >/dev/null \
    || fail "exposure of $unit is above $EXPOSURE_THRESHOLD/100"

step "serve unit: security exposure (threshold $SERVE_EXPOSURE_THRESHOLD), no capabilities, user vllm"
for bad in PrivateDevices MemoryDenyWriteExecute AmbientCapabilities=CAP Requires=vllm-nodeagent PartOf BindsTo; do
    if grep -Eq "^[[:space:]]*$bad" "$serve_unit"; then fail "$serve_unit sets $bad (GPUs, JIT, or a host restart reaching vLLM)"; fi
done
for want in '^User=vllm$' '^CapabilityBoundingSet=$' '^NoNewPrivileges=yes$' '^ProtectSystem=strict$' \
            '^PrivateTmp=yes$' '^Type=notify$' '^Restart=on-failure$' '^DevicePolicy=closed$' '^WatchdogSec='; do
    grep -Eq "$want" "$serve_unit" || fail "$serve_unit lacks $want"
done
systemd-analyze security --offline=yes --no-pager "$serve_unit" | tail -1
systemd-analyze security --offline=yes --threshold="$SERVE_EXPOSURE_THRESHOLD" "$serve_unit" >/dev/null \
    || fail "exposure of $serve_unit is above $SERVE_EXPOSURE_THRESHOLD/100"

step "build deb + rpm"
rm -rf "$out"/*.deb "$out"/*.rpm
b0=$(date +%s)
RELEASE=1 make -s -C packaging deb rpm
echo "build time: $(($(date +%s) - b0)) s"
deb=$(ls "$out"/vllm-nodeagent_*-1_*.deb)
rpm_file=$(ls "$out"/vllm-nodeagent-*-1.*.rpm)
deb_list=$(dpkg-deb -c "$deb")   # listed once: grep -q closing a pipe early would fail the pipeline (pipefail)
rpm_list=$(rpm -qlp "$rpm_file")

step "man page vllm-nodeagent(8) in both packages, rendering without warnings"
grep -q ' ./usr/share/man/man8/vllm-nodeagent.8.gz$' <<<"$deb_list" || fail "the deb lacks vllm-nodeagent(8)"
grep -qx /usr/share/man/man8/vllm-nodeagent.8.gz <<<"$rpm_list" || fail "the rpm lacks vllm-nodeagent(8)"
if command -v groff >/dev/null; then
    warn=$(dpkg-deb --fsys-tarfile "$deb" | tar -xOf - ./usr/share/man/man8/vllm-nodeagent.8.gz | gunzip |
        groff -man -Tutf8 -ww -z 2>&1) || fail "groff failed on vllm-nodeagent(8)"
    [ -z "$warn" ] || fail "vllm-nodeagent(8) renders with warnings: $warn"
fi

step "fleet view in both packages: alert rules and Grafana dashboard under /usr/share/vllm-nodeagent"
for f in "${fleet_files[@]}"; do
    grep -qF " .$f" <<<"$deb_list" || fail "the deb lacks $f"
    grep -qxF "$f" <<<"$rpm_list" || fail "the rpm lacks $f"
done

step "lintian (no errors allowed)"
lintian --fail-on error --info "$deb"

step "rpm metadata and scriptlets"
rpm -qlpi "$rpm_file"
scripts=$(rpm -qp --scripts "$rpm_file")
if grep -q '%systemd\|%{' <<<"$scripts"; then fail "rpm scriptlets contain unexpanded macros"; fi
for want in 'postinstall scriptlet' 'preuninstall scriptlet' 'postuninstall scriptlet' mkvenv 'try-restart'; do
    grep -q "$want" <<<"$scripts" || fail "rpm scriptlets lack '$want'"
done
# The only enable: the upgrade migration to the two-unit layout, and only of the serve unit.
if grep -E 'systemctl( --[a-z-]+)* enable ' <<<"$scripts" | grep -v 'enable vllm-nodeagent-serve.service$' | grep -q .; then
    fail "scriptlets must never enable a service (except the serve unit when migrating an enabled install)"
fi
grep -q 'try-restart vllm-nodeagent.service' <<<"$scripts" || fail "postinstall does not try-restart the host agent"
if grep -Eq 'systemctl( --[a-z-]+)* ([a-z]+-)*(restart|reload) [^#]*vllm-nodeagent-serve' <<<"$scripts"; then fail "scriptlets must never restart vLLM's unit"; fi
rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$rpm_file" | grep -qx 'cn /etc/vllm-nodeagent/config.toml' \
    || fail "config.toml is not %config(noreplace) in the rpm"
rpm -qp --requires "$rpm_file" | grep -q '^python3 >= 3.9' || fail "rpm does not require python3 >= 3.9"

step "install the deb"
apt-get -o DPkg::Lock::Timeout=300 install -y -qq "./$deb" >/dev/null
pkg_installed || fail "vllm-nodeagent not installed"
check_stat /usr/bin/vllm-nodeagent "755 root root"
check_stat /etc/vllm-nodeagent/config.toml "640 root vllm"
check_stat /lib/systemd/system/vllm-nodeagent.service "644 root root"
check_stat /lib/systemd/system/vllm-nodeagent-serve.service "644 root root"
check_stat /var/lib/vllm-nodeagent "755 root root"
check_stat /var/lib/vllm-nodeagent/hf "750 vllm vllm"
check_stat /var/lib/vllm-nodeagent/home "750 vllm vllm"
check_stat /opt/vllm-nodeagent/venv "755 root root"
getent passwd vllm | grep -q ':/usr/sbin/nologin$' || fail "user vllm missing or has a login shell"
grep -qx /etc/vllm-nodeagent/config.toml /var/lib/dpkg/info/vllm-nodeagent.conffiles || fail "config.toml is no conffile"
# The packaging trap: the venv must use this host's python3, not the build machine's.
venv_py=$(readlink -f /opt/vllm-nodeagent/venv/bin/python)
host_py=$(readlink -f /usr/bin/python3)
[ "$venv_py" = "$host_py" ] || fail "venv python is $venv_py, not the host's $host_py"
cmp -s "$unit" /lib/systemd/system/vllm-nodeagent.service || fail "installed unit differs from $unit"
cmp -s "$serve_unit" /lib/systemd/system/vllm-nodeagent-serve.service || fail "installed unit differs from $serve_unit"
check_stat "$rules_dst" "644 root root"
check_stat "$dashboard_dst" "644 root root"
cmp -s packaging/prometheus/vllm-nodeagent.rules.yml "$rules_dst" || fail "installed $rules_dst differs from the source"
cmp -s packaging/grafana/vllm-nodeagent.json "$dashboard_dst" || fail "installed $dashboard_dst differs from the source"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["panels"], "no panels"' "$dashboard_dst" \
    || fail "$dashboard_dst is not a dashboard (JSON with panels)"
vllm-nodeagent --version

step "promtool check rules (the installed rule file)"
command -v promtool >/dev/null || fail "promtool not found (Debian package prometheus; .ci/run and the tools step install it)"
promtool check rules "$rules_dst" || fail "promtool check rules failed on $rules_dst"

step "systemd-analyze verify (installed units)"
verify_log=$(systemd-analyze verify /lib/systemd/system/vllm-nodeagent.service \
    /lib/systemd/system/vllm-nodeagent-serve.service 2>&1) || { echo "$verify_log"; fail "verify failed"; }
if grep -i 'vllm-nodeagent' <<<"$verify_log"; then fail "systemd-analyze verify complains about the unit"; fi

step "doctor --json from the installed copy"
set +e
doctor_out=$(vllm-nodeagent doctor --json)
doctor_rc=$?
set -e
[ "$doctor_rc" = 0 ] || [ "$doctor_rc" = 1 ] || fail "doctor exited $doctor_rc (2 = config error)"
python3 -c 'import json,sys; d=json.load(sys.stdin); assert isinstance(d["checks"], list) and "fail" in d["summary"], d' \
    <<<"$doctor_out" || fail "doctor --json did not print the expected JSON"
echo "doctor rc=$doctor_rc summary: $(python3 -c 'import json,sys; print(json.load(sys.stdin)["summary"])' <<<"$doctor_out")"

step "upgrade keeps an edited config and migrates an enabled, serving install to the serve unit"
printf '\n# edited by .ci/packaging.sh\n' >> /etc/vllm-nodeagent/config.toml
sed -i 's|^model = ""|model = "/srv/models/ci-model"|' /etc/vllm-nodeagent/config.toml
vllm-nodeagent serve --configured || fail "serve --configured: the edited config serves a model"
systemctl --no-reload enable vllm-nodeagent.service   # works on files; systemd need not be PID 1
systemctl is-enabled --quiet vllm-nodeagent-serve.service && fail "serve unit enabled before the migration"
sum_before=$(sha256sum /etc/vllm-nodeagent/config.toml)
RELEASE=2 make -s -C packaging deb >/dev/null
deb2=$(ls "$out"/vllm-nodeagent_*-2_*.deb)
apt-get -o DPkg::Lock::Timeout=300 install -y -qq -o Dpkg::Options::=--force-confold "./$deb2" >/dev/null
dpkg-query -W -f='${Version}\n' vllm-nodeagent | grep -q -- '-2$' || fail "upgrade did not install release 2"
[ "$(sha256sum /etc/vllm-nodeagent/config.toml)" = "$sum_before" ] || fail "upgrade replaced the edited config"
systemctl is-enabled --quiet vllm-nodeagent-serve.service || fail "upgrade did not enable the serve unit"
systemctl --no-reload disable vllm-nodeagent.service vllm-nodeagent-serve.service
vllm-nodeagent --version

step "removal reverts journaled settings, purge removes state"
orig=$(cat /proc/sys/vm/max_map_count)
if [ "$orig" -lt 262144 ]; then
    vllm-nodeagent apply --only sysctl.vm.max_map_count
    [ "$(cat /proc/sys/vm/max_map_count)" -ge 262144 ] || fail "apply did not raise vm.max_map_count"
    [ -f /var/lib/vllm-nodeagent/originals.json ] || fail "apply journaled nothing"
else
    echo "vm.max_map_count is already $orig: revert-on-remove is not exercised on this machine"
fi
dpkg --remove vllm-nodeagent
[ "$(cat /proc/sys/vm/max_map_count)" = "$orig" ] || fail "removal did not revert vm.max_map_count to $orig"
[ ! -e /usr/bin/vllm-nodeagent ] || fail "/usr/bin/vllm-nodeagent left after remove"
[ ! -e /opt/vllm-nodeagent/venv ] || fail "venv left after remove"
[ ! -e /usr/share/vllm-nodeagent ] || fail "/usr/share/vllm-nodeagent (rules, dashboard) left after remove"
[ -f /etc/vllm-nodeagent/config.toml ] || fail "remove (not purge) dropped the config"
dpkg --purge vllm-nodeagent
for p in /etc/vllm-nodeagent /var/lib/vllm-nodeagent /opt/vllm-nodeagent; do
    [ ! -e "$p" ] || fail "$p left after purge"
done
getent passwd vllm >/dev/null || fail "purge must keep the vllm user"

step "ansible: lint, syntax, real run (connection local, no service), idempotence"
venv=$out/.ansiblevenv
if [ ! -x "$venv/bin/ansible-playbook" ]; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "ansible-core==$ANSIBLE_CORE_VERSION" \
        "ansible-lint==$ANSIBLE_LINT_VERSION" "ansible-compat==$ANSIBLE_COMPAT_VERSION" "pytest==$PYTEST_VERSION"
fi
# tests/test_packaging.py in a venv that has jinja2 + PyYAML, so the role-template tests never skip
"$venv/bin/python" -m pytest -q -p no:cacheprovider --noconftest tests/test_packaging.py
export PATH="$repo/$venv/bin:$PATH" ANSIBLE_FORCE_COLOR=0 ANSIBLE_NOCOLOR=1
(cd packaging/ansible && ansible-lint --offline --profile production site.yml roles/vllm_nodeagent)
(cd packaging/ansible && ansible-playbook -i ci/inventory.ini --syntax-check site.yml)
play=(ansible-playbook -i ci/inventory.ini site.yml -e "vllm_nodeagent_package_path=$repo/$deb"
      -e "vllm_nodeagent_fleet_report_path=$repo/$out/fleet-report.txt")
(cd packaging/ansible && "${play[@]}") | tee "$out/ansible-run1.log"
grep -Eq 'localhost +: ok=[0-9]+ +changed=[1-9]' "$out/ansible-run1.log" || fail "first ansible run changed nothing"
pkg_installed || fail "the role did not install the package"
grep -q 'rendered by the Ansible role' /etc/vllm-nodeagent/config.toml || fail "the role did not template the config"
(cd packaging/ansible && "${play[@]}") | tee "$out/ansible-run2.log"
grep -Eq 'localhost +: ok=[0-9]+ +changed=0 +unreachable=0 +failed=0' "$out/ansible-run2.log" \
    || fail "second ansible run was not idempotent (changed != 0)"
if ! grep -q '^HOST' "$out/fleet-report.txt" || ! grep -q '^localhost' "$out/fleet-report.txt"; then
    fail "fleet report lacks the host table"
fi
cat "$out/fleet-report.txt"
dpkg --purge vllm-nodeagent >/dev/null

step "done: packaging CI passed in $(($(date +%s) - t0)) s"
