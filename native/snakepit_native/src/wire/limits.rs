//! The largest message either way, on every connection to and from
//! workers (lane and gRPC alike).

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::atoms;

/// `config :snakepit, max_message_bytes:` (set once at start through
/// `set_max_message_bytes`); the workers get the same value. gRPC's 4 MiB
/// default would turn big tensors into opaque transport errors.
static MAX_MESSAGE_BYTES: AtomicUsize = AtomicUsize::new(256 * 1024 * 1024);

pub fn max_message_bytes() -> usize {
    MAX_MESSAGE_BYTES.load(Ordering::Relaxed)
}

#[rustler::nif]
fn set_max_message_bytes(bytes: usize) -> rustler::Atom {
    MAX_MESSAGE_BYTES.store(bytes.max(1024), Ordering::Relaxed);
    atoms::ok()
}
