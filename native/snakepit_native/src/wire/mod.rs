//! The wire format of a call to a worker, shared by both call transports
//! (the lane, `lane/`, and gRPC, `grpc/`): the protobuf messages, the
//! message size limit, the request a call sends and the Elixir terms its
//! replies become. Nothing here knows how the bytes travel.

pub mod limits;
pub mod pb;
pub mod request;
pub mod response;
