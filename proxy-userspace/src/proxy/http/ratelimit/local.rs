//! Local token buckets: `maxTokens` at most, `tokensPerFill` added every `fillInterval`, one
//! bucket per policy and descriptor values. Buckets survive reloads while their settings stay.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use tokio::time::Instant;

use super::Limited;
use crate::policy::model::LocalRateLimit;

struct Bucket {
    tokens: u64,
    last_fill: Instant,
    /// The settings it was made with (max tokens, tokens per fill, interval): a bucket whose
    /// policy changes starts over.
    settings: (u64, u64, Duration),
}

#[derive(Default)]
pub struct Buckets {
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Buckets kept at most, so descriptor values (say a header) cannot grow memory without bound;
/// beyond it, full buckets are dropped first.
const MAX_BUCKETS: usize = 100_000;

impl Buckets {
    /// Takes one token for `key`, or says when the next one comes.
    pub fn take(&self, key: &str, cfg: &LocalRateLimit) -> Result<u64, Limited> {
        let per_fill = u64::from(cfg.tokens_per_fill.unwrap_or(cfg.max_tokens));
        let max = u64::from(cfg.max_tokens);
        let interval = cfg.fill_interval.0.max(Duration::from_millis(1));
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("bucket lock");
        if buckets.len() >= MAX_BUCKETS {
            buckets.retain(|_, b| b.tokens < max);
        }
        let settings = (max, per_fill, interval);
        let fresh = || Bucket {
            tokens: max,
            last_fill: now,
            settings,
        };
        // Looked up by reference: the common case allocates nothing.
        let b = match buckets.get_mut(key) {
            Some(b) => b,
            None => buckets.entry(key.to_string()).or_insert_with(fresh),
        };
        if b.settings != settings {
            *b = fresh();
        }
        let fills = (now - b.last_fill).as_nanos() / interval.as_nanos();
        if fills > 0 {
            b.tokens =
                (b.tokens + per_fill.saturating_mul(fills.min(u64::MAX as u128) as u64)).min(max);
            b.last_fill += interval * fills.min(u32::MAX as u128) as u32;
        }
        if b.tokens > 0 {
            b.tokens -= 1;
            Ok(b.tokens)
        } else {
            Err(Limited {
                limit: max,
                retry_after: (b.last_fill + interval).saturating_duration_since(now),
                global: false,
            })
        }
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
    async fn keys_have_their_own_buckets() {
        let b = Buckets::default();
        let c = cfg(1, 1, 1000);
        assert!(b.take("a", &c).is_ok());
        assert!(b.take("a", &c).is_err());
        assert!(b.take("b", &c).is_ok());
    }
}
