//! Kinto HTTP client (reqwest with rustls): authentication, the server root, paged lists with
//! `_since` and `If-None-Match`, single objects, and Kinto's back-pressure headers.
//!
//! Bodies are kept as the exact bytes Kinto sent ([`serde_json::value::RawValue`]): no number
//! or key re-formatting happens between Kinto and the feed.
//!
//! Kinto treats a wrong password as an anonymous request (it answers, just with less), so
//! [`KintoClient::server_info`] checks that `user.id` is present and fails otherwise.
//!
//! Every request carries the account's credentials, so the client only ever talks to the
//! configured server: redirects are refused ([`KintoError::Redirected`]), a `Next-Page` is
//! followed on the configured server and only under its root path, and every body is read
//! with a bound ([`MAX_ANSWER`], [`MAX_ROOT`]) so that a server cannot make tandem buffer
//! without end.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap, HeaderValue};
use serde::Deserialize;
use serde_json::value::RawValue;
use url::Url;

use crate::config::{Secret, SourceAuth, SourceConfig};

/// Largest answer read for a list page, an object, a batch or a plugin call: four objects of
/// the largest size a feed entry holds ([`crate::feed::MAX_BODY_LEN`]), or a page of Kinto's
/// default 10,000 objects of 25 KiB each.
pub const MAX_ANSWER: usize = 256 << 20;
/// Largest answer read for the server root (`GET /v1/`: settings and capabilities).
pub const MAX_ROOT: usize = 1 << 20;
/// Largest part of an error answer read (for its message).
const MAX_ERROR: usize = 64 << 10;

/// Errors from talking to Kinto. [`KintoError::retry_after`] says whether (and when) to retry.
#[derive(Debug, thiserror::Error)]
pub enum KintoError {
    /// The password or token could not be read.
    #[error("cannot read the Kinto credentials: {0}")]
    Credentials(String),
    /// No HTTP answer (refused, timeout, reset, a body cut short).
    #[error("cannot reach Kinto at {url}: {reason}")]
    Unreachable {
        /// What was requested.
        url: Url,
        /// What went wrong.
        reason: String,
    },
    /// Kinto answered 5xx or 429.
    #[error("Kinto answered HTTP {status} for {url}")]
    Unavailable {
        /// What was requested.
        url: Url,
        /// The status.
        status: u16,
        /// `Retry-After`, if sent.
        retry_after: Option<Duration>,
    },
    /// The credentials were not accepted (401, or a request treated as anonymous).
    #[error(
        "Kinto did not accept the credentials of {user} at {url}; check [source] and the password or token"
    )]
    Unauthorized {
        /// What was requested.
        url: Url,
        /// Who tandem said it was ("user \"tandem\"", "the bearer token").
        user: String,
    },
    /// The account may not read this.
    #[error("Kinto refused access to {url} (HTTP 403); give the tandem account read access")]
    Forbidden {
        /// What was requested.
        url: Url,
    },
    /// Another unexpected status.
    #[error("Kinto answered HTTP {status} for {url}: {message}")]
    Status {
        /// What was requested.
        url: Url,
        /// The status.
        status: u16,
        /// Kinto's error message, if any.
        message: String,
    },
    /// A redirect: never followed, since the request carries the account's credentials.
    #[error(
        "Kinto at {url} answered HTTP {status} redirecting to {location}; tandem does not follow redirects: configure the URL where the server answers"
    )]
    Redirected {
        /// What was requested.
        url: Url,
        /// The status.
        status: u16,
        /// Its `Location` header (at most 200 characters), or "nowhere".
        location: String,
    },
    /// A `Next-Page` outside the configured server's root path.
    #[error(
        "Kinto at {url} sent a Next-Page outside the root path it is configured with: {next}; not followed (the request would carry the credentials there)"
    )]
    NextPageElsewhere {
        /// The request whose answer named it.
        url: Url,
        /// The `Next-Page` URL (at most 200 characters).
        next: String,
    },
    /// An answer larger than tandem reads.
    #[error(
        "the answer from {url} is larger than {limit} bytes; if this is a list page, set Kinto's `paginate_by` setting (say, 1000) for smaller pages"
    )]
    TooLarge {
        /// What was requested.
        url: Url,
        /// The bound, in bytes.
        limit: usize,
    },
    /// An answer that does not parse as what Kinto sends.
    #[error("unexpected answer from {url}: {what}")]
    Protocol {
        /// What was requested.
        url: Url,
        /// What is wrong with it.
        what: String,
    },
}

