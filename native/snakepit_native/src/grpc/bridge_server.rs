//! The ElixirBridge gRPC server: Python workers call back into the BEAM
//! through it (tool registration, Elixir tools, sessions, heartbeats).
//!
//! Each RPC becomes one message to the dispatcher pid,
//! `{:snakepit_bridge, call, rpc, request}`, where `call` is a resource
//! holding the RPC's reply slot. The RPC then waits, inside tokio, until
//! Elixir answers with `bridge_reply(call, reply)`, the call's time is up,
//! Elixir drops the call unanswered, or the server shuts down. A scheduler
//! never waits on anything here.
//!
//! Request shapes (maps with atom keys, values from the wire):
//!
//! | rpc | request |
//! |---|---|
//! | `:register_tools` | `%{session_id, worker_id, tools: [spec]}` |
//! | `:get_exposed_elixir_tools` | `%{session_id}` |
//! | `:execute_elixir_tool` | `%{session_id, tool_name, args, binary_parameters, metadata, timeout_ms, worker_id}` |
//! | `:initialize_session` | `%{session_id, config}` |
//! | `:cleanup_session` | `%{session_id, force}` |
//! | `:get_session` | `%{session_id}` |
//! | `:heartbeat` | `%{worker_id, session_id, timestamp_us}` |
//!
//! A `spec` is `%{name, description, parameters, supports_streaming,
//! metadata}`; a parameter `%{name, type, required, description}` plus
//! `default` when the tool declares one. Replies are documented on
//! `decode_reply`.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::FutureExt;
use rustler::types::map::MapIterator;
use rustler::{Atom, Binary, Encoder, Env, LocalPid, OwnedEnv, ResourceArc, Term};
use serde_json::Value;
use tokio::sync::{oneshot, watch};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use snakepit_core::bridge::{self as core, Listen, SocketFile};

use super::auth::RequireSecret;
use super::channel::max_message_bytes;
use super::pb::elixir_bridge_server::{ElixirBridge, ElixirBridgeServer};
use super::pb::{
    CleanupSessionRequest, CleanupSessionResponse, ExecuteElixirToolRequest, ExecuteToolResponse,
    GetExposedElixirToolsRequest, GetExposedElixirToolsResponse, GetSessionRequest,
    GetSessionResponse, HeartbeatRequest, HeartbeatResponse, InitializeSessionRequest,
    InitializeSessionResponse, ParameterSpec, RegisterToolsRequest, RegisterToolsResponse,
    TelemetryControl, TelemetryEvent, ToolError, ToolSpec,
};
use crate::atoms;
use crate::json;

/// The gRPC metadata key a worker puts its id under.
const WORKER_ID_HEADER: &str = "x-snakepit-worker-id";

// ------------------------------------------------------------------ handles

/// A running bridge server. Dropping the last reference (or `bridge_stop`)
/// shuts it down: pending calls are answered `unavailable` and the socket
/// file is removed.
pub struct BridgeHandle {
    shutdown: watch::Sender<bool>,
    socket: Mutex<Option<SocketFile>>,
}

#[rustler::resource_impl]
impl rustler::Resource for BridgeHandle {}

impl BridgeHandle {
    fn stop(&self) {
        let _ = self.shutdown.send(true);
        if let Ok(mut socket) = self.socket.lock() {
            if let Some(file) = socket.take() {
                file.remove();
            }
        }
    }
}

impl Drop for BridgeHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

