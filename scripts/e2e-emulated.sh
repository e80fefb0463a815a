#!/usr/bin/env bash
# End to end in an emulated Nitro Enclave (QEMU's nitro-enclave machine under TCG), each boot
# launched and supervised by `cidboot host` itself ([enclave] launcher = "qemu", restart policy
# on-failure: the honest boot must not be relaunched, the tampered one must count as failed and
# be relaunched once, up to max_restarts):
#   0. the EIF image (dockerfiles/Dockerfile.eif) and the sleeve (dockerfiles/Dockerfile.sleeve)
#      are built with buildah and their layouts and entrypoints checked; the honest boot runs the
#      EIF taken out of the sleeve, so its attested PCR0-2 are those build-eif.sh printed.
#   1. an EIF with cidboot as PID 1 boots, heartbeats, fetches the sample image through the
#      parent's egress proxy over vsock, verifies it, extends and locks PCR16, and runs the
#      workload, which gets an attestation document for a nonce and prints it; the logs and the
#      status reach `cidboot host`, and the enclave powers off. The document is then checked
#      with `cidboot verify --insecure-unsigned`, pinning PCR0-2 from eif_build and PCR16 from
#      `cidboot expect`.
#   2. the same with a tampering gateway: the enclave reports the verification error, the
#      workload never runs, and it powers off.
#   3. two EIF builds from the same inputs give the same PCR0.
#   4. a workload that allocates without bound, and one that forks without bound, under
#      [workload.limits]: each ends with a status naming the cause (an OOM kill, the pids limit),
#      every line it printed before reaches the host, and PID 1 powers off as usual.
#   5. secrets: the honest boot of 1 also gets a sealed secret and a generated app key (sealed
#      with `cidboot seal` by the test KMS, tests/kms/test_kms.py, on the parent's side over
#      TLS, reached through the parent's egress proxy, with credentials from `cidboot host`);
#      the test KMS evaluates the statement `cidboot expect --kms-policy --eif-pcrs` printed
#      against the emulated NSM's documents (unsigned: its explicit emulated-enclave mode), and
#      the workload prints a hash of each secret, and asks KMS for random bytes through the KMS
#      proxy ([kms_proxy]), which signs with those credentials. The same boot with one byte more in its
#      configuration gets AccessDeniedException and powers off before anything runs.
#   6. encrypted layers: the image of those two boots is the sample encrypted by skopeo (ocicrypt,
#      jwe), its private key sealed with `cidboot seal` and named by the configuration's
#      decryption_key: the honest boot opens it after PCR16 is locked and runs the workload; the
#      boot with one byte more gets AccessDeniedException for that key and applies nothing.
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
# Two static builds: the EIF's /init leaves the development parts out (no software NSM, no
# gateway, no rcgen); the parent's side (host, gateway, pack, expect, verify) is the full one.
# Both write target/.../release/cidboot, so the enclave's is copied away first.
bin="${CARGO_TARGET_DIR:-$repo/target}/$target/release/cidboot"
say "building a static cidboot for the enclave (--no-default-features)"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release --locked --target "$target" --no-default-features
init="$work/init"
install -m 0755 "$bin" "$init"
say "building a static cidboot for the parent"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release --locked --target "$target"
for b in "$init" "$bin"; do
  ldd "$b" 2>&1 | grep -qE "statically linked|not a dynamic" || fail "$b is not static"
done
"$init" gateway --help >/dev/null 2>&1 && fail "the enclave's cidboot has the development gateway"
"$init" run --nsm software --help >/dev/null 2>&1 && fail "the enclave's cidboot has the software NSM"
say "enclave build $(stat -c %s "$init") bytes, full build $(stat -c %s "$bin") bytes"

say "building and publishing the sample image and a helper image"
scripts/sample-image.sh "$work/layout" >/dev/null
cid=$("$bin" pack "$work/layout" --car "$work/sample.car" 2>/dev/null)
scripts/sample-image.sh "$work/helpers" --helpers >/dev/null
helpers_cid=$("$bin" pack "$work/helpers" --car "$work/helpers.car" 2>/dev/null)
helpers_digest=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['manifests'][0]['digest'])" "$work/helpers/index.json")

