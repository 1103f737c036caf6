//! The lane's NIFs. Each one does a bounded amount of work on the caller's
//! scheduler (encode, one non-blocking `sendmsg`) and returns; replies come
//! as `{ref, result}` messages, as on the gRPC path.

use rustler::{Encoder, Env, LocalPid, ResourceArc, Term};
use snakepit_core::lane::{self as frame, Header};

use super::{open, Call, Lane, StreamCall};
use crate::atoms;
use crate::decode::opt;
use crate::error::NifError;
use crate::grpc::{build_request, max_message_bytes, DEFAULT_WINDOW};
use crate::reply::{self, ReplyTo};

/// Connects to the worker's lane: `{:ok, lane}` or `{:error, {kind, msg}}`.
/// Connecting to a listening Unix socket does not wait (the socket is
/// non-blocking), so this runs on a normal scheduler.
#[rustler::nif]
fn lane_open(env: Env, path: String) -> Term {
    match open(&path, max_message_bytes()) {
        Ok(lane) => (atoms::ok(), ResourceArc::new(lane)).encode(env),
        Err(err) => err.encode(env),
    }
}

fn encoded(tool: String, arguments: Term, opts: Term) -> Result<Vec<u8>, NifError> {
    let (req, _timeout) = build_request(tool, arguments, opts)?;
    Ok(prost::Message::encode_to_vec(&req))
}

/// Sends `tool(arguments)` on the lane: `{:ok, call_id}` and later one
/// `{ref, result}` (the gRPC path's result shapes), or `{:error, {kind,
/// msg}}` at once when nothing was sent. No deadline is kept here: a
/// caller that stops waiting calls `lane_forget/2`.
#[rustler::nif]
fn lane_execute<'a>(
    env: Env<'a>,
    lane: ResourceArc<Lane>,
    owner: LocalPid,
    reference: Term<'a>,
    tool: String,
    arguments: Term<'a>,
    opts: Term<'a>,
) -> Term<'a> {
    let result = encoded(tool, arguments, opts).and_then(|payload| {
        let call = Call::Unary(ReplyTo::new(owner, reference));
        lane.shared.start(frame::CALL, 0, payload, call)
    });
    started(env, result)
}

/// Starts a stream: `{:ok, call_id}`, then `{ref, {:chunks, [chunk, ...],
/// :more | :done}}` messages, at most `window` chunks (option `:window`)
/// ahead of the consumer's `lane_stream_ack/3`; a tool's error or a lost
/// worker as `{ref, {:error, reason}}`.
#[rustler::nif]
fn lane_execute_stream<'a>(
    env: Env<'a>,
    lane: ResourceArc<Lane>,
    owner: LocalPid,
    reference: Term<'a>,
    tool: String,
    arguments: Term<'a>,
    opts: Term<'a>,
) -> Term<'a> {
    let window: u32 = match opt(opts, atoms::window(), "window") {
        Ok(window) => window.unwrap_or(DEFAULT_WINDOW).clamp(1, u16::MAX as u32),
        Err(msg) => return reply::invalid_argument(env, msg),
    };
    let result = encoded(tool, arguments, opts).and_then(|payload| {
        let call = Call::Stream(StreamCall {
            to: ReplyTo::new(owner, reference),
            credit: frame::Credit::new(window),
        });
        lane.shared
            .start(frame::STREAM, window as u16, payload, call)
    });
    started(env, result)
}

fn started(env: Env, result: Result<u64, NifError>) -> Term {
    match result {
        Ok(id) => (atoms::ok(), id).encode(env),
        Err(err) => err.encode(env),
    }
}

/// The consumer handled `n` chunks of stream `call_id`.
#[rustler::nif]
fn lane_stream_ack(lane: ResourceArc<Lane>, call_id: u64, n: u32) -> rustler::Atom {
    let shared = &lane.shared;
    let mut state = shared.lock();
    let grant = match state.calls.get_mut(&call_id) {
        Some(Call::Stream(stream)) => stream.credit.ack(n),
        _ => None,
    };
    if let Some(grant) = grant {
        let header = Header::new(frame::CREDIT, call_id);
        shared.control(&mut state, header, &frame::credit(grant));
    }
    atoms::ok()
}

/// Stops stream `call_id`: no message follows, and the worker is told to
/// stop producing. Idempotent.
#[rustler::nif]
fn lane_stream_cancel(lane: ResourceArc<Lane>, call_id: u64) -> rustler::Atom {
    let shared = &lane.shared;
    let mut state = shared.lock();
    if let Some(Call::Stream(_)) = state.calls.remove(&call_id) {
        shared.control(&mut state, Header::new(frame::CANCEL, call_id), &[]);
    }
    atoms::ok()
}

/// Forgets call `call_id`: its caller stopped waiting, so a late reply is
/// dropped. Stopping the call in the worker is `CancelTool`'s job.
#[rustler::nif]
fn lane_forget(lane: ResourceArc<Lane>, call_id: u64) -> rustler::Atom {
    lane.shared.lock().calls.remove(&call_id);
    atoms::ok()
}
