#!/usr/bin/env bash
# Builds an EIF with cidboot as /init, and prints its PCRs as JSON (eif_build's output).
# The initramfs is reproducible: sorted, owned by root, every timestamp 0, gzip without a name
# or time. Two builds from the same inputs give the same PCR0.
#
# Usage: scripts/build-eif.sh --cidboot BIN --kernel-dir DIR --out EIF [--tools FULL]
#          [--helpers DIR] [--helper-image LAYOUT DIGEST]... [--config FILE] [--cmdline "..."]
#   BIN           a static cidboot, the EIF's /init (the enclave build: --no-default-features)
#   FULL          the cidboot that packs, serves and verifies helper images (a default build,
#                 which has `cidboot gateway`); BIN if not given
#   DIR           vmlinuz, config, and modules/*.ko (scripts/emulator-setup.sh prepares one)
#   --helpers     files for /eigen/bin (EigenCloud-style helper clients)
#   --helper-image  a dependency image as an OCI layout directory (what `skopeo copy
#                 docker://…@sha256:… oci:LAYOUT:tag` writes) and its manifest digest: cidboot
#                 verifies it and bakes the regular files of its /eigen/bin into the EIF, so
#                 that no fetch is needed at boot; their [helpers.pins] lines go to stderr
#   --config      a runtime configuration baked in at /etc/cidboot/config.toml
set -euo pipefail
cidboot= tools= kdir= out= helpers= config=
helper_images=()
cmdline="console=ttyS0 reboot=k panic=30 pci=off random.trust_cpu=on"
while [ $# -gt 0 ]; do
  case "$1" in
    --cidboot) cidboot=$2; shift 2 ;;
    --tools) tools=$2; shift 2 ;;
    --kernel-dir) kdir=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --helpers) helpers=$2; shift 2 ;;
    --helper-image) helper_images+=("$2" "$3"); shift 3 ;;
    --config) config=$2; shift 2 ;;
    --cmdline) cmdline=$2; shift 2 ;;
    *) echo "build-eif: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$cidboot" ] && [ -n "$kdir" ] && [ -n "$out" ] || { sed -n '2,17p' "$0" >&2; exit 2; }
tools=${tools:-$cidboot}
# The measured /init is the enclave build: a default build carries the software NSM and the
# development gateway, which no enclave should.
if "$cidboot" gateway --help >/dev/null 2>&1; then
  echo "build-eif: $cidboot is a default build (it has the gateway command); build /init with --no-default-features" >&2
  exit 2
fi
if [ ${#helper_images[@]} -gt 0 ] && ! "$tools" gateway --help >/dev/null 2>&1; then
  echo "build-eif: $tools has no gateway command (an enclave build): pass a default build as --tools" >&2
  exit 2
fi
eif_build=${EIF_BUILD:-$(command -v eif_build || echo "${CIDBOOT_CACHE:-$HOME/.cache/cidboot}/emulator/bin/eif_build")}

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/root"
mkdir -p "$root"/{dev,proc,sys,run,tmp,mnt/root,etc/cidboot,lib/modules/cidboot,eigen/bin}
# The kernel opens /dev/console for /init before anything is mounted; without it PID 1 would
# start with no standard descriptors.
mknod -m 0600 "$root/dev/console" c 5 1
mknod -m 0666 "$root/dev/null" c 1 3
install -m 0755 "$cidboot" "$root/init"
for m in "$kdir"/modules/*.ko; do install -m 0644 "$m" "$root/lib/modules/cidboot/"; done
if [ -n "$helpers" ]; then
  for h in "$helpers"/*; do install -m 0755 "$h" "$root/eigen/bin/"; done
fi
# Each dependency image goes through cidboot's own verified pipeline: packed, served on
# loopback, resolved and checked against its digest, and unpacked; only regular files of its
# /eigen/bin are taken.
for ((i = 0; i < ${#helper_images[@]}; i += 2)); do
  layout=${helper_images[i]} digest=${helper_images[i + 1]}
  dep="$stage/helper-image-$i"
  mkdir -p "$dep"
  cid=$("$tools" pack "$layout" --car "$dep/image.car")
  "$tools" gateway --car "$dep/image.car" --listen 127.0.0.1:0 --tls-self-signed "$dep/ca.pem" >"$dep/url" 2>"$dep/gateway.log" &
  gw_pid=$!
  for _ in $(seq 100); do [ -s "$dep/url" ] && break; sleep 0.1; done
  url=$(head -n1 "$dep/url")
  manifest=$("$tools" inspect "ipfs://$cid" --gateway "$url" --ca "$dep/ca.pem" --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["manifest_digest"])') || manifest=
  if [ "$manifest" != "$digest" ]; then
    kill "$gw_pid" 2>/dev/null || true
    echo "build-eif: helper image $layout: its manifest is ${manifest:-unknown}, not $digest" >&2
    exit 1
  fi
  "$tools" unpack "ipfs://$cid" --gateway "$url" --ca "$dep/ca.pem" --rootfs "$dep/root" >/dev/null
  kill "$gw_pid" 2>/dev/null || true
  found=0
  for h in "$dep/root/eigen/bin"/*; do
    [ -f "$h" ] && [ ! -L "$h" ] || continue
    name=$(basename "$h")
    [ ! -e "$root/eigen/bin/$name" ] || { echo "build-eif: helper $name is provided twice" >&2; exit 1; }
    install -m 0755 "$h" "$root/eigen/bin/$name"
    echo "$name = \"sha256:$(sha256sum "$h" | cut -d' ' -f1)\"  # from $layout ($digest)" >&2
    found=$((found + 1))
  done
  [ "$found" -gt 0 ] || { echo "build-eif: helper image $layout has no regular files in /eigen/bin" >&2; exit 1; }
done
[ -z "$config" ] || install -m 0644 "$config" "$root/etc/cidboot/config.toml"
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . -print0 | LC_ALL=C sort -z |
  cpio --null --create --format=newc --reproducible --owner=0:0 --quiet) | gzip -n -9 >"$stage/initramfs.cpio.gz"

"$eif_build" --kernel "$kdir/vmlinuz" --kernel_config "$kdir/config" --cmdline "$cmdline" \
  --ramdisk "$stage/initramfs.cpio.gz" --output "$out" >"$stage/eif.json"
# eif_build prints a line naming the output before the JSON: keep only the JSON.
sed -n '/^{/,$p' "$stage/eif.json"
