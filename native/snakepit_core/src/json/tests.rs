//! Properties of the JSON reader: it reads what serde_json reads, never
//! panics, refuses input past the limits before building it, and nothing
//! it does grows the native stack with the data (100,000 levels below).

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::*;

/// Cases per property (fixed, so every run does the same work).
const CASES: u32 = 512;

/// Deep enough that any recursion on it would overflow a test thread's
/// 2 MiB stack many times over.
const VERY_DEEP: usize = 100_000;

fn limits(depth: usize) -> Limits {
    Limits {
        depth,
        int_digits: DEFAULT_MAX_INT_DIGITS,
    }
}

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(8, 128, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Equal, floats within rounding (serde_json's default float reader is not
/// always correctly rounded; this parser's is). Test values are shallow.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            // Subnormals carry fewer significant bits, and serde_json's
            // default float reading is not always correctly rounded there:
            // an absolute bound in that range, a relative one elsewhere.
            let diff = (x - y).abs();
            x == y
                || diff <= x.abs().max(y.abs()) * 1e-15
                || (x.abs().max(y.abs()) < f64::MIN_POSITIVE && diff <= f64::MIN_POSITIVE * 1e-6)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((ka, a), (kb, b))| ka == kb && same(a, b))
        }
        _ => a == b,
    }
}

/// Bytes close to JSON: a valid document with a few random edits
/// (truncations, replaced and inserted structural bytes).
fn arb_jsonish() -> impl Strategy<Value = Vec<u8>> {
    let edit = (
        any::<prop::sample::Index>(),
        0..3u8,
        prop::sample::select(b"[]{}\",:\\0123456789eE.-+tfnu \x01\xff".to_vec()),
    );
    (arb_value(), prop::collection::vec(edit, 0..4)).prop_map(|(value, edits)| {
        let mut bytes = serde_json::to_vec(&value).unwrap();
        for (at, how, byte) in edits {
            let i = at.index(bytes.len() + 1);
            match how {
                0 => bytes.truncate(i),
                1 if i < bytes.len() => bytes[i] = byte,
                _ => bytes.insert(i, byte),
            }
        }
        bytes
    })
}

/// `[[[...1...]]]`, `depth` arrays deep, built without recursion.
fn nested_arrays(depth: usize) -> Value {
    let mut v = json!(1);
    for _ in 0..depth {
        v = Value::Array(vec![v]);
    }
    v
}

fn nested_objects(depth: usize) -> Value {
    let mut v = json!(1);
    for _ in 0..depth {
        let mut m = Map::new();
        m.insert("d".into(), v);
        v = Value::Object(m);
    }
    v
}

