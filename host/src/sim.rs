//! A simulated sensor gateway: realistic JSON telemetry lines, as the
//! gateway's firmware writes them, for the demo, the tests and the benchmarks.

use rand::Rng;

/// State of the simulated gateway: two sensor nodes doing a random walk.
#[derive(Debug, Clone)]
pub struct Telemetry {
    seq: u64,
    nodes: [NodeState; 2],
    rx: u64,
    crc_err: u64,
}

#[derive(Debug, Clone, Copy)]
struct NodeState {
    temperature: f64,
    humidity: f64,
    battery: f64,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new(1)
    }
}

impl Telemetry {
    /// A gateway whose first line has sequence number `first_seq`.
    pub fn new(first_seq: u64) -> Self {
        Self {
            seq: first_seq,
            nodes: [
                NodeState {
                    temperature: 27.6,
                    humidity: 54.1,
                    battery: 3.71,
                },
                NodeState {
                    temperature: 26.0,
                    humidity: 50.2,
                    battery: 3.65,
                },
            ],
            rx: 1200,
            crc_err: 3,
        }
    }

    /// The next telemetry line (without the trailing newline).
    pub fn next_line(&mut self) -> String {
        let mut rng = rand::rng();
        for node in &mut self.nodes {
            node.temperature = (node.temperature + rng.random_range(-0.2..=0.2)).clamp(-20.0, 60.0);
            node.humidity = (node.humidity + rng.random_range(-0.5..=0.5)).clamp(5.0, 95.0);
            node.battery = (node.battery - rng.random_range(0.0..=0.0005)).max(2.8);
        }
        self.rx += 1;
        if rng.random_ratio(1, 50) {
            self.crc_err += 1;
        }
        let rssi: i32 = rng.random_range(-70..=-35);
        let snr: f64 = rng.random_range(5.0..=11.0);
        let [n1, n2] = self.nodes;
        let line = format!(
            concat!(
                r#"{{"seq":{},"n1":{{"t":{:.1},"h":{:.1},"bat":{:.2}}},"#,
                r#""n2":{{"t":{:.1},"h":{:.1},"bat":{:.2}}},"#,
                r#""sig":{{"rssi":{},"snr":{:.1}}},"stats":{{"rx":{},"crc_err":{}}}}}"#
            ),
            self.seq,
            n1.temperature,
            n1.humidity,
            n1.battery,
            n2.temperature,
            n2.humidity,
            n2.battery,
            rssi,
            snr,
            self.rx,
            self.crc_err
        );
        self.seq += 1;
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_with_increasing_seq() {
        let mut sim = Telemetry::new(41);
        for want in 41..45u64 {
            let line = sim.next_line();
            let v: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
            assert_eq!(v["seq"], want);
            assert!(v["n1"]["t"].is_number() && v["n2"]["bat"].is_number());
            assert!(v["sig"]["rssi"].is_i64());
            assert!(!line.contains('\n'));
        }
    }
}
