//! The accept loop: every connection served by hyper's HTTP/1 with limits
//! that hold before any authentication.
//!
//! - **Cap.** At most `server.maxConnections` are open. One arriving at the
//!   cap closes the open connection that has waited longest without a
//!   request in progress (idle, or still sending headers), so a client that
//!   sends its request at once is served however many sockets an attacker
//!   holds. The victim is taken from the peer address holding the most
//!   connections, so a flood from a few addresses, even one that reconnects
//!   as fast as it is closed, evicts its own connections rather than
//!   Alertmanager's or a health check's. Only when every open connection
//!   has a request in progress is the new one closed.
//! - **Timeouts.** A watchdog per connection closes it when it has been
//!   idle for `server.idleTimeout` (no byte of a next request) or has taken
//!   `server.headerReadTimeout` from a request's first byte without
//!   finishing its headers. A request in progress is bounded by the body
//!   timeout in the handlers.
//! - **Memory.** A connection's read buffer is `server.maxHeaderBytes`
//!   at most, so the cap bounds what connections can hold.
//! - **Shutdown.** On stop the listener is dropped at once; connections
//!   without a request in progress are closed, the others finish their
//!   request (hyper's graceful shutdown) and then close.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

use super::Http;
use crate::config::ServerConfig;
use crate::metrics::ReasonLabels;

/// The peer address of the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

const IDLE: u64 = 0;
const HEAD: u64 = 1;
const BUSY: u64 = 2;
const PHASE_SHIFT: u32 = 62;

/// One open connection as the cap and its watchdog see it.
struct Conn {
    id: u64,
    /// The peer's address (connections are counted per address).
    ip: IpAddr,
    /// Phase (top two bits) and when it began (ms since the tracker's
    /// epoch), in one word so they are always read together.
    state: AtomicU64,
    /// Set when the cap closed this connection for a newer one.
    evicted: AtomicBool,
    /// Phase changed, evicted, or shutting down.
    wake: Notify,
}

impl Conn {
    fn get(&self) -> (u64, u64) {
        let s = self.state.load(Ordering::Acquire);
        (s >> PHASE_SHIFT, s & ((1 << PHASE_SHIFT) - 1))
    }
    fn set(&self, phase: u64, at_ms: u64) {
        self.state
            .store((phase << PHASE_SHIFT) | at_ms, Ordering::Release);
        self.wake.notify_one();
    }
}

/// The open connections, oldest id first, and how many each peer address holds.
#[derive(Default)]
struct Open {
    conns: BTreeMap<u64, Arc<Conn>>,
    per_ip: HashMap<IpAddr, usize>,
}

impl Open {
    fn insert(&mut self, c: Arc<Conn>) {
        *self.per_ip.entry(c.ip).or_default() += 1;
        self.conns.insert(c.id, c);
    }

    fn remove(&mut self, id: u64) -> Option<Arc<Conn>> {
        let c = self.conns.remove(&id)?;
        if let Some(n) = self.per_ip.get_mut(&c.ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&c.ip);
            }
        }
        Some(c)
    }

    /// The connection to close for a new one: of the peer address holding
    /// the most connections, the one without a request in progress that has
    /// waited longest; failing that, the longest-waiting one of any address.
    fn victim(&self) -> Option<u64> {
        let oldest_idle = |from: Option<IpAddr>| {
            self.conns
                .values()
                .filter(|c| c.get().0 != BUSY && from.is_none_or(|ip| c.ip == ip))
                .min_by_key(|c| c.get().1)
                .map(|c| c.id)
        };
        let heaviest = self
            .per_ip
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(ip, _)| *ip);
        oldest_idle(heaviest).or_else(|| oldest_idle(None))
    }
}

/// The open connections as the cap and the watchdogs see them.
struct Tracker {
    epoch: Instant,
    open: Mutex<Open>,
    next: AtomicU64,
    stopping: AtomicBool,
    /// `remediate_http_connections_open`.
    gauge: prometheus_client::metrics::gauge::Gauge,
}

enum Admit {
    /// Admitted (an older idle connection may have been told to close for
    /// it; its own task counts that).
    Open(Arc<Conn>),
    /// At the cap with every connection busy.
    Full,
}

impl Tracker {
    fn new(gauge: prometheus_client::metrics::gauge::Gauge) -> Self {
        Self {
            epoch: Instant::now(),
            open: Mutex::new(Open::default()),
            next: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            gauge,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new connection from `ip`, evicting one without a request in
    /// progress ([`Open::victim`]) when at `max`.
    fn admit(&self, max: usize, ip: IpAddr) -> Admit {
        let mut open = self.lock();
        if open.conns.len() >= max && !evict(&mut open) {
            return Admit::Full;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            id,
            ip,
            state: AtomicU64::new((IDLE << PHASE_SHIFT) | self.now_ms()),
            evicted: AtomicBool::new(false),
            wake: Notify::new(),
        });
        open.insert(conn.clone());
        self.gauge.set(open.conns.len() as i64);
        Admit::Open(conn)
    }

    fn remove(&self, id: u64) {
        let mut open = self.lock();
        open.remove(id);
        self.gauge.set(open.conns.len() as i64);
    }

    /// Closes one connection without a request in progress (when out of
    /// file descriptors). True if one was found.
    fn evict_one(&self) -> bool {
        let mut open = self.lock();
        let done = evict(&mut open);
        self.gauge.set(open.conns.len() as i64);
        done
    }

    fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        for c in self.lock().conns.values() {
            c.wake.notify_one();
        }
    }
}

