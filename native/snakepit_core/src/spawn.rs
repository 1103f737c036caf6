//! fork/exec from one long-lived thread.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked a child exits, so
//! every child is forked from a single thread that lives as long as the VM.
//! The child only runs async-signal-safe calls between fork and exec; exec
//! failures come back through a CLOEXEC pipe instead of a panic.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::mpsc;
use std::sync::Mutex;

use once_cell::sync::OnceCell;

use crate::sys;

pub struct SpawnSpec {
    pub program: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    pub cwd: Option<CString>,
    /// Parent-death signal and group guard. Off only in tests that need to
    /// leave orphans behind on purpose (crash-recovery tests).
    pub orphan_protection: bool,
}

/// The guard of one child's process group.
pub struct Guard {
    /// Write end of the guard's pipe. Closing it (or this process dying)
    /// makes the guard SIGKILL the child's whole process group.
    pub pipe: OwnedFd,
    pub pid: i32,
    pub pidfd: OwnedFd,
}

pub struct Spawned {
    pub pid: i32,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub pidfd: OwnedFd,
    pub guard: Option<Guard>,
}

type Job = Box<dyn FnOnce() + Send>;

static SPAWNER: OnceCell<Mutex<mpsc::Sender<Job>>> = OnceCell::new();

pub fn start_spawner() {
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("snakepit-spawner".into())
            .spawn(move || {
                // The parent-death signal of every child fires when this
                // thread ends: a panicking job must not end it. (The job's
                // waiter then sees its reply sender dropped: an error.)
                for job in rx {
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })
            .expect("snakepit: cannot start the spawner thread");
        Mutex::new(tx)
    });
}

/// Runs `work` on the spawner thread and waits for its outcome.
fn on_spawner<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    start_spawner();
    let (reply_tx, reply_rx) = mpsc::channel();
    let job: Job = Box::new(move || {
        let _ = reply_tx.send(work());
    });
    SPAWNER
        .get()
        .expect("spawner started")
        .lock()
        .map_err(|_| io::Error::other("spawner lock poisoned"))?
        .send(job)
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("spawner thread dropped the request"))?
}

/// Spawns on the spawner thread and waits for the outcome.
pub fn spawn(spec: SpawnSpec) -> io::Result<Spawned> {
    on_spawner(move || spawn_now(&spec))
}

/// A guard for the process group `pgid` of a process this VM did not fork
/// itself (a worker forked by a fork server).
pub fn guard(pgid: i32) -> io::Result<Guard> {
    on_spawner(move || spawn_guard(pgid))
}

pub use crate::sys::{pidfd_open, pipe_cloexec};

/// Closes every fd from `from` upwards except `keep`, which must be at
/// least `from` (the BEAM's fds are not CLOEXEC and must not leak into
/// workers). Async-signal-safe.
///
/// # Safety
/// Only in a forked child, before exec: other threads' fds vanish under them.
unsafe fn close_fds_except(from: u32, keep: RawFd) {
    let keep = keep as u32;
    if keep > from {
        libc::syscall(libc::SYS_close_range, from, keep - 1, 0);
    }
    libc::syscall(libc::SYS_close_range, keep + 1, u32::MAX, 0);
}

/// Unblocks every signal and restores every disposition (ignored signals
/// stay ignored across exec otherwise).
///
/// # Safety
/// Only in a forked child, before exec: it rewrites process-wide state.
unsafe fn reset_signals() {
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut set);
    libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    for sig in 1..libc::SIGRTMAX() {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
}

/// Reports errno through the exec-error pipe and exits the child.
///
/// # Safety
/// Only in a forked child: it ends the process without unwinding.
unsafe fn child_fail(err_fd: RawFd, step: u8) -> ! {
    let errno = *libc::__errno_location();
    let mut msg = [0u8; 5];
    msg[0] = step;
    msg[1..].copy_from_slice(&errno.to_ne_bytes());
    libc::write(err_fd, msg.as_ptr().cast(), msg.len());
    libc::_exit(127)
}

const STEP_EXEC: u8 = 1;
const STEP_CHDIR: u8 = 2;
const STEP_SETUP: u8 = 3;

