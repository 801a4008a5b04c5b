//! The client side of the daemon's admin socket (served by [`crate::api::admin`]): how a
//! command that must act on a store held by a running daemon (`sync`, `snapshot create`,
//! `import`, `restore --from-peer`, `migrate start`) asks the daemon to do it, and how `status` asks for the
//! health of its loops.
//!
//! It lives with the commands, not in `api`, because only they call it: `api` holds servers.
//! It is reqwest over the Unix socket (`tandem.sock` in the data directory), set up like every
//! other client ([`crate::net::client_builder`]: no redirects, bounded body reads), with no
//! time limit: a `sync` waits as long as the daemon's round takes.

use std::path::{Path, PathBuf};

use crate::api::admin::SOCKET_FILE;

/// The most an answer may hold: the largest, a `sync` report, is a few lines per peer.
const ANSWER_LIMIT: usize = 16 << 20;

/// Errors talking to a running daemon.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No daemon answers on the socket.
    #[error("cannot reach the running daemon at {path}: {reason}")]
    Unreachable {
        /// The socket.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The daemon answered with an error.
    #[error("the daemon answered {status}: {message}")]
    Failed {
        /// HTTP status.
        status: u16,
        /// Its error message.
        message: String,
    },
}

/// `GET path` from the daemon whose data directory is `data_dir`; returns the JSON answer.
pub async fn get(data_dir: &Path, path: &str) -> Result<serde_json::Value, AdminError> {
    call(data_dir, reqwest::Method::GET, path).await
}

/// `POST path` (no body) to the daemon whose data directory is `data_dir`; returns the JSON
/// answer.
pub async fn post(data_dir: &Path, path: &str) -> Result<serde_json::Value, AdminError> {
    call(data_dir, reqwest::Method::POST, path).await
}

/// `POST path` with a JSON `body` to the daemon whose data directory is `data_dir`; returns
/// the JSON answer.
pub async fn post_json(
    data_dir: &Path,
    path: &str,
    body: &serde_json::Value,
) -> Result<serde_json::Value, AdminError> {
    call_with(data_dir, reqwest::Method::POST, path, Some(body)).await
}

async fn call(
    data_dir: &Path,
    method: reqwest::Method,
    path: &str,
) -> Result<serde_json::Value, AdminError> {
    call_with(data_dir, method, path, None).await
}

async fn call_with(
    data_dir: &Path,
    method: reqwest::Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, AdminError> {
    let socket = data_dir.join(SOCKET_FILE);
    let unreachable = |reason: String| AdminError::Unreachable {
        path: socket.clone(),
        reason,
    };
    let client = crate::net::client_builder()
        .unix_socket(socket.as_path())
        .build()
        .map_err(|e| unreachable(crate::net::transport_reason(&e)))?;
    // The host names nothing (the socket is the address); the daemon ignores it.
    let mut request = client.request(method, format!("http://tandem{path}"));
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request
        .send()
        .await
        .map_err(|e| unreachable(crate::net::transport_reason(&e)))?;
    let status = response.status().as_u16();
    let body = crate::net::read_capped(response, ANSWER_LIMIT)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    if status == 200 {
        Ok(value)
    } else {
        Err(AdminError::Failed {
            status,
            message: value["error"].as_str().unwrap_or("no details").to_owned(),
        })
    }
}
