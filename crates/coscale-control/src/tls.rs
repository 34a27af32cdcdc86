//! The HTTPS listener of `--custom-metrics-addr`: the custom metrics API for the
//! Kubernetes aggregation layer (an `APIService` points at it), plus `/healthz`.
//!
//! The certificate comes from `--tls-cert-file`/`--tls-key-file` (PEM) or is generated
//! self-signed at start (the APIService then uses `insecureSkipTLSVerify` or a
//! cert-manager certificate). With `--client-ca-file` every client must present a
//! certificate signed by that CA (the aggregator's requestheader/proxy client CA).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::service::ControlPlane;

/// Certificate settings of the listener.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// CA whose signed client certificates are required (none: no client certificate).
    pub client_ca_file: Option<PathBuf>,
    /// Names (DNS or IP) put in a generated self-signed certificate.
    pub self_signed_names: Vec<String>,
}

fn read_certs(path: &Path, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("{what} {}: cannot read it", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{what} {}: not PEM certificates", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{what} {}: holds no certificate",
        path.display()
    );
    Ok(certs)
}

/// A self-signed certificate and key for `names`.
pub fn self_signed(
    names: &[String],
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let ck = rcgen::generate_simple_self_signed(names.to_vec())
        .context("cannot generate a self-signed certificate")?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    Ok((vec![ck.cert.der().clone()], key))
}

/// The rustls server configuration of the settings.
pub fn server_config(s: &TlsSettings) -> anyhow::Result<ServerConfig> {
    let (certs, key) = match (&s.cert_file, &s.key_file) {
        (Some(c), Some(k)) => {
            let certs = read_certs(c, "--tls-cert-file")?;
            let key = PrivateKeyDer::from_pem_file(k).with_context(|| {
                format!("--tls-key-file {}: no PEM private key in it", k.display())
            })?;
            (certs, key)
        }
        (None, None) => {
            info!(names = ?s.self_signed_names, "custom metrics API: serving a self-signed certificate");
            self_signed(&s.self_signed_names)?
        }
        _ => anyhow::bail!("--tls-cert-file and --tls-key-file go together"),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &s.client_ca_file {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs(ca, "--client-ca-file")? {
                roots
                    .add(c)
                    .with_context(|| format!("--client-ca-file {}: bad CA", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .context("--client-ca-file: cannot build the client verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => {
            warn!("custom metrics API without --client-ca-file: any client that reaches it can read metric values");
            builder.with_no_client_auth()
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The app of the listener: the custom metrics API and health endpoints, no bearer
/// token (the aggregator authenticates with its client certificate).
pub fn custom_metrics_app(cp: ControlPlane) -> Router {
    Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/livez", axum::routing::get(|| async { "ok" }))
        .route("/readyz", axum::routing::get(|| async { "ok" }))
        .merge(crate::custom_metrics::api_routes())
        .with_state(cp)
}

/// Serves `app` over TLS on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    config: ServerConfig,
    app: Router,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(Arc::new(config));
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    warn!("custom metrics listener: accept failed: {e}");
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    debug!(%peer, "TLS handshake failed: {e}");
                    return;
                }
            };
            let svc = hyper_util::service::TowerToHyperService::new(app);
            if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), svc)
                .await
            {
                debug!(%peer, "custom metrics connection ended: {e}");
            }
        });
    }
}
