//! iotgate's own TLS: a test CA made here (rcgen), the listener's certificate reloaded on
//! change, device mTLS whose client certificate subject routes read (`{tls.cn}`).

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{fixture, Upstream};

/// A certificate authority for the test.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM.
struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn leaf(&self, names: &[&str], cn: &str) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Acme");
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

fn der_chain(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A TLS client trusting `ca`, presenting `identity` when given.
fn connector(ca: &Ca, identity: Option<&Leaf>) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.issuer.der().clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match identity {
        Some(leaf) => builder
            .with_client_auth_cert(
                der_chain(&leaf.cert),
                PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Sends `raw` over a TLS connection to `port`: the raw answer and the server
/// certificate's DER, or the handshake error.
async fn send(
    port: u16,
    ca: &Ca,
    identity: Option<&Leaf>,
    raw: &str,
) -> Result<(String, Vec<u8>), String> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector(ca, identity)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(raw.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
    let served = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    Ok((String::from_utf8_lossy(&out).into_owned(), served))
}

/// One HTTP/1.1 GET over TLS.
async fn get(
    port: u16,
    ca: &Ca,
    identity: Option<&Leaf>,
    target: &str,
) -> Result<(String, Vec<u8>), String> {
    let raw = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    send(port, ca, identity, &raw).await
}

fn status(answer: &str) -> u16 {
    answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
}

struct Served {
    port: u16,
    gateway: Arc<iotgate::Gateway>,
    config: iotgate::Config,
    running: iotgate::Running,
    upstream: Upstream,
    dir: tempfile::TempDir,
}

async fn serve(ca: &Ca, client_cert: &str) -> Served {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = ca.leaf(&["localhost", "127.0.0.1"], "iotgate");
    std::fs::write(dir.path().join("cert.pem"), &server.cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), &server.key).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.issuer.pem()).unwrap();
    let m = fixture("mini");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://{up}\"\n\
         [server.tls]\ncert_file = \"cert.pem\"\nkey_file = \"key.pem\"\nclient_ca_file = \"ca.pem\"\nclient_cert = \"{client_cert}\"\n\
         [auth]\nalgorithms = [\"HS256\"]\nhs256_secret_file = \"{secret}\"\nprincipal_claim = \"usr\"\n\
         [policy]\nschema = \"{m}/schema/mini.cedarschema\"\nroutes = \"{m}/schema/mini.routes.toml\"\n\
         policies = [\"{m}/policies\"]\ndirectory = [\"{m}/directory\"]\nreload = \"signal\"\n",
        up = upstream.addr,
        secret = fixture("keys/hs.secret").display(),
        m = m.display(),
    );
    let path = dir.path().join("iotgate.toml");
    std::fs::write(&path, text).unwrap();
    let (gateway, config) = iotgate::load(&path).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = iotgate::Running::start(listener, gateway.clone()).unwrap();
    Served {
        port: running.addr.port(),
        gateway,
        config,
        running,
        upstream,
        dir,
    }
}

#[tokio::test]
async fn the_listener_speaks_tls_and_devices_are_told_by_their_certificate() {
    let ca = Ca::new("iotgate test CA");
    let served = serve(&ca, "optional").await;
    // no client certificate: TLS works, a route that reads {tls.cn} has nothing to read
    let (answer, _) = get(served.port, &ca, None, "/v1/status/alice@shared")
        .await
        .unwrap();
    assert_eq!(status(&answer), 200, "{answer}");
    let (answer, _) = get(served.port, &ca, None, "/v1/certified/status")
        .await
        .unwrap();
    assert_eq!(status(&answer), 400, "{answer}");
    // a device certificate names the resource
    let device = ca.leaf(&[], "alice@shared");
    let (answer, _) = get(served.port, &ca, Some(&device), "/v1/certified/status")
        .await
        .unwrap();
    assert_eq!(status(&answer), 200, "{answer}");
    let private = ca.leaf(&[], "private");
    let (answer, _) = get(served.port, &ca, Some(&private), "/v1/certified/status")
        .await
        .unwrap();
    assert_eq!(status(&answer), 403, "{answer}");
    // a certificate of another CA never gets in
    let rogue = Ca::new("rogue").leaf(&[], "alice@shared");
    assert!(get(served.port, &ca, Some(&rogue), "/v1/certified/status")
        .await
        .is_err());
    let seen = served.upstream.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert!(seen
        .iter()
        .all(|s| s.headers["x-forwarded-proto"] == "https"));
    served.running.stop().await;
}

