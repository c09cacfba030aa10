//! splice(2) through a pipe: the kernel moves a socket's queued pages to another socket, so
//! the bytes never enter meshd's memory. The L4 relay uses it while a sender streams.
//!
//! Only for sockets outside the sockmap: a socket with a sockmap psock receives the workload's
//! bytes on a queue that splice(2) does not read.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use tokio::{io::Interest, net::TcpStream};

/// Pipe capacity: the most one splice call moves.
pub const PIPE_CAPACITY: usize = 256 * 1024;

/// A pipe for moving one direction's bytes with splice(2).
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    pub fn new() -> io::Result<Self> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A larger pipe moves more per call; the default (64 KiB) is kept if the kernel refuses.
        // SAFETY: F_SETPIPE_SZ and F_GETPIPE_SZ take an int and touch no memory of ours.
        let capacity = unsafe {
            libc::fcntl(
                write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_CAPACITY as libc::c_int,
            );
            libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ)
        };
        let capacity = usize::try_from(capacity).unwrap_or(0).max(4096);
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }

    /// Moves what `from` has queued (waiting for something, and up to the pipe's capacity) on
    /// to `to`. Returns the bytes moved; 0 means `from` has ended.
    pub async fn move_some(&self, from: &TcpStream, to: &TcpStream) -> io::Result<usize> {
        let n = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || {
                splice(
                    from.as_fd().as_raw_fd(),
                    self.write.as_raw_fd(),
                    self.capacity,
                )
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => break other?,
            }
        };
        let mut left = n;
        while left > 0 {
            match to.try_io(Interest::WRITABLE, || {
                splice(self.read.as_raw_fd(), to.as_fd().as_raw_fd(), left)
            }) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }
}

/// One non-blocking splice(2) of up to `len` bytes; 0 means the source has ended.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
    // SAFETY: plain descriptors and null offsets (both ends are a socket or a pipe).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            flags,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}
