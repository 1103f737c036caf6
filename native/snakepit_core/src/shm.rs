//! Shared-memory regions for zero-copy payloads: anonymous memory files
//! (`memfd_create`) sealed so that their size can never change, mapped
//! `MAP_SHARED` read-only by the VM and by workers.
//!
//! Why memory files and seals: a mapped file that another process
//! truncates turns every later read of the lost pages into `SIGBUS`,
//! which kills the whole VM. Workers run as the same user as the VM, so
//! file permissions cannot stop them. A memory file sealed with
//! `F_SEAL_SHRINK | F_SEAL_GROW` cannot change size for anyone, for as
//! long as it exists, and seals can never be removed; the VM maps only
//! files that carry both seals, so no worker can pull memory from under it.
//!
//! A memory file has no name in any directory: another process opens it
//! through `/proc/<pid>/fd/<fd>` of a process that holds it (workers run as
//! the VM's user, so the kernel allows it), and the inode number in the
//! marker tells it apart from whatever later reuses that descriptor. The
//! memory goes when the last descriptor and mapping of it go, so nothing
//! is left behind when a process dies, however it dies.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::sys;

/// The kinds of payload a region holds.
pub const KINDS: [&str; 2] = ["dlpack", "arrow"];

/// The seals without which a region is never mapped: its size is fixed.
pub const SIZE_SEALS: i32 = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;

/// The seal the VM adds to a worker's region once it holds its own
/// descriptor of it: the worker may then close its own (see the Python
/// `zero_copy` module).
pub const ADOPTED_SEAL: i32 = libc::F_SEAL_SEAL;

/// A mapping of a whole region. Unmapped when dropped.
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is owned by this value and mapped read-only here, of
// a file whose size is sealed: no page of it can go away while it is
// mapped, from any thread.
unsafe impl Send for Mapping {}
// SAFETY: this process only reads it. (A region a worker made with
// `empty()` is not sealed against writes: its maker may still change its
// bytes, never its size. That is shared memory's ordinary contract, as for
// any mmap-based IPC: readers may see changing bytes, never a fault.)
unsafe impl Sync for Mapping {}

