//! The peer protocol client: signed requests to another node's `/v1/` API (the only reqwest
//! user besides the Kinto client). One [`PeerClient`] per configured peer; it knows the wire
//! formats ([`crate::protocol::wire`]) but decides nothing: what to send and when is
//! [`crate::replicate::federate`]'s business.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE};

use crate::feed::{Checkpoint, Receipt, Seq, Snapshot};
use crate::identity::{NodeId, NodeKey};
use crate::keybackup;
use crate::net;
use crate::protocol::signature;
use crate::protocol::wire::{self, ErrorDoc, OriginDoc, PAGE_TYPE, WireError};

/// How long one request may take, long-polls excepted (they add their wait).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Entries asked for per page.
pub const PAGE_ENTRIES: usize = 4096;
/// Largest JSON answer read from a peer.
const MAX_JSON: usize = 8 << 20;
/// Largest error answer read from a peer.
const MAX_ERROR: usize = 64 << 10;

/// Errors talking to a peer. Each names the peer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The request did not complete.
    #[error("peer {peer}: {reason}")]
    Transport {
        /// The peer's name.
        peer: String,
        /// What failed.
        reason: String,
    },
    /// The peer answered with an error status.
    #[error("peer {peer} answered {status}: {message}")]
    Refused {
        /// The peer's name.
        peer: String,
        /// HTTP status.
        status: u16,
        /// The peer's error message.
        message: String,
        /// Its head for the origin, when it reports one (a push that does not link).
        head: Option<u64>,
    },
    /// The peer answered with a redirect, which is never followed.
    #[error(
        "peer {peer} answered {status} redirecting to {location}; tandem does not follow redirects: set the peer's url to the address where it answers"
    )]
    Redirected {
        /// The peer's name.
        peer: String,
        /// HTTP status.
        status: u16,
        /// Its `Location` header (at most 200 characters), or "nowhere".
        location: String,
    },
    /// The peer's answer is larger than the protocol allows.
    #[error("peer {peer} sent an answer larger than {limit} bytes")]
    TooLarge {
        /// The peer's name.
        peer: String,
        /// The bound, in bytes.
        limit: usize,
    },
    /// The peer's body is not what the protocol says.
    #[error("peer {peer} sent an invalid body: {source}")]
    Invalid {
        /// The peer's name.
        peer: String,
        /// What is wrong.
        source: WireError,
    },
}

impl crate::backoff::RetryHint for PeerError {
    /// A peer that refuses this node (`401`, `403`), has no room for it (`507`) or redirects
    /// elsewhere will do the same until one of the two configurations changes; entries it
    /// compacted away (`410`, when part of the feed is already held here) never come back.
    fn heals(&self) -> bool {
        match self {
            PeerError::Refused { status, .. } => !matches!(status, 401 | 403 | 410 | 507),
            PeerError::Redirected { .. } => false,
            _ => true,
        }
    }

    fn unreachable(&self) -> bool {
        matches!(self, PeerError::Transport { .. })
    }
}

impl PeerError {
    /// The HTTP status, when the peer answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            PeerError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A page fetched from a peer.
pub struct Page {
    /// The checkpoint it ends at.
    pub checkpoint: Checkpoint,
    /// The entries, verbatim.
    pub entries: Vec<Vec<u8>>,
    /// Bytes received on the wire for it.
    pub wire_bytes: usize,
}

/// A client for one peer.
#[derive(Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    key: Arc<NodeKey>,
    base: url::Url,
    name: String,
    /// The peer's node id: every request is signed for it and for no other node.
    target: NodeId,
}

