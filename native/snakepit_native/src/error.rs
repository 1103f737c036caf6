//! The one error shape every NIF and every async reply uses:
//! `{:error, {kind, message}}`, with `kind` an atom an Elixir caller can
//! match on and `message` a sentence for people. Kinds:
//!
//! | kind | when |
//! |---|---|
//! | `:invalid_argument` | the caller's input cannot be used; nothing was done |
//! | an errno name (`:enoent`, `:eaddrinuse`, `:esrch`, `:eperm`, ...) or `:os` | an OS call failed |
//! | a gRPC status name (`:unavailable`, `:deadline_exceeded`, ...) | a call to a worker failed |
//! | `:timeout` | a call's deadline passed |
//! | `:already_replied`, `:expired` | a bridge reply came twice or too late |
//! | `:invalid_json`, `:native_panic` | the worker's reply, or the native core itself, failed |
//! | `:limit_exceeded` | a worker's reply is nested deeper than `max_nesting_depth` or holds an integer longer than `max_integer_digits` |
//!
//! `Snakepit.Error.Native` is the one place in Elixir that turns these into
//! `%Snakepit.Error{}`.

use std::io;

use rustler::{Atom, Encoder, Env, Term};

use crate::atoms;

/// A failure, ready to be encoded as `{:error, {kind, message}}`.
#[derive(Debug, Clone)]
pub struct NifError {
    pub kind: Atom,
    pub message: String,
}

impl NifError {
    pub fn new(kind: Atom, message: impl Into<String>) -> Self {
        NifError {
            kind,
            message: message.into(),
        }
    }

    /// Bad input: nothing was done.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(atoms::invalid_argument(), message)
    }

    /// An OS call failed while doing `what`: the kind is the errno's name.
    pub fn os(err: &io::Error, what: &str) -> Self {
        Self::new(errno_kind(err.raw_os_error()), format!("{what}: {err}"))
    }

    pub fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        (atoms::error(), (self.kind, self.message.as_str())).encode(env)
    }
}

/// The atom naming `errno`, from a fixed table (never made from data);
/// `:os` for the rest.
pub fn errno_kind(errno: Option<i32>) -> Atom {
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
