#!/usr/bin/env bash
# Benchmarks against peers, each measured in the same run on this machine. Prints a table of
# figures and ratios. Usage: scripts/bench.sh [SECONDS_PER_MEASUREMENT]
# BENCH_CASES selects what runs (default: all of "verify reference reference-zstd large throttled");
# BENCH_LARGE=0 and BENCH_THROTTLED=0 leave out one of them.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-3}
need=()
for t in faketime umoci zstd; do command -v $t >/dev/null || need+=($t); done
[ -x /usr/bin/time ] || need+=(time)
[ ${#need[@]} -eq 0 ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; }
cargo build --quiet --release --locked --manifest-path bench/Cargo.toml
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release --locked --target x86_64-unknown-linux-gnu
bin=${CARGO_TARGET_DIR:-bench/target}/release
cidboot=${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/release/cidboot

want() { case " ${BENCH_CASES:-verify reference reference-zstd large throttled} " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
fixtures=${BENCH_FIXTURES:-../shared/fixtures/attestation}
doc=$fixtures/nitro-attest-2025-01-06.cose
# Both verifiers check certificates at the wall clock; the document's leaf certificate was valid
# for three hours on 2025-01-06, so the clock is set inside that window.
verify=
if want verify; then verify=$(faketime '2025-01-06 17:00:00' "$bin/verify-throughput" "$doc" "$secs"); fi

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
rep = json.load(open(f"{d}/cidboot.json"))["apply"]
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
cases=()
if want reference; then cases+=("$(case_ reference 1 gzip)"); fi
if want reference-zstd; then cases+=("$(case_ reference-zstd 1 zstd)"); fi
# The large image shows that memory does not grow with the image (set BENCH_LARGE=0 to skip).
if want large && [ "${BENCH_LARGE:-1}" != 0 ]; then cases+=("$(case_ large 3.3 gzip)"); fi

# Throttled gateways: three `cidboot gateway` processes serving one image with a single
# incompressible layer, each behind a loopback link (bench/throttle.py) limited per connection
# and in all, with a delay before each connection; then the same through `cidboot host`'s cache,
# cold and warm (set BENCH_THROTTLED=0 to skip).
throttled() {
  local dir=$work/throttled mib=${BENCH_LAYER_MIB:-64} per=$((5 * 1000 * 1000)) total=$((15 * 1000 * 1000)) delay=20
  mkdir -p "$dir"
  python3 - "$dir/layout" "$mib" <<'PY'
import gzip, hashlib, io, json, os, sys, tarfile
d, mib = sys.argv[1], int(sys.argv[2])
os.makedirs(f"{d}/blobs/sha256")
def put(b):
    h = hashlib.sha256(b).hexdigest()
    open(f"{d}/blobs/sha256/{h}", "wb").write(b)
    return h
t = io.BytesIO()
with tarfile.open(fileobj=t, mode="w") as tf:
    data = os.urandom(mib << 20)
    ti = tarfile.TarInfo("big"); ti.size = len(data)
    tf.addfile(ti, io.BytesIO(data))
tar = t.getvalue()
layer = gzip.compress(tar, 1)
lh = put(layer)
cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
  "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()]}}).encode()
ch = put(cfg)
man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
  "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + ch, "size": len(cfg)},
  "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + lh, "size": len(layer)}]}).encode()
mh = put(man)
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
  "digest": "sha256:" + mh, "size": len(man), "platform": {"architecture": "amd64", "os": "linux"}}]},
  open(f"{d}/index.json", "w"))
open(f"{d}/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
open(f"{d}/../layer.hex", "w").write(lh)
PY
  local cid hex urls=() pids=() ports=()
  cid=$("$cidboot" pack "$dir/layout" --car "$dir/image.car")
  hex=$(cat "$dir/layer.hex")
  : >"$dir/ca.pem"
  for i in 1 2 3; do
    "$cidboot" gateway --car "$dir/image.car" --listen 127.0.0.1:0 --tls-self-signed "$dir/ca$i.pem" >"$dir/gw$i.url" 2>/dev/null &
    pids+=($!)
    for _ in $(seq 100); do [ -s "$dir/gw$i.url" ] && break; sleep 0.1; done
    cat "$dir/ca$i.pem" >>"$dir/ca.pem"
    python3 bench/throttle.py "$(head -n1 "$dir/gw$i.url" | sed 's/.*://')" $per $total $delay >"$dir/fw$i.port" &
    pids+=($!)
    for _ in $(seq 100); do [ -s "$dir/fw$i.port" ] && break; sleep 0.1; done
    ports+=("$(head -n1 "$dir/fw$i.port")")
    urls+=(--gateway "https://127.0.0.1:${ports[-1]}")
  done
  gw="${pids[*]}"
  local r
  for r in $(seq "$runs"); do
    rm -rf "$dir/out"
    /usr/bin/time -f "%e %M" -o "$dir/pull.$r.time" env CIDBOOT_LOG=info \
      "$cidboot" pull "ipfs://$cid" "${urls[@]}" --ca "$dir/ca.pem" --oci-layout "$dir/out" >/dev/null 2>"$dir/pull.$r.log"
    cmp -s "$dir/out/blobs/sha256/$hex" "$dir/layout/blobs/sha256/$hex" || { echo "bench: the pulled layer differs" >&2; exit 1; }
    curl -sS --cacert "$dir/ca1.pem" -H 'Accept: application/vnd.ipld.car' -o /dev/null \
      -w '%{time_total} %{size_download}\n' \
      "https://127.0.0.1:${ports[0]}/ipfs/$cid/blobs/sha256/$hex?format=car&dag-scope=entity" >"$dir/curl.$r.time"
  done
  # The cache: `cidboot host` in front of the same three links; the first pull fills it, the
  # second is served from the parent's disk.
  local cport
  cport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  local gl
  gl=$(printf '"https://127.0.0.1:%s",' "${ports[@]}")
  printf '[cache]\nlisten = "tcp:127.0.0.1:%s"\ndir = "%s"\ngateways = [%s]\nca = "%s"\n' \
    "$cport" "$dir/cache" "${gl%,}" "$dir/ca.pem" >"$dir/host.toml"
  CIDBOOT_LOG=info "$cidboot" host --config "$dir/host.toml" >"$dir/host.log" 2>&1 &
  pids+=($!); gw="${pids[*]}"
  for _ in $(seq 100); do grep -q "gateway cache ready" "$dir/host.log" && break; sleep 0.1; done
  for boot in cold warm; do
    rm -rf "$dir/out"
    /usr/bin/time -f "%e %M" -o "$dir/cache.$boot.time" env CIDBOOT_LOG=warn \
      "$cidboot" pull "ipfs://$cid" --gateway "http://127.0.0.1:$cport" --oci-layout "$dir/out" >/dev/null
  done
  # shellcheck disable=SC2086
  kill ${pids[*]} 2>/dev/null || true; wait 2>/dev/null || true
  python3 - "$dir" "$runs" "$(stat -c %s "$dir/layout/blobs/sha256/$hex")" $per $total $delay <<'PY'
import json, sys
d, runs, size, per, total, delay = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:])
pulls = [open(f"{d}/pull.{r}.time").read().split() for r in range(1, runs + 1)]
curls = [open(f"{d}/curl.{r}.time").read().split() for r in range(1, runs + 1)]
best = min(float(p[0]) for p in pulls)
cbest = min(float(c[0]) for c in curls)
# The layer alone, as cidboot logs it ("fetched in parallel ranges ... ms=N").
import re
layer_mss = [int(re.search(r"fetched in parallel ranges.* ms=(\d+)", open(f"{d}/pull.{r}.log").read()).group(1)) for r in range(1, runs + 1)]
layer_ms = min(layer_mss)
# Each run's pull and curl, side by side (the load on the cores varies between runs).
each = [(size / float(p[0]) / 1e6, int(c[1]) / float(c[0]) / 1e6, size / (l / 1000) / 1e6) for p, c, l in zip(pulls, curls, layer_mss)]
cold, warm = (open(f"{d}/cache.{b}.time").read().split() for b in ("cold", "warm"))
print(json.dumps({"size_mb": size / 1e6, "aggregate_mb_s": 3 * total / 1e6, "per_conn_mb_s": per / 1e6,
  "link_mb_s": total / 1e6, "delay_ms": delay, "cidboot_s": best, "cidboot_rss_kib": max(int(p[1]) for p in pulls),
  "cidboot_mb_s": size / best / 1e6, "layer_mb_s": size / (layer_ms / 1000) / 1e6, "curl_s": cbest, "curl_mb_s": int(curls[0][1]) / cbest / 1e6,
  "cache_cold_s": float(cold[0]), "cache_warm_s": float(warm[0]), "each": each}))
