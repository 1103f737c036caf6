//! Turning worker replies and failed calls into the payloads the Elixir
//! side matches on (both transports send the same shapes).

use rustler::{Atom, Encoder};
use snakepit_core::json::Parsed;
use tonic::{Code, Status};

use super::pb::{ExecuteToolResponse, ToolChunk, ToolError};
use crate::atoms;
use crate::error::{Kind, NativeError};
use crate::json;
use crate::reply::{error_payload, Payload};
use crate::zero_copy::{marker, refs};

/// `{:error, {code, message}}` with the gRPC status code's name.
pub fn status(status: Status) -> Payload {
    error_payload(NativeError::status(
        status.code(),
        status.message().to_string(),
    ))
}

/// `{:error, {:timeout, message}}`: the call's deadline passed.
pub fn timeout() -> Payload {
    error_payload(NativeError::new(
        Kind::Timeout,
        "the worker did not answer by the call's deadline",
    ))
}

/// `{:error, {:internal, message}}`: the worker sent bytes that are not a
/// reply.
pub fn malformed(what: &str) -> Payload {
    error_payload(NativeError::status(
        Code::Internal,
        format!("malformed reply from the worker: {what}"),
    ))
}

/// `{:error, {:tool_error, type, message, traceback, kind}}`
pub fn tool_error(err: ToolError) -> Payload {
    error_payload(NativeError::Tool {
        r#type: err.r#type,
        message: err.message,
        traceback: err.traceback,
        kind: err.kind,
    })
}

fn binary_payload(bytes: Vec<u8>, tag: Atom) -> Payload {
    Box::new(move |env| (tag, crate::reply::binary(env, &bytes)).encode(env))
}

/// The error of a reply whose JSON cannot become a term: past a limit
/// (`:limit_exceeded`, naming it and the path) or not JSON at all.
fn unreadable(err: json::Error) -> Payload {
    let kind = if err.is_limit() {
        Kind::LimitExceeded
    } else {
        Kind::InvalidJson
    };
    error_payload(NativeError::new(kind, err.message()))
}

/// A worker's JSON reply as a term builder: its zero-copy regions are
/// adopted now (off the schedulers), the term is built in the reply env.
fn reply_term(raw: &[u8], value: Parsed) -> Result<Payload, String> {
    // Only a reply that names the marker key can hold a region: most do not,
    // and a byte search is cheaper than walking the parsed value.
    let regions = if marker::mentions_marker(raw) {
        marker::adopt_all(&value)?
    } else {
        Vec::new()
    };
    Ok(Box::new(move |env| {
        refs::with_regions(env, &value, regions)
    }))
}

/// `{:ok, term}` for JSON results, `{:ok, binary}` for bytes results.
pub fn execute(resp: ExecuteToolResponse) -> Payload {
    if !resp.success {
        return tool_error(resp.error.unwrap_or_default());
    }
    if resp.has_binary_result {
        return binary_payload(resp.binary_result, atoms::ok());
    }
    match json::parse(&resp.result_json) {
        Ok(value) => match reply_term(&resp.result_json, value) {
            Ok(term) => Box::new(move |env| (atoms::ok(), term(env)).encode(env)),
            // A bad zero-copy ref in the reply: refused, the worker is fine.
            Err(msg) => error_payload(NativeError::invalid(msg)),
        },
        Err(err) => unreadable(err),
    }
}

/// `{:chunk, {:json, term} | {:raw, binary} | nil, is_final}`, or (`Err`)
/// the error that ends the stream: the tool's own, or a chunk that cannot
/// be taken (nested past `max_nesting_depth`, a bad zero-copy ref). Bytes
/// that are not JSON are a raw chunk.
pub fn chunk(chunk: ToolChunk) -> Result<Payload, Payload> {
    if let Some(err) = chunk.error {
        return Err(tool_error(err));
    }
    let is_final = chunk.is_final;
    if chunk.data.is_empty() {
        return Ok(Box::new(move |env| {
            (atoms::chunk(), atoms::nil(), is_final).encode(env)
        }));
    }
    match json::parse(&chunk.data) {
        Ok(value) => match reply_term(&chunk.data, value) {
            Ok(term) => Ok(Box::new(move |env| {
                let data = (atoms::json(), term(env));
                (atoms::chunk(), data, is_final).encode(env)
            })),
            Err(msg) => Err(error_payload(NativeError::invalid(msg))),
        },
        Err(err) if err.is_limit() => Err(unreadable(err)),
        Err(_) => {
            let bytes = chunk.data;
            Ok(Box::new(move |env| {
                let raw = binary_payload(bytes, atoms::raw())(env);
                (atoms::chunk(), raw, is_final).encode(env)
            }))
        }
    }
}

pub fn done() -> Payload {
    Box::new(|env| atoms::done().encode(env))
}
