#!/usr/bin/env bash
# End to end in an emulated Nitro Enclave (QEMU's nitro-enclave machine under TCG):
#   1. an EIF with cidboot as PID 1 boots, heartbeats, fetches the sample image through the
#      parent's egress proxy over vsock, verifies it, extends and locks PCR16, and runs the
#      workload, which gets an attestation document for a nonce and prints it; the logs and the
#      status reach `cidboot host`, and the enclave powers off. The document is then checked
#      with `cidboot verify --insecure-unsigned`, pinning PCR0-2 from eif_build and PCR16 from
#      `cidboot expect`.
#   2. the same with a tampering gateway: the enclave reports the verification error, the
#      workload never runs, and it powers off.
#   3. two EIF builds from the same inputs give the same PCR0.
# Runs are judged by what the enclave reports to the host, never by QEMU's exit status.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
cache=$(scripts/emulator-setup.sh)
work=$(mktemp -d /tmp/cidboot-e2e.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
say() { echo "e2e: $*"; }
fail() { echo "e2e: FAIL: $*" >&2; for f in "$work"/*.log; do echo "--- $f" >&2; tail -n 40 "$f" >&2; done; exit 1; }

target=x86_64-unknown-linux-gnu
say "building a static cidboot"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release --locked --target "$target"
bin="$repo/target/$target/release/cidboot"
ldd "$bin" 2>&1 | grep -qE "statically linked|not a dynamic" || fail "cidboot is not static"

say "building and publishing the sample image and a helper image"
scripts/sample-image.sh "$work/layout" >/dev/null
cid=$("$bin" pack "$work/layout" --car "$work/sample.car" 2>/dev/null)
scripts/sample-image.sh "$work/helpers" --helpers >/dev/null
helpers_cid=$("$bin" pack "$work/helpers" --car "$work/helpers.car" 2>/dev/null)
helpers_digest=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['manifests'][0]['digest'])" "$work/helpers/index.json")

start_gateway() { # $1: extra flags, $2: the sample's CAR; sets gw_url
  "$bin" gateway --car "$2" --car "$work/helpers.car" --listen 127.0.0.1:0 --tls-self-signed "$work/ca.pem" $1 >"$work/gateway.url" 2>"$work/gateway.log" &
  pids+=($!)
  for _ in $(seq 100); do [ -s "$work/gateway.url" ] && break; sleep 0.1; done
  gw_url=$(head -n1 "$work/gateway.url")
  [ -n "$gw_url" ] || fail "gateway did not start"
}

boot_enclave() { # $1: name; uses $gw_url and $work/ca.pem; leaves $work/$1.log
  local name=$1 dir="$work/$1"
  mkdir -p "$dir"
  local port=${gw_url##*:}
  { printf 'image = "ipfs://%s"\ngateways = ["%s"]\n\n' "$cid" "$gw_url"
    printf '[[helpers.images]]\nimage = "ipfs://%s"\ndigest = "%s"\n\n' "$helpers_cid" "$helpers_digest"
    printf '[[prestart]]\nhelper = "fake-kms-client"\nargs = ["/run/kms.env"]\nenv_file = "/run/kms.env"\n\n'
    printf '[tls]\nextra_ca = """\n'; cat "$work/ca.pem"; printf '"""\n'; } >"$dir/enclave.toml"
  cat >"$dir/host.toml" <<TOML
[egress]
listen = "unix:$dir/vsock_8000"
allow = ["127.0.0.1:$port"]
[boot]
listen = "unix:$dir/vsock_8001"
config = "$dir/enclave.toml"
[logs]
listen = "unix:$dir/vsock_8002"
file = "$dir/enclave.log"
[heartbeat]
listen = "unix:$dir/vsock_9000"
TOML
  "$bin" host --config "$dir/host.toml" >"$work/$name-host.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do grep -q "cidboot host ready" "$work/$name-host.log" && break; sleep 0.1; done
  "$cache/bin/vhost-device-vsock" --guest-cid=4 --socket="$dir/vhost.sock" --uds-path="$dir/vsock" >"$work/$name-vsock.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do [ -S "$dir/vhost.sock" ] && break; sleep 0.1; done
  local khz
  khz=$(awk -F: '/cpu MHz/ {printf "%d", $2 * 1000; exit}' /proc/cpuinfo)
  timeout 900 "$cache/qemu-system-x86_64" -L "$cache/firmware" \
    -M nitro-enclave,vsock=c0,id=cidboot,acpi=on,pit=on,pic=on,rtc=on -kernel "$work/cidboot.eif" \
    -append "tsc_early_khz=$khz tsc=reliable cidboot.parent_cid=2" -nographic -m 1G -smp 2 -accel tcg \
    -no-reboot -chardev socket,id=c0,path="$dir/vhost.sock" >"$work/$name-console.log" 2>&1 &
  local qemu=$!
  pids+=($qemu)
  # Bounded wait for the enclave's final status, then for the power-off.
  for _ in $(seq 900); do grep -q '^[^ ]* [^ ]* [0-9]* \[status\]' "$dir/enclave.log" 2>/dev/null && break; sleep 1; done
  grep -q '^[^ ]* [^ ]* [0-9]* \[status\]' "$dir/enclave.log" 2>/dev/null || fail "$name: no status from the enclave within 15 minutes"
  for _ in $(seq 120); do kill -0 "$qemu" 2>/dev/null || break; sleep 1; done
  kill -0 "$qemu" 2>/dev/null && fail "$name: the enclave did not power off"
  cp "$dir/enclave.log" "$work/$name.log"
}

say "building the EIF (twice: PCR0 must not change)"
"$repo/scripts/build-eif.sh" --cidboot "$bin" --kernel-dir "$cache/kernel" --out "$work/cidboot.eif" >"$work/eif.json"
"$repo/scripts/build-eif.sh" --cidboot "$bin" --kernel-dir "$cache/kernel" --out "$work/again.eif" >"$work/eif2.json"
pcr() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d.get('Measurements', d)[sys.argv[2]])" "$1" "$2"; }
[ "$(pcr "$work/eif.json" PCR0)" = "$(pcr "$work/eif2.json" PCR0)" ] || fail "two builds gave different PCR0"
say "reproducible: PCR0 $(pcr "$work/eif.json" PCR0)"
# An air-gapped EIF: helpers baked in from a dependency image's OCI layout, verified by digest.
"$repo/scripts/build-eif.sh" --cidboot "$bin" --kernel-dir "$cache/kernel" --out "$work/baked.eif" \
  --helper-image "$work/helpers" "$helpers_digest" >/dev/null 2>"$work/baked.log" || fail "baking the helper image: $(cat "$work/baked.log")"
want="fake-kms-client = \"sha256:$(sha256sum "$repo/sample/target/x86_64-unknown-linux-gnu/release/fake-kms-client" | cut -d' ' -f1)\""
grep -qF "$want" "$work/baked.log" || fail "the baked helper's pin is not printed: $(cat "$work/baked.log")"
if "$repo/scripts/build-eif.sh" --cidboot "$bin" --kernel-dir "$cache/kernel" --out "$work/bad.eif" \
  --helper-image "$work/helpers" "sha256:$(printf '0%.0s' $(seq 64))" >/dev/null 2>"$work/bad.log"; then
  fail "a helper image with the wrong digest was baked"
fi
grep -q "its manifest is $helpers_digest" "$work/bad.log" || fail "no digest error: $(cat "$work/bad.log")"
say "helpers baked from a helper image's layout, checked against its digest"

say "booting the enclave (honest gateway)"
start_gateway "" "$work/sample.car"
boot_enclave good
log="$work/good.log"
grep -q 'heartbeat answered' "$log" || fail "no heartbeat"
grep -q 'PCR16 extended and locked' "$log" || fail "PCR16 not locked"
grep -q '^[^ ]* [^ ]* [0-9]* \[stdout\] hello from a content-addressed image' "$log" || fail "the workload did not run"
grep -q 'fake-kms-client: wrote /run/kms.env' "$work/good-console.log" || fail "the helper from the helper image did not run"
say "the prestart helper from the helper image ran"
grep -q '^[^ ]* [^ ]* [0-9]* \[stdout\] sandbox: open /dev/nsm: ENOENT' "$log" || fail "the workload reached /dev/nsm: $(grep 'sandbox:' "$log")"
grep -q '^[^ ]* [^ ]* [0-9]* \[stdout\] sandbox: socket(AF_VSOCK): EPERM' "$log" || fail "the workload opened AF_VSOCK: $(grep 'sandbox:' "$log")"
say "the workload ran sandboxed: no /dev/nsm, no AF_VSOCK"
grep -q '^[^ ]* [^ ]* [0-9]* \[status\] {"exit_code":0' "$log" || fail "the workload did not exit 0: $(grep '^[^ ]* [^ ]* [0-9]* \[status\]' "$log")"
nonce=$(sed -n 's/^[^ ]* [^ ]* [0-9]* \[stdout\] attestation nonce: //p' "$log")
sed -n 's/^[^ ]* [^ ]* [0-9]* \[stdout\] attestation document: //p' "$log" >"$work/doc.b64"
[ -s "$work/doc.b64" ] || fail "no attestation document"
"$bin" expect "ipfs://$cid" --gateway "$gw_url" --ca "$work/ca.pem" --config "$work/good/enclave.toml" \
  --eif-pcrs "$work/eif.json" --json >"$work/expect.json"
ex() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['pcrs'][sys.argv[2]])" "$work/expect.json" "$1"; }
# PCR16-31 must be in the document (it lists only locked PCRs); verify checks PCR17-31 are zero.
"$bin" verify "$work/doc.b64" --insecure-unsigned --nonce "$nonce" --require-locked 16-31 \
  --pcr "0=$(ex PCR0)" --pcr "1=$(ex PCR1)" --pcr "2=$(ex PCR2)" --expect-pcr16 "$(ex PCR16)" \
  || fail "the enclave's document does not verify"
say "the document verifies: PCR0-2 of the EIF, PCR16 of the image, PCR17-31 locked at zero, our nonce"

say "booting the enclave (tampering gateway)"
python3 - "$work/sample.car" "$work/tampered.car" <<'PY'
import sys
data = bytearray(open(sys.argv[1], "rb").read())
# Flip one byte in the middle of the largest block (the layer's data).
data[len(data) // 2] ^= 0x01
open(sys.argv[2], "wb").write(data)
PY
pkill -f "gateway --car $work/sample.car" 2>/dev/null || true
rm -f "$work/gateway.url"
start_gateway "--insecure-serve-unverified" "$work/tampered.car"
boot_enclave tampered
log="$work/tampered.log"
grep -q '^[^ ]* [^ ]* [0-9]* \[status\] {"exit_code":null,"reason":"fatal: .*does not hash to its CID' "$log" || fail "no verification error reported: $(grep '^[^ ]* [^ ]* [0-9]* \[status\]' "$log")"
grep -q '^[^ ]* [^ ]* [0-9]* \[stdout\]' "$log" && fail "the workload ran on tampered content"
say "PASS: 2 passed, 0 failed"
echo "2 passed, 0 failed"
