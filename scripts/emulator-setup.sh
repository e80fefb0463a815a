#!/usr/bin/env bash
# Installs what the emulated Nitro Enclave needs, once, behind stamps outside the repository:
#   QEMU with the nitro-enclave machine (built from the bookworm-backports source; Debian's
#   binary lacks it), the Debian 6.12 cloud kernel and its modules, the microvm firmware,
#   eif_build and vhost-device-vsock.
# Prints the cache directory. Override it with CIDBOOT_CACHE (default ~/.cache/cidboot).
set -euo pipefail
cache=${CIDBOOT_CACHE:-$HOME/.cache/cidboot}/emulator
mkdir -p "$cache"
log() { echo "emulator-setup: $*" >&2; }
export DEBIAN_FRONTEND=noninteractive

deps=(libcbor-dev libfdt-dev ninja-build libglib2.0-dev libpixman-1-dev libgnutls28-dev zlib1g-dev
  pkg-config python3-venv cpio xz-utils libssl-dev dpkg-dev)
missing=()
for p in "${deps[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi

mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
mirror=${mirror:-http://deb.debian.org/debian}
bpo=/etc/apt/sources.list.d/cidboot-bookworm-backports.list
if [ ! -f "$bpo" ]; then
  printf 'deb %s bookworm-backports main\ndeb-src %s bookworm-backports main\n' "$mirror" "$mirror" >"$bpo"
  apt-get update -qq
fi

# QEMU with the nitro-enclave machine.
if [ ! -f "$cache/.qemu-10.0.2" ]; then
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
  cp "$dir/build/qemu-system-x86_64" "$cache/qemu-system-x86_64"
  rm -rf "$src"
  touch "$cache/.qemu-10.0.2"
fi

# Firmware for -L.
if [ ! -f "$cache/.firmware" ]; then
  log "unpacking the microvm firmware"
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download seabios qemu-system-data >/dev/null && for d in *.deb; do dpkg -x "$d" x; done)
  mkdir -p "$cache/firmware"
  cp "$(find "$tmp/x" -name bios-microvm.bin | head -n1)" "$(find "$tmp/x" -name linuxboot_dma.bin | head -n1)" "$cache/firmware/"
  rm -rf "$tmp"
  touch "$cache/.firmware"
fi

# The Debian 6.12 cloud kernel (nsm, vsock and virtio_mmio are modules there).
if [ ! -f "$cache/.kernel" ]; then
  pkg=$(apt-cache search --names-only '^linux-image-6\.12\.[0-9.]+\+deb12-cloud-amd64-unsigned$' | cut -d' ' -f1 | sort -V | tail -n1)
  log "unpacking $pkg"
  tmp=$(mktemp -d)
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
  rm -rf "$tmp"
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
