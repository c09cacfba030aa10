//! Conversions between std socket addresses and the kernel-order `Endpoint` of the maps.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proxy_common::{AF_INET, AF_INET6, Endpoint};

/// The map key for a socket address (addresses in network order, port in host order).
pub fn endpoint_of(addr: SocketAddr) -> Endpoint {
    match addr.ip() {
        IpAddr::V4(ip) => Endpoint {
            ip: [u32::from_ne_bytes(ip.octets()), 0, 0, 0],
            port: addr.port() as u32,
            family: AF_INET,
        },
        IpAddr::V6(ip) => {
            let o = ip.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            Endpoint {
                ip: [w(0), w(4), w(8), w(12)],
                port: addr.port() as u32,
                family: AF_INET6,
            }
        }
    }
}

/// The socket address of a map endpoint; IPv4-mapped IPv6 addresses become IPv4.
pub fn socket_addr_of(e: &Endpoint) -> Option<SocketAddr> {
    let port = u16::try_from(e.port).ok()?;
    match e.family {
        AF_INET => Some(SocketAddr::new(
            Ipv4Addr::from(e.ip[0].to_ne_bytes()).into(),
            port,
        )),
        AF_INET6 => {
            let mut o = [0u8; 16];
            for (i, w) in e.ip.iter().enumerate() {
                o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            let ip = Ipv6Addr::from(o);
            let ip = ip
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(ip));
            Some(SocketAddr::new(ip, port))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for s in ["127.0.0.1:8080", "[::1]:15001", "[fd00::1:2]:1"] {
            let a: SocketAddr = s.parse().unwrap();
            assert_eq!(socket_addr_of(&endpoint_of(a)), Some(a));
        }
    }

    #[test]
    fn network_order_matches_kernel() {
        let e = endpoint_of("127.0.0.1:80".parse().unwrap());
        assert_eq!(e.ip[0].to_ne_bytes(), [127, 0, 0, 1]);
        assert_eq!(e.port, 80);
    }

    #[test]
    fn v4_mapped_becomes_v4() {
        let a: SocketAddr = "[::ffff:10.1.2.3]:80".parse().unwrap();
        assert_eq!(
            socket_addr_of(&endpoint_of(a)),
            Some("10.1.2.3:80".parse().unwrap())
        );
    }
}
