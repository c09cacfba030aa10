//! `cargo xtask bench policy`: the policy model's costs: loading and compiling 10,000
//! VirtualServices with 10 routes each (time and memory), and route lookup for a host with 100
//! header-match routes in tables of 10 to 100,000 hosts (criterion). Writes target/bench/policy.md.

use std::process::Command;

use anyhow::{Context, Result};

use crate::util::{output, root, step, target_dir};

/// Median nanoseconds criterion estimated for one benchmark.
fn median_ns(bench: &str) -> Result<f64> {
    let path = target_dir().join(format!(
        "criterion/route_lookup_100_header_routes/{bench}/new/estimates.json"
    ));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let median = text
        .split("\"median\"")
        .nth(1)
        .and_then(|t| t.split("\"point_estimate\":").nth(1))
        .and_then(|t| t.split([',', '}']).next())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .context("no median in criterion's estimates")?;
    Ok(median)
}

pub fn run() -> Result<()> {
    step("loading and compiling 10,000 VirtualServices x 10 routes (release build)");
    let compile = output(
        Command::new("cargo")
            .args(["bench", "-p", "meshd", "--bench", "compile_10k"])
            .current_dir(root()),
    )?;
    let table: String = compile
        .lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| format!("{l}\n"))
        .collect();
    step("route lookup with criterion");
    crate::util::run(
        Command::new("cargo")
            .args(["bench", "-p", "meshd", "--bench", "route_lookup"])
            .current_dir(root()),
    )?;
    let mut lookups = String::from(
        "| hosts in the table | median lookup (100 header routes, last matches) |\n|---:|---:|\n",
    );
    for hosts in ["10", "1000", "100000"] {
        lookups.push_str(&format!(
            "| {hosts} | {:.0} ns |\n",
            median_ns(&format!("{hosts}_hosts"))?
        ));
    }
    let report = format!(
        "# meshd policy benchmark\n\n## Load and compile\n\n{table}\n## Route lookup\n\n{lookups}\nThe lookup cost does not grow with the number of hosts: one hash probe per label of the \
         authority, then first-match over the host's routes.\n"
    );
    let out = root().join("target/bench/policy.md");
    std::fs::create_dir_all(out.parent().expect("target/bench"))?;
    std::fs::write(&out, &report)?;
    println!("\n{report}\n(written to {})", out.display());
    Ok(())
}
