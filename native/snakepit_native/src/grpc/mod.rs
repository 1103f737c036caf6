//! gRPC: the client the BEAM uses to call Python workers, and the bridge
//! server the workers call back into.

mod auth;
mod bridge;
mod channel;
mod client;
pub(crate) mod response;
mod unary;

pub(crate) use channel::max_message_bytes;
pub(crate) use client::{build_request, DEFAULT_WINDOW};

/// Wall-clock microseconds since the epoch, as heartbeats carry them.
pub(crate) fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

pub mod pb {
    tonic::include_proto!("snakepit.bridge");
}
