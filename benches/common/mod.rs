//! What the benches share: the Kinto-like record changes they store and replicate.

use tandem::feed::Op;
use tandem::store::Change;

/// A Kinto-like record change: unique path, ~190-byte JSON body; ~300 bytes encoded. Record
/// ids grow within each of the 100 collections, unless `BENCH_RECORD_IDS=random` asks for ids
/// in no order, as Kinto's UUID4 ids come (and as a sealed feed's hashed paths always are).
pub fn change(i: usize) -> Change {
    let (hi, lo) = if random_ids() {
        let h = blake3::hash(&(i as u64).to_le_bytes());
        let b = h.as_bytes();
        (
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize,
            u16::from_le_bytes([b[4], b[5]]) as usize,
        )
    } else {
        (i * 7919, i % 65536)
    };
    Change {
        op: Op::Put,
        path: format!("/buckets/b{}/collections/c{}/records/{hi:08x}-{lo:04x}-4a1b", i % 10, i % 100),
        body: format!(
            r#"{{"data":{{"id":"{hi:08x}-{lo:04x}-4a1b","last_modified":{},"title":"entry number {i}","done":false,"tags":["alpha","beta"],"by":"alice"}},"permissions":{{"read":["system.Everyone"]}}}}"#,
            1_795_000_000_000u64 + i as u64
        )
        .into_bytes(),
    }
}

/// Whether `BENCH_RECORD_IDS=random` is set (see [`change`]).
fn random_ids() -> bool {
    static RANDOM: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *RANDOM.get_or_init(|| std::env::var("BENCH_RECORD_IDS").is_ok_and(|v| v == "random"))
}
