//! Envoy-style response flags, recorded for every request for access logs and metrics.

use std::fmt;

/// A set of response flags (`UF`, `URX`, ...). Empty prints as `-`, as in Envoy's access log;
/// several print in Envoy's order, comma-separated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponseFlags(u32);

macro_rules! flags {
    ($($name:ident = $bit:expr, $code:literal, $doc:literal;)*) => {
        impl ResponseFlags {
            $(#[doc = $doc] pub const $name: ResponseFlags = ResponseFlags(1 << $bit);)*
            const ALL: &[(ResponseFlags, &'static str)] = &[$((ResponseFlags::$name, $code)),*];
        }
    };
}

flags! {
    // In Envoy's order, the order its access log and Istio's metrics print them in.
    NO_HEALTHY_UPSTREAM = 1, "UH", "No healthy upstream endpoint.";
    UPSTREAM_TIMEOUT = 4, "UT", "The route timeout expired.";
    UPSTREAM_REMOTE_RESET = 15, "UR", "The upstream reset or refused the request's HTTP/2 stream.";
    UPSTREAM_CONNECT_FAILURE = 2, "UF", "The upstream connection could not be opened.";
    UPSTREAM_CONNECTION_TERMINATION = 9, "UC", "The upstream connection closed mid-request.";
    UPSTREAM_OVERFLOW = 3, "UO", "A limit (pool, fairness) shed the request.";
    NO_ROUTE = 0, "NR", "No route matched the request.";
    DELAY_INJECTED = 6, "DI", "A fault delay was injected.";
    FAULT_INJECTED = 7, "FI", "A fault abort was injected.";
    RATE_LIMITED = 10, "RL", "A rate limit denied the request.";
    RATE_LIMIT_SERVICE_ERROR = 11, "RLSE", "The global rate limit's Redis failed and the policy fails closed.";
    DOWNSTREAM_DISCONNECT = 8, "DC", "The client went away mid-request.";
    RETRY_LIMIT = 5, "URX", "Retries were exhausted.";
    DOWNSTREAM_PROTOCOL_ERROR = 13, "DPE", "The client's request broke the protocol (a malformed body).";
    DURATION_TIMEOUT = 12, "DT", "An opaque connection reached its maximum duration (connectionPool.tcp.maxConnectionDuration).";
    UPSTREAM_PROTOCOL_ERROR = 14, "UPE", "The upstream's response broke the protocol (a malformed head).";
    NO_CLUSTER_FOUND = 16, "NC", "The route's destination port is not one its service declares (Envoy's cluster not found).";
}

impl ResponseFlags {
    pub fn insert(&mut self, other: ResponseFlags) {
        self.0 |= other.0;
    }

    pub fn remove(&mut self, other: ResponseFlags) {
        self.0 &= !other.0;
    }

    pub fn contains(self, other: ResponseFlags) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        let mut first = true;
        for (flag, code) in ResponseFlags::ALL {
            if self.contains(*flag) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(code)?;
                first = false;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::ResponseFlags as F;

    #[test]
    fn display() {
        assert_eq!(F::default().to_string(), "-");
        let mut f = F::UPSTREAM_CONNECT_FAILURE;
        f.insert(F::RETRY_LIMIT);
        assert_eq!(f.to_string(), "UF,URX");
        // Envoy's order, not the order they were set in.
        let mut g = F::RETRY_LIMIT;
        g.insert(F::UPSTREAM_CONNECTION_TERMINATION);
        assert_eq!(g.to_string(), "UC,URX");
        g.insert(F::DOWNSTREAM_DISCONNECT);
        g.insert(F::UPSTREAM_TIMEOUT);
        assert_eq!(g.to_string(), "UT,UC,DC,URX");
        assert!(f.contains(F::RETRY_LIMIT));
        assert!(!f.contains(F::NO_ROUTE));
    }
}
