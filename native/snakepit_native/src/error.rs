//! The native error contract. Every NIF and every asynchronous reply fails
//! as `{:error, reason}`, where `reason` is one of two shapes:
//!
//! * `{kind, message}`: `kind` an atom an Elixir caller can match on,
//!   `message` a sentence for people;
//! * `{:tool_error, type, message, traceback, kind}`: the tool itself
//!   failed in the worker (four strings, as the worker sent them).
//!
//! | kind | when |
//! |---|---|
//! | `:invalid_argument` | the caller's input cannot be used; nothing was done (also: a worker's reply held a bad zero-copy ref, refused) |
//! | `:struct_value` | the arguments hold a struct with no native encoding; nothing was sent, Elixir converts the structs it can and retries |
//! | an errno name (`:enoent`, `:eaddrinuse`, `:esrch`, `:eperm`, ...) or `:os` | an OS call failed |
//! | a gRPC status name (`:unavailable`, `:deadline_exceeded`, `:resource_exhausted`, `:internal`, ...) | a call to a worker failed, the lane closed, or a limit on live zero-copy regions was reached |
//! | `:timeout` | a call's deadline passed |
//! | `:already_replied`, `:expired` | a bridge reply came twice or too late |
//! | `:closed`, `:busy` | a zero-copy ref or a telemetry stream was closed; a telemetry stream's control queue is full |
//! | `:invalid_json`, `:native_panic` | the worker's reply, or the native core itself, failed |
//! | `:limit_exceeded` | a worker's reply is nested deeper than `max_nesting_depth` or holds an integer longer than `max_integer_digits` |
//! | `:tool_error` | (the five-element shape) the tool raised in the worker |
//!
//! Kind atoms come from this fixed table only, never from data.
//! `Snakepit.Error.Native` is the one place in Elixir that turns these into
//! `%Snakepit.Error{}`.
//!
//! How a NIF returns one: a NIF whose success is `{:ok, value}` returns
//! `Result<T, NativeError>` (rustler encodes `Ok(v)` as `{:ok, v}` and
//! `Err(e)` as `{:error, e}`); a NIF whose success is a bare atom (`:ok`,
//! `:collect`) returns `rustler::NifResult<Atom>`, into which `?` turns a
//! `NativeError` (`From` below), encoded the same `{:error, e}`.

use std::io;

use rustler::{Atom, Encoder, Env, Term};
use tonic::Code;

use crate::atoms;

/// What went wrong, as the first element of `{kind, message}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    InvalidArgument,
    StructValue,
    /// An OS call failed with this errno (`None`: no errno).
    Os(Option<i32>),
    /// A gRPC status, by its code's name.
    Status(Code),
    Timeout,
    AlreadyReplied,
    Expired,
    Closed,
    Busy,
    InvalidJson,
    LimitExceeded,
    NativePanic,
}

impl Kind {
    pub fn atom(self) -> Atom {
        match self {
            Kind::InvalidArgument => atoms::invalid_argument(),
            Kind::StructValue => atoms::struct_value(),
            Kind::Os(errno) => errno_atom(errno),
            Kind::Status(code) => status_atom(code),
            Kind::Timeout => atoms::timeout(),
            Kind::AlreadyReplied => atoms::already_replied(),
            Kind::Expired => atoms::expired(),
            Kind::Closed => atoms::closed(),
            Kind::Busy => atoms::busy(),
            Kind::InvalidJson => atoms::invalid_json(),
            Kind::LimitExceeded => atoms::limit_exceeded(),
            Kind::NativePanic => atoms::native_panic(),
        }
    }
}

/// A failure, encoded as the `reason` of `{:error, reason}`.
#[derive(Debug, Clone)]
pub enum NativeError {
    /// `{kind, message}`.
    Failed { kind: Kind, message: String },
    /// `{:tool_error, type, message, traceback, kind}`.
    Tool {
        r#type: String,
        message: String,
        traceback: String,
        kind: String,
    },
}

impl NativeError {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        NativeError::Failed {
            kind,
            message: message.into(),
        }
    }

    /// Bad input: nothing was done.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Kind::InvalidArgument, message)
    }

    /// A failure named by a gRPC status code.
    pub fn status(code: Code, message: impl Into<String>) -> Self {
        Self::new(Kind::Status(code), message)
    }

    /// An OS call failed while doing `what`: the kind is the errno's name.
    pub fn os(err: &io::Error, what: &str) -> Self {
        Self::new(Kind::Os(err.raw_os_error()), format!("{what}: {err}"))
    }
}

