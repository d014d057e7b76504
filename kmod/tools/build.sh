#!/bin/bash
# Build clusterdev.ko against every installed Debian kernel target, each in
# its own copy of the sources (kmod/build/<kernel>/), with -Werror: CI only,
# Kbuild (and so DKMS) does not set it.
# Usage: build.sh [<kernel version>...]   default: every /usr/src/linux-headers-*-amd64
# Headers of a kernel whose compiler is not installed (trixie-backports'
# kernels want gcc-14; this Debian 12 host has gcc-12) build with
# kmod/tools/gcc-compat.sh, see install-newest-headers.sh.
set -euo pipefail

KMOD_DIR=$(cd "$(dirname "$0")/.." && pwd)
SRC="$KMOD_DIR/clusterdev"

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for d in /usr/src/linux-headers-*-amd64; do
        [ -e "$d/Makefile" ] || continue
        # Headers unpacked by install-newest-headers.sh (no dpkg package) are
        # a target only with KMOD_NEWEST=1, as on a machine that never ran it.
        if [ "${KMOD_NEWEST:-0}" != 1 ] && ! dpkg-query -S "$d" >/dev/null 2>&1; then
            continue
        fi
        targets+=("${d#/usr/src/linux-headers-}")
    done
fi
[ ${#targets[@]} -gt 0 ] || { echo "build: no kernel headers installed (run tools/install-build-deps.sh)" >&2; exit 1; }

failed=0
for kver in "${targets[@]}"; do
    out="$KMOD_DIR/build/$kver"
    rm -rf "$out"
    mkdir -p "$out"
    cp "$SRC"/*.c "$SRC"/*.h "$SRC"/Kbuild "$out"/
    args=(KCFLAGS=-Werror)
    read -ra compat < <("$KMOD_DIR/tools/gcc-compat.sh" --make-args "$kver") || true
    args+=("${compat[@]}")
    if make -s -C "/usr/src/linux-headers-$kver" M="$out" "${args[@]}" modules 2>&1 |
        grep -v -e 'Skipping BTF generation' -e 'pahole version differs' \
            -e 'The kernel was built with' -e 'You are using' >"$out/build.log"; [ "${PIPESTATUS[0]}" -eq 0 ]; then
        echo "build: $kver ok ($out/clusterdev.ko${compat[*]:+, ${compat[*]}})"
    else
        echo "build: $kver FAILED" >&2
        cat "$out/build.log" >&2
        failed=1
    fi
done
exit $failed