// watch::Sender holds no state a caught panic could leave half-updated.
impl std::panic::RefUnwindSafe for BridgeHandle {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rpc {
    RegisterTools,
    GetExposedElixirTools,
    ExecuteElixirTool,
    InitializeSession,
    CleanupSession,
    GetSession,
    Heartbeat,
}

impl Rpc {
    fn atom(self) -> Atom {
        match self {
            Rpc::RegisterTools => atoms::register_tools(),
            Rpc::GetExposedElixirTools => atoms::get_exposed_elixir_tools(),
            Rpc::ExecuteElixirTool => atoms::execute_elixir_tool(),
            Rpc::InitializeSession => atoms::initialize_session(),
            Rpc::CleanupSession => atoms::cleanup_session(),
            Rpc::GetSession => atoms::get_session(),
            Rpc::Heartbeat => atoms::heartbeat(),
        }
    }
}

/// What Elixir answered, already turned into the RPC's response.
enum Reply {
    RegisterTools(RegisterToolsResponse),
    ExposedTools(GetExposedElixirToolsResponse),
    Execute(ExecuteToolResponse),
    InitializeSession(InitializeSessionResponse),
    CleanupSession(CleanupSessionResponse),
    GetSession(GetSessionResponse),
    Heartbeat(HeartbeatResponse),
    Failed(Status),
}

/// One RPC waiting for Elixir. Replying takes the sender, so a call is
/// answered at most once; dropping the resource unanswered drops the
/// sender, which the waiting RPC sees at once.
pub struct BridgeCall {
    rpc: Rpc,
    /// The tool's name for `execute_elixir_tool`, for error messages.
    label: String,
    reply: Mutex<Option<oneshot::Sender<Reply>>>,
}

#[rustler::resource_impl]
impl rustler::Resource for BridgeCall {}

// ------------------------------------------------------------------ server

#[derive(Clone)]
struct Bridge {
    dispatcher: LocalPid,
    default_timeout: Duration,
    shutdown: watch::Receiver<bool>,
}

type RequestBuilder = Box<dyn for<'a> FnOnce(Env<'a>) -> Term<'a> + Send>;

fn worker_id<T>(request: &Request<T>) -> String {
    request
        .metadata()
        .get(WORKER_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Runs a handler, turning a panic into an `internal` status.
async fn guarded<T, F>(fut: F) -> Result<Response<T>, Status>
where
    F: Future<Output = Result<T, Status>>,
{
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(result) => result.map(Response::new),
        Err(panic) => Err(Status::internal(format!(
            "Elixir bridge failed: {}",
            crate::reply::panic_message(panic, "panic")
        ))),
    }
}

impl Bridge {
    /// Sends the call to the dispatcher and waits for its answer.
    async fn dispatch(
        &self,
        rpc: Rpc,
        label: String,
        wait: Duration,
        build: RequestBuilder,
    ) -> Reply {
        if *self.shutdown.borrow() {
            return Reply::Failed(Status::unavailable("the Elixir bridge is shutting down"));
        }
        let (tx, rx) = oneshot::channel();
        let call = ResourceArc::new(BridgeCall {
            rpc,
            label,
            reply: Mutex::new(Some(tx)),
        });
        let sent = OwnedEnv::new().send_and_clear(&self.dispatcher, move |env| {
            (atoms::snakepit_bridge(), call, rpc.atom(), build(env)).encode(env)
        });
        if sent.is_err() {
            return Reply::Failed(Status::unavailable(
                "the Elixir bridge's dispatcher is not running",
            ));
        }
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            reply = rx => reply.unwrap_or_else(|_| {
                Reply::Failed(Status::unavailable("Elixir dropped the call without answering"))
            }),
            _ = tokio::time::sleep(wait) => Reply::Failed(Status::deadline_exceeded(format!(
                "Elixir did not answer within {} ms", wait.as_millis()
            ))),
            _ = shutdown.wait_for(|stopped| *stopped) => {
                Reply::Failed(Status::unavailable("the Elixir bridge is shutting down"))
            }
        }
    }
}

impl Bridge {
    /// A call with the default budget whose reply must be of one kind,
    /// which `pick` takes out; any other reply is a failure.
    async fn control<T>(
        &self,
        rpc: Rpc,
        build: RequestBuilder,
        pick: impl FnOnce(Reply) -> Option<T>,
    ) -> Result<T, Status> {
        let wait = core::reply_wait(0, self.default_timeout);
        match self.dispatch(rpc, String::new(), wait, build).await {
            Reply::Failed(status) => Err(status),
            reply => pick(reply).ok_or_else(wrong_reply),
        }
    }
}

