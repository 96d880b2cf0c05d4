#!/bin/sh
# make demo: a local etcd and one atrest agent on loopback, in a temporary directory.
# Pushes a valid desired config, then a bad one, then a new valid one, and after each step
# shows what an operator would look at. Stops everything it started on exit. Bounded in time.
set -eu
cd "$(dirname "$0")/.."
ATREST=${ATREST:-$PWD/atrest}
[ -x "$ATREST" ] || { echo "demo: $ATREST not built (run make)" >&2; exit 1; }
command -v etcd >/dev/null || { echo "demo: etcd not installed (run make deps)" >&2; exit 1; }

DIR=$(mktemp -d /tmp/atrest-demo.XXXXXX)
ETCD_PID=""; AGENT_PID=""
cleanup() {
    rc=$?
    for p in $AGENT_PID $ETCD_PID; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in $AGENT_PID $ETCD_PID; do
        i=0
        while kill -0 "$p" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
        kill -KILL "$p" 2>/dev/null || true
    done
    rm -rf "$DIR"
    [ $rc -eq 0 ] && echo "demo: done; everything it started is stopped and $DIR removed."
    exit $rc
}
trap cleanup EXIT
trap "exit 130" INT
trap "exit 143" TERM
trap "exit 129" HUP
trap "exit 141" PIPE

freeport() {
    /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
step() { printf '\n\033[1m==== %s\033[0m\n' "$*"; }
show() { printf '\n\033[2m$ %s\033[0m\n' "$*"; }
# Poll a command until it succeeds: wait_until SECONDS what cmd...
wait_until() {
    secs=$1; what=$2; shift 2
    i=0
    while ! "$@" >/dev/null 2>&1; do
        i=$((i+1))
        if [ $i -gt $((secs*10)) ]; then echo "demo: timed out waiting for $what" >&2; exit 1; fi
        sleep 0.1
    done
}

CPORT=$(freeport); PPORT=$(freeport); SPORT=$(freeport)
mkdir -p "$DIR/etcd" "$DIR/desired" "$DIR/enc" "$DIR/state"
DESIRED=$DIR/desired/desired.yaml
EFFECTIVE=$DIR/enc/config.yaml

step "start etcd on 127.0.0.1:$CPORT (data in $DIR/etcd)"
etcd --name demo --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$CPORT" --advertise-client-urls "http://127.0.0.1:$CPORT" \
    --listen-peer-urls "http://127.0.0.1:$PPORT" --initial-advertise-peer-urls "http://127.0.0.1:$PPORT" \
    --initial-cluster "demo=http://127.0.0.1:$PPORT" --log-level error > "$DIR/etcd.log" 2>&1 &
ETCD_PID=$!
wait_until 20 "etcd" etcdctl --endpoints "http://127.0.0.1:$CPORT" endpoint health
echo "etcd is healthy (pid $ETCD_PID)"

KEY1=$("$ATREST" genkey)
KEY2=$("$ATREST" genkey)
config() { # config NAME1 SECRET1 [NAME2 SECRET2]
    cat <<EOF
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources:
      - secrets
      - configmaps
    providers:
      - aescbc:
          keys:
            - name: $1
              secret: $2
EOF
    [ $# -ge 4 ] && printf '            - name: %s\n              secret: %s\n' "$3" "$4"
    printf '      - identity: {}\n'
}
push() { # atomically, as configuration management does
    cat > "$DESIRED.tmp" && mv "$DESIRED.tmp" "$DESIRED"
}
redact() { sed -E 's/(secret:[[:space:]]*).*/\1REDACTED/' "$1"; }
look() {
    show "sed 's/secret: .*/secret: REDACTED/' $EFFECTIVE    # the file kube-apiserver reads"
    if [ -f "$EFFECTIVE" ]; then redact "$EFFECTIVE"; ls -l "$EFFECTIVE" | cut -d' ' -f1; else echo "(no effective file)"; fi
    show "atrest status --addr 127.0.0.1:$SPORT"
    "$ATREST" status --addr "127.0.0.1:$SPORT" || true
    show "curl -s 127.0.0.1:$SPORT/metrics | grep -E '^atrest_(config|desired|effective|etcd)'"
    curl -s "http://127.0.0.1:$SPORT/metrics" | grep -E '^atrest_(config|desired|effective|etcd)' || true
    show "etcdctl get --prefix /atrest/    # what agents share through etcd: never a key"
    etcdctl --endpoints "http://127.0.0.1:$CPORT" get --prefix /atrest/ || true
    show "tail -n 6 agent.log"
    tail -n 6 "$DIR/agent.log"
}
reloads() {
    curl -s "http://127.0.0.1:$SPORT/metrics" | grep "^atrest_config_reloads_total{status=\"$1\"}" | awk '{print $2}'
}
metric_is() { [ "$(reloads "$1")" = "$2" ]; }
# The member list in /status is refreshed shortly after each change under alive/: wait until it
# shows this node's current effective fingerprint, so what we print is consistent.
members_caught_up() {
    "$ATREST" status --addr "127.0.0.1:$SPORT" --json 2>/dev/null | /usr/bin/python3 -c '
import json, sys
d = json.load(sys.stdin)
fp = (d.get("effective") or {}).get("fingerprint")
ms = d.get("members") or []
sys.exit(0 if fp and ms and all(m.get("effective_fingerprint") == fp for m in ms) else 1)'
}

step "1. push a valid desired config (aescbc key1, then identity) and start the agent"
config key1 "$KEY1" | push
"$ATREST" agent --node demo-1 --desired "$DESIRED" --effective "$EFFECTIVE" \
    --state-dir "$DIR/state" --status-listen "127.0.0.1:$SPORT" \
    --etcd-servers "http://127.0.0.1:$CPORT" --debounce-ms 100 > "$DIR/agent.log" 2>&1 &
AGENT_PID=$!
wait_until 20 "the agent to be ready" curl -sf "http://127.0.0.1:$SPORT/readyz"
wait_until 20 "the member list" members_caught_up
look

step "2. push a BAD desired config (key2 is 20 bytes): the effective file must not change"
BAD=$(/usr/bin/python3 -c 'import base64,os; print(base64.b64encode(os.urandom(20)).decode())')
config key2 "$BAD" key1 "$KEY1" | push
wait_until 20 "the failure to be counted" metric_is failure 1
look

step "3. push a new valid desired config (key2 first to write, key1 kept to read)"
config key2 "$KEY2" key1 "$KEY1" | push
wait_until 20 "the second reload" metric_is success 2
wait_until 20 "the member list" members_caught_up
look

step "4. stop the agent (SIGTERM) and etcd"
kill -TERM "$AGENT_PID"
i=0; while kill -0 "$AGENT_PID" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
wait "$AGENT_PID" && echo "agent exited with status 0" || echo "agent exited with status $?"
AGENT_PID=""
