//! Connections to workers: a Unix domain socket (`unix:/path`) by default,
//! loopback TCP (`host:port`) where configured.

use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustler::ResourceArc;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

use super::auth::WithSecret;
use super::unary::{Unary, CONNECTION_WINDOW, STREAM_WINDOW};
use crate::error::NativeError;
use crate::wire::limits::max_message_bytes;
use crate::wire::pb::bridge_service_client::BridgeServiceClient;

/// A worker's tonic client: every call carries the VM's secret.
pub type Client = BridgeServiceClient<InterceptedService<Channel, WithSecret>>;

/// Lazily connected HTTP/2 connections to one worker: tonic's channel for
/// streams, pings and heartbeats, and the lean path for `ExecuteTool`.
pub struct WorkerChannel {
    client: Client,
    pub unary: Arc<Unary>,
}

#[rustler::resource_impl]
impl rustler::Resource for WorkerChannel {}

// Neither tonic's channel nor the lean path's connection is
// `RefUnwindSafe` by type, yet neither holds state a caught panic could
// leave half-updated: their locks guard whole handles, replaced at once.
impl std::panic::RefUnwindSafe for WorkerChannel {}

impl WorkerChannel {
    pub fn client(&self) -> Client {
        self.client.clone()
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
fn grpc_connect(address: String) -> Result<ResourceArc<WorkerChannel>, NativeError> {
    let channel = connect(&address).map_err(NativeError::invalid)?;
    let client = BridgeServiceClient::with_interceptor(channel, WithSecret)
        .max_decoding_message_size(max_message_bytes())
        .max_encoding_message_size(max_message_bytes());
    Ok(ResourceArc::new(WorkerChannel {
        client,
        unary: Arc::new(Unary::new(address)),
    }))
}