say "starting the test KMS (TLS, emulated-enclave documents) and sealing two secrets with cidboot seal"
role="arn:aws:iam::111122223333:role/enclave-parent"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/kms-ca.key" -out "$work/kms-ca.pem" \
  -days 2 -subj "/CN=cidboot e2e test KMS CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/kms.key" -out "$work/kms.csr" -subj "/CN=127.0.0.1" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' >"$work/kms.ext"
openssl x509 -req -in "$work/kms.csr" -CA "$work/kms-ca.pem" -CAkey "$work/kms-ca.key" -CAcreateserial -days 2 \
  -extfile "$work/kms.ext" -out "$work/kms.pem" 2>/dev/null
echo '{"Effect": "Deny"}' >"$work/statement.json"
kms_env=(AWS_ACCESS_KEY_ID=AKIAE2ETESTKMS000001 AWS_SECRET_ACCESS_KEY=e2e-test-kms-secret AWS_REGION=us-east-1)
mkfifo "$work/kms.in"
"${CIDBOOT_MOTO_PYTHON:-${CIDBOOT_CACHE:-$HOME/.cache/cidboot}/moto/bin/python}" tests/kms/test_kms.py \
  --cert "$work/kms.pem" --key "$work/kms.key" --policy "$work/statement.json" --principal "$role" \
  --access-key-id AKIAE2ETESTKMS000001 --secret-access-key e2e-test-kms-secret \
  --INSECURE-accept-unsigned-emulated-documents <"$work/kms.in" >"$work/kms.out" 2>"$work/kms.log" &
pids+=($!)
exec 9>"$work/kms.in"
for _ in $(seq 100); do [ -s "$work/kms.out" ] && break; sleep 0.1; done
kms_port=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['port'])" "$work/kms.out") || fail "the test KMS did not start"
kms_key=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['keys'][0])" "$work/kms.out")
kms_url="https://127.0.0.1:$kms_port"
db_password="e2e db password $(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
printf '%s' "$db_password" | env -i HOME="$work" "${kms_env[@]}" "$bin" seal --key-id "$kms_key" --name db-password \
  --kms-endpoint "$kms_url" --ca "$work/kms-ca.pem" >"$work/secrets.toml" 2>"$work/seal.log" || fail "seal: $(cat "$work/seal.log")"
env -i HOME="$work" "${kms_env[@]}" "$bin" seal --generate --key-id "$kms_key" --name app-key \
  --kms-endpoint "$kms_url" --ca "$work/kms-ca.pem" >>"$work/secrets.toml" 2>>"$work/seal.log" || fail "seal --generate: $(cat "$work/seal.log")"
secrets_toml=$(printf '[kms]\nregion = "us-east-1"\nendpoint = "%s"\n\n[kms_proxy]\n\n[workload]\ncmd = ["--secrets", "DB_PASSWORD", "/run/secrets/db-password", "APP_MNEMONIC"]\n\n[[secrets]]\nname = "db-password"\nkey_id = "%s"\nenv = "DB_PASSWORD"\nfile = "/run/secrets/db-password"\n\n[[secrets]]\nname = "app-key"\nkey_id = "%s"\nenv = "APP_MNEMONIC"\nformat = "mnemonic"\n' "$kms_url" "$kms_key" "$kms_key")
say "test KMS on $kms_url; db-password and app-key sealed"

say "encrypting the sample image with skopeo (jwe) and sealing its private key"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/image-key.pem" 2>/dev/null
openssl pkey -in "$work/image-key.pem" -pubout -out "$work/image-pub.pem"
skopeo copy -q --encryption-key "jwe:$work/image-pub.pem" "oci:$work/layout:latest" "oci:$work/enc-layout:latest" \
  2>"$work/skopeo.log" || fail "skopeo copy --encryption-key: $(cat "$work/skopeo.log")"
