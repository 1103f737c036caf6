//! The call lane: `ExecuteTool` calls and streams to one worker over a
//! Unix stream socket, framed by `snakepit_core::lane`, beside the gRPC
//! channel that keeps the control plane (sessions, heartbeats,
//! cancellation).
//!
//! Why: through gRPC a trivial call costs the Python worker ~700 µs of CPU,
//! most of it grpcio's own machinery. Here the worker answers from one
//! thread that blocks on the socket, and the VM side costs one thread
//! wake-up per reply:
//!
//! * Sending: the NIF writes a call with one non-blocking `sendmsg` from the
//!   caller's scheduler, on a descriptor of its own (a dup of the socket).
//!   What does not fit at once (large messages, a full socket) waits in a
//!   backlog that a tokio task writes out when the socket has room.
//! * Receiving: the socket belongs to an ERTS port (`gen_tcp` with
//!   `{:packet, 4}`, owned by `Snakepit.Worker.LaneReader`). ERTS polls busy
//!   port sockets from the schedulers themselves, so a reply wakes the one
//!   scheduler that runs the reader, which hands the message to
//!   `lane_deliver`: decoded and sent to its caller inside that NIF. Read by
//!   a thread of ours (tokio, or `enif_select`'s poll thread), every reply
//!   woke two threads: that one and then a scheduler (measured: 2.0 against
//!   1.0 thread runs per round trip).
//!
//! Deadlines are the caller's: the Elixir side waits with `receive ...
//! after` and forgets a call it gave up on (`lane_forget`), so no timer is
//! armed here per call.

mod nifs;
mod outgoing;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use prost::Message;
use rustler::{Encoder, Env};
use snakepit_core::lane::{self as frame, Header};
use snakepit_core::sys;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::Notify;
use tonic::Code;

use crate::atoms;
use crate::error::NativeError;
use crate::reply::{error_payload, Payload, ReplyTo};
use crate::wire::limits::max_message_bytes;
use crate::wire::pb::{ExecuteToolResponse, ToolChunk};
use crate::wire::response::{self, malformed};
use crate::zero_copy::marker::mentions_marker;
use outgoing::{Outgoing, Progress};

/// Messages up to this size are written straight from the NIF; larger ones
/// are handed to the writer task, so a scheduler never copies or waits on
/// a big payload.
const DIRECT_SEND_MAX: usize = 256 * 1024;

/// How much the writer task writes per hold of the lane's lock: callers'
/// NIFs (on schedulers) wait for that lock, so no hold may last long.
const WRITE_SLICE: usize = 256 * 1024;

/// Messages from this size on may leave a large binary behind on the
/// reader's heap (`deliver`); smaller binaries are bounded by the heap's
/// own accounting of the binaries it references, which triggers its
/// collections.
const HOLD_OFF_HEAP: usize = 64 * 1024;

/// A connected lane, as Elixir holds it. Dropping it (the worker and its
/// reader are gone, and no caller holds it) shuts the socket down, ends the
/// writer task and closes this side's descriptor; the reader's port closes
/// its own.
pub struct Lane {
    shared: Arc<Shared>,
}

#[rustler::resource_impl]
impl rustler::Resource for Lane {}

impl Drop for Lane {
    fn drop(&mut self) {
        // Nobody can be waiting (every waiting caller holds the lane), so
        // closing sends nothing; it only ends the socket and the writer.
        let mut state = self.shared.lock();
        state.calls.clear();
        self.shared
            .close_locked(&mut state, "the lane was dropped", Via::Thread);
    }
}

struct Shared {
    /// This side's own descriptor of the socket, for writing only.
    fd: OwnedFd,
    state: Mutex<State>,
    next_id: AtomicU64,
    /// Messages were queued for the writer task, or the lane closed.
    wake_writer: Notify,
}

