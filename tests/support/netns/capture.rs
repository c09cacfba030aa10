//! What crossed the wire: tcpdump on one interface of a namespace, read back as raw pcap bytes so
//! a test can tell whether plaintext went over the LAN.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Stdio},
    sync::mpsc,
    time::Duration,
};

use super::command_in;

/// A running tcpdump; `stop` returns the pcap file's bytes.
pub struct Capture {
    child: Option<Child>,
    file: PathBuf,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Capture {
    /// Starts tcpdump on `interface` in namespace `ns`, and returns once it is capturing.
    pub fn start(ns: &str, interface: &str) -> Capture {
        let file = std::env::temp_dir().join(format!("{ns}-{interface}.pcap"));
        let _ = std::fs::remove_file(&file);
        let mut child = command_in(ns, "tcpdump")
            // --immediate-mode hands over each packet at once (by default libpcap batches them
            // for up to a second, and SIGINT drops the batch); -U writes each one as it comes;
            // -Z root keeps the right to write the file.
            .args(["--immediate-mode", "-n", "-U", "-s", "0", "-Z", "root"])
            .args(["-i", interface, "-w"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "starting tcpdump: {e}. The LAN tests need it: install the Debian package \
                     tcpdump (`cargo xtask setup --test-deps` does)"
                )
            });
        // tcpdump says "listening on IF" once it captures; keep draining stderr after that.
        let (ready_tx, ready_rx) = mpsc::channel();
        let stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            for line in stderr.lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = ready_tx.send(());
                }
                text.push_str(&line);
                text.push('\n');
            }
            text
        });
        let mut capture = Capture {
            child: Some(child),
            file,
            stderr: Some(reader),
        };
        if ready_rx.recv_timeout(Duration::from_secs(10)).is_err() {
            let text = capture.finish();
            panic!("tcpdump on {ns}/{interface} never started capturing: {text}");
        }
        capture
    }

    /// Stops tcpdump and returns everything it captured: the pcap file, headers and all.
    pub fn stop(mut self) -> Vec<u8> {
        let text = self.finish();
        std::fs::read(&self.file).unwrap_or_else(|e| {
            panic!("reading {}: {e}; tcpdump said: {text}", self.file.display())
        })
    }

    /// Lets tcpdump write what it has seen, interrupts it (it flushes and exits) and returns
    /// what it printed.
    fn finish(&mut self) -> String {
        if let Some(mut child) = self.child.take() {
            self.settle();
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            if crate::support::wait_exit(&mut child, Duration::from_secs(10)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }

    /// Waits (at most two seconds) until the file stops growing.
    fn settle(&self) {
        let size = || std::fs::metadata(&self.file).map(|m| m.len()).unwrap_or(0);
        let mut last = size();
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(100));
            let now = size();
            if now == last {
                return;
            }
            last = now;
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.finish();
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Whether `needle` occurs anywhere in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