grep -q 'encrypted' "$work/enc-layout/blobs/sha256/"* 2>/dev/null || fail "skopeo wrote no encrypted layer"
enc_cid=$("$bin" pack "$work/enc-layout" --car "$work/enc.car" 2>/dev/null)
enc_layer=$(python3 -c 'import json,sys; d=sys.argv[1]; i=json.load(open(d+"/index.json")); m=json.load(open(d+"/blobs/sha256/"+i["manifests"][0]["digest"][7:])); print(m["layers"][-1]["digest"])' "$work/enc-layout")
env -i HOME="$work" "${kms_env[@]}" "$bin" seal --key-id "$kms_key" --name image-key \
  --kms-endpoint "$kms_url" --ca "$work/kms-ca.pem" <"$work/image-key.pem" >>"$work/secrets.toml" 2>>"$work/seal.log" || fail "seal image-key: $(cat "$work/seal.log")"
enc_toml=$(printf '%s\n\n[[secrets]]\nname = "image-key"\nkey_id = "%s"\n' "$secrets_toml" "$kms_key")
say "the encrypted image is ipfs://$enc_cid; its key is sealed as image-key"

start_gateway() { # $1: extra flags, $2: the sample's CAR; sets gw_url
  "$bin" gateway --car "$2" --car "$work/helpers.car" --car "$work/enc.car" --listen 127.0.0.1:0 --tls-self-signed "$work/ca.pem" $1 >"$work/gateway.url" 2>"$work/gateway.log" &
  pids+=($!)
  for _ in $(seq 100); do [ -s "$work/gateway.url" ] && break; sleep 0.1; done
  gw_url=$(head -n1 "$work/gateway.url")
  [ -n "$gw_url" ] || fail "gateway did not start"
}

