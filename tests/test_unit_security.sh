#!/bin/sh
# The systemd unit's hardening: `systemd-analyze security --offline=true` must report an overall
# exposure level of at most MAX (default 2.0). Also checks that the unit is well-formed.
# Usage: sh tests/test_unit_security.sh [MAX]
set -eu
cd "$(dirname "$0")/.."
max=${1:-2.0}
if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "unit-security: systemd-analyze not installed" >&2
    exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed 's|@BINDIR@|/usr/local/bin|g' systemd/atrest.service > "$tmp/atrest.service"
if grep -q '@[A-Z_]*@' "$tmp/atrest.service"; then
    echo "unit-security: unsubstituted @...@ left in the unit" >&2
    exit 1
fi
out=$(systemd-analyze security --offline=true "$tmp/atrest.service" 2>&1) || {
    echo "$out" >&2
    echo "unit-security: systemd-analyze failed" >&2
    exit 1
}
level=$(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for atrest.service: \([0-9.]*\).*/\1/p')
if [ -z "$level" ]; then
    printf '%s\n' "$out" >&2
    echo "unit-security: no 'Overall exposure level' line" >&2
    exit 1
fi
if awk -v l="$level" -v m="$max" 'BEGIN { exit !(l + 0 <= m + 0) }'; then
    echo "unit-security: overall exposure $level (limit $max): ok"
else
    printf '%s\n' "$out" | grep '✗' >&2 || true
    echo "unit-security: overall exposure $level is above $max" >&2
    exit 1
fi
# the directives the agent relies on
for d in 'Type=notify' 'WatchdogSec=' 'LimitCORE=0' 'LimitMEMLOCK=' 'Restart=on-failure' \
         'ReadWritePaths=/etc/kubernetes/enc /var/lib/atrest' \
         'ExecStartPre=@BINDIR@/atrest agent --check --config /etc/atrest/agent.yaml' \
         'ExecReload=/bin/kill -HUP $MAINPID'; do
    grep -qF "$d" systemd/atrest.service || { echo "unit-security: missing $d" >&2; exit 1; }
done