impl crate::backoff::RetryHint for KintoError {
    fn retry_after(&self) -> Option<Duration> {
        KintoError::retry_after(self)
    }

    /// Credentials that cannot be read or that Kinto refuses, a redirect (never followed) and a
    /// next page outside the server's root stay so until the configuration, the Kinto account
    /// or the server changes.
    fn heals(&self) -> bool {
        !matches!(
            self,
            KintoError::Credentials(_)
                | KintoError::Unauthorized { .. }
                | KintoError::Forbidden { .. }
                | KintoError::Redirected { .. }
                | KintoError::NextPageElsewhere { .. }
        )
    }
}

impl KintoError {
    /// The delay Kinto asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            KintoError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// What `GET /v1/` tells about the server and the account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// `project_version`.
    pub version: String,
    /// The authenticated principal, e.g. `account:tandem`.
    pub user_id: String,
    /// `settings.batch_max_requests` (None: unlimited).
    pub batch_max_requests: Option<u64>,
    /// `settings.explicit_permissions` (Kinto's default: true).
    pub explicit_permissions: bool,
    /// Whether the history plugin is installed.
    pub history: bool,
    /// The kinto-tandem plugin, when the server runs it.
    pub tandem: Option<TandemPlugin>,
}

/// What the kinto-tandem plugin offers (its `tandem` capability in `GET /v1/`; see
/// `docs/kinto-plugin.md`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TandemPlugin {
    /// The plugin's version.
    #[serde(default)]
    pub version: String,
    /// `GET /v1/tandem/journal` and `/v1/tandem/objects` are served.
    #[serde(default)]
    pub journal: bool,
    /// `POST /v1/tandem/restore` is served.
    #[serde(default)]
    pub restore: bool,
    /// A fingerprint of the secrets that decide default bucket ids and `basicauth:` principals.
    #[serde(default)]
    pub secrets_fingerprint: Option<String>,
}

/// What one sub-request of a batch answered, as far as a writer needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAnswer {
    /// Its HTTP status.
    pub status: u16,
    /// `data.last_modified`: the timestamp Kinto kept for the object written or deleted.
    pub last_modified: Option<i64>,
    /// `details.existing.last_modified` of a `412`: the object already there.
    pub existing_last_modified: Option<i64>,
    /// Kinto's error message, if any.
    pub message: String,
}

/// One page of a plural endpoint.
#[derive(Debug)]
pub struct Page {
    /// The list's `ETag` (max `last_modified` of the list, tombstones included).
    pub etag: Option<i64>,
    /// Items exactly as Kinto sent them.
    pub items: Vec<Box<RawValue>>,
    /// `Next-Page`, when there are more: on the configured server, under its root.
    pub next: Option<Url>,
}

/// Result of a conditional list request.
#[derive(Debug)]
pub enum ListResult {
    /// 304: nothing changed since the given ETag.
    NotModified,
    /// A page of results.
    Page(Page),
}

