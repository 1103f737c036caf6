//! The request a call sends, built from the NIF's arguments: the tool, its
//! arguments as JSON and the call options. Everything is checked here,
//! before anything is sent, and a bad call is answered at once.

use std::collections::HashMap;
use std::time::Duration;

use rustler::types::map::MapIterator;
use rustler::{Binary, Term};

use super::limits::max_message_bytes;
use super::pb::ExecuteToolRequest;
use crate::atoms;
use crate::decode::{opt, string_keyed};
use crate::error::{Kind, NativeError};
use crate::json;

/// What a caller over `max_message_bytes` is told to do instead.
const ZERO_COPY_HINT: &str =
    "pass large arrays and tables as Snakepit.ZeroCopy references instead of bytes";

/// Chunks a stream may send ahead of the consumer's acknowledgements.
const DEFAULT_WINDOW: u32 = 32;

/// The per-call options, from the Elixir map `%{session_id:, timeout_ms:,
/// binary_parameters:, metadata:, request_id:}` (every key optional;
/// streams also read `window:`).
struct CallOpts {
    session_id: String,
    timeout_ms: u64,
    binary_parameters: HashMap<String, Vec<u8>>,
    metadata: HashMap<String, String>,
    request_id: String,
}

/// An optional map option: absent is empty.
fn opt_map<'a, V>(
    term: Option<Term<'a>>,
    key: &str,
    value: impl Fn(Term<'a>) -> Option<V>,
) -> Result<HashMap<String, V>, String> {
    match term {
        Some(term) => string_keyed(term, &format!("option {key}"), value),
        None => Ok(HashMap::new()),
    }
}

impl CallOpts {
    fn decode(term: Term) -> Result<Self, String> {
        if !term.is_map() {
            return Err("call options must be a map".into());
        }
        let binaries = opt(term, atoms::binary_parameters(), "binary_parameters")?;
        // Their sizes are checked before any is copied.
        if let Some(map) = binaries {
            let total: usize = MapIterator::new(map)
                .into_iter()
                .flatten()
                .filter_map(|(_, v)| v.decode::<Binary>().ok())
                .map(|b| b.len())
                .sum();
            let max = max_message_bytes();
            if total > max {
                return Err(format!(
                    "the call is larger than max_message_bytes ({max}): its binary_parameters \
                     hold {total} bytes; {ZERO_COPY_HINT}"
                ));
            }
        }
        let binaries = opt_map(binaries, "binary_parameters", |v| {
            v.decode::<Binary>().ok().map(|b| b.as_slice().to_vec())
        })?;
        let metadata = opt_map(opt(term, atoms::metadata(), "metadata")?, "metadata", |v| {
            v.decode().ok()
        })?;
        Ok(CallOpts {
            session_id: opt(term, atoms::session_id(), "session_id")?.unwrap_or_default(),
            timeout_ms: opt(term, atoms::timeout_ms(), "timeout_ms")?.unwrap_or(0),
            binary_parameters: binaries,
            metadata,
            request_id: opt(term, atoms::request_id(), "request_id")?.unwrap_or_default(),
        })
    }

    fn timeout(&self) -> Option<Duration> {
        (self.timeout_ms > 0).then(|| Duration::from_millis(self.timeout_ms))
    }
}

/// Encodes and checks everything before any task is spawned, so bad input
/// is answered synchronously and nothing is sent.
pub fn build_request(
    tool: String,
    arguments: Term,
    opts: Term,
) -> Result<(ExecuteToolRequest, Option<Duration>), NativeError> {
    let opts = CallOpts::decode(opts).map_err(NativeError::invalid)?;
    let max = max_message_bytes();
    let binaries: usize = opts
        .binary_parameters
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    // Encoding stops as soon as the arguments cannot fit beside the binaries.
    let args_json = json::encode_within(arguments, max.saturating_sub(binaries)).map_err(|e| {
        if e.is_too_large() {
            return NativeError::invalid(format!("the call is {}; {ZERO_COPY_HINT}", e.message()));
        }
        // `:struct_value`: Elixir converts the structs it can and retries.
        let kind = if e.is_struct {
            Kind::StructValue
        } else {
            Kind::InvalidArgument
        };
        NativeError::new(kind, e.message())
    })?;
    let timeout = opts.timeout();
    let req = ExecuteToolRequest {
        session_id: opts.session_id,
        tool_name: tool,
        args_json,
        binary_parameters: opts.binary_parameters,
        metadata: opts.metadata,
        timeout_ms: opts.timeout_ms as i64,
        request_id: opts.request_id,
    };
    // Refused here, before anything is sent, naming the limit.
    let len = prost::Message::encoded_len(&req);
    if len > max {
        return Err(NativeError::invalid(format!(
            "the call is {len} bytes, more than max_message_bytes ({max}); {ZERO_COPY_HINT}"
        )));
    }
    Ok((req, timeout))
}

/// A stream's window: option `:window`, else `DEFAULT_WINDOW`; at least 1.
pub fn window(opts: Term) -> Result<u32, NativeError> {
    let window: Option<u32> = opt(opts, atoms::window(), "window").map_err(NativeError::invalid)?;
    Ok(window.unwrap_or(DEFAULT_WINDOW).max(1))
}
