//! Guards that exec `snakepit_guard` after the fork: small, and still kill
//! the worker's whole group when released.

use std::ffi::CString;
use std::os::fd::AsRawFd;

use snakepit_core::exit::{wait_exit, ExitStatus};
use snakepit_core::signal;
use snakepit_core::spawn::{self, SpawnSpec};

fn status_field(pid: i32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test]
async fn an_execed_guard_is_small_and_kills_the_group_grandchildren_included() {
    spawn::set_guard_program(env!("CARGO_BIN_EXE_snakepit_guard")).unwrap();
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
    let grandchild: i32 = std::str::from_utf8(&first[..n as usize])
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    let guard = child.guard.expect("guarded by default");
    // The spawner does not wait for the exec; by the time the worker has
    // printed, the guard has almost surely run it, but poll to be sure.
    let exe = format!("/proc/{}/exe", guard.pid);
    let execed = (0..400).any(|_| {
        let done = std::fs::read_link(&exe)
            .map(|p| p.ends_with("snakepit_guard"))
            .unwrap_or(false);
        if !done {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        done
    });
    assert!(execed, "guard {} did not exec snakepit_guard", guard.pid);
    let rss_kb = status_field(guard.pid, "VmRSS:").unwrap();
    assert!(rss_kb < 8 * 1024, "guard RSS {rss_kb} kB");

    drop(guard.pipe);
    assert_eq!(
        wait_exit(child.pidfd).await,
        ExitStatus::Signaled(libc::SIGKILL)
    );
    assert_eq!(wait_exit(guard.pidfd).await, ExitStatus::Exited(0));
    let gone = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(5));
        !signal::alive(grandchild)
    });
    assert!(gone, "grandchild {grandchild} survived the group kill");
}

#[test]
fn a_missing_guard_program_is_refused() {
    let err = spawn::set_guard_program("/nonexistent/snakepit_guard").unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
}