#[derive(Default)]
struct State {
    calls: HashMap<u64, Call>,
    /// Messages waiting for room in the socket, in order.
    backlog: VecDeque<Outgoing>,
    /// Why the lane is closed; no call is taken after.
    closed: Option<String>,
}

enum Call {
    Unary(ReplyTo),
    Stream(StreamCall),
}

/// A running stream and the credit its worker was granted.
struct StreamCall {
    to: ReplyTo,
    credit: frame::Credit,
}

fn unavailable(reason: &str) -> NativeError {
    NativeError::status(Code::Unavailable, reason)
}

/// Where a message to a caller is sent from: inside a NIF (through the
/// calling process's env: a scheduler thread may not send through an owned
/// env), or from a thread of ours.
#[derive(Clone, Copy)]
enum Via<'a> {
    Nif(Env<'a>),
    Thread,
}

impl Via<'_> {
    fn send(self, to: &mut ReplyTo, payload: Payload) {
        match self {
            Via::Nif(env) => to.send_from(env, payload),
            Via::Thread => to.send(payload),
        };
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers `call` and sends its first message, from a NIF. The call
    /// is in the table before a byte leaves, so the quickest reply finds it.
    fn start(
        &self,
        env: Env,
        kind: u8,
        arg: u16,
        payload: Vec<u8>,
        call: Call,
    ) -> Result<u64, NativeError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let header = Header {
            arg,
            ..Header::new(kind, id)
        };
        let mut state = self.lock();
        if let Some(reason) = &state.closed {
            return Err(unavailable(reason));
        }
        state.calls.insert(id, call);
        if let Err(err) = self.send(&mut state, header, Bytes::from(payload)) {
            state.calls.remove(&id);
            let reason = format!("sending to the worker failed: {err}");
            self.close_locked(&mut state, &reason, Via::Nif(env));
            return Err(unavailable(&reason));
        }
        Ok(id)
    }

    /// Sends one control message (`CREDIT`, `CANCEL`) of a running call,
    /// from a NIF.
    fn control(&self, env: Env, state: &mut State, header: Header, payload: &[u8]) {
        if state.closed.is_none() {
            if let Err(err) = self.send(state, header, Bytes::copy_from_slice(payload)) {
                let reason = format!("sending to the worker failed: {err}");
                self.close_locked(state, &reason, Via::Nif(env));
            }
        }
    }

    /// Sends a message: straight away while the socket has room and nothing
    /// is queued before it, else (or what is left of it) queued for the
    /// writer task.
    fn send(&self, state: &mut State, header: Header, payload: Bytes) -> io::Result<()> {
        let mut out = Outgoing::new(header, payload)?;
        if state.backlog.is_empty()
            && out.len() <= DIRECT_SEND_MAX
            && out.write_now(self.fd.as_raw_fd())? == Progress::Done
        {
            return Ok(());
        }
        state.backlog.push_back(out);
        self.wake_writer.notify_one();
        Ok(())
    }

    /// Closes the lane: every waiting caller gets `{:error, {:unavailable,
    /// reason}}`, and later calls are refused with it.
    fn close_locked(&self, state: &mut State, reason: &str, via: Via) {
        if state.closed.is_some() {
            return;
        }
        state.closed = Some(reason.to_string());
        state.backlog.clear();
        // The worker sees the end too (its thread waits for input, and a
        // stream's producer for credit), and so does the reader's port.
        sys::shutdown(self.fd.as_raw_fd());
        for (_, call) in state.calls.drain() {
            let mut to = match call {
                Call::Unary(to) => to,
                Call::Stream(stream) => stream.to,
            };
            via.send(&mut to, error_payload(unavailable(reason)));
        }
        self.wake_writer.notify_one();
    }

    fn close(&self, reason: &str, via: Via) {
        let mut state = self.lock();
        self.close_locked(&mut state, reason, via);
    }

    /// Writes queued messages until the queue is empty, the socket full,
    /// or `WRITE_SLICE` bytes are out (the lock is held meanwhile, and the
    /// worker may drain a large message as fast as it is written).
    fn flush_backlog(&self, state: &mut State) -> io::Result<Progress> {
        let mut budget = WRITE_SLICE;
        while let Some(out) = state.backlog.front_mut() {
            match out.write(self.fd.as_raw_fd(), &mut budget)? {
                Progress::Done => state.backlog.pop_front(),
                unfinished => return Ok(unfinished),
            };
        }
        Ok(Progress::Done)
    }

    /// One whole message from the worker (header and payload), inside the
    /// reader's NIF. The message to the caller is built on the reader's
    /// heap and copied out; `Ok(true)` when what stays behind on that heap
    /// until its next collection holds more than garbage (a zero-copy
    /// region, a large binary), so the reader collects it at once.
    fn deliver(&self, env: Env, message: &[u8]) -> Result<bool, String> {
        let (header, payload) = Header::decode(message)?;
        match header.kind {
            frame::REPLY => self.deliver_reply(env, header.call_id, payload),
            frame::CHUNKS => self.deliver_chunks(env, header, payload),
            _ => {} // Unknown kinds are ignored: newer workers may send more.
        }
        Ok(message.len() >= HOLD_OFF_HEAP || mentions_marker(payload))
    }

    fn deliver_reply(&self, env: Env, id: u64, message: &[u8]) {
        let Some(Call::Unary(to)) = self.lock().calls.remove(&id) else {
            return; // Forgotten: its caller gave up.
        };
        // The socket lets a little more than the limit through (the
        // header's slack): a reply over the limit itself fails its call.
        let limit = max_message_bytes();
        let payload = if message.len() > limit {
            malformed(&format!(
                "the reply is {} bytes, over max_message_bytes ({limit})",
                message.len()
            ))
        } else {
            match ExecuteToolResponse::decode(message) {
                Ok(resp) => response::execute(resp),
                Err(err) => malformed(&err.to_string()),
            }
        };
        to.send_from(env, payload);
    }

    fn deliver_chunks(&self, env: Env, header: Header, message: &[u8]) {
        let id = header.call_id;
        let decoded: Result<Vec<ToolChunk>, String> =
            frame::split_chunks(message).and_then(|parts| {
                parts
                    .into_iter()
                    .map(|part| ToolChunk::decode(part).map_err(|e| e.to_string()))
                    .collect()
            });
        let chunks = match decoded {
            Ok(chunks) => chunks,
            Err(msg) => {
                // Only a stream's chunks end it: CHUNKS naming a unary call
                // are dropped and leave that call waiting for its reply.
                let mut state = self.lock();
                if matches!(state.calls.get(&id), Some(Call::Stream(_))) {
                    if let Some(Call::Stream(stream)) = state.calls.remove(&id) {
                        stream.to.send_from(env, malformed(&msg));
                    }
                }
                return;
            }
        };
        if !matches!(self.lock().calls.get(&id), Some(Call::Stream(_))) {
            return; // Cancelled: its consumer went away.
        }
        // Parsed before the lock is taken again. A tool's error, or a chunk
        // that cannot be taken, ends the stream; the chunks before it count.
        let mut payloads = Vec::with_capacity(chunks.len());
        let mut error = None;
        let mut refused = false;
        for chunk in chunks {
            let tool_failed = chunk.error.is_some();
            match response::chunk(chunk) {
                Ok(payload) => payloads.push(payload),
                Err(payload) => {
                    error = Some(payload);
                    refused = !tool_failed;
                    break;
                }
            }
        }
        let mut state = self.lock();
        let Some(Call::Stream(stream)) = state.calls.get_mut(&id) else {
            return;
        };
        let ended = error.is_some() || header.flags & frame::END != 0;
        if !payloads.is_empty() || (ended && error.is_none()) {
            stream.credit.delivered(payloads.len() as u32);
            stream
                .to
                .send_from(env, chunks_payload(payloads, ended && error.is_none()));
        }
        if let Some(err) = error {
            stream.to.send_from(env, err);
        }
        if ended {
            state.calls.remove(&id);
        }
        if refused && header.flags & frame::END == 0 {
            // The worker is still producing: tell it to stop.
            self.control(env, &mut state, Header::new(frame::CANCEL, id), &[]);
        }
    }
}

