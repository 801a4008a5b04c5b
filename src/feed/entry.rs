//! The entry encoding (see the table in the [`crate::feed`] docs): encoding, decoding and the
//! field rules both apply, for plain entries (version 1) and sealed ones (version 2).

use super::{
    ENTRY_OVERHEAD, ENTRY_VERSION, EntryHash, FeedError, MAX_BODY_LEN, MAX_PATH_LEN, MAX_SEQ, Op,
    SEALED_ENTRY_VERSION, SEALED_PATH_LEN, SEALED_PREFIX, Seq,
};

/// A decoded view of an entry's bytes (borrowed, no copy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryRef<'a> {
    /// The entry version: [`ENTRY_VERSION`] (plain) or [`SEALED_ENTRY_VERSION`] (sealed).
    pub version: u8,
    /// Position in the feed.
    pub seq: Seq,
    /// Hash of the previous entry.
    pub prev: EntryHash,
    /// Milliseconds since the Unix epoch.
    pub ts: u64,
    /// Put or delete.
    pub op: Op,
    /// Source object path.
    pub path: &'a str,
    /// Object body (empty for delete).
    pub body: &'a [u8],
}

/// Encodes a plain entry (version 1). `body` must be a JSON object for a put, and empty or a
/// JSON object for a delete.
pub fn encode_entry(
    seq: Seq,
    prev: EntryHash,
    ts: u64,
    op: Op,
    path: &str,
    body: &[u8],
) -> Result<Vec<u8>, FeedError> {
    check_fields(seq, ts, op, path, body)?;
    Ok(encode(ENTRY_VERSION, seq, prev, ts, op, path, body))
}

/// Encodes a sealed entry (version 2). `path` must be a sealed path; `body` is a sealed body,
/// which only readers of the feed open: any bytes, not empty for a put.
pub fn encode_sealed_entry(
    seq: Seq,
    prev: EntryHash,
    ts: u64,
    op: Op,
    path: &str,
    body: &[u8],
) -> Result<Vec<u8>, FeedError> {
    check_sealed_fields(seq, ts, op, path, body)?;
    Ok(encode(SEALED_ENTRY_VERSION, seq, prev, ts, op, path, body))
}

fn encode(
    version: u8,
    seq: Seq,
    prev: EntryHash,
    ts: u64,
    op: Op,
    path: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENTRY_OVERHEAD + path.len() + body.len());
    out.push(version);
    out.extend_from_slice(&seq.0.to_be_bytes());
    out.extend_from_slice(&prev.0);
    out.extend_from_slice(&ts.to_be_bytes());
    out.push(op.code());
    out.extend_from_slice(&(path.len() as u16).to_be_bytes());
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The rules on `seq` and `ts`, the same in both versions.
fn check_position(seq: Seq, ts: u64) -> Result<(), FeedError> {
    if seq.0 == 0 || seq.0 > MAX_SEQ {
        return Err(FeedError::Malformed("seq out of range"));
    }
    if ts > i64::MAX as u64 {
        return Err(FeedError::Malformed("ts out of range"));
    }
    Ok(())
}

fn check_fields(seq: Seq, ts: u64, op: Op, path: &str, body: &[u8]) -> Result<(), FeedError> {
    check_position(seq, ts)?;
    check_change(op, path, body)
}

/// The rules a plain entry's op, path and body follow (see the module docs): what a change
/// must be before it is recorded, plain or sealed.
pub fn check_change(op: Op, path: &str, body: &[u8]) -> Result<(), FeedError> {
    if path.is_empty() || path.len() > MAX_PATH_LEN || !path.starts_with('/') {
        return Err(FeedError::Malformed(
            "path must start with / and be 1..=4096 bytes",
        ));
    }
    if body.len() > MAX_BODY_LEN {
        return Err(FeedError::Malformed("body larger than 64 MiB"));
    }
    match op {
        Op::Delete if !body.is_empty() && !is_json_object(body) => Err(FeedError::Malformed(
            "delete body is neither empty nor a JSON object",
        )),
        Op::Put if !is_json_object(body) => {
            Err(FeedError::Malformed("put body is not a JSON object"))
        }
        _ => Ok(()),
    }
}

