//! Signals to single processes and process groups, and liveness checks.
//! Callers validate targets; these refuse pids that would hit everyone.

use std::io;

use crate::sys;

/// Refuses 0, 1, negatives and the VM's own pid.
pub fn valid_target(pid: i32) -> bool {
    pid > 1 && pid != sys::getpid()
}

pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    sys::kill(pid, sig)
}

pub fn kill_group(pgid: i32, sig: i32) -> io::Result<()> {
    sys::kill(-pgid, sig)
}

pub fn own_group() -> i32 {
    sys::getpgrp()
}

pub fn group_of(pid: i32) -> io::Result<i32> {
    sys::getpgid(pid)
}

/// True while the process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    if pid <= 0 || matches!(sys::kill(pid, 0), Err(e) if e.raw_os_error() == Some(libc::ESRCH)) {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(true),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_dangerous_targets() {
        assert!(!valid_target(0));
        assert!(!valid_target(1));
        assert!(!valid_target(-5));
        assert!(!valid_target(sys::getpid()));
        assert!(valid_target(2));
    }

    #[test]
    fn own_process_is_alive_and_a_free_pid_is_not() {
        assert!(alive(sys::getpid()));
        assert!(!alive(i32::MAX - 1));
    }
}
