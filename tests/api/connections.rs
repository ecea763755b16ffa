//! Silent clients: connections that never speak are closed after the
//! first-request time-out, those that stop speaking after the idle time-out,
//! the number held at once is capped below the file limit, and a
//! well-behaved client is served through a flood of them. And a silent
//! allocator: the writer leaves a connection it stopped answering on.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use nix::sys::signal::{Signal, kill};
use numbering::{
    access::bearer::BearerToken,
    clock::SystemClock,
    db::Backend,
    invoices::allocator_client::{AllocatorEndpoint, Keepalive},
    proto::{
        CreateInvoiceRequest, invoice_writer_client::InvoiceWriterClient,
        number_allocator_client::NumberAllocatorClient,
    },
    server::ServerSettings,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::Notify,
    time::Instant,
};
use tonic::{
    Code,
    transport::{Channel, Endpoint, Uri},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use uuid::Uuid;

use crate::helpers::{
    Link, PATIENCE, TcpProxy, TestDb, allocate, allocator_client_to, create, invoice_request,
    spawn_allocator, spawn_allocator_serving, spawn_writer, spawn_writer_on, start, test_settings,
    writer_binary,
};

/// Silent connections opened before the well-behaved client.
const SILENT: usize = 300;

/// 300 connections that never send a byte, against an allocator whose file
/// limit (128) is below their number: the allocator holds at most 32 at once,
/// closes each after the 1 s first-request time-out, never runs out of file
/// descriptors, and a client that calls after them all is served. A
/// connection that has sent a request is not closed for silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_and_a_flood_of_them_starves_no_one() {
    let db = TestDb::create(Backend::Sqlite).await;
    let mut command = tokio::process::Command::new("sh");
    command
        .args([
            "-c",
            r#"ulimit -n 128 && exec "$0" "$@""#,
            env!("CARGO_BIN_EXE_number-allocator"),
        ])
        .env("DATABASE_URL", &db.url)
        .args(["--max-connections", "32", "--first-request-timeout", "1s"]);
    let running = start(command).await;
    let addr = running.addr.clone();

    let mut silent = Vec::with_capacity(SILENT);
    for _ in 0..SILENT {
        silent.push(
            TcpStream::connect(&addr)
                .await
                .expect("the backlog takes it"),
        );
    }

    // A client behind them all, on a connection it opens once (counted).
    let opened = Arc::new(AtomicUsize::new(0));
    let connector = {
        let (opened, addr) = (opened.clone(), addr.clone());
        tower::service_fn(move |_: Uri| {
            let (opened, addr) = (opened.clone(), addr.clone());
            async move {
                opened.fetch_add(1, Ordering::SeqCst);
                Ok::<_, io::Error>(TokioIo::new(TcpStream::connect(addr).await?))
            }
        })
    };
    let channel = Endpoint::from_static("http://allocator")
        .connect_with_connector(connector)
        .await
        .expect("connect behind the silent ones");
    let mut client = NumberAllocatorClient::new(channel);
    let first = tokio::time::timeout(PATIENCE, client.allocate(allocate("acme", "", 1)))
        .await
        .expect("served within the patience")
        .expect("allocated");
    assert_eq!(first.into_inner().numbers[0].value, 1);

    // Every silent connection was closed by the allocator (after its HTTP/2
    // settings): end of stream or a reset.
    for mut connection in silent {
        let closed = tokio::time::timeout(PATIENCE, async {
            let mut buffer = [0u8; 256];
            while let Ok(read) = connection.read(&mut buffer).await {
                if read == 0 {
                    break;
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "a silent connection is still open after {PATIENCE:?}"
        );
    }

    // Past its first-request time-out, the client's connection still serves.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = client.allocate(allocate("acme", "", 1)).await.unwrap();
    assert_eq!(second.into_inner().numbers[0].value, 2);
    assert_eq!(
        opened.load(Ordering::SeqCst),
        1,
        "the client had to reconnect"
    );

    kill(running.pid(), Signal::SIGTERM).unwrap();
    let (status, logs) = running.wait().await;
    assert!(status.success(), "{logs:?}");
    let failed_accepts: Vec<_> = logs
        .iter()
        .filter(|line| line.contains("accepting a connection failed"))
        .collect();
    assert!(
        failed_accepts.is_empty(),
        "the allocator ran out of file descriptors: {failed_accepts:?}"
    );
}

/// The connections a channel opened, and how many it has let go of once the
/// server closed them.
#[derive(Default)]
struct Connections {
    opened: AtomicUsize,
    closed: AtomicUsize,
    closing: Notify,
}

impl Connections {
    /// A channel to `addr` whose connections are counted here.
    async fn channel(self: &Arc<Self>, addr: &str) -> Channel {
        let (connections, addr) = (self.clone(), addr.to_owned());
        let connector = tower::service_fn(move |_: Uri| {
            let (connections, addr) = (connections.clone(), addr.clone());
            async move {
                let stream = TcpStream::connect(addr).await?;
                connections.opened.fetch_add(1, Ordering::SeqCst);
                Ok::<_, io::Error>(TokioIo::new(Watched {
                    stream,
                    connections,
                    ended: false,
                }))
            }
        });
        Endpoint::from_static("http://allocator")
            .connect_with_connector(connector)
            .await
            .expect("connect")
    }

    /// Waits until the server has closed `n` of the connections, and the
    /// channel has let go of them: its next call opens a new one.
    async fn wait_closed(&self, n: usize) {
        tokio::time::timeout(PATIENCE, async {
            loop {
                let closing = self.closing.notified();
                if self.closed.load(Ordering::SeqCst) >= n {
                    return;
                }
                closing.await;
            }
        })
        .await
        .expect("the server closes the connection");
    }
}

/// A health `Watch` on a connection of `connections` to `addr`, its first
/// status (SERVING) read; the client, for more calls on the connection.
async fn watch_health(
    connections: &Arc<Connections>,
    addr: &str,
) -> (
    HealthClient<Channel>,
    tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
) {
    let mut health = HealthClient::new(connections.channel(addr).await);
    let mut watch = health
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().expect("a first status");
    assert_eq!(first.status(), ServingStatus::Serving);
    (health, watch)
}

/// Stops `running` with SIGTERM; it must exit cleanly.
async fn stop(running: crate::helpers::Running) {
    kill(running.pid(), Signal::SIGTERM).unwrap();
    let (status, logs) = running.wait().await;
    assert!(status.success(), "{logs:?}");
}

/// A connection that counts itself closed when its peer has closed it and
/// the channel lets go of it.
struct Watched {
    stream: TcpStream,
    connections: Arc<Connections>,
    ended: bool,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        match &read {
            Poll::Ready(Ok(())) if buf.filled().len() == before => self.ended = true,
            Poll::Ready(Err(_)) => self.ended = true,
            _ => {}
        }
        read
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if self.ended {
            self.connections.closed.fetch_add(1, Ordering::SeqCst);
            self.connections.closing.notify_waiters();
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A connection is closed once it has had no call open for the idle
/// time-out, and its client reconnects for its next call. One with a call
/// open is not, however long the call lasts: a health Watch, opened before,
/// is still open after the idle one was closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_with_no_call_open_are_closed_after_the_idle_timeout() {
    let db = TestDb::create(Backend::Sqlite).await;
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_number-allocator"));
    command
        .env("DATABASE_URL", &db.url)
        .args(["--idle-timeout", "1s"]);
    let running = start(command).await;

    let watching = Arc::new(Connections::default());
    let (health, watch) = watch_health(&watching, &running.addr).await;

    let calling = Arc::new(Connections::default());
    let mut client = NumberAllocatorClient::new(calling.channel(&running.addr).await);
    let first = client.allocate(allocate("acme", "", 1)).await.unwrap();
    assert_eq!(first.into_inner().numbers[0].value, 1);
    let answered = Instant::now();
    calling.wait_closed(1).await;
    // Not before the idle time-out, and not much after: looked at every
    // quarter of it, not at the first-request time-out's 10 s.
    let idle = answered.elapsed();
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(5),
        "closed after {idle:?} idle"
    );
    // tonic reports the lost connection to the next call (CANCELLED), and
    // reconnects for the one after; a retry is served.
    let second = match client.allocate(allocate("acme", "", 1)).await {
        Err(lost) if lost.code() == Code::Cancelled => {
            client.allocate(allocate("acme", "", 1)).await
        }
        answered => answered,
    };
    assert_eq!(second.unwrap().into_inner().numbers[0].value, 2);
    assert_eq!(
        calling.opened.load(Ordering::SeqCst),
        2,
        "no new connection"
    );

    assert_eq!(
        watching.closed.load(Ordering::SeqCst),
        0,
        "a connection with a call open was closed"
    );
    drop((watch, health));
    stop(running).await;
}

/// A call whose request never ends (its headers sent, never its body) holds
/// its connection no longer than the idle time-out and the request time-out
/// with nothing else happening on it, and is then closed under it; a health
/// `Watch` opened before, as quiet all along, keeps its connection: a
/// stream may stay open as long as its client likes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_request_never_ends_does_not_hold_its_connection() {
    let db = TestDb::create(Backend::Sqlite).await;
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_number-allocator"));
    command
        .env("DATABASE_URL", &db.url)
        .args(["--idle-timeout", "1s", "--request-timeout", "1s"]);
    let running = start(command).await;

    let watching = Arc::new(Connections::default());
    let (mut health, watch) = watch_health(&watching, &running.addr).await;

    let tcp = TcpStream::connect(&running.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = tonic::codegen::http::Request::post(format!(
        "http://{}/grpc.health.v1.Health/Check",
        running.addr
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let sent = Instant::now();
    // Open: the request's end is never sent.
    let (_response, _body) = client.send_request(request, false).unwrap();
    tokio::time::timeout(PATIENCE, connection)
        .await
        .expect("the server closes the connection")
        .unwrap()
        .ok();
    // Not before the idle and request time-outs, and not much after (looked
    // at every quarter of the idle time-out).
    let held = sent.elapsed();
    assert!(
        held >= Duration::from_millis(1900) && held < Duration::from_secs(6),
        "closed after {held:?}"
    );

    // The Watch's connection, quiet since before, is still the one open.
    let checked = health.check(HealthCheckRequest::default()).await.unwrap();
    assert_eq!(checked.into_inner().status(), ServingStatus::Serving);
    assert_eq!(watching.opened.load(Ordering::SeqCst), 1, "reconnected");
    assert_eq!(watching.closed.load(Ordering::SeqCst), 0);
    drop((watch, health));
    stop(running).await;
}

/// With a maximum connection age, a connection's calls get the shutdown
/// grace after its GOAWAY; a stream still open then (a health `Watch`) is
/// ended with its connection, which the client replaces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_age_and_grace_a_connection_is_closed_under_its_streams() {
    let db = TestDb::create(Backend::Sqlite).await;
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_number-allocator"));
    command.env("DATABASE_URL", &db.url).args([
        "--max-connection-age",
        "1s",
        "--shutdown-grace",
        "1s",
    ]);
    let running = start(command).await;

    let watching = Arc::new(Connections::default());
    let opened = Instant::now();
    let (health, mut watch) = watch_health(&watching, &running.addr).await;
    let ended = tokio::time::timeout(PATIENCE, watch.message())
        .await
        .expect("the stream is ended with its connection");
    assert!(!matches!(ended, Ok(Some(_))), "{ended:?}");
    let lasted = opened.elapsed();
    assert!(
        lasted >= Duration::from_millis(1900) && lasted < Duration::from_secs(6),
        "ended after {lasted:?}"
    );
    watching.wait_closed(1).await;
    drop((watch, health));
    stop(running).await;
}

/// With a maximum connection age, the allocator asks each client to
/// reconnect (GOAWAY) once its connection is that old. The writer, calling
/// it without pause, opens new connections as ages pass, and not one
/// `CreateInvoice` fails: a call caught by a rotation before it reached the
/// allocator is retried with its request id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_rides_the_allocators_connection_rotation_without_a_failure() {
    const CALLERS: usize = 8;
    const CONNECTIONS: usize = 4;
    let settings = ServerSettings {
        max_connection_age: Some(Duration::from_millis(300)),
        ..test_settings()
    };
    let allocator = spawn_allocator_serving(Backend::Sqlite, settings).await;
    // Between the writer and the allocator: counts the writer's connections.
    let proxy = TcpProxy::start(allocator.server.addr).await;
    let writer = spawn_writer(Backend::Sqlite, &proxy.url(), 5).await;

    let (stop, stopping) = tokio::sync::watch::channel(false);
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let mut client = writer.client.clone();
            let stopping = stopping.clone();
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                while !*stopping.borrow() {
                    let request = CreateInvoiceRequest {
                        request_id: Uuid::now_v7().to_string(),
                        ..invoice_request("acme")
                    };
                    outcomes.push(client.create_invoice(request).await);
                }
                outcomes
            })
        })
        .collect();

    let mut connections = proxy.accepted();
    let rotated = tokio::time::timeout(PATIENCE, connections.wait_for(|n| *n >= CONNECTIONS))
        .await
        .is_ok();
    stop.send_replace(true);
    let mut numbers = Vec::new();
    for caller in callers {
        for outcome in caller.await.unwrap() {
            let invoice = outcome
                .expect("no call fails while the allocator rotates connections")
                .into_inner()
                .invoice
                .unwrap();
            numbers.push(invoice.number);
        }
    }
    assert!(
        rotated,
        "the writer opened {} connections to the allocator in {PATIENCE:?}, not {CONNECTIONS}",
        *connections.borrow()
    );
    let count = numbers.len();
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers.len(), count, "a number was given to two invoices");
    assert!(count > CALLERS, "only {count} invoices were created");
}

