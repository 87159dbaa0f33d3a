//! `[pipeline.modbus]`: a pipeline that polls Modbus devices instead of
//! listening to a serial line, and the polling plan built from it.
//!
//! Over TCP (`tcp = "host:port"`) or RTU (the pipeline's `[pipeline.serial]`
//! port, without its framing: Modbus frames itself). Each device (unit id)
//! lists its reads; reads of one device, table and interval that are close
//! enough are merged into one request ([`plan`]), since a request costs a
//! round trip (and on RTU the bus) whatever its size.

use std::num::{NonZeroU64, NonZeroUsize};

use serde::Deserialize;

/// Registers one read may ask for (the protocol's limit).
pub const MAX_READ_REGISTERS: u16 = 125;
/// Coils or discrete inputs one read may ask for (the protocol's limit).
pub const MAX_READ_BITS: u16 = 2000;

/// Retries of one read, at most.
pub const MAX_RETRIES: u8 = 10;

/// `[pipeline.modbus]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusConfig {
    /// A Modbus TCP server, `host:port`. Absent: RTU over the pipeline's
    /// `[pipeline.serial]` port.
    #[serde(default)]
    pub tcp: Option<String>,
    /// How long a device may take to answer (ms).
    #[serde(default = "default_timeout")]
    pub timeout_ms: NonZeroU64,
    /// A device that failed is asked again after this long, doubling per
    /// failure up to `backoff_max_ms` (its reads are skipped meanwhile, so
    /// a dead device does not take the bus from live ones).
    #[serde(default = "default_backoff_min")]
    pub backoff_min_ms: NonZeroU64,
    /// See `backoff_min_ms`.
    #[serde(default = "default_backoff_max")]
    pub backoff_max_ms: NonZeroU64,
    /// A read that got no valid answer (a timeout, or on RTU a CRC error)
    /// is sent again right away this many times before the device counts
    /// as failed; every attempt is counted.
    #[serde(default = "default_retries")]
    pub retries: u8,
    /// Reads of a device closer than this many addresses are merged into
    /// one request (0: only adjacent ones). The addresses between are read
    /// too, so a device that refuses some of them needs 0 here.
    #[serde(default)]
    pub max_gap: u16,
    /// The most registers one merged request asks for; some devices refuse
    /// long reads.
    #[serde(default = "default_max_registers")]
    pub max_registers: u16,
    /// The most coils or discrete inputs one merged request asks for.
    #[serde(default = "default_max_bits")]
    pub max_bits: u16,
    /// Downlink: write commands held while the link is busy or down; when
    /// full, new ones are refused and counted (`queue_full`).
    #[serde(default = "default_downlink_queue")]
    pub downlink_queue: NonZeroUsize,
    /// Downlink: a command older than this when its turn comes is not
    /// sent (counted as `expired`). 0: no limit.
    #[serde(default = "default_downlink_max_age")]
    pub downlink_max_age_ms: u64,
    /// The devices on the bus (or behind the TCP server).
    #[serde(default)]
    pub device: Vec<DeviceConfig>,
}

/// `[[pipeline.modbus.device]]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// The unit id (slave address): 1–247 on RTU, 0–255 over TCP.
    pub unit: u8,
    /// What to read, and how often.
    #[serde(default)]
    pub read: Vec<ReadConfig>,
}

/// `[[pipeline.modbus.device.read]]`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadConfig {
    /// Which table.
    pub table: Table,
    /// The first address (0-based, as on the wire).
    pub address: u16,
    /// Registers or bits.
    pub count: u16,
    /// How often (ms).
    pub interval_ms: NonZeroU64,
}

/// A Modbus data table and the function code that reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    /// Function 1.
    Coils,
    /// Function 2.
    DiscreteInputs,
    /// Function 3.
    Holding,
    /// Function 4.
    Input,
}

impl Table {
    /// The function code that reads it.
    pub fn function(self) -> u8 {
        match self {
            Table::Coils => 1,
            Table::DiscreteInputs => 2,
            Table::Holding => 3,
            Table::Input => 4,
        }
    }

    /// The protocol's limit on one read.
    pub fn max_count(self) -> u16 {
        if self.is_bits() {
            MAX_READ_BITS
        } else {
            MAX_READ_REGISTERS
        }
    }

    /// Coils and discrete inputs are bits; the others 16-bit registers.
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coils | Table::DiscreteInputs)
    }

    fn as_str(self) -> &'static str {
        match self {
            Table::Coils => "coils",
            Table::DiscreteInputs => "discrete_inputs",
            Table::Holding => "holding",
            Table::Input => "input",
        }
    }
}

