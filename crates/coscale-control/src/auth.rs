//! Bearer-token authentication of the REST API, `/metrics` and the agent channel.
//!
//! Always accepted: the static token of `DATA_DIR/token`. With `--auth kubernetes`,
//! also Kubernetes ServiceAccount tokens: a `TokenReview` (authentication.k8s.io/v1,
//! audience `coscale`) sent to the API server must say the token is authenticated and
//! belongs to a ServiceAccount (`system:serviceaccount:<namespace>:<name>`) of the
//! install's namespace or of a namespace that holds one of the control plane's Servers
//! (agents run in their Server's namespace). Positive reviews are cached for a
//! short time; an API server that cannot be reached rejects the token (401) and says
//! why in the log.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;
use tracing::{debug, warn};

/// Where the in-cluster ServiceAccount files are.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The audience ServiceAccount tokens presented to coscale must carry.
pub const AUDIENCE: &str = "coscale";

/// How to reach the Kubernetes API server for TokenReviews.
#[derive(Debug, Clone)]
pub struct TokenReviewConfig {
    /// API server base URL, e.g. `https://10.0.0.1:443`.
    pub api_server: String,
    /// PEM of the CA that signed the API server's certificate.
    pub ca_pem: Vec<u8>,
    /// The control plane's own ServiceAccount token (read again for every review:
    /// projected tokens rotate).
    pub token_file: PathBuf,
    /// The install's namespace (its ServiceAccounts are always accepted).
    pub namespace: String,
    pub audience: String,
    /// How long an accepted token is remembered.
    pub cache_ttl: Duration,
    /// Deadline of one review.
    pub timeout: Duration,
}

impl TokenReviewConfig {
    /// The in-cluster configuration: `KUBERNETES_SERVICE_HOST`/`_PORT`, the
    /// ServiceAccount directory's `token` and `ca.crt`, and the namespace from
    /// `POD_NAMESPACE` or the directory's `namespace` file.
    pub fn in_cluster() -> anyhow::Result<Self> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Self::from_parts(
            env("KUBERNETES_SERVICE_HOST"),
            env("KUBERNETES_SERVICE_PORT"),
            Path::new(SERVICE_ACCOUNT_DIR),
            env("POD_NAMESPACE"),
        )
    }

    /// The configuration from explicit parts (what [`Self::in_cluster`] reads).
    pub fn from_parts(
        host: Option<String>,
        port: Option<String>,
        sa_dir: &Path,
        namespace: Option<String>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let host = host.context(
            "--auth kubernetes needs KUBERNETES_SERVICE_HOST (set in every pod): is this running in a cluster?",
        )?;
        let port = port.unwrap_or_else(|| "443".to_owned());
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host
        };
        let ca_path = sa_dir.join("ca.crt");
        let ca_pem = std::fs::read(&ca_path)
            .with_context(|| format!("--auth kubernetes: cannot read {}", ca_path.display()))?;
        let namespace = match namespace {
            Some(ns) => ns,
            None => {
                let p = sa_dir.join("namespace");
                std::fs::read_to_string(&p)
                    .with_context(|| {
                        format!(
                            "--auth kubernetes: set POD_NAMESPACE or provide {}",
                            p.display()
                        )
                    })?
                    .trim()
                    .to_owned()
            }
        };
        Ok(Self {
            api_server: format!("https://{host}:{port}"),
            ca_pem,
            token_file: sa_dir.join("token"),
            namespace,
            audience: AUDIENCE.to_owned(),
            cache_ttl: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
        })
    }
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("wrong bearer token")]
    Wrong,
    #[error("token rejected by the Kubernetes TokenReview: {0}")]
    Rejected(String),
    #[error("ServiceAccount {user:?} is neither in namespace {namespace:?} nor in a namespace holding a Server")]
    OtherNamespace { user: String, namespace: String },
    #[error("cannot verify the token: the Kubernetes API server did not answer the TokenReview")]
    ReviewUnavailable,
}

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The holder of the static token.
    StaticToken,
    /// A ServiceAccount (`system:serviceaccount:NS:NAME`).
    ServiceAccount(String),
}

struct Reviewer {
    config: TokenReviewConfig,
    http: reqwest::Client,
    /// Accepted tokens and when the acceptance expires.
    cache: Mutex<HashMap<String, (String, Instant)>>,
}

/// Checks bearer tokens.
pub struct Authenticator {
    static_token: String,
    reviewer: Option<Reviewer>,
}

/// Most tokens remembered at once; the cache is emptied when it is full.
const CACHE_LIMIT: usize = 10_000;

#[derive(Deserialize)]
struct TokenReviewAnswer {
    #[serde(default)]
    status: TokenReviewStatus,
}

