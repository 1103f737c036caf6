//! Signals to single processes and process groups, and liveness checks.
//! Callers validate targets; these refuse pids that would hit everyone.

use std::io;

use crate::spawn::cvt;

/// Refuses 0, 1, negatives and the VM's own pid.
pub fn valid_target(pid: i32) -> bool {
    pid > 1 && pid != unsafe { libc::getpid() }
}

pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    cvt(unsafe { libc::kill(pid, sig) }).map(drop)
}

pub fn kill_group(pgid: i32, sig: i32) -> io::Result<()> {
    cvt(unsafe { libc::kill(-pgid, sig) }).map(drop)
}

pub fn own_group() -> i32 {
    unsafe { libc::getpgrp() }
}

pub fn group_of(pid: i32) -> io::Result<i32> {
    let pgid = unsafe { libc::getpgid(pid) };
    if pgid < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(pgid)
    }
}

/// True while the process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    if pid <= 0
        || unsafe { libc::kill(pid, 0) } < 0
            && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    {
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
        assert!(!valid_target(unsafe { libc::getpid() }));
        assert!(valid_target(2));
    }

    #[test]
    fn own_process_is_alive_and_a_free_pid_is_not() {
        assert!(alive(unsafe { libc::getpid() }));
        assert!(!alive(i32::MAX - 1));
    }
}
