//! Starting the benchmark's helper processes (this binary's hidden `bench` subcommands),
//! optionally pinned to a CPU, with bounded waits and cleanup on drop.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::process::CommandExt,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::util::show;

/// A helper server exits after this many connections; the benchmark needs a handful.
pub const MAX_CONNECTIONS: u32 = 64;

/// A helper server drops a connection that stays silent this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

const READY: &str = "ready";

/// Called by a helper server once it listens: tells the parent it can start clients.
pub fn announce_ready() -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{READY}")?;
    out.flush()?;
    Ok(())
}

/// `[taskset -c CPU] PROGRAM ARGS...`.
pub fn command(program: &str, args: &[String], cpu: Option<u32>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", &cpu.to_string(), program]).args(args);
            cmd
        }
        None => {
            let mut cmd = Command::new(program);
            cmd.args(args);
            cmd
        }
    }
}

/// This binary's `bench SUBCOMMAND ARGS...` as an argument list.
pub fn helper(subcommand: &str, args: &[String]) -> Result<Vec<String>> {
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let mut argv = vec![exe.display().to_string(), "bench".into(), subcommand.into()];
    argv.extend_from_slice(args);
    Ok(argv)
}

/// A running helper server; killed when dropped.
pub struct Server {
    child: Child,
}

impl Server {
    /// Starts the server and waits (at most 10 s) until it says it listens.
    pub fn start(mut cmd: Command) -> Result<Server> {
        eprintln!("    $ {} &", show(&cmd));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", show(&cmd)))?;
        let mut server = Server { child };
        let stdout = server.child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) if line.trim() == READY => Ok(server),
            Ok(_) => {
                let status = server.child.wait()?;
                bail!(
                    "the helper server `{}` exited ({status}) before listening",
                    show(&cmd)
                )
            }
            Err(_) => bail!(
                "the helper server `{}` did not start listening within 10 s",
                show(&cmd)
            ),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a client to completion in its own process group (killing the group after `deadline`)
/// and returns its stdout.
pub fn run_text(mut cmd: Command, deadline: Duration) -> Result<String> {
    eprintln!("    $ {}", show(&cmd));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", show(&cmd)))?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let until = Instant::now() + deadline;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= until {
            // SAFETY: our own child's process group.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            bail!(
                "`{}` did not finish within {deadline:?}; killed it",
                show(&cmd)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = reader.join().unwrap_or_default();
    if !status.success() {
        bail!("`{}` failed with {status}; its output: {text}", show(&cmd));
    }
    Ok(text)
}

/// Runs a client to completion (killing it after `deadline`) and returns the JSON line it
/// printed last.
pub fn run_json(cmd: Command, deadline: Duration) -> Result<String> {
    let shown = show(&cmd);
    let text = run_text(cmd, deadline)?;
    text.lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .map(str::to_string)
        .with_context(|| format!("`{shown}` printed no JSON result; its output: {text:?}"))
}

/// The unsigned integer `"key":N` (or `"key": N`) in a flat JSON object, such as a helper writes.
pub fn field(json: &str, key: &str) -> Result<u64> {
    let pat = format!("\"{key}\":");
    let start = json
        .find(&pat)
        .with_context(|| format!("no {key:?} in {json}"))?
        + pat.len();
    let digits: String = json[start..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .with_context(|| format!("{key:?} in {json} is not a number"))
}
