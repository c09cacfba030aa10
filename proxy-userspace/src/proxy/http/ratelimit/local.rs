//! Local token buckets: `maxTokens` at most, `tokensPerFill` added every `fillInterval`, one
//! bucket per policy and descriptor values. Buckets survive reloads while their settings stay.

use std::{collections::HashMap, hash::BuildHasher, sync::Mutex, time::Duration};

use tokio::time::Instant;

use super::Limited;
use crate::policy::model::LocalRateLimit;

struct Bucket {
    tokens: u64,
    last_fill: Instant,
    /// When a request last took from it: the least recently used go first past the cap.
    last_used: Instant,
    /// The settings it was made with (max tokens, tokens per fill, interval): a bucket whose
    /// policy changes starts over.
    settings: (u64, u64, Duration),
}

impl Bucket {
    /// Whole fill intervals since its last fill, by `now`.
    fn fills(&self, now: Instant) -> u128 {
        (now - self.last_fill).as_nanos() / self.settings.2.as_nanos()
    }

    /// The tokens it holds at `now`, refilled (its maximum at most).
    fn tokens_at(&self, now: Instant) -> u64 {
        let (max, per_fill, _) = self.settings;
        let fills = u64::try_from(self.fills(now)).unwrap_or(u64::MAX);
        (self.tokens.saturating_add(per_fill.saturating_mul(fills))).min(max)
    }

    /// Adds the fills due by `now`.
    fn refill(&mut self, now: Instant) {
        let fills = self.fills(now);
        if fills > 0 {
            self.tokens = self.tokens_at(now);
            self.last_fill += self.settings.2 * u32::try_from(fills).unwrap_or(u32::MAX);
        }
    }

    /// Refilled to its maximum by `now`: forgetting it changes nothing.
    fn full_at(&self, now: Instant) -> bool {
        self.tokens_at(now) >= self.settings.0
    }
}

/// The buckets, by a hash of their key (policy and descriptor values): a key as long as a
/// header allows costs no more memory than a short one. The hasher is seeded per process, so
/// keys cannot be chosen to collide.
#[derive(Default)]
pub struct Buckets {
    hasher: foldhash::quality::RandomState,
    buckets: Mutex<HashMap<u64, Bucket>>,
}

/// Buckets kept at most, so descriptor values (say a header) cannot grow memory without bound.
const MAX_BUCKETS: usize = 100_000;

/// What eviction brings the buckets down to, so it runs once per many new keys, not per request.
const AFTER_EVICTION: usize = MAX_BUCKETS * 9 / 10;

impl Buckets {
    /// Takes one token for `key`, or says when the next one comes.
    #[cfg(test)]
    fn take(&self, key: &str, cfg: &LocalRateLimit) -> Result<u64, Limited> {
        self.take_all(&[(key, cfg)]).map_err(|(_, l)| l)?;
        let hash = self.hasher.hash_one(key);
        let buckets = self.buckets.lock().expect("bucket lock");
        Ok(buckets.get(&hash).map_or(0, |b| b.tokens))
    }

    /// Takes one token from each bucket of `wanted` (key and settings), or from none: the
    /// first (in order) that has none refuses the request, with its index, and the others
    /// keep theirs, so a request one policy refuses spends no other policy's tokens.
    pub fn take_all(&self, wanted: &[(&str, &LocalRateLimit)]) -> Result<(), (usize, Limited)> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("bucket lock");
        let hashes: Vec<u64> = wanted
            .iter()
            .map(|(k, _)| self.hasher.hash_one(k))
            .collect();
        // Room is made once, before any bucket of this request is created, so eviction never
        // drops one the request has just checked.
        let new = hashes.iter().filter(|h| !buckets.contains_key(h)).count();
        if new > 0 && buckets.len() + new > MAX_BUCKETS {
            evict(&mut buckets, now);
        }
        for (i, ((_, cfg), &hash)) in wanted.iter().zip(&hashes).enumerate() {
            let per_fill = u64::from(cfg.tokens_per_fill.unwrap_or(cfg.max_tokens));
            let max = u64::from(cfg.max_tokens);
            let interval = cfg.fill_interval.0.max(Duration::from_millis(1));
            let settings = (max, per_fill, interval);
            let fresh = || Bucket {
                tokens: max,
                last_fill: now,
                last_used: now,
                settings,
            };
            let b = buckets.entry(hash).or_insert_with(fresh);
            if b.settings != settings {
                *b = fresh();
            }
            b.last_used = now;
            b.refill(now);
            if b.tokens == 0 {
                let limited = Limited {
                    limit: max,
                    retry_after: (b.last_fill + interval).saturating_duration_since(now),
                    global: false,
                };
                return Err((i, limited));
            }
        }
        // One token per bucket, however many of `wanted` name it.
        for (j, hash) in hashes.iter().enumerate() {
            if hashes[..j].contains(hash) {
                continue;
            }
            if let Some(b) = buckets.get_mut(hash) {
                b.tokens = b.tokens.saturating_sub(1);
            }
        }
        Ok(())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.lock().expect("bucket lock").len()
    }
}

