#!/usr/bin/env bash
# Builds every image the compose examples and their CI run need, here, without a registry:
#
#   docmesh/proxy:0.1.0   docmesh-proxy alone, FROM scratch (UID 1337)
#   docmesh/init:0.1.0    docmesh-init on the Debian base image (it runs iptables-restore);
#                         also the compose examples' network-namespace holder
#   docmesh/certs:0.1.0   docmesh-certs on the Debian base image (a shell for the certs service)
#   docmesh-base:<hash>   Debian bookworm from debootstrap (tests/scripts/build-base-image.sh),
#                         which also runs the CI stand-ins and backing services
#
# The binaries are the static build for this machine's architecture
# (tests/scripts/build-static.sh; PROFILE=dev by default here, PROFILE=release for real use).
#
#     bash tests/scripts/build-images.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
profile=${PROFILE:-dev}
arch=$(uname -m)
target=$arch-unknown-linux-gnu
version=0.1.0

base=$(bash tests/scripts/build-base-image.sh)
PROFILE=$profile bash tests/scripts/build-static.sh >&2
bindir=${CARGO_TARGET_DIR:-target}/$target/$([ "$profile" = dev ] && echo debug || echo "$profile")

ctx=$(mktemp -d "${TMPDIR:-/tmp}/docmesh-images.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
cp "$bindir"/docmesh-proxy "$bindir"/docmesh-init "$bindir"/docmesh-certs "$ctx"/
cp examples/onlyoffice/svids.list "$ctx"/
printf 'root:x:0:0:root:/root:/sbin/nologin\ndocmesh:x:1337:1337:docmesh proxy:/nonexistent:/sbin/nologin\n' >"$ctx"/passwd
printf 'root:x:0:\ndocmesh:x:1337:\n' >"$ctx"/group

# The same layout as examples/docker/Dockerfile's final stages, from prebuilt binaries.
cat >"$ctx"/Dockerfile <<DOCKERFILE
FROM scratch AS proxy
COPY passwd /etc/passwd
COPY group /etc/group
COPY docmesh-proxy /usr/local/bin/docmesh-proxy
ENV PATH=/usr/local/bin
USER 1337:1337
EXPOSE 15001 15006 15020
HEALTHCHECK --interval=5s --timeout=4s --start-period=30s CMD ["/usr/local/bin/docmesh-proxy", "await", "--timeout", "2s"]
ENTRYPOINT ["/usr/local/bin/docmesh-proxy"]
CMD ["run", "--config", "/etc/docmesh/config/proxy.toml"]

FROM $base AS init
COPY docmesh-init /usr/local/bin/docmesh-init
ENTRYPOINT ["/usr/local/bin/docmesh-init"]

FROM $base AS certs
COPY docmesh-certs /usr/local/bin/docmesh-certs
COPY svids.list /etc/docmesh/svids.list
ENTRYPOINT ["/usr/local/bin/docmesh-certs"]
DOCKERFILE
for stage in proxy init certs; do
  # Classic builder: it resolves the local base image without a registry.
  DOCKER_BUILDKIT=0 docker build -q --target "$stage" -t "docmesh/$stage:$version" "$ctx" >"$ctx/build.log" 2>&1 || {
    echo "build-images: docker build of docmesh/$stage failed:" >&2; cat "$ctx/build.log" >&2; exit 1; }
  echo "build-images: docmesh/$stage:$version" >&2
done
echo "build-images: base image $base" >&2
echo "$base"