/// `{:chunks, [chunk, ...], :done | :more}`, each chunk as the gRPC path
/// sends it alone (`{:chunk, data, is_final}`).
fn chunks_payload(parts: Vec<Payload>, done: bool) -> Payload {
    Box::new(move |env| {
        let list: Vec<rustler::Term> = parts.into_iter().map(|p| p(env)).collect();
        let tail = if done { atoms::done() } else { atoms::more() };
        (atoms::chunks(), list, tail).encode(env)
    })
}

/// Writes the backlog out whenever there is one, until the lane closes.
///
/// The socket is watched for room to write only while messages wait: a
/// socket watched for writability wakes the runtime each time the worker
/// reads a message (the kernel signals the freed room), which would be a
/// second wake-up per call.
async fn write_backlog(shared: Arc<Shared>) {
    let mut watching: Option<AsyncFd<OwnedFd>> = None;
    let reason = loop {
        let flushed = {
            let mut state = shared.lock();
            if state.closed.is_some() {
                return;
            }
            shared.flush_backlog(&mut state)
        };
        match flushed {
            Ok(Progress::Done) => {
                watching = None;
                shared.wake_writer.notified().await;
            }
            Ok(Progress::Budget) => tokio::task::yield_now().await,
            Ok(Progress::Full) => {
                if watching.is_none() {
                    let registered = shared
                        .fd
                        .try_clone()
                        .and_then(|fd| sys::async_fd(fd, Interest::WRITABLE));
                    match registered {
                        Ok(fd) => watching = Some(fd),
                        Err(err) => break format!("the lane failed: {err}"),
                    }
                }
                let fd = watching.as_ref().expect("watched while messages wait");
                tokio::select! {
                    ready = fd.writable() => match ready {
                        Ok(mut guard) => guard.clear_ready(),
                        Err(err) => break format!("the lane failed: {err}"),
                    },
                    // More queued, or closed: the loop's check sees which.
                    _ = shared.wake_writer.notified() => {}
                }
            }
            Err(err) => break format!("sending to the worker failed: {err}"),
        }
    };
    shared.close(&reason, Via::Thread);
}

