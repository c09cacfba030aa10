//! The PROXY protocol header (HAProxy's, version 1 text or version 2 binary) that a
//! DestinationRule's `proxyProtocol` has meshd write first on each upstream connection it opens
//! to an endpoint: the downstream client's address and the address it dialled.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

/// Version 2's fixed opening (section 2.2 of the specification).
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    /// Istio's `proxyProtocol.version`: V1 unless it says V2 (validation allows no other).
    pub fn from_spec(spec: &crate::policy::model::ProxyProtocol) -> Version {
        match spec.version.as_deref() {
            Some("V2") => Version::V2,
            _ => Version::V1,
        }
    }
}

/// Whether a downstream connection has closed. Its partition of the pool (the upstream
/// connections opened with its PROXY header) keeps no connection after that: a request still in
/// flight then (a mirror's) closes its connection instead of giving it back.
#[derive(Clone, Debug, Default)]
pub struct ClientLife(Arc<AtomicBool>);

impl ClientLife {
    /// Marks the downstream connection closed, before its partition is forgotten.
    pub fn end(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn ended(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl PartialEq for ClientLife {
    fn eq(&self, other: &ClientLife) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ClientLife {}

/// The header of one downstream connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyHeader {
    pub version: Version,
    /// The downstream client.
    pub source: SocketAddr,
    /// The address the client dialled.
    pub destination: SocketAddr,
}

impl ProxyHeader {
    /// The header's bytes. Addresses of two families are both given as IPv6 (an IPv4 one
    /// mapped), as the specification asks of a sender that has one of each.
    pub fn encode(&self) -> Vec<u8> {
        let (src, dst) = same_family(self.source.ip(), self.destination.ip());
        let (sp, dp) = (self.source.port(), self.destination.port());
        match self.version {
            Version::V1 => {
                let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
                format!("PROXY {family} {src} {dst} {sp} {dp}\r\n").into_bytes()
            }
            Version::V2 => {
                let mut out = Vec::with_capacity(16 + 36);
                out.extend_from_slice(&V2_SIGNATURE);
                // Version 2, command PROXY; then the family and transport: TCP over IPv4 or IPv6.
                out.push(0x21);
                match (src, dst) {
                    (IpAddr::V4(s), IpAddr::V4(d)) => {
                        out.push(0x11);
                        out.extend_from_slice(&12u16.to_be_bytes());
                        out.extend_from_slice(&s.octets());
                        out.extend_from_slice(&d.octets());
                    }
                    (s, d) => {
                        out.push(0x21);
                        out.extend_from_slice(&36u16.to_be_bytes());
                        out.extend_from_slice(&v6(s).octets());
                        out.extend_from_slice(&v6(d).octets());
                    }
                }
                out.extend_from_slice(&sp.to_be_bytes());
                out.extend_from_slice(&dp.to_be_bytes());
                out
            }
        }
    }

    /// Keeps upstream connections of different downstream connections apart in the pool: each
    /// announced its own addresses when it opened, as Envoy partitions its pools.
    pub fn pool_key(&self) -> Arc<str> {
        let v = match self.version {
            Version::V1 => 1,
            Version::V2 => 2,
        };
        Arc::from(format!("proxy-v{v} {}>{}", self.source, self.destination))
    }
}

fn same_family(a: IpAddr, b: IpAddr) -> (IpAddr, IpAddr) {
    if a.is_ipv4() == b.is_ipv4() {
        (a, b)
    } else {
        (IpAddr::V6(v6(a)), IpAddr::V6(v6(b)))
    }
}

fn v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(version: Version, source: &str, destination: &str) -> ProxyHeader {
        ProxyHeader {
            version,
            source: source.parse().unwrap(),
            destination: destination.parse().unwrap(),
        }
    }

    #[test]
    fn version_1_is_one_text_line() {
        let h = header(Version::V1, "127.0.0.7:40000", "10.96.0.10:9080");
        assert_eq!(
            h.encode(),
            b"PROXY TCP4 127.0.0.7 10.96.0.10 40000 9080\r\n".to_vec()
        );
        let h = header(Version::V1, "[fd00::1]:1", "[fd00::2]:443");
        assert_eq!(h.encode(), b"PROXY TCP6 fd00::1 fd00::2 1 443\r\n".to_vec());
        // One address of each family: both as IPv6.
        let h = header(Version::V1, "127.0.0.7:1", "[fd00::2]:2");
        assert_eq!(
            h.encode(),
            b"PROXY TCP6 ::ffff:127.0.0.7 fd00::2 1 2\r\n".to_vec()
        );
    }

    #[test]
    fn version_2_is_the_binary_form() {
        let h = header(Version::V2, "127.0.0.7:40000", "10.96.0.10:9080");
        let mut want = V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0, 12, 127, 0, 0, 7, 10, 96, 0, 10]);
        want.extend_from_slice(&[0x9c, 0x40, 0x23, 0x78]);
        assert_eq!(h.encode(), want);
        let h = header(Version::V2, "[fd00::1]:1", "127.0.0.1:2");
        let e = h.encode();
        assert_eq!(&e[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(e.len(), 16 + 36);
        assert_eq!(
            &e[32..48],
            &"::ffff:127.0.0.1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
        assert_eq!(&e[48..], &[0, 1, 0, 2]);
    }

    #[test]
    fn each_downstream_connection_has_its_own_pool_key() {
        let a = header(Version::V1, "127.0.0.7:1", "10.0.0.1:80");
        let b = header(Version::V1, "127.0.0.7:2", "10.0.0.1:80");
        assert_ne!(a.pool_key(), b.pool_key());
        assert_eq!(a.pool_key(), a.pool_key());
    }
}
