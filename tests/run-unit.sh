#!/bin/sh
# Run each unit-test binary; print one summary line; exit non-zero if any failed.
pass=0; fail=0; failed=""
for t in "$@"; do
    if "$t"; then pass=$((pass+1)); else fail=$((fail+1)); failed="$failed $t"; fi
done
echo "unit: $pass passed, $fail failed"
[ "$fail" -eq 0 ] || { echo "unit: failed:$failed" >&2; exit 1; }
