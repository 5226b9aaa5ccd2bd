# shellcheck shell=bash
# Phase "kernel": fetches the pinned Debian cloud kernel and systemd EFI stub
# (apt-get download, never installed) into image/cache/, extracts them, and
# picks the kernel modules the appliance loads, in dependency order.
#
# image/kernel-versions pins one line per package: `<arch> <package> <version>`.
# When a pinned version has vanished from the archive, the current one is
# resolved, used, recorded, and the build says so loudly.

PINS="$IMAGE_DIR/kernel-versions"
# The modules init loads (finit_module), before their dependencies are added.
# evdev gives /dev/input/eventN, button the ACPI power button (a module in
# the amd64 cloud kernel, built in on arm64; built-in names resolve to
# nothing here). The arm64 cloud kernel has no gpio_keys (the device-tree
# power button of qemu's `virt`): there the button works under ACPI only.
WANTED_MODULES="virtio_ring virtio failover net_failover virtio_net virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk virtio-rng virtio_mmio vfat nls_cp437 nls_ascii nls_utf8 nls_iso8859-1 rtc-pl031 rtc-efi evdev button"

pin_of() { awk -v a="$1" -v p="$2" '$1==a && $2==p {print $3}' "$PINS" 2>/dev/null; }

set_pin() { # arch package version
  local tmp; tmp="$(mktemp)"
  { grep -v "^$1 $2 " "$PINS" 2>/dev/null || true; echo "$1 $2 $3"; } | sort > "$tmp"
  { echo "# Pinned by image/build: <arch> <package> <version>. Delete a line to re-resolve."; grep -v '^#' "$tmp"; } > "$PINS"
  rm -f "$tmp"
}

resolve_pkg() { # arch meta-or-real-package -> real package name
  local da; da="$(debarch "$1")"
  case "$2" in
    linux-image-cloud)
      apt-cache depends "linux-image-cloud-$da:$da" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}' | sed 's/:.*//' ;;
    *) echo "$2" ;;
  esac
}

candidate_of() { # package:arch
  apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2; exit}'
}

