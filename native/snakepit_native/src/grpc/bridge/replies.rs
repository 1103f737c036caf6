//! Elixir's replies, read into each RPC's response. Every reply is
//! checked here, off the schedulers' hot path; a reply of the wrong shape
//! answers the RPC with an error naming the problem.

use std::collections::HashMap;

use rustler::{Atom, Binary, Term};
use tonic::Status;

use super::call::{BridgeCall, Reply, Rpc};
use crate::decode::{field, string, string_keyed};
use crate::wire::pb::{
    CleanupSessionResponse, ExecuteToolResponse, GetExposedElixirToolsResponse, GetSessionResponse,
    HeartbeatResponse, InitializeSessionResponse, ParameterSpec, RegisterToolsResponse, ToolError,
    ToolSpec,
};
use crate::{atoms, json};

/// A failed tool call, as the `ExecuteToolResponse` Python receives.
pub(super) fn tool_error(r#type: &str, message: String, kind: &str) -> ExecuteToolResponse {
    ExecuteToolResponse {
        success: false,
        error: Some(ToolError {
            r#type: r#type.to_string(),
            message,
            traceback: String::new(),
            kind: kind.to_string(),
        }),
        ..Default::default()
    }
}

fn need(value: Option<Term<'_>>) -> Result<Term<'_>, String> {
    value.ok_or_else(|| "the reply needs a value".to_string())
}

fn tagged<'a>(reply: Term<'a>) -> Result<(Atom, Option<Term<'a>>), String> {
    if let Ok(tag) = reply.decode::<Atom>() {
        return Ok((tag, None));
    }
    match rustler::types::tuple::get_tuple(reply) {
        Ok(items) if items.len() == 2 => {
            let tag = items[0]
                .decode::<Atom>()
                .map_err(|_| "a reply must be tagged with an atom".to_string())?;
            Ok((tag, Some(items[1])))
        }
        _ => Err("a reply must be {:ok, value}, {:error, reason} or an atom".into()),
    }
}

