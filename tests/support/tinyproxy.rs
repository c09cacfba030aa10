//! tinyproxy (Debian's package) as the forward proxy a DestinationRule `tunnel` goes through:
//! it answers HTTP CONNECT from 127.0.0.1 and logs each request it reads.

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
        let dir = std::env::temp_dir().join(format!("meshd-test-{name}-tinyproxy"));
        super::stop_leftover(&dir.join("tinyproxy.pid"), "tinyproxy");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("tinyproxy.conf");
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 60\nAllow 127.0.0.1\nMaxClients 20\n\
                 LogLevel Connect\nPidFile \"{}\"\n",
                dir.join("tinyproxy.pid").display()
            ),
        )
        .unwrap();
        let log = dir.join("tinyproxy.log");
        let child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("tinyproxy (Debian's tinyproxy package; `cargo xtask test` installs it)");
        let mut t = Tinyproxy { child, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        super::wait_listening(&mut t.child, "tinyproxy", port, deadline, &t.log);
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
