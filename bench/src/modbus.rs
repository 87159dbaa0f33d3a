//! `sluice-bench modbus`: how fast sluice polls Modbus devices.
//!
//! * **TCP**: the pymodbus server of the tests (`tests/support/`, unit 3:
//!   200 holding registers) polled by sluice with a plan that asks for more
//!   than the server can answer (100 reads of 1 register, every 10 ms), and
//!   by a bare `tokio-modbus` client reading 1 register in a loop, each for
//!   the same time, alternated per round: polls per second and the ratio.
//!   The server (Python) is the limit of both; the ratio says what sluice's
//!   scheduling, framing and transform cost on top of a bare client.
//! * **RTU**: the same devices as RTU slaves on a pseudo-terminal pair
//!   (socat), polled by sluice at 115200 baud: polls per second against the
//!   line's own limit at that rate (request and answer bytes at 11 bits a
//!   character, and the 1.75 ms silence after each). A pty does not pace
//!   bytes at the baud rate, so sluice above the line's limit means sluice
//!   is not what limits a real bus.
//!
//! sluice runs without sinks (outputs counted and discarded) so only the
//! polling and the transform are measured; polls are read from its
//! `sluice_modbus_polls_total`, CPU from `/proc`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::procfs;
use crate::util::{free_port, terminate, wait_for_port};

/// `sluice-bench modbus` options.
#[derive(clap::Args)]
pub struct ModbusArgs {
    /// The sluice binary (default: <repo>/target/release/sluice).
    #[arg(long)]
    sluice: Option<PathBuf>,
    /// The repository root.
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// Rounds (each measures every system once).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
}

/// Registers one request reads in this benchmark.
const REGISTERS: u16 = 1;
/// Baud rate of the RTU phase.
const BAUD: u32 = 115_200;

