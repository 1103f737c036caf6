//! NIFs of the process domain.

use std::ffi::CString;
use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use rustler::{Atom, LocalPid, NifResult, ResourceArc};

use snakepit_core::auth;
use snakepit_core::exit::{wait_exit, ExitStatus};
use snakepit_core::{signal, spawn};

use super::watch;
use crate::atoms;
use crate::error::NativeError;

/// A spawned worker as the BEAM holds it. Dropping the last reference
/// closes the guard pipe, which takes the worker's process group down.
pub struct ProcessHandle {
    guard_pipe: Mutex<Option<OwnedFd>>,
    output: Arc<watch::OutputGate>,
}

#[rustler::resource_impl]
impl rustler::Resource for ProcessHandle {}

pub(super) fn cstring(s: &str, what: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{what} contains a NUL byte"))
}

/// `%{orphan_protection: boolean, with_secret: boolean}`.
#[derive(rustler::NifMap)]
struct SpawnOpts {
    orphan_protection: bool,
    with_secret: bool,
}

/// Spawns `program` with `argv` (argv[0] included) and exactly `env`,
/// in its own session; output and exit go to `owner` as messages. With
/// `with_secret`, the environment also gets this VM's secret (for Snakepit's
/// own Python processes: workers and fork servers), which the BEAM never
/// sees.
#[rustler::nif(schedule = "DirtyIo")]
fn spawn_process(
    program: String,
    argv: Vec<String>,
    environment: Vec<(String, String)>,
    cwd: Option<String>,
    owner: LocalPid,
    opts: SpawnOpts,
) -> Result<(i32, ResourceArc<ProcessHandle>), NativeError> {
    let SpawnOpts {
        orphan_protection,
        with_secret,
    } = opts;
    let mut environment = environment;
    environment.retain(|(k, _)| k != auth::ENV_VAR);
    if with_secret {
        environment.push((auth::ENV_VAR.to_string(), auth::token().to_string()));
    }
    let build = || -> Result<spawn::SpawnSpec, String> {
        Ok(spawn::SpawnSpec {
            program: cstring(&program, "program")?,
            argv: argv
                .iter()
                .map(|a| cstring(a, "an argument"))
                .collect::<Result<_, _>>()?,
            envp: environment
                .iter()
                .map(|(k, v)| cstring(&format!("{k}={v}"), "an environment variable"))
                .collect::<Result<_, _>>()?,
            cwd: cwd.as_deref().map(|c| cstring(c, "cwd")).transpose()?,
            orphan_protection,
        })
    };
    let spec = build().map_err(NativeError::invalid)?;
    let child =
        spawn::spawn(spec).map_err(|e| NativeError::os(&e, &format!("cannot start {program}")))?;
    let exit = wait_exit(child.pidfd);
    let started = Started {
        pid: child.pid,
        stdout: child.stdout,
        stderr: child.stderr,
        guard: child.guard,
    };
    Ok(started.watch(owner, exit))
}

/// A running child, however it was started, before anyone watches it.
pub(super) struct Started {
    pub pid: i32,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub guard: Option<spawn::Guard>,
}

impl Started {
    /// Forwards its output and `exit` to `owner` and returns
    /// `{os_pid, handle}`.
    pub fn watch(
        self,
        owner: LocalPid,
        exit: impl Future<Output = ExitStatus> + Send + 'static,
    ) -> (i32, ResourceArc<ProcessHandle>) {
        let (guard_pipe, guard_pidfd) = match self.guard {
            Some(guard) => (Some(guard.pipe), Some(guard.pidfd)),
            None => (None, None),
        };
        let output = Arc::new(watch::OutputGate::default());
        let handle = ResourceArc::new(ProcessHandle {
            guard_pipe: Mutex::new(guard_pipe),
            output: output.clone(),
        });
        watch::watch(
            owner,
            self.pid,
            self.stdout,
            self.stderr,
            exit,
            guard_pidfd,
            output,
        );
        (self.pid, handle)
    }
}

/// Lets the guard go: the worker's process group is SIGKILLed if anything
/// of it is still running. Idempotent.
#[rustler::nif]
fn release_process(handle: ResourceArc<ProcessHandle>) -> Atom {
    if let Ok(mut pipe) = handle.guard_pipe.lock() {
        pipe.take();
    }
    atoms::ok()
}

/// The owner handled `acked` more output lines of the child and wants at
/// most `window` unacknowledged (0: no limit, the default); returns how
/// many lines were dropped since its last call because the window was full.
#[rustler::nif]
fn process_output_ack(handle: ResourceArc<ProcessHandle>, acked: u64, window: u64) -> u64 {
    handle.output.ack(acked, window)
}

fn signal_result(result: io::Result<()>) -> NifResult<Atom> {
    result.map_err(|err| NativeError::os(&err, "kill"))?;
    Ok(atoms::ok())
}

fn not_a_target(target: i32) -> NativeError {
    NativeError::invalid(format!(
        "{target} is not a process Snakepit may signal (0, 1, negative, or this VM)"
    ))
}

#[rustler::nif]
fn signal_process(pid: i32, sig: i32) -> NifResult<Atom> {
    if !signal::valid_target(pid) {
        return Err(not_a_target(pid).into());
    }
    signal_result(signal::kill(pid, sig))
}

#[rustler::nif]
fn signal_group(pgid: i32, sig: i32) -> NifResult<Atom> {
    if !signal::valid_target(pgid) || pgid == signal::own_group() {
        return Err(not_a_target(pgid).into());
    }
    signal_result(signal::kill_group(pgid, sig))
}

#[rustler::nif]
fn process_alive(pid: i32) -> bool {
    signal::alive(pid)
}

#[rustler::nif]
fn process_group_of(pid: i32) -> Result<i32, NativeError> {
    if pid <= 0 {
        return Err(not_a_target(pid));
    }
    signal::group_of(pid).map_err(|err| NativeError::os(&err, "getpgid"))
}
