//! Calls to a worker. Each NIF encodes its arguments, hands the call to a
//! tokio task and returns at once; the task replies `{ref, result}` to the
//! caller's pid. No scheduler thread ever waits on a socket.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustler::types::map::MapIterator;
use rustler::{Binary, Encoder, Env, LocalPid, ResourceArc, Term};
use tokio::sync::{oneshot, Semaphore};

use super::channel::WorkerChannel;
use super::pb::{CancelToolRequest, ExecuteToolRequest, HeartbeatRequest, PingRequest};
use super::response;
use crate::atoms;
use crate::decode::{opt, string_keyed};
use crate::error::NifError;
use crate::json;
use crate::reply::{self, Payload, ReplyTo};

/// How long past the caller's budget the task waits for the worker before
/// giving up on its own; the gRPC deadline normally fires first.
const DEADLINE_SLACK: Duration = Duration::from_millis(50);

/// What a caller over `max_message_bytes` is told to do instead.
const ZERO_COPY_HINT: &str =
    "pass large arrays and tables as Snakepit.ZeroCopy references instead of bytes";

/// Chunks a stream may send ahead of the consumer's acknowledgements.
pub(crate) const DEFAULT_WINDOW: u32 = 32;

/// The per-call options, from the Elixir map `%{session_id:, timeout_ms:,
/// binary_parameters:, metadata:, request_id:}` (every key optional;
/// streams also read `window:`).
struct CallOpts {
    session_id: String,
    timeout_ms: u64,
    binary_parameters: HashMap<String, Vec<u8>>,
    metadata: HashMap<String, String>,
    request_id: String,
}

/// An optional map option: absent is empty.
fn opt_map<'a, V>(
    term: Option<Term<'a>>,
    key: &str,
    value: impl Fn(Term<'a>) -> Option<V>,
) -> Result<HashMap<String, V>, String> {
    match term {
        Some(term) => string_keyed(term, &format!("option {key}"), value),
        None => Ok(HashMap::new()),
    }
}

impl CallOpts {
    fn decode(term: Term) -> Result<Self, String> {
        if !term.is_map() {
            return Err("call options must be a map".into());
        }
        let binaries = opt(term, atoms::binary_parameters(), "binary_parameters")?;
        // Their sizes are checked before any is copied.
        if let Some(map) = binaries {
            let total: usize = MapIterator::new(map)
                .into_iter()
                .flatten()
                .filter_map(|(_, v)| v.decode::<Binary>().ok())
                .map(|b| b.len())
                .sum();
            let max = super::channel::max_message_bytes();
            if total > max {
                return Err(format!(
                    "the call is larger than max_message_bytes ({max}): its binary_parameters \
                     hold {total} bytes; {ZERO_COPY_HINT}"
                ));
            }
        }
        let binaries = opt_map(binaries, "binary_parameters", |v| {
            v.decode::<Binary>().ok().map(|b| b.as_slice().to_vec())
        })?;
        let metadata = opt_map(opt(term, atoms::metadata(), "metadata")?, "metadata", |v| {
            v.decode().ok()
        })?;
        Ok(CallOpts {
            session_id: opt(term, atoms::session_id(), "session_id")?.unwrap_or_default(),
            timeout_ms: opt(term, atoms::timeout_ms(), "timeout_ms")?.unwrap_or(0),
            binary_parameters: binaries,
            metadata,
            request_id: opt(term, atoms::request_id(), "request_id")?.unwrap_or_default(),
        })
    }

    fn timeout(&self) -> Option<Duration> {
        (self.timeout_ms > 0).then(|| Duration::from_millis(self.timeout_ms))
    }
}

/// Encodes and checks everything before any task is spawned, so bad input
/// is answered synchronously and nothing is sent.
pub(crate) fn build_request(
    tool: String,
    arguments: Term,
    opts: Term,
) -> Result<(ExecuteToolRequest, Option<Duration>), NifError> {
    let opts = CallOpts::decode(opts).map_err(NifError::invalid)?;
    let max = super::channel::max_message_bytes();
    let binaries: usize = opts
        .binary_parameters
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    // Encoding stops as soon as the arguments cannot fit beside the binaries.
    let args_json = json::encode_within(arguments, max.saturating_sub(binaries)).map_err(|e| {
        if e.is_too_large() {
            return NifError::invalid(format!("the call is {}; {ZERO_COPY_HINT}", e.message()));
        }
        // `:struct_value`: Elixir converts the structs it can and retries.
        let kind = if e.is_struct {
            atoms::struct_value()
        } else {
            atoms::invalid_argument()
        };
        NifError::new(kind, e.message())
    })?;
    let timeout = opts.timeout();
    let req = ExecuteToolRequest {
        session_id: opts.session_id,
        tool_name: tool,
        args_json,
        binary_parameters: opts.binary_parameters,
        metadata: opts.metadata,
        timeout_ms: opts.timeout_ms as i64,
        request_id: opts.request_id,
    };
    // Refused here, before anything is sent, naming the limit.
    let len = prost::Message::encoded_len(&req);
    if len > max {
        return Err(NifError::invalid(format!(
            "the call is {len} bytes, more than max_message_bytes ({max}); {ZERO_COPY_HINT}"
        )));
    }
    Ok((req, timeout))
}

