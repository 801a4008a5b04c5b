//! Reachability checks of the source and of peers, over HTTP (reqwest with rustls).
//!
//! A probe answers one question, "is it there and is it what we expect?", so that the daemon can
//! warn early and back off while a server is down. It does not read data.

use std::time::Duration;

use url::Url;

/// Why a target did not answer as expected.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No HTTP answer (refused, DNS, TLS, timeout, reset).
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// What was requested.
        url: Url,
        /// The transport error, flattened to text with its causes.
        reason: String,
    },
    /// An HTTP answer with an unexpected status.
    #[error("{url} answered HTTP {status}")]
    Status {
        /// What was requested.
        url: Url,
        /// The status code.
        status: u16,
    },
    /// An answer that is not from the expected kind of server.
    #[error("{url} does not look like {expected}")]
    Unexpected {
        /// What was requested.
        url: Url,
        /// What we expected to find there.
        expected: &'static str,
    },
    /// The HTTP client could not be built (a TLS set-up problem).
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// An HTTP client for probes.
#[derive(Debug, Clone)]
pub struct Prober {
    client: reqwest::Client,
}

impl Prober {
    /// Builds the client (short timeouts: a probe must never hang a loop).
    pub fn new() -> Result<Prober, ProbeError> {
        // reqwest is built without a default TLS provider; install ring once per process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .user_agent(concat!("tandem/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| ProbeError::Client(error_chain(&e)))?;
        Ok(Prober { client })
    }

    /// Checks that a Kinto server answers at `root` (the `/v1/` URL). Returns its version.
    pub async fn kinto(&self, root: &Url) -> Result<String, ProbeError> {
        #[derive(serde::Deserialize)]
        struct Root {
            project_name: String,
            project_version: String,
        }
        let response = self.get(root).await?;
        let root_info: Root = response.json().await.map_err(|_| ProbeError::Unexpected {
            url: root.clone(),
            expected: "a Kinto server root (GET /v1/)",
        })?;
        if !root_info.project_name.eq_ignore_ascii_case("kinto") {
            return Err(ProbeError::Unexpected {
                url: root.clone(),
                expected: "a Kinto server root (GET /v1/)",
            });
        }
        Ok(root_info.project_version)
    }

    /// Checks that a tandem node answers `/healthz` at `base`.
    pub async fn peer(&self, base: &Url) -> Result<(), ProbeError> {
        let url = base.join("healthz").map_err(|_| ProbeError::Unexpected {
            url: base.clone(),
            expected: "a base URL",
        })?;
        self.get(&url).await.map(drop)
    }

    async fn get(&self, url: &Url) -> Result<reqwest::Response, ProbeError> {
        let response =
            self.client
                .get(url.clone())
                .send()
                .await
                .map_err(|e| ProbeError::Unreachable {
                    url: url.clone(),
                    reason: transport_reason(&e),
                })?;
        if !response.status().is_success() {
            return Err(ProbeError::Status {
                url: url.clone(),
                status: response.status().as_u16(),
            });
        }
        Ok(response)
    }
}

/// The useful part of a transport error: "timed out", or its innermost cause
/// ("Connection refused (os error 111)", a DNS or TLS failure).
fn transport_reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".to_owned();
    }
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// An error and its causes on one line ("a: b: c").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
