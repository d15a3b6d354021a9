//! A real HTTPS server for webhook tests: an axum app behind rustls, with a self-signed
//! certificate for `localhost`/127.0.0.1 made at test time with the openssl CLI (a missing
//! openssl fails the test with the command that installs it; nothing is skipped).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;

/// Serves `app` over HTTPS with a self-signed certificate until drop.
pub struct TlsTestServer {
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
    _task: tokio::task::JoinHandle<()>,
}

/// Writes a self-signed certificate and its key (PEM) for localhost and 127.0.0.1.
fn self_signed(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let output = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:prime256v1")
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run openssl ({e}): install it with `apt-get install -y openssl`")
        });
    assert!(
        output.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (std::fs::read(cert).unwrap(), std::fs::read(key).unwrap())
}

impl TlsTestServer {
    pub async fn start(app: axum::Router) -> TlsTestServer {
        let dir = tempfile::tempdir().unwrap();
        let (cert_pem, key_pem) = self_signed(dir.path());
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(&key_pem).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let service = TowerToHyperService::new(app.clone());
                tokio::spawn(async move {
                    // A client that rejects the certificate ends the handshake: not an error
                    // of the server's.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let _ = Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsTestServer {
            addr,
            _dir: dir,
            _task: task,
        }
    }

    /// `https://localhost:<port><path>`: the name the certificate is for.
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }
}

impl Drop for TlsTestServer {
    fn drop(&mut self) {
        self._task.abort();
    }
}