PY
}
if want throttled && [ "${BENCH_THROTTLED:-1}" != 0 ]; then throttled_json=$(throttled); else throttled_json=; fi

echo "| benchmark | cidboot | peer | ratio |"
echo "|---|---|---|---|"
python3 - "$verify" "$cidboot" "$throttled_json" "${cases[@]}" <<'PY'
import json, os, sys
v = sys.argv[1]; binary = sys.argv[2]; t = sys.argv[3]
if v:
    v = json.loads(v)
    r = v['ratio']
    ratio = f"{r:.2f}x faster" if r >= 1 else f"{1/r:.2f}x slower"
    print(f"| attestation verify (documents/s), peer: attestation-doc-validation | {v['cidboot_per_s']:.0f} | {v['attestation_doc_validation_per_s']:.0f} | {ratio} |")
for c in map(json.loads, sys.argv[4:]):
    what = f"{c['name']}: {c['compressed_mb']:.0f} MB {c['compression']} / {c['uncompressed_mb']:.0f} MB"
    peer = "GNU tar -x of each layer (umoci 0.4 refuses zstd)" if c['compression'] == "zstd" else "umoci unpack of the local layout"
    r = c['umoci_s'] / c['cidboot_s']
    ratio = f"{r:.2f}x faster" if r >= 1 else f"{1/r:.2f}x slower"
    print(f"| {what}, pull+verify+apply (s), peer: {peer} | {c['cidboot_s']:.2f} | {c['umoci_s']:.2f} | {ratio} |")
    print(f"| {what}, against the bare inflate bound (largest layer + rest over 2 cores) (s) | {c['cidboot_s']:.2f} | {c['bound_s']:.2f} | {c['cidboot_s']/c['bound_s']:.2f}x the bound |")
    print(f"| {what}, against the floor (inflate + the three hashes + writing the files, over 2 cores) (s) | {c['cidboot_s']:.2f} | {c['floor_s']:.2f} | {c['cidboot_s']/c['floor_s']:.2f}x the floor |")
    print(f"| {what}, peak RSS (MiB), peer: as above | {c['cidboot_rss_kib']/1024:.0f} | {c['umoci_rss_kib']/1024:.0f} | |")
