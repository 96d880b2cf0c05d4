#!/bin/sh
# Run the unit-test binaries, UNIT_JOBS at a time (default 2: most wait on their own etcd);
# print each one's output in the given order, then one summary line; exit non-zero if any
# failed.
jobs=${UNIT_JOBS:-2}
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
i=0
for t in "$@"; do
    i=$((i + 1))
    printf '%s\n%s\n' "$i" "$t"
done | xargs -d '\n' -n 2 -P "$jobs" sh -c 'start=$(date +%s); "$2" >"$0/$1.log" 2>&1; echo "$? $(( $(date +%s) - start ))" >"$0/$1.rc"' "$tmp"
pass=0; fail=0; failed=""; i=0
for t in "$@"; do
    i=$((i + 1))
    cat "$tmp/$i.log"
    read -r rc secs <"$tmp/$i.rc" 2>/dev/null || { rc=127; secs=0; }
    echo "unit: $t: exit $rc, ${secs}s"
    if [ "$rc" -eq 0 ]; then pass=$((pass + 1)); else fail=$((fail + 1)); failed="$failed $t"; fi
done
echo "unit: $pass passed, $fail failed"
[ "$fail" -eq 0 ] || { echo "unit: failed:$failed" >&2; exit 1; }
