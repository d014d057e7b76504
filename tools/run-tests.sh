#!/usr/bin/env bash
# Runs every test area in turn and reports each; exits non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
areas=(lint unit sim lab bench-smoke ansible kmod)
failed=()
for area in "${areas[@]}"; do
    echo "=== make test-$area"
    start=$SECONDS
    if ! make --no-print-directory "test-$area"; then
        failed+=("$area")
    fi
    echo "=== test-$area took $((SECONDS - start)) s"
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "FAILED areas: ${failed[*]}"
    exit 1
fi
echo "all test areas passed: ${areas[*]}"