fn check_sealed_fields(
    seq: Seq,
    ts: u64,
    op: Op,
    path: &str,
    body: &[u8],
) -> Result<(), FeedError> {
    check_position(seq, ts)?;
    if !is_sealed_path(path) {
        return Err(FeedError::Malformed(
            "the path of a sealed entry is not /sealed/ and 43 base64url characters",
        ));
    }
    if body.len() > MAX_BODY_LEN {
        return Err(FeedError::Malformed("body larger than 64 MiB"));
    }
    if op == Op::Put && body.is_empty() {
        return Err(FeedError::Malformed("sealed put without a body"));
    }
    Ok(())
}

/// Whether `path` is a sealed path: the prefix, then 43 base64url characters (a 32-byte hash).
fn is_sealed_path(path: &str) -> bool {
    path.len() == SEALED_PATH_LEN
        && path.starts_with(SEALED_PREFIX)
        && path.as_bytes()[SEALED_PREFIX.len()..]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
}

fn is_json_object(body: &[u8]) -> bool {
    // serde_json skips over string contents without checking their UTF-8: check it first.
    std::str::from_utf8(body).is_ok()
        && body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
        && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
}

/// Decodes and validates entry bytes of either version (see the module docs for the layout).
pub fn decode_entry(bytes: &[u8]) -> Result<EntryRef<'_>, FeedError> {
    decode(bytes, true)
}

/// Decodes entry bytes that were validated by [`decode_entry`] before they were stored: the
/// layout is still checked, the JSON of the body is not parsed again. For reading a store's
/// own entries in bulk (snapshots, exports); verification uses [`decode_entry`].
pub fn decode_stored_entry(bytes: &[u8]) -> Result<EntryRef<'_>, FeedError> {
    decode(bytes, false)
}

fn decode(bytes: &[u8], check_json: bool) -> Result<EntryRef<'_>, FeedError> {
    let short = FeedError::Malformed("entry truncated");
    if bytes.len() < ENTRY_OVERHEAD {
        return Err(short);
    }
    let version = bytes[0];
    if version != ENTRY_VERSION && version != SEALED_ENTRY_VERSION {
        return Err(FeedError::Malformed("unknown entry version"));
    }
    let u64_at = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap());
    let seq = Seq(u64_at(1));
    let prev = EntryHash(bytes[9..41].try_into().unwrap());
    let ts = u64_at(41);
    let op = match bytes[49] {
        1 => Op::Put,
        2 => Op::Delete,
        _ => return Err(FeedError::Malformed("unknown op")),
    };
    let n = u16::from_be_bytes([bytes[50], bytes[51]]) as usize;
    if bytes.len() < ENTRY_OVERHEAD + n {
        return Err(short);
    }
    let path = std::str::from_utf8(&bytes[52..52 + n])
        .map_err(|_| FeedError::Malformed("path is not UTF-8"))?;
    let m = u32::from_be_bytes(bytes[52 + n..56 + n].try_into().unwrap()) as usize;
    match bytes.len().cmp(&(ENTRY_OVERHEAD + n + m)) {
        std::cmp::Ordering::Less => return Err(short),
        std::cmp::Ordering::Greater => return Err(FeedError::Malformed("trailing bytes")),
        std::cmp::Ordering::Equal => {}
    }
    let body = &bytes[56 + n..];
    if version == SEALED_ENTRY_VERSION {
        // A sealed body is opaque: the field rules cost no parse, so they always apply.
        check_sealed_fields(seq, ts, op, path, body)?;
    } else if check_json {
        check_fields(seq, ts, op, path, body)?;
    }
    Ok(EntryRef {
        version,
        seq,
        prev,
        ts,
        op,
        path,
        body,
    })
}