fn default_timeout() -> NonZeroU64 {
    NonZeroU64::new(1000).unwrap_or(NonZeroU64::MIN)
}
fn default_retries() -> u8 {
    1
}
fn default_backoff_min() -> NonZeroU64 {
    NonZeroU64::new(1000).unwrap_or(NonZeroU64::MIN)
}
fn default_backoff_max() -> NonZeroU64 {
    NonZeroU64::new(60_000).unwrap_or(NonZeroU64::MIN)
}
fn default_downlink_queue() -> NonZeroUsize {
    NonZeroUsize::new(64).unwrap_or(NonZeroUsize::MIN)
}
fn default_downlink_max_age() -> u64 {
    30_000
}
fn default_max_registers() -> u16 {
    MAX_READ_REGISTERS
}
fn default_max_bits() -> u16 {
    MAX_READ_BITS
}

/// Shortest read interval (ms): faster polling is a configuration mistake
/// on a shared bus, not a use case.
const MIN_INTERVAL_MS: u64 = 10;

/// One request of the plan: what one poll asks one device for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Poll {
    /// The unit id.
    pub unit: u8,
    /// The table.
    pub table: Table,
    /// First address.
    pub address: u16,
    /// Registers or bits.
    pub count: u16,
    /// How often (ms).
    pub interval_ms: u64,
}

impl ModbusConfig {
    /// Problems with this section, keys prefixed with `key`
    /// (`pipeline[0].modbus`); `rtu`: whether it runs on a serial line.
    pub fn validate(&self, key: &str, rtu: bool) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(tcp) = &self.tcp
            && !tcp
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        {
            problems.push(format!("{key}.tcp: {tcp:?} is not host:port"));
        }
        if self.backoff_min_ms > self.backoff_max_ms {
            problems.push(format!(
                "{key}.backoff_min_ms: must not exceed {key}.backoff_max_ms"
            ));
        }
        if self.retries > MAX_RETRIES {
            problems.push(format!(
                "{key}.retries: at most {MAX_RETRIES} (a dead device holds the bus for every one), not {}",
                self.retries
            ));
        }
        if !(1..=MAX_READ_REGISTERS).contains(&self.max_registers) {
            problems.push(format!(
                "{key}.max_registers: 1 to {MAX_READ_REGISTERS}, not {}",
                self.max_registers
            ));
        }
        if !(1..=MAX_READ_BITS).contains(&self.max_bits) {
            problems.push(format!(
                "{key}.max_bits: 1 to {MAX_READ_BITS}, not {}",
                self.max_bits
            ));
        }
        if self.device.is_empty() {
            problems.push(format!("{key}.device: no device to poll"));
        }
        let mut units = std::collections::BTreeSet::new();
        for (d, device) in self.device.iter().enumerate() {
            let dkey = format!("{key}.device[{d}]");
            if rtu && !(1..=247).contains(&device.unit) {
                problems.push(format!(
                    "{dkey}.unit: 1 to 247 on a serial bus, not {}",
                    device.unit
                ));
            }
            if !units.insert(device.unit) {
                problems.push(format!("{dkey}.unit: {} is listed twice", device.unit));
            }
            if device.read.is_empty() {
                problems.push(format!("{dkey}.read: nothing to read"));
            }
            for (r, read) in device.read.iter().enumerate() {
                let rkey = format!("{dkey}.read[{r}]");
                let limit = read.table.max_count().min(self.limit(read.table));
                if read.count == 0 || read.count > limit {
                    problems.push(format!(
                        "{rkey}.count: 1 to {limit} for {}, not {}",
                        read.table.as_str(),
                        read.count
                    ));
                }
                if u32::from(read.address) + u32::from(read.count) > 65_536 {
                    problems.push(format!(
                        "{rkey}: address {} + count {} is past the last address (65535)",
                        read.address, read.count
                    ));
                }
                if read.interval_ms.get() < MIN_INTERVAL_MS {
                    problems.push(format!(
                        "{rkey}.interval_ms: at least {MIN_INTERVAL_MS}, not {}",
                        read.interval_ms
                    ));
                }
                for (o, other) in device.read.iter().enumerate().take(r) {
                    if other.table == read.table && overlap(other, read) {
                        problems.push(format!(
                            "{rkey}: overlaps {dkey}.read[{o}] ({} {}..{} and {}..{})",
                            read.table.as_str(),
                            other.address,
                            u32::from(other.address) + u32::from(other.count),
                            read.address,
                            u32::from(read.address) + u32::from(read.count),
                        ));
                    }
                }
            }
        }
        problems
    }

    /// The configured cap on one request of `table`.
    fn limit(&self, table: Table) -> u16 {
        if table.is_bits() {
            self.max_bits
        } else {
            self.max_registers
        }
    }

    /// The requests to make: per device, reads of one table and interval
    /// merged where the gap between them is at most `max_gap` and the
    /// merged request stays within the configured cap. Devices in
    /// configuration order, each device's polls by table, interval and
    /// address.
    pub fn plan(&self) -> Vec<Poll> {
        let mut polls = Vec::new();
        for device in &self.device {
            let mut reads = device.read.clone();
            reads.sort_by_key(|r| (r.table, r.interval_ms, r.address));
            let mut current: Option<Poll> = None;
            for read in reads {
                let end = u32::from(read.address) + u32::from(read.count);
                if let Some(poll) = current.as_mut() {
                    let poll_end = u32::from(poll.address) + u32::from(poll.count);
                    let merged = end.max(poll_end) - u32::from(poll.address);
                    if poll.table == read.table
                        && poll.interval_ms == read.interval_ms.get()
                        && u32::from(read.address) <= poll_end + u32::from(self.max_gap)
                        && merged <= u32::from(self.limit(read.table))
                    {
                        poll.count = u16::try_from(merged).unwrap_or(u16::MAX);
                        continue;
                    }
                    polls.push(*poll);
                }
                current = Some(Poll {
                    unit: device.unit,
                    table: read.table,
                    address: read.address,
                    count: read.count,
                    interval_ms: read.interval_ms.get(),
                });
            }
            polls.extend(current);
        }
        polls
    }
}