impl PeerClient {
    /// A client for the peer `name` with node id `target` at `base`, signing as `key`.
    /// Requests are signed for `target` only: another node refuses them.
    pub fn new(
        name: &str,
        target: NodeId,
        base: &url::Url,
        key: Arc<NodeKey>,
    ) -> Result<PeerClient, PeerError> {
        let http = net::client_builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| PeerError::Transport {
                peer: name.to_owned(),
                reason: net::transport_reason(&e),
            })?;
        let mut base = base.clone();
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Ok(PeerClient {
            http,
            key,
            base,
            name: name.to_owned(),
            target,
        })
    }

    /// The peer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends a signed request for `path` (relative to the peer's base, e.g. `v1/origins`).
    #[tracing::instrument(name = "peer_call", skip_all, fields(peer = %self.name, %method, path))]
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        query: Option<&str>,
        body: Vec<u8>,
        headers: &[(reqwest::header::HeaderName, &str)],
        timeout: Duration,
    ) -> Result<reqwest::Response, PeerError> {
        let mut url = self.base.join(path).map_err(|e| PeerError::Transport {
            peer: self.name.clone(),
            reason: format!("bad url: {e}"),
        })?;
        url.set_query(query);
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        // Signed anew for every request, retries included: each signature carries its own
        // nonce and the peer accepts it once.
        let signed = signature::sign(
            &self.key,
            &signature::Outgoing {
                target: self.target,
                method: method.as_str(),
                path: url.path(),
                query: url.query(),
            },
            &body,
            created,
        );
        let mut request = self.http.request(method, url).timeout(timeout);
        for (name, value) in signed.pairs() {
            request = request.header(name, value);
        }
        for (name, value) in headers {
            request = request.header(name, *value);
        }
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport(&e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(self.refused(response).await)
    }

    /// The error for a non-2xx answer: a redirect (never followed: the request, signed for
    /// this peer, would go wherever the answer says), or the peer's error document.
    async fn refused(&self, response: reqwest::Response) -> PeerError {
        let status = response.status().as_u16();
        if response.status().is_redirection() {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .map(|v| {
                    String::from_utf8_lossy(v.as_bytes())
                        .chars()
                        .take(200)
                        .collect()
                })
                .unwrap_or_else(|| "nowhere".to_owned());
            return PeerError::Redirected {
                peer: self.name.clone(),
                status,
                location,
            };
        }
        let text =
            String::from_utf8_lossy(&net::read_prefix(response, MAX_ERROR).await).into_owned();
        let doc: Option<ErrorDoc> = serde_json::from_str(&text).ok();
        PeerError::Refused {
            peer: self.name.clone(),
            status,
            message: doc
                .as_ref()
                .map_or_else(|| text.chars().take(200).collect(), |d| d.error.clone()),
            head: doc.and_then(|d| d.head),
        }
    }

    /// Reads a body of at most `cap` bytes; a larger one (declared or actual) or one cut
    /// short is an error.
    async fn read_capped(
        &self,
        response: reqwest::Response,
        cap: usize,
    ) -> Result<Vec<u8>, PeerError> {
        net::read_capped(response, cap).await.map_err(|e| match e {
            net::ReadError::TooLarge { limit } => PeerError::TooLarge {
                peer: self.name.clone(),
                limit,
            },
            e @ net::ReadError::Transport(_) => PeerError::Transport {
                peer: self.name.clone(),
                reason: e.to_string(),
            },
        })
    }

    fn transport(&self, e: &reqwest::Error) -> PeerError {
        PeerError::Transport {
            peer: self.name.clone(),
            reason: net::transport_reason(e),
        }
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        response: reqwest::Response,
    ) -> Result<T, PeerError> {
        let bytes = self.read_capped(response, MAX_JSON).await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            self.invalid(WireError::Malformed {
                what: "json",
                detail: e.to_string(),
            })
        })
    }

    /// `GET /v1/origins`: the origins the peer lets us read.
    pub async fn origins(&self) -> Result<Vec<OriginDoc>, PeerError> {
        #[derive(serde::Deserialize)]
        struct List {
            origins: Vec<OriginDoc>,
        }
        let response = self
            .send(
                reqwest::Method::GET,
                "v1/origins",
                None,
                Vec::new(),
                &[],
                REQUEST_TIMEOUT,
            )
            .await?;
        Ok(self.json::<List>(response).await?.origins)
    }

    /// `GET /v1/origins/{id}`: what the peer holds of `origin`; `None` if it holds nothing.
    pub async fn origin(&self, origin: NodeId) -> Result<Option<OriginDoc>, PeerError> {
        let path = format!("v1/origins/{origin}");
        match self
            .send(
                reqwest::Method::GET,
                &path,
                None,
                Vec::new(),
                &[],
                REQUEST_TIMEOUT,
            )
            .await
        {
            Ok(response) => Ok(Some(self.json(response).await?)),
            Err(PeerError::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /v1/origins/{id}/snapshots?after=SEQ`: the origin's snapshots the peer holds after
    /// `after` (signatures not yet checked).
    pub async fn snapshots(&self, origin: NodeId, after: Seq) -> Result<Vec<Snapshot>, PeerError> {
        #[derive(serde::Deserialize)]
        struct List {
            snapshots: Vec<wire::SnapshotDoc>,
        }
        let path = format!("v1/origins/{origin}/snapshots");
        let query = format!("after={}", after.0);
        let response = self
            .send(
                reqwest::Method::GET,
                &path,
                Some(&query),
                Vec::new(),
                &[],
                REQUEST_TIMEOUT,
            )
            .await?;
        let list: List = self.json(response).await?;
        list.snapshots
            .iter()
            .map(|d| d.to_snapshot())
            .collect::<Result<_, _>>()
            .map_err(|e| self.invalid(e))
    }

    /// `POST /v1/origins/{id}/snapshots`: hands the peer a snapshot of an origin it holds.
    pub async fn push_snapshot(&self, snapshot: &Snapshot) -> Result<(), PeerError> {
        let path = format!("v1/origins/{}/snapshots", snapshot.origin);
        let body = serde_json::to_vec(&wire::SnapshotDoc::from(snapshot)).expect("serializable");
        self.send(
            reqwest::Method::POST,
            &path,
            None,
            body,
            &[(CONTENT_TYPE, "application/json")],
            REQUEST_TIMEOUT,
        )
        .await
        .map(drop)
    }

    /// `GET /v1/origins/{id}/entries`: the page after `after`, waiting up to `wait` for one to
    /// exist. `None` when there is nothing after `after`.
    pub async fn page(
        &self,
        origin: NodeId,
        after: Seq,
        wait: Duration,
    ) -> Result<Option<Page>, PeerError> {
        let path = format!("v1/origins/{origin}/entries");
        let query = format!(
            "after={}&limit={PAGE_ENTRIES}&wait={}",
            after.0,
            wait.as_secs()
        );
        let Some((raw, wire_bytes)) = self.get_page(&path, &query, REQUEST_TIMEOUT + wait).await?
        else {
            return Ok(None);
        };
        let (checkpoint, entries) = wire::decode_page(&raw).map_err(|e| self.invalid(e))?;
        Ok(Some(Page {
            checkpoint,
            entries,
            wire_bytes,
        }))
    }

    /// A GET of a page (entries or base): the body decompressed when the peer compressed it,
    /// and its size on the wire; `None` for `204 No Content`.
    async fn get_page(
        &self,
        path: &str,
        query: &str,
        timeout: Duration,
    ) -> Result<Option<(Vec<u8>, usize)>, PeerError> {
        let response = self
            .send(
                reqwest::Method::GET,
                path,
                Some(query),
                Vec::new(),
                &[(ACCEPT_ENCODING, "zstd")],
                timeout,
            )
            .await?;
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let zstd = response
            .headers()
            .get(CONTENT_ENCODING)
            .is_some_and(|v| v.as_bytes() == b"zstd");
        let body = self.read_capped(response, wire::MAX_PAGE).await?;
        let wire_bytes = body.len();
        let raw = if zstd {
            wire::decompress(&body).map_err(|e| self.invalid(e))?
        } else {
            body
        };
        Ok(Some((raw, wire_bytes)))
    }

    fn invalid(&self, source: WireError) -> PeerError {
        PeerError::Invalid {
            peer: self.name.clone(),
            source,
        }
    }

    /// `GET /v1/origins/{id}/base`: one page of the base at the snapshot at `seq` (the
    /// peer's latest when `None`), entries after `after`. Returns `(snapshot, more, entries)`,
    /// nothing verified yet.
    pub async fn base_page(
        &self,
        origin: NodeId,
        seq: Option<Seq>,
        after: u64,
    ) -> Result<(Snapshot, bool, Vec<Vec<u8>>), PeerError> {
        let path = format!("v1/origins/{origin}/base");
        let query = match seq {
            Some(seq) => format!("after={after}&seq={}", seq.0),
            None => format!("after={after}"),
        };
        let (raw, _) = self
            .get_page(&path, &query, REQUEST_TIMEOUT)
            .await?
            .ok_or_else(|| {
                self.invalid(WireError::Malformed {
                    what: "base page",
                    detail: "an empty answer".into(),
                })
            })?;
        wire::decode_base_page(&raw).map_err(|e| self.invalid(e))
    }

    /// `POST /v1/origins/{id}/entries`: pushes a page (already encoded) and returns the
    /// receipt the peer signed, checked: signed by the peer, for this origin, at the page's
    /// checkpoint or beyond. Also returns the bytes sent (the compressed body).
    pub async fn push(
        &self,
        peer_id: NodeId,
        checkpoint: &Checkpoint,
        page: &[u8],
    ) -> Result<(Receipt, usize), PeerError> {
        let path = format!("v1/origins/{}/entries", checkpoint.origin);
        let body = wire::compress(page);
        let sent = body.len();
        let response = self
            .send(
                reqwest::Method::POST,
                &path,
                None,
                body,
                &[(CONTENT_TYPE, PAGE_TYPE), (CONTENT_ENCODING, "zstd")],
                REQUEST_TIMEOUT,
            )
            .await?;
        let doc: wire::ReceiptDoc = self.json(response).await?;
        let invalid = |detail: String| {
            self.invalid(WireError::Malformed {
                what: "receipt",
                detail,
            })
        };
        let receipt = doc.to_receipt().map_err(|e| invalid(e.to_string()))?;
        receipt.verify().map_err(|e| invalid(e.to_string()))?;
        // A receipt at the page's checkpoint must name its hash; one beyond it (the holder got
        // more from elsewhere) is checked by the caller against what it holds.
        if receipt.holder != peer_id
            || receipt.origin != checkpoint.origin
            || receipt.seq < checkpoint.seq
            || (receipt.seq == checkpoint.seq && receipt.hash != checkpoint.hash)
        {
            return Err(invalid(format!(
                "receipt for {} at seq {} by {} does not acknowledge the push",
                receipt.origin, receipt.seq, receipt.holder
            )));
        }
        Ok((receipt, sent))
    }
}

impl PeerClient {
    /// `POST /v1/origins/{id}/receipts`: hands the peer receipts of `origin` (this node's own
    /// for what it pulled, and those of other holders it relays). `Ok(None)` when the peer
    /// does not know the endpoint (an older version answers 404 for every unknown route; a
    /// peer that does not hold the origin answers 404 too).
    pub async fn post_receipts(
        &self,
        origin: NodeId,
        receipts: &[Receipt],
    ) -> Result<Option<wire::ReceiptsAnswer>, PeerError> {
        let path = format!("v1/origins/{origin}/receipts");
        let doc = wire::ReceiptsDoc {
            receipts: receipts.iter().map(wire::ReceiptDoc::from).collect(),
        };
        let body = serde_json::to_vec(&doc).expect("serializable");
        match self
            .send(
                reqwest::Method::POST,
                &path,
                None,
                body,
                &[(CONTENT_TYPE, "application/json")],
                REQUEST_TIMEOUT,
            )
            .await
        {
            Ok(response) => Ok(Some(self.json(response).await?)),
            Err(PeerError::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// `GET /v1/node`: who a node says it is.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct NodeDoc {
    /// Its node id.
    pub id: NodeId,
    /// Its name.
    pub name: String,
}

impl PeerClient {
    /// `GET /v1/node`: the peer's id and name. Answered only when the request, signed for the
    /// id this client was made with, reaches that node and it knows this node's key: a wrong
    /// id is refused (`401`).
    pub async fn node(&self) -> Result<NodeDoc, PeerError> {
        let response = self
            .send(
                reqwest::Method::GET,
                "v1/node",
                None,
                Vec::new(),
                &[],
                REQUEST_TIMEOUT,
            )
            .await?;
        self.json(response).await
    }

    /// `PUT /v1/origins/{id}/key-backup`: stores this node's sealed key at the peer (see
    /// [`crate::keybackup`]); the peer keeps one per origin, the last one sent.
    pub async fn put_key_backup(&self, doc: &keybackup::UploadDoc) -> Result<(), PeerError> {
        let path = format!("v1/origins/{}/key-backup", self.key.id());
        let body = serde_json::to_vec(doc).expect("serializable");
        self.send(
            reqwest::Method::PUT,
            &path,
            None,
            body,
            &[(CONTENT_TYPE, "application/json")],
            REQUEST_TIMEOUT,
        )
        .await
        .map(drop)
    }
}

/// What a holder answered to a key backup fetch.
#[derive(Debug)]
pub enum KeyBackupFetch {
    /// The proof held: the backup, as the holder sent it (nothing checked yet).
    Found(keybackup::BackupDoc),
    /// The holder's uniform refusal: no backup for this id there, or not for this passphrase
    /// (by design it does not say which).
    Nothing,
}

/// `POST /v1/key-backup/{id}` at the node at `base`: the one peer request not signed by a node
/// key (the node asking has lost it), proven by `request` instead. Redirects are not followed
/// and the answer is read up to a small bound.
pub async fn fetch_key_backup(
    base: &url::Url,
    origin: NodeId,
    request: &keybackup::FetchDoc,
) -> Result<KeyBackupFetch, PeerError> {
    let peer = base.to_string();
    let transport = |reason: String| PeerError::Transport {
        peer: peer.clone(),
        reason,
    };
    let mut base = base.clone();
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    let url = base
        .join(&format!("v1/key-backup/{origin}"))
        .map_err(|e| transport(format!("bad url: {e}")))?;
    let http = net::client_builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| transport(net::transport_reason(&e)))?;
    let response = http
        .post(url)
        .timeout(REQUEST_TIMEOUT)
        .header(CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(request).expect("serializable"))
        .send()
        .await
        .map_err(|e| transport(net::transport_reason(&e)))?;
    let status = response.status();
    if status.is_success() {
        let body = net::read_capped(response, MAX_ERROR)
            .await
            .map_err(|e| transport(e.to_string()))?;
        return serde_json::from_slice(&body)
            .map(KeyBackupFetch::Found)
            .map_err(|e| PeerError::Invalid {
                peer,
                source: WireError::Malformed {
                    what: "key backup",
                    detail: e.to_string(),
                },
            });
    }
    if status.is_redirection() {
        return Err(PeerError::Redirected {
            peer,
            status: status.as_u16(),
            location: response
                .headers()
                .get(reqwest::header::LOCATION)
                .map(|v| {
                    String::from_utf8_lossy(v.as_bytes())
                        .chars()
                        .take(200)
                        .collect()
                })
                .unwrap_or_else(|| "nowhere".to_owned()),
        });
    }
    let text = String::from_utf8_lossy(&net::read_prefix(response, MAX_ERROR).await).into_owned();
    let message = serde_json::from_str::<ErrorDoc>(&text)
        .map_or_else(|_| text.chars().take(200).collect(), |d| d.error);
    if status == StatusCode::NOT_FOUND && message == keybackup::NO_BACKUP {
        return Ok(KeyBackupFetch::Nothing);
    }
    Err(PeerError::Refused {
        peer,
        status: status.as_u16(),
        message,
        head: None,
    })
}