/// An allocator gone silent without closing its connection (its node lost,
/// the network cut in between) is found out by the writer's HTTP/2 pings:
/// the connection is closed once a ping goes unanswered, the call waiting on
/// it is retried on a new one, and the invoice is created, each number once.
/// Without the pings the call would wait on the dead connection until its
/// retry budget ran out, and so would every call after it, until the
/// operating system gave up on the connection many minutes later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_leaves_a_connection_its_allocator_went_silent_on() {
    let allocator = spawn_allocator(Backend::Sqlite).await;
    let proxy = TcpProxy::start(allocator.server.addr).await;
    let endpoint = AllocatorEndpoint {
        url: proxy.url(),
        connect_timeout: Duration::from_secs(1),
        keepalive: Keepalive {
            interval: Duration::from_millis(200),
            timeout: Duration::from_millis(200),
        },
        token: BearerToken::none(),
        tls: None,
    };
    let db = TestDb::create(Backend::Sqlite).await;
    let store = db.invoice_store().await;
    let mut writer = spawn_writer_on(
        db,
        store,
        allocator_client_to(&endpoint),
        3,
        Arc::new(SystemClock),
        test_settings(),
    )
    .await;
    let first = create(&mut writer.client, "acme").await;
    let open = *proxy.accepted().borrow();
    proxy.set(Link::FrozenFirst(open));

    // Created on a new connection once the silent one is closed.
    let second = create(&mut writer.client, "acme").await;
    assert!(
        *proxy.accepted().borrow() > open,
        "no new connection was opened"
    );
    assert_eq!(second.number, first.number + 1);
}

