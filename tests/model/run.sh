#!/bin/sh
# Check the rotation model (tests/model/rotation.pml) exhaustively with spin, then check that
# each mutation of it (a dropped wait or guard) makes spin find a violation of the expected
# safety rule. Used by `make model` (and so `make check`). docs/MODEL.md explains the model.
#
#   sh tests/model/run.sh            the real model, then every mutation
#   MODEL_DEFS="-DMAXCRASH=2" sh tests/model/run.sh   another bound (slower)
#
# Fails on: any error in the real model; a search that was not complete (depth limit hit,
# memory limit hit); a mutation that spin does not catch, or catches as another rule.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
model="$here/rotation.pml"
SPIN=${SPIN:-spin}
CC=${CC:-cc}
MODEL_DEFS=${MODEL_DEFS:-}
DEPTH=${MODEL_DEPTH:-100000}
MEMLIM=${MODEL_MEMLIM:-3000} # MB; pan stops (and this script fails) beyond it

command -v "$SPIN" >/dev/null 2>&1 || { echo "model: spin not installed (make deps)" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/atrest-model.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

# build <dir> <cc -O level> <extra spin -D flags...>: pan for the model in <dir>
build() {
    dir=$1
    opt=$2
    shift 2
    mkdir -p "$dir"
    cp "$model" "$dir/rotation.pml"
    # shellcheck disable=SC2086
    (cd "$dir" && "$SPIN" $MODEL_DEFS "$@" -a rotation.pml >spin.out 2>&1) || {
        cat "$dir/spin.out" >&2
        echo "model: spin -a failed" >&2
        exit 1
    }
    # pan.c is spin's generated code: its own warnings are not ours (-w).
    (cd "$dir" && "$CC" "$opt" -w -DSAFETY -DCOLLAPSE -DMEMLIM="$MEMLIM" -o pan pan.c) || {
        echo "model: compiling pan failed" >&2
        exit 1
    }
}

incomplete() {
    grep -E "max search depth too small|out of memory|MEMLIM|Search not completed|aborted" "$1"
}

# ---- the real model: exhaustive, no error ----
build "$work/real" -O2
start=$(date +%s)
(cd "$work/real" && ./pan -m"$DEPTH" -w24 >pan.out 2>&1) || true
secs=$(($(date +%s) - start))
out="$work/real/pan.out"
if ! grep -q "Full statespace search for" "$out" || ! grep -q "errors: 0" "$out"; then
    cat "$out" >&2
    [ -e "$work/real/rotation.pml.trail" ] &&
        (cd "$work/real" && "$SPIN" $MODEL_DEFS -t -p rotation.pml 2>&1 | tail -n 60) >&2
    echo "MODEL result=fail: spin found an error in the model" >&2
    exit 1
fi
if incomplete "$out" >&2; then
    echo "MODEL result=fail: the search was not complete" >&2
    exit 1
fi
states=$(sed -n 's/^ *\([0-9][0-9]*\) states, stored.*/\1/p' "$out")
trans=$(sed -n 's/^ *\([0-9][0-9]*\) transitions.*/\1/p' "$out")
depth=$(sed -n 's/.*depth reached \([0-9][0-9]*\),.*/\1/p' "$out")
mem=$(sed -n 's/^ *\([0-9.][0-9.]*\).*total actual memory usage.*/\1/p' "$out")
if [ -z "$states" ] || [ -z "$depth" ] || [ "$depth" -ge "$DEPTH" ]; then
    cat "$out" >&2
    echo "MODEL result=fail: could not read the search's figures (or depth hit -m$DEPTH)" >&2
    exit 1
fi
echo "MODEL model=rotation defs='${MODEL_DEFS}' states=$states transitions=$trans depth=$depth memory_mb=$mem seconds=$secs errors=0 exhaustive=yes"

# ---- each mutation: spin must find a violation, of the expected rule ----
# name, the rule its assertion names (the /* Sx */ comment on the violated line)
fails=0
for m in A:S1 B:S2 C:S7 D:S8 E:S1; do
    name=${m%%:*}
    rule=${m#*:}
    dir="$work/mut_$name"
    build "$dir" -O0 -DMUT_"$name" # found in a second: compile fast
    (cd "$dir" && ./pan -m"$DEPTH" -w24 >pan.out 2>&1) || true
    if ! grep -q "errors: [1-9]" "$dir/pan.out" || [ ! -e "$dir/rotation.pml.trail" ]; then
        tail -n 30 "$dir/pan.out" >&2
        echo "MODEL mutation=$name result=fail: spin found no violation" >&2
        fails=$((fails + 1))
        continue
    fi
    # Replay the counterexample; the violated assertion's line must carry the rule's name.
    # shellcheck disable=SC2086
    (cd "$dir" && "$SPIN" $MODEL_DEFS -DMUT_"$name" -t rotation.pml >replay.out 2>&1) || true
    line=$(sed -n 's/^spin: rotation.pml:\([0-9][0-9]*\), Error: assertion violated.*/\1/p' "$dir/replay.out" | head -n 1)
    steps=$(sed -n 's/.*assertion violated.*(at depth \([0-9][0-9]*\)).*/\1/p' "$dir/pan.out" | head -n 1)
    if [ -z "$line" ]; then
        tail -n 30 "$dir/replay.out" >&2
        echo "MODEL mutation=$name result=fail: the trail does not replay to an assertion" >&2
        fails=$((fails + 1))
        continue
    fi
    text=$(sed -n "${line}p" "$dir/rotation.pml")
    case "$text" in
    *"/* $rule"*) echo "MODEL mutation=$name result=caught rule=$rule line=$line depth=$steps" ;;
    *)
        echo "$text" >&2
        echo "MODEL mutation=$name result=fail: violated line $line is not $rule" >&2
        fails=$((fails + 1))
        ;;
    esac
done
[ "$fails" -eq 0 ] || exit 1
echo "MODEL result=ok"
