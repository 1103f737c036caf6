//! NIFs for fork servers: Python processes that imported the bridge once
//! and fork ready workers (see `snakepit_core::fork_client`). A forked
//! worker gets the same handle, messages and group guard as a spawned one.

use std::time::Duration;

use rustler::{Encoder, Env, LocalPid, NifResult, ResourceArc, Term};
use snakepit_core::exit::{wait_exit, ExitStatus};
use snakepit_core::fork_client::ForkClient;
use snakepit_core::spawn;

use super::nifs::Started;
use crate::atoms;
use crate::error::NifError;

/// How long a fork may take before the request is given up.
const FORK_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ForkServer {
    client: ForkClient,
}

#[rustler::resource_impl]
impl rustler::Resource for ForkServer {}

fn error<'a>(env: Env<'a>, err: &std::io::Error, what: &str) -> Term<'a> {
    NifError::os(err, what).encode(env)
}

/// Connects to the fork server listening at `path`. Dropping the handle
/// closes the connection, and the fork server exits.
#[rustler::nif(schedule = "DirtyIo")]
fn fork_server_connect(env: Env<'_>, path: String) -> Term<'_> {
    match ForkClient::connect(&path) {
        Ok(client) => (atoms::ok(), ResourceArc::new(ForkServer { client })).encode(env),
        Err(err) => error(env, &err, "cannot connect to the fork server"),
    }
}

/// Forks a worker running `argv` with exactly `environment` in `cwd`; the
/// same reply and messages as `spawn_process`.
#[rustler::nif(schedule = "DirtyIo")]
fn fork_server_spawn<'a>(
    env: Env<'a>,
    server: ResourceArc<ForkServer>,
    argv: Vec<String>,
    environment: Vec<(String, String)>,
    cwd: Option<String>,
    owner: LocalPid,
) -> NifResult<Term<'a>> {
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
    match fork() {
        Ok((started, exit)) => Ok(started.watch(env, owner, exit)),
        Err(err) => Ok(error(
            env,
            &err,
            "the fork server could not fork the worker",
        )),
    }
}
