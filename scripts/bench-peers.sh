#!/usr/bin/env bash
# End to end against the tools users would pick instead (issue #9): sluice,
# Node-RED 4, a Python paho-mqtt + pyserial gateway and a bare rumqttc
# publisher, each reading the same pseudo-terminal (the bare publisher reads
# nothing: it is the ceiling) and publishing to the same real mosquitto (and,
# in the InfluxDB phase, writing points to the same real influxd), measured
# alternately in one run. One command, from a clean clone:
#
#   scripts/bench-peers.sh                 # ~8 minutes of benchmark
#   scripts/bench-peers.sh --rounds 1      # half of that
#   scripts/bench-peers.sh --only sluice,bare --phases rate-1000
#
# What it does:
#   1. installs the system packages it needs (mosquitto, influxdb 1.x,
#      Node.js + npm, python3-venv) when they are missing (run as root, or
#      have them);
#   2. installs the peers into bench/peers (git-ignored): Node-RED,
#      node-red-node-serialport and node-red-contrib-influxdb from
#      package-lock.json (npm ci; the serial
#      port's native binding ships prebuilt for linux-x64 inside the npm
#      package), and a venv with paho-mqtt and pyserial (requirements.txt);
#   3. builds sluice with the `dist` profile (what ships: thin LTO, one
#      codegen unit; ~6 minutes on 2 cores), sluice-bench in release, and
#      the transforms (`sluice transform build transforms`);
#   4. runs `sluice-bench run` (arguments are passed through; see
#      `target/release/sluice-bench run --help`), which writes
#      bench/out/report.md, bench/out/results.json and the SVG charts.
#
# Not part of scripts/test.sh (CI only compiles and lints the bench crate).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

missing=()
command -v mosquitto >/dev/null || missing+=(mosquitto)
command -v influxd >/dev/null || missing+=(influxdb)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if ((${#missing[@]})); then
  echo "==> installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if ((node_major < 18)); then
  echo "Node-RED 4 needs Node.js 18 or newer; this is $(node --version)" >&2
  exit 1
fi

echo "==> Node-RED 4 + node-red-node-serialport + node-red-contrib-influxdb (bench/peers/node_modules)"
(
  cd bench/peers
  if [[ ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
    npm ci --no-audit --no-fund --loglevel=error
  fi
  # The native serial binding must load (a prebuilt binary inside the package).
  node -e 'require("node-gyp-build")(require("path").dirname(require.resolve("@serialport/bindings-cpp/package.json")))' ||
    { echo "the serialport native binding does not load on this machine" >&2; exit 1; }
)

echo "==> Python venv with paho-mqtt + pyserial (bench/peers/venv)"
[[ -x bench/peers/venv/bin/python ]] || python3 -m venv bench/peers/venv
bench/peers/venv/bin/pip install -q --disable-pip-version-check -r bench/peers/requirements.txt

echo "==> Rust toolchain with wasm32-wasip2"
toolchain=$(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)
rustup toolchain list | grep -q "^$toolchain" || rustup toolchain install "$toolchain" --profile minimal
rustup target add --toolchain "$toolchain" wasm32-wasip2

echo "==> building sluice (dist: the shipped build), sluice-bench (release) and the transforms"
cargo build --profile dist -p sluice
cargo build --release -p sluice-bench
target/dist/sluice transform build transforms

echo "==> running the benchmark"
exec target/release/sluice-bench run --repo . --out bench/out --sluice target/dist/sluice "$@"