/// How many times a GET that Kinto answered with a server error (and no `Retry-After`) is
/// asked again before the error is returned.
const GET_RETRIES: u32 = 2;
/// The first pause before asking again; the second is up to twice as long (jittered).
const GET_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// A Kinto client for one server and account.
pub struct KintoClient {
    http: reqwest::Client,
    root: Url,
    user: String,
    auth: HeaderValue,
    /// Until when Kinto asked clients to stay away (`Backoff` header).
    backoff_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for KintoClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KintoClient")
            .field("root", &self.root)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl KintoClient {
    /// Builds a client from the `[source]` configuration, reading the password or token now.
    pub fn new(config: &SourceConfig) -> Result<KintoClient, KintoError> {
        let header = match &config.auth {
            SourceAuth::Basic { user, password } => {
                let password = read_secret(password)?;
                let credentials = zeroize::Zeroizing::new(base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    format!("{user}:{}", password.as_str()),
                ));
                zeroize::Zeroizing::new(format!("Basic {}", credentials.as_str()))
            }
            SourceAuth::Bearer { token } => {
                zeroize::Zeroizing::new(format!("Bearer {}", read_secret(token)?.as_str()))
            }
        };
        let mut auth = HeaderValue::from_str(&header).map_err(|_| {
            KintoError::Credentials(
                "the password or token contains characters not allowed in a header".into(),
            )
        })?;
        auth.set_sensitive(true);
        let http = crate::net::client_builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| KintoError::Credentials(format!("cannot build the HTTP client: {e}")))?;
        Ok(KintoClient {
            http,
            root: config.url.clone(),
            user: config.auth.who(),
            auth,
            backoff_until: Mutex::new(None),
        })
    }

    /// The server root (ends with `/v1/`).
    pub fn root(&self) -> &Url {
        &self.root
    }

    /// How long Kinto's last `Backoff` header still asks us to wait (zero if none).
    pub fn backoff_remaining(&self) -> Duration {
        let until = *self.backoff_until.lock().unwrap_or_else(|e| e.into_inner());
        until.map_or(Duration::ZERO, |t| {
            t.saturating_duration_since(Instant::now())
        })
    }

    /// `GET /v1/`: checks the credentials (the account must be authenticated) and reads the
    /// server's settings and capabilities.
    pub async fn server_info(&self) -> Result<ServerInfo, KintoError> {
        #[derive(Deserialize)]
        struct Root {
            project_version: String,
            #[serde(default)]
            settings: Settings,
            #[serde(default)]
            capabilities: serde_json::Map<String, serde_json::Value>,
            user: Option<User>,
        }
        #[derive(Deserialize, Default)]
        struct Settings {
            batch_max_requests: Option<u64>,
            explicit_permissions: Option<bool>,
        }
        #[derive(Deserialize)]
        struct User {
            id: String,
        }
        let url = self.root.clone();
        let (_, body) = self.get(&url, None, MAX_ROOT).await?;
        let body = body.ok_or_else(|| protocol(&url, "no body"))?;
        let root: Root = serde_json::from_slice(&body)
            .map_err(|e| protocol(&url, &format!("not a Kinto root: {e}")))?;
        let user = root.user.ok_or_else(|| KintoError::Unauthorized {
            url: url.clone(),
            user: self.user.clone(),
        })?;
        Ok(ServerInfo {
            version: root.project_version,
            user_id: user.id,
            batch_max_requests: root.settings.batch_max_requests.filter(|n| *n > 0),
            explicit_permissions: root.settings.explicit_permissions.unwrap_or(true),
            history: root.capabilities.contains_key("history"),
            tandem: root
                .capabilities
                .get("tandem")
                .map(|c| {
                    serde_json::from_value(c.clone())
                        .map_err(|e| protocol(&url, &format!("unreadable tandem capability: {e}")))
                })
                .transpose()?,
        })
    }

    /// Fetches one page of a plural endpoint. `path` is relative to the root (e.g.
    /// `buckets/b/collections`) or a `Next-Page` URL. With `if_none_match`, an unchanged list
    /// answers [`ListResult::NotModified`].
    pub async fn list(
        &self,
        target: ListTarget<'_>,
        if_none_match: Option<i64>,
    ) -> Result<ListResult, KintoError> {
        self.list_head(target, if_none_match).await?.read().await
    }

    /// The first half of [`list`](Self::list): the answer's status and headers, so that the
    /// next page (its `Next-Page`) can be asked for while this one's body is read and parsed.
    pub async fn list_head(
        &self,
        target: ListTarget<'_>,
        if_none_match: Option<i64>,
    ) -> Result<ListHead<'_>, KintoError> {
        let url = match target {
            ListTarget::Next(next) => self.next_page(next, next)?,
            ListTarget::Path { path, since, limit } => {
                let mut url = self.url(path)?;
                {
                    let mut q = url.query_pairs_mut();
                    q.append_pair("_sort", "last_modified");
                    if let Some(since) = since {
                        q.append_pair("_since", &since.to_string());
                    }
                    if let Some(limit) = limit {
                        q.append_pair("_limit", &limit.to_string());
                    }
                }
                url
            }
        };
        let (headers, mut response) = self.get_head(&url, if_none_match).await?;
        if let Some(answer) = response.take_if(|a| !a.status().is_success()) {
            // An error status: Kinto's message, now.
            return Err(match self.read_answer(&url, answer, 0).await {
                Err(e) => e,
                Ok(_) => protocol(&url, "an error status read as a success"),
            });
        }
        let next = match (&response, headers.get("next-page")) {
            (Some(_), Some(v)) => {
                let next = v
                    .to_str()
                    .ok()
                    .and_then(|s| Url::parse(s).ok())
                    .ok_or_else(|| protocol(&url, "unreadable Next-Page header"))?;
                Some(self.next_page(&url, &next)?)
            }
            _ => None,
        };
        Ok(ListHead {
            client: self,
            etag: etag(&headers),
            next,
            url,
            response,
        })
    }

    /// Where to fetch a `Next-Page`: Kinto builds it from its own idea of its host
    /// (`kinto.http_host` behind a proxy, often another scheme or port), so its path and query
    /// are kept, on the server this client was configured for, and never elsewhere. Its path
    /// must lie under the configured root (`/v1/` or a proxy's prefix before it), so that the
    /// credentials go to no other application on that host.
    fn next_page(&self, from: &Url, next: &Url) -> Result<Url, KintoError> {
        if !next.path().starts_with(self.root.path()) {
            return Err(KintoError::NextPageElsewhere {
                url: from.clone(),
                next: next.as_str().chars().take(200).collect(),
            });
        }
        let mut url = self.root.clone();
        url.set_path(next.path());
        url.set_query(next.query());
        Ok(url)
    }

    /// Pages through the list at `path` (relative to the root): see [`Pager`].
    pub fn pages<'a>(
        &'a self,
        path: &'a str,
        since: Option<i64>,
        if_none_match: Option<i64>,
    ) -> Pager<'a> {
        Pager {
            client: self,
            path,
            since,
            if_none_match,
            next: None,
            pages_read: 0,
        }
    }

    /// Fetches one object (`{"data":…,"permissions":…}`, bytes as sent). `None` if it does not
    /// exist or is not visible (Kinto hides missing buckets behind 403).
    pub async fn object(&self, path: &str) -> Result<Option<Box<RawValue>>, KintoError> {
        let url = self.url(path)?;
        match self.get(&url, None, MAX_ANSWER).await {
            Ok((_, Some(body))) => {
                let raw: Box<RawValue> = serde_json::from_slice(&body)
                    .map_err(|e| protocol(&url, &format!("not JSON: {e}")))?;
                Ok(Some(raw))
            }
            Ok((_, None)) => Err(protocol(&url, "304 without a condition")),
            Err(KintoError::Forbidden { .. }) => Ok(None),
            Err(KintoError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST /v1/batch` with `requests` (each a JSON sub-request, kept as given: bodies are
    /// sent byte for byte). Returns each sub-response's status and body, in order. The caller
    /// keeps each batch within [`ServerInfo::batch_max_requests`].
    pub async fn batch(&self, requests: &[Box<RawValue>]) -> Result<Vec<SubAnswer>, KintoError> {
        #[derive(Deserialize)]
        struct Answer {
            responses: Vec<Sub>,
        }
        #[derive(Deserialize)]
        struct Sub {
            status: u16,
            #[serde(default)]
            body: SubBody,
        }
        // Only these fields are decoded: the objects in the answer may hold numbers wider than
        // any machine type, which are skipped, never converted.
        #[derive(Deserialize, Default)]
        struct SubBody {
            data: Option<Stamp>,
            details: Option<Details>,
            message: Option<String>,
        }
        #[derive(Deserialize)]
        struct Details {
            existing: Option<Stamp>,
        }
        #[derive(Deserialize)]
        struct Stamp {
            last_modified: Option<i64>,
        }
        let url = self.url("batch")?;
        let mut body =
            Vec::with_capacity(requests.iter().map(|r| r.get().len() + 1).sum::<usize>() + 16);
        body.extend_from_slice(b"{\"requests\":[");
        for (i, r) in requests.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(r.get().as_bytes());
        }
        body.extend_from_slice(b"]}");
        let bytes = self.post_to(&url, body).await?;
        let answer: Answer = serde_json::from_slice(&bytes)
            .map_err(|e| protocol(&url, &format!("not a batch answer: {e}")))?;
        if answer.responses.len() != requests.len() {
            return Err(protocol(
                &url,
                &format!(
                    "{} answers to {} requests",
                    answer.responses.len(),
                    requests.len()
                ),
            ));
        }
        Ok(answer
            .responses
            .into_iter()
            .map(|r| SubAnswer {
                status: r.status,
                last_modified: r.body.data.and_then(|d| d.last_modified),
                existing_last_modified: r
                    .body
                    .details
                    .and_then(|d| d.existing)
                    .and_then(|e| e.last_modified),
                message: r.body.message.unwrap_or_default(),
            })
            .collect())
    }

    /// `POST` of a JSON `body` (sent byte for byte) to `path` (relative to the root); the
    /// answer's body on 2xx.
    pub async fn post(&self, path: &str, body: Vec<u8>) -> Result<Vec<u8>, KintoError> {
        let url = self.url(path)?;
        self.post_to(&url, body).await
    }

    async fn post_to(&self, url: &Url, body: Vec<u8>) -> Result<Vec<u8>, KintoError> {
        let response = self
            .http
            .post(url.clone())
            .header(header::AUTHORIZATION, self.auth.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| unreachable(url, &e))?;
        if let Some(seconds) = header_seconds(response.headers(), "backoff") {
            *self.backoff_until.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(Instant::now() + seconds);
        }
        self.read_answer(url, response, MAX_ANSWER).await
    }

    /// The body of a 2xx answer, read within `limit`; any other status as its error.
    async fn read_answer(
        &self,
        url: &Url,
        response: reqwest::Response,
        limit: usize,
    ) -> Result<Vec<u8>, KintoError> {
        let status = response.status();
        let headers = response.headers().clone();
        if status.is_success() {
            return crate::net::read_capped(response, limit)
                .await
                .map_err(|e| match e {
                    crate::net::ReadError::TooLarge { limit } => KintoError::TooLarge {
                        url: url.clone(),
                        limit,
                    },
                    e @ crate::net::ReadError::Transport(_) => KintoError::Unreachable {
                        url: url.clone(),
                        reason: e.to_string(),
                    },
                });
        }
        let body = crate::net::read_prefix(response, MAX_ERROR).await;
        Err(match self.check_status(url, status, &headers, &body) {
            Err(e) => e,
            Ok(()) => protocol(url, &format!("unexpected HTTP {status}")),
        })
    }

    /// Maps a non-2xx answer to its error.
    fn check_status(
        &self,
        url: &Url,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), KintoError> {
        match status.as_u16() {
            200..=299 => Ok(()),
            code @ 300..=399 => Err(KintoError::Redirected {
                url: url.clone(),
                status: code,
                location: headers
                    .get(header::LOCATION)
                    .map(|v| {
                        String::from_utf8_lossy(v.as_bytes())
                            .chars()
                            .take(200)
                            .collect()
                    })
                    .unwrap_or_else(|| "nowhere".to_owned()),
            }),
            401 => Err(KintoError::Unauthorized {
                url: url.clone(),
                user: self.user.clone(),
            }),
            403 => Err(KintoError::Forbidden { url: url.clone() }),
            429 | 500..=599 => Err(KintoError::Unavailable {
                url: url.clone(),
                status: status.as_u16(),
                retry_after: header_seconds(headers, "retry-after"),
            }),
            code => Err(KintoError::Status {
                url: url.clone(),
                status: code,
                message: serde_json::from_slice::<serde_json::Value>(body)
                    .ok()
                    .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
                    .unwrap_or_default(),
            }),
        }
    }

    fn url(&self, path: &str) -> Result<Url, KintoError> {
        self.root
            .join(path.trim_start_matches('/'))
            .map_err(|_| protocol(&self.root, &format!("cannot build a URL for {path:?}")))
    }

    /// One GET; `None` body on 304. Maps statuses to errors, records `Backoff`, and reads at
    /// most `limit` bytes of body.
    async fn get(
        &self,
        url: &Url,
        if_none_match: Option<i64>,
        limit: usize,
    ) -> Result<(HeaderMap, Option<Vec<u8>>), KintoError> {
        let (headers, response) = self.get_head(url, if_none_match).await?;
        let Some(response) = response else {
            return Ok((headers, None));
        };
        // Read the whole body: a connection closed early is an error here, never a short page.
        let body = self.read_answer(url, response, limit).await?;
        Ok((headers, Some(body)))
    }

    /// Sends a GET and returns the answer's headers, and the answer itself to read the body
    /// from (`None` for `304`). Honours `Backoff`.
    ///
    /// A server error without `Retry-After` is asked again, [`GET_RETRIES`] times at most,
    /// after a short jittered pause: such errors are often one request's bad luck (Kinto on
    /// PostgreSQL answers `500` to the list of an empty collection whose first object is being
    /// written at that moment), and a GET can be repeated. A `429` or `503` with `Retry-After`
    /// is Kinto asking to wait: that goes to the caller's loop, which waits as asked.
    async fn get_head(
        &self,
        url: &Url,
        if_none_match: Option<i64>,
    ) -> Result<(HeaderMap, Option<reqwest::Response>), KintoError> {
        let mut pause = crate::backoff::Backoff::new(GET_RETRY_PAUSE, GET_RETRY_PAUSE * 4);
        let response = loop {
            let mut request = self
                .http
                .get(url.clone())
                .header(header::AUTHORIZATION, self.auth.clone());
            if let Some(etag) = if_none_match {
                request = request.header(header::IF_NONE_MATCH, format!("\"{etag}\""));
            }
            let response = request.send().await.map_err(|e| unreachable(url, &e))?;
            let status = response.status();
            if !status.is_server_error()
                || response.headers().contains_key(header::RETRY_AFTER)
                || pause.failures() >= GET_RETRIES
            {
                break response;
            }
            let wait = pause.fail();
            tracing::info!(
                %url,
                status = status.as_u16(),
                wait_ms = wait.as_millis() as u64,
                "Kinto answered a server error; asking again"
            );
            tokio::time::sleep(wait).await;
        };
        let status = response.status();
        let headers = response.headers().clone();
        if let Some(seconds) = header_seconds(&headers, "backoff") {
            *self.backoff_until.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(Instant::now() + seconds);
        }
        if status == StatusCode::NOT_MODIFIED {
            return Ok((headers, None));
        }
        Ok((headers, Some(response)))
    }
}

/// A list answer whose headers arrived: [`ListHead::next`] is known before the body is read.
pub struct ListHead<'a> {
    client: &'a KintoClient,
    url: Url,
    /// The list's `ETag`.
    pub etag: Option<i64>,
    /// `Next-Page`, on the configured server under its root (see [`KintoClient::list`]).
    pub next: Option<Url>,
    /// `None` for `304`.
    response: Option<reqwest::Response>,
}

impl ListHead<'_> {
    /// Reads and parses the body: the page (or `NotModified`). An error status is an error
    /// here, with Kinto's message.
    pub async fn read(self) -> Result<ListResult, KintoError> {
        #[derive(Deserialize)]
        struct ListBody {
            data: Vec<Box<RawValue>>,
        }
        let Some(response) = self.response else {
            return Ok(ListResult::NotModified);
        };
        // Read the whole body: a connection closed early is an error here, never a short page.
        let body = self
            .client
            .read_answer(&self.url, response, MAX_ANSWER)
            .await?;
        let parsed: ListBody = serde_json::from_slice(&body)
            .map_err(|e| protocol(&self.url, &format!("not a Kinto list: {e}")))?;
        Ok(ListResult::Page(Page {
            etag: self.etag,
            items: parsed.data,
            next: self.next,
        }))
    }
}

/// Reads a plural endpoint page after page, ascending by `last_modified`: the first request
/// with `_since` and `If-None-Match`, then each `Next-Page` until there is none.
pub struct Pager<'a> {
    client: &'a KintoClient,
    path: &'a str,
    since: Option<i64>,
    if_none_match: Option<i64>,
    next: Option<Url>,
    pages_read: usize,
}

impl Pager<'_> {
    /// The next answer, `None` after the last page. Only the first can be
    /// [`ListResult::NotModified`]; a page's own `next` says whether more follow.
    pub async fn next(&mut self) -> Result<Option<ListResult>, KintoError> {
        let target = match (self.pages_read, &self.next) {
            (0, _) => ListTarget::Path {
                path: self.path,
                since: self.since,
                limit: None,
            },
            (_, Some(url)) => ListTarget::Next(url),
            (_, None) => return Ok(None),
        };
        let condition = if self.pages_read == 0 {
            self.if_none_match
        } else {
            None
        };
        let result = self.client.list(target, condition).await?;
        self.pages_read += 1;
        self.next = match &result {
            ListResult::Page(page) => page.next.clone(),
            ListResult::NotModified => None,
        };
        Ok(Some(result))
    }

    /// How many answers [`Pager::next`] has returned (0 before the first request).
    pub fn pages_read(&self) -> usize {
        self.pages_read
    }
}

/// What to list.
#[derive(Debug, Clone, Copy)]
pub enum ListTarget<'a> {
    /// A plural endpoint relative to the root, sorted by ascending `last_modified`.
    Path {
        /// e.g. `buckets/b/collections/c/records`.
        path: &'a str,
        /// Only changes after this timestamp (tombstones included).
        since: Option<i64>,
        /// Page size.
        limit: Option<u32>,
    },
    /// A `Next-Page` URL from the previous page.
    Next(&'a Url),
}

fn read_secret(secret: &Secret) -> Result<zeroize::Zeroizing<String>, KintoError> {
    secret.check_private().map_err(KintoError::Credentials)?;
    let value = match secret {
        Secret::File(path) => std::fs::read_to_string(path)
            .map_err(|e| KintoError::Credentials(format!("{}: {e}", path.display())))?,
        Secret::Env(var) => std::env::var(var).map_err(|_| {
            KintoError::Credentials(format!("environment variable {var} is not set"))
        })?,
    };
    let value = zeroize::Zeroizing::new(value);
    let first = value.lines().next().unwrap_or("").to_owned();
    if first.is_empty() {
        return Err(KintoError::Credentials(
            "the password or token is empty".into(),
        ));
    }
    Ok(zeroize::Zeroizing::new(first))
}

fn etag(headers: &HeaderMap) -> Option<i64> {
    headers
        .get(header::ETAG)?
        .to_str()
        .ok()?
        .trim_matches('"')
        .parse()
        .ok()
}

fn header_seconds(headers: &HeaderMap, name: &str) -> Option<Duration> {
    let seconds: u64 = headers.get(name)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds.min(3600)))
}

fn protocol(url: &Url, what: &str) -> KintoError {
    KintoError::Protocol {
        url: url.clone(),
        what: what.to_owned(),
    }
}

fn unreachable(url: &Url, e: &reqwest::Error) -> KintoError {
    let mut reason = crate::net::transport_reason(e);
    if e.is_body() || e.is_decode() {
        reason = format!("the answer was cut short ({reason})");
    }
    KintoError::Unreachable {
        url: url.clone(),
        reason,
    }
}

/// `json` with every integer literal too wide for 64 bits written in exponent form
/// (`179769313486231570000…0` becomes `17976931348623157e292`), everything else byte for byte.
///
/// Kinto parses request bodies with rapidjson, which reads such integers as floats inexactly
/// (`17976931348623157` followed by 292 zeros comes out as `1.7976931348623145e308`), while it
/// reads the exponent form exactly. Kinto on PostgreSQL serves large floats as such integers
/// (`numeric`), so a restore that sent them back as served would change them.
pub fn exact_for_kinto(json: &str) -> std::borrow::Cow<'_, str> {
    let bytes = json.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    let mut in_string = false;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                i += 1;
                while i < bytes.len()
                    && matches!(bytes[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    i += 1;
                }
                let literal = &json[start..i];
                let digits = literal.trim_start_matches('-');
                let integer = digits.bytes().all(|d| d.is_ascii_digit());
                if integer && digits.len() >= 20 && digits.parse::<u64>().is_err() {
                    let significant = digits.trim_end_matches('0');
                    let zeros = digits.len() - significant.len();
                    let sign = if literal.starts_with('-') { "-" } else { "" };
                    let out = out.get_or_insert_with(|| String::with_capacity(json.len()));
                    out.push_str(&json[copied..start]);
                    out.push_str(&format!("{sign}{significant}e{zeros}"));
                    copied = i;
                }
            }
            _ => i += 1,
        }
    }
    match out {
        None => std::borrow::Cow::Borrowed(json),
        Some(mut out) => {
            out.push_str(&json[copied..]);
            std::borrow::Cow::Owned(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::exact_for_kinto;
    use proptest::prelude::*;

    #[test]
    fn wide_integers_take_the_exponent_form() {
        let max = format!("17976931348623157{}", "0".repeat(292));
        assert_eq!(
            exact_for_kinto(&format!(
                r#"{{"a":{max},"b":-{max},"s":"{max}","n":18446744073709551615}}"#
            )),
            format!(
                r#"{{"a":17976931348623157e292,"b":-17976931348623157e292,"s":"{max}","n":18446744073709551615}}"#
            )
        );
        assert_eq!(
            exact_for_kinto(r#"{"x":18446744073709551616}"#),
            r#"{"x":18446744073709551616e0}"#
        );
        assert_eq!(
            exact_for_kinto(r#"{"q":"a\"1000000000000000000000"}"#),
            r#"{"q":"a\"1000000000000000000000"}"#
        );
        assert_eq!(exact_for_kinto("[1.5e300,1e-5,0]"), "[1.5e300,1e-5,0]");
    }

    proptest! {
        #[test]
        fn the_value_is_kept(significant in "[1-9][0-9]{0,16}", zeros in 0usize..320, text in any::<String>()) {
            let s = serde_json::to_string(&text).unwrap();
            let literal = format!("{significant}{}", "0".repeat(zeros));
            let json = format!("[{s},{literal},{s}]");
            let exact = exact_for_kinto(&json);
            let wide = literal.len() >= 20 && literal.parse::<u64>().is_err();
            if wide {
                prop_assert_eq!(exact.as_ref(), format!("[{s},{}e{},{s}]", significant.trim_end_matches('0'), zeros + significant.len() - significant.trim_end_matches('0').len()));
            } else {
                prop_assert_eq!(exact.as_ref(), json.as_str());
            }
        }
    }
}
