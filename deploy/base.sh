#!/usr/bin/env bash
# Make Flower 1.42 base images from Debian packages, for machines that cannot pull Docker Hub.
#
#   deploy/base.sh [-s SUITE] [-m MIRROR] [-f FLWR_VERSION] [-p PREFIX] [-c CA_FILE] [-r]
#
#   -s SUITE    Debian suite to debootstrap (default bookworm: Python 3.11, as the project)
#   -m MIRROR   Debian mirror (default http://deb.debian.org/debian)
#   -f VERSION  flwr version installed with pip (default 1.42.0)
#   -p PREFIX   image name prefix (default florec): makes PREFIX/debian-python:SUITE,
#               PREFIX/flwr-base:VERSION and the three role images PREFIX/superlink:VERSION,
#               PREFIX/supernode:VERSION and PREFIX/superexec:VERSION
#   -c CA_FILE  extra CA certificates (PEM) pip must trust, e.g. those of a TLS-intercepting
#               proxy; passed as the build argument EXTRA_CA_CERTS, not kept in the image's files
#   -r          rebuild the debootstrap image even if it exists
#
# Needs root, debootstrap and a running Docker engine. The role images mirror Flower's official
# ones (flwr/superlink, flwr/supernode, flwr/superexec): Python and flwr in the venv /python,
# user `app` (UID 49999) with home and working directory /app, the role's command as entrypoint.
# Use them with the compose files through environment variables (deploy/README.md, "No Docker
# Hub"):
#   SUPERLINK_IMAGE=florec/superlink:1.42.0 SUPERNODE_IMAGE=florec/supernode:1.42.0 \
#   FLOREC_BASE_IMAGE=florec/superexec:1.42.0 docker compose -f deploy/compose.yml build
# Builds use host networking, so pip reaches the package index wherever the host does.
set -euo pipefail

suite=bookworm
mirror=http://deb.debian.org/debian
flwr=1.42.0
prefix=florec
rebuild=0
ca=""
while getopts "s:m:f:p:c:rh" opt; do
  case "$opt" in
    s) suite="$OPTARG" ;;
    m) mirror="$OPTARG" ;;
    f) flwr="$OPTARG" ;;
    p) prefix="$OPTARG" ;;
    c) ca="$OPTARG" ;;
    r) rebuild=1 ;;
    h) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "usage: $0 [-s SUITE] [-m MIRROR] [-f FLWR_VERSION] [-p PREFIX] [-c CA_FILE] [-r]" >&2; exit 2 ;;
  esac
done
command -v docker >/dev/null || { echo "base.sh: docker is not installed" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "base.sh: no Docker engine answers; start dockerd" >&2; exit 1; }

debian="$prefix/debian-python:$suite"
if [ "$rebuild" -eq 1 ] || ! docker image inspect "$debian" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || {
    echo "base.sh: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
  [ "$(id -u)" -eq 0 ] || { echo "base.sh: debootstrap needs root (run with sudo)" >&2; exit 1; }
  root="$(mktemp -d /tmp/florec-rootfs.XXXXXX)"
  trap 'rm -rf "$root"' EXIT
  echo "base.sh: debootstrap $suite from $mirror into $root"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$suite" "$root" "$mirror" >"$root.log" 2>&1 || {
      tail -20 "$root.log" >&2; echo "base.sh: debootstrap failed (log: $root.log)" >&2; exit 1; }
  rm -f "$root.log"
  # Package caches and lists are not needed at run time.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/locale/*
  tar --numeric-owner -C "$root" -c . | docker import \
    -c 'ENV LANG=C.UTF-8' -c 'CMD ["/bin/bash"]' - "$debian" >/dev/null
  rm -rf "$root"
  trap - EXIT
fi

# Python and flwr in a venv, and the unprivileged user of Flower's images. Extra CAs go into a
# bundle that lives only during the RUN (the system's CAs plus EXTRA_CA_CERTS).
[ -z "$ca" ] || [ -r "$ca" ] || { echo "base.sh: cannot read the CA file $ca" >&2; exit 1; }
docker build --network host -t "$prefix/flwr-base:$flwr" \
  --build-arg EXTRA_CA_CERTS="$([ -z "$ca" ] || cat "$ca")" - <<EOF
FROM $debian
ARG EXTRA_CA_CERTS=
RUN python3 -m venv /python \\
 && if [ -n "\$EXTRA_CA_CERTS" ]; then \\
      cat /etc/ssl/certs/ca-certificates.crt > /tmp/ca.pem; \\
      printf '%s\\n' "\$EXTRA_CA_CERTS" >> /tmp/ca.pem; export PIP_CERT=/tmp/ca.pem; fi \\
 && /python/bin/pip install --no-cache-dir --disable-pip-version-check "flwr==$flwr" \\
 && rm -f /tmp/ca.pem \\
 && groupadd --gid 49999 app \\
 && useradd --uid 49999 --gid 49999 --home-dir /app --create-home --shell /bin/bash app
ENV PATH=/python/bin:\$PATH PYTHONUNBUFFERED=1
WORKDIR /app
USER app
EOF

for role in superlink supernode superexec; do
  printf 'FROM %s\nENTRYPOINT ["flower-%s"]\n' "$prefix/flwr-base:$flwr" "$role" \
    | docker build -q -t "$prefix/$role:$flwr" - >/dev/null
  echo "base.sh: built $prefix/$role:$flwr"
done