/// Tells the [`Open::victim`] to close, and forgets it. False when every
/// connection has a request in progress.
fn evict(open: &mut Open) -> bool {
    let Some(c) = open.victim().and_then(|id| open.remove(id)) else {
        return false;
    };
    c.evicted.store(true, Ordering::Release);
    c.wake.notify_one();
    true
}

/// Accepts and serves connections until `stop` flips to true, then closes
/// idle ones and waits for requests in progress.
pub(super) async fn accept_loop(
    listener: TcpListener,
    router: Router,
    http: Arc<Http>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let tracker = Arc::new(Tracker::new(http.shared.metrics.http_connections.clone()));
    let limits = http.shared.cfg.server.clone();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        if *stop.borrow() {
            break;
        }
        let accepted = tokio::select! {
            // A dropped sender stops the server too.
            r = stop.changed() => if r.is_ok() { continue } else { break },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors: make room by closing an idle
                // connection; anything else: back off a little.
                let fd = matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE));
                if !(fd && tracker.evict_one()) {
                    http.rejects
                        .note("accept_error", None, None, &format!("accept failed: {e}"));
                }
                tokio::time::sleep(Duration::from_millis(if fd { 5 } else { 50 })).await;
                continue;
            }
        };
        http.shared.metrics.http_accepted.inc();
        let conn = match tracker.admit(limits.max_connections, peer.ip()) {
            Admit::Open(c) => c,
            Admit::Full => {
                closed(&http, "refused_at_cap", Some(peer));
                drop(stream);
                continue;
            }
        };
        tasks.spawn(serve_conn(
            stream,
            peer,
            conn,
            tracker.clone(),
            router.clone(),
            http.clone(),
            limits.clone(),
        ));
    }
    drop(listener);
    tracker.shutdown();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Counts (and, but for idle timeouts, which are routine, logs) a
/// connection the agent closed.
fn closed(http: &Http, reason: &'static str, peer: Option<SocketAddr>) {
    http.shared
        .metrics
        .http_closed
        .get_or_create(&ReasonLabels { reason })
        .inc();
    let detail = match reason {
        "idle_timeout" => return,
        "header_timeout" => "connection closed: request headers not complete within server.headerReadTimeout",
        "evicted" => "connection closed: at server.maxConnections, the longest-waiting connection without a request in progress made room for a new one",
        "refused_at_cap" => "connection refused: at server.maxConnections and every connection has a request in progress",
        "protocol_error" => "connection closed: not a valid HTTP/1 request (or headers over server.maxHeaderBytes)",
        _ => "connection closed",
    };
    http.rejects.note(reason, None, peer, detail);
}

