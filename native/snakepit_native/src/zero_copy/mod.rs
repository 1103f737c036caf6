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

mod nifs;

use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use base64::Engine;
use rustler::{Encoder, Env, ResourceArc, Term};
use serde_json::{Map, Value};
use snakepit_core::shm::{self, Mapping};

use crate::atoms;

/// The key of a marker object.
pub const MARKER: &str = "__snakepit_zero_copy__";

/// Regions at least this large are unmapped on a tokio blocking thread:
/// tearing down a large mapping takes milliseconds and the last reference
/// may go on a scheduler, during garbage collection.
const UNMAP_OFF_SCHEDULER: usize = 8 << 20;

/// How many generations of processes a worker may be below the VM (the
/// fork server's children are grandchildren).
const WORKER_DEPTH: usize = 3;

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

// -- the wire marker ------------------------------------------------------

/// Writes the marker of the `%Snakepit.ZeroCopyRef{}` `term` as JSON.
pub fn write_marker(term: Term, out: &mut Vec<u8>) -> Result<(), String> {
    let region: ResourceArc<Region> = term
        .map_get(atoms::ref_())
        .and_then(|r| r.decode())
        .map_err(|_| {
            "a %Snakepit.ZeroCopyRef{} that is not a live region of this Snakepit \
             (made by another instance, or built by hand)"
                .to_string()
        })?;
    if region.is_closed() {
        return Err("a %Snakepit.ZeroCopyRef{} that was closed".into());
    }
    let mut body = Map::new();
    body.insert("kind".into(), region.kind.name().into());
    body.insert("bytes".into(), region.bytes().len().into());
    body.insert("device".into(), "cpu".into());
    body.insert(
        "owner".into(),
        match region.owner {
            Owner::Elixir => "elixir",
            Owner::Python => "python",
        }
        .into(),
    );
    if let Some(dtype) = &region.dtype {
        body.insert("dtype".into(), dtype.as_str().into());
    }
    if let Some(shape) = &region.shape {
        body.insert("shape".into(), shape.clone().into());
    }
    match &region.data {
        Data::Shared(shared) => {
            if shared.generation != GENERATION.load(Ordering::Acquire) {
                return Err(
                    "a %Snakepit.ZeroCopyRef{} of an earlier start of Snakepit (its shared \
                     memory can no longer be sent)"
                        .into(),
                );
            }
            let file = shared.file.lock().unwrap_or_else(|e| e.into_inner());
            let Some(file) = file.as_ref() else {
                return Err("a %Snakepit.ZeroCopyRef{} that was closed".into());
            };
            body.insert("path".into(), shm::proc_path(file).into());
            body.insert("ino".into(), shared.ino.into());
        }
        Data::Heap(bytes) => {
            let inline = base64::engine::general_purpose::STANDARD.encode(bytes);
            body.insert("inline".into(), inline.into());
        }
    }
    let marker = Value::Object(Map::from_iter([(MARKER.to_string(), Value::Object(body))]));
    serde_json::to_writer(&mut *out, &marker).map_err(|e| e.to_string())
}

/// Whether JSON bytes name the marker key at all.
pub fn mentions_marker(raw: &[u8]) -> bool {
    memchr::memmem::find(raw, MARKER.as_bytes()).is_some()
}

/// The marker's body when `map` is a marker object.
pub fn marker_body(map: &Map<String, Value>) -> Option<&Map<String, Value>> {
    if map.len() != 1 {
        return None;
    }
    map.get(MARKER).and_then(Value::as_object)
}

/// Takes over the regions a worker's reply names, in the order
/// `json::to_term_with` meets them. Each adopted region's file is removed
/// when the region is released. A bad marker fails the whole reply (and
/// the regions adopted so far are released with the vector).
pub fn adopt_all(value: &Value) -> Result<Vec<ResourceArc<Region>>, String> {
    collect(value)
        .into_iter()
        .map(|body| adopt(body).map(ResourceArc::new))
        .collect()
}

/// The marker bodies in `value`, found by a walk with an explicit stack (a
/// worker's reply may nest as deep as `max_nesting_depth` allows).
fn collect(value: &Value) -> Vec<&Map<String, Value>> {
    snakepit_core::json::tagged_objects(value, MARKER)
}

fn adopt(body: &Map<String, Value>) -> Result<Region, String> {
    let bad = |what: &str| format!("the worker returned a bad zero-copy ref: {what}");
    let kind = body
        .get("kind")
        .and_then(Value::as_str)
        .and_then(Kind::parse)
        .ok_or_else(|| bad("kind is not \"dlpack\" or \"arrow\""))?;
    let bytes = body
        .get("bytes")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("bytes is not a non-negative integer"))?;
    match body.get("device").and_then(Value::as_str) {
        None | Some("cpu") => {}
        Some(other) => {
            return Err(bad(&format!(
                "device {other:?} is not supported (cpu only)"
            )))
        }
    }
    if let Some(max) = max_bytes() {
        if bytes > max {
            return Err(bad(&format!(
                "it says {bytes} bytes, more than zero_copy max_bytes ({max})"
            )));
        }
    }
    let mut region = match (body.get("path"), body.get("inline")) {
        (Some(path), _) => {
            let path = path.as_str().ok_or_else(|| bad("path is not a string"))?;
            adopt_shared(path, body.get("ino"), bytes, kind).map_err(|e| bad(&e))?
        }
        (None, Some(Value::String(text))) => {
            // Base64 holds 3 bytes in 4 characters: check before decoding.
            if (text.len() as u64) / 4 * 3 > bytes.saturating_add(3) {
                return Err(bad(&format!("it says {bytes} bytes but holds more")));
            }
            let data = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| bad("inline data is not base64"))?;
            if data.len() as u64 != bytes {
                return Err(bad(&format!(
                    "it says {bytes} bytes but holds {}",
                    data.len()
                )));
            }
            Region::new(Data::Heap(data), kind, Owner::Python)
        }
        _ => return Err(bad("it has neither a path nor inline data")),
    };
    region.dtype = body.get("dtype").and_then(Value::as_str).map(String::from);
    region.shape = match body.get("shape") {
        None | Some(Value::Null) => None,
        Some(Value::Array(dims)) => Some(
            dims.iter()
                .map(Value::as_u64)
                .collect::<Option<Vec<u64>>>()
                .ok_or_else(|| bad("shape is not a list of non-negative integers"))?,
        ),
        Some(_) => return Err(bad("shape is not a list")),
    };
    region.metadata = body.get("metadata").filter(|m| m.is_object()).cloned();
    Ok(region)
}

