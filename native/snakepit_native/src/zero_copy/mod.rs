//! Zero-copy regions: large arrays (DLPack) and Arrow IPC streams that
//! cross between the VM and workers as shared memory instead of bytes in a
//! message. A region is a `Region` resource; on the wire it is a marker
//! object in the call's JSON that names the region file:
//!
//! ```json
//! {"__snakepit_zero_copy__": {"kind": "dlpack", "path": "...", "bytes": 4096,
//!   "dtype": "float32", "shape": [32, 32], "device": "cpu", "owner": "elixir"}}
//! ```
//!
//! Where no region directory is open (zero copy disabled, or a worker with
//! no access to it) a region holds its bytes on the heap and the marker
//! carries them as `"inline"` base64 instead of a `"path"`: the documented
//! copying fallback.
//!
//! Lifetimes: the file is removed by `close`, or when the last reference to
//! the resource goes (so the regions of a process that dies are released
//! with its heap); the mapping lives on while any binary made from it is
//! referenced. The whole directory goes at application stop, and the
//! directories of VMs that were killed go at the next start
//! (`snakepit_core::shm::remove_stale_dirs`).

mod nifs;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

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

/// This application start's region directory; `None` while zero copy is
/// off (regions then live on the heap).
static DIR: RwLock<Option<Arc<PathBuf>>> = RwLock::new(None);

static LIVE_REGIONS: AtomicU64 = AtomicU64::new(0);
static LIVE_BYTES: AtomicU64 = AtomicU64::new(0);

fn current_dir() -> Option<Arc<PathBuf>> {
    DIR.read().map(|d| d.clone()).unwrap_or_default()
}

fn set_dir(dir: Option<PathBuf>) -> Option<Arc<PathBuf>> {
    let mut guard = DIR.write().unwrap_or_else(|e| e.into_inner());
    std::mem::replace(&mut *guard, dir.map(Arc::new))
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

enum Data {
    Mapped(Mapping),
    Heap(Vec<u8>),
}

impl Data {
    fn as_slice(&self) -> &[u8] {
        match self {
            Data::Mapped(m) => m.as_slice(),
            Data::Heap(v) => v,
        }
    }
}

/// A region file and the directory it was made in (to tell a ref of a
/// stopped application start from a live one).
struct File {
    path: PathBuf,
    dir: Arc<PathBuf>,
}

pub struct Region {
    data: Data,
    file: Option<File>,
    kind: Kind,
    owner: Owner,
    dtype: Option<String>,
    shape: Option<Vec<u64>>,
    metadata: Option<Value>,
    closed: AtomicBool,
}

#[rustler::resource_impl]
impl rustler::Resource for Region {}

impl Region {
    fn new(data: Data, file: Option<File>, kind: Kind, owner: Owner) -> Region {
        LIVE_REGIONS.fetch_add(1, Ordering::Relaxed);
        LIVE_BYTES.fetch_add(data.as_slice().len() as u64, Ordering::Relaxed);
        Region {
            data,
            file,
            kind,
            owner,
            dtype: None,
            shape: None,
            metadata: None,
            closed: AtomicBool::new(false),
        }
    }

    pub fn bytes(&self) -> &[u8] {
        self.data.as_slice()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Removes the region's file (the first time only). Mappings, here and
    /// in workers, stay valid until they are dropped.
    pub fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            if let Some(file) = &self.file {
                let _ = std::fs::remove_file(&file.path);
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
        if len >= UNMAP_OFF_SCHEDULER {
            crate::runtime::get().spawn_blocking(move || drop(data));
        }
    }
}

/// Makes a region of `kind` holding a copy of `data`: in the region
/// directory when one is open, else on the heap.
pub fn create(kind: Kind, data: &[u8]) -> std::io::Result<Region> {
    let Some(dir) = current_dir() else {
        return Ok(Region::new(
            Data::Heap(data.to_vec()),
            None,
            kind,
            Owner::Elixir,
        ));
    };
    let path = dir.join(shm::new_name(kind.name())?);
    let mapping = shm::create(&path, data)?;
    let file = File { path, dir };
    Ok(Region::new(
        Data::Mapped(mapping),
        Some(file),
        kind,
        Owner::Elixir,
    ))
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
    match &region.file {
        Some(file) => {
            if current_dir().as_ref() != Some(&file.dir) {
                return Err(
                    "a %Snakepit.ZeroCopyRef{} of an earlier start of Snakepit (its region \
                     directory is gone)"
                        .into(),
                );
            }
            body.insert("path".into(), file.path.to_string_lossy().as_ref().into());
        }
        None => {
            let inline = base64::engine::general_purpose::STANDARD.encode(region.bytes());
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
    let dir = current_dir();
    let path = body.get("path").and_then(Value::as_str).map(PathBuf::from);
    // A file the worker made is ours from here on, even when its marker is
    // bad: remove it rather than leave it.
    let owned_path = path
        .as_ref()
        .filter(|p| dir.as_ref().is_some_and(|d| shm::is_region_path(d, p)));
    let result = adopt_checked(body, dir.clone(), path.as_deref());
    if result.is_err() {
        if let Some(p) = owned_path {
            let _ = std::fs::remove_file(p);
        }
    }
    result
}

fn adopt_checked(
    body: &Map<String, Value>,
    dir: Option<Arc<PathBuf>>,
    path: Option<&Path>,
) -> Result<Region, String> {
    let bad = |what: &str| format!("the worker returned a bad zero-copy ref: {what}");
    let kind = body
        .get("kind")
        .and_then(Value::as_str)
        .and_then(Kind::parse)
        .ok_or_else(|| bad("kind is not \"dlpack\" or \"arrow\""))?;
    let bytes = body
        .get("bytes")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("bytes is not a non-negative integer"))? as usize;
    match body.get("device").and_then(Value::as_str) {
        None | Some("cpu") => {}
        Some(other) => {
            return Err(bad(&format!(
                "device {other:?} is not supported (cpu only)"
            )))
        }
    }
    let (data, file) = match (path, body.get("inline")) {
        (Some(path), _) => {
            let dir = dir.ok_or_else(|| bad("it names a file but zero copy is disabled here"))?;
            if !shm::is_region_path(&dir, path) {
                return Err(bad("its path is not a region in Snakepit's directory"));
            }
            let mapping = shm::open(path).map_err(|e| bad(&format!("cannot map it: {e}")))?;
            let file = File {
                path: path.to_path_buf(),
                dir,
            };
            (Data::Mapped(mapping), Some(file))
        }
        (None, Some(Value::String(text))) => {
            let data = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| bad("inline data is not base64"))?;
            (Data::Heap(data), None)
        }
        _ => return Err(bad("it has neither a path nor inline data")),
    };
    if data.as_slice().len() != bytes {
        return Err(bad(&format!(
            "it says {bytes} bytes but holds {}",
            data.as_slice().len()
        )));
    }
    let mut region = Region::new(data, file, kind, Owner::Python);
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
        (atoms::copy().encode(env), region.file.is_none().encode(env)),
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

/// How many regions are alive in this VM, and their bytes.
pub fn live() -> (u64, u64) {
    (
        LIVE_REGIONS.load(Ordering::Relaxed),
        LIVE_BYTES.load(Ordering::Relaxed),
    )
}
