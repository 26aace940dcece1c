#!/bin/sh
# Pre-flight checks for the bridgelab container, then exec the daemon so that
# `docker stop` / `compose down` signals reach it directly.
set -eu

fail() { echo "bridgelab: $*" >&2; exit 1; }
say() { echo "bridgelab: $*"; }

# Recipes: the image ships its own; a mounted images/ dir may add more.
mkdir -p "$BRIDGELAB_IMAGES" "$BRIDGELAB_CACHE" "$BRIDGELAB_STATE_DIR"
for r in /usr/share/bridgelab/images/*/; do
  name=$(basename "$r")
  [ -e "$BRIDGELAB_IMAGES/$name" ] || cp -r "$r" "$BRIDGELAB_IMAGES/$name"
done

if [ ! -c /dev/net/tun ]; then
  mkdir -p /dev/net
  mknod /dev/net/tun c 10 200 2>/dev/null \
    || fail "/dev/net/tun is missing and cannot be created: run privileged, or pass --device /dev/net/tun"
  say "created /dev/net/tun"
fi
# Opening the device proves the driver is there (built in or loaded).
( exec 3<>/dev/net/tun ) 2>/dev/null \
  || fail "/dev/net/tun cannot be opened: run 'modprobe tun' on the host, and pass the device to the container"
# Bridge support is checked by creating the bridge: bridgelab's own error
# names the problem, and nothing is left behind.

lab=${BRIDGELAB_LAB:-/etc/bridgelab/lab.yaml}
[ -r "$lab" ] || fail "no lab file at $lab: mount one (compose does ./lab.yaml)"

if ! bridgelab validate --lab "$lab" >/dev/null 2>/tmp/validate.err; then
  if grep -q "bridgelab image build" /tmp/validate.err; then
    for name in $(grep -o "bridgelab image build [a-z0-9-]*" /tmp/validate.err | awk '{print $4}' | sort -u); do
      say "building guest image $name (first start only, a few minutes)"
      bridgelab image build "$name" \
        || fail "building $name failed; binfmt_misc for foreign arches needs a privileged container"
    done
  else
    cat /tmp/validate.err >&2
    exit 2
  fi
fi

nft=$(iptables-nft-save 2>/dev/null | grep -c '^-A' || true)
legacy=$(iptables-legacy-save 2>/dev/null | grep -c '^-A' || true)
say "host iptables rules: nft backend ${nft:-0}, legacy backend ${legacy:-0} (bridgelab adds none in this lab)"

exec bridgelab serve --lab "$lab" --listen "127.0.0.1:${BRIDGELAB_PORT:-8700}" \
  --shutdown-timeout "${BRIDGELAB_SHUTDOWN_TIMEOUT:-30}"