/// With its default settings, a writer binary finds a connection its
/// allocator went silent on dead within its retry budget: the call waiting
/// on it is retried on a new connection, and the invoice is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_silent_allocator_is_left_within_the_retry_budget() {
    let allocator = spawn_allocator(Backend::Sqlite).await;
    let proxy = TcpProxy::start(allocator.server.addr).await;
    let db = TestDb::create(Backend::Sqlite).await;
    let writer = start(writer_binary(&db.url, &proxy.url())).await;
    let mut client = InvoiceWriterClient::new(writer.ready("").await);
    let first = create(&mut client, "acme").await;
    let open = *proxy.accepted().borrow();
    proxy.set(Link::FrozenFirst(open));

    let second = create(&mut client, "acme").await;
    assert!(
        *proxy.accepted().borrow() > open,
        "no new connection was opened"
    );
    assert_eq!(second.number, first.number + 1);
}

/// Pings that would find a silent allocator dead only after the retry
/// budget are warned of at start, naming the settings to shorten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_slower_than_the_retry_budget_are_warned_of() {
    let db = TestDb::create(Backend::Sqlite).await;
    let mut command = writer_binary(&db.url, "http://127.0.0.1:1");
    command.args(["--allocator-keepalive-interval", "10s"]);
    let mut writer = start(command).await;
    let warned = writer
        .wait_for_event(|event| {
            event["message"]
                .as_str()
                .is_some_and(|m| m.contains("found dead only after the retry budget"))
        })
        .await;
    assert_eq!(warned["level"], "WARN", "{warned}");
    assert_eq!(warned["allocator_keepalive_interval"], "10s", "{warned}");
    assert_eq!(warned["allocator_retry_budget"], "5s", "{warned}");
}

