#!/bin/bash
# The newest kernel Debian ships in its backports (trixie-backports: 7.x),
# as a third build and guest target beside bookworm's 6.1 and
# bookworm-backports' 6.12, on this Debian 12 host.
#
# No apt source is added: the packages (headers, kbuild, image, modules) are
# fetched from the Debian mirror by their pool path in trixie-backports'
# Packages index, checked against its SHA256, and unpacked (not installed with
# dpkg: they depend on trixie's libc6 2.38+ and gcc-14):
#   /usr/src/linux-headers-<kver>{,-common}, /usr/lib/linux-kbuild-<ver>
#       the kbuild tools (fixdep, modpost, objtool...) run with trixie's
#       glibc, unpacked into $LIBS, through small wrapper scripts;
#   /boot/vmlinuz-<kver>, /usr/lib/modules/<kver> (depmod run) for the guest.
# build.sh builds against it with gcc-compat.sh in place of gcc-14.
# Idempotent; exits 0 with a message when the mirror cannot be reached.
# Usage: install-newest-headers.sh [<kernel version, e.g. 7.3.4+deb13-amd64>]
set -euo pipefail

MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=trixie-backports
LIBS=/opt/kmod-trixie-libs
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fetch_index() { # <suite> <file>
    curl -fsS -m 300 "$MIRROR/dists/$1/main/binary-amd64/Packages.xz" | xz -dc >"$2"
}
# field <index> <package> <field>
field() { awk -v P="$2" -v F="$3:" '$0 == "Package: " P {p = 1} p && $1 == F {print $2; exit} /^$/ {p = 0}' "$1"; }
get() { # <index> <package>: download into $work, check its SHA256; prints the .deb path
    local path sum deb
    path=$(field "$1" "$2" Filename)
    sum=$(field "$1" "$2" SHA256)
    [ -n "$path" ] || { echo "install-newest-headers: $2 not in the index" >&2; return 1; }
    deb="$work/$(basename "$path")"
    curl -fsS -m 900 -o "$deb" "$MIRROR/$path"
    echo "$sum  $deb" | sha256sum -c --quiet - >&2
    echo "$deb"
}

if ! fetch_index "$SUITE" "$work/backports" 2>/dev/null; then
    echo "install-newest-headers: $SUITE not reachable at $MIRROR: only the bookworm targets"
    exit 0
fi
kver=${1:-$(sed -n 's/^Package: linux-headers-\([0-9.]*+deb13-amd64\)$/\1/p' "$work/backports" | sort -V | tail -1)}
[ -n "$kver" ] || { echo "install-newest-headers: no linux-headers-*-amd64 in $SUITE" >&2; exit 1; }
ver=${kver%-amd64}

if [ -e "/usr/src/linux-headers-$kver/Makefile" ] && [ -e "/boot/vmlinuz-$kver" ] &&
    [ -e "/usr/lib/modules/$kver/modules.dep" ] && [ -x "$LIBS/ld-linux-x86-64.so.2" ]; then
    echo "install-newest-headers: $kver already unpacked"
    exit 0
fi
echo "install-newest-headers: $kver from $SUITE"

unpack="$work/root"
mkdir -p "$unpack"
for p in "linux-headers-$kver" "linux-headers-$ver-common" "linux-kbuild-$ver" \
    "linux-binary-$kver" "linux-modules-$kver"; do
    dpkg-deb -x "$(get "$work/backports" "$p")" "$unpack"
done
fetch_index trixie "$work/trixie"
for p in libc6 libelf1t64 libssl3t64 zlib1g libzstd1 libgcc-s1; do
    dpkg-deb -x "$(get "$work/trixie" "$p")" "$unpack"
done

mkdir -p "$LIBS"
cp -a "$unpack"/usr/lib/x86_64-linux-gnu/. "$LIBS"/
cp -a "$unpack/usr/src/linux-headers-$kver" "$unpack/usr/src/linux-headers-$ver-common" /usr/src/
rm -rf "/usr/lib/linux-kbuild-$ver"
cp -a "$unpack/usr/lib/linux-kbuild-$ver" /usr/lib/
# Each ELF tool runs under trixie's loader; --argv0 keeps its own name
# (objtool picks its real binary by it).
find "/usr/lib/linux-kbuild-$ver" -type f -perm -u+x | while read -r f; do
    file -b "$f" | grep -q '^ELF 64-bit.*dynamically linked' || continue
    mv "$f" "$f.trixie-bin"
    printf '#!/bin/sh\nexec %s/ld-linux-x86-64.so.2 --library-path %s --argv0 "$0" "$0.trixie-bin" "$@"\n' \
        "$LIBS" "$LIBS" >"$f"
    chmod +x "$f"
done
rm -rf "/usr/lib/modules/$kver"
cp -a "$unpack/usr/lib/modules/$kver" /usr/lib/modules/
cp "$unpack/usr/lib/modules/$kver/vmlinuz" "/boot/vmlinuz-$kver"
depmod "$kver" 2>/dev/null
echo "install-newest-headers: ok ($kver: headers, kbuild, image, modules)"
