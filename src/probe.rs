//! Reachability checks of peers, over HTTP (reqwest with rustls).
//!
//! A probe answers one question, "is it there and is it what we expect?", so that the daemon can
//! warn early and back off while a server is down. It does not read data.

use std::time::Duration;

use url::Url;

impl crate::backoff::RetryHint for ProbeError {
    fn unreachable(&self) -> bool {
        matches!(self, ProbeError::Unreachable { .. })
    }
}

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
        let client = crate::net::client_builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| ProbeError::Client(crate::net::transport_reason(&e)))?;
        Ok(Prober { client })
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
                    reason: crate::net::transport_reason(&e),
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
