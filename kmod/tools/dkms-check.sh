#!/bin/bash
# Check that dkms.conf works: build clusterdev with DKMS for every installed
# target kernel, in a private DKMS tree (nothing is added to the system's).
set -uo pipefail

KMOD_DIR=$(cd "$(dirname "$0")/.." && pwd)
VERSION=$(sed -n 's/^PACKAGE_VERSION="\(.*\)"/\1/p' "$KMOD_DIR/clusterdev/dkms.conf")
command -v dkms >/dev/null || { echo "dkms: FAILED (dkms not installed)"; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src/clusterdev-$VERSION" "$work/tree"
cp "$KMOD_DIR"/clusterdev/{*.c,*.h,Kbuild,Makefile,dkms.conf} "$work/src/clusterdev-$VERSION/"

status=0
for d in /usr/src/linux-headers-*-amd64; do
    kver=${d#/usr/src/linux-headers-}
    if [ "${KMOD_NEWEST:-0}" != 1 ] && ! dpkg-query -S "$d" >/dev/null 2>&1; then
        continue  # unpacked by install-newest-headers.sh: only with KMOD_NEWEST=1
    fi
    if [ -n "$("$KMOD_DIR/tools/gcc-compat.sh" --make-args "$kver")" ]; then
        # DKMS builds with the kernel's own compiler, which this host lacks.
        echo "dkms: $kver skipped (its compiler is not installed here; build.sh covers it)"
        continue
    fi
    if dkms build --sourcetree "$work/src" --dkmstree "$work/tree" \
        -m clusterdev -v "$VERSION" -k "$kver" >"$work/log" 2>&1 &&
        ls "$work/tree/clusterdev/$VERSION/$kver/x86_64/module/"clusterdev.ko* >/dev/null 2>&1; then
        echo "dkms: $kver ok"
    else
        echo "dkms: $kver FAILED"
        tail -20 "$work/log"
        status=1
    fi
done
exit $status
