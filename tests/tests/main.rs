//! The integration tests, one module per area, linked into one binary:
//! `cargo test -p sluice-tests -- <module>::` runs one area.

mod admin_api;
mod cpu_packing;
mod cwasm_cache;
mod deploy_files;
mod framing_pty;
mod hostile;
mod hotswap;
mod influx_gateway;
mod influx_scripted;
mod influx_v1;
mod influx_v2_victoria;
mod modbus;
mod mqtt_backoff;
mod mqtt_delivery;
mod mqtt_downlink;
mod outbox_chaos;
mod outbox_crash;
mod outbox_influx;
mod pty_to_mqtt;
mod reload;
mod sandbox;
mod serial_bad_input;
mod serial_capture;
mod serial_downlink;
mod serial_pipelines;
mod serial_replug;
mod shutdown;
mod smoke;
mod sparkplug;
