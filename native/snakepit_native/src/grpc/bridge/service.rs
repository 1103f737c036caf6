//! The `ElixirBridge` RPCs: each one checks what it can without the BEAM,
//! builds its request term and waits for Elixir's typed reply.

use std::time::Instant;

use rustler::Encoder;
use snakepit_core::bridge as core;
use tonic::{Request, Response, Status};

use super::call::{guarded, Bridge, FromReply, RequestBuilder, Rpc};
use super::replies::tool_error;
use super::telemetry;
use super::terms::{binary_map, map, request_worker, spec_term, worker_header};
use crate::wire::pb::elixir_bridge_server::ElixirBridge;
use crate::wire::pb::{
    CleanupSessionRequest, CleanupSessionResponse, ExecuteElixirToolRequest, ExecuteToolResponse,
    GetExposedElixirToolsRequest, GetExposedElixirToolsResponse, GetSessionRequest,
    GetSessionResponse, HeartbeatRequest, HeartbeatResponse, InitializeSessionRequest,
    InitializeSessionResponse, RegisterToolsRequest, RegisterToolsResponse, TelemetryEvent,
};
use crate::{atoms, json};

#[tonic::async_trait]
impl ElixirBridge for Bridge {
    async fn register_tools(
        &self,
        request: Request<RegisterToolsRequest>,
    ) -> Result<Response<RegisterToolsResponse>, Status> {
        guarded(async {
            let worker = request_worker(&request, |r| &r.worker_id);
            let req = request.into_inner();
            let (session_id, tools) = (req.session_id, req.tools);
            let build: RequestBuilder = Box::new(move |env| {
                let specs: Vec<_> = tools.iter().map(|t| spec_term(env, t)).collect();
                map(
                    env,
                    &[
                        (atoms::session_id(), session_id.encode(env)),
                        (atoms::worker_id(), worker.encode(env)),
                        (atoms::tools(), specs.encode(env)),
                    ],
                )
            });
            self.control(Rpc::RegisterTools, build).await
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
            self.control(Rpc::GetExposedElixirTools, build).await
        })
        .await
    }

    async fn execute_elixir_tool(
        &self,
        request: Request<ExecuteElixirToolRequest>,
    ) -> Result<Response<ExecuteToolResponse>, Status> {
        guarded(async {
            let started = Instant::now();
            let worker = worker_header(&request);
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
                Ok(args) => args,
                Err(msg) => {
                    return Ok(tool_error(
                        "SerializationError",
                        format!("Elixir tool '{tool}': {msg}"),
                        "serialization",
                    ))
                }
            };
            let timeout_ms = req.timeout_ms;
            let (session_id, binaries, metadata, name) = (
                req.session_id,
                req.binary_parameters,
                req.metadata,
                req.tool_name,
            );
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
            let reply = self
                .dispatch(Rpc::ExecuteElixirTool, tool.clone(), wait, build)
                .await;
            // A tool call always gets a response: failures become ToolErrors.
            let mut resp = match ExecuteToolResponse::take(reply) {
                Ok(resp) => resp,
                Err(status) if status.code() == tonic::Code::DeadlineExceeded => tool_error(
                    "TimeoutError",
                    format!("Elixir tool '{tool}': {}", status.message()),
                    "timeout",
                ),
                Err(status) => tool_error(
                    "ElixirBridgeError",
                    format!("Elixir tool '{tool}': {}", status.message()),
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
            self.control(Rpc::InitializeSession, build).await
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
            self.control(Rpc::CleanupSession, build).await
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
            let mut resp: GetSessionResponse = self.control(Rpc::GetSession, build).await?;
            resp.session_id = echoed;
            Ok(resp)
        })
        .await
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        guarded(async {
            let worker = request_worker(&request, |r| &r.worker_id);
            let req = request.into_inner();
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
            self.control(Rpc::Heartbeat, build).await
        })
        .await
    }

    type StreamTelemetryStream = telemetry::ControlStream;

    async fn stream_telemetry(
        &self,
        request: Request<tonic::Streaming<TelemetryEvent>>,
    ) -> Result<Response<Self::StreamTelemetryStream>, Status> {
        let worker = worker_header(&request);
        telemetry::open(self, worker, request.into_inner()).map(Response::new)
    }
}
