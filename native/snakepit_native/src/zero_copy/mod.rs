//! Zero-copy regions: large arrays (DLPack) and Arrow IPC streams that
//! cross between the VM and workers as shared memory instead of bytes in a
//! message. A region is a `Region` resource; on the wire it is a marker
//! object in the call's JSON that names the region's memory file:
//!
//! ```json
//! {"__snakepit_zero_copy__": {"kind": "dlpack", "path": "/proc/<pid>/fd/<n>",
//!   "ino": 1234, "bytes": 4096, "dtype": "float32", "shape": [32, 32],
//!   "device": "cpu", "owner": "elixir"}}
//! ```
//!
//! Regions are memory files sealed against resizing
//! (`snakepit_core::shm`), so no worker can truncate memory the VM has
//! mapped. Regions smaller than `inline_below` bytes, and every region
//! while zero copy is off, hold their bytes on the heap and the marker
//! carries them as `"inline"` base64 instead of a `"path"`: the documented
//! copying fallback. Heap regions need no descriptor and no mapping, so
//! only shared ones count towards the live-region limit, which keeps the
//! VM well below the kernel's limits on descriptors and mappings.
//!
//! Lifetimes: `close` closes the region's descriptor (it can no longer be
//! sent); the mapping lives on while any binary made from it is
//! referenced, and goes with the last reference to the resource (so the
//! regions of a process that dies are released with its heap). A memory
//! file dies with the last process that holds it: nothing is left on disk.

pub mod marker;
mod nifs;
pub mod refs;

use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use serde_json::Value;
use snakepit_core::shm::{self, Mapping};

use crate::atoms;

/// Regions at least this large are unmapped on a tokio blocking thread:
/// tearing down a large mapping takes milliseconds and the last reference
/// may go on a scheduler, during garbage collection.
const UNMAP_OFF_SCHEDULER: usize = 8 << 20;

/// The application start zero copy is on for (0 while it is off): a
/// shared region of an earlier start can no longer be sent.
static GENERATION: AtomicU64 = AtomicU64::new(0);
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);
/// The most shared regions alive at once.
static MAX_SHARED: AtomicU64 = AtomicU64::new(0);
/// Regions smaller than this live on the heap.
static INLINE_BELOW: AtomicU64 = AtomicU64::new(0);

static LIVE_REGIONS: AtomicU64 = AtomicU64::new(0);
static LIVE_BYTES: AtomicU64 = AtomicU64::new(0);
static LIVE_SHARED: AtomicU64 = AtomicU64::new(0);
/// The largest region a worker may hand over (0: no limit).
static MAX_BYTES: AtomicU64 = AtomicU64::new(0);

/// Turns zero copy on for a new application start: at most `max_shared`
/// shared regions at once (lowered to what the process's descriptor and
/// mapping limits allow), heap regions below `inline_below` bytes.
/// Returns the limit in force.
pub fn enable(max_shared: u64, inline_below: u64, max_bytes: u64) -> u64 {
    MAX_BYTES.store(max_bytes, Ordering::Relaxed);
    // Half the descriptors stay for sockets, ports and files; each shared
    // region holds one descriptor and one mapping.
    let limit = max_shared
        .min(shm::descriptor_limit() / 2)
        .min(shm::mapping_limit() / 2)
        .max(1);
    MAX_SHARED.store(limit, Ordering::Relaxed);
    INLINE_BELOW.store(inline_below, Ordering::Relaxed);
    let generation = NEXT_GENERATION.fetch_add(1, Ordering::Relaxed);
    GENERATION.store(generation, Ordering::Release);
    limit
}

