//! The connections a server accepts, bounded so that silent, refused or
//! flooding clients cannot take what others need: at most a set number at
//! once (the rest wait in the kernel's backlog), each one closed unless a
//! call on it is admitted (authenticated, on a port that asks for tokens)
//! within a set time of its accept, TLS and HTTP/2 handshakes included, so
//! that callers whose every call is refused, or who only ask for health's
//! `Check`, hold no place for longer; and closed again once it has had no
//! call open for a set time,
//! or once nothing has happened on it for that time and the longest a call
//! takes while it holds an answer-and-return call open (one whose client
//! never sends its request's end, or never takes its answer); and, with a
//! maximum age, once its calls have had their grace after the age's GOAWAY.
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
    /// From accept to the first call admitted (authenticated, where
    /// credentials are asked); a connection with none that long is closed.
    pub first_request_timeout: Duration,
    /// From the end of a connection's last call, with none open since; a
    /// connection idle that long is closed.
    pub idle_timeout: Duration,
    /// The longest a call that answers once takes (the request time-out).
    /// A connection on which such a call is open, with no stream open and
    /// no call started or ended for the idle time-out and this, is stalled,
    /// and closed.
    pub longest_call: Duration,
    /// With a maximum connection age (when the server sends GOAWAY), how
    /// long after it the calls still open get before the connection is
    /// closed under them. Its clock starts when the server takes the
    /// connection, as the server's own does: no sooner than its GOAWAY.
    pub max_age: Option<MaxAge>,
}

/// A maximum connection age, and the grace its calls get after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxAge {
    /// When the server asks the client to reconnect (GOAWAY).
    pub age: Duration,
    /// How long after that the calls still open get.
    pub grace: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 1_000,
            first_request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_hours(1),
            longest_call: Duration::from_secs(10),
            max_age: None,
        }
    }
}

/// The calls that stream, which may stay open with nothing said for as long
/// as their client likes: health's `Watch` and reflection's.
const STREAMING: [&str; 3] = [
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

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
/// deadline passes without a call admitted, or its idle deadline with no
/// call open; holds its place under the limit until dropped.
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
    /// When the server first read or wrote it: where its age counts from.
    served: Option<Instant>,
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    fn new(
        stream: Stream,
        accepted: Instant,
        limits: ConnectionLimits,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        let mut first_look = limits.first_request_timeout.min(limits.idle_timeout / 4);
        if let Some(max) = limits.max_age {
            first_look = first_look.min(max.age + max.grace);
        }
        Self {
            stream,
            activity: Arc::new(Activity::since(accepted)),
            limits,
            timer: Box::pin(tokio::time::sleep_until(accepted + first_look)),
            yielded: false,
            served: None,
            _permit: permit,
        }
    }

    /// Ready with an error once the connection is to be closed: silent past
    /// its first-request time-out, idle past its idle time-out, stalled, or
    /// past its age and grace.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let served = *self.served.get_or_insert_with(Instant::now);
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            // Looked at again at least every quarter of the idle time-out:
            // a connection is closed at most that late. (Not more often
            // than every millisecond, however short the time-out.)
            let next = now + (self.limits.idle_timeout / 4).max(Duration::from_millis(1));
            match self.activity.deadline(&self.limits, served) {
                Some((deadline, why)) if deadline <= now => {
                    let why = why.said(&self.limits);
                    return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, why));
                }
                Some((deadline, _)) => self.timer.as_mut().reset(deadline.min(next)),
                None => self.timer.as_mut().reset(next),
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

/// What a connection's calls have done: whether one was admitted, how many
/// are open (and how many of those stream), and when the last one started
/// or ended.
#[derive(Debug)]
struct Activity {
    accepted: Instant,
    admitted: AtomicBool,
    open: AtomicUsize,
    streams: AtomicUsize,
    /// When the last call started or ended, in nanoseconds since the accept.
    last_moved: AtomicU64,
}

/// Why a connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    Silent,
    Idle,
    Stalled,
    Aged,
}

impl Activity {
    fn since(accepted: Instant) -> Self {
        Self {
            accepted,
            admitted: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            streams: AtomicUsize::new(0),
            last_moved: AtomicU64::new(0),
        }
    }

    /// Counts a call open until the guard it returns is dropped; a stream
    /// if `streaming`.
    fn open(self: &Arc<Self>, streaming: bool) -> CallOpen {
        self.moved();
        if streaming {
            self.streams.fetch_add(1, Ordering::AcqRel);
        }
        self.open.fetch_add(1, Ordering::AcqRel);
        CallOpen {
            activity: self.clone(),
            streaming,
        }
    }

