//! The servers' side: a TLS listener whose certificate, key and client CA are
//! read again when their files change.

use std::{path::PathBuf, sync::Arc, time::Duration};

use rustls::{ServerConfig, server::WebPkiClientVerifier};
use tokio_rustls::TlsAcceptor;

use crate::{
    access::reload::Reloading,
    tls::{ALPN_H2, certificates, private_key, provider, roots},
};

/// Where a server's certificate, key and client CA are.
#[derive(Debug, Clone)]
pub struct ServerTlsFiles {
    /// The certificate chain, PEM, the server's own first.
    pub cert: PathBuf,
    /// Its private key, PEM.
    pub key: PathBuf,
    /// With it, clients need a certificate signed by this CA (PEM).
    pub client_ca: Option<PathBuf>,
}

/// A server's TLS settings as last read.
#[derive(Debug, Clone)]
pub struct ServerTls {
    config: Reloading<Arc<ServerConfig>>,
    mutual: bool,
}

impl ServerTls {
    /// Reads the files now, then every `interval` for as long as this lives.
    ///
    /// # Errors
    /// A file cannot be read or holds no valid certificate or key, or the key
    /// does not belong to the certificate.
    pub fn watch(files: &ServerTlsFiles, interval: Duration) -> Result<Self, String> {
        let mutual = files.client_ca.is_some();
        let mut paths = vec![files.cert.clone(), files.key.clone()];
        paths.extend(files.client_ca.clone());
        let config = Reloading::watch(
            "TLS files",
            paths,
            interval,
            Box::new(move |pems| config(pems, mutual).map(Arc::new)),
        )?;
        Ok(Self { config, mutual })
    }

    /// Whether clients need a certificate.
    #[must_use]
    pub fn is_mutual(&self) -> bool {
        self.mutual
    }

    /// An acceptor with the files as they are now.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.get().as_ref().clone())
    }
}

/// A server configuration from the PEM of a certificate chain, its key and,
/// if `mutual`, the client CA.
fn config(pems: &[Vec<u8>], mutual: bool) -> Result<ServerConfig, String> {
    let certs = certificates(&pems[0], "--tls-cert")?;
    let key = private_key(&pems[1], "--tls-key")?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?;
    let builder = if mutual {
        let verifier = WebPkiClientVerifier::builder_with_provider(
            roots(&pems[2], "--tls-client-ca")?,
            provider,
        )
        .build()
        .map_err(|error| format!("--tls-client-ca: {error}"))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|error| format!("--tls-cert and --tls-key: {error}"))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}