/// With tokens asked, a connection whose every call is refused (an
/// `Allocate` without a token, health's `Watch` without one) is closed at
/// the first-request time-out as a silent one is, not after the hour's idle
/// time-out: callers without a token cannot hold every place under
/// `--max-connections` from one that has one. Health's `Check` answers
/// without a token. A connection admitted by a token, and a `Watch` on the
/// health-only listener (which asks for none), stay open past that time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_callers_hold_no_connection_past_the_first_request_time_out() {
    let db = TestDb::create(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    let granted = r#"[[token]]
name = "billing"
secret = "billing-s3cret"
tenants = ["acme"]
"#;
    std::fs::write(&tokens, granted).unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_number-allocator"));
    command
        .env("DATABASE_URL", &db.url)
        .arg("--tokens-file")
        .arg(&tokens)
        .args([
            "--max-connections",
            "3",
            "--first-request-timeout",
            "1s",
            "--health-listen",
            "127.0.0.1:0",
        ]);
    let mut running = start(command).await;
    let health_addr = running.health_addr().await;
    let probing = Arc::new(Connections::default());
    let (mut probe, watch) = watch_health(&probing, &health_addr).await;
    let token = BearerToken::fixed("billing-s3cret").unwrap();
    let admitted = Arc::new(Connections::default());
    let mut client =
        NumberAllocatorClient::with_interceptor(admitted.channel(&running.addr).await, token);
    let first = client.allocate(allocate("acme", "", 1)).await.unwrap();
    assert_eq!(first.into_inner().numbers[0].value, 1);

    let refused = Arc::new(Connections::default());
    let mut no_token = NumberAllocatorClient::new(refused.channel(&running.addr).await);
    let status = no_token
        .allocate(allocate("acme", "", 1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let mut health = HealthClient::new(refused.channel(&running.addr).await);
    let probed = health.check(HealthCheckRequest::default()).await.unwrap();
    assert_eq!(probed.into_inner().status(), ServingStatus::Serving);
    // Answered as gRPC clients that check health themselves take for
    // health checking off.
    let status = health
        .watch(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    // The two places they held, freed at the first-request time-out.
    refused.wait_closed(2).await;

    // Another caller with a token gets one of them.
    let channel = Endpoint::from_shared(format!("http://{}", running.addr))
        .unwrap()
        .connect_lazy();
    let token = BearerToken::fixed("billing-s3cret").unwrap();
    let mut other = NumberAllocatorClient::with_interceptor(channel, token);
    let answer = tokio::time::timeout(PATIENCE, other.allocate(allocate("acme", "", 1)))
        .await
        .expect("the caller with a token waited behind refused ones")
        .unwrap();
    assert_eq!(answer.into_inner().numbers[0].value, 2);
    // Older than the refused ones, the admitted connection and the Watch
    // are the ones first opened, still serving.
    let third = client.allocate(allocate("acme", "", 1)).await.unwrap();
    assert_eq!(third.into_inner().numbers[0].value, 3);
    let checked = probe.check(HealthCheckRequest::default()).await.unwrap();
    assert_eq!(checked.into_inner().status(), ServingStatus::Serving);
    for (connections, what) in [(&admitted, "admitted"), (&probing, "watching")] {
        assert_eq!(connections.opened.load(Ordering::SeqCst), 1, "{what}");
        assert_eq!(connections.closed.load(Ordering::SeqCst), 0, "{what}");
    }
    drop(watch);
    stop(running).await;
}

/// The health-only listener has connections of its own: with clients
/// holding every one of the gRPC port's `--max-connections`, a probe there
/// answers, where one on the gRPC port waits in the kernel's backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_are_answered_while_clients_hold_every_connection() {
    let db = TestDb::create(Backend::Sqlite).await;
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_number-allocator"));
    command.env("DATABASE_URL", &db.url).args([
        "--max-connections",
        "1",
        "--first-request-timeout",
        "1h",
        "--health-listen",
        "127.0.0.1:0",
    ]);
    let mut running = start(command).await;
    let health_addr = running.health_addr().await;

    // A silent client holds the one connection: accepted once the
    // allocator has sent it its HTTP/2 settings.
    let mut silent = TcpStream::connect(&running.addr).await.unwrap();
    let mut settings = [0u8; 64];
    let read = tokio::time::timeout(PATIENCE, silent.read(&mut settings))
        .await
        .expect("the silent connection was never accepted")
        .unwrap();
    assert!(read > 0, "the silent connection was closed");

    let check = |addr: String| async move {
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
    };
    let on_grpc_port =
        tokio::time::timeout(Duration::from_millis(500), check(running.addr.clone())).await;
    assert!(
        on_grpc_port.is_err(),
        "the gRPC port took a second connection past --max-connections 1: {on_grpc_port:?}"
    );
    let probed = tokio::time::timeout(PATIENCE, check(health_addr))
        .await
        .expect("the probe waited behind the gRPC port's connections")
        .expect("the probe was answered");
    assert_eq!(probed.into_inner().status, ServingStatus::Serving as i32);
    drop(silent);
}
