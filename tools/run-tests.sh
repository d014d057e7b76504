#!/usr/bin/env bash
# Runs every test area in turn and reports each; exits non-zero if any failed.
# Each area's output is shown and kept in .cache/test-logs/<area>.log; the
# closing summary gives each area's time and, for a failed one, the last error
# lines of its log (the reason, which may stand hundreds of lines above).
# The last line is plain, for CI: "test areas: N passed, M failed".
#   TEST_AREAS="lint unit"   only these areas (default: all, in this order)
set -uo pipefail
cd "$(dirname "$0")/.."
read -ra areas <<<"${TEST_AREAS:-lint unit sim lab bench-smoke ansible kmod}"
# Each area's limit (seconds), about twice its time on a fresh 2-core machine:
# a hang anywhere (a test, a guest, a playbook) fails its area and the next
# area still runs, well inside CI's 90 minutes. timeout signals its whole
# process group.
declare -A limit=([lint]=300 [unit]=600 [sim]=900 [lab]=1500 [bench-smoke]=900 [ansible]=2400 [kmod]=1500)
logs=.cache/test-logs
mkdir -p "$logs"
failed=()
summary=()
total_start=$SECONDS

# The reason an area failed: its last lines that name an error, make's own
# "*** [...] Error" lines left out (they only say that something failed).
reason() { # <log>
    grep -E 'Error|error:|FAILED|FAIL |[Ff]ailed|not found|No such file|Traceback|timed out|No rule' "$1" |
        grep -vE '^make(\[[0-9]+\])?: \*\*\* \[' | tail -n 5 | cut -c1-240
}

for area in "${areas[@]}"; do
    echo "=== make test-$area"
    start=$SECONDS
    log="$logs/$area.log"
    timeout --kill-after=30 "${limit[$area]:-1800}" make --no-print-directory "test-$area" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    if [ "$rc" -eq 0 ]; then
        summary+=("$(printf '  %-12s pass %6d s' "$area" $((SECONDS - start)))")
    else
        failed+=("$area")
        summary+=("$(printf '  %-12s FAIL %6d s  (log %s)' "$area" $((SECONDS - start)) "$log")")
        if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
            summary+=("      stopped: over its limit of ${limit[$area]:-1800} s (tools/run-tests.sh)")
        fi
        while IFS= read -r line; do
            summary+=("      $line")
        done < <(reason "$log")
    fi
    echo "=== test-$area took $((SECONDS - start)) s"
done

echo "=== summary (total $((SECONDS - total_start)) s)"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "FAILED areas: ${failed[*]}"
else
    echo "all test areas passed: ${areas[*]}"
fi
echo "test areas: $((${#areas[@]} - ${#failed[@]})) passed, ${#failed[@]} failed"
[ "${#failed[@]}" -eq 0 ]
