//! The parts of Snakepit's native core that need no BEAM symbols, so that
//! `cargo test` can exercise them directly: fork/exec from one long-lived
//! thread with a group guard, the client of a fork server, signals and liveness, waiting for exits,
//! JSON parsing, and the bridge server's addresses and argument checks.

pub mod auth;
pub mod bridge;
pub mod exit;
pub mod fork_client;
pub mod grpc_frame;
pub mod json;
pub mod lane;
pub mod shm;
pub mod signal;
pub mod spawn;
pub mod sys;