    /// Notes that a call started or ended now.
    fn moved(&self) {
        let since_accept = self.accepted.elapsed().as_nanos();
        self.last_moved.store(
            u64::try_from(since_accept).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// When the connection, first served at `served`, is to be closed as
    /// things stand, and why; none while a stream is open (and no maximum
    /// age is set).
    fn deadline(&self, limits: &ConnectionLimits, served: Instant) -> Option<(Instant, Why)> {
        let aged = limits
            .max_age
            .map(|max| (served + max.age + max.grace, Why::Aged));
        match (self.calls(limits), aged) {
            (Some(calls), Some(aged)) => Some(if calls.0 <= aged.0 { calls } else { aged }),
            (calls, aged) => calls.or(aged),
        }
    }

    /// When the connection's calls, or lack of them, close it.
    fn calls(&self, limits: &ConnectionLimits) -> Option<(Instant, Why)> {
        // The time is written before the counts fall: read after them.
        let open = self.open.load(Ordering::Acquire);
        let moved =
            || self.accepted + Duration::from_nanos(self.last_moved.load(Ordering::Relaxed));
        if !self.admitted.load(Ordering::Relaxed) {
            let silent = self.accepted + limits.first_request_timeout;
            // A call that answers once, open (a health `Check` without a
            // token), is not cut short: it gets as long as a call takes. A
            // stream, open as long as its client likes, gets no more.
            let end = if open > self.streams.load(Ordering::Acquire) {
                silent.max(moved() + limits.longest_call)
            } else {
                silent
            };
            return Some((end, Why::Silent));
        }
        if self.streams.load(Ordering::Acquire) > 0 {
            return None;
        }
        let moved = moved();
        Some(if open > 0 {
            (
                moved + limits.idle_timeout + limits.longest_call,
                Why::Stalled,
            )
        } else {
            (moved + limits.idle_timeout, Why::Idle)
        })
    }
}

impl Why {
    /// Why, as the log says.
    fn said(self, limits: &ConnectionLimits) -> String {
        match self {
            Self::Silent => format!(
                "no call admitted within the first-request time-out ({:?})",
                limits.first_request_timeout
            ),
            Self::Idle => format!(
                "no call open for the idle time-out ({:?})",
                limits.idle_timeout
            ),
            Self::Stalled => format!(
                "a call open, and none started or ended, for the idle time-out ({:?}) and the \
                 request time-out ({:?})",
                limits.idle_timeout, limits.longest_call
            ),
            Self::Aged => match limits.max_age {
                Some(max) => format!(
                    "calls still open {:?} after the maximum connection age ({:?})",
                    max.grace, max.age
                ),
                None => "past the maximum connection age".to_owned(),
            },
        }
    }
}

/// A call open on a connection, until dropped.
struct CallOpen {
    activity: Arc<Activity>,
    streaming: bool,
}

impl Drop for CallOpen {
    fn drop(&mut self) {
        self.activity.moved();
        if self.streaming {
            self.activity.streams.fetch_sub(1, Ordering::AcqRel);
        }
        self.activity.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Admits the connection `extensions`' request came on: a caller that
/// authenticated. Until one is, it is closed at its first-request time-out
/// (a call that answers once, open then, finishing first).
pub(crate) fn admit(extensions: &http::Extensions) {
    if let Some(info) = ConnectionInfo::of(extensions) {
        info.activity.admitted.store(true, Ordering::Relaxed);
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
/// reply's body is done or dropped: a connection with a call open is not
/// idle. Whether a call admits its connection is left to authentication
/// ([`admit`]), unless every call does.
#[derive(Debug, Clone)]
pub(crate) struct CountCalls<S> {
    inner: S,
    admits: bool,
}

impl<S> CountCalls<S> {
    /// Counting calls on a port that authenticates them.
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            admits: false,
        }
    }

    /// Counting calls on a port that asks for no credentials, each of which
    /// admits its connection.
    pub(crate) fn admitting(inner: S) -> Self {
        Self {
            inner,
            admits: true,
        }
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
        let streaming = STREAMING.contains(&request.uri().path());
        if self.admits {
            admit(request.extensions());
        }
        let open =
            ConnectionInfo::of(request.extensions()).map(|info| info.activity.open(streaming));
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
