//! The `bench l4` results and their Markdown report: each case's median over the repeats, the
//! paired ratios against the targets with PASS/MISS, and the kernel's sockmap counters.

use std::fmt::Write;

use crate::daemon::Counters;

/// One echo run: round-trip latencies in nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct Echo {
    pub median_ns: u64,
    pub p99_ns: u64,
}

/// A measurement of `direct` and of every case, one value per repeat, with each case's kernel
/// counters summed over its runs.
pub struct Measured<T> {
    pub names: Vec<&'static str>,
    pub direct: Vec<T>,
    pub cases: Vec<Vec<T>>,
    pub counters: Vec<Counters>,
}

impl<T> Measured<T> {
    pub fn new(cases: &[super::l4::Case]) -> Self {
        Measured {
            names: cases.iter().map(|c| c.name).collect(),
            direct: Vec::new(),
            cases: cases.iter().map(|_| Vec::new()).collect(),
            counters: vec![Counters::default(); cases.len()],
        }
    }

    pub fn add(&mut self, case: usize, value: T, c: Counters) {
        self.cases[case].push(value);
        let sum = &mut self.counters[case];
        sum.redirect += c.redirect;
        sum.sockmap_redirect += c.sockmap_redirect;
        sum.sockmap_miss += c.sockmap_miss;
        sum.splice += c.splice;
        sum.reply_splice += c.reply_splice;
    }

    /// The median over repeats of `f(case a) / f(case b)` within each repeat (`None`: direct).
    fn paired(&self, a: Option<usize>, b: Option<usize>, f: impl Fn(&T) -> f64) -> Paired {
        let pick = |c: Option<usize>| c.map_or(&self.direct, |i| &self.cases[i]);
        let ratios: Vec<f64> = pick(a)
            .iter()
            .zip(pick(b))
            .map(|(x, y)| f(x) / f(y))
            .collect();
        Paired::of(ratios)
    }
}

/// A paired ratio: its median and range over the repeats.
struct Paired {
    median: f64,
    min: f64,
    max: f64,
}

impl Paired {
    fn of(v: Vec<f64>) -> Paired {
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Paired {
            median: median(v),
            min,
            max,
        }
    }
}

/// The median; 0 for no values.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub struct Results {
    pub rounds: u32,
    pub warmup: u32,
    pub bulk_bytes: u64,
    pub repeats: u32,
    /// Cases in `l4::ECHO_CASES` order: sockmap on, splice off, sockmap off, copying.
    pub echo: Measured<Echo>,
    /// Cases in `l4::BULK_CASES` order: defaults, copying, sockmap on. Bytes per second.
    pub bulk: Measured<f64>,
}

/// Indices into the echo and bulk cases.
const ECHO_SOCKMAP_ON: usize = 0;
const ECHO_SOCKMAP_OFF: usize = 2;
const BULK_DEFAULTS: usize = 0;
const BULK_SOCKMAP_ON: usize = 2;

struct Target {
    what: &'static str,
    value: Paired,
    shown: &'static str,
    pass: bool,
}

impl Results {
    fn targets(&self) -> Vec<Target> {
        let latency = |e: &Echo| e.median_ns as f64;
        let vs_off = self
            .echo
            .paired(Some(ECHO_SOCKMAP_ON), Some(ECHO_SOCKMAP_OFF), latency);
        let vs_direct = self.echo.paired(Some(ECHO_SOCKMAP_ON), None, latency);
        let bulk = self.bulk.paired(Some(BULK_DEFAULTS), None, |b| *b);
        vec![
            Target {
                what: "echo median: sockmap on / sockmap off",
                pass: vs_off.median < 0.85,
                value: vs_off,
                shown: "< 0.85",
            },
            Target {
                what: "echo median: sockmap on / direct",
                pass: vs_direct.median < 1.6,
                value: vs_direct,
                shown: "< 1.6",
            },
            Target {
                what: "bulk: meshd (defaults: sockmap off, splice(2) relay) / direct",
                pass: bulk.median >= 0.5,
                value: bulk,
                shown: ">= 0.5",
            },
        ]
    }

    /// Whether every target was met and the sockmap path was really taken.
    pub fn all_pass(&self) -> bool {
        self.targets().iter().all(|t| t.pass) && self.sockmap_taken()
    }

    fn sockmap_redirects(&self) -> u64 {
        self.echo.counters[ECHO_SOCKMAP_ON]
            .sockmap_redirect
            .min(self.bulk.counters[BULK_SOCKMAP_ON].sockmap_redirect)
    }

