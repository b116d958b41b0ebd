//! The accept layer: everything between a TCP accept and an authenticated
//! WebSocket.
//!
//! - [`serve`] is the hub's accept loop: each socket takes a [`caps::Slot`]
//!   (or gets a 503 when over `limits.max_connections` /
//!   `max_connections_per_ip`), then TLS when configured ([`tls`]), then
//!   hyper's HTTP/1.1 connection with axum's `Router` as the service.
//! - Deadlines: the TLS handshake and the first request's headers must
//!   arrive within `limits.upgrade_timeout_ms` of the accept (our own
//!   timer); later requests on a keep-alive connection get the same time
//!   from the moment the connection goes idle (hyper's
//!   `header_read_timeout`, which restarts whenever a connection waits for
//!   a request head), so idle keep-alive connections are closed too. A
//!   response being written is never cut: hyper does not read a request
//!   head then.
//! - [`upgrade`] turns a request on the WebSocket path into a WebSocket
//!   (`Origin` check, handshake), carrying the slot into the connection
//!   task, which holds it until the socket closes.

pub(crate) mod caps;
pub mod tls;
pub(crate) mod upgrade;
pub(crate) mod wire;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::refusals::{self, Refusal};
use caps::{Caps, MAX_REFUSING, Over, Slot};

/// hyper's `max_buf_size`: its read buffer (a request head that does not
/// fit gets 431; one read may overshoot by its allocation's spare
/// capacity) and how much response it buffers before writing. Bounds what
/// a slow client can make the hub buffer per connection before its
/// deadline.
const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;
/// How long a 503 refusal may take: the TLS handshake (when on), writing
/// the answer, and waiting for the client to close first.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);
/// What a refused client is told to wait before trying again, in seconds.
const RETRY_AFTER_SECS: u32 = 5;
/// Pause after an accept error that is not about one connection (EMFILE,
/// ENFILE, ENOBUFS, ENOMEM): the condition lasts, retrying at once would
/// spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// At most one log line per this interval for repeated accept errors.
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Request extension on every request: the connection's slot, carried into
/// the WebSocket task by [`upgrade`], and the client's address.
#[derive(Debug, Clone)]
pub(crate) struct Accepted {
    pub slot: Arc<Slot>,
    pub peer: SocketAddr,
}

/// What the accept loop needs.
pub(crate) struct Gateway {
    pub listener: TcpListener,
    pub app: Router,
    pub caps: Arc<Caps>,
    pub tls: Option<TlsAcceptor>,
    pub upgrade_timeout: Duration,
    pub shutdown: watch::Receiver<bool>,
}

/// Accepts connections until `shutdown` turns true; connections already
/// open are told to finish (HTTP: after the response in progress;
/// WebSockets close themselves with 1001) and are tracked by the caps.
pub(crate) async fn serve(gateway: Gateway) {
    let Gateway {
        listener,
        app,
        caps,
        tls,
        upgrade_timeout,
        mut shutdown,
    } = gateway;
    let refusing = Arc::new(AtomicUsize::new(0));
    let mut errors = AcceptErrors::default();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) if is_per_connection(&error) => continue,
            Err(error) => {
                // Out of descriptors or memory: nothing is accepted until
                // something closes, so wait instead of spinning. The
                // default connection cap keeps the hub from getting here.
                errors.log(&error, caps.open());
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let slot = match caps.try_enter(peer.ip()) {
            Ok(slot) => slot,
            Err(over) => {
                refusals::count(match over {
                    Over::Total => Refusal::ConnectionCap,
                    Over::PerIp => Refusal::ConnectionsPerIp,
                });
                refuse(tcp, over, tls.clone(), &refusing);
                continue;
            }
        };
        let accepted = Accepted {
            slot: Arc::new(slot),
            peer,
        };
        let connection = serve_connection(
            tcp,
            accepted,
            app.clone(),
            tls.clone(),
            upgrade_timeout,
            shutdown.clone(),
        );
        tokio::spawn(connection);
    }
    tracing::debug!("accept loop stopped");
}

/// Accept errors that concern one connection only (it was reset before we
/// took it): try the next one at once.
fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Logs repeated accept errors at most once per interval, with a count.
#[derive(Debug, Default)]
struct AcceptErrors {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    fn log(&mut self, error: &io::Error, open: usize) {
        let now = Instant::now();
        if self
            .last_logged
            .is_some_and(|at| now.duration_since(at) < ACCEPT_ERROR_LOG_INTERVAL)
        {
            self.unlogged += 1;
            return;
        }
        tracing::error!(
            %error,
            open_connections = open,
            repeated = self.unlogged,
            "accept failed; pausing accepts (is limits.max_connections above what the \
             file-descriptor limit allows?)"
        );
        self.last_logged = Some(now);
        self.unlogged = 0;
    }
}

