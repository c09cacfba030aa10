//! The id a pod's network namespace gives meshd's own namespace (its `nsid`), assigned over
//! rtnetlink when it has none. eBPF programs running for the pod pass it to
//! `bpf_sk_lookup_tcp` to find meshd's sockets, which live in meshd's namespace.

use std::{
    fs::File,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const NETNSA_NSID: u16 = 1;
const NETNSA_FD: u16 = 3;
/// The kernel's answer for a namespace without an id (and the request to allocate any).
const NOT_ASSIGNED: i32 = -1;
const HEADER: usize = 16;
/// `struct rtgenmsg` (one byte), padded to the netlink alignment.
const FAMILY: usize = 4;

/// Run inside the pod's namespace: the id it gives the namespace of `peer` (meshd's), assigned
/// first when there is none.
pub fn of(peer: &File) -> io::Result<i32> {
    let sock = socket()?;
    if let Some(id) = get(&sock, peer)? {
        return Ok(id);
    }
    let assign = request(
        libc::RTM_NEWNSID,
        libc::NLM_F_ACK as u16,
        &[(NETNSA_FD, peer.as_raw_fd()), (NETNSA_NSID, NOT_ASSIGNED)],
    );
    match call(&sock, &assign) {
        Ok(_) => {}
        // Another process assigned one meanwhile.
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(e),
    }
    get(&sock, peer)?.ok_or_else(|| io::Error::other("the kernel assigned no id"))
}

fn get(sock: &OwnedFd, peer: &File) -> io::Result<Option<i32>> {
    // Not acknowledged: the reply is the one answer.
    let query = request(libc::RTM_GETNSID, 0, &[(NETNSA_FD, peer.as_raw_fd())]);
    let id = call(sock, &query)?;
    Ok(id.filter(|&id| id != NOT_ASSIGNED))
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends one request and reads its answer: the `NETNSA_NSID` of a reply, or `None` for a
/// plain acknowledgement.
fn call(sock: &OwnedFd, msg: &[u8]) -> io::Result<Option<i32>> {
    // SAFETY: `msg` is valid for its length; the kernel is the default destination.
    let sent = unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 4096];
    // SAFETY: `buf` has room for its length.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    parse_reply(&buf[..n as usize])
}

/// An `RTM_*NSID` request with 32-bit attributes and `flags` besides `NLM_F_REQUEST`.
fn request(kind: u16, flags: u16, attrs: &[(u16, i32)]) -> Vec<u8> {
    let len = HEADER + FAMILY + attrs.len() * 8;
    let flags = libc::NLM_F_REQUEST as u16 | flags;
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_ne_bytes());
    b.extend_from_slice(&kind.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    b.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    b.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    for (kind, value) in attrs {
        b.extend_from_slice(&8u16.to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&value.to_ne_bytes());
    }
    b
}

/// The first message of a reply: an error, an acknowledgement (`None`), or an `RTM_NEWNSID`
/// with the id.
fn parse_reply(buf: &[u8]) -> io::Result<Option<i32>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed rtnetlink reply");
    let u16_at =
        |i: usize| -> Option<u16> { Some(u16::from_ne_bytes(buf.get(i..i + 2)?.try_into().ok()?)) };
    let i32_at =
        |i: usize| -> Option<i32> { Some(i32::from_ne_bytes(buf.get(i..i + 4)?.try_into().ok()?)) };
    let len = (i32_at(0).ok_or_else(bad)? as u32 as usize).min(buf.len());
    match u16_at(4).ok_or_else(bad)? {
        t if t == libc::NLMSG_ERROR as u16 => match i32_at(HEADER).ok_or_else(bad)? {
            0 => Ok(None),
            e => Err(io::Error::from_raw_os_error(-e)),
        },
        libc::RTM_NEWNSID => {
            let mut at = HEADER + FAMILY;
            while at + 4 <= len {
                let alen = u16_at(at).ok_or_else(bad)? as usize;
                if alen < 4 {
                    return Err(bad());
                }
                if u16_at(at + 2).ok_or_else(bad)? == NETNSA_NSID {
                    return i32_at(at + 4).map(Some).ok_or_else(bad);
                }
                at += (alen + 3) & !3;
            }
            Ok(Some(NOT_ASSIGNED))
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply as the kernel builds it: header, family, then attributes.
    fn reply(kind: u16, attrs: &[(u16, i32)]) -> Vec<u8> {
        let mut b = request(kind, 0, attrs);
        b[6..8].copy_from_slice(&0u16.to_ne_bytes());
        b
    }

    #[test]
    fn a_request_is_header_family_and_attributes() {
        let r = request(libc::RTM_GETNSID, 0, &[(NETNSA_FD, 7)]);
        assert_eq!(r.len(), 28);
        assert_eq!(u32::from_ne_bytes(r[0..4].try_into().unwrap()), 28);
        assert_eq!(u16::from_ne_bytes(r[4..6].try_into().unwrap()), 90);
        assert_eq!(&r[20..24], &[8, 0, 3, 0]);
        assert_eq!(i32::from_ne_bytes(r[24..28].try_into().unwrap()), 7);
    }

    #[test]
    fn replies_give_the_id_an_ack_or_the_error() {
        let id = reply(libc::RTM_NEWNSID, &[(2, 99), (NETNSA_NSID, 4)]);
        assert_eq!(parse_reply(&id).unwrap(), Some(4));
        let none = reply(libc::RTM_NEWNSID, &[(NETNSA_NSID, NOT_ASSIGNED)]);
        assert_eq!(parse_reply(&none).unwrap(), Some(NOT_ASSIGNED));
        let mut ack = reply(libc::NLMSG_ERROR as u16, &[]);
        ack.extend_from_slice(&0i32.to_ne_bytes());
        assert_eq!(parse_reply(&ack).unwrap(), None);
        let mut err = reply(libc::NLMSG_ERROR as u16, &[]);
        err.truncate(HEADER);
        err.extend_from_slice(&(-libc::EPERM).to_ne_bytes());
        assert_eq!(
            parse_reply(&err).unwrap_err().raw_os_error(),
            Some(libc::EPERM)
        );
        assert!(parse_reply(&[1, 2]).is_err(), "truncated");
    }

    /// A new namespace gives the test's own namespace an id, and the same one when asked again.
    #[test]
    fn a_new_namespace_names_the_first_by_one_id() {
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let own = File::open("/proc/thread-self/ns/net").unwrap();
        let ids = std::thread::spawn(move || {
            // SAFETY: unshare affects only this thread, which ends below.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            (of(&own).unwrap(), of(&own).unwrap())
        })
        .join()
        .unwrap();
        assert!(ids.0 >= 0, "{ids:?}");
        assert_eq!(ids.0, ids.1);
    }
}