impl Mapping {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` maps `len` readable bytes for as long as `self`,
        // and the file's size is sealed, so every page stays backed (the
        // bytes of a worker's writable region may change, see `Sync`).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: `ptr`/`len` are the whole mapping this value owns, and
            // no slice of it outlives `self` (`as_slice` borrows it).
            unsafe { sys::munmap(self.ptr, self.len) };
        }
    }
}

/// A region: its memory file and a read-only mapping of all of it.
pub struct Region {
    pub file: File,
    pub mapping: Mapping,
    /// The file's inode number: with the path, it names the region.
    pub ino: u64,
}

/// Why a region another process names cannot be opened.
#[derive(Debug, PartialEq, Eq)]
pub enum OpenError {
    /// The path is not `/proc/<pid>/fd/<n>`.
    NotAProcPath,
    /// Nothing is open there any more (closed, or its process is gone).
    Gone(String),
    /// It is there but is not a memory file sealed against resizing.
    NotSealed,
    /// It is not the region the marker describes (another inode, size).
    Mismatch(String),
    Io(String),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::NotAProcPath => write!(f, "its path is not /proc/<pid>/fd/<n>"),
            OpenError::Gone(e) => write!(f, "the region is gone ({e})"),
            OpenError::NotSealed => write!(
                f,
                "it is not a memory file sealed against shrinking and growing"
            ),
            OpenError::Mismatch(what) => write!(f, "it is not the region named: {what}"),
            OpenError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// Creates a region of `kind` holding a copy of `data`: written with one
/// write call (no page faults of a writable mapping), sealed against any
/// change (`SHRINK | GROW | WRITE | SEAL`), mapped read-only.
pub fn create(kind: &str, data: &[u8]) -> io::Result<Region> {
    let name: &CStr = match kind {
        "arrow" => c"snakepit-arrow",
        _ => c"snakepit-dlpack",
    };
    let file = File::from(sys::memfd_sealable(name)?);
    file.write_all_at(data, 0)?;
    sys::add_seals(
        file.as_raw_fd(),
        SIZE_SEALS | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL,
    )?;
    let ino = file.metadata()?.ino();
    let mapping = map(&file, data.len())?;
    Ok(Region { file, mapping, ino })
}

/// Opens the region another process holds at `path`
/// (`/proc/<pid>/fd/<n>`), which its marker says has inode `ino` and
/// `len` bytes. Refused unless it is a memory file sealed against
/// shrinking and growing, of exactly that inode and size; `len` must have
/// been checked against the caller's limits already. On success the
/// region is marked adopted (`ADOPTED_SEAL`) when it can be.
pub fn open(path: &str, ino: Option<u64>, len: u64) -> Result<Region, OpenError> {
    parse_proc_path(path).ok_or(OpenError::NotAProcPath)?;
    // Non-blocking: a descriptor naming a FIFO must not hang the open. No
    // controlling terminal is ever taken. Read-write when allowed, so the
    // adopted seal can be added; a memory file can be opened for writing
    // even when sealed against writes.
    let open = |write: bool| {
        OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(Path::new(path))
    };
    let file = match open(true) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            open(false).map_err(|e| OpenError::Gone(e.to_string()))?
        }
        Err(e) => return Err(OpenError::Gone(e.to_string())),
    };
    let meta = file.metadata().map_err(|e| OpenError::Io(e.to_string()))?;
    if !meta.file_type().is_file() {
        return Err(OpenError::NotSealed);
    }
    let seals = sys::seals(file.as_raw_fd()).map_err(|_| OpenError::NotSealed)?;
    if seals & SIZE_SEALS != SIZE_SEALS {
        return Err(OpenError::NotSealed);
    }
    if let Some(ino) = ino {
        if meta.ino() != ino {
            return Err(OpenError::Mismatch(format!(
                "inode {} where the marker says {ino}",
                meta.ino()
            )));
        }
    }
    // The size is sealed now: what fstat says is what it stays.
    let size = file
        .metadata()
        .map_err(|e| OpenError::Io(e.to_string()))?
        .len();
    if size != len {
        return Err(OpenError::Mismatch(format!(
            "{size} bytes where the marker says {len}"
        )));
    }
    let _ = sys::add_seals(file.as_raw_fd(), ADOPTED_SEAL);
    let mapping = map(&file, len as usize).map_err(|e| OpenError::Io(e.to_string()))?;
    Ok(Region {
        ino: meta.ino(),
        file,
        mapping,
    })
}

fn map(file: &File, len: usize) -> io::Result<Mapping> {
    if len == 0 {
        return Ok(Mapping {
            ptr: std::ptr::null_mut(),
            len: 0,
        });
    }
    let ptr = sys::mmap_shared(file.as_raw_fd(), len)?;
    Ok(Mapping { ptr, len })
}

/// Where another process opens the descriptor `fd` of this process.
pub fn proc_path(fd: &impl AsRawFd) -> String {
    format!("/proc/{}/fd/{}", std::process::id(), fd.as_raw_fd())
}

/// `(pid, fd)` of a path `/proc/<pid>/fd/<fd>`, digits only.
pub fn parse_proc_path(path: &str) -> Option<(u32, i32)> {
    let rest = path.strip_prefix("/proc/")?;
    let (pid, fd) = rest.split_once("/fd/")?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(fd) {
        return None;
    }
    Some((pid.parse().ok()?, fd.parse().ok()?))
}

/// The parent pid of process `pid` (field 4 of `/proc/<pid>/stat`).
pub fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Whether `pid` is a descendant of this process within `depth`
/// generations (a worker, or a worker started by the fork server).
pub fn is_descendant(pid: u32, depth: usize) -> bool {
    let me = std::process::id();
    let mut current = pid;
    for _ in 0..depth {
        match parent_pid(current) {
            Some(parent) if parent == me => return true,
            Some(parent) if parent > 1 => current = parent,
            _ => return false,
        }
    }
    false
}

/// Descriptors this process may still open: the soft `RLIMIT_NOFILE`.
pub fn descriptor_limit() -> u64 {
    sys::nofile_limit()
}

/// The kernel's limit on mappings per process (`vm.max_map_count`).
pub fn mapping_limit() -> u64 {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(65_530)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_is_sealed_and_read_back_through_its_proc_path() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let made = create("dlpack", &data).unwrap();
        assert_eq!(made.mapping.as_slice(), &data[..]);
        let path = proc_path(&made.file);
        let seen = open(&path, Some(made.ino), data.len() as u64).unwrap();
        assert_eq!(seen.mapping.as_slice(), &data[..]);
        // Nobody can change its size or its bytes.
        assert!(made.file.set_len(10).is_err());
        assert!(seen.file.set_len(10).is_err());
        assert!(seen.file.set_len(200_000).is_err());
        assert!(seen.file.write_all_at(b"x", 0).is_err());
        // Closing the maker's descriptor leaves the other one valid.
        drop(made);
        assert_eq!(seen.mapping.as_slice()[99_999], (99_999 % 251) as u8);
    }

    #[test]
    fn unsealed_files_other_inodes_and_wrong_sizes_are_refused() {
        let file = File::from(sys::memfd_sealable(c"test").unwrap());
        file.set_len(4096).unwrap();
        let path = proc_path(&file);
        assert_eq!(open(&path, None, 4096).err(), Some(OpenError::NotSealed));
        // A growing-only seal is not enough.
        sys::add_seals(file.as_raw_fd(), libc::F_SEAL_GROW).unwrap();
        assert_eq!(open(&path, None, 4096).err(), Some(OpenError::NotSealed));
        sys::add_seals(file.as_raw_fd(), libc::F_SEAL_SHRINK).unwrap();
        let ino = file.metadata().unwrap().ino();
        assert!(matches!(
            open(&path, Some(ino + 1), 4096),
            Err(OpenError::Mismatch(_))
        ));
        assert!(matches!(
            open(&path, Some(ino), 4095),
            Err(OpenError::Mismatch(_))
        ));
        let ok = open(&path, Some(ino), 4096).unwrap();
        // Adopted: the maker can tell (and may close its descriptor).
        assert_ne!(sys::seals(file.as_raw_fd()).unwrap() & ADOPTED_SEAL, 0);
        assert_eq!(ok.mapping.len(), 4096);
    }

    #[test]
    fn plain_files_sockets_and_bad_paths_are_refused() {
        let dir = std::env::temp_dir().join(format!("snakepit-shm-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let plain = File::create(dir.join("plain")).unwrap();
        plain.set_len(10).unwrap();
        assert_eq!(
            open(&proc_path(&plain), None, 10).err(),
            Some(OpenError::NotSealed)
        );
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(open(&proc_path(&a), None, 0).is_err());
        for bad in [
            "/etc/passwd",
            "/proc/self/fd/0",
            "/proc/1/fd/../../etc/passwd",
            "/proc//fd/1",
            "/proc/1/fd/",
            "/proc/99999999999/fd/1",
        ] {
            assert_eq!(
                open(bad, None, 0).err(),
                Some(OpenError::NotAProcPath),
                "{bad}"
            );
        }
        assert!(matches!(
            open("/proc/1/fd/999999", None, 0),
            Err(OpenError::Gone(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn empty_regions_need_no_mapping() {
        let made = create("arrow", b"").unwrap();
        assert!(made.mapping.is_empty());
        let seen = open(&proc_path(&made.file), Some(made.ino), 0).unwrap();
        assert!(seen.mapping.as_slice().is_empty());
    }

    #[test]
    fn this_process_is_no_descendant_of_itself_but_a_child_is() {
        assert!(!is_descendant(std::process::id(), 3));
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert!(is_descendant(child.id(), 3));
        child.kill().unwrap();
        let _ = child.wait();
        assert!(descriptor_limit() > 0 && mapping_limit() > 0);
    }
}
