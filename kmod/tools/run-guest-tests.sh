#!/bin/bash
# Boot every kernel that clusterdev was built for (kmod/build/<kver>/) once
# under virtme-ng (TCG: this host's /dev/kvm hangs guests) and run
# kmod/tests/guest_tests.py inside, against that kernel's clusterdev.ko.
# Usage: run-guest-tests.sh [<kernel version>...]
# Output: the guest's PASS/FAIL lines, prefixed with the kernel, then
#   kmod-guest <kver>: N passed, M failed
# Exit status: non-zero if any guest test failed or a guest did not report.
set -uo pipefail

KMOD_DIR=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$KMOD_DIR/.venv/bin:$PATH"
GUEST_TIMEOUT=${GUEST_TIMEOUT:-2400}  # seconds per boot (the agent lab alone may take 25 min: guest_tests.py)
# Cheap memory-error detectors of the stock Debian kernels (no KASAN or lockdep
# there): SLUB red zones, poisoning and user tracking, and KFENCE sampling.
GUEST_CMDLINE=${GUEST_CMDLINE:-slub_debug=FZPU kfence.sample_interval=5}
# While iterating: GUEST_ONLY=failover,ipv6 runs those tests (and what they need).
GUEST_ONLY=${GUEST_ONLY:-}
# The real agents' lab (agent_lab) takes minutes under TCG: it runs on one
# kernel of the run, Debian 12's own (AGENT_LAB_KERNEL=all: on every kernel).
AGENT_LAB_KERNEL=${AGENT_LAB_KERNEL:-6.1.}

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for d in "$KMOD_DIR"/build/*/clusterdev.ko; do
        [ -e "$d" ] && targets+=("$(basename "$(dirname "$d")")")
    done
fi
[ ${#targets[@]} -gt 0 ] || { echo "run-guest-tests: nothing built (run tools/build.sh)" >&2; exit 1; }
command -v vng >/dev/null || { echo "run-guest-tests: vng missing (run tools/install-build-deps.sh)" >&2; exit 1; }

status=0
for kver in "${targets[@]}"; do
    ko="$KMOD_DIR/build/$kver/clusterdev.ko"
    log="$KMOD_DIR/build/$kver/guest.log"
    if [ ! -e "/boot/vmlinuz-$kver" ] || [ ! -e "$ko" ]; then
        echo "kmod-guest $kver: 0 passed, 1 failed (no /boot/vmlinuz-$kver or $ko)"
        status=1
        continue
    fi
    skip=""
    if [ "$AGENT_LAB_KERNEL" != all ] && [[ "$kver" != "$AGENT_LAB_KERNEL"* ]]; then
        skip=" --skip agent_lab"
    fi
    start=$(date +%s)
    # /usr/bin/python3: the Debian interpreter, present in the guest as on the host.
    timeout "$GUEST_TIMEOUT" vng --run "/boot/vmlinuz-$kver" --disable-kvm --memory 1G --cpus 2 \
        --append "$GUEST_CMDLINE" \
        -- "/usr/bin/python3 $KMOD_DIR/tests/guest_tests.py --ko $ko${GUEST_ONLY:+ --only $GUEST_ONLY}$skip" >"$log" 2>&1 </dev/null
    rc=$?
    sed -n -e 's/^\(PASS\|FAIL\|  \)/'"[$kver] "'&/p' "$log"
    summary=$(grep -E '^guest: [0-9]+ passed, [0-9]+ failed' "$log" | tail -1)
    if [ -z "$summary" ]; then
        echo "kmod-guest $kver: 0 passed, 1 failed (guest gave no summary, exit $rc; see $log)"
        tail -20 "$log"
        status=1
        continue
    fi
    echo "kmod-guest $kver: ${summary#guest: } ($(($(date +%s) - start)) s)"
    echo "$summary" | grep -q ' 0 failed' || status=1
done
exit $status
