//! The lane's NIFs. Each one does a bounded amount of work on the caller's
//! scheduler (encode, one non-blocking `sendmsg`; decode a small reply) and
//! returns; replies come as `{ref, result}` messages, as on the gRPC path.

use rustler::{Atom, Binary, Env, LocalPid, NifResult, ResourceArc, Term};
use snakepit_core::lane::{self as frame, Header};
use tonic::Code;

use super::{attach, Call, Lane, StreamCall, Via};
use crate::atoms;
use crate::error::NativeError;
use crate::reply::ReplyTo;
use crate::wire::request::{build_request, window};

/// Takes over the lane socket `fd` that a `gen_tcp` port connected to a
/// worker (`:inet.getfd/1`): `{:ok, lane}` once the worker was greeted, or
/// `{:error, {kind, msg}}`. The port keeps reading replies (handed to
/// `lane_deliver/2`); the lane writes through a descriptor of its own.
#[rustler::nif]
fn lane_attach(fd: i32) -> Result<ResourceArc<Lane>, NativeError> {
    attach(fd).map(ResourceArc::new)
}

/// One message the reader's port received (header and payload): decoded
/// and sent to its caller. `:ok`; `:collect` when the reader should collect
/// its heap now (what the message left there holds a zero-copy region or a
/// large binary); `{:error, {:internal, msg}}` when it is not a lane
/// message (the lane must close).
#[rustler::nif]
fn lane_deliver<'a>(env: Env<'a>, lane: ResourceArc<Lane>, message: Binary<'a>) -> NifResult<Atom> {
    delivered(env, &lane, message.as_slice())
}

/// `lane_deliver/2` for large messages, whose decoding may take longer
/// than a normal scheduler should be held.
#[rustler::nif(schedule = "DirtyCpu")]
fn lane_deliver_large<'a>(
    env: Env<'a>,
    lane: ResourceArc<Lane>,
    message: Binary<'a>,
) -> NifResult<Atom> {
    delivered(env, &lane, message.as_slice())
}

fn delivered(env: Env, lane: &Lane, message: &[u8]) -> NifResult<Atom> {
    match lane.shared.deliver(env, message) {
        Ok(false) => Ok(atoms::ok()),
        Ok(true) => Ok(atoms::collect()),
        Err(msg) => Err(NativeError::status(Code::Internal, msg).into()),
    }
}

/// Closes the lane (its reader saw the socket end): every waiting caller
/// gets `{ref, {:error, {:unavailable, reason}}}`, later calls are refused.
#[rustler::nif]
fn lane_close(env: Env, lane: ResourceArc<Lane>, reason: String) -> rustler::Atom {
    lane.shared.close(&reason, Via::Nif(env));
    atoms::ok()
}

fn encoded(tool: String, arguments: Term, opts: Term) -> Result<Vec<u8>, NativeError> {
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
) -> Result<u64, NativeError> {
    let payload = encoded(tool, arguments, opts)?;
    let call = Call::Unary(ReplyTo::new(owner, reference));
    lane.shared.start(env, frame::CALL, 0, payload, call)
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
) -> Result<u64, NativeError> {
    // The frame carries the window in 16 bits.
    let window = window(opts)?.min(u16::MAX as u32);
    let payload = encoded(tool, arguments, opts)?;
    let call = Call::Stream(StreamCall {
        to: ReplyTo::new(owner, reference),
        credit: frame::Credit::new(window),
    });
    lane.shared
        .start(env, frame::STREAM, window as u16, payload, call)
}

/// The consumer handled `n` chunks of stream `call_id`.
#[rustler::nif]
fn lane_stream_ack(env: Env, lane: ResourceArc<Lane>, call_id: u64, n: u32) -> rustler::Atom {
    let shared = &lane.shared;
    let mut state = shared.lock();
    let grant = match state.calls.get_mut(&call_id) {
        Some(Call::Stream(stream)) => stream.credit.ack(n),
        _ => None,
    };
    if let Some(grant) = grant {
        let header = Header::new(frame::CREDIT, call_id);
        shared.control(env, &mut state, header, &frame::credit(grant));
    }
    atoms::ok()
}

/// Stops stream `call_id`: no message follows, and the worker is told to
/// stop producing. Idempotent.
#[rustler::nif]
fn lane_stream_cancel(env: Env, lane: ResourceArc<Lane>, call_id: u64) -> rustler::Atom {
    let shared = &lane.shared;
    let mut state = shared.lock();
    if let Some(Call::Stream(_)) = state.calls.remove(&call_id) {
        shared.control(env, &mut state, Header::new(frame::CANCEL, call_id), &[]);
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