fn spec_of(term: Term) -> Result<ToolSpec, String> {
    let what = "a tool spec";
    let parameters: Vec<Term> = field(term, "parameters", what)?
        .decode()
        .map_err(|_| "parameters must be a list".to_string())?;
    let parameters = parameters
        .into_iter()
        .map(|p| {
            let what = "a parameter";
            let default_json = match p.map_get(atoms::default()) {
                Ok(value) => String::from_utf8(json::encode(value).map_err(|e| e.message())?)
                    .map_err(|_| "default is not UTF-8".to_string())?,
                Err(_) => String::new(),
            };
            Ok(ParameterSpec {
                name: string(field(p, "name", what)?, "parameter name")?,
                r#type: string(field(p, "type", what)?, "parameter type")?,
                required: field(p, "required", what)?
                    .decode()
                    .map_err(|_| "required must be a boolean".to_string())?,
                default_json,
                description: string(field(p, "description", what)?, "parameter description")?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(ToolSpec {
        name: string(field(term, "name", what)?, "tool name")?,
        description: string(field(term, "description", what)?, "description")?,
        parameters,
        supports_streaming: field(term, "supports_streaming", what)?
            .decode()
            .map_err(|_| "supports_streaming must be a boolean".to_string())?,
        metadata: field(term, "metadata", what)?
            .decode()
            .map_err(|_| "metadata must map strings to strings".to_string())?,
    })
}

fn specs_of(term: Term) -> Result<Vec<ToolSpec>, String> {
    let items: Vec<Term> = term
        .decode()
        .map_err(|_| "tools must be a list".to_string())?;
    items.into_iter().map(spec_of).collect()
}

fn error_message(reason: Option<Term>) -> String {
    match reason {
        Some(t) => t
            .decode::<String>()
            .unwrap_or_else(|_| "Elixir reported an error".into()),
        None => "Elixir reported an error".into(),
    }
}

fn execute_reply(
    label: &str,
    tag: Atom,
    value: Option<Term>,
) -> Result<ExecuteToolResponse, String> {
    let value = value.ok_or("an execute reply needs a value")?;
    if tag == atoms::ok() {
        match json::encode(value) {
            Ok(bytes) => Ok(ExecuteToolResponse {
                success: true,
                result_json: bytes,
                ..Default::default()
            }),
            Err(e) => Ok(tool_error(
                "SerializationError",
                format!(
                    "the result of Elixir tool '{label}' cannot be sent as JSON: {}",
                    e.message()
                ),
                "serialization",
            )),
        }
    } else if tag == atoms::binary() {
        let bin: Binary = value
            .decode()
            .map_err(|_| "{:binary, value} needs a binary".to_string())?;
        Ok(ExecuteToolResponse {
            success: true,
            binary_result: bin.as_slice().to_vec(),
            has_binary_result: true,
            ..Default::default()
        })
    } else if tag == atoms::error() {
        let what = "an error reply";
        Ok(ExecuteToolResponse {
            success: false,
            error: Some(ToolError {
                r#type: string(field(value, "type", what)?, "error type")?,
                message: string(field(value, "message", what)?, "error message")?,
                traceback: string(field(value, "traceback", what)?, "traceback")?,
                kind: string(field(value, "kind", what)?, "error kind")?,
            }),
            ..Default::default()
        })
    } else {
        Err("an execute reply is {:ok, term}, {:binary, binary} or {:error, error_map}".into())
    }
}

/// Turns Elixir's reply into the RPC's response.
///
/// | rpc | reply |
/// |---|---|
/// | register_tools | `{:ok, %{name => id}}` or `{:error, message}` |
/// | get_exposed_elixir_tools | `{:ok, [spec]}` |
/// | execute_elixir_tool | `{:ok, term}` (sent as JSON), `{:binary, binary}`, `{:error, %{type, message, traceback, kind}}` |
/// | initialize_session | `{:ok, [spec]}` or `{:error, message}` |
/// | cleanup_session | `{:ok, resources_cleaned}` |
/// | get_session | `{:ok, %{metadata, created_at_ms, last_accessed_ms, tool_count}}` or `:not_found` |
/// | heartbeat | `:ok` |
///
/// Any rpc also takes `{:error, message}`, answered as an `internal` status
/// where the response has no error field.
pub(super) fn decode_reply(call: &BridgeCall, reply: Term) -> Result<Reply, String> {
    let (tag, value) = tagged(reply)?;
    let ok = tag == atoms::ok();
    let is_error = tag == atoms::error();
    if is_error
        && !matches!(
            call.rpc,
            Rpc::ExecuteElixirTool | Rpc::RegisterTools | Rpc::InitializeSession
        )
    {
        return Ok(Reply::Failed(Status::internal(error_message(value))));
    }
    Ok(match call.rpc {
        Rpc::ExecuteElixirTool => Reply::Execute(execute_reply(&call.label, tag, value)?),
        Rpc::RegisterTools if ok => Reply::RegisterTools(RegisterToolsResponse {
            success: true,
            tool_ids: string_keyed(need(value)?, "tool ids", |v| v.decode::<String>().ok())?,
            error_message: String::new(),
        }),
        Rpc::RegisterTools if is_error => Reply::RegisterTools(RegisterToolsResponse {
            success: false,
            tool_ids: HashMap::new(),
            error_message: error_message(value),
        }),
        Rpc::GetExposedElixirTools if ok => Reply::ExposedTools(GetExposedElixirToolsResponse {
            tools: specs_of(need(value)?)?,
        }),
        Rpc::InitializeSession if ok => Reply::InitializeSession(InitializeSessionResponse {
            success: true,
            error_message: String::new(),
            tools: specs_of(need(value)?)?,
        }),
        Rpc::InitializeSession if is_error => Reply::InitializeSession(InitializeSessionResponse {
            success: false,
            error_message: error_message(value),
            tools: vec![],
        }),
        Rpc::CleanupSession if ok => Reply::CleanupSession(CleanupSessionResponse {
            success: true,
            resources_cleaned: need(value)?
                .decode()
                .map_err(|_| "resources_cleaned must be an integer".to_string())?,
        }),
        Rpc::GetSession if tag == atoms::not_found() => Reply::GetSession(GetSessionResponse {
            found: false,
            ..Default::default()
        }),
        Rpc::GetSession if ok => {
            let info = need(value)?;
            let what = "session info";
            let metadata = json::encode(field(info, "metadata", what)?)
                .map_err(|e| format!("session metadata: {}", e.message()))?;
            let int = |key: &str| -> Result<i64, String> {
                field(info, key, what)?
                    .decode::<i64>()
                    .map_err(|_| format!("{key} must be an integer"))
            };
            Reply::GetSession(GetSessionResponse {
                found: true,
                session_id: String::new(),
                metadata_json: metadata,
                created_at_ms: int("created_at_ms")?,
                last_accessed_ms: int("last_accessed_ms")?,
                tool_count: int("tool_count")? as i32,
            })
        }
        Rpc::Heartbeat if ok => Reply::Heartbeat(HeartbeatResponse {
            ok: true,
            timestamp_us: crate::grpc::now_us(),
            status: "ok".into(),
        }),
        _ => return Err(format!("unexpected reply for {:?}", call.rpc)),
    })
}

/// What the RPC answers when Elixir's reply could not be read.
pub(super) fn fallback(call: &BridgeCall, message: &str) -> Reply {
    let text = format!("Elixir sent an unreadable reply: {message}");
    match call.rpc {
        Rpc::ExecuteElixirTool => Reply::Execute(tool_error("ElixirBridgeError", text, "bridge")),
        _ => Reply::Failed(Status::internal(text)),
    }
}
