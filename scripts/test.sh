#!/usr/bin/env bash
# The test command: installs what the tests need, then runs format, lint, every test, and the
# end-to-end boot of an EIF in an emulated Nitro Enclave (QEMU is built once and cached).
set -euo pipefail
cd "$(dirname "$0")/.."
CIDBOOT_IPFS_CAR=$(scripts/setup-tools.sh)
export CIDBOOT_IPFS_CAR
# The venv setup-tools.sh made for moto (the tests' independent AWS KMS) and the test KMS.
export CIDBOOT_MOTO_PYTHON=${CIDBOOT_CACHE:-$HOME/.cache/cidboot}/moto/bin/python
# The workspace, and the two crates outside it (the benchmarks, the fuzz targets).
cargo fmt --all --check
cargo fmt --manifest-path bench/Cargo.toml --check
cargo fmt --manifest-path fuzz/Cargo.toml --check
cargo clippy --workspace --locked --all-targets -- -D warnings
# The enclave's build (no software NSM, no development gateway, no rcgen) stands on its own:
# it builds, warning-free; scripts/e2e-emulated.sh boots it as /init.
cargo clippy --locked --no-default-features --lib --bins -- -D warnings
# Dependency policy (deny.toml): permissive licenses, crates.io only, no unexplained duplicates.
cargo deny --locked check bans licenses sources
# The benchmarks (scripts/bench.sh) are a crate of their own: they still build against this
# tree, warning-free, from their own lock file.
cargo clippy --locked --manifest-path bench/Cargo.toml --all-targets -- -D warnings
cargo test --workspace --locked
# A short smoke pass of every fuzz target (longer runs: scripts/fuzz.sh 600).
scripts/fuzz.sh 15
# The PID 1 path on a real kernel: an EIF in QEMU's emulated Nitro Enclave (TCG).
scripts/e2e-emulated.sh
