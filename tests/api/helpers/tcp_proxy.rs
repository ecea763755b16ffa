//! A TCP proxy for fault tests: forwards every connection to a target that
//! can change (a process restarted on a new port keeps one address for its
//! clients), and can cut every connection, freeze them (accepting, never
//! forwarding) or slow them until told to pass again.

// Used by the fault suite, not by every test target.
#![allow(dead_code)]

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::watch,
    task::JoinHandle,
};

/// What the proxy does with its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Forwards both ways.
    Pass,
    /// Holds every byte: the peer seems alive but never answers.
    Frozen,
    /// Closes every connection, and each new one as it comes.
    Cut,
    /// Forwards each chunk read after this delay: a slow network.
    Slow(std::time::Duration),
    /// Holds every byte of the first this many connections accepted (those
    /// open when it is set), and passes the later ones: peers lost without
    /// a word, reachable again on a new connection.
    FrozenFirst(usize),
}

/// A proxy on 127.0.0.1, port 0; stops when dropped.
pub struct TcpProxy {
    pub addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    link: watch::Sender<Link>,
    /// Connections accepted so far.
    accepted: watch::Receiver<usize>,
    accepting: JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = Arc::new(Mutex::new(target));
        let (link, watching) = watch::channel(Link::Pass);
        let (count, accepted) = watch::channel(0);
        let accepting = tokio::spawn({
            let target = target.clone();
            async move {
                let mut index = 0;
                while let Ok((client, _)) = listener.accept().await {
                    count.send_modify(|n| *n += 1);
                    index += 1;
                    if *watching.borrow() == Link::Cut {
                        continue; // dropped: closed at once
                    }
                    let _ = client.set_nodelay(true);
                    let to = *target.lock().unwrap();
                    tokio::spawn(forward(client, index, to, watching.clone()));
                }
            }
        });
        Self {
            addr,
            target,
            link,
            accepted,
            accepting,
        }
    }

    /// A proxy to the PostgreSQL server of `url`, and the URL through it.
    pub async fn before_database(url: &str) -> (Self, String) {
        let mut url = url::Url::parse(url).unwrap();
        let target = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
        let target = tokio::net::lookup_host(target)
            .await
            .unwrap()
            .next()
            .unwrap();
        let proxy = Self::start(target).await;
        url.set_port(Some(proxy.addr.port())).unwrap();
        (proxy, url.to_string())
    }

    /// Sends new connections to `target`; open ones stay where they are.
    pub fn retarget(&self, target: SocketAddr) {
        *self.target.lock().unwrap() = target;
    }

    pub fn set(&self, link: Link) {
        self.link.send_replace(link);
    }

    /// Connections accepted so far, watched.
    pub fn accepted(&self) -> watch::Receiver<usize> {
        self.accepted.clone()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accepting.abort();
        self.link.send_replace(Link::Cut);
    }
}

/// Forwards connection `index` (the first is 1) both ways until either side
/// closes or the link is cut.
async fn forward(client: TcpStream, index: usize, target: SocketAddr, link: watch::Receiver<Link>) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        () = pump(client_read, server_write, index, link.clone()) => {}
        () = pump(server_read, client_write, index, link) => {}
    }
}

/// Copies `from` to `to` while the link passes; holds while it is frozen;
/// returns when it is cut or either side closes.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    index: usize,
    mut link: watch::Receiver<Link>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        if !passing(&mut link, index).await {
            return;
        }
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            // Reading is cancel-safe: nothing read is lost.
            changed = link.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        let Ok(read @ 1..) = read else {
            return;
        };
        let slow = match *link.borrow() {
            Link::Slow(delay) => Some(delay),
            _ => None,
        };
        if let Some(delay) = slow {
            tokio::time::sleep(delay).await;
        }
        // Frozen between the read and the write: held, then sent.
        if !passing(&mut link, index).await || to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// Waits while the link is frozen for connection `index`; whether it passes
/// (false: cut).
async fn passing(link: &mut watch::Receiver<Link>, index: usize) -> bool {
    loop {
        match *link.borrow_and_update() {
            Link::Pass | Link::Slow(_) => return true,
            Link::FrozenFirst(first) if index > first => return true,
            Link::Cut => return false,
            Link::Frozen | Link::FrozenFirst(_) => {}
        }
        if link.changed().await.is_err() {
            return false;
        }
    }
}
