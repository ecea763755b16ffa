//! The connections a server accepts, bounded so that silent or flooding
//! clients cannot take what others need: at most a set number at once (the
//! rest wait in the kernel's backlog), each one closed unless its first
//! request arrives within a set time of its accept, TLS and HTTP/2 handshakes
//! included, and closed again once it has had no call open for a set time.
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
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use rustls::pki_types::CertificateDer;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    time::{Instant, Sleep},
};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{body::Body, codegen::http, transport::server::Connected};

use crate::tls::ServerTls;

/// How many connections a server holds, and how long one may stay silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// From accept to the first request; a connection silent that long is closed.
    pub first_request_timeout: Duration,
    /// From the end of a connection's last call, with none open since; a
    /// connection idle that long is closed.
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 1_000,
            first_request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_hours(1),
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
            let accepted = Instant::now();
            let deadline = accepted + limits.first_request_timeout;
            let Some(tls) = &tls else {
                let connection = Connection::new(Stream::Plain(stream), accepted, limits, permit);
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
                            .send(Ok(Connection::new(stream, accepted, limits, permit)))
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
/// deadline passes without a request, or its idle deadline with no call
/// open; holds its place under the limit until dropped.
pub struct Connection {
    stream: Stream,
    activity: Arc<Activity>,
    limits: ConnectionLimits,
    /// When the connection is next looked at: its deadline, or a quarter of
    /// the idle time-out on, whichever comes first (nothing wakes it when a
    /// call starts or ends).
    timer: Pin<Box<Sleep>>,
    /// Whether this burst of writes has yielded once already; cleared by a
    /// flush.
    yielded: bool,
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    fn new(
        stream: Stream,
        accepted: Instant,
        limits: ConnectionLimits,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        Self {
            stream,
            activity: Arc::new(Activity::since(accepted)),
            limits,
            timer: Box::pin(tokio::time::sleep_until(
                accepted + limits.first_request_timeout.min(limits.idle_timeout / 4),
            )),
            yielded: false,
            _permit: permit,
        }
    }

    /// Ready with an error once the connection is to be closed: silent past
    /// its first-request time-out, or idle past its idle time-out.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            // Looked at again at least every quarter of the idle time-out:
            // a connection is closed at most that late. (Not more often
            // than every millisecond, however short the time-out.)
            let next = now + (self.limits.idle_timeout / 4).max(Duration::from_millis(1));
            match self.activity.deadline(&self.limits) {
                Deadline::At(deadline) if deadline <= now => {
                    return Poll::Ready(self.activity.expired(&self.limits));
                }
                Deadline::At(deadline) => self.timer.as_mut().reset(deadline.min(next)),
                Deadline::CallOpen => self.timer.as_mut().reset(next),
            }
        }
        Poll::Pending
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

/// What a connection's calls have done: whether one came, how many are open,
/// and when the last one ended.
#[derive(Debug)]
struct Activity {
    accepted: Instant,
    spoke: AtomicBool,
    open: AtomicUsize,
    /// When the last call ended, in nanoseconds since the accept.
    last_end: AtomicU64,
}

/// When a connection is to be closed, as things stand.
enum Deadline {
    At(Instant),
    /// Not while a call is open.
    CallOpen,
}

impl Activity {
    fn since(accepted: Instant) -> Self {
        Self {
            accepted,
            spoke: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            last_end: AtomicU64::new(0),
        }
    }

    /// Counts a call open until the guard it returns is dropped.
    fn open(self: &Arc<Self>) -> CallOpen {
        self.spoke.store(true, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::AcqRel);
        CallOpen(self.clone())
    }

    fn deadline(&self, limits: &ConnectionLimits) -> Deadline {
        if !self.spoke.load(Ordering::Relaxed) {
            return Deadline::At(self.accepted + limits.first_request_timeout);
        }
        // The end is written before the count falls to zero: read after it.
        if self.open.load(Ordering::Acquire) > 0 {
            return Deadline::CallOpen;
        }
        let last_end = Duration::from_nanos(self.last_end.load(Ordering::Relaxed));
        Deadline::At(self.accepted + last_end + limits.idle_timeout)
    }

    fn expired(&self, limits: &ConnectionLimits) -> io::Error {
        let why = if self.spoke.load(Ordering::Relaxed) {
            format!(
                "no call open for the idle time-out ({:?})",
                limits.idle_timeout
            )
        } else {
            format!(
                "no request within the first-request time-out ({:?})",
                limits.first_request_timeout
            )
        };
        io::Error::new(io::ErrorKind::TimedOut, why)
    }
}

/// A call open on a connection, until dropped.
struct CallOpen(Arc<Activity>);

impl Drop for CallOpen {
    fn drop(&mut self) {
        let since_accept = self.0.accepted.elapsed().as_nanos();
        self.0.last_end.store(
            u64::try_from(since_accept).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a request knows of the connection it came on (a request extension).
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The peer's address.
    pub remote_addr: Option<SocketAddr>,
    /// The client's certificate chain, if it showed one over TLS.
    pub peer_certs: Option<Arc<Vec<CertificateDer<'static>>>>,
    activity: Arc<Activity>,
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
    subject_of(peer_cert(extensions)?).map(|(subject, _)| subject)
}

/// The subject of the client certificate as [`peer_subject`] writes it, if
/// that text names it alone, for grants by subject: none of its values
/// holds a character the text joins its parts with or could be read as
/// (`,` `+` `=` `"` `\` `;` `<` `>`), and each is text. A value
/// `batch, O=Example` in one common name would otherwise be written as the
/// two parts `CN=batch, O=Example`: such a certificate gets no grant by its
/// subject.
#[must_use]
pub fn grantable_subject(extensions: &http::Extensions) -> Option<String> {
    subject_of(peer_cert(extensions)?).and_then(|(subject, alone)| alone.then_some(subject))
}

fn peer_cert(extensions: &http::Extensions) -> Option<&[u8]> {
    let certs = ConnectionInfo::of(extensions)?.peer_certs.as_ref()?;
    Some(certs.first()?.as_ref())
}

/// A certificate's subject as text, and whether that text names it alone.
fn subject_of(der: &[u8]) -> Option<(String, bool)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let alone = subject.iter_attributes().all(|attribute| {
        attribute.as_str().is_ok_and(|value| {
            !value
                .chars()
                .any(|c| matches!(c, ',' | '+' | '=' | '"' | '\\' | ';' | '<' | '>'))
        })
    });
    Some((subject.to_string(), alone))
}

/// Counts each call open on its connection, from its request until its
/// reply's body is done or dropped: a connection with a call open is
/// neither silent nor idle.
#[derive(Debug, Clone)]
pub(crate) struct CountCalls<S> {
    inner: S,
}

impl<S> CountCalls<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for CountCalls<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: http_body::Body<Data = Bytes> + Send + 'static,
    R::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let open = ConnectionInfo::of(request.extensions()).map(|info| info.activity.open());
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| match open {
                Some(open) => Body::new(Counted {
                    inner: Body::new(body),
                    _open: open,
                }),
                None => Body::new(body),
            }))
        })
    }
}