fn spawn_now(spec: &SpawnSpec) -> io::Result<Spawned> {
    let (out_r, out_w) = pipe_cloexec()?;
    let (err_r, err_w) = pipe_cloexec()?;
    let (exec_r, exec_w) = pipe_cloexec()?;
    let devnull = sys::open_read(c"/dev/null")?;

    let mut argv: Vec<*const libc::c_char> = spec.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = spec.envp.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let parent = sys::getpid();

    // SAFETY: the child below makes async-signal-safe calls only (no
    // allocation, no locks) on values prepared before the fork, then execs
    // or _exits; it never returns into Rust code.
    let pid = sys::cvt(unsafe { libc::fork() })?;
    if pid == 0 {
        // SAFETY: see the fork above.
        unsafe {
            let efd = exec_w.as_raw_fd();
            if libc::setsid() < 0 {
                child_fail(efd, STEP_SETUP);
            }
            if spec.orphan_protection {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != parent {
                    // The VM died between fork and prctl.
                    libc::_exit(127);
                }
            }
            reset_signals();
            if libc::dup2(devnull.as_raw_fd(), 0) < 0
                || libc::dup2(out_w.as_raw_fd(), 1) < 0
                || libc::dup2(err_w.as_raw_fd(), 2) < 0
            {
                child_fail(efd, STEP_SETUP);
            }
            close_fds_except(3, efd);
            if let Some(cwd) = &spec.cwd {
                if libc::chdir(cwd.as_ptr()) < 0 {
                    child_fail(efd, STEP_CHDIR);
                }
            }
            libc::execve(spec.program.as_ptr(), argv.as_ptr(), envp.as_ptr());
            child_fail(efd, STEP_EXEC);
        }
    }

    // Parent. The pidfd is taken before anything can reap the child: with
    // SIGCHLD at its default the child stays a zombie until we wait for it.
    let pidfd = pidfd_open(pid)?;
    drop((out_w, err_w, exec_w, devnull));

    let mut buf = [0u8; 5];
    let n = sys::read(exec_r.as_raw_fd(), &mut buf).unwrap_or(0);
    if n == buf.len() {
        // exec failed; collect the child so no zombie stays behind.
        sys::reap(pid);
        let errno = i32::from_ne_bytes(buf[1..].try_into().unwrap());
        let err = io::Error::from_raw_os_error(errno);
        let what = match buf[0] {
            STEP_EXEC => "exec",
            STEP_CHDIR => "chdir",
            _ => "child setup",
        };
        return Err(io::Error::new(err.kind(), format!("{what} failed: {err}")));
    }

    let guard = if spec.orphan_protection {
        Some(spawn_guard(pid)?)
    } else {
        None
    };
    Ok(Spawned {
        pid,
        stdout: out_r,
        stderr: err_r,
        pidfd,
        guard,
    })
}

static GUARD_PROGRAM: OnceCell<CString> = OnceCell::new();

/// The `snakepit_guard` executable guards exec after the fork. Without it
/// a guard stays a forked copy of the VM, which pins a copy-on-write image
/// of the VM's memory for as long as its worker lives.
pub fn set_guard_program(path: &str) -> io::Result<()> {
    let program = CString::new(path)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in the path"))?;
    if !sys::executable(&program) {
        return Err(io::Error::last_os_error());
    }
    let _ = GUARD_PROGRAM.set(program);
    Ok(())
}

/// Forks a tiny guard that blocks reading a pipe whose only write end stays
/// in this VM. When the VM dies (any way, `kill -9` included) or the handle
/// is released, the read returns and the guard SIGKILLs the worker's whole
/// process group, grandchildren included, which the parent-death signal of
/// the worker alone would miss.
fn spawn_guard(pgid: i32) -> io::Result<Guard> {
    let (r, w) = pipe_cloexec()?;
    // Built before the fork: the child may not allocate.
    let program = GUARD_PROGRAM.get();
    let pgid_arg = CString::new(pgid.to_string()).expect("digits only");
    if let Some(pid) = program.and_then(|p| spawn_guard_program(p, &pgid_arg, r.as_raw_fd()).ok()) {
        drop(r);
        return Ok(Guard {
            pipe: w,
            pid,
            pidfd: pidfd_open(pid)?,
        });
    }
    // The program could not be started that way: fork, and exec it (or
    // guard from the forked copy).
    let argv: [*const libc::c_char; 3] = [
        program.map_or(std::ptr::null(), |p| p.as_ptr()),
        pgid_arg.as_ptr(),
        std::ptr::null(),
    ];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: as in spawn_now: async-signal-safe calls only in the child,
    // which execs or _exits.
    let pid = sys::cvt(unsafe { libc::fork() })?;
    if pid == 0 {
        // SAFETY: see the fork above.
        unsafe {
            // Own group, so signals aimed at the VM's group pass it by.
            libc::setpgid(0, 0);
            reset_signals();
            // Keep only the pipe, as fd 0: a guard must not hold the VM's
            // sockets.
            if libc::dup2(r.as_raw_fd(), 0) < 0 {
                libc::kill(-pgid, libc::SIGKILL);
                libc::_exit(1);
            }
            libc::syscall(libc::SYS_close_range, 1, u32::MAX, 0);
            if let Some(program) = program {
                libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr());
            }
            // No program, or it could not run: guard from this copy.
            let mut byte = 0u8;
            loop {
                let n = libc::read(0, (&mut byte as *mut u8).cast(), 1);
                if n < 0 && *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                break;
            }
            libc::kill(-pgid, libc::SIGKILL);
            libc::_exit(0);
        }
    }
    drop(r);
    Ok(Guard {
        pipe: w,
        pid,
        pidfd: pidfd_open(pid)?,
    })
}

