#!/usr/bin/env bash
# Builds sluice for this machine with profile-guided optimisation: the build
# we ship (`dist`), laid out by LLVM after a profile of sluice doing its job.
#
#   scripts/pgo.sh [--profile dist|release]   → target/<profile>/sluice
#
# Why: at the rates an edge box sees (a frame every millisecond or rarer)
# each frame finds the caches cold, and what it costs is mostly the cache
# lines and pages its code touches (BENCHMARKS.md, "Profile-guided
# build"). A profile lets LLVM put the code a frame runs together
# and the code it skips elsewhere.
#
# Steps:
#   1. an instrumented build in target/pgo-generate (so target/ keeps its own);
#   2. training: sluice-bench runs it against a real mosquitto and influxd
#      (startup with compiling, fixed rates, a burst, the durable outbox,
#      Sparkplug, InfluxDB) and pymodbus devices (Modbus TCP and RTU), about
#      three minutes. Code no training run reaches is laid out as cold;
#      a path users depend on belongs in the training;
#   3. the profiles merged with the toolchain's own llvm-profdata
#      (rustup's llvm-tools, added when missing);
#   4. the final build with the profile, in target/ like any other build:
#      the next build of the same profile without this script replaces it.
#
# Installs mosquitto, influxdb, socat and python3-venv (apt) when missing.
# For this machine's architecture only: the ARM builds of scripts/cross.sh
# have no profile.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

profile=dist
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile="$2"; shift 2 ;;
        *) echo "usage: $0 [--profile dist|release]" >&2; exit 2 ;;
    esac
done

missing=()
command -v mosquitto >/dev/null || missing+=(mosquitto)
command -v influxd >/dev/null || missing+=(influxdb)
command -v socat >/dev/null || missing+=(socat)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if ((${#missing[@]})); then
    sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
    $sudo_ apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The Modbus devices of the training: pymodbus, in the venv the tests use.
[ -x target/test-venv/bin/python ] || python3 -m venv target/test-venv
target/test-venv/bin/pip install -q --disable-pip-version-check -r tests/support/requirements.txt
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
host=$(rustc -vV | sed -n 's/^host: //p')
profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
[ -x "$profdata" ] || rustup component add llvm-tools

work="$PWD/target/pgo-generate"
echo "==> instrumented build ($profile) in $work"
CARGO_TARGET_DIR="$work" RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$work/profiles" \
    cargo build --locked --profile "$profile" -p sluice --bin sluice
cargo build --locked --release -p sluice-bench
cargo build --locked --release --target wasm32-wasip2 --manifest-path transforms/Cargo.toml
# The build scripts and proc macros of that build are instrumented too and
# leave counters of their own; only sluice's runs count.
rm -rf "$work/profiles" "$work/sluice.profdata"

echo "==> training"
target/release/sluice-bench run --sluice "$work/$profile/sluice" --out "$work/training" \
    --only sluice,sluice-durable,sluice-durable-interval,sluice-sparkplug \
    --phases startup,rate-100,rate-1000,search-qos1,influx-1000 --rounds 1 --scale 0.5
target/release/sluice-bench modbus --sluice "$work/$profile/sluice" --rounds 1 --seconds 3
# sluice writes its counters when it exits; one killed instead leaves none,
# and the build would quietly come out without a profile.
compgen -G "$work/profiles/*.profraw" >/dev/null \
    || { echo "pgo.sh: the training left no profile in $work/profiles" >&2; exit 1; }
"$profdata" merge -o "$work/sluice.profdata" "$work/profiles"
echo "==> the optimised build"
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$work/sluice.profdata" \
    cargo build --locked --profile "$profile" -p sluice --bin sluice
echo "target/$profile/sluice"
