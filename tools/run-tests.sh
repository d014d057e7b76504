#!/usr/bin/env bash
# Runs every test area and reports each; exits non-zero if any failed.
# Each area's output is shown and kept in .cache/test-logs/<area>.log; the
# closing summary gives each area's time and, for a failed one, the last error
# lines of its log (the reason, which may stand hundreds of lines above).
# The last line is plain, for CI: "test areas: N passed, M failed".
#   TEST_AREAS="lint unit"   only these areas (default: all, in this order)
# Areas joined by "+" run at the same time, each in a lane of its own; areas
# joined by "," run one after the other in one lane. The default,
# "ansible,bench-smoke+kmod": the kernel module's TCG guests run beside the
# molecule scenarios and then the benchmarks' short runs (numbers not kept).
# kmod is the longer lane since its agent lab may take 25 minutes in the
# saturated machine (2026-12-07: ansible 2,144 s, bench-smoke 413 s, kmod
# 1,722 s with a 720 s agent lab that did not finish). None shares anything with another (the guests are VMs; test
# hosts and benchmark labs are namespaces with prefixes of their own: fwh-,
# fwr-/fwm-/fwk-). Output is shown when the group ends, one area after the
# other.
set -uo pipefail
cd "$(dirname "$0")/.."
read -ra groups <<<"${TEST_AREAS:-lint unit sim lab ansible,bench-smoke+kmod}"
# Each area's limit (seconds), about twice its time on a fresh 2-core machine
# (kmod: while ansible runs beside it): a hang anywhere (a test, a guest, a
# playbook) fails its area and the next area still runs, well inside CI's 90
# minutes. timeout signals its whole process group.
declare -A limit=([lint]=300 [unit]=900 [sim]=900 [lab]=1500 [bench-smoke]=900 [ansible]=3600 [kmod]=3600)
logs=.cache/test-logs
mkdir -p "$logs"
failed=()
summary=()
ran=0
total_start=$SECONDS

# The reason an area failed: its last lines that name an error, make's own
# "*** [...] Error" lines left out (they only say that something failed).
reason() { # <log>
    grep -E 'Error|error:|FAILED|FAIL |[Ff]ailed|not found|No such file|Traceback|timed out|No rule' "$1" |
        grep -vE '^make(\[[0-9]+\])?: \*\*\* \[' | tail -n 5 | cut -c1-240
}

# One area under its limit; stdout is its output. The exit status is make's,
# or timeout's 124/137 when the area ran over its limit.
run_area() { # <area>
    timeout --kill-after=30 "${limit[$1]:-1800}" make --no-print-directory "test-$1" 2>&1
}

# The summary lines of an area that ended with <rc> after <seconds>.
record() { # <area> <rc> <seconds> [note]
    local area=$1 rc=$2 took=$3 note=${4:-}
    ran=$((ran + 1))
    if [ "$rc" -eq 0 ]; then
        summary+=("$(printf '  %-12s pass %6d s%s' "$area" "$took" "$note")")
        return
    fi
    failed+=("$area")
    summary+=("$(printf '  %-12s FAIL %6d s%s  (log %s)' "$area" "$took" "$note" "$logs/$area.log")")
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        summary+=("      stopped: over its limit of ${limit[$area]:-1800} s (tools/run-tests.sh)")
    fi
    while IFS= read -r line; do
        summary+=("      $line")
    done < <(reason "$logs/$area.log")
}

for group in "${groups[@]}"; do
    IFS=+ read -ra lanes <<<"$group"
    if [ "${#lanes[@]}" -eq 1 ] && [[ $group != *,* ]]; then
        area=$group
        echo "=== make test-$area"
        start=$SECONDS
        run_area "$area" | tee "$logs/$area.log"
        rc=${PIPESTATUS[0]}
        record "$area" "$rc" $((SECONDS - start))
        echo "=== test-$area took $((SECONDS - start)) s"
        continue
    fi
    IFS=+, read -ra members <<<"$group"
    echo "=== make $group (lanes at the same time; each area's output follows when the group ends)"
    start=$SECONDS
    # the shared set-up once, before the areas' own installers run side by side
    make --no-print-directory bootstrap
    pids=()
    for lane in "${lanes[@]}"; do
        # each area writes its own log and, when done, "<rc> <seconds>" beside it
        (
            IFS=, read -ra sequence <<<"$lane"
            for area in "${sequence[@]}"; do
                s=$SECONDS
                run_area "$area" >"$logs/$area.log"
                echo "$? $((SECONDS - s))" >"$logs/$area.rc"
            done
        ) &
        pids+=($!)
    done
    wait "${pids[@]}"
    for area in "${members[@]}"; do
        echo "=== make test-$area (ran in: $group)"
        cat "$logs/$area.log"
        read -r rc took <"$logs/$area.rc" || { rc=1 took=0; }
        rm -f "$logs/$area.rc"
        record "$area" "$rc" "$took" " (beside others)"
        echo "=== test-$area took $took s"
    done
    echo "=== $group took $((SECONDS - start)) s"
done

echo "=== summary (total $((SECONDS - total_start)) s)"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "FAILED areas: ${failed[*]}"
else
    echo "all test areas passed: ${groups[*]}"
fi
echo "test areas: $((ran - ${#failed[@]})) passed, ${#failed[@]} failed"
[ "${#failed[@]}" -eq 0 ]
