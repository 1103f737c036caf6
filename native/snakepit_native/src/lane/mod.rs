//! The call lane: `ExecuteTool` calls and streams to one worker over a
//! `SOCK_SEQPACKET` Unix socket, framed by `snakepit_core::lane`, beside
//! the gRPC channel that keeps the control plane (sessions, heartbeats,
//! cancellation).
//!
//! Why: through gRPC a trivial call costs the Python worker ~700 µs of CPU,
//! most of it grpcio's own machinery. Here the NIF sends the request with
//! one `sendmsg` from the caller's scheduler (no task is woken to send),
//! one tokio task per lane reads replies and sends each to its caller, and
//! the worker answers from one thread that blocks on the socket.
//!
//! Deadlines are the caller's: the Elixir side waits with `receive ...
//! after` and forgets a call it gave up on (`lane_forget`), so no timer is
//! armed here per call.

mod nifs;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use prost::Message;
use rustler::Encoder;
use snakepit_core::lane::{self as frame, Header, Reassembler, HEADER, MAX_FRAME};
use snakepit_core::sys;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::Notify;

use crate::atoms;
use crate::error::NifError;
use crate::grpc::pb::{ExecuteToolResponse, ToolChunk};
use crate::grpc::response;
use crate::reply::{Payload, ReplyTo};

/// Messages up to this size are sent straight from the NIF; larger ones
/// are handed to the lane's task, so a scheduler never copies or waits on
/// a big payload.
const DIRECT_SEND_MAX: usize = 256 * 1024;

/// A connected lane, as Elixir holds it. Dropping it (the worker's process
/// ended and no caller holds its map) closes the socket, which ends the
/// task.
pub struct Lane {
    shared: Arc<Shared>,
}

#[rustler::resource_impl]
impl rustler::Resource for Lane {}

impl Drop for Lane {
    fn drop(&mut self) {
        sys::shutdown(self.shared.fd.get_ref().as_raw_fd());
    }
}

struct Shared {
    fd: AsyncFd<OwnedFd>,
    state: Mutex<State>,
    next_id: AtomicU64,
    /// Frames were queued for the task to send.
    backlog_added: Notify,
    max_message: usize,
}

#[derive(Default)]
struct State {
    calls: HashMap<u64, Call>,
    /// Frames waiting for room in the socket, in order.
    backlog: VecDeque<([u8; HEADER], Bytes)>,
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

fn unavailable(reason: &str) -> NifError {
    NifError::new(atoms::unavailable(), reason.to_string())
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn raw_fd(&self) -> i32 {
        self.fd.get_ref().as_raw_fd()
    }

    /// Registers `call` (when given) and sends its first message. The call
    /// is in the table before a byte leaves, so the quickest reply finds it.
    fn start(&self, kind: u8, arg: u16, payload: Vec<u8>, call: Call) -> Result<u64, NifError> {
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
            return Err(self.failed(state, err));
        }
        Ok(id)
    }

    /// Sends one control message (`CREDIT`, `CANCEL`) of a running call.
    fn control(&self, state: &mut MutexGuard<'_, State>, header: Header, payload: &[u8]) {
        if state.closed.is_none() {
            if let Err(err) = self.send(state, header, Bytes::copy_from_slice(payload)) {
                let reason = format!("sending to the worker failed: {err}");
                self.close_locked(state, &reason);
            }
        }
    }

    /// Sends a message's frames: straight away while the socket has room and
    /// nothing is queued before them, else queued for the task.
    fn send(&self, state: &mut State, header: Header, payload: Bytes) -> io::Result<()> {
        let direct = state.backlog.is_empty() && payload.len() <= DIRECT_SEND_MAX;
        let mut queued = false;
        for (head, part) in frame::frames(header, &payload) {
            let body = payload.slice_ref(part);
            if direct && !queued {
                match sys::send_parts(self.raw_fd(), &[&head, &body], libc::MSG_DONTWAIT) {
                    Ok(_) => continue,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                    Err(err) => return Err(err),
                }
            }
            state.backlog.push_back((head, body));
            queued = true;
        }
        if queued {
            self.backlog_added.notify_one();
        }
        Ok(())
    }

