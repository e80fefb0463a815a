#!/usr/bin/env bash
# Benchmarks against peers, each measured in the same run on this machine. Prints a table of
# figures and ratios. Usage: scripts/bench.sh [SECONDS_PER_MEASUREMENT]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-3}
need=()
for t in faketime umoci; do command -v $t >/dev/null || need+=($t); done
[ -x /usr/bin/time ] || need+=(time)
[ ${#need[@]} -eq 0 ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; }
cargo build --quiet --release --locked --manifest-path bench/Cargo.toml
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release --locked --target x86_64-unknown-linux-gnu
bin=bench/target/release
cidboot=target/x86_64-unknown-linux-gnu/release/cidboot

fixtures=../shared/fixtures/attestation
doc=$fixtures/nitro-attest-2025-01-06.cose
# Both verifiers check certificates at the wall clock; the document's leaf certificate was valid
# for three hours on 2025-01-06, so the clock is set inside that window.
verify=$(faketime '2025-01-06 17:00:00' "$bin/verify-throughput" "$doc" "$secs")

# Pull and apply: the generated image served over HTTPS on loopback, applied to tmpfs.
work=$(mktemp -d /dev/shm/cidboot-bench.XXXXXX)
trap 'kill $gw 2>/dev/null || true; rm -rf "$work"' EXIT
"$bin/make-image" "$work" >"$work/image.json"
cid=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['cid'])" "$work/image.json")
"$cidboot" gateway --car "$work/image.car" --listen 127.0.0.1:0 --tls-self-signed "$work/ca.pem" >"$work/gw.url" 2>/dev/null &
gw=$!
for _ in $(seq 100); do [ -s "$work/gw.url" ] && break; sleep 0.1; done
url=$(head -n1 "$work/gw.url")
CIDBOOT_LOG=warn /usr/bin/time -f "%e %M" -o "$work/cidboot.time" \
  "$cidboot" unpack "ipfs://$cid" --gateway "$url" --ca "$work/ca.pem" --rootfs "$work/root-cidboot" --json >"$work/cidboot.json"
/usr/bin/time -f "%e %M" -o "$work/umoci.time" umoci unpack --image "$work/layout:latest" "$work/umoci" >/dev/null 2>&1
layers=$(python3 -c "import json,sys; print(' '.join(json.load(open(sys.argv[1]))['layers']))" "$work/image.json")
# shellcheck disable=SC2086
"$bin/inflate" $layers >"$work/inflate.json" 2>/dev/null

echo "| benchmark | cidboot | peer | ratio |"
echo "|---|---|---|---|"
python3 - "$verify" "$work" <<'PY'
import json, os, sys
v = json.loads(sys.argv[1]); w = sys.argv[2]
print(f"| attestation verify (documents/s), peer: attestation-doc-validation | {v['cidboot_per_s']:.0f} | {v['attestation_doc_validation_per_s']:.0f} | {v['ratio']:.2f}x faster |")
ct, crss = open(f"{w}/cidboot.time").read().split()
ut, urss = open(f"{w}/umoci.time").read().split()
ct, ut, crss, urss = float(ct), float(ut), int(crss), int(urss)
secs = json.load(open(f"{w}/inflate.json"))["seconds"]
largest = max(secs)
bound = largest + (sum(secs) - largest) / 2
rep = json.load(open(f"{w}/cidboot.json"))
mb = rep["uncompressed_bytes"] / 1e6; cmb = rep["compressed_bytes"] / 1e6
print(f"| pull+verify+apply {cmb:.0f} MB gzip / {mb:.0f} MB (s), peer: umoci unpack of the local layout | {ct:.2f} | {ut:.2f} | {ut/ct:.2f}x faster |")
print(f"| the same against the bare inflate bound (largest layer + rest over 2 cores) (s) | {ct:.2f} | {bound:.2f} | {ct/bound:.2f}x the bound |")
print(f"| peak RSS (MiB), peer: umoci | {crss/1024:.0f} | {urss/1024:.0f} | |")
size = os.path.getsize("target/x86_64-unknown-linux-gnu/release/cidboot")
print(f"| static stripped binary (MiB) | {size/2**20:.1f} | | |")
PY
