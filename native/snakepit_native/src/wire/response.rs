//! Turning worker replies and gRPC failures into the payloads the Elixir
//! side matches on.

use rustler::{Atom, Encoder};
use tonic::{Code, Status};

use super::pb::{ExecuteToolResponse, ToolChunk, ToolError};
use crate::atoms;
use crate::error::NifError;
use crate::json;
use crate::reply::{error_payload, Payload};

pub fn code_atom(code: Code) -> Atom {
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

/// `{:error, {code, message}}` with the gRPC status code's name.
pub fn status(status: Status) -> Payload {
    error_payload(NifError::new(
        code_atom(status.code()),
        status.message().to_string(),
    ))
}

/// `{:error, {:timeout, message}}`: the call's deadline passed.
pub fn timeout() -> Payload {
    error_payload(NifError::new(
        atoms::timeout(),
        "the worker did not answer by the call's deadline",
    ))
}

/// `{:error, {:tool_error, type, message, traceback, kind}}`
pub fn tool_error(err: ToolError) -> Payload {
    Box::new(move |env| {
        let detail = (
            atoms::tool_error(),
            err.r#type.as_str(),
            err.message.as_str(),
            err.traceback.as_str(),
            err.kind.as_str(),
        );
        (atoms::error(), detail).encode(env)
    })
}

fn binary_payload(bytes: Vec<u8>, tag: Atom) -> Payload {
    Box::new(move |env| (tag, crate::reply::binary(env, &bytes)).encode(env))
}

/// The error of a reply whose JSON cannot become a term: past a limit
/// (`:limit_exceeded`, naming it and the path) or not JSON at all.
fn unreadable(err: json::Error) -> Payload {
    let kind = if err.is_limit() {
        atoms::limit_exceeded()
    } else {
        atoms::invalid_json()
    };
    error_payload(NifError::new(kind, err.message()))
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
        Ok(value) => match json::reply_term(&resp.result_json, value) {
            Ok(term) => Box::new(move |env| (atoms::ok(), term(env)).encode(env)),
            // A bad zero-copy ref in the reply: refused, the worker is fine.
            Err(msg) => error_payload(NifError::invalid(msg)),
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
        Ok(value) => match json::reply_term(&chunk.data, value) {
            Ok(term) => Ok(Box::new(move |env| {
                let data = (atoms::json(), term(env));
                (atoms::chunk(), data, is_final).encode(env)
            })),
            Err(msg) => Err(error_payload(NifError::invalid(msg))),
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
