//! tinyproxy (Debian's package) as the forward proxy a DestinationRule `tunnel` goes through:
//! it answers HTTP CONNECT from the clients it allows and logs each request it reads.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub struct Tinyproxy {
    child: Child,
    log: PathBuf,
}

impl Tinyproxy {
    pub fn start(name: &str, port: u16) -> Tinyproxy {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        Tinyproxy::spawn(
            name,
            Command::new("tinyproxy"),
            addr,
            &["127.0.0.1"],
            || std::net::TcpStream::connect(addr).is_ok(),
        )
    }

    /// tinyproxy run by `cmd` (perhaps set to run in a node's namespace) on `addr`, taking
    /// clients from `allow`, once `ready` says it listens.
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        addr: std::net::SocketAddr,
        allow: &[&str],
        ready: impl Fn() -> bool,
    ) -> Tinyproxy {
        let dir = std::env::temp_dir().join(format!("meshd-test-{name}-tinyproxy"));
        super::stop_leftover(&dir.join("tinyproxy.pid"), "tinyproxy");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("tinyproxy.conf");
        let allow: String = allow.iter().map(|a| format!("Allow {a}\n")).collect();
        std::fs::write(
            &conf,
            format!(
                "Port {}\nListen {}\nTimeout 60\n{allow}MaxClients 20\n\
                 LogLevel Connect\nPidFile \"{}\"\n",
                addr.port(),
                addr.ip(),
                dir.join("tinyproxy.pid").display()
            ),
        )
        .unwrap();
        let log = dir.join("tinyproxy.log");
        let child = cmd
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("tinyproxy (Debian's tinyproxy package; `cargo xtask test` installs it)");
        let mut t = Tinyproxy { child, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready() {
            if let Ok(Some(status)) = t.child.try_wait() {
                panic!("tinyproxy exited ({status}): {}", t.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "tinyproxy did not listen on {addr}: {}",
                t.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        t
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
