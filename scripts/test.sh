#!/usr/bin/env bash
# The test command: installs what the tests need, then runs format, lint and every test.
set -euo pipefail
cd "$(dirname "$0")/.."
CIDBOOT_IPFS_CAR=$(scripts/setup-tools.sh)
export CIDBOOT_IPFS_CAR
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked
