#!/usr/bin/env bash
# Benchmarks against peers, each measured in the same run on this machine. Prints a table of
# figures and ratios. Usage: scripts/bench.sh [SECONDS_PER_MEASUREMENT]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-3}
command -v faketime >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime >/dev/null; }
cargo build --quiet --release --locked --manifest-path bench/Cargo.toml
bin=bench/target/release

fixtures=../shared/fixtures/attestation
doc=$fixtures/nitro-attest-2025-01-06.cose
# Both verifiers check certificates at the wall clock; the document's leaf certificate was valid
# for three hours on 2025-01-06, so the clock is set inside that window.
verify=$(faketime '2025-01-06 17:00:00' "$bin/verify-throughput" "$doc" "$secs")

echo "| benchmark | cidboot | peer | ratio (cidboot / peer) |"
echo "|---|---|---|---|"
python3 - "$verify" <<'PY'
import json, sys
v = json.loads(sys.argv[1])
print(f"| attestation verify (documents/s), peer: attestation-doc-validation | {v['cidboot_per_s']:.0f} | {v['attestation_doc_validation_per_s']:.0f} | {v['ratio']:.2f} |")
PY
