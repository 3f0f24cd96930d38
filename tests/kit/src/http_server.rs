//! An HTTP and an HTTPS server on 127.0.0.1 for tasks' outbound requests in
//! tests and benchmarks, with a certificate from a throwaway CA (workers
//! trust it through `ExecutionLimits::extra_ca_certs`, as
//! `TASKFLOW_EXTRA_CA_CERTS` would).
//!
//! Routes: `/hello` (200 `hello`), `/csv` (two rows), `/echo` (the request body back),
//! `/redirect` (302 to `Location` from `?to=`), `/slow` (headers after 10
//! s), `/slow-once` (like `/slow` the first time, at once after), `/big` (a
//! 4 MiB body, streamed), `/unavailable` (503), anything else 404. Every request is
//! kept, headers and body, so a test can see what reached the server.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Size of `/big`'s body.
pub const BIG_BODY_BYTES: usize = 4 << 20;

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The two servers and what they saw.
pub struct TestServers {
    /// `http://127.0.0.1:<port>`.
    pub http: SocketAddr,
    /// `https://localhost:<port>`: the certificate names `localhost`.
    pub https: SocketAddr,
    /// PEM file of the CA that signed the certificate.
    pub ca_file: PathBuf,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl TestServers {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (ca_pem, tls) = certificates();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_pem).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let http = serve(None, seen.clone(), stop.clone()).await;
        let https = serve(Some(tls), seen.clone(), stop.clone()).await;
        Self {
            http,
            https,
            ca_file,
            seen,
            stop,
            _dir: dir,
        }
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for TestServers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A CA and a `localhost`/127.0.0.1 certificate it signed: the CA's PEM,
/// and the server's TLS settings.
fn certificates() -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let server = server_params.signed_by(&server_key, &ca, &ca_key).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(server_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![server.der().clone()], key)
        .unwrap();
    (ca.pem(), Arc::new(config))
}

async fn serve(
    tls: Option<Arc<rustls::ServerConfig>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: CancellationToken,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                () = stop.cancelled() => return,
            };
            let seen = seen.clone();
            let tls = tls.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| respond(request, seen.clone()));
                let builder = hyper::server::conn::http1::Builder::new();
                let served = async {
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                        Some(tls) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                    }
                };
                tokio::select! { () = served => {}, () = stop.cancelled() => {} }
            });
        }
    });
    address
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn respond(
    request: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(ToString::to_string)
        .unwrap_or_default();
    seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        path_and_query: path_and_query.clone(),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.to_string(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
    });
    let full = |status: u16, bytes: Bytes| {
        Response::builder()
            .status(status)
            .body(Full::new(bytes).boxed())
            .unwrap()
    };
    Ok(match parts.uri.path() {
        "/hello" => full(200, Bytes::from_static(b"hello")),
        "/csv" => full(200, Bytes::from_static(b"name,age\nAda,36\nAlan,41\n")),
        "/echo" => full(200, body),
        "/redirect" => {
            let to = parts
                .uri
                .query()
                .and_then(|q| q.strip_prefix("to="))
                .unwrap_or("/");
            let mut response = full(302, Bytes::new());
            response
                .headers_mut()
                .insert("location", to.parse().unwrap());
            response
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(10)).await;
            full(200, Bytes::from_static(b"late"))
        }
        "/slow-once" => {
            let earlier = seen
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.path_and_query.starts_with("/slow-once"))
                .count();
            if earlier == 1 {
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            full(200, Bytes::from_static(b"done"))
        }
        "/big" => {
            let chunk = Bytes::from(vec![b'x'; 64 << 10]);
            let frames = futures::stream::iter(
                (0..BIG_BODY_BYTES / chunk.len()).map(move |_| Ok(Frame::data(chunk.clone()))),
            );
            Response::new(StreamBody::new(frames).boxed())
        }
        "/unavailable" => full(503, Bytes::from_static(b"try later")),
        _ => full(404, Bytes::new()),
    })
}
