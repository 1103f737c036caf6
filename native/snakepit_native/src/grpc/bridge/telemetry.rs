//! `ElixirBridge.StreamTelemetry`: a worker's events into the BEAM, bounded,
//! and control messages back to the worker.
//!
//! One stream per worker connection. Opening it sends the dispatcher
//! `{:snakepit_telemetry_open, stream, worker_id}`; Elixir then names the
//! process that takes the events (`telemetry_attach/2`). Events wait in a
//! queue of at most `QUEUE_CAP` entries (more are counted as dropped, never
//! buffered) and reach that process in batches, one batch in flight at a
//! time: `{:snakepit_telemetry, stream, entries, %{dropped:, rejected:}}`,
//! the counts being totals for the stream. The next batch leaves once Elixir
//! calls `telemetry_ack/1`, so a chatty worker costs the BEAM one batch per
//! stream, however fast it emits. An entry is `%{parts, name, measurements,
//! metadata, timestamp_ns, correlation_id}` (strings and string-keyed maps;
//! no atoms from data) or `{:ack, seq}` when the worker applied the control
//! message numbered `seq`. Events too large or malformed are counted as
//! rejected. When the worker's side ends, `{:snakepit_telemetry_closed,
//! stream}` follows the last batch.
//!
//! Term building runs on tokio threads, never on a scheduler.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Mutex;

use futures::{Stream, StreamExt};
use rustler::{Atom, Encoder, Env, LocalPid, NifResult, OwnedEnv, ResourceArc, Term};
use serde_json::Value;
use snakepit_core::json::Parsed;
use tokio::sync::{mpsc, watch, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::call::Bridge;
use super::terms::map;
use crate::atoms;
use crate::error::{Kind, NativeError};
use crate::wire::pb::{
    telemetry_control::Control, TelemetryControl, TelemetryEvent, TelemetryEventFilter,
    TelemetryForwarding, TelemetrySamplingUpdate, TelemetryToggle,
};

/// Entries a stream holds for Elixir before it drops events.
const QUEUE_CAP: usize = 4096;
/// Entries in one message to Elixir.
const BATCH_MAX: usize = 256;
/// Control messages queued for the worker before `telemetry_control` says busy.
const CONTROL_CAP: usize = 64;
/// Limits on one event; beyond them it is rejected.
const MAX_PARTS: usize = 8;
const MAX_PART_BYTES: usize = 64;
const MAX_NAME_BYTES: usize = 256;
const MAX_JSON_BYTES: usize = 64 * 1024;

pub(super) type ControlStream =
    Pin<Box<dyn Stream<Item = Result<TelemetryControl, Status>> + Send + 'static>>;

enum Entry {
    Event(TelemetryEvent),
    Ack(u64),
}

#[derive(Default)]
struct Inbox {
    sink: Option<LocalPid>,
    pending: VecDeque<Entry>,
    in_flight: bool,
    dropped: u64,
    rejected: u64,
    ended: bool,
}

impl Inbox {
    fn take(&mut self, event: TelemetryEvent) {
        self.dropped += event.dropped;
        if event.control_ack != 0 {
            // Acks are tiny and rare, and a caller waits on them: never dropped.
            self.pending.push_back(Entry::Ack(event.control_ack));
        } else if self.pending.len() >= QUEUE_CAP {
            self.dropped += 1;
        } else {
            self.pending.push_back(Entry::Event(event));
        }
    }
}

/// One worker's telemetry stream, held by Elixir and by its two tasks.
pub struct TelemetryStream {
    control: mpsc::Sender<TelemetryControl>,
    inbox: Mutex<Inbox>,
    wake: Notify,
    ended: watch::Sender<bool>,
}

#[rustler::resource_impl]
impl rustler::Resource for TelemetryStream {}

impl TelemetryStream {
    fn with_inbox<R>(&self, f: impl FnOnce(&mut Inbox) -> R) -> R {
        let mut inbox = self.inbox.lock().unwrap_or_else(|p| p.into_inner());
        let out = f(&mut inbox);
        drop(inbox);
        self.wake.notify_one();
        out
    }

    fn push(&self, mut message: TelemetryEvent) {
        let batch = std::mem::take(&mut message.batch);
        self.with_inbox(|inbox| {
            if batch.is_empty() {
                inbox.take(message);
            } else {
                // An envelope carries only its batch (one level deep).
                batch.into_iter().for_each(|event| inbox.take(event));
            }
        })
    }

    fn end(&self) {
        self.with_inbox(|inbox| inbox.ended = true);
        let _ = self.ended.send(true);
    }
}

/// Opens a stream for `worker`: starts its reader and forwarder and returns
/// the control messages for the worker.
pub(super) fn open(
    bridge: &Bridge,
    worker: String,
    inbound: Streaming<TelemetryEvent>,
) -> Result<ControlStream, Status> {
    let (control_tx, control_rx) = mpsc::channel(CONTROL_CAP);
    let (ended_tx, mut ended_rx) = watch::channel(false);
    let stream = ResourceArc::new(TelemetryStream {
        control: control_tx,
        inbox: Mutex::new(Inbox::default()),
        wake: Notify::new(),
        ended: ended_tx,
    });
    let announced = stream.clone();
    let sent = OwnedEnv::new().send_and_clear(&bridge.dispatcher, move |env| {
        (atoms::snakepit_telemetry_open(), announced, worker).encode(env)
    });
    if sent.is_err() {
        return Err(Status::unavailable(
            "the Elixir bridge's dispatcher is not running",
        ));
    }
    tokio::spawn(read(stream.clone(), inbound, bridge.shutdown.clone()));
    tokio::spawn(forward(stream));
    let mut shutdown = bridge.shutdown.clone();
    let until = async move {
        tokio::select! {
            _ = ended_rx.wait_for(|ended| *ended) => {}
            _ = shutdown.wait_for(|stopped| *stopped) => {}
        }
    };
    Ok(Box::pin(
        ReceiverStream::new(control_rx).map(Ok).take_until(until),
    ))
}

async fn read(
    stream: ResourceArc<TelemetryStream>,
    mut inbound: Streaming<TelemetryEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(event)) => stream.push(event),
                Ok(None) | Err(_) => break,
            },
            _ = shutdown.wait_for(|stopped| *stopped) => break,
        }
    }
    stream.end();
}