/// Turns zero copy off: new regions live on the heap, shared regions of
/// this start can no longer be sent.
pub fn disable() {
    GENERATION.store(0, Ordering::Release);
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Dlpack,
    Arrow,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Dlpack => "dlpack",
            Kind::Arrow => "arrow",
        }
    }

    fn parse(name: &str) -> Option<Kind> {
        match name {
            "dlpack" => Some(Kind::Dlpack),
            "arrow" => Some(Kind::Arrow),
            _ => None,
        }
    }

    fn atom(self) -> rustler::Atom {
        match self {
            Kind::Dlpack => atoms::dlpack(),
            Kind::Arrow => atoms::arrow(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Owner {
    Elixir,
    Python,
}

/// A region in shared memory: its mapping, and its memory file's
/// descriptor (what workers open) until the region is closed.
struct Shared {
    mapping: Mapping,
    file: Mutex<Option<File>>,
    ino: u64,
    generation: u64,
}

enum Data {
    Shared(Shared),
    Heap(Vec<u8>),
}

impl Data {
    fn as_slice(&self) -> &[u8] {
        match self {
            Data::Shared(s) => s.mapping.as_slice(),
            Data::Heap(v) => v,
        }
    }
}

pub struct Region {
    data: Data,
    kind: Kind,
    owner: Owner,
    dtype: Option<String>,
    shape: Option<Vec<u64>>,
    metadata: Option<Value>,
    closed: AtomicBool,
}

#[rustler::resource_impl]
impl rustler::Resource for Region {}

/// Why a region could not be made or taken over.
#[derive(Debug)]
pub enum RegionError {
    /// The live-region limit is reached.
    Exhausted(u64),
    Io(std::io::Error),
}

impl std::fmt::Display for RegionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegionError::Exhausted(limit) => write!(
                f,
                "{limit} shared zero-copy regions are alive, the most allowed \
                 (zero_copy: [max_live_regions: ...]); close refs you no longer need"
            ),
            RegionError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// A place among the live shared regions, given back when dropped.
struct Slot;

impl Slot {
    fn take() -> Result<Slot, RegionError> {
        let limit = MAX_SHARED.load(Ordering::Relaxed);
        if LIVE_SHARED.fetch_add(1, Ordering::AcqRel) >= limit {
            LIVE_SHARED.fetch_sub(1, Ordering::AcqRel);
            return Err(RegionError::Exhausted(limit));
        }
        Ok(Slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        LIVE_SHARED.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Region {
    fn new(data: Data, kind: Kind, owner: Owner) -> Region {
        LIVE_REGIONS.fetch_add(1, Ordering::Relaxed);
        LIVE_BYTES.fetch_add(data.as_slice().len() as u64, Ordering::Relaxed);
        Region {
            data,
            kind,
            owner,
            dtype: None,
            shape: None,
            metadata: None,
            closed: AtomicBool::new(false),
        }
    }

    fn shared(region: shm::Region, slot: Slot, kind: Kind, owner: Owner) -> Region {
        // The region holds the slot from here on (given back in its Drop).
        std::mem::forget(slot);
        let shared = Shared {
            mapping: region.mapping,
            file: Mutex::new(Some(region.file)),
            ino: region.ino,
            generation: GENERATION.load(Ordering::Acquire),
        };
        Region::new(Data::Shared(shared), kind, owner)
    }

    pub fn bytes(&self) -> &[u8] {
        self.data.as_slice()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Where workers open the region (`None`: on the heap, or closed).
    pub fn path(&self) -> Option<String> {
        match &self.data {
            Data::Shared(shared) => shared
                .file
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(shm::proc_path),
            Data::Heap(_) => None,
        }
    }

    /// Whether the bytes are in shared memory (else on the heap).
    pub fn is_shared(&self) -> bool {
        matches!(self.data, Data::Shared(_))
    }

    /// Closes the region's descriptor (the first time only): it can no
    /// longer be sent. Mappings, here and in workers, stay valid until
    /// they are dropped.
    pub fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            if let Data::Shared(shared) = &self.data {
                let file = shared.file.lock().unwrap_or_else(|e| e.into_inner()).take();
                drop(file);
            }
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        self.close();
        let data = std::mem::replace(&mut self.data, Data::Heap(Vec::new()));
        let len = data.as_slice().len();
        LIVE_REGIONS.fetch_sub(1, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(len as u64, Ordering::Relaxed);
        if matches!(data, Data::Shared(_)) {
            // The slot `Region::shared` took.
            LIVE_SHARED.fetch_sub(1, Ordering::AcqRel);
        }
        if len >= UNMAP_OFF_SCHEDULER {
            crate::runtime::get().spawn_blocking(move || drop(data));
        }
    }
}

fn shares(len: usize) -> bool {
    GENERATION.load(Ordering::Acquire) != 0 && len as u64 >= INLINE_BELOW.load(Ordering::Relaxed)
}

/// Makes a region of `kind` holding a copy of `data`: in a sealed memory
/// file when zero copy is on and `data` is not small, else on the heap.
pub fn create(kind: Kind, data: &[u8]) -> Result<Region, RegionError> {
    if !shares(data.len()) {
        return Ok(Region::new(Data::Heap(data.to_vec()), kind, Owner::Elixir));
    }
    let slot = Slot::take()?;
    let region = shm::create(kind.name(), data).map_err(RegionError::Io)?;
    Ok(Region::shared(region, slot, kind, Owner::Elixir))
}

/// The largest region, when limited (`zero_copy: [max_bytes: ...]`).
fn max_bytes() -> Option<u64> {
    match MAX_BYTES.load(Ordering::Relaxed) {
        0 => None,
        max => Some(max),
    }
}

/// How many regions are alive in this VM, their bytes, how many are
/// shared, and the most shared ones allowed.
pub fn live() -> (u64, u64, u64, u64) {
    (
        LIVE_REGIONS.load(Ordering::Relaxed),
        LIVE_BYTES.load(Ordering::Relaxed),
        LIVE_SHARED.load(Ordering::Relaxed),
        MAX_SHARED.load(Ordering::Relaxed),
    )
}
