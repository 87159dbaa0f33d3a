//! Capture files: every frame a pipeline read, with its receive time, for
//! `sluice replay` (re-decode history after fixing a transform, test without
//! hardware).
//!
//! # Format (version 1)
//!
//! Little-endian throughout; CRC is CRC-32/ISO-HDLC (the zlib/PNG CRC).
//!
//! ```text
//! header:  magic   8  89 53 4C 43 0D 0A 1A 0A   ("\x89SLC\r\n\x1a\n")
//!          version u16 = 1
//!          name_len u16, created_ns u64, name (name_len bytes, UTF-8: the pipeline)
//!          crc     u32 over everything above
//! record:  len u32, received_at_ns u64, crc u32 over (len, received_at_ns, data), data (len bytes)
//! ```
//!
//! Records are only ever appended. A crash can leave a torn last record (or
//! zeros where the last records should be, on some file systems); a disk
//! can damage a record anywhere. A reader that meets a record that is
//! incomplete or fails its CRC resynchronises: it goes on at the next offset
//! where a whole record starts whose length fits the file and is sane (at
//! most 1 MiB, or the longest record read before) and whose CRC matches,
//! and counts the bytes it skipped ([`Skipped`]). Only damage that nothing
//! valid follows is a torn tail ([`Tail`]). Before appending, the writer
//! scans the file and cuts off such a tail — and nothing else — so a
//! restart continues a valid file and keeps every record after damage in
//! the middle.
//!
//! # Size and rotation
//!
//! When a record would take the file beyond `max_bytes`, it is closed
//! (flushed and synced) and renamed `<path>.1`, the older ones shift to
//! `.2` … `.<keep>` (the oldest is deleted), and a new file is started:
//! at most `(keep + 1) × max_bytes` on disk. Replay the files oldest first:
//! `sluice replay cap.3 cap.2 cap.1 cap`.
//!
//! # Writing
//!
//! The port task hands each frame to a writer thread through a bounded
//! queue and never waits: a frame the queue cannot take, or that cannot be
//! written (disk full), is counted in `capture_dropped{pipeline,reason}` —
//! the frame itself is still processed. The writer flushes whenever the
//! queue is empty and syncs on rotation and shutdown; a host crash loses at
//! most what was not flushed yet. After a write error it reopens the file
//! (cutting a torn tail) after a pause.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::mpsc;

use crate::config::CaptureConfig;
use crate::metrics::serial::{CaptureDrop, SerialMetrics};
use crate::model::{Frame, now_ns};
use crate::ratelimit::RateLimiter;

/// The file signature.
pub const MAGIC: [u8; 8] = *b"\x89SLC\r\n\x1a\n";
/// The format version this host writes and reads.
pub const VERSION: u16 = 1;
/// Bytes before each record's data.
const RECORD_HEADER: u64 = 16;
/// The longest record a resynchronisation accepts, unless the file had a
/// longer one before: bounds the CRC work per candidate offset.
const RESYNC_MAX_LEN: u64 = 1 << 20;
/// Frames waiting for the writer thread.
const QUEUE: usize = 4096;
/// Pause before reopening after a write error.
const RETRY: Duration = Duration::from_secs(10);

/// CRC-32/ISO-HDLC (reflected, polynomial 0xEDB88320).
fn crc32(parts: &[&[u8]]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for part in parts {
        for &b in *part {
            crc = TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
        }
    }
    !crc
}

/// What a capture file says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureHeader {
    /// The pipeline that recorded it.
    pub pipeline: String,
    /// When the file was started (ns since the Unix epoch).
    pub created_ns: u64,
}

impl CaptureHeader {
    fn encode(&self) -> Vec<u8> {
        let name = self.pipeline.as_bytes();
        let name_len = u16::try_from(name.len()).unwrap_or(u16::MAX);
        let name = &name[..usize::from(name_len)];
        let mut out = Vec::with_capacity(24 + name.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(&self.created_ns.to_le_bytes());
        out.extend_from_slice(name);
        let crc = crc32(&[&out]);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }
}

/// One captured frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureRecord {
    /// Receive time, ns since the Unix epoch.
    pub received_at_ns: u64,
    /// The frame's bytes.
    pub data: Vec<u8>,
}