#[tokio::test]
async fn a_required_client_certificate_is_required_and_the_certificate_reloads() {
    let ca = Ca::new("iotgate test CA");
    let served = serve(&ca, "required").await;
    assert!(
        get(served.port, &ca, None, "/v1/status/alice@shared")
            .await
            .is_err(),
        "no client certificate, no connection"
    );
    let device = ca.leaf(&[], "alice@shared");
    let (answer, first) = get(served.port, &ca, Some(&device), "/v1/status/alice@shared")
        .await
        .unwrap();
    assert_eq!(status(&answer), 200, "{answer}");
    // the certificate is renewed on disk; a reload serves it to new connections
    let renewed = ca.leaf(&["localhost", "127.0.0.1"], "iotgate renewed");
    std::fs::write(served.dir.path().join("cert.pem"), &renewed.cert).unwrap();
    std::fs::write(served.dir.path().join("key.pem"), &renewed.key).unwrap();
    let reloader = iotgate::Reloader::new(
        served.config.clone(),
        served.gateway.clone(),
        served.running.tls(),
    );
    let attempt = reloader.reload("signal").await;
    assert!(attempt.ok, "{attempt:?}");
    let (answer, second) = get(served.port, &ca, Some(&device), "/v1/status/alice@shared")
        .await
        .unwrap();
    assert_eq!(status(&answer), 200, "{answer}");
    assert_ne!(first, second, "new connections get the renewed certificate");
    assert_eq!(second, der_chain(&renewed.cert)[0].to_vec());
    // a broken key file is a refused reload; the renewed certificate keeps serving
    std::fs::write(served.dir.path().join("key.pem"), "not a key").unwrap();
    let attempt = reloader.reload("signal").await;
    assert!(
        !attempt.ok && attempt.problems.iter().any(|p| p.contains("key.pem")),
        "{attempt:?}"
    );
    let (_, third) = get(served.port, &ca, Some(&device), "/v1/status/alice@shared")
        .await
        .unwrap();
    assert_eq!(third, second);
    served.running.stop().await;
}

/// One JSON POST over TLS: the raw answer, or the handshake error.
async fn post(
    port: u16,
    ca: &Ca,
    identity: Option<&Leaf>,
    target: &str,
    body: &str,
) -> Result<String, String> {
    let raw = format!(
        "POST {target} HTTP/1.1\r\nHost: localhost:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    send(port, ca, identity, &raw)
        .await
        .map(|(answer, _)| answer)
}

#[tokio::test]
async fn the_decision_api_speaks_tls_and_takes_a_client_certificate_instead_of_a_token() {
    let ca = Ca::new("apps CA");
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    crate::support::copy_dir(&root.join("examples/authzen"), dir.path());
    let server = ca.leaf(&["localhost", "127.0.0.1"], "pdp");
    std::fs::write(dir.path().join("cert.pem"), &server.cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), &server.key).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.issuer.pem()).unwrap();
    let config = dir.path().join("iotgate.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let (head, _) = text.split_once("[decision_api]").unwrap();
    let text = ["127.0.0.1:8080", "127.0.0.1:9092"]
        .iter()
        .fold(head.to_string(), |t, a| t.replace(a, "127.0.0.1:0"))
        + "[decision_api]\nlisten = \"127.0.0.1:0\"\n\
           [decision_api.tls]\ncert_file = \"cert.pem\"\nkey_file = \"key.pem\"\n\
           client_ca_file = \"ca.pem\"\nclient_cert = \"required\"\n";
    std::fs::write(&config, text).unwrap();
    let served = crate::support::Served::spawn(dir, &config);
    let port: u16 = served
        .decision_api
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let app = ca.leaf(&["console"], "console");
    let question = r#"{"subject": {"type": "user", "id": "alice"}, "action": {"name": "read"},
                       "resource": {"type": "record", "id": "record-1"}}"#;
    let answer = post(port, &ca, Some(&app), "/access/v1/evaluation", question)
        .await
        .unwrap();
    assert_eq!(status(&answer), 200, "{answer}");
    assert!(answer.ends_with(r#"{"decision":true}"#), "{answer}");
    let refused = post(port, &ca, None, "/access/v1/evaluation", question).await;
    assert!(
        refused.is_err() || status(&refused.clone().unwrap()) == 0,
        "{refused:?}"
    );
    let stranger = Ca::new("another CA").leaf(&["x"], "x");
    let refused = post(
        port,
        &ca,
        Some(&stranger),
        "/access/v1/evaluation",
        question,
    )
    .await;
    assert!(
        refused.is_err() || status(&refused.clone().unwrap()) == 0,
        "{refused:?}"
    );
    let (meta, _) = get(port, &ca, Some(&app), "/.well-known/authzen-configuration")
        .await
        .unwrap();
    // the base URL is the scheme and the Host asked (`get` sends `Host: localhost`)
    assert!(
        meta.contains(r#""policy_decision_point":"https://localhost""#),
        "{meta}"
    );
}