fn overlap(a: &ReadConfig, b: &ReadConfig) -> bool {
    let (a0, a1) = (
        u32::from(a.address),
        u32::from(a.address) + u32::from(a.count),
    );
    let (b0, b1) = (
        u32::from(b.address),
        u32::from(b.address) + u32::from(b.count),
    );
    a0 < b1 && b0 < a1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ModbusConfig {
        toml::from_str(text).expect("parses")
    }

    #[test]
    fn adjacent_and_close_reads_merge_within_the_caps() {
        let config = parse(
            r#"
            tcp = "127.0.0.1:502"
            max_gap = 2
            max_registers = 20
            [[device]]
            unit = 1
            read = [
                { table = "holding", address = 0, count = 4, interval_ms = 1000 },
                { table = "holding", address = 4, count = 4, interval_ms = 1000 },
                { table = "holding", address = 10, count = 2, interval_ms = 1000 },
                { table = "holding", address = 13, count = 10, interval_ms = 1000 },
                { table = "holding", address = 30, count = 1, interval_ms = 100 },
                { table = "coils", address = 0, count = 8, interval_ms = 1000 },
            ]
            [[device]]
            unit = 2
            read = [{ table = "input", address = 5, count = 3, interval_ms = 500 }]
            "#,
        );
        assert!(
            config.validate("m", false).is_empty(),
            "{:?}",
            config.validate("m", false)
        );
        let polls: Vec<(u8, Table, u16, u16, u64)> = config
            .plan()
            .iter()
            .map(|p| (p.unit, p.table, p.address, p.count, p.interval_ms))
            .collect();
        assert_eq!(
            polls,
            [
                (1, Table::Coils, 0, 8, 1000),
                // Another interval is another request.
                (1, Table::Holding, 30, 1, 100),
                // 0..8 and 10..12 (gap 2) merge; 13..23 would make 23 > 20.
                (1, Table::Holding, 0, 12, 1000),
                (1, Table::Holding, 13, 10, 1000),
                (2, Table::Input, 5, 3, 500),
            ]
        );
    }

    #[test]
    fn bad_plans_are_refused_with_the_key() {
        let config = parse(
            r#"
            tcp = "nowhere"
            retries = 11
            [[device]]
            unit = 0
            read = [
                { table = "holding", address = 0, count = 126, interval_ms = 1000 },
                { table = "holding", address = 100, count = 10, interval_ms = 5 },
                { table = "coils", address = 65530, count = 10, interval_ms = 1000 },
            ]
            [[device]]
            unit = 0
            "#,
        );
        let problems = config.validate("pipeline[0].modbus", true);
        for expected in [
            "pipeline[0].modbus.tcp: \"nowhere\" is not host:port",
            "pipeline[0].modbus.retries: at most 10 (a dead device holds the bus for every one), not 11",
            "pipeline[0].modbus.device[0].unit: 1 to 247 on a serial bus, not 0",
            "pipeline[0].modbus.device[0].read[0].count: 1 to 125 for holding, not 126",
            "pipeline[0].modbus.device[0].read[1].interval_ms: at least 10, not 5",
            "pipeline[0].modbus.device[0].read[1]: overlaps pipeline[0].modbus.device[0].read[0] (holding 0..126 and 100..110)",
            "pipeline[0].modbus.device[0].read[2]: address 65530 + count 10 is past the last address (65535)",
            "pipeline[0].modbus.device[1].unit: 0 is listed twice",
            "pipeline[0].modbus.device[1].read: nothing to read",
        ] {
            assert!(
                problems.iter().any(|p| p == expected),
                "{expected}\nnot in {problems:#?}"
            );
        }
    }
}