fn brackets(depth: usize) -> Vec<u8> {
    let mut s = vec![b'['; depth];
    s.extend(std::iter::repeat_n(b']', depth));
    s
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn what_serde_json_writes_reads_back(value in arb_value()) {
        let bytes = serde_json::to_vec(&value).unwrap();
        let parsed = parse_with(&bytes, limits(DEFAULT_MAX_DEPTH)).unwrap();
        prop_assert!(same(&parsed, &value), "{} != {}", *parsed, value);
    }

    #[test]
    fn accepts_and_refuses_what_serde_json_does(bytes in arb_jsonish()) {
        prop_assume!(!bytes.is_empty());
        let ours = parse_with(&bytes, limits(DEFAULT_MAX_DEPTH));
        let theirs = serde_json::from_slice::<Value>(&bytes);
        match (&ours, &theirs) {
            (Ok(a), Ok(b)) => prop_assert!(same(a, b)),
            (Err(Error::Syntax(_)), Err(_)) => {}
            _ => prop_assert!(false, "{:?} vs {:?} on {:?}", ours, theirs,
                String::from_utf8_lossy(&bytes)),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_with(&bytes, limits(DEFAULT_MAX_DEPTH));
    }

    #[test]
    fn every_prefix_of_a_document_is_answered(value in arb_value(), cut in any::<prop::sample::Index>()) {
        let bytes = serde_json::to_vec(&value).unwrap();
        let cut = cut.index(bytes.len());
        // A cut number ("12" of "123") may still be JSON; nothing panics.
        let _ = parse_with(&bytes[..cut], limits(DEFAULT_MAX_DEPTH));
    }

    #[test]
    fn depth_is_refused_exactly_past_the_limit(depth in 1usize..300, limit in 1usize..300, objects in any::<bool>()) {
        let value = if objects { nested_objects(depth) } else { nested_arrays(depth) };
        let bytes = serde_json::to_vec(&value).unwrap();
        match parse_with(&bytes, limits(limit)) {
            Ok(parsed) => {
                prop_assert!(depth <= limit);
                prop_assert_eq!(parsed.depth(), depth);
            }
            Err(Error::Limit(msg)) => {
                prop_assert!(depth > limit);
                let named = format!("max_nesting_depth ({limit})");
                prop_assert!(msg.contains(&named), "{}", msg);
            }
            Err(e) => prop_assert!(false, "{e}"),
        }
    }

    #[test]
    fn wrappers_count_as_scalars(depth in 1usize..64, extra in 0usize..3) {
        // A value `depth` deep whose innermost value is a wrapper: JSON
        // deeper than the value by up to three levels.
        let innermost = match extra {
            0 => json!({"__snakepit_int__": "123456789012345678901234567890"}),
            1 => json!({"__snakepit_float__": "nan"}),
            _ => json!({"__snakepit_zero_copy__": {"kind": "dlpack", "shape": [2, 2]}}),
        };
        let mut value = Value::Array(vec![innermost]);
        for _ in 1..depth {
            value = Value::Array(vec![value]);
        }
        let bytes = serde_json::to_vec(&value).unwrap();
        prop_assert!(parse_with(&bytes, limits(depth)).is_ok());
        let too_shallow = parse_with(&bytes, limits(depth - 1 + usize::from(depth == 1)));
        prop_assert_eq!(too_shallow.is_ok(), depth == 1);
    }

    #[test]
    fn integer_markers_are_held_to_the_digit_limit(digits in 1usize..200, limit in 20usize..200, negative in any::<bool>()) {
        let text = format!("{}{}", if negative { "-" } else { "" }, "7".repeat(digits));
        let bytes = serde_json::to_vec(&json!({"a": [{"__snakepit_int__": text}]})).unwrap();
        let result = parse_with(&bytes, Limits { depth: 10, int_digits: limit });
        match result {
            Ok(_) => prop_assert!(digits <= limit),
            Err(Error::Limit(msg)) => {
                prop_assert!(digits > limit);
                let named = format!("max_integer_digits ({limit})");
                prop_assert!(msg.contains(&named), "{}", msg);
                prop_assert!(msg.contains(".a[0]"), "{}", msg);
            }
            Err(e) => prop_assert!(false, "{e}"),
        }
    }

    #[test]
    fn digit_bounds_hold(n in any::<u128>()) {
        let bits = 128 - u64::from(n.leading_zeros());
        let digits = n.to_string().len() as u64;
        let (low, high) = decimal_digit_bounds(bits);
        prop_assert!(low <= digits && digits <= high, "{n}: {low} <= {digits} <= {high}");
    }

    #[test]
    fn tagged_objects_come_in_walk_order(values in prop::collection::vec(arb_value(), 0..8)) {
        // Markers numbered in order, hidden among arbitrary values.
        let mut doc = Vec::new();
        for (i, v) in values.into_iter().enumerate() {
            doc.push(json!([v, {"__snakepit_zero_copy__": {"n": i}}]));
        }
        let doc = Value::Array(doc);
        let found: Vec<u64> = tagged_objects(&doc, ZERO_COPY_KEY)
            .iter()
            .map(|body| body["n"].as_u64().unwrap())
            .collect();
        let expected: Vec<u64> = (0..found.len() as u64).collect();
        prop_assert_eq!(found, expected);
    }

    #[test]
    fn paths_stay_short(n in 0usize..5000, key in ".{0,200}") {
        let segments: Vec<String> = (0..n).map(|i| if i % 2 == 0 { key_segment(&key) } else { index_segment(i) }).collect();
        let path = format_path(&segments);
        prop_assert!(path.len() < 40 * 4 * 20 + 100, "{}", path.len());
        if n > 17 {
            let marker = format!("<{} levels>", n - 16);
            prop_assert!(path.contains(&marker));
        }
    }
}

#[test]
fn very_deep_input_is_refused_quickly_without_recursion() {
    for bytes in [
        brackets(VERY_DEEP),
        b"{\"d\":".repeat(VERY_DEEP),
        // Brackets inside a string are not structure.
        [b"[\"".as_slice(), &brackets(VERY_DEEP), b"\"]"].concat(),
        // Cut short in the middle.
        brackets(VERY_DEEP)[..VERY_DEEP + 10].to_vec(),
    ] {
        let started = std::time::Instant::now();
        let result = parse_with(&bytes, Limits::default());
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        match result {
            Ok(v) => assert_eq!(v.depth(), 1, "only the string case parses"),
            Err(Error::Limit(msg)) => {
                assert!(msg.contains("max_nesting_depth (1000)"), "{msg}");
                assert!(msg.contains("levels>"), "a long path is elided: {msg}");
                assert!(msg.len() < 300, "{msg}");
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn exactly_at_the_limit_parses_and_one_more_does_not() {
    let limit = Limits::default();
    let ok = serde_json::to_vec(&nested_objects(DEFAULT_MAX_DEPTH)).unwrap();
    assert_eq!(parse_with(&ok, limit).unwrap().depth(), DEFAULT_MAX_DEPTH);
    let deep = serde_json::to_vec(&nested_objects(DEFAULT_MAX_DEPTH + 1)).unwrap();
    let err = parse_with(&deep, limit).unwrap_err();
    assert!(err.is_limit());
    assert!(
        err.message()
            .starts_with("a value at .d.d.d.d.d.d.d.d…<984 levels>…"),
        "{err}"
    );
    // Past the wrappers' slack the parser stops before building anything.
    let deeper = serde_json::to_vec(&nested_arrays(DEFAULT_MAX_DEPTH + WRAPPER_SLACK + 1)).unwrap();
    assert!(parse_with(&deeper, limit).unwrap_err().is_limit());
}

#[test]
fn deep_values_are_walked_and_dropped_without_recursion() {
    let deep = nested_objects(VERY_DEEP);
    let path = user_depth_violation(&deep, DEFAULT_MAX_DEPTH).unwrap();
    assert!(path.starts_with(".d.d"));
    assert!(tagged_objects(&deep, ZERO_COPY_KEY).is_empty());
    // A parsed value this deep cannot exist; one built by hand is taken
    // apart by `Parsed`'s drop all the same.
    drop(Parsed::new(deep, VERY_DEEP));
    dispose(nested_arrays(VERY_DEEP));
    let mut marker = Map::new();
    marker.insert(ZERO_COPY_KEY.into(), json!({"n": 1}));
    let mut v = Value::Object(marker);
    for _ in 0..VERY_DEEP {
        v = Value::Array(vec![json!(null), v]);
    }
    assert_eq!(tagged_objects(&v, ZERO_COPY_KEY).len(), 1);
    assert_eq!(user_depth_violation(&v, VERY_DEEP), None);
    dispose(v);
}

#[test]
fn numbers_keep_their_kind() {
    let v = parse_with(
        br#"{"a": 1, "b": 1.5, "c": 18446744073709551615, "d": -3, "e": 1e400}"#,
        Limits::default(),
    );
    assert!(v.is_err(), "1e400 is out of range, as in serde_json");
    let v = parse_with(
        br#"{"a": 1, "b": 1.5, "c": 18446744073709551615, "d": -3, "e": 123456789012345678901}"#,
        Limits::default(),
    )
    .unwrap();
    assert!(v["a"].is_u64());
    assert!(v["b"].is_f64());
    assert!(v["c"].is_u64());
    assert!(v["d"].is_i64());
    assert!(v["e"].is_f64());
}

#[test]
fn empty_is_null_and_garbage_is_a_syntax_error() {
    assert_eq!(*parse(b"").unwrap(), Value::Null);
    assert!(matches!(parse(b"{not json"), Err(Error::Syntax(_))));
    assert!(matches!(parse(b"[1,]"), Err(Error::Syntax(_))));
    assert!(matches!(parse(b"\"\\ud800\""), Err(Error::Syntax(_))));
    assert_eq!(
        *parse(br#""\ud83d\ude00 \u00e9\n""#).unwrap(),
        json!("😀 é\n")
    );
}

#[test]
fn limits_are_clamped_to_their_bounds() {
    let saved = Limits::current();
    assert_eq!(
        set_limits(0, 0),
        Limits {
            depth: 1,
            int_digits: MIN_INT_DIGITS
        }
    );
    assert_eq!(
        set_limits(usize::MAX, usize::MAX),
        Limits {
            depth: MAX_DEPTH_CEILING,
            int_digits: MAX_INT_DIGITS_CEILING
        }
    );
    set_limits(saved.depth, saved.int_digits);
}
