//! One member order for an object's data, whichever Kinto endpoint served it.
//!
//! Kinto adds `id` and `last_modified` to the data it stores. Where they end up among the
//! other members depends on the endpoint and the storage backend:
//! - Lists and GETs on PostgreSQL: the stored members in PostgreSQL's `jsonb` order (shorter
//!   keys first), then `id`, then `last_modified`.
//! - The history plugin on PostgreSQL: everything in `jsonb` order, so `id` comes early.
//! - The memory backend: the order the writing client used, with `id` and `last_modified`
//!   appended unless the client sent them.
//!
//! The polling and history paths must record the same bytes for the same object, so both
//! pass the data through [`data_bytes`]: `id`, then `last_modified`, are moved last. Every
//! other member keeps its position, and every key and value keeps its exact bytes (numbers
//! are never re-formatted, nested objects never reordered). Data already in that order, as
//! lists serve it, is kept byte for byte. Tombstones go the same way, and the history path
//! writes its own in that order (`{"deleted":true,"id","last_modified"}`). Duplicate keys,
//! which Kinto never sends, are not looked for.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// `raw` (a JSON object, as Kinto sent it) with its top-level `id` and `last_modified`
/// members moved last, in that order; anything else about it unchanged. Not an object (or
/// not JSON): returned as it is.
pub(super) fn data_bytes(raw: &str) -> Cow<'_, str> {
    if in_order_already(raw) {
        return Cow::Borrowed(raw);
    }
    let Some(mut ordered) = members(raw) else {
        return Cow::Borrowed(raw);
    };
    let rank = |key: &str| match serde_json::from_str::<String>(key).as_deref() {
        Ok("id") => 1,
        Ok("last_modified") => 2,
        _ => 0,
    };
    if ordered.is_sorted_by_key(|(key, _)| rank(key)) {
        return Cow::Borrowed(raw);
    }
    // A stable sort: members of the same rank keep their order.
    ordered.sort_by_key(|(key, _)| rank(key));
    let mut out = String::with_capacity(raw.len());
    out.push('{');
    for (i, (key, value)) in ordered.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(key);
        out.push(':');
        out.push_str(value);
    }
    out.push('}');
    Cow::Owned(out)
}

/// Whether `raw` ends with `,"id":"…","last_modified":<digits>}` (no escapes in the id), as
/// Kinto's lists serve a record. Outside a string a bare `"` is structural, and only the
/// top-level object ends right after the digits, so this is the top level's `id` and
/// `last_modified`, last: the common case, settled without parsing the object.
fn in_order_already(raw: &str) -> bool {
    let Some(rest) = raw.trim_end().strip_suffix('}') else {
        return false;
    };
    let digits = rest.len() - rest.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let Some(rest) = rest[..rest.len() - digits].strip_suffix(",\"last_modified\":") else {
        return false;
    };
    if digits == 0 {
        return false;
    }
    let Some(rest) = rest.strip_suffix('"') else {
        return false;
    };
    let Some(start) = rest.rfind('"') else {
        return false;
    };
    let id = &rest[start + 1..];
    let before = &rest[..start];
    !id.contains('\\') && (before.ends_with(",\"id\":") || before.ends_with("{\"id\":"))
}

/// The top-level members of a JSON object as (raw key with its quotes, raw value), in order;
/// `None` if `raw` is not an object.
fn members(raw: &str) -> Option<Vec<(&str, &str)>> {
    let inner = raw.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut rest = inner.trim_start();
    let mut out = Vec::new();
    while !rest.is_empty() {
        let end = string_end(rest)?;
        let key = &rest[..end];
        rest = rest[end..].trim_start().strip_prefix(':')?.trim_start();
        // One value, borrowed from `rest`: where its bytes end is where the member ends.
        let value = <&RawValue>::deserialize(&mut serde_json::Deserializer::from_str(rest))
            .ok()?
            .get();
        let len = value.as_ptr() as usize - rest.as_ptr() as usize + value.len();
        out.push((key, &rest[..len]));
        rest = rest[len..].trim_start();
        if !rest.is_empty() {
            rest = rest.strip_prefix(',')?.trim_start();
            if rest.is_empty() {
                return None; // a trailing comma
            }
        }
    }
    Some(out)
}

/// The length of the JSON string at the start of `s` (quotes included), if one starts there.
fn string_end(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    if bytes.first() != Some(&b'"') {
        return None;
    }
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn list_order_is_kept_byte_for_byte() {
        for raw in [
            r#"{"i":0,"pad":"x","id":"r0000","last_modified":1795727496958}"#,
            r#"{"id":"r0000","last_modified":1}"#,
            r#"{"f":1.50,"n":12345678901234567890,"id":"a","last_modified":2}"#,
            r#"{"a" : {"id":"z","last_modified":3} , "id":"q", "last_modified":4}"#,
            r#"{}"#,
            r#"[1,2]"#,
            r#"not json"#,
        ] {
            assert!(
                matches!(data_bytes(raw), Cow::Borrowed(b) if b == raw),
                "{raw}"
            );
        }
    }

    #[test]
    fn the_historys_order_becomes_the_lists() {
        // PostgreSQL's jsonb order, as the history plugin serves it, and the list's order.
        let history =
            r#"{"f":1.5,"u":"\u00F1","id":"odd","deleted":true,"last_modified":1795727497036}"#;
        let list =
            r#"{"f":1.5,"u":"\u00F1","deleted":true,"id":"odd","last_modified":1795727497036}"#;
        assert_eq!(data_bytes(history), list);
        assert_eq!(data_bytes(list), list);
        // A client that put id first (memory backend), nested members untouched.
        assert_eq!(
            data_bytes(r#"{"last_modified":5,"id":"x","n":{"id":1,"b":[1.0e3]}}"#),
            r#"{"n":{"id":1,"b":[1.0e3]},"id":"x","last_modified":5}"#
        );
        // Escaped keys are keys all the same.
        assert_eq!(
            data_bytes(r#"{"\u0069d":"x","a\"b":1}"#),
            r#"{"a\"b":1,"\u0069d":"x"}"#
        );
    }

    proptest! {
        /// Any object: the same JSON value, `id` and `last_modified` last, and the other
        /// members in their order with their bytes.
        #[test]
        fn reordering_keeps_the_value(
            keys in proptest::collection::vec("[a-z_]{1,14}|id|last_modified", 0..8),
            values in proptest::collection::vec(
                prop_oneof![
                    Just("1.50".to_owned()),
                    Just("\"s\\\"t\"".to_owned()),
                    Just("{\"id\":1}".to_owned()),
                    Just("[true,null]".to_owned()),
                    (0u64..u64::MAX).prop_map(|n| n.to_string()),
                ],
                8,
            ),
        ) {
            let mut seen = std::collections::HashSet::new();
            let members: Vec<(String, String)> = keys
                .into_iter()
                .filter(|k| seen.insert(k.clone()))
                .zip(values)
                .map(|(k, v)| (format!("\"{k}\""), v))
                .collect();
            let raw = format!(
                "{{{}}}",
                members.iter().map(|(k, v)| format!("{k}:{v}")).collect::<Vec<_>>().join(",")
            );
            let out = data_bytes(&raw);
            let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
            prop_assert_eq!(parse(&out), parse(&raw));
            let got = super::members(&out).unwrap();
            let rank = |k: &str| match k { "\"id\"" => 1, "\"last_modified\"" => 2, _ => 0 };
            let mut want: Vec<(&str, &str)> =
                members.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            want.sort_by_key(|(k, _)| rank(k));
            prop_assert_eq!(got, want);
        }
    }
}
