#!/usr/bin/env bash
# The docmesh test suite: the one command README.md names and CI runs.
# Installs what the tests need, checks formatting and lints, then runs every test in the
# workspace, including the network-namespace end-to-end tests (which need root and fail
# loudly without it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked -- --test-threads=2
