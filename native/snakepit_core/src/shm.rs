//! Shared-memory regions for zero-copy payloads: one file per region in a
//! private directory (mode 0700, on `/dev/shm` where it exists), mapped
//! `MAP_SHARED` by the VM and by workers. The VM writes a region once, with
//! a write call, and only ever maps regions read-only.
//!
//! Names are `<id>.<kind>` with a random 128-bit id, and only files of that
//! shape directly inside the directory are ever opened or removed, so a
//! worker cannot point the VM at any other file.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::sys;

/// The kinds of payload a region holds, as they appear in file names.
pub const KINDS: [&str; 2] = ["dlpack", "arrow"];

/// A mapping of a whole region file. Unmapped when dropped; the file is
/// the owner's to remove.
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is read-only memory owned by this value.
unsafe impl Send for Mapping {}
// SAFETY: as above: shared access is read-only.
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
        // SAFETY: `ptr` maps `len` readable bytes for as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len > 0 {
            sys::munmap(self.ptr, self.len);
        }
    }
}

/// A new random region name for `kind`: `<32 hex digits>.<kind>`.
pub fn new_name(kind: &str) -> io::Result<String> {
    let id: String = crate::auth::random_bytes(16)?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(format!("{id}.{kind}"))
}

/// Is `path` a region file directly inside `dir` (by its name's shape)?
pub fn is_region_path(dir: &Path, path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let Some((id, kind)) = name.split_once('.') else {
        return false;
    };
    path.parent() == Some(dir)
        && id.len() == 32
        && id.bytes().all(|b| b.is_ascii_hexdigit())
        && KINDS.contains(&kind)
}

/// Creates the region file `path` (0600; it must not exist) holding `data`
/// and maps it read-only: the one copy into shared memory.
///
/// The bytes go in with `pwrite`, not through a writable mapping: on a
/// memory file system every page of a fresh mapping costs a page fault
/// that allocates it, and a write call allocates and fills pages without
/// them (half the time for 48 MiB here; bench/zero_copy.exs). The mapping
/// is made without populating it, so it costs nothing until it is read.
pub fn create(path: &Path, data: &[u8]) -> io::Result<Mapping> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let result = file
        .write_all_at(data, 0)
        .and_then(|()| map(&file, data.len()));
    if result.is_err() {
        let _ = fs::remove_file(path);
    }
    result
}

/// Maps an existing region file read-only, whole.
pub fn open(path: &Path) -> io::Result<Mapping> {
    let file = OpenOptions::new().read(true).open(path)?;
    let len = file.metadata()?.len() as usize;
    map(&file, len)
}

fn map(file: &fs::File, len: usize) -> io::Result<Mapping> {
    if len == 0 {
        return Ok(Mapping {
            ptr: std::ptr::null_mut(),
            len: 0,
        });
    }
    let ptr = sys::mmap_shared(file.as_raw_fd(), len)?;
    Ok(Mapping { ptr, len })
}

/// Removes the region files in `dir` and `dir` itself.
pub fn remove_dir(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The region files currently in `dir`.
pub fn list(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_region_path(dir, p))
                .collect()
        })
        .unwrap_or_default()
}

/// The prefix of every instance directory: `snakepit-zc-<pid>-<start>-<id>`,
/// with the VM's OS pid, its start time in clock ticks since boot (so a
/// reused pid is told apart) and a random id per application start.
pub const DIR_PREFIX: &str = "snakepit-zc-";

/// Where instance directories go: `/dev/shm` where it is a directory (the
/// memory file system), else the system's temporary directory.
pub fn default_base() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// The start time of process `pid` in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`), or `None` when there is no such process.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Creates this VM's private directory for a new application start under
/// `base` (mode 0700).
pub fn create_instance_dir(base: &Path) -> io::Result<PathBuf> {
    let pid = std::process::id();
    let start = process_start_time(pid).unwrap_or(0);
    let id = &new_name("dlpack")?[..8];
    let dir = base.join(format!("{DIR_PREFIX}{pid}-{start}-{id}"));
    fs::DirBuilder::new().mode(0o700).create(&dir).map(|()| dir)
}

