//! The call lane's framing: how calls, replies and stream chunks travel
//! between the VM and a worker on one Unix stream socket, beside the gRPC
//! control plane. Payloads are the protobuf messages of
//! `proto/snakepit_bridge.proto`; the lane only adds a length and a 12-byte
//! header.
//!
//! ```text
//! 0                4      5      6          8                      16
//! +----------------+------+------+----------+----------------------+-------------
//! | length (u32 BE)| kind | flags| arg (u16)| call id (u64, LE)    | payload ...
//! +----------------+------+------+----------+----------------------+-------------
//! ```
//!
//! `length` counts the header and the payload. It is big-endian because it
//! is the 4-byte packet header that the BEAM's socket driver reads itself
//! (`{:packet, 4}`): the VM receives each message whole from an ERTS port,
//! whose socket the schedulers poll, so a reply wakes one scheduler and no
//! other thread (see `snakepit_native::lane`). `arg` is the initial credit
//! of a `STREAM` (0 elsewhere).
//!
//! | kind | direction | payload |
//! |---|---|---|
//! | `HELLO` | VM → worker, first | the VM's secret |
//! | `CALL` | VM → worker | `ExecuteToolRequest` |
//! | `REPLY` | worker → VM | `ExecuteToolResponse` |
//! | `STREAM` | VM → worker | `ExecuteToolRequest` of a streaming call; `arg`: chunks it may send before any `CREDIT` |
//! | `CHUNKS` | worker → VM | one or more `ToolChunk`, each prefixed by its length (u32, LE); `END` on the stream's last |
//! | `CREDIT` | VM → worker | u32 LE: chunks the worker may send more |
//! | `CANCEL` | VM → worker | none: stop the call (a halted or timed-out stream) |

pub const HEADER: usize = 12;
/// The length prefix before each message.
pub const PREFIX: usize = 4;

pub const HELLO: u8 = 1;
pub const CALL: u8 = 2;
pub const REPLY: u8 = 3;
pub const STREAM: u8 = 4;
pub const CHUNKS: u8 = 5;
pub const CREDIT: u8 = 6;
pub const CANCEL: u8 = 7;

/// The last message of a stream: the call is over.
pub const END: u8 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: u8,
    pub flags: u8,
    pub arg: u16,
    pub call_id: u64,
}

impl Header {
    pub fn new(kind: u8, call_id: u64) -> Self {
        Header {
            kind,
            flags: 0,
            arg: 0,
            call_id,
        }
    }

    pub fn encode(&self) -> [u8; HEADER] {
        let mut out = [0u8; HEADER];
        out[0] = self.kind;
        out[1] = self.flags;
        out[2..4].copy_from_slice(&self.arg.to_le_bytes());
        out[4..].copy_from_slice(&self.call_id.to_le_bytes());
        out
    }

    /// The header of `frame` and its payload.
    pub fn decode(frame: &[u8]) -> Result<(Header, &[u8]), String> {
        if frame.len() < HEADER {
            return Err(format!(
                "a lane frame of {} bytes has no header",
                frame.len()
            ));
        }
        let call_id = u64::from_le_bytes(frame[4..HEADER].try_into().expect("8 bytes"));
        let arg = u16::from_le_bytes([frame[2], frame[3]]);
        Ok((
            Header {
                kind: frame[0],
                flags: frame[1],
                arg,
                call_id,
            },
            &frame[HEADER..],
        ))
    }
}

/// What goes before a message's payload on the socket: its length prefix
/// and its header.
pub fn prefix(header: Header, payload_len: usize) -> Result<[u8; PREFIX + HEADER], String> {
    let length = u32::try_from(HEADER + payload_len)
        .map_err(|_| format!("a lane message of {payload_len} bytes is too large"))?;
    let mut out = [0u8; PREFIX + HEADER];
    out[..PREFIX].copy_from_slice(&length.to_be_bytes());
    out[PREFIX..].copy_from_slice(&header.encode());
    Ok(out)
}

/// The chunks of a `CHUNKS` payload, each a `ToolChunk` message.
pub fn split_chunks(payload: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut out = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err("a chunk length is cut short".into());
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        if rest.len() < 4 + len {
            return Err("a chunk is cut short".into());
        }
        out.push(&rest[4..4 + len]);
        rest = &rest[4 + len..];
    }
    Ok(out)
}

/// The VM's side of a stream's flow control: chunks delivered to the
/// consumer and not yet acknowledged, and acknowledged ones not yet granted
/// back to the worker. Credit goes back when half the window has come
/// back, or at once when the consumer has caught up (the worker sends a
/// lone chunk at once only when nothing of its stream is in flight, so
/// holding credit back then would stall it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credit {
    window: u32,
    unacked: u32,
    ungranted: u32,
}

impl Credit {
    pub fn new(window: u32) -> Self {
        Credit {
            window: window.max(1),
            unacked: 0,
            ungranted: 0,
        }
    }

    /// `n` chunks reached the consumer.
    pub fn delivered(&mut self, n: u32) {
        self.unacked += n;
    }

    /// The consumer handled `n` chunks: the credit to grant now, if any.
    pub fn ack(&mut self, n: u32) -> Option<u32> {
        self.unacked = self.unacked.saturating_sub(n);
        self.ungranted += n;
        if self.ungranted > 0 && (self.unacked == 0 || self.ungranted * 2 >= self.window) {
            Some(std::mem::take(&mut self.ungranted))
        } else {
            None
        }
    }
}

