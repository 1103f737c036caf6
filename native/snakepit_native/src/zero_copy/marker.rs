//! The wire marker of a region: written into a call's JSON for a
//! `%Snakepit.ZeroCopyRef{}`, and read back from a worker's reply, whose
//! regions are then taken over (adopted).

use std::sync::atomic::Ordering;

use base64::Engine;
use rustler::{ResourceArc, Term};
use serde_json::{Map, Value};
use snakepit_core::shm;

use super::{max_bytes, shares, Data, Kind, Owner, Region, Slot, GENERATION};
use crate::atoms;

/// The key of a marker object.
pub const MARKER: &str = "__snakepit_zero_copy__";

/// How many generations of processes a worker may be below the VM (the
/// fork server's children are grandchildren).
const WORKER_DEPTH: usize = 3;

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

#[cfg(test)]
mod tests {
    //! Finding markers; what touches an `Env` or a term is exercised by the
    //! ExUnit suites (see `test_shims.rs` on why this crate's tests link).
    use super::{marker_body, MARKER};
    use proptest::prelude::*;
    use serde_json::{json, Map, Value};
    use snakepit_core::json::parse;

    const CASES: u32 = 512;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(CASES))]

        #[test]
        fn marker_bodies_are_single_key_objects(
            key in prop_oneof![Just(MARKER.to_string()), ".{0,24}"],
            body in prop_oneof![Just(json!({"kind": "dlpack", "bytes": 4})), Just(json!(null)), Just(json!([1])), Just(json!("s"))],
            extra in any::<bool>(),
        ) {
            let mut map = Map::new();
            map.insert(key.clone(), body.clone());
            if extra {
                map.insert("other".into(), json!(1));
            }
            let expected = key == MARKER && body.is_object() && !extra;
            prop_assert_eq!(marker_body(&map).is_some(), expected);
        }

        #[test]
        fn marker_walks_find_what_the_parser_read(n in 0usize..6, depth in 1usize..900) {
            // Markers `depth` arrays deep, read back through the parser and
            // found in order by the walk adopt_all uses.
            let mut doc = Vec::new();
            for i in 0..n {
                let mut v = json!({MARKER: {"i": i}});
                for _ in 0..depth {
                    v = Value::Array(vec![v]);
                }
                doc.push(v);
            }
            let bytes = serde_json::to_vec(&Value::Array(doc)).unwrap();
            let parsed = parse(&bytes).unwrap();
            let found: Vec<u64> = snakepit_core::json::tagged_objects(&parsed, MARKER)
                .iter()
                .map(|b| b["i"].as_u64().unwrap())
                .collect();
            prop_assert_eq!(found, (0..n as u64).collect::<Vec<_>>());
        }
    }

    #[test]
    fn marker_bodies_nested_past_the_limit_are_never_built() {
        let marker = format!("{{\"{MARKER}\": {{\"i\": 0}}}}");
        let bytes = ["[".repeat(100_000), marker, "]".repeat(100_000)].concat();
        let err = parse(bytes.as_bytes()).unwrap_err();
        assert!(err.is_limit(), "{err}");
    }
}
