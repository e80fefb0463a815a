#!/usr/bin/env bash
# cidboot's main job on an embedded default: builds the bundled sample image, publishes it as
# a CAR, serves it from a local HTTPS trustless gateway, then runs it by CID alone: resolve,
# verify every block and digest, apply, measure, and start the workload chrooted as its user.
# The workload asks for an attestation document, which is then verified against the image.
# Needs root (cidboot run applies ownership and changes users).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --release --locked
bin=target/release/cidboot
work=target/demo
rm -rf "$work" && mkdir -p "$work"

echo "== building the sample image (static binary, GNU tar) =="
scripts/sample-image.sh "$work/layout" >/dev/null
echo "== packing it into a CAR =="
cid=$("$bin" pack "$work/layout" --car "$work/sample.car")
echo "ipfs://$cid"

echo "== serving it from a local HTTPS trustless gateway =="
"$bin" gateway --car "$work/sample.car" --listen 127.0.0.1:0 --tls-self-signed "$work/ca.pem" \
  >"$work/gateway.url" 2>"$work/gateway.log" &
gw_pid=$!
trap 'kill $gw_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -s "$work/gateway.url" ] && break; sleep 0.1; done
url=$(head -n1 "$work/gateway.url")
echo "$url"

echo "== inspect: index, manifest and config verified against the CID =="
"$bin" inspect "ipfs://$cid" --gateway "$url" --ca "$work/ca.pem"
echo "== check: the gateway serves the whole image, every block verified =="
"$bin" check "ipfs://$cid" --gateway "$url" --ca "$work/ca.pem" --quiet
echo "== run: fetch, verify, apply, measure, launch =="
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
# No Nitro hardware here: a software NSM with the device's semantics signs the documents.
"${sudo_cmd[@]}" "$bin" run "ipfs://$cid" --gateway "$url" --ca "$work/ca.pem" \
  --nsm software --nsm-root-out "$work/nsm-root.pem" --attestation-listen 127.0.0.1:0 | tee "$work/run.out"
nonce=$(sed -n 's/^attestation nonce: //p' "$work/run.out")
sed -n 's/^attestation document: //p' "$work/run.out" >"$work/attestation.b64"

echo "== verify: signed, fresh (our nonce), and PCR16 measures exactly this image =="
"$bin" verify "$work/attestation.b64" --root "$work/nsm-root.pem" --nonce "$nonce" \
  --expect-image "ipfs://$cid" --gateway "$url" --ca "$work/ca.pem"
