//! The call lane's framing: how calls, replies and stream chunks travel
//! between the VM and a worker on one `SOCK_SEQPACKET` Unix socket, beside
//! the gRPC control plane. Payloads are the protobuf messages of
//! `proto/snakepit_bridge.proto`; the lane only adds a 12-byte header.
//!
//! ```text
//! 0      1      2          4                      12
//! +------+------+----------+----------------------+----------------
//! | kind | flags| arg (u16)| call id (u64, LE)    | payload ...
//! +------+------+----------+----------------------+----------------
//! ```
//!
//! `arg` is the initial credit of a `STREAM` (0 elsewhere).
//!
//! A message longer than one frame is cut into frames of at most
//! `MAX_FRAME` bytes; every frame but the last carries `MORE`, and the
//! receiver joins them by call id (frames of different calls may
//! interleave; frames of one call never do, since one sender sends them in
//! order on one socket).
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

use std::collections::HashMap;

pub const HEADER: usize = 12;
/// Largest frame, header included: fits the default socket buffer
/// (wmem_default is 208 KiB), so a send never needs a bigger one.
pub const MAX_FRAME: usize = 128 * 1024;

pub const HELLO: u8 = 1;
pub const CALL: u8 = 2;
pub const REPLY: u8 = 3;
pub const STREAM: u8 = 4;
pub const CHUNKS: u8 = 5;
pub const CREDIT: u8 = 6;
pub const CANCEL: u8 = 7;

/// More frames of this message follow.
pub const MORE: u8 = 1;
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

/// The frames of one message with `header`: `(header bytes, payload
/// slice)` each, in order. Every frame but the last carries `MORE` (and no
/// `END`); the last carries `header`'s own flags.
pub fn frames(header: Header, payload: &[u8]) -> Vec<([u8; HEADER], &[u8])> {
    let room = MAX_FRAME - HEADER;
    if payload.len() <= room {
        return vec![(header.encode(), payload)];
    }
    let parts: Vec<&[u8]> = payload.chunks(room).collect();
    let last = parts.len() - 1;
    parts
        .into_iter()
        .enumerate()
        .map(|(i, part)| {
            let flags = if i < last {
                (header.flags | MORE) & !END
            } else {
                header.flags
            };
            (Header { flags, ..header }.encode(), part)
        })
        .collect()
}

/// Joins the frames of messages cut in several, by call id and kind.
#[derive(Default)]
pub struct Reassembler {
    partial: HashMap<(u64, u8), Vec<u8>>,
    limit: usize,
}

impl Reassembler {
    /// `limit`: the largest message accepted (max_message_bytes).
    pub fn new(limit: usize) -> Self {
        Reassembler {
            partial: HashMap::new(),
            limit,
        }
    }

    /// Takes one frame: `Ok(Some((header, message)))` when a message is
    /// complete, `Ok(None)` while more frames are due, `Err` when a message
    /// grows past the limit (its frames are dropped).
    pub fn push(&mut self, frame: &[u8]) -> Result<Option<(Header, Vec<u8>)>, String> {
        let (header, payload) = Header::decode(frame)?;
        let key = (header.call_id, header.kind);
        if header.flags & MORE == 0 && !self.partial.contains_key(&key) {
            return Ok(Some((header, payload.to_vec())));
        }
        let buf = self.partial.entry(key).or_default();
        if buf.len() + payload.len() > self.limit {
            self.partial.remove(&key);
            return Err(format!(
                "a lane message of call {} is larger than max_message_bytes ({})",
                header.call_id, self.limit
            ));
        }
        buf.extend_from_slice(payload);
        if header.flags & MORE != 0 {
            return Ok(None);
        }
        let message = self.partial.remove(&key).unwrap_or_default();
        Ok(Some((header, message)))
    }

    /// Forgets a call's partial message (it was cancelled or timed out).
    pub fn forget(&mut self, call_id: u64) {
        self.partial.retain(|(id, _), _| *id != call_id);
    }
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
            flags: MORE,
            arg: 513,
            call_id: 0x0102_0304_0506_0708,
        };
        let mut frame = h.encode().to_vec();
        frame.extend_from_slice(b"xyz");
        assert_eq!(Header::decode(&frame).unwrap(), (h, &b"xyz"[..]));
        assert!(Header::decode(b"short").is_err());
    }

    #[test]
    fn a_small_message_is_one_frame() {
        let frames = frames(Header::new(CALL, 7), b"hello");
        assert_eq!(frames.len(), 1);
        let (header, _) = Header::decode(&frames[0].0).unwrap();
        assert_eq!(header.flags, 0);
    }

    #[test]
    fn a_large_message_is_cut_and_joined_even_interleaved() {
        let big: Vec<u8> = (0..(MAX_FRAME * 3)).map(|i| (i % 251) as u8).collect();
        let other = b"small".to_vec();
        let a = frames(
            Header {
                flags: END,
                ..Header::new(CHUNKS, 1)
            },
            &big,
        );
        let b = frames(Header::new(CALL, 2), &other);
        assert_eq!(a.len(), 4);
        assert!(a
            .iter()
            .all(|(h, p)| HEADER + p.len() <= MAX_FRAME && h.len() == HEADER));
        let flags: Vec<u8> = a.iter().map(|(h, _)| h[1]).collect();
        assert_eq!(flags, vec![MORE, MORE, MORE, END]);

        let mut r = Reassembler::new(usize::MAX);
        let mut done = Vec::new();
        let to_frame = |(h, p): &([u8; HEADER], &[u8])| [h.as_slice(), p].concat();
        // Call 2's frame arrives between call 1's.
        let order = [
            to_frame(&a[0]),
            to_frame(&b[0]),
            to_frame(&a[1]),
            to_frame(&a[2]),
            to_frame(&a[3]),
        ];
        for frame in &order {
            if let Some(msg) = r.push(frame).unwrap() {
                done.push(msg);
            }
        }
        assert_eq!(done.len(), 2);
        assert_eq!(done[0].0.call_id, 2);
        assert_eq!(done[0].1, other);
        assert_eq!(done[1].0.call_id, 1);
        assert_eq!(done[1].0.flags, END);
        assert_eq!(done[1].1, big);
    }

    #[test]
    fn a_message_past_the_limit_is_refused_and_dropped() {
        let big = vec![0u8; MAX_FRAME * 2];
        let mut r = Reassembler::new(MAX_FRAME);
        let frames = frames(Header::new(REPLY, 9), &big);
        let first = [frames[0].0.as_slice(), frames[0].1].concat();
        let second = [frames[1].0.as_slice(), frames[1].1].concat();
        assert_eq!(r.push(&first).unwrap(), None);
        assert!(r.push(&second).unwrap_err().contains("max_message_bytes"));
        assert!(r.partial.is_empty());
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
}
