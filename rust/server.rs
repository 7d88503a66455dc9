//! The listener: one OS thread per association, an association limit, graceful shutdown, the
//! journal, and the queue that carries events to the Python side.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::association::AcceptorPolicy;
use crate::connection;
use crate::error::{Error, Result};
use crate::events::EventQueue;
use crate::journal::{Cluster, Feed, Journal, Timers};
use crate::layout::SortKey;
use crate::store::{Duplicates, Storage};
use crate::tls::{ServedCertificate, ServerCredentials};
use crate::verdict::{Echo, EchoConfig, HandlerConfig, Instance, Pending, Request, Verdicts};

/// Connections beyond the association limit that still get a proper A-ASSOCIATE-RJ;
/// past that they are closed at once so a flood cannot spawn unbounded threads.
pub(crate) const REJECT_SLACK: usize = 16;
/// Pause after a failed accept (e.g. out of file descriptors), which would otherwise fail
/// again at once and spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    pub policy: AcceptorPolicy,
    pub data_dir: PathBuf,
    pub sort_key: SortKey,
    pub durable: bool,
    pub max_associations: usize,
    /// ARTIM: how long a new connection may take to send its whole A-ASSOCIATE-RQ; past it the
    /// connection is closed. Also bounds the wait for the peer to close after an RJ or A-ABORT.
    pub acse_timeout: Option<Duration>,
    /// How long an association may stay idle between messages before we abort it.
    pub network_timeout: Option<Duration>,
    /// Inside a message (command or data set under way), how long each PDU may take to start
    /// and to arrive in full before we abort the association and drop its spool file.
    pub dimse_timeout: Option<Duration>,
    /// Largest data set accepted, in bytes; a larger one is drained and refused (0xA700).
    pub max_instance_size: Option<u64>,
    /// Send a `Stored` event per instance (only when someone consumes them).
    pub emit_stored: bool,
    pub event_queue: usize,
    /// DICOM TLS (PS3.15 Annex B), when configured.
    pub tls: Option<TlsService>,
    /// A user handler decides each instance's status (None: every valid instance is stored
    /// and answered with success, nothing waits on Python).
    pub handler: Option<HandlerConfig>,
    /// A user handler decides each C-ECHO's status (None: success, nothing waits on Python).
    pub echo_handler: Option<EchoConfig>,
    /// Record every acknowledged instance in the journal before answering.
    pub journal: bool,
    /// What to do with an instance whose file exists already.
    pub duplicates: Duplicates,
    /// Study/series completion events (the journal must be on).
    pub timers: Option<Timers>,
    /// This node's name among those sharing `data_dir`: its spool area is
    /// `.incoming/<node_id>/`.
    pub node_id: String,
    /// The journal in a PostgreSQL database shared by the nodes (None: SQLite in data_dir).
    pub cluster: Option<Cluster>,
}

/// The TLS configuration and where it is served.
#[derive(Debug, Clone)]
pub struct TlsService {
    pub credentials: Arc<ServerCredentials>,
    /// A second port, for TLS beside plain TCP on `port`; None serves TLS alone, on `port`.
    pub port: Option<u16>,
}

/// Every open connection, so shutdown can wake them, and how many of them are only being
/// rejected (over the association limit).
#[derive(Default)]
struct Open {
    streams: HashMap<u64, TcpStream>,
    rejecting: usize,
}

/// The connections shutdown makes to wake the accept loops: by listener address, the local
/// address of its wake-up connection (None: it could not connect), so a loop can tell its
/// wake-up from a real connection queued with it.
#[derive(Default)]
struct Wakes {
    sent: Mutex<HashMap<SocketAddr, Option<SocketAddr>>>,
    posted: Condvar,
}