#[derive(Deserialize, Default)]
struct TokenReviewStatus {
    #[serde(default)]
    authenticated: bool,
    #[serde(default)]
    user: ReviewUser,
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default)]
    error: String,
}

#[derive(Deserialize, Default)]
struct ReviewUser {
    #[serde(default)]
    username: String,
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Authenticator {
    /// Static token only.
    pub fn static_only(token: String) -> Self {
        Self {
            static_token: token,
            reviewer: None,
        }
    }

    /// Static token plus Kubernetes ServiceAccount tokens.
    pub fn with_token_review(token: String, config: TokenReviewConfig) -> anyhow::Result<Self> {
        use anyhow::Context;
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .tls_built_in_root_certs(false);
        use rustls_pki_types::pem::PemObject;
        let mut found = 0;
        for der in rustls_pki_types::CertificateDer::pem_slice_iter(&config.ca_pem) {
            let der = der.context("--auth kubernetes: the cluster CA is not valid PEM")?;
            let cert = reqwest::Certificate::from_der(&der)
                .context("--auth kubernetes: a cluster CA certificate is not valid")?;
            builder = builder.add_root_certificate(cert);
            found += 1;
        }
        anyhow::ensure!(
            found > 0,
            "--auth kubernetes: the cluster CA file holds no certificate"
        );
        let http = builder
            .build()
            .context("--auth kubernetes: cannot build the API server client")?;
        Ok(Self {
            static_token: token,
            reviewer: Some(Reviewer {
                config,
                http,
                cache: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Checks an `Authorization` header value. `server_namespace(ns)` says whether a
    /// namespace holds a Server, whose agents' ServiceAccounts are then accepted too.
    pub async fn authenticate(
        &self,
        header: Option<&str>,
        server_namespace: impl Fn(&str) -> bool,
    ) -> Result<Identity, AuthError> {
        let token = header
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        if constant_time_eq(token.as_bytes(), self.static_token.as_bytes()) {
            return Ok(Identity::StaticToken);
        }
        match &self.reviewer {
            None => Err(AuthError::Wrong),
            Some(r) => {
                let user = r.review(token).await?;
                let namespace = user
                    .strip_prefix("system:serviceaccount:")
                    .and_then(|rest| rest.split_once(':'))
                    .filter(|(_, name)| !name.is_empty())
                    .map(|(ns, _)| ns);
                match namespace {
                    Some(ns) if ns == r.config.namespace || server_namespace(ns) => {
                        Ok(Identity::ServiceAccount(user))
                    }
                    _ => {
                        debug!(%user, "ServiceAccount of another namespace rejected");
                        Err(AuthError::OtherNamespace {
                            user,
                            namespace: r.config.namespace.clone(),
                        })
                    }
                }
            }
        }
    }
}

impl Reviewer {
    fn cached(&self, token: &str) -> Option<String> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(token)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(user, _)| user.clone())
    }

    async fn review(&self, token: &str) -> Result<String, AuthError> {
        if let Some(user) = self.cached(token) {
            return Ok(user);
        }
        let c = &self.config;
        let own = std::fs::read_to_string(&c.token_file).map_err(|e| {
            warn!(
                "TokenReview not sent: cannot read the control plane's ServiceAccount token {}: {e}",
                c.token_file.display()
            );
            AuthError::ReviewUnavailable
        })?;
        let body = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": { "token": token, "audiences": [c.audience] },
        });
        let url = format!(
            "{}/apis/authentication.k8s.io/v1/tokenreviews",
            c.api_server.trim_end_matches('/')
        );
        let resp = self
            .http
            .post(&url)
            .bearer_auth(own.trim())
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                warn!("TokenReview at {url} failed, rejecting the token: {e}");
                AuthError::ReviewUnavailable
            })?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            warn!(
                "TokenReview at {url} answered {status}, rejecting the token: {}",
                text.chars().take(300).collect::<String>()
            );
            return Err(AuthError::ReviewUnavailable);
        }
        let answer: TokenReviewAnswer = resp.json().await.map_err(|e| {
            warn!("TokenReview at {url}: unreadable answer, rejecting the token: {e}");
            AuthError::ReviewUnavailable
        })?;
        let st = answer.status;
        if !st.authenticated {
            let why = if st.error.is_empty() {
                "not authenticated".to_owned()
            } else {
                st.error
            };
            debug!("TokenReview rejected a token: {why}");
            return Err(AuthError::Rejected(why));
        }
        if !st.audiences.is_empty() && !st.audiences.contains(&c.audience) {
            return Err(AuthError::Rejected(format!(
                "the token's audiences {:?} do not include {:?}",
                st.audiences, c.audience
            )));
        }
        let user = st.user.username;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(
            token.to_owned(),
            (user.clone(), Instant::now() + c.cache_ttl),
        );
        Ok(user)
    }
}
