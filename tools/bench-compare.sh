#!/usr/bin/env bash
# Runs the four comparisons of fwcluster against keepalived + conntrackd
# (bench/compare_{failover,sync,syncloss,active}.py) and writes their
# sections to docs/benchmarks/compare_*.md + .png. Installs what they need
# from Debian first (the "bench" rows of tools/commands.tsv), only
# if missing. Extra arguments go to every script, e.g. --quick or --runs 10.
# Needs root (network namespaces). Each script removes what it built, even
# on failure. --install-only: install and check, run nothing (test-fresh).
# `FWCLUSTER_LAB_PREFIX=fwk- FWCLUSTER_LAB_RUN=/run/fwcluster-compare/fwk
# bin/lab down` (and fwm-) cleans up after a killed run.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "bench-compare: needs root (network namespaces)" >&2
    exit 2
fi

# The "bench" rows of tools/commands.tsv (the base ones come with bootstrap).
source tools/commands.sh
mapfile -t bench_packages < <(commands_packages bench)
mapfile -t missing < <(commands_missing_packages "${bench_packages[@]}")
if [ "${#missing[@]}" -gt 0 ]; then
    echo "bench-compare: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    # On a systemd host the packages' own services would run in the host
    # namespace; the benchmarks run their own instances in lab namespaces only.
    if [ -d /run/systemd/system ]; then
        systemctl disable --now keepalived conntrackd 2>/dev/null || true
    fi
fi

[ -x .venv/bin/python ] || ./tools/bootstrap.sh
commands_check bench || { echo "bench-compare: some commands are still missing (above)" >&2; exit 1; }
if [ "${1:-}" = --install-only ]; then
    echo "bench-compare: installed: ${bench_packages[*]}"
    exit 0
fi

failed=()
for name in failover sync syncloss active; do
    echo "=== bench compare_$name $*"
    start=$SECONDS
    if ! .venv/bin/python "bench/compare_$name.py" "$@"; then
        failed+=("$name")
    fi
    echo "=== bench compare_$name took $((SECONDS - start)) s"
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "bench-compare: incomplete (a run failed or a side is missing): ${failed[*]}"
    exit 1
fi
echo "bench-compare: all four comparisons done"
