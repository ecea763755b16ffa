//! The connections a server accepts, bounded so that silent or flooding
//! clients cannot take what others need: at most a set number at once (the
//! rest wait in the kernel's backlog), and each one closed unless its first
//! request arrives within a set time of its accept, TLS and HTTP/2 handshakes
//! included.
//!
//! Writes are coalesced: a connection's first write after a flush yields to
//! the runtime once, so that the replies of calls that finished together
//! (a group commit answers all its calls at once) leave in one system call
//! rather than one each.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use rustls::pki_types::CertificateDer;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    time::{Instant, Sleep},
};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{codegen::http, transport::server::Connected};

use crate::tls::ServerTls;

/// How many connections a server holds, and how long one may stay silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// From accept to the first request; a connection silent that long is closed.
    pub first_request_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 1_000,
            first_request_timeout: Duration::from_secs(10),
        }
    }
}

/// Connections accepted (and through their TLS handshake) but not yet taken
/// by the server.
const BACKLOG: usize = 128;

/// Accepts connections on `listener`, with TLS when `tls` is set, within
/// `limits`.
pub(crate) fn incoming(
    listener: TcpListener,
    tls: Option<ServerTls>,
    limits: ConnectionLimits,
) -> ReceiverStream<io::Result<Connection>> {
    let (ready, taken) = mpsc::channel(BACKLOG);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    tokio::spawn(async move {
        loop {
            // A permit first: at the limit, connections wait in the kernel
            // instead of taking a file descriptor each.
            let permit = tokio::select! {
                () = ready.closed() => return,
                permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let (stream, peer) = tokio::select! {
                () = ready.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors, say: let some close.
                        tracing::warn!(%error, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            // No Nagle delay: a reply's trailers must not wait for the peer's
            // delayed ACK (a 40 ms stall).
            let _ = stream.set_nodelay(true);
            let deadline = Instant::now() + limits.first_request_timeout;
            let Some(tls) = &tls else {
                let connection = Connection::new(Stream::Plain(stream), deadline, permit);
                if ready.send(Ok(connection)).await.is_err() {
                    return;
                }
                continue;
            };
            let acceptor = tls.acceptor();
            let ready = ready.clone();
            tokio::spawn(async move {
                match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let stream = Stream::Tls(Box::new(stream));
                        let _ = ready
                            .send(Ok(Connection::new(stream, deadline, permit)))
                            .await;
                    }
                    Ok(Err(error)) => {
                        tracing::info!(%peer, %error, "TLS handshake failed");
                    }
                    Err(_) => {
                        tracing::info!(%peer, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    ReceiverStream::new(taken)
}

/// A TCP stream, with or without TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An accepted connection: closed by its next read once its first-request
/// deadline passes without a request; holds its place under the limit until
/// dropped.
pub struct Connection {
    stream: Stream,
    spoke: Arc<AtomicBool>,
    /// Until the first request; none after.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Whether this burst of writes has yielded once already; cleared by a
    /// flush.
    yielded: bool,
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    fn new(stream: Stream, deadline: Instant, permit: OwnedSemaphorePermit) -> Self {
        Self {
            stream,
            spoke: Arc::new(AtomicBool::new(false)),
            deadline: Some(Box::pin(tokio::time::sleep_until(deadline))),
            yielded: false,
            _permit: permit,
        }
    }

    /// Pending once at the start of each burst of writes, woken at once:
    /// the runtime first runs the tasks already waiting, whose replies then
    /// join this write.
    fn yield_before_writing(&mut self, cx: &Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// What a request knows of the connection it came on (a request extension).
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The peer's address.
    pub remote_addr: Option<SocketAddr>,
    /// The client's certificate chain, if it showed one over TLS.
    pub peer_certs: Option<Arc<Vec<CertificateDer<'static>>>>,
    spoke: Arc<AtomicBool>,
}

impl ConnectionInfo {
    /// The connection info of `request`'s connection, if it came on one.
    #[must_use]
    pub fn of(extensions: &http::Extensions) -> Option<&Self> {
        extensions.get::<Self>()
    }
}

/// The subject of the client certificate of the connection a request came
/// on, as `C=…, O=…, CN=…` in the certificate's order, if it showed one.
#[must_use]
pub fn peer_subject(extensions: &http::Extensions) -> Option<String> {
    let certs = ConnectionInfo::of(extensions)?.peer_certs.as_ref()?;
    let (_, cert) = x509_parser::parse_x509_certificate(certs.first()?.as_ref()).ok()?;
    Some(cert.subject().to_string())
}

/// Marks `request`'s connection as having sent a request, so it is no longer
/// closed for silence.
pub(crate) fn mark_spoken<B>(request: http::Request<B>) -> http::Request<B> {
    if let Some(info) = ConnectionInfo::of(request.extensions()) {
        info.spoke.store(true, Ordering::Relaxed);
    }
    request
}

impl Connected for Connection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        let (tcp, peer_certs) = match &self.stream {
            Stream::Plain(tcp) => (tcp, None),
            Stream::Tls(tls) => {
                let (tcp, session) = tls.get_ref();
                let certs = session
                    .peer_certificates()
                    .map(|certs| Arc::new(certs.to_vec()));
                (tcp, certs)
            }
        };
        ConnectionInfo {
            remote_addr: tcp.peer_addr().ok(),
            peer_certs,
            spoke: self.spoke.clone(),
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(deadline) = &mut this.deadline {
            if this.spoke.load(Ordering::Relaxed) {
                this.deadline = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no request within the first-request time-out",
                )));
            }
        }
        match &mut this.stream {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.yield_before_writing(cx));
        match &mut this.stream {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.yield_before_writing(cx));
        match &mut this.stream {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(tcp) => tcp.is_write_vectored(),
            Stream::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let flushed = match &mut this.stream {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        };
        if flushed.is_ready() {
            this.yielded = false;
        }
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use tokio::io::AsyncReadExt;

    use super::*;

    /// Writes `bytes` through `connection`; how many polls it took.
    async fn write(connection: &mut Connection, bytes: &[u8]) -> usize {
        let mut polls = 0;
        let written = poll_fn(|cx| {
            polls += 1;
            Pin::new(&mut *connection).poll_write(cx, bytes)
        })
        .await
        .unwrap();
        assert_eq!(written, bytes.len());
        polls
    }

    #[tokio::test]
    async fn each_burst_of_writes_yields_once_before_its_first_write() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let deadline = Instant::now() + Duration::from_mins(1);
        let mut connection = Connection::new(Stream::Plain(accepted), deadline, permit);
        for burst in [b"one".as_slice(), b"two"] {
            assert_eq!(
                write(&mut connection, burst).await,
                2,
                "a burst's first write"
            );
            assert_eq!(
                write(&mut connection, b"+").await,
                1,
                "a later write of the burst"
            );
            poll_fn(|cx| Pin::new(&mut connection).poll_flush(cx))
                .await
                .unwrap();
        }
        let mut received = [0u8; 8];
        peer.read_exact(&mut received).await.unwrap();
        assert_eq!(&received, b"one+two+");
    }
}
