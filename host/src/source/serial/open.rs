//! Opening a serial port with the configured settings, and saying clearly
//! why it could not be opened.
//!
//! mio-serial (→ serialport 4) opens the device `O_NONBLOCK`,
//! takes `TIOCEXCL` and an exclusive `flock` (or a shared `flock` when not
//! exclusive), switches it to raw mode and applies the settings with
//! `TCSETS2`/`BOTHER` on Linux, so any integer baud rate can be *requested*.
//! The driver decides what it can do: a UART driver clamps or falls back
//! (e.g. to 9600) without failing the ioctl, so the settings are read back
//! after opening. A baud rate the port does not report back is refused
//! (reading at the wrong speed yields only garbage); other differences are
//! warnings (a pty, for one, always reports 8 data bits and no parity).

use std::os::unix::fs::FileTypeExt as _;
use std::path::Path;

use mio_serial::{DataBits, FlowControl, Parity, SerialPort as _, SerialStream, StopBits};

use super::READ_CHUNK;
use super::port::Port;
use crate::config::{SerialConfig, SerialFlowControl, SerialParity};

/// Why a port could not be opened (or was refused after opening).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Nothing at the path (not plugged in yet, unplugged, dangling symlink).
    #[error("does not exist (device not plugged in?)")]
    Missing,
    /// The path is a directory.
    #[error("is a directory, not a serial device")]
    Directory,
    /// A regular file, FIFO, socket…
    #[error("is not a character device, so not a serial port")]
    NotCharDevice,
    /// A character device that is not a terminal (`ENOTTY`), e.g. /dev/null.
    #[error("is not a terminal device, so not a serial port")]
    NotATty,
    /// No permission to open it.
    #[error("permission denied (is the user in the device's group, e.g. `dialout`?)")]
    PermissionDenied,
    /// Another process holds it (exclusive open or lock).
    #[error("in use by another process ({0})")]
    Busy(String),
    /// The driver did not accept the baud rate.
    #[error("baud rate {requested} refused by the OS or driver ({reported})")]
    BaudRefused {
        /// What the config asks for.
        requested: u32,
        /// What the port reported instead, or the error.
        reported: String,
    },
    /// The OS refused the line settings as a whole (e.g. `EINVAL`).
    #[error("line settings refused by the OS ({0})")]
    SettingsRefused(String),
    /// Anything else, with the OS's words.
    #[error("{0}")]
    Other(String),
}

impl OpenError {
    /// Stable label for `serial_open_failures{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            OpenError::Missing => "missing",
            OpenError::Directory => "directory",
            OpenError::NotCharDevice => "not_a_char_device",
            OpenError::NotATty => "not_a_tty",
            OpenError::PermissionDenied => "permission_denied",
            OpenError::Busy(_) => "busy",
            OpenError::BaudRefused { .. } => "baud_refused",
            OpenError::SettingsRefused(_) => "settings_refused",
            OpenError::Other(_) => "other",
        }
    }

    /// A configuration problem rather than a device that is (still) away:
    /// logged as an error.
    pub fn is_config_problem(&self) -> bool {
        matches!(
            self,
            OpenError::Directory
                | OpenError::NotCharDevice
                | OpenError::NotATty
                | OpenError::BaudRefused { .. }
                | OpenError::SettingsRefused(_)
        )
    }
}

/// An open port and the settings the OS did not apply as asked (warnings).
pub struct Opened {
    /// The port, registered with the tokio reactor.
    pub port: Port,
    /// Human-readable differences between the config and the port.
    pub differences: Vec<String>,
}

/// Largest relative difference between the requested and the reported baud
/// rate that still counts as "accepted" (UARTs tolerate ±2–3 %).
const BAUD_TOLERANCE: f64 = 0.02;

/// Opens `config.path` with the configured settings. Must run inside a
/// tokio runtime (the port is registered with its reactor). Never blocks.
pub fn open(config: &SerialConfig) -> Result<Opened, OpenError> {
    precheck(&config.path)?;
    let builder = mio_serial::new(config.path.to_string_lossy(), config.baud.get())
        .data_bits(data_bits(config.data_bits))
        .parity(parity(config.parity))
        .stop_bits(stop_bits(config.stop_bits))
        .flow_control(flow_control(config.flow_control))
        .exclusive(config.exclusive);
    let device = SerialStream::open(&builder).map_err(classify)?;
    let differences = verify(&device, config)?;
    let port = Port::new(device, READ_CHUNK).map_err(|e| OpenError::Other(e.to_string()))?;
    Ok(Opened { port, differences })
}

