//! Calls to a worker. Each NIF encodes its arguments, hands the call to a
//! tokio task and returns at once; the task replies `{ref, result}` to the
//! caller's pid. No scheduler thread ever waits on a socket.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustler::{Atom, Encoder, LocalPid, NifResult, ResourceArc, Term};
use tokio::sync::{oneshot, Semaphore};

use super::channel::{Client, WorkerChannel};
use crate::atoms;
use crate::error::NativeError;
use crate::reply::{self, Payload, ReplyTo};
use crate::wire::pb::{CancelToolRequest, HeartbeatRequest, PingRequest};
use crate::wire::request::{build_request, window};
use crate::wire::response;

/// How long past the caller's budget the task waits for the worker before
/// giving up on its own; the gRPC deadline normally fires first.
const DEADLINE_SLACK: Duration = Duration::from_millis(50);

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
    channel: ResourceArc<WorkerChannel>,
    owner: LocalPid,
    reference: Term<'a>,
    tool: String,
    arguments: Term<'a>,
    opts: Term<'a>,
) -> NifResult<Atom> {
    let (req, timeout) = build_request(tool, arguments, opts)?;
    let unary = channel.unary.clone();
    reply::spawn_unary(ReplyTo::new(owner, reference), async move {
        settle(timeout, unary.execute(req, timeout), response::execute).await
    });
    Ok(atoms::ok())
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

/// Makes one control-plane RPC through the worker's tonic channel, with
/// `timeout` as its deadline: the task replies `{ref, {:ok, value}}`, with
/// `value` taken from the response, or `{ref, {:error, reason}}`.
fn control_call<Req, Resp, T, Fut>(
    channel: &WorkerChannel,
    owner: LocalPid,
    reference: Term,
    timeout: Duration,
    req: Req,
    call: impl FnOnce(Client, tonic::Request<Req>) -> Fut + Send + 'static,
    value: impl FnOnce(Resp) -> T + Send + 'static,
) -> Atom
where
    Req: Send + 'static,
    Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>> + Send + 'static,
    T: Encoder + Send + 'static,
{
    let client = channel.client();
    let timeout = Some(timeout);
    reply::spawn_unary(ReplyTo::new(owner, reference), async move {
        let request = with_deadline(tonic::Request::new(req), timeout);
        let call = call(client, request);
        settle(timeout, call, |resp| reply::ok(value(resp.into_inner()))).await
    });
    atoms::ok()
}

/// Calls the worker's Ping RPC; replies `{ref, {:ok, message}}` or
/// `{ref, {:error, reason}}`.
#[rustler::nif]
fn grpc_ping(
    channel: ResourceArc<WorkerChannel>,
    owner: LocalPid,
    reference: Term,
    message: String,
    timeout_ms: u64,
) -> Atom {
    let timeout = Duration::from_millis(timeout_ms.max(1));
    let req = PingRequest { message };
    control_call(
        &channel,
        owner,
        reference,
        timeout,
        req,
        |mut client, req| async move { client.ping(req).await },
        |resp| resp.message,
    )
}

/// Calls the worker's Heartbeat RPC; replies `{ref, {:ok, worker_timestamp_us}}`
/// or `{ref, {:error, reason}}`. A dependent worker counts these to know
/// that the BEAM is still there.
#[rustler::nif]
fn grpc_heartbeat(
    channel: ResourceArc<WorkerChannel>,
    owner: LocalPid,
    reference: Term,
    worker_id: String,
    timeout_ms: u64,
) -> Atom {
    let timeout = Duration::from_millis(timeout_ms.max(1));
    let req = HeartbeatRequest {
        worker_id,
        session_id: String::new(),
        timestamp_us: super::now_us(),
    };
    control_call(
        &channel,
        owner,
        reference,
        timeout,
        req,
        |mut client, req| async move { client.heartbeat(req).await },
        |resp| resp.timestamp_us,
    )
}

/// Asks the worker to stop the call `request_id` (its caller gave up) and to
/// answer once it has ended or `wait_ms` passed; replies `{ref, {:ok,
/// state}}` with the worker's state string ("cancelled", "interrupted",
/// "finished", "running", "unknown") or `{ref, {:error, reason}}`.
#[rustler::nif]
fn grpc_cancel(
    channel: ResourceArc<WorkerChannel>,
    owner: LocalPid,
    reference: Term,
    request_id: String,
    wait_ms: u64,
) -> Atom {
    // The worker answers by wait_ms; the rest is room for the round trip.
    let timeout = Duration::from_millis(wait_ms + 1_000);
    let req = CancelToolRequest {
        request_id,
        wait_ms: wait_ms as i64,
    };
    control_call(
        &channel,
        owner,
        reference,
        timeout,
        req,
        |mut client, req| async move { client.cancel_tool(req).await },
        |resp| resp.state,
    )
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
    channel: ResourceArc<WorkerChannel>,
    owner: LocalPid,
    reference: Term<'a>,
    tool: String,
    arguments: Term<'a>,
    opts: Term<'a>,
) -> Result<ResourceArc<StreamHandle>, NativeError> {
    let window = window(opts)?;
    let (req, timeout) = build_request(tool, arguments, opts)?;
    let credits = Arc::new(Semaphore::new(window as usize));
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
    Ok(handle)
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