/// Takes over the socket `fd` that the reader's port connected to the
/// worker's lane: writes go through a duplicate of it, starting with the
/// `HELLO` that introduces this VM with its secret (the worker drops
/// connections that do not start so).
fn attach(fd: RawFd) -> Result<Lane, NativeError> {
    let own = sys::dup_unix_stream(fd)
        .map_err(|e| NativeError::os(&e, "cannot take over the lane's socket"))?;
    let secret = Bytes::copy_from_slice(snakepit_core::auth::token().as_bytes());
    let mut hello = Outgoing::new(Header::new(frame::HELLO, 0), secret)
        .map_err(|e| NativeError::os(&e, "cannot greet the worker's lane"))?;
    // A fresh socket's buffer takes a few dozen bytes at once.
    match hello.write_now(own.as_raw_fd()) {
        Ok(Progress::Done) => {}
        Ok(_) => return Err(unavailable("the worker's lane took no greeting")),
        Err(e) => return Err(NativeError::os(&e, "cannot greet the worker's lane")),
    }
    let shared = Arc::new(Shared {
        fd: own,
        state: Mutex::new(State::default()),
        next_id: AtomicU64::new(1),
        wake_writer: Notify::new(),
    });
    crate::runtime::get().spawn(write_backlog(shared.clone()));
    Ok(Lane { shared })
}
