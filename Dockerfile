# bridgelab appliance: qemu + bridgelab, run privileged on the host network.
#
#   docker compose up                      # open internet
#   DOCKER_BUILDKIT=1 docker build --secret id=ca,src=/path/to/extra-ca.pem -t bridgelab .
#                                          # behind a TLS-intercepting proxy
# The status page's xterm.js: Debian trixie's libjs-xterm (5.3; bookworm has
# 3.8), checked by apt against Debian's keyring and unpacked, not installed.
FROM debian:bookworm-slim AS web
COPY tools/fetch-deb tools/web-assets /tools/
RUN /tools/web-assets /web

FROM debian:bookworm-slim

ARG DEBIAN_FRONTEND=noninteractive
# Lean: the qemu packages carry ~30 emulators each; keep the three arches
# bridgelab boots and builds (riscv64, aarch64, x86_64). Docs and locales go,
# copyright files stay. dpkg applies this to every package installed after.
RUN printf '%s\n' \
      'path-exclude=/usr/share/doc/*' 'path-include=/usr/share/doc/*/copyright' \
      'path-exclude=/usr/share/man/*' 'path-exclude=/usr/share/locale/*' \
      'path-exclude=/usr/bin/qemu-*-static' 'path-exclude=/usr/bin/qemu-system-*' \
      'path-include=/usr/bin/qemu-riscv64-static' 'path-include=/usr/bin/qemu-aarch64-static' \
      'path-include=/usr/bin/qemu-x86_64-static' 'path-include=/usr/bin/qemu-system-riscv64' \
      'path-include=/usr/bin/qemu-system-aarch64' 'path-include=/usr/bin/qemu-system-x86_64' \
      > /etc/dpkg/dpkg.cfg.d/bridgelab-lean
# System packages first: the largest, least often changing layer.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      qemu-system-misc qemu-system-x86 qemu-system-arm qemu-utils opensbi u-boot-qemu \
      qemu-user-static mmdebstrap arch-test gpg mount e2fsprogs fdisk debian-archive-keyring \
      iproute2 iptables nftables iputils-ping kmod \
      python3 python3-venv ca-certificates \
 && apt-get clean && rm -rf /var/lib/apt/lists/*

# Python dependencies next, keyed only by pyproject.toml. An extra CA bundle
# (for a TLS-intercepting proxy) comes in as a BuildKit secret and never
# lands in a layer.
# The dependency list is read from pyproject.toml itself (no stub package:
# one would have to repeat every subpackage of app/).
COPY pyproject.toml README.md /src/
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && python3 -m venv /opt/bridgelab \
 && python3 -c 'import tomllib; print("\n".join(tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["dependencies"]))' \
      > /tmp/requirements.txt \
 && /opt/bridgelab/bin/pip install --no-cache-dir "setuptools>=64" wheel -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

COPY app /src/app
RUN /opt/bridgelab/bin/pip install --no-cache-dir --no-deps --no-build-isolation /src && rm -rf /src
COPY --from=web /web /usr/share/javascript
COPY images /usr/share/bridgelab/images
COPY lab.yaml /etc/bridgelab/lab/lab.yaml
COPY entrypoint.sh /usr/local/bin/entrypoint.sh

ENV PATH=/opt/bridgelab/bin:$PATH \
    BRIDGELAB_IMAGES=/var/lib/bridgelab/images \
    BRIDGELAB_CACHE=/var/lib/bridgelab/images/cache \
    BRIDGELAB_STATE_DIR=/var/lib/bridgelab/state
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
