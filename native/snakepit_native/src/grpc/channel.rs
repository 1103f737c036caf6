//! Connections to workers: a Unix domain socket (`unix:/path`) by default,
//! loopback TCP (`host:port`) where configured.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustler::{Encoder, Env, ResourceArc, Term};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

use super::auth::WithSecret;
use super::pb::bridge_service_client::BridgeServiceClient;
use super::unary::Unary;
use crate::atoms;

/// Largest message either way, on every connection to and from workers:
/// `config :snakepit, max_message_bytes:` (set once at start through
/// `set_max_message_bytes`); the workers get the same value. gRPC's 4 MiB
/// default would turn big tensors into opaque transport errors.
static MAX_MESSAGE_BYTES: AtomicUsize = AtomicUsize::new(256 * 1024 * 1024);

pub fn max_message_bytes() -> usize {
    MAX_MESSAGE_BYTES.load(Ordering::Relaxed)
}

#[rustler::nif]
fn set_max_message_bytes(bytes: usize) -> rustler::Atom {
    MAX_MESSAGE_BYTES.store(bytes.max(1024), Ordering::Relaxed);
    atoms::ok()
}

/// HTTP/2 receive windows of both connections to a worker: large enough
/// that a big reply is not paced by window updates.
pub const STREAM_WINDOW: u32 = 8 * 1024 * 1024;
pub const CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;

/// A worker's tonic client: every call carries the VM's secret.
pub type Client = BridgeServiceClient<InterceptedService<Channel, WithSecret>>;

/// Lazily connected HTTP/2 connections to one worker: tonic's channel for
/// streams, pings and heartbeats, and the lean path for `ExecuteTool`.
/// tonic's channel is not `RefUnwindSafe`; it holds no state a caught panic
/// could leave broken.
pub struct WorkerChannel {
    client: AssertUnwindSafe<Client>,
    pub unary: Arc<Unary>,
}

#[rustler::resource_impl]
impl rustler::Resource for WorkerChannel {}

impl WorkerChannel {
    pub fn client(&self) -> Client {
        self.client.0.clone()
    }
}

fn endpoint(uri: String) -> Result<Endpoint, String> {
    Ok(Endpoint::from_shared(uri)
        .map_err(|e| format!("bad worker address: {e}"))?
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(CONNECTION_WINDOW)))
}

fn connect(address: &str) -> Result<Channel, String> {
    // connect_lazy needs a runtime context on this (scheduler) thread.
    let _rt = crate::runtime::get().enter();
    if let Some(path) = address.strip_prefix("unix:") {
        let path = path.to_string();
        // The authority is ignored on a Unix socket; any valid one will do.
        let connector = service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        });
        Ok(endpoint("http://localhost".into())?.connect_with_connector_lazy(connector))
    } else {
        Ok(endpoint(format!("http://{address}"))?.connect_lazy())
    }
}

/// Opens a channel; nothing is dialled until the first call.
#[rustler::nif]
fn grpc_connect(env: Env<'_>, address: String) -> Term<'_> {
    match connect(&address) {
        Ok(channel) => {
            let client = BridgeServiceClient::with_interceptor(channel, WithSecret)
                .max_decoding_message_size(max_message_bytes())
                .max_encoding_message_size(max_message_bytes());
            let res = ResourceArc::new(WorkerChannel {
                client: AssertUnwindSafe(client),
                unary: Arc::new(Unary::new(address)),
            });
            (atoms::ok(), res).encode(env)
        }
        Err(msg) => crate::reply::invalid_argument(env, msg),
    }
}
