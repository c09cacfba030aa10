//! Counts the gRPC messages of a body as its bytes pass, for Istio's
//! `istio_request_messages_total` and `istio_response_messages_total`: each message is a
//! 5-byte prefix (a compressed flag and a 4-byte length) and that many bytes, and may span
//! frames, or share one with others.

/// Where a body's message framing stands.
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcMessages {
    /// Messages whose prefix has passed.
    pub count: u64,
    /// Bytes of the current prefix seen so far (0 to 4; a whole one starts the message).
    prefix: u8,
    length: [u8; 4],
    /// Bytes of the current message's payload still to pass.
    left: u64,
}

impl GrpcMessages {
    /// Reads the next bytes of the body.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.left > 0 {
                let take = self.left.min(data.len() as u64);
                self.left -= take;
                data = &data[take as usize..];
                continue;
            }
            // The prefix: the compressed flag, then the length's four bytes.
            if self.prefix > 0 {
                self.length[usize::from(self.prefix) - 1] = data[0];
            }
            self.prefix += 1;
            data = &data[1..];
            if self.prefix == 5 {
                self.count += 1;
                self.prefix = 0;
                self.left = u64::from(u32::from_be_bytes(self.length));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload: &[u8]) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn counts_messages_across_and_within_frames() {
        let mut body = message(b"hello");
        body.extend(message(b""));
        body.extend(message(&[7; 300]));
        // Whole, and cut at every point into two frames.
        for cut in 0..=body.len() {
            let mut m = GrpcMessages::default();
            m.feed(&body[..cut]);
            m.feed(&body[cut..]);
            assert_eq!(m.count, 3, "cut at {cut}");
        }
        // Byte by byte.
        let mut m = GrpcMessages::default();
        body.iter().for_each(|b| m.feed(std::slice::from_ref(b)));
        assert_eq!(m.count, 3);
        // A message whose prefix has passed counts, its payload still to come.
        let mut m = GrpcMessages::default();
        m.feed(&body[..7]);
        assert_eq!(m.count, 1);
    }
}
