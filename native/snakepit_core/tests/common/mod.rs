//! What the guard tests share: a worker with a grandchild in its group, and
//! the check that releasing the guard kills them all.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};

use snakepit_core::exit::{wait_exit, ExitStatus};
use snakepit_core::signal;
use snakepit_core::spawn::{self, Guard, SpawnSpec, Spawned};

/// A grandchild, with a pidfd taken while it surely runs.
pub struct Grandchild {
    pub pid: i32,
    pub pidfd: OwnedFd,
}

/// A guarded child that starts a `sleep 60` grandchild in its group.
pub fn spawn_with_grandchild() -> (Spawned, Grandchild) {
    let child = spawn::spawn(SpawnSpec {
        program: CString::new("/bin/sh").unwrap(),
        argv: ["/bin/sh", "-c", "sleep 60 & echo $!; wait"]
            .iter()
            .map(|a| CString::new(*a).unwrap())
            .collect(),
        envp: vec![CString::new("PATH=/usr/bin:/bin").unwrap()],
        cwd: None,
        orphan_protection: true,
    })
    .unwrap();
    let mut first = [0u8; 64];
    let n = unsafe { libc::read(child.stdout.as_raw_fd(), first.as_mut_ptr().cast(), 64) };
    let pid = std::str::from_utf8(&first[..n as usize])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(signal::alive(pid));
    let pidfd = spawn::pidfd_open(pid).expect("grandchild pidfd");
    (child, Grandchild { pid, pidfd })
}

/// Releases `guard` and checks that the child, the guard and the
/// grandchild are all gone.
pub async fn assert_release_kills_group(
    child_pidfd: OwnedFd,
    guard: Guard,
    grandchild: Grandchild,
) {
    drop(guard.pipe);
    assert_eq!(
        wait_exit(child_pidfd).await,
        ExitStatus::Signaled(libc::SIGKILL)
    );
    assert_eq!(wait_exit(guard.pidfd).await, ExitStatus::Exited(0));
    // Not our child, so no status; its pidfd still says when it is gone.
    let gone = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        wait_exit(grandchild.pidfd),
    )
    .await;
    assert!(
        gone.is_ok(),
        "grandchild {} survived the group kill",
        grandchild.pid
    );
}
