//! TLS on both services and on the writer's channel to the allocator:
//! certificates and keys read from PEM files and read again when they change,
//! each new connection using the files as they were last read whole and valid.
//! Always the ring provider and ALPN `h2`.

mod client;
mod server;

use std::sync::Arc;

use rustls::{
    RootCertStore,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

pub use client::{ClientTls, ClientTlsFiles, TlsConnector};
pub use server::{ServerTls, ServerTlsFiles};

/// The protocol both ends speak over TLS.
const ALPN_H2: &[u8] = b"h2";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate of a PEM file, at least one. The error never quotes
/// the file: the parser's would quote a malformed line, which may be a
/// private key's (a key and certificate in one file, its line breaks
/// escaped).
fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| format!("{what}: not valid PEM (a section is malformed or unfinished)"))?;
    if certs.is_empty() {
        return Err(format!("{what}: no PEM certificate in it"));
    }
    Ok(certs)
}

/// The private key of a PEM file. The error never quotes the file.
fn private_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|_| format!("{what}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it"))
}

/// The certificates of a CA file as trust roots.
fn roots(pem: &[u8], what: &str) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(pem, what)? {
        roots
            .add(cert)
            .map_err(|error| format!("{what}: {error}"))?;
    }
    Ok(Arc::new(roots))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key whose line breaks were escaped, in front of a certificate: the
    /// file is refused without a byte of the key in the message.
    #[test]
    fn a_malformed_certificate_file_is_refused_without_quoting_it() {
        let key = "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\\n-----END PRIVATE KEY-----\\n";
        for pem in [
            format!("{key}\n-----BEGIN CERTIFICATE-----\nMIIB\n"),
            format!("-----BEGIN CERTIFICATE-----\n{key}\n"),
        ] {
            let error = certificates(pem.as_bytes(), "--tls-cert").unwrap_err();
            assert!(error.starts_with("--tls-cert: "), "{error}");
            assert!(
                !error.contains("MIIEvQ") && !error.contains("45, 45"),
                "{error}"
            );
        }
    }
}