/// Runs the benchmark and prints a Markdown table.
pub fn main(args: ModbusArgs) -> Result<()> {
    let repo = std::fs::canonicalize(&args.repo)?;
    let sluice = args
        .sluice
        .clone()
        .unwrap_or_else(|| repo.join("target/release/sluice"));
    let python = repo.join("target/test-venv/bin/python");
    if !python.is_file() {
        bail!(
            "{} is missing: scripts/test.sh installs pymodbus there",
            python.display()
        );
    }
    let transforms = repo.join("transforms/target/wasm32-wasip2/release");
    let module = transforms.join("modbus_registers.wasm");
    if !module.is_file() {
        bail!(
            "{} is missing: cargo build --release --target wasm32-wasip2 --manifest-path transforms/Cargo.toml",
            module.display()
        );
    }
    let work = tempdir(&repo)?;
    let window = Duration::from_secs(args.seconds);

    let mut tcp_rows = Vec::new();
    let mut rtu_rows = Vec::new();
    for round in 0..args.rounds {
        let port = free_port()?;
        let mut device = spawn_device(&python, &repo, &["tcp", &port.to_string()])?;
        if !wait_for_port(port, Duration::from_secs(20)) {
            bail!("the Modbus device did not listen on {port}");
        }
        let bare = bare_polls(port, window)?;
        let config = sluice_config(&work, &module, Link::Tcp(port))?;
        let (polls, cpu) = measure_sluice(&sluice, &config, window)?;
        terminate(&mut device, Duration::from_secs(2));
        eprintln!(
            "round {round} tcp: bare {bare:.0}/s, sluice {polls:.0}/s ({:.0} µs CPU/poll)",
            cpu * 1e6 / polls.max(1.0) / window.as_secs_f64()
        );
        tcp_rows.push((bare, polls, cpu));

        let bus = work.join(format!("bus-{round}"));
        let end = work.join(format!("device-{round}"));
        let mut socat = crate::util::ends_with_the_bench(&mut Command::new("socat"))
            .arg(format!("pty,raw,echo=0,link={}", bus.display()))
            .arg(format!("pty,raw,echo=0,link={}", end.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("socat")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(bus.exists() && end.exists()) {
            if Instant::now() > deadline {
                bail!("socat made no pty pair");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut device = spawn_device(
            &python,
            &repo,
            &["rtu", &end.display().to_string(), &BAUD.to_string()],
        )?;
        std::thread::sleep(Duration::from_secs(1));
        let config = sluice_config(&work, &module, Link::Rtu(&bus))?;
        let (polls, cpu) = measure_sluice(&sluice, &config, window)?;
        terminate(&mut device, Duration::from_secs(2));
        let _ = socat.kill();
        let _ = socat.wait();
        eprintln!("round {round} rtu: sluice {polls:.0}/s");
        rtu_rows.push((polls, cpu));
    }

    let line_limit = line_limit(REGISTERS, BAUD);
    println!(
        "| round | bare tokio-modbus, polls/s | sluice, polls/s | × bare | sluice µs CPU/poll |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (round, (bare, polls, cpu)) in tcp_rows.iter().enumerate() {
        println!(
            "| {round} (TCP) | {bare:.0} | {polls:.0} | {:.2} | {:.0} |",
            polls / bare,
            cpu * 1e6 / (polls * window.as_secs_f64()).max(1.0)
        );
    }
    println!();
    println!(
        "RTU at {BAUD} baud, {REGISTERS} register per read: the line's limit is {line_limit:.0} polls/s."
    );
    println!();
    println!("| round | sluice on a pty, polls/s | × the line's limit | sluice µs CPU/poll |");
    println!("|---|---:|---:|---:|");
    for (round, (polls, cpu)) in rtu_rows.iter().enumerate() {
        println!(
            "| {round} (RTU) | {polls:.0} | {:.2} | {:.0} |",
            polls / line_limit,
            cpu * 1e6 / (polls * window.as_secs_f64()).max(1.0)
        );
    }
    Ok(())
}

/// Polls per second a 115200-baud line allows for reads of `registers`:
/// request 8 bytes, answer 5 + 2 × registers, 11 bits a character (the
/// RTU character: start, 8 data, parity or a second stop bit, stop), and
/// at least 1.75 ms of silence after each frame (above 19200 baud).
fn line_limit(registers: u16, baud: u32) -> f64 {
    let bytes = 8.0 + 5.0 + 2.0 * f64::from(registers);
    let seconds = bytes * 11.0 / f64::from(baud) + 2.0 * 0.00175;
    1.0 / seconds
}

fn tempdir(repo: &Path) -> Result<PathBuf> {
    let dir = repo.join("target/sluice-bench-modbus");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn spawn_device(python: &Path, repo: &Path, args: &[&str]) -> Result<Child> {
    crate::util::ends_with_the_bench(&mut Command::new(python))
        .arg(repo.join("tests/support/modbus_device.py"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawn the Modbus device")
}

enum Link<'a> {
    Tcp(u16),
    Rtu(&'a Path),
}

/// A sluice config polling unit 3's registers 0, 2, …, 198 (one read each:
/// not adjacent, so not merged) every 10 ms: far more than either link
/// answers, so the link sets the pace.
fn sluice_config(work: &Path, module: &Path, link: Link<'_>) -> Result<(PathBuf, u16)> {
    let admin = free_port()?;
    let link = match link {
        Link::Tcp(port) => format!("[pipeline.modbus]\ntcp = \"127.0.0.1:{port}\"\n"),
        Link::Rtu(bus) => format!(
            "[pipeline.serial]\npath = \"{}\"\nbaud = {BAUD}\n[pipeline.modbus]\n",
            bus.display()
        ),
    };
    let reads: Vec<String> = (0..100)
        .map(|i| {
            format!(
                "{{ table = \"holding\", address = {}, count = {REGISTERS}, interval_ms = 10 }}",
                i * 2
            )
        })
        .collect();
    let text = format!(
        "version = 1\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[[pipeline]]\nname = \"bench\"\n{link}\
         timeout_ms = 1000\n[[pipeline.modbus.device]]\nunit = 3\nread = [\n{}\n]\n\
         [pipeline.transform]\nmodule = \"{}\"\n[pipeline.transform.config]\n\
         \"device.3\" = \"bench\"\n\"point.r0\" = \"holding 0 u16 unit_id=3\"\n",
        reads.join(",\n"),
        module.display()
    );
    let path = work.join("sluice-modbus.toml");
    std::fs::write(&path, text)?;
    Ok((path, admin))
}

/// Runs sluice on `config` for a second to settle, then measures polls per
/// second and CPU seconds over `window`.
fn measure_sluice(sluice: &Path, config: &(PathBuf, u16), window: Duration) -> Result<(f64, f64)> {
    let (path, admin) = config;
    let log = std::fs::File::create(path.with_extension("log"))?;
    let mut child = crate::util::ends_with_the_bench(&mut Command::new(sluice))
        .args(["run", "--config"])
        .arg(path)
        .env("SLUICE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("spawn sluice")?;
    let result = (|| {
        if !wait_for_port(*admin, Duration::from_secs(60)) {
            bail!(
                "sluice did not start (see {})",
                path.with_extension("log").display()
            );
        }
        std::thread::sleep(Duration::from_secs(1));
        let pid = child.id();
        let (polls0, cpu0) = (ok_polls(*admin)?, procfs::sample(pid)?.cpu_secs);
        std::thread::sleep(window);
        let (polls1, cpu1) = (ok_polls(*admin)?, procfs::sample(pid)?.cpu_secs);
        Ok(((polls1 - polls0) / window.as_secs_f64(), cpu1 - cpu0))
    })();
    terminate(&mut child, Duration::from_secs(5));
    result
}

/// `sluice_modbus_polls_total{result="ok"}` of unit 3.
fn ok_polls(admin: u16) -> Result<f64> {
    let body = crate::sut::metrics_text(admin).context("GET /metrics")?;
    let series = "sluice_modbus_polls_total{pipeline=\"bench\",unit=\"3\",result=\"ok\"} ";
    Ok(body
        .lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0))
}

/// Polls per second of a bare tokio-modbus client reading unit 3's first
/// register in a loop for `window`.
fn bare_polls(port: u16, window: Duration) -> Result<f64> {
    use tokio_modbus::client::Reader as _;
    use tokio_modbus::prelude::SlaveContext as _;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut context = tokio_modbus::client::tcp::connect(address).await?;
        context.set_slave(tokio_modbus::Slave(3));
        let started = Instant::now();
        let mut polls = 0u64;
        while started.elapsed() < window {
            match context.read_holding_registers(0, REGISTERS).await {
                Ok(Ok(_)) => polls += 1,
                Ok(Err(exception)) => bail!("unit 3 answered {exception:?}"),
                Err(err) => bail!("read failed: {err}"),
            }
        }
        Ok(polls as f64 / started.elapsed().as_secs_f64())
    })
}
