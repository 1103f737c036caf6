//! gRPC: the client the BEAM uses to call Python workers.

mod channel;
mod client;
mod response;

pub mod pb {
    tonic::include_proto!("snakepit.bridge");
}
