//! Paths to values inside a document, for error messages: `.key` for a map
//! key, `[i]` for a list index (`.x.d[0]`). A path to a deeply nested value
//! would be as long as the value is deep, and a key may be any length, so
//! what is shown is bounded: long keys are cut, and the middle of a long
//! path is replaced by the number of levels left out.

/// Keys longer than this (in bytes) are cut in paths.
const KEY_SHOWN: usize = 40;
/// Segments shown at each end of a long path.
const ENDS_SHOWN: usize = 8;

/// The segment of a map key: `.key`, cut when long.
pub fn key_segment(key: &str) -> String {
    if key.len() <= KEY_SHOWN {
        return format!(".{key}");
    }
    let mut end = KEY_SHOWN;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    format!(".{}…", &key[..end])
}

/// The segment of a list index: `[i]`.
pub fn index_segment(index: usize) -> String {
    format!("[{index}]")
}

/// A path from its segments, outermost first; the middle of a long one is
/// elided (`.a.b…<990 levels>….y.z`).
pub fn format_path<S: AsRef<str>>(segments: &[S]) -> String {
    if segments.len() <= 2 * ENDS_SHOWN + 1 {
        return segments.iter().map(AsRef::as_ref).collect();
    }
    let head: String = segments[..ENDS_SHOWN].iter().map(AsRef::as_ref).collect();
    let tail: String = segments[segments.len() - ENDS_SHOWN..]
        .iter()
        .map(AsRef::as_ref)
        .collect();
    let left_out = segments.len() - 2 * ENDS_SHOWN;
    format!("{head}…<{left_out} levels>…{tail}")
}