/// tonic reports its own client-side deadline as `Cancelled` ("Timeout
/// expired"); the server's as `DeadlineExceeded`. Both are a timeout.
fn deadline_hit(
    status: &tonic::Status,
    timeout: Option<Duration>,
    started: tokio::time::Instant,
) -> bool {
    match status.code() {
        tonic::Code::DeadlineExceeded => true,
        tonic::Code::Cancelled => timeout.is_some_and(|t| started.elapsed() >= t),
        _ => false,
    }
}

fn with_deadline<T>(mut req: tonic::Request<T>, timeout: Option<Duration>) -> tonic::Request<T> {
    if let Some(t) = timeout {
        req.set_timeout(t);
    }
    req
}

#[rustler::nif]
fn grpc_execute<'a>(
    env: Env<'a>,
    channel: ResourceArc<WorkerChannel>,
    owner: LocalPid,
    reference: Term<'a>,
    tool: String,
    arguments: Term<'a>,
    opts: Term<'a>,
) -> Term<'a> {
    let (req, timeout) = match build_request(tool, arguments, opts) {
        Ok(built) => built,
        Err(err) => return err.encode(env),
    };
    let unary = channel.unary.clone();
    reply::spawn_unary(ReplyTo::new(owner, reference), async move {
        settle(timeout, unary.execute(req, timeout), response::execute).await
    });
    atoms::ok().encode(env)
}

/// Awaits a unary call, past its budget (if any) by `DEADLINE_SLACK` at
/// most, mapping every outcome to the reply payload; `ok` turns the
/// response into the success value.
async fn settle<T>(
    timeout: Option<Duration>,
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
    ok: impl FnOnce(T) -> Payload,
) -> Payload {
    let started = tokio::time::Instant::now();
    let result = match timeout {
        Some(t) => match tokio::time::timeout(t + DEADLINE_SLACK, call).await {
            Ok(result) => result,
            Err(_) => return response::timeout(),
        },
        None => call.await,
    };
    match result {
        Ok(value) => ok(value),
        Err(status) if deadline_hit(&status, timeout, started) => response::timeout(),
        Err(status) => response::status(status),
    }
}

#[rustler::nif]
fn grpc_ping<'a>(
    env: Env<'a>,
    channel: ResourceArc<WorkerChannel>,
    owner: LocalPid,
    reference: Term<'a>,
    message: String,
    timeout_ms: u64,
) -> Term<'a> {
    let mut client = channel.client();
    let timeout = Some(Duration::from_millis(timeout_ms.max(1)));
    reply::spawn_unary(ReplyTo::new(owner, reference), async move {
        let request = with_deadline(tonic::Request::new(PingRequest { message }), timeout);
        settle(timeout, client.ping(request), |resp| {
            reply::ok(resp.into_inner().message)
        })
        .await
    });
    atoms::ok().encode(env)
}

/// Calls the worker's Heartbeat RPC; replies `{ref, {:ok, worker_timestamp_us}}`
/// or `{ref, {:error, reason}}`. A dependent worker counts these to know
/// that the BEAM is still there.
#[rustler::nif]
fn grpc_heartbeat<'a>(
    env: Env<'a>,
    channel: ResourceArc<WorkerChannel>,
    owner: LocalPid,
    reference: Term<'a>,
    worker_id: String,
    timeout_ms: u64,
) -> Term<'a> {
    let mut client = channel.client();
    let timeout = Some(Duration::from_millis(timeout_ms.max(1)));
    let timestamp_us = super::now_us();
    let req = HeartbeatRequest {
        worker_id,
        session_id: String::new(),
        timestamp_us,
    };
    reply::spawn_unary(ReplyTo::new(owner, reference), async move {
        let request = with_deadline(tonic::Request::new(req), timeout);
        settle(timeout, client.heartbeat(request), |resp| {
            reply::ok(resp.into_inner().timestamp_us)
        })
        .await
    });
    atoms::ok().encode(env)
}