/// Why a file cannot be read as a capture.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// Reading failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Not a capture file at all.
    #[error("{0}: not a sluice capture file")]
    NotCapture(PathBuf),
    /// A capture of another format version.
    #[error("{path}: capture format version {version}; this sluice reads version {VERSION}")]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        version: u16,
    },
    /// The magic is right but the header is cut short or fails its CRC
    /// (a crash while the file was being created).
    #[error("{0}: the capture header is incomplete or corrupt")]
    BadHeader(PathBuf),
}

/// How a capture file ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// After the last record.
    Clean,
    /// An incomplete record, nothing valid after it (a crash while
    /// appending): `bytes` ignored from `offset`.
    Torn {
        /// Where the incomplete record starts.
        offset: u64,
        /// Bytes from there to the end of the file.
        bytes: u64,
    },
    /// A record that fails its CRC, nothing valid after it: `bytes` ignored
    /// from `offset`.
    Corrupt {
        /// Where the bad record starts.
        offset: u64,
        /// Bytes from there to the end of the file.
        bytes: u64,
    },
}

/// Damaged stretches a reader skipped because valid records followed them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Stretches skipped (each one or more records).
    pub stretches: u64,
    /// Bytes in them.
    pub bytes: u64,
    /// Where the first one starts.
    pub first_offset: Option<u64>,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} damaged stretch(es) of records ({} bytes, the first at offset {}) skipped",
            self.stretches,
            self.bytes,
            self.first_offset.unwrap_or_default()
        )
    }
}

/// What [`CaptureReader::parse_at`] found.
enum Parsed {
    Record(CaptureRecord),
    /// The file ends inside it.
    Incomplete,
    /// Complete, but its CRC does not match or it is longer than allowed.
    Bad,
}

/// Reads a capture file record by record, skipping damaged ones.
pub struct CaptureReader {
    path: PathBuf,
    input: BufReader<File>,
    /// Where `input` is.
    pos: u64,
    header: CaptureHeader,
    /// Where the next record starts.
    offset: u64,
    file_len: u64,
    tail: Option<Tail>,
    skipped: Skipped,
    /// The longest valid record so far.
    longest: u64,
}

impl CaptureReader {
    /// Opens `path` and checks its header.
    pub fn open(path: &Path) -> Result<CaptureReader, CaptureError> {
        let io_err = |source| CaptureError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let file_len = file.metadata().map_err(io_err)?.len();
        let mut input = BufReader::with_capacity(64 << 10, file);
        let mut fixed = [0u8; 20];
        let got = read_up_to(&mut input, &mut fixed).map_err(io_err)?;
        if got < MAGIC.len() {
            // An empty file, or a crash right after creating it.
            return if fixed[..got] == MAGIC[..got] {
                Err(CaptureError::BadHeader(path.to_owned()))
            } else {
                Err(CaptureError::NotCapture(path.to_owned()))
            };
        }
        if fixed[..8] != MAGIC {
            return Err(CaptureError::NotCapture(path.to_owned()));
        }
        if got < fixed.len() {
            return Err(CaptureError::BadHeader(path.to_owned()));
        }
        let version = u16::from_le_bytes([fixed[8], fixed[9]]);
        if version != VERSION {
            return Err(CaptureError::Version {
                path: path.to_owned(),
                version,
            });
        }
        let name_len = usize::from(u16::from_le_bytes([fixed[10], fixed[11]]));
        let created_ns = u64::from_le_bytes(fixed[12..20].try_into().unwrap_or([0; 8]));
        let mut rest = vec![0u8; name_len + 4];
        if read_up_to(&mut input, &mut rest).map_err(io_err)? < rest.len() {
            return Err(CaptureError::BadHeader(path.to_owned()));
        }
        let (name, crc) = rest.split_at(name_len);
        if crc32(&[&fixed, name]).to_le_bytes() != crc {
            return Err(CaptureError::BadHeader(path.to_owned()));
        }
        let pipeline = String::from_utf8_lossy(name).into_owned();
        let offset = 24 + name_len as u64;
        Ok(CaptureReader {
            path: path.to_owned(),
            input,
            pos: offset,
            header: CaptureHeader {
                pipeline,
                created_ns,
            },
            offset,
            file_len,
            tail: None,
            skipped: Skipped::default(),
            longest: 0,
        })
    }

