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
            "  kernel splice    {}",
            if s["sockmap"].as_bool() == Some(true) && s["splice"].as_bool() == Some(true) {
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
        // Bytes are the kernel's counts on meshd's workload-side socket; RTT and retransmits
        // come from the upstream socket when the connection has its own (L4), else from the
        // workload side.
        println!(
            "{:>6}  {:<24} {:<8} {:<22} {:<22} {:>12} {:>12} {:>7} {:>5}",
            "ID",
            "WORKLOAD",
            "PROTO",
            "SOURCE",
            "DESTINATION",
            "FROM WL",
            "TO WL",
            "RTT us",
            "RETX"
        );
        for c in v.as_array().cloned().unwrap_or_default() {
            let down = &c["downstream"];
            let tcp = if c["upstream"].is_object() {
                &c["upstream"]
            } else {
                down
            };
            println!(
                "{:>6}  {:<24} {:<8} {:<22} {:<22} {:>12} {:>12} {:>7} {:>5}",
                c["id"].to_string(),
                c["workload"].as_str().unwrap_or("-"),
                c["protocol"].as_str().unwrap_or("?"),
                c["source"].as_str().unwrap_or("?"),
                c["destination"].as_str().unwrap_or("?"),
                down["rx_bytes"].as_u64().unwrap_or(0),
                down["tx_bytes"].as_u64().unwrap_or(0),
                tcp["srtt_us"].as_u64().unwrap_or(0),
                tcp["retransmits"].as_u64().unwrap_or(0),
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
