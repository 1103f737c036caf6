//! The CPU floor of one request/reply with another process on this machine,
//! without gRPC, HTTP/2, JSON or the BEAM: what any caller that waits for a
//! worker's answer pays in the kernel for the wake-ups alone.
//!
//!     cargo run --release -p snakepit_core --example wakeup_floor
//!
//! "direct": the calling thread writes one byte to a Unix socket and blocks
//! reading the echo from a forked child (2 context switches a call on each
//! side). "one hop": the caller hands the call to a second thread over an
//! eventfd, which does the round trip and wakes the caller back, which is
//! the least a runtime that keeps its schedulers free of blocking calls
//! (the BEAM's NIF rule) can do. The figure is the CPU time of the calling
//! process per call (all its threads), from getrusage.
//!
//! Prints the figures and writes them to bench/results/wakeup_floor.txt
//! (relative to the current directory).

use std::os::fd::RawFd;
use std::time::Instant;

const CALLS: u32 = 20_000;

fn cpu_us() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn byte_round_trip(fd: RawFd) {
    let mut b = [1u8];
    unsafe {
        assert_eq!(libc::write(fd, b.as_ptr().cast(), 1), 1);
        assert_eq!(libc::read(fd, b.as_mut_ptr().cast(), 1), 1);
    }
}

/// Forks an echo child on one end of a socket pair; returns the other end.
fn echo_child() -> (RawFd, i32) {
    let mut fds = [0; 2];
    unsafe {
        assert_eq!(
            libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()),
            0
        );
        let pid = libc::fork();
        if pid == 0 {
            libc::close(fds[0]);
            let mut b = [0u8];
            while libc::read(fds[1], b.as_mut_ptr().cast(), 1) == 1 {
                libc::write(fds[1], b.as_ptr().cast(), 1);
            }
            libc::_exit(0);
        }
        libc::close(fds[1]);
        (fds[0], pid)
    }
}

fn eventfd() -> RawFd {
    unsafe { libc::eventfd(0, 0) }
}

fn signal(fd: RawFd) {
    let one = 1u64;
    unsafe { assert_eq!(libc::write(fd, (&one as *const u64).cast(), 8), 8) };
}

fn wait(fd: RawFd) {
    let mut v = 0u64;
    unsafe { assert_eq!(libc::read(fd, (&mut v as *mut u64).cast(), 8), 8) };
}

fn measure(label: &str, run: impl FnOnce()) -> String {
    let (c0, t0) = (cpu_us(), Instant::now());
    run();
    let cpu = (cpu_us() - c0) / CALLS as f64;
    let wall = t0.elapsed().as_secs_f64() * 1e6 / CALLS as f64;
    format!("{label:<10} cpu {cpu:7.1} us/call   latency {wall:7.1} us/call")
}

fn main() {
    let (sock, child) = echo_child();
    for _ in 0..1_000 {
        byte_round_trip(sock);
    }

    let direct = measure("direct", || {
        for _ in 0..CALLS {
            byte_round_trip(sock);
        }
    });

    let (to_io, to_caller) = (eventfd(), eventfd());
    let io = std::thread::spawn(move || {
        for _ in 0..CALLS {
            wait(to_io);
            byte_round_trip(sock);
            signal(to_caller);
        }
    });
    let hop = measure("one hop", || {
        for _ in 0..CALLS {
            signal(to_io);
            wait(to_caller);
        }
    });
    io.join().unwrap();
    unsafe {
        libc::close(sock);
        libc::waitpid(child, std::ptr::null_mut(), 0);
    }

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let text = format!(
        "wakeup_floor  calls={CALLS}  cores={cores}\n\
         CPU of the calling process per request/reply of one byte with another process:\n\
         {direct}\n{hop}\n"
    );
    print!("{text}");
    let _ = std::fs::create_dir_all("bench/results");
    let _ = std::fs::write("bench/results/wakeup_floor.txt", &text);
}