boot_enclave() { # $1: name, $2: more [enclave] keys, $3: the EIF ($work/$3.eif, default cidboot), $4: launches expected (1), $5: more enclave configuration, $6: "admit" to make the test KMS's statement the one printed for this configuration, or a line appended to the configuration after that; uses $gw_url and $work/ca.pem; leaves $work/$1.log
  # `cidboot host` launches the enclave itself ([enclave] launcher = "qemu"), watches it and
  # applies its restart policy; the enclave's console lands in the host's log.
  local name=$1 dir="$work/$1"
  mkdir -p "$dir"
  local port=${gw_url##*:}
  { printf 'image = "ipfs://%s"\ngateways = ["%s"]\n%s\n\n' "${image_cid:-$cid}" "$gw_url" "${top_keys:-}"
    printf '[[helpers.images]]\nimage = "ipfs://%s"\ndigest = "%s"\n\n' "$helpers_cid" "$helpers_digest"
    printf '[[prestart]]\nhelper = "fake-kms-client"\nargs = ["/run/kms.env"]\nenv_file = "/run/kms.env"\n\n'
    printf '[tls]\nextra_ca = """\n'; cat "$work/ca.pem" "$work/kms-ca.pem"; printf '"""\n'; printf '%s\n' "${5:-}"; } >"$dir/enclave.toml"
  if [ "${6:-}" = admit ]; then
    "$bin" expect "ipfs://${image_cid:-$cid}" --gateway "$gw_url" --ca "$work/ca.pem" --config "$dir/enclave.toml" --eif-pcrs "$work/eif.json" \
      --kms-policy --principal "$role" >"$work/statement.json" 2>"$work/$name-expect.log" || fail "$name: expect --kms-policy: $(cat "$work/$name-expect.log")"
  elif [ -n "${6:-}" ]; then
    printf '%s\n' "$6" >>"$dir/enclave.toml"
  fi
  local khz
  khz=$(awk -F: '/cpu MHz/ {printf "%d", $2 * 1000; exit}' /proc/cpuinfo)
  cat >"$dir/host.toml" <<TOML
[egress]
listen = "unix:$dir/vsock_8000"
allow = ["127.0.0.1:$port", "127.0.0.1:$kms_port"]
[boot]
listen = "unix:$dir/vsock_8001"
config = "$dir/enclave.toml"
secrets = "$work/secrets.toml"
[credentials]
listen = "unix:$dir/vsock_8003"
source = "environment"
[logs]
listen = "unix:$dir/vsock_8002"
file = "$dir/enclave.log"
[heartbeat]
listen = "unix:$dir/vsock_9000"
[enclave]
launcher = "qemu"
eif = "$work/${3:-cidboot}.eif"
memory_mib = 1024
cpu_count = 2
cid = 4
debug_mode = true
poll_secs = 1
$2
[enclave.qemu]
qemu = "$cache/qemu-system-x86_64"
firmware = "$cache/firmware"
vhost_device_vsock = "$cache/bin/vhost-device-vsock"
uds_path = "$dir/vsock"
socket = "$dir/vhost.sock"
append = "tsc_early_khz=$khz tsc=reliable cidboot.parent_cid=2"
TOML
  local hlog="$work/$name-host.log"
  env "${kms_env[@]}" "$bin" host --config "$dir/host.toml" >"$hlog" 2>&1 &
  local host=$!
  pids+=($host)
  # Bounded wait for the supervisor to decide after the boot: no relaunch, or its limit.
  for _ in $(seq 900); do grep -qE 'not relaunching the enclave|max_restarts reached' "$hlog" && break; sleep 1; done
  grep -qE 'not relaunching the enclave|max_restarts reached' "$hlog" || fail "$name: the boot did not end within 15 minutes"
  grep -q 'QEMU started the enclave' "$hlog" || fail "$name: cidboot host did not launch QEMU"
  grep -q '^[^ ]* [^ ]* [0-9]* \[status\]' "$dir/enclave.log" 2>/dev/null || fail "$name: no status from the enclave"
  # The enclave powered off by itself (QEMU exited), and was not terminated by the supervisor.
  grep -q 'QEMU exited' "$hlog" || fail "$name: the enclave did not power off"
  grep -q 'terminating it' "$hlog" && fail "$name: the supervisor had to terminate the enclave"
  local launches
  launches=$(grep -c ' launching the enclave eif=' "$hlog")
  [ "$launches" = "${4:-1}" ] || fail "$name: launched $launches times, not ${4:-1}"
  # SIGTERM stops the host (the enclave is already gone: nothing to tear down).
  kill -TERM "$host"
  wait "$host" 2>/dev/null || true
  sed -n 's/.*console: //p' "$hlog" >"$work/$name-console.log"
  cp "$dir/enclave.log" "$work/$name.log"
}

say "building the EIF (twice: PCR0 must not change)"
"$repo/scripts/build-eif.sh" --cidboot "$init" --kernel-dir "$cache/kernel" --out "$work/cidboot.eif" >"$work/eif.json"
"$repo/scripts/build-eif.sh" --cidboot "$init" --kernel-dir "$cache/kernel" --out "$work/again.eif" >"$work/eif2.json"
pcr() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d.get('Measurements', d)[sys.argv[2]])" "$1" "$2"; }
[ "$(pcr "$work/eif.json" PCR0)" = "$(pcr "$work/eif2.json" PCR0)" ] || fail "two builds gave different PCR0"
say "reproducible: PCR0 $(pcr "$work/eif.json" PCR0)"
# An air-gapped EIF: helpers baked in from a dependency image's OCI layout, verified by digest.
"$repo/scripts/build-eif.sh" --cidboot "$init" --tools "$bin" --kernel-dir "$cache/kernel" --out "$work/baked.eif" \
  --helper-image "$work/helpers" "$helpers_digest" >/dev/null 2>"$work/baked.log" || fail "baking the helper image: $(cat "$work/baked.log")"
