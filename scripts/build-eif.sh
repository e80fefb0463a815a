#!/usr/bin/env bash
# Builds an EIF with cidboot as /init, and prints its PCRs as JSON (eif_build's output).
# The initramfs is reproducible: sorted, owned by root, every timestamp 0, gzip without a name
# or time. Two builds from the same inputs give the same PCR0.
#
# Usage: scripts/build-eif.sh --cidboot BIN --kernel-dir DIR --out EIF
#          [--helpers DIR] [--config FILE] [--cmdline "..."]
#   BIN        a static cidboot
#   DIR        vmlinuz, config, and modules/*.ko (scripts/emulator-setup.sh prepares one)
#   --helpers  files for /eigen/bin (EigenCloud-style helper clients)
#   --config   a runtime configuration baked in at /etc/cidboot/config.toml
set -euo pipefail
cidboot= kdir= out= helpers= config=
cmdline="console=ttyS0 reboot=k panic=30 pci=off random.trust_cpu=on"
while [ $# -gt 0 ]; do
  case "$1" in
    --cidboot) cidboot=$2; shift 2 ;;
    --kernel-dir) kdir=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --helpers) helpers=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --cmdline) cmdline=$2; shift 2 ;;
    *) echo "build-eif: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$cidboot" ] && [ -n "$kdir" ] && [ -n "$out" ] || { sed -n '2,13p' "$0" >&2; exit 2; }
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
[ -z "$config" ] || install -m 0644 "$config" "$root/etc/cidboot/config.toml"
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . -print0 | LC_ALL=C sort -z |
  cpio --null --create --format=newc --reproducible --owner=0:0 --quiet) | gzip -n -9 >"$stage/initramfs.cpio.gz"

"$eif_build" --kernel "$kdir/vmlinuz" --kernel_config "$kdir/config" --cmdline "$cmdline" \
  --ramdisk "$stage/initramfs.cpio.gz" --output "$out" >"$stage/eif.json"
# eif_build prints a line naming the output before the JSON: keep only the JSON.
sed -n '/^{/,$p' "$stage/eif.json"
