//! A real mosquitto for the whole run, on an ephemeral loopback port.
//!
//! The same configuration the integration tests use (tests/src/lib.rs:
//! `user root`, a persistence directory of its own, no limit on queued QoS 1
//! messages so a slow subscriber is a delay, not a loss), but logging only
//! errors, warnings and notices: `log_type all` writes a line per PUBLISH,
//! which at 100,000 messages/s would measure the log.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::util::{free_port, program, terminate, wait_for_port};

/// A running mosquitto; stopped on drop.
pub struct Mosquitto {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    /// Its log file.
    pub log: PathBuf,
    child: Child,
}

impl Mosquitto {
    /// Starts a broker with its state under `dir`.
    pub fn start(dir: &Path) -> Result<Mosquitto> {
        let port = free_port()?;
        let data = dir.join("mosquitto-data");
        std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
        let conf = dir.join("mosquitto.conf");
        let log = dir.join("mosquitto.log");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {data}/\nuser root\nlog_dest file {log}\n\
                 log_type error\nlog_type warning\nlog_type notice\n\
                 max_queued_messages 0\n",
                data = data.display(),
                log = log.display(),
            ),
        )
        .with_context(|| format!("writing {}", conf.display()))?;
        let child = crate::util::ends_with_the_bench(&mut Command::new(program("mosquitto")?))
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning mosquitto")?;
        let mut broker = Mosquitto { port, log, child };
        if !wait_for_port(port, Duration::from_secs(10)) {
            terminate(&mut broker.child, Duration::from_secs(1));
            bail!(
                "mosquitto did not listen on port {port} within 10 s; its log:\n{}",
                crate::util::tail(&broker.log, 20)
            );
        }
        Ok(broker)
    }

    /// The broker's process id (for its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(5));
    }
}
