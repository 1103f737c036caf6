//! The controller's end of a fork server (`python -m snakepit_bridge.fork_server`).
//!
//! A fork server is a Python process that imported grpc and the bridge once
//! and forks ready workers on request, so a pool of 100 does not pay for 100
//! imports. It speaks JSON over a `SOCK_SEQPACKET` Unix socket, one object a
//! message:
//!
//! - to it: `{"id", "argv", "env", "cwd"}` with the write ends of the
//!   child's stdout and stderr attached as `SCM_RIGHTS`;
//! - from it: `{"id", "pid"}` or `{"id", "error"}` right after the fork, and
//!   `{"exit": pid, "code" | "signal"}` when it reaps a child.
//!
//! The children are the fork server's, not ours, so their exit status comes
//! from these messages rather than from `waitid`. Closing the socket makes
//! the fork server exit; its children then die of their parent-death signal.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::auth;
use crate::exit::ExitStatus;
use crate::signal;
use crate::sys;

/// Largest message either way; requests carry argv and the environment.
const MAX_MESSAGE: usize = 1 << 20;

type Reply = mpsc::SyncSender<Result<i32, String>>;

#[derive(Default)]
struct Routes {
    /// Requests waiting for their pid, with the exit channel of the child.
    pending: HashMap<u64, (Reply, oneshot::Sender<ExitStatus>)>,
    /// Children that run, by pid.
    exits: HashMap<i32, oneshot::Sender<ExitStatus>>,
    closed: bool,
}

pub struct ForkClient {
    socket: Arc<OwnedFd>,
    routes: Arc<Mutex<Routes>>,
    next_id: AtomicU64,
}

/// A child forked by the fork server.
pub struct ForkedChild {
    pub pid: i32,
    /// Resolves with the exit status the fork server reports; fails when the
    /// fork server is gone before it could report one.
    pub exit: oneshot::Receiver<ExitStatus>,
}

impl ForkClient {
    /// Connects to the fork server listening at `path` and starts the thread
    /// that reads its replies.
    pub fn connect(path: &str) -> io::Result<ForkClient> {
        let socket = Arc::new(sys::connect_seqpacket(path)?);
        let routes = Arc::new(Mutex::new(Routes::default()));
        let (reader_socket, reader_routes) = (socket.clone(), routes.clone());
        std::thread::Builder::new()
            .name("snakepit-forksrv".into())
            .spawn(move || read_loop(&reader_socket, &reader_routes))?;
        Ok(ForkClient {
            socket,
            routes,
            next_id: AtomicU64::new(1),
        })
    }

    /// Asks for a child running `argv` with exactly `env` in `cwd`, writing
    /// to `stdout`/`stderr`, and waits up to `timeout` for its pid.
    pub fn spawn(
        &self,
        argv: &[String],
        env: &[(String, String)],
        cwd: Option<&str>,
        stdout: OwnedFd,
        stderr: OwnedFd,
        timeout: Duration,
    ) -> io::Result<ForkedChild> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        let (exit_tx, exit_rx) = oneshot::channel();
        {
            let mut routes = self.lock();
            if routes.closed {
                return Err(io::Error::other("the fork server is gone"));
            }
            routes.pending.insert(id, (reply_tx, exit_tx));
        }
        // The fork server refuses requests without this VM's secret; the
        // worker gets it in its environment, never on its command line.
        let mut env = env.to_vec();
        env.retain(|(k, _)| k != auth::ENV_VAR);
        env.push((auth::ENV_VAR.to_string(), auth::token().to_string()));
        let message = json!({
            "id": id,
            "argv": argv,
            "env": env,
            "cwd": cwd,
            "token": auth::token(),
        })
        .to_string();
        let sent = sys::send_with_fds(
            self.socket.as_raw_fd(),
            message.as_bytes(),
            &[stdout.as_raw_fd(), stderr.as_raw_fd()],
        );
        // The child holds its own copies now; ours would keep the pipes open.
        drop((stdout, stderr));
        if let Err(err) = sent {
            self.lock().pending.remove(&id);
            return Err(err);
        }
        match reply_rx.recv_timeout(timeout) {
            Ok(Ok(pid)) => Ok(ForkedChild { pid, exit: exit_rx }),
            Ok(Err(message)) => Err(io::Error::other(message)),
            Err(_) => {
                // A reply that comes later finds no one waiting and kills
                // the child it names (see `route`); one that slipped in
                // just now is killed here.
                self.lock().pending.remove(&id);
                if let Ok(Ok(pid)) = reply_rx.try_recv() {
                    kill_unowned(pid);
                }
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the fork server did not answer in time",
                ))
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for ForkClient {
    fn drop(&mut self) {
        // Wakes the reader with EOF; the fork server sees EOF and exits.
        sys::shutdown(self.socket.as_raw_fd());
    }
}

fn kill_unowned(pid: i32) {
    if signal::valid_target(pid) {
        let _ = signal::kill_group(pid, libc::SIGKILL);
        let _ = signal::kill(pid, libc::SIGKILL);
    }
}

fn read_loop(socket: &OwnedFd, routes: &Mutex<Routes>) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let n = match sys::recv(socket.as_raw_fd(), &mut buf, 0) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Ok(message) = serde_json::from_slice::<Value>(&buf[..n]) {
            route(&message, routes);
        }
    }
    let mut routes = routes.lock().unwrap_or_else(|e| e.into_inner());
    routes.closed = true;
    for (_, (reply, _)) in routes.pending.drain() {
        let _ = reply.send(Err("the fork server exited".into()));
    }
    // Dropping the exit senders tells each watcher to fall back on its pidfd.
    routes.exits.clear();
}