/// The worker id of a request: its own field, else the worker-id header.
fn request_worker(field: String, header: String) -> String {
    if field.is_empty() {
        header
    } else {
        field
    }
}

fn unexpected(reply: Reply) -> Status {
    match reply {
        Reply::Failed(status) => status,
        _ => wrong_reply(),
    }
}

fn wrong_reply() -> Status {
    Status::internal("Elixir answered with the reply of another call")
}

fn tool_error(r#type: &str, message: String, kind: &str) -> ExecuteToolResponse {
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

#[tonic::async_trait]
impl ElixirBridge for Bridge {
    async fn register_tools(
        &self,
        request: Request<RegisterToolsRequest>,
    ) -> Result<Response<RegisterToolsResponse>, Status> {
        guarded(async {
            let header_worker = worker_id(&request);
            let req = request.into_inner();
            let worker = request_worker(req.worker_id, header_worker);
            let session_id = req.session_id;
            let tools = req.tools;
            let build: RequestBuilder = Box::new(move |env| {
                let specs: Vec<Term> = tools.iter().map(|t| spec_term(env, t)).collect();
                map(
                    env,
                    &[
                        (atoms::session_id(), session_id.encode(env)),
                        (atoms::worker_id(), worker.encode(env)),
                        (atoms::tools(), specs.encode(env)),
                    ],
                )
            });
            self.control(Rpc::RegisterTools, build, |r| match r {
                Reply::RegisterTools(resp) => Some(resp),
                _ => None,
            })
            .await
        })
        .await
    }

    async fn get_exposed_elixir_tools(
        &self,
        request: Request<GetExposedElixirToolsRequest>,
    ) -> Result<Response<GetExposedElixirToolsResponse>, Status> {
        guarded(async {
            let session_id = request.into_inner().session_id;
            let build: RequestBuilder =
                Box::new(move |env| map(env, &[(atoms::session_id(), session_id.encode(env))]));
            self.control(Rpc::GetExposedElixirTools, build, |r| match r {
                Reply::ExposedTools(resp) => Some(resp),
                _ => None,
            })
            .await
        })
        .await
    }

    async fn execute_elixir_tool(
        &self,
        request: Request<ExecuteElixirToolRequest>,
    ) -> Result<Response<ExecuteToolResponse>, Status> {
        guarded(async {
            let started = Instant::now();
            let worker = worker_id(&request);
            let req = request.into_inner();
            let tool = req.tool_name.clone();
            if tool.is_empty() {
                return Ok(tool_error(
                    "ToolNotFoundError",
                    "no Elixir tool name given".into(),
                    "unknown_tool",
                ));
            }
            // Decoded here, off the schedulers; bad input never reaches Elixir.
            let args = match core::decode_args(&req.args_json) {
                Ok(args) => Value::Object(args),
                Err(msg) => {
                    return Ok(tool_error(
                        "SerializationError",
                        format!("Elixir tool '{tool}': {msg}"),
                        "serialization",
                    ))
                }
            };
            let timeout_ms = req.timeout_ms;
            let session_id = req.session_id;
            let binaries = req.binary_parameters;
            let metadata = req.metadata;
            let name = req.tool_name;
            let build: RequestBuilder = Box::new(move |env| {
                map(
                    env,
                    &[
                        (atoms::session_id(), session_id.encode(env)),
                        (atoms::tool_name(), name.encode(env)),
                        (atoms::args(), json::to_term(env, &args)),
                        (atoms::binary_parameters(), binary_map(env, &binaries)),
                        (atoms::metadata(), metadata.encode(env)),
                        (atoms::timeout_ms(), timeout_ms.max(0).encode(env)),
                        (atoms::worker_id(), worker.encode(env)),
                    ],
                )
            });
            let wait = core::reply_wait(timeout_ms, self.default_timeout);
            let mut resp = match self
                .dispatch(Rpc::ExecuteElixirTool, tool.clone(), wait, build)
                .await
            {
                Reply::Execute(resp) => resp,
                Reply::Failed(status) if status.code() == tonic::Code::DeadlineExceeded => {
                    tool_error(
                        "TimeoutError",
                        format!("Elixir tool '{tool}': {}", status.message()),
                        "timeout",
                    )
                }
                Reply::Failed(status) => tool_error(
                    "ElixirBridgeError",
                    format!("Elixir tool '{tool}': {}", status.message()),
                    "bridge",
                ),
                _ => tool_error(
                    "ElixirBridgeError",
                    "Elixir answered with the reply of another call".into(),
                    "bridge",
                ),
            };
            resp.execution_time_us = started.elapsed().as_micros() as i64;
            Ok(resp)
        })
        .await
    }

    async fn initialize_session(
        &self,
        request: Request<InitializeSessionRequest>,
    ) -> Result<Response<InitializeSessionResponse>, Status> {
        guarded(async {
            let req = request.into_inner();
            let config = match core::decode_optional(&req.config_json) {
                Ok(config) => config,
                Err(msg) => {
                    return Ok(InitializeSessionResponse {
                        success: false,
                        error_message: format!("config_json is {msg}"),
                        tools: vec![],
                    })
                }
            };
            let session_id = req.session_id;
            let build: RequestBuilder = Box::new(move |env| {
                map(
                    env,
                    &[
                        (atoms::session_id(), session_id.encode(env)),
                        (atoms::config(), json::to_term(env, &config)),
                    ],
                )
            });
            self.control(Rpc::InitializeSession, build, |r| match r {
                Reply::InitializeSession(resp) => Some(resp),
                _ => None,
            })
            .await
        })
        .await
    }

    async fn cleanup_session(
        &self,
        request: Request<CleanupSessionRequest>,
    ) -> Result<Response<CleanupSessionResponse>, Status> {
        guarded(async {
            let req = request.into_inner();
            let build: RequestBuilder = Box::new(move |env| {
                map(
                    env,
                    &[
                        (atoms::session_id(), req.session_id.encode(env)),
                        (atoms::force(), req.force.encode(env)),
                    ],
                )
            });
            self.control(Rpc::CleanupSession, build, |r| match r {
                Reply::CleanupSession(resp) => Some(resp),
                _ => None,
            })
            .await
        })
        .await
    }

    async fn get_session(
        &self,
        request: Request<GetSessionRequest>,
    ) -> Result<Response<GetSessionResponse>, Status> {
        guarded(async {
            let session_id = request.into_inner().session_id;
            let echoed = session_id.clone();
            let build: RequestBuilder =
                Box::new(move |env| map(env, &[(atoms::session_id(), session_id.encode(env))]));
            let wait = core::reply_wait(0, self.default_timeout);
            match self
                .dispatch(Rpc::GetSession, String::new(), wait, build)
                .await
            {
                Reply::GetSession(mut resp) => {
                    resp.session_id = echoed;
                    Ok(resp)
                }
                other => Err(unexpected(other)),
            }
        })
        .await
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        guarded(async {
            let header_worker = worker_id(&request);
            let req = request.into_inner();
            let worker = request_worker(req.worker_id, header_worker);
            let build: RequestBuilder = Box::new(move |env| {
                map(
                    env,
                    &[
                        (atoms::worker_id(), worker.encode(env)),
                        (atoms::session_id(), req.session_id.encode(env)),
                        (atoms::timestamp_us(), req.timestamp_us.encode(env)),
                    ],
                )
            });
            self.control(Rpc::Heartbeat, build, |r| match r {
                Reply::Heartbeat(resp) => Some(resp),
                _ => None,
            })
            .await
        })
        .await
    }

    type StreamTelemetryStream = futures::stream::Empty<Result<TelemetryControl, Status>>;

    /// Telemetry from workers is not folded into the BEAM yet; the worker
    /// keeps its events local when it sees `unimplemented`.
    async fn stream_telemetry(
        &self,
        _request: Request<tonic::Streaming<TelemetryEvent>>,
    ) -> Result<Response<Self::StreamTelemetryStream>, Status> {
        Err(Status::unimplemented(
            "the Elixir bridge does not collect worker telemetry",
        ))
    }
}

// ------------------------------------------------------------------ terms out

fn map<'a>(env: Env<'a>, pairs: &[(Atom, Term<'a>)]) -> Term<'a> {
    Term::map_from_pairs(env, pairs).expect("atom keys are unique")
}

fn binary_map<'a>(env: Env<'a>, binaries: &HashMap<String, Vec<u8>>) -> Term<'a> {
    let keys: Vec<Term> = binaries.keys().map(|k| k.encode(env)).collect();
    let values: Vec<Term> = binaries
        .values()
        .map(|v| crate::reply::binary(env, v))
        .collect();
    Term::map_from_term_arrays(env, &keys, &values).expect("keys come from a map")
}

fn spec_term<'a>(env: Env<'a>, spec: &ToolSpec) -> Term<'a> {
    let params: Vec<Term> = spec
        .parameters
        .iter()
        .map(|p| {
            let mut pairs = vec![
                (atoms::name(), p.name.encode(env)),
                (atoms::type_(), p.r#type.encode(env)),
                (atoms::required(), p.required.encode(env)),
                (atoms::description(), p.description.encode(env)),
            ];
            if !p.default_json.is_empty() {
                if let Ok(value) = json::parse(p.default_json.as_bytes()) {
                    pairs.push((atoms::default(), json::to_term(env, &value)));
                }
            }
            map(env, &pairs)
        })
        .collect();
    map(
        env,
        &[
            (atoms::name(), spec.name.encode(env)),
            (atoms::description(), spec.description.encode(env)),
            (atoms::parameters(), params.encode(env)),
            (
                atoms::supports_streaming(),
                spec.supports_streaming.encode(env),
            ),
            (atoms::metadata(), spec.metadata.encode(env)),
        ],
    )
}

