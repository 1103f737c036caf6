//! A message on its way out of the lane: what the socket took of it so
//! far, written without ever waiting for room.

use std::io;
use std::os::fd::RawFd;

use bytes::Bytes;
use snakepit_core::lane::{self as frame, Header, HEADER, PREFIX};
use snakepit_core::sys;

/// One message on its way out, and how much of it the socket took.
pub(super) struct Outgoing {
    head: [u8; PREFIX + HEADER],
    body: Bytes,
    sent: usize,
}

impl Outgoing {
    pub(super) fn new(header: Header, body: Bytes) -> io::Result<Outgoing> {
        let head = frame::prefix(header, body.len())
            .map_err(|msg| io::Error::new(io::ErrorKind::InvalidInput, msg))?;
        Ok(Outgoing {
            head,
            body,
            sent: 0,
        })
    }

    pub(super) fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }

    /// `write` with no budget: all that the socket takes now.
    pub(super) fn write_now(&mut self, fd: RawFd) -> io::Result<Progress> {
        let mut unlimited = usize::MAX;
        self.write(fd, &mut unlimited)
    }

    /// Writes what the socket takes without waiting, until the message is
    /// out, the socket is full, or `budget` bytes were written.
    pub(super) fn write(&mut self, fd: RawFd, budget: &mut usize) -> io::Result<Progress> {
        let head = self.head.len();
        while self.sent < self.len() {
            if *budget == 0 {
                return Ok(Progress::Budget);
            }
            let result = if self.sent < head {
                sys::send_parts(
                    fd,
                    &[&self.head[self.sent..], &self.body],
                    libc::MSG_DONTWAIT,
                )
            } else {
                sys::send_parts(fd, &[&self.body[self.sent - head..]], libc::MSG_DONTWAIT)
            };
            match result {
                Ok(n) => {
                    self.sent += n;
                    *budget = budget.saturating_sub(n);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(Progress::Full),
                Err(err) => return Err(err),
            }
        }
        Ok(Progress::Done)
    }
}

/// How far writing got.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Progress {
    /// Everything asked for is out.
    Done,
    /// The socket has no room: wait until it has.
    Full,
    /// The byte budget is spent: let others have the lane's lock.
    Budget,
}