    /// The file's header.
    pub fn header(&self) -> &CaptureHeader {
        &self.header
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next valid record; `None` at the end of the valid records (see
    /// [`tail`](Self::tail) for what followed them, and
    /// [`skipped`](Self::skipped) for damage between them).
    pub fn next_record(&mut self) -> io::Result<Option<CaptureRecord>> {
        if self.tail.is_some() {
            return Ok(None);
        }
        let at = self.offset;
        if at >= self.file_len {
            self.tail = Some(Tail::Clean);
            return Ok(None);
        }
        let torn = match self.parse_at(at, u64::from(u32::MAX))? {
            Parsed::Record(record) => return Ok(Some(record)),
            Parsed::Incomplete => true,
            Parsed::Bad => false,
        };
        if let Some((next, record)) = self.resync(at + 1)? {
            self.skipped.stretches += 1;
            self.skipped.bytes += next - at;
            self.skipped.first_offset.get_or_insert(at);
            return Ok(Some(record));
        }
        let bytes = self.file_len - at;
        self.tail = Some(if torn {
            Tail::Torn { offset: at, bytes }
        } else {
            Tail::Corrupt { offset: at, bytes }
        });
        Ok(None)
    }

    /// How the file ended; `None` until [`next_record`](Self::next_record)
    /// returned `None`.
    pub fn tail(&self) -> Option<Tail> {
        self.tail
    }

    /// The damage skipped so far.
    pub fn skipped(&self) -> Skipped {
        self.skipped
    }

    /// Moves the input to `at`, keeping its buffer where it can.
    fn seek_to(&mut self, at: u64) -> io::Result<()> {
        if at != self.pos {
            // Two's complement: a backward move is a negative offset.
            self.input.seek_relative(at.wrapping_sub(self.pos) as i64)?;
            self.pos = at;
        }
        Ok(())
    }

    /// Fills `buf`; false if the file ended first.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        let got = read_up_to(&mut self.input, buf)?;
        self.pos += got as u64;
        Ok(got == buf.len())
    }

    /// The record at `at`, if it is whole, at most `max_len` long and its
    /// CRC matches (the next record is then looked for after it).
    fn parse_at(&mut self, at: u64, max_len: u64) -> io::Result<Parsed> {
        let remaining = self.file_len.saturating_sub(at);
        if remaining < RECORD_HEADER {
            return Ok(Parsed::Incomplete);
        }
        self.seek_to(at)?;
        let mut head = [0u8; RECORD_HEADER as usize];
        if !self.read(&mut head)? {
            return Ok(Parsed::Incomplete);
        }
        let len = u64::from(u32::from_le_bytes([head[0], head[1], head[2], head[3]]));
        if len > remaining - RECORD_HEADER {
            return Ok(Parsed::Incomplete);
        }
        if len > max_len {
            return Ok(Parsed::Bad);
        }
        let mut data = vec![0u8; len as usize];
        if !self.read(&mut data)? {
            return Ok(Parsed::Incomplete);
        }
        if crc32(&[&head[..12], &data]).to_le_bytes() != head[12..] {
            return Ok(Parsed::Bad);
        }
        self.offset = at + RECORD_HEADER + len;
        self.longest = self.longest.max(len);
        Ok(Parsed::Record(CaptureRecord {
            received_at_ns: u64::from_le_bytes(head[4..12].try_into().unwrap_or([0; 8])),
            data,
        }))
    }

    /// The first valid record at or after `from`, and where it starts.
    fn resync(&mut self, from: u64) -> io::Result<Option<(u64, CaptureRecord)>> {
        let max_len = self.longest.max(RESYNC_MAX_LEN);
        let header = RECORD_HEADER as usize;
        let mut at = from;
        while self.file_len.saturating_sub(at) >= RECORD_HEADER {
            self.seek_to(at)?;
            let mut buf = self.input.fill_buf()?;
            if buf.len() < header {
                // The buffer ends inside this header: refill it from here.
                self.input.seek(SeekFrom::Start(at))?;
                buf = self.input.fill_buf()?;
            }
            // Only bytes of the file as it was opened count.
            let visible = buf
                .len()
                .min(usize::try_from(self.file_len - at).unwrap_or(usize::MAX));
            if visible < header {
                return Ok(None);
            }
            // Cheap test first: a length that fits after this offset.
            let file_len = self.file_len;
            let candidate = (0..=visible - header).find(|&i| {
                let len = u64::from(u32::from_le_bytes([
                    buf[i],
                    buf[i + 1],
                    buf[i + 2],
                    buf[i + 3],
                ]));
                len <= max_len && len <= file_len - (at + (i + header) as u64)
            });
            match candidate {
                None => at += (visible - header + 1) as u64,
                Some(i) => {
                    let start = at + i as u64;
                    if let Parsed::Record(record) = self.parse_at(start, max_len)? {
                        return Ok(Some((start, record)));
                    }
                    at = start + 1;
                }
            }
        }
        Ok(None)
    }
}

impl Iterator for CaptureReader {
    type Item = io::Result<CaptureRecord>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_up_to(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

/// `<path>.<n>`
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Appends records to a capture file, rotating it by size.
pub struct CaptureWriter {
    path: PathBuf,
    pipeline: String,
    max_bytes: u64,
    keep: u32,
    out: BufWriter<File>,
    len: u64,
}

/// What [`CaptureWriter::open`] found in an existing file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A new file was created.
    New,
    /// Appending to an existing file of this pipeline.
    Existing {
        /// Its torn tail ([`Tail::Torn`] or [`Tail::Corrupt`]), cut off
        /// before appending.
        cut: Option<Tail>,
        /// Damage with valid records after it: left in place, readers skip it.
        skipped: Skipped,
    },
    /// The existing file had a damaged header or belonged to another
    /// pipeline; it was rotated away (or, with a damaged header, replaced).
    Replaced(String),
}

impl CaptureWriter {
    /// Opens (or creates) the capture file at `path` for `pipeline`.
    /// Refuses to touch a file that is not a capture.
    pub fn open(
        path: &Path,
        pipeline: &str,
        max_bytes: u64,
        keep: u32,
    ) -> anyhow::Result<(CaptureWriter, Found)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create directory {}", dir.display()))?;
        }
        let mut found = Found::New;
        let mut rotate_existing = false;
        if path.exists() {
            match CaptureReader::open(path) {
                Ok(mut reader) => {
                    if reader.header().pipeline != pipeline {
                        rotate_existing = true;
                        found = Found::Replaced(format!(
                            "it was recorded by pipeline {:?}",
                            reader.header().pipeline
                        ));
                    } else {
                        while reader.next_record()?.is_some() {}
                        let cut = match reader.tail() {
                            Some(
                                tail @ (Tail::Torn { offset, .. } | Tail::Corrupt { offset, .. }),
                            ) => {
                                OpenOptions::new()
                                    .write(true)
                                    .open(path)
                                    .and_then(|f| f.set_len(offset))
                                    .with_context(|| {
                                        format!("cannot repair capture file {}", path.display())
                                    })?;
                                Some(tail)
                            }
                            _ => None,
                        };
                        found = Found::Existing {
                            cut,
                            skipped: reader.skipped(),
                        };
                    }
                }
                Err(CaptureError::BadHeader(_)) => {
                    found = Found::Replaced("its header was incomplete".into());
                    std::fs::remove_file(path)
                        .with_context(|| format!("cannot replace {}", path.display()))?;
                }
                Err(err) => {
                    return Err(anyhow::Error::new(err).context(
                        "refusing to append to it; move it away or choose another capture.path",
                    ));
                }
            }
        }
        if rotate_existing {
            shift_rotated(path, keep)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open capture file {}", path.display()))?;
        let mut len = file.metadata()?.len();
        let mut out = BufWriter::with_capacity(64 << 10, file);
        if len == 0 {
            let header = CaptureHeader {
                pipeline: pipeline.to_owned(),
                created_ns: now_ns(),
            }
            .encode();
            out.write_all(&header)?;
            out.flush()?;
            len = header.len() as u64;
        }
        Ok((
            CaptureWriter {
                path: path.to_owned(),
                pipeline: pipeline.to_owned(),
                max_bytes,
                keep,
                out,
                len,
            },
            found,
        ))
    }

