#!/bin/sh
# Run each benchmark binary given and pass its BENCH lines through:
#   BENCH name=<name> value=<number> unit=<unit> baseline=<number> ratio=<number>
# Other output of a benchmark goes to stderr. Exits non-zero if any benchmark failed or
# printed no BENCH line.  Usage: sh bench/run.sh build/rel/bench/bench_*
set -u
fail=0
for b in "$@"; do
    [ -x "$b" ] || { echo "bench: $b: not an executable" >&2; fail=1; continue; }
    name=$(basename "$b")
    out=$(mktemp) || exit 1
    start=$(date +%s)
    if "$b" > "$out"; then rc=0; else rc=$?; fi
    grep '^BENCH ' "$out"
    grep -v '^BENCH ' "$out" >&2
    n=$(grep -c '^BENCH ' "$out")
    rm -f "$out"
    echo "bench: $name: $n figures in $(( $(date +%s) - start ))s, exit $rc" >&2
    if [ "$rc" -ne 0 ] || [ "$n" -eq 0 ]; then fail=1; fi
done
exit $fail
