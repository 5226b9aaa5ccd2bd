# shellcheck shell=bash
# Phase "prepare": installs the host tools the image build and the boot test
# need, on Debian 12. Idempotent: a second run checks and prints nothing.
# Sourced by image/build and image/test (needs common.sh first).

setup_host() {
  local need_apt=0 pkgs missing=()
  pkgs=(qemu-system-x86 qemu-system-arm qemu-utils ovmf qemu-efi-aarch64
        gcc gcc-aarch64-linux-gnu libc6-dev-arm64-cross binutils-aarch64-linux-gnu
        binutils mtools dosfstools fdisk kmod cpio e2fsprogs openssl zstd xz-utils
        python3 ca-certificates)
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    say "adding the arm64 dpkg architecture (kernel and EFI stub packages)"
    $SUDO dpkg --add-architecture arm64
    need_apt=1
  fi
  # qemu-system and qemu-utils come together from bookworm-backports: the
  # machine may already carry qemu-utils 10 from there, and bookworm's
  # qemu-system 7.2 would remove it (and is about half as fast under TCG).
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    say "adding bookworm-backports to apt's sources (qemu 10)"
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      | $SUDO tee /etc/apt/sources.list.d/tlsgate-backports.sources >/dev/null
    need_apt=1
  fi
  if ((need_apt)) || ((${#missing[@]})); then
    say "installing host packages: ${missing[*]:-(none; refreshing indexes)}"
    $SUDO apt-get update -qq
    if ((${#missing[@]})); then
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        -t bookworm-backports "${missing[@]}" >/dev/null
    fi
  fi
  if command -v rustup >/dev/null 2>&1; then
    local t
    for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
      rustup target list --installed | grep -qx "$t" || { say "rustup target add $t"; rustup target add "$t" >/dev/null 2>&1; }
    done
  fi
}