// ------------------------------------------------------------------ replies in

fn field<'a>(term: Term<'a>, key: &str, what: &str) -> Result<Term<'a>, String> {
    // Keys are fixed names of this module, never data.
    let atom = Atom::from_str(term.get_env(), key).map_err(|_| "bad key name".to_string())?;
    if !term.is_map() {
        return Err(format!("{what} must be a map"));
    }
    term.map_get(atom)
        .map_err(|_| format!("{what} has no :{key} key"))
}

fn need(value: Option<Term<'_>>) -> Result<Term<'_>, String> {
    value.ok_or_else(|| "the reply needs a value".to_string())
}

fn string(term: Term, what: &str) -> Result<String, String> {
    term.decode::<String>()
        .map_err(|_| format!("{what} must be a UTF-8 string"))
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

fn string_map(term: Term, what: &str) -> Result<HashMap<String, String>, String> {
    let iter = MapIterator::new(term).ok_or_else(|| format!("{what} must be a map"))?;
    iter.map(|(k, v)| Ok((string(k, what)?, string(v, what)?)))
        .collect()
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
fn decode_reply(call: &BridgeCall, reply: Term) -> Result<Reply, String> {
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
            tool_ids: string_map(need(value)?, "tool ids")?,
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
            timestamp_us: super::now_us(),
            status: "ok".into(),
        }),
        _ => return Err(format!("unexpected reply for {:?}", call.rpc)),
    })
}