/// What the forwarder does next.
enum Step {
    Send(LocalPid, Vec<Entry>),
    Close(Option<LocalPid>),
    Wait,
}

async fn forward(stream: ResourceArc<TelemetryStream>) {
    loop {
        let step = {
            let mut inbox = stream.inbox.lock().unwrap_or_else(|p| p.into_inner());
            let drained = inbox.pending.is_empty() && !inbox.in_flight;
            match inbox.sink {
                // Never attached (the worker left first): nobody to tell.
                None if inbox.ended => Step::Close(None),
                Some(sink) if inbox.ended && drained => Step::Close(Some(sink)),
                Some(sink) if !inbox.in_flight && !inbox.pending.is_empty() => {
                    let n = inbox.pending.len().min(BATCH_MAX);
                    inbox.in_flight = true;
                    Step::Send(sink, inbox.pending.drain(..n).collect())
                }
                _ => Step::Wait,
            }
        };
        match step {
            Step::Wait => stream.wake.notified().await,
            Step::Close(sink) => {
                if let Some(sink) = sink {
                    let closed = stream.clone();
                    let _ = OwnedEnv::new().send_and_clear(&sink, move |env| {
                        (atoms::snakepit_telemetry_closed(), closed).encode(env)
                    });
                }
                return;
            }
            Step::Send(sink, entries) => {
                let target = stream.clone();
                let sent = OwnedEnv::new().send_and_clear(&sink, move |env| {
                    let (terms, rejected) = entry_terms(env, &entries);
                    let counts = target.with_inbox(|inbox| {
                        inbox.rejected += rejected;
                        (inbox.dropped, inbox.rejected)
                    });
                    let counts = map(
                        env,
                        &[
                            (atoms::dropped(), counts.0.encode(env)),
                            (atoms::rejected(), counts.1.encode(env)),
                        ],
                    );
                    (atoms::snakepit_telemetry(), target, terms, counts).encode(env)
                });
                if sent.is_err() {
                    // The process taking the events is gone: end the stream,
                    // so the worker reconnects and Elixir attaches anew.
                    stream.end();
                    return;
                }
            }
        }
    }
}

