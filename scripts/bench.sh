#!/usr/bin/env bash
# Benchmarks against peers, each measured in the same run on this machine. Prints a table of
# figures and ratios. Usage: scripts/bench.sh [SECONDS_PER_MEASUREMENT]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-3}
need=()
for t in faketime umoci zstd; do command -v $t >/dev/null || need+=($t); done
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

# Pull and apply: each generated image served over HTTPS on loopback by `cidboot gateway`, and
# applied to tmpfs by cidboot and by umoci; each time is the best of $runs runs.
runs=${BENCH_RUNS:-3}
work=$(mktemp -d /dev/shm/cidboot-bench.XXXXXX)
gw=
trap 'kill $gw 2>/dev/null || true; rm -rf "$work"' EXIT
best() { # FILE...: the lowest "seconds rss" line's seconds, and the highest rss
  python3 -c 'import sys
rows=[open(f).read().split() for f in sys.argv[1:]]
print(min(float(r[0]) for r in rows), max(int(r[1]) for r in rows))' "$@"
}
# case NAME SCALE COMPRESSION: prints one JSON line of figures.
case_() {
  local name=$1 dir=$work/$1
  mkdir -p "$dir"
  "$bin/make-image" "$dir" "$2" "$3" >"$dir/image.json"
  local cid url layers
  layers=$(python3 -c "import json,sys; print(' '.join(json.load(open(sys.argv[1]))['layers']))" "$dir/image.json")
  cid=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['cid'])" "$dir/image.json")
  "$cidboot" gateway --car "$dir/image.car" --listen 127.0.0.1:0 --tls-self-signed "$dir/ca.pem" >"$dir/gw.url" 2>/dev/null &
  gw=$!
  for _ in $(seq 100); do [ -s "$dir/gw.url" ] && break; sleep 0.1; done
  url=$(head -n1 "$dir/gw.url")
  for r in $(seq "$runs"); do
    rm -rf "$dir/root"
    CIDBOOT_LOG=warn /usr/bin/time -f "%e %M" -o "$dir/cidboot.$r.time" \
      "$cidboot" unpack "ipfs://$cid" --gateway "$url" --ca "$dir/ca.pem" --rootfs "$dir/root" --json >"$dir/cidboot.json"
    rm -rf "$dir/umoci"
    if [ "$3" = zstd ]; then
      # umoci 0.4 refuses zstd layers: the peer is GNU tar extracting each layer in order.
      mkdir -p "$dir/umoci/rootfs"
      # shellcheck disable=SC2016,SC2086
      /usr/bin/time -f "%e %M" -o "$dir/umoci.$r.time" bash -c \
        'for l in "${@:2}"; do tar --zstd -xf "$l" -C "$1" || exit 1; done' _ "$dir/umoci/rootfs" $layers
    else
      /usr/bin/time -f "%e %M" -o "$dir/umoci.$r.time" umoci unpack --image "$dir/layout:latest" "$dir/umoci" >/dev/null 2>&1
    fi
  done
  kill $gw; wait $gw 2>/dev/null || true
  # Both roots hold the same tree.
  diff -r --no-dereference "$dir/root" "$dir/umoci/rootfs" >/dev/null || { echo "bench: cidboot and umoci roots differ for $name" >&2; exit 1; }
  # shellcheck disable=SC2086
  "$bin/inflate" $layers >"$dir/inflate.json" 2>/dev/null
  # Writing the files: GNU tar extracting the already-inflated layers (best of the runs).
  local i=0
  for l in $layers; do
    if [ "$3" = zstd ]; then zstd -qdc "$l" >"$dir/plain.$i.tar"; else gzip -dc "$l" >"$dir/plain.$i.tar"; fi
    i=$((i + 1))
  done
  for r in $(seq "$runs"); do
    rm -rf "$dir/plain"; mkdir "$dir/plain"
    # shellcheck disable=SC2016
    /usr/bin/time -f "%e 0" -o "$dir/write.$r.time" bash -c 'for t in "$1"/plain.*.tar; do tar -xf "$t" -C "$1/plain" || exit 1; done' _ "$dir"
  done
  python3 - "$name" "$3" "$dir" "$(best "$dir"/cidboot.*.time)" "$(best "$dir"/umoci.*.time)" "$(best "$dir"/write.*.time)" <<'PY'
import json, sys
name, comp, d, c, u, w = sys.argv[1:]
write = float(w.split()[0])
ct, crss = c.split(); ut, urss = u.split()
rep = json.load(open(f"{d}/cidboot.json"))
secs = json.load(open(f"{d}/inflate.json"))["seconds"]
largest = max(secs)
inf = json.load(open(f"{d}/inflate.json"))
print(json.dumps({"name": name, "compression": comp, "cidboot_s": float(ct), "cidboot_rss_kib": int(crss),
  "umoci_s": float(ut), "umoci_rss_kib": int(urss), "bound_s": largest + (sum(secs) - largest) / 2,
  "floor_s": max(largest, (sum(secs) + inf["hash_seconds"] + write) / 2),
  "compressed_mb": rep["compressed_bytes"] / 1e6, "uncompressed_mb": rep["uncompressed_bytes"] / 1e6}))
PY
  rm -rf "$dir"
}
cases=("$(case_ reference 1 gzip)" "$(case_ reference-zstd 1 zstd)")
# The large image shows that memory does not grow with the image (set BENCH_LARGE=0 to skip).
if [ "${BENCH_LARGE:-1}" != 0 ]; then cases+=("$(case_ large 3.3 gzip)"); fi

echo "| benchmark | cidboot | peer | ratio |"
echo "|---|---|---|---|"
python3 - "$verify" "$cidboot" "${cases[@]}" <<'PY'
import json, os, sys
v = json.loads(sys.argv[1]); binary = sys.argv[2]
print(f"| attestation verify (documents/s), peer: attestation-doc-validation | {v['cidboot_per_s']:.0f} | {v['attestation_doc_validation_per_s']:.0f} | {v['ratio']:.2f}x faster |")
for c in map(json.loads, sys.argv[3:]):
    what = f"{c['name']}: {c['compressed_mb']:.0f} MB {c['compression']} / {c['uncompressed_mb']:.0f} MB"
    peer = "GNU tar -x of each layer (umoci 0.4 refuses zstd)" if c['compression'] == "zstd" else "umoci unpack of the local layout"
    r = c['umoci_s'] / c['cidboot_s']
    ratio = f"{r:.2f}x faster" if r >= 1 else f"{1/r:.2f}x slower"
    print(f"| {what}, pull+verify+apply (s), peer: {peer} | {c['cidboot_s']:.2f} | {c['umoci_s']:.2f} | {ratio} |")
    print(f"| {what}, against the bare inflate bound (largest layer + rest over 2 cores) (s) | {c['cidboot_s']:.2f} | {c['bound_s']:.2f} | {c['cidboot_s']/c['bound_s']:.2f}x the bound |")
    print(f"| {what}, against the floor (inflate + the three hashes + writing the files, over 2 cores) (s) | {c['cidboot_s']:.2f} | {c['floor_s']:.2f} | {c['cidboot_s']/c['floor_s']:.2f}x the floor |")
    print(f"| {what}, peak RSS (MiB), peer: as above | {c['cidboot_rss_kib']/1024:.0f} | {c['umoci_rss_kib']/1024:.0f} | |")
print(f"| static stripped binary (MiB) | {os.path.getsize(binary)/2**20:.1f} | | |")
PY
