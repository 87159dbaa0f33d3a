# sluice: the host binary and the shipped transforms, on Debian 12.
#
#   docker build -t sluice .
#   docker run --device /dev/ttyUSB0 -e SLUICE_MQTT_HOST=broker.local sluice
#
# The default command runs examples/gateway.toml (serial → MQTT); mount another
# config at /etc/sluice/gateway.toml (docker-compose.yml does) or pass
# `run --config /etc/sluice/examples/<name>.toml`. No BuildKit-only syntax, so
# the classic builder (docker-compose v1's default) builds it too.

# ---- build ------------------------------------------------------------------
# The exact toolchain rust-toolchain.toml pins (1.95.0), on the same Debian
# release as the runtime image, so the binary's glibc matches.
FROM rust:1.95.0-bookworm AS builder
WORKDIR /src

# rust-toolchain.toml names the toolchain, its components and the wasm target;
# install all of it explicitly (as scripts/test.sh does) instead of relying on
# rustup's automatic installs.
COPY rust-toolchain.toml ./
RUN rustup toolchain install 1.95.0 --profile minimal \
        --component rustfmt --component clippy --target wasm32-wasip2 \
    && rustup show active-toolchain

COPY . .
# The host: the `dist` profile (thin LTO, one codegen unit) of the workspace.
RUN cargo build --locked --profile dist --bin sluice
# The transforms: what `sluice transform build transforms` runs
# (host/src/cli/transform.rs), without needing the binary for it.
RUN cargo build --locked --release --target wasm32-wasip2 --manifest-path transforms/Cargo.toml \
    && mkdir -p /out/transforms \
    && cp transforms/target/wasm32-wasip2/release/*.wasm /out/transforms/

# ---- runtime ----------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates: a public CA bundle to point mqtt.tls.ca_file at
# (/etc/ssl/certs/ca-certificates.crt). Nothing else: the healthcheck uses
# bash's /dev/tcp, not curl.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# A fixed, unprivileged uid; dialout (gid 20) owns serial ports on Debian hosts.
RUN groupadd --system --gid 10001 sluice \
    && useradd --system --uid 10001 --gid sluice --groups dialout \
        --home-dir /var/lib/sluice --no-create-home --shell /usr/sbin/nologin sluice \
    && install -d -o sluice -g sluice -m 0750 /var/lib/sluice

COPY --from=builder /src/target/dist/sluice /usr/local/bin/sluice
COPY --from=builder /out/transforms/ /usr/local/lib/sluice/transforms/
COPY examples/ /etc/sluice/examples/
COPY examples/gateway.toml /etc/sluice/gateway.toml

# What the example configs read (see their headers); override with -e.
ENV SLUICE_DATA_DIR=/var/lib/sluice \
    SLUICE_TRANSFORMS_DIR=/usr/local/lib/sluice/transforms \
    SLUICE_SERIAL=/dev/ttyUSB0

USER sluice
WORKDIR /var/lib/sluice
# Module cache, dead letters, captures: keep them across container restarts.
VOLUME /var/lib/sluice
# The admin API (loopback unless [admin] listen says otherwise).
EXPOSE 9180

# GET /health on the admin API (default 127.0.0.1:9180).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9180 && printf 'GET /health HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && timeout 3 head -n 1 <&3 | grep -q ' 200 '"]

ENTRYPOINT ["sluice"]
CMD ["run", "--config", "/etc/sluice/gateway.toml"]
