#!/bin/sh
# Run each libFuzzer target over its committed seed corpus, then for N seconds of new inputs.
# A crash leaves its input in build/fuzz/artifacts/ and fails the run.
set -eu
secs=$1; shift
pass=0; fail=0
mkdir -p build/fuzz/artifacts
for f in "$@"; do
    name=$(basename "$f")
    seeds=fuzz/corpus/$name
    work=build/fuzz/corpus/$name
    mkdir -p "$work" "$seeds"
    if "$f" -max_total_time="$secs" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
         -artifact_prefix=build/fuzz/artifacts/"$name"- -print_final_stats=0 \
         "$work" "$seeds" > build/fuzz/"$name".log 2>&1; then
        pass=$((pass+1)); echo "fuzz: $name ok ($(grep -c . build/fuzz/"$name".log) log lines, ${secs}s)"
    else
        fail=$((fail+1)); echo "fuzz: $name FAILED, see build/fuzz/$name.log"; tail -n 30 build/fuzz/"$name".log
    fi
done
echo "fuzz: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
