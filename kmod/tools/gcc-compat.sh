#!/bin/sh
# Debian 13 (trixie) kernels name gcc-14 as their compiler; this Debian 12
# host has gcc-12. For building clusterdev against trixie-backports headers,
# this stands in for gcc-14: it maps the one gcc-14-only option those kernels
# use (-fmin-function-alignment) to the gcc-12 equivalent (-falign-functions)
# and runs gcc. A module built so is checked to compile and to load in a guest
# of that kernel; a node running the kernel builds with its own gcc-14.
#   gcc-compat.sh --make-args <kver>   the make arguments build.sh needs for
#                                      that kernel (empty if its compiler exists)
if [ "$1" = --make-args ]; then
    vars=/usr/src/linux-headers-$2/.kernelvariables
    want=$(sed -n 's/^CC = .*)gcc-\([0-9][0-9]*\)$/gcc-\1/p' "$vars" 2>/dev/null)
    if [ -z "$want" ] || command -v "$want" >/dev/null || command -v "x86_64-linux-gnu-$want" >/dev/null; then
        exit 0
    fi
    # The kernel's pahole is newer too: no BTF for the module (not needed to load it).
    echo "CC=$(cd "$(dirname "$0")" && pwd)/gcc-compat.sh CONFIG_DEBUG_INFO_BTF_MODULES="
    exit 0
fi
for a in "$@"; do
    shift
    case "$a" in
        -fmin-function-alignment=*) set -- "$@" "-falign-functions=${a#-fmin-function-alignment=}" ;;
        *) set -- "$@" "$a" ;;
    esac
done
exec gcc "$@"