/// What the RPC answers when Elixir's reply could not be read.
fn fallback(call: &BridgeCall, message: &str) -> Reply {
    let text = format!("Elixir sent an unreadable reply: {message}");
    match call.rpc {
        Rpc::ExecuteElixirTool => Reply::Execute(tool_error("ElixirBridgeError", text, "bridge")),
        _ => Reply::Failed(Status::internal(text)),
    }
}

// ------------------------------------------------------------------ NIFs

/// Starts the server on `address` (`unix:/abs/path` or loopback
/// `host:port`), sending every call to `dispatcher`. Calls with no budget of
/// their own wait `default_timeout_ms` for Elixir. Returns
/// `{:ok, {handle, bound_address}}`.
#[rustler::nif]
fn bridge_start<'a>(
    env: Env<'a>,
    address: String,
    dispatcher: LocalPid,
    default_timeout_ms: u64,
    allow_non_loopback: bool,
) -> Term<'a> {
    let listen = match core::parse_address(&address, allow_non_loopback) {
        Ok(listen) => listen,
        Err(msg) => return crate::reply::invalid_argument(env, msg),
    };
    // Listeners are registered with the runtime's reactor on this thread.
    let rt = crate::runtime::get();
    let _guard = rt.enter();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let bridge = Bridge {
        dispatcher,
        default_timeout: Duration::from_millis(default_timeout_ms.max(1)),
        shutdown: shutdown_rx.clone(),
    };
    let service = InterceptedService::new(
        ElixirBridgeServer::new(bridge)
            .max_decoding_message_size(max_message_bytes())
            .max_encoding_message_size(max_message_bytes()),
        RequireSecret { dispatcher },
    );
    let router = tonic::transport::Server::builder().add_service(service);
    let mut stopped = shutdown_rx;
    let signal = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };

    let (bound, socket) = match listen {
        Listen::Unix(path) => {
            let (std_listener, file) = match core::bind_unix(&path) {
                Ok(bound) => bound,
                Err(e) => {
                    return crate::reply::invalid_argument(
                        env,
                        format!("cannot listen on {address}: {e}"),
                    )
                }
            };
            let listener = match tokio::net::UnixListener::from_std(std_listener) {
                Ok(l) => l,
                Err(e) => {
                    file.remove();
                    return crate::reply::invalid_argument(
                        env,
                        format!("cannot listen on {address}: {e}"),
                    );
                }
            };
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            rt.spawn(router.serve_with_incoming_shutdown(incoming, signal));
            (format!("unix:{}", file.path().display()), Some(file))
        }
        Listen::Tcp(addr) => {
            let (std_listener, bound) = match core::bind_tcp(&addr) {
                Ok(bound) => bound,
                Err(e) => {
                    return crate::reply::invalid_argument(
                        env,
                        format!("cannot listen on {address}: {e}"),
                    )
                }
            };
            let listener = match tokio::net::TcpListener::from_std(std_listener) {
                Ok(l) => l,
                Err(e) => {
                    return crate::reply::invalid_argument(
                        env,
                        format!("cannot listen on {address}: {e}"),
                    )
                }
            };
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            rt.spawn(router.serve_with_incoming_shutdown(incoming, signal));
            (bound, None)
        }
    };
    let handle = ResourceArc::new(BridgeHandle {
        shutdown: shutdown_tx,
        socket: Mutex::new(socket),
    });
    (atoms::ok(), (handle, bound)).encode(env)
}

