//! `meshd exec --workload NS/NAME -- CMD`: enrol a workload with the running daemon, run CMD in
//! its managed cgroup, and unenrol when CMD exits.

use std::{
    ffi::CString,
    os::{
        fd::{AsRawFd, RawFd},
        unix::ffi::OsStrExt,
    },
    process::ExitCode,
};

use hyper::{Method, StatusCode};
use serde::Deserialize;

use crate::{
    admin::client::{ClientError, DEFAULT_TIMEOUT, request_within},
    cli::ExecArgs,
    workloads::WorkloadName,
};

const UNENROL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Deserialize)]
struct Enrolled {
    id: u32,
    cgroup: std::path::PathBuf,
}

#[derive(Debug, thiserror::Error)]
enum ExecError {
    #[error(transparent)]
    Name(#[from] crate::workloads::WorkloadError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("meshd refused to enrol the workload ({status}): {body}")]
    Refused { status: StatusCode, body: String },
    #[error("opening network namespace {path}: {source}")]
    Netns {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("starting {cmd:?}: {source}")]
    Spawn { cmd: String, source: std::io::Error },
}

pub fn run(args: ExecArgs) -> ExitCode {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(exec(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("meshd exec: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

impl ExecError {
    /// As `env`, `timeout` and shells say it: 127 for a command not found, 126 for one that
    /// could not be run; otherwise meshd's usage error.
    fn exit_code(&self) -> u8 {
        match self {
            ExecError::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound => 127,
            ExecError::Spawn { .. } => 126,
            _ => crate::cli::EXIT_USAGE.max(1),
        }
    }
}

async fn exec(args: ExecArgs) -> Result<ExitCode, ExecError> {
    let name = WorkloadName::parse(&args.workload)?;
    let netns = match &args.netns {
        Some(p) => Some(
            std::fs::canonicalize(p)
                .and_then(|p| std::fs::File::open(&p).map(|f| (p, f)))
                .map_err(|source| ExecError::Netns {
                    path: p.clone(),
                    source,
                })?,
        ),
        None => None,
    };
    let mut body = serde_json::json!({ "workload": name.to_string() });
    if let Some((path, _)) = &netns {
        body["netns"] = path.display().to_string().into();
    }
    let body = body.to_string();
    let (status, text) = request_within(
        DEFAULT_TIMEOUT,
        args.admin,
        Method::POST,
        "/workloads",
        Some(body),
    )
    .await?;
    if status != StatusCode::CREATED {
        return Err(ExecError::Refused { status, body: text });
    }
    let enrolled: Enrolled = serde_json::from_str(&text).map_err(|e| ExecError::Refused {
        status,
        body: format!("unreadable answer {text:?}: {e}"),
    })?;

    let ns_fd = netns.as_ref().map(|(_, f)| f.as_raw_fd());
    let result = spawn_and_wait(&args.command, &enrolled.cgroup, ns_fd).await;
    let path = format!("/workloads/{}", enrolled.id);
    // Short: a daemon that is hung or gone must not hold up the command's exit.
    match request_within(UNENROL_TIMEOUT, args.admin, Method::DELETE, &path, None).await {
        Ok((s, _)) if s.is_success() => {}
        Ok((s, body)) => eprintln!("meshd exec: could not unenrol workload {name} ({s}): {body}"),
        Err(e) => eprintln!("meshd exec: could not unenrol workload {name}: {e}"),
    }
    result
}

async fn spawn_and_wait(
    command: &[String],
    cgroup: &std::path::Path,
    netns: Option<RawFd>,
) -> Result<ExitCode, ExecError> {
    use tokio::signal::unix::{SignalKind, signal};

    let procs =
        CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes()).expect("path without NUL");
    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..]);
    // SAFETY: the closure only calls async-signal-safe functions (open, write, close, setns)
    // on data prepared before fork; the namespace descriptor stays open until the child runs.
    unsafe {
        cmd.pre_exec(move || {
            // Writing "0" to cgroup.procs moves the writing process: the child, before exec.
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if !ok {
                return Err(err);
            }
            if let Some(ns) = netns
                && libc::setns(ns, libc::CLONE_NEWNET) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| ExecError::Spawn {
        cmd: command.join(" "),
        source,
    })?;
    let pid = child.id().map(|p| p as i32);
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let status = loop {
        tokio::select! {
            s = child.wait() => break s,
            _ = term.recv() => forward(pid, libc::SIGTERM),
            _ = int.recv() => forward(pid, libc::SIGINT),
        }
    };
    let status = status.map_err(|source| ExecError::Spawn {
        cmd: command.join(" "),
        source,
    })?;
    use std::os::unix::process::ExitStatusExt;
    Ok(match (status.code(), status.signal()) {
        (Some(c), _) => ExitCode::from(c as u8),
        (None, Some(sig)) => ExitCode::from(128u8.wrapping_add(sig as u8)),
        _ => ExitCode::FAILURE,
    })
}

fn forward(pid: Option<i32>, sig: i32) {
    if let Some(pid) = pid {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(pid, sig) };
    }
}
