//! Forwards a child's output lines and its exit to the owning BEAM process:
//! `{:snakepit_process, os_pid, {:stdout | :stderr, line}}` and, last,
//! `{:snakepit_process, os_pid, {:exit, status}}`.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use rustler::{Encoder, LocalPid, OwnedEnv};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::unix::pipe;

use crate::atoms;

/// Longest line forwarded as one message; longer output is split.
const MAX_LINE: usize = 64 * 1024;
/// How long the exit notice waits for the output pipes to drain. A
/// grandchild may hold them open long after the child itself is gone.
const DRAIN_GRACE: Duration = Duration::from_millis(200);

#[derive(Clone, Copy)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
    Unknown,
}

fn send_line(owner: LocalPid, os_pid: i32, stderr: bool, line: &[u8]) -> bool {
    let mut env = OwnedEnv::new();
    env.send_and_clear(&owner, |env| {
        let tag = if stderr {
            atoms::stderr()
        } else {
            atoms::stdout()
        };
        let line = crate::reply::binary(env, line);
        (atoms::snakepit_process(), os_pid, (tag, line)).encode(env)
    })
    .is_ok()
}

async fn forward_lines(fd: OwnedFd, owner: LocalPid, os_pid: i32, stderr: bool) {
    let Ok(rx) = pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let mut reader = BufReader::with_capacity(16 * 1024, rx);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                while matches!(line.last(), Some(b'\n' | b'\r')) {
                    line.pop();
                }
                // Keep reading even when the owner is gone, so the child
                // never blocks on a full pipe.
                send_line(owner, os_pid, stderr, &line);
            }
        }
    }
}

use tokio::io::AsyncReadExt;

/// Waits until the process behind `pidfd` has exited and collects it.
pub async fn wait_exit(pidfd: OwnedFd) -> ExitStatus {
    // SAFETY: the pidfd is owned by this AsyncFd alone and closed with it.
    let Ok(fd) = (unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) })
    else {
        return ExitStatus::Unknown;
    };
    loop {
        match fd.readable().await {
            Ok(mut guard) => {
                guard.clear_ready();
                match waitid(fd.get_ref()) {
                    Some(status) => return status,
                    None => continue,
                }
            }
            Err(_) => return ExitStatus::Unknown,
        }
    }
}

/// Non-blocking waitid on a pidfd. `None` while the child still runs.
fn waitid(pidfd: &OwnedFd) -> Option<ExitStatus> {
    const P_PIDFD: libc::idtype_t = 3;
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::waitid(
            P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG,
        )
    };
    if rc < 0 {
        // ECHILD: someone else reaped it (SIGCHLD ignored again); the
        // process is gone but its status is not known.
        return Some(ExitStatus::Unknown);
    }
    let pid = unsafe { info.si_pid() };
    if pid == 0 {
        return None;
    }
    let status = unsafe { info.si_status() };
    Some(match info.si_code {
        libc::CLD_EXITED => ExitStatus::Exited(status),
        libc::CLD_KILLED | libc::CLD_DUMPED => ExitStatus::Signaled(status),
        _ => ExitStatus::Unknown,
    })
}

/// Starts the tasks that watch one spawned child.
pub fn watch(
    owner: LocalPid,
    os_pid: i32,
    stdout: OwnedFd,
    stderr: OwnedFd,
    pidfd: OwnedFd,
    guard_pidfd: OwnedFd,
) {
    let rt = crate::runtime::get();
    let out = rt.spawn(forward_lines(stdout, owner, os_pid, false));
    let err = rt.spawn(forward_lines(stderr, owner, os_pid, true));
    rt.spawn(async move {
        let status = wait_exit(pidfd).await;
        let _ = tokio::time::timeout(DRAIN_GRACE, async {
            let _ = out.await;
            let _ = err.await;
        })
        .await;
        let mut env = OwnedEnv::new();
        let _ = env.send_and_clear(&owner, |env| {
            let status = match status {
                ExitStatus::Exited(code) => (atoms::exited(), code).encode(env),
                ExitStatus::Signaled(sig) => (atoms::signaled(), sig).encode(env),
                ExitStatus::Unknown => atoms::unknown().encode(env),
            };
            (atoms::snakepit_process(), os_pid, (atoms::exit(), status)).encode(env)
        });
    });
    // The guard is our child too; collect it whenever it exits.
    rt.spawn(wait_exit(guard_pidfd));
}
