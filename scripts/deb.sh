#!/usr/bin/env bash
# Builds the Debian package: target/debian/sluice_<version>-1_<arch>.deb.
#
#   scripts/deb.sh                     # the shipped `dist` build, for this machine
#                                      #   (profile-guided: scripts/pgo.sh)
#   scripts/deb.sh --no-pgo            # the same without the profile (half the build time)
#   scripts/deb.sh --profile release   # faster to build, for trying it out
#   scripts/deb.sh --target aarch64-unknown-linux-gnu   # arm64 (scripts/cross.sh)
#
# What goes in is listed in host/Cargo.toml ([package.metadata.deb]): the
# binary, both transforms, /etc/sluice/sluice.toml (examples/gateway.toml
# with the transforms found in /usr/lib/sluice/transforms), the systemd unit
# (deploy/systemd) and the maintainer scripts (deploy/debian) that make the
# `sluice` user and /var/lib/sluice. Needs Rust; installs cargo-deb and the
# wasm32-wasip2 target when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=dist
target=""
pgo=1
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile="$2"; shift 2 ;;
        --target) target="$2"; shift 2 ;;
        --no-pgo) pgo=0; shift ;;
        *) echo "usage: $0 [--profile dist|release] [--target TRIPLE] [--no-pgo]" >&2; exit 2 ;;
    esac
done

command -v cargo-deb >/dev/null || cargo install --locked cargo-deb
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

if [ -n "$target" ]; then
    scripts/cross.sh --profile "$profile" "$target"
elif [ "$profile" = dist ] && [ "$pgo" = 1 ]; then
    scripts/pgo.sh --profile dist
else
    cargo build --locked --profile "$profile" -p sluice --bin sluice
fi
cargo build --locked --release --target wasm32-wasip2 --manifest-path transforms/Cargo.toml

mkdir -p target/deb
{
    echo "# Installed by the sluice package (from examples/gateway.toml). Values"
    echo "# come from the environment, which the systemd unit and"
    echo "# /etc/sluice/sluice.env set; see /usr/share/doc/sluice/docs/operations.md."
    echo "#"
    sed 's|\${SLUICE_TRANSFORMS_DIR:-\.\./transforms/target/wasm32-wasip2/release}|${SLUICE_TRANSFORMS_DIR:-/usr/lib/sluice/transforms}|' \
        examples/gateway.toml
} > target/deb/sluice.toml
grep -q 'SLUICE_TRANSFORMS_DIR:-/usr/lib/sluice/transforms' target/deb/sluice.toml \
    || { echo "deb.sh: examples/gateway.toml no longer has the transforms path this script rewrites" >&2; exit 1; }

cargo deb -p sluice --no-build --profile "$profile" ${target:+--target "$target"} --output target/debian/
