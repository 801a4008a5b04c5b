//! Which signed requests were already seen: a node accepts each `(keyid, nonce)` once while
//! its signature could still verify. Pure: the caller passes the clock.
//!
//! A signature verifies while its `created` is within [`MAX_SKEW_SECS`] of the verifier's
//! clock, so a nonce is remembered until `created + MAX_SKEW_SECS` and forgotten after: from
//! then on the signature fails on its age alone, and the same clock decides both.
//!
//! Memory is bounded twice: per signer, so that one peer (however busy or hostile) cannot crowd
//! out the others, and in total. Only nonces of signatures that verified are recorded, so
//! strangers cannot fill it at all. When a bound is reached and nothing has expired, the
//! request is **refused**, with the time until the oldest entry expires: forgetting a nonce
//! that is still within its window (evicting the oldest, or clearing the cache) would make
//! exactly that request replayable, and a peer able to make the cache full could then replay at
//! will. A legitimate peer sends far fewer requests per window than the bound (see the
//! constants in [`crate::api::peer`]); reaching it is itself a sign of abuse.
//!
//! The cache lives in memory, and a new one (a restart, a reload) knows nothing of the
//! nonces used before it: a request captured just before would verify again. So a cache
//! refuses every signature created before the second it began ([`ReplayError::BeforeStart`],
//! answered `503` with `Retry-After`): a peer signs each attempt anew, and its next one,
//! created later, gets in. (Signatures carry whole seconds: one made in the very second of a
//! restart, before it, is the one left replayable; a restart takes longer than that.)

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

use crate::identity::NodeId;

/// The clock window a signature is accepted in, either side of `created`.
pub use super::signature::MAX_SKEW_SECS;

/// Why a nonce was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// This signer used this nonce before, within the window.
    #[error(
        "this signature was already used: a signed request is accepted once (a replay, or a client that resends the same signed headers; sign every request anew)"
    )]
    Replayed,
    /// This signer has as many nonces remembered as it may.
    #[error(
        "too many signed requests from this peer within {} s; retry in {retry_after} s",
        2 * MAX_SKEW_SECS
    )]
    SignerFull {
        /// Seconds until room is made.
        retry_after: u64,
    },
    /// The cache as a whole is full.
    #[error("too many signed requests within {} s; retry in {retry_after} s", 2 * MAX_SKEW_SECS)]
    Full {
        /// Seconds until room is made.
        retry_after: u64,
    },
    /// Signed before the cache began: whether it was used before is not known.
    #[error(
        "this node (re)started after the request was signed and cannot tell whether it was used already; sign it anew (retry in {retry_after} s)"
    )]
    BeforeStart {
        /// Seconds until a signature made now by the signer's clock is later than the start.
        retry_after: u64,
    },
}

/// The nonces of one signer.
#[derive(Default)]
struct Seen {
    nonces: HashSet<Box<str>>,
    /// `(expiry, nonce)`, earliest expiry first: what to forget next.
    by_expiry: BinaryHeap<Reverse<(i64, Box<str>)>>,
}

impl Seen {
    /// Forgets what expired before `now`; returns how many.
    fn purge(&mut self, now: i64) -> usize {
        let mut purged = 0;
        while let Some(Reverse((expiry, _))) = self.by_expiry.peek() {
            if *expiry >= now {
                break;
            }
            let Some(Reverse((_, nonce))) = self.by_expiry.pop() else {
                break;
            };
            self.nonces.remove(&nonce);
            purged += 1;
        }
        purged
    }

    fn next_expiry(&self) -> Option<i64> {
        self.by_expiry.peek().map(|Reverse((e, _))| *e)
    }
}

/// The nonces seen per signer, bounded.
pub struct NonceCache {
    signers: HashMap<NodeId, Seen>,
    total: usize,
    per_signer: usize,
    max_total: usize,
    /// When it began (Unix seconds): signatures created before are refused.
    since: i64,
}

impl NonceCache {
    /// A cache of at most `per_signer` nonces per signer and `max_total` in all, beginning at
    /// `since` (Unix seconds, now for a cache about to be used).
    pub fn new(per_signer: usize, max_total: usize, since: i64) -> NonceCache {
        NonceCache {
            signers: HashMap::new(),
            total: 0,
            per_signer,
            max_total,
            since,
        }
    }

