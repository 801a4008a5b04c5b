//! HTTP client set-up shared by every reqwest user (the Kinto client, peer probes, tests):
//! the TLS provider, the user agent, the redirect policy, bounded body reads, and one-line
//! transport error texts.
//!
//! Every server tandem talks to is one it was configured for, and an answer from it is input
//! like any other: no client follows redirects (a redirect could carry a request, and its
//! credentials or signature, to another host, or substitute another server's answer), and no
//! body is read without a bound ([`read_capped`]).

/// reqwest is built without a default TLS provider (no OpenSSL, no aws-lc build); this installs
/// ring once per process. Safe to call repeatedly.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client builder with the provider installed, tandem's user agent, and redirects not
/// followed (a `3xx` answer is returned as it is, for the caller to refuse).
pub fn client_builder() -> reqwest::ClientBuilder {
    install_tls_provider();
    reqwest::Client::builder()
        .user_agent(concat!("tandem/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
}

/// Why a body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The body is (or says it is) larger than the bound.
    #[error("the answer is larger than {limit} bytes")]
    TooLarge {
        /// The bound, in bytes.
        limit: usize,
    },
    /// The connection failed or closed before the body was complete.
    #[error("the answer was cut short ({0})")]
    Transport(String),
}

/// Reads `response`'s body chunk by chunk, failing as soon as it passes `limit` bytes (at once
/// when its `Content-Length` already does). A body cut short (a connection closed before its
/// declared length or final chunk) is an error, never a short body.
pub async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, ReadError> {
    let declared = response.content_length();
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ReadError::TooLarge { limit });
    }
    // Preallocate what the server declared, within the bound, but never much on its word alone.
    let mut out = Vec::with_capacity(declared.map_or(0, |n| n as usize).min(1 << 20));
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| ReadError::Transport(transport_reason(&e)))?
    {
        if out.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge { limit });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Reads at most `limit` bytes of `response`'s body, dropping the rest: for error answers,
/// whose text only goes into a message. Never fails; a body cut short gives what arrived.
pub async fn read_prefix(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let take = chunk.len().min(limit - out.len());
        out.extend_from_slice(&chunk[..take]);
        if out.len() == limit {
            break;
        }
    }
    out
}

/// The useful part of a transport error: "timed out", or its innermost cause
/// ("Connection refused (os error 111)", a DNS or TLS failure).
pub fn transport_reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".to_owned();
    }
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
