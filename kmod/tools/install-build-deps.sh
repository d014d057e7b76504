#!/bin/bash
# Install what building and guest-testing the clusterdev module needs.
# Idempotent: every step checks before it acts, so re-running is cheap.
#
#  - build-essential and the kernel headers of both targets: Debian bookworm's
#    6.1 and bookworm-backports' 6.12 (newer than CLUSTERIP's removal in 6.3);
#  - the matching kernel images, booted as guests (this host cannot load modules);
#  - qemu-system-x86 and virtme-ng (in kmod/.venv, so the agent's venv stays clean);
#  - with KMOD_NEWEST=1, the newest kernel of trixie-backports
#    (install-newest-headers.sh: unpacked from the mirror, no apt source
#    added), skipped if the mirror has none.
set -euo pipefail

KMOD_DIR=$(cd "$(dirname "$0")/.." && pwd)
BACKPORTS_LIST=/etc/apt/sources.list.d/bookworm-backports.list
VENV="$KMOD_DIR/.venv"

if [ "$(id -u)" != 0 ]; then
    echo "install-build-deps: must run as root (apt-get)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# make test runs this area beside the ansible area: wait for another apt
# rather than fail on its lock
APT_LOCK_WAIT=(-o DPkg::Lock::Timeout=600)

if ! grep -rqs '^deb .*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo 'deb http://deb.debian.org/debian bookworm-backports main' >"$BACKPORTS_LIST"
    apt-get update -q
fi

# The versioned package a metapackage points to in one suite ("linux-image-6.1.0-56-amd64").
versioned() { # <metapackage> <suite>
    apt-cache depends -t "$2" "$1" 2>/dev/null | awk '/Depends:/ {print $2; exit}'
}

# The "kmod" rows of tools/commands.tsv (the commands the builds and guests
# run), plus what provides no command of its own: the toolchain's headers and
# libraries, venv for virtme-ng's virtualenv.
source "$KMOD_DIR/../tools/commands.sh"
mapfile -t packages < <(commands_packages kmod)
packages+=(build-essential python3-venv)
for suite in bookworm bookworm-backports; do
    for meta in linux-image-amd64 linux-headers-amd64; do
        pkg=$(versioned "$meta" "$suite")
        if [ -z "$pkg" ]; then
            apt-get update -q
            pkg=$(versioned "$meta" "$suite")
        fi
        [ -n "$pkg" ] || { echo "install-build-deps: no $meta in $suite" >&2; exit 1; }
        packages+=("$pkg")
    done
done

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-build-deps: installing ${missing[*]}"
    # The backports kernel needs -t so apt takes its dependencies from the same suite.
    apt-get install "${APT_LOCK_WAIT[@]}" -y -q --no-install-recommends -t bookworm-backports "${missing[@]}" ||
        apt-get install "${APT_LOCK_WAIT[@]}" -y -q --no-install-recommends "${missing[@]}"
fi

if [ ! -x "$VENV/bin/vng" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q virtme-ng
fi
commands_check kmod "$VENV/bin" || {
    echo "install-build-deps: some commands are still missing (above)" >&2
    exit 1
}
# The newest backports kernel (trixie's, unpacked without an apt source) is a
# third target only on request: it downloads ~130 MB and adds a guest run.
if [ "${KMOD_NEWEST:-0}" = 1 ]; then
    "$KMOD_DIR/tools/install-newest-headers.sh" ||
        echo "install-build-deps: the newest backports kernel could not be unpacked: only the bookworm targets" >&2
fi
echo "install-build-deps: ok (${packages[*]}, virtme-ng in $VENV)"