impl Wakes {
    /// Connect to `listener` to wake its accept loop; the connection stays open while held.
    fn wake(&self, listener: SocketAddr) -> Option<TcpStream> {
        let stream = TcpStream::connect_timeout(&wake_address(listener), Duration::from_secs(1));
        let local = stream.as_ref().ok().and_then(|s| s.local_addr().ok());
        lock(&self.sent).insert(listener, local);
        self.posted.notify_all();
        stream.ok()
    }

    /// The wake-up connection's address for `listener`, waiting for shutdown to post it (it
    /// does once its connect returns, within a second).
    fn of(&self, listener: SocketAddr) -> Option<SocketAddr> {
        let mut sent = lock(&self.sent);
        loop {
            if let Some(local) = sent.get(&listener) {
                return *local;
            }
            sent = self.posted.wait(sent).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Running totals since the start, for a live status display: counted as each instance
/// completes, read without stopping anyone.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    instances: AtomicU64,
    failures: AtomicU64,
    bytes: AtomicU64,
}

impl Stats {
    /// One C-STORE answered: stored (`ok`) or refused, with the data set bytes received.
    pub fn count_instance(&self, ok: bool, bytes: u64) {
        let counter = if ok { &self.instances } else { &self.failures };
        counter.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// A snapshot of the server's activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Associations being served now.
    pub associations: usize,
    /// Instances stored since the start.
    pub instances: u64,
    /// C-STORE requests refused since the start.
    pub failures: u64,
    /// Data set bytes received since the start.
    pub bytes: u64,
}

/// State shared by the listener and the association threads.
pub(crate) struct Shared {
    pub config: ServerConfig,
    pub storage: Storage,
    pub journal: Option<Arc<Journal>>,
    pub shutting_down: AtomicBool,
    /// Shutdown grace ended early (a second Ctrl-C): abort what is still open now.
    cut_short: AtomicBool,
    pub stats: Stats,
    pub verdicts: Option<Verdicts>,
    pub echoes: Option<Pending<Echo>>,
    active: Mutex<Open>,
    drained: Condvar,
    wakes: Wakes,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking association thread must not take the whole server down with it.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub struct Server {
    shared: Arc<Shared>,
    events: Arc<EventQueue>,
    local_addr: SocketAddr,
    listener: Mutex<Option<JoinHandle<()>>>,
    /// The second listener, TLS beside plain TCP: its address and thread.
    tls_listener: Mutex<Option<(SocketAddr, JoinHandle<()>)>>,
}

fn bind(host: &str, port: u16) -> Result<TcpListener> {
    (host, port)
        .to_socket_addrs()
        .and_then(|mut addrs| {
            addrs
                .next()
                .ok_or_else(|| std::io::ErrorKind::NotFound.into())
        })
        .and_then(TcpListener::bind)
        .map_err(Error::io(format!("cannot listen on {host}:{port}")))
}

impl Server {
    /// Bind, open the storage and the journal, and start accepting associations. The feed
    /// gives the events, the journal's undelivered instances first.
    pub fn start(config: ServerConfig) -> Result<(Server, Feed)> {
        if config.max_associations == 0 {
            return Err(Error::InvalidConfig(
                "max_associations must be at least 1".into(),
            ));
        }
        crate::store::check_node_id(&config.node_id).map_err(Error::InvalidConfig)?;
        let listener = bind(&config.host, config.port)?;
        let local_addr = listener
            .local_addr()
            .map_err(Error::io("cannot read the bound address"))?;
        let tls_listener = match config.tls.as_ref().and_then(|tls| tls.port) {
            Some(port) => {
                let listener = bind(&config.host, port)?;
                let addr = listener
                    .local_addr()
                    .map_err(Error::io("cannot read the bound address"))?;
                Some((listener, addr))
            }
            None => None,
        };
        // Only once the ports are ours: a failed bind leaves no data_dir behind.
        let storage = open_storage(&config.data_dir, config.durable, &config.node_id)?;
        let events = Arc::new(EventQueue::new(config.event_queue));
        let (journal, feed) = open_journal(&config, storage.root(), &events)?;
        let verdicts = config.handler.map(Verdicts::new);
        let echoes = config.echo_handler.map(|echo| Pending::new(echo.timeout));
        let shared = Arc::new(Shared {
            verdicts,
            echoes,
            config,
            storage,
            journal,
            shutting_down: AtomicBool::new(false),
            cut_short: AtomicBool::new(false),
            active: Mutex::new(Open::default()),
            drained: Condvar::new(),
            wakes: Wakes::default(),
            workers: Mutex::new(Vec::new()),
            stats: Stats::default(),
        });
        let tls = shared
            .config
            .tls
            .as_ref()
            .map(|t| (t.port, Arc::clone(&t.credentials)));
        // The main port speaks TLS when TLS is served alone.
        let main_tls = tls
            .as_ref()
            .and_then(|(port, c)| port.is_none().then(|| Arc::clone(c)));
        let tls_listener = match (tls_listener, tls) {
            (Some((listener, addr)), Some((_, config))) => {
                let handle = spawn_listener(listener, &shared, &events, Some(config))?;
                Some((addr, handle))
            }
            _ => None,
        };
        let handle = spawn_listener(listener, &shared, &events, main_tls)?;
        Ok((
            Server {
                shared,
                events: Arc::clone(&events),
                local_addr,
                listener: Mutex::new(Some(handle)),
                tls_listener: Mutex::new(tls_listener),
            },
            feed,
        ))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound address of the TLS port served beside plain TCP, if there is one.
    pub fn tls_local_addr(&self) -> Option<SocketAddr> {
        lock(&self.tls_listener).as_ref().map(|(addr, _)| *addr)
    }

    /// Read the TLS certificate, key, CA and CRL files again, for the associations that
    /// begin from now on; false when it serves no TLS.
    pub fn reload_tls(&self) -> Result<bool> {
        let Some(tls) = &self.shared.config.tls else {
            return Ok(false);
        };
        tls.credentials.reload()?;
        Ok(true)
    }

    /// What the TLS certificate served now says; None without TLS.
    pub fn tls_certificate(&self) -> Option<ServedCertificate> {
        self.shared
            .config
            .tls
            .as_ref()
            .map(|t| t.credentials.certificate())
    }

    pub fn storage_root(&self) -> &std::path::Path {
        self.shared.storage.root()
    }

    /// The journal, when it is on.
    pub fn journal(&self) -> Option<&Arc<Journal>> {
        self.shared.journal.as_ref()
    }

    /// Associations open now and the running totals.
    pub fn stats(&self) -> StatsSnapshot {
        let open = lock(&self.shared.active);
        let stats = &self.shared.stats;
        StatsSnapshot {
            associations: open.streams.len() - open.rejecting,
            instances: stats.instances.load(Ordering::Relaxed),
            failures: stats.failures.load(Ordering::Relaxed),
            bytes: stats.bytes.load(Ordering::Relaxed),
        }
    }

    /// The next instance waiting for the handler's verdict, waiting for one; None once the
    /// server has shut down (or has no handler).
    pub fn next_store_request(&self) -> Option<Request<Instance>> {
        self.shared.verdicts.as_ref()?.next()
    }

    /// The next C-ECHO waiting for the echo handler's status, waiting for one; None once the
    /// server has shut down (or has no echo handler).
    pub fn next_echo_request(&self) -> Option<Request<Echo>> {
        self.shared.echoes.as_ref()?.next()
    }

    /// Stop accepting, let open associations finish for up to `grace`, abort the rest, and
    /// return once every association thread has ended. Idempotent.
    pub fn shutdown(&self, grace: Duration) {
        let Some(listener) = lock(&self.listener).take() else {
            return;
        };
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        // accept() has no timeout: a connection of our own wakes it to see the flag.
        let wake = self.shared.wakes.wake(self.local_addr);
        let _ = listener.join();
        drop(wake);
        if let Some((addr, tls_listener)) = lock(&self.tls_listener).take() {
            let wake = self.shared.wakes.wake(addr);
            let _ = tls_listener.join();
            drop(wake);
        }

        // None: a grace beyond the clock's range, so no limit.
        let deadline = Instant::now().checked_add(grace);
        let mut active = lock(&self.shared.active);
        while !active.streams.is_empty() && !self.shared.cut_short.load(Ordering::SeqCst) {
            let left = deadline.map_or(Duration::MAX, |d| {
                d.saturating_duration_since(Instant::now())
            });
            if left.is_zero() {
                break;
            }
            active = self
                .shared
                .drained
                .wait_timeout(active, left)
                .map_or_else(|p| p.into_inner().0, |r| r.0);
        }
        for stream in active.streams.values() {
            // The association thread sees end-of-stream, notices the shutdown and aborts.
            let _ = stream.shutdown(Shutdown::Read);
        }
        drop(active);
        let workers = std::mem::take(&mut *lock(&self.shared.workers));
        for worker in workers {
            let _ = worker.join();
        }
        // No association is left to ask: the handler threads may end.
        if let Some(verdicts) = &self.shared.verdicts {
            verdicts.close();
        }
        if let Some(echoes) = &self.shared.echoes {
            echoes.close();
        }
        self.events.end();
    }

    /// End the grace of a shutdown under way, or of the next one: associations still open are
    /// aborted at once.
    pub fn abort_open_associations(&self) {
        // Under the lock shutdown waits with, so the wake-up cannot fall between its check
        // and its wait.
        let _active = lock(&self.shared.active);
        self.shared.cut_short.store(true, Ordering::SeqCst);
        self.shared.drained.notify_all();
    }
}

#[cfg(test)]
impl Server {
    /// Hold the accept loops at their next connection (they take this lock for it) while the
    /// guard lives: connections queue behind it.
    pub(crate) fn pause_accepting(&self) -> impl Sized + '_ {
        lock(&self.shared.active)
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shared.shutting_down.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown(Duration::ZERO);
    }
}

/// The storage root, created if missing; a file in its place is named as such, not as the
/// "File exists" that creating a directory over it would say.
fn open_storage(data_dir: &Path, durable: bool, node_id: &str) -> Result<Storage> {
    let context = format!("cannot use data_dir {}", data_dir.display());
    if data_dir.exists() && !data_dir.is_dir() {
        let source = std::io::Error::new(ErrorKind::NotADirectory, "is not a directory");
        return Err(Error::Io { context, source });
    }
    Storage::open(data_dir, durable, node_id).map_err(Error::io(context))
}

/// The journal (unless turned off) and the feed that reads it with the event queue. The feed
/// is made before the first association, so rows of earlier runs and events of this one
/// never overlap.
fn open_journal(
    config: &ServerConfig,
    root: &std::path::Path,
    events: &Arc<EventQueue>,
) -> Result<(Option<Arc<Journal>>, Feed)> {
    if !config.journal {
        if config.timers.is_some() {
            return Err(Error::InvalidConfig(
                "study and series events need the journal".into(),
            ));
        }
        return Ok((None, Feed::new(Arc::clone(events), None, false, None)?));
    }
    let notify = config.timers.as_ref().map(|_| Arc::clone(events));
    let journal = match &config.cluster {
        None => Journal::open(root, &config.node_id, config.durable, notify)?,
        Some(cluster) => Journal::open_postgres(root, cluster, notify)?,
    };
    let feed = Feed::new(
        Arc::clone(events),
        Some(journal.index()?),
        config.emit_stored,
        config.timers.clone(),
    )?;
    journal.report_to(events);
    let (timers, callbacks) = (config.timers.is_some(), config.emit_stored);
    journal.start_heartbeat(events, feed.replayer(), timers, callbacks);
    Ok((Some(Arc::new(journal)), feed))
}

fn wake_address(bound: SocketAddr) -> SocketAddr {
    let ip = match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bound.port())
}

fn spawn_listener(
    listener: TcpListener,
    shared: &Arc<Shared>,
    events: &Arc<EventQueue>,
    tls: Option<Arc<ServerCredentials>>,
) -> Result<JoinHandle<()>> {
    let shared = Arc::clone(shared);
    let events = Arc::clone(events);
    thread::Builder::new()
        .name("dicom-inlet-listener".into())
        .spawn(move || accept_loop(&listener, &shared, &events, tls.as_ref()))
        .map_err(Error::io("cannot start the listener thread"))
}

fn accept_loop(
    listener: &TcpListener,
    shared: &Arc<Shared>,
    events: &Arc<EventQueue>,
    tls: Option<&Arc<ServerCredentials>>,
) {
    let next_id = AtomicU64::new(0);
    let serve = |stream: TcpStream, closing: bool| {
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        admit(stream, id, closing, shared, events, tls);
    };
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(_) if shared.shutting_down.load(Ordering::SeqCst) => break,
            Err(_) => {
                thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
        };
        if !shared.shutting_down.load(Ordering::SeqCst) {
            serve(stream, false);
            continue;
        }
        // Shutting down: this is our wake-up connection or a real one queued with it. The
        // real ones, this and the rest of the backlog, are answered (a transient
        // A-ASSOCIATE-RJ), not dropped; the wake-up is just closed.
        let wake = listener
            .local_addr()
            .ok()
            .and_then(|bound| shared.wakes.of(bound));
        let drains = listener.set_nonblocking(true).is_ok();
        let mut next = Some(stream);
        while let Some(stream) = next.take() {
            let is_wake = wake.is_some() && stream.peer_addr().ok() == wake;
            if !is_wake && stream.set_nonblocking(false).is_ok() {
                serve(stream, true);
            }
            if drains {
                next = listener.accept().ok().map(|(stream, _)| stream);
            }
        }
        break;
    }
}

/// Serve a new connection on a thread of its own: as an association, or with an
/// A-ASSOCIATE-RJ when over the association limit or `closing`; past the rejections allowed
/// at once it is closed at once.
fn admit(
    stream: TcpStream,
    id: u64,
    closing: bool,
    shared: &Arc<Shared>,
    events: &Arc<EventQueue>,
    tls: Option<&Arc<ServerCredentials>>,
) {
    let over_limit = {
        let mut open = lock(&shared.active);
        let serving = open.streams.len() - open.rejecting;
        let over = closing || serving >= shared.config.max_associations;
        if over && open.rejecting >= REJECT_SLACK {
            return;
        }
        // Without a handle for shutdown to wake it, the connection is not served.
        let Ok(clone) = stream.try_clone() else {
            return;
        };
        open.streams.insert(id, clone);
        open.rejecting += usize::from(over);
        over
    };
    let worker_shared = Arc::clone(shared);
    let worker_events = Arc::clone(events);
    // The credentials of the moment: a reload while this connection is served changes nothing
    // for it.
    let worker_tls = tls.map(|credentials| credentials.current());
    let spawned = thread::Builder::new()
        .name("dicom-inlet-association".into())
        .spawn(move || {
            let tls = worker_tls.as_ref();
            connection::serve(stream, tls, &worker_shared, &worker_events, over_limit);
            close(&worker_shared, id, over_limit);
        });
    let mut workers = lock(&shared.workers);
    workers.retain(|w| !w.is_finished());
    match spawned {
        Ok(handle) => workers.push(handle),
        Err(_) => close(shared, id, over_limit),
    }
}

/// Forget a finished connection.
fn close(shared: &Shared, id: u64, over_limit: bool) {
    let mut open = lock(&shared.active);
    open.streams.remove(&id);
    open.rejecting -= usize::from(over_limit);
    if open.streams.is_empty() {
        shared.drained.notify_all();
    }
}
