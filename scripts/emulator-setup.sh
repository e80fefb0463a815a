#!/usr/bin/env bash
# Installs what the emulated Nitro Enclave needs, once, behind stamps outside the repository:
#   QEMU with the nitro-enclave machine (built from the bookworm-backports source; Debian's
#   binary lacks it), the Debian 6.12 cloud kernel and its modules, the microvm firmware,
#   eif_build and vhost-device-vsock.
# Prints the cache directory. Override it with CIDBOOT_CACHE (default ~/.cache/cidboot).
#
# Each step is recorded as done (its stamp, or the files it makes) only once it succeeded, and
# checks what it needs again at every run: a run that failed half-way (a broken mirror, a full
# disk, an interrupt) is repaired by the next one. apt's package index is refreshed once in a
# run, just before the first step that downloads anything; a machine whose steps are all done is
# not touched.
set -euo pipefail
cache=${CIDBOOT_CACHE:-$HOME/.cache/cidboot}/emulator
mkdir -p "$cache"
log() { echo "emulator-setup: $*" >&2; }
export DEBIAN_FRONTEND=noninteractive
# Temporary directories, removed however the run ends.
tmps=()
trap 'rm -rf "${tmps[@]}"' EXIT
tmpdir() { local d; d=$(mktemp -d); tmps+=("$d"); echo "$d"; }

# `apt-get update`, at most once per run.
apt_updated=
apt_update() {
  [ -z "$apt_updated" ] || return 0
  apt-get update -qq || return 1
  apt_updated=1
}

