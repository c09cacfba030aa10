//! The `bench l4` results and their Markdown report: measurements, ratios against the targets
//! with PASS/MISS, and the kernel's sockmap counters.

use std::fmt::Write;

use crate::daemon::Counters;

/// One echo case: round-trip latencies in nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct Echo {
    pub count: u64,
    pub median_ns: u64,
    pub p99_ns: u64,
}

pub struct Results {
    pub rounds: u32,
    pub warmup: u32,
    pub bulk_bytes: u64,
    pub direct: Echo,
    /// Sockmap and kernel splice on (meshd's defaults).
    pub sockmap_on: Echo,
    /// Sockmap on, kernel splice off.
    pub splice_off: Echo,
    /// Sockmap off, splice(2) relay on (meshd's defaults).
    pub sockmap_off: Echo,
    /// Sockmap off, splice(2) relay off: bytes copied through meshd.
    pub sockmap_off_copy: Echo,
    /// Bytes per second.
    pub bulk_direct: f64,
    /// meshd's defaults: sockmap off, splice(2) relay.
    pub bulk_meshd: f64,
    pub bulk_meshd_copy: f64,
    pub bulk_sockmap_on: f64,
    pub counters_echo_on: Counters,
    pub counters_echo_splice_off: Counters,
    pub counters_echo_off: Counters,
    pub counters_bulk: Counters,
}

struct Target {
    what: &'static str,
    value: f64,
    shown: &'static str,
    pass: bool,
}

impl Results {
    fn targets(&self) -> Vec<Target> {
        let on = self.sockmap_on.median_ns as f64;
        let vs_off = on / self.sockmap_off.median_ns as f64;
        let vs_direct = on / self.direct.median_ns as f64;
        let bulk = self.bulk_meshd / self.bulk_direct;
        vec![
            Target {
                what: "echo median: sockmap on / sockmap off",
                value: vs_off,
                shown: "< 0.85",
                pass: vs_off < 0.85,
            },
            Target {
                what: "echo median: sockmap on / direct",
                value: vs_direct,
                shown: "< 1.6",
                pass: vs_direct < 1.6,
            },
            Target {
                what: "bulk: meshd (defaults: sockmap off, splice(2) relay) / direct",
                value: bulk,
                shown: ">= 0.5",
                pass: bulk >= 0.5,
            },
        ]
    }

    /// Whether every target was met and the sockmap path was really taken.
    pub fn all_pass(&self) -> bool {
        self.targets().iter().all(|t| t.pass) && self.sockmap_taken()
    }

    fn sockmap_taken(&self) -> bool {
        self.counters_echo_on.sockmap_redirect > 0 && self.counters_bulk.sockmap_redirect > 0
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        let _ = writeln!(s, "# meshd L4 benchmark\n");
        let _ = writeln!(
            s,
            "Kernel {}, {cpus} CPUs. Echo: {} round trips of 64 B after {} warm-up, one connection. \
             Bulk: {} MiB over one connection in 256 KiB writes.\n",
            kernel.trim(),
            self.rounds,
            self.warmup,
            self.bulk_bytes >> 20
        );

        let _ = writeln!(
            s,
            "## Echo round trip (client, meshd and server pinned to CPU 0)\n"
        );
        let _ = writeln!(s, "| path | median µs | p99 µs | samples |");
        let _ = writeln!(s, "|---|---:|---:|---:|");
        for (name, e) in [
            ("direct", self.direct),
            ("meshd, sockmap on (kernel splice on)", self.sockmap_on),
            ("meshd, sockmap on, kernel splice off", self.splice_off),
            ("meshd, sockmap off (splice(2) relay)", self.sockmap_off),
            (
                "meshd, sockmap off, relay copying (--zero-copy off)",
                self.sockmap_off_copy,
            ),
        ] {
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} |",
                us(e.median_ns),
                us(e.p99_ns),
                e.count
            );
        }

        let _ = writeln!(s, "\n## Bulk throughput (client → server, unpinned)\n");
        let _ = writeln!(s, "| path | Gbit/s | / direct |");
        let _ = writeln!(s, "|---|---:|---:|");
        for (name, rate) in [
            ("direct", self.bulk_direct),
            ("meshd, sockmap off (splice(2) relay)", self.bulk_meshd),
            (
                "meshd, sockmap off, relay copying (--zero-copy off)",
                self.bulk_meshd_copy,
            ),
            ("meshd, sockmap on (kernel splice on)", self.bulk_sockmap_on),
        ] {
            let _ = writeln!(
                s,
                "| {name} | {} | {:.2} |",
                gbit(rate),
                rate / self.bulk_direct
            );
        }

        let _ = writeln!(s, "\n## Targets\n");
        let _ = writeln!(s, "| ratio | measured | target | result |");
        let _ = writeln!(s, "|---|---:|---:|---|");
        for t in self.targets() {
            let _ = writeln!(
                s,
                "| {} | {:.2} | {} | {} |",
                t.what,
                t.value,
                t.shown,
                verdict(t.pass)
            );
        }
        let _ = writeln!(
            s,
            "| sockmap path taken (sockmap_redirect > 0 in both sockmap-on runs) | {} | > 0 | {} |",
            self.counters_echo_on
                .sockmap_redirect
                .min(self.counters_bulk.sockmap_redirect),
            verdict(self.sockmap_taken())
        );

        let _ = writeln!(
            s,
            "\n## Kernel datapath counters (meshd_ebpf_events_total)\n"
        );
        let _ = writeln!(
            s,
            "| meshd run | redirect | sockmap_redirect | sockmap_miss | sockmap_splice |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|");
        for (name, c) in [
            ("echo, sockmap on", self.counters_echo_on),
            (
                "echo, sockmap on, splice off",
                self.counters_echo_splice_off,
            ),
            ("echo, sockmap off", self.counters_echo_off),
            ("bulk, sockmap on", self.counters_bulk),
        ] {
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} | {} |",
                c.redirect, c.sockmap_redirect, c.sockmap_miss, c.splice
            );
        }
        s
    }
}

fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1000.0)
}

fn gbit(bytes_per_sec: f64) -> String {
    format!("{:.2}", bytes_per_sec * 8.0 / 1e9)
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}
