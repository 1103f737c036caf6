//! Waiting for a child's exit through its pidfd, without SIGCHLD.

use std::os::fd::OwnedFd;

use tokio::io::unix::AsyncFd;

use crate::sys::{self, Waited};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
    Unknown,
}

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
    match sys::waitid_pidfd(pidfd) {
        Waited::Running => None,
        Waited::Exited(code) => Some(ExitStatus::Exited(code)),
        Waited::Signaled(sig) => Some(ExitStatus::Signaled(sig)),
        // ECHILD: someone else reaped it (SIGCHLD ignored again); the
        // process is gone but its status is not known.
        Waited::Gone => Some(ExitStatus::Unknown),
    }
}
