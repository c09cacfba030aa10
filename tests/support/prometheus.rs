//! A real Prometheus server for the telemetry tests: scrapes one target every second on
//! loopback, with its own data directory, killed on drop.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

pub struct Prometheus {
    pub addr: SocketAddr,
    child: Child,
}

impl Prometheus {
    pub fn scraping(name: &str, target: SocketAddr) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("meshd-test-{name}-prometheus"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n- job_name: meshd\n  static_configs:\n  - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package prometheus) must be installed");
        let p = Prometheus { addr, child };
        super::eventually(Duration::from_secs(20), || {
            (super::http_get(addr, "/-/ready").ok()?.0 == 200).then_some(())
        })
        .expect("prometheus ready");
        p
    }

    /// Runs an instant query and returns the JSON `data.result` array.
    pub fn query(&self, q: &str) -> Vec<serde_json::Value> {
        let enc: String = q
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"_-.".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let (_, body) =
            super::http_get(self.addr, &format!("/api/v1/query?query={enc}")).expect("query");
        let v: serde_json::Value = serde_json::from_str(&body).expect("query answer is JSON");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
