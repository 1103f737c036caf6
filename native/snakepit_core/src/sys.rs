//! Safe wrappers around the libc calls the native core makes. Every
//! `unsafe` outside a fork child's async-signal-safe block lives here,
//! each with the reason it is sound.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Turns a libc return value into a `Result` (negative: errno).
pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// As `cvt`, retrying on `EINTR`.
fn retry<T: Copy + PartialOrd + Default>(mut call: impl FnMut() -> T) -> io::Result<T> {
    loop {
        let ret = call();
        if ret >= T::default() {
            return Ok(ret);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Takes ownership of a fresh fd a syscall returned.
fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by the kernel to this process and
    // nothing else holds it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

pub fn getpid() -> i32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::getpid() }
}

pub fn getpgrp() -> i32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::getpgrp() }
}

pub fn getpgid(pid: i32) -> io::Result<i32> {
    // SAFETY: a plain syscall on a pid value.
    cvt(unsafe { libc::getpgid(pid) })
}

/// `kill(2)`; a negative `pid` names a process group.
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: a plain syscall on integer values.
    cvt(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// Restores `sig`'s default disposition.
pub fn signal_default(sig: i32) {
    // SAFETY: installs SIG_DFL, not a handler: no Rust code runs on the signal.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
    }
}

/// A pipe whose both ends are close-on-exec: `(read, write)`.
pub fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two fds pipe2 writes.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    Ok((owned(fds[0]), owned(fds[1])))
}

/// Opens `path` read-only, close-on-exec.
pub fn open_read(path: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `path` is a valid NUL-terminated string.
    cvt(unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) }).map(owned)
}

/// Is `path` executable by this process?
pub fn executable(path: &CStr) -> bool {
    // SAFETY: `path` is a valid NUL-terminated string.
    unsafe { libc::access(path.as_ptr(), libc::X_OK) == 0 }
}

/// A pidfd for `pid` (Linux 5.3+).
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: a plain syscall on integer values.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(owned(fd as RawFd))
    }
}

/// How a child ended, as `waitid` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waited {
    Running,
    Exited(i32),
    Signaled(i32),
    /// Reaped by someone else (ECHILD), or an unknown code.
    Gone,
}

/// Non-blocking `waitid(P_PIDFD, ...)`.
pub fn waitid_pidfd(pidfd: &OwnedFd) -> Waited {
    const P_PIDFD: libc::idtype_t = 3;
    // SAFETY: siginfo_t is plain old data; all-zero is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid out-pointer; the fd is ours and open.
    let rc = unsafe {
        libc::waitid(
            P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG,
        )
    };
    if rc < 0 {
        return Waited::Gone;
    }
    // SAFETY: waitid filled `info` for a SIGCHLD-style record.
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Waited::Running;
    }
    match info.si_code {
        libc::CLD_EXITED => Waited::Exited(status),
        libc::CLD_KILLED | libc::CLD_DUMPED => Waited::Signaled(status),
        _ => Waited::Gone,
    }
}

/// Blocking `waitpid(pid)`, for a child that is known to have exited.
pub fn reap(pid: i32) {
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer.
    let _ = retry(|| unsafe { libc::waitpid(pid, &mut status, 0) });
}

/// `read(2)`, retrying on `EINTR`.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes of writes.
    retry(|| unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }).map(|n| n as usize)
}

/// `recv(2)` of one message (a SOCK_SEQPACKET record), retrying on `EINTR`.
pub fn recv(fd: RawFd, buf: &mut [u8], flags: i32) -> io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes of writes.
    retry(|| unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) })
        .map(|n| n as usize)
}

/// `shutdown(2)` both ways.
pub fn shutdown(fd: RawFd) {
    // SAFETY: a plain syscall on an fd value; errors do not matter here.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

/// `getrandom(2)` into `buf`, whole.
pub fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is valid for `rest.len()` bytes of writes.
        let got = retry(|| unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) })?;
        filled += got as usize;
    }
    Ok(())
}

fn sockaddr_un(path: &str) -> io::Result<libc::sockaddr_un> {
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_bytes();
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket path {path:?} is too long or holds a NUL byte"),
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(addr)
}

/// A close-on-exec duplicate of `fd`, when `fd` is an `AF_UNIX`
/// `SOCK_STREAM` socket (anything else is refused: the caller hands over a
/// descriptor number, and must not get a handle on another file by mistake).
pub fn dup_unix_stream(fd: RawFd) -> io::Result<OwnedFd> {
    let option = |name: libc::c_int| -> io::Result<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `value` and `len` are valid for getsockopt to write one int.
        cvt(unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        })?;
        Ok(value)
    };
    if option(libc::SO_DOMAIN)? != libc::AF_UNIX || option(libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {fd} is not a Unix stream socket"),
        ));
    }
    // SAFETY: F_DUPFD_CLOEXEC reads the integer fd and returns a new one.
    Ok(owned(cvt(unsafe {
        libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3)
    })?))
}

/// A close-on-exec `AF_UNIX` `SOCK_SEQPACKET` socket connected to `path`.
pub fn connect_seqpacket(path: &str) -> io::Result<OwnedFd> {
    let addr = sockaddr_un(path)?;
    // SAFETY: a plain syscall on integer values.
    let fd = owned(cvt(unsafe {
        libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0)
    })?);
    // SAFETY: `addr` is a valid sockaddr_un of the length given.
    cvt(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    })?;
    Ok(fd)
}

/// The effective user id of this process.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// Maps `len` bytes of the file `fd` from offset 0, `MAP_SHARED`, read-only.
pub fn mmap_shared(fd: RawFd, len: usize) -> io::Result<*mut u8> {
    // SAFETY: a fresh mapping chosen by the kernel (no fixed address), so no
    // existing memory is affected; the caller owns the returned range.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(ptr.cast())
    }
}