/// What the path is, before the open tries (the open's own errors lose
/// errno values such as `EISDIR`).
fn precheck(path: &Path) -> Result<(), OpenError> {
    match std::fs::metadata(path) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Err(OpenError::Missing),
        Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => {
            Err(OpenError::PermissionDenied)
        }
        Err(err) => Err(OpenError::Other(err.to_string())),
        Ok(meta) if meta.is_dir() => Err(OpenError::Directory),
        Ok(meta) if !meta.file_type().is_char_device() => Err(OpenError::NotCharDevice),
        Ok(_) => Ok(()),
    }
}

fn classify(err: mio_serial::Error) -> OpenError {
    use mio_serial::ErrorKind as K;
    use std::io::ErrorKind as Io;
    match err.kind {
        // serialport maps EBUSY (TIOCEXCL) and a held flock to NoDevice.
        K::NoDevice => OpenError::Busy(err.description),
        K::Io(Io::NotFound) => OpenError::Missing,
        K::Io(Io::PermissionDenied) => OpenError::PermissionDenied,
        K::InvalidInput => OpenError::SettingsRefused(err.description),
        _ if err.description.contains("Inappropriate ioctl") => OpenError::NotATty,
        _ if err.description.contains("Invalid argument") => {
            OpenError::SettingsRefused(err.description)
        }
        _ => OpenError::Other(err.description),
    }
}

/// Reads the settings back; a baud rate that did not stick is an error,
/// other differences are returned as warnings.
fn verify(stream: &SerialStream, config: &SerialConfig) -> Result<Vec<String>, OpenError> {
    let requested = config.baud.get();
    match stream.baud_rate() {
        Ok(reported) if !baud_accepted(requested, reported) => {
            return Err(OpenError::BaudRefused {
                requested,
                reported: format!("the port reports {reported}"),
            });
        }
        Ok(_) => {}
        Err(err) => {
            return Err(OpenError::BaudRefused {
                requested,
                reported: format!("cannot read it back: {}", err.description),
            });
        }
    }
    let mut differences = Vec::new();
    let mut compare = |what: &str, want: String, got: Result<String, mio_serial::Error>| {
        let got = got.unwrap_or_else(|e| format!("unknown ({})", e.description));
        if got != want {
            differences.push(format!("{what}: configured {want}, the port reports {got}"));
        }
    };
    compare(
        "data_bits",
        config.data_bits.to_string(),
        stream.data_bits().map(|d| u8::from(d).to_string()),
    );
    compare(
        "parity",
        format!("{:?}", parity(config.parity)),
        stream.parity().map(|p| format!("{p:?}")),
    );
    compare(
        "stop_bits",
        config.stop_bits.to_string(),
        stream.stop_bits().map(|s| u8::from(s).to_string()),
    );
    compare(
        "flow_control",
        format!("{:?}", flow_control(config.flow_control)),
        stream.flow_control().map(|f| format!("{f:?}")),
    );
    Ok(differences)
}

/// Whether the port's reported baud rate is close enough to the request.
pub fn baud_accepted(requested: u32, reported: u32) -> bool {
    let requested = f64::from(requested);
    (f64::from(reported) - requested).abs() <= requested * BAUD_TOLERANCE
}

fn data_bits(bits: u8) -> DataBits {
    match bits {
        5 => DataBits::Five,
        6 => DataBits::Six,
        7 => DataBits::Seven,
        // Validated at config time; 8 is also the only sane fallback.
        _ => DataBits::Eight,
    }
}

fn parity(parity: SerialParity) -> Parity {
    match parity {
        SerialParity::None => Parity::None,
        SerialParity::Odd => Parity::Odd,
        SerialParity::Even => Parity::Even,
    }
}

fn stop_bits(bits: u8) -> StopBits {
    match bits {
        2 => StopBits::Two,
        _ => StopBits::One,
    }
}

fn flow_control(flow: SerialFlowControl) -> FlowControl {
    match flow {
        SerialFlowControl::None => FlowControl::None,
        SerialFlowControl::Software => FlowControl::Software,
        SerialFlowControl::Hardware => FlowControl::Hardware,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baud_tolerance() {
        assert!(baud_accepted(115_200, 115_200));
        assert!(baud_accepted(115_200, 115_384)); // a real divisor's rounding
        assert!(!baud_accepted(4_000_000, 115_200)); // clamped by the driver
        assert!(!baud_accepted(1_000, 9_600)); // fallback to 9600
    }

    #[test]
    fn paths_that_are_not_ports_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(precheck(dir.path()), Err(OpenError::Directory));
        assert_eq!(
            precheck(&dir.path().join("nothing")),
            Err(OpenError::Missing)
        );
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").expect("write");
        assert_eq!(precheck(&file), Err(OpenError::NotCharDevice));
        let link = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("gone"), &link).expect("symlink");
        assert_eq!(precheck(&link), Err(OpenError::Missing));
        assert!(precheck(Path::new("/dev/null")).is_ok());
    }
}