/// A reply body that keeps its call counted open until it is dropped.
struct Counted {
    inner: Body,
    _open: CallOpen,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
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
            activity: self.activity.clone(),
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
        if let Poll::Ready(expired) = this.poll_expired(cx) {
            return Poll::Ready(Err(expired));
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

    /// A client certificate whose common name holds what the subject's text
    /// joins parts with is written as another subject would be: it names
    /// no grant.
    #[test]
    fn a_subject_whose_values_hold_separators_names_no_grant() {
        let signed = |common_name: &str| {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, common_name);
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, "Example");
            let key = rcgen::KeyPair::generate().unwrap();
            params.self_signed(&key).unwrap().der().to_vec()
        };
        assert_eq!(
            subject_of(&signed("batch")),
            Some(("CN=batch, O=Example".to_owned(), true))
        );
        for hostile in [
            "batch, O=Example",
            "a+b",
            "x=y",
            "q\"uote",
            "back\\slash",
            "semi;colon",
        ] {
            let (_, alone) = subject_of(&signed(hostile)).unwrap();
            assert!(!alone, "{hostile:?} names a grant");
        }
    }

    #[tokio::test]
    async fn each_burst_of_writes_yields_once_before_its_first_write() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let limits = ConnectionLimits::default();
        let mut connection =
            Connection::new(Stream::Plain(accepted), Instant::now(), limits, permit);
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
