#!/usr/bin/env bash
# Builds cidboot's sample image as an OCI image layout, from a static binary compiled here.
# Only GNU tar, gzip and coreutils touch the layout: an independent producer of OCI images.
# Usage: scripts/sample-image.sh OUT_DIR [--helpers]
#   --helpers  a dependency image instead (EigenCloud style): the sample kms-client stand-in
#              at /eigen/bin/fake-kms-client, for [[helpers.images]]
set -euo pipefail
out=${1:?usage: scripts/sample-image.sh OUT_DIR [--helpers]}
kind=${2:-}
repo=$(cd "$(dirname "$0")/.." && pwd)
target=x86_64-unknown-linux-gnu

RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release --locked \
  --manifest-path "$repo/sample/Cargo.toml" --bin hello --bin fake-kms-client --target "$target"
bins="${CARGO_TARGET_DIR:-$repo/sample/target}/$target/release"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
mkdir -p "$root/bin" "$root/etc" "$root/app"
if [ "$kind" = --helpers ]; then
  mkdir -p "$root/eigen/bin"
  install -m 0755 "$bins/fake-kms-client" "$root/eigen/bin/fake-kms-client"
  chmod 0755 "$root/eigen" "$root/eigen/bin"
else
  install -m 0755 "$bins/hello" "$root/bin/hello"
fi
printf 'root:x:0:0:root:/root:/bin/hello\napp:x:1000:1000:app:/app:/bin/hello\n' >"$root/etc/passwd"
printf 'root:x:0:\napp:x:1000:\n' >"$root/etc/group"
chmod 0755 "$root" "$root/bin" "$root/etc" "$root/app"
chmod 0644 "$root/etc/passwd" "$root/etc/group"

layer="$work/layer.tar"
# Everything belongs to root except the app's home directory, appended as the app user.
tarflags=(--directory "$root" --sort=name --numeric-owner --mtime=@0 --format=posix
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime)
tar --create --file "$layer" "${tarflags[@]}" --owner=0 --group=0 --exclude=./app .
tar --append --file "$layer" "${tarflags[@]}" --owner=1000 --group=1000 ./app
diff_id=$(sha256sum "$layer" | cut -d' ' -f1)
gzip -n -9 "$layer"
layer_sha=$(sha256sum "$layer.gz" | cut -d' ' -f1)
layer_size=$(stat -c %s "$layer.gz")

rm -rf "$out"
mkdir -p "$out/blobs/sha256"
mv "$layer.gz" "$out/blobs/sha256/$layer_sha"

process='{"User":"app","Env":["PATH=/bin","GREETING=hello from a content-addressed image"],"Entrypoint":["/bin/hello"],"Cmd":["--from","cidboot"],"WorkingDir":"/app"}'
[ "$kind" = --helpers ] && process='{}'
config=$(printf '{"architecture":"amd64","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"scripts/sample-image.sh"}]}' "$process" "$diff_id")
config_sha=$(printf '%s' "$config" | sha256sum | cut -d' ' -f1)
printf '%s' "$config" >"$out/blobs/sha256/$config_sha"

manifest=$(printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%d}]}' \
  "$config_sha" "${#config}" "$layer_sha" "$layer_size")
manifest_sha=$(printf '%s' "$manifest" | sha256sum | cut -d' ' -f1)
printf '%s' "$manifest" >"$out/blobs/sha256/$manifest_sha"

printf '{"imageLayoutVersion":"1.0.0"}' >"$out/oci-layout"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}' \
  "$manifest_sha" "${#manifest}" >"$out/index.json"
echo "$out"
