//! nginx (Debian's package) as a backend that reads the PROXY protocol: each of its ports
//! expects the header, and answers every request with the addresses the header announced and
//! nginx's number for the connection, as `SOURCE>DESTINATION #N` (over TLS, followed by the
//! TLS version and the request's protocol).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// What nginx answers with: the addresses the PROXY protocol header announced, and its number
/// for the connection.
const ANNOUNCED: &str = "$proxy_protocol_addr:$proxy_protocol_port>\
                         $proxy_protocol_server_addr:$proxy_protocol_server_port #$connection";

pub struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    /// nginx on 127.0.0.1 at `ports`, each port expecting a PROXY protocol header (v1 or v2).
    pub fn proxy_protocol(name: &str, ports: &[u16]) -> Nginx {
        Nginx::start(name, ports, |p| {
            format!(
                "  server {{ listen 127.0.0.1:{p} proxy_protocol; location / {{ return 200 \
                 \"{ANNOUNCED}\\n\"; }} }}\n"
            )
        })
    }

    /// nginx on 127.0.0.1:`port` expecting the PROXY protocol header and then TLS (HTTP/1.1 or
    /// HTTP/2 by ALPN) with `server.pem` and `server.key` from `certs`.
    pub fn proxy_protocol_tls(name: &str, port: u16, certs: &Path) -> Nginx {
        let (cert, key) = (certs.join("server.pem"), certs.join("server.key"));
        Nginx::start(name, &[port], |p| {
            format!(
                "  server {{ listen 127.0.0.1:{p} ssl http2 proxy_protocol; \
                 ssl_certificate {}; ssl_certificate_key {}; location / {{ return 200 \
                 \"{ANNOUNCED} $ssl_protocol $server_protocol\\n\"; }} }}\n",
                cert.display(),
                key.display()
            )
        })
    }

    /// nginx on 127.0.0.1:`port` serving TLS (HTTP/1.1, keep-alive) with `server.pem` and
    /// `server.key` from `certs`, answering every request with the server name the client
    /// sent, the Host it asked for and nginx's number for the connection:
    /// `SNI HOST #N`.
    pub fn tls(name: &str, port: u16, certs: &Path) -> Nginx {
        let (cert, key) = (certs.join("server.pem"), certs.join("server.key"));
        Nginx::start(name, &[port], |p| {
            format!(
                "  server {{ listen 127.0.0.1:{p} ssl; ssl_certificate {}; \
                 ssl_certificate_key {}; location / {{ return 200 \
                 \"$ssl_server_name $host #$connection\\n\"; }} }}\n",
                cert.display(),
                key.display()
            )
        })
    }

    /// nginx with one `server` block per port, as `server` writes it.
    fn start(name: &str, ports: &[u16], server: impl Fn(u16) -> String) -> Nginx {
        let dir = std::env::temp_dir().join(format!("meshd-test-{name}-nginx"));
        super::stop_leftover(&dir.join("nginx.pid"), "nginx");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let d = dir.display();
        let servers: String = ports.iter().map(|p| server(*p)).collect();
        let conf = format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n\
             \x20 fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n\
             {servers}}}\n"
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(&dir)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (Debian's nginx package; `cargo xtask test` installs it)");
        let mut n = Nginx { child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        let log = n.dir.join("error.log");
        for p in ports {
            super::wait_listening(&mut n.child, "nginx", *p, deadline, &log);
        }
        n
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its worker too (SIGKILL would leave the worker listening).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}
