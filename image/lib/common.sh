# shellcheck shell=bash
# Shared helpers for image/build and image/test.
IMAGE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO_DIR="$(cd "$IMAGE_DIR/.." && pwd)"
CACHE_DIR="$IMAGE_DIR/cache"
OUT_DIR="$IMAGE_DIR/out"
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
say() { printf '[image] %s\n' "$*" >&2; }
die() { printf '[image] error: %s\n' "$*" >&2; exit 1; }
arches_from() {
  case "${1:-all}" in
    all) echo "x86_64 aarch64" ;;
    x86_64|aarch64) echo "$1" ;;
    *) die "unknown architecture \`$1\` (x86_64, aarch64 or all)" ;;
  esac
}
debarch() { case "$1" in x86_64) echo amd64 ;; aarch64) echo arm64 ;; esac; }