/// Stops the server; pending calls are answered `unavailable`. Idempotent.
#[rustler::nif]
fn bridge_stop(handle: ResourceArc<BridgeHandle>) -> Atom {
    handle.stop();
    atoms::ok()
}

/// Answers one call. Returns `:ok`; `{:error, :already_replied}` for a call
/// answered before; `{:error, :expired}` when the RPC stopped waiting; or
/// `{:error, {:invalid_argument, message}}` for a reply of the wrong shape,
/// in which case the RPC is answered with an error naming the problem.
/// Encoding a large result to JSON can take a while: dirty scheduler.
#[rustler::nif(schedule = "DirtyCpu")]
fn bridge_reply<'a>(env: Env<'a>, call: ResourceArc<BridgeCall>, reply: Term<'a>) -> Term<'a> {
    let sender = call.reply.lock().ok().and_then(|mut slot| slot.take());
    let Some(sender) = sender else {
        return (atoms::error(), atoms::already_replied()).encode(env);
    };
    let (answer, problem) = match decode_reply(&call, reply) {
        Ok(answer) => (answer, None),
        Err(msg) => (fallback(&call, &msg), Some(msg)),
    };
    let delivered = sender.send(answer).is_ok();
    match (problem, delivered) {
        (Some(msg), _) => crate::reply::invalid_argument(env, msg),
        (None, true) => atoms::ok().encode(env),
        (None, false) => (atoms::error(), atoms::expired()).encode(env),
    }
}
