//! Forwards a child's output lines and its exit to the owning BEAM process:
//! `{:snakepit_process, os_pid, {:stdout | :stderr, line}}` and, last,
//! `{:snakepit_process, os_pid, {:exit, status}}`.
//!
//! The owner may bound the lines in flight to it (`OutputGate`): past the
//! window, lines are read (the child never blocks on a full pipe) and
//! counted as dropped instead of sent, so a child printing without pause
//! cannot grow the owner's mailbox without limit.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustler::{Encoder, LocalPid, OwnedEnv};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::unix::pipe;

use crate::atoms;
use snakepit_core::exit::{wait_exit, ExitStatus};

/// Longest line forwarded as one message; longer output is split.
const MAX_LINE: usize = 64 * 1024;
/// How long the exit notice waits for the output pipes to drain. A
/// grandchild may hold them open long after the child itself is gone.
const DRAIN_GRACE: Duration = Duration::from_millis(200);

/// Output lines in flight to the owner of one child (both pipes), and the
/// lines dropped because the owner had not acknowledged enough of them.
#[derive(Default)]
pub struct OutputGate {
    sent: AtomicU64,
    acked: AtomicU64,
    /// At most this many lines unacknowledged; 0 is no limit.
    window: AtomicU64,
    dropped: AtomicU64,
}

impl OutputGate {
    /// May one more line be sent? Counts it as sent, or as dropped.
    fn admit(&self) -> bool {
        let window = self.window.load(Ordering::Relaxed);
        if window != 0 {
            let in_flight = self
                .sent
                .load(Ordering::Relaxed)
                .saturating_sub(self.acked.load(Ordering::Relaxed));
            if in_flight >= window {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
        }
        self.sent.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// The owner handled `acked` more lines and wants at most `window` in
    /// flight; returns the lines dropped since its last call.
    pub fn ack(&self, acked: u64, window: u64) -> u64 {
        self.window.store(window, Ordering::Relaxed);
        self.acked.fetch_add(acked, Ordering::Relaxed);
        self.dropped.swap(0, Ordering::Relaxed)
    }
}

fn send_line(env: &mut OwnedEnv, owner: LocalPid, os_pid: i32, stderr: bool, line: &[u8]) -> bool {
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

async fn forward_lines(
    fd: OwnedFd,
    owner: LocalPid,
    os_pid: i32,
    stderr: bool,
    gate: Arc<OutputGate>,
) {
    let Ok(rx) = pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let mut reader = BufReader::with_capacity(16 * 1024, rx);
    let mut line = Vec::with_capacity(256);
    // One env for every line of this pipe; sending clears it.
    let mut env = OwnedEnv::new();
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
                // Keep reading even when the owner is gone, or behind, so
                // the child never blocks on a full pipe.
                if gate.admit() {
                    send_line(&mut env, owner, os_pid, stderr, &line);
                }
            }
        }
    }
}

/// Starts the tasks that watch one spawned child.
pub fn watch(
    owner: LocalPid,
    os_pid: i32,
    stdout: OwnedFd,
    stderr: OwnedFd,
    exit: impl Future<Output = ExitStatus> + Send + 'static,
    guard_pidfd: Option<OwnedFd>,
    gate: Arc<OutputGate>,
) {
    let rt = crate::runtime::get();
    let out = rt.spawn(forward_lines(stdout, owner, os_pid, false, gate.clone()));
    let err = rt.spawn(forward_lines(stderr, owner, os_pid, true, gate));
    rt.spawn(async move {
        let status = exit.await;
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
    if let Some(guard_pidfd) = guard_pidfd {
        rt.spawn(wait_exit(guard_pidfd));
    }
}