if t:
    t = json.loads(t)
    what = f"throttled: {t['size_mb']:.0f} MB layer, 3 gateways, each {t['per_conn_mb_s']:.0f} MB/s per connection, {t['link_mb_s']:.0f} MB/s in all, {t['delay_ms']} ms to connect"
    print(f"| {what}: pull (MB/s), peer: curl of the layer's CAR from one gateway | {t['cidboot_mb_s']:.1f} | {t['curl_mb_s']:.1f} | {t['cidboot_mb_s']/t['curl_mb_s']:.2f}x faster |")
    print(f"| the same, as a fraction of the links' aggregate {t['aggregate_mb_s']:.0f} MB/s | {t['cidboot_mb_s']/t['aggregate_mb_s']:.2f} | {t['curl_mb_s']/t['aggregate_mb_s']:.2f} | |")
    print(f"| the layer's transfer alone (MB/s; fraction of the aggregate) | {t['layer_mb_s']:.1f} | | {t['layer_mb_s']/t['aggregate_mb_s']:.2f} |")
    runs = "; ".join(f"{c/t['aggregate_mb_s']:.2f} (curl {k:.1f} MB/s, layer {l/t['aggregate_mb_s']:.2f})" for c, k, l in t['each'])
    print(f"| each run: pull as a fraction of the aggregate (curl in the same run; the layer alone) | {runs} | | |")
    print(f"| the same, peak RSS (MiB) | {t['cidboot_rss_kib']/1024:.0f} | | |")
    print(f"| the same through `cidboot host` [cache]: first pull vs second (s) | {t['cache_cold_s']:.2f} | {t['cache_warm_s']:.2f} | {t['cache_cold_s']/t['cache_warm_s']:.1f}x faster warm |")
print(f"| static stripped binary (MiB) | {os.path.getsize(binary)/2**20:.1f} | | |")
PY
