#!/usr/bin/env bash
# The docmesh test suite: the one command README.md names and CI runs.
# Installs what the tests need, checks formatting, lints and the static build, then runs
# every test in the workspace, including the network-namespace end-to-end tests (which need
# root and fail loudly without it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The images need static binaries: check that they still build and link statically
# (dev profile: the release build with LTO takes far longer and proves nothing more).
PROFILE=dev bash tests/scripts/build-static.sh
# The compose example for real: images built here (no registry), the stack up with OnlyOffice
# stand-ins, asserts through the mesh, both variants (about 4 minutes with the images cached;
# the first run adds 1-2.5 min of debootstrap).
bash tests/scripts/compose-e2e.sh
cargo test --workspace --locked -- --test-threads=2
