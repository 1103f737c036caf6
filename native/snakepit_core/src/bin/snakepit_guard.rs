//! The guard of one worker's process group: `snakepit_guard PGID`, with fd 0
//! the read end of a pipe whose only write end is held by the VM.
//!
//! The VM's spawner starts this program (posix_spawn, or a fork that execs
//! it at once), so the guard does not keep a copy-on-write image of the VM's
//! memory for the worker's whole life. When the read returns (the VM died or
//! released the worker), the guard SIGKILLs the whole group, grandchildren
//! included.

fn main() {
    let pgid = std::env::args()
        .nth(1)
        .and_then(|a| a.parse::<i32>().ok())
        .filter(|&p| p > 1);
    let Some(pgid) = pgid else {
        eprintln!("usage: snakepit_guard PGID (with the guard pipe on fd 0)");
        std::process::exit(2);
    };
    // Only fd 0 is the guard's: the VM's descriptors that were not
    // close-on-exec (its sockets among them) must not stay open in it.
    // SAFETY: closes descriptors this process does not use; touches no memory.
    unsafe {
        libc::syscall(libc::SYS_close_range, 1, u32::MAX, 0);
    }
    let mut byte = 0u8;
    loop {
        // SAFETY: reads at most one byte into `byte`, which lives for the
        // call; fd 0 is the guard pipe (a bad fd only makes read fail).
        let n = unsafe { libc::read(0, (&mut byte as *mut u8).cast(), 1) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        break;
    }
    // SAFETY: kill takes plain integers and touches no memory; `pgid` > 1,
    // so `-pgid` names that one process group, never every process.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}
