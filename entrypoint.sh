#!/bin/sh
# Pre-flight checks for the bridgelab container, then exec the daemon so that
# `docker stop` / `compose down` signals reach it directly. With arguments
# (`docker compose run --rm bridgelab bridgelab cleanup --all`), run those
# instead, after the checks every command needs.
set -eu

fail() { echo "bridgelab: $*" >&2; exit 1; }
say() { echo "bridgelab: $*"; }

# The iptables lock the container shares with the host (hostcheck.py): fails,
# with the repair command, if an earlier compose file left a directory there.
bridgelab preflight || exit 1

# Uplinks set net.ipv4.ip_forward and proxy_arp (each saved first and
# restored at exit or by cleanup). Docker mounts /proc/sys read-only, and
# compose v1 cannot ask for `systempaths=unconfined`; with SYS_ADMIN the net
# subtree alone (the host's, with network_mode: host) is made writable in
# this container's mount namespace, nothing else in /proc/sys.
if [ ! -w /proc/sys/net/ipv4/ip_forward ]; then
  if mount --bind /proc/sys/net /proc/sys/net && mount -o remount,bind,rw /proc/sys/net; then
    say "made /proc/sys/net writable for uplink sysctls"
  else
    say "note: /proc/sys/net is read-only here: labs with an uplink will fail to start"
  fi
fi

if [ $# -gt 0 ]; then exec "$@"; fi

if [ ! -c /dev/net/tun ]; then
  mkdir -p /dev/net
  mknod /dev/net/tun c 10 200 2>/dev/null \
    || fail "/dev/net/tun is missing and cannot be created: run privileged, or pass --device /dev/net/tun"
  say "created /dev/net/tun"
fi
# Opening the device proves the driver is there (built in or loaded).
( exec 3<>/dev/net/tun ) 2>/dev/null \
  || fail "/dev/net/tun cannot be opened: run 'modprobe tun' on the host, and pass the device to the container"
# Bridge support: a probe bridge that exists for a moment (the kernel loads
# the module on demand, so /sys/module/bridge alone proves nothing).
probe="blprobe$$"
if ip link add name "$probe" type bridge 2>/tmp/bridge.err; then
  ip link del "$probe"
else
  fail "cannot create a bridge ($(cat /tmp/bridge.err)): run 'modprobe bridge' on the host; the container needs NET_ADMIN and the host network"
fi

# compose.yaml mounts the lab file's directory (BRIDGELAB_LAB_DIR on the host).
lab=/etc/bridgelab/lab/${BRIDGELAB_LAB_FILE:-lab.yaml}
if [ ! -f "$lab" ]; then
  fail "no lab file ${BRIDGELAB_LAB_FILE:-lab.yaml} in ${BRIDGELAB_LAB_DIR:-the lab directory} on the host. For a lab file elsewhere, set BRIDGELAB_LAB_DIR to its directory and BRIDGELAB_LAB_FILE to its name (relative to that directory)"
fi

if ! bridgelab validate --lab "$lab" >/dev/null 2>/tmp/validate.err; then
  if grep -q "bridgelab image build" /tmp/validate.err; then
    # mmdebstrap runs foreign-arch package scripts through qemu-user (binfmt_misc).
    grep -qw binfmt_misc /proc/filesystems \
      || fail "the host kernel has no binfmt_misc, needed to build foreign-arch guest images: run 'sudo modprobe binfmt_misc' on the host"
    # The daemon builds them itself (--build-missing below), with its API up
    # meanwhile: /healthz and `bridgelab wait` show the build's progress.
    say "guest images to build first (first start only, a few minutes): $(grep -o "bridgelab image build [a-z0-9-]*" /tmp/validate.err | awk '{print $4}' | sort -u | tr '\n' ' ')"
  else
    cat /tmp/validate.err >&2
    exit 2
  fi
fi

# The kernel runs both iptables backends; a rule must go where the host's
# own rules are. bridgelab decides per rule (and logs it); this line shows the
# evidence. Override with BRIDGELAB_IPTABLES=nft|legacy.
nft=$(iptables-nft-save 2>/dev/null | grep -c '^-A' || true)
legacy=$(iptables-legacy-save 2>/dev/null | grep -c '^-A' || true)
bnf=$(cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null || echo "absent")
say "host iptables: nft backend ${nft:-0} rules, legacy backend ${legacy:-0} rules; bridge-nf-call-iptables=$bnf"

exec bridgelab serve --lab "$lab" --listen "127.0.0.1:${BRIDGELAB_PORT:-8700}" \
  --shutdown-timeout "${BRIDGELAB_SHUTDOWN_TIMEOUT:-30}" --build-missing