/// Why the watchdog ended a connection.
enum Stop {
    Close(&'static str),
    Shutdown,
}

async fn watchdog(conn: &Conn, tracker: &Tracker, limits: &ServerConfig) -> Stop {
    let header = limits.header_read_timeout.std();
    let idle = limits.idle_timeout.std();
    loop {
        if tracker.stopping.load(Ordering::Acquire) {
            return Stop::Shutdown;
        }
        if conn.evicted.load(Ordering::Acquire) {
            return Stop::Close("evicted");
        }
        let (phase, since) = conn.get();
        let woken = conn.wake.notified();
        let (limit, why) = match phase {
            IDLE => (idle, "idle_timeout"),
            HEAD => (header, "header_timeout"),
            _ => {
                woken.await;
                continue;
            }
        };
        let deadline = tracker.epoch + Duration::from_millis(since) + limit;
        if Instant::now() >= deadline {
            return Stop::Close(why);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => {}
            _ = woken => {}
        }
    }
}

async fn serve_conn(
    stream: TcpStream,
    peer: SocketAddr,
    conn: Arc<Conn>,
    tracker: Arc<Tracker>,
    router: Router,
    http: Arc<Http>,
    limits: ServerConfig,
) {
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(Watched {
        inner: stream,
        conn: conn.clone(),
        tracker: tracker.clone(),
    });
    let tower = TowerToHyperService::new(router);
    let (c2, t2) = (conn.clone(), tracker.clone());
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        let busy = Busy::start(&c2, &t2);
        req.extensions_mut().insert(Peer(peer));
        let fut = hyper::service::Service::call(&tower, req);
        async move {
            let r = fut.await;
            drop(busy);
            r
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .keep_alive(true)
        // hyper panics below 8192; the config refuses less, this keeps a
        // config built in code from reaching that panic.
        .max_buf_size(limits.max_header_bytes.max(8192))
        // The watchdog enforces the header and idle timeouts separately;
        // hyper's one timer would close idle keep-alive connections at the
        // header timeout.
        .header_read_timeout(None::<Duration>);
    let served = builder.serve_connection(io, svc);
    tokio::pin!(served);
    let mut draining = false;
    loop {
        tokio::select! {
            r = served.as_mut() => {
                if let Err(e) = r {
                    if e.is_parse() || e.is_parse_too_large() {
                        closed(&http, "protocol_error", Some(peer));
                    }
                }
                break;
            }
            why = watchdog(&conn, &tracker, &limits), if !draining => match why {
                Stop::Close(reason) => {
                    closed(&http, reason, Some(peer));
                    break;
                }
                Stop::Shutdown if conn.get().0 == BUSY => {
                    served.as_mut().graceful_shutdown();
                    draining = true;
                }
                Stop::Shutdown => break,
            },
        }
    }
    tracker.remove(conn.id);
}

/// Marks a connection busy while a request is being handled.
struct Busy {
    conn: Arc<Conn>,
    tracker: Arc<Tracker>,
}

impl Busy {
    fn start(conn: &Arc<Conn>, tracker: &Arc<Tracker>) -> Self {
        conn.set(BUSY, tracker.now_ms());
        Self {
            conn: conn.clone(),
            tracker: tracker.clone(),
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.conn.set(IDLE, self.tracker.now_ms());
    }
}

/// The socket, noting when an idle connection receives the first byte of
/// a request (which starts the header timeout).
struct Watched {
    inner: TcpStream,
    conn: Arc<Conn>,
    tracker: Arc<Tracker>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before && self.conn.get().0 == IDLE {
            self.conn.set(HEAD, self.tracker.now_ms());
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(t: &Tracker, max: usize) -> Arc<Conn> {
        open_from(t, max, [127, 0, 0, 1])
    }

    fn open_from(t: &Tracker, max: usize, ip: [u8; 4]) -> Arc<Conn> {
        match t.admit(max, IpAddr::from(ip)) {
            Admit::Open(c) => c,
            Admit::Full => panic!("refused"),
        }
    }

    #[test]
    fn at_the_cap_the_longest_waiting_connection_without_a_request_makes_room() {
        let t = Tracker::new(Default::default());
        let a = open(&t, 3);
        let b = open(&t, 3);
        let c = open(&t, 3);
        // a is busy; b began sending headers after c was opened.
        a.set(BUSY, 0);
        b.set(HEAD, 10);
        c.set(IDLE, 5);
        let d = open(&t, 3);
        assert!(
            c.evicted.load(Ordering::Acquire),
            "the oldest idle one goes"
        );
        assert!(!a.evicted.load(Ordering::Acquire) && !b.evicted.load(Ordering::Acquire));
        assert_eq!(t.gauge.get(), 3);
        // Then b (waiting since 10), never the busy one.
        d.set(IDLE, 20);
        let e = open(&t, 3);
        assert!(b.evicted.load(Ordering::Acquire));
        // Everything busy: the new connection is refused.
        d.set(BUSY, 30);
        e.set(BUSY, 30);
        assert!(matches!(
            t.admit(3, IpAddr::from([127, 0, 0, 1])),
            Admit::Full
        ));
        assert!(!a.evicted.load(Ordering::Acquire));
        t.remove(a.id);
        assert_eq!(t.gauge.get(), 2);
    }

    #[test]
    fn the_address_holding_the_most_connections_loses_one_first() {
        let t = Tracker::new(Default::default());
        // Alertmanager's keep-alive connection is the oldest idle one...
        let am = open_from(&t, 4, [10, 0, 0, 1]);
        am.set(IDLE, 0);
        let flood: Vec<_> = (0..3)
            .map(|i| {
                let c = open_from(&t, 4, [10, 0, 0, 66]);
                c.set(IDLE, 10 + i);
                c
            })
            .collect();
        // ...but the flooding address has three: its oldest makes room.
        let probe = open_from(&t, 4, [10, 0, 0, 2]);
        assert!(flood[0].evicted.load(Ordering::Acquire));
        assert!(!am.evicted.load(Ordering::Acquire) && !probe.evicted.load(Ordering::Acquire));
        // When the heaviest address's connections are all busy, the oldest
        // idle connection of any address goes.
        flood[1].set(BUSY, 50);
        flood[2].set(BUSY, 50);
        probe.set(IDLE, 40);
        open_from(&t, 4, [10, 0, 0, 3]);
        assert!(am.evicted.load(Ordering::Acquire));
    }
}