/// Removes the instance directories under `base` that belong to VMs no
/// longer running (killed before they could clean up), and only those this
/// user owns. Returns how many were removed.
pub fn remove_stale_dirs(base: &Path) -> usize {
    let Ok(entries) = fs::read_dir(base) else {
        return 0;
    };
    let uid = sys::effective_uid();
    entries
        .filter_map(Result::ok)
        .filter(|entry| {
            let name = entry.file_name();
            let Some((pid, start)) = name.to_str().and_then(parse_dir_name) else {
                return false;
            };
            let ours = entry
                .metadata()
                .is_ok_and(|m| m.is_dir() && std::os::unix::fs::MetadataExt::uid(&m) == uid);
            ours && process_start_time(pid) != Some(start)
        })
        .filter(|entry| fs::remove_dir_all(entry.path()).is_ok())
        .count()
}

fn parse_dir_name(name: &str) -> Option<(u32, u64)> {
    let mut parts = name.strip_prefix(DIR_PREFIX)?.splitn(3, '-');
    let pid = parts.next()?.parse().ok()?;
    let start = parts.next()?.parse().ok()?;
    parts.next()?;
    Some((pid, start))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(new_name("dlpack").unwrap());
        fs::create_dir(&dir).unwrap();
        dir
    }

    #[test]
    fn a_region_is_written_once_and_read_back_through_another_mapping() {
        let dir = tmp_dir();
        let path = dir.join(new_name("dlpack").unwrap());
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let made = create(&path, &data).unwrap();
        let seen = open(&path).unwrap();
        assert_eq!(made.as_slice(), &data[..]);
        assert_eq!(seen.as_slice(), &data[..]);
        // An existing file is never overwritten.
        assert!(create(&path, b"x").is_err());
        assert_eq!(list(&dir), vec![path.clone()]);
        drop(made);
        // The mapping outlives the file's name.
        fs::remove_file(&path).unwrap();
        assert_eq!(seen.as_slice()[99_999], (99_999 % 251) as u8);
        remove_dir(&dir).unwrap();
    }

    #[test]
    fn empty_regions_need_no_mapping() {
        let dir = tmp_dir();
        let path = dir.join(new_name("arrow").unwrap());
        assert!(create(&path, b"").unwrap().is_empty());
        assert!(open(&path).unwrap().as_slice().is_empty());
        remove_dir(&dir).unwrap();
    }

    #[test]
    fn only_region_files_inside_the_directory_are_regions() {
        let dir = Path::new("/dev/shm/snakepit-zc-1-x");
        let good = dir.join(format!("{}.dlpack", "a".repeat(32)));
        assert!(is_region_path(dir, &good));
        assert!(!is_region_path(dir, Path::new("/etc/passwd")));
        assert!(!is_region_path(dir, &dir.join("../other/x.dlpack")));
        assert!(!is_region_path(
            dir,
            &dir.join(format!("{}.txt", "a".repeat(32)))
        ));
        assert!(!is_region_path(dir, &dir.join("short.dlpack")));
        assert!(!is_region_path(
            dir,
            &dir.join("sub").join(format!("{}.arrow", "b".repeat(32)))
        ));
    }

    #[test]
    fn instance_dirs_of_dead_vms_are_stale_and_ours_is_not() {
        let base = tmp_dir();
        let ours = create_instance_dir(&base).unwrap();
        let mode = fs::metadata(&ours).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // pid 0 is never a process; a live pid with the wrong start time is
        // a reused pid.
        let dead = base.join(format!("{DIR_PREFIX}0-5-abcd1234"));
        let start = process_start_time(std::process::id()).unwrap();
        let reused = base.join(format!(
            "{DIR_PREFIX}{}-{}-abcd1234",
            std::process::id(),
            start + 1
        ));
        let unrelated = base.join("snakepit-zc-notes");
        for dir in [&dead, &reused, &unrelated] {
            fs::create_dir(dir).unwrap();
        }
        fs::write(dead.join(new_name("arrow").unwrap()), b"left behind").unwrap();
        assert_eq!(remove_stale_dirs(&base), 2);
        assert!(ours.is_dir() && unrelated.is_dir());
        assert!(!dead.exists() && !reused.exists());
        remove_dir(&base).unwrap();
    }
}
