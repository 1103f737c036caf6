//! OS processes: spawning workers in their own session, watching them, and
//! signalling them or their process group.

mod fork_server;
mod nifs;
mod watch;

use snakepit_core::spawn;

/// Called once when the library is loaded, with the path of the
/// `snakepit_guard` program when the build installed it.
pub fn on_load(guard_program: Option<&str>) {
    // Without it guards still work, as forked copies of the VM.
    if let Some(path) = guard_program {
        let _ = spawn::set_guard_program(path);
    }
    // ERTS ignores SIGCHLD, which makes the kernel reap children at once and
    // lose their exit status. Default disposition keeps the status until our
    // watcher collects it with waitid on the child's pidfd.
    snakepit_core::sys::signal_default(libc::SIGCHLD);
    spawn::start_spawner();
}
