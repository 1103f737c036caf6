//! What the guard tests share: a worker with a grandchild in its group, and
//! the check that releasing the guard kills them all.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};

use snakepit_core::exit::{wait_exit, ExitStatus};
use snakepit_core::signal;
use snakepit_core::spawn::{self, Guard, SpawnSpec, Spawned};

/// A guarded child that starts a `sleep 60` grandchild in its group;
/// returns the child and the grandchild's pid.
pub fn spawn_with_grandchild() -> (Spawned, i32) {
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
    let grandchild = std::str::from_utf8(&first[..n as usize])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(signal::alive(grandchild));
    (child, grandchild)
}

/// Releases `guard` and checks that the child, the guard and the
/// grandchild are all gone.
pub async fn assert_release_kills_group(child_pidfd: OwnedFd, guard: Guard, grandchild: i32) {
    drop(guard.pipe);
    assert_eq!(
        wait_exit(child_pidfd).await,
        ExitStatus::Signaled(libc::SIGKILL)
    );
    assert_eq!(wait_exit(guard.pidfd).await, ExitStatus::Exited(0));
    // The grandchild is not our child: poll the process table briefly.
    let gone = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(5));
        !signal::alive(grandchild)
    });
    assert!(gone, "grandchild {grandchild} survived the group kill");
}
