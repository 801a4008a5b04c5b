//! The YAML that `kinto-wizard load` reads, written by `tandem export --format kinto-wizard`,
//! so that an origin's data can move to any Kinto server without tandem on the other side.
//!
//! The structure is the one `kinto-wizard dump` writes (kinto-wizard 4 and later):
//!
//! ```yaml
//! %YAML 1.2
//! ---
//! buckets:
//!   "blog":
//!     data: {"id": "blog", "last_modified": 1700000000000}
//!     permissions: {"write": ["account:alice"]}
//!     groups:
//!       "editors":
//!         data: {"id": "editors", "last_modified": 1700000000001, "members": ["account:bob"]}
//!         permissions: {"write": ["account:alice"]}
//!     collections:
//!       "posts":
//!         data: {"id": "posts", "last_modified": 1700000000002}
//!         permissions: {"record:create": ["system.Authenticated"]}
//!         records:
//!           "p1":
//!             data: {"id": "p1", "last_modified": 1700000000003, "title": "yes"}
//!             permissions: {}
//! ```
//!
//! `data` and `permissions` are the objects the source gave, `id` and `last_modified`
//! included, as kinto-wizard's own dump has them. A record always has `permissions` (`{}` when
//! none were recorded): kinto-wizard's load requires it of records. Buckets, groups and
//! collections recorded without permissions have no `permissions` key.
//!
//! Why no YAML library: the values must come back exactly as the source gave them, and a
//! serde-based writer would first parse them into `serde_json::Value`, which turns integers
//! beyond 64 bits into floats (unless serde_json's `arbitrary_precision`, which changes number
//! handling for the whole program). YAML 1.2 reads JSON's flow syntax, so `data` and
//! `permissions` are written as JSON flow collections transcoded token by token: numbers,
//! `true`, `false` and `null` are copied byte for byte, and every string, id and key is a
//! double-quoted scalar, so no reader can take `yes`, `null`, `1e3` or `2018-06-22` for
//! anything but a string. Two things JSON allows and YAML does not are taken care of:
//!
//! - The file is pure ASCII: every other character is written as a `\uXXXX` or `\UXXXXXXXX`
//!   escape. YAML forbids some characters even inside quotes (C1 controls, DEL), treats others
//!   as line breaks (U+0085, U+2028, U+2029), and kinto-wizard opens the file in the locale's
//!   encoding, which an ASCII file survives whatever it is.
//! - A YAML reader takes an implicit key only up to 1024 characters; a longer key is written as
//!   an explicit one (`? "key" : value`).
//!
//! The `%YAML 1.2` directive says how to read numbers such as `1e3` (a float in YAML 1.2, a
//! string in 1.1); kinto-wizard's reader, ruamel.yaml, reads 1.2.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Keys (quoted) longer than this are written as explicit keys: YAML readers look at most
/// 1024 characters ahead for the `:` of an implicit key.
const LONGEST_IMPLICIT_KEY: usize = 1000;

/// How deep `data` may nest; deeper JSON is refused rather than overflowing the stack.
const MAX_DEPTH: usize = 512;

/// The selected state of an origin, arranged as kinto-wizard arranges it.
#[derive(Debug, Default)]
pub struct Tree {
    buckets: BTreeMap<String, Bucket>,
    /// Objects that have no place in kinto-wizard's format, counted for the summary.
    left_out: LeftOut,
}

/// What an export for kinto-wizard leaves out, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LeftOut {
    /// Accounts (`/accounts/…`).
    pub accounts: usize,
    /// tandem's own records: its description of the source, the moves of buckets.
    pub tandem: usize,
    /// Any other object outside buckets.
    pub other: usize,
}