fn route(message: &Value, routes: &Mutex<Routes>) {
    let int = |key: &str| message.get(key).and_then(Value::as_i64);
    let mut routes = routes.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(pid) = int("exit") {
        let status = match (int("code"), int("signal")) {
            (Some(code), _) => ExitStatus::Exited(code as i32),
            (None, Some(sig)) => ExitStatus::Signaled(sig as i32),
            _ => ExitStatus::Unknown,
        };
        if let Some(tx) = routes.exits.remove(&(pid as i32)) {
            let _ = tx.send(status);
        }
        return;
    }
    let Some(id) = int("id") else { return };
    let Some((reply, exit_tx)) = routes.pending.remove(&(id as u64)) else {
        // Its requester gave up; nobody will ever own this child.
        if let Some(pid) = int("pid") {
            kill_unowned(pid as i32);
        }
        return;
    };
    match (int("pid"), message.get("error").and_then(Value::as_str)) {
        (Some(pid), _) if pid > 0 => {
            routes.exits.insert(pid as i32, exit_tx);
            let _ = reply.send(Ok(pid as i32));
        }
        (_, Some(error)) => {
            let _ = reply.send(Err(error.to_string()));
        }
        _ => {
            let _ = reply.send(Err(format!("unexpected fork server reply: {message}")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A stand-in fork server: accepts one controller, and for each request
    /// writes the request's argv to the stdout fd it was handed, answers
    /// with a made-up pid and then reports that pid's exit.
    fn fake_server(path: &str) -> std::thread::JoinHandle<()> {
        let listener =
            unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (dst, src) in addr.sun_path.iter_mut().zip(path.as_bytes()) {
            *dst = *src as libc::c_char;
        }
        unsafe {
            assert_eq!(
                libc::bind(
                    listener,
                    (&addr as *const libc::sockaddr_un).cast(),
                    std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
                ),
                0
            );
            assert_eq!(libc::listen(listener, 1), 0);
        }
        std::thread::spawn(move || unsafe {
            let conn = libc::accept(listener, std::ptr::null_mut(), std::ptr::null_mut());
            let mut next_pid = 4_000_000;
            loop {
                let mut buf = vec![0u8; 4096];
                let mut control = vec![0u64; 16];
                let mut iov = libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: buf.len(),
                };
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = &mut iov;
                msg.msg_iovlen = 1;
                msg.msg_control = control.as_mut_ptr().cast();
                msg.msg_controllen = 128;
                let n = libc::recvmsg(conn, &mut msg, libc::MSG_CMSG_CLOEXEC);
                if n <= 0 {
                    break;
                }
                let request: Value = serde_json::from_slice(&buf[..n as usize]).unwrap();
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                let fds: *const std::os::fd::RawFd = libc::CMSG_DATA(cmsg).cast();
                let (out, err) = (*fds, *fds.add(1));
                let text = request["argv"].to_string();
                libc::write(out, text.as_ptr().cast(), text.len());
                libc::close(out);
                libc::close(err);
                next_pid += 1;
                for reply in [
                    json!({"id": request["id"], "pid": next_pid}),
                    json!({"exit": next_pid, "code": 3}),
                ] {
                    let s = reply.to_string();
                    libc::send(conn, s.as_ptr().cast(), s.len(), 0);
                }
            }
            libc::close(conn);
            libc::close(listener);
        })
    }

    #[tokio::test]
    async fn passes_the_pipes_and_routes_pid_and_exit_status() {
        let dir = std::env::temp_dir().join(format!("snakepit-fork-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fs.sock").to_string_lossy().into_owned();
        let _ = std::fs::remove_file(&path);
        let server = fake_server(&path);
        let client = ForkClient::connect(&path).unwrap();

        for round in 0..2 {
            let (out_r, out_w) = crate::spawn::pipe_cloexec().unwrap();
            let (_err_r, err_w) = crate::spawn::pipe_cloexec().unwrap();
            let argv = vec!["python".to_string(), format!("round-{round}")];
            let child = client
                .spawn(&argv, &[], None, out_w, err_w, Duration::from_secs(5))
                .unwrap();
            assert_eq!(child.pid, 4_000_001 + round);
            assert_eq!(child.exit.await.unwrap(), ExitStatus::Exited(3));
            let mut text = String::new();
            std::fs::File::from(out_r)
                .read_to_string(&mut text)
                .unwrap();
            assert_eq!(text, format!("[\"python\",\"round-{round}\"]"));
        }

        drop(client);
        server.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_gone_server_is_an_error_not_a_hang() {
        let err = ForkClient::connect("/nonexistent/snakepit/fork.sock")
            .err()
            .expect("connecting to a missing socket fails");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