impl Encoder for NativeError {
    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        match self {
            NativeError::Failed { kind, message } => (kind.atom(), message.as_str()).encode(env),
            NativeError::Tool {
                r#type,
                message,
                traceback,
                kind,
            } => (
                atoms::tool_error(),
                r#type.as_str(),
                message.as_str(),
                traceback.as_str(),
                kind.as_str(),
            )
                .encode(env),
        }
    }
}

/// For NIFs whose success is a bare atom: rustler returns `Error::Term(e)`
/// as `{:error, e}`.
impl From<NativeError> for rustler::Error {
    fn from(err: NativeError) -> Self {
        rustler::Error::Term(Box::new(err))
    }
}

/// The atom naming `errno`; `:os` for the rest.
fn errno_atom(errno: Option<i32>) -> Atom {
    match errno {
        Some(libc::ENOENT) => atoms::enoent(),
        Some(libc::EACCES) => atoms::eacces(),
        Some(libc::EPERM) => atoms::eperm(),
        Some(libc::ESRCH) => atoms::esrch(),
        Some(libc::EADDRINUSE) => atoms::eaddrinuse(),
        Some(libc::EADDRNOTAVAIL) => atoms::eaddrnotavail(),
        Some(libc::ECONNREFUSED) => atoms::econnrefused(),
        Some(libc::ENOTDIR) => atoms::enotdir(),
        Some(libc::EEXIST) => atoms::eexist(),
        Some(libc::EMFILE) => atoms::emfile(),
        Some(libc::ENOMEM) => atoms::enomem(),
        Some(libc::EAGAIN) => atoms::eagain(),
        Some(libc::EINVAL) => atoms::einval(),
        Some(libc::ENAMETOOLONG) => atoms::enametoolong(),
        Some(libc::ETIMEDOUT) => atoms::etimedout(),
        Some(libc::EPIPE) => atoms::epipe(),
        _ => atoms::os(),
    }
}

/// The atom naming a gRPC status code, one to one.
fn status_atom(code: Code) -> Atom {
    match code {
        Code::Ok => atoms::ok(),
        Code::Cancelled => atoms::cancelled(),
        Code::Unknown => atoms::unknown(),
        Code::InvalidArgument => atoms::invalid_argument(),
        Code::DeadlineExceeded => atoms::deadline_exceeded(),
        Code::NotFound => atoms::not_found(),
        Code::AlreadyExists => atoms::already_exists(),
        Code::PermissionDenied => atoms::permission_denied(),
        Code::ResourceExhausted => atoms::resource_exhausted(),
        Code::FailedPrecondition => atoms::failed_precondition(),
        Code::Aborted => atoms::aborted(),
        Code::OutOfRange => atoms::out_of_range(),
        Code::Unimplemented => atoms::unimplemented(),
        Code::Internal => atoms::internal(),
        Code::Unavailable => atoms::unavailable(),
        Code::DataLoss => atoms::data_loss(),
        Code::Unauthenticated => atoms::unauthenticated(),
    }
}

#[cfg(test)]
mod tests {
    /// Every kind `Kind::atom` names by itself (not the errno and gRPC
    /// families) is in the module's table, the contract the Elixir side
    /// reads. Checked on the source: building atoms needs the VM.
    #[test]
    fn every_kind_is_in_the_table() {
        let source = include_str!("error.rs");
        let table: String = source
            .lines()
            .filter(|line| line.starts_with("//! |"))
            .collect();
        let atom_fn = &source[source.find("pub fn atom(self)").unwrap()..];
        let arms = &atom_fn[..atom_fn.find("\n    }\n").unwrap()];
        let names: Vec<&str> = arms
            .lines()
            .filter_map(|line| line.split("=> atoms::").nth(1))
            .map(|rest| rest.trim_end_matches("(),"))
            .collect();
        assert!(names.len() >= 10, "the arms were not found: {names:?}");
        for name in names {
            assert!(
                table.contains(&format!("`:{name}`")),
                ":{name} is missing from the table"
            );
        }
    }
}
