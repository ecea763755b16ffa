//! The writer's side: a connector that opens TLS connections to the
//! allocator with the CA, certificate and key as their files last read.

use std::{
    future::Future,
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, pki_types::ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::codegen::http::Uri;

use crate::{
    access::reload::Reloading,
    tls::{ALPN_H2, certificates, private_key, provider, roots},
};

/// Where the writer's trust root and client certificate are.
#[derive(Debug, Clone)]
pub struct ClientTlsFiles {
    /// The CA that signed the allocator's certificate, PEM.
    pub ca: PathBuf,
    /// The writer's certificate chain and key, PEM, for mutual TLS.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// A client's TLS settings as last read.
#[derive(Debug, Clone)]
pub struct ClientTls(Reloading<Arc<ClientConfig>>);

impl ClientTls {
    /// Reads the files now, then every `interval` for as long as this lives.
    ///
    /// # Errors
    /// A file cannot be read or holds no valid certificate or key, or the key
    /// does not belong to the certificate.
    pub fn watch(files: &ClientTlsFiles, interval: Duration) -> Result<Self, String> {
        let mut paths = vec![files.ca.clone()];
        if let Some((cert, key)) = &files.identity {
            paths.extend([cert.clone(), key.clone()]);
        }
        let config = Reloading::watch(
            "allocator TLS files",
            paths,
            interval,
            Box::new(|pems| config(pems).map(Arc::new)),
        )?;
        Ok(Self(config))
    }
}

fn config(pems: &[Vec<u8>]) -> Result<ClientConfig, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_root_certificates(roots(&pems[0], "--allocator-tls-ca")?);
    let mut config = match pems.get(1..3) {
        Some([cert, key]) => builder
            .with_client_auth_cert(
                certificates(cert, "--allocator-tls-cert")?,
                private_key(key, "--allocator-tls-key")?,
            )
            .map_err(|error| format!("--allocator-tls-cert and --allocator-tls-key: {error}"))?,
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// Opens a TCP connection to the URI's host and port and speaks TLS over it,
/// checking the server's certificate against the URI's host name.
#[derive(Debug, Clone)]
pub struct TlsConnector(pub ClientTls);

type Connecting =
    Pin<Box<dyn Future<Output = Result<TokioIo<TlsStream<TcpStream>>, std::io::Error>> + Send>>;

impl tower::Service<Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.0.0.get().as_ref().clone();
        Box::pin(async move {
            let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
            let host = uri.host().ok_or_else(|| invalid("the URL names no host"))?;
            // An IPv6 literal comes bracketed.
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let name = ServerName::try_from(host.clone())
                .map_err(|_| invalid("the URL's host is not a DNS name or IP address"))?;
            let stream = TcpStream::connect((host.as_str(), port)).await?;
            stream.set_nodelay(true)?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await?;
            Ok(TokioIo::new(stream))
        })
    }
}
