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
//! process per call (all its threads), from getrusage: the median of five
//! windows of each kind, alternating.
//!
//! Prints the figures and writes them to bench/results/wakeup_floor.txt
//! (relative to the current directory).

use std::os::fd::RawFd;
use std::time::Instant;

const CALLS: u32 = 20_000;
const WINDOWS: usize = 5;

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

/// CPU and wall time per call, in us, of `run` making `CALLS` calls.
fn measure(run: impl FnOnce()) -> (f64, f64) {
    let (c0, t0) = (cpu_us(), Instant::now());
    run();
    let cpu = (cpu_us() - c0) / CALLS as f64;
    let wall = t0.elapsed().as_secs_f64() * 1e6 / CALLS as f64;
    (cpu, wall)
}

/// The median window's figures, and the CPU range over all windows.
fn summary(label: &str, mut windows: Vec<(f64, f64)>) -> String {
    windows.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (cpu, wall) = windows[windows.len() / 2];
    let (low, high) = (windows[0].0, windows[windows.len() - 1].0);
    format!(
        "{label:<10} cpu {cpu:7.1} us/call   latency {wall:7.1} us/call   \
         (median of {} windows; cpu {low:.1}-{high:.1})",
        windows.len()
    )
}

fn direct(sock: RawFd) -> (f64, f64) {
    measure(|| {
        for _ in 0..CALLS {
            byte_round_trip(sock);
        }
    })
}

fn one_hop(sock: RawFd) -> (f64, f64) {
    let (to_io, to_caller) = (eventfd(), eventfd());
    let io = std::thread::spawn(move || {
        for _ in 0..CALLS {
            wait(to_io);
            byte_round_trip(sock);
            signal(to_caller);
        }
    });
    let figures = measure(|| {
        for _ in 0..CALLS {
            signal(to_io);
            wait(to_caller);
        }
    });
    io.join().unwrap();
    unsafe {
        libc::close(to_io);
        libc::close(to_caller);
    }
    figures
}

fn main() {
    let (sock, child) = echo_child();
    for _ in 0..1_000 {
        byte_round_trip(sock);
    }

    // The machine's noise moves a single window's figure by half: the two
    // kinds alternate, and each reports its median window.
    let (mut directs, mut hops) = (Vec::new(), Vec::new());
    for _ in 0..WINDOWS {
        directs.push(direct(sock));
        hops.push(one_hop(sock));
    }
    let direct = summary("direct", directs);
    let hop = summary("one hop", hops);
    unsafe {
        libc::close(sock);
        libc::waitpid(child, std::ptr::null_mut(), 0);
    }

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let text = format!(
        "wakeup_floor  calls={CALLS} per window  cores={cores}\n\
         CPU of the calling process per request/reply of one byte with another process:\n\
         {direct}\n{hop}\n"
    );
    print!("{text}");
    let _ = std::fs::create_dir_all("bench/results");
    let _ = std::fs::write("bench/results/wakeup_floor.txt", &text);
}