/// One accepted socket: TLS, then HTTP/1.1 until it closes or becomes a
/// WebSocket (whose task then holds the slot).
async fn serve_connection(
    tcp: TcpStream,
    accepted: Accepted,
    app: Router,
    tls: Option<TlsAcceptor>,
    upgrade_timeout: Duration,
    shutdown: watch::Receiver<bool>,
) {
    let deadline = Instant::now() + upgrade_timeout;
    // Frames are small and latency matters; batching happens in the send
    // queue, not in Nagle's algorithm.
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let peer = accepted.peer;
    match tls {
        None => serve_http(tcp, accepted, app, deadline, upgrade_timeout, shutdown).await,
        Some(acceptor) => match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => {
                serve_http(stream, accepted, app, deadline, upgrade_timeout, shutdown).await;
            }
            Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
            Err(_) => {
                refusals::count(Refusal::UpgradeDeadline);
                tracing::debug!(%peer, "TLS handshake not done within the upgrade deadline");
            }
        },
    }
}

async fn serve_http<I>(
    io: I,
    accepted: Accepted,
    app: Router,
    deadline: Instant,
    upgrade_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = accepted.peer;
    // Set when hyper has read a complete request head: the first-request
    // deadline no longer applies (the response may take as long as it
    // takes; later requests fall under hyper's header timer).
    let requested = Arc::new(AtomicBool::new(false));
    let service = {
        let requested = Arc::clone(&requested);
        let router = TowerToHyperService::new(app);
        hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            requested.store(true, Ordering::Release);
            request.extensions_mut().insert(accepted.clone());
            router.call(request)
        })
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(upgrade_timeout)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES);
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    let mut first_deadline = Some(deadline);
    let mut finishing = *shutdown.borrow();
    if finishing {
        connection.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    if error.is_timeout() && !requested.load(Ordering::Acquire) {
                        refusals::count(Refusal::UpgradeDeadline);
                        tracing::debug!(%peer, "no request within the upgrade deadline");
                    } else if error.is_timeout() {
                        tracing::debug!(%peer, "idle HTTP connection closed");
                    } else {
                        tracing::debug!(%peer, %error, "HTTP connection ended with an error");
                    }
                }
                return;
            }
            () = sleep_until(first_deadline), if first_deadline.is_some() => {
                if requested.load(Ordering::Acquire) {
                    first_deadline = None;
                    continue;
                }
                // Half-open, or headers still trickling in: dropping the
                // connection closes the socket.
                refusals::count(Refusal::UpgradeDeadline);
                tracing::debug!(%peer, "no complete request within the upgrade deadline");
                return;
            }
            changed = shutdown.changed(), if !finishing => {
                finishing = true;
                if changed.is_ok() {
                    // Ends the connection after the response in progress.
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Answers a socket over a cap with a minimal 503 and closes it; at most
/// [`MAX_REFUSING`] at once, more are closed without an answer.
fn refuse(tcp: TcpStream, over: Over, tls: Option<TlsAcceptor>, refusing: &Arc<AtomicUsize>) {
    let taken = refusing.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
        (n < MAX_REFUSING).then_some(n + 1)
    });
    if taken.is_err() {
        return;
    }
    let refusing = Arc::clone(refusing);
    tokio::spawn(async move {
        let reason = match over {
            Over::Total => "the hub is at its connection limit (limits.max_connections)\n",
            Over::PerIp => {
                "too many connections from this address (limits.max_connections_per_ip)\n"
            }
        };
        let response = format!(
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: {RETRY_AFTER_SECS}\r\n\
             Connection: close\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\n\r\n{reason}",
            reason.len()
        );
        let answered = tokio::time::timeout(REFUSAL_TIMEOUT, async {
            match tls {
                None => answer_and_close(tcp, response.as_bytes()).await,
                Some(acceptor) => {
                    let stream = acceptor.accept(tcp).await?;
                    answer_and_close(stream, response.as_bytes()).await
                }
            }
        })
        .await;
        if let Ok(Err(error)) = answered {
            tracing::debug!(%error, "503 refusal not delivered");
        }
        refusing.fetch_sub(1, Ordering::AcqRel);
    });
}

/// Writes `response`, half-closes, and reads until the client closes: a
/// close with unread input would send a reset that can destroy the answer
/// before the client reads it.
async fn answer_and_close<S>(mut stream: S, response: &[u8]) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(response).await?;
    stream.flush().await?;
    stream.shutdown().await?;
    let mut discard = [0u8; 1024];
    while stream.read(&mut discard).await? > 0 {}
    Ok(())
}
