#!/bin/sh
# Install every build and test dependency of atrest on Debian 12, idempotently.
# Used by `make deps`, and so by `make check`, `make demo`, `make bench` and .ci/run.
set -eu
PKGS="build-essential pkg-config
libuv1-dev libyaml-dev libssl-dev libsodium-dev libcurl4-openssl-dev libjansson-dev
libmicrohttpd-dev libsystemd-dev libcmocka-dev
clang libclang-rt-14-dev clang-format
etcd-server etcd-client wrk openssl curl iproute2 systemd procps
python3 python3-cryptography python3-nacl python3-pytest python3-pytest-xdist spin"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "deps: installing:$missing"
if [ "$(id -u)" != 0 ]; then
    echo "deps: need root to install packages (run 'sudo make deps')" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# Debian's etcd-server and systemd try to start services from postinst; we start our own.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
