#!/usr/bin/env bash
# `make test-fresh`: the README's set-up on a machine that has nothing yet.
# Builds (once, cached) a clean Debian 12 root with only what a user needs to
# type `make` (minbase + make), puts a clean `git clone` of this checkout's
# HEAD in it and runs there, under systemd-nspawn:
#   1. tools/bootstrap.sh and the other areas' installers (bench-compare's
#      Debian packages; kmod's with FRESH_KMOD=1: two kernels, qemu), with
#      the network, as a new user would;
#   2. the test areas FRESH_AREAS (default "lint unit sim lab bench-smoke";
#      the simulator with SEEDS=$FRESH_SEEDS, default 50) through
#      tools/run-tests.sh, with a private network (namespaces and sysctls
#      work there, nothing leaves);
# then lists every "command not found" and FileNotFoundError seen.
# About 15 minutes here. Not covered: the ansible area (its molecule scenarios
# boot systemd-nspawn test hosts: containers in this container) and the kmod
# area (two kernels, TCG guests: an hour); FRESH_AREAS can name them.
# Uncommitted changes are not tested (HEAD is).
# Needs root; creates namespaces: run under flock /work/lab.lock.
# Last line: "test-fresh: N passed, M failed" (the installers count as one).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
CACHE=$REPO/.cache/test-fresh
AREAS=${FRESH_AREAS:-lint unit sim lab bench-smoke}
SEEDS=${FRESH_SEEDS:-50}
SUITE=bookworm
SEED_PACKAGES=make
# The machine's own configuration a fresh machine of this kind has too: its CA
# bundle (the package mirrors are reached through a TLS-inspecting proxy).
HOST_CA=/etc/ssl/certs/ca-certificates.crt

[ "$(id -u)" -eq 0 ] || { echo "test-fresh: needs root (mmdebstrap, systemd-nspawn)" >&2; exit 2; }
for cmd in mmdebstrap systemd-nspawn git; do
    command -v "$cmd" >/dev/null || { echo "test-fresh: $cmd missing: run tools/bootstrap.sh" >&2; exit 2; }
done
[ -z "$(git status --porcelain --untracked-files=no)" ] ||
    echo "test-fresh: uncommitted changes are not tested, only HEAD $(git rev-parse --short HEAD)"

# The root, built once per suite and seed list: into a temporary directory,
# renamed into place only when mmdebstrap succeeded.
key=$(printf '%s\n' "$SUITE" minbase "$SEED_PACKAGES" | sha256sum | cut -c1-12)
root=$CACHE/root-$key
mkdir -p "$CACHE"
if [ ! -f "$root/.test-fresh-complete" ]; then
    rm -rf "$root.building"
    echo "test-fresh: building a clean $SUITE root (mmdebstrap minbase + $SEED_PACKAGES)"
    if ! mmdebstrap --variant=minbase --include="$SEED_PACKAGES" "$SUITE" "$root.building" \
        >"$CACHE/mmdebstrap.log" 2>&1; then
        echo "test-fresh: mmdebstrap failed, see $CACHE/mmdebstrap.log" >&2
        exit 1
    fi
    touch "$root.building/.test-fresh-complete"
    rm -rf "$root"
    mv "$root.building" "$root"
fi

# Each run writes into an overlay over the root, so the root stays clean.
run=$CACHE/run
merged=$run/merged
cleanup() {
    umount "$merged" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM
umount "$merged" 2>/dev/null || true
rm -rf "$run"
mkdir -p "$run/upper" "$run/work" "$merged"
mount -t overlay overlay -o "lowerdir=$root,upperdir=$run/upper,workdir=$run/work" "$merged" || exit 1

git clone -q --no-checkout "$REPO" "$merged/root/fwcluster" &&
    git -C "$merged/root/fwcluster" checkout -q --detach "$(git rev-parse HEAD)" || exit 1
echo "test-fresh: clean clone of $(git rev-parse --short HEAD) in a fresh $SUITE root"

nspawn() { # <phase log> <nspawn options and command...>
    local log=$1
    shift
    systemd-nspawn -q --register=no --keep-unit --capability=all --console=pipe -D "$merged" \
        --bind-ro="$HOST_CA:/etc/fwcluster-host-ca.crt" --setenv=PIP_CERT=/etc/fwcluster-host-ca.crt \
        --setenv=REQUESTS_CA_BUNDLE=/etc/fwcluster-host-ca.crt \
        --chdir=/root/fwcluster "$@" 2>&1 | tee "$log"
}

passed=0
failed=0
start=$SECONDS
installers='./tools/bootstrap.sh && ./tools/bench-compare.sh --install-only'
[ "${FRESH_KMOD:-0}" = 1 ] && installers+=' && ./kmod/tools/install-build-deps.sh'
echo "=== test-fresh: installers ($installers)"
if nspawn "$CACHE/installers.log" bash -c "$installers"; then
    passed=$((passed + 1))
    echo "=== test-fresh: installers passed ($((SECONDS - start)) s)"
else
    failed=$((failed + 1))
    echo "=== test-fresh: installers FAILED ($((SECONDS - start)) s)"
fi

echo "=== test-fresh: areas $AREAS (SEEDS=$SEEDS), private network"
nspawn "$CACHE/areas.log" --private-network \
    --setenv=TEST_AREAS="$AREAS" --setenv=SEEDS="$SEEDS" ./tools/run-tests.sh
counts=$(tr -d '\r' <"$CACHE/areas.log" |
    sed -n 's/^test areas: \([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p' | tail -1)
read -r p f <<<"${counts:-0 1}"
passed=$((passed + p))
failed=$((failed + f))

echo "=== test-fresh: commands not found (from $CACHE/*.log)"
if ! grep -hE "command not found|FileNotFoundError|No such file or directory: '[^/']+'" \
    "$CACHE/installers.log" "$CACHE/areas.log" | sort | uniq -c; then
    echo "  none"
fi
echo "test-fresh: $passed passed, $failed failed ($((SECONDS - start)) s)"
[ "$failed" -eq 0 ]