/// Takes over a worker's sealed memory file at `path`. Only a file held by
/// one of this VM's workers is taken: never one of the VM's own
/// descriptors, never another process's. Small ones are copied to the
/// heap (no descriptor or mapping kept).
fn adopt_shared(path: &str, ino: Option<&Value>, bytes: u64, kind: Kind) -> Result<Region, String> {
    if GENERATION.load(Ordering::Acquire) == 0 {
        return Err("it names shared memory but zero copy is disabled here".into());
    }
    let (pid, _fd) = shm::parse_proc_path(path).ok_or("its path is not /proc/<pid>/fd/<n>")?;
    if !shm::is_descendant(pid, WORKER_DEPTH) {
        return Err(format!(
            "its path names process {pid}, which is not a worker of this VM"
        ));
    }
    let ino = match ino {
        None => None,
        Some(v) => Some(v.as_u64().ok_or("ino is not a non-negative integer")?),
    };
    let slot = if shares(bytes as usize) {
        Some(Slot::take().map_err(|e| e.to_string())?)
    } else {
        None
    };
    let region = shm::open(path, ino, bytes).map_err(|e| e.to_string())?;
    Ok(match slot {
        Some(slot) => Region::shared(region, slot, kind, Owner::Python),
        None => Region::new(
            Data::Heap(region.mapping.as_slice().to_vec()),
            kind,
            Owner::Python,
        ),
    })
}

/// The largest region, when limited (`zero_copy: [max_bytes: ...]`).
fn max_bytes() -> Option<u64> {
    match MAX_BYTES.load(Ordering::Relaxed) {
        0 => None,
        max => Some(max),
    }
}

// -- the Elixir struct ----------------------------------------------------

/// `dtype` as a fixed atom when it is one of the known element types (never
/// an atom made from data), else as a string.
fn dtype_term<'a>(env: Env<'a>, dtype: &str) -> Term<'a> {
    let atom = match dtype {
        "float16" => atoms::float16(),
        "bfloat16" => atoms::bfloat16(),
        "float32" => atoms::float32(),
        "float64" => atoms::float64(),
        "int8" => atoms::int8(),
        "int16" => atoms::int16(),
        "int32" => atoms::int32(),
        "int64" => atoms::int64(),
        "uint8" => atoms::uint8(),
        "uint16" => atoms::uint16(),
        "uint32" => atoms::uint32(),
        "uint64" => atoms::uint64(),
        "bool" => atoms::bool_(),
        "complex64" => atoms::complex64(),
        "complex128" => atoms::complex128(),
        other => return other.encode(env),
    };
    atom.encode(env)
}

/// The `%Snakepit.ZeroCopyRef{}` for `region`.
pub fn ref_term<'a>(env: Env<'a>, region: ResourceArc<Region>) -> Term<'a> {
    let nil = atoms::nil().encode(env);
    let dtype = region.dtype.as_deref().map_or(nil, |d| dtype_term(env, d));
    let shape = region.shape.as_ref().map_or(nil, |dims| {
        let dims: Vec<Term> = dims.iter().map(|d| d.encode(env)).collect();
        rustler::types::tuple::make_tuple(env, &dims)
    });
    let metadata = region
        .metadata
        .as_ref()
        .map_or(nil, |m| crate::json::to_term(env, m));
    let owner = match region.owner {
        Owner::Elixir => atoms::elixir(),
        Owner::Python => atoms::python(),
    };
    let pairs: [(Term, Term); 10] = [
        (
            rustler::types::atom::__struct__().encode(env),
            atoms::zero_copy_ref_module().encode(env),
        ),
        (atoms::bytes().encode(env), region.bytes().len().encode(env)),
        (atoms::copy().encode(env), (!region.is_shared()).encode(env)),
        (atoms::device().encode(env), atoms::cpu().encode(env)),
        (atoms::dtype().encode(env), dtype),
        (atoms::kind().encode(env), region.kind.atom().encode(env)),
        (atoms::metadata().encode(env), metadata),
        (atoms::owner().encode(env), owner.encode(env)),
        (atoms::ref_().encode(env), region.encode(env)),
        (atoms::shape().encode(env), shape),
    ];
    let (keys, values): (Vec<Term>, Vec<Term>) = pairs.into_iter().unzip();
    Term::map_from_term_arrays(env, &keys, &values).unwrap_or(nil)
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
