#!/bin/bash
# A KASAN + lockdep (PROVE_LOCKING) guest kernel from Debian's linux-source-6.12,
# configured by virtme-ng (defconfig + what vng needs) plus what the guest
# tests load (netfilter, conntrack, nf_tables, bridge, veth, IPv6). Debian
# ships no such kernel; its linux-image-*-dbg packages are debug symbols only.
# Usage: build-debug-kernel.sh [<work dir>]    (default /tmp/kmod-debug-kernel)
# Then: kmod/tools/build.sh is not used; build the module against the tree:
#   make -C <work dir>/linux-source-6.12 M=$PWD/kmod/clusterdev modules
# and boot it with vng --run <work dir>/linux-source-6.12.
# Cost (measured 2026-12-06, see docs/clusterdev.md): hours on 2 shared cores.
set -euo pipefail

KMOD_DIR=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/tmp/kmod-debug-kernel}
SRC="$WORK/linux-source-6.12"
export PATH="$KMOD_DIR/.venv/bin:$PATH"

apt-get install -y -q flex bison libelf-dev bc >/dev/null
mkdir -p "$WORK"
if [ ! -e "$SRC/Makefile" ]; then
    (cd "$WORK" && apt-get download linux-source-6.12 && dpkg-deb -x linux-source-6.12_*.deb pkg &&
        tar -xaf pkg/usr/src/linux-source-6.12.tar.xz)
fi
items=()
for c in KASAN=y KASAN_GENERIC=y KASAN_INLINE=y PROVE_LOCKING=y DEBUG_ATOMIC_SLEEP=y \
    MODULES=y MODULE_UNLOAD=y NETFILTER=y NETFILTER_ADVANCED=y NF_CONNTRACK=m \
    NF_CONNTRACK_MARK=y NF_CONNTRACK_EVENTS=y NF_CT_NETLINK=m NF_TABLES=m NF_TABLES_INET=y \
    NF_TABLES_NETDEV=y NF_TABLES_IPV4=y NF_TABLES_IPV6=y NFT_CT=m NFT_FIB_INET=m NFT_NUMGEN=m \
    NFT_HASH=m NFT_REJECT=m NFT_NAT=m NF_NAT=m IPV6=y BRIDGE=m BRIDGE_IGMP_SNOOPING=y VETH=m \
    NET_NS=y USER_NS=y VLAN_8021Q=m PACKET=y DEBUG_INFO_NONE=y 'LOCALVERSION="-kasan"'; do
    items+=(--configitem "CONFIG_$c")
done
cd "$SRC"
vng --kconfig "${items[@]}"
start=$(date +%s)
nice -n 19 make -j"${JOBS:-2}" bzImage modules
echo "build-debug-kernel: built in $(($(date +%s) - start)) s: $SRC/arch/x86/boot/bzImage"