    fn sockmap_taken(&self) -> bool {
        self.sockmap_redirects() > 0
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        let _ = writeln!(s, "# meshd L4 benchmark\n");
        let _ = writeln!(
            s,
            "Kernel {}, {cpus} CPUs. Echo: {} round trips of 64 B after {} warm-up, one connection. \
             Bulk: {} MiB over one connection in 256 KiB writes. Every case ran {} times, the \
             cases taking turns going first; figures are medians over those repeats, and ratios \
             are paired (within a repeat), with their range.\n",
            kernel.trim(),
            self.rounds,
            self.warmup,
            self.bulk_bytes >> 20,
            self.repeats
        );

        let _ = writeln!(
            s,
            "## Echo round trip (client, meshd and server pinned to CPU 0)\n"
        );
        let _ = writeln!(s, "| path | median µs | p99 µs | / direct (paired) |");
        let _ = writeln!(s, "|---|---:|---:|---:|");
        let echo_row = |s: &mut String, name: &str, runs: &[Echo], ratio: Option<Paired>| {
            let m = |f: fn(&Echo) -> u64| median(runs.iter().map(|e| f(e) as f64).collect());
            let _ = writeln!(
                s,
                "| {name} | {:.1} | {:.1} | {} |",
                m(|e| e.median_ns) / 1000.0,
                m(|e| e.p99_ns) / 1000.0,
                ratio.map_or("1".into(), |r| range(&r))
            );
        };
        echo_row(&mut s, "direct", &self.echo.direct, None);
        for (i, name) in self.echo.names.iter().enumerate() {
            let ratio = self.echo.paired(Some(i), None, |e| e.median_ns as f64);
            echo_row(&mut s, name, &self.echo.cases[i], Some(ratio));
        }

        let _ = writeln!(s, "\n## Bulk throughput (client → server, unpinned)\n");
        let _ = writeln!(s, "| path | Gbit/s | / direct (paired) |");
        let _ = writeln!(s, "|---|---:|---:|");
        let _ = writeln!(
            s,
            "| direct | {} | 1 |",
            gbit(median(self.bulk.direct.clone()))
        );
        for (i, name) in self.bulk.names.iter().enumerate() {
            let ratio = self.bulk.paired(Some(i), None, |b| *b);
            let rate = median(self.bulk.cases[i].clone());
            let _ = writeln!(s, "| {name} | {} | {} |", gbit(rate), range(&ratio));
        }

        let _ = writeln!(s, "\n## Targets\n");
        let _ = writeln!(s, "| ratio (paired) | measured | target | result |");
        let _ = writeln!(s, "|---|---:|---:|---|");
        for t in self.targets() {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                t.what,
                range(&t.value),
                t.shown,
                verdict(t.pass)
            );
        }
        let _ = writeln!(
            s,
            "| sockmap path taken (sockmap_redirect > 0 in the sockmap-on echo and bulk) | {} | > 0 | {} |",
            self.sockmap_redirects(),
            verdict(self.sockmap_taken())
        );

        let _ = writeln!(
            s,
            "\n## Kernel datapath counters (meshd_ebpf_events_total, summed over the repeats)\n"
        );
        let _ = writeln!(
            s,
            "| meshd run | redirect | sockmap_redirect | sockmap_miss | sockmap_splice | sockmap_reply_splice |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
        let runs = self.echo.names.iter().zip(&self.echo.counters);
        let runs = runs
            .map(|(n, c)| ("echo", n, c))
            .chain((self.bulk.names.iter().zip(&self.bulk.counters)).map(|(n, c)| ("bulk", n, c)));
        for (what, name, c) in runs {
            let _ = writeln!(
                s,
                "| {what}: {name} | {} | {} | {} | {} | {} |",
                c.redirect, c.sockmap_redirect, c.sockmap_miss, c.splice, c.reply_splice
            );
        }
        s
    }
}

/// `0.72 (0.60–0.81)`, or just the median for a single repeat.
fn range(p: &Paired) -> String {
    if p.min == p.max {
        format!("{:.2}", p.median)
    } else {
        format!("{:.2} ({:.2}–{:.2})", p.median, p.min, p.max)
    }
}

fn gbit(bytes_per_sec: f64) -> String {
    format!("{:.2}", bytes_per_sec * 8.0 / 1e9)
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_ratios_are_taken_within_each_repeat() {
        let mut m: Measured<f64> = Measured {
            names: vec!["a"],
            direct: vec![10.0, 20.0, 40.0],
            cases: vec![vec![5.0, 12.0, 20.0]],
            counters: vec![Counters::default()],
        };
        let p = m.paired(Some(0), None, |x| *x);
        assert_eq!((p.median, p.min, p.max), (0.5, 0.5, 0.6));
        m.add(0, 1.0, Counters::default());
        assert_eq!(m.cases[0].len(), 4);
        assert_eq!(median(vec![3.0, 1.0, 2.0, 10.0]), 2.5);
    }
}