/// A new anonymous memory file (`memfd_create`) that can be sealed, closed
/// on exec. `name` shows in `/proc/<pid>/fd` links only.
pub fn memfd_sealable(name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid C string for the duration of the call; the
    // kernel returns a fresh descriptor or -1.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    cvt(fd).map(owned)
}

/// Adds `seals` (`F_SEAL_*`) to the memory file `fd`. Seals are kept by
/// the file itself, whoever holds a descriptor of it, and never removed.
pub fn add_seals(fd: RawFd, seals: i32) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor with an integer argument touches no memory.
    cvt(unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) }).map(drop)
}

/// The seals of the memory file `fd` (an error for files that are not
/// memory files).
pub fn seals(fd: RawFd) -> io::Result<i32> {
    // SAFETY: as `add_seals`.
    cvt(unsafe { libc::fcntl(fd, libc::F_GET_SEALS) })
}

/// The soft limit on open descriptors (`RLIMIT_NOFILE`).
pub fn nofile_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        1024
    }
}

/// Unmaps a range `mmap_shared` returned.
///
/// # Safety
///
/// `ptr` and `len` must be exactly a mapping `mmap_shared` returned, owned
/// by the caller, and nothing may use that memory afterwards.
pub(crate) unsafe fn munmap(ptr: *mut u8, len: usize) {
    // SAFETY: the caller's contract above.
    unsafe {
        libc::munmap(ptr.cast(), len);
    }
}

/// Registers `fd` with the current tokio runtime for readiness of
/// `interest`. Must run inside a runtime context.
pub fn async_fd(
    fd: OwnedFd,
    interest: tokio::io::Interest,
) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: `fd` is owned by the AsyncFd alone from here on and closed
    // with it, so it cannot be closed or reused while registered.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest) }
        .map_err(io::Error::from)
}

/// A connected pair of close-on-exec `SOCK_SEQPACKET` sockets.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two fds socketpair writes.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    Ok((owned(fds[0]), owned(fds[1])))
}

/// Sends `parts`, joined (one record on a SOCK_SEQPACKET socket; on a
/// stream socket possibly only a first part of them), without copying them
/// together; `flags` as for `sendmsg(2)`
/// (`MSG_NOSIGNAL` is always added). Returns the bytes sent.
pub fn send_parts(socket: RawFd, parts: &[&[u8]], flags: i32) -> io::Result<usize> {
    let mut iov: Vec<libc::iovec> = parts
        .iter()
        .map(|part| libc::iovec {
            iov_base: part.as_ptr() as *mut libc::c_void,
            iov_len: part.len(),
        })
        .collect();
    // SAFETY: msghdr is plain old data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    // SAFETY: `msg` points at `iov`, whose entries point at `parts`; all
    // alive for the call, and sendmsg only reads them.
    retry(|| unsafe { libc::sendmsg(socket, &msg, flags | libc::MSG_NOSIGNAL) }).map(|n| n as usize)
}

/// Sends `data` as one message with `fds` attached (`SCM_RIGHTS`).
pub fn send_with_fds(socket: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let fds_len = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fds_len as u32) } as usize;
    // u64 words keep the control buffer aligned for cmsghdr.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain old data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer has CMSG_SPACE(fds_len) bytes, so the
        // first header and its data (fds_len bytes) fit in it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fds_len as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast(), fds.len());
        }
    }
    // SAFETY: `msg` points at `iov` and `control`, alive for the call.
    retry(|| unsafe { libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL) }).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seqpacket_pair_keeps_message_boundaries_and_passes_fds() {
        let (a, b) = seqpacket_pair().unwrap();
        let (r, w) = pipe_cloexec().unwrap();
        send_with_fds(a.as_raw_fd(), b"first", &[w.as_raw_fd()]).unwrap();
        send_with_fds(a.as_raw_fd(), b"second", &[]).unwrap();
        drop(w);
        let mut buf = [0u8; 64];
        assert_eq!(recv(b.as_raw_fd(), &mut buf, 0).unwrap(), 5);
        assert_eq!(&buf[..5], b"first");
        assert_eq!(recv(b.as_raw_fd(), &mut buf, 0).unwrap(), 6);
        // The passed write end was closed by recv (no CMSG read): the pipe
        // sees EOF once ours is gone.
        assert_eq!(read(r.as_raw_fd(), &mut buf).unwrap(), 0);
    }

    #[test]
    fn parts_leave_as_one_record_and_a_full_socket_would_block() {
        let (a, b) = seqpacket_pair().unwrap();
        assert_eq!(
            send_parts(a.as_raw_fd(), &[b"head", b"", b"tail"], 0).unwrap(),
            8
        );
        let mut buf = [0u8; 64];
        assert_eq!(recv(b.as_raw_fd(), &mut buf, 0).unwrap(), 8);
        assert_eq!(&buf[..8], b"headtail");
        let big = vec![7u8; 64 * 1024];
        let blocked = (0..1000)
            .map(|_| send_parts(a.as_raw_fd(), &[&big], libc::MSG_DONTWAIT))
            .find_map(Result::err)
            .expect("the socket buffer fills up");
        assert_eq!(blocked.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn bad_socket_paths_are_refused() {
        assert!(connect_seqpacket(&"x".repeat(200)).is_err());
        assert!(connect_seqpacket("/nonexistent/sock").is_err());
    }

    #[test]
    fn getrandom_fills_the_buffer() {
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        getrandom(&mut a).unwrap();
        getrandom(&mut b).unwrap();
        assert_ne!(a, b);
    }
}