want="fake-kms-client = \"sha256:$(sha256sum "${CARGO_TARGET_DIR:-$repo/sample/target}/x86_64-unknown-linux-gnu/release/fake-kms-client" | cut -d' ' -f1)\""
grep -qF "$want" "$work/baked.log" || fail "the baked helper's pin is not printed: $(cat "$work/baked.log")"
if "$repo/scripts/build-eif.sh" --cidboot "$init" --tools "$bin" --kernel-dir "$cache/kernel" --out "$work/bad.eif" \
  --helper-image "$work/helpers" "sha256:$(printf '0%.0s' $(seq 64))" >/dev/null 2>"$work/bad.log"; then
  fail "a helper image with the wrong digest was baked"
fi
grep -q "its manifest is $helpers_digest" "$work/bad.log" || fail "no digest error: $(cat "$work/bad.log")"
say "helpers baked from a helper image's layout, checked against its digest"

say "building the EIF image and the sleeve with buildah"
# No daemon, no registry, no OCI runtime: vfs storage of our own, images without RUN steps, and
# a locally committed stand-in for the nitro-cli image the sleeve is built on.
command -v buildah >/dev/null || fail "buildah is missing (scripts/setup-tools.sh installs it)"
bh() { buildah --storage-driver vfs --root "$work/buildah/root" --runroot "$work/buildah/run" "$@"; }
mkdir -p "$work/buildah" "$work/eif-ctx/modules" "$work/eif-ctx/eigen-bin" "$work/sleeve-ctx"
printf '#!/bin/sh\necho "nitro-cli stand-in: $*"\n' >"$work/buildah/nitro-cli"
c=$(bh from scratch)
bh copy --chmod 0755 "$c" "$work/buildah/nitro-cli" /usr/bin/nitro-cli >/dev/null
bh commit -q "$c" localhost/nitro-cli-standin >/dev/null
install -m 0755 "$init" "$work/eif-ctx/cidboot"
cp "$cache"/kernel/modules/*.ko "$work/eif-ctx/modules/"
bh bud -q -f "$repo/dockerfiles/Dockerfile.eif" -t localhost/cidboot-eif "$work/eif-ctx" >/dev/null 2>"$work/bud-eif.log" || fail "buildah bud Dockerfile.eif: $(cat "$work/bud-eif.log")"
install -m 0755 "$bin" "$work/sleeve-ctx/cidboot"
cp "$work/cidboot.eif" "$work/sleeve-ctx/cidboot.eif"
: >"$work/sleeve-ctx/enclave.toml"
cat >"$work/sleeve-ctx/host.toml" <<'TOML'
[boot]
listen = "vsock:any:8001"
config = "/etc/cidboot/enclave.toml"
[logs]
listen = "vsock:any:8002"
[enclave]
eif = "/opt/cidboot/cidboot.eif"
memory_mib = 4096
cpu_count = 2
cid = 16
restart = "on-failure"
TOML
bh bud -q --build-arg NITRO_CLI_IMAGE=localhost/nitro-cli-standin -f "$repo/dockerfiles/Dockerfile.sleeve" \
  -t localhost/cidboot-sleeve "$work/sleeve-ctx" >/dev/null 2>"$work/bud-sleeve.log" || fail "buildah bud Dockerfile.sleeve: $(cat "$work/bud-sleeve.log")"
entrypoint() { bh inspect "$1" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["OCIv1"]["config"]["Entrypoint"]))'; }
[ "$(entrypoint localhost/cidboot-eif)" = '["/init"]' ] || fail "EIF image entrypoint: $(entrypoint localhost/cidboot-eif)"
[ "$(entrypoint localhost/cidboot-sleeve)" = '["/usr/local/bin/cidboot", "host", "--config", "/etc/cidboot/host.toml"]' ] ||
  fail "sleeve entrypoint: $(entrypoint localhost/cidboot-sleeve)"
files() { # the regular files of an image, with their modes
  local c m
  c=$(bh from "$1")
  m=$(bh mount "$c")
  (cd "$m" && find . -type f -printf '%m %p\n' | sort)
  [ -z "${2:-}" ] || cp "$m/$2" "$3"
  bh umount "$c" >/dev/null
  bh rm "$c" >/dev/null
}
want_eif=$( { echo "755 ./init"; for k in "$cache"/kernel/modules/*.ko; do echo "644 ./lib/modules/cidboot/$(basename "$k")"; done; } | sort)
[ "$(files localhost/cidboot-eif)" = "$want_eif" ] || fail "EIF image layout: $(files localhost/cidboot-eif)"
want_sleeve=$(printf '%s\n' "644 ./etc/cidboot/enclave.toml" "644 ./etc/cidboot/host.toml" "644 ./opt/cidboot/cidboot.eif" \
  "755 ./usr/bin/nitro-cli" "755 ./usr/local/bin/cidboot" | sort)
got=$(files localhost/cidboot-sleeve /opt/cidboot/cidboot.eif "$work/sleeve.eif")
[ "$got" = "$want_sleeve" ] || fail "sleeve layout: $got"
cmp -s "$work/sleeve.eif" "$work/cidboot.eif" || fail "the sleeve's EIF is not the one build-eif.sh measured"
rm -rf "$work/buildah"
say "EIF image and sleeve built: layouts and entrypoints as documented; the honest boot runs the sleeve's EIF"

say "booting the enclave (honest gateway)"
start_gateway "" "$work/sample.car"
image_cid=$enc_cid top_keys='decryption_key = "image-key"'
boot_enclave good 'restart = "on-failure"' sleeve 1 "$enc_toml" admit
unset image_cid top_keys
log="$work/good.log"
grep -q 'not relaunching the enclave' "$work/good-host.log" || fail "the supervisor did not take exit code 0 as success"
grep -q 'heartbeat answered' "$log" || fail "no heartbeat"
grep -q 'PCR16 extended and locked' "$log" || fail "PCR16 not locked"
grep -q '^[^ ]* [^ ]* [0-9]* \[stdout\] hello from a content-addressed image' "$log" || fail "the workload did not run"
grep -q 'fake-kms-client: wrote /run/kms.env' "$work/good-console.log" || fail "the helper from the helper image did not run"
say "the prestart helper from the helper image ran"
grep -q '^[^ ]* [^ ]* [0-9]* \[stdout\] sandbox: open /dev/nsm: ENOENT' "$log" || fail "the workload reached /dev/nsm: $(grep 'sandbox:' "$log")"
grep -q '^[^ ]* [^ ]* [0-9]* \[stdout\] sandbox: socket(AF_VSOCK): EPERM' "$log" || fail "the workload opened AF_VSOCK: $(grep 'sandbox:' "$log")"
say "the workload ran sandboxed: no /dev/nsm, no AF_VSOCK"
grep -q '^[^ ]* [^ ]* [0-9]* \[status\] {"exit_code":0' "$log" || fail "the workload did not exit 0: $(grep '^[^ ]* [^ ]* [0-9]* \[status\]' "$log")"
db_sha=$(printf '%s' "$db_password" | sha256sum | cut -d' ' -f1)
grep -q "^[^ ]* [^ ]* [0-9]* \[stdout\] secret env DB_PASSWORD sha256=$db_sha bytes=${#db_password} " "$log" ||
  fail "the sealed secret did not reach the workload's environment: $(grep 'secret ' "$log")"
grep -q "^[^ ]* [^ ]* [0-9]* \[stdout\] secret file /run/secrets/db-password sha256=$db_sha bytes=${#db_password} words=[0-9]* owner=1000:1000 mode=0400 dir owner=1000:1000 mode=0500$" "$log" ||
  fail "the sealed secret did not reach /run/secrets as the workload's 0400 file: $(grep 'secret ' "$log")"
app_line=$(sed -n 's/^[^ ]* [^ ]* [0-9]* \[stdout\] \(secret env APP_MNEMONIC sha256=[0-9a-f]\{64\} bytes=[0-9]* words=24\)$/\1/p' "$log")
[ -n "$app_line" ] || fail "the app key did not reach the workload as a 24-word phrase: $(grep 'secret ' "$log")"
grep -qF "$db_password" "$log" "$work/good-host.log" && fail "the secret's value is in a log"
grep -q 'secret opened by KMS for the workload secret=app-key' "$work/good-console.log" || fail "no KMS opening in the console log"
say "the workload got its sealed secret (sha256 $db_sha, in its environment and /run/secrets) and its app key ($app_line)"
grep -q '^[^ ]* [^ ]* [0-9]* \[stdout\] kms proxy: GenerateRandom status=200 plaintext-bytes=32 plaintext-sha256=[0-9a-f]\{64\}$' "$log" ||
  fail "the workload's call through the KMS proxy failed: $(grep 'kms proxy' "$log")"
say "the workload's GenerateRandom through the KMS proxy was answered, with the parent's credentials"
# The sealed key opened the encrypted layers after PCR16 was locked, before any layer was applied.
locked=$(grep -n 'PCR16 extended and locked' "$work/good-console.log" | head -n1 | cut -d: -f1)
opened=$(grep -n 'encrypted layers opened with the sealed decryption key' "$work/good-console.log" | head -n1 | cut -d: -f1)
applied=$(grep -n "layer applied .*digest=$enc_layer" "$work/good-console.log" | head -n1 | cut -d: -f1)
[ -n "$locked" ] && [ -n "$opened" ] && [ -n "$applied" ] && [ "$locked" -lt "$opened" ] && [ "$opened" -lt "$applied" ] ||
  fail "not PCR16 locked, then the layer key opened, then the layers applied: $locked $opened $applied"
say "the encrypted image ran: its key opened by KMS after PCR16 was locked, before its layers were applied"
nonce=$(sed -n 's/^[^ ]* [^ ]* [0-9]* \[stdout\] attestation nonce: //p' "$log")
sed -n 's/^[^ ]* [^ ]* [0-9]* \[stdout\] attestation document: //p' "$log" >"$work/doc.b64"
[ -s "$work/doc.b64" ] || fail "no attestation document"
"$bin" expect "ipfs://$enc_cid" --gateway "$gw_url" --ca "$work/ca.pem" --config "$work/good/enclave.toml" \
  --eif-pcrs "$work/eif.json" --json >"$work/expect.json"
ex() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['pcrs'][sys.argv[2]])" "$work/expect.json" "$1"; }
# PCR16-31 must be in the document (it lists only locked PCRs); verify checks PCR17-31 are zero.
"$bin" verify "$work/doc.b64" --insecure-unsigned --nonce "$nonce" --require-locked 16-31 \
  --pcr "0=$(ex PCR0)" --pcr "1=$(ex PCR1)" --pcr "2=$(ex PCR2)" --expect-pcr16 "$(ex PCR16)" \
  || fail "the enclave's document does not verify"
say "the document verifies: PCR0-2 of the EIF, PCR16 of the image, PCR17-31 locked at zero, our nonce"

grep -q 'helpers and workload limited (cgroup v2): memory [0-9]* MiB, swap 0 MiB, 4096 processes, cpu weight 100' "$log" ||
  fail "no default limits in the enclave: $(grep 'limited' "$log")"
say "the helpers and the workload ran in a cgroup v2 of their own, with the default limits"

status_of() { sed -n 's/^[^ ]* [^ ]* [0-9]* \[status\] //p' "$work/$1.log"; }
say "booting the enclave (a workload that allocates without bound, memory_max_mib = 48)"
boot_enclave oom 'restart = "never"' cidboot 1 $'[workload]\ncmd = ["--allocate-forever"]\n[workload.limits]\nmemory_max_mib = 48'
[ "$(status_of oom)" = '{"exit_code":137,"reason":"killed: out of memory (the limit is 48 MiB); the workload was killed by SIGKILL"}' ] ||
  fail "the OOM kill is not the status: $(status_of oom)"
# Every line the workload printed reached the host, in order, with the status after them all.
got=$(sed -n 's/^[^ ]* [^ ]* [0-9]* \[stdout\] allocated \([0-9]*\) MiB$/\1/p' "$work/oom.log" | tr '\n' ' ')
echo "$got" | awk '{ for (i = 1; i <= NF; i++) if ($i != 8 * i) exit 1; if (NF < 3) exit 1 }' ||
  fail "the workload's lines before the OOM kill are not 8, 16, 24, ... MiB: $got"
tail -n1 "$work/oom.log" | grep -q '\[status\]' || fail "the status is not the last record"
say "an OOM kill ended the workload: status $(status_of oom)"

say "booting the enclave (a workload that forks without bound, pids_max = 32)"
boot_enclave forks 'restart = "never"' cidboot 1 $'[workload]\ncmd = ["--fork-forever"]\n[workload.limits]\npids_max = 32'
[ "$(status_of forks)" = '{"exit_code":1,"reason":"pids limit reached (at most 32 processes); the workload exited with status 1"}' ] ||
  fail "the pids limit is not the status: $(status_of forks)"
grep -q '^[^ ]* [^ ]* [0-9]* \[stdout\] fork failed after [0-9]* children: EAGAIN$' "$work/forks.log" ||
  fail "the workload's last line did not reach the host: $(grep stdout "$work/forks.log" | tail -n 3)"
tail -n1 "$work/forks.log" | grep -q '\[status\]' || fail "the status is not the last record"
say "the pids limit ended the workload: status $(status_of forks)"

say "booting the enclave (one byte more in the configuration: the key policy refuses it)"
image_cid=$enc_cid top_keys='decryption_key = "image-key"'
boot_enclave notadmitted 'restart = "never"' cidboot 1 "$enc_toml" "#"
unset image_cid top_keys
grep -q "layer applied .*digest=$enc_layer" "$work/notadmitted-console.log" && fail "the encrypted layer was applied without its key"
# The status is JSON, which the log sink escapes once more: the name's quotes come as \\".
grep -q '^[^ ]* [^ ]* [0-9]* \[status\] {"exit_code":null,"reason":"fatal: .*secret [\\"]*image-key[\\"]*: KMS Decrypt with key .*AccessDeniedException.*PCR16=' "$work/notadmitted.log" ||
  fail "no AccessDeniedException naming the secret: $(status_of notadmitted)"
grep -q '^[^ ]* [^ ]* [0-9]* \[stdout\]' "$work/notadmitted.log" && fail "the workload ran without its secrets"
grep -q 'fake-kms-client: wrote' "$work/notadmitted-console.log" && fail "a helper ran before the secrets were opened"
say "a configuration the key policy does not name: AccessDeniedException, nothing ran, powered off"

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
boot_enclave tampered $'restart = "on-failure"\nrestart_backoff_secs = 1\nmax_restarts = 1' cidboot 2
log="$work/tampered.log"
grep -q 'relaunching the enclave after a delay delay_secs=1' "$work/tampered-host.log" || fail "the supervisor did not take the fatal status as a failure"
grep -q 'max_restarts reached' "$work/tampered-host.log" || fail "the supervisor relaunched beyond max_restarts"
[ "$(grep -c '^[^ ]* [^ ]* [0-9]* \[status\] {"exit_code":null,"reason":"fatal: ' "$log")" = 2 ] || fail "not two failed boots: $(grep '^[^ ]* [^ ]* [0-9]* \[status\]' "$log")"
say "the failed boot was relaunched once after 1 s, then max_restarts stopped it"
grep -q '^[^ ]* [^ ]* [0-9]* \[status\] {"exit_code":null,"reason":"fatal: .*does not hash to its CID' "$log" || fail "no verification error reported: $(grep '^[^ ]* [^ ]* [0-9]* \[status\]' "$log")"
grep -q '^[^ ]* [^ ]* [0-9]* \[stdout\]' "$log" && fail "the workload ran on tampered content"
say "PASS: 6 passed, 0 failed"
echo "6 passed, 0 failed"