# fetch_pkg ARCH LOGICAL -> prints path of the .deb in the cache
fetch_pkg() {
  local arch="$1" logical="$2" da pkg ver deb
  da="$(debarch "$arch")"
  mkdir -p "$CACHE_DIR/debs"
  pkg="$(awk -v a="$arch" '$1==a && $2 ~ /^linux-image-/ {print $2; exit}' "$PINS" 2>/dev/null)"
  [ "$logical" = systemd-boot-efi ] && pkg="systemd-boot-efi"
  ver=""
  [ -n "$pkg" ] && ver="$(pin_of "$arch" "$pkg")"
  if [ -n "$pkg" ] && [ -n "$ver" ]; then
    deb="$(ls "$CACHE_DIR/debs/${pkg}_${ver//:/%3a}_${da}.deb" 2>/dev/null || true)"
    if [ -n "$deb" ]; then echo "$deb"; return; fi
    if (cd "$CACHE_DIR/debs" && apt-get download -qq -o APT::Sandbox::User=root "$pkg:$da=$ver" >/dev/null 2>&1); then
      ls "$CACHE_DIR/debs/${pkg}_${ver//:/%3a}_${da}.deb"; return
    fi
    say "WARNING: pinned $pkg $ver ($arch) has vanished from the archive; resolving the current one"
  fi
  pkg="$(resolve_pkg "$arch" "$logical")"
  [ -n "$pkg" ] || { $SUDO apt-get update -qq; pkg="$(resolve_pkg "$arch" "$logical")"; }
  [ -n "$pkg" ] || die "cannot resolve \`$logical\` for $arch"
  ver="$(candidate_of "$pkg:$da")"
  [ -n "$ver" ] && [ "$ver" != "(none)" ] || die "no candidate version for \`$pkg:$da\`"
  (cd "$CACHE_DIR/debs" && apt-get download -qq -o APT::Sandbox::User=root "$pkg:$da=$ver" >/dev/null) || die "apt-get download $pkg:$da=$ver failed"
  say "pinned $arch $pkg $ver in image/kernel-versions"
  set_pin "$arch" "$pkg" "$ver"
  ls "$CACHE_DIR/debs/${pkg}_${ver//:/%3a}_${da}.deb"
}

# kernel_phase ARCH WORK: fills WORK/kernel/{vmlinuz,stub.efi,kver,modules.list,lib/modules/...}
kernel_phase() {
  local arch="$1" work="$2" kdeb sdeb ex kver m
  kdeb="$(fetch_pkg "$arch" linux-image-cloud)"
  sdeb="$(fetch_pkg "$arch" systemd-boot-efi)"
  ex="$CACHE_DIR/extract/$(basename "$kdeb" .deb)"
  if [ ! -d "$ex/boot" ]; then
    rm -rf "$ex"; mkdir -p "$ex"; dpkg-deb -x "$kdeb" "$ex"
  fi
  local sx="$CACHE_DIR/extract/$(basename "$sdeb" .deb)"
  if [ ! -d "$sx/usr" ]; then
    rm -rf "$sx"; mkdir -p "$sx"; dpkg-deb -x "$sdeb" "$sx"
  fi
  kver="$(ls "$ex/lib/modules" | head -1)"
  [ -s "$ex/lib/modules/$kver/modules.dep" ] || depmod -b "$ex" "$kver"
  rm -rf "$work/kernel"; mkdir -p "$work/kernel/root/lib/modules/$kver"
  echo "$kver" > "$work/kernel/kver"
  cp "$ex/boot/vmlinuz-$kver" "$work/kernel/vmlinuz"
  case "$arch" in
    x86_64) cp "$sx/usr/lib/systemd/boot/efi/linuxx64.efi.stub" "$work/kernel/stub.efi" ;;
    aarch64) cp "$sx/usr/lib/systemd/boot/efi/linuxaa64.efi.stub" "$work/kernel/stub.efi" ;;
  esac
  # Check the kernel is for the architecture we are building (gokrazy habit).
  case "$arch" in
    x86_64) file_is "$work/kernel/vmlinuz" 'x86 boot|bzImage|Linux kernel x86' ;;
    aarch64) file_is "$work/kernel/vmlinuz" 'ARM64|aarch64|PE32\+' ;;
  esac
  # Module load order from the kernel's own dependency data.
  local ordered
  ordered="$(for m in $WANTED_MODULES; do modprobe -d "$ex" -S "$kver" --show-depends "$m" 2>/dev/null || true; done | awk '$1=="insmod" {print $2}' | awk '!seen[$0]++')"
  : > "$work/kernel/modules.list"
  for m in $ordered; do
    local rel="${m#"$ex"/}" dest
    dest="$work/kernel/root/${rel%.xz}"; dest="${dest%.zst}"
    mkdir -p "$(dirname "$dest")"
    case "$m" in
      *.xz) xz -dc "$m" > "$dest" ;;
      *.zst) zstd -qdc "$m" > "$dest" ;;
      *) cp "$m" "$dest" ;;
    esac
    echo "/${dest#"$work/kernel/root/"}" >> "$work/kernel/modules.list"
  done
  [ -s "$work/kernel/modules.list" ] || die "no kernel modules resolved for $arch"
}

file_is() { # path regex: a cheap architecture check without `file`
  case "$arch" in
    x86_64) grep -q 'HdrS' <(od -An -c -j 514 -N 4 "$1" | tr -d ' \n') || die "$1 is not an x86 bzImage" ;;
    aarch64) [ "$(od -An -c -j 56 -N 4 "$1" | tr -d ' \n')" = 'ARMd' ] || die "$1 is not an arm64 Image" ;;
  esac
}
