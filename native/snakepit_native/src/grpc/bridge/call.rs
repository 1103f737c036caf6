//! One RPC on its way to Elixir and back: the dispatcher message, the
//! reply slot, and the typed reply each RPC waits for.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Mutex;
use std::time::Duration;

use futures::FutureExt;
use rustler::{Atom, Encoder, Env, LocalPid, OwnedEnv, ResourceArc, Term};
use snakepit_core::bridge::{self as core, SocketFile};
use tokio::sync::{oneshot, watch};
use tonic::{Response, Status};

use crate::atoms;
use crate::wire::pb::{
    CleanupSessionResponse, ExecuteToolResponse, GetExposedElixirToolsResponse, GetSessionResponse,
    HeartbeatResponse, InitializeSessionResponse, RegisterToolsResponse,
};

/// A running bridge server. Dropping the last reference (or `bridge_stop`)
/// shuts it down: pending calls are answered `unavailable` and the socket
/// file is removed.
pub struct BridgeHandle {
    pub(super) shutdown: watch::Sender<bool>,
    pub(super) socket: Mutex<Option<SocketFile>>,
}

#[rustler::resource_impl]
impl rustler::Resource for BridgeHandle {}

impl BridgeHandle {
    pub(super) fn stop(&self) {
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
pub(super) enum Rpc {
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

/// What Elixir answered, already turned into an RPC's response: one
/// variant per response type, and `FromReply` to take it out typed.
macro_rules! replies {
    ($($variant:ident($response:ty)),* $(,)?) => {
        pub(super) enum Reply {
            $($variant($response),)*
            Failed(Status),
        }

        /// A response type an RPC waits for.
        pub(super) trait FromReply: Sized {
            fn take(reply: Reply) -> Result<Self, Status>;
        }

        $(impl FromReply for $response {
            fn take(reply: Reply) -> Result<Self, Status> {
                match reply {
                    Reply::$variant(response) => Ok(response),
                    Reply::Failed(status) => Err(status),
                    _ => Err(Status::internal("Elixir answered with the reply of another call")),
                }
            }
        })*
    };
}

replies! {
    RegisterTools(RegisterToolsResponse),
    ExposedTools(GetExposedElixirToolsResponse),
    Execute(ExecuteToolResponse),
    InitializeSession(InitializeSessionResponse),
    CleanupSession(CleanupSessionResponse),
    GetSession(GetSessionResponse),
    Heartbeat(HeartbeatResponse),
}

/// One RPC waiting for Elixir. Replying takes the sender, so a call is
/// answered at most once; dropping the resource unanswered drops the
/// sender, which the waiting RPC sees at once.
pub struct BridgeCall {
    pub(super) rpc: Rpc,
    /// The tool's name for `execute_elixir_tool`, for error messages.
    pub(super) label: String,
    pub(super) reply: Mutex<Option<oneshot::Sender<Reply>>>,
}

#[rustler::resource_impl]
impl rustler::Resource for BridgeCall {}

/// Builds the request term of a call in the message's env.
pub(super) type RequestBuilder = Box<dyn for<'a> FnOnce(Env<'a>) -> Term<'a> + Send>;

/// The server's state: where calls go and how long they may wait.
/// The status message of a call refused because the server is stopping;
/// `elixir_bridge.py` matches "was not run" to know a retry is safe.
const NOT_RUN_SHUTTING_DOWN: &str = "the Elixir bridge is shutting down; the call was not run";

#[derive(Clone)]
pub(super) struct Bridge {
    pub(super) dispatcher: LocalPid,
    pub(super) default_timeout: Duration,
    pub(super) shutdown: watch::Receiver<bool>,
}

impl Bridge {
    /// Sends the call to the dispatcher as `{:snakepit_bridge, call, rpc,
    /// request}` and waits up to `wait` for its answer.
    pub(super) async fn dispatch(
        &self,
        rpc: Rpc,
        label: String,
        wait: Duration,
        build: RequestBuilder,
    ) -> Reply {
        if *self.shutdown.borrow() {
            // Python retries these (it reaches the bridge's successor once
            // this server's connections close): nothing was run.
            return Reply::Failed(Status::unavailable(NOT_RUN_SHUTTING_DOWN));
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

    /// A call with the default budget, answered with response type `T`.
    pub(super) async fn control<T: FromReply>(
        &self,
        rpc: Rpc,
        build: RequestBuilder,
    ) -> Result<T, Status> {
        let wait = core::reply_wait(0, self.default_timeout);
        T::take(self.dispatch(rpc, String::new(), wait, build).await)
    }
}

/// Runs a handler, turning a panic into an `internal` status.
pub(super) async fn guarded<T, F>(fut: F) -> Result<Response<T>, Status>
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
