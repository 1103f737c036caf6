//! Walks over parsed values, each with an explicit stack.

use serde_json::{Map, Value};

use super::error::too_many_digits;
use super::limits::{FLOAT_KEY, INT_KEY, ZERO_COPY_KEY};
use super::path::{format_path, index_segment, key_segment};

/// Is `map` one of Snakepit's wrappers (a number marker or a zero-copy
/// marker), which stands for a scalar?
pub fn is_wrapper(map: &Map<String, Value>) -> bool {
    if map.len() != 1 {
        return false;
    }
    match map.iter().next() {
        Some((key, Value::String(_))) => key == INT_KEY || key == FLOAT_KEY,
        Some((key, Value::Object(_))) => key == ZERO_COPY_KEY,
        _ => false,
    }
}

/// The children of a container, each with its path segment.
enum Children<'a> {
    Array(std::iter::Enumerate<std::slice::Iter<'a, Value>>),
    Object(serde_json::map::Iter<'a>),
}

impl<'a> Children<'a> {
    fn of(value: &'a Value) -> Option<Children<'a>> {
        match value {
            Value::Array(items) => Some(Children::Array(items.iter().enumerate())),
            Value::Object(map) => Some(Children::Object(map.iter())),
            _ => None,
        }
    }

    fn next(&mut self) -> Option<(Segment<'a>, &'a Value)> {
        match self {
            Children::Array(it) => it.next().map(|(i, v)| (Segment::Index(i), v)),
            Children::Object(it) => it.next().map(|(k, v)| (Segment::Key(k), v)),
        }
    }
}

#[derive(Clone, Copy)]
enum Segment<'a> {
    Index(usize),
    Key(&'a str),
}

impl Segment<'_> {
    fn render(self) -> String {
        match self {
            Segment::Index(i) => index_segment(i),
            Segment::Key(k) => key_segment(k),
        }
    }
}

fn render(path: &[Segment]) -> String {
    let segments: Vec<String> = path.iter().map(|s| s.render()).collect();
    format_path(&segments)
}

/// Does `value` count as a level of nesting (wrappers count as scalars)?
fn is_level(value: &Value) -> bool {
    match value {
        Value::Array(_) => true,
        Value::Object(map) => !is_wrapper(map),
        _ => false,
    }
}

/// The path to the first container nested past `limit` levels, counting
/// wrappers as scalars; `None` when the whole value is within it.
pub fn user_depth_violation(value: &Value, limit: usize) -> Option<String> {
    if !is_level(value) {
        return None;
    }
    if limit == 0 {
        return Some(String::new());
    }
    // One entry per open level: its children still to visit, and the
    // segment that leads to it (none for the top).
    let mut open: Vec<Children> = vec![Children::of(value)?];
    let mut path: Vec<Segment> = Vec::new();
    while let Some(children) = open.last_mut() {
        match children.next() {
            None => {
                open.pop();
                path.pop();
            }
            Some((segment, child)) => {
                if !is_level(child) {
                    continue;
                }
                path.push(segment);
                if open.len() >= limit {
                    return Some(render(&path));
                }
                open.push(Children::of(child).expect("a level is a container"));
            }
        }
    }
    None
}

/// Checks every `{"__snakepit_int__": "<digits>"}` in `value` against
/// `limit` digits.
pub(super) fn check_int_markers(value: &Value, limit: usize) -> Result<(), String> {
    let mut open: Vec<Children> = Vec::new();
    let mut path: Vec<Segment> = Vec::new();
    let mut next = Some(value);
    loop {
        if let Some(v) = next.take() {
            if let Value::Object(map) = v {
                if let (1, Some(Value::String(text))) = (map.len(), map.get(INT_KEY)) {
                    let digits = text.strip_prefix('-').unwrap_or(text).len();
                    if digits > limit {
                        return Err(too_many_digits(&render(&path), digits, limit));
                    }
                }
            }
            if let Some(children) = Children::of(v) {
                open.push(children);
                continue;
            }
            // A scalar: its segment was pushed by its parent.
            path.pop();
        }
        let Some(children) = open.last_mut() else {
            return Ok(());
        };
        match children.next() {
            Some((segment, child)) => {
                path.push(segment);
                next = Some(child);
            }
            None => {
                open.pop();
                path.pop();
            }
        }
    }
}

/// The objects `{tag: {...}}` in `value` (their bodies), in the order a
/// depth-first, left-to-right walk meets them; their insides are not
/// searched.
pub fn tagged_objects<'a>(value: &'a Value, tag: &str) -> Vec<&'a Map<String, Value>> {
    let mut found = Vec::new();
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(items) => stack.extend(items.iter().rev()),
            Value::Object(map) => {
                if map.len() == 1 {
                    if let Some(Value::Object(body)) = map.get(tag) {
                        found.push(body);
                        continue;
                    }
                }
                stack.extend(map.values().rev());
            }
            _ => {}
        }
    }
    found
}

/// Drops `value` without recursion: containers are emptied onto a stack
/// of their own before they go, so no drop goes deeper than one level.
pub fn dispose(value: Value) {
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(items) if items.iter().any(is_container) => stack.extend(items),
            Value::Object(map) if map.values().any(is_container) => {
                stack.extend(map.into_iter().map(|(_, v)| v))
            }
            _ => {} // scalars, or containers of scalars: an ordinary drop
        }
    }
}

fn is_container(value: &Value) -> bool {
    matches!(value, Value::Array(_) | Value::Object(_))
}
