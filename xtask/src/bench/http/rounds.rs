//! Several rounds of `bench http`: each number's median over the rounds, and the paired
//! ratios (meshd against a peer in the same round), which a noisy shared machine moves less.

use super::{H1, Rate, Usage, tools::H2load, tools::Wrk};
use crate::bench::report::median;

/// One round's measurements of every path.
#[derive(Clone, Debug, Default)]
pub struct Round {
    pub direct: H1,
    pub meshd: H1,
    pub nginx: H1,
    pub haproxy: H1,
    pub floor: H1,
    pub usage: Usage,
    pub h2_direct: H2load,
    pub h2_meshd: H2load,
    pub h2_nginx: H2load,
}

/// The median over `rounds` of what `f` reads from each.
pub fn median_of(rounds: &[Round], f: impl Fn(&Round) -> f64) -> f64 {
    median(rounds.iter().map(f).collect())
}

/// The paired ratio: the median over rounds of `a / b` within each round.
pub fn paired(rounds: &[Round], a: impl Fn(&Round) -> f64, b: impl Fn(&Round) -> f64) -> f64 {
    median(
        rounds
            .iter()
            .filter(|r| b(r) > 0.0)
            .map(|r| a(r) / b(r))
            .collect(),
    )
}

/// Every number's median over the rounds; error counts are the worst round's.
pub fn combine(rounds: &[Round]) -> Round {
    let h1 = |pick: fn(&Round) -> &H1| {
        let m = |f: fn(&H1) -> f64| median_of(rounds, |r| f(pick(r)));
        let worst = |f: fn(&H1) -> u64| rounds.iter().map(|r| f(pick(r))).max().unwrap_or(0);
        H1 {
            wrk: Wrk {
                requests: m(|h| h.wrk.requests as f64) as u64,
                rps: m(|h| h.wrk.rps),
                p50_ns: m(|h| h.wrk.p50_ns as f64) as u64,
                p99_ns: m(|h| h.wrk.p99_ns as f64) as u64,
                errors: worst(|h| h.wrk.errors),
            },
            rate: Rate {
                count: m(|h| h.rate.count as f64) as u64,
                errors: worst(|h| h.rate.errors),
                late_starts: worst(|h| h.rate.late_starts),
                secs: m(|h| h.rate.secs as f64) as u64,
                median_ns: m(|h| h.rate.median_ns as f64) as u64,
                p99_ns: m(|h| h.rate.p99_ns as f64) as u64,
                max_ns: worst(|h| h.rate.max_ns),
            },
            cpu_us: m(|h| h.cpu_us),
            cpu_user_us: m(|h| h.cpu_user_us),
        }
    };
    let h2 = |pick: fn(&Round) -> &H2load| H2load {
        rps: median_of(rounds, |r| pick(r).rps),
        succeeded: median_of(rounds, |r| pick(r).succeeded as f64) as u64,
        failed: rounds.iter().map(|r| pick(r).failed).max().unwrap_or(0),
    };
    Round {
        direct: h1(|r| &r.direct),
        meshd: h1(|r| &r.meshd),
        nginx: h1(|r| &r.nginx),
        haproxy: h1(|r| &r.haproxy),
        floor: h1(|r| &r.floor),
        usage: Usage {
            cpu_s_per_1000: median_of(rounds, |r| r.usage.cpu_s_per_1000),
            rss_idle: median_of(rounds, |r| r.usage.rss_idle as f64) as u64,
            rss_loaded: median_of(rounds, |r| r.usage.rss_loaded as f64) as u64,
            metrics: rounds
                .last()
                .map(|r| r.usage.metrics.clone())
                .unwrap_or_default(),
        },
        h2_direct: h2(|r| &r.h2_direct),
        h2_meshd: h2(|r| &r.h2_meshd),
        h2_nginx: h2(|r| &r.h2_nginx),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(meshd: f64, nginx: f64) -> Round {
        let mut r = Round::default();
        r.meshd.wrk.rps = meshd;
        r.nginx.wrk.rps = nginx;
        r.meshd.wrk.errors = meshd as u64 % 7;
        r
    }

    #[test]
    fn medians_and_paired_ratios() {
        // The machine slowed down in round 2: both paths lost, their ratio did not.
        let rounds = [round(50.0, 100.0), round(20.0, 40.0), round(60.0, 100.0)];
        let m = combine(&rounds);
        assert_eq!(m.meshd.wrk.rps, 50.0);
        assert_eq!(m.nginx.wrk.rps, 100.0);
        assert_eq!(m.meshd.wrk.errors, 6, "the worst round's errors");
        let ratio = paired(&rounds, |r| r.meshd.wrk.rps, |r| r.nginx.wrk.rps);
        assert_eq!(ratio, 0.5);
        assert_eq!(median(vec![1.0, 3.0]), 2.0);
        assert_eq!(median(vec![]), 0.0);
    }
}
