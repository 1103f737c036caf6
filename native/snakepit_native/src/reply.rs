//! Sending `{ref, result}` from tokio tasks back to a BEAM process.
//!
//! A task never holds terms: it produces a `Payload` (a closure that builds
//! the term) and this module builds it in a process-independent env owned by
//! the task, off the schedulers.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use rustler::{Encoder, Env, LocalPid, OwnedEnv, Term};

use crate::atoms;
use crate::error::{Kind, NativeError};

/// Builds the result term of a task inside the reply env.
pub type Payload = Box<dyn for<'a> FnOnce(Env<'a>) -> Term<'a> + Send>;

/// Where a task's messages go: the caller's pid and its reference.
///
/// The reference is kept in external term format in Rust's heap, and the
/// message env is made by the task's own thread, so no ERTS memory taken on
/// a scheduler is freed on a tokio thread (ERTS defers such frees to the
/// scheduler that owns the memory).
pub struct ReplyTo {
    pid: LocalPid,
    reference: Vec<u8>,
    msg_env: Option<OwnedEnv>,
}

impl ReplyTo {
    pub fn new(pid: LocalPid, reference: Term<'_>) -> Self {
        ReplyTo {
            pid,
            reference: reference.to_binary().as_slice().to_vec(),
            msg_env: None,
        }
    }

    /// Sends `{ref, payload}` from inside a NIF, building the message in
    /// the calling process's `env` (on a scheduler thread, where an owned
    /// env may not send).
    pub fn send_from(&self, env: Env, payload: Payload) -> bool {
        let reference = match env.binary_to_term(&self.reference) {
            Some((term, _)) => term,
            None => atoms::error().to_term(env),
        };
        env.send(&self.pid, (reference, payload(env))).is_ok()
    }

    /// Sends `{ref, payload}` from a thread of ours (never a scheduler); a
    /// stream sends many through one env.
    pub fn send(&mut self, payload: Payload) -> bool {
        let (reference, pid) = (&self.reference, self.pid);
        let msg_env = self.msg_env.get_or_insert_with(OwnedEnv::new);
        msg_env
            .send_and_clear(&pid, |msg| {
                let reference = match msg.binary_to_term(reference) {
                    Some((term, _)) => term,
                    None => atoms::error().to_term(msg),
                };
                (reference, payload(msg)).encode(msg)
            })
            .is_ok()
    }
}

/// `{:error, {:native_panic, message}}`, sent when a task panicked.
fn panic_payload(message: String) -> Payload {
    error_payload(NativeError::new(Kind::NativePanic, message))
}

/// `{:error, reason}` as a task's reply.
pub fn error_payload(err: NativeError) -> Payload {
    Box::new(move |env| (atoms::error(), err).encode(env))
}

/// The text a panic carried, or `fallback` when it carried none.
pub fn panic_message(panic: Box<dyn std::any::Any + Send>, fallback: &str) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        fallback.to_string()
    }
}

/// Runs `task` on the runtime and sends exactly one `{ref, payload}`,
/// also when the task panics.
pub fn spawn_unary<F>(mut to: ReplyTo, task: F)
where
    F: Future<Output = Payload> + Send + 'static,
{
    crate::runtime::get().spawn(async move {
        let payload = match AssertUnwindSafe(task).catch_unwind().await {
            Ok(payload) => payload,
            Err(panic) => panic_payload(panic_message(panic, "task panicked")),
        };
        to.send(payload);
    });
}

/// Runs a task that sends its own messages through `to`; a panic becomes a
/// final `{ref, {:error, {:native_panic, msg}}}`.
pub fn spawn_streaming<F, Fut>(to: ReplyTo, task: F)
where
    F: FnOnce(std::sync::Arc<std::sync::Mutex<ReplyTo>>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let to = std::sync::Arc::new(std::sync::Mutex::new(to));
    crate::runtime::get().spawn(async move {
        let fut = task(to.clone());
        if let Err(panic) = AssertUnwindSafe(fut).catch_unwind().await {
            let message = panic_message(panic, "task panicked");
            if let Ok(mut to) = to.lock() {
                to.send(panic_payload(message));
            }
        }
    });
}

/// A binary term holding a copy of `bytes`.
pub fn binary<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    let mut bin = rustler::NewBinary::new(env, bytes.len());
    bin.as_mut_slice().copy_from_slice(bytes);
    rustler::Binary::from(bin).to_term(env)
}

/// `{:ok, value}` built lazily.
pub fn ok<T: Encoder + Send + 'static>(value: T) -> Payload {
    Box::new(move |env| (atoms::ok(), value).encode(env))
}
