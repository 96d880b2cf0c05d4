#!/bin/sh
# tests/check-arrows.sh: the module arrows, enforced on #include lines.
#
#   agent -> coord -> crypto, and coord -> coord/etcd:
#   - coord/etcd/ includes nothing from coord/ outside coord/etcd/, nor crypto/, nor agent/
#   - coord/      includes nothing from agent/
#   - crypto/     includes nothing from coord/ or agent/
#
# Usage: check-arrows.sh [ROOT]      check the tree at ROOT (default: .); exit 1 on a violation
#        check-arrows.sh --self-test plant a bad include in a temp copy of each module and show
#                                    that the check fails on each (and passes on the clean copy)
set -u

# check ROOT: print every include that runs against an arrow; exit status 1 if any.
check() {
    root=$1
    bad=0
    for f in $(cd "$root" && find crypto coord agent -name '*.[ch]' 2>/dev/null | sort); do
        case $f in
        coord/etcd/*) mod=etcd ;;
        coord/*) mod=coord ;;
        crypto/*) mod=crypto ;;
        *) continue ;; # agent/ may include everything below it
        esac
        dir=${f%/*}
        # quoted and angle includes; a bare name is resolved next to the including file
        sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*["<]\([^">]*\)[">].*/\1/p' \
            "$root/$f" |
            while IFS= read -r inc; do
                case $inc in
                crypto/* | coord/* | agent/*) path=$inc ;;
                *)
                    [ -e "$root/$dir/$inc" ] || continue # a system header
                    path=$(realpath -m --relative-to="$root" "$root/$dir/$inc")
                    ;;
                esac
                ok=1
                case $mod:$path in
                etcd:coord/etcd/*) ;;
                etcd:*) ok=0 ;;
                coord:agent/*) ok=0 ;;
                crypto:coord/* | crypto:agent/*) ok=0 ;;
                esac
                [ $ok = 1 ] || echo "arrows: $f includes \"$inc\": against agent -> coord -> crypto, coord -> coord/etcd"
            done
    done | {
        n=0
        while IFS= read -r line; do
            echo "$line" >&2
            n=$((n + 1))
        done
        [ $n = 0 ]
    } || bad=1
    return $bad
}

self_test() {
    tmp=$(mktemp -d) || exit 1
    trap 'rm -rf "$tmp"' EXIT
    fails=0
    # each plant: file to create, bad include it carries
    for plant in \
        'coord/etcd/zz_plant.c|#include "coord/member.h"' \
        'coord/etcd/zz_plant.c|#include "crypto/config.h"' \
        'coord/etcd/zz_plant.c|#include "../cas.h"' \
        'coord/zz_plant.c|#include "agent/daemon_int.h"' \
        'crypto/zz_plant.c|#include "coord/cas.h"' \
        'crypto/zz_plant.h|#  include <agent/state.h>'; do
        file=${plant%%|*}
        line=${plant#*|}
        rm -rf "$tmp/tree"
        mkdir -p "$tmp/tree"
        cp -R crypto coord agent "$tmp/tree/"
        printf '%s\n' "$line" >"$tmp/tree/$file"
        if check "$tmp/tree" 2>/dev/null; then
            echo "arrows self-test: NOT caught: $file: $line" >&2
            fails=$((fails + 1))
        fi
    done
    # a good include from the same places passes
    rm -rf "$tmp/tree"
    mkdir -p "$tmp/tree"
    cp -R crypto coord agent "$tmp/tree/"
    printf '#include "coord/etcd/etcd.h"\n#include "crypto/config.h"\n' >"$tmp/tree/coord/zz_ok.c"
    printf '#include "etcd_int.h"\n' >"$tmp/tree/coord/etcd/zz_ok.c"
    printf '#include "coord/member.h"\n' >"$tmp/tree/agent/zz_ok.c"
    if ! check "$tmp/tree"; then
        echo "arrows self-test: a clean tree failed" >&2
        fails=$((fails + 1))
    fi
    [ $fails = 0 ] || exit 1
    echo "arrows: self-test caught 6 planted includes, passed the clean copy"
}

if [ "${1:-}" = --self-test ]; then
    self_test
    exit 0
fi
root=${1:-.}
if check "$root"; then
    echo "arrows: every #include follows agent -> coord -> crypto, coord -> coord/etcd"
else
    exit 1
fi
