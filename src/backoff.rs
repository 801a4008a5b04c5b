//! Capped exponential backoff with full jitter, for every loop that retries something remote.
//!
//! Jitter spreads retries of many nodes (or many peers of one node) so that a server coming
//! back is not hit by all of them in the same second.

use std::time::Duration;

/// What a failure tells a loop about trying again. Every error a loop can hit implements it,
/// next to its definition, so that the loop decides without knowing the error's module.
pub trait RetryHint {
    /// The delay the remote asked for (HTTP `Retry-After`), if any.
    fn retry_after(&self) -> Option<Duration> {
        None
    }

    /// False when trying again cannot succeed until someone changes something: a fork, a
    /// forged page, credentials or grants refused, a quota reached, a damaged store. The loop
    /// then stops retrying, says so, and waits for the operator (`tandem sync`, `SIGHUP`).
    fn heals(&self) -> bool {
        true
    }

    /// True when the remote could not be reached at all: no connection, or one that broke
    /// off. Hearing from the remote afterwards is news, and ends the wait early (see
    /// `scheduler::Contacts`); after an answer it is not.
    fn unreachable(&self) -> bool {
        false
    }
}

/// Retry timing: the n-th consecutive failure waits a random time in
/// `[d/2, d]` where `d = min(cap, base * 2^n)`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Backoff {
    /// A backoff starting at `base` and never exceeding `cap`.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            failures: 0,
        }
    }

    /// Records a failure and returns how long to wait before the next attempt.
    pub fn fail(&mut self) -> Duration {
        let exp = self.failures.min(30);
        self.failures = self.failures.saturating_add(1);
        let ceiling = self.base.saturating_mul(1u32 << exp).min(self.cap);
        let half = ceiling / 2;
        let spread = (ceiling - half).as_millis() as u64;
        let jitter = if spread == 0 {
            0
        } else {
            getrandom::u64().unwrap_or(0) % (spread + 1)
        };
        half + Duration::from_millis(jitter)
    }

    /// Records a success: the next failure starts from `base` again.
    pub fn succeed(&mut self) {
        self.failures = 0;
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_stays_capped_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let first = b.fail();
        assert!(
            first >= Duration::from_millis(500) && first <= Duration::from_secs(1),
            "{first:?}"
        );
        for _ in 0..40 {
            let d = b.fail();
            assert!(d <= Duration::from_secs(60), "{d:?}");
        }
        let late = b.fail();
        assert!(late >= Duration::from_secs(30), "{late:?}");
        assert_eq!(b.failures(), 42);
        b.succeed();
        assert!(b.fail() <= Duration::from_secs(1));
    }

    #[test]
    fn jitter_varies() {
        let delays: std::collections::HashSet<_> = (0..20)
            .map(|_| {
                let mut b = Backoff::new(Duration::from_secs(8), Duration::from_secs(60));
                b.fail()
            })
            .collect();
        assert!(delays.len() > 1, "{delays:?}");
    }
}