/// Starts the guard program with `pipe` as its fd 0, in a process group of
/// its own, with every signal at its default and none blocked. posix_spawn
/// (a vfork in glibc) only suspends this thread until the exec; a fork
/// copied the VM's page tables and tore them down again at the exec, about
/// two milliseconds of CPU for each worker. The VM's descriptors that are
/// not close-on-exec reach the program, which closes them first thing.
fn spawn_guard_program(program: &CString, pgid_arg: &CString, pipe: RawFd) -> io::Result<i32> {
    let argv: [*mut libc::c_char; 3] = [
        program.as_ptr().cast_mut(),
        pgid_arg.as_ptr().cast_mut(),
        std::ptr::null_mut(),
    ];
    let envp: [*mut libc::c_char; 1] = [std::ptr::null_mut()];
    let flags =
        libc::POSIX_SPAWN_SETPGROUP | libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF;
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(rc))
        }
    };
    // SAFETY: the attribute and file-action objects are initialized before
    // use and destroyed once, whatever happens in between; argv and envp
    // are NULL-terminated arrays of C strings that outlive the call.
    unsafe {
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        check(libc::posix_spawnattr_init(&mut attr))?;
        let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        if let Err(err) = check(libc::posix_spawn_file_actions_init(&mut actions)) {
            libc::posix_spawnattr_destroy(&mut attr);
            return Err(err);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigfillset(&mut all);
        let mut pid: libc::pid_t = 0;
        let spawned = check(libc::posix_spawnattr_setflags(
            &mut attr,
            flags as libc::c_short,
        ))
        .and_then(|()| check(libc::posix_spawnattr_setpgroup(&mut attr, 0)))
        .and_then(|()| check(libc::posix_spawnattr_setsigmask(&mut attr, &none)))
        .and_then(|()| check(libc::posix_spawnattr_setsigdefault(&mut attr, &all)))
        .and_then(|()| {
            check(libc::posix_spawn_file_actions_adddup2(
                &mut actions,
                pipe,
                0,
            ))
        })
        .and_then(|()| {
            check(libc::posix_spawn(
                &mut pid,
                program.as_ptr(),
                &actions,
                &attr,
                argv.as_ptr(),
                envp.as_ptr(),
            ))
        });
        libc::posix_spawn_file_actions_destroy(&mut actions);
        libc::posix_spawnattr_destroy(&mut attr);
        spawned.map(|()| pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::{wait_exit, ExitStatus};
    use crate::signal;
    use std::io::Read;

    fn spec(argv: &[&str]) -> SpawnSpec {
        SpawnSpec {
            program: CString::new(argv[0]).unwrap(),
            argv: argv.iter().map(|a| CString::new(*a).unwrap()).collect(),
            envp: vec![CString::new("PATH=/usr/bin:/bin").unwrap()],
            cwd: None,
            orphan_protection: true,
        }
    }

    fn read_all(fd: OwnedFd) -> String {
        let mut out = String::new();
        std::fs::File::from(fd).read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn exec_failure_is_an_error_not_a_panic() {
        let err = spawn(spec(&["/nonexistent/python3"]))
            .err()
            .expect("spawn must fail");
        assert!(err.to_string().contains("exec failed"), "{err}");
    }

    #[test]
    fn bad_cwd_is_reported() {
        let mut s = spec(&["/bin/true"]);
        s.cwd = Some(CString::new("/nonexistent-dir").unwrap());
        let err = spawn(s).err().expect("spawn must fail");
        assert!(err.to_string().contains("chdir failed"), "{err}");
    }

    #[tokio::test]
    async fn child_runs_in_its_own_session_with_clean_fds_and_exit_status() {
        // Lists the child's open fds and its session id, then exits 3.
        let child = spawn(spec(&[
            "/bin/sh",
            "-c",
            "ls /proc/self/fd | sort -n | tr '\\n' ' '; echo; cut -d' ' -f6 /proc/self/stat; exit 3",
        ]))
        .unwrap();
        let pid = child.pid;
        let status = wait_exit(child.pidfd).await;
        let out = read_all(child.stdout);
        let mut lines = out.lines();
        // 0, 1, 2 and the fd `ls` opens for /proc/self/fd itself; nothing inherited.
        let fds: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(&fds[..3], &["0", "1", "2"], "{out}");
        assert!(fds.len() <= 4, "inherited fds leaked: {fds:?}");
        assert_eq!(
            lines.next().unwrap().trim(),
            pid.to_string(),
            "not a session leader"
        );
        assert_eq!(status, ExitStatus::Exited(3));
    }

    #[tokio::test]
    async fn signals_are_reported() {
        let child = spawn(spec(&["/bin/sleep", "30"])).unwrap();
        assert!(signal::alive(child.pid));
        signal::kill_group(child.pid, libc::SIGTERM).unwrap();
        assert_eq!(
            wait_exit(child.pidfd).await,
            ExitStatus::Signaled(libc::SIGTERM)
        );
    }
}