fn entry_terms<'a>(env: Env<'a>, entries: &[Entry]) -> (Vec<Term<'a>>, u64) {
    let mut rejected = 0;
    let terms = entries
        .iter()
        .filter_map(|entry| match entry {
            Entry::Ack(seq) => Some((atoms::ack(), *seq).encode(env)),
            Entry::Event(event) => {
                let term = event_term(env, event);
                rejected += u64::from(term.is_none());
                term
            }
        })
        .collect();
    (terms, rejected)
}

fn event_term<'a>(env: Env<'a>, event: &TelemetryEvent) -> Option<Term<'a>> {
    let parts = &event.event_parts;
    let parts_ok = !parts.is_empty()
        && parts.len() <= MAX_PARTS
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= MAX_PART_BYTES);
    if !parts_ok || event.name.len() > MAX_NAME_BYTES || event.correlation_id.len() > MAX_NAME_BYTES
    {
        return None;
    }
    let measurements = object(&event.measurements_json)?;
    let metadata = object(&event.metadata_json)?;
    Some(map(
        env,
        &[
            (atoms::parts(), parts.encode(env)),
            (atoms::name(), event.name.encode(env)),
            (
                atoms::measurements(),
                crate::json::to_term(env, &measurements),
            ),
            (atoms::metadata(), crate::json::to_term(env, &metadata)),
            (atoms::timestamp_ns(), event.timestamp_ns.encode(env)),
            (atoms::correlation_id(), event.correlation_id.encode(env)),
        ],
    ))
}

/// A JSON object (empty bytes: `{}`), or None for anything else (too
/// large, not JSON, nested past `max_nesting_depth`).
fn object(bytes: &[u8]) -> Option<Parsed> {
    if bytes.is_empty() {
        return Some(Parsed::new(Value::Object(Default::default()), 1));
    }
    if bytes.len() > MAX_JSON_BYTES {
        return None;
    }
    snakepit_core::json::parse(bytes)
        .ok()
        .filter(|value| value.is_object())
}

/// Names the process that takes this stream's events (and gets its close).
/// A batch in flight to an earlier process is given up (it went with that
/// process). `:ended` when the worker's side ended before: nothing will come.
#[rustler::nif]
fn telemetry_attach(stream: ResourceArc<TelemetryStream>, sink: LocalPid) -> Atom {
    stream.with_inbox(|inbox| {
        if inbox.ended {
            atoms::ended()
        } else {
            inbox.sink = Some(sink);
            inbox.in_flight = false;
            atoms::ok()
        }
    })
}

/// Elixir handled the batch in flight: the next one may leave.
#[rustler::nif]
fn telemetry_ack(stream: ResourceArc<TelemetryStream>) -> Atom {
    stream.with_inbox(|inbox| inbox.in_flight = false);
    atoms::ok()
}

/// Queues a control message for the worker: `{:toggle, bool}`,
/// `{:sampling, rate, [pattern]}`, `{:filter, [allow], [deny]}` or
/// `{:forwarding, bool}`; the worker acks `seq` once applied (0: no ack).
/// `{:error, {:closed | :busy, message}}` when it cannot be queued.
#[rustler::nif]
fn telemetry_control<'a>(
    stream: ResourceArc<TelemetryStream>,
    control: Term<'a>,
    seq: u64,
) -> NifResult<Atom> {
    let control = decode_control(control).ok_or_else(|| {
        NativeError::invalid(
            "expected {:toggle, bool}, {:sampling, rate, patterns}, {:filter, allow, deny} or \
             {:forwarding, bool}",
        )
    })?;
    let message = TelemetryControl {
        control: Some(control),
        seq,
    };
    let refused = match stream.control.try_send(message) {
        Ok(()) => return Ok(atoms::ok()),
        Err(mpsc::error::TrySendError::Full(_)) => NativeError::new(
            Kind::Busy,
            "the worker is not reading its telemetry controls",
        ),
        Err(mpsc::error::TrySendError::Closed(_)) => {
            NativeError::new(Kind::Closed, "the worker's telemetry stream has ended")
        }
    };
    Err(refused.into())
}

