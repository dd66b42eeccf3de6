//! Time limits of the local server, so that a slow or silent client cannot
//! hold a connection: a request's head must arrive within the header timeout
//! (counted from the connection's start or the request's first byte), its
//! body within the body timeout (counted from its head, however it trickles),
//! and a connection between requests, or stuck writing to a client that does
//! not read, is closed after the idle timeout.
//!
//! Each connection's IO ([`TimedIo`]) knows which phase the connection is in;
//! the [`guard`] middleware marks a request's start and end, and bounds its
//! body (`DeadlineBody`), answering 408 when the body was too slow.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

use crate::api::error::{ApiError, CODE_UNDEFINED};

/// Time limits of the local server (`KUIPER_*_TIMEOUT_SECS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerTimeouts {
    /// To send a request's head, from the connection's start or the
    /// request's first byte.
    pub header: Duration,
    /// To send a request's whole body, from the end of its head.
    pub body: Duration,
    /// A connection with no request in progress, or whose client does not
    /// read its answer, is closed after this long.
    pub idle: Duration,
    /// How long a graceful shutdown waits for requests in progress.
    pub shutdown: Duration,
}

/// Where a connection is.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for a request's head since then (the connection's start or
    /// the request's first byte).
    Head(Instant),
    /// A request is being handled.
    Busy,
    /// Between requests (or writing an answer) since then.
    Idle(Instant),
}

#[derive(Debug)]
struct ConnState {
    phase: Phase,
    /// The connection's task, woken when a request ends: its stream then
    /// has a deadline again.
    waker: Option<Waker>,
}

/// One connection's phase, shared by its IO and its requests (given to the
/// router as [`ConnectInfo`]).
#[derive(Debug, Clone)]
pub struct Conn(Arc<Mutex<ConnState>>);

impl Conn {
    fn new() -> Self {
        Conn(Arc::new(Mutex::new(ConnState {
            phase: Phase::Head(Instant::now()),
            waker: None,
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ConnState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes arrived: an idle connection starts a request's head.
    fn read_some(&self) {
        let mut s = self.state();
        if let Phase::Idle(_) = s.phase {
            s.phase = Phase::Head(Instant::now());
        }
    }

    /// Keeps the connection task's waker, to wake it when a request ends:
    /// hyper may not poll the stream again by itself, and the idle deadline
    /// is armed only when it does.
    fn remember(&self, waker: &Waker) {
        let mut s = self.state();
        if !s.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            s.waker = Some(waker.clone());
        }
    }

    /// The deadline in force and what it is about, or `None` while a request
    /// is handled.
    fn deadline(&self, limits: &ServerTimeouts) -> Option<(Instant, Phase)> {
        let s = self.state();
        match s.phase {
            Phase::Head(since) => Some((since + limits.header, s.phase)),
            Phase::Idle(since) => Some((since + limits.idle, s.phase)),
            Phase::Busy => None,
        }
    }

    /// An answer's bytes went out: a connection writing is idle only while
    /// its client reads nothing.
    fn wrote_some(&self) {
        let mut s = self.state();
        if let Phase::Idle(_) = s.phase {
            s.phase = Phase::Idle(Instant::now());
        }
    }

    fn begin(&self) {
        self.state().phase = Phase::Busy;
    }

    fn end(&self) {
        let waker = {
            let mut s = self.state();
            s.phase = Phase::Idle(Instant::now());
            s.waker.clone()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// A connection's stream, which ends (reading) or fails (writing) once the
/// deadline of its phase has passed.
#[derive(Debug)]
pub struct TimedIo {
    io: TcpStream,
    conn: Conn,
    limits: ServerTimeouts,
    sleep: Pin<Box<Sleep>>,
}

impl TimedIo {
    /// Polls the deadline: `Ready(phase)` once it has passed.
    fn expired(&mut self, cx: &mut Context<'_>) -> Poll<Phase> {
        let Some((deadline, phase)) = self.conn.deadline(&self.limits) else {
            return Poll::Pending;
        };
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(phase),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for TimedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.conn.remember(cx.waker());
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.conn.read_some();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.expired(cx) {
                Poll::Pending => Poll::Pending,
                // Between requests: the end of the stream, a quiet close.
                Poll::Ready(Phase::Idle(_)) => {
                    tracing::debug!("closing an idle connection");
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(_) => {
                    tracing::info!(
                        secs = this.limits.header.as_secs(),
                        "closing a connection: no complete request head in time"
                    );
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request head timed out",
                    )))
                }
            },
        }
    }
}

impl AsyncWrite for TimedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.conn.remember(cx.waker());
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Pending => match this.expired(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(_) => {
                    tracing::info!("closing a connection: the client does not read");
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "writing to the client timed out",
                    )))
                }
            },
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.conn.wrote_some();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A TCP listener whose connections are [`TimedIo`].
#[derive(Debug)]
pub struct TimedListener {
    inner: TcpListener,
    limits: ServerTimeouts,
}

impl TimedListener {
    /// Wraps `inner`.
    pub fn new(inner: TcpListener, limits: ServerTimeouts) -> Self {
        TimedListener { inner, limits }
    }
}

impl Listener for TimedListener {
    type Io = TimedIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TimedIo, SocketAddr) {
        let (io, addr) = Listener::accept(&mut self.inner).await;
        let io = TimedIo {
            io,
            conn: Conn::new(),
            limits: self.limits,
            sleep: Box::pin(tokio::time::sleep(self.limits.header)),
        };
        (io, addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl Connected<IncomingStream<'_, TimedListener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, TimedListener>) -> Self {
        stream.io().conn.clone()
    }
}

/// Marks the connection idle when the request ends, answered or dropped.
struct Busy(Conn);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// Middleware of the local server: marks the connection busy while a request
/// is handled, and answers 408 when its body did not arrive in time.
pub async fn guard(
    State(limits): State<ServerTimeouts>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    req: Request,
    next: Next,
) -> Response {
    conn.begin();
    let _busy = Busy(conn);
    if http_body::Body::is_end_stream(req.body()) {
        return next.run(req).await;
    }
    let expired = Arc::new(AtomicBool::new(false));
    let req = req.map(|body| {
        Body::new(DeadlineBody {
            inner: body,
            sleep: Box::pin(tokio::time::sleep(limits.body)),
            limit: limits.body,
            expired: expired.clone(),
        })
    });
    let resp = next.run(req).await;
    if !expired.load(Ordering::Relaxed) {
        return resp;
    }
    tracing::info!(
        secs = limits.body.as_secs(),
        "request refused: its body did not arrive in time"
    );
    let mut resp = ApiError {
        status: StatusCode::REQUEST_TIMEOUT,
        code: CODE_UNDEFINED,
        message: format!(
            "the request body did not arrive within {} s (KUIPER_BODY_TIMEOUT_SECS)",
            limits.body.as_secs()
        ),
    }
    .into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// The body did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {} s", .0.as_secs())]
struct BodyTimedOut(Duration);

/// A request body that fails once its deadline has passed, however its
/// bytes trickle (tower-http's `TimeoutBody` waits per frame, so a client
/// sending a byte now and then never trips it).
struct DeadlineBody {
    inner: Body,
    sleep: Pin<Box<Sleep>>,
    limit: Duration,
    expired: Arc<AtomicBool>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match this.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.expired.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut(this.limit)))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
