//! HAProxy (Debian's package) as a TLS terminator in TCP mode: it takes TLS on one port with a
//! certificate the test made and passes the bytes inside to another port, as a forward proxy
//! that clients reach over TLS is often fronted.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub struct Haproxy {
    child: Child,
    dir: PathBuf,
}

impl Haproxy {
    /// HAProxy on 127.0.0.1:`port` taking TLS with `server.pem`/`server.key` from `certs`, and
    /// passing what is inside to 127.0.0.1:`to`.
    pub fn tls_terminator(name: &str, port: u16, to: u16, certs: &Path) -> Haproxy {
        let dir = std::env::temp_dir().join(format!("meshd-test-{name}-haproxy"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // HAProxy reads the certificate and its key from one file.
        let pem = dir.join("server-with-key.pem");
        let bundle = std::fs::read_to_string(certs.join("server.pem")).unwrap()
            + &std::fs::read_to_string(certs.join("server.key")).unwrap();
        std::fs::write(&pem, bundle).unwrap();
        let conf = dir.join("haproxy.cfg");
        std::fs::write(
            &conf,
            format!(
                "global\n  maxconn 64\ndefaults\n  mode tcp\n  timeout connect 5s\n  \
                 timeout client 30s\n  timeout server 30s\n\
                 frontend tls\n  bind 127.0.0.1:{port} ssl crt {}\n  default_backend inside\n\
                 backend inside\n  server next 127.0.0.1:{to}\n",
                pem.display()
            ),
        )
        .unwrap();
        let log = dir.join("haproxy.log");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("haproxy (Debian's haproxy package; `cargo xtask test` installs it)");
        let mut h = Haproxy { child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        super::wait_listening(&mut h.child, "haproxy", port, deadline, &log);
        h
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