    /// Appends one record (rotating first if the file would outgrow
    /// `max_bytes`; a record larger than that gets a file of its own).
    pub fn append(&mut self, received_at_ns: u64, data: &[u8]) -> io::Result<()> {
        let len = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame larger than 4 GiB"))?;
        let size = RECORD_HEADER + u64::from(len);
        let header_len = 24 + self.pipeline.len() as u64;
        if self.len + size > self.max_bytes && self.len > header_len {
            self.rotate()?;
        }
        let mut head = [0u8; RECORD_HEADER as usize];
        head[..4].copy_from_slice(&len.to_le_bytes());
        head[4..12].copy_from_slice(&received_at_ns.to_le_bytes());
        let crc = crc32(&[&head[..12], data]);
        head[12..].copy_from_slice(&crc.to_le_bytes());
        self.out.write_all(&head)?;
        self.out.write_all(data)?;
        self.len += size;
        Ok(())
    }

    /// Hands buffered records to the OS.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Flushes and waits until the records are on disk.
    pub fn sync(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_data()
    }

    /// The current file's size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the current file has no records.
    pub fn is_empty(&self) -> bool {
        self.len <= 24 + self.pipeline.len() as u64
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.sync()?;
        shift_rotated(&self.path, self.keep).map_err(io::Error::other)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.out = BufWriter::with_capacity(64 << 10, file);
        let header = CaptureHeader {
            pipeline: self.pipeline.clone(),
            created_ns: now_ns(),
        }
        .encode();
        self.out.write_all(&header)?;
        self.len = header.len() as u64;
        Ok(())
    }
}

/// `path` → `path.1` → … → `path.<keep>` (the oldest is overwritten); with
/// `keep = 0`, `path` is deleted.
fn shift_rotated(path: &Path, keep: u32) -> anyhow::Result<()> {
    let ignore_missing = |r: io::Result<()>| match r {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    };
    if keep == 0 {
        ignore_missing(std::fs::remove_file(path))?;
        return Ok(());
    }
    for n in (1..keep).rev() {
        ignore_missing(std::fs::rename(
            rotated_path(path, n),
            rotated_path(path, n + 1),
        ))?;
    }
    ignore_missing(std::fs::rename(path, rotated_path(path, 1)))
        .with_context(|| format!("cannot rotate capture file {}", path.display()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Make the renames durable (best effort).
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// The port task's side of a capture: a bounded queue to the writer thread.
pub struct CaptureHandle {
    tx: mpsc::Sender<(u64, Vec<u8>)>,
    metrics: SerialMetrics,
    thread: std::thread::JoinHandle<()>,
}

impl CaptureHandle {
    /// Opens the capture file (cutting a torn tail) and starts its writer
    /// thread. Fails if the file cannot be opened now (a configuration or
    /// permission problem, reported at start-up).
    pub fn start(
        pipeline: Arc<str>,
        config: &CaptureConfig,
        metrics: SerialMetrics,
    ) -> anyhow::Result<CaptureHandle> {
        let path = config.path.clone();
        let (max_bytes, keep) = (config.max_bytes.get(), config.keep);
        let (writer, found) = CaptureWriter::open(&path, &pipeline, max_bytes, keep)
            .with_context(|| format!("pipeline {pipeline:?}: capture.path {}", path.display()))?;
        match &found {
            Found::Existing { cut, skipped } => {
                if let Some(tail) = cut {
                    tracing::warn!(pipeline = &*pipeline, path = %path.display(), ?tail,
                        "capture file had a torn tail (crash?); cut it off");
                }
                if skipped.stretches > 0 {
                    tracing::warn!(pipeline = &*pipeline, path = %path.display(),
                        damage = %skipped, "capture file is damaged before its end; \
                        kept as it is (readers skip the damage, not the records after it)");
                }
            }
            Found::Replaced(why) => tracing::warn!(pipeline = &*pipeline, path = %path.display(),
                why, "existing capture file set aside"),
            Found::New => {}
        }
        tracing::info!(pipeline = &*pipeline, path = %path.display(), "capturing frames");
        let (tx, rx) = mpsc::channel(QUEUE);
        let thread_metrics = metrics.clone();
        let thread = std::thread::Builder::new()
            .name(format!("capture-{pipeline}"))
            .spawn(move || {
                write_loop(
                    rx,
                    writer,
                    &path,
                    &pipeline,
                    max_bytes,
                    keep,
                    &thread_metrics,
                );
            })
            .context("cannot start the capture thread")?;
        Ok(CaptureHandle {
            tx,
            metrics,
            thread,
        })
    }

    /// Queues `frame` for the file; never waits (a full queue is counted).
    pub fn record(&self, frame: &Frame) {
        match self.tx.try_send((frame.received_at_ns, frame.data.clone())) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.capture_dropped(CaptureDrop::QueueFull)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.metrics.capture_dropped(CaptureDrop::WriterStopped);
            }
        }
    }

    /// Stops the writer after it wrote (and synced) everything queued.
    pub async fn close(self) {
        drop(self.tx);
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }

    /// [`close`](Self::close) for a thread outside the async runtime (the
    /// transform worker's dead letters): waits for the writer here.
    pub fn close_blocking(self) {
        drop(self.tx);
        let _ = self.thread.join();
    }
}

/// The writer thread's state.
struct WriteLoop<'a> {
    writer: Option<CaptureWriter>,
    retry_at: Option<Instant>,
    log_limit: RateLimiter,
    path: &'a Path,
    pipeline: &'a str,
}

impl WriteLoop<'_> {
    /// Gives up the file after an error; it is reopened after [`RETRY`].
    fn fail(&mut self, err: &dyn std::fmt::Display) {
        self.writer = None;
        self.retry_at = Some(Instant::now() + RETRY);
        if let Some(suppressed) = self.log_limit.check() {
            tracing::warn!(pipeline = self.pipeline, path = %self.path.display(), error = %err,
                suppressed, "capture file write failed; frames are not captured until it can be reopened");
        }
    }
}

