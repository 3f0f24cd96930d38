//! Reaching a granted host: resolve its name in the host, keep only the
//! addresses the grant permits, and connect to one of those very addresses
//! (never a second lookup, which DNS rebinding could answer differently),
//! with TLS verified against the webpki roots and any extra CAs.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::queue::{AllowedHost, Scheme, is_public_address};

/// A byte stream to the server, plain or TLS.
pub(super) trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// Why no connection was made; each maps to a `wasi:http` error code.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnectError {
    /// The name did not resolve.
    #[error("cannot resolve {0}")]
    Dns(String),
    /// Every address the name resolved to is internal and no grant names it.
    #[error(
        "{host} resolves to {address}, an internal address; only an allowed_hosts entry naming \
         that address (or localhost) reaches it"
    )]
    InternalAddress { host: String, address: IpAddr },
    /// The TCP connection failed.
    #[error("cannot connect to {0}: {1}")]
    Refused(SocketAddr, std::io::Error),
    /// The TLS handshake failed (an untrusted certificate, a wrong name).
    #[error("TLS with {0} failed: {1}")]
    Tls(String, std::io::Error),
}

/// Resolves `host`, keeps the addresses `grants` permit, and connects to
/// the first that answers, over TLS for `https`.
pub(super) async fn open(
    scheme: Scheme,
    host: &str,
    port: u16,
    grants: &[&AllowedHost],
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Box<dyn Stream>, ConnectError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addresses: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(address) => vec![SocketAddr::new(address, port)],
        Err(_) => tokio::net::lookup_host((bare, port))
            .await
            .map_err(|_| ConnectError::Dns(host.to_owned()))?
            .collect(),
    };
    let permitted = |address: &SocketAddr| {
        is_public_address(address.ip()) || grants.iter().any(|g| g.names_address(address.ip()))
    };
    let Some(first) = addresses.first().copied() else {
        return Err(ConnectError::Dns(host.to_owned()));
    };
    let mut last_error = None;
    for address in addresses.into_iter().filter(permitted) {
        match TcpStream::connect(address).await {
            Ok(stream) => return wrap(scheme, bare, stream, tls).await,
            Err(error) => last_error = Some(ConnectError::Refused(address, error)),
        }
    }
    Err(last_error.unwrap_or(ConnectError::InternalAddress {
        host: host.to_owned(),
        address: first.ip(),
    }))
}

async fn wrap(
    scheme: Scheme,
    host: &str,
    stream: TcpStream,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Box<dyn Stream>, ConnectError> {
    let _ = stream.set_nodelay(true);
    if scheme == Scheme::Http {
        return Ok(Box::new(stream));
    }
    let name = ServerName::try_from(host.to_owned()).map_err(|error| {
        ConnectError::Tls(host.to_owned(), std::io::Error::other(error.to_string()))
    })?;
    let connector = tokio_rustls::TlsConnector::from(tls.clone());
    let stream = connector
        .connect(name, stream)
        .await
        .map_err(|error| ConnectError::Tls(host.to_owned(), error))?;
    Ok(Box::new(stream))
}

/// The TLS client settings: the webpki roots, plus every certificate in the
/// PEM file `extra_ca_file` (`TASKFLOW_EXTRA_CA_CERTS`), for private CAs.
///
/// # Errors
///
/// If the file cannot be read or holds no valid certificate.
pub fn tls_config(
    extra_ca_file: Option<&std::path::Path>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.into(),
    };
    if let Some(file) = extra_ca_file {
        let certificates: Vec<CertificateDer> = CertificateDer::pem_file_iter(file)
            .and_then(|certs| certs.collect::<Result<_, _>>())
            .map_err(|error| {
                format!(
                    "cannot read CA certificates from {}: {error}",
                    file.display()
                )
            })?;
        if certificates.is_empty() {
            return Err(format!("{} holds no PEM certificate", file.display()));
        }
        for certificate in certificates {
            roots.add(certificate).map_err(|error| {
                format!("invalid CA certificate in {}: {error}", file.display())
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
