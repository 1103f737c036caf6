//! Waiting for a child's exit through its pidfd, without SIGCHLD.

use std::os::fd::{AsRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;

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
