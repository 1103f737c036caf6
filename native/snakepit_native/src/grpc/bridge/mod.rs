//! The ElixirBridge gRPC server: Python workers call back into the BEAM
//! through it (tool registration, Elixir tools, sessions, heartbeats).
//!
//! Each RPC becomes one message to the dispatcher pid,
//! `{:snakepit_bridge, call, rpc, request}`, where `call` is a resource
//! holding the RPC's reply slot. The RPC then waits, inside tokio, until
//! Elixir answers with `bridge_reply(call, reply)`, the call's time is up,
//! Elixir drops the call unanswered, or the server shuts down. A scheduler
//! never waits on anything here.
//!
//! Request shapes (maps with atom keys, values from the wire):
//!
//! | rpc | request |
//! |---|---|
//! | `:register_tools` | `%{session_id, worker_id, tools: [spec]}` |
//! | `:get_exposed_elixir_tools` | `%{session_id}` |
//! | `:execute_elixir_tool` | `%{session_id, tool_name, args, binary_parameters, metadata, timeout_ms, worker_id}` |
//! | `:initialize_session` | `%{session_id, config}` |
//! | `:cleanup_session` | `%{session_id, force}` |
//! | `:get_session` | `%{session_id}` |
//! | `:heartbeat` | `%{worker_id, session_id, timestamp_us}` |
//!
//! A `spec` is `%{name, description, parameters, supports_streaming,
//! metadata}`; a parameter `%{name, type, required, description}` plus
//! `default` when the tool declares one. Replies are documented on
//! `decode_reply`.
//!
//! `StreamTelemetry` is not a call: it opens a stream of the worker's events
//! (see `telemetry.rs`), announced to the dispatcher as
//! `{:snakepit_telemetry_open, stream, worker_id}`.

mod call;
mod replies;
mod service;
mod telemetry;
mod terms;

use std::sync::Mutex;
use std::time::Duration;

use rustler::{Atom, LocalPid, NifResult, ResourceArc, Term};
use snakepit_core::bridge::{self as core, Listen};
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;

use super::auth::RequireSecret;
use crate::atoms;
use crate::error::{Kind, NativeError};
use crate::wire::limits::max_message_bytes;
use crate::wire::pb::elixir_bridge_server::ElixirBridgeServer;
use call::Bridge;
pub use call::{BridgeCall, BridgeHandle};
use replies::{decode_reply, fallback};

/// Starts the server on `address` (`unix:/abs/path` or loopback
/// `host:port`), sending every call to `dispatcher`. Calls with no budget of
/// their own wait `default_timeout_ms` for Elixir. Returns
/// `{:ok, {handle, bound_address}}`.
#[rustler::nif]
fn bridge_start(
    address: String,
    dispatcher: LocalPid,
    default_timeout_ms: u64,
    allow_non_loopback: bool,
) -> Result<(ResourceArc<BridgeHandle>, String), NativeError> {
    let listen = core::parse_address(&address, allow_non_loopback).map_err(NativeError::invalid)?;
    let cannot_listen =
        |e: std::io::Error| NativeError::os(&e, &format!("cannot listen on {address}"));
    // Listeners are registered with the runtime's reactor on this thread.
    let rt = crate::runtime::get();
    let _guard = rt.enter();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let bridge = Bridge {
        dispatcher,
        default_timeout: Duration::from_millis(default_timeout_ms.max(1)),
        shutdown: shutdown_rx.clone(),
    };
    let service = InterceptedService::new(
        ElixirBridgeServer::new(bridge)
            .max_decoding_message_size(max_message_bytes())
            .max_encoding_message_size(max_message_bytes()),
        RequireSecret { dispatcher },
    );
    let router = tonic::transport::Server::builder().add_service(service);
    let mut stopped = shutdown_rx;
    let signal = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };

    let (bound, socket) = match listen {
        Listen::Unix(path) => {
            let (std_listener, file) = core::bind_unix(&path).map_err(cannot_listen)?;
            let listener = match tokio::net::UnixListener::from_std(std_listener) {
                Ok(l) => l,
                Err(e) => {
                    file.remove();
                    return Err(cannot_listen(e));
                }
            };
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            rt.spawn(router.serve_with_incoming_shutdown(incoming, signal));
            (format!("unix:{}", file.path().display()), Some(file))
        }
        Listen::Tcp(addr) => {
            let (std_listener, bound) = core::bind_tcp(&addr).map_err(cannot_listen)?;
            let listener =
                tokio::net::TcpListener::from_std(std_listener).map_err(cannot_listen)?;
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            rt.spawn(router.serve_with_incoming_shutdown(incoming, signal));
            (bound, None)
        }
    };
    let handle = ResourceArc::new(BridgeHandle {
        shutdown: shutdown_tx,
        socket: Mutex::new(socket),
    });
    Ok((handle, bound))
}

/// Stops the server; pending calls are answered `unavailable`. Idempotent.
#[rustler::nif]
fn bridge_stop(handle: ResourceArc<BridgeHandle>) -> Atom {
    handle.stop();
    atoms::ok()
}

/// Answers one call. Returns `:ok`; `{:error, {:already_replied, msg}}`
/// for a call answered before; `{:error, {:expired, msg}}` when the RPC
/// stopped waiting; or `{:error, {:invalid_argument, msg}}` for a reply of
/// the wrong shape, in which case the RPC is answered with an error naming
/// the problem. Encoding a large result to JSON can take a while: dirty
/// scheduler.
#[rustler::nif(schedule = "DirtyCpu")]
fn bridge_reply<'a>(call: ResourceArc<BridgeCall>, reply: Term<'a>) -> NifResult<Atom> {
    let sender = call.reply.lock().ok().and_then(|mut slot| slot.take());
    let Some(sender) = sender else {
        let answered = NativeError::new(Kind::AlreadyReplied, "this call was answered before");
        return Err(answered.into());
    };
    let (answer, problem) = match decode_reply(&call, reply) {
        Ok(answer) => (answer, None),
        Err(msg) => (fallback(&call, &msg), Some(msg)),
    };
    let delivered = sender.send(answer).is_ok();
    match (problem, delivered) {
        (Some(msg), _) => Err(NativeError::invalid(msg).into()),
        (None, true) => Ok(atoms::ok()),
        (None, false) => Err(NativeError::new(
            Kind::Expired,
            "the call stopped waiting (its time was up, or the worker went away)",
        )
        .into()),
    }
}
