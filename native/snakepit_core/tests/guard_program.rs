//! Guards that exec `snakepit_guard` after the fork: small, and still kill
//! the worker's whole group when released.

mod common;

use snakepit_core::spawn;

fn status_field(pid: i32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test]
async fn an_execed_guard_is_small_and_kills_the_group_grandchildren_included() {
    spawn::set_guard_program(env!("CARGO_BIN_EXE_snakepit_guard")).unwrap();
    let (child, grandchild) = common::spawn_with_grandchild();
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

    common::assert_release_kills_group(child.pidfd, guard, grandchild).await;
}

#[tokio::test]
async fn a_guard_keeps_no_descriptor_of_the_vm_but_its_pipe() {
    spawn::set_guard_program(env!("CARGO_BIN_EXE_snakepit_guard")).unwrap();
    // A descriptor without close-on-exec, as many of the VM's are (dup
    // never copies the flag).
    let null = std::fs::File::open("/dev/null").unwrap();
    // SAFETY: dup of an open descriptor; the new one is closed below.
    let leaky = unsafe { libc::dup(std::os::fd::AsRawFd::as_raw_fd(&null)) };
    assert!(leaky > 2);
    let (child, grandchild) = common::spawn_with_grandchild();
    let guard = child.guard.expect("guarded by default");

    let fds = format!("/proc/{}/fd", guard.pid);
    let only_the_pipe = (0..400).any(|_| {
        let names: Vec<String> = std::fs::read_dir(&fds)
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        let done = names == ["0"];
        if !done {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        done
    });
    // SAFETY: closes the descriptor dup'ed above, once.
    unsafe { libc::close(leaky) };
    assert!(only_the_pipe, "guard {} keeps more than fd 0", guard.pid);

    common::assert_release_kills_group(child.pidfd, guard, grandchild).await;
}

#[test]
fn a_missing_guard_program_is_refused() {
    let err = spawn::set_guard_program("/nonexistent/snakepit_guard").unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
}
