//! Certificates generated for a test: a CA, and server or client
//! certificates it signs, written as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A certificate authority of its own.
pub struct TestCa(CertifiedIssuer<'static, KeyPair>);

/// A certificate and its key, as PEM.
pub struct Issued {
    pub cert: String,
    pub key: String,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Self(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    pub fn pem(&self) -> String {
        self.0.pem()
    }

    /// A server certificate for `localhost`.
    pub fn server(&self) -> Issued {
        self.issue(
            "localhost",
            vec!["localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate whose subject is `CN=<name>`.
    pub fn client(&self, name: &str) -> Issued {
        self.issue(name, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, name: &str, names: Vec<String>, usage: ExtendedKeyUsagePurpose) -> Issued {
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.0).unwrap();
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

impl Issued {
    /// Writes `<stem>.crt` and `<stem>.key` in `dir`, each replaced by a
    /// rename, as Kubernetes updates a mounted secret; their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        (
            replace(dir, &format!("{stem}.crt"), &self.cert),
            replace(dir, &format!("{stem}.key"), &self.key),
        )
    }
}

/// Writes `text` to `dir/name` through a rename; its path.
pub fn replace(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    let staged = dir.join(format!(".{name}.new"));
    std::fs::write(&staged, text).unwrap();
    std::fs::rename(&staged, &path).unwrap();
    path
}
