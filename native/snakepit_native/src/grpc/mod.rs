//! gRPC: the client the BEAM uses to call Python workers (and to keep the
//! control plane: pings, heartbeats, cancellation), and the bridge server
//! the workers call back into. The messages are `wire::pb`.

mod auth;
mod bridge;
mod channel;
mod client;
mod unary;

/// Wall-clock microseconds since the epoch, as heartbeats carry them.
fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
