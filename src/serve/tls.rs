//! TLS of the client listener (`[server.tls]`): rustls, certificates reloaded on change,
//! optional device mTLS whose client certificate subject routes can read.
//!
//! ```text
//! cert_file + key_file (+ client_ca_file) ──Tls::load──▶ rustls ServerConfig (h2, http/1.1)
//! accepted TCP ──Tls::acceptor().accept (within header_read_timeout)──▶ TLS stream
//!     + TlsClient { subject, cn } of a verified client certificate ─▶ each request's extensions
//! reload (watch / SIGHUP / POST /reload) ──Tls::reload──▶ new connections use the new files
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

use crate::config::problem::{Problem, Problems};
use crate::config::{ClientCert, TlsConfig};
use crate::request::TlsClient;

/// The listener's TLS settings, swappable while serving.
#[derive(Debug)]
pub struct Tls {
    config: TlsConfig,
    current: ArcSwap<rustls::ServerConfig>,
}

impl Tls {
    /// Reads and checks the certificate, key and client CA.
    ///
    /// # Errors
    /// A file cannot be read, holds no certificate or key, or they do not match.
    pub fn load(config: &TlsConfig) -> Result<Tls, Problems> {
        Ok(Tls {
            config: config.clone(),
            current: ArcSwap::from_pointee(build(config)?),
        })
    }

    /// Reads the files again; new connections use them (a failure keeps the old ones).
    ///
    /// # Errors
    /// As [`Tls::load`].
    pub fn reload(&self) -> Result<(), Problems> {
        self.current.store(Arc::new(build(&self.config)?));
        Ok(())
    }

    /// The files it is built from (watched for reloads).
    pub fn paths(&self) -> Vec<PathBuf> {
        let c = &self.config;
        [
            Some(&c.cert_file),
            Some(&c.key_file),
            c.client_ca_file.as_ref(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }

    /// An acceptor with the current settings.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }
}

fn build(config: &TlsConfig) -> Result<rustls::ServerConfig, Problems> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(&config.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&config.key_file)
        .map_err(|e| Problem::in_file(&config.key_file, format!("no private key: {e}")))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Problem::in_file(&config.cert_file, format!("tls: {e}")))?;
    let builder = match &config.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| Problem::in_file(ca, format!("bad CA certificate: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match config.client_cert {
                ClientCert::Optional => verifier.allow_unauthenticated(),
                ClientCert::Required => verifier,
            };
            let verifier = verifier
                .build()
                .map_err(|e| Problem::in_file(ca, format!("client CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder
        .with_single_cert(chain, key)
        .map_err(|e| Problem::in_file(&config.key_file, format!("certificate and key: {e}")))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(server)
}

fn certificates(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, Problems> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| Problem::in_file(path, format!("cannot read certificates: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| Problem::in_file(path, format!("bad certificate: {e}")))?;
    if certs.is_empty() {
        return Err(Problem::in_file(path, "no certificate").into());
    }
    Ok(certs)
}

/// The verified client certificate of a connection, if one was sent.
pub(crate) fn client(connection: &rustls::ServerConnection) -> Option<TlsClient> {
    let leaf = connection.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let subject = cert.subject();
    let cn = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(String::from);
    Some(TlsClient {
        subject: subject.to_string(),
        cn,
    })
}