    fn failed(&self, mut state: MutexGuard<'_, State>, err: io::Error) -> NifError {
        let reason = format!("sending to the worker failed: {err}");
        self.close_locked(&mut state, &reason);
        unavailable(&reason)
    }

    /// Closes the lane: every waiting caller gets `{:error, {:unavailable,
    /// reason}}`, and later calls are refused with it.
    fn close_locked(&self, state: &mut State, reason: &str) {
        if state.closed.is_some() {
            return;
        }
        state.closed = Some(reason.to_string());
        state.backlog.clear();
        for (_, call) in state.calls.drain() {
            let mut to = match call {
                Call::Unary(to) => to,
                Call::Stream(stream) => stream.to,
            };
            let err = unavailable(reason);
            to.send(Box::new(move |env| err.encode(env)));
        }
        sys::shutdown(self.raw_fd());
    }

    fn close(&self, reason: &str) {
        let mut state = self.lock();
        self.close_locked(&mut state, reason);
    }

    /// Writes queued frames until the socket is full or the queue empty.
    fn flush_backlog(&self) -> io::Result<()> {
        let mut state = self.lock();
        while let Some((head, body)) = state.backlog.front() {
            match sys::send_parts(self.raw_fd(), &[head, body], libc::MSG_DONTWAIT) {
                Ok(_) => {
                    state.backlog.pop_front();
                }
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// One whole message from the worker.
    fn deliver(&self, header: Header, message: Vec<u8>) {
        match header.kind {
            frame::REPLY => self.deliver_reply(header.call_id, &message),
            frame::CHUNKS => self.deliver_chunks(header, &message),
            _ => {} // Unknown kinds are ignored: newer workers may send more.
        }
    }

    fn deliver_reply(&self, id: u64, message: &[u8]) {
        let Some(Call::Unary(mut to)) = self.lock().calls.remove(&id) else {
            return; // Forgotten: its caller gave up.
        };
        let payload = match ExecuteToolResponse::decode(message) {
            Ok(resp) => response::execute(resp),
            Err(err) => malformed(&err.to_string()),
        };
        to.send(payload);
    }

    fn deliver_chunks(&self, header: Header, message: &[u8]) {
        let decoded: Result<Vec<ToolChunk>, String> =
            frame::split_chunks(message).and_then(|parts| {
                parts
                    .into_iter()
                    .map(|part| ToolChunk::decode(part).map_err(|e| e.to_string()))
                    .collect()
            });
        let mut state = self.lock();
        let id = header.call_id;
        let Some(Call::Stream(stream)) = state.calls.get_mut(&id) else {
            return; // Cancelled: its consumer went away.
        };
        let chunks = match decoded {
            Ok(chunks) => chunks,
            Err(msg) => {
                stream.to.send(malformed(&msg));
                state.calls.remove(&id);
                return;
            }
        };
        // A tool's error ends the stream; the chunks before it still count.
        let failed = chunks.iter().position(|c| c.error.is_some());
        let mut chunks = chunks;
        let error = failed.map(|at| chunks.split_off(at).swap_remove(0));
        let ended = error.is_some() || header.flags & frame::END != 0;
        if !chunks.is_empty() || (ended && error.is_none()) {
            stream.credit.delivered(chunks.len() as u32);
            stream
                .to
                .send(chunks_payload(chunks, ended && error.is_none()));
        }
        if let Some(err) = error {
            stream.to.send(response::chunk(err));
        }
        if ended {
            state.calls.remove(&id);
        }
    }
}

/// `{:chunks, [chunk, ...], :done | :more}`, each chunk as the gRPC path
/// sends it alone (`{:chunk, data, is_final}`).
fn chunks_payload(chunks: Vec<ToolChunk>, done: bool) -> Payload {
    let parts: Vec<Payload> = chunks.into_iter().map(response::chunk).collect();
    Box::new(move |env| {
        let list: Vec<rustler::Term> = parts.into_iter().map(|p| p(env)).collect();
        let tail = if done { atoms::done() } else { atoms::more() };
        (atoms::chunks(), list, tail).encode(env)
    })
}

fn malformed(what: &str) -> Payload {
    let err = NifError::new(
        atoms::internal(),
        format!("malformed reply from the worker: {what}"),
    );
    Box::new(move |env| err.encode(env))
}

/// The lane's socket watched for room to write. Registered only while
/// frames wait: a socket watched for writability wakes the task each time
/// the worker reads a message (the kernel signals the freed room), which
/// would be a second wake-up per call.
fn writer(shared: &Shared) -> io::Result<AsyncFd<OwnedFd>> {
    let fd = shared.fd.get_ref().try_clone()?;
    sys::async_fd(fd, Interest::WRITABLE)
}

/// Reads and writes the lane until it closes.
async fn run(shared: Arc<Shared>) {
    let mut buf = vec![0u8; MAX_FRAME];
    let mut reassembler = Reassembler::new(shared.max_message.saturating_add(HEADER));
    let mut watching: Option<AsyncFd<OwnedFd>> = None;
    let reason = loop {
        let backlog = !shared.lock().backlog.is_empty();
        if !backlog {
            watching = None;
        } else if watching.is_none() {
            match writer(&shared) {
                Ok(fd) => watching = Some(fd),
                Err(err) => break format!("the lane failed: {err}"),
            }
        }
        tokio::select! {
            ready = shared.fd.readable() => {
                let mut guard = match ready {
                    Ok(guard) => guard,
                    Err(err) => break format!("the lane failed: {err}"),
                };
                match read_all(&shared, &mut buf, &mut reassembler) {
                    Ok(()) => guard.clear_ready(),
                    Err(reason) => break reason,
                }
            }
            ready = async { watching.as_ref().expect("watched while frames wait").writable().await }, if backlog => {
                let mut guard = match ready {
                    Ok(guard) => guard,
                    Err(err) => break format!("the lane failed: {err}"),
                };
                match shared.flush_backlog() {
                    Ok(()) => {}
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                    Err(err) => break format!("sending to the worker failed: {err}"),
                }
            }
            _ = shared.backlog_added.notified(), if !backlog => {}
        }
    };
    shared.close(&reason);
}

/// Receives every frame the socket holds; `Err` when the lane must close.
fn read_all(shared: &Shared, buf: &mut [u8], reassembler: &mut Reassembler) -> Result<(), String> {
    loop {
        let n = match sys::recv(shared.raw_fd(), buf, libc::MSG_DONTWAIT | libc::MSG_TRUNC) {
            Ok(0) => return Err("the worker closed its lane".into()),
            Ok(n) if n > buf.len() => {
                return Err(format!(
                    "the worker sent a lane frame of {n} bytes, more than {MAX_FRAME}"
                ))
            }
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(err) => return Err(format!("the lane failed: {err}")),
        };
        match reassembler.push(&buf[..n]) {
            Ok(Some((header, message))) => shared.deliver(header, message),
            Ok(None) => {}
            Err(msg) => return Err(msg),
        }
    }
}

/// Connects to the worker's lane at `path` and introduces this VM with its
/// secret; the worker drops connections that do not start so.
fn open(path: &str, max_message: usize) -> Result<Lane, NifError> {
    let fd = sys::connect_seqpacket_nonblocking(path)
        .map_err(|e| NifError::os(&e, &format!("cannot connect to the lane {path}")))?;
    let hello = Header::new(frame::HELLO, 0).encode();
    sys::send_parts(
        fd.as_raw_fd(),
        &[&hello, snakepit_core::auth::token().as_bytes()],
        libc::MSG_DONTWAIT,
    )
    .map_err(|e| NifError::os(&e, "cannot greet the worker's lane"))?;
    let runtime = crate::runtime::get();
    let _entered = runtime.enter();
    let fd = sys::async_fd(fd, Interest::READABLE)
        .map_err(|e| NifError::os(&e, "cannot watch the lane"))?;
    let shared = Arc::new(Shared {
        fd,
        state: Mutex::new(State::default()),
        next_id: AtomicU64::new(1),
        backlog_added: Notify::new(),
        max_message,
    });
    runtime.spawn(run(shared.clone()));
    Ok(Lane { shared })
}