/// A `CREDIT` payload granting `n` chunks.
pub fn credit(n: u32) -> [u8; 4] {
    n.to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let h = Header {
            kind: REPLY,
            flags: END,
            arg: 513,
            call_id: 0x0102_0304_0506_0708,
        };
        let mut frame = h.encode().to_vec();
        frame.extend_from_slice(b"xyz");
        assert_eq!(Header::decode(&frame).unwrap(), (h, &b"xyz"[..]));
        assert!(Header::decode(b"short").is_err());
    }

    #[test]
    fn the_prefix_counts_header_and_payload_big_endian() {
        let p = prefix(Header::new(CALL, 7), 300).unwrap();
        assert_eq!(&p[..PREFIX], &(312u32).to_be_bytes());
        let (header, rest) = Header::decode(&p[PREFIX..]).unwrap();
        assert_eq!((header.kind, header.call_id, rest.len()), (CALL, 7, 0));
        assert!(prefix(Header::new(CALL, 1), u32::MAX as usize).is_err());
    }

    #[test]
    fn credit_returns_at_half_the_window_or_when_the_consumer_caught_up() {
        let mut c = Credit::new(8);
        c.delivered(6);
        assert_eq!(c.ack(1), None); // 5 still in the mailbox, 1 back
        assert_eq!(c.ack(3), Some(4)); // half the window came back
        assert_eq!(c.ack(2), Some(2)); // caught up
        assert_eq!(c.ack(0), None); // nothing new
        c.delivered(1);
        assert_eq!(c.ack(1), Some(1));
    }

    #[test]
    fn a_window_of_one_grants_every_chunk() {
        let mut c = Credit::new(1);
        c.delivered(1);
        assert_eq!(c.ack(1), Some(1));
        assert_eq!(Credit::new(0), Credit::new(1));
    }

    #[test]
    fn chunk_payloads_split_and_refuse_truncation() {
        let mut payload = Vec::new();
        for chunk in [&b"ab"[..], b"", b"cde"] {
            payload.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
            payload.extend_from_slice(chunk);
        }
        assert_eq!(
            split_chunks(&payload).unwrap(),
            vec![&b"ab"[..], b"", b"cde"]
        );
        assert!(split_chunks(&payload[..payload.len() - 1]).is_err());
        assert!(split_chunks(&[1, 0]).is_err());
        assert_eq!(credit(16), [16, 0, 0, 0]);
    }

    mod properties {
        //! Any bytes a worker may send: decoding never panics, never reads
        //! past the payload, and never allocates from a length it read.
        use super::super::*;
        use proptest::prelude::*;

        const CASES: u32 = 512;

        fn chunks_payload(chunks: &[Vec<u8>]) -> Vec<u8> {
            let mut payload = Vec::new();
            for chunk in chunks {
                payload.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
                payload.extend_from_slice(chunk);
            }
            payload
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(CASES))]

            #[test]
            fn arbitrary_frames_decode_or_are_refused(frame in prop::collection::vec(any::<u8>(), 0..64)) {
                match Header::decode(&frame) {
                    Ok((header, payload)) => {
                        prop_assert_eq!(payload.len(), frame.len() - HEADER);
                        prop_assert_eq!(&header.encode()[..], &frame[..HEADER]);
                    }
                    Err(_) => prop_assert!(frame.len() < HEADER),
                }
                let _ = split_chunks(&frame);
            }

            #[test]
            fn chunk_payloads_round_trip_and_truncations_are_refused(
                chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..8),
                cut in any::<prop::sample::Index>(),
            ) {
                let payload = chunks_payload(&chunks);
                let split = split_chunks(&payload).unwrap();
                prop_assert_eq!(split.len(), chunks.len());
                for (a, b) in split.iter().zip(&chunks) {
                    prop_assert_eq!(*a, &b[..]);
                }
                if !payload.is_empty() {
                    let cut = cut.index(payload.len());
                    // A cut on a chunk boundary is a shorter valid payload;
                    // anywhere else it is refused.
                    let mut boundary = 0;
                    let mut boundaries = vec![0];
                    for c in &chunks {
                        boundary += 4 + c.len();
                        boundaries.push(boundary);
                    }
                    prop_assert_eq!(split_chunks(&payload[..cut]).is_ok(), boundaries.contains(&cut));
                }
            }

            #[test]
            fn oversized_chunk_lengths_are_refused_without_allocating(len in (1u32 << 20)..=u32::MAX, rest in prop::collection::vec(any::<u8>(), 0..64)) {
                // A length far past what follows: refused, nothing reserved.
                let mut payload = len.to_le_bytes().to_vec();
                payload.extend_from_slice(&rest);
                prop_assert!(split_chunks(&payload).is_err());
            }

            #[test]
            fn prefixes_count_header_and_payload(kind in any::<u8>(), id in any::<u64>(), len in 0usize..(u32::MAX as usize - HEADER)) {
                let p = prefix(Header::new(kind, id), len).unwrap();
                prop_assert_eq!(u32::from_be_bytes(p[..PREFIX].try_into().unwrap()) as usize, len + HEADER);
                prop_assert_eq!(Header::decode(&p[PREFIX..]).unwrap().0, Header::new(kind, id));
            }
        }

        #[test]
        fn a_hundred_thousand_empty_chunks_split() {
            let payload = vec![0u8; 4 * 100_000];
            assert_eq!(split_chunks(&payload).unwrap().len(), 100_000);
        }
    }
}
