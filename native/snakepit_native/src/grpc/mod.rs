//! gRPC: the client the BEAM uses to call Python workers, and the bridge
//! server the workers call back into.

mod bridge_server;
mod channel;
mod client;
mod response;
mod unary;

pub mod pb {
    tonic::include_proto!("snakepit.bridge");
}