fn decode_control(term: Term) -> Option<Control> {
    if let Ok((tag, enabled)) = term.decode::<(Atom, bool)>() {
        if tag == atoms::toggle() {
            return Some(Control::Toggle(TelemetryToggle { enabled }));
        }
        if tag == atoms::forwarding() {
            return Some(Control::Forwarding(TelemetryForwarding { active: enabled }));
        }
        return None;
    }
    if let Ok((tag, rate, patterns)) = term.decode::<(Atom, f64, Vec<String>)>() {
        let valid = tag == atoms::sampling() && (0.0..=1.0).contains(&rate);
        return valid.then_some(Control::Sampling(TelemetrySamplingUpdate {
            sampling_rate: rate,
            event_patterns: patterns,
        }));
    }
    let (tag, allow, deny) = term.decode::<(Atom, Vec<String>, Vec<String>)>().ok()?;
    (tag == atoms::filter()).then_some(Control::Filter(TelemetryEventFilter { allow, deny }))
}

#[cfg(test)]
mod tests {
    //! The worker's telemetry envelopes: arbitrary bytes, nesting and sizes
    //! (see `test_shims.rs` on why this crate's tests link). Building the terms
    //! needs the BEAM; decoding does not.
    use super::*;
    use proptest::prelude::*;
    use prost::Message;

    const CASES: u32 = 512;

    /// An envelope whose batch holds an envelope whose batch holds ...,
    /// `depth` deep, written without building the nested messages.
    fn nested_batches(depth: usize) -> Vec<u8> {
        const BATCH_KEY: u8 = (10 << 3) | 2; // field 10, length-delimited
        let varint_len = |mut n: usize| {
            let mut len = 1;
            while n >= 0x80 {
                n >>= 7;
                len += 1;
            }
            len
        };
        let mut sizes = vec![0usize];
        for k in 1..=depth {
            let inner = sizes[k - 1];
            sizes.push(1 + varint_len(inner) + inner);
        }
        let mut out = Vec::with_capacity(sizes[depth]);
        for k in (1..=depth).rev() {
            out.push(BATCH_KEY);
            let mut n = sizes[k - 1];
            while n >= 0x80 {
                out.push((n as u8 & 0x7f) | 0x80);
                n >>= 7;
            }
            out.push(n as u8);
        }
        assert_eq!(out.len(), sizes[depth]);
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(CASES))]

        #[test]
        fn arbitrary_envelopes_decode_or_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(event) = TelemetryEvent::decode(bytes.as_slice()) {
                let _ = object(&event.measurements_json);
                let _ = object(&event.metadata_json);
            }
        }

        #[test]
        fn event_maps_are_objects_or_nothing(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Some(value) = object(&bytes) {
                prop_assert!(value.is_object());
            }
        }

        #[test]
        fn cut_envelopes_are_refused_or_shorter(parts in prop::collection::vec("[a-z]{1,8}", 1..4), cut in any::<prop::sample::Index>()) {
            let event = TelemetryEvent {
                event_parts: parts,
                measurements_json: br#"{"duration": 12}"#.to_vec(),
                ..Default::default()
            };
            let bytes = event.encode_to_vec();
            prop_assert_eq!(TelemetryEvent::decode(bytes.as_slice()).unwrap(), event);
            let _ = TelemetryEvent::decode(&bytes[..cut.index(bytes.len())]);
        }
    }

    #[test]
    fn a_hundred_thousand_nested_batches_are_refused_without_recursion() {
        // prost stops at its recursion limit (100) long before the stack.
        assert!(TelemetryEvent::decode(nested_batches(100_000).as_slice()).is_err());
        // One level, as workers send, decodes.
        let one = TelemetryEvent::decode(nested_batches(1).as_slice()).unwrap();
        assert_eq!(one.batch.len(), 1);
    }

    #[test]
    fn deep_or_large_event_maps_are_rejected() {
        let deep = [&b"{\"a\":"[..]].repeat(30_000).concat();
        assert!(object(&deep).is_none());
        let large = format!("{{\"a\": \"{}\"}}", "x".repeat(MAX_JSON_BYTES));
        assert!(object(large.as_bytes()).is_none());
        assert!(object(b"[1]").is_none());
        assert!(object(b"").unwrap().is_object());
        assert!(object(br#"{"n": 1}"#).unwrap().is_object());
    }
}
