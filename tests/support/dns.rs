//! A DNS server on a loopback address (tests/clients/dns_server.py), whose answer for every
//! name the test sets and changes: an address, NXDOMAIN, NODATA or SERVFAIL.

use std::{
    io::BufRead,
    path::PathBuf,
    process::{Child, Command, Stdio},
};

const SERVER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/clients/dns_server.py"
);

pub struct DnsServer {
    child: Child,
    mode_file: PathBuf,
}

impl DnsServer {
    /// The server on UDP `addr`:53, answering every A query with `answer` until `set` says
    /// otherwise.
    pub fn start(name: &str, addr: &str, answer: &str) -> DnsServer {
        let mode_file = std::env::temp_dir().join(format!("meshd-test-{name}-dns-mode"));
        std::fs::write(&mode_file, answer).unwrap();
        let mut child = Command::new("python3")
            .args([SERVER, "--addr", addr, "--mode-file"])
            .arg(&mode_file)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 for the DNS server");
        let mut ready = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert_eq!(
            ready, "ready\n",
            "the DNS server did not start on {addr}:53"
        );
        DnsServer { child, mode_file }
    }

    /// From the next query on, answers `answer` (an IPv4 address, NXDOMAIN, NODATA, SERVFAIL).
    pub fn set(&self, answer: &str) {
        std::fs::write(&self.mode_file, answer).unwrap();
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