# A package counts as installed only when dpkg says it is wholly installed ("ii"): one left
# half-installed or half-configured by an interrupted run is installed again.
installed() { [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null)" = "ii " ]; }

deps=(libcbor-dev libfdt-dev ninja-build libglib2.0-dev libpixman-1-dev libgnutls28-dev zlib1g-dev
  pkg-config python3-venv cpio xz-utils libssl-dev dpkg-dev)
missing=()
for p in "${deps[@]}"; do installed "$p" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  # An install that dpkg left unfinished blocks every later one until it is completed.
  [ -z "$(dpkg --audit 2>/dev/null)" ] || dpkg --configure -a >&2
  apt_update
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# bookworm-backports, for QEMU's source. The list and apt's index of it are one step: when the
# update that reads the list fails, a list this run wrote is removed again, so that apt is left
# as it was and the next run writes it and updates again (instead of finding the list and
# failing later with "You must put some 'deb-src' URIs in your sources.list").
backports() {
  local mirror bpo want
  mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1 || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  bpo=/etc/apt/sources.list.d/cidboot-bookworm-backports.list
  want=$(printf 'deb %s bookworm-backports main\ndeb-src %s bookworm-backports main' "$mirror" "$mirror")
  if [ "$(cat "$bpo" 2>/dev/null)" != "$want" ]; then
    log "adding bookworm-backports (binaries and sources) to apt: $bpo"
    printf '%s\n' "$want" >"$bpo.tmp.$$"
    mv "$bpo.tmp.$$" "$bpo"
    apt_updated=
    if ! apt_update; then
      rm -f "$bpo"
      log "apt-get update failed with $bpo, which was removed again; run this again to retry"
      return 1
    fi
  fi
  apt_update
}

# QEMU with the nitro-enclave machine.
if [ ! -f "$cache/.qemu-10.0.2" ] || [ ! -x "$cache/qemu-system-x86_64" ]; then
  rm -f "$cache/.qemu-10.0.2"
  backports
  log "building QEMU 10.0.2 (nitro-enclave machine, TCG); a few minutes"
  src="$cache/qemu-src"
  rm -rf "$src" && mkdir -p "$src"
  (cd "$src" && apt-get source --download-only --tar-only -t bookworm-backports qemu >/dev/null)
  tarball=$(ls "$src"/qemu_10.0.2*.orig.tar.* | head -n1)
  tar -C "$src" -xf "$tarball"
  dir=$(find "$src" -maxdepth 1 -type d -name 'qemu-10.0.2*' | head -n1)
  sed -i 's/unpack_edk2_blobs = .*/unpack_edk2_blobs = false/' "$dir/meson.build"
  printf 'CONFIG_NITRO_ENCLAVE=y\nCONFIG_MICROVM=y\n' >"$dir/configs/devices/x86_64-softmmu/nitro.mak"
  python3 -m venv "$cache/meson-venv"
  "$cache/meson-venv/bin/pip" install -q meson==1.5.0 pycotap==1.3.1
  (cd "$dir" && ./configure --python="$cache/meson-venv/bin/python3" \
      --target-list=x86_64-softmmu --without-default-features --without-default-devices \
      --with-devices-x86_64=nitro --enable-tcg --enable-libcbor --enable-gnutls --enable-vhost-user \
      --enable-fdt=system --disable-docs --disable-tools --disable-install-blobs --disable-werror >"$cache/qemu-build.log" 2>&1 \
    && ninja -C build qemu-system-x86_64 >>"$cache/qemu-build.log" 2>&1) || { log "QEMU build failed; see $cache/qemu-build.log"; tail -n 30 "$cache/qemu-build.log" >&2; exit 1; }
  cp "$dir/build/qemu-system-x86_64" "$cache/qemu-system-x86_64.tmp"
  mv "$cache/qemu-system-x86_64.tmp" "$cache/qemu-system-x86_64"
  rm -rf "$src"
  touch "$cache/.qemu-10.0.2"
fi

# Firmware for -L.
if [ ! -f "$cache/.firmware" ] || [ ! -f "$cache/firmware/bios-microvm.bin" ] || [ ! -f "$cache/firmware/linuxboot_dma.bin" ]; then
  rm -f "$cache/.firmware"
  log "unpacking the microvm firmware"
  apt_update
  tmp=$(tmpdir)
  (cd "$tmp" && apt-get download seabios qemu-system-data >/dev/null)
  for d in "$tmp"/*.deb; do dpkg -x "$d" "$tmp/x"; done
  bios=$(find "$tmp/x" -name bios-microvm.bin | head -n1)
  dma=$(find "$tmp/x" -name linuxboot_dma.bin | head -n1)
  [ -n "$bios" ] && [ -n "$dma" ] || { log "bios-microvm.bin or linuxboot_dma.bin is not in seabios and qemu-system-data"; exit 1; }
  mkdir -p "$cache/firmware"
  cp "$bios" "$dma" "$cache/firmware/"
  touch "$cache/.firmware"
fi

# The Debian 6.12 cloud kernel (nsm, vsock and virtio_mmio are modules there).
if [ ! -f "$cache/.kernel" ] || [ ! -f "$cache/kernel/vmlinuz" ] || [ ! -f "$cache/kernel/modules/nsm.ko" ]; then
  rm -f "$cache/.kernel"
  apt_update
  pkg=$(apt-cache search --names-only '^linux-image-6\.12\.[0-9.]+\+deb12-cloud-amd64-unsigned$' | cut -d' ' -f1 | sort -V | tail -n1)
  [ -n "$pkg" ] || { log "apt knows no linux-image-6.12.*+deb12-cloud-amd64-unsigned"; exit 1; }
  log "unpacking $pkg"
  tmp=$(tmpdir)
  (cd "$tmp" && apt-get download "$pkg" >/dev/null && dpkg -x ./*.deb x)
  rm -rf "$cache/kernel" && mkdir -p "$cache/kernel/modules"
  cp "$tmp"/x/boot/vmlinuz-* "$cache/kernel/vmlinuz"
  cp "$tmp"/x/boot/config-* "$cache/kernel/config"
  for m in virtio_mmio vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport nsm; do
    f=$(find "$tmp/x/lib/modules" -name "$m.ko*" | head -n1)
    [ -n "$f" ] || { log "module $m not found in $pkg"; exit 1; }
    case "$f" in *.xz) xz -dc "$f" >"$cache/kernel/modules/$m.ko" ;; *) cp "$f" "$cache/kernel/modules/$m.ko" ;; esac
  done
  echo "$pkg" >"$cache/kernel/package"
  touch "$cache/.kernel"
fi

# eif_build and vhost-device-vsock.
for tool in eif_build vhost-device-vsock; do
  if [ ! -x "$cache/bin/$tool" ]; then
    log "cargo install $tool"
    cargo install --quiet --locked --root "$cache" "$tool" >&2
  fi
done
echo "$cache"
