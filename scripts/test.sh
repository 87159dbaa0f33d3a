#!/usr/bin/env bash
# Every check and test of sluice, on a fresh Debian machine (run as root, or
# with the packages below already installed):
#   - installs the real servers the integration tests spawn (mosquitto and
#     its clients, influxdb 1.x, victoria-metrics, socat, pymodbus in a venv),
#     the independent Sparkplug implementations they check against (pysparkplug
#     in that venv; Node.js and Eclipse Tahu's sparkplug-payload from npm in
#     target/test-node) and the wasm32-wasip2 target the transforms are built for;
#   - formatting and clippy (warnings are errors) for all three workspaces:
#     the host workspace, transforms/ and tests/guests/; no import circle
#     between the modules of host/, runtime/ and core/ (scripts/module-cycles.py);
#   - the unit and integration tests of the host workspace (which build the
#     transforms and the test guests as real Wasm components) and the native
#     unit tests of the transforms.
set -euo pipefail
cd "$(dirname "$0")/.."

# Server binaries live in /usr/sbin, which a non-login shell may not have.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

missing=()
command -v mosquitto >/dev/null || missing+=(mosquitto)
command -v mosquitto_sub >/dev/null || missing+=(mosquitto-clients)
command -v influxd >/dev/null || missing+=(influxdb)
command -v victoria-metrics >/dev/null || missing+=(victoria-metrics)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v socat >/dev/null || missing+=(socat)
command -v python3 >/dev/null || missing+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if ((${#missing[@]})); then
  echo "==> installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

echo "==> pymodbus and pysparkplug (the Modbus devices and a Sparkplug host of the tests) in target/test-venv"
[ -x target/test-venv/bin/python ] || python3 -m venv target/test-venv
target/test-venv/bin/pip install -q --disable-pip-version-check -r tests/support/requirements.txt

echo "==> Eclipse Tahu's sparkplug-payload (the tests' second Sparkplug decoder) in target/test-node"
tahu=target/test-node/node_modules/sparkplug-payload/package.json
if ! { [ -f "$tahu" ] && grep -q '"version": "1.0.3"' "$tahu"; }; then
  npm install --prefix target/test-node --no-audit --no-fund --silent sparkplug-payload@1.0.3
fi

echo "==> Rust toolchain (rust-toolchain.toml) with wasm32-wasip2, rustfmt, clippy"
# RUSTUP_AUTO_INSTALL=0 on these machines: install what the toolchain file asks for explicitly.
toolchain=$(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)
rustup toolchain list | grep -q "^$toolchain" || rustup toolchain install "$toolchain" --profile minimal
rustup component add --toolchain "$toolchain" rustfmt clippy
rustup target add --toolchain "$toolchain" wasm32-wasip2

workspaces=(Cargo.toml transforms/Cargo.toml tests/guests/Cargo.toml)

echo "==> cargo fmt --check"
for manifest in "${workspaces[@]}"; do
  cargo fmt --manifest-path "$manifest" --all -- --check
done

echo "==> cargo clippy -D warnings"
for manifest in "${workspaces[@]}"; do
  cargo clippy --manifest-path "$manifest" --workspace --all-targets -- -D warnings
done

echo "==> no import circles between the modules of the host and its runtime and core crates"
for src in host/src runtime/src core/src; do
  python3 scripts/module-cycles.py "$src"
done

echo "==> tests"
# The workspace tests run the real `sluice` binary: cargo builds it for the
# host's own integration tests (same feature set as the tests, so no second
# build of the dependency tree) before any test runs.
cargo test --workspace
cargo test --manifest-path transforms/Cargo.toml --workspace
cargo test --manifest-path tests/guests/Cargo.toml --workspace
