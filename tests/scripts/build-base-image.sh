#!/usr/bin/env bash
# Builds the one Debian bookworm base image the compose CI stack runs on (no registry here):
# a debootstrap minbase root filesystem with PostgreSQL, Redis, RabbitMQ, nginx, iptables and
# python3 with the client libraries of the OnlyOffice stand-ins, `docker import`ed as
# docmesh-base:<hash of the package list>. The rootfs tarball is cached under target/compose/ and
# the image is kept in the engine, so a second run does nothing.
#
#     bash tests/scripts/build-base-image.sh   # prints the image tag on stdout
set -euo pipefail
cd "$(dirname "$0")/../.."

packages=(
  iptables iproute2 tcpdump procps
  postgresql redis-server rabbitmq-server nginx-light
  python3 python3-psycopg2 python3-redis python3-pika python3-aiohttp
)
suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
hash=$(printf '%s\n' "$suite" "${packages[@]}" | sha256sum | cut -c1-12)
tag=docmesh-base:$hash
cache=${CARGO_TARGET_DIR:-target}/compose
tarball=$cache/rootfs-$hash.tar

if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "$tag"; exit 0
fi
mkdir -p "$cache"
if [ ! -s "$tarball" ]; then
  command -v debootstrap >/dev/null 2>&1 || {
    echo "build-base-image: installing debootstrap" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >&2
  }
  root=$(mktemp -d "$cache/rootfs.XXXXXX")
  trap 'rm -rf "$root"' EXIT
  start=$(date +%s)
  include=$(IFS=,; echo "${packages[*]}")
  echo "build-base-image: debootstrap $suite (minbase + ${#packages[@]} packages) ..." >&2
  # Service packages must not start their daemons inside the chroot.
  debootstrap --variant=minbase --include="$include" "$suite" "$root" "$mirror" >"$cache/debootstrap-$hash.log" 2>&1 || {
    echo "build-base-image: debootstrap failed; tail of $cache/debootstrap-$hash.log:" >&2
    tail -n 30 "$cache/debootstrap-$hash.log" >&2; exit 1; }
  chroot "$root" apt-get clean
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/usr/share/doc/* "$root"/usr/share/man/*
  tar -C "$root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
  echo "build-base-image: rootfs built in $(( $(date +%s) - start )) s ($(du -h "$tarball" | cut -f1))" >&2
fi
docker import -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  "$tarball" "$tag" >/dev/null
echo "$tag"
