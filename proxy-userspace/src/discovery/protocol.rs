//! A Kubernetes Service port's protocol, chosen as Istio does: `appProtocol` first, then the
//! port name's prefix (`http`, `http-web`, `grpc-api`, `tcp-db`...), else none (meshd sniffs).

/// Istio's protocol for a Service port, or None to let meshd detect it. `l4` is the port's
/// `protocol` (TCP, UDP, SCTP).
pub fn detect(
    name: Option<&str>,
    app_protocol: Option<&str>,
    l4: Option<&str>,
) -> Option<&'static str> {
    match l4.unwrap_or("TCP") {
        "UDP" => return Some("UDP"),
        "TCP" => {}
        _ => return None,
    }
    if let Some(p) = app_protocol.and_then(from_app_protocol) {
        return Some(p);
    }
    let name = name?.to_ascii_lowercase();
    // `grpc-web` is a protocol whose name has a dash; check it before splitting at one.
    if name == "grpc-web" || name.starts_with("grpc-web-") {
        return Some("GRPC-WEB");
    }
    let prefix = name.split('-').next().unwrap_or_default();
    from_name(prefix)
}

fn from_app_protocol(p: &str) -> Option<&'static str> {
    match p.to_ascii_lowercase().as_str() {
        // The Kubernetes-defined values (KEP-3726).
        "kubernetes.io/h2c" => Some("HTTP2"),
        "kubernetes.io/ws" => Some("HTTP"),
        "kubernetes.io/wss" => Some("HTTPS"),
        "grpc-web" => Some("GRPC-WEB"),
        other => from_name(other),
    }
}

fn from_name(p: &str) -> Option<&'static str> {
    Some(match p {
        "http" => "HTTP",
        "http2" => "HTTP2",
        "https" => "HTTPS",
        "grpc" => "GRPC",
        "tcp" => "TCP",
        "tls" => "TLS",
        "mongo" => "MONGO",
        "mysql" => "MYSQL",
        "redis" => "REDIS",
        "udp" => "UDP",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_istio_does() {
        let d = |n: Option<&str>, a: Option<&str>| detect(n, a, None);
        assert_eq!(d(Some("http"), None), Some("HTTP"));
        assert_eq!(d(Some("http-web"), None), Some("HTTP"));
        assert_eq!(d(Some("HTTP2-x"), None), Some("HTTP2"));
        assert_eq!(d(Some("grpc-api"), None), Some("GRPC"));
        assert_eq!(d(Some("grpc-web"), None), Some("GRPC-WEB"));
        assert_eq!(d(Some("grpc-web-ui"), None), Some("GRPC-WEB"));
        assert_eq!(d(Some("tcp-db"), None), Some("TCP"));
        assert_eq!(d(Some("https"), None), Some("HTTPS"));
        assert_eq!(d(Some("redis"), None), Some("REDIS"));
        // Not a prefix followed by a dash: unknown, sniffed.
        assert_eq!(d(Some("httpx"), None), None);
        assert_eq!(d(Some("web"), None), None);
        assert_eq!(d(None, None), None);
        // appProtocol wins over the name.
        assert_eq!(d(Some("tcp-x"), Some("http")), Some("HTTP"));
        assert_eq!(d(Some("x"), Some("kubernetes.io/h2c")), Some("HTTP2"));
        assert_eq!(d(Some("http"), Some("custom.io/thing")), Some("HTTP"));
        assert_eq!(detect(Some("dns"), None, Some("UDP")), Some("UDP"));
        assert_eq!(detect(Some("http"), None, Some("SCTP")), None);
    }
}
