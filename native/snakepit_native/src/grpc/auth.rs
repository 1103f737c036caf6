//! The per-VM secret on the gRPC links (see `snakepit_core::auth`): every
//! call to a worker carries it, and the bridge server refuses any call
//! that does not, before any tool, session or registry code runs.

use rustler::{Encoder, LocalPid, OwnedEnv};
use snakepit_core::auth;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::atoms;

/// Adds the secret to every call made through a worker's tonic channel.
#[derive(Clone, Copy, Default)]
pub struct WithSecret;

impl Interceptor for WithSecret {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        // Hex digits only: always a valid header value.
        req.metadata_mut()
            .insert(auth::HEADER, MetadataValue::from_static(auth::token()));
        Ok(req)
    }
}

/// Refuses calls without the secret (`UNAUTHENTICATED`) and tells the
/// dispatcher, which counts them in telemetry: `{:snakepit_auth_refused,
/// reason}` with reason `:missing` or `:wrong`.
#[derive(Clone)]
pub struct RequireSecret {
    pub dispatcher: LocalPid,
}

impl Interceptor for RequireSecret {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let refused = match req.metadata().get(auth::HEADER) {
            Some(value) if auth::is_valid(value.as_bytes()) => return Ok(req),
            Some(_) => atoms::wrong(),
            None => atoms::missing(),
        };
        let pid = self.dispatcher;
        let _ = OwnedEnv::new().send_and_clear(&pid, |env| {
            (atoms::snakepit_auth_refused(), refused).encode(env)
        });
        Err(Status::unauthenticated(
            "this server answers only to the processes Snakepit started",
        ))
    }
}
