//! Connections to workers: a Unix domain socket (`unix:/path`) by default,
//! loopback TCP (`host:port`) where configured.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustler::{Encoder, Env, ResourceArc, Term};
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

use super::pb::bridge_service_client::BridgeServiceClient;
use super::unary::Unary;
use crate::atoms;

/// Largest message either way. Tensors and documents can be big; gRPC's
/// 4 MiB default would turn them into opaque transport errors.
pub const MAX_MESSAGE_BYTES: usize = 512 * 1024 * 1024;

/// HTTP/2 receive windows of both connections to a worker: large enough
/// that a big reply is not paced by window updates.
pub const STREAM_WINDOW: u32 = 8 * 1024 * 1024;
pub const CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;

/// Lazily connected HTTP/2 connections to one worker: tonic's channel for
/// streams, pings and heartbeats, and the lean path for `ExecuteTool`.
/// tonic's channel is not `RefUnwindSafe`; it holds no state a caught panic
/// could leave broken.
pub struct WorkerChannel {
    client: AssertUnwindSafe<BridgeServiceClient<Channel>>,
    pub unary: Arc<Unary>,
}

#[rustler::resource_impl]
impl rustler::Resource for WorkerChannel {}

impl WorkerChannel {
    pub fn client(&self) -> BridgeServiceClient<Channel> {
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
            let client = BridgeServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
            let res = ResourceArc::new(WorkerChannel {
                client: AssertUnwindSafe(client),
                unary: Arc::new(Unary::new(address)),
            });
            (atoms::ok(), res).encode(env)
        }
        Err(msg) => crate::reply::invalid_argument(env, msg),
    }
}
