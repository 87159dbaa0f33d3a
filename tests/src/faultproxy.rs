//! A TCP proxy that injects faults between sluice and a real server:
//! latency (with jitter, order kept), connections cut at any byte —
//! mid-packet included —, one direction frozen (the server stops getting
//! anything, so the client's in-flight window fills), and new connections
//! refused. Debian's toxiproxy would do the first two but not cut inside a
//! chunk on demand; this is ~200 lines on tokio.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The proxy; it stops when dropped.
pub struct FaultProxy {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    state: Arc<State>,
    runtime: Option<tokio::runtime::Runtime>,
}

struct State {
    /// Added latency per direction: a chunk goes out at least this long
    /// after it was read, plus up to `jitter_ms`.
    latency_ms: AtomicU64,
    jitter_ms: AtomicU64,
    /// Client → server bytes are held back.
    frozen: AtomicBool,
    /// New connections are closed at once.
    refusing: AtomicBool,
    /// Bumped by every cut; connections compare it with theirs.
    cuts: watch::Sender<u64>,
    /// Connections accepted and passed on.
    connections: AtomicU64,
    /// Connections open now.
    live: AtomicU64,
    /// A xorshift state for prefixes and jitter.
    random: AtomicU64,
}

impl State {
    fn random(&self, below: u64) -> u64 {
        let mut x = self.random.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.random.store(x, Ordering::Relaxed);
        if below == 0 { 0 } else { x % below }
    }
}

impl FaultProxy {
    /// Starts a proxy to `127.0.0.1:upstream_port`, passing bytes through
    /// unchanged until told otherwise. `seed` makes the cut points and the
    /// jitter repeatable.
    pub fn start(upstream_port: u16, seed: u64) -> FaultProxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("proxy runtime");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind the proxy");
        let port = listener.local_addr().expect("local addr").port();
        let state = Arc::new(State {
            latency_ms: AtomicU64::new(0),
            jitter_ms: AtomicU64::new(0),
            frozen: AtomicBool::new(false),
            refusing: AtomicBool::new(false),
            cuts: watch::channel(0).0,
            connections: AtomicU64::new(0),
            live: AtomicU64::new(0),
            random: AtomicU64::new(seed | 1),
        });
        runtime.spawn(accept(listener, upstream_port, state.clone()));
        FaultProxy {
            port,
            state,
            runtime: Some(runtime),
        }
    }

    /// Every chunk is delayed by `latency` plus up to `jitter`, each way;
    /// bytes stay in order.
    pub fn set_latency(&self, latency: Duration, jitter: Duration) {
        self.state
            .latency_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
        self.state
            .jitter_ms
            .store(jitter.as_millis() as u64, Ordering::SeqCst);
    }

    /// Holds back (or releases) everything the client sends.
    pub fn freeze_upstream(&self, frozen: bool) {
        self.state.frozen.store(frozen, Ordering::SeqCst);
    }

    /// Closes new connections at once (or passes them on again).
    pub fn refuse(&self, refusing: bool) {
        self.state.refusing.store(refusing, Ordering::SeqCst);
    }

    /// Cuts every open connection: each direction writes a random prefix
    /// of the chunk it has in hand (so a packet may end half-way), then
    /// both sockets close. Returns how many connections were open.
    pub fn cut(&self) -> u64 {
        let live = self.state.live.load(Ordering::SeqCst);
        self.state.cuts.send_modify(|n| *n += 1);
        live
    }

    /// Connections passed on so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn accept(listener: TcpListener, upstream_port: u16, state: Arc<State>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if state.refusing.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)).await else {
            continue;
        };
        state.connections.fetch_add(1, Ordering::SeqCst);
        state.live.fetch_add(1, Ordering::SeqCst);
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let connection = CancellationToken::new();
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        for (from, to, upstream) in [
            (client_read, server_write, true),
            (server_read, client_write, false),
        ] {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(read(from, tx, state.clone(), connection.clone()));
            tokio::spawn(write(rx, to, state.clone(), connection.clone(), upstream));
        }
        let state = state.clone();
        tokio::spawn(async move {
            connection.cancelled().await;
            state.live.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Reads chunks and stamps each with when it may go out.
async fn read(
    mut from: tokio::net::tcp::OwnedReadHalf,
    to: mpsc::UnboundedSender<(Instant, Vec<u8>)>,
    state: Arc<State>,
    connection: CancellationToken,
) {
    let mut buf = vec![0u8; 16 << 10];
    let mut last_due = Instant::now();
    loop {
        let n = tokio::select! {
            n = from.read(&mut buf) => n,
            _ = connection.cancelled() => return,
        };
        let n = match n {
            Ok(0) | Err(_) => return, // dropping `to` ends the writer after the rest
            Ok(n) => n,
        };
        let delay = state.latency_ms.load(Ordering::SeqCst)
            + state.random(state.jitter_ms.load(Ordering::SeqCst) + 1);
        // Jitter never reorders: a chunk never leaves before the one ahead.
        last_due = last_due.max(Instant::now() + Duration::from_millis(delay));
        if to.send((last_due, buf[..n].to_vec())).is_err() {
            return;
        }
    }
}

/// Writes chunks when due; on a cut, a random prefix of the chunk in hand,
/// then closes the connection.
async fn write(
    mut chunks: mpsc::UnboundedReceiver<(Instant, Vec<u8>)>,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: Arc<State>,
    connection: CancellationToken,
    upstream: bool,
) {
    let mut cuts = state.cuts.subscribe();
    cuts.borrow_and_update();
    loop {
        let (due, chunk) = tokio::select! {
            chunk = chunks.recv() => match chunk {
                Some(chunk) => chunk,
                None => {
                    // One side closed: pass that on and end the connection.
                    let _ = to.shutdown().await;
                    connection.cancel();
                    return;
                }
            },
            _ = cuts.changed() => return cut(&state, &connection, &mut to, None).await,
            _ = connection.cancelled() => return,
        };
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = cuts.changed() => return cut(&state, &connection, &mut to, Some(chunk)).await,
            _ = connection.cancelled() => return,
        }
        while upstream && state.frozen.load(Ordering::SeqCst) {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                _ = cuts.changed() => return cut(&state, &connection, &mut to, None).await,
                _ = connection.cancelled() => return,
            }
        }
        if to.write_all(&chunk).await.is_err() {
            connection.cancel();
            return;
        }
    }
}

/// Writes a random prefix of `chunk` (none of a held-back one), then closes
/// the connection.
async fn cut(
    state: &State,
    connection: &CancellationToken,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    chunk: Option<Vec<u8>>,
) {
    if let Some(chunk) = chunk {
        let keep = state.random(chunk.len() as u64) as usize;
        let _ = to.write_all(&chunk[..keep]).await;
    }
    connection.cancel();
}
