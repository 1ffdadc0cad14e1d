//! WebSocket frame headers read as bytes pass (RFC 6455 5.2), to know where frames begin
//! and how large each says it is. Payloads are skipped by count, never buffered.

/// Where a stream of frames is: inside a header (up to 14 bytes) or inside a payload.
#[derive(Debug, Clone)]
pub struct Frames {
    /// The largest payload a frame may declare.
    max: u64,
    header: [u8; 14],
    /// Header bytes seen of the current frame (0: at a frame boundary, or in a payload).
    have: usize,
    /// Payload bytes still to pass.
    payload: u64,
}

impl Frames {
    /// Frames whose payload may be at most `max` bytes.
    pub fn limited(max: u64) -> Self {
        Self { max, header: [0; 14], have: 0, payload: 0 }
    }

    /// Frames of any size: only their boundaries are tracked.
    pub fn unlimited() -> Self {
        Self::limited(u64::MAX)
    }

    /// Between two frames: nothing of a header or payload is pending.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.payload == 0
    }

    /// Reads `bytes`, the next of the stream. `Err(at)`: the frame whose header starts at
    /// `at` in `bytes` (0 if it started in an earlier chunk) declares more than the limit.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), usize> {
        let total = bytes.len();
        while !bytes.is_empty() {
            if self.payload > 0 {
                let skip = self.payload.min(bytes.len() as u64);
                self.payload -= skip;
                bytes = &bytes[skip as usize..];
                continue;
            }
            // A header byte.
            let start = (total - bytes.len()).saturating_sub(self.have);
            self.header[self.have] = bytes[0];
            self.have += 1;
            bytes = &bytes[1..];
            let Some(need) = self.header_len() else { continue };
            if self.have < need {
                continue;
            }
            let len = self.payload_len();
            self.have = 0;
            if len > self.max {
                return Err(start);
            }
            self.payload = len;
        }
        Ok(())
    }

    /// The current header's full length, once its second byte is known.
    fn header_len(&self) -> Option<usize> {
        if self.have < 2 {
            return None;
        }
        let b = self.header[1];
        let ext = match b & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if b & 0x80 != 0 { 4 } else { 0 };
        Some(2 + ext + mask)
    }

    /// The payload length a complete header declares. A 64-bit length with its top bit
    /// set is invalid (5.2) and reads as the largest.
    fn payload_len(&self) -> u64 {
        let h = &self.header;
        match h[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            127 => {
                let len = u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]);
                if len >> 63 == 1 { u64::MAX } else { len }
            }
            n => u64::from(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame with `len` payload bytes.
    fn frame(len: usize) -> Vec<u8> {
        let mut f = vec![0x82];
        match len {
            0..=125 => f.push(0x80 | len as u8),
            126..=65535 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&[1, 2, 3, 4]);
        f.extend(std::iter::repeat_n(7u8, len));
        f
    }

    #[test]
    fn boundaries_are_found_whatever_the_chunking() {
        let stream: Vec<u8> = [frame(0), frame(5), frame(300), frame(70_000), frame(125)].concat();
        for chunk in [1, 2, 3, 7, 13, 100, 4096, stream.len()] {
            let mut frames = Frames::limited(70_000);
            for piece in stream.chunks(chunk) {
                frames.feed(piece).unwrap();
            }
            assert!(frames.at_boundary(), "chunk {chunk}");
        }
        let mut frames = Frames::unlimited();
        frames.feed(&stream[..stream.len() - 1]).unwrap();
        assert!(!frames.at_boundary());
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_where_it_starts() {
        let ok = frame(100);
        let big = frame(1001);
        let stream = [ok.clone(), big].concat();
        let mut frames = Frames::limited(1000);
        assert_eq!(frames.feed(&stream), Err(ok.len()));
        // Its header split over two chunks: refused in the second, from its start.
        let mut frames = Frames::limited(1000);
        frames.feed(&stream[..ok.len() + 1]).unwrap();
        assert_eq!(frames.feed(&stream[ok.len() + 1..]), Err(0));
        // Exactly the limit passes.
        assert_eq!(Frames::limited(1001).feed(&stream), Ok(()));
    }

    #[test]
    fn a_length_with_its_top_bit_set_is_refused() {
        let mut f = vec![0x82, 0x80 | 127];
        f.extend_from_slice(&(1u64 << 63).to_be_bytes());
        f.extend_from_slice(&[0; 4]);
        assert_eq!(Frames::limited(u64::MAX - 1).feed(&f), Err(0));
    }
}
