//! `meshd status` and `meshd connections`: the running daemon's state, readable or as JSON.

use std::process::ExitCode;

use hyper::Method;

use crate::{admin::client::blocking_request, cli::ClientArgs};

fn fetch(args: &ClientArgs, path: &str) -> Result<serde_json::Value, String> {
    let (status, body) =
        blocking_request(args.admin, Method::GET, path, None).map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{path} answered {status}: {body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("{path} returned invalid JSON: {e}"))
}

pub fn status(args: ClientArgs) -> ExitCode {
    let result = (|| {
        let ready =
            blocking_request(args.admin, Method::GET, "/ready", None).map_err(|e| e.to_string())?;
        let dump = fetch(&args, "/config_dump")?;
        let conns = fetch(&args, "/connections")?;
        if args.json {
            let v = serde_json::json!({
                "ready": ready.0.is_success(),
                "config": dump,
                "connections": conns.as_array().map(|a| a.len()).unwrap_or(0),
            });
            println!("{}", serde_json::to_string_pretty(&v).expect("json"));
            return Ok(());
        }
        let s = &dump["settings"];
        println!(
            "meshd at {}: {}",
            args.admin,
            if ready.0.is_success() {
                "ready"
            } else {
                "NOT ready"
            }
        );
        println!(
            "  attach cgroup    {}",
            dump["attach_cgroup"].as_str().unwrap_or("?")
        );
        println!("  outbound port    {}", s["outbound_port"]);
        println!(
            "  sockmap          {}",
            if s["sockmap"].as_bool() == Some(true) {
                "on"
            } else {
                "off"
            }
        );
        println!(
            "  fail mode        {}",
            s["fail_mode"].as_str().unwrap_or("?")
        );
        println!("  heartbeat        {} ms", s["heartbeat_timeout"]);
        let workloads = dump["workloads"].as_array().cloned().unwrap_or_default();
        println!("  workloads        {}", workloads.len());
        for w in workloads {
            println!(
                "    {:>4}  {}",
                w["id"],
                w["workload"].as_str().unwrap_or("?")
            );
        }
        println!(
            "  connections      {}",
            conns.as_array().map(|a| a.len()).unwrap_or(0)
        );
        Ok::<(), String>(())
    })();
    finish(result)
}

pub fn connections(args: ClientArgs) -> ExitCode {
    let result = fetch(&args, "/connections").map(|v| {
        if args.json {
            println!("{}", serde_json::to_string_pretty(&v).expect("json"));
            return;
        }
        println!(
            "{:>6}  {:<24} {:<24} {:<24} {:>12} {:>12} {:>8} {:>6}",
            "ID", "WORKLOAD", "SOURCE", "DESTINATION", "TX BYTES", "RX BYTES", "RTT us", "RETX"
        );
        for c in v.as_array().cloned().unwrap_or_default() {
            let up = &c["upstream"];
            println!(
                "{:>6}  {:<24} {:<24} {:<24} {:>12} {:>12} {:>8} {:>6}",
                c["id"].to_string(),
                c["workload"].as_str().unwrap_or("-"),
                c["source"].as_str().unwrap_or("?"),
                c["destination"].as_str().unwrap_or("?"),
                up["tx_bytes"].as_u64().unwrap_or(0),
                up["rx_bytes"].as_u64().unwrap_or(0),
                up["srtt_us"].as_u64().unwrap_or(0),
                up["retransmits"].as_u64().unwrap_or(0),
            );
        }
    });
    finish(result)
}

fn finish(r: Result<(), String>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshd: {e}");
            ExitCode::FAILURE
        }
    }
}