impl LeftOut {
    /// "2 accounts, 1 of tandem's own records": the kinds left out, or None.
    pub fn describe(&self) -> Option<String> {
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let parts: Vec<String> = [
            (self.accounts > 0).then(|| plural(self.accounts, "account", "accounts")),
            (self.tandem > 0).then(|| {
                format!(
                    "{} of tandem's own records (such as its description of the source, or a bucket's move)",
                    self.tandem
                )
            }),
            (self.other > 0).then(|| {
                plural(
                    self.other,
                    "other object outside buckets",
                    "other objects outside buckets",
                )
            }),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

#[derive(Debug, Default)]
struct Bucket {
    /// `{"data":…,"permissions":…}` as recorded; `None` when only objects below it are held.
    body: Option<Vec<u8>>,
    groups: BTreeMap<String, Vec<u8>>,
    collections: BTreeMap<String, Collection>,
}

#[derive(Debug, Default)]
struct Collection {
    body: Option<Vec<u8>>,
    records: BTreeMap<String, Vec<u8>>,
}

/// What a [`Tree`] holds, for the summary line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Buckets written.
    pub buckets: usize,
    /// Groups written.
    pub groups: usize,
    /// Collections written.
    pub collections: usize,
    /// Records written.
    pub records: usize,
    /// Objects left out, by kind.
    pub left_out: LeftOut,
}

/// An object's body as tandem records it.
#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(borrow, default)]
    permissions: Option<&'a RawValue>,
}

impl Tree {
    /// Places the object recorded at `path` with `body`; objects outside buckets are only
    /// counted as left out.
    pub fn add(&mut self, path: &str, body: &[u8]) -> anyhow::Result<()> {
        let Some(rest) = path.strip_prefix("/buckets/") else {
            if path.starts_with("/accounts/") {
                self.left_out.accounts += 1;
            } else if crate::replicate::moves::is_tandem_path(path) {
                self.left_out.tandem += 1;
            } else {
                self.left_out.other += 1;
            }
            return Ok(());
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let body = body.to_vec();
        match parts.as_slice() {
            [b] => self.bucket(b).body = Some(body),
            [b, "groups", g] => {
                self.bucket(b).groups.insert((*g).to_owned(), body);
            }
            [b, "collections", c] => self.collection(b, c).body = Some(body),
            [b, "collections", c, "records", r] => {
                self.collection(b, c).records.insert((*r).to_owned(), body);
            }
            _ => bail!("object path {path:?} is not a Kinto bucket, group, collection or record"),
        }
        Ok(())
    }

    fn bucket(&mut self, id: &str) -> &mut Bucket {
        self.buckets.entry(id.to_owned()).or_default()
    }

    fn collection(&mut self, bucket: &str, id: &str) -> &mut Collection {
        self.bucket(bucket)
            .collections
            .entry(id.to_owned())
            .or_default()
    }

    /// What it holds.
    pub fn counts(&self) -> Counts {
        let mut counts = Counts {
            buckets: self.buckets.len(),
            left_out: self.left_out,
            ..Counts::default()
        };
        for b in self.buckets.values() {
            counts.groups += b.groups.len();
            counts.collections += b.collections.len();
            counts.records += b
                .collections
                .values()
                .map(|c| c.records.len())
                .sum::<usize>();
        }
        counts
    }

    /// Writes the YAML document.
    pub fn write(&self, w: &mut impl Write) -> anyhow::Result<()> {
        w.write_all(b"%YAML 1.2\n---\n")?;
        w.write_all(b"buckets:")?;
        if self.buckets.is_empty() {
            w.write_all(b" {}\n")?;
            return Ok(());
        }
        w.write_all(b"\n")?;
        for (bid, bucket) in &self.buckets {
            let at = format!("/buckets/{bid}");
            block_key(w, 2, bid)?;
            if let Some(body) = &bucket.body {
                object(w, 4, body, false).with_context(|| format!("object {at}"))?;
            }
            write_children(w, 4, "groups", &bucket.groups, |w, gid, body| {
                object(w, 8, body, false).with_context(|| format!("object {at}/groups/{gid}"))
            })?;
            write_children(w, 4, "collections", &bucket.collections, |w, cid, c| {
                let at = format!("{at}/collections/{cid}");
                if let Some(body) = &c.body {
                    object(w, 8, body, false).with_context(|| format!("object {at}"))?;
                }
                write_children(w, 8, "records", &c.records, |w, rid, body| {
                    object(w, 12, body, true).with_context(|| format!("object {at}/records/{rid}"))
                })
            })?;
        }
        Ok(())
    }
}

/// `name:` at `indent`, then each child under its quoted id (two more spaces) and its fields
/// (four more), or `name: {}` when there is none.
fn write_children<W: Write, T>(
    w: &mut W,
    indent: usize,
    name: &str,
    children: &BTreeMap<String, T>,
    mut each: impl FnMut(&mut W, &str, &T) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    write!(w, "{:indent$}{name}:", "")?;
    if children.is_empty() {
        w.write_all(b" {}\n")?;
        return Ok(());
    }
    w.write_all(b"\n")?;
    for (id, child) in children {
        block_key(w, indent + 2, id)?;
        each(w, id, child)?;
    }
    Ok(())
}

/// A block mapping key whose value is a block mapping on the following lines.
fn block_key(w: &mut impl Write, indent: usize, key: &str) -> anyhow::Result<()> {
    let quoted = quote(key);
    if quoted.len() > LONGEST_IMPLICIT_KEY {
        writeln!(w, "{:indent$}? {quoted}\n{:indent$}:", "", "")?;
    } else {
        writeln!(w, "{:indent$}{quoted}:", "")?;
    }
    Ok(())
}

/// `data:` and `permissions:` of one recorded body, at `indent`.
fn object(w: &mut impl Write, indent: usize, body: &[u8], record: bool) -> anyhow::Result<()> {
    let body: Body<'_> = serde_json::from_slice(body)
        .context("its recorded body is not {\"data\": …, \"permissions\": …}")?;
    write!(w, "{:indent$}data: ", "")?;
    flow(w, body.data.get())?;
    w.write_all(b"\n")?;
    match body.permissions {
        Some(p) => {
            write!(w, "{:indent$}permissions: ", "")?;
            flow(w, p.get())?;
            w.write_all(b"\n")?;
        }
        // kinto-wizard's load reads a record's permissions unconditionally.
        None if record => writeln!(w, "{:indent$}permissions: {{}}", "")?,
        None => {}
    }
    Ok(())
}

/// Writes the JSON text `json` as a YAML flow node on one line: the same tokens, strings
/// re-quoted for YAML (see the module documentation).
pub fn flow(w: &mut impl Write, json: &str) -> anyhow::Result<()> {
    let mut t = Transcoder {
        src: json.as_bytes(),
        pos: 0,
        out: Vec::with_capacity(json.len() + json.len() / 8),
    };
    t.value(0)?;
    t.skip_ws();
    if t.pos != t.src.len() {
        bail!("trailing characters after JSON at byte {}", t.pos);
    }
    w.write_all(&t.out)?;
    Ok(())
}

struct Transcoder<'a> {
    src: &'a [u8],
    pos: usize,
    out: Vec<u8>,
}

impl Transcoder<'_> {
    fn skip_ws(&mut self) {
        while self
            .src
            .get(self.pos)
            .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> anyhow::Result<u8> {
        self.skip_ws();
        match self.src.get(self.pos) {
            Some(&b) => Ok(b),
            None => bail!("JSON ends too early"),
        }
    }

    fn expect(&mut self, byte: u8) -> anyhow::Result<()> {
        let got = self.peek()?;
        if got != byte {
            bail!(
                "malformed JSON at byte {}: expected {:?}, found {:?}",
                self.pos,
                byte as char,
                got as char
            );
        }
        self.pos += 1;
        Ok(())
    }

    fn value(&mut self, depth: usize) -> anyhow::Result<()> {
        if depth > MAX_DEPTH {
            bail!("JSON nested deeper than {MAX_DEPTH} levels");
        }
        match self.peek()? {
            b'{' => {
                self.pos += 1;
                self.out.push(b'{');
                if self.peek()? == b'}' {
                    self.pos += 1;
                    self.out.push(b'}');
                    return Ok(());
                }
                loop {
                    let key = quote(&self.string()?);
                    if key.len() > LONGEST_IMPLICIT_KEY {
                        self.out.extend_from_slice(b"? ");
                    }
                    self.out.extend_from_slice(key.as_bytes());
                    self.expect(b':')?;
                    self.out.extend_from_slice(b": ");
                    self.value(depth + 1)?;
                    match self.peek()? {
                        b',' => {
                            self.pos += 1;
                            self.out.extend_from_slice(b", ");
                        }
                        b'}' => {
                            self.pos += 1;
                            self.out.push(b'}');
                            return Ok(());
                        }
                        other => bail!(
                            "malformed JSON at byte {}: {:?} in an object",
                            self.pos,
                            other as char
                        ),
                    }
                }
            }
            b'[' => {
                self.pos += 1;
                self.out.push(b'[');
                if self.peek()? == b']' {
                    self.pos += 1;
                    self.out.push(b']');
                    return Ok(());
                }
                loop {
                    self.value(depth + 1)?;
                    match self.peek()? {
                        b',' => {
                            self.pos += 1;
                            self.out.extend_from_slice(b", ");
                        }
                        b']' => {
                            self.pos += 1;
                            self.out.push(b']');
                            return Ok(());
                        }
                        other => bail!(
                            "malformed JSON at byte {}: {:?} in an array",
                            self.pos,
                            other as char
                        ),
                    }
                }
            }
            b'"' => {
                let s = quote(&self.string()?);
                self.out.extend_from_slice(s.as_bytes());
                Ok(())
            }
            _ => self.scalar(),
        }
    }

    /// A JSON string token, decoded.
    fn string(&mut self) -> anyhow::Result<String> {
        if self.peek()? != b'"' {
            bail!("malformed JSON at byte {}: expected a string", self.pos);
        }
        let start = self.pos;
        let mut i = start + 1;
        loop {
            match self.src.get(i) {
                Some(b'"') => break,
                Some(b'\\') => i += 2,
                Some(_) => i += 1,
                None => bail!("JSON string at byte {start} is not closed"),
            }
        }
        self.pos = i + 1;
        let token = std::str::from_utf8(&self.src[start..self.pos])?;
        serde_json::from_str(token)
            .with_context(|| format!("malformed JSON string at byte {start}"))
    }

    /// A number, `true`, `false` or `null`, copied as it is after checking that it is one.
    fn scalar(&mut self) -> anyhow::Result<()> {
        let start = self.pos;
        while self
            .src
            .get(self.pos)
            .is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.'))
        {
            self.pos += 1;
        }
        let token = &self.src[start..self.pos];
        let ok = matches!(token, b"true" | b"false" | b"null") || is_json_number(token);
        if !ok {
            bail!(
                "malformed JSON at byte {start}: {:?}",
                String::from_utf8_lossy(token)
            );
        }
        self.out.extend_from_slice(token);
        Ok(())
    }
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`: every such token is also a YAML 1.2 int
/// or float.
fn is_json_number(t: &[u8]) -> bool {
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while t.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i > start
    };
    if t.get(i) == Some(&b'-') {
        i += 1;
    }
    match t.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if t.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if matches!(t.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(t.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == t.len()
}

/// `s` as a YAML double-quoted scalar in pure ASCII.
pub fn quote(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            ' '..='~' => out.push(c),
            c if (c as u32) <= 0xFFFF => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08X}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flowed(json: &str) -> String {
        let mut out = Vec::new();
        flow(&mut out, json).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strings_that_look_like_other_things_stay_quoted_strings() {
        assert_eq!(
            flowed(
                r#"["yes","no","null","~","1e3","0x10","2018-06-22",".inf","on","",true,null,false]"#
            ),
            r#"["yes", "no", "null", "~", "1e3", "0x10", "2018-06-22", ".inf", "on", "", true, null, false]"#
        );
    }

    #[test]
    fn numbers_are_copied_byte_for_byte() {
        let json = r#"[0,-0,1e3,1E+3,-1.5e-7,123456789012345678901234567890,0.1,1.0,-12345678901234567890.000000000001]"#;
        assert_eq!(
            flowed(json),
            "[0, -0, 1e3, 1E+3, -1.5e-7, 123456789012345678901234567890, 0.1, 1.0, -12345678901234567890.000000000001]"
        );
    }

    #[test]
    fn the_output_is_ascii_with_yaml_escapes() {
        assert_eq!(quote("é"), r#""\u00E9""#);
        assert_eq!(quote("😀"), r#""\U0001F600""#);
        assert_eq!(quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(quote("\n\t\r"), r#""\n\t\r""#);
        // Characters YAML forbids or reads as line breaks, even inside quotes.
        assert_eq!(
            quote("\u{0}\u{7f}\u{85}\u{9f}\u{2028}\u{2029}\u{feff}\u{fffe}"),
            r#""\u0000\u007F\u0085\u009F\u2028\u2029\uFEFF\uFFFE""#
        );
        assert_eq!(
            flowed(r#"{"\u00e9t\u00e9": "\ud83d\ude00"}"#),
            r#"{"\u00E9t\u00E9": "\U0001F600"}"#
        );
    }

    #[test]
    fn nesting_and_empties_keep_their_shape() {
        assert_eq!(
            flowed(" { \"a\" : { \"b\" : [ [ ] , { } , [1, {\"c\": null}] ] } } "),
            r#"{"a": {"b": [[], {}, [1, {"c": null}]]}}"#
        );
    }

    #[test]
    fn long_keys_are_explicit() {
        let long = "k".repeat(1200);
        assert_eq!(
            flowed(&format!(r#"{{"{long}":1,"short":2}}"#)),
            format!(r#"{{? "{long}": 1, "short": 2}}"#)
        );
        let mut out = Vec::new();
        block_key(&mut out, 2, &long).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("  ? \"{long}\"\n  :\n")
        );
    }

    #[test]
    fn malformed_json_is_refused() {
        for bad in [
            "",
            "{",
            "[1,]",
            "{\"a\" 1}",
            "tru",
            "01",
            "1.",
            "-",
            "\"abc",
            "1 2",
            "NaN",
        ] {
            assert!(flow(&mut Vec::new(), bad).is_err(), "{bad:?}");
        }
        let deep = "[".repeat(MAX_DEPTH + 2) + &"]".repeat(MAX_DEPTH + 2);
        assert!(flow(&mut Vec::new(), &deep).is_err());
    }

    #[test]
    fn a_tree_is_written_in_kinto_wizard_layout() {
        let mut tree = Tree::default();
        for (path, body) in [
            ("/accounts/alice", r#"{"data":{"id":"alice"}}"#),
            (
                "/buckets/b",
                r#"{"data":{"id":"b","last_modified":1},"permissions":{"write":["account:alice"]}}"#,
            ),
            (
                "/buckets/b/collections/c",
                r#"{"data":{"id":"c","last_modified":3}}"#,
            ),
            (
                "/buckets/b/collections/c/records/r",
                r#"{"data":{"id":"r","last_modified":4,"n":1e3}}"#,
            ),
            (
                "/buckets/b/collections/e",
                r#"{"data":{"id":"e","last_modified":5},"permissions":{}}"#,
            ),
            (
                "/buckets/b/groups/g",
                r#"{"data":{"id":"g","last_modified":2,"members":["account:bob"]},"permissions":{}}"#,
            ),
            (
                "/buckets/only-records/collections/c/records/r",
                r#"{"data":{"id":"r","last_modified":6},"permissions":{"read":["system.Everyone"]}}"#,
            ),
            ("/tandem/source", r#"{"data":{}}"#),
        ] {
            tree.add(path, body.as_bytes()).unwrap();
        }
        let mut out = Vec::new();
        tree.write(&mut out).unwrap();
        let expected = r#"%YAML 1.2
---
buckets:
  "b":
    data: {"id": "b", "last_modified": 1}
    permissions: {"write": ["account:alice"]}
    groups:
      "g":
        data: {"id": "g", "last_modified": 2, "members": ["account:bob"]}
        permissions: {}
    collections:
      "c":
        data: {"id": "c", "last_modified": 3}
        records:
          "r":
            data: {"id": "r", "last_modified": 4, "n": 1e3}
            permissions: {}
      "e":
        data: {"id": "e", "last_modified": 5}
        permissions: {}
        records: {}
  "only-records":
    groups: {}
    collections:
      "c":
        records:
          "r":
            data: {"id": "r", "last_modified": 6}
            permissions: {"read": ["system.Everyone"]}
"#;
        assert_eq!(String::from_utf8(out).unwrap(), expected);
        assert_eq!(
            tree.counts(),
            Counts {
                buckets: 2,
                groups: 1,
                collections: 3,
                records: 2,
                left_out: LeftOut {
                    accounts: 1,
                    tandem: 1,
                    other: 0
                }
            }
        );
        assert_eq!(
            tree.counts().left_out.describe().as_deref(),
            Some(
                "1 account, 1 of tandem's own records (such as its description of the source, or a bucket's move)"
            )
        );
    }

    #[test]
    fn an_empty_tree_is_an_empty_mapping_of_buckets() {
        let mut out = Vec::new();
        Tree::default().write(&mut out).unwrap();
        assert_eq!(out, b"%YAML 1.2\n---\nbuckets: {}\n");
        let mut tree = Tree::default();
        assert!(tree.add("/buckets/b/history/x", b"{}").is_err());
        tree.add("/buckets/b", b"{\"permissions\":{}}").unwrap();
        assert!(tree.write(&mut Vec::new()).is_err());
    }

    proptest::proptest! {
        /// Every string comes out as printable ASCII, and decoding the YAML escapes gives it back.
        #[test]
        fn quoting_is_ascii_and_reversible(s in "\\PC*|[\\u{0}-\\u{ffff}]*") {
            let q = quote(&s);
            proptest::prop_assert!(q.bytes().all(|b| (0x20..0x7f).contains(&b)));
            proptest::prop_assert_eq!(unquote(&q), s);
        }
    }

    /// Decodes the escapes [`quote`] writes (a YAML double-quoted scalar's, for those).
    fn unquote(q: &str) -> String {
        let inner = &q[1..q.len() - 1];
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            let hex = |n: usize, chars: &mut std::str::Chars<'_>| {
                let h: String = chars.take(n).collect();
                char::from_u32(u32::from_str_radix(&h, 16).unwrap()).unwrap()
            };
            match chars.next().unwrap() {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'u' => out.push(hex(4, &mut chars)),
                'U' => out.push(hex(8, &mut chars)),
                other => out.push(other),
            }
        }
        out
    }
}
