//! NIFs for fork servers: Python processes that imported the bridge once
//! and fork ready workers (see `snakepit_core::fork_client`). A forked
//! worker gets the same handle, messages and group guard as a spawned one.

use std::time::Duration;

use rustler::{LocalPid, ResourceArc};
use snakepit_core::exit::{wait_exit, ExitStatus};
use snakepit_core::fork_client::ForkClient;
use snakepit_core::spawn;

use super::nifs::{ProcessHandle, Started};
use crate::error::NativeError;

/// How long a fork may take before the request is given up.
const FORK_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ForkServer {
    client: ForkClient,
}

#[rustler::resource_impl]
impl rustler::Resource for ForkServer {}

/// Connects to the fork server listening at `path`. Dropping the handle
/// closes the connection, and the fork server exits.
#[rustler::nif(schedule = "DirtyIo")]
fn fork_server_connect(path: String) -> Result<ResourceArc<ForkServer>, NativeError> {
    let client = ForkClient::connect(&path)
        .map_err(|e| NativeError::os(&e, "cannot connect to the fork server"))?;
    Ok(ResourceArc::new(ForkServer { client }))
}

/// Forks a worker running `argv` with exactly `environment` in `cwd`; the
/// same reply and messages as `spawn_process`.
#[rustler::nif(schedule = "DirtyIo")]
fn fork_server_spawn(
    server: ResourceArc<ForkServer>,
    argv: Vec<String>,
    environment: Vec<(String, String)>,
    cwd: Option<String>,
    owner: LocalPid,
) -> Result<(i32, ResourceArc<ProcessHandle>), NativeError> {
    let fork = || -> std::io::Result<(Started, _)> {
        let (out_r, out_w) = spawn::pipe_cloexec()?;
        let (err_r, err_w) = spawn::pipe_cloexec()?;
        let child = server.client.spawn(
            &argv,
            &environment,
            cwd.as_deref(),
            out_w,
            err_w,
            FORK_TIMEOUT,
        )?;
        // The child leads its own session, so its pid is its group.
        let guard = match spawn::guard(child.pid) {
            Ok(guard) => guard,
            Err(err) => {
                let _ = snakepit_core::signal::kill(child.pid, libc::SIGKILL);
                return Err(err);
            }
        };
        // Fails only if the child is already gone and reaped; the fork
        // server's report then still gives its status.
        let pidfd = spawn::pidfd_open(child.pid).ok();
        let exit = async move {
            match child.exit.await {
                Ok(status) => status,
                // The fork server is gone: wait for the child itself.
                Err(_) => match pidfd {
                    Some(pidfd) => wait_exit(pidfd).await,
                    None => ExitStatus::Unknown,
                },
            }
        };
        let started = Started {
            pid: child.pid,
            stdout: out_r,
            stderr: err_r,
            guard: Some(guard),
        };
        Ok((started, exit))
    };
    let (started, exit) =
        fork().map_err(|e| NativeError::os(&e, "the fork server could not fork the worker"))?;
    Ok(started.watch(owner, exit))
}
