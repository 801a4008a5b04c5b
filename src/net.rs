//! HTTP client set-up shared by every reqwest user (the Kinto client, peer probes, tests):
//! the TLS provider, the user agent, and one-line transport error texts.

/// reqwest is built without a default TLS provider (no OpenSSL, no aws-lc build); this installs
/// ring once per process. Safe to call repeatedly.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client builder with the provider installed and tandem's user agent.
pub fn client_builder() -> reqwest::ClientBuilder {
    install_tls_provider();
    reqwest::Client::builder().user_agent(concat!("tandem/", env!("CARGO_PKG_VERSION")))
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
