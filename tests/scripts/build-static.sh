#!/usr/bin/env bash
# Builds the three docmesh binaries as static executables (glibc linked statically,
# `-C target-feature=+crt-static`), as the images in examples/docker/Dockerfile carry them,
# and checks that they are static and start. tests/run.sh (and so CI) runs it with
# PROFILE=dev, a link check of about 3 minutes on 2 cores; the release build with LTO, as the
# Dockerfile and the benchmark do it, takes longer:
#
#     bash tests/scripts/build-static.sh            # release, like the Dockerfile
#     PROFILE=dev bash tests/scripts/build-static.sh  # the check CI runs
#
# Why static glibc and not musl (docs/benchmark.md, "The shipped binary"): the same code runs
# about 40% more CPU per request under load with musl's allocator and memcpy, and a static
# binary maps no libc.so/libm/ld.so (about 1.9 MiB of idle RSS per sidecar). glibc 2.34 and
# newer has its `files` and `dns` name services inside libc, so getaddrinfo works in a
# FROM-scratch image without libnss_*.so (/etc/hosts and /etc/resolv.conf are enough).
set -euo pipefail
cd "$(dirname "$0")/../.."
# The GNU target of this machine's architecture (x86_64, aarch64, ...), named explicitly so
# that the static flag reaches the binaries only, not build scripts and proc macros.
target=$(uname -m)-unknown-linux-gnu
profile=${PROFILE:-release}

if [ ! -e "$(gcc -print-file-name=libc.a)" ] || [ "$(gcc -print-file-name=libc.a)" = libc.a ]; then
  echo "build-static: glibc's static library libc.a is missing; install Debian's libc6-dev" >&2
  exit 1
fi

flags_var="CARGO_TARGET_$(echo "$target" | tr 'a-z-' 'A-Z_')_RUSTFLAGS"
export "$flags_var=-C target-feature=+crt-static"
start=$(date +%s)
cargo build --locked --profile "$profile" --target "$target" \
  -p docmesh-proxy -p docmesh-init -p docmesh-certs
dir=${CARGO_TARGET_DIR:-target}/$target/$([ "$profile" = dev ] && echo debug || echo "$profile")

fail=0
for bin in docmesh-proxy docmesh-init docmesh-certs; do
  path=$dir/$bin
  if [ ! -x "$path" ]; then
    echo "build-static: $path was not built" >&2; fail=1; continue
  fi
  # A static executable has no program interpreter (no PT_INTERP / "Requesting program
  # interpreter" line) and no NEEDED libraries.
  if readelf -l "$path" | grep -q 'program interpreter' || readelf -d "$path" | grep -q NEEDED; then
    echo "build-static: $bin is dynamically linked:" >&2
    readelf -d "$path" | grep NEEDED >&2 || true
    fail=1; continue
  fi
  "$path" --version >/dev/null || { echo "build-static: $bin --version failed" >&2; fail=1; continue; }
  echo "build-static: $bin static ($(du -h "$path" | cut -f1))"
done
echo "build-static: done in $(( $(date +%s) - start )) s (profile $profile)"
exit $fail