    /// How many nonces are remembered.
    pub fn len(&self) -> usize {
        self.total
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Records that `signer` used `nonce` in a signature created at `created`, at `now` (both
    /// Unix seconds); refuses a nonce seen before, any when a bound is reached, and any
    /// signature created before the cache began.
    pub fn admit(
        &mut self,
        signer: NodeId,
        nonce: &str,
        created: i64,
        now: i64,
    ) -> Result<(), ReplayError> {
        if created < self.since {
            return Err(ReplayError::BeforeStart {
                retry_after: (self.since - created).clamp(1, MAX_SKEW_SECS) as u64,
            });
        }
        let expiry = created + MAX_SKEW_SECS;
        let seen = self.signers.entry(signer).or_default();
        self.total -= seen.purge(now);
        if seen.nonces.contains(nonce) {
            return Err(ReplayError::Replayed);
        }
        let retry_after = |next: Option<i64>| next.map_or(1, |e| (e - now + 1).max(1) as u64);
        if seen.nonces.len() >= self.per_signer {
            return Err(ReplayError::SignerFull {
                retry_after: retry_after(seen.next_expiry()),
            });
        }
        if self.total >= self.max_total {
            // Only now walk every signer: the cache is full, which is rare.
            let mut purged = 0;
            for seen in self.signers.values_mut() {
                purged += seen.purge(now);
            }
            self.total -= purged;
            self.signers.retain(|_, s| !s.nonces.is_empty());
            if self.total >= self.max_total {
                let next = self.signers.values().filter_map(Seen::next_expiry).min();
                return Err(ReplayError::Full {
                    retry_after: retry_after(next),
                });
            }
        }
        let seen = self.signers.entry(signer).or_default();
        seen.nonces.insert(nonce.into());
        seen.by_expiry.push(Reverse((expiry, nonce.into())));
        self.total += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeKey;

    const NOW: i64 = 1_795_700_000;

    fn id(seed: u8) -> NodeId {
        NodeKey::from_seed([seed; 32]).id()
    }

    #[test]
    fn a_nonce_is_accepted_once_per_signer_while_its_signature_could_verify() {
        let mut cache = NonceCache::new(10, 100, NOW - 1000);
        cache.admit(id(1), "n1", NOW, NOW).unwrap();
        assert_eq!(
            cache.admit(id(1), "n1", NOW, NOW + 1),
            Err(ReplayError::Replayed)
        );
        // The same nonce from another signer is another request.
        cache.admit(id(2), "n1", NOW, NOW).unwrap();
        // Until the last second the signature verifies, it is remembered; then forgotten.
        assert_eq!(
            cache.admit(id(1), "n1", NOW, NOW + MAX_SKEW_SECS),
            Err(ReplayError::Replayed)
        );
        cache
            .admit(id(1), "n1", NOW, NOW + MAX_SKEW_SECS + 1)
            .unwrap();
        // A signature from the future is remembered as long as it verifies.
        cache.admit(id(1), "f", NOW + 300, NOW).unwrap();
        assert_eq!(
            cache.admit(id(1), "f", NOW + 300, NOW + 599),
            Err(ReplayError::Replayed)
        );
    }

    #[test]
    fn a_full_cache_refuses_rather_than_forgets() {
        let mut cache = NonceCache::new(3, 5, NOW - 1000);
        for n in ["a", "b", "c"] {
            cache.admit(id(1), n, NOW, NOW).unwrap();
        }
        // The signer's share is used up: refused, with when to retry; others still get in.
        assert_eq!(
            cache.admit(id(1), "d", NOW, NOW + 10),
            Err(ReplayError::SignerFull {
                retry_after: (MAX_SKEW_SECS - 10 + 1) as u64
            })
        );
        cache.admit(id(2), "a", NOW + 5, NOW + 10).unwrap();
        cache.admit(id(3), "a", NOW + 6, NOW + 10).unwrap();
        assert_eq!(
            cache.admit(id(4), "a", NOW, NOW + 10),
            Err(ReplayError::Full {
                retry_after: (MAX_SKEW_SECS - 10 + 1) as u64
            })
        );
        // And what was refused while full is no less refused later: nothing was forgotten.
        for n in ["a", "b", "c"] {
            assert_eq!(
                cache.admit(id(1), n, NOW, NOW + 20),
                Err(ReplayError::Replayed)
            );
        }
        // Once the first ones expire there is room again.
        cache.admit(id(4), "a", NOW + 301, NOW + 301).unwrap();
        cache.admit(id(1), "d", NOW + 301, NOW + 301).unwrap();
        assert_eq!(cache.len(), 4);
    }

    /// A new cache (after a restart) does not know what was used before it began: every
    /// signature created until then is refused, with the time until one made now by the
    /// signer's clock would be later; signatures made after are admitted once, as ever.
    #[test]
    fn a_signature_from_before_the_cache_began_is_refused() {
        let mut cache = NonceCache::new(10, 100, NOW);
        for (created, retry_after) in [
            (NOW - 1, 1),
            (NOW - 2, 2),
            (NOW - 300, 300),
            (NOW - 301, 300),
        ] {
            assert_eq!(
                cache.admit(id(1), "captured", created, NOW + 1),
                Err(ReplayError::BeforeStart { retry_after }),
                "{created}"
            );
        }
        assert!(cache.is_empty());
        // From the second it began, signatures are admitted once, as ever.
        cache.admit(id(1), "fresh", NOW, NOW + 1).unwrap();
        assert_eq!(
            cache.admit(id(1), "fresh", NOW, NOW + 2),
            Err(ReplayError::Replayed)
        );
    }
}
