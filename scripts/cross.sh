#!/usr/bin/env bash
# Builds sluice for the ARM boards people have, from this Debian machine,
# with Debian's cross compilers (no Docker, nothing from outside the
# package registries):
#   target/aarch64-unknown-linux-gnu/<profile>/sluice        64-bit Pi OS / Debian arm64
#   target/armv7-unknown-linux-gnueabihf/<profile>/sluice    32-bit Pi OS / Debian armhf
#
#   scripts/cross.sh [--profile dist|release] [TARGET...]   (default: dist, both)
#
# Installs gcc-aarch64-linux-gnu, gcc-arm-linux-gnueabihf (apt) and the Rust
# targets when missing. scripts/cross-check.sh runs the results under qemu.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=dist
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile="$2"; shift 2 ;;
        -*) echo "usage: $0 [--profile dist|release] [TARGET...]" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || targets=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)

# Rust target → GNU triple of Debian's cross compiler, Debian architecture.
gnu_of() {
    case "$1" in
        aarch64-unknown-linux-gnu) echo "aarch64-linux-gnu arm64" ;;
        armv7-unknown-linux-gnueabihf) echo "arm-linux-gnueabihf armhf" ;;
        *) echo "cross.sh: unknown target $1" >&2; exit 2 ;;
    esac
}

for target in "${targets[@]}"; do
    read -r triple arch <<< "$(gnu_of "$target")"
    if ! command -v "$triple-gcc" >/dev/null; then
        sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
        $sudo_ apt-get install -y -q "gcc-$triple" "libc6-dev-$arch-cross"
    fi
    rustup target list --installed | grep -qx "$target" || rustup target add "$target"
    upper=$(echo "$target" | tr 'a-z-' 'A-Z_')
    lower=$(echo "$target" | tr '-' '_')
    # The linker, and the C compiler of crates with C parts (ring).
    export "CARGO_TARGET_${upper}_LINKER=$triple-gcc"
    export "CC_${lower}=$triple-gcc" "AR_${lower}=$triple-ar"
    cargo build --locked --profile "$profile" -p sluice --bin sluice --target "$target"
    echo "target/$target/$profile/sluice"
done
