#!/usr/bin/env bash
# Checks that the three docmesh binaries build as static musl executables, as the images in
# examples/docker/Dockerfile need them. tests/run.sh (and so CI) runs it with PROFILE=dev,
# a link check of about 3 minutes on 2 cores; the release build with LTO, as the Dockerfile
# does it, takes far longer:
#
#     bash tests/scripts/build-musl.sh            # release, like the Dockerfile
#     PROFILE=dev bash tests/scripts/build-musl.sh  # the check CI runs
set -euo pipefail
cd "$(dirname "$0")/../.."
# The musl target of this machine's architecture (x86_64, aarch64, ...).
target=$(uname -m)-unknown-linux-musl
profile=${PROFILE:-release}

if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  echo "build-musl: adding the $target target" >&2
  rustup target add "$target"
fi
if ! command -v musl-gcc >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "build-musl: musl-gcc is missing; install Debian's musl-tools (apt-get install musl-tools)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends musl-tools >/dev/null
fi

# aws-lc-sys compiles C for the target: use musl's compiler wrapper.
export "CC_${target//-/_}=musl-gcc"
start=$(date +%s)
cargo build --locked --profile "$profile" --target "$target" \
  -p docmesh-proxy -p docmesh-init -p docmesh-certs
dir=${CARGO_TARGET_DIR:-target}/$target/$([ "$profile" = dev ] && echo debug || echo "$profile")

fail=0
for bin in docmesh-proxy docmesh-init docmesh-certs; do
  path=$dir/$bin
  if [ ! -x "$path" ]; then
    echo "build-musl: $path was not built" >&2; fail=1; continue
  fi
  # A static executable has no program interpreter (no PT_INTERP / "Requesting program
  # interpreter" line) and no NEEDED libraries.
  if readelf -l "$path" | grep -q 'program interpreter' || readelf -d "$path" | grep -q NEEDED; then
    echo "build-musl: $bin is dynamically linked:" >&2
    readelf -d "$path" | grep NEEDED >&2 || true
    fail=1; continue
  fi
  "$path" --version >/dev/null || { echo "build-musl: $bin --version failed" >&2; fail=1; continue; }
  echo "build-musl: $bin static ($(du -h "$path" | cut -f1))"
done
echo "build-musl: done in $(( $(date +%s) - start )) s (profile $profile)"
exit $fail