fn write_loop(
    mut rx: mpsc::Receiver<(u64, Vec<u8>)>,
    writer: CaptureWriter,
    path: &Path,
    pipeline: &str,
    max_bytes: u64,
    keep: u32,
    metrics: &SerialMetrics,
) {
    let mut state = WriteLoop {
        writer: Some(writer),
        retry_at: None,
        log_limit: RateLimiter::new(3, Duration::from_secs(60)),
        path,
        pipeline,
    };
    loop {
        let (received_at_ns, data) = match rx.try_recv() {
            Ok(item) => item,
            Err(mpsc::error::TryRecvError::Empty) => {
                if let Some(Err(err)) = state.writer.as_mut().map(CaptureWriter::flush) {
                    state.fail(&err);
                }
                match rx.blocking_recv() {
                    Some(item) => item,
                    None => break,
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        };
        if state.writer.is_none() && state.retry_at.is_none_or(|at| Instant::now() >= at) {
            match CaptureWriter::open(path, pipeline, max_bytes, keep) {
                Ok((writer, _)) => {
                    tracing::info!(pipeline, path = %path.display(), "capture file reopened");
                    state.writer = Some(writer);
                    state.retry_at = None;
                }
                Err(err) => state.fail(&format!("{err:#}")),
            }
        }
        match state
            .writer
            .as_mut()
            .map(|w| w.append(received_at_ns, &data))
        {
            Some(Ok(())) => {
                metrics.capture_records.inc();
            }
            Some(Err(err)) => {
                metrics.capture_dropped(CaptureDrop::WriteFailed);
                state.fail(&err);
            }
            None => metrics.capture_dropped(CaptureDrop::Unavailable),
        }
    }
    if let Some(Err(err)) = state.writer.as_mut().map(CaptureWriter::sync) {
        tracing::warn!(pipeline, path = %path.display(), error = %err, "capture file: final sync failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(path: &Path) -> (Vec<CaptureRecord>, Option<Tail>) {
        let mut reader = CaptureReader::open(path).expect("opens");
        let mut out = Vec::new();
        while let Some(r) = reader.next_record().expect("reads") {
            out.push(r);
        }
        (out, reader.tail())
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
        assert_eq!(crc32(&[b"1234", b"56789"]), 0xCBF4_3926);
    }

    #[test]
    fn round_trip_and_torn_tail_is_ignored_then_repaired() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/gw.cap");
        let (mut w, found) = CaptureWriter::open(&path, "gw", 1 << 20, 2).expect("open");
        assert_eq!(found, Found::New);
        w.append(1, b"first").expect("append");
        w.append(2, b"").expect("append");
        w.append(3, b"\xff\x00binary").expect("append");
        w.sync().expect("sync");
        drop(w);
        let (recs, tail) = records(&path);
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[2].data, b"\xff\x00binary");
        assert_eq!(recs[2].received_at_ns, 3);
        assert_eq!(tail, Some(Tail::Clean));

        // A crash in the middle of a record: half of it is on disk.
        let good_len = std::fs::metadata(&path).expect("meta").len();
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(&[10, 0, 0, 0, 9, 9, 9]).expect("write");
        drop(f);
        let (recs, tail) = records(&path);
        assert_eq!(recs.len(), 3);
        assert_eq!(
            tail,
            Some(Tail::Torn {
                offset: good_len,
                bytes: 7
            })
        );

        // Reopening cuts the torn tail and continues the file.
        let (mut w, found) = CaptureWriter::open(&path, "gw", 1 << 20, 2).expect("reopen");
        assert_eq!(
            found,
            Found::Existing {
                cut: Some(Tail::Torn {
                    offset: good_len,
                    bytes: 7
                }),
                skipped: Skipped::default()
            }
        );
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), good_len);
        w.append(4, b"after crash").expect("append");
        w.sync().expect("sync");
        let (recs, tail) = records(&path);
        assert_eq!(recs.len(), 4);
        assert_eq!(recs[3].data, b"after crash");
        assert_eq!(tail, Some(Tail::Clean));
    }

    /// A capture of `n` records (`received_at_ns` 0 … n-1); their offsets.
    fn capture(path: &Path, n: u64) -> Vec<u64> {
        let (mut w, _) = CaptureWriter::open(path, "d", 1 << 20, 0).expect("open");
        let mut offsets = Vec::new();
        for i in 0..n {
            offsets.push(w.len());
            w.append(i, format!("record {i}").as_bytes())
                .expect("append");
        }
        w.sync().expect("sync");
        offsets
    }

    fn overwrite(path: &Path, at: u64, bytes: &[u8]) {
        let mut f = OpenOptions::new().write(true).open(path).expect("open");
        f.seek(SeekFrom::Start(at)).expect("seek");
        f.write_all(bytes).expect("write");
    }

    fn stamps(records: &[CaptureRecord]) -> Vec<u64> {
        records.iter().map(|r| r.received_at_ns).collect()
    }

    #[test]
    fn damage_in_the_middle_is_skipped_and_kept_by_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("d.cap");
        let huge = 0xFFFF_FF00u32.to_le_bytes();
        // (what, where in record 4, bytes written there, records lost)
        let cases: [(&str, u64, &[u8], &[u64]); 5] = [
            ("a flipped data byte", 17, b"\xAA", &[4]),
            ("a length beyond the file", 0, &huge, &[4]),
            ("a shorter length", 0, &[3], &[4]),
            ("a flipped CRC byte", 12, b"\x55", &[4]),
            ("zeros over three records", 0, &[0; 3 * 24], &[4, 5, 6]),
        ];
        for (what, at, bytes, lost) in cases {
            let _ = std::fs::remove_file(&path);
            let offsets = capture(&path, 10);
            let len = std::fs::metadata(&path).expect("meta").len();
            let last = *lost.last().expect("lost");
            overwrite(&path, offsets[4] + at, bytes);
            let want: Vec<u64> = (0..10).filter(|i| !lost.contains(i)).collect();
            let skipped = Skipped {
                stretches: 1,
                bytes: offsets[last as usize + 1] - offsets[4],
                first_offset: Some(offsets[4]),
            };
            let (recs, tail) = records(&path);
            assert_eq!(stamps(&recs), want, "{what}");
            assert_eq!(tail, Some(Tail::Clean), "{what}");

            // A restart keeps the file as it is and appends after it.
            let (mut w, found) = CaptureWriter::open(&path, "d", 1 << 20, 0).expect("reopen");
            assert_eq!(found, Found::Existing { cut: None, skipped }, "{what}");
            assert_eq!(w.len(), len, "{what}");
            w.append(10, b"after the restart").expect("append");
            w.sync().expect("sync");
            let mut reader = CaptureReader::open(&path).expect("opens");
            let recs: Vec<CaptureRecord> = reader.by_ref().map(|r| r.expect("reads")).collect();
            assert_eq!(stamps(&recs), [&want[..], &[10]].concat(), "{what}");
            assert_eq!(reader.tail(), Some(Tail::Clean), "{what}");
            assert_eq!(reader.skipped(), skipped, "{what}");
        }
    }

    #[test]
    fn only_the_torn_tail_after_damage_in_the_middle_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.cap");
        let offsets = capture(&path, 6);
        let good_len = std::fs::metadata(&path).expect("meta").len();
        overwrite(&path, offsets[2] + 20, b"\x00\x00");
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(&[40, 0, 0, 0, 1, 2, 3, 4, 5]).expect("tear");
        drop(f);
        let (recs, tail) = records(&path);
        assert_eq!(stamps(&recs), [0, 1, 3, 4, 5]);
        assert_eq!(
            tail,
            Some(Tail::Torn {
                offset: good_len,
                bytes: 9
            })
        );
        let (_, found) = CaptureWriter::open(&path, "d", 1 << 20, 0).expect("reopen");
        let Found::Existing { cut, skipped } = found else {
            panic!("{found:?}");
        };
        assert!(matches!(cut, Some(Tail::Torn { .. })), "{cut:?}");
        assert_eq!(skipped.stretches, 1);
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), good_len);
        assert_eq!(stamps(&records(&path).0), [0, 1, 3, 4, 5]);
    }

    #[test]
    fn noise_between_records_yields_no_false_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (first, second) = (dir.path().join("a.cap"), dir.path().join("b.cap"));
        capture(&first, 5);
        let header = 24 + 1;
        let mut bytes = std::fs::read(&first).expect("read");
        // 256 KiB of xorshift noise, then five more records.
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..(256 << 10) / 8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        let (mut w, _) = CaptureWriter::open(&second, "d", 1 << 20, 0).expect("open");
        for i in 5..10 {
            w.append(i, &[i as u8; 300]).expect("append");
        }
        w.sync().expect("sync");
        bytes.extend_from_slice(&std::fs::read(&second).expect("read")[header..]);
        std::fs::write(&first, &bytes).expect("write");
        let mut reader = CaptureReader::open(&first).expect("opens");
        let recs: Vec<CaptureRecord> = reader.by_ref().map(|r| r.expect("reads")).collect();
        assert_eq!(stamps(&recs), (0..10).collect::<Vec<u64>>());
        assert_eq!(reader.skipped().stretches, 1);
        assert_eq!(reader.skipped().bytes, 256 << 10);
        assert_eq!(reader.tail(), Some(Tail::Clean));
    }

    #[test]
    fn a_zero_filled_tail_is_corrupt_not_a_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("z.cap");
        let (mut w, _) = CaptureWriter::open(&path, "z", 1 << 20, 0).expect("open");
        w.append(7, b"ok").expect("append");
        w.sync().expect("sync");
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(&[0u8; 64]).expect("write");
        let (recs, tail) = records(&path);
        assert_eq!(recs.len(), 1);
        assert!(
            matches!(tail, Some(Tail::Corrupt { bytes: 64, .. })),
            "{tail:?}"
        );
    }

    #[test]
    fn rotation_bounds_the_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.cap");
        let (mut w, _) = CaptureWriter::open(&path, "r", 200, 2).expect("open");
        for i in 0..40u64 {
            w.append(i, &[b'x'; 20]).expect("append");
            assert!(w.len() <= 200);
        }
        w.sync().expect("sync");
        assert!(rotated_path(&path, 1).exists() && rotated_path(&path, 2).exists());
        assert!(!rotated_path(&path, 3).exists());
        // Oldest first, the surviving records are consecutive and in order.
        let mut seen = Vec::new();
        for p in [rotated_path(&path, 2), rotated_path(&path, 1), path.clone()] {
            let (recs, tail) = records(&p);
            assert_eq!(tail, Some(Tail::Clean));
            seen.extend(recs.iter().map(|r| r.received_at_ns));
        }
        assert_eq!(*seen.last().expect("records"), 39);
        assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "{seen:?}");
    }

    #[test]
    fn foreign_files_are_refused_and_other_pipelines_set_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.cap");
        std::fs::write(&path, b"precious data, not a capture").expect("write");
        let err = CaptureWriter::open(&path, "p", 1 << 20, 1)
            .err()
            .expect("refused");
        assert!(
            format!("{err:#}").contains("not a sluice capture file"),
            "{err:#}"
        );
        assert_eq!(
            std::fs::read(&path).expect("read"),
            b"precious data, not a capture"
        );

        let path = dir.path().join("g.cap");
        let (mut w, _) = CaptureWriter::open(&path, "a", 1 << 20, 1).expect("open");
        w.append(1, b"from a").expect("append");
        w.sync().expect("sync");
        drop(w);
        let (_, found) = CaptureWriter::open(&path, "b", 1 << 20, 1).expect("open");
        assert!(matches!(found, Found::Replaced(_)));
        let old = CaptureReader::open(&rotated_path(&path, 1)).expect("rotated");
        assert_eq!(old.header().pipeline, "a");
        assert_eq!(
            CaptureReader::open(&path).expect("new").header().pipeline,
            "b"
        );
    }

    #[test]
    fn a_file_cut_inside_the_header_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("h.cap");
        std::fs::write(&path, &MAGIC[..5]).expect("write");
        assert!(matches!(
            CaptureReader::open(&path),
            Err(CaptureError::BadHeader(_))
        ));
        let (_, found) = CaptureWriter::open(&path, "h", 1 << 20, 1).expect("open");
        assert!(matches!(found, Found::Replaced(_)));
        assert_eq!(records(&path).1, Some(Tail::Clean));
    }
}