/// Makes room for new keys: buckets refilled to their maximum go first, then, if that is not
/// enough, the least recently used (a key that comes back starts with a full bucket, as after
/// an idle spell). Brings them down to [`AFTER_EVICTION`], so it runs once per many new keys.
fn evict(buckets: &mut HashMap<u64, Bucket>, now: Instant) {
    buckets.retain(|_, b| !b.full_at(now));
    if buckets.len() <= AFTER_EVICTION {
        return;
    }
    let mut used: Vec<(Instant, u64)> = buckets.iter().map(|(k, b)| (b.last_used, *k)).collect();
    let excess = buckets.len() - AFTER_EVICTION;
    used.select_nth_unstable(excess);
    for (_, key) in &used[..excess] {
        buckets.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::duration::PolicyDuration;

    fn cfg(max: u32, per_fill: u32, ms: u64) -> LocalRateLimit {
        LocalRateLimit {
            max_tokens: max,
            tokens_per_fill: Some(per_fill),
            fill_interval: PolicyDuration(Duration::from_millis(ms)),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_one_bucket_refuses_takes_from_no_other() {
        let b = Buckets::default();
        let (shared, per_user) = (cfg(10, 10, 60_000), cfg(2, 2, 60_000));
        for _ in 0..2 {
            b.take_all(&[("all", &shared), ("alice", &per_user)])
                .unwrap();
        }
        for _ in 0..10 {
            let (i, _) = b
                .take_all(&[("all", &shared), ("alice", &per_user)])
                .unwrap_err();
            assert_eq!(i, 1, "alice's own bucket refuses");
        }
        // The shared bucket gave only alice's two: bob has eight left to share.
        assert_eq!(b.take("all", &shared).unwrap(), 7);
        for _ in 0..2 {
            b.take_all(&[("bob", &per_user), ("all", &shared)]).unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_named_twice_gives_one_token() {
        let b = Buckets::default();
        let c = cfg(2, 2, 60_000);
        b.take_all(&[("k", &c), ("k", &c)]).unwrap();
        assert_eq!(
            b.take("k", &c).unwrap(),
            0,
            "one of two spent, then the other"
        );
        assert!(b.take_all(&[("k", &c), ("k", &c)]).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_empties_and_refills_per_interval() {
        let b = Buckets::default();
        let c = cfg(3, 2, 1000);
        assert_eq!(
            (0..3)
                .map(|_| b.take("k", &c).is_ok())
                .filter(|ok| *ok)
                .count(),
            3
        );
        let limited = b.take("k", &c).unwrap_err();
        assert_eq!(limited.limit, 3);
        assert_eq!(limited.retry_after, Duration::from_millis(1000));
        tokio::time::advance(Duration::from_millis(1000)).await;
        assert!(b.take("k", &c).is_ok() && b.take("k", &c).is_ok());
        assert!(b.take("k", &c).is_err(), "two tokens per fill");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            (0..5).filter(|_| b.take("k", &c).is_ok()).count(),
            3,
            "capped at maxTokens"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_cap_full_buckets_then_the_least_recently_used_go() {
        let b = Buckets::default();
        let c = cfg(2, 2, 1000);
        // One key drained: it must keep its state while others come and go.
        assert!(b.take("drained", &c).is_ok() && b.take("drained", &c).is_ok());
        tokio::time::advance(Duration::from_millis(1)).await;
        for i in 0..MAX_BUCKETS - 1 {
            b.take(&format!("user-{i}"), &c).unwrap();
        }
        assert_eq!(b.len(), MAX_BUCKETS);
        // Each used once (one token left, not full), so the least recently used go, down to
        // the mark; the drained key, used first, is among them.
        b.take("newcomer", &c).unwrap();
        assert_eq!(b.len(), AFTER_EVICTION + 1);
        assert!(
            b.take("drained", &c).is_ok(),
            "forgotten: a full bucket again"
        );
        // Once the interval has passed every bucket is full again: all of them can go.
        tokio::time::advance(Duration::from_millis(1000)).await;
        b.take("drained", &c).unwrap();
        for i in 0..MAX_BUCKETS {
            b.take(&format!("more-{i}"), &c).unwrap();
        }
        assert!(b.len() <= MAX_BUCKETS, "{}", b.len());
    }

    #[tokio::test(start_paused = true)]
    async fn a_drained_bucket_is_kept_past_the_cap_while_others_are_full() {
        let b = Buckets::default();
        let c = cfg(1, 1, 60_000);
        for i in 0..MAX_BUCKETS - 1 {
            b.take(&format!("user-{i}"), &c).unwrap();
        }
        tokio::time::advance(Duration::from_secs(60)).await;
        // Drained last, while every other bucket has refilled to its maximum.
        b.take("hot", &c).unwrap();
        assert!(b.take("hot", &c).is_err());
        b.take("newcomer", &c).unwrap();
        assert_eq!(b.len(), 2, "the full ones are forgotten");
        assert!(b.take("hot", &c).is_err(), "still drained");
    }

    #[tokio::test(start_paused = true)]
    async fn keys_have_their_own_buckets() {
        let b = Buckets::default();
        let c = cfg(1, 1, 1000);
        assert!(b.take("a", &c).is_ok());
        assert!(b.take("a", &c).is_err());
        assert!(b.take("b", &c).is_ok());
    }
}
