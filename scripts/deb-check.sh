#!/usr/bin/env bash
# Builds the Debian package and tries it on this machine (as root; it
# installs and then purges the package): the files land where the unit
# expects them, the `sluice` user exists and is in dialout, the installed
# binary accepts the installed config as that user, a transform author with
# only the installed package can create, build and test a transform, the
# unit passes `systemd-analyze verify`, and a purge leaves nothing behind.
#
#   scripts/deb-check.sh [--profile dist|release]   (default: release)
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release
[ "${1:-}" = --profile ] && profile="$2"

scripts/deb.sh --profile "$profile"
deb=$(ls -t target/debian/sluice_*.deb | head -1)
dpkg -i "$deb"
trap 'dpkg --purge sluice >/dev/null 2>&1 || true' EXIT

fail() { echo "deb-check: $*" >&2; exit 1; }
id -nG sluice | grep -qw dialout || fail "sluice is not in dialout"
[ "$(stat -c '%U:%G %a' /var/lib/sluice)" = "sluice:sluice 750" ] || fail "/var/lib/sluice: $(stat -c '%U:%G %a' /var/lib/sluice)"
[ "$(stat -c '%U:%G %a' /etc/sluice/sluice.toml)" = "root:sluice 640" ] || fail "/etc/sluice/sluice.toml: $(stat -c '%U:%G %a' /etc/sluice/sluice.toml)"
grep -qx /etc/sluice/sluice.toml /var/lib/dpkg/info/sluice.conffiles || fail "the config is not a conffile"
(cd / && runuser -u sluice -- /usr/bin/sluice check-config /etc/sluice/sluice.toml)
if command -v systemd-analyze >/dev/null; then
    out=$(systemd-analyze verify /usr/lib/systemd/system/sluice.service 2>&1) || fail "$out"
    [ -z "$out" ] || fail "systemd-analyze verify: $out"
fi

author=$(mktemp -d)
(
    cd "$author"
    /usr/bin/sluice transform new probe
    /usr/bin/sluice transform build probe
    /usr/bin/sluice transform test probe/target/wasm32-wasip2/release/probe.wasm \
        --input probe/sample.txt --config prefix=lab | grep -q '"topic":"lab/' \
        || fail "the new transform's output"
)
rm -rf "$author"

dpkg --purge sluice
trap - EXIT
for left in /var/lib/sluice /etc/sluice /usr/lib/sluice /usr/bin/sluice; do
    [ ! -e "$left" ] || fail "$left is left after purge"
done
! getent passwd sluice >/dev/null || fail "the sluice user is left after purge"
echo "deb-check: $deb installs, works and purges cleanly"
