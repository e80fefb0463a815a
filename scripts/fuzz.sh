#!/usr/bin/env bash
# Runs cidboot's fuzz targets (cargo-fuzz, libFuzzer, on the nightly toolchain), from the
# committed seeds, keeping each target's corpus outside the repository.
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   (default: 15 s, every target)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-15}
shift || true
corpus=${CIDBOOT_CACHE:-$HOME/.cache/cidboot}/fuzz-corpus
command -v cargo-fuzz >/dev/null || cargo install --quiet --locked cargo-fuzz
rustup toolchain list | grep -q '^nightly' || { echo "fuzz: the nightly toolchain is needed" >&2; exit 1; }
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(car dagpb_unixfs reference oci_documents layer_apply attestation config proxy_request cms_envelope kms_proxy_request dns_query)
cargo +nightly fuzz build -O >/dev/null
for t in "${targets[@]}"; do
  mkdir -p "$corpus/$t" "fuzz/seeds/$t"
  echo "fuzz: $t for ${secs}s"
  log="$corpus/$t.log"
  if ! cargo +nightly fuzz run -O "$t" "$corpus/$t" "fuzz/seeds/$t" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "fuzz: $t found a failure (see fuzz/artifacts/$t)" >&2
    exit 1
  fi
  grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "$log" | tr '\n' ' '
  echo
done