/// Asks the worker to stop the call `request_id` (its caller gave up) and to
/// answer once it has ended or `wait_ms` passed; replies `{ref, {:ok,
/// state}}` with the worker's state string ("cancelled", "interrupted",
/// "finished", "running", "unknown") or `{ref, {:error, reason}}`.
#[rustler::nif]
fn grpc_cancel<'a>(
    env: Env<'a>,
    channel: ResourceArc<WorkerChannel>,
    owner: LocalPid,
    reference: Term<'a>,
    request_id: String,
    wait_ms: u64,
) -> Term<'a> {
    let mut client = channel.client();
    // The worker answers by wait_ms; the rest is room for the round trip.
    let timeout = Some(Duration::from_millis(wait_ms + 1_000));
    let req = CancelToolRequest {
        request_id,
        wait_ms: wait_ms as i64,
    };
    reply::spawn_unary(ReplyTo::new(owner, reference), async move {
        let request = with_deadline(tonic::Request::new(req), timeout);
        settle(timeout, client.cancel_tool(request), |resp| {
            reply::ok(resp.into_inner().state)
        })
        .await
    });
    atoms::ok().encode(env)
}

/// A running server stream. Chunks are sent only against credit the
/// consumer grants with `stream_ack`, so its mailbox stays bounded; dropping
/// the handle or `stream_cancel` cancels the RPC and so the Python producer.
pub struct StreamHandle {
    credits: Arc<Semaphore>,
    cancel: Mutex<Option<oneshot::Sender<()>>>,
}

#[rustler::resource_impl]
impl rustler::Resource for StreamHandle {}

#[rustler::nif]
fn grpc_execute_stream<'a>(
    env: Env<'a>,
    channel: ResourceArc<WorkerChannel>,
    owner: LocalPid,
    reference: Term<'a>,
    tool: String,
    arguments: Term<'a>,
    opts: Term<'a>,
) -> Term<'a> {
    let window: u32 = match opt(opts, atoms::window(), "window") {
        Ok(window) => window.unwrap_or(DEFAULT_WINDOW),
        Err(msg) => return reply::invalid_argument(env, msg),
    };
    let (req, timeout) = match build_request(tool, arguments, opts) {
        Ok(built) => built,
        Err(err) => return err.encode(env),
    };
    let credits = Arc::new(Semaphore::new(window.max(1) as usize));
    let (cancel_tx, mut cancel_rx) = oneshot::channel::<()>();
    let handle = ResourceArc::new(StreamHandle {
        credits: credits.clone(),
        cancel: Mutex::new(Some(cancel_tx)),
    });
    let mut client = channel.client();
    let started = tokio::time::Instant::now();
    let deadline = timeout.map(|t| started + t);

    reply::spawn_streaming(ReplyTo::new(owner, reference), move |to| async move {
        let send = |payload| to.lock().map(|mut to| to.send(payload)).unwrap_or(false);
        let expired = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expired);

        let call = client.execute_streaming_tool(with_deadline(tonic::Request::new(req), timeout));
        let mut stream = tokio::select! {
            _ = &mut cancel_rx => return,
            _ = &mut expired => { send(response::timeout()); return; }
            result = call => match result {
                Ok(resp) => resp.into_inner(),
                Err(status) if deadline_hit(&status, timeout, started) => { send(response::timeout()); return; }
                Err(status) => { send(response::status(status)); return; }
            }
        };
        loop {
            tokio::select! {
                _ = &mut cancel_rx => return,
                _ = &mut expired => { send(response::timeout()); return; }
                permit = credits.acquire() => match permit {
                    Ok(permit) => permit.forget(),
                    Err(_) => return,
                }
            }
            let next = tokio::select! {
                _ = &mut cancel_rx => return,
                _ = &mut expired => { send(response::timeout()); return; }
                next = stream.message() => next,
            };
            match next {
                Ok(Some(chunk)) => match response::chunk(chunk) {
                    Ok(payload) => {
                        if !send(payload) {
                            return;
                        }
                    }
                    // The stream ends here (dropping it cancels the RPC).
                    Err(error) => {
                        send(error);
                        return;
                    }
                },
                Ok(None) => {
                    send(response::done());
                    return;
                }
                Err(status) if deadline_hit(&status, timeout, started) => {
                    send(response::timeout());
                    return;
                }
                Err(status) => {
                    send(response::status(status));
                    return;
                }
            }
        }
    });
    (atoms::ok(), handle).encode(env)
}

/// Grants the stream credit for one more chunk.
#[rustler::nif]
fn stream_ack(handle: ResourceArc<StreamHandle>) -> rustler::Atom {
    handle.credits.add_permits(1);
    atoms::ok()
}

/// Cancels the stream; no message follows. Idempotent.
#[rustler::nif]
fn stream_cancel(handle: ResourceArc<StreamHandle>) -> rustler::Atom {
    if let Ok(mut cancel) = handle.cancel.lock() {
        if let Some(tx) = cancel.take() {
            let _ = tx.send(());
        }
    }
    atoms::ok()
}
